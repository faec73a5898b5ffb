// Export engine. A job's life: Submit (SUBMITTED) → scheduler: QUEUED while over quota, then StartJob takes the
// snapshot, materialises the scope (Group / referenced resources), plans tasks and moves the job to IN_PROGRESS →
// workers stream rows into files (commit file, then record it with the task checkpoint) → the last task to
// finish finalises the job (COMPLETED[_WITH_ERRORS], FAILED or CANCEL_COMPLETED).
//
// The store decides every transition (compare-and-set), so the engine's in-memory copy of a job is never written
// back: a job cancelled while the scheduler plans it, or while its last task finishes, ends CANCEL_COMPLETED once.
// Failpoints (common/failpoint.h) mark the places a crash test kills the process: export.plan, export.snapshot,
// export.scope,
// export.mid_file, export.after_sink_commit, export.after_store_commit, export.finalize, export.cancel;
// export.persist_final=error makes the final state write fail (the journal path).
#include "bulk/export_engine.h"

#include <spdlog/spdlog.h>
#include <sys/statvfs.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <iterator>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "common/failpoint.h"
#include "common/ids.h"
#include "fhir/operation_outcome.h"
#include "fhir/r4.h"
#include "fhir/resource_parser.h"
#include "fhir/subset.h"

namespace fhirlake::bulk {

namespace js = job_status;

struct ExportEngine::ActiveJob {
  store::ResourceStore* store = nullptr;
  std::string job_id;
  S3Location output;
  std::string key_prefix;
  sink::WriteContext write_ctx;
  std::atomic<bool> cancel{false};            // user cancel or failure: stop at the next batch
  std::atomic<bool> cancel_requested{false};  // a user's DELETE (the job ends CANCEL_*)
  std::atomic<int64_t> written_rows{0};
  std::atomic<int64_t> written_bytes{0};
  std::atomic<bool> has_errors{false};  // some error file is recorded
  int64_t planned_rows = 0;

