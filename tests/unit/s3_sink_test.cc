// Tests for the S3 sink (src/sink/s3_sink.h) over real HTTP.
//
// FakeS3 is a small S3 server on a loopback socket, written here so a test can make S3 misbehave in ways a real
// one will not on demand: answer a CreateMultipartUpload only after the client has timed out (the upload exists
// on the server but the client never learned its id), list uploads whose abort answers NoSuchUpload, cut a
// listing short. Every test asserts on the server's state afterwards (its uploads and objects), as a user of S3
// would see it.
//
// The RgwTest cases run against a real S3 server when FHIRLAKE_TEST_S3_ENDPOINT is set (with
// FHIRLAKE_TEST_S3_ACCESS_KEY, _SECRET_KEY, _BUCKET and _KMS_KEY); tests/e2e/test_export_s3.py starts Ceph RGW
// and runs them, and fails if they skip.
#include "sink/s3_sink.h"

#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "test_util.h"

namespace fhirlake::sink {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::Pair;

constexpr char kRole[] = "arn:aws:iam::111122223333:role/fhirlake-export";

std::string PercentDecode(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size()) {
      out.push_back(static_cast<char>(std::stoi(std::string(s.substr(i + 1, 2)), nullptr, 16)));
      i += 2;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

// XML text escaping as Go's encoding/xml (MinIO) does it: numeric references for quotes.
std::string XmlEscape(std::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&#34;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out.push_back(c);
    }
  }
  return out;
}

class FakeS3 {
 public:
  struct Request {
    std::string method;
    std::string bucket;
    std::string key;
    std::map<std::string, std::string> query;
    std::map<std::string, std::string> headers;  // lower-case names
    std::string body;
  };
  struct Response {
    int status = 200;
    std::vector<std::pair<std::string, std::string>> headers{};
    std::string body{};
    int delay_ms = 0;  // after the state changed, before the answer is sent
  };

