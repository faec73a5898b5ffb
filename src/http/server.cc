// The Boost.Beast HTTP/1.1 server behind http::Server: accept loop (connection cap, back-off when out of file
// descriptors), one strand-serialised session per connection (header deadline, keep-alive, body limits and the
// body memory budget, message framing checks, chunked streaming of body_producer responses), handlers on a
// HandlerPool with the response posted back to the session's strand, and graceful shutdown.
// This is the only translation unit that includes Beast; no exception leaves it.
#include "http/server.h"

// g++12 in C++20 mode: <utility> has to come before any asio header, so it is kept out of include sorting.
// clang-format off
#include <utility>
// clang-format on

#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <vector>

#include "common/failpoint.h"
#include "http/chunked_body.h"
#include "http/handler_pool.h"

namespace fhirlake::http {

namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using error_code = boost::system::error_code;

namespace {

// Upper bound on how long Stop() lets in-flight requests finish before the handler pool and the io threads are
// stopped.
constexpr auto kDrainTimeout = std::chrono::seconds(10);
// After the handler pool has stopped, how long the io threads still get to write what its last handlers answered.
constexpr auto kFinalWriteTimeout = std::chrono::seconds(2);
// Request line + headers; FHIR search URLs can be long, so this is well above Beast's 8 KiB default.
constexpr uint32_t kHeaderLimit = 64 * 1024;
// Once the headers are in, the body may legitimately take longer than the header deadline (large uploads).
constexpr auto kBodyReadTimeout = std::chrono::seconds(300);
// Per write operation (one response, or one chunk): a client that stops reading is dropped after this.
constexpr auto kWriteTimeout = std::chrono::seconds(120);
// After an error response (400/413/503) the client may still be sending its body. Closing with unread input
// makes the kernel answer with a RST, which can destroy the response before the client has read it, so we
// half-close and read-and-discard until the client closes, for at most this long (a lingering close, as
// Apache and nginx do). Bounded by time only: discarding costs no memory, and a byte cap would reset honest
// clients that are still uploading a body they sent before they could see the answer.
constexpr auto kLingerTimeout = std::chrono::seconds(5);
constexpr size_t kDrainChunkBytes = 64 * 1024;
// An idle keep-alive connection waits for its next request with a read of this size (then the header deadline
// starts); the buffer is allocated only for that wait.
constexpr size_t kIdleReadBytes = 4096;
// Beast reads at most this much from the socket per read_some (beast::read_size's cap).
constexpr size_t kSocketReadBytes = 64 * 1024;
// When accept() fails for want of descriptors or memory the pending connection stays queued, so retrying at once
// would spin; wait this long instead (a connection closing is what frees a descriptor).
constexpr auto kAcceptBackoff = std::chrono::milliseconds(100);
// Retry-After on a 503 from the server itself (busy handlers, body budget): the condition is short-lived.
constexpr int kBusyRetryAfterSeconds = 1;

// Beast 1.74 uses boost::string_view, which does not convert to std::string_view by itself.
std::string_view ToStd(beast::string_view s) { return {s.data(), s.size()}; }

std::string EndpointString(const tcp::endpoint& ep) {
  const auto address = ep.address();
  std::string host = address.to_string();
  if (address.is_v6()) host = "[" + host + "]";
  return host + ":" + std::to_string(ep.port());
}

bool IsHttpError(const error_code& ec) {
  return ec.category() == bhttp::make_error_code(bhttp::error::body_limit).category();
}

// accept() failures that a retry at once cannot fix: the process or system is out of descriptors or buffers.
bool IsOutOfResources(const error_code& ec) {
  return ec == net::error::no_descriptors || ec == net::error::no_buffer_space || ec == net::error::no_memory ||
         ec == boost::system::errc::too_many_files_open_in_system;
}

// Headers the server owns: taking them from a handler would corrupt the framing of the connection.
bool IsFramingHeader(std::string_view name) {
  return EqualsIgnoreCase(name, "Content-Length") || EqualsIgnoreCase(name, "Transfer-Encoding") ||
         EqualsIgnoreCase(name, "Connection");
}

// CR/LF in a header would let a value smuggle extra headers (or a whole response) onto the wire.
bool IsSafeHeader(std::string_view name, std::string_view value) {
  if (name.empty() || name.find_first_of(" :\t") != std::string_view::npos) return false;
  auto bad = [](char c) { return c == '\r' || c == '\n' || c == '\0'; };
  return std::none_of(name.begin(), name.end(), bad) && std::none_of(value.begin(), value.end(), bad);
}

bool StatusHasNoBody(int status) { return status < 200 || status == 204 || status == 304; }

std::string_view TrimOws(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// A connection's byte stream: plain TCP, or TLS over it, chosen per listener at run time. Beast's algorithms see one
// AsyncStream type either way (the Session is not duplicated per stream type); every read and write goes through the
// tcp_stream underneath, whose expiry is the deadline of the operation in progress.
class ConnectionStream {
 public:
  using executor_type = beast::tcp_stream::executor_type;

  ConnectionStream(tcp::socket socket, net::ssl::context* tls) {
    if (tls != nullptr) {
      tls_.emplace(std::move(socket), *tls);
    } else {
      plain_.emplace(std::move(socket));
    }
  }
  executor_type get_executor() noexcept { return lowest().get_executor(); }
  beast::tcp_stream& lowest() { return tls_ ? beast::get_lowest_layer(*tls_) : *plain_; }
  bool is_tls() const { return tls_.has_value(); }
  beast::ssl_stream<beast::tcp_stream>& tls() { return *tls_; }

  template <class MutableBuffers, class Handler>
  void async_read_some(const MutableBuffers& buffers, Handler&& handler) {
    if (tls_) {
      tls_->async_read_some(buffers, std::forward<Handler>(handler));
    } else {
      plain_->async_read_some(buffers, std::forward<Handler>(handler));
    }
  }
  template <class ConstBuffers, class Handler>
  void async_write_some(const ConstBuffers& buffers, Handler&& handler) {
    if (tls_) {
      tls_->async_write_some(buffers, std::forward<Handler>(handler));
    } else {
      plain_->async_write_some(buffers, std::forward<Handler>(handler));
    }
  }

 private:
  std::optional<beast::tcp_stream> plain_;
  std::optional<beast::ssl_stream<beast::tcp_stream>> tls_;
};

struct Rejection {
  int status = 400;
  std::string message;
};

// Request smuggling (RFC 9112 section 6.1, 6.3): when the server and a proxy in front of it could disagree on
// where a body ends, the bytes after it could run as a second request. Beast treats a Transfer-Encoding whose
// final coding is not chunked (e.g. "gzip") as "no body" and keeps the connection, and takes Content-Length
// when it follows such a Transfer-Encoding; both are refused here, before any byte of the body is read, and the
// caller closes the connection after answering. Beast itself rejects conflicting Content-Length values and a
// Content-Length next to a chunked Transfer-Encoding (bad_content_length / bad_transfer_encoding: 400).
template <class Fields>
std::optional<Rejection> CheckFraming(const bhttp::header<true, Fields>& req) {
  std::vector<std::string_view> codings;
  bool has_transfer_encoding = false;
  auto [begin, end] = req.equal_range(bhttp::field::transfer_encoding);
  for (auto it = begin; it != end; ++it) {
    has_transfer_encoding = true;
    std::string_view value = ToStd(it->value());
    while (!value.empty()) {  // a list: elements separated by ',', empty elements allowed and ignored
      size_t comma = value.find(',');
      std::string_view element = TrimOws(value.substr(0, comma));
      if (!element.empty()) codings.push_back(element);
      value = comma == std::string_view::npos ? std::string_view() : value.substr(comma + 1);
    }
  }
  if (!has_transfer_encoding) return std::nullopt;
  std::string list;
  for (std::string_view c : codings) list += (list.empty() ? "" : ", ") + std::string(c);
  if (list.size() > 100) list = list.substr(0, 100) + "...";
  if (req.version() < 11) {
    return Rejection{400, "Transfer-Encoding is not allowed in an HTTP/1.0 request (RFC 9112 section 6.1)"};
  }
  if (req.count(bhttp::field::content_length) > 0) {
    return Rejection{400, "Request has both Transfer-Encoding and Content-Length (RFC 9112 section 6.3)"};
  }
  if (codings.empty() || !EqualsIgnoreCase(codings.back(), "chunked")) {
    return Rejection{400, "Transfer-Encoding '" + list +
                              "' does not end in chunked, so the request body has no length (RFC 9112 section 6.3)"};
  }
  if (codings.size() > 1) {
    return Rejection{501, "Transfer-Encoding '" + list + "' is not supported; send the body with chunked alone"};
  }
  return std::nullopt;
}

// The request bodies being buffered, server-wide, against --http-body-budget-bytes. Without it, N connections
// each uploading a body just under --max-body-bytes hold N times that in memory at once.
class BodyBudget {
 public:
  explicit BodyBudget(size_t limit) : limit_(limit) {}
  bool TryTake(size_t n) {
    size_t used = used_.load(std::memory_order_relaxed);
    do {
      if (n > limit_ - used) return false;
    } while (!used_.compare_exchange_weak(used, used + n, std::memory_order_relaxed));
    return true;
  }
  void Give(size_t n) { used_.fetch_sub(n, std::memory_order_relaxed); }
  size_t limit() const { return limit_; }

 private:
  const size_t limit_;
  std::atomic<size_t> used_{0};  // <= limit_
};

// One request's share of the BodyBudget; given back when the lease is reset or destroyed, i.e. when the body it
// covers is freed, however the request ends (answered, rejected, connection dropped).
class BodyLease {
 public:
  explicit BodyLease(BodyBudget* budget) : budget_(budget) {}
  BodyLease(BodyLease&& other) noexcept : budget_(other.budget_), bytes_(std::exchange(other.bytes_, 0)) {}
  BodyLease& operator=(BodyLease&& other) noexcept {
    if (this != &other) {
      Reset();
      budget_ = other.budget_;
      bytes_ = std::exchange(other.bytes_, 0);
    }
    return *this;
  }
  BodyLease(const BodyLease&) = delete;
  BodyLease& operator=(const BodyLease&) = delete;
  ~BodyLease() { Reset(); }

  // Grows the lease to at least `total` bytes; false (lease unchanged) when the budget cannot cover it.
  bool GrowTo(size_t total) {
    if (total <= bytes_) return true;
    if (!budget_->TryTake(total - bytes_)) return false;
    bytes_ = total;
    return true;
  }
  void Reset() {
    if (bytes_ > 0) budget_->Give(bytes_);
    bytes_ = 0;
  }

 private:
  BodyBudget* budget_;
  size_t bytes_ = 0;
};

}  // namespace

class Server::Impl {
 public:
  Impl(ServerOptions options, RequestHandler handler)
      : options_(std::move(options)),
        handler_(std::move(handler)),
        pool_(options_.workers, options_.queue_limit),
        budget_(options_.body_budget_bytes),
        acceptor_(net::make_strand(ioc_)),
        accept_backoff_(acceptor_.get_executor()) {}

