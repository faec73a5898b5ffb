#include "auth/smart.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <fcntl.h>
#include <jwt.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>

#include "common/ids.h"
#include "common/json_escape.h"
#include "fhir/r4.h"

namespace fhirlake::auth {
namespace {

using nlohmann::json;

constexpr int64_t kMaxAssertionLifetimeMs = 5 * 60 * 1000;  // SMART: exp no more than five minutes ahead
constexpr int64_t kClockSkewMs = 60 * 1000;
constexpr std::string_view kAssertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

http::Response OAuthError(int status, std::string_view error, const std::string& description) {
  http::Response r = http::Response::Json(
      status, "{\"error\":" + JsonString(error) + ",\"error_description\":" + JsonString(description) + "}",
      "application/json");
  r.headers.Set("Cache-Control", "no-store");
  return r;
}

struct JwtParts {
  json header, payload;
};

// The header and payload of a compact JWS, not verified (to find the key that verifies it).
Result<JwtParts> PeekJwt(std::string_view token) {
  const size_t a = token.find('.');
  const size_t b = a == std::string_view::npos ? a : token.find('.', a + 1);
  if (b == std::string_view::npos || token.find('.', b + 1) != std::string_view::npos) {
    return Status::Invalid("not a compact JWS (three base64url parts separated by '.')");
  }
  auto h = Base64UrlDecode(token.substr(0, a));
  auto p = Base64UrlDecode(token.substr(a + 1, b - a - 1));
  if (!h || !p) return Status::Invalid("a part is not base64url");
  JwtParts out{json::parse(*h, nullptr, false), json::parse(*p, nullptr, false)};
  if (!out.header.is_object() || !out.payload.is_object()) return Status::Invalid("the header or claims are not JSON");
  return out;
}

std::string StringClaim(const json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

// A NumericDate claim (seconds): an integer between 0 and the year 5000, else nullopt.
std::optional<int64_t> NumberClaim(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !(it->is_number_integer() || it->is_number_unsigned())) return std::nullopt;
  if (it->is_number_unsigned() ? it->get<uint64_t>() > 95617584000ULL : it->get<int64_t>() < 0) return std::nullopt;
  const int64_t v = it->get<int64_t>();
  if (v > 95617584000LL) return std::nullopt;
  return v;
}

// Verifies `token`'s signature with libjwt under `key` (PEM, or the HS256 secret). libjwt trusts the header's alg (an
// HS384 token "signed" with a PEM public key as the secret verifies), so the caller allow-lists the alg first, and the
// alg libjwt verified with must be `expected` as well.
bool SignatureValid(std::string_view token, const std::string& key, jwt_alg_t expected) {
  jwt_t* jwt = nullptr;
  std::string t(token);
  const int rc =
      jwt_decode(&jwt, t.c_str(), reinterpret_cast<const unsigned char*>(key.data()), static_cast<int>(key.size()));
  const bool ok = rc == 0 && jwt != nullptr && jwt_get_alg(jwt) == expected;
  if (jwt != nullptr) jwt_free(jwt);
  return ok;
}

struct PkeyFree {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct BnFree {
  void operator()(BIGNUM* b) const { BN_free(b); }
};

std::optional<std::string> ToPem(EVP_PKEY* key) {
  BIO* bio = BIO_new(BIO_s_mem());
  if (bio == nullptr) return std::nullopt;
  std::optional<std::string> out;
  if (PEM_write_bio_PUBKEY(bio, key) == 1) {
    char* data = nullptr;
    long n = BIO_get_mem_data(bio, &data);
    out = std::string(data, static_cast<size_t>(n));
  }
  BIO_free(bio);
  return out;
}

std::optional<std::string> RsaPem(const std::string& n, const std::string& e) {
  std::unique_ptr<BIGNUM, BnFree> bn_n(
      BN_bin2bn(reinterpret_cast<const unsigned char*>(n.data()), static_cast<int>(n.size()), nullptr));
  std::unique_ptr<BIGNUM, BnFree> bn_e(
      BN_bin2bn(reinterpret_cast<const unsigned char*>(e.data()), static_cast<int>(e.size()), nullptr));
  if (!bn_n || !bn_e) return std::nullopt;
  OSSL_PARAM_BLD* bld = OSSL_PARAM_BLD_new();
  if (bld == nullptr) return std::nullopt;
  OSSL_PARAM* params = nullptr;
  if (OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn_n.get()) == 1 &&
      OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, bn_e.get()) == 1) {
    params = OSSL_PARAM_BLD_to_param(bld);
  }
  OSSL_PARAM_BLD_free(bld);
  if (params == nullptr) return std::nullopt;
  EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new_from_name(nullptr, "RSA", nullptr);
  EVP_PKEY* raw = nullptr;
  if (ctx != nullptr && EVP_PKEY_fromdata_init(ctx) == 1) EVP_PKEY_fromdata(ctx, &raw, EVP_PKEY_PUBLIC_KEY, params);
  EVP_PKEY_CTX_free(ctx);
  OSSL_PARAM_free(params);
  std::unique_ptr<EVP_PKEY, PkeyFree> key(raw);
  if (!key || EVP_PKEY_get_bits(key.get()) < 2048) return std::nullopt;
  // e = 1 (or 3, or even) would make signatures forgeable or weak: RFC 8017 keys with e >= 65537, odd n and e.
  if (!BN_is_odd(bn_n.get()) || !BN_is_odd(bn_e.get()) || BN_num_bits(bn_e.get()) < 17) return std::nullopt;
  EVP_PKEY_CTX* check = EVP_PKEY_CTX_new_from_pkey(nullptr, key.get(), nullptr);
  const bool sound = check != nullptr && EVP_PKEY_public_check(check) == 1;
  EVP_PKEY_CTX_free(check);
  if (!sound) return std::nullopt;
  return ToPem(key.get());
}

// An EC public key on `group` (an OpenSSL group name) from its coordinates, each `size` bytes.
std::optional<std::string> EcPem(const char* group, size_t size, const std::string& x, const std::string& y) {
  if (x.size() != size || y.size() != size) return std::nullopt;
  std::string point = "\x04" + x + y;
  OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, const_cast<char*>(group), 0),
                         OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, point.data(), point.size()),
                         OSSL_PARAM_construct_end()};
  EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new_from_name(nullptr, "EC", nullptr);
  EVP_PKEY* raw = nullptr;
  if (ctx != nullptr && EVP_PKEY_fromdata_init(ctx) == 1) EVP_PKEY_fromdata(ctx, &raw, EVP_PKEY_PUBLIC_KEY, params);
  EVP_PKEY_CTX_free(ctx);
  std::unique_ptr<EVP_PKEY, PkeyFree> key(raw);
  if (!key) return std::nullopt;
  return ToPem(key.get());
}