  FakeS3() {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || ::listen(listen_fd_, 64) != 0) {
      throw std::runtime_error("FakeS3: cannot listen on loopback");
    }
    socklen_t len = sizeof(addr);
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    accept_thread_ = std::thread([this] { AcceptLoop(); });
  }

  ~FakeS3() {
    stopping_ = true;
    ::shutdown(listen_fd_, SHUT_RDWR);
    accept_thread_.join();
    ::close(listen_fd_);
    std::vector<std::thread> threads;
    {
      std::lock_guard<std::mutex> lock(mu_);
      threads.swap(conn_threads_);
    }
    for (auto& t : threads) t.join();
  }

  std::string endpoint() const { return "http://127.0.0.1:" + std::to_string(port_); }

  // Knobs; set before the sink sends anything.
  // Milliseconds to hold the answer to the n-th request (1-based) of S3 operation `op` ("CreateMultipartUpload",
  // "CompleteMultipartUpload"), after the server acted on it.
  void DelayAnswers(const std::string& op, std::function<int(int)> delay_ms) {
    std::lock_guard<std::mutex> lock(mu_);
    delays_[op] = std::move(delay_ms);
  }
  // The first `n` CompleteMultipartUpload requests answer "200 OK" with an <Error> body `code`, and do nothing.
  void FailCompletesIn200(int n, std::string code) {
    std::lock_guard<std::mutex> lock(mu_);
    completes_to_fail_ = n;
    complete_error_ = std::move(code);
  }
  // Entries per listing page (ListObjectsV2 and ListMultipartUploads), as a server cap below the client's.
  void SetPageSize(size_t n) {
    std::lock_guard<std::mutex> lock(mu_);
    page_size_ = n;
  }
  // Rewrites the body of every ListObjectsV2 answer.
  void FilterListObjects(std::function<std::string(std::string)> filter) {
    std::lock_guard<std::mutex> lock(mu_);
    list_objects_filter_ = std::move(filter);
  }

  // State.
  // An upload opened by someone else; `stuck`: it stays listed and its abort answers 404 NoSuchUpload (until
  // the 50th listing, so that a client that would go round forever ends and the test can report it).
  std::string AddUpload(const std::string& bucket, const std::string& key, bool stuck = false) {
    std::lock_guard<std::mutex> lock(mu_);
    std::string id = NewUploadId();
    uploads_[{bucket, key, id}] = {};
    if (stuck) stuck_.insert(id);
    return id;
  }
  // (key, uploadId) of the uploads in progress in `bucket`, stuck ones included.
  std::vector<std::pair<std::string, std::string>> Uploads(const std::string& bucket) {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<std::pair<std::string, std::string>> out;
    for (const auto& [k, parts] : uploads_) {
      if (std::get<0>(k) == bucket) out.emplace_back(std::get<1>(k), std::get<2>(k));
    }
    return out;
  }
  std::map<std::string, std::string> Objects(const std::string& bucket) {
    std::lock_guard<std::mutex> lock(mu_);
    std::map<std::string, std::string> out;
    for (const auto& [k, o] : objects_) {
      if (k.first == bucket) out[k.second] = o.bytes;
    }
    return out;
  }
  void PutObject(const std::string& bucket, const std::string& key, std::string bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    objects_[{bucket, key}] = {std::move(bytes), "\"v" + std::to_string(++versions_) + "\""};
  }
  void DeleteObject(const std::string& bucket, const std::string& key) {
    std::lock_guard<std::mutex> lock(mu_);
    objects_.erase({bucket, key});
  }
  // Requests answered, by S3 operation name ("CreateMultipartUpload", "ListMultipartUploads", ...).
  int Count(const std::string& op) {
    std::lock_guard<std::mutex> lock(mu_);
    return counts_[op];
  }

 private:
  struct Object {
    std::string bytes;
    std::string etag;
  };
  using UploadKey = std::tuple<std::string, std::string, std::string>;  // bucket, key, uploadId

  int Delay(const std::string& op, int n) {
    auto it = delays_.find(op);
    return it == delays_.end() ? 0 : it->second(n);
  }

  std::string NewUploadId() { return "upload-" + std::to_string(100000 + ++upload_seq_); }

  void AcceptLoop() {
    while (!stopping_) {
      int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) {
        if (stopping_) return;
        continue;
      }
      std::lock_guard<std::mutex> lock(mu_);
      conn_threads_.emplace_back([this, fd] { Serve(fd); });
    }
  }

  void Serve(int fd) {
    std::string data;
    char buf[65536];
    size_t header_end;
    while ((header_end = data.find("\r\n\r\n")) == std::string::npos) {
      ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
      if (n <= 0) return (void)::close(fd);
      data.append(buf, static_cast<size_t>(n));
    }
    Request req;
    std::string head = data.substr(0, header_end);
    size_t line_end = head.find("\r\n");
    std::string request_line = head.substr(0, line_end);
    size_t sp1 = request_line.find(' ');
    size_t sp2 = request_line.find(' ', sp1 + 1);
    req.method = request_line.substr(0, sp1);
    std::string target = request_line.substr(sp1 + 1, sp2 - sp1 - 1);
    for (size_t pos = line_end + 2; pos < head.size();) {
      size_t end = head.find("\r\n", pos);
      if (end == std::string::npos) end = head.size();
      std::string line = head.substr(pos, end - pos);
      size_t colon = line.find(':');
      if (colon != std::string::npos) {
        std::string name = line.substr(0, colon);
        for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        size_t v = line.find_first_not_of(' ', colon + 1);
        req.headers[name] = v == std::string::npos ? "" : line.substr(v);
      }
      pos = end + 2;
    }
    size_t length = req.headers.count("content-length") ? std::stoul(req.headers["content-length"]) : 0;
    req.body = data.substr(header_end + 4);
    while (req.body.size() < length) {
      ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
      if (n <= 0) return (void)::close(fd);
      req.body.append(buf, static_cast<size_t>(n));
    }
    std::string path = target.substr(0, target.find('?'));
    if (target.find('?') != std::string::npos) {
      std::string q = target.substr(target.find('?') + 1);
      for (size_t pos = 0; pos <= q.size();) {
        size_t amp = q.find('&', pos);
        if (amp == std::string::npos) amp = q.size();
        std::string kv = q.substr(pos, amp - pos);
        size_t eq = kv.find('=');
        if (!kv.empty()) {
          req.query[PercentDecode(kv.substr(0, eq))] = eq == std::string::npos ? "" : PercentDecode(kv.substr(eq + 1));
        }
        pos = amp + 1;
      }
    }
    path = PercentDecode(path);
    size_t slash = path.find('/', 1);
    req.bucket = path.substr(1, slash == std::string::npos ? std::string::npos : slash - 1);
    req.key = slash == std::string::npos ? "" : path.substr(slash + 1);

    Response resp = Handle(req);
    if (resp.delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(resp.delay_ms));
    std::string out = "HTTP/1.1 " + std::to_string(resp.status) + " X\r\nConnection: close\r\n";
    bool has_length = false;
    for (const auto& [n, v] : resp.headers) {
      out += n + ": " + v + "\r\n";
      has_length = has_length || n == "Content-Length";
    }
    if (!has_length) out += "Content-Length: " + std::to_string(resp.body.size()) + "\r\n";
    out += "\r\n";
    if (req.method != "HEAD") out += resp.body;
    // The client may have given up (timeout): a failed send is what the test wants, not an error here.
    for (size_t sent = 0; sent < out.size();) {
      ssize_t n = ::send(fd, out.data() + sent, out.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) break;
      sent += static_cast<size_t>(n);
    }
    ::close(fd);
  }

  static Response Xml(int status, std::string body) {
    return {status, {{"Content-Type", "application/xml"}}, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n" + body};
  }
  static Response Error(int status, const std::string& code) {
    return Xml(status, "<Error><Code>" + code + "</Code><Message></Message><RequestId>tx1</RequestId></Error>");
  }

  Response Handle(const Request& r) {
    std::lock_guard<std::mutex> lock(mu_);
    const bool has_upload_id = r.query.count("uploadId") > 0;
    if (r.method == "POST" && r.query.count("uploads")) {
      int n = ++counts_["CreateMultipartUpload"];
      std::string id = NewUploadId();
      uploads_[{r.bucket, r.key, id}] = {};
      Response resp = Xml(200,
                          "<InitiateMultipartUploadResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
                          "<Bucket>" +
                              r.bucket + "</Bucket><Key>" + XmlEscape(r.key) + "</Key><UploadId>" + id +
                              "</UploadId></InitiateMultipartUploadResult>");
      resp.delay_ms = Delay("CreateMultipartUpload", n);
      return resp;
    }
    if (r.method == "PUT" && has_upload_id) {
      ++counts_["UploadPart"];
      auto it = uploads_.find({r.bucket, r.key, r.query.at("uploadId")});
      if (it == uploads_.end()) return Error(404, "NoSuchUpload");
      int part = std::stoi(r.query.at("partNumber"));
      it->second[part] = r.body;
      return {200, {{"ETag", "\"part" + std::to_string(part) + "\""}}, ""};
    }
    if (r.method == "POST" && has_upload_id) {
      int n = ++counts_["CompleteMultipartUpload"];
      if (n <= completes_to_fail_) return Error(200, complete_error_);
      auto it = uploads_.find({r.bucket, r.key, r.query.at("uploadId")});
      if (it == uploads_.end()) return Error(404, "NoSuchUpload");
      std::string bytes;
      for (const auto& [n, part] : it->second) bytes += part;
      objects_[{r.bucket, r.key}] = {
          bytes, "\"v" + std::to_string(++versions_) + "-" + std::to_string(it->second.size()) + "\""};
      uploads_.erase(it);
      Response resp =
          Xml(200, "<CompleteMultipartUploadResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Bucket>" +
                       r.bucket + "</Bucket><Key>" + XmlEscape(r.key) +
                       "</Key><ETag>&#34;x&#34;</ETag>"
                       "</CompleteMultipartUploadResult>");
      resp.delay_ms = Delay("CompleteMultipartUpload", n);
      return resp;
    }
    if (r.method == "DELETE" && has_upload_id) {
      ++counts_["AbortMultipartUpload"];
      const std::string& id = r.query.at("uploadId");
      auto it = uploads_.find({r.bucket, r.key, id});
      if (it == uploads_.end() || stuck_.count(id)) return Error(404, "NoSuchUpload");
      uploads_.erase(it);
      return {204, {}, ""};
    }
    if (r.method == "GET" && r.key.empty() && r.query.count("uploads")) return ListUploads(r);
    if (r.method == "GET" && r.key.empty() && r.query.count("list-type")) return ListObjects(r);
    if (r.method == "HEAD" && r.key.empty()) return {200, {}, ""};
    if (r.method == "PUT") {
      ++counts_["PutObject"];
      objects_[{r.bucket, r.key}] = {r.body, "\"v" + std::to_string(++versions_) + "\""};
      return {200, {{"ETag", objects_[{r.bucket, r.key}].etag}}, ""};
    }
    if (r.method == "DELETE") {
      ++counts_["DeleteObject"];
      objects_.erase({r.bucket, r.key});
      return {204, {}, ""};
    }
    if (r.method == "HEAD" || r.method == "GET") {
      ++counts_[r.method == "HEAD" ? "HeadObject" : "GetObject"];
      auto it = objects_.find({r.bucket, r.key});
      if (it == objects_.end()) return r.method == "HEAD" ? Response{404, {}, ""} : Error(404, "NoSuchKey");
      const Object& o = it->second;
      if (r.headers.count("if-match") && r.headers.at("if-match") != o.etag) return Error(412, "PreconditionFailed");
      if (r.method == "HEAD") {
        return {200, {{"Content-Length", std::to_string(o.bytes.size())}, {"ETag", o.etag}}, ""};
      }
      if (r.headers.count("range")) {
        const std::string& range = r.headers.at("range");  // bytes=a-b
        size_t dash = range.find('-');
        size_t a = std::stoul(range.substr(6, dash - 6));
        size_t b = std::min(std::stoul(range.substr(dash + 1)), o.bytes.size() - 1);
        if (a >= o.bytes.size()) return Error(416, "InvalidRange");
        return {206, {{"ETag", o.etag}}, o.bytes.substr(a, b - a + 1)};
      }
      return {200, {{"ETag", o.etag}}, o.bytes};
    }
    return Error(400, "NotImplementedByFakeS3");
  }

  Response ListUploads(const Request& r) {
    int listing = ++counts_["ListMultipartUploads"];
    const std::string prefix = r.query.count("prefix") ? r.query.at("prefix") : "";
    const std::string key_marker = r.query.count("key-marker") ? r.query.at("key-marker") : "";
    const std::string id_marker = r.query.count("upload-id-marker") ? r.query.at("upload-id-marker") : "";
    std::vector<std::pair<std::string, std::string>> page;
    bool truncated = false;
    for (const auto& [k, parts] : uploads_) {
      const auto& [bucket, key, id] = k;
      if (bucket != r.bucket || !key.starts_with(prefix)) continue;
      if (stuck_.count(id) && listing > 50) continue;
      if (!key_marker.empty() && (key < key_marker || (key == key_marker && (id_marker.empty() || id <= id_marker)))) {
        continue;
      }
      if (page.size() == page_size_) {
        truncated = true;
        break;
      }
      page.emplace_back(key, id);
    }
    std::string xml = "<ListMultipartUploadsResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Bucket>" +
                      r.bucket + "</Bucket><Prefix>" + XmlEscape(prefix) + "</Prefix><IsTruncated>" +
                      (truncated ? "true" : "false") + "</IsTruncated>";
    if (truncated) {
      xml += "<NextKeyMarker>" + XmlEscape(page.back().first) + "</NextKeyMarker><NextUploadIdMarker>" +
             page.back().second + "</NextUploadIdMarker>";
    }
    for (const auto& [key, id] : page) {
      xml += "<Upload><Key>" + XmlEscape(key) + "</Key><UploadId>" + id +
             "</UploadId><Initiator><ID>t</ID>"
             "</Initiator><Initiated>2024-01-01T00:00:00.000Z</Initiated></Upload>";
    }
    return Xml(200, xml + "</ListMultipartUploadsResult>");
  }

  Response ListObjects(const Request& r) {
    ++counts_["ListObjectsV2"];
    const std::string prefix = r.query.count("prefix") ? r.query.at("prefix") : "";
    const std::string after =
        r.query.count("continuation-token") ? PercentDecode(r.query.at("continuation-token").substr(4)) : "";
    std::string contents;
    std::string last;
    size_t n = 0;
    bool truncated = false;
    for (const auto& [k, o] : objects_) {
      if (k.first != r.bucket || !k.second.starts_with(prefix) || (!after.empty() && k.second <= after)) continue;
      if (n == page_size_) {
        truncated = true;
        break;
      }
      ++n;
      last = k.second;
      contents += "<Contents><Key>" + XmlEscape(k.second) +
                  "</Key><LastModified>2024-01-01T00:00:00.000Z"
                  "</LastModified><ETag>" +
                  XmlEscape(o.etag) + "</ETag><Size>" + std::to_string(o.bytes.size()) +
                  "</Size><StorageClass>STANDARD</StorageClass></Contents>";
    }
    std::string xml = "<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>" + r.bucket +
                      "</Name><Prefix>" + XmlEscape(prefix) + "</Prefix><KeyCount>" + std::to_string(n) +
                      "</KeyCount><IsTruncated>" + (truncated ? "true" : "false") + "</IsTruncated>";
    // An opaque token, as S3's: "tok:" + the percent-encoded last key.
    if (truncated) {
      std::string token = "tok:";
      for (unsigned char c : last) {
        char hex[4];
        std::snprintf(hex, sizeof(hex), "%%%02X", c);
        token += hex;
      }
      xml += "<NextContinuationToken>" + token + "</NextContinuationToken>";
    }
    Response resp = Xml(200, xml + contents + "</ListBucketResult>");
    if (list_objects_filter_) resp.body = list_objects_filter_(resp.body);
    return resp;
  }

  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  std::thread accept_thread_;

  std::mutex mu_;
  std::vector<std::thread> conn_threads_;                          // GUARDED_BY(mu_)
  std::map<std::pair<std::string, std::string>, Object> objects_;  // GUARDED_BY(mu_), by (bucket, key)
  std::map<UploadKey, std::map<int, std::string>> uploads_;        // GUARDED_BY(mu_), parts by number
  std::set<std::string> stuck_;                                    // GUARDED_BY(mu_), upload ids
  std::map<std::string, int> counts_;                              // GUARDED_BY(mu_)
  std::map<std::string, std::function<int(int)>> delays_;          // GUARDED_BY(mu_), by operation
  int completes_to_fail_ = 0;                                      // GUARDED_BY(mu_)
  std::string complete_error_;                                     // GUARDED_BY(mu_)
  std::function<std::string(std::string)> list_objects_filter_;    // GUARDED_BY(mu_)
  size_t page_size_ = 1000;                                        // GUARDED_BY(mu_)
  int upload_seq_ = 0;                                             // GUARDED_BY(mu_)
  int versions_ = 0;                                               // GUARDED_BY(mu_)
};

