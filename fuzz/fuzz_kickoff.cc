// Fuzzes the HealthLake $export kick-off parser: the input is "QUERY\0BODY" (no NUL: all query, empty body); the
// first byte picks the level (system, Patient, Group). The query string is split and decoded by http::ParseQuery
// as the server does. FHIRLAKE_FUZZ_VERBOSE=1 prints each input's outcome.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "api/healthlake_kickoff.h"
#include "http/http_types.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  static const fhirlake::bulk::ExportLevel kLevels[] = {
      fhirlake::bulk::ExportLevel::kSystem, fhirlake::bulk::ExportLevel::kPatient, fhirlake::bulk::ExportLevel::kGroup};
  const fhirlake::bulk::ExportLevel level = kLevels[data[0] % 3];
  std::string_view input(reinterpret_cast<const char*>(data) + 1, size - 1);
  const size_t nul = input.find('\0');
  const std::string_view query = input.substr(0, nul);
  const std::string_view body = nul == std::string_view::npos ? std::string_view() : input.substr(nul + 1);
  constexpr fhirlake::EpochMillis kNow = 1682099882123;  // 2023-04-21T17:58:02.123Z
  auto request =
      fhirlake::api::ParseHealthLakeKickoff(level, level == fhirlake::bulk::ExportLevel::kGroup ? "group-1" : "",
                                            fhirlake::http::ParseQuery(query), body, kNow);
  if (request.ok()) {
    (void)request->output.Uri();
    (void)request->types.size();
  }
  if (std::getenv("FHIRLAKE_FUZZ_VERBOSE") != nullptr) {  // to see what a crash input or a seed does
    std::fprintf(stderr, "%s\n",
                 request.ok() ? ("ok: " + request->output.Uri()).c_str() : request.status().ToString().c_str());
  }
  return 0;
}
