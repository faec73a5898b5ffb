// End-to-end tests for http::Server: a real server on 127.0.0.1 (port 0) talked to with a small blocking
// POSIX-socket client, so what is checked is the bytes on the wire, not Beast's view of them.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "http/handler_pool.h"
#include "http/server.h"

namespace fhirlake::http {
namespace {

using Clock = std::chrono::steady_clock;

struct ParsedResponse {
  int status = 0;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
  bool ok = false;  // a complete response was read
};

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// A minimal HTTP/1.1 client over one blocking TCP connection. Reads time out after 10 s so a broken
// server fails the test instead of hanging it.
class Client {
 public:
  explicit Client(uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    timeval tv{10, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    int one = 1;  // each Send() leaves at once, so a test can split a request between the server's reads
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  }
  ~Client() {
    if (fd_ >= 0) ::close(fd_);
  }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  bool connected() const { return connected_; }
  // Read timeout (the default of 10 s guards against hangs; shorter ones probe for "no answer yet").
  void SetReadTimeout(std::chrono::milliseconds t) {
    timeval tv{static_cast<time_t>(t.count() / 1000), static_cast<suseconds_t>((t.count() % 1000) * 1000)};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  }
  // True when nothing at all arrives within `t` (the connection is open but unanswered).
  bool NothingArrivesWithin(std::chrono::milliseconds t) {
    SetReadTimeout(t);
    char c;
    ssize_t n;
    do {
      n = ::recv(fd_, &c, 1, MSG_PEEK);
    } while (n < 0 && errno == EINTR);
    SetReadTimeout(std::chrono::seconds(10));
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
  }

  bool Send(std::string_view data) {
    while (!data.empty()) {
      ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      data.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }

  // Reads one response. `head` means the response to a HEAD request (headers only).
  ParsedResponse Read(bool head = false) {
    ParsedResponse r;
    size_t end;
    while ((end = buf_.find("\r\n\r\n")) == std::string::npos) {
      if (!Fill()) return r;
    }
    std::string head_block = buf_.substr(0, end);
    buf_.erase(0, end + 4);
    size_t line_end = head_block.find("\r\n");
    std::string status_line = head_block.substr(0, line_end);
    if (status_line.size() < 12) return r;
    r.status = std::stoi(status_line.substr(9, 3));
    size_t pos = line_end == std::string::npos ? head_block.size() : line_end + 2;
    while (pos < head_block.size()) {
      size_t next = head_block.find("\r\n", pos);
      if (next == std::string::npos) next = head_block.size();
      std::string line = head_block.substr(pos, next - pos);
      size_t colon = line.find(':');
      if (colon != std::string::npos) {
        std::string value = line.substr(colon + 1);
        while (!value.empty() && value.front() == ' ') value.erase(0, 1);
        r.headers[Lower(line.substr(0, colon))] = value;
      }
      pos = next + 2;
    }
    if (head) {
      r.ok = true;
      return r;
    }
    auto te = r.headers.find("transfer-encoding");
    if (te != r.headers.end() && Lower(te->second) == "chunked") {
      while (true) {
        size_t crlf;
        while ((crlf = buf_.find("\r\n")) == std::string::npos) {
          if (!Fill()) return r;
        }
        size_t size = std::stoul(buf_.substr(0, crlf), nullptr, 16);
        buf_.erase(0, crlf + 2);
        while (buf_.size() < size + 2) {
          if (!Fill()) return r;
        }
        r.body += buf_.substr(0, size);
        buf_.erase(0, size + 2);
        ++chunks_;
        if (size == 0) break;
      }
    } else if (r.headers.count("content-length")) {
      size_t len = std::stoul(r.headers["content-length"]);
      while (buf_.size() < len) {
        if (!Fill()) return r;
      }
      r.body = buf_.substr(0, len);
      buf_.erase(0, len);
    } else {
      while (Fill()) {
      }
      r.body = std::move(buf_);
      buf_.clear();
    }
    r.ok = true;
    return r;
  }

  // True when the server ended the connection with a clean EOF (FIN), nothing more to read, and no reset.
  bool CleanEofFromPeer() {
    if (!buf_.empty()) return false;
    char c;
    ssize_t n;
    do {
      n = ::recv(fd_, &c, 1, 0);
    } while (n < 0 && errno == EINTR);
    return n == 0;
  }

  // True when the server closed the connection (EOF or reset) with nothing more to read.
  bool ClosedByPeer() {
    if (!buf_.empty()) return false;
    char c;
    ssize_t n;
    do {
      n = ::recv(fd_, &c, 1, 0);
    } while (n < 0 && errno == EINTR);
    return n == 0 || (n < 0 && errno == ECONNRESET);
  }

  int chunks() const { return chunks_; }

 private:
  bool Fill() {
    char tmp[16384];
    ssize_t n;
    do {
      n = ::recv(fd_, tmp, sizeof(tmp), 0);
    } while (n < 0 && errno == EINTR);
    if (n <= 0) return false;
    buf_.append(tmp, static_cast<size_t>(n));
    return true;
  }

  int fd_ = -1;
  bool connected_ = false;
  std::string buf_;
  int chunks_ = 0;
};

// Echoes the request so tests can check how it was parsed; a few paths have special behaviour.
Response TestHandler(const Request& req) {
  if (req.path == "/throw") throw std::runtime_error("boom");
  if (req.path == "/throw-int") throw 42;
  if (req.path == "/slow") {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    Response r;
    r.body = "slow done";
    return r;
  }
  if (req.path == "/bad-status") {
    Response r;
    r.status = 1000;
    return r;
  }
  if (req.path == "/evil-header") {
    Response r;
    r.headers.Add("X-Good", "1");
    r.headers.Add("X-Evil", "a\r\nX-Injected: 1");
    r.body = "ok";
    return r;
  }
  if (req.path == "/stream-fail") {
    auto calls = std::make_shared<int>(0);
    Response r;
    r.body_producer = [calls](std::string* chunk) -> bool {
      if (++*calls > 3) throw std::runtime_error("disk gone");
      *chunk = "part" + std::to_string(*calls) + "\n";
      return true;
    };
    return r;
  }
  if (req.path == "/stream") {
    auto next = std::make_shared<int>(0);
    Response r;
    r.headers.Set("Content-Type", "application/fhir+ndjson");
    r.body = "ignored";
    r.body_producer = [next](std::string* chunk) {
      // 40 chunks of ~10 KB, each line numbered so order problems show up.
      for (int line = 0; line < 500; ++line)
        *chunk += "chunk " + std::to_string(*next) + " line " + std::to_string(line) + "\n";
      return ++*next < 40;
    };
    return r;
  }
  std::string params;
  for (const auto& p : req.query) params += p.name + ":" + p.value + ",";
  Response r;
  r.status = req.path == "/created" ? 201 : 200;
  r.headers.Set("Content-Type", "text/plain");
  r.headers.Add("X-Test", "yes");
  r.body = "method=" + req.method + "\npath=" + req.path + "\nquery=" + req.raw_query + "\nparams=" + params +
           "\ncontent-type=" + std::string(req.headers.Get("content-type")) + "\nremote=" + req.remote_address +
           "\nbody=" + req.body;
  return r;
}

std::string StreamExpected() {
  std::string s;
  for (int i = 0; i < 40; ++i) {
    for (int line = 0; line < 500; ++line) s += "chunk " + std::to_string(i) + " line " + std::to_string(line) + "\n";
  }
  return s;
}

ServerOptions TestOptions() {
  ServerOptions o;
  o.host = "127.0.0.1";
  o.port = 0;
  o.threads = 2;
  o.max_body_bytes = 1024;
  o.keep_alive_seconds = 5;
  o.error_responder = [](int status, const std::string& message) {
    Response r;
    r.status = status;
    r.headers.Set("Content-Type", "text/plain");
    r.body = "ERR " + std::to_string(status) + ": " + message;
    return r;
  };
  return o;
}

class HttpServerTest : public ::testing::Test {
 protected:
  void StartServer(ServerOptions options = TestOptions(), RequestHandler handler = TestHandler) {
    server_ = std::make_unique<Server>(std::move(options), std::move(handler));
    Status st = server_->Start();
    ASSERT_TRUE(st.ok()) << st.ToString();
    ASSERT_NE(server_->port(), 0);
  }
  void TearDown() override {
    if (server_) {
      server_->Stop();
      server_->Wait();
    }
  }
  uint16_t port() const { return server_->port(); }

  std::unique_ptr<Server> server_;
};

TEST_F(HttpServerTest, GetRoundTrip) {
  StartServer();
  Client c(port());
  ASSERT_TRUE(c.connected());
  ASSERT_TRUE(c.Send("GET /echo/a%20b?x=1&y=two+words&z=%2C HTTP/1.1\r\nHost: localhost\r\n\r\n"));
  ParsedResponse r = c.Read();
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.headers["content-type"], "text/plain");
  EXPECT_EQ(r.headers["x-test"], "yes");
  EXPECT_EQ(r.headers["content-length"], std::to_string(r.body.size()));
  EXPECT_NE(r.body.find("method=GET\n"), std::string::npos) << r.body;
  EXPECT_NE(r.body.find("path=/echo/a b\n"), std::string::npos) << r.body;
  EXPECT_NE(r.body.find("query=x=1&y=two+words&z=%2C\n"), std::string::npos) << r.body;
  EXPECT_NE(r.body.find("params=x:1,y:two words,z:,,\n"), std::string::npos) << r.body;
  EXPECT_NE(r.body.find("remote=127.0.0.1:"), std::string::npos) << r.body;
}

TEST_F(HttpServerTest, PostBodyAndStatusArePassedThrough) {
  StartServer();
  Client c(port());
  ASSERT_TRUE(
      c.Send("POST /created HTTP/1.1\r\nHost: x\r\nContent-Type: application/fhir+json\r\n"
             "Content-Length: 13\r\n\r\n{\"a\":\"hello\"}"));
  ParsedResponse r = c.Read();
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.status, 201);
  EXPECT_NE(r.body.find("method=POST\n"), std::string::npos) << r.body;
  EXPECT_NE(r.body.find("content-type=application/fhir+json\n"), std::string::npos) << r.body;
  EXPECT_NE(r.body.find("body={\"a\":\"hello\"}"), std::string::npos) << r.body;
}

TEST_F(HttpServerTest, TwoRequestsOnOneKeepAliveConnection) {
  StartServer();
  Client c(port());
  ASSERT_TRUE(c.Send("GET /first HTTP/1.1\r\nHost: x\r\n\r\n"));
  ParsedResponse r1 = c.Read();
  ASSERT_TRUE(r1.ok);
  EXPECT_EQ(r1.status, 200);
  EXPECT_NE(r1.body.find("path=/first\n"), std::string::npos);

  ASSERT_TRUE(c.Send("POST /second HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"));
  ParsedResponse r2 = c.Read();
  ASSERT_TRUE(r2.ok);
  EXPECT_EQ(r2.status, 200);
  EXPECT_NE(r2.body.find("path=/second\n"), std::string::npos);
  EXPECT_NE(r2.body.find("body=abc"), std::string::npos);
}

TEST_F(HttpServerTest, PipelinedRequestsAreAnsweredInOrder) {
  StartServer();
  Client c(port());
  ASSERT_TRUE(c.Send("GET /one HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\n\r\n"));
  ParsedResponse r1 = c.Read();
  ParsedResponse r2 = c.Read();
  ASSERT_TRUE(r1.ok && r2.ok);
  EXPECT_NE(r1.body.find("path=/one\n"), std::string::npos);
  EXPECT_NE(r2.body.find("path=/two\n"), std::string::npos);
}

TEST_F(HttpServerTest, ConnectionCloseIsHonoured) {
  StartServer();
  Client c(port());
  ASSERT_TRUE(c.Send("GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
  ParsedResponse r = c.Read();
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(Lower(r.headers["connection"]), "close");
  EXPECT_TRUE(c.ClosedByPeer());
}

TEST_F(HttpServerTest, IdleKeepAliveConnectionTimesOut) {
  ServerOptions o = TestOptions();
  o.keep_alive_seconds = 1;
  StartServer(std::move(o));
  Client c(port());
  ASSERT_TRUE(c.Send("GET /x HTTP/1.1\r\nHost: x\r\n\r\n"));
  ASSERT_TRUE(c.Read().ok);
  auto start = Clock::now();
  EXPECT_TRUE(c.ClosedByPeer());
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(5));
}

TEST_F(HttpServerTest, HeadSendsHeadersWithoutBody) {
  StartServer();
  Client c(port());
  ASSERT_TRUE(c.Send("HEAD /x HTTP/1.1\r\nHost: x\r\n\r\n"));
  ParsedResponse r = c.Read(/*head=*/true);
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.status, 200);
  ASSERT_EQ(r.headers.count("content-length"), 1u);  // the length a GET would get
  EXPECT_NE(r.headers["content-length"], "0");
  // The connection must be clean: the next response starts right away (no stray body bytes).
  ASSERT_TRUE(c.Send("GET /after-head HTTP/1.1\r\nHost: x\r\n\r\n"));
  ParsedResponse r2 = c.Read();
  ASSERT_TRUE(r2.ok);
  EXPECT_EQ(r2.status, 200);
  EXPECT_NE(r2.body.find("path=/after-head\n"), std::string::npos);
}

TEST_F(HttpServerTest, BodyOverLimitWithContentLengthGets413) {
  StartServer();
  Client c(port());
  std::string body(5000, 'x');
  ASSERT_TRUE(c.Send("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + body));
  ParsedResponse r = c.Read();
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.status, 413);
  EXPECT_EQ(r.body, "ERR 413: Request body of 5000 bytes exceeds the limit of 1024 bytes (--max-body-bytes)");
  EXPECT_TRUE(c.ClosedByPeer());
}

TEST_F(HttpServerTest, ChunkedBodyOverLimitGets413) {
  StartServer();
  Client c(port());
  std::string chunk(800, 'y');
  ASSERT_TRUE(c.Send("POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n320\r\n" + chunk +
                     "\r\n320\r\n" + chunk + "\r\n0\r\n\r\n"));
  ParsedResponse r = c.Read();
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.status, 413);
  EXPECT_EQ(r.body, "ERR 413: Request body exceeds the limit of 1024 bytes (--max-body-bytes)");
  EXPECT_TRUE(c.ClosedByPeer());
}

// Found by fuzz_http_request: an empty chunked body whose last bytes arrive one by one ("0\r\n", then "\r", then
// "\n") made Beast 1.74 assert in parse_chunk_header; a Debug or sanitizer build of the server died of it.
TEST_F(HttpServerTest, EmptyChunkedBodyArrivingByteByByteIsAnswered) {
  StartServer();
  Client c(port());
  ASSERT_TRUE(c.Send("POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"));
  for (const char* tail : {"\r", "\n"}) {
    EXPECT_TRUE(c.NothingArrivesWithin(std::chrono::milliseconds(100)));  // the server has read what was sent
    ASSERT_TRUE(c.Send(tail));
  }
  ParsedResponse r = c.Read();
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.status, 200);
  EXPECT_NE(r.body.find("method=POST\npath=/upload"), std::string::npos) << r.body;
  EXPECT_EQ(r.body.substr(r.body.size() - 6), "\nbody=") << r.body;
  // The connection and the server go on serving.
  ASSERT_TRUE(c.Send("GET /after HTTP/1.1\r\nHost: x\r\n\r\n"));
  ParsedResponse next = c.Read();
  ASSERT_TRUE(next.ok);
  EXPECT_EQ(next.status, 200);
  EXPECT_NE(next.body.find("path=/after"), std::string::npos) << next.body;
}

TEST_F(HttpServerTest, BodyAtTheLimitIsAccepted) {
  StartServer();
  Client c(port());
  std::string body(1024, 'z');
  ASSERT_TRUE(c.Send("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1024\r\n\r\n" + body));
  ParsedResponse r = c.Read();
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.status, 200);
  EXPECT_NE(r.body.find("body=" + body), std::string::npos);
}