// Numbered ndjson lines; the default 11 MiB makes three parts of 5 MiB, 5 MiB and 1 MiB.
std::string Payload(size_t bytes = 11 << 20) {
  std::string out;
  for (int i = 0; out.size() < bytes; ++i) out += "{\"line\":" + std::to_string(i) + "}\n";
  out.resize(bytes);
  return out;
}

S3Options FakeOptions(const FakeS3& s3) {
  S3Options o;
  o.endpoint = s3.endpoint();
  o.roles = {{kRole, {"AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", ""}, {"*"}}};
  o.part_bytes = 5 << 20;
  o.max_attempts = 4;
  o.base_backoff_ms = 10;
  o.timeout_seconds = 1;  // a CreateMultipartUpload held for 2.5 s times out
  return o;
}

class S3SinkTest : public ::testing::Test {
 protected:
  std::unique_ptr<ObjectSink> MakeSink(S3Options o) {
    auto sink = NewS3Sink(std::move(o));
    EXPECT_OK(sink);
    return sink.ok() ? std::move(sink).value() : nullptr;
  }

  static Status Write(ObjectWriter& w, const std::string& bytes) {
    for (size_t pos = 0; pos < bytes.size(); pos += 1 << 20) RETURN_IF_ERROR(w.Append(bytes.substr(pos, 1 << 20)));
    return w.Commit();
  }

