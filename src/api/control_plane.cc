#include "api/control_plane.h"

#include <algorithm>
#include <cmath>
#include <mutex>
#include <nlohmann/json.hpp>

#include "api/fhir_response.h"
#include "api/job_owner.h"
#include "awsjson/model.h"
#include "bulk/export_engine.h"
#include "fhir/page_cursor.h"

namespace fhirlake::api {
namespace {

using http::Request;
using http::RequestContext;
using http::Response;
using nlohmann::json;

constexpr char kContentType[] = "application/x-amz-json-1.0";
constexpr int kDefaultMaxResults = 100;
constexpr size_t kMaxTags = 50;  // AWS's limit of user tags per resource

// Invalid UTF-8 (a stored message, a value cut short) is replaced, never a reason to fail the answer.
std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

Response Ok(const json& body) { return Response::Json(200, Dump(body), kContentType); }

// A member set to null is an absent member (the validator treats it so; the handlers then need not).
void StripNulls(json* j) {
  if (j->is_object()) {
    for (auto it = j->begin(); it != j->end();) {
      if (it->is_null()) {
        it = j->erase(it);
      } else {
        StripNulls(&*it);
        ++it;
      }
    }
  } else if (j->is_array()) {
    for (auto& e : *j) StripNulls(&e);
  }
}

// The ClientToken space of a principal: tokens of one principal (an AWS account for SigV4) never meet another's.
std::string TokenScope(const http::Principal& p) { return p.kind == "sigv4" ? "sigv4:" + p.account : JobOwner(p); }

// The AWS error an SDK expects for a Status.
Response FromStatus(const Status& st) {
  switch (st.code()) {
    case StatusCode::kInvalid:
    case StatusCode::kNotSupported:
      return AwsJsonError(400, "ValidationException", st.message());
    case StatusCode::kNotFound:
      return AwsJsonError(400, "ResourceNotFoundException", st.message());
    case StatusCode::kConflict:
      return AwsJsonError(400, "ConflictException", st.message());
    case StatusCode::kTooManyRequests:
      return AwsJsonError(400, "ThrottlingException", st.message());
    case StatusCode::kForbidden:
      return AwsJsonError(403, "AccessDeniedException", st.message());
    default:
      return AwsJsonError(500, "InternalServerException", st.message());
  }
}

double EpochSeconds(EpochMillis ms) { return static_cast<double>(ms) / 1000.0; }

// NextToken: the fhir layer's keyset page cursors (opaque, scoped to the operation that gave them out).
constexpr char kDatastoreCursor[] = "datastores";
constexpr char kJobCursor[] = "exportjobs";

int MaxResults(const json& body) { return body.value("MaxResults", kDefaultMaxResults); }

class ControlPlane {
 public:
  explicit ControlPlane(const ApiContext& ctx) : ctx_(ctx) {}

  Response Handle(const awsjson::Operation& op, const Request& req, const RequestContext& p) const {
    if (!req.headers.Get("Content-Type").starts_with("application/x-amz-json-1.0")) {
      return AwsJsonError(400, "SerializationException",
                          "The control plane speaks awsJson1_0: send Content-Type: application/x-amz-json-1.0");
    }
    json body = req.body.empty() ? json::object() : json::parse(req.body, nullptr, /*allow_exceptions=*/false);
    if (body.is_discarded()) return AwsJsonError(400, "SerializationException", "The request body is not JSON");
    if (Status st = awsjson::Validate(awsjson::HealthLakeModel(), body, op.input); !st.ok()) return FromStatus(st);
    StripNulls(&body);
    try {
      return Run(op, body, p);
    } catch (const std::exception& e) {
      return AwsJsonError(500, "InternalServerException", std::string("Internal error: ") + e.what());
    }
  }

