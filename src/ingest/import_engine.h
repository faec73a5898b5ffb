// Import jobs (the control plane's StartFHIRImportJob): the ndjson objects (optionally gzipped) under an S3 prefix of
// the server's object store (the S3 endpoint, or the local bucket mapping) are loaded into a datastore through the
// loader `fhirlake load` uses, and a report is written under the job's output location:
// {S3Uri}/{datastoreId}-FHIR_IMPORT-{jobId}/SUCCESS/{object}.ndjson (a line per resource imported),
// FAILURE/{object}.ndjson (a line per input line rejected, and why) and manifest.json.
//
// One import runs at a time (per server, so also per datastore, as HealthLake's quota); the others wait QUEUED. Every
// status change is a compare-and-set in the datastore's store. A server stopped or killed during an import resumes
// it at its next start: the load runs again and leaves alone what the first run wrote (nothing twice, no extra
// version; see LoadSettings::skip_written_after_seq), and the report is written again whole.
#pragma once

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/status.h"
#include "sink/object_sink.h"
#include "store/resource_store.h"

namespace fhirlake::ingest {

struct ImportOptions {
  std::string work_dir;                   // where input objects are staged while they load (one folder per job)
  std::vector<std::string> redact_paths;  // server paths never shown in a job's message
  int poll_ms = 500;                      // how often the scheduler looks for waiting jobs
};

class ImportEngine {
 public:
  ImportEngine(store::DatastoreCatalog* catalog, sink::ObjectSink* sink, ImportOptions options);
  ~ImportEngine();
  ImportEngine(const ImportEngine&) = delete;
  ImportEngine& operator=(const ImportEngine&) = delete;

  void Start();
  // Stops at the next resource; a running import stays IN_PROGRESS and resumes at the next Start().
  void Stop();

  // Checks that the report can be written (the output bucket) and records the job SUBMITTED (or, with a ClientToken
  // already used for the same request, answers that job; with another request, kInvalid).
  Result<store::ImportJobRecord> Submit(store::ResourceStore* store, store::ImportJobRecord job);

  // "{prefix/}{datastoreId}-FHIR_IMPORT-{jobId}": where a job's report goes within its output bucket.
  static std::string ReportPrefix(const store::ImportJobRecord& job, std::string_view datastore_id);

 private:
  void Loop();
  void ScheduleOnce();
  Status Run(store::ResourceStore* store, const store::ImportJobRecord& job, bool resumed);
  std::string Redact(std::string message) const;

  store::DatastoreCatalog* catalog_;
  sink::ObjectSink* sink_;
  ImportOptions options_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool wake_ = false;  // GUARDED_BY(mu_)
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace fhirlake::ingest
