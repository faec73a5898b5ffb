// S3 sink implementation. Every request goes through S3Client::Send, which signs, sends with libcurl, and
// retries what S3 says may be retried; replies are parsed by s3_xml.h. Secrets never leave this file: messages
// carry the S3 error code and message, the bucket/key, the role ARN and the KMS key id, never credentials or
// signatures.
#include "sink/s3_sink.h"

#include <curl/curl.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <chrono>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <thread>
#include <utility>

#include "sink/s3_xml.h"

namespace fhirlake::sink {
namespace {

using Params = std::vector<std::pair<std::string, std::string>>;

struct S3Response {
  long status = 0;
  std::string body;
  std::map<std::string, std::string> headers;  // lower-case names
};

// Initialised by position: {method, bucket, key, query, headers, body}; what is left out is empty.
struct S3Request {
  std::string method{};
  std::string bucket{};
  std::string key{};
  Params query{};
  Params headers{};
  std::string_view body{};
  // Retry retryable failures at least max_attempts times (0: S3Options::max_attempts), and more until retry_for
  // has passed (cleanup requests use it to outlast an outage).
  std::chrono::milliseconds retry_for{0};
  int max_attempts = 0;
  // CompleteMultipartUpload may fail after S3 sent "200 OK": the body is then an <Error>, retried like a 5xx.
  bool error_in_200 = false;
};

// The Code of an S3 error body; empty when the body is not one (HEAD replies have no body).
std::string ErrorCode(const S3Response& r) {
  auto e = s3xml::ParseError(r.body);
  return e.ok() ? e->code : "";
}

std::string ErrorText(const S3Response& r) {
  std::string out = "HTTP " + std::to_string(r.status);
  auto e = s3xml::ParseError(r.body);
  if (!e.ok()) return out;
  if (!e->code.empty()) out += " " + e->code;
  if (!e->message.empty()) out += ": " + e->message;
  return out;
}

bool Retryable(const S3Request& req, const S3Response& r) {
  if (r.status == 429 || r.status >= 500) return true;
  if (r.status < 300 && !req.error_in_200) return false;  // a success body (maybe an object's bytes) is not an error
  std::string code = ErrorCode(r);
  return code == "SlowDown" || code == "RequestTimeout" || code == "InternalError" || code == "ServiceUnavailable";
}

// Whether S3 may have acted on a request whose attempt failed this way. Only a refused or unresolvable
// connection proves that nothing was sent; 503 and 429 (SlowDown) are S3's way of saying "not done, later".
bool MaybeActed(CURLcode rc) {
  return rc != CURLE_COULDNT_CONNECT && rc != CURLE_COULDNT_RESOLVE_HOST && rc != CURLE_COULDNT_RESOLVE_PROXY;
}
bool MaybeActed(const S3Response& r) { return r.status != 503 && r.status != 429; }

size_t WriteBody(char* data, size_t size, size_t n, void* user) {
  static_cast<std::string*>(user)->append(data, size * n);
  return size * n;
}

size_t WriteHeader(char* data, size_t size, size_t n, void* user) {
  std::string_view line(data, size * n);
  size_t colon = line.find(':');
  if (colon != std::string_view::npos) {
    std::string name(line.substr(0, colon));
    for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    std::string_view value = line.substr(colon + 1);
    while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
    while (!value.empty() && (value.back() == '\r' || value.back() == '\n' || value.back() == ' ')) {
      value.remove_suffix(1);
    }
    (*static_cast<std::map<std::string, std::string>*>(user))[name] = std::string(value);
  }
  return size * n;
}

struct ReadState {
  std::string_view data;
  size_t pos = 0;
};

size_t ReadBody(char* buffer, size_t size, size_t n, void* user) {
  auto* s = static_cast<ReadState*>(user);
  size_t len = std::min(size * n, s->data.size() - s->pos);
  std::memcpy(buffer, s->data.data() + s->pos, len);
  s->pos += len;
  return len;
}

class S3Client {
 public:
  explicit S3Client(S3Options options) : options_(std::move(options)) {
    std::string ep = options_.endpoint;
    while (!ep.empty() && ep.back() == '/') ep.pop_back();
    size_t scheme_end = ep.find("://");
    scheme_ = scheme_end == std::string::npos ? "https" : ep.substr(0, scheme_end);
    host_ = scheme_end == std::string::npos ? ep : ep.substr(scheme_end + 3);
  }

