// The S3 object sink: any S3-compatible endpoint (AWS S3, MinIO, Ceph RGW) over libcurl, requests signed
// with the project's SigV4 signer, streaming multipart uploads, SSE-KMS with the job's key id, roles that
// map DataAccessRoleArn to credentials and allowed buckets, and bounded retries with backoff and jitter.
// Reads are HeadObject (Stat, Open) and ranged GetObject with If-Match on the ETag seen at Open.
// A retried CreateMultipartUpload (not idempotent: a lost answer may hide an opened upload) makes the writer
// abort the key's other uploads before it completes its own, so no upload outlives a finished object.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "sink/object_sink.h"
#include "sink/sigv4.h"

namespace fhirlake::sink {

// A service role the server may act as: the credentials it uses for S3 on the role's behalf, and the buckets
// it may write ("name" or a prefix pattern "name-*"; "*" is every bucket).
struct S3Role {
  std::string role_arn;
  AwsCredentials credentials;
  std::vector<std::string> buckets;
};

struct S3Options {
  std::string endpoint;  // e.g. "http://127.0.0.1:7480" or "https://s3.us-east-1.amazonaws.com"
  std::string region = "us-east-1";
  bool virtual_hosted = false;  // bucket.host addressing instead of host/bucket
  std::vector<S3Role> roles;
  size_t part_bytes = 16 << 20;  // multipart part size (>= 5 MiB); a file below it is one PutObject
  int max_attempts = 8;          // per request, for 5xx, throttling, timeouts and connection failures
  int base_backoff_ms = 200;     // doubled per attempt (capped at 5 s), with full jitter
  int timeout_seconds = 120;     // per request
};

// Reads the roles file: {"roles": [{"roleArn", "accessKeyId", "secretAccessKey", "sessionToken"?, "buckets": [...]}]}.
Result<std::vector<S3Role>> LoadS3Roles(const std::string& path);

Result<std::unique_ptr<ObjectSink>> NewS3Sink(S3Options options);

}  // namespace fhirlake::sink
