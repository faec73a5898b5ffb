#include "auth/authorizer.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "auth/sigv4_verify.h"
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
    if (m == "smart") {
      return Status::Invalid(where +
                             ": mode \"smart\" (SMART on FHIR) is not built in this version; use \"sigv4\" or "
                             "\"none\"");
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
    if (k == "smartClients" || k == "issuers" || k == "tokenLifetimeSeconds" || k == "corsOrigins") {
      return Status::Invalid("'" + k +
                             "': SMART on FHIR, external identity providers and CORS are not built in this "
                             "version (docs/SECURITY.md)");
    }
    if (k != "region" && k != "accountId" && k != "defaultModes" && k != "datastores" && k != "principals") {
      return Status::Invalid("unknown member '" + k +
                             "' (expected region, accountId, defaultModes, datastores, principals)");
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
  return c;
}

std::string SourceIp(std::string_view remote) {
  if (remote.starts_with('[')) {
    size_t close = remote.find(']');
    return std::string(remote.substr(1, close == std::string_view::npos ? std::string_view::npos : close - 1));
  }
  size_t colon = remote.rfind(':');
  return std::string(remote.substr(0, colon));
}

Result<std::unique_ptr<Authorizer>> Authorizer::Load(const std::string& path, const Clock& clock) {
  std::unique_ptr<Authorizer> a(new Authorizer(path, clock));
  RETURN_IF_ERROR(a->Reload());
  return a;
}

Status Authorizer::Reload() {
  std::ifstream in(path_, std::ios::binary);
  if (!in) return Status::Invalid("cannot read the auth configuration " + path_);
  std::stringstream ss;
  ss << in.rdbuf();
  auto parsed = ParseAuthConfig(ss.str());
  if (!parsed.ok()) return parsed.status().WithContext("auth configuration " + path_);
  auto fresh = std::make_shared<const AuthConfig>(std::move(*parsed));
  std::lock_guard<std::mutex> lock(mu_);
  config_ = std::move(fresh);
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

std::optional<http::Response> Authorizer::Authorize(const http::Request& request, http::RequestContext* ctx) const {
  if (ctx->info == nullptr || ctx->info->action.empty()) return std::nullopt;  // a public route
  std::string decision;
  std::optional<http::Response> refused = Decide(request, ctx, &decision);
  if (audit_ != nullptr) {
    std::string line = "{\"time\":" + JsonString(FormatInstant(clock_.NowMillis())) +
                       ",\"requestId\":" + JsonString(ctx->request_id) + ",\"principal\":" +
                       JsonString(ctx->principal.kind == "sigv4"
                                      ? "arn:aws:iam::" + ctx->principal.account + ":user/" + ctx->principal.id
                                      : ctx->principal.id) +
                       ",\"action\":" + JsonString(ctx->info->action) +
                       ",\"datastoreId\":" + JsonString(ctx->datastore_id) +
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
  const std::vector<std::string>& modes = cfg->ModesFor(ctx->datastore_id);
  auto has = [&](std::string_view m) { return std::find(modes.begin(), modes.end(), m) != modes.end(); };
  if (!HasSigV4(request) || !has("sigv4")) {
    if (has("none")) return std::nullopt;  // anonymous: local use
    *decision = "unauthenticated";
    if (HasSigV4(request)) {
      return Refuse(403, "Signature Version 4 is not accepted by datastore " + ctx->datastore_id);
    }
    return Refuse(401,
                  "The request is not signed: sign it with AWS Signature Version 4 (service 'healthlake', "
                  "region '" +
                      cfg->region + "')");
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
    spdlog::info("event=auth_refused route=\"{}\" reason=\"{}\"", ctx->route, verified.status().message());
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
  facts.context["aws:SecureTransport"] = "false";
  if (auto ds = cfg->datastores.find(ctx->datastore_id); ds != cfg->datastores.end()) {
    for (const auto& [k, v] : ds->second.tags) facts.context["aws:ResourceTag/" + k] = v;
  }
  auto deny = [&](const std::string& action, const std::string& resource, Decision d) {
    *decision = d == Decision::kExplicitDeny ? "explicit deny" : "deny";
    spdlog::info("event=auth_denied principal={} action={} resource={} decision=\"{}\"", who->access_key_id, action,
                 resource, DecisionName(d));
    return Refuse(
        403, "User: " + arn + " is not authorized to perform: " + action + " on resource: " + resource +
                 (d == Decision::kExplicitDeny ? " with an explicit deny in an identity-based policy"
                                               : " because no identity-based policy allows the " + action + " action"));
  };
  if (Decision d = Evaluate(who->policies, facts); d != Decision::kAllow) return deny(facts.action, facts.resource, d);
  // A kick-off that names a role makes the server act with it: the caller must be allowed to pass that role.
  if (facts.action == "healthlake:StartFHIRExportJobWithPost" && !request.body.empty()) {
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

}  // namespace fhirlake::auth
