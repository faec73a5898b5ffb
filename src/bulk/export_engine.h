// The export job engine: one persisted FIFO queue per datastore with a quota of running jobs, a planner that
// splits a job into tasks (per type, large types by rid range), a worker pool that streams stored bytes into
// ndjson files through an ObjectSink, per-task checkpoints, cancellation, and recovery after a crash.
//
// Threading: Submit/Describe/Cancel may be called from any thread (HTTP handlers). One scheduler thread
// starts queued jobs; `workers` threads run tasks. Every status transition is a compare-and-set in the store
// (JobStore::TransitionJob), persisted before it is visible; the engine's mutex guards only its in-memory lists and
// is never held across a store write or a sink call. A state write that fails is retried, and a final state that
// still cannot be written goes to the FinalStateJournal, so the job is reported FAILED (never IN_PROGRESS forever).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "bulk/export_request.h"
#include "bulk/final_state_journal.h"
#include "common/status.h"
#include "common/time.h"
#include "sink/object_sink.h"
#include "store/resource_store.h"

namespace fhirlake::bulk {

struct EngineOptions {
  int workers = 2;                 // tasks running at once, across all jobs
  int jobs_per_datastore = 1;      // running jobs per datastore (HealthLake: 1); the rest wait QUEUED
  size_t file_bytes = 256 << 20;   // a file is closed at the first batch boundary past this size
  size_t batch_rows = 2000;        // rows per read transaction
  size_t batch_bytes = 8 << 20;    // bytes per read transaction
  int batch_delay_ms = 0;          // test-only: sleep after every batch (makes jobs observably IN_PROGRESS)
  bool include_referenced = true;  // Patient/Group: add the non-compartment resources they reference
  int64_t task_rows = 200000;      // split a type into rid ranges of about this many rows
  int queue_limit = 25;            // per datastore, SUBMITTED + QUEUED; beyond it Submit is kTooManyRequests
  // Disk admission: with local output, a kick-off is refused (kInsufficientStorage) when the file system holding
  // `local_output_dir` has less than `min_free_bytes` available. Empty dir: not checked (S3 output).
  std::string local_output_dir;
  int64_t min_free_bytes = int64_t{1} << 30;
  std::string journal_dir;           // where the FinalStateJournal lives (empty: no journal, tests only)
  int state_write_attempts = 5;      // a job state write that fails (not a conflict) is tried this many times
  int state_retry_initial_ms = 100;  // backoff before the second attempt; doubles each time
  // Server paths that must never appear in a client-visible job message (the data directory).
  std::vector<std::string> redact_paths;
  // Jobs of `server_files_view` (the Bulk Data IG's) keep their files in the server's own bucket for this long
  // after they end; the scheduler then deletes them (every `sweep_interval_ms`). 0: never.
  std::string server_files_view = "ig";
  int64_t server_file_lifetime_ms = int64_t{48} * 3600 * 1000;
  int64_t sweep_interval_ms = 60000;
};

// Job statuses (HealthLake's names).
namespace job_status {
inline constexpr const char* kSubmitted = "SUBMITTED";
inline constexpr const char* kQueued = "QUEUED";
inline constexpr const char* kInProgress = "IN_PROGRESS";
inline constexpr const char* kCompleted = "COMPLETED";
inline constexpr const char* kCompletedWithErrors = "COMPLETED_WITH_ERRORS";
inline constexpr const char* kFailed = "FAILED";
inline constexpr const char* kCancelSubmitted = "CANCEL_SUBMITTED";
inline constexpr const char* kCancelInProgress = "CANCEL_IN_PROGRESS";
inline constexpr const char* kCancelCompleted = "CANCEL_COMPLETED";
inline constexpr const char* kCancelFailed = "CANCEL_FAILED";
}  // namespace job_status

// What a describe shows: the persisted job and files, plus the live counters of a running job.
struct JobView {
  store::ExportJobRecord job;
  std::vector<store::ExportFileRecord> files;  // committed files only
  int64_t planned_rows = 0;
  int64_t written_rows = 0;  // including rows in files not yet committed
  int64_t written_bytes = 0;
};

class ExportEngine {
 public:
  ExportEngine(store::DatastoreCatalog* catalog, sink::ObjectSink* sink, EngineOptions options, const Clock& clock);
  ~ExportEngine();
  ExportEngine(const ExportEngine&) = delete;
  ExportEngine& operator=(const ExportEngine&) = delete;

  // Recovers the jobs a previous process left running or cancelling, then starts the threads.
  Status Start();
  // Stops the workers at the next batch boundary. Running jobs stay IN_PROGRESS (checkpointed) and resume
  // at the next Start().
  void Stop();

  // Checks what needs the store and the sink (the Group exists, the bucket is writable, there is disk space, the
  // queue has room) and persists the job as SUBMITTED, owned by `request.owner`.
  Result<store::ExportJobRecord> Submit(store::ResourceStore* store, const ExportRequest& request);
  Result<JobView> Describe(store::ResourceStore* store, std::string_view job_id);
  // kNotFound for an unknown job; kNotSupported when the job can no longer be cancelled.
  Result<store::ExportJobRecord> Cancel(store::ResourceStore* store, std::string_view job_id);

