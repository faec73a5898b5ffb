// Where export files go: an object store addressed by bucket and key. The local directory sink (the
// embedded default) and the S3 sink implement it; the export engine only sees this interface.
//
// Contract: an object becomes visible under its key only when its writer commits, complete and durable;
// a writer destroyed without Commit() leaves nothing behind under that key.
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
};

// The embedded default: s3://bucket/key is the file {root}/bucket/key. Buckets are created on demand.
std::unique_ptr<ObjectSink> NewLocalDirSink(std::string root);

}  // namespace fhirlake::sink
