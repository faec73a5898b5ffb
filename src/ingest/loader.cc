// The loader (ingest/loader.h): pass 1 maps Bundle fullUrls, pass 2 parses on the calling thread while StoreWriter
// writes batches on its own.
#include "ingest/loader.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "common/ids.h"
#include "fhir/bundle.h"
#include "fhir/json_values.h"
#include "fhir/resource_parser.h"
#include "search/extract.h"

namespace fhirlake::ingest {
namespace {

namespace fs = std::filesystem;

using fhir::PaddedFile;

// Line numbers of increasing positions in one file, counted incrementally (entries come in file order).
class LineCounter {
 public:
  explicit LineCounter(const PaddedFile& f) : pos_(f.bytes.data()), limit_(f.bytes.data() + f.size) {}
  size_t LineOf(const char* p) {
    if (p > limit_) p = limit_;
    if (p > pos_) {
      line_ += static_cast<size_t>(std::count(pos_, p, '\n'));
      pos_ = p;
    }
    return line_;
  }

 private:
  const char* pos_;
  const char* limit_;
  size_t line_ = 1;
};

bool IsNdjson(const std::string& path) { return path.ends_with(".ndjson") || path.ends_with(".jsonl"); }

class UrnResolver final : public fhir::ReferenceResolver {
 public:
  explicit UrnResolver(const std::unordered_map<std::string, std::string>* map) : map_(map) {}
  Result<std::optional<std::string>> Resolve(std::string_view ref) override {
    if (!ref.starts_with("urn:")) return std::optional<std::string>();
    auto it = map_->find(std::string(ref));
    if (it == map_->end()) return std::optional<std::string>();
    return std::optional<std::string>(it->second);
  }

 private:
  const std::unordered_map<std::string, std::string>* map_;
};

// The id a resource gets: its own, else the uuid of its urn:uuid fullUrl, else a new one.
std::string IdFor(const fhir::TypedId& peek, std::string_view full_url) {
  if (!peek.id.empty()) return peek.id;
  if (full_url.starts_with("urn:uuid:") && IsValidFhirId(full_url.substr(9))) return std::string(full_url.substr(9));
  return NewUuid();
}

// Stores parsed resources on its own thread, in transactions of `batch_size` resources.
class StoreWriter {
 public:
  struct Item {
    fhir::ParsedResource parsed;
    std::string id;
    search::IndexRows index;  // extracted on the parsing thread, so the writer thread only writes rows
  };
  using Batch = std::vector<Item>;

  StoreWriter(store::ResourceStore* store, size_t batch_size, std::optional<int64_t> skip_after_seq)
      : store_(store), batch_size_(batch_size), skip_after_seq_(skip_after_seq) {
    thread_ = std::thread([this] { Run(); });
  }
  // Joins the writer thread on early returns (the load reports the error that made it return).
  ~StoreWriter() { Stop(); }

  // Blocks while the queue is full. Returns the writer's error, if it failed.
  Status Push(Batch batch) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return queue_.size() < kMaxQueued || !status_.ok(); });
    if (!status_.ok()) return status_;
    queue_.push_back(std::move(batch));
    cv_.notify_all();
    return Status::Ok();
  }

  // Writes what is queued, commits, and stops the thread.
  Status Finish() {
    Stop();
    std::lock_guard<std::mutex> lock(mu_);
    return status_;
  }

  int64_t written() const { return written_; }
  int64_t skipped() const { return skipped_; }

 private:
  static constexpr size_t kMaxQueued = 8;

  void Stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
      cv_.notify_all();
    }
    if (thread_.joinable()) thread_.join();
  }

  void Run() {
    std::unique_ptr<store::StoreTransaction> txn;
    size_t in_txn = 0;
    Status st;
    while (st.ok()) {
      Batch batch;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return !queue_.empty() || done_; });
        if (queue_.empty()) break;
        batch = std::move(queue_.front());
        queue_.pop_front();
        cv_.notify_all();
      }
      for (auto& item : batch) {
        if (!txn) {
          auto t = store_->BeginWrite();
          if (!t.ok()) {
            st = t.status();
            break;
          }
          txn = std::move(*t);
        }
        if (skip_after_seq_) {
          // A load run again after it stopped: what its first run wrote is not written twice.
          auto existing = txn->Read(item.parsed.type, item.id);
          if (existing.ok() && existing->seq > *skip_after_seq_) {
            ++skipped_;
            if (++in_txn >= batch_size_) {
              st = txn->Commit();
              txn.reset();
              in_txn = 0;
              if (!st.ok()) break;
            }
            continue;
          }
          if (!existing.ok() && existing.status().code() != StatusCode::kNotFound) {
            st = existing.status();
            break;
          }
        }
        auto stored = txn->Put(item.parsed, item.id, std::nullopt, store::WriteOp::kPut, &item.index);
        if (!stored.ok()) {
          st = stored.status();
          break;
        }
        ++written_;
        if (++in_txn >= batch_size_) {
          st = txn->Commit();
          txn.reset();
          in_txn = 0;
          if (!st.ok()) break;
        }
      }
    }
    if (st.ok() && txn) st = txn->Commit();
    std::lock_guard<std::mutex> lock(mu_);
    status_ = st;
    cv_.notify_all();
  }

  store::ResourceStore* store_;
  size_t batch_size_;
  std::optional<int64_t> skip_after_seq_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Batch> queue_;  // GUARDED_BY(mu_)
  bool done_ = false;        // GUARDED_BY(mu_)
  Status status_;            // GUARDED_BY(mu_)
  std::atomic<int64_t> written_{0};
  std::atomic<int64_t> skipped_{0};
  std::thread thread_;
};