  // Deletes the server-held files of an ended job (the IG's DELETE on its status URL, or expiry): records it first
  // (files_deleted_at, and `why` appended to the message HealthLake's describe shows), then removes the objects
  // and forgets the file records. While a download of one of them holds a lease (JobStore::BeginDownload), the objects
  // stay: the next sweep after the last lease ends removes them, as it finishes a deletion that stopped half-way.
  // kConflict when the job has not ended.
  Result<store::ExportJobRecord> DeleteServerFiles(store::ResourceStore* store, std::string_view job_id,
                                                   const std::string& why);
  // One sweep over every datastore: expired server-held files, and deletions that stopped half-way or were deferred.
  void SweepServerFiles();
  // Asks the scheduler to sweep at its next tick (a download whose lease deferred a deletion has ended).
  void RequestSweep();

  // "{prefix/}{datastoreId}-FHIR_EXPORT-{jobId}": the key prefix of a job's files in its bucket.
  static std::string JobKeyPrefix(const store::ExportJobRecord& job, std::string_view datastore_id);
  static Result<S3Location> JobOutput(const store::ExportJobRecord& job);

 private:
  struct ActiveJob;
  struct TaskItem {
    std::shared_ptr<ActiveJob> job;
    store::ExportTaskRecord task;
  };
  enum class TaskOutcome { kDone, kStopped, kFailed };
  // A final state that could not be written yet (retried by the scheduler; also in the journal).
  struct PendingFinal {
    store::ResourceStore* store;
    std::string job_id;
    std::string status;
    std::string message;
  };

  void SchedulerLoop();
  void WorkerLoop();
  void ScheduleOnce();
  Status ApplyJournal();
  Status StartJob(store::ResourceStore* store, const store::ExportJobRecord& job);
  Result<std::vector<store::ExportTaskRecord>> PlanTasks(store::ResourceStore* store,
                                                         const store::ExportJobRecord& job);
  Result<std::shared_ptr<ActiveJob>> MakeActiveJob(store::ResourceStore* store, const store::ExportJobRecord& job);
  Status Resume(store::ResourceStore* store, const store::ExportJobRecord& job);
  Status CleanupOutput(store::ResourceStore* store, const store::ExportJobRecord& job);
  TaskOutcome RunTask(ActiveJob& job, const store::ExportTaskRecord& task, std::string* failure);
  TaskOutcome RunOrganizedTask(ActiveJob& job, const store::ExportTaskRecord& task, std::string* failure);
  void TaskFinished(const std::shared_ptr<ActiveJob>& job, TaskOutcome outcome, const std::string& failure);
  void Finalize(const std::shared_ptr<ActiveJob>& job);
  Status WriteNotesFile(ActiveJob& job);
  Status RecordFiles(ActiveJob& job, int task_no, const std::vector<store::ExportFileRecord>& records, int64_t after,
                     bool done, bool with_errors);
  Result<store::ExportFileRecord> WriteErrorFile(ActiveJob& job, int task_no, const std::vector<std::string>& lines);
  // Ends a job that is CANCEL_SUBMITTED or CANCEL_IN_PROGRESS: removes its unlisted output, then CANCEL_COMPLETED.
  Status CompleteCancel(store::ResourceStore* store, const store::ExportJobRecord& job);
  // A compare-and-set transition, retried (with backoff) on errors other than a conflict.
  Result<store::ExportJobRecord> Transition(store::ResourceStore* store, std::string_view job_id,
                                            std::initializer_list<std::string_view> from, std::string_view to,
                                            store::JobUpdate update = {});
  // Makes a job FAILED (or CANCEL_FAILED when it was cancelling) with `message`, whatever state it is in; when the
  // store cannot record it, the outcome goes to the journal and the scheduler keeps retrying.
  void FailJob(store::ResourceStore* store, const std::string& job_id, const std::string& message);
  // Drops the job's scratch rows (its final state is durable); a failure is logged and swept at the next start.
  void DropScratch(store::ResourceStore* store, const std::string& job_id);
  std::string Redact(std::string message) const;
  void Launch(const std::shared_ptr<ActiveJob>& job, const std::vector<store::ExportTaskRecord>& tasks);
  void Forget(const std::string& job_id);

  store::DatastoreCatalog* catalog_;
  sink::ObjectSink* sink_;
  EngineOptions options_;
  const Clock& clock_;

  std::mutex mu_;  // guards active_, queue_, and serialises scheduling decisions with Cancel
  std::condition_variable scheduler_cv_;
  std::condition_variable worker_cv_;
  std::map<std::string, std::shared_ptr<ActiveJob>, std::less<>> active_;  // GUARDED_BY(mu_), by job id
  std::deque<TaskItem> queue_;                                             // GUARDED_BY(mu_)
  std::vector<PendingFinal> pending_finals_;                               // GUARDED_BY(mu_)
  bool wake_ = false;                                                      // GUARDED_BY(mu_)
  FinalStateJournal journal_;
  bool has_journal_ = false;
  std::atomic<bool> stopping_{false};
  std::thread scheduler_;
  std::vector<std::thread> workers_;
  bool started_ = false;
  int64_t last_sweep_ms_ = 0;  // scheduler thread only
  std::atomic<bool> sweep_requested_{false};
};

}  // namespace fhirlake::bulk
