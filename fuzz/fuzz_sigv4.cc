// Fuzzes the server-side SigV4 verifier (auth/sigv4_verify.h): the input is "TARGET\nAUTHORIZATION\nX-AMZ-DATE\nBODY"
// (missing parts are empty); the first byte picks the method. The target's query is split and decoded by
// http::ParseQuery as the server does, so the presigned-query form is reached too. The verifier must answer every
// input with a Status (never crash, never accept): no input can carry the right signature by chance.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "auth/sigv4_verify.h"
#include "http/http_types.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  static const char* kMethods[] = {"GET", "POST", "PUT", "DELETE"};
  std::string_view input(reinterpret_cast<const char*>(data) + 1, size - 1);
  std::string_view parts[4];
  for (int i = 0; i < 3; ++i) {
    const size_t nl = input.find('\n');
    parts[i] = input.substr(0, nl);
    input = nl == std::string_view::npos ? std::string_view() : input.substr(nl + 1);
  }
  parts[3] = input;
  fhirlake::http::Request r;
  r.method = kMethods[data[0] % 4];
  r.target = std::string(parts[0]);
  if (size_t q = r.target.find('?'); q != std::string::npos) {
    r.raw_query = r.target.substr(q + 1);
    r.query = fhirlake::http::ParseQuery(r.raw_query);
  }
  r.headers.Add("Host", "example.amazonaws.com");
  if (!parts[1].empty()) r.headers.Add("Authorization", std::string(parts[1]));
  if (!parts[2].empty()) r.headers.Add("X-Amz-Date", std::string(parts[2]));
  r.body = std::string(parts[3]);
  fhirlake::auth::SigV4Options o;
  o.region = "us-east-1";
  o.service = "service";
  constexpr fhirlake::EpochMillis kNow = 1440938160000;  // 2015-08-30T12:36:00Z, the AWS suite's time
  auto result = fhirlake::auth::VerifySigV4(
      r, o, kNow, [](std::string_view key) -> std::optional<fhirlake::sink::AwsCredentials> {
        if (key != "AKIDEXAMPLE") return std::nullopt;
        return fhirlake::sink::AwsCredentials{"AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", ""};
      });
  if (std::getenv("FHIRLAKE_FUZZ_VERBOSE") != nullptr) {
    std::fprintf(stderr, "%s\n", result.ok() ? ("verified: " + *result).c_str() : result.status().ToString().c_str());
  }
  return 0;
}
