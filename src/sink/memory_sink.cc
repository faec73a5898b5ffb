// MemorySink: objects in maps under one mutex. Readers hold a shared snapshot of the bytes they opened, so a
// later commit or delete of the same key does not change what they read (as with the local directory sink).
#include "sink/memory_sink.h"

#include <algorithm>
#include <cstring>
#include <utility>

namespace fhirlake::sink {
namespace {

std::string Uri(const std::string& bucket, const std::string& key) { return "s3://" + bucket + "/" + key; }

}  // namespace

// The state of one writer, shared by the writer object and the sink's list of pending writes.
struct MemorySink::Writer {
  std::string bucket;
  std::string key;
  std::string bytes;
  bool closed = false;   // committed or aborted by its owner
  bool removed = false;  // its unfinished object was removed by AbortIncomplete
};

class MemorySink::WriterImpl final : public ObjectWriter {
 public:
  WriterImpl(MemorySink* sink, std::shared_ptr<Writer> w) : sink_(sink), w_(std::move(w)) {}
  ~WriterImpl() override { Abort(); }
  Status Append(std::string_view bytes) override { return sink_->WriterAppend(w_.get(), bytes); }
  Status Commit() override { return sink_->WriterCommit(w_.get()); }
  void Abort() override { sink_->WriterAbort(w_.get()); }

 private:
  MemorySink* sink_;
  std::shared_ptr<Writer> w_;
};

class MemorySink::ReaderImpl final : public ObjectReader {
 public:
  ReaderImpl(MemorySink* sink, std::string bucket, std::string key, std::shared_ptr<const std::string> bytes)
      : sink_(sink), bucket_(std::move(bucket)), key_(std::move(key)), bytes_(std::move(bytes)) {}

  int64_t size() const override { return static_cast<int64_t>(bytes_->size()); }

  Result<size_t> ReadAt(int64_t offset, char* buf, size_t len) const override {
    RETURN_IF_ERROR(sink_->Enter(Op::kReadAt, bucket_, key_));
    if (offset < 0) return Status::Invalid("read of " + Uri(bucket_, key_) + " at a negative offset");
    if (offset >= size()) return size_t{0};
    size_t n = std::min(len, bytes_->size() - static_cast<size_t>(offset));
    std::memcpy(buf, bytes_->data() + offset, n);
    return n;
  }

 private:
  MemorySink* sink_;
  std::string bucket_;
  std::string key_;
  std::shared_ptr<const std::string> bytes_;
};

MemorySink::MemorySink() = default;
MemorySink::~MemorySink() = default;

Status MemorySink::Enter(Op op, const std::string& bucket, const std::string& key) {
  std::shared_ptr<const Hook> hook;
  int64_t n;
  {
    std::lock_guard<std::mutex> lock(mu_);
    n = ++calls_[op];
    for (const auto& f : faults_) {
      if (f.op == op && n >= f.first && (f.last == kForever || n <= f.last)) return f.status;
    }
    hook = hook_;
  }
  if (hook != nullptr && *hook) return (*hook)(Call{op, bucket, key, n});
  return Status::Ok();
}

Status MemorySink::CheckWritable(const WriteContext&, const std::string& bucket) {
  RETURN_IF_ERROR(Enter(Op::kCheckWritable, bucket, ""));
  if (bucket.empty()) return Status::Invalid("a bucket name is required");
  return Status::Ok();
}

Result<std::unique_ptr<ObjectWriter>> MemorySink::Create(const WriteContext& ctx, const std::string& bucket,
                                                         const std::string& key) {
  RETURN_IF_ERROR(Enter(Op::kCreate, bucket, key));
  if (bucket.empty() || key.empty()) return Status::Invalid("a bucket and a key are required");
  auto w = std::make_shared<Writer>();
  w->bucket = bucket;
  w->key = key;
  {
    std::lock_guard<std::mutex> lock(mu_);
    last_ctx_ = ctx;
    pending_.push_back(w);
  }
  return std::unique_ptr<ObjectWriter>(std::make_unique<WriterImpl>(this, std::move(w)));
}

Status MemorySink::WriterAppend(Writer* w, std::string_view bytes) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (w->closed) return Status::Internal("write to a closed object");
  }
  RETURN_IF_ERROR(Enter(Op::kAppend, w->bucket, w->key));
  std::lock_guard<std::mutex> lock(mu_);
  if (w->removed) {
    return Status::Unavailable("cannot write " + Uri(w->bucket, w->key) + ": the unfinished object was removed");
  }
  w->bytes.append(bytes);
  return Status::Ok();
}