  std::mutex mu;
  store::ExportJobRecord record;            // GUARDED_BY(mu); as the job started (never written back)
  int tasks_remaining = 0;                  // GUARDED_BY(mu)
  std::map<std::string, int> last_file_no;  // GUARDED_BY(mu)
  std::string failure;                      // GUARDED_BY(mu)
  // Tasks that start only once every other task of the job has finished (includeAssociatedData's).
  std::vector<store::ExportTaskRecord> deferred;  // GUARDED_BY(mu)
};

namespace {

constexpr size_t kMaxErrorLinesPerFile = 10000;
// The error file that reports the parameters ignored under handling=lenient (written when the job ends); the files
// of rows that could not be exported are numbered from 1.
constexpr int kNotesFileNo = 0;

bool IsTerminal(std::string_view s) {
  return s == js::kCompleted || s == js::kCompletedWithErrors || s == js::kFailed || s == js::kCancelCompleted ||
         s == js::kCancelFailed;
}

// Active (not inactive) Patient members of a Group resource.
Result<std::vector<std::string>> GroupMembers(const std::string& group_json) {
  nlohmann::json g = nlohmann::json::parse(group_json, nullptr, false);
  if (g.is_discarded() || !g.is_object()) return Status::Internal("stored Group is not valid JSON");
  std::vector<std::string> out;
  auto members = g.find("member");
  if (members == g.end() || !members->is_array()) return out;
  for (const auto& m : *members) {
    if (!m.is_object()) continue;
    if (auto in = m.find("inactive"); in != m.end() && in->is_boolean() && in->get<bool>()) continue;
    auto e = m.find("entity");
    if (e == m.end() || !e->is_object()) continue;
    auto r = e->find("reference");
    if (r == e->end() || !r->is_string()) continue;
    std::string ref = r->get<std::string>();
    if (ref.starts_with("Patient/")) {
      std::string id = ref.substr(8);
      if (size_t h = id.find('/'); h != std::string::npos) id = id.substr(0, h);
      if (IsValidFhirId(id)) out.push_back(id);
    }
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

// includeAssociatedData: the targets of every Provenance as of the snapshot, recorded in the store (the store then
// matches them against what the job exported). Provenance.recorded orders them (meta.lastUpdated when it is missing
// or not an instant). References are relative ("Type/id", "Type/id/_history/n") or absolute to this datastore's base.
Status CollectAssociations(store::ResourceStore* store, const std::string& job_id, const store::Snapshot& snapshot,
                           const std::string& fhir_base, size_t batch_rows, size_t batch_bytes,
                           const std::function<bool()>& stop) {
  store::ScanRequest req;
  req.type = "Provenance";
  req.scope = store::ScanScope::kAll;
  req.snapshot = snapshot;
  req.max_rows = batch_rows;
  req.max_bytes = batch_bytes;
  int64_t after = 0;
  while (!stop()) {
    req.after_rid = after;
    std::vector<store::Association> rows;
    ASSIGN_OR_RETURN(auto progress, store->Scan(req, [&](const store::ScanRow& row) -> Status {
      nlohmann::json p = nlohmann::json::parse(row.json, nullptr, false);
      if (!p.is_object()) return Status::Ok();
      EpochMillis recorded = row.last_updated;
      if (auto r = p.find("recorded"); r != p.end() && r->is_string()) {
        if (auto t = ParseInstant(r->get<std::string>()); t.ok()) recorded = *t;
      }
      auto targets = p.find("target");
      if (targets == p.end() || !targets->is_array()) return Status::Ok();
      for (const auto& t : *targets) {
        if (!t.is_object()) continue;
        auto ref = t.find("reference");
        if (ref == t.end() || !ref->is_string()) continue;
        std::string_view text = ref->get_ref<const std::string&>();
        if (!fhir_base.empty() && text.size() > fhir_base.size() && text.starts_with(fhir_base) &&
            text[fhir_base.size()] == '/') {
          text.remove_prefix(fhir_base.size() + 1);
        }
        auto lit = fhir::ParseLiteralReference(text);
        if (lit) rows.push_back(store::Association{lit->type, lit->id, row.rid, recorded});
      }
      return Status::Ok();
    }));
    RETURN_IF_ERROR(store->AddAssociations(job_id, rows));
    after = progress.last_rid;
    if (progress.exhausted) return Status::Ok();
  }
  return Status::Ok();
}

// organizeOutputBy=Patient: the header line of a Patient's block.
std::string BlockHeader(std::string_view patient_id) {
  return "{\"resourceType\":\"Parameters\",\"parameter\":[{\"name\":\"header\",\"valueReference\":{\"reference\":"
         "\"Patient/" +
         std::string(patient_id) + "\"}}]}";
}

}  // namespace

ExportEngine::ExportEngine(store::DatastoreCatalog* catalog, sink::ObjectSink* sink, EngineOptions options,
                           const Clock& clock)
    : catalog_(catalog), sink_(sink), options_(options), clock_(clock) {
  options_.workers = std::max(1, options_.workers);
  options_.jobs_per_datastore = std::max(1, options_.jobs_per_datastore);
  options_.batch_rows = std::max<size_t>(1, options_.batch_rows);
  options_.task_rows = std::max<int64_t>(1, options_.task_rows);
}

ExportEngine::~ExportEngine() { Stop(); }

std::string ExportEngine::JobKeyPrefix(const store::ExportJobRecord& job, std::string_view datastore_id) {
  auto out = JobOutput(job);
  std::string prefix = out.ok() ? out->prefix : "";
  return (prefix.empty() ? "" : prefix + "/") + std::string(datastore_id) + "-FHIR_EXPORT-" + job.job_id;
}

Result<S3Location> ExportEngine::JobOutput(const store::ExportJobRecord& job) { return ParseS3Uri(job.s3_uri); }

std::string ExportEngine::Redact(std::string message) const {
  for (const auto& path : options_.redact_paths) {
    if (path.empty()) continue;
    for (size_t at = message.find(path); at != std::string::npos; at = message.find(path, at)) {
      message.replace(at, path.size(), "<data-dir>");
    }
  }
  return message;
}

Result<store::ExportJobRecord> ExportEngine::Transition(store::ResourceStore* store, std::string_view job_id,
                                                        std::initializer_list<std::string_view> from,
                                                        std::string_view to, store::JobUpdate update) {
  if (IsTerminal(to) && !update.end_time) update.end_time = clock_.NowMillis();
  if (update.message) update.message = Redact(*update.message);
  int delay_ms = std::max(1, options_.state_retry_initial_ms);
  for (int attempt = 1;; ++attempt) {
    Status st = IsTerminal(to) ? failpoint::Hit("export.persist_final") : Status::Ok();
    Result<store::ExportJobRecord> r = st.ok() ? store->jobs().TransitionJob(job_id, from, to, update) : st;
    if (r.ok()) {
      spdlog::info("event=export_job_status datastore={} job={} status={}", store->info().id, job_id, to);
      return r;
    }
    const StatusCode code = r.status().code();
    if (code == StatusCode::kConflict || code == StatusCode::kNotFound || attempt >= options_.state_write_attempts) {
      if (code != StatusCode::kConflict) {
        spdlog::error("event=export_state_write_failed datastore={} job={} to={} attempts={} reason=\"{}\"",
                      store->info().id, job_id, to, attempt, r.status().message());
      }
      return r;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    delay_ms = std::min(delay_ms * 2, 5000);
  }
}

void ExportEngine::FailJob(store::ResourceStore* store, const std::string& job_id, const std::string& message) {
  auto current = store->jobs().GetJob(job_id);
  const bool cancelling =
      current.ok() && (current->status == js::kCancelSubmitted || current->status == js::kCancelInProgress);
  const char* to = cancelling ? js::kCancelFailed : js::kFailed;
  store::JobUpdate update;
  update.message = message;
  auto r = Transition(store, job_id,
                      {js::kSubmitted, js::kQueued, js::kInProgress, js::kCancelSubmitted, js::kCancelInProgress}, to,
                      update);
  if (r.ok()) {
    DropScratch(store, job_id);
    return;
  }
  if (r.status().code() == StatusCode::kConflict || r.status().code() == StatusCode::kNotFound) return;  // ended
  // The store cannot take it now. The journal (preallocated) can, so a restart reports the truth; meanwhile the
  // scheduler keeps trying, and describe keeps showing the last state that was really recorded.
  std::string recorded = Redact(message + " (recorded after a failed state write: " + r.status().message() + ")");
  if (has_journal_) {
    Status j = journal_.Record(store->info().id, job_id, to, recorded);
    if (!j.ok()) spdlog::error("event=export_journal_failed job={} reason=\"{}\"", job_id, j.message());
  }
  std::lock_guard<std::mutex> lock(mu_);
  pending_finals_.push_back(PendingFinal{store, job_id, to, recorded});
}

void ExportEngine::DropScratch(store::ResourceStore* store, const std::string& job_id) {
  Status st = store->jobs().DropJobScratch(job_id);
  if (!st.ok()) {
    // Harmless to keep (the job is final); JobsWithScratch finds it at the next start.
    spdlog::warn("event=export_scratch_drop_failed job={} reason=\"{}\"", job_id, st.message());
  }
}

// Applies the outcomes that earlier processes could not write to their stores.
Status ExportEngine::ApplyJournal() {
  if (!has_journal_) return Status::Ok();
  ASSIGN_OR_RETURN(auto entries, journal_.ReadAll());
  for (const auto& e : entries) {
    store::ResourceStore* store = catalog_->Find(e.datastore_id);
    bool applied = store == nullptr;  // a datastore that is gone has nothing left to correct
    if (store != nullptr) {
      store::JobUpdate update;
      update.message = e.message;
      auto r = Transition(store, e.job_id,
                          {js::kSubmitted, js::kQueued, js::kInProgress, js::kCancelSubmitted, js::kCancelInProgress},
                          e.status == js::kCancelFailed ? js::kCancelFailed : js::kFailed, update);
      applied = r.ok() || r.status().code() == StatusCode::kConflict || r.status().code() == StatusCode::kNotFound;
      if (r.ok()) spdlog::warn("event=export_job_failed_from_journal job={} message=\"{}\"", e.job_id, e.message);
      if (!applied) return r.status().WithContext("applying the export journal");
    }
    RETURN_IF_ERROR(journal_.Clear(e.slot));
  }
  return Status::Ok();
}

Status ExportEngine::Start() {
  if (!options_.journal_dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(options_.journal_dir, ec);
    if (ec) return Status::Unavailable("cannot create the export journal directory: " + ec.message());
    RETURN_IF_ERROR(journal_.Open(options_.journal_dir + "/final-states.journal"));
    has_journal_ = true;
  }
  RETURN_IF_ERROR(ApplyJournal());
  for (auto* store : catalog_->All()) {
    // Scratch of finished jobs whose drop failed last time.
    ASSIGN_OR_RETURN(auto leftovers, store->jobs().JobsWithScratch());
    for (const auto& id : leftovers) DropScratch(store, id);
    ASSIGN_OR_RETURN(auto jobs,
                     store->jobs().JobsWithStatus({js::kInProgress, js::kCancelSubmitted, js::kCancelInProgress}));
    for (auto& job : jobs) {
      if (job.status == js::kCancelSubmitted && !job.snapshot) continue;  // cancelled while queued: scheduler
      Status st = Resume(store, job);
      if (!st.ok()) {
        FailJob(store, job.job_id, "The server restarted during this export and could not resume it: " + st.message());
      }
    }
  }
  started_ = true;
  scheduler_ = std::thread([this] { SchedulerLoop(); });
  for (int i = 0; i < options_.workers; ++i) workers_.emplace_back([this] { WorkerLoop(); });
  return Status::Ok();
}

void ExportEngine::Stop() {
  if (!started_) return;
  started_ = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    wake_ = true;
  }
  scheduler_cv_.notify_all();
  worker_cv_.notify_all();
  if (scheduler_.joinable()) scheduler_.join();
  for (auto& w : workers_) w.join();
  workers_.clear();
}

// Removes what a crashed, failed or cancelled run left under the job's prefix: unfinished files, and finished
// files that were never recorded (a crash between the sink commit and the store commit). Only keys under the job's
// own folder are ever touched.
Status ExportEngine::CleanupOutput(store::ResourceStore* store, const store::ExportJobRecord& job) {
  ASSIGN_OR_RETURN(S3Location out, JobOutput(job));
  sink::WriteContext ctx{job.data_access_role_arn, job.kms_key_id};
  std::string prefix = JobKeyPrefix(job, store->info().id);
  RETURN_IF_ERROR(sink_->AbortIncomplete(ctx, out.bucket, prefix + "/"));
  ASSIGN_OR_RETURN(auto listed, sink_->List(ctx, out.bucket, prefix + "/"));
  ASSIGN_OR_RETURN(auto files, store->jobs().Files(job.job_id));
  std::set<std::string> known;
  for (const auto& f : files) known.insert(f.key);
  for (const auto& o : listed) {
    if (!o.key.starts_with(prefix + "/") || known.count(o.key)) continue;
    spdlog::info("event=export_orphan_removed job={} key={}", job.job_id, o.key);
    RETURN_IF_ERROR(sink_->Delete(ctx, out.bucket, o.key));
  }
  return Status::Ok();
}

Result<std::shared_ptr<ExportEngine::ActiveJob>> ExportEngine::MakeActiveJob(store::ResourceStore* store,
                                                                             const store::ExportJobRecord& job) {
  auto active = std::make_shared<ActiveJob>();
  active->store = store;
  active->job_id = job.job_id;
  ASSIGN_OR_RETURN(active->output, JobOutput(job));
  active->key_prefix = JobKeyPrefix(job, store->info().id);
  active->write_ctx = {job.data_access_role_arn, job.kms_key_id};
  active->record = job;
  return active;
}

Status ExportEngine::Resume(store::ResourceStore* store, const store::ExportJobRecord& job) {
  if (job.status != js::kInProgress) return CompleteCancel(store, job);
  RETURN_IF_ERROR(CleanupOutput(store, job));
  ASSIGN_OR_RETURN(auto tasks, store->jobs().Tasks(job.job_id));
  ASSIGN_OR_RETURN(auto files, store->jobs().Files(job.job_id));
  ASSIGN_OR_RETURN(auto active, MakeActiveJob(store, job));
  for (const auto& f : files) {
    int& n = active->last_file_no[f.type];  // error files share OperationOutcome's numbering
    n = std::max(n, f.file_no);
    if (f.kind == "error" && f.file_no != kNotesFileNo) active->has_errors = true;
    if (f.kind != "output") continue;
    active->written_rows += f.count;
    active->written_bytes += f.bytes;
  }
  std::vector<store::ExportTaskRecord> pending;
  for (const auto& t : tasks) {
    active->planned_rows += t.planned_rows;
    if (!t.done) pending.push_back(t);
  }
  spdlog::info("event=export_job_resumed datastore={} job={} pending_tasks={}", store->info().id, job.job_id,
               pending.size());
  std::lock_guard<std::mutex> lock(mu_);
  active_[job.job_id] = active;
  Launch(active, pending);
  return Status::Ok();
}

namespace {

std::string HumanBytes(int64_t b) {
  if (b >= (int64_t{1} << 30)) return std::to_string(b >> 20 >> 10) + " GiB";
  if (b >= (int64_t{1} << 20)) return std::to_string(b >> 20) + " MiB";
  return std::to_string(b) + " bytes";
}

}  // namespace

Result<store::ExportJobRecord> ExportEngine::Submit(store::ResourceStore* store, const ExportRequest& request) {
  // Being created or deleted (the control plane): no new job (one that slipped in would outlive its datastore).
  if (const std::string status = store->status(); status != store::datastore_status::kActive) {
    return Status::Conflict("Datastore " + store->info().id + " is " + status + ", not ACTIVE");
  }
  // The control plane's ClientToken: the same token with the same request is the job it started (a retry).
  auto by_token = [&]() -> Result<std::optional<store::ExportJobRecord>> {
    if (request.client_token.empty()) return std::optional<store::ExportJobRecord>();
    ASSIGN_OR_RETURN(auto found, store->jobs().JobByClientToken(request.client_token));
    if (found && found->client_request != request.client_request) {
      // The token as the caller wrote it (the control plane scopes it by principal: "{scope}|{token}").
      const std::string token = request.client_token.substr(request.client_token.rfind('|') + 1);
      return Status::Invalid("ClientToken " + token + " was already used to start export job " + found->job_id +
                             " with other parameters; use a new ClientToken for a new job");
    }
    return found;
  };
  {
    ASSIGN_OR_RETURN(auto earlier, by_token());
    if (earlier) return std::move(*earlier);
  }
  std::vector<std::string> notes = request.notes;
  {
    ExportRequest checked = request;
    RETURN_IF_ERROR(CheckTypeFilters(&checked));
    notes = std::move(checked.notes);
  }
  std::vector<std::string> members;
  if (request.level == ExportLevel::kGroup) {
    auto group = store->Read("Group", request.group_id);
    if (!group.ok() || group->deleted) {
      return Status::NotFound("Group '" + request.group_id + "' is not known in datastore " + store->info().id +
                              (group.ok() ? " (it was deleted)" : ""));
    }
    if (!request.patients.empty()) {
      ASSIGN_OR_RETURN(members, GroupMembers(group->json));
    }
  }
  for (const auto& p : request.patients) {
    auto patient = store->Read("Patient", p);
    if (!patient.ok() || patient->deleted) {
      return Status::Invalid("patient: Patient/" + p + " is not known in datastore " + store->info().id);
    }
    if (request.level == ExportLevel::kGroup && !std::binary_search(members.begin(), members.end(), p)) {
      return Status::Invalid("patient: Patient/" + p + " is not an active member of Group " + request.group_id);
    }
  }
  if (!options_.local_output_dir.empty() && options_.min_free_bytes > 0) {
    // The output folder may not exist yet (buckets are created on demand): ask the nearest existing ancestor.
    struct statvfs fs {};
    std::filesystem::path probe = options_.local_output_dir;
    int rc = -1;
    while (!probe.empty() && (rc = ::statvfs(probe.c_str(), &fs)) != 0 && probe.has_parent_path() &&
           probe.parent_path() != probe) {
      probe = probe.parent_path();
    }
    if (rc == 0) {
      const int64_t free_bytes = static_cast<int64_t>(fs.f_bavail) * static_cast<int64_t>(fs.f_frsize);
      if (free_bytes < options_.min_free_bytes) {
        return Status::InsufficientStorage(
            "The server has only " + HumanBytes(free_bytes) +
            " free where export files are written and needs at least " + HumanBytes(options_.min_free_bytes) +
            " (--export-min-free-bytes) to start an export; retry when space has been freed");
      }
    }
  }
  RETURN_IF_ERROR(sink_->CheckWritable({request.data_access_role_arn, request.kms_key_id}, request.output.bucket));
  store::ExportJobRecord job;
  job.job_id = NewHexId();
  job.job_name = request.job_name;
  job.status = js::kSubmitted;
  job.view = request.view;
  job.owner = request.owner;
  job.level = std::string(LevelName(request.level));
  job.group_id = request.group_id;
  job.types = request.types;
  job.since = request.since;
  job.until = request.until;
  job.tags = request.tags;
  job.security = request.security;
  job.patients = request.patients;
  job.type_filters = request.type_filters;
  job.elements = request.elements;
  job.notes = std::move(notes);
  job.output_format = request.output_format;
  job.s3_uri = request.output.Uri();
  job.kms_key_id = request.kms_key_id;
  job.data_access_role_arn = request.data_access_role_arn;
  job.request_url = request.request_url;
  job.submit_time = clock_.NowMillis();
  job.include_referenced = options_.include_referenced;
  job.client_token = request.client_token;
  job.client_request = request.client_request;
  job.partial_manifests = request.partial_manifests;
  job.organize_by = request.organize_by;
  job.associated = request.associated;
  if (Status inserted = store->jobs().InsertJob(&job, options_.queue_limit); !inserted.ok()) {
    // Two retries with one token at once: the store's unique index let one in; the other answers with its job.
    if (!request.client_token.empty()) {
      ASSIGN_OR_RETURN(auto earlier, by_token());
      if (earlier) return std::move(*earlier);
    }
    return inserted;
  }
  spdlog::info("event=export_job_submitted datastore={} job={} level={} owner={}", store->info().id, job.job_id,
               job.level, job.owner);
  {
    std::lock_guard<std::mutex> lock(mu_);
    wake_ = true;
  }
  scheduler_cv_.notify_all();
  return job;
}

Result<JobView> ExportEngine::Describe(store::ResourceStore* store, std::string_view job_id) {
  JobView view;
  ASSIGN_OR_RETURN(view.job, store->jobs().GetJob(job_id));
  ASSIGN_OR_RETURN(view.files, store->jobs().Files(view.job.job_id));
  std::shared_ptr<ActiveJob> active;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = active_.find(job_id);
    if (it != active_.end()) active = it->second;
  }
  if (active) {
    view.planned_rows = active->planned_rows;
    view.written_rows = active->written_rows;
    view.written_bytes = active->written_bytes;
  } else {
    ASSIGN_OR_RETURN(auto tasks, store->jobs().Tasks(view.job.job_id));
    for (const auto& t : tasks) view.planned_rows += t.planned_rows;
    for (const auto& f : view.files) {
      if (f.kind != "output") continue;
      view.written_rows += f.count;
      view.written_bytes += f.bytes;
    }
  }
  return view;
}

// The store decides: the cancel lands only if the job is still waiting or running. A job being planned or
// finalised notices at its own next transition (which then fails the compare-and-set) and ends CANCEL_COMPLETED.
Result<store::ExportJobRecord> ExportEngine::Cancel(store::ResourceStore* store, std::string_view job_id) {
  auto r = Transition(store, job_id, {js::kSubmitted, js::kQueued, js::kInProgress}, js::kCancelSubmitted);
  if (!r.ok()) {
    if (r.status().code() == StatusCode::kConflict) return Status::NotSupported("Interaction not supported.");
    return r.status();
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = active_.find(job_id);
    if (it != active_.end()) {
      it->second->cancel_requested = true;
      it->second->cancel = true;
    }
    wake_ = true;
  }
  scheduler_cv_.notify_all();
  return r;
}

Status ExportEngine::CompleteCancel(store::ResourceStore* store, const store::ExportJobRecord& job) {
  if (job.status == js::kCancelSubmitted) {
    auto r = Transition(store, job.job_id, {js::kCancelSubmitted}, js::kCancelInProgress);
    if (!r.ok() && r.status().code() != StatusCode::kConflict) return r.status();
  }
  RETURN_IF_ERROR(failpoint::Hit("export.cancel"));
  if (job.snapshot) {
    // It ran: remove what it wrote but never recorded. An object store that is down now must not keep the job
    // cancelling forever; what is left is unlisted, and a later sweep of the same prefix removes it.
    Status swept = CleanupOutput(store, job);
    if (!swept.ok()) spdlog::warn("event=export_cleanup_failed job={} reason=\"{}\"", job.job_id, swept.message());
  }
  auto done = Transition(store, job.job_id, {js::kCancelSubmitted, js::kCancelInProgress}, js::kCancelCompleted);
  if (!done.ok()) {
    if (done.status().code() == StatusCode::kConflict) return Status::Ok();  // someone else ended it
    return done.status();
  }
  DropScratch(store, job.job_id);
  return Status::Ok();
}

Result<store::ExportJobRecord> ExportEngine::DeleteServerFiles(store::ResourceStore* store, std::string_view job_id,
                                                               const std::string& why) {
  ASSIGN_OR_RETURN(store::ExportJobRecord job, store->jobs().GetJob(job_id));
  if (!job.files_deleted_at) {
    if (!IsTerminal(job.status)) {
      return Status::Conflict("export job " + job.job_id + " is " + job.status +
                              ": only ended jobs' files are deleted");
    }
    store::JobUpdate update;
    update.files_deleted_at = clock_.NowMillis();
    update.message = job.message.empty() ? why : job.message + " " + why;
    // The same status (a compare-and-set on it): the job's outcome does not change, only that its files are gone.
    ASSIGN_OR_RETURN(job, store->jobs().TransitionJob(job.job_id, {job.status}, job.status, update));
  }
  // A download that is running keeps its file: the objects go at a later sweep, once no lease is live (new downloads
  // already answer 404, files_deleted_at being set before the leases are counted).
  ASSIGN_OR_RETURN(int64_t downloads, store->jobs().LiveDownloads(job.job_id, clock_.NowMillis()));
  if (downloads > 0) {
    spdlog::info("event=export_files_delete_deferred datastore={} job={} downloads={}", store->info().id, job.job_id,
                 downloads);
    return job;
  }
  auto out = JobOutput(job);
  if (!out.ok()) return out.status();
  ASSIGN_OR_RETURN(auto files, store->jobs().Files(job.job_id));
  const sink::WriteContext ctx{job.data_access_role_arn, job.kms_key_id};
  for (const auto& f : files) {
    Status st = sink_->Delete(ctx, out->bucket, f.key);
    if (!st.ok() && st.code() != StatusCode::kNotFound) return st;
  }
  RETURN_IF_ERROR(store->jobs().DropFileRecords(job.job_id));
  spdlog::info("event=export_files_deleted datastore={} job={} files={}", store->info().id, job.job_id, files.size());
  return job;
}

void ExportEngine::SweepServerFiles() {
  const EpochMillis now = clock_.NowMillis();
  // Without a lifetime nothing expires, but deletions that were deferred (or stopped half-way) are still finished.
  const EpochMillis ended_before =
      options_.server_file_lifetime_ms > 0 ? now - options_.server_file_lifetime_ms : INT64_MIN;
  for (store::ResourceStore* store : catalog_->All()) {
    auto jobs = store->jobs().JobsWithFilesToRemove(options_.server_files_view, ended_before);
    if (!jobs.ok()) {
      spdlog::warn("event=export_sweep_failed datastore={} reason=\"{}\"", store->info().id, jobs.status().message());
      continue;
    }
    for (const auto& job : *jobs) {
      auto r = DeleteServerFiles(store, job.job_id,
                                 "Its files expired at " +
                                     FormatInstant(job.end_time.value_or(now) + options_.server_file_lifetime_ms) +
                                     " and were deleted.");
      if (!r.ok()) {
        spdlog::warn("event=export_sweep_failed datastore={} job={} reason=\"{}\"", store->info().id, job.job_id,
                     r.status().message());
      }
    }
  }
}

void ExportEngine::RequestSweep() {
  sweep_requested_ = true;
  {
    std::lock_guard<std::mutex> lock(mu_);
    wake_ = true;
  }
  scheduler_cv_.notify_all();
}

void ExportEngine::SchedulerLoop() {
  while (!stopping_) {
    try {
      const EpochMillis now = clock_.NowMillis();
      if (sweep_requested_.exchange(false) || now - last_sweep_ms_ >= options_.sweep_interval_ms) {
        last_sweep_ms_ = now;
        SweepServerFiles();
      }
      ScheduleOnce();
    } catch (const std::exception& e) {
      spdlog::error("event=export_scheduler_error reason=\"{}\"", e.what());
    }
    std::unique_lock<std::mutex> lock(mu_);
    scheduler_cv_.wait_for(lock, std::chrono::milliseconds(500), [this] { return wake_ || stopping_.load(); });
    wake_ = false;
  }
}

// Runs on the scheduler thread only. The engine lock is taken only to read or change the in-memory lists, never
// across a store write or a sink call, so describe, kick-off and cancel never wait for planning.
void ExportEngine::ScheduleOnce() {
  std::vector<PendingFinal> retry;
  {
    std::lock_guard<std::mutex> lock(mu_);
    retry.swap(pending_finals_);
  }
  for (const auto& p : retry) {
    store::JobUpdate update;
    update.message = p.message;
    auto r = Transition(p.store, p.job_id,
                        {js::kSubmitted, js::kQueued, js::kInProgress, js::kCancelSubmitted, js::kCancelInProgress},
                        p.status, update);
    if (r.ok() || r.status().code() == StatusCode::kConflict || r.status().code() == StatusCode::kNotFound) {
      if (r.ok()) DropScratch(p.store, p.job_id);
      Forget(p.job_id);
      continue;
    }
    std::lock_guard<std::mutex> lock(mu_);
    pending_finals_.push_back(p);
  }
  for (auto* store : catalog_->All()) {
    if (stopping_) return;
    auto jobs = store->jobs().JobsWithStatus({js::kSubmitted, js::kQueued, js::kCancelSubmitted});
    if (!jobs.ok()) {
      spdlog::error("event=export_schedule_failed datastore={} reason=\"{}\"", store->info().id,
                    jobs.status().message());
      continue;
    }
    for (const auto& job : *jobs) {
      if (stopping_) return;
      int running = 0;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (active_.count(job.job_id)) continue;
        for (const auto& [id, a] : active_) running += a->store == store ? 1 : 0;
      }
      if (job.status == js::kCancelSubmitted) {
        Status st = CompleteCancel(store, job);
        if (!st.ok()) FailJob(store, job.job_id, "The export could not be cancelled cleanly: " + st.message());
        continue;
      }
      if (running >= options_.jobs_per_datastore) {
        if (job.status == js::kSubmitted) {
          auto q = Transition(store, job.job_id, {js::kSubmitted}, js::kQueued);
          // A conflict means a cancel got there first: the next pass sees it.
          if (!q.ok() && q.status().code() != StatusCode::kConflict) {
            spdlog::warn("event=export_queue_failed job={} reason=\"{}\"", job.job_id, q.status().message());
          }
        }
        continue;
      }
      Status st = StartJob(store, job);
      if (st.ok()) continue;
      Forget(job.job_id);
      if (st.code() == StatusCode::kUnavailable) {
        // Busy or briefly unavailable store (e.g. a concurrent `fhirlake load`): try again at the next tick.
        spdlog::warn("event=export_start_deferred job={} reason=\"{}\"", job.job_id, st.message());
        return;
      }
      spdlog::error("event=export_start_failed job={} reason=\"{}\"", job.job_id, st.message());
      FailJob(store, job.job_id, "The export could not start: " + st.message());
    }
  }
}

Result<std::vector<store::ExportTaskRecord>> ExportEngine::PlanTasks(store::ResourceStore* store,
                                                                     const store::ExportJobRecord& job) {
  std::vector<std::string> types = job.types;
  if (types.empty()) {
    for (std::string_view t : fhir::AllResourceTypes()) types.emplace_back(t);
  }
  std::vector<store::ExportTaskRecord> tasks;
  std::set<std::string> filtered;
  for (const auto& f : job.type_filters) filtered.insert(f.substr(0, f.find('?')));
  const bool organized = job.organize_by == "Patient";
  // The range of `type` in `scope`, narrowed to its _typeFilter matches when it has a filter.
  auto range_of = [&](const std::string& type, store::ScanScope scope) -> Result<store::TypeRange> {
    ASSIGN_OR_RETURN(store::TypeRange range, store->RangeOf(type, scope, job.job_id));
    if (filtered.count(type)) {
      // Only the _typeFilter matches are exported: plan over their range (and count), within the scope's.
      ASSIGN_OR_RETURN(store::TypeRange matches,
                       store->RangeOf(type, store::ScanScope::kJobScope, store::FilterScopeKey(job.job_id)));
      range.rows = std::min(range.rows, matches.rows);
      range.min_rid = std::max(range.min_rid, matches.min_rid);
      range.max_rid = std::min(range.max_rid, matches.max_rid);
      if (range.max_rid < range.min_rid) range.rows = 0;
    }
    return range;
  };
  // Splits (min_rid - 1, max_rid] into `pieces` tasks of about equal rid spans, `rows` planned rows in all.
  auto split = [&](const store::ExportTaskRecord& proto, const store::TypeRange& range, int64_t pieces, int64_t rows) {
    const int64_t span = range.max_rid - range.min_rid + 1;
    int64_t lo = range.min_rid - 1;
    for (int64_t i = 0; i < pieces; ++i) {
      int64_t hi = i + 1 == pieces ? range.max_rid : range.min_rid - 1 + span * (i + 1) / pieces;
      if (hi <= lo) continue;
      store::ExportTaskRecord t = proto;
      t.task_no = static_cast<int>(tasks.size());
      t.min_rid = lo;
      t.max_rid = hi;
      t.after_rid = lo;
      t.planned_rows = rows / pieces + (i + 1 == pieces ? rows % pieces : 0);
      tasks.push_back(std::move(t));
      lo = hi;
    }
  };
  int64_t organized_rows = 0;  // organizeOutputBy: the compartment rows the blocks will hold (for progress)
  for (const auto& type : types) {
    // organizeOutputBy=Patient: only what a Patient compartment holds is in the blocks (the Group is not).
    if (organized && (!fhir::IsPatientCompartmentType(type) || type == "Group")) continue;
    store::ScanScope scope = store::ScanScope::kAll;
    if (job.level == "patient" && !job.patients.empty()) {
      scope = store::ScanScope::kJobScope;
    } else if (job.level == "patient") {
      if (fhir::IsPatientCompartmentType(type)) {
        scope = store::ScanScope::kAnyCompartment;
      } else if (job.include_referenced) {
        scope = store::ScanScope::kJobScope;
      } else {
        continue;
      }
    } else if (job.level == "group") {
      scope = store::ScanScope::kJobScope;
    }
    // includeAssociatedData: the Provenance exported are those of the exported resources (the last task), no other;
    // nor are Provenance deletions listed.
    if (!job.associated.empty() && type == "Provenance") continue;
    if (job.since) {
      // The type's deletions since _since (the IG's `deleted` files): one task, through the lastUpdated index.
      store::ExportTaskRecord d;
      d.job_id = job.job_id;
      d.task_no = static_cast<int>(tasks.size());
      d.type = type;
      d.scope = scope;
      d.min_rid = 0;
      d.max_rid = INT64_MAX;
      d.after_rid = 0;
      d.deleted = true;
      tasks.push_back(std::move(d));
    }
    if (organized) {
      // The blocks are planned below, over the Patients; count what they will hold for the progress shown.
      ASSIGN_OR_RETURN(store::TypeRange range, range_of(type, scope));
      organized_rows += range.rows;
      continue;
    }
    ASSIGN_OR_RETURN(store::TypeRange range, range_of(type, scope));
    if (range.rows == 0) continue;
    store::ExportTaskRecord proto;
    proto.job_id = job.job_id;
    proto.type = type;
    proto.scope = scope;
    split(proto, range, std::max<int64_t>(1, (range.rows + options_.task_rows - 1) / options_.task_rows), range.rows);
  }
  if (organized) {
    // One block per Patient in scope (the Group's members, the `patient` list, or every Patient), a few hundred
    // Patients per task: a block holds a whole compartment.
    const store::ScanScope anchors =
        job.level == "group" || !job.patients.empty() ? store::ScanScope::kJobScope : store::ScanScope::kAll;
    ASSIGN_OR_RETURN(store::TypeRange range, range_of("Patient", anchors));
    if (range.rows > 0) {
      const int64_t per_task = std::max<int64_t>(1, options_.task_rows / 200);
      store::ExportTaskRecord proto;
      proto.job_id = job.job_id;
      proto.type = "Patient";
      proto.scope = anchors;
      proto.mode = "organized";
      split(proto, range, (range.rows + per_task - 1) / per_task, std::max(organized_rows, range.rows));
    }
  }
  if (!job.associated.empty()) {
    // After every other task (Launch defers it): the Provenance of what they exported.
    store::ExportTaskRecord t;
    t.job_id = job.job_id;
    t.task_no = static_cast<int>(tasks.size());
    t.type = "Provenance";
    t.mode = "associated";
    t.min_rid = 0;
    t.max_rid = INT64_MAX;
    t.after_rid = 0;
    ASSIGN_OR_RETURN(store::TypeRange range, store->RangeOf("Provenance", store::ScanScope::kAll, job.job_id));
    t.planned_rows = range.rows;
    tasks.push_back(std::move(t));
  }
  return tasks;
}

// Called without mu_. Planning writes only scratch rows (scope, tasks), each in short transactions; the job becomes
// IN_PROGRESS only by a compare-and-set from SUBMITTED/QUEUED, which a cancel that came first makes fail.
Status ExportEngine::StartJob(store::ResourceStore* store, const store::ExportJobRecord& waiting) {
  RETURN_IF_ERROR(failpoint::Hit("export.plan"));
  std::vector<store::ResourceStore::TypeFilter> filters;
  {
    // Validated at kick-off; parsed again here (a restart re-plans from the persisted text).
    ASSIGN_OR_RETURN(auto parsed, ParseTypeFilters(waiting.type_filters, FhirBaseOfKickoffUrl(waiting.request_url)));
    for (auto& [type, queries] : parsed) filters.push_back({type, std::move(queries)});
  }
  ASSIGN_OR_RETURN(store::Snapshot snap, store->TakeSnapshotWithFilters(waiting.job_id, filters));
  RETURN_IF_ERROR(failpoint::Hit("export.snapshot"));
  store::ExportJobRecord job = waiting;
  job.snapshot = snap;
  job.start_time = clock_.NowMillis();
  if (job.level == "group") {
    // The members are the Group's as of the snapshot, not as of now.
    auto group = store->ReadAsOf("Group", job.group_id, snap.seq);
    if (!group.ok() && group.status().code() != StatusCode::kNotFound) return group.status();
    if (!group.ok() || group->deleted) {
      return Status::NotFound("Group '" + job.group_id + "' did not exist at the export's transactionTime " +
                              FormatInstant(snap.time));
    }
    ASSIGN_OR_RETURN(auto members, GroupMembers(group->json));
    if (!job.patients.empty()) {
      // `patient`: only those of the members the request named (members as of the snapshot).
      std::vector<std::string> kept;
      std::set_intersection(members.begin(), members.end(), job.patients.begin(), job.patients.end(),
                            std::back_inserter(kept));
      members = std::move(kept);
    }
    RETURN_IF_ERROR(store->MaterializeGroupScope(job.job_id, job.group_id, members, job.include_referenced, snap));
    RETURN_IF_ERROR(failpoint::Hit("export.scope"));
  } else if (job.level == "patient" && !job.patients.empty()) {
    // `patient` at Patient level: the named patients' compartments, as a Group of them would be (no Group).
    RETURN_IF_ERROR(store->MaterializeGroupScope(job.job_id, "", job.patients, job.include_referenced, snap));
    RETURN_IF_ERROR(failpoint::Hit("export.scope"));
  } else if (job.level == "patient" && job.include_referenced && job.organize_by.empty()) {
    // (organizeOutputBy: the blocks hold compartments only, so there is no referenced scope to find.)
    RETURN_IF_ERROR(store->MaterializeReferencedScope(job.job_id, snap));
    RETURN_IF_ERROR(failpoint::Hit("export.scope"));
  }
  ASSIGN_OR_RETURN(auto tasks, PlanTasks(store, job));
  RETURN_IF_ERROR(store->jobs().ReplaceTasks(job.job_id, tasks));

  // Registered before the transition, so a cancel that lands right after it finds the job and stops it.
  ASSIGN_OR_RETURN(auto active, MakeActiveJob(store, job));
  for (const auto& t : tasks) active->planned_rows += t.planned_rows;
  {
    std::lock_guard<std::mutex> lock(mu_);
    active_[job.job_id] = active;
  }
  store::JobUpdate update;
  update.start_time = job.start_time;
  update.snapshot = snap;
  auto started = Transition(store, job.job_id, {js::kSubmitted, js::kQueued}, js::kInProgress, update);
  if (!started.ok()) {
    Forget(job.job_id);
    if (started.status().code() != StatusCode::kConflict) return started.status();
    // Cancelled while it was being planned.
    auto fresh = store->jobs().GetJob(job.job_id);
    if (fresh.ok() && (fresh->status == js::kCancelSubmitted || fresh->status == js::kCancelInProgress)) {
      return CompleteCancel(store, *fresh);
    }
    return Status::Ok();  // ended some other way; nothing to do
  }
  {
    std::lock_guard<std::mutex> job_lock(active->mu);
    active->record = *started;
  }
  std::lock_guard<std::mutex> lock(mu_);
  Launch(active, tasks);
  return Status::Ok();
}

// Called with mu_ held; the job is in active_.
void ExportEngine::Launch(const std::shared_ptr<ActiveJob>& job, const std::vector<store::ExportTaskRecord>& tasks) {
  std::vector<store::ExportTaskRecord> now;
  {
    std::lock_guard<std::mutex> job_lock(job->mu);
    job->tasks_remaining = static_cast<int>(std::max<size_t>(1, tasks.size()));
    for (const auto& t : tasks) (t.mode == "associated" ? job->deferred : now).push_back(t);
    if (now.empty() && !job->deferred.empty()) now.swap(job->deferred);  // the others are done (a resume)
  }
  if (tasks.empty()) {
    // Nothing to scan: finish on a worker so that locks are taken in the usual order.
    store::ExportTaskRecord none;
    none.task_no = -1;
    queue_.push_back(TaskItem{job, none});
  }
  for (const auto& t : now) queue_.push_back(TaskItem{job, t});
  worker_cv_.notify_all();
}

void ExportEngine::Forget(const std::string& job_id) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    active_.erase(job_id);
    wake_ = true;
  }
  scheduler_cv_.notify_all();
}

