#include "auth/authorizer.h"

#include <openssl/rand.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "auth/sigv4_verify.h"
#include "common/ids.h"
#include "common/json_escape.h"
#include "fhir/operation_outcome.h"

namespace fhirlake::auth {
namespace {

using nlohmann::json;

constexpr std::string_view kModes[] = {"none", "sigv4", "smart"};

Result<std::vector<std::string>> ParseModes(const json& v, const std::string& where) {
  if (!v.is_array() || v.empty()) return Status::Invalid(where + " must be a non-empty array of modes");
  std::vector<std::string> out;
  for (const auto& m : v) {
    if (!m.is_string() || std::find(std::begin(kModes), std::end(kModes), m.get<std::string>()) == std::end(kModes)) {
      return Status::Invalid(where + ": modes are \"none\", \"sigv4\" and \"smart\"");
    }
    out.push_back(m.get<std::string>());
  }
  return out;
}

Result<std::string> StringMember(const json& obj, const char* key, const std::string& where, bool required) {
  auto it = obj.find(key);
  if (it == obj.end()) {
    if (required) return Status::Invalid(where + "." + key + " is required");
    return std::string();
  }
  if (!it->is_string()) return Status::Invalid(where + "." + key + " must be a string");
  return it->get<std::string>();
}

bool IsAccountId(std::string_view s) {
  return s.size() == 12 && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// A client's or an issuer's keys: "jwks" (inline) or "jwksUrl" (fetched when the configuration loads), one of them.
Result<std::shared_ptr<KeySet>> ParseKeySource(const json& e, const std::string& where,
                                               const std::vector<std::string>& accepted) {
  const bool inline_keys = e.contains("jwks");
  const bool url = e.contains("jwksUrl");
  if (inline_keys == url) return Status::Invalid(where + " needs jwks (inline) or jwksUrl, one of them");
  if (url) {
    ASSIGN_OR_RETURN(std::string u, StringMember(e, "jwksUrl", where, true));
    if (Status st = CheckJwksUrl(u); !st.ok()) return st.WithContext(where + ".jwksUrl");
    return KeySet::FromUrl(u, accepted);
  }
  if (!e["jwks"].is_object()) return Status::Invalid(where + ".jwks must be a JWKS object");
  auto keys = ParseJwks(e["jwks"].dump(), accepted);
  if (!keys.ok()) return keys.status().WithContext(where + ".jwks");
  return KeySet::Inline(std::move(*keys));
}

// scheme://host[:port] with nothing after it (RFC 6454's serialization, as browsers send Origin).
bool IsOrigin(std::string_view o) {
  const size_t sep = o.find("://");
  if (sep == std::string_view::npos || sep == 0) return false;
  const std::string_view scheme = o.substr(0, sep), rest = o.substr(sep + 3);
  if (scheme != "http" && scheme != "https") return false;
  if (rest.empty()) return false;
  return std::all_of(rest.begin(), rest.end(), [](char ch) {
    return std::isalnum(static_cast<unsigned char>(ch)) || ch == '.' || ch == '-' || ch == ':' || ch == '[' ||
           ch == ']';
  });
}

bool EqualsIgnoreCaseAscii(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
         });
}

// As browsers send Origin: scheme and host in lower case, without the scheme's default port.
std::string NormalizeOrigin(std::string o) {
  if (o == "*") return o;
  std::transform(o.begin(), o.end(), o.begin(), [](unsigned char ch) { return std::tolower(ch); });
  for (const char* suffix : {":443", ":80"}) {
    const bool https = o.starts_with("https://");
    if ((https && std::string_view(suffix) == ":443") || (!https && std::string_view(suffix) == ":80")) {
      if (o.ends_with(suffix)) o.resize(o.size() - std::string_view(suffix).size());
    }
  }
  return o;
}

http::Response Refuse(int status, const std::string& message) {
  http::Response r =
      http::Response::Json(status, fhir::OperationOutcome("error", status == 401 ? "login" : "forbidden", message));
  if (status == 401) r.headers.Set("WWW-Authenticate", "AWS4-HMAC-SHA256");
  return r;
}

}  // namespace

const std::vector<std::string>& AuthConfig::ModesFor(std::string_view datastore_id) const {
  auto it = datastores.find(datastore_id);
  return it != datastores.end() && !it->second.modes.empty() ? it->second.modes : default_modes;
}

std::string AuthConfig::DatastoreArn(std::string_view datastore_id) const {
  return "arn:aws:healthlake:" + region + ":" + account_id + ":datastore/fhir/" + std::string(datastore_id);
}

bool AuthConfig::AllowsNone() const {
  auto has_none = [](const std::vector<std::string>& m) { return std::find(m.begin(), m.end(), "none") != m.end(); };
  if (has_none(default_modes)) return true;
  return std::any_of(datastores.begin(), datastores.end(), [&](const auto& d) { return has_none(d.second.modes); });
}