 private:
  Response Run(const awsjson::Operation& op, const json& body, const RequestContext& p) const {
    Result<json> out = Status::NotSupported("");
    if (op.name == "ListFHIRDatastores") {
      out = ListDatastores(body);
    } else if (op.name == "DescribeFHIRDatastore") {
      out = DescribeDatastore(body);
    } else if (op.name == "StartFHIRExportJob") {
      out = StartExport(body, p);
    } else if (op.name == "DescribeFHIRExportJob") {
      out = DescribeExport(body, p);
    } else if (op.name == "ListFHIRExportJobs") {
      out = ListExports(body, p);
    } else if (op.name == "TagResource" || op.name == "UntagResource" || op.name == "ListTagsForResource") {
      out = Tags(op.name, body);
    } else {
      return AwsJsonError(501, "NotImplemented",
                          "HealthLake." + op.name +
                              " is not built yet in this version of fhirlake (docs/CONTROL_PLANE.md lists what is)");
    }
    if (!out.ok()) return FromStatus(out.status());
    return Ok(*out);
  }

  std::string DatastoreArn(std::string_view id) const {
    return "arn:aws:healthlake:" + ctx_.aws_region + ":" + ctx_.aws_account_id + ":datastore/fhir/" + std::string(id);
  }

  json Properties(const store::ResourceStore& s) const {
    const auto& info = s.info();
    return {{"DatastoreId", info.id},
            {"DatastoreArn", DatastoreArn(info.id)},
            {"DatastoreName", info.name},
            {"DatastoreStatus", "ACTIVE"},
            {"CreatedAt", EpochSeconds(info.created_at)},
            {"DatastoreTypeVersion", "R4"},
            {"DatastoreEndpoint", ctx_.FhirBase(info.id) + "/"},
            {"SseConfiguration", {{"KmsEncryptionConfig", {{"CmkType", "AWS_OWNED_KMS_KEY"}}}}}};
  }

  Result<store::ResourceStore*> Datastore(const json& body) const {
    const std::string id = body["DatastoreId"].get<std::string>();
    store::ResourceStore* s = ctx_.catalog->Find(id);
    if (s == nullptr) return Status::NotFound("Datastore " + id + " does not exist");
    return s;
  }

  // A datastore's ARN as this server names it (its region and account); any other ARN names nothing here.
  Result<store::ResourceStore*> ByArn(const std::string& arn) const {
    const size_t at = arn.rfind('/');
    store::ResourceStore* s = at == std::string::npos ? nullptr : ctx_.catalog->Find(arn.substr(at + 1));
    if (s == nullptr || DatastoreArn(s->info().id) != arn) {
      return Status::NotFound("No datastore has the ARN " + arn.substr(0, 200));
    }
    return s;
  }

  Result<json> Tags(const std::string& op, const json& body) const {
    ASSIGN_OR_RETURN(store::ResourceStore * s, ByArn(body["ResourceARN"].get<std::string>()));
    // Read, change, write under one lock: two TagResource calls at once both land (one process; scale-out, issue 13,
    // moves this into one store transaction).
    std::lock_guard<std::mutex> lock(tags_mu_);
    ASSIGN_OR_RETURN(auto tags, s->Tags());
    if (op == "TagResource") {
      for (const auto& t : body["Tags"]) tags[t["Key"].get<std::string>()] = t["Value"].get<std::string>();
      if (tags.size() > kMaxTags) {
        return Status::Invalid("A datastore has at most " + std::to_string(kMaxTags) + " tags; this would make " +
                               std::to_string(tags.size()));
      }
      RETURN_IF_ERROR(s->SetTags(tags));
      return json::object();
    }
    if (op == "UntagResource") {
      for (const auto& k : body["TagKeys"]) tags.erase(k.get<std::string>());
      RETURN_IF_ERROR(s->SetTags(tags));
      return json::object();
    }
    json list = json::array();
    for (const auto& [k, v] : tags) list.push_back({{"Key", k}, {"Value", v}});
    return json{{"Tags", list}};
  }