void ExportEngine::WorkerLoop() {
  while (true) {
    TaskItem item;
    {
      std::unique_lock<std::mutex> lock(mu_);
      worker_cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (stopping_ || queue_.empty()) return;  // stopping: queued tasks resume at the next start
      item = std::move(queue_.front());
      queue_.pop_front();
    }
    std::string failure;
    TaskOutcome outcome = TaskOutcome::kDone;
    if (item.task.task_no >= 0) {
      try {
        outcome = RunTask(*item.job, item.task, &failure);
      } catch (const std::exception& e) {
        outcome = TaskOutcome::kFailed;
        failure = std::string("internal error: ") + e.what();
      }
    }
    try {
      TaskFinished(item.job, outcome, failure);
    } catch (const std::exception& e) {
      spdlog::error("event=export_finalize_error job={} reason=\"{}\"", item.job->job_id, e.what());
    }
  }
}

ExportEngine::TaskOutcome ExportEngine::RunTask(ActiveJob& job, const store::ExportTaskRecord& task,
                                                std::string* failure) {
  if (task.mode == "organized") return RunOrganizedTask(job, task, failure);
  const std::string expected_prefix = "{\"resourceType\":\"" + task.type + "\"";
  // The open output file and the errors met since the last commit. Both are committed together with the task
  // checkpoint in one store transaction, so a restart neither loses nor repeats an error.
  std::unique_ptr<sink::ObjectWriter> writer;
  store::ExportFileRecord file;
  std::vector<std::string> errors;
  int64_t after = task.after_rid;
  std::vector<int64_t> exported;  // includeAssociatedData: the rows written since the last commit

  auto new_file = [&](std::string_view kind, const std::string& type) {
    store::ExportFileRecord f;
    f.job_id = job.job_id;
    f.kind = std::string(kind);
    f.type = type;
    f.task_no = task.task_no;
    {
      std::lock_guard<std::mutex> lock(job.mu);
      f.file_no = ++job.last_file_no[type];
    }
    f.key = job.key_prefix + "/" + type + "/" + type + "-" + std::to_string(f.file_no) + ".ndjson";
    return f;
  };
  auto open_file = [&]() -> Status {
    if (task.deleted) {
      // The IG's deleted files: "{prefix}/deleted/deleted-{n}.ndjson", numbered across the job's types.
      file = new_file("deleted", "Bundle");
      file.key = job.key_prefix + "/deleted/deleted-" + std::to_string(file.file_no) + ".ndjson";
    } else {
      file = new_file("output", task.type);
    }
    ASSIGN_OR_RETURN(writer, sink_->Create(job.write_ctx, job.output.bucket, file.key));
    return Status::Ok();
  };
  // Commits the open file (if any) and the pending errors (if any), then records them with the checkpoint.
  auto commit = [&](bool done) -> Status {
    // What the file holds is listed as exported first: a crash before the checkpoint re-exports those rows, and
    // listing them again changes nothing.
    RETURN_IF_ERROR(job.store->AddToScope(store::ExportedScopeKey(job.job_id), task.type, exported));
    exported.clear();
    std::vector<store::ExportFileRecord> records;
    if (!errors.empty()) {
      ASSIGN_OR_RETURN(auto ef, WriteErrorFile(job, task.task_no, errors));
      records.push_back(std::move(ef));
    }
    if (writer) {
      RETURN_IF_ERROR(writer->Commit());
      writer.reset();
      records.push_back(file);
    }
    RETURN_IF_ERROR(RecordFiles(job, task.task_no, records, after, done, !errors.empty()));
    errors.clear();
    return Status::Ok();
  };
  auto fail = [&](const Status& st) {
    if (writer) writer->Abort();
    *failure = st.message();
    return TaskOutcome::kFailed;
  };

  store::ScanRequest req;
  req.type = task.type;
  req.scope = task.scope;
  req.job_id = job.job_id;
  req.max_rid = task.max_rid;
  req.max_rows = options_.batch_rows;
  req.max_bytes = options_.batch_bytes;
  std::vector<std::string> tags, security;  // _tag / _security: rows that do not match are skipped
  std::vector<std::string> elements;        // _elements: each row is cut down to them
  bool record_exported = false;
  std::string fhir_base;
  {
    std::lock_guard<std::mutex> lock(job.mu);
    req.since = job.record.since;
    req.until = job.record.until;
    req.snapshot = *job.record.snapshot;
    tags = job.record.tags;
    security = job.record.security;
    // _elements: "name" applies to every type, "Type.name" to that type only; a type none applies to is exported
    // whole.
    for (const std::string& e : job.record.elements) {
      const size_t dot = e.find('.');
      if (dot == std::string::npos) {
        elements.push_back(e);
      } else if (std::string_view(e).substr(0, dot) == task.type) {
        elements.push_back(e.substr(dot + 1));
      }
    }
    const std::string filter_prefix = task.type + "?";
    const bool filtered = std::any_of(job.record.type_filters.begin(), job.record.type_filters.end(),
                                      [&](const std::string& f) { return f.starts_with(filter_prefix); });
    // _typeFilter selects resources; a deletion has no content to match, so it is listed whatever the filters.
    if (filtered && !task.deleted) req.filter_key = store::FilterScopeKey(job.job_id);
    record_exported = !job.record.associated.empty() && !task.deleted && task.mode.empty();
    fhir_base = FhirBaseOfKickoffUrl(job.record.request_url);
  }
  req.tombstones = task.deleted;
  if (task.mode == "associated") {
    // includeAssociatedData, after every other task: match the Provenance targets against what was exported (once:
    // a checkpoint past 0 means the choice is made), then write the chosen Provenance, whatever the filters.
    if (task.after_rid == 0) {
      bool latest = false;
      {
        std::lock_guard<std::mutex> lock(job.mu);
        latest = job.record.associated == "LatestProvenanceResources";
      }
      auto stop = [&] { return job.cancel || stopping_; };
      Status st = stop() ? Status::Ok()
                         : CollectAssociations(job.store, job.job_id, req.snapshot, fhir_base, options_.batch_rows,
                                               options_.batch_bytes, stop);
      // (A stopped job chooses nothing: its checkpoint stays at 0, so a resumed run collects again.)
      if (st.ok() && !stop()) st = job.store->SelectAssociated(job.job_id, latest);
      if (!st.ok()) return fail(st);
    }
    req.scope = store::ScanScope::kJobScope;
    req.job_id = store::AssociatedScopeKey(job.job_id);
    req.since.reset();
    req.until.reset();
    req.filter_key.clear();
    tags.clear();
    security.clear();
  }
  std::string line;
  while (true) {
    if (job.cancel || stopping_) {
      if (writer) writer->Abort();
      return TaskOutcome::kStopped;
    }
    req.after_rid = after;
    auto progress = job.store->Scan(req, [&](const store::ScanRow& row) -> Status {
      std::string_view out = row.json;
      if (task.deleted) {
        // One transaction Bundle per deleted resource, with its DELETE entry (the IG's format).
        line =
            "{\"resourceType\":\"Bundle\",\"type\":\"transaction\",\"entry\":[{\"request\":{\"method\":"
            "\"DELETE\",\"url\":\"" +
            task.type + "/" + std::string(row.id) + "\"}}]}";
        out = line;
      } else if (!std::string_view(row.json).starts_with(expected_prefix)) {
        errors.push_back(fhir::OperationOutcome(
            "error", "exception",
            task.type + "/" + std::string(row.id) + " could not be exported: its stored bytes are not a " + task.type +
                " resource (the datastore is damaged; restore it, or PUT the resource again)"));
        return Status::Ok();
      } else {
        if (!MatchesMetaFilters(row.json, tags, security)) return Status::Ok();
        if (!elements.empty()) {
          line = fhir::SubsetElements(row.json, elements);
          out = line;
        }
      }
      if (!writer) RETURN_IF_ERROR(open_file());
      RETURN_IF_ERROR(writer->Append(out));
      RETURN_IF_ERROR(writer->Append("\n"));
      if (record_exported) exported.push_back(row.rid);
      file.count += 1;
      file.bytes += static_cast<int64_t>(out.size() + 1);
      if (!task.deleted) {
        // What describe shows as written: the output files' lines (as it counts them once the job has ended).
        job.written_rows += 1;
        job.written_bytes += static_cast<int64_t>(out.size() + 1);
      }
      return Status::Ok();
    });
    if (!progress.ok()) return fail(progress.status());
    if (writer) {
      if (Status fp = failpoint::Hit("export.mid_file"); !fp.ok()) return fail(fp);
    }
    after = progress->last_rid;
    if (progress->exhausted) break;
    if ((writer && static_cast<size_t>(file.bytes) >= options_.file_bytes) || errors.size() >= kMaxErrorLinesPerFile) {
      if (Status st = commit(false); !st.ok()) return fail(st);
    }
    if (options_.batch_delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(options_.batch_delay_ms));
  }
  if (Status st = commit(true); !st.ok()) return fail(st);
  return TaskOutcome::kDone;
}