  FakeS3 s3_;
  WriteContext ctx_{kRole, "testkey-1"};
};

TEST_F(S3SinkTest, MultipartUploadWritesTheExactBytes) {
  auto sink = MakeSink(FakeOptions(s3_));
  ASSERT_OK_AND_ASSIGN(auto w, sink->Create(ctx_, "b", "exp/Observation-1.ndjson"));
  const std::string data = Payload();
  ASSERT_OK(Write(*w, data));
  EXPECT_THAT(s3_.Objects("b"), ElementsAre(Pair("exp/Observation-1.ndjson", data)));
  EXPECT_THAT(s3_.Uploads("b"), IsEmpty());
  EXPECT_EQ(s3_.Count("CreateMultipartUpload"), 1);
  EXPECT_EQ(s3_.Count("UploadPart"), 3);
}

// Regression: CreateMultipartUpload was retried like an idempotent request. Its first attempt opened an upload
// on the server, but the answer came after the client's timeout; the retry opened a second one, the writer
// completed that one, and the first stayed open (invisible, stored, billed) under a COMPLETED export.
TEST_F(S3SinkTest, RetriedCreateMultipartUploadLeavesNoOrphanUpload) {
  s3_.DelayAnswers("CreateMultipartUpload", [](int n) { return n == 1 ? 2500 : 0; });
  auto sink = MakeSink(FakeOptions(s3_));
  ASSERT_OK_AND_ASSIGN(auto w, sink->Create(ctx_, "b", "exp/Observation-1.ndjson"));
  const std::string data = Payload();
  ASSERT_OK(Write(*w, data));
  EXPECT_EQ(s3_.Count("CreateMultipartUpload"), 2) << "the first create was expected to time out and be retried";
  EXPECT_THAT(s3_.Uploads("b"), IsEmpty());
  EXPECT_THAT(s3_.Objects("b"), ElementsAre(Pair("exp/Observation-1.ndjson", data)));
}