TEST_F(HttpServerTest, ExpectContinueGets100BeforeTheBody) {
  StartServer();
  Client c(port());
  ASSERT_TRUE(c.Send("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"));
  ParsedResponse interim = c.Read(/*head=*/true);
  ASSERT_TRUE(interim.ok);
  EXPECT_EQ(interim.status, 100);
  ASSERT_TRUE(c.Send("hello"));
  ParsedResponse r = c.Read();
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.status, 200);
  EXPECT_NE(r.body.find("body=hello"), std::string::npos);
}

TEST_F(HttpServerTest, MalformedRequestGets400) {
  StartServer();
  Client c(port());
  ASSERT_TRUE(c.Send("this is not http\r\n\r\n"));
  ParsedResponse r = c.Read();
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.body.rfind("ERR 400: Malformed HTTP request", 0), 0u) << r.body;
  EXPECT_TRUE(c.ClosedByPeer());
}

TEST_F(HttpServerTest, HandlerExceptionGets500AndServerKeepsServing) {
  StartServer();
  {
    Client c(port());
    ASSERT_TRUE(c.Send("GET /throw HTTP/1.1\r\nHost: x\r\n\r\n"));
    ParsedResponse r = c.Read();
    ASSERT_TRUE(r.ok);
    EXPECT_EQ(r.status, 500);
    EXPECT_EQ(r.body, "ERR 500: Internal error: boom");
    // The connection itself is still usable.
    ASSERT_TRUE(c.Send("GET /throw-int HTTP/1.1\r\nHost: x\r\n\r\n"));
    ParsedResponse r2 = c.Read();
    ASSERT_TRUE(r2.ok);
    EXPECT_EQ(r2.status, 500);
    ASSERT_TRUE(c.Send("GET /fine HTTP/1.1\r\nHost: x\r\n\r\n"));
    EXPECT_EQ(c.Read().status, 200);
  }
  Client c2(port());
  ASSERT_TRUE(c2.Send("GET /after HTTP/1.1\r\nHost: x\r\n\r\n"));
  ParsedResponse r = c2.Read();
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.status, 200);
}