// organizeOutputBy=Patient: for each Patient of the task's range, in rid order, its block: the header, the Patient
// itself (when the job exports it), then its compartment as of the snapshot, filtered as the job says. Files are
// committed (with the checkpoint, the last whole block's Patient rid) only at block ends, so a restart redoes whole
// blocks and never repeats one. A block that outgrows a file continues in a new one, the header repeated there and
// the earlier file's continues_in naming it; the files of a split block are committed together.
ExportEngine::TaskOutcome ExportEngine::RunOrganizedTask(ActiveJob& job, const store::ExportTaskRecord& task,
                                                         std::string* failure) {
  std::optional<EpochMillis> since, until;
  store::Snapshot snapshot;
  std::vector<std::string> tags, security, types, filtered_types;
  std::vector<std::string> common_elements;
  std::map<std::string, std::vector<std::string>, std::less<>> type_elements;
  bool patient_wanted = true, compartment_wanted = true, patient_filtered = false;
  {
    std::lock_guard<std::mutex> lock(job.mu);
    const store::ExportJobRecord& r = job.record;
    since = r.since;
    until = r.until;
    snapshot = *r.snapshot;
    tags = r.tags;
    security = r.security;
    for (const auto& t : r.types) {
      if (t != "Patient") types.push_back(t);
    }
    patient_wanted = r.types.empty() || types.size() < r.types.size();
    compartment_wanted = r.types.empty() || !types.empty();
    for (const auto& f : r.type_filters) {
      std::string type = f.substr(0, f.find('?'));
      if (type == "Patient") {
        patient_filtered = true;
      } else if (std::find(filtered_types.begin(), filtered_types.end(), type) == filtered_types.end()) {
        filtered_types.push_back(std::move(type));
      }
    }
    for (const std::string& e : r.elements) {
      const size_t dot = e.find('.');
      if (dot == std::string::npos) {
        common_elements.push_back(e);
      } else {
        type_elements[e.substr(0, dot)].push_back(e.substr(dot + 1));
      }
    }
  }
  // _elements: "name" applies to every type, "Type.name" to that type; a type none applies to is exported whole.
  auto elements_of = [&](std::string_view type) {
    std::vector<std::string> out = common_elements;
    if (auto it = type_elements.find(type); it != type_elements.end())
      out.insert(out.end(), it->second.begin(), it->second.end());
    return out;
  };

  std::vector<std::unique_ptr<sink::ObjectWriter>> split_writers;  // complete parts of a split block
  std::vector<store::ExportFileRecord> split_files;
  std::unique_ptr<sink::ObjectWriter> writer;
  store::ExportFileRecord file;
  std::vector<std::string> errors;
  int64_t after = task.after_rid;
  std::string block_patient;  // the Patient whose block is being written
  bool header_written = false, split_pending = false;

  auto new_file = [&]() {
    store::ExportFileRecord f;
    f.job_id = job.job_id;
    f.kind = "output";
    f.type = "Patient";
    f.task_no = task.task_no;
    {
      std::lock_guard<std::mutex> lock(job.mu);
      f.file_no = ++job.last_file_no["Patient"];
    }
    f.key = job.key_prefix + "/Patient/Patient-" + std::to_string(f.file_no) + ".ndjson";
    return f;
  };
  auto append = [&](std::string_view line) -> Status {
    RETURN_IF_ERROR(writer->Append(line));
    RETURN_IF_ERROR(writer->Append("\n"));
    file.count += 1;
    file.bytes += static_cast<int64_t>(line.size() + 1);
    // Counted as the file's `count` counts them (headers too), so describe shows the same while and after it runs.
    job.written_rows += 1;
    job.written_bytes += static_cast<int64_t>(line.size() + 1);
    return Status::Ok();
  };
  // One resource of the current block: opens a file (continuing a split block) and writes the header as needed.
  auto emit = [&](std::string_view line) -> Status {
    if (writer && split_pending) {
      store::ExportFileRecord next = new_file();
      file.continues_in = next.key;
      split_writers.push_back(std::move(writer));
      split_files.push_back(std::move(file));
      file = std::move(next);
      ASSIGN_OR_RETURN(writer, sink_->Create(job.write_ctx, job.output.bucket, file.key));
      header_written = false;
    }
    split_pending = false;
    if (!writer) {
      file = new_file();
      ASSIGN_OR_RETURN(writer, sink_->Create(job.write_ctx, job.output.bucket, file.key));
      header_written = false;
    }
    if (!header_written) {
      RETURN_IF_ERROR(append(BlockHeader(block_patient)));
      header_written = true;
    }
    return append(line);
  };
  auto commit = [&](bool done) -> Status {
    std::vector<store::ExportFileRecord> records;
    if (!errors.empty()) {
      ASSIGN_OR_RETURN(auto ef, WriteErrorFile(job, task.task_no, errors));
      records.push_back(std::move(ef));
    }
    for (size_t i = 0; i < split_writers.size(); ++i) {
      RETURN_IF_ERROR(split_writers[i]->Commit());
      records.push_back(split_files[i]);
    }
    split_writers.clear();
    split_files.clear();
    if (writer) {
      RETURN_IF_ERROR(writer->Commit());
      writer.reset();
      records.push_back(file);
    }
    RETURN_IF_ERROR(RecordFiles(job, task.task_no, records, after, done, !errors.empty()));
    errors.clear();
    return Status::Ok();
  };
  auto abort_all = [&]() {
    if (writer) writer->Abort();
    for (auto& w : split_writers) w->Abort();
  };
  auto damaged = [&](std::string_view type, std::string_view id) {
    errors.push_back(fhir::OperationOutcome(
        "error", "exception",
        std::string(type) + "/" + std::string(id) + " could not be exported: its stored bytes are not a " +
            std::string(type) + " resource (the datastore is damaged; restore it, or PUT the resource again)"));
  };

  store::ScanRequest anchors;
  anchors.type = "Patient";
  anchors.scope = task.scope;
  anchors.job_id = job.job_id;
  anchors.max_rid = task.max_rid;
  anchors.snapshot = snapshot;
  anchors.max_rows = std::max<size_t>(1, options_.batch_rows / 10);
  anchors.max_bytes = options_.batch_bytes;
  if (patient_filtered) anchors.filter_key = store::FilterScopeKey(job.job_id);
  const std::string patient_prefix = "{\"resourceType\":\"Patient\"";
  bool stopped = false;
  std::string line;
  while (true) {
    anchors.after_rid = after;
    auto progress = job.store->Scan(anchors, [&](const store::ScanRow& patient) -> Status {
      if (job.cancel || stopping_) {
        stopped = true;
        return Status::Unavailable("stopped");
      }
      block_patient = std::string(patient.id);
      header_written = false;
      split_pending = false;
      const bool in_range = (!since || patient.last_updated >= *since) && (!until || patient.last_updated <= *until);
      if (!patient_wanted) {
        // Only the header of the block (when it has resources) names the Patient.
      } else if (!std::string_view(patient.json).starts_with(patient_prefix)) {
        damaged("Patient", patient.id);
      } else if (in_range && MatchesMetaFilters(patient.json, tags, security)) {
        std::string_view out = patient.json;
        if (const auto elements = elements_of("Patient"); !elements.empty()) {
          line = fhir::SubsetElements(patient.json, elements);
          out = line;
        }
        RETURN_IF_ERROR(emit(out));
      }
      if (compartment_wanted) {
        store::CompartmentScanRequest req;
        req.patient_id = block_patient;
        req.snapshot = snapshot;
        req.since = since;
        req.until = until;
        req.types = types;
        req.filtered_types = filtered_types;
        req.filter_key = store::FilterScopeKey(job.job_id);
        req.max_rows = options_.batch_rows;
        req.max_bytes = options_.batch_bytes;
        while (true) {
          ASSIGN_OR_RETURN(auto page, job.store->ScanCompartment(req, [&](const store::ScanRow& row) -> Status {
            const std::string prefix = "{\"resourceType\":\"" + std::string(row.type) + "\"";
            if (!std::string_view(row.json).starts_with(prefix)) {
              damaged(row.type, row.id);
              return Status::Ok();
            }
            if (!MatchesMetaFilters(row.json, tags, security)) return Status::Ok();
            std::string_view out = row.json;
            if (const auto elements = elements_of(row.type); !elements.empty()) {
              line = fhir::SubsetElements(row.json, elements);
              out = line;
            }
            return emit(out);
          }));
          if (page.exhausted) break;
          req.after_rid = page.last_rid;
          // A block that has outgrown its file continues in the next one (opened when it gets a resource).
          if (writer && static_cast<size_t>(file.bytes) >= options_.file_bytes) split_pending = true;
          if (job.cancel || stopping_) {
            stopped = true;
            return Status::Unavailable("stopped");
          }
        }
      }
      after = patient.rid;
      if ((writer && static_cast<size_t>(file.bytes) >= options_.file_bytes) ||
          errors.size() >= kMaxErrorLinesPerFile) {
        RETURN_IF_ERROR(commit(false));
      }
      return Status::Ok();
    });
    if (stopped) {
      abort_all();
      return TaskOutcome::kStopped;
    }
    if (!progress.ok()) {
      abort_all();
      *failure = progress.status().message();
      return TaskOutcome::kFailed;
    }
    if (writer) {
      if (Status fp = failpoint::Hit("export.mid_file"); !fp.ok()) {
        abort_all();
        *failure = fp.message();
        return TaskOutcome::kFailed;
      }
    }
    // Every Patient the batch examined has its whole block written (or had nothing to write).
    after = progress->last_rid;
    if (progress->exhausted) break;
    if (options_.batch_delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(options_.batch_delay_ms));
  }
  if (Status st = commit(true); !st.ok()) {
    abort_all();
    *failure = st.message();
    return TaskOutcome::kFailed;
  }
  return TaskOutcome::kDone;
}