std::string JoinAlgs(const std::vector<std::string>& algs) {
  std::string out;
  for (const auto& a : algs) out += (out.empty() ? "" : ", ") + a;
  return out;
}

bool Accepts(const std::vector<std::string>& accepted, std::string_view alg) {
  return std::find(accepted.begin(), accepted.end(), alg) != accepted.end();
}

jwt_alg_t LibjwtAlg(std::string_view alg) {
  static const std::pair<std::string_view, jwt_alg_t> kAlgs[] = {{"RS256", JWT_ALG_RS256}, {"RS384", JWT_ALG_RS384},
                                                                 {"RS512", JWT_ALG_RS512}, {"ES256", JWT_ALG_ES256},
                                                                 {"ES384", JWT_ALG_ES384}, {"ES512", JWT_ALG_ES512}};
  for (const auto& [name, value] : kAlgs) {
    if (name == alg) return value;
  }
  return JWT_ALG_INVAL;
}

// Whether the JWT's aud (a string, or an array of strings) is or holds `audience`.
bool AudienceHolds(const json& claims, const std::string& audience) {
  auto aud = claims.find("aud");
  if (aud == claims.end()) return false;
  if (aud->is_string()) return *aud == audience;
  return aud->is_array() && std::any_of(aud->begin(), aud->end(), [&](const json& a) { return a == audience; });
}

// The scopes of a space-separated list; those that are not SMART scopes are left out.
std::vector<Scope> ParseScopeList(std::string_view list) {
  std::vector<Scope> out;
  for (size_t start = 0; start < list.size();) {
    size_t sp = list.find(' ', start);
    auto s = ParseScope(list.substr(start, sp == std::string_view::npos ? std::string_view::npos : sp - start));
    if (s.ok()) out.push_back(std::move(*s));
    if (sp == std::string_view::npos) break;
    start = sp + 1;
  }
  return out;
}

constexpr size_t kMaxJwksBytes = 1 << 20;
constexpr EpochMillis kJwksRefetchMs = 60 * 1000;

size_t CollectBody(char* data, size_t size, size_t n, void* user) {
  auto* out = static_cast<std::string*>(user);
  if (out->size() + size * n > kMaxJwksBytes) return 0;  // too large: the transfer fails
  out->append(data, size * n);
  return size * n;
}

struct CurlUrlFree {
  void operator()(CURLU* u) const { curl_url_cleanup(u); }
};

std::string FormValue(const std::vector<http::QueryParam>& form, std::string_view name, int* count) {
  std::string out;
  *count = 0;
  for (const auto& p : form) {
    if (p.name == name) {
      out = p.value;
      ++*count;
    }
  }
  return out;
}

}  // namespace