  Result<json> ListDatastores(const json& body) const {
    std::string after;
    if (body.contains("NextToken")) {
      ASSIGN_OR_RETURN(after, fhir::DecodePageCursorText(body["NextToken"].get<std::string>(), kDatastoreCursor));
    }
    const json filter = body.value("Filter", json::object());
    std::vector<store::ResourceStore*> all = ctx_.catalog->All();
    std::sort(all.begin(), all.end(), [](auto* a, auto* b) { return a->info().id < b->info().id; });
    json list = json::array();
    const int max = MaxResults(body);
    std::string next;
    for (auto* s : all) {
      const auto& info = s->info();
      if (!after.empty() && info.id <= after) continue;
      if (filter.contains("DatastoreName") && filter["DatastoreName"] != info.name) continue;
      if (filter.contains("DatastoreStatus") && filter["DatastoreStatus"] != "ACTIVE") continue;
      if (filter.contains("CreatedBefore") && EpochSeconds(info.created_at) >= filter["CreatedBefore"].get<double>()) {
        continue;
      }
      if (filter.contains("CreatedAfter") && EpochSeconds(info.created_at) <= filter["CreatedAfter"].get<double>()) {
        continue;
      }
      if (static_cast<int>(list.size()) == max) {
        next = fhir::EncodePageCursorText(kDatastoreCursor, list.back()["DatastoreId"].get<std::string>());
        break;
      }
      list.push_back(Properties(*s));
    }
    json out = {{"DatastorePropertiesList", list}};
    if (!next.empty()) out["NextToken"] = next;
    return out;
  }

  Result<json> DescribeDatastore(const json& body) const {
    ASSIGN_OR_RETURN(store::ResourceStore * s, Datastore(body));
    return json{{"DatastoreProperties", Properties(*s)}};
  }

  Result<json> StartExport(const json& body, const RequestContext& p) const {
    ASSIGN_OR_RETURN(store::ResourceStore * s, Datastore(body));
    bulk::ExportRequest r;
    r.level = bulk::ExportLevel::kSystem;  // the SDK's export is system-wide, as HealthLake's
    r.job_name = body.value("JobName", "");
    r.data_access_role_arn = body["DataAccessRoleArn"].get<std::string>();
    const json& s3 = body["OutputDataConfig"]["S3Configuration"];
    ASSIGN_OR_RETURN(r.output, bulk::ParseS3Uri(s3["S3Uri"].get<std::string>()));
    r.kms_key_id = s3["KmsKeyId"].get<std::string>();
    r.request_url = ctx_.FhirBase(s->info().id) + "/$export";
    r.view = "healthlake";
    r.owner = JobOwner(p.principal);
    if (body.contains("ClientToken")) {
      r.client_token = TokenScope(p.principal) + "|" + body["ClientToken"].get<std::string>();
      // What makes two requests the same: every member but the token (nlohmann's objects keep their keys sorted).
      json same = body;
      same.erase("ClientToken");
      r.client_request = "StartFHIRExportJob " + same.dump();
    }
    ASSIGN_OR_RETURN(store::ExportJobRecord job, ctx_.exports->Submit(s, r));
    if (!MaySeeJob(p.principal, job.owner)) {
      // Tokens are scoped by principal (an account for SigV4), so this cannot happen; say nothing about the job.
      return Status::Invalid("The ClientToken was already used; use a new ClientToken");
    }
    return json{{"JobId", job.job_id}, {"JobStatus", job.status}, {"DatastoreId", s->info().id}};
  }

  json ExportProperties(const store::ExportJobRecord& j, std::string_view datastore_id) const {
    json out = {{"JobId", j.job_id},
                {"JobStatus", j.status},
                {"SubmitTime", EpochSeconds(j.submit_time)},
                {"DatastoreId", datastore_id},
                {"OutputDataConfig", {{"S3Configuration", {{"S3Uri", j.s3_uri}, {"KmsKeyId", j.kms_key_id}}}}}};
    if (!j.job_name.empty()) out["JobName"] = j.job_name;
    if (j.end_time) out["EndTime"] = EpochSeconds(*j.end_time);
    if (!j.data_access_role_arn.empty()) out["DataAccessRoleArn"] = j.data_access_role_arn;
    if (!j.message.empty()) out["Message"] = j.message;
    return out;
  }