TEST_F(S3SinkTest, CreateMultipartUploadThatNeverAnswersLeavesNoUpload) {
  s3_.DelayAnswers("CreateMultipartUpload", [](int) { return 2500; });
  S3Options o = FakeOptions(s3_);
  o.max_attempts = 2;
  auto sink = MakeSink(o);
  {
    ASSERT_OK_AND_ASSIGN(auto w, sink->Create(ctx_, "b", "exp/Observation-1.ndjson"));
    EXPECT_STATUS(Write(*w, Payload()), kUnavailable, "s3://b/exp/Observation-1.ndjson");
  }
  EXPECT_EQ(s3_.Count("CreateMultipartUpload"), 2);
  EXPECT_THAT(s3_.Uploads("b"), IsEmpty());
  EXPECT_THAT(s3_.Objects("b"), IsEmpty());
}

TEST_F(S3SinkTest, AbortedWriterAfterARetriedCreateLeavesNoUpload) {
  s3_.DelayAnswers("CreateMultipartUpload", [](int n) { return n == 1 ? 2500 : 0; });
  auto sink = MakeSink(FakeOptions(s3_));
  {
    ASSERT_OK_AND_ASSIGN(auto w, sink->Create(ctx_, "b", "exp/Observation-1.ndjson"));
    ASSERT_OK(w->Append(Payload(6 << 20)));  // opens the upload (twice) and sends a part
    w->Abort();
  }
  EXPECT_EQ(s3_.Count("CreateMultipartUpload"), 2);
  EXPECT_THAT(s3_.Uploads("b"), IsEmpty());
  EXPECT_THAT(s3_.Objects("b"), IsEmpty());
}

TEST_F(S3SinkTest, RetriedCreateLeavesOtherKeysUploadsAlone) {
  // ListMultipartUploads?prefix=K also lists "K.1": another writer's, not ours to abort.
  const std::string other = s3_.AddUpload("b", "exp/Observation-1.ndjson.1");
  const std::string other_bucket = s3_.AddUpload("c", "exp/Observation-1.ndjson");
  s3_.DelayAnswers("CreateMultipartUpload", [](int n) { return n == 1 ? 2500 : 0; });
  auto sink = MakeSink(FakeOptions(s3_));
  ASSERT_OK_AND_ASSIGN(auto w, sink->Create(ctx_, "b", "exp/Observation-1.ndjson"));
  ASSERT_OK(Write(*w, Payload()));
  EXPECT_THAT(s3_.Uploads("b"), ElementsAre(Pair("exp/Observation-1.ndjson.1", other)));
  EXPECT_THAT(s3_.Uploads("c"), ElementsAre(Pair("exp/Observation-1.ndjson", other_bucket)));
}

TEST_F(S3SinkTest, CompleteAnsweredWithAnErrorIn200IsRetried) {
  s3_.FailCompletesIn200(2, "InternalError");
  auto sink = MakeSink(FakeOptions(s3_));
  ASSERT_OK_AND_ASSIGN(auto w, sink->Create(ctx_, "b", "k"));
  const std::string data = Payload();
  ASSERT_OK(Write(*w, data));
  EXPECT_EQ(s3_.Count("CompleteMultipartUpload"), 3);
  EXPECT_THAT(s3_.Objects("b"), ElementsAre(Pair("k", data)));
  EXPECT_THAT(s3_.Uploads("b"), IsEmpty());
}

