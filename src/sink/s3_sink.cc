// S3 sink implementation. Every request goes through S3Client::Send, which signs, sends with libcurl, and
// retries what S3 says may be retried. Secrets never leave this file: messages carry the S3 error code and
// message, the bucket/key, the role ARN and the KMS key id, never credentials or signatures.
#include "sink/s3_sink.h"

#include <curl/curl.h>
#include <spdlog/spdlog.h>

#include <cctype>
#include <chrono>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

namespace fhirlake::sink {
namespace {

struct S3Response {
  long status = 0;
  std::string body;
  std::map<std::string, std::string> headers;  // lower-case names
};

// The text of the first <tag>...</tag> after `from`, with XML entities for quotes/ampersands decoded.
std::string XmlTag(std::string_view xml, std::string_view tag, size_t* from = nullptr) {
  std::string open = "<" + std::string(tag) + ">";
  std::string close = "</" + std::string(tag) + ">";
  size_t start = xml.find(open, from ? *from : 0);
  if (start == std::string_view::npos) return "";
  start += open.size();
  size_t end = xml.find(close, start);
  if (end == std::string_view::npos) return "";
  if (from) *from = end + close.size();
  std::string out(xml.substr(start, end - start));
  for (auto [entity, ch] : std::vector<std::pair<std::string, std::string>>{
           {"&quot;", "\""}, {"&apos;", "'"}, {"&lt;", "<"}, {"&gt;", ">"}, {"&amp;", "&"}}) {
    for (size_t p = out.find(entity); p != std::string::npos; p = out.find(entity, p + ch.size())) {
      out.replace(p, entity.size(), ch);
    }
  }
  return out;
}

std::string ErrorText(const S3Response& r) {
  std::string code = XmlTag(r.body, "Code");
  std::string message = XmlTag(r.body, "Message");
  std::string out = "HTTP " + std::to_string(r.status);
  if (!code.empty()) out += " " + code;
  if (!message.empty()) out += ": " + message;
  return out;
}

bool Retryable(const S3Response& r) {
  if (r.status == 429 || r.status >= 500) return true;
  std::string code = XmlTag(r.body, "Code");
  return code == "SlowDown" || code == "RequestTimeout" || code == "InternalError" || code == "ServiceUnavailable";
}

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

  // Sends one S3 request, retrying retryable failures with exponential backoff and full jitter: at least
  // max_attempts attempts, and more until `retry_for` has passed (cleanup requests use it to outlast an outage).
  Result<S3Response> Send(const AwsCredentials& creds, const std::string& method, const std::string& bucket,
                          const std::string& key, const std::vector<std::pair<std::string, std::string>>& query,
                          const std::vector<std::pair<std::string, std::string>>& extra_headers, std::string_view body,
                          std::chrono::milliseconds retry_for = {}, int max_attempts = 0) {
    std::string last_error;
    std::string payload_hash = Sha256Hex(body);
    auto start = std::chrono::steady_clock::now();
    int attempt = 1;
    for (;; ++attempt) {
      const int attempts = max_attempts > 0 ? max_attempts : options_.max_attempts;
      if (attempt > attempts && std::chrono::steady_clock::now() - start >= retry_for) break;
      if (attempt > 1) Backoff(attempt);
      S3Response resp;
      std::string curl_error;
      if (!SendOnce(creds, method, bucket, key, query, extra_headers, body, payload_hash, &resp, &curl_error)) {
        last_error = curl_error;
        spdlog::warn("event=s3_retry method={} bucket={} key={} attempt={} reason=\"{}\"", method, bucket, key, attempt,
                     curl_error);
        continue;
      }
      if (Retryable(resp)) {
        last_error = ErrorText(resp);
        spdlog::warn("event=s3_retry method={} bucket={} key={} attempt={} reason=\"{}\"", method, bucket, key, attempt,
                     last_error);
        continue;
      }
      return resp;
    }
    return Status::Unavailable("S3 " + method + " s3://" + bucket + "/" + key + " failed after " +
                               std::to_string(attempt - 1) + " attempts: " + last_error);
  }

 private:
  void Backoff(int attempt) {
    int64_t cap = std::min<int64_t>(5000, static_cast<int64_t>(options_.base_backoff_ms) << std::min(attempt - 2, 16));
    thread_local std::mt19937 rng(std::random_device{}());
    int64_t ms = std::uniform_int_distribution<int64_t>(cap / 2, cap)(rng);
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  }