  Result<json> DescribeExport(const json& body, const RequestContext& p) const {
    ASSIGN_OR_RETURN(store::ResourceStore * s, Datastore(body));
    const std::string job_id = body["JobId"].get<std::string>();
    auto job = s->jobs().GetJob(job_id);
    if (!job.ok() || !MaySeeJob(p.principal, job->owner)) {
      if (!job.ok() && job.status().code() != StatusCode::kNotFound) return job.status();
      return Status::NotFound("Export job " + job_id + " is not known in datastore " + s->info().id);
    }
    return json{{"ExportJobProperties", ExportProperties(*job, s->info().id)}};
  }

  Result<json> ListExports(const json& body, const RequestContext& p) const {
    ASSIGN_OR_RETURN(store::ResourceStore * s, Datastore(body));
    int64_t after_order = 0;
    if (body.contains("NextToken")) {
      ASSIGN_OR_RETURN(after_order, fhir::DecodePageCursor(body["NextToken"].get<std::string>(), kJobCursor));
    }
    ASSIGN_OR_RETURN(auto jobs, s->jobs().JobsWithStatus({"SUBMITTED", "QUEUED", "IN_PROGRESS", "COMPLETED",
                                                          "COMPLETED_WITH_ERRORS", "FAILED", "CANCEL_SUBMITTED",
                                                          "CANCEL_IN_PROGRESS", "CANCEL_COMPLETED", "CANCEL_FAILED"}));
    std::sort(jobs.begin(), jobs.end(), [](const auto& a, const auto& b) { return a.queue_order < b.queue_order; });
    json list = json::array();
    const int max = MaxResults(body);
    std::string next;
    int64_t last_order = 0;
    for (const auto& j : jobs) {
      if (j.queue_order <= after_order || !MaySeeJob(p.principal, j.owner)) continue;
      if (body.contains("JobName") && body["JobName"] != j.job_name) continue;
      if (body.contains("JobStatus") && body["JobStatus"] != j.status) continue;
      if (body.contains("SubmittedBefore") && EpochSeconds(j.submit_time) >= body["SubmittedBefore"].get<double>()) {
        continue;
      }
      if (body.contains("SubmittedAfter") && EpochSeconds(j.submit_time) <= body["SubmittedAfter"].get<double>()) {
        continue;
      }
      if (static_cast<int>(list.size()) == max) {
        next = fhir::EncodePageCursor(kJobCursor, last_order);
        break;
      }
      list.push_back(ExportProperties(j, s->info().id));
      last_order = j.queue_order;
    }
    json out = {{"ExportJobPropertiesList", list}};
    if (!next.empty()) out["NextToken"] = next;
    return out;
  }

  const ApiContext& ctx_;
  mutable std::mutex tags_mu_;
};

}  // namespace

Response AwsJsonError(int status, std::string_view type, std::string_view message) {
  json body = {{"__type", std::string(type)}, {"message", std::string(message)}};
  return Response::Json(status, Dump(body), kContentType);
}

void RegisterControlPlane(http::Router& router, const ApiContext& ctx) {
  auto cp = std::make_shared<ControlPlane>(ctx);
  const awsjson::Model& model = awsjson::HealthLakeModel();
  for (const auto& op : model.operations) {
    http::RouteInfo info;
    info.action = "healthlake:" + op.name;
    info.target = model.target_prefix + "." + op.name;
    info.aws_json = true;
    const awsjson::Operation* o = &op;
    router.Add("POST", "/", info,
               [cp, o](const Request& req, const RequestContext& p) { return cp->Handle(*o, req, p); });
  }
  // Any other target (or none) on POST /: what AWS answers for an operation it does not have.
  http::RouteInfo unknown;
  unknown.action = "healthlake:UnknownOperation";
  unknown.aws_json = true;
  router.Add("POST", "/", unknown, [](const Request& req, const RequestContext&) {
    const std::string_view target = req.headers.Get("X-Amz-Target");
    return AwsJsonError(400, "UnknownOperationException",
                        target.empty() ? std::string("The request has no X-Amz-Target header (HealthLake.<Operation>)")
                                       : "Unknown operation " + std::string(target).substr(0, 200));
  });
}

}  // namespace fhirlake::api
