// HealthLake "export with FHIR REST API": kick-off (POST $export at system, Patient and Group level with the
// HealthLake JSON body), describe and cancel. Parsing produces an ExportRequest; the engine does the rest.
#include "api/bulk_export.h"

#include <map>

#include "api/bulk_data_ig.h"
#include "api/fhir_response.h"
#include "api/healthlake_kickoff.h"
#include "api/job_owner.h"
#include "bulk/export_engine.h"
#include "common/json_escape.h"
#include "fhir/operation_outcome.h"

namespace fhirlake::api {
namespace {

using http::Request;
using http::RequestContext;
using http::Response;

Response KickOff(const ApiContext& ctx, const Request& req, const RequestContext& p, bulk::ExportLevel level) {
  auto store = FindDatastore(ctx, p.param("ds"));
  if (!store.ok()) return FhirError(store.status());
  if (!HasPreference(req, "respond-async")) {
    return FhirError(Status::Invalid("$export runs asynchronously: send the header 'Prefer: respond-async'"));
  }
  Status st = CheckJsonContentType(req);
  if (!st.ok()) return FhirError(st);
  // A FHIR Parameters body is the Bulk Data IG's POST kick-off; any other body is HealthLake's, validated as such.
  auto params = ParseKickoffParameters(req.body);
  if (!params.ok()) return FhirError(params.status());
  if (*params) {
    std::vector<http::QueryParam> all = req.query;
    all.insert(all.end(), (*params)->begin(), (*params)->end());
    return IgKickOff(ctx, req, p, level, all);
  }
  std::string group_id = level == bulk::ExportLevel::kGroup ? p.param("id") : "";
  auto request = ParseHealthLakeKickoff(level, group_id, req.query, req.body, Clock::System().NowMillis());
  if (!request.ok()) return FhirError(request.status());
  request->request_url = ctx.public_base_url + req.target;
  request->view = "healthlake";
  request->owner = JobOwner(p.principal);
  if (Status narrowed = NarrowExportToScopes(p.principal, &*request); !narrowed.ok()) return FhirError(narrowed);
  auto job = ctx.exports->Submit(*store, *request);
  if (!job.ok()) {
    Response resp = FhirError(job.status());
    // The queue is full: a client should come back later (the control plane answers ThrottlingException).
    if (job.status().code() == StatusCode::kTooManyRequests) resp.headers.Set("Retry-After", "30");
    return resp;
  }
  std::string ds = (*store)->info().id;
  Response resp = Response::Json(202,
                                 "{\"datastoreId\":" + JsonString(ds) + ",\"jobStatus\":\"" + job->status +
                                     "\",\"jobId\":" + JsonString(job->job_id) + "}",
                                 "application/json");
  resp.headers.Set("Content-Location", ctx.FhirBase(ds) + "/export/" + job->job_id);
  return resp;
}

void AppendField(std::string* out, std::string_view key, std::string_view value) {
  out->append(",");
  AppendJsonString(out, key);
  out->push_back(':');
  AppendJsonString(out, value);
}

std::string RenderDescribe(const bulk::JobView& v, const std::string& datastore_id) {
  namespace js = bulk::job_status;
  const auto& j = v.job;
  std::string out = "{\"exportJobProperties\":{\"jobId\":" + JsonString(j.job_id);
  if (!j.job_name.empty()) AppendField(&out, "jobName", j.job_name);
  AppendField(&out, "jobStatus", j.status);
  AppendField(&out, "submitTime", FormatHealthLakeTime(j.submit_time));
  if (j.end_time) AppendField(&out, "endTime", FormatHealthLakeTime(*j.end_time));
  AppendField(&out, "datastoreId", datastore_id);
  out += ",\"outputDataConfig\":{\"s3Configuration\":{\"s3Uri\":" + JsonString(j.s3_uri) +
         ",\"kmsKeyId\":" + JsonString(j.kms_key_id) + "}}";
  AppendField(&out, "dataAccessRoleArn", j.data_access_role_arn);
  if (!j.message.empty()) AppendField(&out, "message", j.message);
  // What a user is billed by and waits on.
  std::map<std::string, std::pair<int64_t, int64_t>> per_type;
  int64_t committed_rows = 0, committed_bytes = 0;
  for (const auto& f : v.files) {
    if (f.kind != "output") continue;
    per_type[f.type].first += f.count;
    per_type[f.type].second += f.bytes;
    committed_rows += f.count;
    committed_bytes += f.bytes;
  }
  bool done = j.status == js::kCompleted || j.status == js::kCompletedWithErrors;
  int percent =
      done ? 100
           : (v.planned_rows > 0 ? static_cast<int>(std::min<int64_t>(99, v.written_rows * 100 / v.planned_rows)) : 0);
  out += ",\"exportedResourceCount\":" + std::to_string(committed_rows) +
         ",\"exportedBytes\":" + std::to_string(committed_bytes) + ",\"exportedResources\":[";
  bool first = true;
  for (const auto& [type, cb] : per_type) {
    if (!first) out.push_back(',');
    first = false;
    out += "{\"type\":" + JsonString(type) + ",\"count\":" + std::to_string(cb.first) +
           ",\"bytes\":" + std::to_string(cb.second) + "}";
  }
  out += "]";
  // Millisecond timings (HealthLake's submitTime/endTime have whole seconds), for benchmarks and dashboards.
  if (j.start_time) out += ",\"startedAt\":" + JsonString(FormatInstant(*j.start_time));
  if (j.end_time) out += ",\"endedAt\":" + JsonString(FormatInstant(*j.end_time));
  out += ",\"progress\":{\"percent\":" + std::to_string(percent) +
         ",\"plannedResources\":" + std::to_string(v.planned_rows) +
         ",\"resourcesWritten\":" + std::to_string(v.written_rows) +
         ",\"bytesWritten\":" + std::to_string(v.written_bytes) + "}}";
  if (done || j.status == js::kCancelCompleted) {
    // A job cancelled before it started has no snapshot, hence no transactionTime.
    if (j.snapshot) out += ",\"transactionTime\":" + JsonString(FormatInstant(j.snapshot->time));
    out += ",\"request\":" + JsonString(j.request_url) + ",\"requiresAccessToken\":false,\"output\":[";
    auto out_loc = bulk::ExportEngine::JobOutput(j);
    std::string bucket = out_loc.ok() ? out_loc->bucket : "";
    std::string errors, deleted;
    bool first_out = true;
    for (const auto& f : v.files) {
      std::string entry = "{\"type\":" + JsonString(f.type) + ",\"url\":" + JsonString("s3://" + bucket + "/" + f.key) +
                          ",\"count\":" + std::to_string(f.count) + "}";
      if (f.kind == "output") {
        if (!first_out) out.push_back(',');
        first_out = false;
        out += entry;
      } else {
        std::string& list = f.kind == "deleted" ? deleted : errors;
        if (!list.empty()) list.push_back(',');
        list += entry;
      }
    }
    out += "],\"error\":[" + errors + "]";
    if (j.since) out += ",\"deleted\":[" + deleted + "]";
  }
  out += "}";
  return out;
}

// What an unknown job id gets (the store's words), also for a job the caller may not see.
Status UnknownJob(const store::ResourceStore& store, const std::string& job_id) {
  return Status::NotFound("Export job " + job_id + " is not known in datastore " + store.info().id);
}

Response Describe(const ApiContext& ctx, const RequestContext& p) {
  auto store = FindDatastore(ctx, p.param("ds"));
  if (!store.ok()) return FhirError(store.status());
  auto view = ctx.exports->Describe(*store, p.param("job"));
  if (!view.ok()) return FhirError(view.status());
  if (!MaySeeJob(p.principal, view->job.owner)) return FhirError(UnknownJob(**store, p.param("job")));
  return Response::Json(200, RenderDescribe(*view, (*store)->info().id), "application/json");
}

Response Cancel(const ApiContext& ctx, const RequestContext& p) {
  auto store = FindDatastore(ctx, p.param("ds"));
  if (!store.ok()) return FhirError(store.status());
  {
    auto existing = (*store)->jobs().GetJob(p.param("job"));
    if (!existing.ok()) return FhirError(existing.status());
    if (!MaySeeJob(p.principal, existing->owner)) return FhirError(UnknownJob(**store, p.param("job")));
  }
  auto job = ctx.exports->Cancel(*store, p.param("job"));
  if (!job.ok()) {
    if (job.status().code() == StatusCode::kNotSupported) {
      // HealthLake's answer for a job that can no longer be cancelled (documented: 400).
      return FhirError(400, "not-supported", job.status().message());
    }
    return FhirError(job.status());
  }
  return Response::Json(200,
                        "{\"exportJobProperties\":{\"jobId\":" + JsonString(job->job_id) + ",\"jobStatus\":\"" +
                            job->status + "\",\"datastoreId\":" + JsonString((*store)->info().id) + "}}",
                        "application/json");
}

}  // namespace

void RegisterBulkExport(http::Router& router, const ApiContext& ctx) {
  const ApiContext* c = &ctx;
  const std::string r4 = "/datastore/{ds}/r4";
  router.Add(
      "POST", r4 + "/$export", http::RouteInfo{"healthlake:StartFHIRExportJobWithPost"},
      [c](const Request& req, const RequestContext& p) { return KickOff(*c, req, p, bulk::ExportLevel::kSystem); });
  router.Add(
      "POST", r4 + "/Patient/$export", http::RouteInfo{"healthlake:StartFHIRExportJobWithPost"},
      [c](const Request& req, const RequestContext& p) { return KickOff(*c, req, p, bulk::ExportLevel::kPatient); });
  router.Add(
      "POST", r4 + "/Group/{id}/$export", http::RouteInfo{"healthlake:StartFHIRExportJobWithPost"},
      [c](const Request& req, const RequestContext& p) { return KickOff(*c, req, p, bulk::ExportLevel::kGroup); });
  router.Add("GET", r4 + "/export/{job}", http::RouteInfo{"healthlake:DescribeFHIRExportJobWithGet"},
             [c](const Request&, const RequestContext& p) { return Describe(*c, p); });
  router.Add("DELETE", r4 + "/export/{job}", http::RouteInfo{"healthlake:CancelFHIRExportJobWithDelete"},
             [c](const Request&, const RequestContext& p) { return Cancel(*c, p); });
}

}  // namespace fhirlake::api