std::string Base64UrlEncode(std::string_view bytes) {
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string out;
  size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    const uint32_t v = (uint8_t(bytes[i]) << 16) | (uint8_t(bytes[i + 1]) << 8) | uint8_t(bytes[i + 2]);
    for (int s : {18, 12, 6, 0}) out.push_back(kAlphabet[(v >> s) & 63]);
  }
  if (i < bytes.size()) {
    uint32_t v = uint8_t(bytes[i]) << 16;
    if (i + 1 < bytes.size()) v |= uint8_t(bytes[i + 1]) << 8;
    out.push_back(kAlphabet[(v >> 18) & 63]);
    out.push_back(kAlphabet[(v >> 12) & 63]);
    if (i + 1 < bytes.size()) out.push_back(kAlphabet[(v >> 6) & 63]);
  }
  return out;
}

std::optional<std::string> Base64UrlDecode(std::string_view text) {
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '-') return 62;
    if (c == '_') return 63;
    return -1;
  };
  if (text.size() % 4 == 1) return std::nullopt;
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (char c : text) {
    const int v = value(c);
    if (v < 0) return std::nullopt;
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xFF));
    }
  }
  if (bits > 0 && (acc & ((1u << bits) - 1)) != 0) return std::nullopt;  // non-canonical trailing bits
  return out;
}

Result<Scope> ParseScope(std::string_view text) {
  Scope s;
  s.text = std::string(text);
  std::string_view t = text.substr(0, text.find('?'));  // v2.2 filters: ignored
  const size_t slash = t.find('/');
  const size_t dot = t.rfind('.');
  if (slash == std::string_view::npos || dot == std::string_view::npos || dot < slash) {
    return Status::Invalid("scope '" + std::string(text) + "' is not context/Type.permissions");
  }
  s.context = std::string(t.substr(0, slash));
  s.type = std::string(t.substr(slash + 1, dot - slash - 1));
  const std::string_view perm = t.substr(dot + 1);
  if (s.context != "system" && s.context != "patient" && s.context != "user") {
    return Status::Invalid("scope '" + std::string(text) + "': the context must be system, patient or user");
  }
  if (s.type != "*" && !fhir::IsKnownResourceType(s.type)) {
    return Status::Invalid("scope '" + std::string(text) + "': '" + s.type + "' is not an R4 resource type");
  }
  if (perm == "read") {
    s.r = s.s = true;
  } else if (perm == "write") {
    s.c = s.u = s.d = true;
  } else if (perm == "*") {
    s.c = s.r = s.u = s.d = s.s = true;
  } else {
    // v2: letters of "cruds", each at most once, in that order.
    size_t at = 0;
    const std::string_view order = "cruds";
    for (char ch : perm) {
      const size_t k = order.find(ch, at);
      if (k == std::string_view::npos) {
        return Status::Invalid("scope '" + std::string(text) +
                               "': permissions are read, write, * or an ordered subset of cruds");
      }
      at = k + 1;
      (ch == 'c' ? s.c : ch == 'r' ? s.r : ch == 'u' ? s.u : ch == 'd' ? s.d : s.s) = true;
    }
    if (perm.empty()) return Status::Invalid("scope '" + std::string(text) + "' has no permissions");
  }
  return s;
}

bool SystemScopeAllows(const std::vector<Scope>& scopes, std::string_view type, char permission) {
  return std::any_of(scopes.begin(), scopes.end(), [&](const Scope& s) {
    if (s.context != "system" || (s.type != "*" && s.type != type)) return false;
    switch (permission) {
      case 'c':
        return s.c;
      case 'r':
        return s.r;
      case 'u':
        return s.u;
      case 'd':
        return s.d;
      case 's':
        return s.s;
    }
    return false;
  });
}