TEST_F(HttpServerTest, BodyProducerIsStreamedChunked) {
  StartServer();
  Client c(port());
  ASSERT_TRUE(c.Send("GET /stream HTTP/1.1\r\nHost: x\r\n\r\n"));
  ParsedResponse r = c.Read();
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(Lower(r.headers["transfer-encoding"]), "chunked");
  EXPECT_EQ(r.headers.count("content-length"), 0u);
  EXPECT_EQ(r.headers["content-type"], "application/fhir+ndjson");
  EXPECT_GT(c.chunks(), 1);  // really streamed, not one blob
  EXPECT_TRUE(r.body == StreamExpected())
      << "streamed body differs; got " << r.body.size() << " bytes, expected " << StreamExpected().size();
  // Keep-alive survives a chunked response.
  ASSERT_TRUE(c.Send("GET /after-stream HTTP/1.1\r\nHost: x\r\n\r\n"));
  ParsedResponse r2 = c.Read();
  ASSERT_TRUE(r2.ok);
  EXPECT_NE(r2.body.find("path=/after-stream\n"), std::string::npos);
}

TEST_F(HttpServerTest, FailingBodyProducerTruncatesTheTransfer) {
  StartServer();
  Client c(port());
  ASSERT_TRUE(c.Send("GET /stream-fail HTTP/1.1\r\nHost: x\r\n\r\n"));
  ParsedResponse r = c.Read();
  EXPECT_FALSE(r.ok);  // no terminating chunk: the client can tell the body is incomplete
  EXPECT_EQ(r.status, 200);
  Client c2(port());
  ASSERT_TRUE(c2.Send("GET /after HTTP/1.1\r\nHost: x\r\n\r\n"));
  EXPECT_EQ(c2.Read().status, 200);
}