TEST_F(S3SinkTest, CompleteRefusedIn200FailsTheCommit) {
  s3_.FailCompletesIn200(1, "InvalidPart");
  auto sink = MakeSink(FakeOptions(s3_));
  ASSERT_OK_AND_ASSIGN(auto w, sink->Create(ctx_, "b", "k"));
  EXPECT_STATUS(Write(*w, Payload()), kUnavailable, "CompleteMultipartUpload s3://b/k failed");
  EXPECT_EQ(s3_.Count("CompleteMultipartUpload"), 1);
  w->Abort();
  EXPECT_THAT(s3_.Objects("b"), IsEmpty());
  EXPECT_THAT(s3_.Uploads("b"), IsEmpty());
}

TEST_F(S3SinkTest, CompleteWhoseAnswerWasLostSucceedsOnRetry) {
  // The first Complete did complete the object, but its answer came after the client's timeout: the retry
  // answers NoSuchUpload, and HEAD shows the object is there.
  s3_.DelayAnswers("CompleteMultipartUpload", [](int n) { return n == 1 ? 2500 : 0; });
  auto sink = MakeSink(FakeOptions(s3_));
  ASSERT_OK_AND_ASSIGN(auto w, sink->Create(ctx_, "b", "k"));
  const std::string data = Payload();
  ASSERT_OK(Write(*w, data));
  EXPECT_EQ(s3_.Count("CompleteMultipartUpload"), 2);
  EXPECT_THAT(s3_.Objects("b"), ElementsAre(Pair("k", data)));
}

// Regression: the sweep re-listed from the start after each page it aborted; uploads that stay listed although
// their abort answers NoSuchUpload made it go round for ever once they filled a page.
TEST_F(S3SinkTest, AbortIncompleteIsBoundedWhenAbortsAnswerNoSuchUpload) {
  s3_.SetPageSize(2);
  s3_.AddUpload("b", "p/a", /*stuck=*/true);
  s3_.AddUpload("b", "p/b", /*stuck=*/true);
  for (const char* key : {"p/c", "p/d", "p/e"}) s3_.AddUpload("b", key);
  const std::string outside = s3_.AddUpload("b", "q/f");
  auto sink = MakeSink(FakeOptions(s3_));
  auto started = std::chrono::steady_clock::now();
  ASSERT_OK(sink->AbortIncomplete(ctx_, "b", "p/"));
  EXPECT_LE(s3_.Count("ListMultipartUploads"), 3) << "the sweep went round in circles";
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(10));
  // The abortable ones are gone; the stuck ones are still listed (the server's doing), the other prefix's kept.
  auto left = s3_.Uploads("b");
  std::vector<std::string> keys;
  for (const auto& [key, id] : left) keys.push_back(key);
  EXPECT_THAT(keys, ElementsAre("p/a", "p/b", "q/f"));
  EXPECT_EQ(left.back().second, outside);
}

TEST_F(S3SinkTest, ListPaginatesAndDecodesKeys) {
  s3_.SetPageSize(2);
  const std::vector<std::string> keys = {"exp/a&b <c>.ndjson", "exp/it's \"quoted\".ndjson", "exp/x", "exp/y",
                                         "exp/z ü.ndjson"};
  for (size_t i = 0; i < keys.size(); ++i) s3_.PutObject("b", keys[i], std::string(i + 1, 'x'));
  s3_.PutObject("b", "other/k", "x");
  auto sink = MakeSink(FakeOptions(s3_));
  ASSERT_OK_AND_ASSIGN(auto listed, sink->List(ctx_, "b", "exp/"));
  ASSERT_EQ(listed.size(), keys.size());
  for (size_t i = 0; i < keys.size(); ++i) {
    EXPECT_EQ(listed[i].key, keys[i]);
    EXPECT_EQ(listed[i].size, static_cast<int64_t>(i + 1));
  }
  EXPECT_EQ(s3_.Count("ListObjectsV2"), 3);
}

// Regression: a listing cut short (a proxy or a dropped connection ending the body) was read as a shorter,
// complete listing: cleanup then missed objects without a word.
TEST_F(S3SinkTest, ListOfACutBodyFails) {
  for (int i = 0; i < 5; ++i) s3_.PutObject("b", "exp/k" + std::to_string(i), "x");
  s3_.FilterListObjects([](std::string body) { return body.substr(0, body.find("<Key>exp/k3")); });
  auto sink = MakeSink(FakeOptions(s3_));
  EXPECT_STATUS(sink->List(ctx_, "b", "exp/"), kUnavailable, "not well-formed XML");
}