  const S3Options& options() const { return options_; }

  const S3Role* FindRole(std::string_view arn) const {
    for (const auto& r : options_.roles) {
      if (r.role_arn == arn) return &r;
    }
    return nullptr;
  }

  // Sends one S3 request, retrying retryable failures with exponential backoff and full jitter. When
  // `maybe_acted` is given, it is set when an attempt before the answer returned (or every attempt, on failure)
  // failed in a way that leaves open whether S3 carried the request out: the caller of a request that is not
  // idempotent must then look for what such an attempt may have done.
  Result<S3Response> Send(const AwsCredentials& creds, const S3Request& req, bool* maybe_acted = nullptr) {
    if (maybe_acted != nullptr) *maybe_acted = false;
    std::string last_error;
    std::string payload_hash = Sha256Hex(req.body);
    auto start = std::chrono::steady_clock::now();
    const int attempts = req.max_attempts > 0 ? req.max_attempts : options_.max_attempts;
    int attempt = 1;
    for (;; ++attempt) {
      if (attempt > attempts && std::chrono::steady_clock::now() - start >= req.retry_for) break;
      if (attempt > 1) Backoff(attempt);
      S3Response resp;
      std::string curl_error;
      CURLcode rc = SendOnce(creds, req, payload_hash, &resp, &curl_error);
      if (rc != CURLE_OK) {
        last_error = curl_error;
        if (maybe_acted != nullptr && MaybeActed(rc)) *maybe_acted = true;
        spdlog::warn("event=s3_retry method={} bucket={} key={} attempt={} reason=\"{}\"", req.method, req.bucket,
                     req.key, attempt, curl_error);
        continue;
      }
      if (Retryable(req, resp)) {
        last_error = ErrorText(resp);
        if (maybe_acted != nullptr && MaybeActed(resp)) *maybe_acted = true;
        spdlog::warn("event=s3_retry method={} bucket={} key={} attempt={} reason=\"{}\"", req.method, req.bucket,
                     req.key, attempt, last_error);
        continue;
      }
      return resp;
    }
    return Status::Unavailable("S3 " + req.method + " s3://" + req.bucket + "/" + req.key + " failed after " +
                               std::to_string(attempt - 1) + " attempts: " + last_error);
  }

 private:
  void Backoff(int attempt) {
    int64_t cap = std::min<int64_t>(5000, static_cast<int64_t>(options_.base_backoff_ms) << std::min(attempt - 2, 16));
    thread_local std::mt19937 rng(std::random_device{}());
    int64_t ms = std::uniform_int_distribution<int64_t>(cap / 2, cap)(rng);
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  }

