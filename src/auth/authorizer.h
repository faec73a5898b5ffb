// The authorization step of the request path (http::Router::SetAuthorizer): after routing, before the handler. It
// knows the matched route's action and the datastore, authenticates the caller by the modes configured for that
// datastore (`--auth-config`, docs/SECURITY.md) and evaluates the caller's IAM policies for the action on the
// datastore's ARN (and iam:PassRole on a kick-off's DataAccessRoleArn). Public routes (no action) pass untouched.
//
// Modes: `none` (anonymous, every action allowed: local use), `sigv4` (AWS Signature Version 4 with IAM policies) and
// `smart` (bearer tokens: this server's, from SMART Backend Services, or an external identity provider's JWTs; their
// system/ scopes decide). CORS (the configuration's corsOrigins) is answered here too.
//
// Thread-safe: Authorize may run on every handler thread while Reload (SIGHUP) swaps the configuration.
#pragma once

#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "auth/policy.h"
#include "auth/smart.h"
#include "common/status.h"
#include "common/time.h"
#include "http/router.h"

namespace fhirlake::auth {

struct PrincipalConfig {
  std::string access_key_id;
  std::string secret_access_key;
  std::string session_token;  // temporary credentials: requests must carry it (X-Amz-Security-Token)
  std::string account_id;
  std::vector<Policy> policies;
};

struct DatastoreAuth {
  std::vector<std::string> modes;
  std::map<std::string, std::string> tags;  // aws:ResourceTag/<key>
};

struct AuthConfig {
  std::string region = "us-east-1";
  std::string account_id = "111122223333";
  std::vector<std::string> default_modes = {"sigv4"};
  std::map<std::string, DatastoreAuth, std::less<>> datastores;
  std::vector<PrincipalConfig> principals;
  std::vector<SmartClient> smart_clients;  // SMART Backend Services clients (mode smart)
  int token_lifetime_s = 300;              // lifetime of the access tokens the token endpoint issues
  std::vector<Issuer> issuers;             // external identity providers whose bearer JWTs count (mode smart)
  std::vector<std::string> cors_origins;   // origins browser apps may call from ("*": any, without credentials)

  const std::vector<std::string>& ModesFor(std::string_view datastore_id) const;
  std::string DatastoreArn(std::string_view datastore_id) const;
  // Whether any datastore (or the default) allows `none`.
  bool AllowsNone() const;
};

// Parses the --auth-config JSON (docs/SECURITY.md). kInvalid names the member that is wrong.
Result<AuthConfig> ParseAuthConfig(std::string_view json);

// The audit log (--audit-log FILE): one JSON line per request the authorization step judged (public routes aside):
// time, request id, principal, action, datastore, the resource (type/id) or job, the decision and the HTTP status
// of a refusal. Never a secret, a signature or a token. Lines are appended and flushed one by one (several
// threads may log at once).
class AuditLog {
 public:
  static Result<std::unique_ptr<AuditLog>> Open(const std::string& path);
  ~AuditLog();
  AuditLog(const AuditLog&) = delete;
  AuditLog& operator=(const AuditLog&) = delete;
  void Write(const std::string& line);

 private:
  explicit AuditLog(std::FILE* f) : file_(f) {}
  std::mutex mu_;
  std::FILE* file_;  // GUARDED_BY(mu_)
};

class Authorizer {
 public:
  // Reads and parses `path`; kInvalid (with the file's problem) when it cannot.
  // `data_dir`: where the access tokens' signing key is kept (`auth/token-key`, made on first use).
  static Result<std::unique_ptr<Authorizer>> Load(const std::string& path, const Clock& clock,
                                                  const std::string& data_dir);
  // The server's public base URL ("http://host:port"), known once it listens: the token endpoint's URL (and the
  // audience of client assertions) is built from it. Call before serving.
  void SetPublicBase(const std::string& base);
  std::string TokenUrl() const;
  // The SMART discovery document (GET /.well-known/smart-configuration).
  std::string SmartConfiguration() const;
  // POST /auth/token.
  http::Response Token(const http::Request& request);
  // Whether downloads of `datastore_id`'s export files need credentials (its modes do not include none).
  bool RequiresCredentials(std::string_view datastore_id) const;
  // Reads the file again (SIGHUP). On an error the previous configuration stays in force.
  Status Reload();
  // From now on a configuration giving any datastore mode none is refused (`why`: the listener is not loopback).
  void RefuseNone(std::string why);
  std::shared_ptr<const AuthConfig> config() const;

