// Export engine. A job's life: Submit (SUBMITTED) → scheduler: QUEUED while over quota, then StartJob takes the
// snapshot, materialises the scope (Group / referenced resources), plans tasks and persists IN_PROGRESS →
// workers stream rows into files (commit file, then record it with the task checkpoint) → the last task to
// finish finalises the job (COMPLETED[_WITH_ERRORS], FAILED or CANCEL_COMPLETED).
#include "bulk/export_engine.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "common/ids.h"
#include "fhir/operation_outcome.h"
#include "fhir/r4.h"

namespace fhirlake::bulk {

namespace js = job_status;

struct ExportEngine::ActiveJob {
  store::ResourceStore* store = nullptr;
  std::string job_id;
  S3Location output;
  std::string key_prefix;
  sink::WriteContext write_ctx;
  std::atomic<bool> cancel{false};  // user cancel or failure: stop at the next batch
  std::atomic<int64_t> written_rows{0};
  std::atomic<int64_t> written_bytes{0};
  std::atomic<bool> has_errors{false};  // some error file is recorded
  int64_t planned_rows = 0;

  std::mutex mu;
  store::ExportJobRecord record;            // GUARDED_BY(mu)
  int tasks_remaining = 0;                  // GUARDED_BY(mu)
  std::map<std::string, int> last_file_no;  // GUARDED_BY(mu)
  std::string failure;                      // GUARDED_BY(mu)
};

namespace {

constexpr size_t kMaxErrorLinesPerFile = 10000;

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

Status ExportEngine::SetStatus(store::ResourceStore* store, store::ExportJobRecord* job, const char* status) {
  std::string previous = job->status;
  job->status = status;
  if (IsTerminal(status)) job->end_time = clock_.NowMillis();
  Status st = store->UpdateJob(*job);
  if (!st.ok()) {
    job->status = previous;
    return st;
  }
  spdlog::info("event=export_job_status datastore={} job={} status={}", store->info().id, job->job_id, status);
  return Status::Ok();
}

Status ExportEngine::Start() {
  for (auto* store : catalog_->All()) {
    ASSIGN_OR_RETURN(auto jobs, store->JobsWithStatus({js::kInProgress, js::kCancelSubmitted, js::kCancelInProgress}));
    for (auto& job : jobs) {
      if (job.status == js::kCancelSubmitted && !job.snapshot) continue;  // cancelled while queued: scheduler
      Status st = Resume(store, job);
      if (!st.ok()) {
        job.message = "The server restarted during this export and could not resume it: " + st.message();
        (void)SetStatus(store, &job, job.status == js::kInProgress ? js::kFailed : js::kCancelFailed);
        (void)store->DropJobScratch(job.job_id);
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

// Removes what a crashed process may have left under the job's prefix: unfinished files, and finished files
// that were never recorded (the crash fell between the sink commit and the store commit).
Status ExportEngine::CleanupOutput(store::ResourceStore* store, const store::ExportJobRecord& job) {
  ASSIGN_OR_RETURN(S3Location out, JobOutput(job));
  sink::WriteContext ctx{job.data_access_role_arn, job.kms_key_id};
  std::string prefix = JobKeyPrefix(job, store->info().id);
  RETURN_IF_ERROR(sink_->AbortIncomplete(ctx, out.bucket, prefix));
  ASSIGN_OR_RETURN(auto listed, sink_->List(ctx, out.bucket, prefix));
  ASSIGN_OR_RETURN(auto files, store->Files(job.job_id));
  std::set<std::string> known;
  for (const auto& f : files) known.insert(f.key);
  for (const auto& o : listed) {
    if (!known.count(o.key)) {
      spdlog::info("event=export_orphan_removed job={} key={}", job.job_id, o.key);
      RETURN_IF_ERROR(sink_->Delete(ctx, out.bucket, o.key));
    }
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
  return active;
}

Status ExportEngine::Resume(store::ResourceStore* store, store::ExportJobRecord job) {
  RETURN_IF_ERROR(CleanupOutput(store, job));
  if (job.status != js::kInProgress) {
    if (job.status == js::kCancelSubmitted) RETURN_IF_ERROR(SetStatus(store, &job, js::kCancelInProgress));
    RETURN_IF_ERROR(SetStatus(store, &job, js::kCancelCompleted));
    return store->DropJobScratch(job.job_id);
  }
  ASSIGN_OR_RETURN(auto tasks, store->Tasks(job.job_id));
  ASSIGN_OR_RETURN(auto files, store->Files(job.job_id));
  ASSIGN_OR_RETURN(auto active, MakeActiveJob(store, job));
  for (const auto& f : files) {
    int& n = active->last_file_no[f.type];  // error files share OperationOutcome's numbering
    n = std::max(n, f.file_no);
    if (f.kind != "output") {
      active->has_errors = true;
      continue;
    }
    active->written_rows += f.count;
    active->written_bytes += f.bytes;
  }
  std::vector<store::ExportTaskRecord> pending;
  for (const auto& t : tasks) {
    active->planned_rows += t.planned_rows;
    if (!t.done) pending.push_back(t);
  }
  active->record = job;
  spdlog::info("event=export_job_resumed datastore={} job={} pending_tasks={}", store->info().id, job.job_id,
               pending.size());
  std::lock_guard<std::mutex> lock(mu_);
  Launch(active, pending);
  return Status::Ok();
}

Result<store::ExportJobRecord> ExportEngine::Submit(store::ResourceStore* store, const ExportRequest& request) {
  if (request.level == ExportLevel::kGroup) {
    auto group = store->Read("Group", request.group_id);
    if (!group.ok() || group->deleted) {
      return Status::NotFound("Group '" + request.group_id + "' is not known in datastore " + store->info().id +
                              (group.ok() ? " (it was deleted)" : ""));
    }
  }
  RETURN_IF_ERROR(sink_->CheckWritable({request.data_access_role_arn, request.kms_key_id}, request.output.bucket));
  store::ExportJobRecord job;
  job.job_id = NewHexId();
  job.job_name = request.job_name;
  job.status = js::kSubmitted;
  job.view = "healthlake";
  job.level = std::string(LevelName(request.level));
  job.group_id = request.group_id;
  job.types = request.types;
  job.since = request.since;
  job.output_format = request.output_format;
  job.s3_uri = request.output.Uri();
  job.kms_key_id = request.kms_key_id;
  job.data_access_role_arn = request.data_access_role_arn;
  job.request_url = request.request_url;
  job.submit_time = clock_.NowMillis();
  job.include_referenced = options_.include_referenced;
  RETURN_IF_ERROR(store->InsertJob(&job));
  spdlog::info("event=export_job_submitted datastore={} job={} level={}", store->info().id, job.job_id, job.level);
  {
    std::lock_guard<std::mutex> lock(mu_);
    wake_ = true;
  }
  scheduler_cv_.notify_all();
  return job;
}

Result<JobView> ExportEngine::Describe(store::ResourceStore* store, std::string_view job_id) {
  JobView view;
  ASSIGN_OR_RETURN(view.job, store->GetJob(job_id));
  ASSIGN_OR_RETURN(view.files, store->Files(view.job.job_id));
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
    ASSIGN_OR_RETURN(auto tasks, store->Tasks(view.job.job_id));
    for (const auto& t : tasks) view.planned_rows += t.planned_rows;
    for (const auto& f : view.files) {
      if (f.kind != "output") continue;
      view.written_rows += f.count;
      view.written_bytes += f.bytes;
    }
  }
  return view;
}

Result<store::ExportJobRecord> ExportEngine::Cancel(store::ResourceStore* store, std::string_view job_id) {
  // mu_ serialises this with the scheduler's last step of starting a job (which re-reads the status).
  std::lock_guard<std::mutex> lock(mu_);
  auto it = active_.find(job_id);
  if (it != active_.end()) {
    ActiveJob& job = *it->second;
    std::lock_guard<std::mutex> job_lock(job.mu);
    // A job whose last task has finished is being finalised: too late to cancel.
    if (job.record.status != js::kInProgress || !job.failure.empty() || job.tasks_remaining == 0) {
      return Status::NotSupported("Interaction not supported.");
    }
    RETURN_IF_ERROR(SetStatus(store, &job.record, js::kCancelSubmitted));
    job.cancel = true;
    wake_ = true;
    scheduler_cv_.notify_all();
    return job.record;
  }
  ASSIGN_OR_RETURN(store::ExportJobRecord job, store->GetJob(job_id));
  if (job.status != js::kSubmitted && job.status != js::kQueued)
    return Status::NotSupported("Interaction not supported.");
  RETURN_IF_ERROR(SetStatus(store, &job, js::kCancelSubmitted));
  wake_ = true;
  scheduler_cv_.notify_all();
  return job;
}

void ExportEngine::SchedulerLoop() {
  while (!stopping_) {
    ScheduleOnce();
    std::unique_lock<std::mutex> lock(mu_);
    scheduler_cv_.wait_for(lock, std::chrono::milliseconds(500), [this] { return wake_ || stopping_.load(); });
    wake_ = false;
  }
}

// Runs on the scheduler thread only. The engine lock is held for decisions and status changes, never while a job
// is being planned (snapshot, scope, task ranges can take seconds on a large store), so describe, kick-off and
// cancel stay fast.
void ExportEngine::ScheduleOnce() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [id, job] : active_) {
      std::lock_guard<std::mutex> job_lock(job->mu);
      if (job->record.status == js::kCancelSubmitted) (void)SetStatus(job->store, &job->record, js::kCancelInProgress);
    }
  }
  for (auto* store : catalog_->All()) {
    if (stopping_) return;
    auto jobs = store->JobsWithStatus({js::kSubmitted, js::kQueued, js::kCancelSubmitted});
    if (!jobs.ok()) {
      spdlog::error("event=export_schedule_failed datastore={} reason=\"{}\"", store->info().id,
                    jobs.status().message());
      continue;
    }
    for (auto& job : *jobs) {
      if (stopping_) return;
      int running = 0;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (active_.count(job.job_id)) continue;
        for (const auto& [id, a] : active_) running += a->store == store ? 1 : 0;
        if (job.status == js::kCancelSubmitted) {
          if (SetStatus(store, &job, js::kCancelInProgress).ok()) (void)SetStatus(store, &job, js::kCancelCompleted);
          (void)store->DropJobScratch(job.job_id);
          continue;
        }
        if (running >= options_.jobs_per_datastore) {
          auto fresh = store->GetJob(job.job_id);  // Cancel may have changed it since the list was read
          if (fresh.ok() && fresh->status == js::kSubmitted) (void)SetStatus(store, &*fresh, js::kQueued);
          continue;
        }
      }
      Status st = StartJob(store, job);
      if (st.ok()) continue;
      if (st.code() == StatusCode::kUnavailable) {
        // Busy or briefly unavailable store (e.g. a concurrent `fhirlake load`): try again at the next tick.
        spdlog::warn("event=export_start_deferred job={} reason=\"{}\"", job.job_id, st.message());
        return;
      }
      spdlog::error("event=export_start_failed job={} reason=\"{}\"", job.job_id, st.message());
      std::lock_guard<std::mutex> lock(mu_);
      auto fresh = store->GetJob(job.job_id);
      if (fresh.ok() && (fresh->status == js::kSubmitted || fresh->status == js::kQueued)) {
        fresh->message = "The export could not start: " + st.message();
        (void)SetStatus(store, &*fresh, js::kFailed);
      }
      (void)store->DropJobScratch(job.job_id);
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
  for (const auto& type : types) {
    store::ScanScope scope = store::ScanScope::kAll;
    if (job.level == "patient") {
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
    ASSIGN_OR_RETURN(store::TypeRange range, store->RangeOf(type, scope, job.job_id));
    if (range.rows == 0) continue;
    int64_t pieces = std::max<int64_t>(1, (range.rows + options_.task_rows - 1) / options_.task_rows);
    int64_t span = range.max_rid - range.min_rid + 1;
    int64_t lo = range.min_rid - 1;
    for (int64_t i = 0; i < pieces; ++i) {
      int64_t hi = i + 1 == pieces ? range.max_rid : range.min_rid - 1 + span * (i + 1) / pieces;
      if (hi <= lo) continue;
      store::ExportTaskRecord t;
      t.job_id = job.job_id;
      t.task_no = static_cast<int>(tasks.size());
      t.type = type;
      t.scope = scope;
      t.min_rid = lo;
      t.max_rid = hi;
      t.after_rid = lo;
      t.planned_rows = range.rows / pieces + (i + 1 == pieces ? range.rows % pieces : 0);
      tasks.push_back(std::move(t));
      lo = hi;
    }
  }
  return tasks;
}

// Called without mu_: plans the job, then takes mu_ for the transition to IN_PROGRESS.
Status ExportEngine::StartJob(store::ResourceStore* store, store::ExportJobRecord job) {
  ASSIGN_OR_RETURN(store::Snapshot snap, store->TakeSnapshot());
  job.snapshot = snap;
  job.start_time = clock_.NowMillis();
  if (job.level == "group") {
    auto group = store->Read("Group", job.group_id);
    if (!group.ok() || group->deleted) return Status::NotFound("Group '" + job.group_id + "' no longer exists");
    ASSIGN_OR_RETURN(auto members, GroupMembers(group->json));
    RETURN_IF_ERROR(store->MaterializeGroupScope(job.job_id, job.group_id, members, job.include_referenced, snap));
  } else if (job.level == "patient" && job.include_referenced) {
    RETURN_IF_ERROR(store->MaterializeReferencedScope(job.job_id, snap));
  }
  ASSIGN_OR_RETURN(auto tasks, PlanTasks(store, job));
  RETURN_IF_ERROR(store->ReplaceTasks(job.job_id, tasks));

  std::lock_guard<std::mutex> lock(mu_);
  ASSIGN_OR_RETURN(store::ExportJobRecord fresh, store->GetJob(job.job_id));
  if (fresh.status != js::kSubmitted && fresh.status != js::kQueued) {
    // Cancelled while it was being planned.
    if (fresh.status == js::kCancelSubmitted && SetStatus(store, &fresh, js::kCancelInProgress).ok()) {
      (void)SetStatus(store, &fresh, js::kCancelCompleted);
    }
    return store->DropJobScratch(job.job_id);
  }
  RETURN_IF_ERROR(SetStatus(store, &job, js::kInProgress));
  ASSIGN_OR_RETURN(auto active, MakeActiveJob(store, job));
  for (const auto& t : tasks) active->planned_rows += t.planned_rows;
  active->record = std::move(job);
  Launch(active, tasks);
  return Status::Ok();
}

// Called with mu_ held.
void ExportEngine::Launch(const std::shared_ptr<ActiveJob>& job, const std::vector<store::ExportTaskRecord>& tasks) {
  {
    std::lock_guard<std::mutex> job_lock(job->mu);
    job->tasks_remaining = static_cast<int>(tasks.size());
  }
  active_[job->job_id] = job;
  if (tasks.empty()) {
    // Nothing to scan: finish on a worker so that locks are taken in the usual order.
    job->tasks_remaining = 1;
    store::ExportTaskRecord none;
    none.task_no = -1;
    queue_.push_back(TaskItem{job, none});
  }
  for (const auto& t : tasks) queue_.push_back(TaskItem{job, t});
  worker_cv_.notify_all();
}

void ExportEngine::WorkerLoop() {
  while (true) {
    TaskItem item;
    {
      std::unique_lock<std::mutex> lock(mu_);
      worker_cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping
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
    TaskFinished(item.job, outcome, failure);
  }
}

ExportEngine::TaskOutcome ExportEngine::RunTask(ActiveJob& job, const store::ExportTaskRecord& task,
                                                std::string* failure) {
  const std::string expected_prefix = "{\"resourceType\":\"" + task.type + "\"";
  // The open output file and the errors met since the last commit. Both are committed together with the task
  // checkpoint in one store transaction, so a restart neither loses nor repeats an error.
  std::unique_ptr<sink::ObjectWriter> writer;
  store::ExportFileRecord file;
  std::vector<std::string> errors;
  int64_t after = task.after_rid;

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
    file = new_file("output", task.type);
    ASSIGN_OR_RETURN(writer, sink_->Create(job.write_ctx, job.output.bucket, file.key));
    return Status::Ok();
  };
  // Commits the open file (if any) and the pending errors (if any), then records them with the checkpoint.
  auto commit = [&](bool done) -> Status {
    std::vector<store::ExportFileRecord> records;
    if (!errors.empty()) {
      store::ExportFileRecord ef = new_file("error", "OperationOutcome");
      ASSIGN_OR_RETURN(auto ew, sink_->Create(job.write_ctx, job.output.bucket, ef.key));
      for (const auto& line : errors) {
        RETURN_IF_ERROR(ew->Append(line));
        RETURN_IF_ERROR(ew->Append("\n"));
        ef.count += 1;
        ef.bytes += static_cast<int64_t>(line.size() + 1);
      }
      RETURN_IF_ERROR(ew->Commit());
      records.push_back(std::move(ef));
    }
    if (writer) {
      RETURN_IF_ERROR(writer->Commit());
      writer.reset();
      records.push_back(file);
    }
    RETURN_IF_ERROR(job.store->CommitFiles(records, job.job_id, task.task_no, after, done));
    if (!errors.empty()) job.has_errors = true;
    errors.clear();
    return Status::Ok();
  };

  store::ScanRequest req;
  req.type = task.type;
  req.scope = task.scope;
  req.job_id = job.job_id;
  req.max_rid = task.max_rid;
  req.max_rows = options_.batch_rows;
  req.max_bytes = options_.batch_bytes;
  {
    std::lock_guard<std::mutex> lock(job.mu);
    req.since = job.record.since;
    req.snapshot = *job.record.snapshot;
  }
  while (true) {
    if (job.cancel || stopping_) {
      if (writer) writer->Abort();
      return TaskOutcome::kStopped;
    }
    req.after_rid = after;
    auto progress = job.store->Scan(req, [&](const store::ScanRow& row) -> Status {
      if (!std::string_view(row.json).starts_with(expected_prefix)) {
        errors.push_back(fhir::OperationOutcome(
            "error", "exception",
            task.type + "/" + std::string(row.id) + " could not be exported: its stored bytes are not a " + task.type +
                " resource (the datastore is damaged; restore it, or PUT the resource again)"));
        return Status::Ok();
      }
      if (!writer) RETURN_IF_ERROR(open_file());
      RETURN_IF_ERROR(writer->Append(row.json));
      RETURN_IF_ERROR(writer->Append("\n"));
      file.count += 1;
      file.bytes += static_cast<int64_t>(row.json.size() + 1);
      job.written_rows += 1;
      job.written_bytes += static_cast<int64_t>(row.json.size() + 1);
      return Status::Ok();
    });
    if (!progress.ok()) {
      if (writer) writer->Abort();
      *failure = progress.status().message();
      return TaskOutcome::kFailed;
    }
    after = progress->last_rid;
    if (progress->exhausted) break;
    if ((writer && static_cast<size_t>(file.bytes) >= options_.file_bytes) || errors.size() >= kMaxErrorLinesPerFile) {
      Status st = commit(false);
      if (!st.ok()) {
        if (writer) writer->Abort();
        *failure = st.message();
        return TaskOutcome::kFailed;
      }
    }
    if (options_.batch_delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(options_.batch_delay_ms));
  }
  Status st = commit(true);
  if (!st.ok()) {
    if (writer) writer->Abort();
    *failure = st.message();
    return TaskOutcome::kFailed;
  }
  return TaskOutcome::kDone;
}

void ExportEngine::TaskFinished(const std::shared_ptr<ActiveJob>& job, TaskOutcome outcome,
                                const std::string& failure) {
  {
    std::lock_guard<std::mutex> lock(job->mu);
    if (outcome == TaskOutcome::kFailed && job->failure.empty()) {
      job->failure = failure;
      job->cancel = true;  // stop the job's other tasks at their next batch
      spdlog::error("event=export_task_failed job={} reason=\"{}\"", job->job_id, failure);
    }
    if (--job->tasks_remaining > 0) return;
  }
  Finalize(job);
}

void ExportEngine::Finalize(const std::shared_ptr<ActiveJob>& job) {
  store::ResourceStore* store = job->store;
  bool keep_running = false;
  bool ends_without_output;
  {
    std::lock_guard<std::mutex> lock(job->mu);
    ends_without_output = !job->failure.empty() || job->record.status == js::kCancelSubmitted ||
                          job->record.status == js::kCancelInProgress;
  }
  if (ends_without_output) {
    // The writers aborted their unfinished objects; sweep again, before the final status is visible, in case an
    // abort could not reach the object store then (e.g. S3 multipart uploads while the endpoint was down).
    // Not under job->mu: the S3 sink retries for a while and Cancel/Describe must not wait for it.
    Status swept = sink_->AbortIncomplete(job->write_ctx, job->output.bucket, job->key_prefix);
    if (!swept.ok()) spdlog::warn("event=export_cleanup_failed job={} reason=\"{}\"", job->job_id, swept.message());
  }
  {
    std::lock_guard<std::mutex> lock(job->mu);
    auto& rec = job->record;
    if (!job->failure.empty()) {
      rec.message = "The export failed: " + job->failure;
      (void)SetStatus(store, &rec, rec.status == js::kInProgress ? js::kFailed : js::kCancelFailed);
    } else if (rec.status == js::kCancelSubmitted || rec.status == js::kCancelInProgress) {
      if (rec.status == js::kCancelSubmitted) (void)SetStatus(store, &rec, js::kCancelInProgress);
      (void)SetStatus(store, &rec, js::kCancelCompleted);
    } else if (stopping_) {
      keep_running = true;  // resumed by the next Start()
    } else {
      (void)SetStatus(store, &rec, job->has_errors ? js::kCompletedWithErrors : js::kCompleted);
    }
  }
  if (!keep_running) (void)store->DropJobScratch(job->job_id);
  {
    std::lock_guard<std::mutex> lock(mu_);
    active_.erase(job->job_id);
    wake_ = true;
  }
  scheduler_cv_.notify_all();
}

}  // namespace fhirlake::bulk
