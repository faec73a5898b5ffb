// The HTTP/1.1 server (Boost.Beast): keep-alive, a pool of worker threads, request size limits,
// graceful shutdown. Owns no application logic: every complete request is handed to a RequestHandler.
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
  uint16_t port = 8080;  // 0 picks a free port (see Server::port())
  int threads = 2;       // worker threads running the io_context
  size_t max_body_bytes = 64 << 20;
  int keep_alive_seconds = 60;
  // Builds the response for a request the server rejects itself: 413 body too large, 400 malformed.
  std::function<Response(int status, const std::string& message)> error_responder;
};

class Server {
 public:
  Server(ServerOptions options, RequestHandler handler);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds and listens; returns an error (e.g. address in use) without throwing.
  Status Start();
  uint16_t port() const;
  // Blocks until Stop() is called and every in-flight request has been answered.
  void Wait();
  // Stops accepting, lets in-flight requests finish (bounded), then stops the threads. Thread-safe,
  // callable from a signal-watching thread.
  void Stop();

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace fhirlake::http
