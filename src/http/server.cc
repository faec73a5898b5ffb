// The Boost.Beast HTTP/1.1 server behind http::Server: accept loop, one strand-serialised session per
// connection (keep-alive, body limits, chunked streaming of body_producer responses) and graceful shutdown.
// This is the only translation unit that includes Beast; no exception leaves it.
#include "http/server.h"

// g++12 in C++20 mode: <utility> has to come before any asio header, so it is kept out of include sorting.
// clang-format off
#include <utility>
// clang-format on

#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <vector>

namespace fhirlake::http {

namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using error_code = boost::system::error_code;

namespace {

// Upper bound on how long Stop() lets in-flight requests finish before the io threads are stopped.
constexpr auto kDrainTimeout = std::chrono::seconds(10);
// Request line + headers; FHIR search URLs can be long, so this is well above Beast's 8 KiB default.
constexpr uint32_t kHeaderLimit = 64 * 1024;
// Once the headers are in, the body may legitimately take longer than the idle timeout (large uploads).
constexpr auto kBodyReadTimeout = std::chrono::seconds(300);
// Per write operation (one response, or one chunk): a client that stops reading is dropped after this.
constexpr auto kWriteTimeout = std::chrono::seconds(120);
// After an error response (413/400) the client may still be sending; we read and discard up to this much
// (bounded in time too) before closing, because closing with unread input makes the kernel send a RST
// that can destroy the error response before the client reads it.
constexpr size_t kMaxDrainBytes = 1 << 20;
constexpr auto kLingerTimeout = std::chrono::seconds(2);

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

}  // namespace

class Server::Impl {
 public:
  Impl(ServerOptions options, RequestHandler handler)
      : options_(std::move(options)), handler_(std::move(handler)), acceptor_(net::make_strand(ioc_)) {}

  ~Impl() {
    Stop();
    Wait();
    std::lock_guard lock(state_mu_);
    if (stopper_.joinable()) stopper_.join();  // it has set stopped_ already; this only reaps the thread
  }

  Status Start();
  uint16_t port() const { return port_.load(); }
  void Wait();
  void Stop();

 private:
  class Session;

  void DoAccept();
  void OnAccept(const error_code& ec, tcp::socket socket);
  void DoStop();
  bool IsIoThread() const;

  // Builds a server-generated error response; falls back to plain text if the responder is missing or throws.
  Response ErrorResponse(int status, const std::string& message) const;
  // Runs the application handler; exceptions become a 500 here so they never reach asio.
  Response Handle(const Request& request) const;

  const ServerOptions options_;
  const RequestHandler handler_;

  // Live sessions, so Stop() can tell idle keep-alive connections to close and wait for busy ones. Declared
  // before ioc_ because sessions still queued in the io_context unregister themselves when it is destroyed.
  std::mutex sessions_mu_;
  std::condition_variable sessions_cv_;
  std::unordered_map<Session*, std::weak_ptr<Session>> sessions_;
  std::atomic<bool> stopping_{false};  // written under sessions_mu_ so registration cannot race Stop()

  // Lifecycle: started_ once Start() succeeded, stop_requested_ on the first Stop(), stopped_ when the
  // threads are joined (Wait() returns then).
  std::mutex state_mu_;
  std::condition_variable state_cv_;
  bool started_ = false;
  bool stop_requested_ = false;
  bool stopped_ = false;
  std::thread stopper_;  // used only when Stop() is called from an io thread (it cannot join itself)

  std::atomic<uint16_t> port_{0};
  net::io_context ioc_;
  std::optional<net::executor_work_guard<net::io_context::executor_type>> work_;
  tcp::acceptor acceptor_;
  std::vector<std::thread> threads_;
};

// One TCP connection. All its work runs on its own strand (the executor of its stream), so the members
// need no locking; the server only reaches in through net::post onto that strand.
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

 public:
  Session(Impl* server, tcp::socket socket) : server_(server), stream_(std::move(socket)) {
    error_code ec;
    auto ep = stream_.socket().remote_endpoint(ec);
    if (!ec) remote_ = EndpointString(ep);
  }

  ~Session() {
    std::lock_guard lock(server_->sessions_mu_);
    server_->sessions_.erase(this);
    server_->sessions_cv_.notify_all();
  }

  void Start() {
    net::dispatch(stream_.get_executor(), Guard([this] { DoRead(); }));
  }

  // Posted by Stop(): an idle connection is closed now; a busy one closes after its current response.
  void OnServerStop() {
    net::post(stream_.get_executor(), Guard([this] {
                if (!busy_ && !closing_) Close();
              }));
  }

