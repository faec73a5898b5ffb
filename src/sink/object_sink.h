// Where export files go, and where they are read back from: an object store addressed by bucket and key. The
// local directory sink (the embedded default), the S3 sink and the in-memory sink (memory_sink.h, for tests)
// implement it; the export engine and the download endpoint only see this interface.
//
// Contract:
// - An object becomes visible under its key (to List, Stat, Open) only when its writer commits, complete and
//   durable; a writer destroyed without Commit() leaves nothing behind under that key. A partial object is
//   never visible: Stat/Open of a key whose writer has not committed answer kNotFound (or the previous object).
// - Threads: an ObjectSink may be called from any number of threads at once. An ObjectWriter is used by one
//   thread at a time. An ObjectReader's ReadAt may be called from several threads at once.
// - Lifetimes: writers and readers must not outlive the sink that made them.
// - At most one writer per key at a time (the export engine gives every file its own key): S3 may abort
//   another writer's unfinished upload of the same key while cleaning up after a retried request.
// - Status messages name objects as s3://bucket/key, never by a server path or a credential: they become job
//   messages and HTTP error bodies that clients read.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace fhirlake::sink {

// Per-job settings an object store may need (S3: the role whose credentials to use, the SSE-KMS key).
struct WriteContext {
  std::string data_access_role_arn;
  std::string kms_key_id;
};

struct ObjectInfo {
  std::string key;
  int64_t size = 0;
};

class ObjectWriter {
 public:
  virtual ~ObjectWriter() = default;
  virtual Status Append(std::string_view bytes) = 0;
  virtual Status Commit() = 0;
  virtual void Abort() = 0;
};

// One committed object, opened for ranged reads. A reader sees exactly the object that was committed under the
// key when Open() ran: if it is replaced or deleted meanwhile, reads either still return the opened bytes
// (local directory, memory) or fail (S3: kConflict when replaced, kNotFound when deleted); never a mix of two
// objects.
class ObjectReader {
 public:
  virtual ~ObjectReader() = default;
  // The object's size in bytes, as of Open().
  virtual int64_t size() const = 0;
  // Reads up to `len` bytes starting at `offset` into `buf`; returns how many were read: `len`, or fewer only
  // when the object ends first (0 at or past its end). kInvalid for a negative offset.
  virtual Result<size_t> ReadAt(int64_t offset, char* buf, size_t len) const = 0;
};

class ObjectSink {
 public:
  virtual ~ObjectSink() = default;
  // Kick-off check: can this job write into `bucket`? Fails with a message that says what to fix.
  virtual Status CheckWritable(const WriteContext& ctx, const std::string& bucket) = 0;
  virtual Result<std::unique_ptr<ObjectWriter>> Create(const WriteContext& ctx, const std::string& bucket,
                                                       const std::string& key) = 0;
  // Committed objects under `prefix` (not unfinished ones).
  virtual Result<std::vector<ObjectInfo>> List(const WriteContext& ctx, const std::string& bucket,
                                               const std::string& prefix) = 0;
  virtual Status Delete(const WriteContext& ctx, const std::string& bucket, const std::string& key) = 0;
  // Removes every unfinished object (temporary file, open multipart upload) under `prefix`.
  virtual Status AbortIncomplete(const WriteContext& ctx, const std::string& bucket, const std::string& prefix) = 0;

  // The committed object at bucket/key: kNotFound when there is none (unfinished objects do not count).
  virtual Result<ObjectInfo> Stat(const WriteContext& ctx, const std::string& bucket, const std::string& key) = 0;
  // Opens the committed object at bucket/key for reading: kNotFound when there is none.
  virtual Result<std::unique_ptr<ObjectReader>> Open(const WriteContext& ctx, const std::string& bucket,
                                                     const std::string& key) = 0;
};

// The embedded default: s3://bucket/key is the file {root}/bucket/key. Buckets are created on demand. Keys and
// prefixes with "." or ".." segments are refused (kInvalid): they could name files outside {root}.
std::unique_ptr<ObjectSink> NewLocalDirSink(std::string root);

}  // namespace fhirlake::sink
