// Fuzzes the JWT and JWKS parsers of SMART on FHIR (auth/smart.h). The first byte picks the entry point, the rest is
// its input: 0 a bearer token of this server (VerifyAccessToken), 1 a bearer token of an external issuer
// (VerifyIssuerToken, with a P-256 key made at start in its JWKS), 2 a JWKS document (ParseJwks), 3 a token request
// body (HandleTokenRequest, client assertions against the same key), 4 a scope string (ParseScope) and PeekIssuer.
// Every input must get an answer (never a crash), and none may be accepted: no input can carry a valid signature by
// chance, so an accepted token or a 200 from the token endpoint aborts.
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "auth/smart.h"
#include "common/time.h"

namespace {

using namespace fhirlake;

class FixedClock : public Clock {
 public:
  EpochMillis NowMillis() const override { return 1767225600000; }  // 2026-01-01T00:00:00Z
};

std::string Coordinate(EVP_PKEY* key, const char* name) {
  BIGNUM* bn = nullptr;
  EVP_PKEY_get_bn_param(key, name, &bn);
  std::string out(32, '\0');
  BN_bn2binpad(bn, reinterpret_cast<unsigned char*>(out.data()), 32);
  BN_free(bn);
  return out;
}

// A JWKS holding the public half of a fresh P-256 key (its private half is thrown away).
std::string FreshJwks() {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  if (key == nullptr) std::abort();
  const std::string x = auth::Base64UrlEncode(Coordinate(key, OSSL_PKEY_PARAM_EC_PUB_X));
  const std::string y = auth::Base64UrlEncode(Coordinate(key, OSSL_PKEY_PARAM_EC_PUB_Y));
  EVP_PKEY_free(key);
  return R"({"keys":[{"kty":"EC","crv":"P-256","kid":"k1","x":")" + x + R"(","y":")" + y + R"("}]})";
}

struct World {
  FixedClock clock;
  auth::Issuer issuer;
  std::unique_ptr<auth::TokenService> tokens;
  World() {
    auto keys = auth::ParseJwks(FreshJwks(), auth::IssuerAlgorithms());
    if (!keys.ok() || keys->size() != 1) std::abort();
    issuer.issuer = "https://idp.example";
    issuer.audience = "fhirlake";
    issuer.algorithms = {"RS256", "ES256"};
    issuer.keys = auth::KeySet::Inline(*keys);
    auth::SmartClient client;
    client.client_id = "bulk-client";
    client.scopes = {"system/*.read"};
    auto client_keys = auth::ParseJwks(FreshJwks(), auth::IssuerAlgorithms());
    if (!client_keys.ok()) std::abort();
    client.keys = auth::KeySet::Inline(*client_keys);
    tokens = std::make_unique<auth::TokenService>(std::vector<auth::SmartClient>{client}, std::string(64, 'k'),
                                                  "http://127.0.0.1:8080/auth/token", 300, clock);
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  static World world;
  const std::string input(reinterpret_cast<const char*>(data) + 1, size - 1);
  const bool verbose = std::getenv("FHIRLAKE_FUZZ_VERBOSE") != nullptr;
  switch (data[0] % 5) {
    case 0: {
      auto r = world.tokens->VerifyAccessToken(input);
      if (r.ok()) std::abort();  // accepted without the server's key
      if (verbose) std::fprintf(stderr, "%s\n", r.status().ToString().c_str());
      break;
    }
    case 1: {
      auto r = world.tokens->VerifyIssuerToken(world.issuer, input);
      if (r.ok()) std::abort();  // accepted without the issuer's private key
      if (verbose) std::fprintf(stderr, "%s\n", r.status().ToString().c_str());
      break;
    }
    case 2: {
      auto r = auth::ParseJwks(input, auth::IssuerAlgorithms());
      if (verbose) std::fprintf(stderr, "%s\n", r.ok() ? "parsed" : r.status().ToString().c_str());
      break;
    }
    case 3: {
      http::Request req;
      req.method = "POST";
      req.headers.Set("Content-Type", "application/x-www-form-urlencoded");
      req.body = input;
      http::Response resp = world.tokens->HandleTokenRequest(req);
      if (resp.status == 200) std::abort();  // a token for an assertion nobody could sign
      if (verbose) std::fprintf(stderr, "%d %s\n", resp.status, resp.body.c_str());
      break;
    }
    default: {
      auto s = auth::ParseScope(input);
      const std::string iss = auth::PeekIssuer(input);
      if (verbose) std::fprintf(stderr, "%s iss=%s\n", s.ok() ? "scope" : "not a scope", iss.c_str());
      break;
    }
  }
  return 0;
}