  CURLcode SendOnce(const AwsCredentials& creds, const S3Request& r, const std::string& payload_hash, S3Response* resp,
                    std::string* error) {
    SigV4Request req;
    req.method = r.method;
    std::string host = options_.virtual_hosted ? r.bucket + "." + host_ : host_;
    std::string path = options_.virtual_hosted ? "/" + r.key : "/" + r.bucket + (r.key.empty() ? "" : "/" + r.key);
    req.path = path;
    req.query = r.query;
    req.headers.emplace_back("host", host);
    for (const auto& h : r.headers) req.headers.push_back(h);
    req.payload_sha256 = payload_hash;
    SignS3Request(
        &req, creds, options_.region,
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
            .count());
    std::string url = scheme_ + "://" + host + UriEncode(path, false);
    if (!r.query.empty()) {
      url.push_back('?');
      for (size_t i = 0; i < r.query.size(); ++i) {
        if (i) url.push_back('&');
        url += UriEncode(r.query[i].first, true) + "=" + UriEncode(r.query[i].second, true);
      }
    }
    thread_local CURL* curl = curl_easy_init();
    if (curl == nullptr) {
      *error = "cannot initialise libcurl";
      return CURLE_FAILED_INIT;
    }
    curl_easy_reset(curl);
    struct curl_slist* headers = nullptr;
    for (const auto& [name, value] : req.headers) {
      if (name == "host") continue;  // libcurl sets Host from the URL
      headers = curl_slist_append(headers, (name + ": " + value).c_str());
    }
    headers = curl_slist_append(headers, "Expect:");
    ReadState read{r.body, 0};
    curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT, static_cast<long>(options_.timeout_seconds));
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, 10L);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, WriteBody);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &resp->body);
    curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, WriteHeader);
    curl_easy_setopt(curl, CURLOPT_HEADERDATA, &resp->headers);
    if (r.method == "HEAD") {
      curl_easy_setopt(curl, CURLOPT_NOBODY, 1L);
    } else if (r.method == "PUT" || r.method == "POST") {
      curl_easy_setopt(curl, CURLOPT_UPLOAD, 1L);
      curl_easy_setopt(curl, CURLOPT_READFUNCTION, ReadBody);
      curl_easy_setopt(curl, CURLOPT_READDATA, &read);
      curl_easy_setopt(curl, CURLOPT_INFILESIZE_LARGE, static_cast<curl_off_t>(r.body.size()));
      if (r.method == "POST") curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, "POST");
    } else if (r.method != "GET") {
      curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, r.method.c_str());
    }
    CURLcode rc = curl_easy_perform(curl);
    curl_slist_free_all(headers);
    if (rc != CURLE_OK) {
      *error = std::string("connection to ") + options_.endpoint + " failed: " + curl_easy_strerror(rc);
      return rc;
    }
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &resp->status);
    return CURLE_OK;
  }

  S3Options options_;
  std::string scheme_;
  std::string host_;
};

// Aborting a multipart upload (and listing the ones to abort) keeps retrying this long past max_attempts: an
// upload left behind is invisible but stored (and billed) until a bucket lifecycle rule removes it, so cleanup
// after a failure caused by an S3 outage waits for the endpoint to come back.
constexpr std::chrono::milliseconds kCleanupRetryFor{30000};
// Listing pages (S3 gives up to 1,000 entries a page) an abort sweep or a List reads before it gives up: far
// more than an export writes, and a bound on a server that keeps answering "truncated".
constexpr int kMaxListPages = 10000;

Params SseHeaders(const WriteContext& ctx) {
  return {{"x-amz-server-side-encryption", "aws:kms"}, {"x-amz-server-side-encryption-aws-kms-key-id", ctx.kms_key_id}};
}

Status SseError(const S3Response& r, const WriteContext& ctx, const std::string& what) {
  return Status::Unavailable(what + " was refused by S3 (" + ErrorText(r) + "); check that KMS key '" + ctx.kms_key_id +
                             "' exists and that role " + ctx.data_access_role_arn + " may use it");
}

std::string Uri(const std::string& bucket, const std::string& key) { return "s3://" + bucket + "/" + key; }

