// End-to-end tests for http::Server: a real server on 127.0.0.1 (port 0) talked to with a small blocking
// POSIX-socket client, so what is checked is the bytes on the wire, not Beast's view of them.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>

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
  void StartServer(ServerOptions options = TestOptions()) {
    server_ = std::make_unique<Server>(std::move(options), TestHandler);
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

}  // namespace
}  // namespace fhirlake::http