 private:
  void DoRead() {
    if (server_->stopping_.load()) return Close();
    busy_ = false;
    parser_.emplace();
    parser_->header_limit(kHeaderLimit);
    parser_->body_limit(static_cast<uint64_t>(server_->options_.max_body_bytes));
    stream_.expires_after(std::chrono::seconds(std::max(1, server_->options_.keep_alive_seconds)));
    bhttp::async_read_header(stream_, buffer_, *parser_, Guard([this](const error_code& ec, size_t) { OnHeader(ec); }));
  }

  void OnHeader(const error_code& ec) {
    if (ec) return OnReadError(ec);
    busy_ = true;  // a request has started: Stop() now waits for its response instead of dropping it
    if (parser_->is_done()) return HandleRequest();
    auto& req = parser_->get();
    if (EqualsIgnoreCase(ToStd(req[bhttp::field::expect]), "100-continue")) {
      // curl and others wait (up to a second) for this before sending a large body.
      continue_.emplace(bhttp::status::continue_, req.version());
      stream_.expires_after(kWriteTimeout);
      bhttp::async_write(stream_, *continue_, Guard([this](const error_code& wec, size_t) {
                           if (wec) return Close();
                           ReadBody();
                         }));
      return;
    }
    ReadBody();
  }

  void ReadBody() {
    stream_.expires_after(kBodyReadTimeout);
    bhttp::async_read(stream_, buffer_, *parser_, Guard([this](const error_code& ec, size_t) {
                        if (ec) return OnReadError(ec);
                        HandleRequest();
                      }));
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
    // Timeouts, resets, and our own Close() cancelling the read.
    Close();
  }

  void HandleRequest() {
    bhttp::request<bhttp::string_body> msg = parser_->release();
    parser_.reset();

    Request request;
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

    Response response = server_->Handle(request);
    const bool head = msg.method() == bhttp::verb::head;
    // During shutdown the response says "Connection: close" so the client does not reuse the connection.
    const bool keep_alive = msg.keep_alive() && !EqualsIgnoreCase(response.headers.Get("Connection"), "close") &&
                            !server_->stopping_.load();
    WriteResponse(std::move(response), msg.version(), keep_alive, head);
  }

  void SendErrorAndClose(int status, const std::string& message) {
    busy_ = true;
    const unsigned version = parser_ && parser_->get().version() == 10 ? 10 : 11;
    WriteResponse(server_->ErrorResponse(status, message), version, /*keep_alive=*/false, /*head=*/false,
                  /*drain_input=*/true);
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
    if (!StatusHasNoBody(response.status)) {
      if (head) {
        // HEAD announces the length a GET would get but sends no body. A streamed body's length is unknown.
        if (!response.body_producer) res->content_length(response.body.size());
      } else {
        res->content_length(response.body.size());
        res->body() = std::move(response.body);
      }
    }
    stream_.expires_after(kWriteTimeout);
    bhttp::async_write(stream_, *res, Guard([this, res](const error_code& ec, size_t) { OnResponseWritten(ec); }));
  }

  // Streams body_producer output with chunked transfer encoding (HTTP/1.1), one chunk per producer call, so
  // a multi-GB export file never sits in memory. HTTP/1.0 clients get a close-delimited body instead.
  void StartStreaming(Response response, unsigned version, bool keep_alive) {
    producer_ = std::move(response.body_producer);
    stream_res_.emplace();
    stream_res_->version(version);
    CopyHeaders(response, &*stream_res_);
    if (version >= 11) {
      stream_res_->chunked(true);
    } else {
      keep_alive_ = keep_alive = false;
    }
    stream_res_->keep_alive(keep_alive);
    stream_res_->body().data = nullptr;
    stream_res_->body().more = true;
    serializer_.emplace(*stream_res_);
    stream_.expires_after(kWriteTimeout);
    bhttp::async_write_header(stream_, *serializer_, Guard([this](const error_code& ec, size_t) {
                                if (ec) return FinishStreaming(ec);
                                WriteNextChunk();
                              }));
  }