  ~Impl() {
    Stop();
    Wait();
    std::lock_guard lock(state_mu_);
    if (stopper_.joinable()) stopper_.join();  // it has set stopped_ already; this only reaps the thread
  }

  Status Listen();
  Status Start();
  uint16_t port() const { return port_.load(); }
  void Wait();
  void Stop();

 private:
  class Session;

  void DoAccept();
  void OnAccept(const error_code& ec, tcp::socket socket);
  // Called with sessions_mu_ held when a session ends: restarts accepting if the connection cap had paused it.
  void ResumeAcceptIfPaused();
  void DoStop();
  // True on an io thread or a handler thread: such a thread cannot wait for the server to drain or join itself.
  bool IsServerThread() const;

  // Builds a server-generated error response; falls back to plain text if the responder is missing or throws.
  Response ErrorResponse(int status, const std::string& message) const;
  // Runs the application handler; exceptions become a 500 here so they never reach asio or a pool thread.
  Response Handle(const Request& request) const;
  bool RunsInline(const Request& request) const;

  const ServerOptions options_;
  const RequestHandler handler_;
  HandlerPool pool_;
  // Before ioc_: sessions (holding leases) may be destroyed with the io_context.
  BodyBudget budget_;

  // Live sessions, so Stop() can tell idle keep-alive connections to close and wait for busy ones, and so the
  // connection cap can be enforced. Declared before ioc_ because sessions still queued in the io_context
  // unregister themselves when it is destroyed.
  std::mutex sessions_mu_;
  std::condition_variable sessions_cv_;
  std::unordered_map<Session*, std::weak_ptr<Session>> sessions_;  // GUARDED_BY(sessions_mu_)
  std::atomic<bool> stopping_{false};  // written under sessions_mu_ so registration cannot race Stop()
  bool accept_paused_ = false;         // GUARDED_BY(sessions_mu_): the cap is reached, no accept is pending
  uint64_t cap_pauses_ = 0;            // GUARDED_BY(sessions_mu_): for rate-limited logging