namespace {

// One public key of a JWKS (`where` names it in messages); kInvalid when it could verify none of `accepted`.
Result<Jwk> ParseJwk(const json& k, const std::vector<std::string>& accepted, const std::string& where) {
  std::vector<std::string> curves;  // the EC curves `accepted` allows, for the messages
  for (const auto& [crv, alg] : {std::pair{"P-256", "ES256"}, {"P-384", "ES384"}, {"P-521", "ES512"}}) {
    if (Accepts(accepted, alg)) curves.push_back(crv);
  }
  const bool any_rsa = std::any_of(accepted.begin(), accepted.end(), [](const auto& a) { return a.starts_with("RS"); });
  Jwk jwk;
  jwk.kid = StringClaim(k, "kid");
  jwk.kty = StringClaim(k, "kty");
  std::string alg = StringClaim(k, "alg");
  if (jwk.kty == "RSA") {
    auto n = Base64UrlDecode(StringClaim(k, "n"));
    auto e = Base64UrlDecode(StringClaim(k, "e"));
    if (!n || !e || n->empty() || e->empty()) return Status::Invalid(where + ": an RSA key needs n and e");
    if (!any_rsa)
      return Status::Invalid(where + ": RSA keys are not accepted here (accepted: " + JoinAlgs(accepted) + ")");
    if (!alg.empty() && (!alg.starts_with("RS") || !Accepts(accepted, alg))) {
      return Status::Invalid(where + ": an RSA key with alg " + alg +
                             " is not accepted here (accepted: " + JoinAlgs(accepted) + ")");
    }
    auto pem = RsaPem(*n, *e);
    if (!pem) {
      return Status::Invalid(where +
                             ": not a usable RSA public key (2048 bits or more, odd modulus, exponent 65537 "
                             "or larger)");
    }
    jwk.alg = alg;
    jwk.pem = std::move(*pem);
  } else if (jwk.kty == "EC") {
    const std::string crv = StringClaim(k, "crv");
    const char* group = crv == "P-256"   ? "prime256v1"
                        : crv == "P-384" ? "secp384r1"
                        : crv == "P-521" ? "secp521r1"
                                         : nullptr;
    const std::string curve_alg = crv == "P-256" ? "ES256" : crv == "P-384" ? "ES384" : "ES512";
    if (group == nullptr || !Accepts(accepted, curve_alg)) {
      std::string list;
      for (const auto& c : curves) list += (list.empty() ? "" : ", ") + c;
      return Status::Invalid(where + ": an EC key on curve '" + crv + "' is not accepted here (accepted curves: " +
                             (list.empty() ? std::string("none") : list) + ")");
    }
    if (!alg.empty() && alg != curve_alg) {
      return Status::Invalid(where + ": an EC key on " + crv + " verifies " + curve_alg + ", not " + alg);
    }
    auto x = Base64UrlDecode(StringClaim(k, "x"));
    auto y = Base64UrlDecode(StringClaim(k, "y"));
    const size_t size = crv == "P-256" ? 32 : crv == "P-384" ? 48 : 66;
    std::optional<std::string> pem = x && y ? EcPem(group, size, *x, *y) : std::nullopt;
    if (!pem) return Status::Invalid(where + ": not a usable " + crv + " public key");
    jwk.alg = curve_alg;
    jwk.pem = std::move(*pem);
  } else {
    return Status::Invalid(where + ": kty must be RSA or EC");
  }
  return jwk;
}

}  // namespace

Result<std::vector<Jwk>> ParseJwks(std::string_view text, const std::vector<std::string>& accepted, bool skip_unusable,
                                   std::vector<std::string>* skipped) {
  json doc = json::parse(text, nullptr, false);
  if (!doc.is_object() || !doc.contains("keys") || !doc["keys"].is_array()) {
    return Status::Invalid("a JWKS must be an object with a \"keys\" array");
  }
  const json& keys = doc["keys"];
  if (keys.size() > kMaxJwksKeys) {
    return Status::Invalid("a JWKS may hold at most " + std::to_string(kMaxJwksKeys) + " keys (it has " +
                           std::to_string(keys.size()) + ")");
  }
  for (size_t i = 0; i < keys.size(); ++i) {
    const std::string where = "keys[" + std::to_string(i) + "]";
    if (!keys[i].is_object()) return Status::Invalid(where + " must be an object");
    if (keys[i].contains("d")) return Status::Invalid(where + " is a private key: register the public key only");
  }
  std::vector<Jwk> out;
  for (size_t i = 0; i < keys.size(); ++i) {
    const json& k = keys[i];
    const std::string where = "keys[" + std::to_string(i) + "]";
    if (skip_unusable) {
      // A provider's JWKS may also publish encryption keys and kinds this server does not verify with.
      const std::string use = StringClaim(k, "use");
      const bool not_for_verify = k.contains("key_ops") && k["key_ops"].is_array() &&
                                  std::find(k["key_ops"].begin(), k["key_ops"].end(), "verify") == k["key_ops"].end();
      if ((!use.empty() && use != "sig") || not_for_verify) {
        if (skipped != nullptr) skipped->push_back(where + ": not a signature key");
        continue;
      }
    }
    auto key = ParseJwk(k, accepted, where);
    if (!key.ok() && skip_unusable) {
      if (skipped != nullptr) skipped->push_back(key.status().message());
      continue;
    }
    if (!key.ok()) return key.status();
    out.push_back(std::move(*key));
  }
  return out;
}

Status CheckJwksUrl(std::string_view url) {
  std::unique_ptr<CURLU, CurlUrlFree> u(curl_url());
  if (!u) return Status::Internal("no memory for a URL");
  const std::string text(url);
  if (curl_url_set(u.get(), CURLUPART_URL, text.c_str(), 0) != CURLUE_OK) {
    return Status::Invalid("'" + text + "' is not an absolute URL");
  }
  char* scheme = nullptr;
  char* host = nullptr;
  curl_url_get(u.get(), CURLUPART_SCHEME, &scheme, 0);
  curl_url_get(u.get(), CURLUPART_HOST, &host, 0);
  const std::string s = scheme != nullptr ? scheme : "";
  const std::string h = host != nullptr ? host : "";
  curl_free(scheme);
  curl_free(host);
  if (s == "https") return Status::Ok();
  in_addr v4{};
  const bool loopback =
      h == "localhost" || h == "[::1]" || (inet_pton(AF_INET, h.c_str(), &v4) == 1 && (ntohl(v4.s_addr) >> 24) == 127);
  if (s == "http" && loopback) return Status::Ok();
  return Status::Invalid("'" + text + "': a JWKS URL must be https:// (http:// only on a loopback host)");
}

