// Import jobs (ingest/import_engine.h): one scheduler thread picks a waiting job, stages its input objects under the
// work directory (gunzipping .gz ones as they stream), loads them in one load (urn:uuid references resolve across
// them), writes the report, and records the final state.
#include "ingest/import_engine.h"

#include <spdlog/spdlog.h>
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>

#include "common/ids.h"
#include "common/json_escape.h"
#include "common/time.h"
#include "ingest/loader.h"

namespace fhirlake::ingest {
namespace {

namespace fs = std::filesystem;

constexpr const char* kSubmitted = "SUBMITTED";
constexpr const char* kQueued = "QUEUED";
constexpr const char* kInProgress = "IN_PROGRESS";
constexpr const char* kCompleted = "COMPLETED";
constexpr const char* kCompletedWithErrors = "COMPLETED_WITH_ERRORS";
constexpr const char* kFailed = "FAILED";

struct BucketPrefix {
  std::string bucket;
  std::string prefix;  // without a trailing '/'
};

// "s3://bucket[/prefix]" (validated by the control plane before a job exists).
BucketPrefix SplitS3Uri(std::string_view uri) {
  if (uri.starts_with("s3://")) uri.remove_prefix(5);
  BucketPrefix out;
  const size_t slash = uri.find('/');
  out.bucket = std::string(uri.substr(0, slash));
  if (slash != std::string_view::npos) out.prefix = std::string(uri.substr(slash + 1));
  while (!out.prefix.empty() && out.prefix.back() == '/') out.prefix.pop_back();
  return out;
}

bool IsInputObject(std::string_view key) {
  for (std::string_view ext : {".ndjson", ".ndjson.gz", ".jsonl", ".jsonl.gz", ".json", ".json.gz"}) {
    if (key.ends_with(ext)) return true;
  }
  return false;
}

// Copies an object to `path` (inflating it when it is gzip), in bounded chunks.
Status Stage(sink::ObjectSink* sink, const sink::WriteContext& ctx, const std::string& bucket, const std::string& key,
             const fs::path& path) {
  ASSIGN_OR_RETURN(auto reader, sink->Open(ctx, bucket, key));
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> out(std::fopen(path.c_str(), "wb"), &std::fclose);
  if (!out) return Status::Unavailable("cannot stage input object " + key);
  const bool gz = key.ends_with(".gz");
  z_stream zs{};
  if (gz && inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK) return Status::Internal("zlib inflateInit2 failed");
  std::unique_ptr<z_stream, int (*)(z_stream*)> guard(gz ? &zs : nullptr, &inflateEnd);
  std::vector<char> in(1 << 20), inflated(4 << 20);
  int64_t offset = 0;
  bool stream_end = false;
  while (true) {
    ASSIGN_OR_RETURN(size_t n, reader->ReadAt(offset, in.data(), in.size()));
    if (n == 0) break;
    offset += static_cast<int64_t>(n);
    if (!gz) {
      if (std::fwrite(in.data(), 1, n, out.get()) != n) return Status::Unavailable("cannot stage input object " + key);
      continue;
    }
    zs.next_in = reinterpret_cast<Bytef*>(in.data());
    zs.avail_in = static_cast<uInt>(n);
    while (zs.avail_in > 0 && !stream_end) {
      zs.next_out = reinterpret_cast<Bytef*>(inflated.data());
      zs.avail_out = static_cast<uInt>(inflated.size());
      const int rc = inflate(&zs, Z_NO_FLUSH);
      if (rc != Z_OK && rc != Z_STREAM_END) {
        return Status::Invalid("input object " + key + " ends in .gz but is not valid gzip data");
      }
      const size_t produced = inflated.size() - zs.avail_out;
      if (std::fwrite(inflated.data(), 1, produced, out.get()) != produced) {
        return Status::Unavailable("cannot stage input object " + key);
      }
      stream_end = rc == Z_STREAM_END;
    }
  }
  if (gz && !stream_end) return Status::Invalid("input object " + key + " is a truncated gzip stream");
  if (std::fflush(out.get()) != 0) return Status::Unavailable("cannot stage input object " + key);
  return Status::Ok();
}

// The report lines of one input object, written as the load reaches them.
struct ObjectReport {
  std::unique_ptr<sink::ObjectWriter> success, failure;
  int64_t imported = 0, failed = 0;
};

}  // namespace

ImportEngine::ImportEngine(store::DatastoreCatalog* catalog, sink::ObjectSink* sink, ImportOptions options)
    : catalog_(catalog), sink_(sink), options_(std::move(options)) {}

ImportEngine::~ImportEngine() { Stop(); }

void ImportEngine::Start() {
  if (thread_.joinable()) return;
  stopping_ = false;
  thread_ = std::thread([this] { Loop(); });
}

void ImportEngine::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    wake_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::string ImportEngine::ReportPrefix(const store::ImportJobRecord& job, std::string_view datastore_id) {
  const BucketPrefix out = SplitS3Uri(job.output_s3_uri);
  return (out.prefix.empty() ? "" : out.prefix + "/") + std::string(datastore_id) + "-FHIR_IMPORT-" + job.job_id;
}

std::string ImportEngine::Redact(std::string message) const {
  for (const auto& path : options_.redact_paths) {
    if (path.size() < 2) continue;
    for (size_t at = message.find(path); at != std::string::npos; at = message.find(path, at)) {
      message.replace(at, path.size(), "<data-dir>");
    }
  }
  return message;
}

Result<store::ImportJobRecord> ImportEngine::Submit(store::ResourceStore* store, store::ImportJobRecord job) {
  if (!job.client_token.empty()) {
    ASSIGN_OR_RETURN(auto earlier, store->jobs().ImportJobByClientToken(job.client_token));
    if (earlier) {
      if (earlier->client_request != job.client_request) {
        return Status::Invalid("ClientToken " + job.client_token.substr(job.client_token.rfind('|') + 1) +
                               " was already used to start import job " + earlier->job_id +
                               " with other parameters; use a new ClientToken for a new job");
      }
      return *earlier;
    }
  }
  const BucketPrefix out = SplitS3Uri(job.output_s3_uri);
  RETURN_IF_ERROR(sink_->CheckWritable({job.data_access_role_arn, job.kms_key_id}, out.bucket));
  job.job_id = NewHexId();
  job.status = kSubmitted;
  job.submit_time = Clock::System().NowMillis();
  if (Status st = store->jobs().InsertImportJob(&job); !st.ok()) {
    if (!job.client_token.empty()) {  // two retries with one token at once: answer with the one that got in
      ASSIGN_OR_RETURN(auto earlier, store->jobs().ImportJobByClientToken(job.client_token));
      if (earlier && earlier->client_request == job.client_request) return *earlier;
    }
    return st;
  }
  spdlog::info("event=import_job_submitted datastore={} job={} input={}", store->info().id, job.job_id,
               job.input_s3_uri);
  {
    std::lock_guard<std::mutex> lock(mu_);
    wake_ = true;
  }
  cv_.notify_all();
  return job;
}

void ImportEngine::Loop() {
  while (!stopping_) {
    try {
      ScheduleOnce();
    } catch (const std::exception& e) {
      spdlog::error("event=import_scheduler_error reason=\"{}\"", e.what());
    }
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, std::chrono::milliseconds(options_.poll_ms), [this] { return wake_ || stopping_.load(); });
    wake_ = false;
  }
}