  // Lifecycle: started_ once Start() succeeded, stop_requested_ on the first Stop(), stopped_ when the
  // threads are joined (Wait() returns then).
  std::mutex state_mu_;
  std::condition_variable state_cv_;
  bool listening_ = false;  // bound and listening (Listen), not yet accepting
  bool started_ = false;
  bool stop_requested_ = false;
  bool stopped_ = false;
  std::thread stopper_;  // used only when Stop() is called from a server thread (it cannot join itself)

  std::atomic<uint16_t> port_{0};
  std::optional<net::ssl::context> tls_;  // set by Listen() when options_ name a certificate
  net::io_context ioc_;
  std::optional<net::executor_work_guard<net::io_context::executor_type>> work_;
  tcp::acceptor acceptor_;
  net::steady_timer accept_backoff_;  // on the acceptor's strand
  uint64_t accept_failures_ = 0;      // consecutive accept() failures; acceptor strand only
  std::vector<std::thread> threads_;
};

// One TCP connection. All its I/O runs on its own strand (the executor of its stream), so the members need no
// locking; the server and the handler pool only reach in through net::post onto that strand. While a handler
// runs on the pool no I/O is pending on the connection (the next request is read only after this response).
class Server::Impl::Session : public std::enable_shared_from_this<Session> {
  // Wraps a completion handler: keeps the session alive until it has run, and makes sure no exception
  // (bad_alloc, a Beast precondition) escapes into asio; the connection is dropped instead.
  template <class F>
  auto Guard(F f) {
    return [self = shared_from_this(), f = std::move(f)](auto&&... args) mutable {
      try {
        f(std::forward<decltype(args)>(args)...);
      } catch (const std::exception& e) {
        spdlog::error("http: dropping connection from {}: {}", self->remote_, e.what());
        self->Close();
      } catch (...) {
        spdlog::error("http: dropping connection from {}: non-standard exception", self->remote_);
        self->Close();
      }
    };
  }

  // A request on its way to a handler thread, with the budget its body holds (given back when it is freed).
  struct PendingRequest {
    Request request;
    BodyLease lease;
  };

 public:
  Session(Impl* server, tcp::socket socket)
      : server_(server),
        strand_(socket.get_executor()),
        stream_(std::move(socket), server->tls_ ? &*server->tls_ : nullptr),
        lease_(&server->budget_) {
    error_code ec;
    auto ep = stream_.lowest().socket().remote_endpoint(ec);
    if (!ec) remote_ = EndpointString(ep);
  }

  ~Session() {
    std::lock_guard lock(server_->sessions_mu_);
    server_->sessions_.erase(this);
    server_->sessions_cv_.notify_all();
    server_->ResumeAcceptIfPaused();
  }

  void Start() {
    net::dispatch(
        strand_, Guard([this] {
          if (!stream_.is_tls()) return DoRead();
          // The handshake shares the header deadline: a client that stalls in it is dropped alike.
          stream_.lowest().expires_after(std::chrono::seconds(std::max(1, server_->options_.header_timeout_seconds)));
          stream_.tls().async_handshake(net::ssl::stream_base::server, Guard([this](const error_code& ec) {
                                          if (ec) {
                                            spdlog::debug("http: TLS handshake with {} failed: {}", remote_,
                                                          ec.message());
                                            return Close();
                                          }
                                          DoRead();
                                        }));
        }));
  }

  // Posted by Stop(): an idle connection is closed now; a busy one closes after its current response.
  void OnServerStop() {
    net::post(strand_, Guard([this] {
                if (!busy_ && !closing_) Close();
              }));
  }

 private:
  void DoRead() {
    if (server_->stopping_.load()) return Close();
    busy_ = false;
    // A big request may have grown the read buffer; an idle keep-alive connection should not keep it.
    buffer_.shrink_to_fit();
    // A new connection, or a pipelined request already buffered: its header deadline runs from now. Between
    // requests on a keep-alive connection the idle timeout applies until the first byte of the next one.
    if (buffer_.size() == 0 && served_ > 0) return WaitForRequest();
    ReadHeader();
  }

  void WaitForRequest() {
    stream_.lowest().expires_after(std::chrono::seconds(std::max(1, server_->options_.keep_alive_seconds)));
    stream_.async_read_some(buffer_.prepare(kIdleReadBytes), Guard([this](const error_code& ec, size_t n) {
                              buffer_.commit(n);
                              // Idle timeout, the client closed, or Stop() closed an idle connection.
                              if (ec) return Close();
                              ReadHeader();
                            }));
  }

  void ReadHeader() {
    parser_.emplace();
    parser_->header_limit(kHeaderLimit);
    parser_->body_limit(static_cast<uint64_t>(server_->options_.max_body_bytes));
    // One deadline for the whole request line + headers (the stream's expiry is a point in time, not a gap
    // between reads), so dribbling a byte at a time cannot hold a connection. On expiry Beast closes the
    // socket: the connection ends silently, as with nginx's and Go's header timeouts.
    stream_.lowest().expires_after(std::chrono::seconds(std::max(1, server_->options_.header_timeout_seconds)));
    bhttp::async_read_header(stream_, buffer_, *parser_, Guard([this](const error_code& ec, size_t) { OnHeader(ec); }));
  }