Result<AuthConfig> ParseAuthConfig(std::string_view text) {
  json doc = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object()) return Status::Invalid("the auth configuration must be a JSON object");
  AuthConfig c;
  for (auto it = doc.begin(); it != doc.end(); ++it) {
    const std::string& k = it.key();
    if (k != "region" && k != "accountId" && k != "defaultModes" && k != "datastores" && k != "principals" &&
        k != "smartClients" && k != "tokenLifetimeSeconds" && k != "issuers" && k != "corsOrigins") {
      return Status::Invalid("unknown member '" + k +
                             "' (expected region, accountId, defaultModes, datastores, principals, smartClients, "
                             "tokenLifetimeSeconds, issuers, corsOrigins)");
    }
  }
  ASSIGN_OR_RETURN(std::string region, StringMember(doc, "region", "", false));
  if (!region.empty()) c.region = region;
  ASSIGN_OR_RETURN(std::string account, StringMember(doc, "accountId", "", false));
  if (!account.empty()) c.account_id = account;
  if (!IsAccountId(c.account_id)) return Status::Invalid("accountId must be 12 digits");
  if (doc.contains("defaultModes")) {
    ASSIGN_OR_RETURN(c.default_modes, ParseModes(doc["defaultModes"], "defaultModes"));
  }
  if (auto ds = doc.find("datastores"); ds != doc.end()) {
    if (!ds->is_object()) return Status::Invalid("datastores must be an object keyed by datastore id");
    for (auto it = ds->begin(); it != ds->end(); ++it) {
      const std::string where = "datastores." + it.key();
      if (!it->is_object()) return Status::Invalid(where + " must be an object");
      DatastoreAuth d;
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (m.key() != "modes" && m.key() != "tags") {
          return Status::Invalid(where + ": unknown member '" + m.key() + "' (expected modes, tags)");
        }
      }
      if (it->contains("modes")) {
        ASSIGN_OR_RETURN(d.modes, ParseModes((*it)["modes"], where + ".modes"));
      }
      if (auto tags = it->find("tags"); tags != it->end()) {
        if (!tags->is_object()) return Status::Invalid(where + ".tags must be an object of strings");
        for (auto t = tags->begin(); t != tags->end(); ++t) {
          if (!t->is_string()) return Status::Invalid(where + ".tags." + t.key() + " must be a string");
          d.tags[t.key()] = t->get<std::string>();
        }
      }
      c.datastores[it.key()] = std::move(d);
    }
  }
  if (auto ps = doc.find("principals"); ps != doc.end()) {
    if (!ps->is_array()) return Status::Invalid("principals must be an array");
    for (size_t i = 0; i < ps->size(); ++i) {
      const json& p = (*ps)[i];
      const std::string where = "principals[" + std::to_string(i) + "]";
      if (!p.is_object()) return Status::Invalid(where + " must be an object");
      for (auto m = p.begin(); m != p.end(); ++m) {
        if (m.key() != "accessKeyId" && m.key() != "secretAccessKey" && m.key() != "sessionToken" &&
            m.key() != "accountId" && m.key() != "policies") {
          return Status::Invalid(where + ": unknown member '" + m.key() +
                                 "' (expected accessKeyId, secretAccessKey, sessionToken, accountId, policies)");
        }
      }
      PrincipalConfig pc;
      ASSIGN_OR_RETURN(pc.access_key_id, StringMember(p, "accessKeyId", where, true));
      ASSIGN_OR_RETURN(pc.secret_access_key, StringMember(p, "secretAccessKey", where, true));
      ASSIGN_OR_RETURN(pc.session_token, StringMember(p, "sessionToken", where, false));
      ASSIGN_OR_RETURN(pc.account_id, StringMember(p, "accountId", where, false));
      if (pc.account_id.empty()) pc.account_id = c.account_id;
      if (!IsAccountId(pc.account_id)) return Status::Invalid(where + ".accountId must be 12 digits");
      if (pc.access_key_id.size() < 16 || pc.access_key_id.size() > 128 ||
          !std::all_of(pc.access_key_id.begin(), pc.access_key_id.end(),
                       [](char ch) { return std::isalnum(static_cast<unsigned char>(ch)); })) {
        return Status::Invalid(where + ".accessKeyId must be 16 to 128 letters and digits");
      }
      if (pc.secret_access_key.empty()) return Status::Invalid(where + ".secretAccessKey must not be empty");
      for (const auto& other : c.principals) {
        if (other.access_key_id == pc.access_key_id) {
          return Status::Invalid(where + ".accessKeyId " + pc.access_key_id + " is listed twice");
        }
      }
      if (auto pol = p.find("policies"); pol != p.end()) {
        if (!pol->is_array()) return Status::Invalid(where + ".policies must be an array of policy documents");
        for (size_t j = 0; j < pol->size(); ++j) {
          auto parsed = ParsePolicy((*pol)[j].dump());
          if (!parsed.ok()) return parsed.status().WithContext(where + ".policies[" + std::to_string(j) + "]");
          pc.policies.push_back(std::move(*parsed));
        }
      }
      c.principals.push_back(std::move(pc));
    }
  }
  if (auto tl = doc.find("tokenLifetimeSeconds"); tl != doc.end()) {
    if (!tl->is_number_integer() || *tl < 60 || *tl > 3600) {
      return Status::Invalid("tokenLifetimeSeconds must be a whole number of seconds from 60 to 3600");
    }
    c.token_lifetime_s = tl->get<int>();
  }
  if (auto sc = doc.find("smartClients"); sc != doc.end()) {
    if (!sc->is_array()) return Status::Invalid("smartClients must be an array");
    for (size_t i = 0; i < sc->size(); ++i) {
      const json& e = (*sc)[i];
      const std::string where = "smartClients[" + std::to_string(i) + "]";
      if (!e.is_object()) return Status::Invalid(where + " must be an object");
      for (auto m = e.begin(); m != e.end(); ++m) {
        if (m.key() != "clientId" && m.key() != "jwks" && m.key() != "jwksUrl" && m.key() != "scopes") {
          return Status::Invalid(where + ": unknown member '" + m.key() +
                                 "' (expected clientId, jwks or jwksUrl, scopes)");
        }
      }
      SmartClient client;
      ASSIGN_OR_RETURN(client.client_id, StringMember(e, "clientId", where, true));
      if (client.client_id.empty()) return Status::Invalid(where + ".clientId must not be empty");
      for (const auto& other : c.smart_clients) {
        if (other.client_id == client.client_id) return Status::Invalid(where + ".clientId is listed twice");
      }
      ASSIGN_OR_RETURN(client.keys, ParseKeySource(e, where, ClientAlgorithms()));
      if (!e.contains("scopes") || !e["scopes"].is_array()) return Status::Invalid(where + ".scopes must be an array");
      for (const auto& sc_item : e["scopes"]) {
        if (!sc_item.is_string()) return Status::Invalid(where + ".scopes must hold strings");
        auto parsed = ParseScope(sc_item.get<std::string>());
        if (!parsed.ok()) return parsed.status().WithContext(where + ".scopes");
        client.scopes.push_back(sc_item.get<std::string>());
      }
      c.smart_clients.push_back(std::move(client));
    }
  }
  if (auto is = doc.find("issuers"); is != doc.end()) {
    if (!is->is_array()) return Status::Invalid("issuers must be an array");
    for (size_t i = 0; i < is->size(); ++i) {
      const json& e = (*is)[i];
      const std::string where = "issuers[" + std::to_string(i) + "]";
      if (!e.is_object()) return Status::Invalid(where + " must be an object");
      for (auto m = e.begin(); m != e.end(); ++m) {
        if (m.key() != "issuer" && m.key() != "audience" && m.key() != "jwks" && m.key() != "jwksUrl" &&
            m.key() != "algorithms" && m.key() != "scopes") {
          return Status::Invalid(where + ": unknown member '" + m.key() +
                                 "' (expected issuer, audience, jwks or jwksUrl, algorithms, scopes)");
        }
      }
      Issuer issuer;
      ASSIGN_OR_RETURN(issuer.issuer, StringMember(e, "issuer", where, true));
      ASSIGN_OR_RETURN(issuer.audience, StringMember(e, "audience", where, true));
      if (issuer.issuer.empty() || issuer.issuer.find('#') != std::string::npos) {
        return Status::Invalid(where + ".issuer must be a non-empty URL without a fragment");
      }
      if (issuer.audience.empty()) return Status::Invalid(where + ".audience must not be empty");
      for (const auto& other : c.issuers) {
        if (other.issuer == issuer.issuer) return Status::Invalid(where + ".issuer is listed twice");
      }
      if (!e.contains("algorithms") || !e["algorithms"].is_array() || e["algorithms"].empty()) {
        return Status::Invalid(where + ".algorithms must be a non-empty array (" + [] {
          std::string l;
          for (const auto& a : IssuerAlgorithms()) l += (l.empty() ? "" : ", ") + a;
          return l;
        }() + ")");
      }
      for (const auto& a : e["algorithms"]) {
        const auto& known = IssuerAlgorithms();
        if (!a.is_string() || std::find(known.begin(), known.end(), a.get<std::string>()) == known.end()) {
          return Status::Invalid(where +
                                 ".algorithms: " + (a.is_string() ? "'" + a.get<std::string>() + "'" : a.dump()) +
                                 " is not accepted (RS256, RS384, RS512, ES256, ES384, ES512; never none or HS*)");
        }
        issuer.algorithms.push_back(a.get<std::string>());
      }
      ASSIGN_OR_RETURN(issuer.keys, ParseKeySource(e, where, issuer.algorithms));
      if (auto sc = e.find("scopes"); sc != e.end()) {
        if (!sc->is_array()) return Status::Invalid(where + ".scopes must be an array");
        for (const auto& one : *sc) {
          if (!one.is_string()) return Status::Invalid(where + ".scopes must hold strings");
          auto parsed = ParseScope(one.get<std::string>());
          if (!parsed.ok()) return parsed.status().WithContext(where + ".scopes");
          issuer.scopes.push_back(one.get<std::string>());
        }
      }
      c.issuers.push_back(std::move(issuer));
    }
  }
  if (auto co = doc.find("corsOrigins"); co != doc.end()) {
    if (!co->is_array()) return Status::Invalid("corsOrigins must be an array of origins");
    for (const auto& o : *co) {
      if (!o.is_string()) return Status::Invalid("corsOrigins must hold strings");
      const std::string origin = o.get<std::string>();
      if (origin != "*" && !IsOrigin(origin)) {
        return Status::Invalid("corsOrigins: '" + origin +
                               "' is not an origin (scheme://host[:port], no path, e.g. https://app.example.org) "
                               "or \"*\"");
      }
      c.cors_origins.push_back(NormalizeOrigin(origin));
    }
    if (std::find(c.cors_origins.begin(), c.cors_origins.end(), "*") != c.cors_origins.end() && c.AllowsNone()) {
      return Status::Invalid(
          "corsOrigins \"*\" with a datastore in mode none would let any web page its users open read and change "
          "that datastore: list the origins instead");
    }
  }
  return c;
}