// Aborts the multipart uploads under `prefix` that `select` picks. The listing is paged with key and upload-id
// markers, so each upload is visited once: an upload that stays listed after its abort answered NoSuchUpload
// (gone already; treated as done) cannot make the sweep go round in circles, and a server whose pages do not
// advance stops it after kMaxListPages.
Status AbortUploads(S3Client* client, const AwsCredentials& creds, const std::string& bucket, const std::string& prefix,
                    const std::function<bool(const s3xml::ListedUpload&)>& select) {
  std::string key_marker;
  std::string id_marker;
  std::set<std::pair<std::string, std::string>> seen;
  for (int page = 0; page < kMaxListPages; ++page) {
    S3Request list{"GET", bucket, "", {{"uploads", ""}, {"prefix", prefix}}, {}, "", kCleanupRetryFor};
    if (!key_marker.empty()) list.query.emplace_back("key-marker", key_marker);
    if (!id_marker.empty()) list.query.emplace_back("upload-id-marker", id_marker);
    ASSIGN_OR_RETURN(S3Response r, client->Send(creds, list));
    if (r.status != 200) {
      return Status::Unavailable("ListMultipartUploads " + Uri(bucket, prefix) + ": " + ErrorText(r));
    }
    ASSIGN_OR_RETURN(s3xml::UploadListing listing, s3xml::ParseListMultipartUploads(r.body));
    bool advanced = false;
    for (const auto& u : listing.uploads) {
      if (!seen.emplace(u.key, u.upload_id).second) continue;
      advanced = true;
      if (!select(u)) continue;
      S3Request abort{"DELETE", bucket, u.key, {{"uploadId", u.upload_id}}, {}, "", kCleanupRetryFor};
      ASSIGN_OR_RETURN(S3Response a, client->Send(creds, abort));
      if (a.status != 204 && a.status != 200 && a.status != 404) {
        return Status::Unavailable("AbortMultipartUpload " + Uri(bucket, u.key) + ": " + ErrorText(a));
      }
      spdlog::info("event=s3_upload_aborted bucket={} key={} already_gone={}", bucket, u.key, a.status == 404);
    }
    if (!listing.is_truncated) return Status::Ok();
    if (!advanced) {
      return Status::Unavailable("ListMultipartUploads " + Uri(bucket, prefix) +
                                 " answered the same uploads again; stopped the abort sweep");
    }
    key_marker = listing.next_key_marker.empty() ? listing.uploads.back().key : listing.next_key_marker;
    id_marker = listing.next_key_marker.empty() ? listing.uploads.back().upload_id : listing.next_upload_id_marker;
  }
  return Status::Unavailable("ListMultipartUploads " + Uri(bucket, prefix) + " was still truncated after " +
                             std::to_string(kMaxListPages) + " pages; stopped the abort sweep");
}

class S3Writer final : public ObjectWriter {
 public:
  S3Writer(S3Client* client, const S3Role* role, WriteContext ctx, std::string bucket, std::string key)
      : client_(client), role_(role), ctx_(std::move(ctx)), bucket_(std::move(bucket)), key_(std::move(key)) {}
  ~S3Writer() override { Abort(); }

  Status Append(std::string_view bytes) override {
    if (closed_) return Status::Internal("write to a closed object");
    buffer_.append(bytes);
    if (buffer_.size() >= client_->options().part_bytes) return UploadPart();
    return Status::Ok();
  }

  Status Commit() override {
    if (closed_) return Status::Internal("commit of a closed object");
    if (upload_id_.empty()) {
      ASSIGN_OR_RETURN(S3Response r,
                       client_->Send(role_->credentials, {"PUT", bucket_, key_, {}, SseHeaders(ctx_), buffer_}));
      if (r.status != 200) return SseError(r, ctx_, "PutObject " + Uri(bucket_, key_));
      closed_ = true;
      buffer_.clear();
      return Status::Ok();
    }
    if (!buffer_.empty() || parts_.empty()) RETURN_IF_ERROR(UploadPart());
    if (sweep_other_uploads_) {
      // Before the object becomes visible: a job must not end COMPLETED with an upload of its own left open.
      Status swept = AbortOtherUploads();
      if (!swept.ok()) {
        const std::string why = "the uploads its first attempts may have opened could not be aborted: ";
        return Status::Unavailable("CreateMultipartUpload " + Uri(bucket_, key_) + " was retried, and " + why +
                                   swept.message());
      }
    }
    std::string xml = "<CompleteMultipartUpload>";
    for (size_t i = 0; i < parts_.size(); ++i) {
      xml += "<Part><PartNumber>" + std::to_string(i + 1) + "</PartNumber><ETag>" + parts_[i] + "</ETag></Part>";
    }
    xml += "</CompleteMultipartUpload>";
    S3Request complete{"POST", bucket_, key_, {{"uploadId", upload_id_}}, {{"content-type", "application/xml"}}, xml};
    complete.error_in_200 = true;
    bool retried = false;
    ASSIGN_OR_RETURN(S3Response r, client_->Send(role_->credentials, complete, &retried));
    if (r.status == 404 && retried && ErrorCode(r) == "NoSuchUpload") {
      // A retried Complete whose first attempt succeeded: the object is there if HEAD finds it.
      ASSIGN_OR_RETURN(S3Response head, client_->Send(role_->credentials, {"HEAD", bucket_, key_}));
      if (head.status != 200) {
        return Status::Unavailable("CompleteMultipartUpload " + Uri(bucket_, key_) + " failed: " + ErrorText(r));
      }
    } else if (r.status != 200) {
      return Status::Unavailable("CompleteMultipartUpload " + Uri(bucket_, key_) + " failed: " + ErrorText(r));
    } else if (auto done = s3xml::ParseCompleteMultipartUpload(r.body); !done.ok()) {
      return Status::Unavailable("CompleteMultipartUpload " + Uri(bucket_, key_) +
                                 " failed: " + done.status().message());
    }
    closed_ = true;
    upload_id_.clear();
    return Status::Ok();
  }