void ExportEngine::TaskFinished(const std::shared_ptr<ActiveJob>& job, TaskOutcome outcome,
                                const std::string& failure) {
  std::vector<store::ExportTaskRecord> release;
  {
    std::lock_guard<std::mutex> lock(job->mu);
    if (outcome == TaskOutcome::kFailed && job->failure.empty()) {
      job->failure = failure;
      job->cancel = true;  // stop the job's other tasks at their next batch
      spdlog::error("event=export_task_failed job={} reason=\"{}\"", job->job_id, failure);
    }
    if (--job->tasks_remaining > 0) {
      // The deferred tasks start when only they are left.
      if (job->deferred.empty() || job->tasks_remaining != static_cast<int>(job->deferred.size())) return;
      release.swap(job->deferred);
    }
  }
  if (!release.empty()) {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& t : release) queue_.push_back(TaskItem{job, std::move(t)});
    worker_cv_.notify_all();
    return;
  }
  Finalize(job);
}

// Records files committed to the sink with the task's checkpoint (one store transaction), between the crash tests'
// failpoints.
Status ExportEngine::RecordFiles(ActiveJob& job, int task_no, const std::vector<store::ExportFileRecord>& records,
                                 int64_t after, bool done, bool with_errors) {
  if (!records.empty()) RETURN_IF_ERROR(failpoint::Hit("export.after_sink_commit"));
  RETURN_IF_ERROR(job.store->jobs().CommitFiles(records, job.job_id, task_no, after, done));
  if (!records.empty()) RETURN_IF_ERROR(failpoint::Hit("export.after_store_commit"));
  if (with_errors) job.has_errors = true;
  return Status::Ok();
}