  void OnHeader(const error_code& ec) {
    if (ec) return OnReadError(ec);
    busy_ = true;  // a request has started: Stop() now waits for its response instead of dropping it
    ++served_;
    auto& req = parser_->get();
    version_ = req.version() == 10 ? 10 : 11;
    if (auto rejected = CheckFraming(req.base())) return SendErrorAndClose(rejected->status, rejected->message);
    if (parser_->is_done()) return HandleRequest();
    if (auto length = parser_->content_length(); length && !lease_.GrowTo(*length)) {
      return SendErrorAndClose(503,
                               "Server busy: a request body of " + std::to_string(*length) +
                                   " bytes does not fit in what is left of the request body memory budget (" +
                                   std::to_string(server_->budget_.limit()) +
                                   " bytes, --http-body-budget-bytes); retry later",
                               kBusyRetryAfterSeconds);
    }
    if (EqualsIgnoreCase(ToStd(req[bhttp::field::expect]), "100-continue")) {
      // curl and others wait (up to a second) for this before sending a large body.
      continue_.emplace(bhttp::status::continue_, req.version());
      stream_.lowest().expires_after(kWriteTimeout);
      bhttp::async_write(stream_, *continue_, Guard([this](const error_code& wec, size_t) {
                           continue_.reset();
                           if (wec) return Close();
                           ReadBody();
                         }));
      return;
    }
    ReadBody();
  }

  void ReadBody() {
    stream_.lowest().expires_after(kBodyReadTimeout);  // for the whole body, like the header deadline
    if (parser_->chunked()) return ReadChunkedBody();
    // Content-Length: the budget already covers it (string_body reserves exactly that much up front).
    bhttp::async_read(stream_, buffer_, *parser_, Guard([this](const error_code& ec, size_t) {
                        if (ec) return OnReadError(ec);
                        HandleRequest();
                      }));
  }

  // A chunked body has no declared length: it is read piecewise, and before each piece the body's string is
  // grown ahead of need with the budget taken first, so the memory it holds never exceeds its lease.
  void ReadChunkedBody() {
    if (!ReserveChunkedBody()) {
      return SendErrorAndClose(503,
                               "Server busy: the chunked request body grew past what is left of the request body "
                               "memory budget (" +
                                   std::to_string(server_->budget_.limit()) +
                                   " bytes, --http-body-budget-bytes); retry later",
                               kBusyRetryAfterSeconds);
    }
    // Not beast::http::async_read_some: its loop re-puts after need_more whatever the buffer holds, which Beast
    // 1.74 cannot always take (PutChunkedBody, http/chunked_body.h; the fuzz harness runs the same step).
    error_code ec;
    switch (PutChunkedBody(*parser_, buffer_, ec)) {
      case ChunkedBodyStep::kDone:
        return HandleRequest();
      case ChunkedBodyStep::kError:
        return OnReadError(ec);
      case ChunkedBodyStep::kNeedInput:
        break;
    }
    stream_.async_read_some(buffer_.prepare(kSocketReadBytes), Guard([this](const error_code& rec, size_t n) {
                              buffer_.commit(n);
                              // The peer closed before the last chunk: nobody is left to answer (as Beast's
                              // read_some reports it, partial_message).
                              if (rec == net::error::eof) return OnReadError(bhttp::error::partial_message);
                              if (rec) return OnReadError(rec);
                              ReadChunkedBody();
                            }));
  }

  bool ReserveChunkedBody() {
    std::string& body = parser_->get().body();
    // Each step hands the parser what is buffered, then reads at most kSocketReadBytes more; the parser's body
    // limit (--max-body-bytes) stops it from going further.
    const size_t need = std::min(body.size() + buffer_.size() + kSocketReadBytes, server_->options_.max_body_bytes);
    if (need <= body.capacity()) return true;
    const size_t target = std::max(need, body.capacity() * 2);  // geometric, as the string itself would grow
    if (!lease_.GrowTo(target)) return false;
    body.reserve(target);
    return lease_.GrowTo(body.capacity());  // the allocator may round up
  }

  void OnReadError(const error_code& ec) {
    if (ec == bhttp::error::body_limit) {
      const size_t limit = server_->options_.max_body_bytes;
      std::string message;
      // The parser rejects a too-large Content-Length before it marks the header done (so content_length()
      // is not available yet), but the field itself has already been stored.
      const std::string_view length = ToStd(parser_->get()[bhttp::field::content_length]);
      if (!length.empty() && length.find_first_not_of("0123456789") == std::string_view::npos) {
        message = "Request body of " + std::string(length) + " bytes exceeds the limit of " + std::to_string(limit) +
                  " bytes (--max-body-bytes)";
      } else {
        message = "Request body exceeds the limit of " + std::to_string(limit) + " bytes (--max-body-bytes)";
      }
      return SendErrorAndClose(413, message);
    }
    if (ec == bhttp::error::header_limit) {
      return SendErrorAndClose(431,
                               "Request header fields exceed the limit of " + std::to_string(kHeaderLimit) + " bytes");
    }
    // end_of_stream / partial_message: the peer went away, there is nobody left to answer.
    if (IsHttpError(ec) && ec != bhttp::error::end_of_stream && ec != bhttp::error::partial_message) {
      return SendErrorAndClose(400, "Malformed HTTP request: " + ec.message());
    }
    // Timeouts (header deadline, body), resets, and our own Close() cancelling the read.
    Close();
  }

  void HandleRequest() {
    bhttp::request<bhttp::string_body> msg = parser_->release();
    parser_.reset();

    auto pending = std::make_shared<PendingRequest>(PendingRequest{Request{}, std::move(lease_)});
    Request& request = pending->request;
    request.method = std::string(ToStd(msg.method_string()));
    request.target = std::string(ToStd(msg.target()));
    std::string_view target(request.target);
    size_t q = target.find('?');
    request.path = PercentDecode(target.substr(0, q), false);
    if (q != std::string_view::npos) {
      request.raw_query = std::string(target.substr(q + 1));
      request.query = ParseQuery(request.raw_query);
    }
    for (const auto& field : msg) {
      request.headers.Add(std::string(ToStd(field.name_string())), std::string(ToStd(field.value())));
    }
    request.body = std::move(msg.body());
    request.remote_address = remote_;
    request.secure = stream_.is_tls();

    const bool head = msg.method() == bhttp::verb::head;
    const bool keep_alive = msg.keep_alive();
    const unsigned version = msg.version();

    if (server_->RunsInline(request)) {
      Response response = server_->Handle(request);
      pending.reset();
      return Respond(std::move(response), version, keep_alive, head);
    }
    const bool queued =
        server_->pool_.TrySubmit([self = shared_from_this(), pending, version, keep_alive, head]() mutable {
          Response response;
          if (Status st = failpoint::Hit("http.before_handler"); !st.ok()) {
            response = self->server_->ErrorResponse(500, "Internal error: " + st.message());
          } else {
            response = self->server_->Handle(pending->request);
          }
          pending.reset();  // frees the body and gives its budget back before the response is written
          Session* s = self.get();
          net::post(s->strand_, s->Guard([s, response = std::move(response), version, keep_alive, head]() mutable {
            s->Respond(std::move(response), version, keep_alive, head);
          }));
        });
    if (!queued) {
      pending.reset();
      SendErrorAndClose(503,
                        "Server busy: all " + std::to_string(std::max(1, server_->options_.workers)) +
                            " request handler threads are busy and " + std::to_string(server_->options_.queue_limit) +
                            " requests are waiting (--http-workers, --http-queue-limit); retry later",
                        kBusyRetryAfterSeconds);
    }
  }