TEST_F(HttpServerTest, InvalidStatusBecomes500) {
  StartServer();
  Client c(port());
  ASSERT_TRUE(c.Send("GET /bad-status HTTP/1.1\r\nHost: x\r\n\r\n"));
  ParsedResponse r = c.Read();
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.status, 500);
  EXPECT_EQ(r.body, "ERR 500: Internal error: invalid HTTP status 1000");
}

TEST_F(HttpServerTest, HeaderWithLineBreakIsDropped) {
  StartServer();
  Client c(port());
  ASSERT_TRUE(c.Send("GET /evil-header HTTP/1.1\r\nHost: x\r\n\r\n"));
  ParsedResponse r = c.Read();
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.headers.count("x-good"), 1u);
  EXPECT_EQ(r.headers.count("x-evil"), 0u);
  EXPECT_EQ(r.headers.count("x-injected"), 0u);
  EXPECT_EQ(r.body, "ok");
}

TEST_F(HttpServerTest, BodyProducerForHttp10IsCloseDelimited) {
  StartServer();
  Client c(port());
  ASSERT_TRUE(c.Send("GET /stream HTTP/1.0\r\n\r\n"));
  ParsedResponse r = c.Read();
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.headers.count("transfer-encoding"), 0u);
  EXPECT_TRUE(r.body == StreamExpected());
}

