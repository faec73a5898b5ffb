// SMART on FHIR Backend Services (the OAuth 2.0 client-credentials flow Bulk Data clients use): SMART scopes, the
// clients' JSON Web Keys, the token endpoint (a client assertion JWT signed RS384 or ES384 with the client's key,
// verified with libjwt against the key its JWKS names) and the server's own access tokens (HS256 JWTs under a key
// kept in the data directory). Thread-safe.
#pragma once

#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "common/time.h"
#include "http/http_types.h"

namespace fhirlake::auth {

// One SMART scope: v1 `system/Observation.read` / `.write` / `.*`, v2 `system/Patient.cruds` (any ordered subset of
// c, r, u, d, s). A v2.2 `?param=value` filter is ignored, as HealthLake documents for export.
struct Scope {
  std::string context;  // "system", "patient" or "user"
  std::string type;     // a resource type or "*"
  bool c = false, r = false, u = false, d = false, s = false;
  std::string text;  // as written
};
Result<Scope> ParseScope(std::string_view text);

// Whether `scopes` grant `permission` ('c', 'r', 'u', 'd' or 's') on `type` in the `system` context.
bool SystemScopeAllows(const std::vector<Scope>& scopes, std::string_view type, char permission);

// A public key of a client's JWKS, as PEM for libjwt, with what it may verify.
struct Jwk {
  std::string kid;
  std::string alg;  // "RS384" or "ES384"
  std::string pem;
};
// Parses a JWKS ({"keys": [...]}) of RSA (n, e) and EC P-384 (crv, x, y) public keys. kInvalid names the key.
Result<std::vector<Jwk>> ParseJwks(std::string_view json);

struct SmartClient {
  std::string client_id;
  std::vector<Jwk> keys;
  std::vector<std::string> scopes;  // what it may be granted
};

// What a valid access token says.
struct TokenClaims {
  std::string client_id;
  std::vector<Scope> scopes;
  EpochMillis expires = 0;
};

class TokenService {
 public:
  // `token_key`: the HS256 key of the access tokens; `token_url`: the endpoint's absolute URL (the assertions' aud).
  TokenService(std::vector<SmartClient> clients, std::string token_key, std::string token_url, int lifetime_s,
               const Clock& clock);

  // POST {token_url}: form-encoded grant_type=client_credentials, client_assertion_type=...jwt-bearer,
  // client_assertion, scope. The answer is the token JSON or an OAuth error (400/401).
  http::Response HandleTokenRequest(const http::Request& request);
  // A bearer token of this server: signature (HS256 only), expiry. kUnauthorized with the reason.
  Result<TokenClaims> VerifyAccessToken(std::string_view token) const;

  const std::string& token_url() const { return token_url_; }
  // Keeps the assertion ids `previous` has seen (a configuration reload must not reopen a replay window).
  void AdoptReplayRecords(TokenService& previous);

 private:
  Result<const SmartClient*> VerifyAssertion(std::string_view assertion);

  std::vector<SmartClient> clients_;
  std::string token_key_;
  std::string token_url_;
  int lifetime_s_;
  const Clock& clock_;
  std::mutex mu_;
  std::map<std::string, EpochMillis> seen_jti_;  // GUARDED_BY(mu_): client|jti -> when it may be forgotten
};

// base64url without padding (RFC 7515), both ways; Decode returns nullopt for bad input.
std::string Base64UrlEncode(std::string_view bytes);
std::optional<std::string> Base64UrlDecode(std::string_view text);

}  // namespace fhirlake::auth