  bool SendOnce(const AwsCredentials& creds, const std::string& method, const std::string& bucket,
                const std::string& key, const std::vector<std::pair<std::string, std::string>>& query,
                const std::vector<std::pair<std::string, std::string>>& extra_headers, std::string_view body,
                const std::string& payload_hash, S3Response* resp, std::string* error) {
    SigV4Request req;
    req.method = method;
    std::string host = options_.virtual_hosted ? bucket + "." + host_ : host_;
    std::string path = options_.virtual_hosted ? "/" + key : "/" + bucket + (key.empty() ? "" : "/" + key);
    req.path = path;
    req.query = query;
    req.headers.emplace_back("host", host);
    for (const auto& h : extra_headers) req.headers.push_back(h);
    req.payload_sha256 = payload_hash;
    SignS3Request(
        &req, creds, options_.region,
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
            .count());
    std::string url = scheme_ + "://" + host + UriEncode(path, false);
    if (!query.empty()) {
      url.push_back('?');
      for (size_t i = 0; i < query.size(); ++i) {
        if (i) url.push_back('&');
        url += UriEncode(query[i].first, true) + "=" + UriEncode(query[i].second, true);
      }
    }
    thread_local CURL* curl = curl_easy_init();
    if (curl == nullptr) {
      *error = "cannot initialise libcurl";
      return false;
    }
    curl_easy_reset(curl);
    struct curl_slist* headers = nullptr;
    for (const auto& [name, value] : req.headers) {
      if (name == "host") continue;  // libcurl sets Host from the URL
      headers = curl_slist_append(headers, (name + ": " + value).c_str());
    }
    headers = curl_slist_append(headers, "Expect:");
    ReadState read{body, 0};
    curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT, static_cast<long>(options_.timeout_seconds));
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, 10L);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, WriteBody);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &resp->body);
    curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, WriteHeader);
    curl_easy_setopt(curl, CURLOPT_HEADERDATA, &resp->headers);
    if (method == "HEAD") {
      curl_easy_setopt(curl, CURLOPT_NOBODY, 1L);
    } else if (method == "PUT" || method == "POST") {
      curl_easy_setopt(curl, CURLOPT_UPLOAD, 1L);
      curl_easy_setopt(curl, CURLOPT_READFUNCTION, ReadBody);
      curl_easy_setopt(curl, CURLOPT_READDATA, &read);
      curl_easy_setopt(curl, CURLOPT_INFILESIZE_LARGE, static_cast<curl_off_t>(body.size()));
      if (method == "POST") curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, "POST");
    } else if (method != "GET") {
      curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method.c_str());
    }
    CURLcode rc = curl_easy_perform(curl);
    curl_slist_free_all(headers);
    if (rc != CURLE_OK) {
      *error = std::string("connection to ") + options_.endpoint + " failed: " + curl_easy_strerror(rc);
      return false;
    }
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &resp->status);
    return true;
  }

  S3Options options_;
  std::string scheme_;
  std::string host_;
};

// Aborting a multipart upload (and listing the ones to abort) keeps retrying this long past max_attempts: an
// upload left behind is invisible but stored (and billed) until a bucket lifecycle rule removes it, so cleanup
// after a failure caused by an S3 outage waits for the endpoint to come back.
constexpr std::chrono::milliseconds kCleanupRetryFor{30000};

std::vector<std::pair<std::string, std::string>> SseHeaders(const WriteContext& ctx) {
  return {{"x-amz-server-side-encryption", "aws:kms"}, {"x-amz-server-side-encryption-aws-kms-key-id", ctx.kms_key_id}};
}