  void Respond(Response response, unsigned version, bool keep_alive_requested, bool head) {
    // During shutdown the response says "Connection: close" so the client does not reuse the connection.
    const bool keep_alive = keep_alive_requested && !EqualsIgnoreCase(response.headers.Get("Connection"), "close") &&
                            !server_->stopping_.load();
    WriteResponse(std::move(response), version, keep_alive, head);
  }

  // Every response the server makes up itself ends the connection ("Connection: close"): after a framing or
  // size error the rest of the input cannot be trusted, and shedding the connection is part of shedding load.
  // A 503 says when to come back.
  void SendErrorAndClose(int status, const std::string& message, int retry_after_seconds = 0) {
    busy_ = true;
    const unsigned version = parser_ ? (parser_->get().version() == 10 ? 10 : 11) : version_;
    // Nothing of this request will be used: free its body and budget now, not after the lingering close.
    parser_.reset();
    lease_.Reset();
    Response response = server_->ErrorResponse(status, message);
    if (retry_after_seconds > 0) response.headers.Set("Retry-After", std::to_string(retry_after_seconds));
    WriteResponse(std::move(response), version, /*keep_alive=*/false, /*head=*/false, /*drain_input=*/true);
  }

  template <class Body>
  void CopyHeaders(const Response& response, bhttp::response<Body>* res) {
    res->result(static_cast<unsigned>(response.status));
    for (const auto& [name, value] : response.headers.items()) {
      if (IsFramingHeader(name)) continue;
      if (!IsSafeHeader(name, value)) {
        spdlog::error("http: dropping response header '{}' with control characters", name);
        continue;
      }
      res->insert(name, value);
    }
  }

  void WriteResponse(Response response, unsigned version, bool keep_alive, bool head, bool drain_input = false) {
    keep_alive_ = keep_alive;
    drain_input_ = drain_input;
    if (response.status < 100 || response.status > 999) {
      // Beast throws on a status above 999; a handler bug should not cost the client its answer.
      spdlog::error("http: handler returned invalid status {}; sending 500", response.status);
      response = server_->ErrorResponse(500, "Internal error: invalid HTTP status " + std::to_string(response.status));
      if (response.status < 100 || response.status > 999) response.status = 500;
    }
    if (response.body_producer && !head && !StatusHasNoBody(response.status)) {
      return StartStreaming(std::move(response), version, keep_alive);
    }
    auto res = std::make_shared<bhttp::response<bhttp::string_body>>();
    res->version(version);
    CopyHeaders(response, res.get());
    res->keep_alive(keep_alive);
    // Beast writes "close" only for HTTP/1.1 (it is 1.0's default); say it always, so every client can tell.
    if (!keep_alive) res->set(bhttp::field::connection, "close");
    if (!StatusHasNoBody(response.status)) {
      if (head) {
        // HEAD announces the length a GET would get but sends no body. A streamed body's length is unknown.
        if (!response.body_producer) res->content_length(response.body.size());
      } else {
        res->content_length(response.body.size());
        res->body() = std::move(response.body);
      }
    }
    stream_.lowest().expires_after(kWriteTimeout);
    bhttp::async_write(stream_, *res, Guard([this, res](const error_code& ec, size_t) { OnResponseWritten(ec); }));
  }

  // Streams body_producer output with chunked transfer encoding (HTTP/1.1), one chunk per producer call, so
  // a multi-GB export file never sits in memory. HTTP/1.0 clients get a close-delimited body instead.
  void StartStreaming(Response response, unsigned version, bool keep_alive) {
    producer_ = std::move(response.body_producer);
    ++stream_gen_;
    producing_ = waiting_ = false;
    ready_.reset();
    stream_res_.emplace();
    stream_res_->version(version);
    CopyHeaders(response, &*stream_res_);
    if (version >= 11) {
      stream_res_->chunked(true);
    } else {
      keep_alive_ = keep_alive = false;
    }
    stream_res_->keep_alive(keep_alive);
    if (!keep_alive) stream_res_->set(bhttp::field::connection, "close");
    stream_res_->body().data = nullptr;
    stream_res_->body().more = true;
    serializer_.emplace(*stream_res_);
    stream_.lowest().expires_after(kWriteTimeout);
    bhttp::async_write_header(stream_, *serializer_, Guard([this](const error_code& ec, size_t) {
                                if (ec) return FinishStreaming(ec);
                                WriteNextChunk();
                              }));
  }

  // Runs a producer once: its chunk, whether more follow, and the error that stopped it (empty: none).
  struct Produced {
    std::string chunk;
    bool more = false;
    std::string error;
  };
  static Produced RunProducer(const std::function<bool(std::string*)>& producer) {
    Produced out;
    try {
      out.more = producer(&out.chunk);
    } catch (const std::exception& e) {
      out.error = e.what()[0] ? e.what() : "unknown error";
    } catch (...) {
      out.error = "a non-standard exception";
    }
    return out;
  }

  // The producer reads (a local file or an S3 object) and may compress: it runs on the handler pool, never on an
  // I/O thread, so a slow read or gzip of one download does not stall the other connections; when the pool is full
  // it runs here. One chunk ahead: while a chunk is written to the socket the next one is produced (at most one
  // production at a time per connection, so the producer is never called concurrently). Results come back through
  // the strand, tagged with the stream they belong to (a keep-alive connection streams one response after another).
  void Produce() {
    producing_ = true;
    auto self = shared_from_this();
    const uint64_t gen = stream_gen_;
    const bool queued = server_->pool_.TrySubmit([self, gen, producer = producer_]() {
      Produced produced = RunProducer(producer);
      Session* s = self.get();
      net::post(s->strand_, s->Guard([s, gen, produced = std::move(produced)]() mutable {
        s->OnProduced(gen, std::move(produced));
      }));
    });
    if (!queued) OnProduced(gen, RunProducer(producer_));
  }