std::shared_ptr<KeySet> KeySet::Inline(std::vector<Jwk> keys) {
  auto set = std::make_shared<KeySet>();
  set->keys_ = std::move(keys);
  return set;
}

std::shared_ptr<KeySet> KeySet::FromUrl(std::string url, std::vector<std::string> accepted) {
  auto set = std::make_shared<KeySet>();
  set->url_ = std::move(url);
  set->accepted_ = std::move(accepted);
  return set;
}

Status KeySet::Fetch() {
  if (url_.empty()) return Status::Ok();
  std::string body;
  long code = 0;
  CURL* curl = curl_easy_init();
  if (curl == nullptr) return Status::Internal("libcurl could not start a transfer");
  curl_easy_setopt(curl, CURLOPT_URL, url_.c_str());
  curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 5000L);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, CollectBody);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &body);
  const CURLcode rc = curl_easy_perform(curl);
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &code);
  curl_easy_cleanup(curl);
  if (rc != CURLE_OK) {
    return Status::Unavailable("cannot fetch the JWKS " + url_ + ": " + curl_easy_strerror(rc));
  }
  if (code != 200) return Status::Unavailable("the JWKS " + url_ + " answered HTTP " + std::to_string(code));
  std::vector<std::string> skipped;
  auto keys = ParseJwks(body, accepted_, /*skip_unusable=*/true, &skipped);
  if (!keys.ok()) return keys.status().WithContext("the JWKS " + url_);
  for (const auto& why : skipped) spdlog::info("event=jwks_key_skipped url={} key=\"{}\"", url_, why);
  std::lock_guard<std::mutex> lock(mu_);
  keys_ = std::move(*keys);
  return Status::Ok();
}

void KeySet::AdoptKeys(KeySet& previous) {
  if (&previous == this || url_.empty() || previous.url_ != url_) return;
  std::scoped_lock lock(mu_, previous.mu_);
  keys_ = previous.keys_;
}

std::vector<Jwk> KeySet::KeysFor(std::string_view kid, std::string_view alg, EpochMillis now) {
  auto fitting = [&] {
    std::vector<Jwk> out;
    for (const auto& k : keys_) {
      if (k.Fits(alg) && (kid.empty() || k.kid == kid)) out.push_back(k);
    }
    return out;
  };
  {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<Jwk> out = fitting();
    if (!out.empty() || url_.empty() || now - last_attempt_ < kJwksRefetchMs) return out;
    last_attempt_ = now;
  }
  // The issuer may have rotated its keys: fetch again (outside the lock; a failure keeps the keys known).
  if (Status st = Fetch(); !st.ok()) {
    spdlog::warn("event=jwks_refetch_failed url={} reason=\"{}\"", url_, st.message());
  }
  std::lock_guard<std::mutex> lock(mu_);
  return fitting();
}

const char* const kNotSignedByAKeyWeAccept =
    "The access token is not signed by a key of this server or of a configured issuer";

std::string PeekIssuer(std::string_view token) {
  auto parts = PeekJwt(token);
  return parts.ok() ? StringClaim(parts->payload, "iss") : std::string();
}

TokenService::TokenService(std::vector<SmartClient> clients, std::string token_key, std::string token_url,
                           int lifetime_s, const Clock& clock, std::shared_ptr<ReplayGuard> replay)
    : clients_(std::move(clients)),
      token_key_(std::move(token_key)),
      token_url_(std::move(token_url)),
      lifetime_s_(lifetime_s),
      clock_(clock),
      replay_(replay ? std::move(replay) : *ReplayGuard::Open("", 0)) {}

