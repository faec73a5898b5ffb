// The persisted state of export jobs: jobs, their tasks (with checkpoints) and their committed files. Every job
// status change is a compare-and-set transition (the database decides; a stale copy can never be written back),
// and every write either succeeds durably or returns an error that the engine must act on.
//
// Threading: every method may be called from any thread; writes are serialised by the store.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "common/time.h"

namespace fhirlake::store {

// A consistent point for an export: every commit with seq <= `seq` and nothing after. Writes after it
// get lastUpdated >= `time`, so a later `_since=time` export never misses them.
struct Snapshot {
  int64_t seq = 0;
  EpochMillis time = 0;
};

// The export_scope key under which a job's _typeFilter matches are listed (ScanRequest::filter_key).
inline std::string FilterScopeKey(const std::string& job_id) { return job_id + ".filter"; }
// includeAssociatedData: the resources a job exported (the targets its Provenance are matched against), and the
// Provenance chosen for it.
inline std::string ExportedScopeKey(const std::string& job_id) { return job_id + ".exported"; }
inline std::string AssociatedScopeKey(const std::string& job_id) { return job_id + ".associated"; }

// Which rows an export task scans.
enum class ScanScope {
  kAll,             // every resource of the type
  kAnyCompartment,  // resources of the type that are in at least one Patient compartment
  kJobScope,        // resources listed for the job in the scope table (Group exports, referenced resources)
};

struct ExportJobRecord {
  std::string job_id;
  std::string job_name;
  std::string status;  // SUBMITTED, QUEUED, IN_PROGRESS, COMPLETED, COMPLETED_WITH_ERRORS, FAILED, CANCEL_*
  std::string view;    // the door the job came in by: "healthlake" (later also the Bulk Data IG's)
  std::string owner = "anonymous";  // the principal that started it (RequestContext::principal.id)
  std::string level;                // "system", "patient", "group"
  std::string group_id;
  std::vector<std::string> types;  // empty: all
  std::optional<EpochMillis> since;
  std::optional<EpochMillis> until;         // _until: only resources last updated at or before it
  std::vector<std::string> tags, security;  // _tag / _security items (bulk::MatchesMetaFilters)
  std::vector<std::string> patients;        // the IG's `patient`: only these patients (sorted ids)
  // _typeFilter: "Type?search-query" each, as received (several for one type are OR-ed; a type with none is not
  // filtered); re-parsed by the engine when the job starts.
  std::vector<std::string> type_filters;
  std::vector<std::string> elements;  // _elements: top-level element names (empty: whole resources)
  // Parameters ignored under `Prefer: handling=lenient`, one diagnostics line each: written as OperationOutcomes
  // into the job's error file, so the manifest's `error` reports them.
  std::vector<std::string> notes;
  std::string output_format;
  std::string s3_uri;  // normalised, without trailing slash
  std::string kms_key_id;
  std::string data_access_role_arn;
  std::string request_url;  // the kick-off URL as received (absolute)
  EpochMillis submit_time = 0;
  std::optional<EpochMillis> start_time;
  std::optional<EpochMillis> end_time;
  std::optional<Snapshot> snapshot;  // fixed when the job starts running
  std::string message;
  bool include_referenced = true;
  int64_t queue_order = 0;  // assigned by the store at insert
  // Bulk Data IG jobs: when their server-held files were deleted (DELETE on the status URL, or expiry); from then
  // on the status URL and the files answer 404.
  std::optional<EpochMillis> files_deleted_at;
  // The control plane's ClientToken (StartFHIRExportJob is idempotent by it) and the request it came with, in a
  // canonical form: the same token with the same request is the same job; with another request, an error.
  std::string client_token;
  std::string client_request;
  // The Bulk Data IG's STU3 kick-off options: allowPartialManifests (manifest pages, partial manifests while it
  // runs), organizeOutputBy ("Patient": files of per-patient blocks) and includeAssociatedData
  // ("LatestProvenanceResources" or "RelevantProvenanceResources": the Provenance of what was exported).
  bool partial_manifests = false;
  std::string organize_by;
  std::string associated;
};

// What a transition writes besides the status (unset members keep their value).
struct JobUpdate {
  std::optional<EpochMillis> start_time;
  std::optional<EpochMillis> end_time;
  std::optional<Snapshot> snapshot;
  std::optional<std::string> message;
  std::optional<EpochMillis> files_deleted_at;
};

struct ExportTaskRecord {
  std::string job_id;
  int task_no = 0;
  std::string type;
  ScanScope scope = ScanScope::kAll;
  int64_t min_rid = 0;    // exclusive
  int64_t max_rid = 0;    // inclusive
  int64_t after_rid = 0;  // checkpoint: everything up to here is in committed files
  int64_t planned_rows = 0;
  bool done = false;
  bool deleted = false;  // lists the type's deletions since the job's _since (tombstones), not its resources
  // "" (the type's resources), "organized" (organizeOutputBy=Patient: the blocks of the Patients in (min_rid,
  // max_rid]) or "associated" (includeAssociatedData: the Provenance of what the job exported; runs after every other
  // task of the job).
  std::string mode;
};

struct ExportFileRecord {
  std::string job_id;
  std::string kind;  // "output", "error" or "deleted" (the IG's deleted files: Bundles of DELETE entries)
  std::string type;
  int file_no = 0;
  std::string key;  // object key within the bucket
  int64_t count = 0;
  int64_t bytes = 0;
  int task_no = 0;
  int64_t seq = 0;           // commit order within the job (set by the store when read back)
  std::string continues_in;  // organizeOutputBy: the key of the file where this file's last block continues
};

// An import job (the control plane's StartFHIRImportJob): ndjson objects under an S3 prefix loaded into the datastore.
struct ImportJobRecord {
  std::string job_id;
  std::string job_name;
  std::string status;  // SUBMITTED, QUEUED, IN_PROGRESS, COMPLETED, COMPLETED_WITH_ERRORS, FAILED
  std::string input_s3_uri;
  std::string output_s3_uri;  // JobOutputDataConfig.S3Configuration.S3Uri
  std::string kms_key_id;
  std::string data_access_role_arn;
  std::string owner = "anonymous";
  EpochMillis submit_time = 0;
  std::optional<EpochMillis> end_time;
  // The commit sequence when the job first started: a resumed run leaves alone what was written after it.
  std::optional<int64_t> base_seq;
  std::string message;
  std::string client_token;
  std::string client_request;
  int64_t queue_order = 0;  // assigned by the store at insert
};

class JobStore {
 public:
  virtual ~JobStore() = default;