  void OnProduced(uint64_t gen, Produced produced) {
    if (gen != stream_gen_ || !producer_) return;  // that stream ended meanwhile
    producing_ = false;
    if (waiting_) {
      waiting_ = false;
      return OnChunk(std::move(produced));
    }
    ready_ = std::move(produced);
  }

  // The socket wants the next chunk: the one produced ahead, or the one being produced when it arrives.
  void WriteNextChunk() {
    if (ready_) {
      Produced next = std::move(*ready_);
      ready_.reset();
      return OnChunk(std::move(next));
    }
    waiting_ = true;
    if (!producing_) Produce();
  }

  void OnChunk(Produced produced) {
    if (!produced.error.empty()) {
      // The status line is already on the wire; the only honest signal left is to cut the connection
      // without the terminating chunk, so the client sees a truncated transfer rather than a short file.
      spdlog::error("http: response body producer failed: {}", produced.error);
      return FinishStreaming(net::error::make_error_code(net::error::operation_aborted));
    }
    const bool more = produced.more;
    chunk_ = std::move(produced.chunk);
    if (more) Produce();  // the next chunk, while this one is written
    if (chunk_.empty() && more) return WriteNextChunk();
    if (chunk_.empty()) return WriteLastChunk();  // here !more: the producer is done
    auto& body = stream_res_->body();
    body.data = chunk_.data();
    body.size = chunk_.size();
    body.more = true;
    stream_.lowest().expires_after(kWriteTimeout);
    bhttp::async_write(stream_, *serializer_, Guard([this, more](error_code ec, size_t) {
                         if (ec == bhttp::error::need_buffer) ec = {};  // chunk sent; the serializer wants the next
                         if (ec) return FinishStreaming(ec);
                         if (more) return WriteNextChunk();
                         WriteLastChunk();
                       }));
  }

  void WriteLastChunk() {
    auto& body = stream_res_->body();
    body.data = nullptr;
    body.size = 0;
    body.more = false;
    stream_.lowest().expires_after(kWriteTimeout);
    bhttp::async_write(stream_, *serializer_, Guard([this](error_code ec, size_t) {
                         if (ec == bhttp::error::need_buffer) ec = {};
                         FinishStreaming(ec);
                       }));
  }

  void FinishStreaming(const error_code& ec) {
    serializer_.reset();
    stream_res_.reset();
    producer_ = nullptr;  // may hold an open file; release it now rather than with the session
    ++stream_gen_;        // a production still running on the pool is dropped when it reports back
    ready_.reset();
    producing_ = waiting_ = false;
    chunk_.clear();
    chunk_.shrink_to_fit();
    OnResponseWritten(ec);
  }

  void OnResponseWritten(const error_code& ec) {
    if (ec) return Close();
    if (!keep_alive_ || server_->stopping_.load()) return GracefulClose();
    DoRead();  // next request on this keep-alive connection (DoRead closes if Stop() came meanwhile)
  }

  // Half-closes our side so the client sees a clean end of the response, optionally discarding what the
  // client is still sending (see kLingerTimeout), then closes.
  void GracefulClose() {
    closing_ = true;
    if (stream_.is_tls()) {
      // TLS has no half-close that leaves the peer able to send: a client still uploading a body it sent before it
      // could see the answer keeps sending, and OpenSSL fails a shutdown as soon as application data arrives. So
      // the input is read and dropped first (as below, for at most the linger time), then close_notify is sent.
      stream_.lowest().expires_after(kLingerTimeout);
      if (drain_input_) {
        drain_buf_ = std::make_unique<char[]>(kDrainChunkBytes);
        return Drain();
      }
      stream_.tls().async_shutdown(Guard([this](const error_code&) { Close(); }));
      return;
    }
    error_code ignored;
    stream_.lowest().socket().shutdown(tcp::socket::shutdown_send, ignored);
    if (!drain_input_) return Close();
    drain_buf_ = std::make_unique<char[]>(kDrainChunkBytes);
    stream_.lowest().expires_after(kLingerTimeout);
    Drain();
  }

  void Drain() {
    stream_.async_read_some(net::buffer(drain_buf_.get(), kDrainChunkBytes),
                            Guard([this](const error_code& ec, size_t) {
                              if (ec) return Close();  // the client closed (or the linger time is up)
                              Drain();
                            }));
  }

  void Close() {
    closing_ = true;
    error_code ignored;
    stream_.lowest().socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.lowest().socket().close(ignored);  // cancels a pending read; its handler drops the last reference
  }

  Impl* server_;
  const net::any_io_executor strand_;  // the connection's strand (also the stream's executor)
  ConnectionStream stream_;
  beast::flat_buffer buffer_;
  std::string remote_;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  std::optional<bhttp::response<bhttp::empty_body>> continue_;
  BodyLease lease_;        // the budget held by the body being read; moves with the request to its handler
  unsigned version_ = 11;  // HTTP version of the current request (for server-generated responses)
  uint64_t served_ = 0;    // requests started on this connection
  bool busy_ = false;      // between receiving a request's headers and finishing its response
  bool closing_ = false;   // the connection is being torn down; Stop() has nothing left to do
  bool keep_alive_ = true;
  bool drain_input_ = false;

  // Streaming state (only while a body_producer response is being written).
  std::function<bool(std::string*)> producer_;
  std::optional<bhttp::response<bhttp::buffer_body>> stream_res_;
  std::optional<bhttp::response_serializer<bhttp::buffer_body>> serializer_;
  std::string chunk_;
  std::optional<Produced> ready_;  // the next chunk, produced ahead
  bool producing_ = false;         // a production is running (on the pool) for the current stream
  bool waiting_ = false;           // the socket waits for that production
  uint64_t stream_gen_ = 0;        // which stream a production belongs to