Result<const SmartClient*> TokenService::VerifyAssertion(std::string_view assertion) {
  auto parts = PeekJwt(assertion);
  if (!parts.ok()) return Status::Unauthorized("client_assertion: " + parts.status().message());
  const std::string alg = StringClaim(parts->header, "alg");
  if (alg != "RS384" && alg != "ES384") {
    return Status::Unauthorized("client_assertion: alg '" + alg + "' is not accepted (RS384 or ES384)");
  }
  const std::string iss = StringClaim(parts->payload, "iss");
  const SmartClient* client = nullptr;
  for (const auto& c : clients_) {
    if (c.client_id == iss) client = &c;
  }
  // The same words for an unknown client as for a wrong key: the answer does not tell which client ids exist.
  if (client == nullptr)
    return Status::Unauthorized("client_assertion: it is not signed by a key of a registered client");
  const std::string kid = StringClaim(parts->header, "kid");
  const std::vector<Jwk> keys = client->keys->KeysFor(kid, alg, clock_.NowMillis());
  if (keys.size() > 1) return Status::Unauthorized("client_assertion: several keys fit; name one with kid");
  if (keys.empty()) {
    return Status::Unauthorized("client_assertion: it is not signed by a key of a registered client (no " + alg +
                                " key" + (kid.empty() ? std::string() : " with that kid") + ")");
  }
  if (!SignatureValid(assertion, keys.front().pem, LibjwtAlg(alg))) {
    return Status::Unauthorized("client_assertion: it is not signed by a key of a registered client");
  }
  const json& c = parts->payload;
  if (StringClaim(c, "sub") != client->client_id) return Status::Unauthorized("client_assertion: sub must equal iss");
  if (!AudienceHolds(c, token_url_))
    return Status::Unauthorized("client_assertion: aud must be the token endpoint " + token_url_);
  const EpochMillis now = clock_.NowMillis();
  auto exp = NumberClaim(c, "exp");
  if (!exp) return Status::Unauthorized("client_assertion: exp is required");
  const EpochMillis exp_ms = *exp * 1000;
  if (exp_ms + kClockSkewMs < now) return Status::Unauthorized("client_assertion: it expired");
  if (exp_ms > now + kMaxAssertionLifetimeMs + kClockSkewMs) {
    return Status::Unauthorized("client_assertion: exp is more than five minutes ahead");
  }
  const std::string jti = StringClaim(c, "jti");
  if (jti.empty()) return Status::Unauthorized("client_assertion: jti is required");
  Status recorded = replay_->Record(client->client_id + "|" + jti, exp_ms + kClockSkewMs, now);
  if (recorded.code() == StatusCode::kConflict) {
    return Status::Unauthorized("client_assertion: jti was used already (a replay)");
  }
  RETURN_IF_ERROR(recorded);
  return client;
}

http::Response TokenService::HandleTokenRequest(const http::Request& request) {
  if (request.headers.Get("Content-Type").substr(0, 33) != "application/x-www-form-urlencoded") {
    return OAuthError(400, "invalid_request", "send the token request as application/x-www-form-urlencoded");
  }
  const std::vector<http::QueryParam> form = http::ParseQuery(request.body);
  int n = 0;
  const std::string grant = FormValue(form, "grant_type", &n);
  if (n != 1) return OAuthError(400, "invalid_request", "grant_type is required (once)");
  if (grant != "client_credentials") {
    return OAuthError(400, "unsupported_grant_type", "only grant_type=client_credentials is supported");
  }
  if (FormValue(form, "client_assertion_type", &n) != kAssertionType || n != 1) {
    return OAuthError(400, "invalid_request", "client_assertion_type must be " + std::string(kAssertionType));
  }
  const std::string assertion = FormValue(form, "client_assertion", &n);
  if (n != 1 || assertion.empty()) return OAuthError(400, "invalid_request", "client_assertion is required (once)");
  auto client = VerifyAssertion(assertion);
  if (!client.ok() && client.status().code() == StatusCode::kUnavailable) {
    return OAuthError(503, "temporarily_unavailable", client.status().message());
  }
  if (!client.ok()) return OAuthError(401, "invalid_client", client.status().message());
  std::vector<std::string> granted;
  const std::string requested = FormValue(form, "scope", &n);
  if (n > 1) return OAuthError(400, "invalid_request", "scope is given more than once");
  if (requested.empty()) {
    granted = (*client)->scopes;
  } else {
    for (size_t start = 0; start <= requested.size();) {
      size_t sp = requested.find(' ', start);
      std::string one = requested.substr(start, sp == std::string::npos ? std::string::npos : sp - start);
      if (!one.empty()) {
        if (!ParseScope(one).ok()) return OAuthError(400, "invalid_scope", "scope '" + one + "' is not a SMART scope");
        if (std::find((*client)->scopes.begin(), (*client)->scopes.end(), one) == (*client)->scopes.end()) {
          return OAuthError(400, "invalid_scope",
                            "scope '" + one + "' is not granted to client " + (*client)->client_id);
        }
        if (std::find(granted.begin(), granted.end(), one) == granted.end()) granted.push_back(one);
      }
      if (sp == std::string::npos) break;
      start = sp + 1;
    }
  }
  std::string scope;
  for (const auto& s : granted) scope += (scope.empty() ? "" : " ") + s;
  const int64_t now_s = clock_.NowMillis() / 1000;
  jwt_t* jwt = nullptr;
  if (jwt_new(&jwt) != 0) return OAuthError(500, "server_error", "the token could not be made");
  std::unique_ptr<jwt_t, void (*)(jwt_t*)> guard(jwt, jwt_free);
  const std::string jti = NewHexId();
  bool ok = jwt_add_grant(jwt, "iss", token_url_.c_str()) == 0 &&
            jwt_add_grant(jwt, "sub", (*client)->client_id.c_str()) == 0 &&
            jwt_add_grant(jwt, "scope", scope.c_str()) == 0 && jwt_add_grant(jwt, "jti", jti.c_str()) == 0 &&
            jwt_add_grant_int(jwt, "iat", now_s) == 0 && jwt_add_grant_int(jwt, "exp", now_s + lifetime_s_) == 0 &&
            jwt_set_alg(jwt, JWT_ALG_HS256, reinterpret_cast<const unsigned char*>(token_key_.data()),
                        static_cast<int>(token_key_.size())) == 0;
  char* encoded = ok ? jwt_encode_str(jwt) : nullptr;
  if (encoded == nullptr) return OAuthError(500, "server_error", "the token could not be made");
  std::string token(encoded);
  std::free(encoded);
  http::Response r =
      http::Response::Json(200,
                           "{\"access_token\":" + JsonString(token) + ",\"token_type\":\"bearer\",\"expires_in\":" +
                               std::to_string(lifetime_s_) + ",\"scope\":" + JsonString(scope) + "}",
                           "application/json");
  r.headers.Set("Cache-Control", "no-store");
  return r;
}