  // http::Authorizer: nullopt lets the request through (ctx->principal filled); otherwise the 401/403 answer.
  std::optional<http::Response> Authorize(const http::Request& request, http::RequestContext* ctx) const;
  // CORS (http::CorsPolicy): a preflight answer (OPTIONS with Origin and Access-Control-Request-Method), or nullopt.
  std::optional<http::Response> Preflight(const http::Request& request) const;
  // Adds the Access-Control-* headers a response to an allowed Origin carries.
  void DecorateCors(const http::Request& request, http::Response* response) const;
  // The tags a datastore carries in its store (the control plane's TagResource): aws:ResourceTag/<key> sees them
  // over the configuration's datastores.{id}.tags (the store's win on the same key). Call before serving.
  void SetDatastoreTags(std::function<Result<std::map<std::string, std::string>>(std::string_view datastore_id)> tags) {
    datastore_tags_ = std::move(tags);
  }
  // The modes of datastores the configuration does not name, from the datastore itself (the control plane's
  // IdentityProviderConfiguration); an empty answer means the configuration's defaultModes. Call before serving.
  void SetDatastoreModes(std::function<std::vector<std::string>(std::string_view datastore_id)> modes) {
    datastore_modes_ = std::move(modes);
  }
  // Every decision of Authorize is also written to `log` (nullptr: none; it must outlive the authorizer).
  void SetAuditLog(AuditLog* log) { audit_ = log; }

 private:
  Authorizer(std::string path, const Clock& clock, std::string token_key)
      : path_(std::move(path)), clock_(clock), token_key_(std::move(token_key)) {}
  void RebuildTokens();  // with mu_ held
  std::shared_ptr<TokenService> tokens() const;
  std::optional<http::Response> DecideSmart(const http::Request& request, http::RequestContext* ctx,
                                            const AuthConfig& cfg, std::string* decision) const;

  std::string path_;
  const Clock& clock_;
  std::string token_key_;
  mutable std::mutex mu_;
  std::shared_ptr<const AuthConfig> config_;  // GUARDED_BY(mu_)
  std::shared_ptr<TokenService> tokens_;      // GUARDED_BY(mu_)
  std::shared_ptr<ReplayGuard> replay_;       // set by Load, shared by every TokenService
  std::string public_base_;                   // GUARDED_BY(mu_)
  std::string refuse_none_;                   // GUARDED_BY(mu_)
  AuditLog* audit_ = nullptr;
  std::function<std::vector<std::string>(std::string_view)> datastore_modes_;
  // The configuration's datastores.{id}.modes, else what the datastore itself says, else defaultModes.
  std::vector<std::string> ModesOf(const AuthConfig& cfg, std::string_view datastore_id) const;
  std::function<Result<std::map<std::string, std::string>>(std::string_view)> datastore_tags_;

  std::optional<http::Response> Decide(const http::Request& request, http::RequestContext* ctx,
                                       std::string* decision) const;
};

// The public routes of authentication: the SMART discovery document at the server root and at each datastore's FHIR
// base, and the token endpoint (POST /auth/token). Register them before the FHIR routes (a generic {type}/{id}
// pattern would take ".well-known/smart-configuration").
void RegisterAuthRoutes(http::Router& router, Authorizer* authorizer);

// The client address of "1.2.3.4:5678" / "[::1]:5678" without the port.
std::string SourceIp(std::string_view remote_address);

}  // namespace fhirlake::auth