class Loader {
 public:
  Loader(store::ResourceStore* store, const LoadSettings& settings)
      : settings_(settings), writer_(store, settings.batch_size, settings.skip_written_after_seq) {}

  void Error(const std::string& file, size_t line, const Status& st) {
    ++errors_;
    if (settings_.on_error) settings_.on_error(file, line, st);
  }

  // Pass 1: fullUrl -> Type/id for every Bundle entry.
  void MapBundle(const std::string& path) {
    auto file = fhir::ReadPaddedFile(path);
    if (!file.ok()) return;  // reported in pass 2
    auto peek = parser_.PeekTypeAndId(file->view(), file->end());
    if (!peek.ok() || peek->type != "Bundle") return;
    auto bundle = fhir::ParseBundle(parser_, file->view(), file->end());
    if (!bundle.ok()) return;
    for (const auto& e : bundle->entries) {
      if (e.full_url.empty() || e.resource_json.empty()) continue;
      auto rp = parser_.PeekTypeAndId(e.resource_json, file->end());
      if (!rp.ok() || rp->type.empty()) continue;
      std::string id = IdFor(*rp, e.full_url);
      urns_[e.full_url] = rp->type + "/" + id;
    }
  }

  // Reads an ndjson file in chunks; each complete line is one resource.
  Status LoadNdjson(const std::string& path) {
    std::FILE* f = std::fopen(path.c_str(), "rb");
    if (f == nullptr) {
      Error(path, 0, Status::NotFound("cannot open " + path));
      return Status::Ok();
    }
    ++files_;
    constexpr size_t kChunk = 8 << 20;
    std::string buf;
    size_t filled = 0, line = 0;
    bool eof = false;
    Status st;
    while (st.ok() && !eof) {
      if (buf.size() < filled + kChunk + simdjson::SIMDJSON_PADDING)
        buf.resize(filled + kChunk + simdjson::SIMDJSON_PADDING);
      size_t n = std::fread(buf.data() + filled, 1, kChunk, f);
      filled += n;
      eof = n < kChunk;
      std::string_view data(buf.data(), filled);
      size_t end = eof ? filled : data.rfind('\n');
      if (end == std::string_view::npos) continue;  // one line longer than a chunk: read more
      const char* alloc_end = buf.data() + buf.size();
      size_t pos = 0;
      while (pos < end && st.ok()) {
        size_t nl = data.find('\n', pos);
        if (nl == std::string_view::npos || nl > end) nl = end;
        ++line;
        std::string_view text = data.substr(pos, nl - pos);
        pos = nl + 1;
        if (text.find_first_not_of(" \t\r") == std::string_view::npos) continue;
        st = LoadOne(path, line, text, alloc_end, "");
      }
      size_t keep = end < filled ? filled - (end + 1) : 0;
      std::memmove(buf.data(), buf.data() + filled - keep, keep);
      filled = keep;
    }
    std::fclose(f);
    return st;
  }

  Status LoadFile(const std::string& path) {
    if (IsNdjson(path)) return LoadNdjson(path);
    auto file = fhir::ReadPaddedFile(path);
    if (!file.ok()) {
      Error(path, 0, file.status());
      return Status::Ok();
    }
    ++files_;
    auto peek = parser_.PeekTypeAndId(file->view(), file->end());
    if (!peek.ok()) {
      Error(path, 1, peek.status());
      return Status::Ok();
    }
    if (peek->type != "Bundle") return LoadOne(path, 1, file->view(), file->end(), "");
    auto bundle = fhir::ParseBundle(parser_, file->view(), file->end());
    LineCounter lines(*file);
    if (!bundle.ok()) {
      Error(path, lines.LineOf(file->end()), bundle.status().WithContext("invalid Bundle"));
      return Status::Ok();
    }
    for (size_t i = 0; i < bundle->entries.size(); ++i) {
      const auto& e = bundle->entries[i];
      if (e.resource_json.empty()) continue;
      Status st = LoadOne(path, lines.LineOf(e.resource_json.data()), e.resource_json, file->end(), e.full_url);
      RETURN_IF_ERROR(st);
    }
    return Status::Ok();
  }