bool ReplaceFileDurably(const std::string& path, std::string_view bytes) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return false;
  bool ok = ::write(fd, bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size()) && ::fsync(fd) == 0;
  ok = ::close(fd) == 0 && ok;
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) return false;
  // The rename itself is durable only once the directory is.
  const std::string dir = path.substr(0, path.rfind('/') == std::string::npos ? 0 : path.rfind('/'));
  const int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return false;
  ok = ::fsync(dfd) == 0;
  ::close(dfd);
  return ok;
}

Result<std::shared_ptr<ReplayGuard>> ReplayGuard::Open(const std::string& path, EpochMillis now) {
  auto guard = std::shared_ptr<ReplayGuard>(new ReplayGuard());
  guard->path_ = path;
  if (path.empty()) return guard;
  if (std::FILE* in = std::fopen(path.c_str(), "re")) {
    char line[1024];
    while (std::fgets(line, sizeof line, in) != nullptr) {
      // "{expires-ms} {base64url(client|jti)}"; a torn last line (a crash mid-append) is skipped.
      char* space = std::strchr(line, ' ');
      char* nl = std::strchr(line, '\n');
      if (space == nullptr || nl == nullptr) continue;
      *space = *nl = '\0';
      const EpochMillis expires = std::strtoll(line, nullptr, 10);
      auto key = Base64UrlDecode(space + 1);
      if (key && expires >= now) guard->seen_[*key] = expires;
    }
    std::fclose(in);
  }
  std::lock_guard<std::mutex> lock(guard->mu_);
  RETURN_IF_ERROR(guard->Compact(now));
  return guard;
}

ReplayGuard::~ReplayGuard() {
  if (file_ != nullptr) std::fclose(file_);
}

// Rewrites the file with the unexpired ids (a temp file, fsynced, renamed over it) and reopens it for appending.
Status ReplayGuard::Compact(EpochMillis now) {
  std::erase_if(seen_, [&](const auto& e) { return e.second < now; });
  if (path_.empty()) return Status::Ok();
  if (file_ != nullptr) std::fclose(file_);
  file_ = nullptr;
  std::string lines;
  for (const auto& [key, expires] : seen_) lines += std::to_string(expires) + " " + Base64UrlEncode(key) + "\n";
  if (!ReplaceFileDurably(path_, lines)) {
    return Status::Unavailable("cannot write the used client assertion ids under the data directory's auth/ folder");
  }
  file_ = std::fopen(path_.c_str(), "ae");
  if (file_ == nullptr) return Status::Unavailable("cannot append to the used client assertion ids");
  appended_ = 0;
  return Status::Ok();
}

Status ReplayGuard::Record(const std::string& key, EpochMillis expires, EpochMillis now) {
  std::lock_guard<std::mutex> lock(mu_);
  if (auto it = seen_.find(key); it != seen_.end() && it->second >= now) {
    return Status::Conflict("client assertion id used already");
  }
  if (!path_.empty() && (file_ == nullptr || appended_ >= 10000)) RETURN_IF_ERROR(Compact(now));
  seen_[key] = expires;
  if (path_.empty()) {
    std::erase_if(seen_, [&](const auto& e) { return e.second < now; });
    return Status::Ok();
  }
  const std::string line = std::to_string(expires) + " " + Base64UrlEncode(key) + "\n";
  const bool ok = std::fputs(line.c_str(), file_) >= 0 && std::fflush(file_) == 0 && ::fsync(fileno(file_)) == 0;
  if (!ok) {
    seen_.erase(key);  // not durable: the token is not issued, and the id may be tried again
    std::fclose(file_);
    file_ = nullptr;  // the next Record rewrites the file
    return Status::Unavailable("cannot record the client assertion id durably; retry");
  }
  ++appended_;
  return Status::Ok();
}

