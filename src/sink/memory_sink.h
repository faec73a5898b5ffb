// The in-memory twin of the object sinks, for unit tests of the code that writes through an ObjectSink (the
// export engine): it keeps the ObjectSink contract (an object is visible only once committed, a writer dropped
// without Commit leaves nothing), lets a test look at what was committed and what is still being written, and
// injects failures: the Nth call of an operation fails with a chosen Status (ENOSPC on the 3rd Append, say),
// or a hook decides per call.
//
// Thread-safe: every method may be called from any thread; one mutex guards the whole state. The sink must
// outlive the writers and readers it hands out.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "sink/object_sink.h"

namespace fhirlake::sink {

class MemorySink final : public ObjectSink {
 public:
  // The operations a fault can be injected into (and whose calls are counted).
  enum class Op { kCheckWritable, kCreate, kAppend, kCommit, kList, kDelete, kAbortIncomplete, kStat, kOpen, kReadAt };
  static constexpr int64_t kForever = -1;

  // A call about to happen: the hook sees it before the sink acts on it.
  struct Call {
    Op op;
    std::string bucket;
    std::string key;  // the prefix for kList and kAbortIncomplete; empty for kCheckWritable
    int64_t n = 0;    // 1 for the first call of `op` since the sink was made, 2 for the second, ...
  };
  // Returns a non-OK Status to make the call fail with it (the sink then changes nothing).
  using Hook = std::function<Status(const Call&)>;

  // A writer that has neither committed nor aborted, and whose object AbortIncomplete has not removed (after
  // that, the writer's next Append or Commit fails, as with an aborted S3 upload).
  struct PendingWrite {
    std::string bucket;
    std::string key;
    std::string bytes;  // appended so far
  };

  MemorySink();
  ~MemorySink() override;
  MemorySink(const MemorySink&) = delete;
  MemorySink& operator=(const MemorySink&) = delete;

  // ObjectSink. Buckets need not be created first.
  Status CheckWritable(const WriteContext& ctx, const std::string& bucket) override;
  Result<std::unique_ptr<ObjectWriter>> Create(const WriteContext& ctx, const std::string& bucket,
                                               const std::string& key) override;
  Result<std::vector<ObjectInfo>> List(const WriteContext& ctx, const std::string& bucket,
                                       const std::string& prefix) override;
  Status Delete(const WriteContext& ctx, const std::string& bucket, const std::string& key) override;
  Status AbortIncomplete(const WriteContext& ctx, const std::string& bucket, const std::string& prefix) override;
  Result<ObjectInfo> Stat(const WriteContext& ctx, const std::string& bucket, const std::string& key) override;
  Result<std::unique_ptr<ObjectReader>> Open(const WriteContext& ctx, const std::string& bucket,
                                             const std::string& key) override;

  // Inspection.
  // Committed objects of `bucket`: key -> bytes.
  std::map<std::string, std::string> Objects(const std::string& bucket) const;
  // The committed bytes at bucket/key, if any.
  std::optional<std::string> Object(const std::string& bucket, const std::string& key) const;
  // Writers not yet committed or aborted, in creation order.
  std::vector<PendingWrite> Pending() const;
  // How many times `op` was called (failed calls included).
  int64_t Calls(Op op) const;
  // The WriteContext of the last Create (to check what the engine passes on).
  WriteContext LastWriteContext() const;

  // Fault injection. Calls are counted per operation from the sink's creation, 1-based: FailNth(kAppend, 3, s)
  // makes the 3rd Append (over all writers) fail with `s`, and with times = 2 the 4th as well; kForever makes
  // every call from the Nth on fail (a full disk stays full). Faults of one op may be stacked.
  void FailNth(Op op, int64_t nth, Status status, int64_t times = 1);
  // Called before every operation (after the FailNth faults, which win); replaces the previous hook. Runs under
  // no lock: it may block, sleep or call the sink.
  void SetHook(Hook hook);

 private:
  struct Writer;
  class WriterImpl;
  class ReaderImpl;
  struct Fault {
    Op op;
    int64_t first;
    int64_t last;  // kForever: no end
    Status status;
  };

  // Counts the call and returns the fault it meets, if any (the hook's answer otherwise).
  Status Enter(Op op, const std::string& bucket, const std::string& key);
  Status WriterAppend(Writer* w, std::string_view bytes);
  Status WriterCommit(Writer* w);
  void WriterAbort(Writer* w);

  mutable std::mutex mu_;
  std::map<std::string, std::map<std::string, std::shared_ptr<const std::string>>> objects_;  // GUARDED_BY(mu_)
  std::vector<std::shared_ptr<Writer>> pending_;                                              // GUARDED_BY(mu_)
  std::map<Op, int64_t> calls_;                                                               // GUARDED_BY(mu_)
  std::vector<Fault> faults_;                                                                 // GUARDED_BY(mu_)
  std::shared_ptr<const Hook> hook_;                                                          // GUARDED_BY(mu_)
  WriteContext last_ctx_;                                                                     // GUARDED_BY(mu_)
};

std::unique_ptr<MemorySink> NewMemorySink();

}  // namespace fhirlake::sink