  void Abort() override {
    if (closed_) return;
    closed_ = true;
    buffer_.clear();
    if (!upload_id_.empty()) {
      S3Request abort{"DELETE", bucket_, key_, {{"uploadId", upload_id_}}, {}, "", kCleanupRetryFor};
      auto r = client_->Send(role_->credentials, abort);
      if (!r.ok() || (r->status != 204 && r->status != 200 && r->status != 404)) {
        spdlog::warn("event=s3_abort_failed bucket={} key={} reason=\"{}\"", bucket_, key_,
                     r.ok() ? ErrorText(*r) : r.status().message());
      }
      upload_id_.clear();
    }
    if (sweep_other_uploads_) {
      sweep_other_uploads_ = false;
      Status swept = AbortOtherUploads();
      if (!swept.ok()) {
        spdlog::warn("event=s3_abort_failed bucket={} key={} reason=\"{}\"", bucket_, key_, swept.message());
      }
    }
  }

 private:
  // CreateMultipartUpload is not idempotent: an attempt whose answer was lost (a timeout, a dropped connection)
  // may have opened an upload that nobody would ever complete or abort, and the retry opens another. Such a
  // create leaves sweep_other_uploads_ set, and the key's other uploads are aborted before Complete (or on Abort).
  Status CreateUpload() {
    bool maybe_acted = false;
    auto r = client_->Send(role_->credentials, {"POST", bucket_, key_, {{"uploads", ""}}, SseHeaders(ctx_), ""},
                           &maybe_acted);
    if (maybe_acted) sweep_other_uploads_ = true;
    Status st;
    if (!r.ok()) {
      st = r.status();
    } else if (r->status != 200) {
      st = SseError(*r, ctx_, "CreateMultipartUpload " + Uri(bucket_, key_));
    } else if (auto id = s3xml::ParseInitiateMultipartUpload(r->body); !id.ok()) {
      st = Status::Unavailable("CreateMultipartUpload " + Uri(bucket_, key_) + ": " + id.status().message());
    } else {
      upload_id_ = std::move(id).value();
    }
    if (!st.ok() && sweep_other_uploads_) {
      sweep_other_uploads_ = false;
      Status swept = AbortOtherUploads();
      if (!swept.ok()) {
        spdlog::warn("event=s3_abort_failed bucket={} key={} reason=\"{}\"", bucket_, key_, swept.message());
      }
    }
    return st;
  }

  // Aborts every upload of exactly this key except the writer's own (ListMultipartUploads lists by prefix, so
  // "k" would also list "k.1"; those belong to other writers).
  Status AbortOtherUploads() {
    RETURN_IF_ERROR(AbortUploads(client_, role_->credentials, bucket_, key_, [this](const s3xml::ListedUpload& u) {
      return u.key == key_ && u.upload_id != upload_id_;
    }));
    sweep_other_uploads_ = false;
    return Status::Ok();
  }