TEST_F(HttpServerTest, StopLetsInFlightRequestFinish) {
  StartServer();
  Client c(port());
  Client idle(port());  // an idle keep-alive connection must not hold up shutdown
  ASSERT_TRUE(idle.Send("GET /x HTTP/1.1\r\nHost: x\r\n\r\n"));
  ASSERT_TRUE(idle.Read().ok);

  ASSERT_TRUE(c.Send("GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the handler is now sleeping
  auto start = Clock::now();
  std::thread stopper([this] { server_->Stop(); });
  server_->Wait();
  auto waited = Clock::now() - start;
  stopper.join();

  EXPECT_GE(waited, std::chrono::milliseconds(100));
  EXPECT_LT(waited, std::chrono::seconds(5));
  ParsedResponse r = c.Read();
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "slow done");
  EXPECT_TRUE(c.ClosedByPeer());
  EXPECT_TRUE(idle.ClosedByPeer());

  Client late(port());
  EXPECT_FALSE(late.connected());
  server_->Stop();  // idempotent
  server_->Wait();
}

TEST_F(HttpServerTest, StopFromAHandlerThreadDoesNotDeadlock) {
  std::atomic<Server*> self{nullptr};
  auto server = std::make_unique<Server>(TestOptions(), [&self](const Request& req) {
    if (req.path == "/shutdown") self.load()->Stop();
    Response r;
    r.body = "bye";
    return r;
  });
  self = server.get();
  ASSERT_TRUE(server->Start().ok());
  Client c(server->port());
  ASSERT_TRUE(c.Send("GET /shutdown HTTP/1.1\r\nHost: x\r\n\r\n"));
  server->Wait();
  ParsedResponse r = c.Read();
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.body, "bye");
  server.reset();
}

TEST_F(HttpServerTest, StartFailsWhenThePortIsTaken) {
  StartServer();
  ServerOptions o = TestOptions();
  o.port = port();
  Server second(std::move(o), TestHandler);
  Status st = second.Start();
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), StatusCode::kUnavailable);
  EXPECT_NE(st.message().find("cannot listen on 127.0.0.1:" + std::to_string(port())), std::string::npos)
      << st.message();
  second.Wait();  // never started: returns at once
}

TEST_F(HttpServerTest, StartFailsOnAnAddressThisHostDoesNotHave) {
  ServerOptions o = TestOptions();
  o.host = "192.0.2.1";  // TEST-NET-1: never configured locally, and no DNS lookup needed
  Server s(std::move(o), TestHandler);
  Status st = s.Start();
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.message().rfind("cannot listen on 192.0.2.1:0: ", 0), 0u) << st.message();
}

TEST_F(HttpServerTest, DestroyingARunningServerStopsIt) {
  auto server = std::make_unique<Server>(TestOptions(), TestHandler);
  ASSERT_TRUE(server->Start().ok());
  Client c(server->port());
  ASSERT_TRUE(c.Send("GET /x HTTP/1.1\r\nHost: x\r\n\r\n"));
  ASSERT_TRUE(c.Read().ok);
  server.reset();
  EXPECT_TRUE(c.ClosedByPeer());
}

// ---- handler threads, admission control, framing ------------------------------------------------------------