// A new error file of the job (numbered with its other OperationOutcome files) holding `lines`, committed to the sink;
// the caller records it.
Result<store::ExportFileRecord> ExportEngine::WriteErrorFile(ActiveJob& job, int task_no,
                                                             const std::vector<std::string>& lines) {
  store::ExportFileRecord ef;
  ef.job_id = job.job_id;
  ef.kind = "error";
  ef.type = "OperationOutcome";
  ef.task_no = task_no;
  {
    std::lock_guard<std::mutex> lock(job.mu);
    ef.file_no = ++job.last_file_no["OperationOutcome"];
  }
  ef.key = job.key_prefix + "/OperationOutcome/OperationOutcome-" + std::to_string(ef.file_no) + ".ndjson";
  ASSIGN_OR_RETURN(auto w, sink_->Create(job.write_ctx, job.output.bucket, ef.key));
  for (const auto& line : lines) {
    RETURN_IF_ERROR(w->Append(line));
    RETURN_IF_ERROR(w->Append("\n"));
    ef.count += 1;
    ef.bytes += static_cast<int64_t>(line.size() + 1);
  }
  RETURN_IF_ERROR(w->Commit());
  return ef;
}

// The parameters the kick-off ignored under handling=lenient, as OperationOutcomes in the job's error file number
// kNotesFileNo (once: a finalisation that runs again after a restart finds it recorded).
Status ExportEngine::WriteNotesFile(ActiveJob& job) {
  std::vector<std::string> notes;
  {
    std::lock_guard<std::mutex> lock(job.mu);
    notes = job.record.notes;
  }
  if (notes.empty()) return Status::Ok();
  ASSIGN_OR_RETURN(auto files, job.store->jobs().Files(job.job_id));
  for (const auto& f : files) {
    if (f.kind == "error" && f.file_no == kNotesFileNo) return Status::Ok();
  }
  store::ExportFileRecord f;
  f.job_id = job.job_id;
  f.kind = "error";
  f.type = "OperationOutcome";
  f.file_no = kNotesFileNo;
  f.task_no = -1;
  f.key = job.key_prefix + "/OperationOutcome/OperationOutcome-" + std::to_string(kNotesFileNo) + ".ndjson";
  ASSIGN_OR_RETURN(auto w, sink_->Create(job.write_ctx, job.output.bucket, f.key));
  for (const std::string& note : notes) {
    std::string line = fhir::OperationOutcome("warning", "not-supported", note);
    RETURN_IF_ERROR(w->Append(line));
    RETURN_IF_ERROR(w->Append("\n"));
    f.count += 1;
    f.bytes += static_cast<int64_t>(line.size() + 1);
  }
  RETURN_IF_ERROR(w->Commit());
  // No task advances (task -1 matches none).
  return job.store->jobs().CommitFiles({f}, job.job_id, -1, 0, true);
}