  // Parses one resource and writes it; input errors are reported and skipped, store errors abort the load.
  Status LoadOne(const std::string& path, size_t line, std::string_view json, const char* end,
                 std::string_view full_url) {
    if (settings_.should_stop && settings_.should_stop()) return Status::Unavailable("the load was stopped");
    UrnResolver resolver(&urns_);
    auto parsed = parser_.ParseInBuffer(json, end, &resolver);
    if (!parsed.ok()) {
      Error(path, line, parsed.status());
      return Status::Ok();
    }
    std::string id = IdFor(fhir::TypedId{parsed->type, parsed->id}, full_url);
    unresolved_ += parsed->unresolved_urn_references;
    types_.insert(parsed->type);
    // The search index rows depend on the content only (not on versionId/lastUpdated), so they are extracted here
    // from the content as it will be stored.
    auto index = extractor_.Extract(fhir::RenderResource(*parsed, id, 1, "1970-01-01T00:00:00.000Z"));
    if (!index.ok()) {
      Error(path, line, index.status());
      return Status::Ok();
    }
    if (settings_.on_parsed) settings_.on_parsed(path, line, parsed->type, id);
    batch_.push_back(StoreWriter::Item{std::move(*parsed), std::move(id), std::move(*index)});
    ++parsed_;
    if (batch_.size() >= kBatchItems) RETURN_IF_ERROR(PushBatch());
    MaybeProgress();
    return Status::Ok();
  }

  Status PushBatch() {
    if (batch_.empty()) return Status::Ok();
    StoreWriter::Batch b;
    b.swap(batch_);
    return writer_.Push(std::move(b));
  }

  // Stores everything parsed so far and waits for the writer.
  Status Flush() {
    RETURN_IF_ERROR(PushBatch());
    return writer_.Finish();
  }

  int64_t loaded() const { return writer_.written(); }
  int64_t skipped() const { return writer_.skipped(); }

  void MaybeProgress() {
    if (settings_.on_progress && (parsed_ % 5000) == 0) settings_.on_progress(loaded(), Seconds());
  }

  double Seconds() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count(); }

  int64_t parsed_ = 0, unresolved_ = 0, errors_ = 0, files_ = 0;
  std::set<std::string> types_;
  std::unordered_map<std::string, std::string> urns_;

 private:
  static constexpr size_t kBatchItems = 1000;
  const LoadSettings& settings_;
  fhir::ResourceParser parser_;
  search::IndexExtractor extractor_;
  StoreWriter writer_;
  StoreWriter::Batch batch_;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

}  // namespace

Result<std::vector<std::string>> ExpandPaths(const std::vector<std::string>& paths) {
  std::vector<std::string> files;
  for (const auto& p : paths) {
    std::error_code ec;
    if (fs::is_directory(p, ec)) {
      std::vector<std::string> found;
      for (const auto& e : fs::recursive_directory_iterator(p, ec)) {
        std::string name = e.path().string();
        if (e.is_regular_file() && (name.ends_with(".json") || IsNdjson(name))) found.push_back(name);
      }
      std::sort(found.begin(), found.end());
      files.insert(files.end(), found.begin(), found.end());
    } else if (fs::exists(p, ec)) {
      files.push_back(p);
    } else {
      return Status::NotFound(p + " does not exist");
    }
  }
  return files;
}

Result<LoadReport> LoadFiles(store::ResourceStore* store, const std::vector<std::string>& files,
                             const LoadSettings& settings) {
  Loader loader(store, settings);
  for (const auto& f : files) {
    if (!IsNdjson(f)) loader.MapBundle(f);
  }
  Status st = Status::Ok();
  for (const auto& f : files) {
    st = loader.LoadFile(f);
    if (!st.ok()) break;
  }
  if (st.ok()) st = loader.Flush();
  RETURN_IF_ERROR(st);
  LoadReport r;
  r.loaded = loader.loaded();
  r.skipped = loader.skipped();
  r.errors = loader.errors_;
  r.unresolved = loader.unresolved_;
  r.files = loader.files_;
  r.types = loader.types_;
  r.seconds = loader.Seconds();
  return r;
}

}  // namespace fhirlake::ingest
