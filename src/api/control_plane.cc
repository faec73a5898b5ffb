#include "api/control_plane.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "api/fhir_response.h"
#include "api/job_owner.h"
#include "awsjson/model.h"
#include "bulk/export_engine.h"
#include "fhir/page_cursor.h"
#include "ingest/import_engine.h"
#include "ingest/loader.h"

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
constexpr char kImportCursor[] = "importjobs";

int MaxResults(const json& body) { return body.value("MaxResults", kDefaultMaxResults); }

namespace ds = store::datastore_status;
constexpr char kDeleted[] = "DELETED";

// The control plane's background work (a datastore's preload, its deletion), one item at a time, in order.
class Background {
 public:
  Background() : thread_([this] { Run(); }) {}
  ~Background() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  void Post(std::function<void()> work) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(std::move(work));
    }
    cv_.notify_all();
  }
  bool stopping() const {
    std::lock_guard<std::mutex> lock(mu_);
    return stopping_;
  }

 private:
  void Run() {
    while (true) {
      std::function<void()> work;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
        if (stopping_) return;  // what is left resumes at the next start (the statuses are persisted)
        work = std::move(queue_.front());
        queue_.pop_front();
      }
      try {
        work();
      } catch (const std::exception& e) {
        spdlog::error("event=control_plane_background_error reason=\"{}\"", e.what());
      }
    }
  }

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;  // GUARDED_BY(mu_)
  bool stopping_ = false;                    // GUARDED_BY(mu_)
  std::thread thread_;
};

class ControlPlane {
 public:
  explicit ControlPlane(const ApiContext& ctx) : ctx_(ctx) {}

