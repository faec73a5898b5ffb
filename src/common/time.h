// Time: a Clock seam for tests, and the instant formats fhirlake speaks (FHIR instant, HTTP date,
// HealthLake's "Apr 21, 2023 5:58:02 PM"). All times are UTC milliseconds since the Unix epoch.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/status.h"

namespace fhirlake {

using EpochMillis = int64_t;

class Clock {
 public:
  virtual ~Clock() = default;
  virtual EpochMillis NowMillis() const = 0;
  static const Clock& System();
};

// 2023-04-21T17:58:02.123Z (always milliseconds, always Z).
std::string FormatInstant(EpochMillis ms);
// Parses a FHIR instant: YYYY-MM-DDThh:mm:ss[.fff...](Z|+hh:mm|-hh:mm). Time zone required.
Result<EpochMillis> ParseInstant(std::string_view text);
// RFC 7231 IMF-fixdate, e.g. "Fri, 21 Apr 2023 17:58:02 GMT" (for Last-Modified, Expires).
std::string FormatHttpDate(EpochMillis ms);
// HealthLake's describe format, UTC: "Apr 21, 2023 5:58:02 PM".
std::string FormatHealthLakeTime(EpochMillis ms);

}  // namespace fhirlake