  // Inserts the job (status as given, normally SUBMITTED) and sets its queue_order, unless `queue_limit` (> 0)
  // jobs are already SUBMITTED or QUEUED: then kTooManyRequests and nothing is written. One transaction decides,
  // so the quota holds for concurrent kick-offs (and, on a shared database, across nodes).
  virtual Status InsertJob(ExportJobRecord* job, int queue_limit = 0) = 0;
  // Compare-and-set: moves the job from one of `from` to `to` and applies `update`, in one statement
  // (`UPDATE ... WHERE job_id = ? AND status IN (from)`). kConflict when the job is in none of `from` (the message
  // names its current status), kNotFound for an unknown job. Returns the row as written.
  virtual Result<ExportJobRecord> TransitionJob(std::string_view job_id, std::initializer_list<std::string_view> from,
                                                std::string_view to, const JobUpdate& update) = 0;
  virtual Result<ExportJobRecord> GetJob(std::string_view job_id) = 0;
  // The job started with this ClientToken, if any.
  virtual Result<std::optional<ExportJobRecord>> JobByClientToken(const std::string& token) = 0;
  // Jobs in any of `statuses`, in queue order.
  virtual Result<std::vector<ExportJobRecord>> JobsWithStatus(const std::vector<std::string>& statuses) = 0;
  // SUBMITTED + QUEUED jobs (what the queue quota counts).
  virtual Result<int64_t> CountWaitingJobs() = 0;
  // Atomically replaces the job's tasks (planning).
  virtual Status ReplaceTasks(const std::string& job_id, const std::vector<ExportTaskRecord>& tasks) = 0;
  virtual Result<std::vector<ExportTaskRecord>> Tasks(const std::string& job_id) = 0;
  // Records completed files (any number, also none) and advances the task's checkpoint, in one transaction.
  virtual Status CommitFiles(const std::vector<ExportFileRecord>& files, const std::string& job_id, int task_no,
                             int64_t task_after_rid, bool task_done) = 0;
  Status CommitFile(const ExportFileRecord& file, int64_t task_after_rid, bool task_done) {
    return CommitFiles({file}, file.job_id, file.task_no, task_after_rid, task_done);
  }
  virtual Result<std::vector<ExportFileRecord>> Files(const std::string& job_id) = 0;
  // The Bulk Data IG's poll rate limit: when `client` got an answer about `job_id` less than `min_interval_ms` before
  // `now`, returns that earlier time (the caller answers 429) and records nothing; otherwise records `now` as its
  // latest answer and returns nullopt. One write transaction, so concurrent polls (on any node) are counted once.
  virtual Result<std::optional<EpochMillis>> RecordPoll(const std::string& job_id, const std::string& client,
                                                        EpochMillis now, int64_t min_interval_ms) = 0;
  // Downloads of a job's server-held files: a running download holds a lease (`token`, until `expires`, renewed while
  // it runs), and the files' objects are not deleted while a lease is live. In the store, so that a deletion on any
  // node waits for a download on any other. BeginDownload inserts or renews; EndDownload is idempotent.
  virtual Status BeginDownload(const std::string& job_id, const std::string& token, EpochMillis expires) = 0;
  virtual Status EndDownload(const std::string& job_id, const std::string& token) = 0;
  // Leases of `job_id` that have not expired at `now`.
  virtual Result<int64_t> LiveDownloads(const std::string& job_id, EpochMillis now) = 0;
  // Forgets the job's committed files (after their objects were deleted: files_deleted_at is set).
  virtual Status DropFileRecords(const std::string& job_id) = 0;
  // Ended jobs of `view` whose server-held files must go: ended at or before `ended_before` and not deleted yet,
  // or deleted (files_deleted_at set) with file records left (a deletion that stopped half-way).
  virtual Result<std::vector<ExportJobRecord>> JobsWithFilesToRemove(std::string_view view,
                                                                     EpochMillis ended_before) = 0;
  // Removes the per-job scope rows. Call only once the job's final state is durable.
  virtual Status DropJobScratch(const std::string& job_id) = 0;
  // Ids of jobs in a final state that still have scope rows (a drop that failed; swept at start-up).
  virtual Result<std::vector<std::string>> JobsWithScratch() = 0;

  // --- import jobs ---
  // Inserts the job and sets its queue_order.
  virtual Status InsertImportJob(ImportJobRecord* job) = 0;
  virtual Result<ImportJobRecord> GetImportJob(std::string_view job_id) = 0;
  // Every import job, in queue order.
  virtual Result<std::vector<ImportJobRecord>> ImportJobs() = 0;
  virtual Result<std::optional<ImportJobRecord>> ImportJobByClientToken(const std::string& token) = 0;
  // Compare-and-set as TransitionJob: to `to` from one of `from`, with the message, end time and base_seq given (unset:
  // kept). kConflict when the job is in none of `from`.
  virtual Result<ImportJobRecord> TransitionImportJob(std::string_view job_id,
                                                      std::initializer_list<std::string_view> from, std::string_view to,
                                                      std::optional<std::string> message,
                                                      std::optional<EpochMillis> end_time,
                                                      std::optional<int64_t> base_seq) = 0;
};

}  // namespace fhirlake::store