  void WriteNextChunk() {
    bool more = false;
    chunk_.clear();
    try {
      more = producer_(&chunk_);
    } catch (const std::exception& e) {
      // The status line is already on the wire; the only honest signal left is to cut the connection
      // without the terminating chunk, so the client sees a truncated transfer rather than a short file.
      spdlog::error("http: response body producer failed: {}", e.what());
      return FinishStreaming(net::error::make_error_code(net::error::operation_aborted));
    } catch (...) {
      spdlog::error("http: response body producer failed with a non-standard exception");
      return FinishStreaming(net::error::make_error_code(net::error::operation_aborted));
    }
    if (chunk_.empty() && more) {
      // Nothing to send this round; asking again from a fresh handler keeps other work on the io threads moving.
      net::post(stream_.get_executor(), Guard([this] { WriteNextChunk(); }));
      return;
    }
    if (chunk_.empty()) return WriteLastChunk();  // here !more: the producer is done
    auto& body = stream_res_->body();
    body.data = chunk_.data();
    body.size = chunk_.size();
    body.more = true;
    stream_.expires_after(kWriteTimeout);
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
    stream_.expires_after(kWriteTimeout);
    bhttp::async_write(stream_, *serializer_, Guard([this](error_code ec, size_t) {
                         if (ec == bhttp::error::need_buffer) ec = {};
                         FinishStreaming(ec);
                       }));
  }

  void FinishStreaming(const error_code& ec) {
    serializer_.reset();
    stream_res_.reset();
    producer_ = nullptr;  // may hold an open file; release it now rather than with the session
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
  // client is still sending (see kMaxDrainBytes), then closes.
  void GracefulClose() {
    closing_ = true;
    error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
    if (!drain_input_) return Close();
    drained_ = 0;
    stream_.expires_after(kLingerTimeout);
    Drain();
  }

  void Drain() {
    stream_.async_read_some(net::buffer(drain_buf_), Guard([this](const error_code& ec, size_t n) {
                              drained_ += n;
                              if (ec || drained_ >= kMaxDrainBytes) return Close();
                              Drain();
                            }));
  }

  void Close() {
    closing_ = true;
    error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.socket().close(ignored);  // cancels a pending read; its handler drops the last reference
  }

  Impl* server_;
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::string remote_;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  std::optional<bhttp::response<bhttp::empty_body>> continue_;
  bool busy_ = false;     // between receiving a request's headers and finishing its response
  bool closing_ = false;  // the connection is being torn down; Stop() has nothing left to do
  bool keep_alive_ = true;
  bool drain_input_ = false;

  // Streaming state (only while a body_producer response is being written).
  std::function<bool(std::string*)> producer_;
  std::optional<bhttp::response<bhttp::buffer_body>> stream_res_;
  std::optional<bhttp::response_serializer<bhttp::buffer_body>> serializer_;
  std::string chunk_;

  size_t drained_ = 0;
  std::array<char, 8192> drain_buf_{};
};

Status Server::Impl::Start() {
  {
    std::lock_guard lock(state_mu_);
    if (started_ || stop_requested_) return Status::Internal("http server: Start() called twice or after Stop()");
  }
  const std::string where = options_.host + ":" + std::to_string(options_.port);
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
    // Typically EMFILE or a connection reset before accept; keep accepting, the condition may clear.
    spdlog::warn("http: accept failed: {}", ec.message());
    return DoAccept();
  }
  try {
    auto session = std::make_shared<Session>(this, std::move(socket));
    bool accepted = false;
    {
      std::lock_guard lock(sessions_mu_);
      if (!stopping_.load()) {
        sessions_.emplace(session.get(), session);
        accepted = true;
      }
    }
    if (!accepted) return;  // Stop() is under way; the socket closes with the session
    session->Start();
  } catch (const std::exception& e) {
    spdlog::error("http: cannot set up connection: {}", e.what());
  }
  DoAccept();
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

bool Server::Impl::IsIoThread() const {
  const auto me = std::this_thread::get_id();
  return std::any_of(threads_.begin(), threads_.end(), [&](const std::thread& t) { return t.get_id() == me; });
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
  if (IsIoThread()) {
    // An io thread cannot wait for itself to finish its request, nor join itself: hand off to a helper.
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
  });
  for (auto& s : live) s->OnServerStop();
  live.clear();  // our references must not keep sessions alive while we wait for them to end

  {
    std::unique_lock lock(sessions_mu_);
    if (!sessions_cv_.wait_for(lock, kDrainTimeout, [this] { return sessions_.empty(); })) {
      spdlog::warn("http: {} connection(s) still busy after {} s; stopping anyway", sessions_.size(),
                   std::chrono::duration_cast<std::chrono::seconds>(kDrainTimeout).count());
    }
  }
  work_.reset();
  ioc_.stop();
  // A handler that never returns would block this join forever; nothing short of exiting can end it.
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

Status Server::Start() { return impl_->Start(); }
uint16_t Server::port() const { return impl_->port(); }
void Server::Wait() { impl_->Wait(); }
void Server::Stop() { impl_->Stop(); }

}  // namespace fhirlake::http