// Runs on the worker that finished the job's last task. Neither the engine lock nor the job's is held across the
// store writes and sink calls below.
void ExportEngine::Finalize(const std::shared_ptr<ActiveJob>& job) {
  store::ResourceStore* store = job->store;
  std::string failure;
  {
    std::lock_guard<std::mutex> lock(job->mu);
    failure = job->failure;
  }
  if (failure.empty() && !job->cancel_requested && stopping_) {
    // Interrupted by shutdown: the job stays IN_PROGRESS (checkpointed) and resumes at the next start.
    Forget(job->job_id);
    return;
  }
  if (Status fp = failpoint::Hit("export.finalize"); !fp.ok() && failure.empty()) failure = fp.message();
  auto current = store->jobs().GetJob(job->job_id);
  const bool cancelled =
      job->cancel_requested ||
      (current.ok() && (current->status == js::kCancelSubmitted || current->status == js::kCancelInProgress));
  if (cancelled && current.ok()) {
    Status st = CompleteCancel(store, *current);
    if (!st.ok()) FailJob(store, job->job_id, "The export could not be cancelled cleanly: " + st.message());
    Forget(job->job_id);
    return;
  }
  if (!failure.empty()) {
    // The writers aborted their unfinished objects; sweep again before the failure is visible, in case an abort
    // could not reach the object store then, and remove files written but never recorded.
    Status swept = job->record.snapshot ? CleanupOutput(store, job->record) : Status::Ok();
    if (!swept.ok()) spdlog::warn("event=export_cleanup_failed job={} reason=\"{}\"", job->job_id, swept.message());
    FailJob(store, job->job_id, "The export failed: " + failure);
    Forget(job->job_id);
    return;
  }
  if (Status notes = WriteNotesFile(*job); !notes.ok()) {
    FailJob(store, job->job_id, "The export failed: its error file could not be written: " + notes.message());
    Forget(job->job_id);
    return;
  }
  const char* to = job->has_errors ? js::kCompletedWithErrors : js::kCompleted;
  auto done = Transition(store, job->job_id, {js::kInProgress}, to);
  if (done.ok()) {
    DropScratch(store, job->job_id);
  } else if (done.status().code() == StatusCode::kConflict) {
    // Cancelled after its last task finished: the cancel wins, with everything exported counted.
    auto fresh = store->jobs().GetJob(job->job_id);
    if (fresh.ok() && (fresh->status == js::kCancelSubmitted || fresh->status == js::kCancelInProgress)) {
      Status st = CompleteCancel(store, *fresh);
      if (!st.ok()) FailJob(store, job->job_id, "The export could not be cancelled cleanly: " + st.message());
    }
  } else {
    FailJob(store, job->job_id,
            "The export's files are complete, but its final state could not be recorded: " + done.status().message());
    // FailJob keeps the job pending (and journaled) when the store is still unwritable; the scheduler forgets it
    // once the state is durable.
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& p : pending_finals_) {
      if (p.job_id == job->job_id) return;
    }
  }
  Forget(job->job_id);
}

}  // namespace fhirlake::bulk