TEST_F(S3SinkTest, StatAndRangedReads) {
  const std::string data = Payload(3 << 20);
  s3_.PutObject("b", "exp/a&b ü.ndjson", data);
  auto sink = MakeSink(FakeOptions(s3_));
  ASSERT_OK_AND_ASSIGN(ObjectInfo info, sink->Stat(ctx_, "b", "exp/a&b ü.ndjson"));
  EXPECT_EQ(info.key, "exp/a&b ü.ndjson");
  EXPECT_EQ(info.size, static_cast<int64_t>(data.size()));
  ASSERT_OK_AND_ASSIGN(auto r, sink->Open(ctx_, "b", "exp/a&b ü.ndjson"));
  EXPECT_EQ(r->size(), static_cast<int64_t>(data.size()));
  std::string buf(1 << 20, '\0');
  ASSERT_OK_AND_ASSIGN(size_t n, r->ReadAt(12345, buf.data(), 1000));
  EXPECT_EQ(buf.substr(0, n), data.substr(12345, 1000));
  ASSERT_OK_AND_ASSIGN(n, r->ReadAt(static_cast<int64_t>(data.size()) - 10, buf.data(), buf.size()));
  EXPECT_EQ(buf.substr(0, n), data.substr(data.size() - 10));
  ASSERT_OK_AND_ASSIGN(n, r->ReadAt(static_cast<int64_t>(data.size()), buf.data(), buf.size()));
  EXPECT_EQ(n, 0u);
  EXPECT_STATUS(r->ReadAt(-1, buf.data(), 1), kInvalid, "negative");
  std::string whole;
  for (int64_t off = 0; off < r->size();) {
    ASSERT_OK_AND_ASSIGN(size_t got, r->ReadAt(off, buf.data(), buf.size()));
    ASSERT_GT(got, 0u);
    whole.append(buf.data(), got);
    off += static_cast<int64_t>(got);
  }
  EXPECT_TRUE(whole == data);
}

TEST_F(S3SinkTest, StatAndOpenOfAMissingObjectAreNotFound) {
  auto sink = MakeSink(FakeOptions(s3_));
  EXPECT_STATUS(sink->Stat(ctx_, "b", "exp/none"), kNotFound, "s3://b/exp/none");
  EXPECT_STATUS(sink->Open(ctx_, "b", "exp/none"), kNotFound, "s3://b/exp/none");
  // An upload in progress is not an object.
  ASSERT_OK_AND_ASSIGN(auto w, sink->Create(ctx_, "b", "exp/unfinished"));
  ASSERT_OK(w->Append(Payload(6 << 20)));
  EXPECT_STATUS(sink->Stat(ctx_, "b", "exp/unfinished"), kNotFound, "does not exist");
}

TEST_F(S3SinkTest, ReaderOfAReplacedOrDeletedObjectFailsInsteadOfMixing) {
  s3_.PutObject("b", "k", "old bytes");
  auto sink = MakeSink(FakeOptions(s3_));
  ASSERT_OK_AND_ASSIGN(auto r, sink->Open(ctx_, "b", "k"));
  s3_.PutObject("b", "k", "new bytes");
  char buf[16];
  EXPECT_STATUS(r->ReadAt(0, buf, sizeof(buf)), kConflict, "s3://b/k was replaced");
  ASSERT_OK_AND_ASSIGN(auto r2, sink->Open(ctx_, "b", "k"));
  s3_.DeleteObject("b", "k");
  EXPECT_STATUS(r2->ReadAt(0, buf, sizeof(buf)), kNotFound, "s3://b/k was deleted");
}

// ------------------------------------------------------------------------------------------------------------
// Against a real S3 server (Ceph RGW from tests/e2e/test_export_s3.py).

class RgwTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* endpoint = std::getenv("FHIRLAKE_TEST_S3_ENDPOINT");
    if (endpoint == nullptr || *endpoint == '\0') {
      GTEST_SKIP() << "FHIRLAKE_TEST_S3_ENDPOINT is not set (tests/e2e/test_export_s3.py sets it)";
    }
    auto env = [](const char* name) {
      const char* v = std::getenv(name);
      return std::string(v == nullptr ? "" : v);
    };
    bucket_ = env("FHIRLAKE_TEST_S3_BUCKET");
    ctx_ = {kRole, env("FHIRLAKE_TEST_S3_KMS_KEY")};
    ASSERT_FALSE(bucket_.empty()) << "FHIRLAKE_TEST_S3_BUCKET";
    S3Options o;
    o.endpoint = endpoint;
    o.roles = {{kRole, {env("FHIRLAKE_TEST_S3_ACCESS_KEY"), env("FHIRLAKE_TEST_S3_SECRET_KEY"), ""}, {"*"}}};
    o.part_bytes = 5 << 20;
    o.base_backoff_ms = 50;
    auto sink = NewS3Sink(std::move(o));
    ASSERT_OK(sink);
    sink_ = std::move(sink).value();
    prefix_ = "unit/" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) + "/";
  }

  std::string ReadAll(const ObjectReader& r, size_t chunk) {
    std::string out;
    std::string buf(chunk, '\0');
    for (int64_t off = 0; off < r.size();) {
      auto n = r.ReadAt(off, buf.data(), buf.size());
      EXPECT_OK(n);
      if (!n.ok() || *n == 0) break;
      out.append(buf.data(), *n);
      off += static_cast<int64_t>(*n);
    }
    return out;
  }

  std::unique_ptr<ObjectSink> sink_;
  std::string bucket_;
  std::string prefix_;
  WriteContext ctx_;
};