Status MemorySink::WriterCommit(Writer* w) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (w->closed) return Status::Internal("commit of a closed object");
  }
  // A failed commit leaves the writer open, as the local sink's does when fdatasync fails: the owner aborts it.
  RETURN_IF_ERROR(Enter(Op::kCommit, w->bucket, w->key));
  std::lock_guard<std::mutex> lock(mu_);
  if (w->removed) {
    return Status::Unavailable("cannot commit " + Uri(w->bucket, w->key) + ": the unfinished object was removed");
  }
  objects_[w->bucket][w->key] = std::make_shared<const std::string>(std::move(w->bytes));
  w->bytes.clear();
  w->closed = true;
  std::erase_if(pending_, [w](const std::shared_ptr<Writer>& p) { return p.get() == w; });
  return Status::Ok();
}

void MemorySink::WriterAbort(Writer* w) {
  std::lock_guard<std::mutex> lock(mu_);
  if (w->closed) return;
  w->closed = true;
  w->bytes.clear();
  std::erase_if(pending_, [w](const std::shared_ptr<Writer>& p) { return p.get() == w; });
}

Result<std::vector<ObjectInfo>> MemorySink::List(const WriteContext&, const std::string& bucket,
                                                 const std::string& prefix) {
  RETURN_IF_ERROR(Enter(Op::kList, bucket, prefix));
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<ObjectInfo> out;
  auto b = objects_.find(bucket);
  if (b == objects_.end()) return out;
  for (auto it = b->second.lower_bound(prefix); it != b->second.end() && it->first.starts_with(prefix); ++it) {
    out.push_back({it->first, static_cast<int64_t>(it->second->size())});
  }
  return out;
}

Status MemorySink::Delete(const WriteContext&, const std::string& bucket, const std::string& key) {
  RETURN_IF_ERROR(Enter(Op::kDelete, bucket, key));
  std::lock_guard<std::mutex> lock(mu_);
  auto b = objects_.find(bucket);
  if (b != objects_.end()) b->second.erase(key);
  return Status::Ok();
}

Status MemorySink::AbortIncomplete(const WriteContext&, const std::string& bucket, const std::string& prefix) {
  RETURN_IF_ERROR(Enter(Op::kAbortIncomplete, bucket, prefix));
  std::lock_guard<std::mutex> lock(mu_);
  std::erase_if(pending_, [&](const std::shared_ptr<Writer>& w) {
    if (w->bucket != bucket || !w->key.starts_with(prefix)) return false;
    w->removed = true;
    w->bytes.clear();
    return true;
  });
  return Status::Ok();
}

Result<ObjectInfo> MemorySink::Stat(const WriteContext&, const std::string& bucket, const std::string& key) {
  RETURN_IF_ERROR(Enter(Op::kStat, bucket, key));
  std::lock_guard<std::mutex> lock(mu_);
  auto b = objects_.find(bucket);
  if (b == objects_.end() || !b->second.count(key)) return Status::NotFound(Uri(bucket, key) + " does not exist");
  return ObjectInfo{key, static_cast<int64_t>(b->second.at(key)->size())};
}

Result<std::unique_ptr<ObjectReader>> MemorySink::Open(const WriteContext&, const std::string& bucket,
                                                       const std::string& key) {
  RETURN_IF_ERROR(Enter(Op::kOpen, bucket, key));
  std::shared_ptr<const std::string> bytes;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto b = objects_.find(bucket);
    if (b == objects_.end() || !b->second.count(key)) return Status::NotFound(Uri(bucket, key) + " does not exist");
    bytes = b->second.at(key);
  }
  return std::unique_ptr<ObjectReader>(std::make_unique<ReaderImpl>(this, bucket, key, std::move(bytes)));
}

std::map<std::string, std::string> MemorySink::Objects(const std::string& bucket) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::map<std::string, std::string> out;
  auto b = objects_.find(bucket);
  if (b == objects_.end()) return out;
  for (const auto& [key, bytes] : b->second) out.emplace(key, *bytes);
  return out;
}

std::optional<std::string> MemorySink::Object(const std::string& bucket, const std::string& key) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto b = objects_.find(bucket);
  if (b == objects_.end()) return std::nullopt;
  auto o = b->second.find(key);
  if (o == b->second.end()) return std::nullopt;
  return *o->second;
}

std::vector<MemorySink::PendingWrite> MemorySink::Pending() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<PendingWrite> out;
  for (const auto& w : pending_) out.push_back({w->bucket, w->key, w->bytes});
  return out;
}

int64_t MemorySink::Calls(Op op) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = calls_.find(op);
  return it == calls_.end() ? 0 : it->second;
}

WriteContext MemorySink::LastWriteContext() const {
  std::lock_guard<std::mutex> lock(mu_);
  return last_ctx_;
}

void MemorySink::FailNth(Op op, int64_t nth, Status status, int64_t times) {
  std::lock_guard<std::mutex> lock(mu_);
  faults_.push_back({op, nth, times == kForever ? kForever : nth + times - 1, std::move(status)});
}

void MemorySink::SetHook(Hook hook) {
  std::lock_guard<std::mutex> lock(mu_);
  hook_ = std::make_shared<const Hook>(std::move(hook));
}

std::unique_ptr<MemorySink> NewMemorySink() { return std::make_unique<MemorySink>(); }

}  // namespace fhirlake::sink
