// The XML replies of S3 that the S3 sink reads, parsed with libexpat into plain structs. Kept apart from the
// transport so every reply shape (namespaces, entities, truncated listings, malformed bodies) is unit-tested
// without a server. Element names are matched by local name, whatever namespace or prefix the server uses.
//
// All functions are pure and thread-safe. Malformed XML, a DOCTYPE (S3 never sends one; refusing it rules out
// entity expansion attacks) or an unexpected root element give kUnavailable with a message naming the reply.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace fhirlake::sink::s3xml {

// <Error><Code>NoSuchUpload</Code><Message>...</Message>...</Error>
struct ErrorReply {
  std::string code;
  std::string message;
};

struct ListedObject {
  std::string key;
  int64_t size = 0;
  std::string etag;
};

// ListObjectsV2 (and V1's ListBucketResult, which has the same Contents).
struct ObjectListing {
  std::vector<ListedObject> objects;
  bool is_truncated = false;
  std::string next_continuation_token;  // V2
  std::string next_marker;              // V1
};

struct ListedUpload {
  std::string key;
  std::string upload_id;
};

// ListMultipartUploadsResult.
struct UploadListing {
  std::vector<ListedUpload> uploads;
  bool is_truncated = false;
  std::string next_key_marker;
  std::string next_upload_id_marker;
};

struct CompletedUpload {
  std::string bucket;
  std::string key;
  std::string etag;
};

// The Code and Message of an <Error> body; kUnavailable when `xml` is not an Error document (e.g. an empty
// body of a HEAD or an HTML page from a proxy).
Result<ErrorReply> ParseError(std::string_view xml);

// The UploadId of an InitiateMultipartUploadResult; fails when it is missing or empty.
Result<std::string> ParseInitiateMultipartUpload(std::string_view xml);

Result<ObjectListing> ParseListObjects(std::string_view xml);

Result<UploadListing> ParseListMultipartUploads(std::string_view xml);

// S3 may answer CompleteMultipartUpload with HTTP 200 and an <Error> body (the failure came after the headers
// were sent): that body gives kUnavailable with its Code and Message, as does any other root element.
Result<CompletedUpload> ParseCompleteMultipartUpload(std::string_view xml);

}  // namespace fhirlake::sink::s3xml
