// The HTTP/1.1 server (Boost.Beast): keep-alive, I/O threads that only move bytes, a bounded pool of handler
// threads, admission control (connection cap, header deadline, request body memory budget), request size limits
// and graceful shutdown. Owns no application logic: every complete request is handed to a RequestHandler.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "common/status.h"
#include "http/http_types.h"

namespace fhirlake::http {

using RequestHandler = std::function<Response(const Request&)>;

struct ServerOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 8080;      // 0 picks a free port (see Server::port())
  int threads = 2;           // I/O threads running the io_context (accept, read, write, timers; never a handler)
  int workers = 8;           // handler threads: requests whose handler may block run there
  size_t queue_limit = 256;  // requests waiting for a handler thread; beyond it 503 + Retry-After
  size_t max_body_bytes = 64 << 20;
  // Request bodies buffered at once, server-wide: a body that does not fit gets 503 + Retry-After.
  size_t body_budget_bytes = 256 << 20;
  size_t max_connections = 1024;    // beyond it the server stops accepting until a connection ends
  int header_timeout_seconds = 10;  // the whole request line + headers must arrive within this
  int keep_alive_seconds = 60;      // idle time allowed between two requests on one connection
  // TLS (HTTPS): PEM files of the certificate (chain) and its private key; both empty: plain HTTP. TLS 1.2 and 1.3
  // only. A file that cannot be read or a key that does not fit the certificate fails Listen().
  std::string tls_cert_file;
  std::string tls_key_file;
  // Requests for which it returns true run on the I/O thread that read them (cheap, non-blocking routes such
  // as GET /healthz, which must answer even when every handler thread is stuck). Called on an I/O thread.
  std::function<bool(const Request&)> runs_inline;
  // Builds the response for a request the server rejects itself: 400 malformed, 413 body too large, 431,
  // 501, 503 overloaded. The server adds Connection: close (and Retry-After to a 503) to what it returns.
  std::function<Response(int status, const std::string& message)> error_responder;
};

class Server {
 public:
  Server(ServerOptions options, RequestHandler handler);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds and listens without accepting yet, so port() is known (with port 0) before any request can arrive; the
  // caller finishes its set-up (e.g. absolute URLs) and then calls Start(). Optional: Start() listens itself.
  Status Listen();
  // Listens (unless Listen() did) and starts accepting and serving; returns an error (e.g. address in use)
  // without throwing.
  Status Start();
  uint16_t port() const;
  // Blocks until Stop() is called and every in-flight request has been answered.
  void Wait();
  // Stops accepting, lets in-flight requests finish (bounded), waits for running handlers, then stops the
  // threads. Thread-safe, callable from a signal-watching thread and from a handler.
  void Stop();

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace fhirlake::http