  Status UploadPart() {
    if (upload_id_.empty()) RETURN_IF_ERROR(CreateUpload());
    if (parts_.size() >= 10000) {
      return Status::Invalid(Uri(bucket_, key_) +
                             " would need more than 10,000 parts; raise "
                             "--s3-part-bytes or lower --export-file-bytes");
    }
    std::string part_number = std::to_string(parts_.size() + 1);
    ASSIGN_OR_RETURN(
        S3Response r,
        client_->Send(role_->credentials,
                      {"PUT", bucket_, key_, {{"partNumber", part_number}, {"uploadId", upload_id_}}, {}, buffer_}));
    if (r.status != 200 || r.headers["etag"].empty()) {
      return Status::Unavailable("UploadPart " + part_number + " of " + Uri(bucket_, key_) +
                                 " failed: " + ErrorText(r));
    }
    parts_.push_back(r.headers["etag"]);
    buffer_.clear();
    return Status::Ok();
  }

  S3Client* client_;
  const S3Role* role_;
  WriteContext ctx_;
  std::string bucket_;
  std::string key_;
  std::string buffer_;
  std::string upload_id_;
  std::vector<std::string> parts_;  // ETags in part order
  bool sweep_other_uploads_ = false;
  bool closed_ = false;
};

// Ranged GETs of one object. Each read carries If-Match with the ETag seen at Open(), so a read of an object
// replaced since then fails (412) instead of returning bytes of the new one.
class S3Reader final : public ObjectReader {
 public:
  S3Reader(S3Client* client, const S3Role* role, std::string bucket, std::string key, int64_t size, std::string etag)
      : client_(client),
        role_(role),
        bucket_(std::move(bucket)),
        key_(std::move(key)),
        size_(size),
        etag_(std::move(etag)) {}

  int64_t size() const override { return size_; }

  Result<size_t> ReadAt(int64_t offset, char* buf, size_t len) const override {
    if (offset < 0) return Status::Invalid("read of " + Uri(bucket_, key_) + " at a negative offset");
    if (offset >= size_ || len == 0) return size_t{0};
    const int64_t last = offset + static_cast<int64_t>(std::min<uint64_t>(len, size_ - offset)) - 1;
    const std::string range = std::to_string(offset) + "-" + std::to_string(last);
    S3Request get{"GET", bucket_, key_, {}, {{"range", "bytes=" + range}}, ""};
    if (!etag_.empty()) get.headers.emplace_back("if-match", etag_);
    ASSIGN_OR_RETURN(S3Response r, client_->Send(role_->credentials, get));
    const size_t want = static_cast<size_t>(last - offset + 1);
    std::string_view got;
    if (r.status == 206) {
      got = r.body;
    } else if (r.status == 200 && static_cast<int64_t>(r.body.size()) == size_) {
      got = std::string_view(r.body).substr(static_cast<size_t>(offset), want);  // the server ignored Range
    } else if (r.status == 412 || r.status == 416) {
      return Status::Conflict(Uri(bucket_, key_) + " was replaced since it was opened; open it again");
    } else if (r.status == 404) {
      return Status::NotFound(Uri(bucket_, key_) + " was deleted since it was opened");
    } else {
      return Status::Unavailable("GetObject " + Uri(bucket_, key_) + " bytes " + range + ": " + ErrorText(r));
    }
    if (got.size() != want) {
      return Status::Unavailable("GetObject " + Uri(bucket_, key_) + " bytes " + range + " answered " +
                                 std::to_string(got.size()) + " bytes");
    }
    std::memcpy(buf, got.data(), want);
    return want;
  }

 private:
  S3Client* client_;
  const S3Role* role_;
  std::string bucket_;
  std::string key_;
  int64_t size_;
  std::string etag_;
};

bool BucketAllowed(const S3Role& role, const std::string& bucket) {
  for (const auto& pattern : role.buckets) {
    if (pattern == "*" || pattern == bucket) return true;
    if (pattern.ends_with("*") && bucket.starts_with(pattern.substr(0, pattern.size() - 1))) return true;
  }
  return false;
}

class S3Sink final : public ObjectSink {
 public:
  explicit S3Sink(S3Options options) : client_(std::move(options)) {}

