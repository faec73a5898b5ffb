// SMART on FHIR Backend Services (the OAuth 2.0 client-credentials flow Bulk Data clients use): SMART scopes, the
// clients' JSON Web Keys (inline or fetched from a JWKS URL), the token endpoint (a client assertion JWT signed RS384
// or ES384 with the client's key, verified with libjwt against the key its JWKS names), the server's own access
// tokens (HS256 JWTs under a key kept in the data directory) and bearer JWTs of external identity providers (the
// configuration's `issuers`). Thread-safe.
#pragma once

#include <cstdio>
#include <map>
#include <memory>
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

// A public key of a JWKS, as PEM for libjwt, with the algorithm it verifies.
struct Jwk {
  std::string kid;
  std::string kty;  // "RSA" or "EC"
  // RS256/RS384/RS512 (an RSA key without "alg" verifies each of those the set accepts: alg empty), or the one ES
  // algorithm of an EC key's curve (P-256 ES256, P-384 ES384, P-521 ES512).
  std::string alg;
  std::string pem;
  bool Fits(std::string_view token_alg) const {
    return alg.empty() ? token_alg.starts_with("RS") && kty == "RSA" : alg == token_alg;
  }
};
// The algorithms a client assertion may be signed with (SMART Backend Services), and those an issuer may name.
inline const std::vector<std::string>& ClientAlgorithms() {
  static const std::vector<std::string> algs = {"RS384", "ES384"};
  return algs;
}
inline const std::vector<std::string>& IssuerAlgorithms() {
  static const std::vector<std::string> algs = {"RS256", "RS384", "RS512", "ES256", "ES384", "ES512"};
  return algs;
}
// Parses a JWKS ({"keys": [...]}, at most kMaxJwksKeys) of RSA (n, e; 2048 bits or more) and EC (P-256, P-384,
// P-521) public keys; a key that could verify none of `accepted` is refused, and so is a private key. kInvalid names
// the key. `skip_unusable` (a provider's published JWKS): keys that are not for signatures (`use` other than "sig",
// `key_ops` without "verify"), or of a kind or algorithm not accepted, are left out instead (each named in
// `skipped`, when given); a private key still refuses the whole set.
inline constexpr size_t kMaxJwksKeys = 64;
Result<std::vector<Jwk>> ParseJwks(std::string_view json, const std::vector<std::string>& accepted,
                                   bool skip_unusable = false, std::vector<std::string>* skipped = nullptr);

// A JWKS URL is https://, or http:// on a loopback host (127.0.0.0/8, [::1], localhost: tests). kInvalid says why.
Status CheckJwksUrl(std::string_view url);

// The keys of a client or an issuer: given inline, or fetched from a JWKS URL (by Fetch, when the configuration
// loads, and again when a token names a key not among them, at most once a minute: key rotation).
class KeySet {
 public:
  static std::shared_ptr<KeySet> Inline(std::vector<Jwk> keys);
  static std::shared_ptr<KeySet> FromUrl(std::string url, std::vector<std::string> accepted);
  // A URL's set: GET it now (5 s, 1 MiB at most, no redirects). kUnavailable / kInvalid say why (the keys held stay);
  // inline: Ok.
  Status Fetch();
  // Takes the keys `previous` holds when it is a set of the same URL (a reload keeps working keys until a fetch
  // replaces them: a provider that is down at that moment does not lock its users out).
  void AdoptKeys(KeySet& previous);
  const std::string& url() const { return url_; }
  // The keys fitting `alg` (and `kid`, when given); a URL's set with none is fetched again first, when its last
  // fetch is a minute old.
  std::vector<Jwk> KeysFor(std::string_view kid, std::string_view alg, EpochMillis now);

 private:
  std::string url_;
  std::vector<std::string> accepted_;
  std::mutex mu_;
  std::vector<Jwk> keys_;         // GUARDED_BY(mu_)
  EpochMillis last_attempt_ = 0;  // GUARDED_BY(mu_)
};

struct SmartClient {
  std::string client_id;
  std::shared_ptr<KeySet> keys;
  std::vector<std::string> scopes;  // what it may be granted
};