Status SseError(const S3Response& r, const WriteContext& ctx, const std::string& what) {
  return Status::Unavailable(what + " was refused by S3 (" + ErrorText(r) + "); check that KMS key '" + ctx.kms_key_id +
                             "' exists and that role " + ctx.data_access_role_arn + " may use it");
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
      auto sse = SseHeaders(ctx_);
      ASSIGN_OR_RETURN(S3Response r, client_->Send(role_->credentials, "PUT", bucket_, key_, {}, sse, buffer_));
      if (r.status != 200) return SseError(r, ctx_, "PutObject s3://" + bucket_ + "/" + key_);
      closed_ = true;
      buffer_.clear();
      return Status::Ok();
    }
    if (!buffer_.empty() || parts_.empty()) RETURN_IF_ERROR(UploadPart());
    std::string xml = "<CompleteMultipartUpload>";
    for (size_t i = 0; i < parts_.size(); ++i) {
      xml += "<Part><PartNumber>" + std::to_string(i + 1) + "</PartNumber><ETag>" + parts_[i] + "</ETag></Part>";
    }
    xml += "</CompleteMultipartUpload>";
    ASSIGN_OR_RETURN(S3Response r, client_->Send(role_->credentials, "POST", bucket_, key_, {{"uploadId", upload_id_}},
                                                 {{"content-type", "application/xml"}}, xml));
    if (r.status == 404 && XmlTag(r.body, "Code") == "NoSuchUpload") {
      // A retried Complete whose first attempt succeeded: the object is there if HEAD finds it.
      ASSIGN_OR_RETURN(S3Response head, client_->Send(role_->credentials, "HEAD", bucket_, key_, {}, {}, ""));
      if (head.status == 200) r.status = 200;
    }
    if (r.status != 200 || r.body.find("<Error>") != std::string::npos) {
      return Status::Unavailable("CompleteMultipartUpload s3://" + bucket_ + "/" + key_ + " failed: " + ErrorText(r));
    }
    closed_ = true;
    upload_id_.clear();
    return Status::Ok();
  }

  void Abort() override {
    if (closed_) return;
    closed_ = true;
    buffer_.clear();
    if (upload_id_.empty()) return;
    auto r = client_->Send(role_->credentials, "DELETE", bucket_, key_, {{"uploadId", upload_id_}}, {}, "",
                           kCleanupRetryFor);
    if (!r.ok() || (r->status != 204 && r->status != 200 && r->status != 404)) {
      spdlog::warn("event=s3_abort_failed bucket={} key={} reason=\"{}\"", bucket_, key_,
                   r.ok() ? ErrorText(*r) : r.status().message());
    }
    upload_id_.clear();
  }

 private:
  Status UploadPart() {
    if (upload_id_.empty()) {
      ASSIGN_OR_RETURN(S3Response r, client_->Send(role_->credentials, "POST", bucket_, key_, {{"uploads", ""}},
                                                   SseHeaders(ctx_), ""));
      if (r.status != 200) return SseError(r, ctx_, "CreateMultipartUpload s3://" + bucket_ + "/" + key_);
      upload_id_ = XmlTag(r.body, "UploadId");
      if (upload_id_.empty()) return Status::Unavailable("CreateMultipartUpload answered without an UploadId");
    }
    if (parts_.size() >= 10000) {
      return Status::Invalid("s3://" + bucket_ + "/" + key_ +
                             " would need more than 10,000 parts; raise "
                             "--s3-part-bytes or lower --export-file-bytes");
    }
    std::string part_number = std::to_string(parts_.size() + 1);
    ASSIGN_OR_RETURN(S3Response r, client_->Send(role_->credentials, "PUT", bucket_, key_,
                                                 {{"partNumber", part_number}, {"uploadId", upload_id_}}, {}, buffer_));
    if (r.status != 200) {
      return Status::Unavailable("UploadPart " + part_number + " of s3://" + bucket_ + "/" + key_ +
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
  bool closed_ = false;
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
    auto r = client_.Send(role->credentials, "HEAD", bucket, "", {}, {}, "", {}, 2);
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
    while (true) {
      std::vector<std::pair<std::string, std::string>> q{{"list-type", "2"}, {"prefix", prefix}};
      if (!token.empty()) q.emplace_back("continuation-token", token);
      ASSIGN_OR_RETURN(S3Response r, client_.Send(role->credentials, "GET", bucket, "", q, {}, ""));
      if (r.status != 200)
        return Status::Unavailable("ListObjectsV2 s3://" + bucket + "/" + prefix + ": " + ErrorText(r));
      size_t pos = 0;
      while (true) {
        std::string contents = XmlTag(r.body, "Contents", &pos);
        if (contents.empty()) break;
        out.push_back({XmlTag(contents, "Key"), std::atoll(XmlTag(contents, "Size").c_str())});
      }
      if (XmlTag(r.body, "IsTruncated") != "true") break;
      token = XmlTag(r.body, "NextContinuationToken");
      if (token.empty()) break;
    }
    return out;
  }

  Status Delete(const WriteContext& ctx, const std::string& bucket, const std::string& key) override {
    ASSIGN_OR_RETURN(const S3Role* role, Role(ctx));
    ASSIGN_OR_RETURN(S3Response r, client_.Send(role->credentials, "DELETE", bucket, key, {}, {}, ""));
    if (r.status != 204 && r.status != 200 && r.status != 404) {
      return Status::Unavailable("DeleteObject s3://" + bucket + "/" + key + ": " + ErrorText(r));
    }
    return Status::Ok();
  }

  Status AbortIncomplete(const WriteContext& ctx, const std::string& bucket, const std::string& prefix) override {
    ASSIGN_OR_RETURN(const S3Role* role, Role(ctx));
    while (true) {
      ASSIGN_OR_RETURN(S3Response r, client_.Send(role->credentials, "GET", bucket, "",
                                                  {{"uploads", ""}, {"prefix", prefix}}, {}, "", kCleanupRetryFor));
      if (r.status != 200) {
        return Status::Unavailable("ListMultipartUploads s3://" + bucket + "/" + prefix + ": " + ErrorText(r));
      }
      size_t pos = 0;
      int aborted = 0;
      while (true) {
        std::string upload = XmlTag(r.body, "Upload", &pos);
        if (upload.empty()) break;
        std::string key = XmlTag(upload, "Key");
        std::string id = XmlTag(upload, "UploadId");
        ASSIGN_OR_RETURN(S3Response a, client_.Send(role->credentials, "DELETE", bucket, key, {{"uploadId", id}}, {},
                                                    "", kCleanupRetryFor));
        if (a.status != 204 && a.status != 200 && a.status != 404) {
          return Status::Unavailable("AbortMultipartUpload s3://" + bucket + "/" + key + ": " + ErrorText(a));
        }
        ++aborted;
        spdlog::info("event=s3_upload_aborted bucket={} key={}", bucket, key);
      }
      if (aborted == 0 || XmlTag(r.body, "IsTruncated") != "true") return Status::Ok();
    }
  }

 private:
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