// A door that handlers wait at until the test opens it, counting who is waiting. Shared with the handler so it
// outlives the test body; OpenOnExit opens it however the test ends (Stop() waits for running handlers).
class Gate {
 public:
  void Wait() {
    std::unique_lock lock(mu_);
    ++waiting_;
    cv_.notify_all();
    cv_.wait(lock, [this] { return open_; });
    --waiting_;
  }
  void Open() {
    std::lock_guard lock(mu_);
    open_ = true;
    cv_.notify_all();
  }
  bool WaitForWaiters(int n) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(10), [&] { return waiting_ >= n; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int waiting_ = 0;
  bool open_ = false;
};

struct OpenOnExit {
  std::shared_ptr<Gate> gate;
  ~OpenOnExit() { gate->Open(); }
};

// /block waits at the gate; everything else answers at once with its path.
RequestHandler GatedHandler(std::shared_ptr<Gate> gate) {
  return [gate](const Request& req) {
    if (req.path == "/block") gate->Wait();
    Response r;
    r.headers.Set("Content-Type", "text/plain");
    r.body = "path=" + req.path + " body=" + std::to_string(req.body.size());
    return r;
  };
}

TEST(HandlerPoolTest, AdmitsAWorkerPerIdleThreadPlusTheQueueThenRefuses) {
  HandlerPool pool(2, 1);
  ASSERT_TRUE(pool.Start().ok());
  auto gate = std::make_shared<Gate>();
  OpenOnExit open{gate};
  std::atomic<int> ran{0};
  auto task = [&] {
    gate->Wait();
    ++ran;
  };
  ASSERT_TRUE(pool.TrySubmit(task));
  ASSERT_TRUE(pool.TrySubmit(task));
  ASSERT_TRUE(gate->WaitForWaiters(2));  // both workers busy
  EXPECT_TRUE(pool.TrySubmit(task));     // waits in the queue
  EXPECT_FALSE(pool.TrySubmit(task));    // the queue is full
  gate->Open();
  pool.Shutdown(/*drop_queued=*/false);
  EXPECT_EQ(ran.load(), 3);
  EXPECT_FALSE(pool.TrySubmit(task));  // shut down
}

TEST(HandlerPoolTest, ShutdownDropsQueuedTasksAndWaitsForRunningOnes) {
  HandlerPool pool(1, 4);
  ASSERT_TRUE(pool.Start().ok());
  auto gate = std::make_shared<Gate>();
  OpenOnExit open{gate};
  std::atomic<int> ran{0};
  ASSERT_TRUE(pool.TrySubmit([&] {
    gate->Wait();
    ++ran;
  }));
  ASSERT_TRUE(gate->WaitForWaiters(1));
  ASSERT_TRUE(pool.TrySubmit([&] { ran += 100; }));
  std::thread opener([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    gate->Open();
  });
  pool.Shutdown(/*drop_queued=*/true);  // returns only after the running task finished
  opener.join();
  EXPECT_EQ(ran.load(), 1);
}

TEST(HandlerPoolTest, ATaskThatThrowsCostsOnlyThatTask) {
  HandlerPool pool(1, 0);
  ASSERT_TRUE(pool.Start().ok());
  ASSERT_TRUE(pool.TrySubmit([] { throw std::runtime_error("boom"); }));
  std::atomic<bool> ran{false};
  // The single worker must come back for the next task (retry while it is still busy with the first).
  auto deadline = Clock::now() + std::chrono::seconds(10);
  while (!pool.TrySubmit([&] { ran = true; }) && Clock::now() < deadline) std::this_thread::yield();
  pool.Shutdown(/*drop_queued=*/false);
  EXPECT_TRUE(ran.load());
}

TEST_F(HttpServerTest, BlockedHandlersDoNotStopInlineRoutesOrNewConnections) {
  auto gate = std::make_shared<Gate>();
  OpenOnExit open{gate};
  ServerOptions o = TestOptions();
  o.threads = 1;  // one io thread: if a handler ran on it, nothing else could be answered
  o.workers = 2;
  o.runs_inline = [](const Request& r) { return r.path == "/inline"; };
  StartServer(std::move(o), GatedHandler(gate));
  Client a(port()), b(port());
  ASSERT_TRUE(a.Send("GET /block HTTP/1.1\r\nHost: x\r\n\r\n"));
  ASSERT_TRUE(b.Send("GET /block HTTP/1.1\r\nHost: x\r\n\r\n"));
  ASSERT_TRUE(gate->WaitForWaiters(2));  // every handler thread is stuck

  Client c(port());
  ASSERT_TRUE(c.connected());
  ASSERT_TRUE(c.Send("GET /inline HTTP/1.1\r\nHost: x\r\n\r\n"));
  ParsedResponse r = c.Read();
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "path=/inline body=0");

  // An ordinary request is accepted and waits in the queue for a handler thread.
  ASSERT_TRUE(c.Send("GET /queued HTTP/1.1\r\nHost: x\r\n\r\n"));
  EXPECT_TRUE(c.NothingArrivesWithin(std::chrono::milliseconds(300)));
  gate->Open();
  EXPECT_EQ(a.Read().body, "path=/block body=0");
  EXPECT_EQ(b.Read().body, "path=/block body=0");
  EXPECT_EQ(c.Read().body, "path=/queued body=0");
}

TEST_F(HttpServerTest, FullHandlerQueueGets503WithRetryAfterAndCloses) {
  auto gate = std::make_shared<Gate>();
  OpenOnExit open{gate};
  ServerOptions o = TestOptions();
  o.workers = 1;
  o.queue_limit = 0;
  StartServer(std::move(o), GatedHandler(gate));
  Client a(port());
  ASSERT_TRUE(a.Send("GET /block HTTP/1.1\r\nHost: x\r\n\r\n"));
  ASSERT_TRUE(gate->WaitForWaiters(1));
  Client b(port());
  ASSERT_TRUE(b.Send("GET /other HTTP/1.1\r\nHost: x\r\n\r\n"));
  ParsedResponse r = b.Read();
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(r.headers["retry-after"], "1");
  EXPECT_EQ(Lower(r.headers["connection"]), "close");
  EXPECT_EQ(r.body.rfind("ERR 503: Server busy: all 1 request handler threads are busy", 0), 0u) << r.body;
  EXPECT_TRUE(b.CleanEofFromPeer());
  gate->Open();
  EXPECT_EQ(a.Read().status, 200);
}

TEST_F(HttpServerTest, StopWaitsForARunningHandlerAndItsResponse) {
  auto gate = std::make_shared<Gate>();
  OpenOnExit open{gate};
  StartServer(TestOptions(), GatedHandler(gate));
  Client a(port());
  ASSERT_TRUE(a.Send("GET /block HTTP/1.1\r\nHost: x\r\n\r\n"));
  ASSERT_TRUE(gate->WaitForWaiters(1));
  std::atomic<bool> stopped{false};
  std::thread stopper([&] {
    server_->Stop();
    server_->Wait();
    stopped = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_FALSE(stopped.load());  // the handler is still running
  gate->Open();
  ParsedResponse r = a.Read();
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.body, "path=/block body=0");
  EXPECT_EQ(Lower(r.headers["connection"]), "close");
  stopper.join();
  EXPECT_TRUE(stopped.load());
}

TEST_F(HttpServerTest, HeaderDeadlineCoversTheWholeHeaderNotEachByte) {
  ServerOptions o = TestOptions();
  o.header_timeout_seconds = 1;
  o.keep_alive_seconds = 30;
  StartServer(std::move(o));
  Client c(port());
  const std::string request = "GET /x HTTP/1.1\r\nHost: x\r\nX-Pad: " + std::string(60, 'p') + "\r\n\r\n";
  // One byte every 100 ms would take ~8 s; the server must give up after about a second.
  auto start = Clock::now();
  size_t sent = 0;
  for (; sent < request.size(); ++sent) {
    if (!c.Send(request.substr(sent, 1))) break;
    if (!c.NothingArrivesWithin(std::chrono::milliseconds(100))) break;  // EOF (or anything) arrived
  }
  EXPECT_LT(sent, request.size()) << "the whole dribbled request was accepted";
  EXPECT_TRUE(c.ClosedByPeer());
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(4));
}