// An external identity provider whose bearer JWTs are accepted (mode smart) in place of this server's tokens.
struct Issuer {
  std::string issuer;    // the tokens' iss, exactly
  std::string audience;  // their aud must be (or hold) it
  std::vector<std::string> algorithms;
  std::shared_ptr<KeySet> keys;
  std::vector<std::string> scopes;  // the scopes its tokens may carry (others are ignored); empty: any
};

// What a valid access token says.
struct TokenClaims {
  std::string client_id;  // this server's tokens: the client; an issuer's: its sub
  std::string issuer;     // an issuer's tokens: its iss
  std::vector<Scope> scopes;
  EpochMillis expires = 0;
};

// Writes `bytes` to `path` (mode 0600) through a temp file that is fsynced and renamed over it, then fsyncs the
// directory: after a crash the file holds the old bytes or the new ones. False when any step fails.
bool ReplaceFileDurably(const std::string& path, std::string_view bytes);

// The ids (client|jti) of the client assertions already used, each until it expires: in memory, and with a file (one
// line per id, appended and fsynced before the token is issued), so that neither a reload nor a restart reopens a
// replay window. Thread-safe.
class ReplayGuard {
 public:
  // `path` empty: memory only. Otherwise the file's unexpired ids are read and the file rewritten with them.
  static Result<std::shared_ptr<ReplayGuard>> Open(const std::string& path, EpochMillis now);
  ~ReplayGuard();
  // kConflict when `key` was recorded and has not expired; kUnavailable when it cannot be recorded durably
  // (then no token may be issued); otherwise it is recorded until `expires`.
  Status Record(const std::string& key, EpochMillis expires, EpochMillis now);

 private:
  Status Compact(EpochMillis now);  // with mu_ held
  std::string path_;
  std::mutex mu_;
  std::map<std::string, EpochMillis> seen_;  // GUARDED_BY(mu_)
  std::FILE* file_ = nullptr;                // GUARDED_BY(mu_)
  size_t appended_ = 0;                      // GUARDED_BY(mu_): lines since the last compaction
};

class TokenService {
 public:
  // `token_key`: the HS256 key of the access tokens; `token_url`: the endpoint's absolute URL (the assertions' aud).
  // `replay`: where used assertion ids are kept (shared across reloads); null: a memory-only guard of its own.
  TokenService(std::vector<SmartClient> clients, std::string token_key, std::string token_url, int lifetime_s,
               const Clock& clock, std::shared_ptr<ReplayGuard> replay = nullptr);

  // POST {token_url}: form-encoded grant_type=client_credentials, client_assertion_type=...jwt-bearer,
  // client_assertion, scope. The answer is the token JSON or an OAuth error (400/401).
  http::Response HandleTokenRequest(const http::Request& request);
  // A bearer token of this server: signature (HS256 only), expiry. kUnauthorized with the reason.
  Result<TokenClaims> VerifyAccessToken(std::string_view token) const;

  const std::string& token_url() const { return token_url_; }
  // A bearer JWT of `issuer`: alg among its algorithms, signature under a key of its JWKS, iss, aud, exp (and nbf)
  // checked. kUnauthorized with the reason.
  Result<TokenClaims> VerifyIssuerToken(const Issuer& issuer, std::string_view token) const;

 private:
  Result<const SmartClient*> VerifyAssertion(std::string_view assertion);

  std::vector<SmartClient> clients_;
  std::string token_key_;
  std::string token_url_;
  int lifetime_s_;
  const Clock& clock_;
  std::shared_ptr<ReplayGuard> replay_;
};

// What a bearer token not signed by a key the server accepts is told (unknown issuer, algorithm or key alike).
extern const char* const kNotSignedByAKeyWeAccept;

// The `iss` claim of a compact JWS, unverified (to choose who verifies it); empty when there is none.
std::string PeekIssuer(std::string_view token);

// base64url without padding (RFC 7515), both ways; Decode returns nullopt for bad input.
std::string Base64UrlEncode(std::string_view bytes);
std::optional<std::string> Base64UrlDecode(std::string_view text);

}  // namespace fhirlake::auth
