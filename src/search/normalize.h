// The normalisations of search values, shared by index extraction (stored side) and query parsing (query side) so
// that both agree byte for byte: strings folded for case- and accent-insensitive matching, FHIR dates as the range
// of instants their precision covers, decimals as the range their significant digits imply.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace fhirlake::search {

// Unicode-aware fold for string search: NFKD-style removal of combining accents for Latin-1 Supplement and
// Latin Extended-A letters (é → e, ß → ss, Ø → o, ...), case folded to lower case (ASCII and those ranges), runs
// of whitespace collapsed to one space, leading/trailing whitespace removed. Other code points pass unchanged.
// Invalid UTF-8 bytes pass unchanged.
std::string NormalizeString(std::string_view value);

struct DateRange {
  int64_t lo;  // epoch milliseconds, inclusive
  int64_t hi;  // epoch milliseconds, inclusive
};
// A FHIR date, dateTime or instant ("2020", "2020-03", "2020-03-04", "2020-03-04T05:06", "2020-03-04T05:06:07",
// "...07.123", with "Z" or "+hh:mm"/"-hh:mm" when it has a time; without a zone, UTC) as the range it covers at its
// precision. Search values may carry minutes without seconds ("2020-03-04T05:06Z"). nullopt when malformed
// (month 13, Feb 30, a time without a zone where one is required is accepted as UTC).
std::optional<DateRange> ParseDateRange(std::string_view value);

struct DecimalRange {
  double value;
  double lo;  // inclusive
  double hi;  // exclusive
};
// A decimal as written ("100", "100.00", "1e2", "-3.5") with the implicit range of its precision: half a unit of
// the last significant digit either side ("100" → [99.5, 100.5), "100.00" → [99.995, 100.005), "1e2" → [50, 150)).
// nullopt when it is not a FHIR decimal.
std::optional<DecimalRange> ParseDecimalRange(std::string_view value);

}  // namespace fhirlake::search