TEST_F(HttpServerTest, KeepAliveIdleTimeIsNotCutByTheHeaderDeadline) {
  ServerOptions o = TestOptions();
  o.header_timeout_seconds = 1;
  o.keep_alive_seconds = 10;
  StartServer(std::move(o));
  Client c(port());
  ASSERT_TRUE(c.Send("GET /first HTTP/1.1\r\nHost: x\r\n\r\n"));
  ASSERT_TRUE(c.Read().ok);
  // Idle longer than the header deadline: still within the keep-alive time, so the connection stays usable.
  EXPECT_TRUE(c.NothingArrivesWithin(std::chrono::milliseconds(1500)));
  ASSERT_TRUE(c.Send("GET /second HTTP/1.1\r\nHost: x\r\n\r\n"));
  ParsedResponse r = c.Read();
  ASSERT_TRUE(r.ok);
  EXPECT_NE(r.body.find("path=/second\n"), std::string::npos);
}

TEST_F(HttpServerTest, ConnectionCapHoldsNewClientsUntilASlotFrees) {
  ServerOptions o = TestOptions();
  o.max_connections = 2;
  StartServer(std::move(o));
  auto first = std::make_unique<Client>(port());
  Client second(port());
  for (Client* c : {first.get(), &second}) {  // both really accepted and served
    ASSERT_TRUE(c->Send("GET /held HTTP/1.1\r\nHost: x\r\n\r\n"));
    ASSERT_TRUE(c->Read().ok);
  }
  Client third(port());  // completes in the kernel's listen queue, but is not accepted
  ASSERT_TRUE(third.connected());
  ASSERT_TRUE(third.Send("GET /third HTTP/1.1\r\nHost: x\r\n\r\n"));
  EXPECT_TRUE(third.NothingArrivesWithin(std::chrono::milliseconds(500)));
  first.reset();  // frees a slot
  ParsedResponse r = third.Read();
  ASSERT_TRUE(r.ok);
  EXPECT_NE(r.body.find("path=/third\n"), std::string::npos);
}

// Exactly one response, then a clean end of the connection: the bytes after the rejected request never run.
void ExpectOneRejectionThenEof(uint16_t port, const std::string& payload, int status, const std::string& mentions) {
  Client c(port);
  ASSERT_TRUE(c.Send(payload));
  ParsedResponse r = c.Read();
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.status, status) << r.body;
  EXPECT_EQ(Lower(r.headers["connection"]), "close");
  EXPECT_NE(r.body.find(mentions), std::string::npos) << r.body;
  EXPECT_TRUE(c.CleanEofFromPeer()) << "a second response (or a reset) followed";
}

const std::string kSmuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";

TEST_F(HttpServerTest, TransferEncodingWithoutFinalChunkedGets400AndCloses) {
  StartServer();
  ExpectOneRejectionThenEof(port(), "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n" + kSmuggled, 400,
                            "does not end in chunked");
  ExpectOneRejectionThenEof(port(),
                            "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n" + kSmuggled, 400,
                            "'chunked, gzip' does not end in chunked");
}

TEST_F(HttpServerTest, TransferEncodingWithContentLengthGets400AndCloses) {
  StartServer();
  const std::string body = "0\r\n\r\n" + kSmuggled;
  ExpectOneRejectionThenEof(port(),
                            "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\nContent-Length: " +
                                std::to_string(body.size()) + "\r\n\r\n" + body + kSmuggled,
                            400, "both Transfer-Encoding and Content-Length");
  // Beast's own check (Content-Length after chunked) must end the connection too.
  ExpectOneRejectionThenEof(port(),
                            "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
                            "0\r\n\r\n" +
                                kSmuggled,
                            400, "Malformed HTTP request");
}

TEST_F(HttpServerTest, UnsupportedTransferCodingGets501AndCloses) {
  StartServer();
  ExpectOneRejectionThenEof(
      port(),
      "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n" + kSmuggled, 501,
      "not supported");
}

TEST_F(HttpServerTest, TransferEncodingInHttp10Gets400AndCloses) {
  StartServer();
  ExpectOneRejectionThenEof(port(),
                            "POST /a HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n" + kSmuggled,
                            400, "HTTP/1.0");
}

TEST_F(HttpServerTest, TransferEncodingSplitOverTwoFieldsEndingInChunkedIsStillRefusedWhenNotSupported) {
  StartServer();
  // Two fields form one list ("gzip, chunked"): the server cannot decode gzip, so it must not take the body raw.
  ExpectOneRejectionThenEof(
      port(),
      "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
      "5\r\nhello\r\n0\r\n\r\n" +
          kSmuggled,
      501, "'gzip, chunked'");
}