Result<TokenClaims> TokenService::VerifyAccessToken(std::string_view token) const {
  auto parts = PeekJwt(token);
  if (!parts.ok()) return Status::Unauthorized("The access token is not valid: " + parts.status().message());
  if (StringClaim(parts->header, "alg") != "HS256")
    return Status::Unauthorized("The access token is not this server's");
  if (!SignatureValid(token, token_key_, JWT_ALG_HS256)) {
    return Status::Unauthorized("The access token's signature is not valid");
  }
  if (StringClaim(parts->payload, "iss") != token_url_) {
    return Status::Unauthorized("The access token was not issued by this server");
  }
  auto exp = NumberClaim(parts->payload, "exp");
  const EpochMillis now = clock_.NowMillis();
  if (!exp || *exp * 1000 <= now) return Status::Unauthorized("The access token expired; request a new one");
  TokenClaims out;
  out.client_id = StringClaim(parts->payload, "sub");
  out.expires = *exp * 1000;
  out.scopes = ParseScopeList(StringClaim(parts->payload, "scope"));
  return out;
}

Result<TokenClaims> TokenService::VerifyIssuerToken(const Issuer& issuer, std::string_view token) const {
  auto parts = PeekJwt(token);
  if (!parts.ok()) return Status::Unauthorized("The access token is not valid: " + parts.status().message());
  const std::string alg = StringClaim(parts->header, "alg");
  // Before the signature is verified the answer does not say which issuers exist or what they accept (the same words
  // as for an unknown issuer); the log has the reason.
  auto unsigned_token = [&](const std::string& why) {
    spdlog::info("event=issuer_token_refused issuer={} reason=\"{}\"", issuer.issuer, why);
    return Status::Unauthorized(kNotSignedByAKeyWeAccept);
  };
  if (!Accepts(issuer.algorithms, alg) || LibjwtAlg(alg) == JWT_ALG_INVAL) {
    return unsigned_token("alg '" + alg.substr(0, 20) + "' is not accepted (accepted: " + JoinAlgs(issuer.algorithms) +
                          ")");
  }
  const EpochMillis now = clock_.NowMillis();
  const std::vector<Jwk> keys = issuer.keys->KeysFor(StringClaim(parts->header, "kid"), alg, now);
  const bool signed_ok =
      std::any_of(keys.begin(), keys.end(), [&](const Jwk& k) { return SignatureValid(token, k.pem, LibjwtAlg(alg)); });
  if (!signed_ok) return unsigned_token("no key of its JWKS verifies the signature");
  const json& c = parts->payload;
  if (StringClaim(c, "iss") != issuer.issuer) return Status::Unauthorized("The access token's iss is not its issuer");
  if (!AudienceHolds(c, issuer.audience)) {
    return Status::Unauthorized("The access token's aud does not name this server (" + issuer.audience + ")");
  }
  auto exp = NumberClaim(c, "exp");
  if (!exp) return Status::Unauthorized("The access token has no exp");
  if (*exp * 1000 + kClockSkewMs <= now) return Status::Unauthorized("The access token expired; request a new one");
  if (c.contains("nbf")) {
    auto nbf = NumberClaim(c, "nbf");
    if (!nbf || *nbf * 1000 > now + kClockSkewMs)
      return Status::Unauthorized("The access token is not valid yet (nbf)");
  }
  TokenClaims out;
  out.issuer = issuer.issuer;
  out.client_id = StringClaim(c, "sub");
  if (out.client_id.empty()) return Status::Unauthorized("The access token has no sub");
  out.expires = *exp * 1000;
  // OAuth's "scope" (space-separated); some providers say "scp" (an array, or a string).
  std::string list = StringClaim(c, "scope");
  if (auto scp = c.find("scp"); list.empty() && scp != c.end()) {
    if (scp->is_string()) list = scp->get<std::string>();
    if (scp->is_array()) {
      for (const auto& one : *scp) {
        if (one.is_string()) list += (list.empty() ? "" : " ") + one.get<std::string>();
      }
    }
  }
  for (Scope& s : ParseScopeList(list)) {
    // A v2.2 filtered scope (system/Observation.rs?category=laboratory) would grant more than it says here (filters
    // are not applied): from an external issuer it counts only when the issuer's scopes list it exactly.
    const bool filtered = s.text.find('?') != std::string::npos;
    if (issuer.scopes.empty() ? !filtered : Accepts(issuer.scopes, s.text)) out.scopes.push_back(std::move(s));
  }
  return out;
}

}  // namespace fhirlake::auth