  Result<const S3Role*> Role(const WriteContext& ctx) {
    const S3Role* role = client_.FindRole(ctx.data_access_role_arn);
    if (role == nullptr) {
      return Status::Invalid("DataAccessRoleArn '" + ctx.data_access_role_arn +
                             "' is not a role this server may assume; add it to the --s3-roles file");
    }
    return role;
  }

  Status CheckWritable(const WriteContext& ctx, const std::string& bucket) override {
    ASSIGN_OR_RETURN(const S3Role* role, Role(ctx));
    if (!BucketAllowed(*role, bucket)) {
      return Status::Invalid("Role " + role->role_arn + " may not write to bucket '" + bucket +
                             "'; its buckets are listed in the --s3-roles file");
    }
    // Two attempts only: a kick-off answers quickly even when S3 is down.
    S3Request head{"HEAD", bucket};
    head.max_attempts = 2;
    auto r = client_.Send(role->credentials, head);
    if (!r.ok()) return Status::Invalid("S3 bucket '" + bucket + "' cannot be reached: " + r.status().message());
    if (r->status == 404) return Status::Invalid("S3 bucket '" + bucket + "' does not exist");
    if (r->status == 403) {
      return Status::Invalid("S3 refused access to bucket '" + bucket + "' with the credentials of role " +
                             role->role_arn + " (HTTP 403); check the role's access key and secret");
    }
    if (r->status != 200) return Status::Invalid("S3 bucket '" + bucket + "' check failed: " + ErrorText(*r));
    return Status::Ok();
  }

  Result<std::unique_ptr<ObjectWriter>> Create(const WriteContext& ctx, const std::string& bucket,
                                               const std::string& key) override {
    ASSIGN_OR_RETURN(const S3Role* role, Role(ctx));
    return std::unique_ptr<ObjectWriter>(std::make_unique<S3Writer>(&client_, role, ctx, bucket, key));
  }

  Result<std::vector<ObjectInfo>> List(const WriteContext& ctx, const std::string& bucket,
                                       const std::string& prefix) override {
    ASSIGN_OR_RETURN(const S3Role* role, Role(ctx));
    std::vector<ObjectInfo> out;
    std::string token;
    for (int page = 0; page < kMaxListPages; ++page) {
      S3Request list{"GET", bucket, "", {{"list-type", "2"}, {"prefix", prefix}}};
      if (!token.empty()) list.query.emplace_back("continuation-token", token);
      ASSIGN_OR_RETURN(S3Response r, client_.Send(role->credentials, list));
      if (r.status != 200) return Status::Unavailable("ListObjectsV2 " + Uri(bucket, prefix) + ": " + ErrorText(r));
      ASSIGN_OR_RETURN(s3xml::ObjectListing listing, s3xml::ParseListObjects(r.body));
      for (auto& o : listing.objects) out.push_back({std::move(o.key), o.size});
      if (!listing.is_truncated) return out;
      if (listing.next_continuation_token.empty() || listing.next_continuation_token == token) {
        return Status::Unavailable("ListObjectsV2 " + Uri(bucket, prefix) +
                                   " is truncated but gives no new NextContinuationToken");
      }
      token = std::move(listing.next_continuation_token);
    }
    return Status::Unavailable("ListObjectsV2 " + Uri(bucket, prefix) + " was still truncated after " +
                               std::to_string(kMaxListPages) + " pages");
  }

  Status Delete(const WriteContext& ctx, const std::string& bucket, const std::string& key) override {
    ASSIGN_OR_RETURN(const S3Role* role, Role(ctx));
    ASSIGN_OR_RETURN(S3Response r, client_.Send(role->credentials, {"DELETE", bucket, key}));
    if (r.status != 204 && r.status != 200 && r.status != 404) {
      return Status::Unavailable("DeleteObject " + Uri(bucket, key) + ": " + ErrorText(r));
    }
    return Status::Ok();
  }

  Status AbortIncomplete(const WriteContext& ctx, const std::string& bucket, const std::string& prefix) override {
    ASSIGN_OR_RETURN(const S3Role* role, Role(ctx));
    return AbortUploads(&client_, role->credentials, bucket, prefix, [](const s3xml::ListedUpload&) { return true; });
  }

