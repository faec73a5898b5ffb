// Fuzzes the --auth-config parser and the IAM policy parser (auth/authorizer.h, auth/policy.h) and evaluates what
// parses against a fixed request: the input is the JSON text. Every input gets a Status; none crashes.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "auth/authorizer.h"
#include "auth/policy.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto config = fhirlake::auth::ParseAuthConfig(text);
  auto policy = fhirlake::auth::ParsePolicy(text);
  fhirlake::auth::RequestFacts facts{"healthlake:ReadResource",
                                     "arn:aws:healthlake:us-east-1:111122223333:datastore/fhir/abc",
                                     {{"aws:SourceIp", "127.0.0.1"}, {"aws:ResourceTag/team", "research"}}};
  if (policy.ok()) (void)fhirlake::auth::Evaluate({*policy}, facts);
  if (config.ok()) {
    for (const auto& p : config->principals) (void)fhirlake::auth::Evaluate(p.policies, facts);
    (void)config->ModesFor("abc");
  }
  if (std::getenv("FHIRLAKE_FUZZ_VERBOSE") != nullptr) {
    std::fprintf(stderr, "config: %s; policy: %s\n", config.ok() ? "ok" : config.status().ToString().c_str(),
                 policy.ok() ? "ok" : policy.status().ToString().c_str());
  }
  return 0;
}