void RegisterAuthRoutes(http::Router& router, Authorizer* a) {
  auto discovery = [a](const http::Request&, const http::RequestContext&) {
    http::Response r = http::Response::Json(200, a->SmartConfiguration(), "application/json");
    r.headers.Set("Cache-Control", "no-store");
    return r;
  };
  router.Add("GET", "/.well-known/smart-configuration", http::RouteInfo{}, discovery);
  router.Add("GET", "/datastore/{ds}/r4/.well-known/smart-configuration", http::RouteInfo{}, discovery);
  router.Add("POST", "/auth/token", http::RouteInfo{},
             [a](const http::Request& req, const http::RequestContext&) { return a->Token(req); });
}

std::string SourceIp(std::string_view remote) {
  if (remote.starts_with('[')) {
    size_t close = remote.find(']');
    std::string ip(remote.substr(1, close == std::string_view::npos ? std::string_view::npos : close - 1));
    // A dual-stack listener shows IPv4 clients as ::ffff:a.b.c.d: their IPv4 address is what policies name.
    for (const char* mapped : {"::ffff:", "::FFFF:"}) {
      if (ip.starts_with(mapped) && ip.find('.') != std::string::npos) return ip.substr(7);
    }
    return ip;
  }
  size_t colon = remote.rfind(':');
  return std::string(remote.substr(0, colon));
}