TEST_F(HttpServerTest, PlainChunkedBodyStillWorks) {
  StartServer();
  Client c(port());
  ASSERT_TRUE(c.Send("POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"));
  ParsedResponse r = c.Read();
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.status, 200);
  EXPECT_NE(r.body.find("body=hello"), std::string::npos) << r.body;
  ASSERT_TRUE(c.Send("GET /next HTTP/1.1\r\nHost: x\r\n\r\n"));  // keep-alive intact
  EXPECT_EQ(c.Read().status, 200);
}

TEST_F(HttpServerTest, BodyOverTheRemainingBudgetGets503AndTheBudgetComesBack) {
  auto gate = std::make_shared<Gate>();
  OpenOnExit open{gate};
  ServerOptions o = TestOptions();
  o.max_body_bytes = 1000;
  o.body_budget_bytes = 1500;
  StartServer(std::move(o), GatedHandler(gate));
  // A request holding 1000 bytes of budget while its handler runs...
  Client a(port());
  ASSERT_TRUE(a.Send("POST /block HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + std::string(1000, 'a')));
  ASSERT_TRUE(gate->WaitForWaiters(1));
  // ...leaves 500: a 600-byte body is refused before it is read, with Retry-After.
  Client b(port());
  ASSERT_TRUE(b.Send("POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 600\r\n\r\n" + std::string(600, 'b')));
  ParsedResponse r = b.Read();
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(r.headers["retry-after"], "1");
  EXPECT_EQ(Lower(r.headers["connection"]), "close");
  EXPECT_NE(r.body.find("--http-body-budget-bytes"), std::string::npos) << r.body;
  EXPECT_TRUE(b.CleanEofFromPeer());
  // A 400-byte body fits.
  Client c(port());
  ASSERT_TRUE(c.Send("POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 400\r\n\r\n" + std::string(400, 'c')));
  EXPECT_EQ(c.Read().body, "path=/c body=400");
  gate->Open();
  EXPECT_EQ(a.Read().body, "path=/block body=1000");
  // Everything was given back: the whole budget minus nothing can be taken again, twice in a row.
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(c.Send("POST /d HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + std::string(1000, 'd')));
    EXPECT_EQ(c.Read().body, "path=/d body=1000");
  }
}

TEST_F(HttpServerTest, ChunkedBodyGrowingPastTheBudgetGets503) {
  ServerOptions o = TestOptions();
  o.max_body_bytes = 4 << 20;
  o.body_budget_bytes = 1 << 20;
  StartServer(std::move(o));
  Client c(port());
  ASSERT_TRUE(c.Send("POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"));
  const std::string chunk(64 * 1024, 'x');
  std::string piece = "10000\r\n" + chunk + "\r\n";
  bool all_sent = true;
  for (int i = 0; i < 40 && all_sent; ++i) all_sent = c.Send(piece);  // 2.5 MiB, more than the budget
  ParsedResponse r = c.Read();
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(r.headers["retry-after"], "1");
  EXPECT_NE(r.body.find("chunked request body grew past"), std::string::npos) << r.body;
  // A small chunked body on a new connection is fine: the refused one gave its budget back.
  Client d(port());
  ASSERT_TRUE(d.Send("POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"));
  ParsedResponse r2 = d.Read();
  ASSERT_TRUE(r2.ok);
  EXPECT_EQ(r2.status, 200);
}

TEST_F(HttpServerTest, ChunkedBodyWithinTheBudgetIsReadWhole) {
  ServerOptions o = TestOptions();
  o.max_body_bytes = 4 << 20;
  o.body_budget_bytes = 8 << 20;
  StartServer(std::move(o));
  Client c(port());
  std::string expected;
  std::string payload = "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
  for (int i = 0; i < 50; ++i) {
    std::string chunk(10000 + i, static_cast<char>('a' + i % 26));
    expected += chunk;
    char size[16];
    std::snprintf(size, sizeof(size), "%zx", chunk.size());
    payload += std::string(size) + "\r\n" + chunk + "\r\n";
  }
  payload += "0\r\n\r\n";
  ASSERT_TRUE(c.Send(payload));
  ParsedResponse r = c.Read();
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.status, 200);
  EXPECT_TRUE(r.body.find("body=" + expected) != std::string::npos) << "body differs";
}

TEST_F(HttpServerTest, ClientStillUploadingAfterA413SeesTheResponseAndACleanEnd) {
  StartServer();  // max_body_bytes 1024
  Client c(port());
  ASSERT_TRUE(c.Send("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n"));
  // The 413 is on its way before any body byte; an ordinary client keeps sending regardless (it reads the
  // answer only after its upload), here 4 MiB in pieces.
  const std::string piece(64 * 1024, 'u');
  for (int i = 0; i < 64; ++i) ASSERT_TRUE(c.Send(piece)) << "send failed after " << i << " pieces (reset)";
  ParsedResponse r = c.Read();
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.status, 413);
  EXPECT_EQ(Lower(r.headers["connection"]), "close");
  EXPECT_EQ(r.headers.count("retry-after"), 0u);  // retrying the same body cannot help
  EXPECT_TRUE(c.CleanEofFromPeer());
}

}  // namespace
}  // namespace fhirlake::http