void ImportEngine::ScheduleOnce() {
  for (store::ResourceStore* store : catalog_->All()) {
    if (stopping_) return;
    if (store->status() != store::datastore_status::kActive) continue;
    auto jobs = store->jobs().ImportJobs();
    if (!jobs.ok()) {
      spdlog::warn("event=import_schedule_failed datastore={} reason=\"{}\"", store->info().id,
                   jobs.status().message());
      continue;
    }
    const store::ImportJobRecord* next = nullptr;
    bool resumed = false;
    for (const auto& j : *jobs) {
      if (j.status == kInProgress) {  // left running by a server that stopped: it goes first
        next = &j;
        resumed = true;
        break;
      }
      if ((j.status == kSubmitted || j.status == kQueued) && next == nullptr) next = &j;
    }
    if (next == nullptr) continue;
    for (const auto& j : *jobs) {  // the others wait their turn
      if (&j == next || j.status != kSubmitted) continue;
      auto q =
          store->jobs().TransitionImportJob(j.job_id, {kSubmitted}, kQueued, std::nullopt, std::nullopt, std::nullopt);
      if (!q.ok()) spdlog::warn("event=import_queue_failed job={} reason=\"{}\"", j.job_id, q.status().message());
    }
    store::ImportJobRecord job = *next;
    if (!resumed) {
      auto snap = store->TakeSnapshot();
      if (!snap.ok()) {
        spdlog::warn("event=import_start_deferred job={} reason=\"{}\"", job.job_id, snap.status().message());
        continue;
      }
      auto started = store->jobs().TransitionImportJob(job.job_id, {kSubmitted, kQueued}, kInProgress, std::nullopt,
                                                       std::nullopt, snap->seq);
      if (!started.ok()) continue;
      job = *started;
    }
    spdlog::info("event=import_job_started datastore={} job={} resumed={}", store->info().id, job.job_id, resumed);
    Status st = Run(store, job, resumed);
    if (stopping_) return;  // stays IN_PROGRESS: resumed at the next start
    if (!st.ok()) {
      auto failed = store->jobs().TransitionImportJob(job.job_id, {kInProgress}, kFailed,
                                                      Redact("The import failed: " + st.message()),
                                                      Clock::System().NowMillis(), std::nullopt);
      if (!failed.ok()) {
        spdlog::error("event=import_state_write_failed job={} reason=\"{}\"", job.job_id, failed.status().message());
      }
      spdlog::error("event=import_job_failed datastore={} job={} reason=\"{}\"", store->info().id, job.job_id,
                    st.message());
    }
  }
}