Result<std::unique_ptr<Authorizer>> Authorizer::Load(const std::string& path, const Clock& clock,
                                                     const std::string& data_dir) {
  // The access tokens' HS256 key: 32 random bytes (hex), made once and kept (0600) so that tokens survive a restart.
  const std::filesystem::path dir = std::filesystem::path(data_dir) / "auth";
  const std::filesystem::path key_path = dir / "token-key";
  std::string key;
  {
    std::ifstream in(key_path, std::ios::binary);
    if (in) key.assign((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }
  if (key.size() != 64) {
    unsigned char raw[32];
    if (RAND_bytes(raw, sizeof raw) != 1) return Status::Internal("no random bytes for the token key");
    static constexpr char kHex[] = "0123456789abcdef";
    key.clear();
    for (unsigned char b : raw) {
      key.push_back(kHex[b >> 4]);
      key.push_back(kHex[b & 15]);
    }
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (!ReplaceFileDurably(key_path.string(), key)) {
      return Status::Invalid("cannot write the access token key under the data directory's auth/ folder");
    }
  }
  std::unique_ptr<Authorizer> a(new Authorizer(path, clock, key));
  // Used client assertion ids survive reloads and restarts (docs/SECURITY.md, the token endpoint).
  ASSIGN_OR_RETURN(a->replay_, ReplayGuard::Open((dir / "assertion-ids").string(), clock.NowMillis()));
  RETURN_IF_ERROR(a->Reload());
  return a;
}

void Authorizer::RebuildTokens() {
  tokens_ = std::make_shared<TokenService>(config_->smart_clients, token_key_, public_base_ + "/auth/token",
                                           config_->token_lifetime_s, clock_, replay_);
}

void Authorizer::SetPublicBase(const std::string& base) {
  std::lock_guard<std::mutex> lock(mu_);
  public_base_ = base;
  RebuildTokens();
}

std::shared_ptr<TokenService> Authorizer::tokens() const {
  std::lock_guard<std::mutex> lock(mu_);
  return tokens_;
}

std::string Authorizer::TokenUrl() const { return tokens()->token_url(); }

std::string Authorizer::SmartConfiguration() const {
  auto cfg = config();
  std::vector<std::string> scopes;
  for (const auto& c : cfg->smart_clients) {
    for (const auto& s : c.scopes) {
      if (std::find(scopes.begin(), scopes.end(), s) == scopes.end()) scopes.push_back(s);
    }
  }
  std::string list;
  for (const auto& s : scopes) list += (list.empty() ? "" : ",") + JsonString(s);
  return "{\"token_endpoint\":" + JsonString(TokenUrl()) +
         ",\"token_endpoint_auth_methods_supported\":[\"private_key_jwt\"],"
         "\"token_endpoint_auth_signing_alg_values_supported\":[\"RS384\",\"ES384\"],"
         "\"grant_types_supported\":[\"client_credentials\"],\"scopes_supported\":[" +
         list + "],\"capabilities\":[\"client-confidential-asymmetric\",\"permission-v1\",\"permission-v2\"]}";
}

http::Response Authorizer::Token(const http::Request& request) { return tokens()->HandleTokenRequest(request); }

std::vector<std::string> Authorizer::ModesOf(const AuthConfig& cfg, std::string_view datastore_id) const {
  auto it = cfg.datastores.find(datastore_id);
  if (it != cfg.datastores.end() && !it->second.modes.empty()) return it->second.modes;
  if (datastore_modes_) {
    std::vector<std::string> own = datastore_modes_(datastore_id);
    if (!own.empty()) return own;
  }
  return cfg.default_modes;
}

bool Authorizer::RequiresCredentials(std::string_view datastore_id) const {
  const std::vector<std::string> modes = ModesOf(*config(), datastore_id);
  return std::find(modes.begin(), modes.end(), "none") == modes.end();
}

void Authorizer::RefuseNone(std::string why) {
  std::lock_guard<std::mutex> lock(mu_);
  refuse_none_ = std::move(why);
}

Status Authorizer::Reload() {
  std::ifstream in(path_, std::ios::binary);
  if (!in) return Status::Invalid("cannot read the auth configuration " + path_);
  std::stringstream ss;
  ss << in.rdbuf();
  auto parsed = ParseAuthConfig(ss.str());
  if (!parsed.ok()) return parsed.status().WithContext("auth configuration " + path_);
  // JWKS URLs are fetched now; one that cannot be is tried again when a token needs its keys (the provider may be
  // down for a while). Until a fetch succeeds, the keys the previous configuration held for the same URL stay.
  if (std::shared_ptr<const AuthConfig> previous = config()) {
    for (const auto& c : parsed->smart_clients) {
      for (const auto& p : previous->smart_clients) c.keys->AdoptKeys(*p.keys);
    }
    for (const auto& i : parsed->issuers) {
      for (const auto& p : previous->issuers) i.keys->AdoptKeys(*p.keys);
    }
  }
  for (const auto& c : parsed->smart_clients) {
    if (Status st = c.keys->Fetch(); !st.ok()) {
      spdlog::warn("event=jwks_fetch_failed client={} reason=\"{}\"", c.client_id, st.message());
    }
  }
  for (const auto& i : parsed->issuers) {
    if (Status st = i.keys->Fetch(); !st.ok()) {
      spdlog::warn("event=jwks_fetch_failed issuer={} reason=\"{}\"", i.issuer, st.message());
    }
  }
  auto fresh = std::make_shared<const AuthConfig>(std::move(*parsed));
  std::lock_guard<std::mutex> lock(mu_);
  if (!refuse_none_.empty() && fresh->AllowsNone()) {
    return Status::Invalid("auth configuration " + path_ + " gives a datastore mode none, which " + refuse_none_ +
                           "; the previous configuration stays in force");
  }
  config_ = std::move(fresh);
  RebuildTokens();
  return Status::Ok();
}

std::shared_ptr<const AuthConfig> Authorizer::config() const {
  std::lock_guard<std::mutex> lock(mu_);
  return config_;
}

Result<std::unique_ptr<AuditLog>> AuditLog::Open(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "ae");
  if (f == nullptr) return Status::Invalid("cannot open the audit log " + path + " for appending");
  return std::unique_ptr<AuditLog>(new AuditLog(f));
}

AuditLog::~AuditLog() { std::fclose(file_); }

void AuditLog::Write(const std::string& line) {
  std::lock_guard<std::mutex> lock(mu_);
  if (std::fputs(line.c_str(), file_) < 0 || std::fputc('\n', file_) < 0 || std::fflush(file_) != 0) {
    spdlog::error("event=audit_log_write_failed");
  }
}

namespace {

// What a browser app may send and read (Bulk Data, FHIR REST and SigV4-signed requests).
constexpr char kCorsMethods[] = "GET, HEAD, POST, PUT, PATCH, DELETE";
constexpr char kCorsRequestHeaders[] =
    "Authorization, Content-Type, Accept, Prefer, Range, If-Match, If-None-Match, If-None-Exist, If-Modified-Since, "
    "X-Amz-Date, X-Amz-Security-Token, X-Amz-Content-Sha256, X-Amz-Target, X-Amz-User-Agent";
constexpr char kCorsExposedHeaders[] =
    "Content-Location, Location, ETag, Last-Modified, Expires, Retry-After, X-Progress, X-Request-Id, Content-Range, "
    "Accept-Ranges";

// How `origin` is allowed: "" (not), "*" (by the wildcard: no credentials) or the origin itself (listed).
std::string CorsMatch(const AuthConfig& cfg, std::string_view origin) {
  std::string how;
  for (const auto& o : cfg.cors_origins) {
    if (o == origin) return o;
    if (o == "*") how = "*";
  }
  return how;
}

void AddVaryOrigin(http::Response* r) {
  const std::string_view vary = r->headers.Get("Vary");
  if (vary.empty()) {
    r->headers.Set("Vary", "Origin");
  } else if (vary.find("Origin") == std::string_view::npos) {
    r->headers.Set("Vary", std::string(vary) + ", Origin");
  }
}

void SetCorsHeaders(const std::string& how, http::Response* r) {
  r->headers.Set("Access-Control-Allow-Origin", how);
  // Credentials (cookies, TLS client certificates) only for a listed origin, never for "*".
  if (how != "*") r->headers.Set("Access-Control-Allow-Credentials", "true");
  AddVaryOrigin(r);
}

}  // namespace

std::optional<http::Response> Authorizer::Preflight(const http::Request& request) const {
  std::shared_ptr<const AuthConfig> cfg = config();
  if (cfg->cors_origins.empty()) return std::nullopt;  // no CORS: OPTIONS is routed (and answered 405)
  const std::string_view origin = request.headers.Get("Origin");
  const std::string how = CorsMatch(*cfg, origin);
  if (how.empty()) {
    http::Response r = http::Response::Json(
        403, fhir::OperationOutcome("error", "forbidden",
                                    "Origin " + std::string(origin).substr(0, 200) +
                                        " is not among the origins the auth configuration's corsOrigins allow"));
    r.headers.Set("Vary", "Origin");
    return r;
  }
  http::Response r;
  r.status = 204;
  SetCorsHeaders(how, &r);
  r.headers.Set("Access-Control-Allow-Methods", kCorsMethods);
  r.headers.Set("Access-Control-Allow-Headers", kCorsRequestHeaders);
  r.headers.Set("Access-Control-Max-Age", "600");
  return r;
}

void Authorizer::DecorateCors(const http::Request& request, http::Response* response) const {
  std::shared_ptr<const AuthConfig> cfg = config();
  if (cfg->cors_origins.empty()) return;
  const std::string how = CorsMatch(*cfg, request.headers.Get("Origin"));
  if (how != "*") {
    // The answer depends on the Origin (listed origins are echoed): a cache must not hand one origin's answer, or
    // an answer without CORS headers, to another.
    const bool only_wildcard =
        std::all_of(cfg->cors_origins.begin(), cfg->cors_origins.end(), [](const std::string& o) { return o == "*"; });
    if (!only_wildcard) AddVaryOrigin(response);
  }
  if (!request.headers.Has("Origin") || how.empty()) return;  // the browser then keeps the answer from the page
  SetCorsHeaders(how, response);
  response->headers.Set("Access-Control-Expose-Headers", kCorsExposedHeaders);
}

namespace {

// The datastore a control-plane request is about: its DatastoreId, or the datastore of its ResourceARN (tags).
std::string ControlPlaneDatastore(const std::string& body) {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return "";
  // Only an id of a datastore's shape (32 hex): anything else names no datastore (and never reaches a log line).
  auto hex_id = [](std::string s) { return IsHexId(s) ? s : std::string(); };
  if (auto id = j.find("DatastoreId"); id != j.end() && id->is_string()) return hex_id(id->get<std::string>());
  if (auto arn = j.find("ResourceARN"); arn != j.end() && arn->is_string()) {
    const std::string a = arn->get<std::string>();
    const size_t at = a.rfind("datastore/fhir/");
    if (at != std::string::npos) return hex_id(a.substr(at + 15));
  }
  return "";
}

// A refusal of the authorization step in the words the AWS SDKs parse ({"__type", "message"}).
http::Response AwsJsonRefusal(const http::Response& refused, const std::string& decision) {
  json outcome = json::parse(refused.body, nullptr, /*allow_exceptions=*/false);
  std::string message;
  if (outcome.is_object() && outcome.contains("issue") && outcome["issue"].is_array() && !outcome["issue"].empty()) {
    message = outcome["issue"][0].value("diagnostics", "");
  }
  std::string type = "AccessDeniedException";
  if (decision == "unauthenticated") {
    type = message.find("security token included in the request is invalid") != std::string::npos
               ? "UnrecognizedClientException"
           : message.find("not signed") != std::string::npos || message.find("No access token") != std::string::npos
               ? "MissingAuthenticationTokenException"
               : "InvalidSignatureException";
  }
  http::Response r = http::Response::Json(
      refused.status, json{{"__type", type}, {"message", message}}.dump(-1, ' ', false, json::error_handler_t::replace),
      "application/x-amz-json-1.0");
  for (const auto& [k, v] : refused.headers.items()) {
    if (k == "WWW-Authenticate") r.headers.Set(k, v);
  }
  return r;
}

}  // namespace

std::optional<http::Response> Authorizer::Authorize(const http::Request& request, http::RequestContext* ctx) const {
  if (ctx->info == nullptr || ctx->info->action.empty()) return std::nullopt;  // a public route
  if (ctx->info->aws_json && ctx->datastore_id.empty()) ctx->datastore_id = ControlPlaneDatastore(request.body);
  std::string decision;
  std::optional<http::Response> refused = Decide(request, ctx, &decision);
  if (refused && ctx->info->aws_json) refused = AwsJsonRefusal(*refused, decision);
  if (audit_ != nullptr) {
    std::string line =
        "{\"time\":" + JsonString(FormatInstant(clock_.NowMillis())) + ",\"requestId\":" + JsonString(ctx->request_id) +
        ",\"principal\":" +
        JsonString(ctx->principal.kind == "sigv4"
                       ? "arn:aws:iam::" + ctx->principal.account + ":user/" + ctx->principal.id
                   : ctx->principal.kind == "smart" ? "smart:" + ctx->principal.id
                   : ctx->principal.kind == "idp"   ? "idp:" + ctx->principal.account + "#" + ctx->principal.id
                                                    : ctx->principal.id) +
        ",\"action\":" + JsonString(ctx->info->action) + ",\"datastoreId\":" + JsonString(ctx->datastore_id) +
        ",\"method\":" + JsonString(request.method);
    for (const char* key : {"type", "id", "job", "file"}) {
      if (auto it = ctx->params.find(key); it != ctx->params.end()) {
        line += ",\"" + std::string(key) + "\":" + JsonString(it->second);
      }
    }
    line += ",\"decision\":" + JsonString(decision);
    if (refused) line += ",\"status\":" + std::to_string(refused->status);
    audit_->Write(line + "}");
  }
  return refused;
}

std::optional<http::Response> Authorizer::Decide(const http::Request& request, http::RequestContext* ctx,
                                                 std::string* decision) const {
  *decision = "allow";
  std::shared_ptr<const AuthConfig> cfg = config();
  const std::vector<std::string> modes = ModesOf(*cfg, ctx->datastore_id);
  auto has = [&](std::string_view m) { return std::find(modes.begin(), modes.end(), m) != modes.end(); };
  const bool bearer = request.headers.Get("Authorization").starts_with("Bearer ");
  if (bearer && has("smart")) return DecideSmart(request, ctx, *cfg, decision);
  if (!HasSigV4(request) || !has("sigv4")) {
    if (has("none")) return std::nullopt;  // anonymous: local use
    *decision = "unauthenticated";
    if (HasSigV4(request)) {
      return Refuse(403, "Signature Version 4 is not accepted by datastore " + ctx->datastore_id);
    }
    if (bearer) return Refuse(401, "Bearer tokens are not accepted by datastore " + ctx->datastore_id);
    if (has("smart") && !has("sigv4")) {
      return Refuse(401, "No access token: send 'Authorization: Bearer <token>' from the token endpoint " + TokenUrl());
    }
    return Refuse(401,
                  "The request is not signed: sign it with AWS Signature Version 4 (service 'healthlake', "
                  "region '" +
                      cfg->region + "')" +
                      (has("smart") ? ", or send a SMART access token from " + TokenUrl() : std::string()));
  }
  SigV4Options opts;
  opts.region = cfg->region;
  const PrincipalConfig* who = nullptr;
  auto verified =
      VerifySigV4(request, opts, clock_.NowMillis(), [&](std::string_view key) -> std::optional<sink::AwsCredentials> {
        for (const auto& p : cfg->principals) {
          if (p.access_key_id == key) {
            who = &p;
            return sink::AwsCredentials{p.access_key_id, p.secret_access_key, p.session_token};
          }
        }
        return std::nullopt;
      });
  if (!verified.ok()) {
    *decision = "unauthenticated";
    const int status = verified.status().code() == StatusCode::kUnauthorized ? 401 : 403;
    // The reason may quote decoded query values: no control characters into the log.
    std::string reason = verified.status().message();
    for (char& ch : reason) {
      if (static_cast<unsigned char>(ch) < 0x20 || ch == '"') ch = ' ';
    }
    spdlog::info("event=auth_refused route=\"{}\" reason=\"{}\"", ctx->route, reason);
    return Refuse(status, verified.status().message());
  }
  ctx->principal.kind = "sigv4";
  ctx->principal.id = who->access_key_id;
  ctx->principal.account = who->account_id;
  const std::string arn = "arn:aws:iam::" + who->account_id + ":user/" + who->access_key_id;

  RequestFacts facts;
  facts.action = ctx->info->action;
  facts.resource = ctx->datastore_id.empty() ? "*" : cfg->DatastoreArn(ctx->datastore_id);
  facts.context["aws:SourceIp"] = SourceIp(request.remote_address);
  facts.context["aws:PrincipalAccount"] = who->account_id;
  facts.context["aws:SecureTransport"] = request.secure ? "true" : "false";
  if (auto ds = cfg->datastores.find(ctx->datastore_id); ds != cfg->datastores.end()) {
    for (const auto& [k, v] : ds->second.tags) facts.context["aws:ResourceTag/" + k] = v;
  }
  // The store's tags are read only for principals whose policies look at them (a read per request otherwise).
  const bool looks_at_tags = std::any_of(who->policies.begin(), who->policies.end(), [](const Policy& pol) {
    return std::any_of(pol.statements.begin(), pol.statements.end(), [](const Statement& st) {
      return std::any_of(st.conditions.begin(), st.conditions.end(), [](const Condition& c) {
        return c.key.size() >= 16 && EqualsIgnoreCaseAscii(c.key.substr(0, 16), "aws:ResourceTag/");
      });
    });
  });
  if (looks_at_tags && datastore_tags_ && !ctx->datastore_id.empty()) {
    auto tags = datastore_tags_(ctx->datastore_id);
    if (!tags.ok()) {
      // Without the tags a Deny conditioned on them would not apply: refuse rather than judge without them.
      *decision = "unavailable";
      spdlog::warn("event=datastore_tags_unreadable datastore={} reason=\"{}\"", ctx->datastore_id,
                   tags.status().message());
      return http::Response::Json(503, fhir::OperationOutcome("error", "transient",
                                                              "The datastore's tags cannot be read to judge the "
                                                              "request; retry"));
    }
    for (const auto& [k, v] : *tags) facts.context["aws:ResourceTag/" + k] = v;
  }
  auto deny = [&](const std::string& action, const std::string& resource, Decision d) {
    *decision = d == Decision::kExplicitDeny ? "explicit deny" : "deny";
    std::string logged = resource.substr(0, 300);  // a role ARN from the body: no control characters into the log
    for (char& ch : logged) {
      if (static_cast<unsigned char>(ch) < 0x20 || ch == '"') ch = ' ';
    }
    spdlog::info("event=auth_denied principal={} action={} resource=\"{}\" decision=\"{}\"", who->access_key_id, action,
                 logged, DecisionName(d));
    return Refuse(
        403, "User: " + arn + " is not authorized to perform: " + action + " on resource: " + resource +
                 (d == Decision::kExplicitDeny ? " with an explicit deny in an identity-based policy"
                                               : " because no identity-based policy allows the " + action + " action"));
  };
  if (Decision d = Evaluate(who->policies, facts); d != Decision::kAllow) return deny(facts.action, facts.resource, d);
  // A kick-off that names a role makes the server act with it: the caller must be allowed to pass that role.
  if ((facts.action == "healthlake:StartFHIRExportJobWithPost" || facts.action == "healthlake:StartFHIRExportJob" ||
       facts.action == "healthlake:StartFHIRImportJob") &&
      !request.body.empty()) {
    json body = json::parse(request.body, nullptr, /*allow_exceptions=*/false);
    if (body.is_object() && body.contains("DataAccessRoleArn") && body["DataAccessRoleArn"].is_string()) {
      RequestFacts pass = facts;
      pass.action = "iam:PassRole";
      pass.resource = body["DataAccessRoleArn"].get<std::string>();
      if (Decision d = Evaluate(who->policies, pass); d != Decision::kAllow) {
        return deny(pass.action, pass.resource, d);
      }
    }
  }
  return std::nullopt;
}

// A bearer token: this server's (SMART Backend Services) or a configured issuer's, valid and not expired; then its
// system scopes decide (docs/SECURITY.md, "Scopes").
std::optional<http::Response> Authorizer::DecideSmart(const http::Request& request, http::RequestContext* ctx,
                                                      const AuthConfig& cfg, std::string* decision) const {
  const std::string_view token = std::string_view(request.headers.Get("Authorization")).substr(7);
  auto unauthenticated = [&](const std::string& why) {
    *decision = "unauthenticated";
    http::Response r = Refuse(401, why);
    r.headers.Set("WWW-Authenticate", "Bearer error=\"invalid_token\"");
    return r;
  };
  std::shared_ptr<TokenService> service = tokens();
  const std::string iss = PeekIssuer(token);
  const Issuer* issuer = nullptr;
  for (const auto& i : cfg.issuers) {
    if (!iss.empty() && i.issuer == iss && iss != service->token_url()) issuer = &i;
  }
  std::vector<Scope> scopes;
  std::string who;  // for messages and logs
  if (issuer != nullptr) {
    auto claims = service->VerifyIssuerToken(*issuer, token);
    if (!claims.ok()) return unauthenticated(claims.status().message());
    scopes = std::move(claims->scopes);
    ctx->principal.kind = "idp";
    ctx->principal.id = claims->client_id;
    ctx->principal.account = claims->issuer;
    who = "Subject " + claims->client_id + " of " + claims->issuer;
  } else {
    auto claims = service->VerifyAccessToken(token);
    if (!claims.ok()) {
      if (!iss.empty() && iss != service->token_url()) {
        spdlog::info("event=bearer_token_refused reason=\"iss is neither this server nor a configured issuer\"");
        return unauthenticated(kNotSignedByAKeyWeAccept);
      }
      return unauthenticated(claims.status().message());
    }
    // The configuration in force decides, not the one the token was issued under: a client removed since has no
    // access, and a scope taken from it no longer counts.
    const SmartClient* client = nullptr;
    for (const auto& c : cfg.smart_clients) {
      if (c.client_id == claims->client_id) client = &c;
    }
    if (client == nullptr) return unauthenticated("The access token's client is no longer registered");
    for (const auto& s : claims->scopes) {
      if (std::find(client->scopes.begin(), client->scopes.end(), s.text) != client->scopes.end()) scopes.push_back(s);
    }
    ctx->principal.kind = "smart";
    ctx->principal.id = claims->client_id;
    who = "Client " + claims->client_id;
  }
  ctx->principal.scoped = true;
  for (const auto& s : scopes) {
    if (s.context == "system" && (s.r || s.s)) ctx->principal.readable_types.push_back(s.type);
  }
  const std::string& action = ctx->info->action;
  auto param = [&](const char* name) -> std::string {
    auto it = ctx->params.find(name);
    return it == ctx->params.end() ? std::string() : it->second;
  };
  std::string type = param("type");
  if (type.empty()) type = param("ctype");
  if (type.empty()) type = "*";  // system-wide routes need a scope on every type
  auto refuse = [&](const std::string& why) {
    *decision = "deny";
    spdlog::info("event=auth_denied principal=\"{}\" action={} reason=\"{}\"", who, action, why);
    return Refuse(403, who + " may not " + action + ": " + why);
  };
  auto need = [&](char perm, const char* what) -> std::optional<http::Response> {
    if (SystemScopeAllows(scopes, type, perm)) return std::nullopt;
    return refuse("no system/ scope of the token allows " + std::string(what) + " " +
                  (type == "*" ? std::string("every type") : type));
  };
  if (action == "healthlake:ReadResource") return need('r', "reading");
  if (action == "healthlake:SearchWithGet" || action == "healthlake:SearchWithPost") {
    // _include, _revinclude, _has and chains reach other types than the one searched: with scopes narrower than every
    // type they would read past them, so they need a scope on every type.
    std::vector<http::QueryParam> params = request.query;
    if (action == "healthlake:SearchWithPost" &&
        request.headers.Get("Content-Type").starts_with("application/x-www-form-urlencoded")) {
      auto form = http::ParseQuery(request.body);
      params.insert(params.end(), form.begin(), form.end());
    }
    for (const auto& q : params) {
      const std::string_view name = q.name;
      const bool reaches_other_types = name.starts_with("_include") || name.starts_with("_revinclude") ||
                                       name.starts_with("_has") || name.find('.') != std::string_view::npos;
      if (reaches_other_types && !SystemScopeAllows(scopes, "*", 's')) {
        return refuse("'" + q.name + "' reaches other resource types; it needs a system/*.read (or .s) scope");
      }
    }
    return need('s', "searching");
  }
  if (action == "healthlake:CreateResource") return need('c', "creating");
  if (action == "healthlake:UpdateResource") return need('u', "updating");
  if (action == "healthlake:DeleteResource") return need('d', "deleting");
  if (action == "healthlake:ProcessBundle") {
    for (char perm : {'c', 'r', 'u', 'd'}) {
      if (auto r = need(perm, "the interactions of a Bundle on")) return r;
    }
    return std::nullopt;
  }
  if (action == "healthlake:StartFHIRExportJobWithPost") {
    // HealthLake's body names an IAM role and a bucket the server then writes with: that is SigV4's (with
    // iam:PassRole), never a SMART client's. SMART clients kick off with GET or a Parameters body (the IG view).
    json body = json::parse(request.body, nullptr, /*allow_exceptions=*/false);
    const bool parameters = body.is_object() && body.value("resourceType", "") == "Parameters";
    if (!request.body.empty() && !parameters) {
      return refuse(
          "a kick-off with HealthLake's body (DataAccessRoleArn, OutputDataConfig) needs SigV4 and "
          "iam:PassRole; use GET $export or a Parameters body");
    }
  }
  // The REST and IG export actions only (listed, not matched by prefix): the control plane's StartFHIRExportJob names
  // a role and a bucket as HealthLake's POST body does, and is SigV4's like every control-plane action.
  if (action == "healthlake:StartFHIRExportJobWithPost" || action == "healthlake:StartFHIRExportJobWithGet" ||
      action == "healthlake:DescribeFHIRExportJobWithGet" || action == "healthlake:CancelFHIRExportJobWithDelete" ||
      action == "healthlake:GetExportedFile") {
    // Bulk export is system-level only: patient/ and user/ scopes do not count (HealthLake, SMART Backend Services).
    if (ctx->principal.readable_types.empty()) {
      return refuse("bulk export needs a system/ read scope (system/*.read, system/Patient.rs, ...)");
    }
    return std::nullopt;  // the kick-off narrows the export to the readable types
  }
  if (action == "healthlake:GetCapabilities") {
    if (std::any_of(scopes.begin(), scopes.end(), [](const Scope& s) { return s.context == "system"; })) {
      return std::nullopt;
    }
    return refuse("the token has no system/ scope");
  }
  return refuse("the action is not open to SMART clients");
}

}  // namespace fhirlake::auth