TEST_F(RgwTest, WrittenObjectsReadBackByRanges) {
  const std::string small = "{\"resourceType\":\"Patient\",\"id\":\"a\"}\n";
  const std::string large = Payload();
  const std::string small_key = prefix_ + "a&b <c> 'd' ü.ndjson";
  const std::string large_key = prefix_ + "Observation/Observation-1.ndjson";
  for (const auto& [key, bytes] : {std::pair{small_key, small}, std::pair{large_key, large}}) {
    ASSERT_OK_AND_ASSIGN(auto w, sink_->Create(ctx_, bucket_, key));
    for (size_t pos = 0; pos < bytes.size(); pos += 1 << 20) ASSERT_OK(w->Append(bytes.substr(pos, 1 << 20)));
    ASSERT_OK(w->Commit());
  }
  ASSERT_OK_AND_ASSIGN(auto listed, sink_->List(ctx_, bucket_, prefix_));
  std::map<std::string, int64_t> sizes;
  for (const auto& o : listed) sizes[o.key] = o.size;
  EXPECT_THAT(sizes, ElementsAre(Pair(large_key, static_cast<int64_t>(large.size())),
                                 Pair(small_key, static_cast<int64_t>(small.size()))));
  ASSERT_OK_AND_ASSIGN(ObjectInfo info, sink_->Stat(ctx_, bucket_, large_key));
  EXPECT_EQ(info.size, static_cast<int64_t>(large.size()));
  ASSERT_OK_AND_ASSIGN(auto r, sink_->Open(ctx_, bucket_, large_key));
  EXPECT_EQ(r->size(), static_cast<int64_t>(large.size()));
  EXPECT_TRUE(ReadAll(*r, 3 << 20) == large);  // ranges across part boundaries
  char buf[64];
  const int64_t boundary = 5 << 20;
  ASSERT_OK_AND_ASSIGN(size_t n, r->ReadAt(boundary - 7, buf, sizeof(buf)));
  EXPECT_EQ(std::string(buf, n), large.substr(boundary - 7, sizeof(buf)));
  ASSERT_OK_AND_ASSIGN(n, r->ReadAt(r->size() - 3, buf, sizeof(buf)));
  EXPECT_EQ(std::string(buf, n), large.substr(large.size() - 3));
  ASSERT_OK_AND_ASSIGN(n, r->ReadAt(r->size(), buf, sizeof(buf)));
  EXPECT_EQ(n, 0u);
  ASSERT_OK_AND_ASSIGN(auto rs, sink_->Open(ctx_, bucket_, small_key));
  EXPECT_EQ(ReadAll(*rs, 5), small);
}

TEST_F(RgwTest, MissingAndUnfinishedObjectsAreNotFound) {
  EXPECT_STATUS(sink_->Stat(ctx_, bucket_, prefix_ + "none"), kNotFound, "does not exist");
  EXPECT_STATUS(sink_->Open(ctx_, bucket_, prefix_ + "none"), kNotFound, "does not exist");
  ASSERT_OK_AND_ASSIGN(auto w, sink_->Create(ctx_, bucket_, prefix_ + "unfinished"));
  ASSERT_OK(w->Append(Payload(6 << 20)));  // a multipart upload is open, one part sent
  EXPECT_STATUS(sink_->Stat(ctx_, bucket_, prefix_ + "unfinished"), kNotFound, "does not exist");
  ASSERT_OK_AND_ASSIGN(auto listed, sink_->List(ctx_, bucket_, prefix_));
  EXPECT_THAT(listed, IsEmpty());
  // Sweeping the prefix aborts the upload: the writer cannot complete it any more.
  ASSERT_OK(sink_->AbortIncomplete(ctx_, bucket_, prefix_));
  EXPECT_FALSE(w->Commit().ok());
  EXPECT_STATUS(sink_->Stat(ctx_, bucket_, prefix_ + "unfinished"), kNotFound, "does not exist");
}

TEST_F(RgwTest, ReaderOfAReplacedOrDeletedObjectFails) {
  const std::string key = prefix_ + "k";
  auto put = [&](const std::string& bytes) {
    auto w = sink_->Create(ctx_, bucket_, key);
    EXPECT_OK(w);
    if (!w.ok()) return;
    EXPECT_OK((*w)->Append(bytes));
    EXPECT_OK((*w)->Commit());
  };
  put("first version\n");
  ASSERT_OK_AND_ASSIGN(auto first, sink_->Open(ctx_, bucket_, key));
  put("second version\n");
  char buf[32];
  EXPECT_STATUS(first->ReadAt(0, buf, sizeof(buf)), kConflict, "was replaced");
  ASSERT_OK_AND_ASSIGN(auto second, sink_->Open(ctx_, bucket_, key));
  EXPECT_EQ(ReadAll(*second, 4), "second version\n");
  ASSERT_OK(sink_->Delete(ctx_, bucket_, key));
  EXPECT_STATUS(second->ReadAt(0, buf, sizeof(buf)), kNotFound, "was deleted");
}

}  // namespace
}  // namespace fhirlake::sink