Status ImportEngine::Run(store::ResourceStore* store, const store::ImportJobRecord& job, bool resumed) {
  const sink::WriteContext ctx{job.data_access_role_arn, job.kms_key_id};
  const BucketPrefix in = SplitS3Uri(job.input_s3_uri);
  const BucketPrefix out = SplitS3Uri(job.output_s3_uri);
  const std::string report = ReportPrefix(job, store->info().id);
  ASSIGN_OR_RETURN(auto listed, sink_->List(ctx, in.bucket, in.prefix));
  // The objects under the prefix as a folder (s3://b/dir: dir/...), or the one object it names.
  std::vector<std::string> keys;
  for (const auto& o : listed) {
    const bool under = in.prefix.empty() || o.key == in.prefix || o.key.starts_with(in.prefix + "/");
    if (under && IsInputObject(o.key)) keys.push_back(o.key);
  }
  std::sort(keys.begin(), keys.end());
  if (keys.empty()) {
    return Status::Invalid("there are no .ndjson (or .ndjson.gz) objects under " + job.input_s3_uri);
  }
  const fs::path dir = fs::path(options_.work_dir) / job.job_id;
  std::error_code ec;
  fs::remove_all(dir, ec);
  fs::create_directories(dir, ec);
  if (ec) return Status::Unavailable("cannot create the import's staging folder: " + ec.message());
  struct Cleanup {
    fs::path dir;
    ~Cleanup() {
      std::error_code e;
      fs::remove_all(dir, e);
    }
  } cleanup{dir};
  std::vector<std::string> files;
  std::map<std::string, std::string> key_of;  // staged file -> object key
  for (size_t i = 0; i < keys.size(); ++i) {
    if (stopping_) return Status::Unavailable("stopping");
    std::string name = keys[i].substr(keys[i].rfind('/') + 1);
    if (name.ends_with(".gz")) name.resize(name.size() - 3);
    const fs::path path = dir / (std::to_string(i) + "-" + name);
    RETURN_IF_ERROR(Stage(sink_, ctx, in.bucket, keys[i], path));
    files.push_back(path.string());
    key_of[path.string()] = keys[i];
  }
  // The report, one SUCCESS and (when needed) one FAILURE object per input object, named by its key below the prefix.
  std::map<std::string, ObjectReport> reports;
  Status report_status;
  auto report_name = [&](const std::string& key) {
    std::string rel =
        in.prefix.empty() || key == in.prefix ? key.substr(key.rfind('/') + 1) : key.substr(in.prefix.size() + 1);
    if (rel.ends_with(".gz")) rel.resize(rel.size() - 3);
    return rel;
  };
  auto write = [&](const std::string& file, bool success, const std::string& line) {
    if (!report_status.ok()) return;
    const std::string& key = key_of[file];
    ObjectReport& r = reports[key];
    std::unique_ptr<sink::ObjectWriter>& w = success ? r.success : r.failure;
    if (!w) {
      auto created = sink_->Create(ctx, out.bucket, report + (success ? "/SUCCESS/" : "/FAILURE/") + report_name(key));
      if (!created.ok()) {
        report_status = created.status();
        return;
      }
      w = std::move(*created);
    }
    Status st = w->Append(line);
    if (st.ok()) st = w->Append("\n");
    if (!st.ok()) report_status = st;
    (success ? r.imported : r.failed) += 1;
  };
  LoadSettings settings;
  if (resumed && job.base_seq) settings.skip_written_after_seq = *job.base_seq;
  settings.should_stop = [this] { return stopping_.load(); };
  settings.on_parsed = [&](const std::string& file, size_t line, const std::string& type, const std::string& id) {
    write(file, true,
          "{\"file\":" + JsonString(key_of[file]) + ",\"line\":" + std::to_string(line) +
              ",\"resourceType\":" + JsonString(type) + ",\"id\":" + JsonString(id) + "}");
  };
  settings.on_error = [&](const std::string& file, size_t line, const Status& problem) {
    write(file, false,
          "{\"file\":" + JsonString(key_of[file]) + ",\"line\":" + std::to_string(line) +
              ",\"error\":" + JsonString(Redact(problem.message())) + "}");
  };
  auto loaded = LoadFiles(store, files, settings);
  auto abort_all = [&] {
    for (auto& [k, r] : reports) {
      if (r.success) r.success->Abort();
      if (r.failure) r.failure->Abort();
    }
  };
  if (!loaded.ok()) {
    abort_all();
    return loaded.status();
  }
  if (!report_status.ok()) {
    abort_all();
    return report_status.WithContext("writing the import's report");
  }
  int64_t imported = 0, failed = 0;
  std::string objects;
  for (auto& [key, r] : reports) {
    if (r.success) RETURN_IF_ERROR(r.success->Commit());
    if (r.failure) RETURN_IF_ERROR(r.failure->Commit());
  }
  for (const auto& key : keys) {
    const ObjectReport& r = reports[key];
    imported += r.imported;
    failed += r.failed;
    if (!objects.empty()) objects += ",";
    objects += "{\"input\":" + JsonString("s3://" + in.bucket + "/" + key) +
               ",\"imported\":" + std::to_string(r.imported) + ",\"failed\":" + std::to_string(r.failed) + "}";
  }
  const std::string base = "s3://" + out.bucket + "/" + report;
  const std::string manifest = "{\"inputDataConfig\":{\"s3Uri\":" + JsonString(job.input_s3_uri) +
                               "},\"outputDataConfig\":{\"s3Uri\":" + JsonString(base + "/") +
                               "},\"successOutput\":{\"successOutputS3Uri\":" + JsonString(base + "/SUCCESS/") +
                               "},\"failureOutput\":{\"failureOutputS3Uri\":" + JsonString(base + "/FAILURE/") +
                               "},\"importedResources\":" + std::to_string(imported) +
                               ",\"failedLines\":" + std::to_string(failed) + ",\"objects\":[" + objects + "]}\n";
  {
    ASSIGN_OR_RETURN(auto w, sink_->Create(ctx, out.bucket, report + "/manifest.json"));
    RETURN_IF_ERROR(w->Append(manifest));
    RETURN_IF_ERROR(w->Commit());
  }
  const std::string message = "Imported " + std::to_string(imported) + " resources from " +
                              std::to_string(keys.size()) + (keys.size() == 1 ? " object" : " objects") +
                              (failed == 1  ? "; 1 line was rejected (see FAILURE/)"
                               : failed > 1 ? "; " + std::to_string(failed) + " lines were rejected (see FAILURE/)"
                                            : "");
  ASSIGN_OR_RETURN(auto done, store->jobs().TransitionImportJob(job.job_id, {kInProgress},
                                                                failed > 0 ? kCompletedWithErrors : kCompleted, message,
                                                                Clock::System().NowMillis(), std::nullopt));
  spdlog::info("event=import_job_completed datastore={} job={} imported={} failed={} skipped={}", store->info().id,
               done.job_id, imported, failed, loaded->skipped);
  return Status::Ok();
}

}  // namespace fhirlake::ingest