  Result<ObjectInfo> Stat(const WriteContext& ctx, const std::string& bucket, const std::string& key) override {
    ASSIGN_OR_RETURN(const S3Role* role, Role(ctx));
    ASSIGN_OR_RETURN(auto head, Head(*role, bucket, key));
    return ObjectInfo{key, head.first};
  }

  Result<std::unique_ptr<ObjectReader>> Open(const WriteContext& ctx, const std::string& bucket,
                                             const std::string& key) override {
    ASSIGN_OR_RETURN(const S3Role* role, Role(ctx));
    ASSIGN_OR_RETURN(auto head, Head(*role, bucket, key));
    return std::unique_ptr<ObjectReader>(
        std::make_unique<S3Reader>(&client_, role, bucket, key, head.first, std::move(head.second)));
  }

 private:
  // HeadObject: (size, ETag) of the object, kNotFound when there is none.
  Result<std::pair<int64_t, std::string>> Head(const S3Role& role, const std::string& bucket, const std::string& key) {
    if (key.empty()) return Status::Invalid("an object key is required");
    ASSIGN_OR_RETURN(S3Response r, client_.Send(role.credentials, {"HEAD", bucket, key}));
    if (r.status == 404) return Status::NotFound(Uri(bucket, key) + " does not exist");
    if (r.status == 403) {
      return Status::Unavailable("S3 refused access to " + Uri(bucket, key) + " with the credentials of role " +
                                 role.role_arn + " (HTTP 403)");
    }
    if (r.status != 200) return Status::Unavailable("HeadObject " + Uri(bucket, key) + ": " + ErrorText(r));
    const std::string& length = r.headers["content-length"];
    int64_t size = -1;
    auto [end, ec] = std::from_chars(length.data(), length.data() + length.size(), size);
    if (length.empty() || ec != std::errc() || end != length.data() + length.size() || size < 0) {
      return Status::Unavailable("HeadObject " + Uri(bucket, key) + " answered without a valid Content-Length");
    }
    return std::make_pair(size, r.headers["etag"]);
  }

  S3Client client_;
};

}  // namespace

Result<std::vector<S3Role>> LoadS3Roles(const std::string& path) {
  std::ifstream in(path);
  if (!in) return Status::Invalid("cannot read the S3 roles file " + path);
  nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("roles") || !j["roles"].is_array()) {
    return Status::Invalid(path +
                           ": expected {\"roles\": [{\"roleArn\", \"accessKeyId\", \"secretAccessKey\", "
                           "\"sessionToken\"?, \"buckets\": [...]}]}");
  }
  std::vector<S3Role> roles;
  for (const auto& r : j["roles"]) {
    auto str = [&](const char* k) { return r.contains(k) && r[k].is_string() ? r[k].get<std::string>() : ""; };
    S3Role role;
    role.role_arn = str("roleArn");
    role.credentials.access_key_id = str("accessKeyId");
    role.credentials.secret_access_key = str("secretAccessKey");
    role.credentials.session_token = str("sessionToken");
    if (r.contains("buckets") && r["buckets"].is_array()) {
      for (const auto& b : r["buckets"]) {
        if (b.is_string()) role.buckets.push_back(b.get<std::string>());
      }
    }
    if (role.role_arn.empty() || role.credentials.access_key_id.empty() || role.credentials.secret_access_key.empty() ||
        role.buckets.empty()) {
      return Status::Invalid(path + ": every role needs roleArn, accessKeyId, secretAccessKey and buckets");
    }
    roles.push_back(std::move(role));
  }
  return roles;
}

Result<std::unique_ptr<ObjectSink>> NewS3Sink(S3Options options) {
  static std::once_flag curl_init;
  std::call_once(curl_init, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  if (options.part_bytes < (5u << 20)) return Status::Invalid("--s3-part-bytes must be at least 5 MiB (5242880)");
  if (options.endpoint.empty()) return Status::Invalid("an S3 endpoint is required");
  return std::unique_ptr<ObjectSink>(std::make_unique<S3Sink>(std::move(options)));
}

}  // namespace fhirlake::sink