  std::unique_ptr<char[]> drain_buf_;  // only during a lingering close
};

Status Server::Impl::Listen() {
  {
    std::lock_guard lock(state_mu_);
    if (started_ || stop_requested_) return Status::Internal("http server: Listen() after Start() or Stop()");
    if (listening_) return Status::Ok();
  }
  const std::string where = options_.host + ":" + std::to_string(options_.port);
  if (!options_.tls_cert_file.empty() || !options_.tls_key_file.empty()) {
    if (options_.tls_cert_file.empty() || options_.tls_key_file.empty()) {
      return Status::Invalid("TLS needs both a certificate and its private key (--tls-cert and --tls-key)");
    }
    net::ssl::context tls(net::ssl::context::tls_server);
    // TLS 1.2 and 1.3 only; OpenSSL's default cipher suites (no export, NULL or RC4 ones at its level 2).
    SSL_CTX_set_min_proto_version(tls.native_handle(), TLS1_2_VERSION);
    tls.set_options(net::ssl::context::default_workarounds | net::ssl::context::no_compression |
                    net::ssl::context::single_dh_use);
    error_code tls_ec;
    tls.use_certificate_chain_file(options_.tls_cert_file, tls_ec);
    if (tls_ec) {
      return Status::Invalid("cannot load the TLS certificate " + options_.tls_cert_file +
                             " (--tls-cert, PEM): " + tls_ec.message());
    }
    tls.use_private_key_file(options_.tls_key_file, net::ssl::context::pem, tls_ec);
    if (tls_ec || SSL_CTX_check_private_key(tls.native_handle()) != 1) {
      // OpenSSL checks the key against the certificate as it loads it ("key values mismatch").
      return Status::Invalid(
          "cannot use the TLS private key (--tls-key, PEM): it cannot be read, or it does not "
          "belong to the certificate (--tls-cert)" +
          (tls_ec ? ": " + tls_ec.message() : std::string()));
    }
    tls_.emplace(std::move(tls));
  }
  error_code ec;
  tcp::resolver resolver(ioc_);
  auto endpoints = resolver.resolve(options_.host, std::to_string(options_.port),
                                    tcp::resolver::passive | tcp::resolver::numeric_service, ec);
  if (ec) return Status::Unavailable("cannot listen on " + where + ": " + ec.message());

  // Try each resolved address ("localhost" may give ::1 and 127.0.0.1); the last failure is reported.
  bool listening = false;
  for (const auto& entry : endpoints) {
    const tcp::endpoint ep = entry.endpoint();
    error_code ignored;
    acceptor_.close(ignored);
    acceptor_.open(ep.protocol(), ec);
    if (ec) continue;
    acceptor_.set_option(net::socket_base::reuse_address(true), ec);
    if (ec) continue;
    acceptor_.bind(ep, ec);
    if (ec) continue;
    acceptor_.listen(net::socket_base::max_listen_connections, ec);
    if (ec) continue;
    listening = true;
    break;
  }
  if (!listening) {
    error_code ignored;
    acceptor_.close(ignored);
    if (!ec) ec = net::error::make_error_code(net::error::host_not_found);
    return Status::Unavailable("cannot listen on " + where + ": " + ec.message());
  }
  auto local = acceptor_.local_endpoint(ec);
  if (ec) return Status::Unavailable("cannot listen on " + where + ": " + ec.message());
  port_.store(local.port());
  std::lock_guard lock(state_mu_);
  listening_ = true;
  return Status::Ok();
}

Status Server::Impl::Start() {
  {
    std::lock_guard lock(state_mu_);
    if (started_ || stop_requested_) return Status::Internal("http server: Start() called twice or after Stop()");
  }
  RETURN_IF_ERROR(Listen());
  const std::string where = options_.host + ":" + std::to_string(options_.port);
  if (Status st = pool_.Start(); !st.ok()) {
    error_code ignored;
    acceptor_.close(ignored);
    return Status::Unavailable("cannot start the http server on " + where + ": " + st.message());
  }
  try {
    work_.emplace(ioc_.get_executor());
    DoAccept();
    const int n = std::max(1, options_.threads);
    threads_.reserve(n);
    for (int i = 0; i < n; ++i) {
      threads_.emplace_back([this] {
        // Completion handlers catch their own errors; this loop is the last line of defence so that a
        // stray exception costs one handler, not the process.
        while (true) {
          try {
            ioc_.run();
            return;
          } catch (const std::exception& e) {
            spdlog::error("http: unexpected exception in io thread: {}", e.what());
          } catch (...) {
            spdlog::error("http: unexpected non-standard exception in io thread");
          }
        }
      });
    }
  } catch (const std::exception& e) {
    // Only std::thread creation can get here (resource exhaustion). Unwind what was started.
    work_.reset();
    ioc_.stop();
    for (auto& t : threads_) t.join();
    threads_.clear();
    pool_.Shutdown(/*drop_queued=*/true);
    error_code ignored;
    acceptor_.close(ignored);
    return Status::Unavailable("cannot start the http server on " + where + ": " + e.what());
  }

  std::lock_guard lock(state_mu_);
  started_ = true;
  return Status::Ok();
}

void Server::Impl::DoAccept() {
  acceptor_.async_accept(net::make_strand(ioc_),
                         [this](const error_code& ec, tcp::socket socket) { OnAccept(ec, std::move(socket)); });
}

void Server::Impl::OnAccept(const error_code& ec, tcp::socket socket) {
  if (ec == net::error::operation_aborted || !acceptor_.is_open()) return;  // Stop() closed the acceptor
  if (ec) {
    if (IsOutOfResources(ec)) {
      // The connection stays in the listen queue and the acceptor stays readable: retrying now would spin.
      if (accept_failures_++ % 100 == 0) {
        spdlog::warn("http: accept failed: {} ({} time(s) in a row); retrying every {} ms", ec.message(),
                     accept_failures_, kAcceptBackoff.count());
      }
      try {
        accept_backoff_.expires_after(kAcceptBackoff);
        accept_backoff_.async_wait([this](const error_code& wec) {
          if (wec || !acceptor_.is_open()) return;  // cancelled by Stop()
          DoAccept();
        });
        return;
      } catch (const std::exception& e) {
        spdlog::error("http: cannot arm the accept back-off timer: {}", e.what());
      }
    } else {
      // E.g. a connection reset before it was accepted; the next one is unaffected.
      spdlog::warn("http: accept failed: {}", ec.message());
    }
    return DoAccept();
  }
  if (accept_failures_ > 0) {
    spdlog::info("http: accepting again after {} failed attempt(s)", accept_failures_);
    accept_failures_ = 0;
  }
  bool paused = false;
  try {
    auto session = std::make_shared<Session>(this, std::move(socket));
    bool accepted = false;
    {
      std::lock_guard lock(sessions_mu_);
      if (!stopping_.load()) {
        sessions_.emplace(session.get(), session);
        accepted = true;
        if (sessions_.size() >= options_.max_connections) {
          // No accept stays pending: further clients wait in the kernel's listen queue until a session ends
          // (ResumeAcceptIfPaused), instead of being accepted and starved.
          accept_paused_ = paused = true;
          if (cap_pauses_++ % 1000 == 0) {
            spdlog::warn("http: {} connections open (--http-max-connections); not accepting until one closes",
                         sessions_.size());
          }
        }
      }
    }
    if (!accepted) return;  // Stop() is under way; the socket closes with the session
    session->Start();
  } catch (const std::exception& e) {
    spdlog::error("http: cannot set up connection: {}", e.what());
  }
  if (!paused) DoAccept();
}

void Server::Impl::ResumeAcceptIfPaused() {
  if (!accept_paused_ || stopping_.load() || sessions_.size() >= options_.max_connections) return;
  try {
    net::post(acceptor_.get_executor(), [this] { DoAccept(); });
    accept_paused_ = false;
  } catch (const std::exception& e) {
    // Only bad_alloc; the next session to end tries again.
    spdlog::error("http: cannot resume accepting: {}", e.what());
  }
}

Response Server::Impl::ErrorResponse(int status, const std::string& message) const {
  if (options_.error_responder) {
    try {
      return options_.error_responder(status, message);
    } catch (const std::exception& e) {
      spdlog::error("http: error_responder threw: {}", e.what());
    } catch (...) {
      spdlog::error("http: error_responder threw a non-standard exception");
    }
  }
  Response r;
  r.status = status;
  r.headers.Set("Content-Type", "text/plain; charset=utf-8");
  r.body = message + "\n";
  return r;
}

Response Server::Impl::Handle(const Request& request) const {
  try {
    return handler_(request);
  } catch (const std::exception& e) {
    spdlog::error("http: handler for {} {} threw: {}", request.method, request.target, e.what());
    return ErrorResponse(500, std::string("Internal error: ") + e.what());
  } catch (...) {
    spdlog::error("http: handler for {} {} threw a non-standard exception", request.method, request.target);
    return ErrorResponse(500, "Internal error: unknown exception");
  }
}

bool Server::Impl::RunsInline(const Request& request) const {
  if (!options_.runs_inline) return false;
  try {
    return options_.runs_inline(request);
  } catch (const std::exception& e) {
    spdlog::error("http: runs_inline for {} {} threw: {}", request.method, request.target, e.what());
  } catch (...) {
    spdlog::error("http: runs_inline for {} {} threw a non-standard exception", request.method, request.target);
  }
  return false;  // the handler thread is always safe
}

bool Server::Impl::IsServerThread() const {
  const auto me = std::this_thread::get_id();
  return pool_.IsWorkerThread() ||
         std::any_of(threads_.begin(), threads_.end(), [&](const std::thread& t) { return t.get_id() == me; });
}

void Server::Impl::Stop() {
  std::unique_lock lock(state_mu_);
  if (stop_requested_) return;
  stop_requested_ = true;
  if (!started_) {
    stopped_ = true;
    state_cv_.notify_all();
    return;
  }
  // threads_ is only written by Start(), which happened-before started_ was set, so reading it here is safe.
  if (IsServerThread()) {
    // A server thread cannot wait for itself to finish its request, nor join itself: hand off to a helper.
    try {
      stopper_ = std::thread([this] { DoStop(); });
      return;
    } catch (const std::exception& e) {
      spdlog::error("http: cannot start the shutdown thread: {}", e.what());
      stop_requested_ = false;  // let a later Stop() from another thread try again
      return;
    }
  }
  // Drop the state lock while draining: Wait() callers need it to observe stopped_.
  lock.unlock();
  DoStop();
}

void Server::Impl::DoStop() {
  std::vector<std::shared_ptr<Session>> live;
  {
    std::lock_guard lock(sessions_mu_);
    stopping_.store(true);
    for (auto& [ptr, weak] : sessions_) {
      if (auto s = weak.lock()) live.push_back(std::move(s));
    }
  }
  net::post(acceptor_.get_executor(), [this] {
    error_code ignored;
    acceptor_.close(ignored);
    accept_backoff_.cancel();
  });
  for (auto& s : live) s->OnServerStop();
  live.clear();  // our references must not keep sessions alive while we wait for them to end

  auto wait_for_sessions = [this](std::chrono::steady_clock::duration limit) {
    std::unique_lock lock(sessions_mu_);
    return sessions_cv_.wait_for(lock, limit, [this] { return sessions_.empty(); });
  };
  if (!wait_for_sessions(kDrainTimeout)) {
    std::lock_guard lock(sessions_mu_);
    spdlog::warn("http: {} connection(s) still busy after {} s; stopping anyway", sessions_.size(),
                 std::chrono::duration_cast<std::chrono::seconds>(kDrainTimeout).count());
  }
  // Requests still queued for a handler are dropped (their connections close); running handlers are waited for,
  // however long they take: a handler that never returns blocks this forever, as nothing short of exiting can
  // end it. What they answer is still written while the io threads run.
  pool_.Shutdown(/*drop_queued=*/true);
  (void)wait_for_sessions(kFinalWriteTimeout);
  work_.reset();
  ioc_.stop();
  for (auto& t : threads_) {
    if (t.joinable()) t.join();
  }

  std::lock_guard lock(state_mu_);
  stopped_ = true;
  state_cv_.notify_all();
}

void Server::Impl::Wait() {
  std::unique_lock lock(state_mu_);
  state_cv_.wait(lock, [this] { return stopped_ || !started_; });
}

Server::Server(ServerOptions options, RequestHandler handler)
    : impl_(std::make_unique<Impl>(std::move(options), std::move(handler))) {}

Server::~Server() = default;

Status Server::Listen() { return impl_->Listen(); }
Status Server::Start() { return impl_->Start(); }
uint16_t Server::port() const { return impl_->port(); }
void Server::Wait() { impl_->Wait(); }
void Server::Stop() { impl_->Stop(); }

}  // namespace fhirlake::http