  // Once the server serves (a second process that fails to listen must not touch the datastores): what a previous
  // process left half-done goes on — a datastore still CREATING is made again (its preload leaves alone what the
  // first run stored), one DELETING is deleted.
  void ResumeUnfinished() const {
    for (store::ResourceStore* s : ctx_.catalog->All()) {
      const std::string status = s->status();
      if (status == ds::kCreating) {
        spdlog::warn("event=datastore_create_resumed datastore={}", s->info().id);
        PostCreate(s, /*resumed=*/true);
      } else if (status == ds::kDeleting) {
        spdlog::warn("event=datastore_delete_resumed datastore={}", s->info().id);
        PostDelete(s);
      }
    }
  }

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
    } else if (op.name == "CreateFHIRDatastore") {
      out = CreateDatastore(body, p);
    } else if (op.name == "DeleteFHIRDatastore") {
      out = DeleteDatastore(body);
    } else if (op.name == "DescribeFHIRDatastore") {
      out = DescribeDatastore(body);
    } else if (op.name == "StartFHIRExportJob") {
      out = StartExport(body, p);
    } else if (op.name == "DescribeFHIRExportJob") {
      out = DescribeExport(body, p);
    } else if (op.name == "ListFHIRExportJobs") {
      out = ListExports(body, p);
    } else if (op.name == "StartFHIRImportJob") {
      out = StartImport(body, p);
    } else if (op.name == "DescribeFHIRImportJob") {
      out = DescribeImport(body, p);
    } else if (op.name == "ListFHIRImportJobs") {
      out = ListImports(body, p);
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

  static json Config(const store::ResourceStore& s) {
    json c = json::parse(s.info().config, nullptr, false);
    return c.is_object() ? c : json::object();
  }

  // `endpoint`: with DatastoreEndpoint (the server's URL is known only once it listens; a tombstone is written
  // without it, and describes add it).
  json Properties(const store::ResourceStore& s, bool endpoint = true) const {
    const auto& info = s.info();
    const json c = Config(s);
    json out = {{"DatastoreId", info.id},
                {"DatastoreArn", DatastoreArn(info.id)},
                {"DatastoreName", info.name},
                {"DatastoreStatus", s.status()},
                {"CreatedAt", EpochSeconds(info.created_at)},
                {"DatastoreTypeVersion", c.value("DatastoreTypeVersion", "R4")},
                {"SseConfiguration",
                 c.value("SseConfiguration", json{{"KmsEncryptionConfig", {{"CmkType", "AWS_OWNED_KMS_KEY"}}}})}};
    for (const char* member : {"PreloadDataConfig", "IdentityProviderConfiguration"}) {
      if (c.contains(member)) out[member] = c[member];
    }
    if (endpoint) out["DatastoreEndpoint"] = ctx_.FhirBase(info.id) + "/";
    return out;
  }

  // Any datastore this server has (also one being created or deleted).
  Result<store::ResourceStore*> Datastore(const json& body) const {
    const std::string id = body["DatastoreId"].get<std::string>();
    store::ResourceStore* s = ctx_.catalog->Find(id);
    if (s == nullptr) return Status::NotFound("Datastore " + id + " does not exist");
    return s;
  }

  // A datastore that takes work: ACTIVE (ConflictException otherwise, as HealthLake answers).
  Result<store::ResourceStore*> ActiveDatastore(const json& body) const {
    ASSIGN_OR_RETURN(store::ResourceStore * s, Datastore(body));
    if (const std::string status = s->status(); status != ds::kActive) {
      return Status::Conflict("Datastore " + s->info().id + " is " + status + ", not ACTIVE");
    }
    return s;
  }

  // The datastores deleted so far, as their last describe showed them (status DELETED).
  Result<std::vector<json>> DeletedDatastores() const {
    ASSIGN_OR_RETURN(auto texts, ctx_.catalog->Deleted());
    std::vector<json> out;
    for (const auto& t : texts) {
      json j = json::parse(t, nullptr, false);
      if (!j.is_object() || !j.contains("DatastoreId") || !j["DatastoreId"].is_string()) continue;
      j["DatastoreEndpoint"] = ctx_.FhirBase(j["DatastoreId"].get<std::string>()) + "/";
      out.push_back(std::move(j));
    }
    return out;
  }

  Result<json> CreateDatastore(const json& body, const RequestContext& p) const {
    if (body["DatastoreTypeVersion"] != "R4") return Status::Invalid("DatastoreTypeVersion must be R4");
    const bool preload =
        body.contains("PreloadDataConfig") && body["PreloadDataConfig"].value("PreloadDataType", "") == "SYNTHEA";
    if (preload && ctx_.preload_dir.empty()) {
      return Status::Invalid(
          "PreloadDataConfig SYNTHEA needs the bundled sample, which this server was not given (fhirlake serve "
          "--preload-dir)");
    }
    std::map<std::string, std::string> tags;
    if (body.contains("Tags")) {
      for (const auto& t : body["Tags"]) tags[t["Key"].get<std::string>()] = t["Value"].get<std::string>();
      if (tags.size() > kMaxTags) {
        return Status::Invalid("Tags: a datastore has at most " + std::to_string(kMaxTags) + " tags (got " +
                               std::to_string(tags.size()) + ")");
      }
    }
    json config = json::object();
    for (const char* member :
         {"DatastoreTypeVersion", "SseConfiguration", "PreloadDataConfig", "IdentityProviderConfiguration"}) {
      if (body.contains(member)) config[member] = body[member];
    }
    std::lock_guard<std::mutex> lock(create_mu_);  // one token, one datastore, also for two retries at once
    if (body.contains("ClientToken")) {
      const std::string token = TokenScope(p.principal) + "|" + body["ClientToken"].get<std::string>();
      json same = body;
      same.erase("ClientToken");
      for (store::ResourceStore* s : ctx_.catalog->All()) {
        const json c = Config(*s);
        if (c.value("ClientToken", "") != token) continue;
        if (c.value("ClientRequest", "") != same.dump()) {
          return Status::Invalid("ClientToken " + body["ClientToken"].get<std::string>() +
                                 " was already used to create datastore " + s->info().id +
                                 " with other parameters; use a new ClientToken for a new datastore");
        }
        return CreateAnswer(*s);
      }
      config["ClientToken"] = token;
      config["ClientRequest"] = same.dump();
    }
    ASSIGN_OR_RETURN(store::ResourceStore * s,
                     ctx_.catalog->Create(body.value("DatastoreName", ""), Dump(config), ds::kCreating));
    spdlog::info("event=datastore_created datastore={} preload={}", s->info().id, preload);
    PostCreate(s, /*resumed=*/false);  // first: the datastore becomes ACTIVE whatever happens below
    if (!tags.empty()) RETURN_IF_ERROR(s->SetTags(tags));
    return CreateAnswer(*s);
  }

  json CreateAnswer(const store::ResourceStore& s) const {
    return {{"DatastoreId", s.info().id},
            {"DatastoreArn", DatastoreArn(s.info().id)},
            {"DatastoreStatus", s.status()},
            {"DatastoreEndpoint", ctx_.FhirBase(s.info().id) + "/"}};
  }

  // CREATING -> ACTIVE, after the preload when one was asked for. A preload `resumed` after a restart keeps what the
  // first run stored (nothing is written twice); a first run is `fhirlake load` of the sample.
  void PostCreate(store::ResourceStore* s, bool resumed) const {
    background_->Post([this, s, resumed] {
      const json c = Config(*s);
      if (c.contains("PreloadDataConfig")) {
        if (ctx_.preload_dir.empty()) {
          // (A restart without --preload-dir: the preload cannot go on; it stays CREATING until it can.)
          spdlog::error("event=datastore_preload_failed datastore={} reason=\"no --preload-dir\"", s->info().id);
          return;
        }
        auto files = ingest::ExpandPaths({ctx_.preload_dir});
        ingest::LoadSettings settings;
        settings.should_stop = [this] { return background_->stopping(); };
        if (resumed) settings.skip_written_after_seq = 0;  // the datastore was empty: all it holds is the preload's
        auto report = files.ok() ? ingest::LoadFiles(s, *files, settings) : Result<ingest::LoadReport>(files.status());
        if (!report.ok()) {
          // Stays CREATING: the next start tries again (HealthLake's older model has no CREATE_FAILED).
          spdlog::error("event=datastore_preload_failed datastore={} reason=\"{}\"", s->info().id,
                        report.status().message());
          return;
        }
        spdlog::info("event=datastore_preloaded datastore={} resources={} skipped={} errors={}", s->info().id,
                     report->loaded, report->skipped, report->errors);
      }
      if (Status st = s->SetStatus(ds::kActive); !st.ok()) {
        spdlog::error("event=datastore_status_failed datastore={} reason=\"{}\"", s->info().id, st.message());
      }
    });
  }

  Result<json> DeleteDatastore(const json& body) const {
    ASSIGN_OR_RETURN(store::ResourceStore * s, Datastore(body));
    std::lock_guard<std::mutex> lock(create_mu_);  // two deletes at once: one moves it to DELETING
    const std::string status = s->status();
    if (status == ds::kCreating) {
      return Status::Conflict("Datastore " + s->info().id + " is CREATING; delete it once it is ACTIVE");
    }
    if (status == ds::kActive) {
      RETURN_IF_ERROR(s->SetStatus(ds::kDeleting));
      spdlog::info("event=datastore_deleting datastore={}", s->info().id);
      PostDelete(s);
    }
    return CreateAnswer(*s);
  }

  // DELETING -> gone: its export jobs cancelled, the files of its jobs in the server's own bucket removed (a user's
  // bucket is never touched), then its folder; what describes it stays, as DELETED.
  void PostDelete(store::ResourceStore* s) const {
    background_->Post([this, s] {
      const std::string id = s->info().id;
      Status st = [&]() -> Status {
        // Cancelled on every pass (a kick-off that got in just before DELETING is caught too); the engine ends the
        // cancelled jobs at its next batch boundary. After a minute the deletion goes on regardless: the store's
        // connections close, and a job still running fails.
        for (int waited_ms = 0; waited_ms < 60000 && !background_->stopping(); waited_ms += 100) {
          ASSIGN_OR_RETURN(auto left,
                           s->jobs().JobsWithStatus({bulk::job_status::kSubmitted, bulk::job_status::kQueued,
                                                     bulk::job_status::kInProgress, bulk::job_status::kCancelSubmitted,
                                                     bulk::job_status::kCancelInProgress}));
          if (left.empty()) break;
          for (const auto& j : left) {
            if (j.status.starts_with("CANCEL")) continue;
            auto cancelled = ctx_.exports->Cancel(s, j.job_id);
            if (!cancelled.ok() && cancelled.status().code() != StatusCode::kNotSupported) return cancelled.status();
          }
          std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
        if (background_->stopping()) return Status::Unavailable("stopping");
        ASSIGN_OR_RETURN(auto ended,
                         s->jobs().JobsWithStatus({bulk::job_status::kCompleted, bulk::job_status::kCompletedWithErrors,
                                                   bulk::job_status::kFailed, bulk::job_status::kCancelCompleted,
                                                   bulk::job_status::kCancelFailed}));
        for (const auto& j : ended) {
          auto out = bulk::ExportEngine::JobOutput(j);
          if (!out.ok() || out->bucket != ctx_.server_export_bucket || j.view != "ig") continue;
          ASSIGN_OR_RETURN(auto files, s->jobs().Files(j.job_id));
          for (const auto& f : files) {
            Status d = ctx_.sink->Delete({j.data_access_role_arn, j.kms_key_id}, out->bucket, f.key);
            if (!d.ok() && d.code() != StatusCode::kNotFound) return d;
          }
        }
        json tombstone = Properties(*s, /*endpoint=*/false);
        tombstone["DatastoreStatus"] = kDeleted;
        return ctx_.catalog->Drop(id, Dump(tombstone));
      }();
      if (!st.ok()) {
        // Stays DELETING: the next start goes on.
        spdlog::error("event=datastore_delete_failed datastore={} reason=\"{}\"", id, st.message());
        return;
      }
      spdlog::info("event=datastore_deleted datastore={}", id);
    });
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
    // Every datastore as its describe shows it, the deleted ones too, by id (the paging key).
    std::vector<json> all;
    std::set<std::string> live;
    for (auto* s : ctx_.catalog->All()) {
      all.push_back(Properties(*s));
      live.insert(s->info().id);
    }
    ASSIGN_OR_RETURN(auto deleted, DeletedDatastores());
    for (auto& d : deleted) {
      if (!live.count(d["DatastoreId"].get<std::string>())) all.push_back(std::move(d));  // (being dropped: live)
    }
    std::sort(all.begin(), all.end(), [](const json& a, const json& b) {
      return a["DatastoreId"].get<std::string>() < b["DatastoreId"].get<std::string>();
    });
    json list = json::array();
    const int max = MaxResults(body);
    std::string next;
    for (auto& d : all) {
      const std::string id = d["DatastoreId"].get<std::string>();
      const double created = d.value("CreatedAt", 0.0);
      if (!after.empty() && id <= after) continue;
      if (filter.contains("DatastoreName") && filter["DatastoreName"] != d.value("DatastoreName", "")) continue;
      if (filter.contains("DatastoreStatus") && filter["DatastoreStatus"] != d["DatastoreStatus"]) continue;
      if (filter.contains("CreatedBefore") && created >= filter["CreatedBefore"].get<double>()) continue;
      if (filter.contains("CreatedAfter") && created <= filter["CreatedAfter"].get<double>()) continue;
      if (static_cast<int>(list.size()) == max) {
        next = fhir::EncodePageCursorText(kDatastoreCursor, list.back()["DatastoreId"].get<std::string>());
        break;
      }
      list.push_back(std::move(d));
    }
    json out = {{"DatastorePropertiesList", list}};
    if (!next.empty()) out["NextToken"] = next;
    return out;
  }

  Result<json> DescribeDatastore(const json& body) const {
    auto s = Datastore(body);
    if (s.ok()) return json{{"DatastoreProperties", Properties(**s)}};
    ASSIGN_OR_RETURN(auto deleted, DeletedDatastores());
    for (auto& d : deleted) {
      if (d["DatastoreId"] == body["DatastoreId"]) return json{{"DatastoreProperties", d}};
    }
    return s.status();
  }

  Result<json> StartExport(const json& body, const RequestContext& p) const {
    ASSIGN_OR_RETURN(store::ResourceStore * s, ActiveDatastore(body));
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

  // ListFHIRExportJobs and ListFHIRImportJobs: `jobs` in queue order after the NextToken's, those the caller may see
  // that pass the filters (JobName, JobStatus, SubmittedBefore, SubmittedAfter), at most MaxResults.
  template <typename Job, typename Render>
  Result<json> ListJobs(const json& body, const RequestContext& p, std::vector<Job> jobs, const char* cursor,
                        const char* list_name, const Render& render) const {
    int64_t after_order = 0;
    if (body.contains("NextToken")) {
      ASSIGN_OR_RETURN(after_order, fhir::DecodePageCursor(body["NextToken"].get<std::string>(), cursor));
    }
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
        next = fhir::EncodePageCursor(cursor, last_order);
        break;
      }
      list.push_back(render(j));
      last_order = j.queue_order;
    }
    json out = {{list_name, list}};
    if (!next.empty()) out["NextToken"] = next;
    return out;
  }

  Result<json> ListExports(const json& body, const RequestContext& p) const {
    ASSIGN_OR_RETURN(store::ResourceStore * s, Datastore(body));
    ASSIGN_OR_RETURN(auto jobs, s->jobs().JobsWithStatus({"SUBMITTED", "QUEUED", "IN_PROGRESS", "COMPLETED",
                                                          "COMPLETED_WITH_ERRORS", "FAILED", "CANCEL_SUBMITTED",
                                                          "CANCEL_IN_PROGRESS", "CANCEL_COMPLETED", "CANCEL_FAILED"}));
    return ListJobs(body, p, std::move(jobs), kJobCursor, "ExportJobPropertiesList",
                    [&](const store::ExportJobRecord& j) { return ExportProperties(j, s->info().id); });
  }

  Result<json> StartImport(const json& body, const RequestContext& p) const {
    ASSIGN_OR_RETURN(store::ResourceStore * s, ActiveDatastore(body));
    if (!body["InputDataConfig"].contains("S3Uri")) return Status::Invalid("InputDataConfig needs an S3Uri");
    if (!body["JobOutputDataConfig"].contains("S3Configuration")) {
      return Status::Invalid("JobOutputDataConfig needs an S3Configuration (S3Uri, KmsKeyId)");
    }
    store::ImportJobRecord job;
    ASSIGN_OR_RETURN(bulk::S3Location in, bulk::ParseS3Uri(body["InputDataConfig"]["S3Uri"].get<std::string>()));
    const json& s3 = body["JobOutputDataConfig"]["S3Configuration"];
    ASSIGN_OR_RETURN(bulk::S3Location out, bulk::ParseS3Uri(s3["S3Uri"].get<std::string>()));
    job.input_s3_uri = in.Uri();
    job.output_s3_uri = out.Uri();
    job.kms_key_id = s3["KmsKeyId"].get<std::string>();
    job.job_name = body.value("JobName", "");
    job.data_access_role_arn = body["DataAccessRoleArn"].get<std::string>();
    job.owner = JobOwner(p.principal);
    if (body.contains("ClientToken")) {
      job.client_token = TokenScope(p.principal) + "|" + body["ClientToken"].get<std::string>();
      json same = body;
      same.erase("ClientToken");
      job.client_request = "StartFHIRImportJob " + same.dump();
    }
    ASSIGN_OR_RETURN(store::ImportJobRecord started, ctx_.imports->Submit(s, std::move(job)));
    return json{{"JobId", started.job_id}, {"JobStatus", started.status}, {"DatastoreId", s->info().id}};
  }

  json ImportProperties(const store::ImportJobRecord& j, std::string_view datastore_id) const {
    json out = {
        {"JobId", j.job_id},
        {"JobStatus", j.status},
        {"SubmitTime", EpochSeconds(j.submit_time)},
        {"DatastoreId", datastore_id},
        {"InputDataConfig", {{"S3Uri", j.input_s3_uri}}},
        {"JobOutputDataConfig", {{"S3Configuration", {{"S3Uri", j.output_s3_uri}, {"KmsKeyId", j.kms_key_id}}}}}};
    if (!j.job_name.empty()) out["JobName"] = j.job_name;
    if (j.end_time) out["EndTime"] = EpochSeconds(*j.end_time);
    if (!j.data_access_role_arn.empty()) out["DataAccessRoleArn"] = j.data_access_role_arn;
    if (!j.message.empty()) out["Message"] = j.message;
    return out;
  }

  Result<json> DescribeImport(const json& body, const RequestContext& p) const {
    ASSIGN_OR_RETURN(store::ResourceStore * s, Datastore(body));
    const std::string job_id = body["JobId"].get<std::string>();
    auto job = s->jobs().GetImportJob(job_id);
    if (!job.ok() || !MaySeeJob(p.principal, job->owner)) {
      if (!job.ok() && job.status().code() != StatusCode::kNotFound) return job.status();
      return Status::NotFound("Import job " + job_id + " is not known in datastore " + s->info().id);
    }
    return json{{"ImportJobProperties", ImportProperties(*job, s->info().id)}};
  }

  Result<json> ListImports(const json& body, const RequestContext& p) const {
    ASSIGN_OR_RETURN(store::ResourceStore * s, Datastore(body));
    ASSIGN_OR_RETURN(auto jobs, s->jobs().ImportJobs());
    return ListJobs(body, p, std::move(jobs), kImportCursor, "ImportJobPropertiesList",
                    [&](const store::ImportJobRecord& j) { return ImportProperties(j, s->info().id); });
  }

  const ApiContext& ctx_;
  mutable std::mutex tags_mu_;
  mutable std::mutex create_mu_;
  // Declared last: destroyed (its thread joined) first, while everything its work uses is still there.
  std::unique_ptr<Background> background_ = std::make_unique<Background>();
};

}  // namespace

std::vector<std::string> AuthModesOfDatastore(const store::ResourceStore& store) {
  json c = json::parse(store.info().config, nullptr, false);
  if (!c.is_object() || !c.contains("IdentityProviderConfiguration")) return {};
  const std::string strategy = c["IdentityProviderConfiguration"].value("AuthorizationStrategy", "");
  if (strategy == "SMART_ON_FHIR_V1" || strategy == "SMART_ON_FHIR") return {"sigv4", "smart"};
  if (strategy == "AWS_AUTH") return {"sigv4"};
  return {};
}

Response AwsJsonError(int status, std::string_view type, std::string_view message) {
  json body = {{"__type", std::string(type)}, {"message", std::string(message)}};
  return Response::Json(status, Dump(body), kContentType);
}

void RegisterControlPlane(http::Router& router, const ApiContext& ctx) {
  auto cp = std::make_shared<ControlPlane>(ctx);
  ctx.on_serving.push_back([cp] { cp->ResumeUnfinished(); });
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
