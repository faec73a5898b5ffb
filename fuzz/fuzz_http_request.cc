// Fuzzes the HTTP/1.1 request path up to the handler: bytes -> Beast request_parser (configured as in
// http/server.cc) -> the project's Request (built as server.cc builds it) -> Router::Dispatch over a table with
// the real route patterns, whose handlers check what the router promises them (every capture present, not empty).
// The input may hold several pipelined requests, like a keep-alive connection; its first byte says how the bytes
// arrive (one read, or reads of 1..32 bytes), so the parser also sees requests split at every possible point. The
// bytes are read as the server reads them: Beast's own read_header/read over a simulated socket, and the server's
// PutChunkedBody step (http/chunked_body.h) for chunked bodies.

// g++12/clang in C++20 mode: <utility> before any asio header (see http/server.cc).
// clang-format off
#include <utility>
// clang-format on

#include <algorithm>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "http/chunked_body.h"
#include "http/http_types.h"
#include "http/router.h"

namespace bhttp = boost::beast::http;
using fhirlake::http::Request;
using fhirlake::http::RequestContext;
using fhirlake::http::Response;
using fhirlake::http::Router;

namespace {

constexpr uint32_t kHeaderLimit = 64 * 1024;  // as http/server.cc
constexpr uint64_t kBodyLimit = 1 << 20;      // the server's is --max-body-bytes (64 MiB); inputs are smaller
constexpr int kMaxRequestsPerInput = 8;

std::string_view ToStd(boost::beast::string_view s) { return {s.data(), s.size()}; }

[[noreturn]] void Fail(const char* what, const Request& request) {
  std::fprintf(stderr, "invariant violated: %s (method '%s', target '%s')\n", what, request.method.c_str(),
               request.target.c_str());
  std::abort();
}

// A handler that checks the captures of its pattern and reads the query like handlers do.
fhirlake::http::Handler Checking(std::vector<std::string> captures) {
  return [captures = std::move(captures)](const Request& request, const RequestContext& ctx) {
    if (ctx.info == nullptr) Fail("handler called without RouteInfo", request);
    for (const std::string& name : captures) {
      auto it = ctx.params.find(name);
      if (it == ctx.params.end()) Fail("capture missing", request);
      if (it->second.empty()) Fail("empty capture", request);
    }
    if (ctx.params.size() != captures.size()) Fail("unexpected captures", request);
    if (captures.size() && captures[0] == "ds" && ctx.datastore_id != ctx.param("ds")) Fail("datastore id", request);
    (void)request.QueryValue("_type");
    (void)request.QueryValue("_since");
    return Response::Json(200, "{}");
  };
}

const Router& TheRouter() {
  static const Router* router = [] {
    auto* r = new Router([](const Request&, int status, const std::string& message) {
      return Response::Json(status, "{\"diagnostics\":\"" + std::to_string(message.size()) + "\"}");
    });
    const std::string r4 = "/datastore/{ds}/r4";
    // The patterns of api/bulk_export.cc and api/fhir_rest.cc, in their registration order.
    r->Add("POST", r4 + "/$export", Checking({"ds"}));
    r->Add("POST", r4 + "/Patient/$export", Checking({"ds"}));
    r->Add("POST", r4 + "/Group/{id}/$export", Checking({"ds", "id"}));
    r->Add("GET", r4 + "/$export", Checking({"ds"}));
    r->Add("GET", r4 + "/Patient/$export", Checking({"ds"}));
    r->Add("GET", r4 + "/Group/{id}/$export", Checking({"ds", "id"}));
    r->Add("GET", r4 + "/export/{job}", Checking({"ds", "job"}));
    r->Add("DELETE", r4 + "/export/{job}", Checking({"ds", "job"}));
    r->Add("GET", "/healthz", fhirlake::http::RouteInfo{"", true}, Checking({}));
    r->Add("GET", r4 + "/metadata", Checking({"ds"}));
    r->Add("*", r4 + "/metadata", Checking({"ds"}));
    r->Add("POST", r4, Checking({"ds"}));
    r->Add("GET", r4 + "/Patient/{id}/*", Checking({"ds", "id"}));
    r->Add("GET", r4 + "/{type}/{id}/_history/{vid}", Checking({"ds", "type", "id", "vid"}));
    r->Add("GET", r4 + "/{type}/{id}/_history", Checking({"ds", "type", "id"}));
    r->Add("GET", r4 + "/Patient/{id}/{ctype}", Checking({"ds", "id", "ctype"}));
    r->Add("GET", r4 + "/{type}/{id}", Checking({"ds", "type", "id"}));
    r->Add("PUT", r4 + "/{type}/{id}", Checking({"ds", "type", "id"}));
    r->Add("DELETE", r4 + "/{type}/{id}", Checking({"ds", "type", "id"}));
    r->Add("POST", r4 + "/{type}", Checking({"ds", "type"}));
    return r;
  }();
  return *router;
}

// The peer's bytes as a SyncReadStream for Beast's own read algorithms, handed out `chunk` bytes per read_some (a
// TCP stream may split a request anywhere); net::error::eof once they are all read.
class SimulatedSocket {
 public:
  SimulatedSocket(const uint8_t* data, size_t size, size_t chunk) : data_(data), left_(size), chunk_(chunk) {}

  template <class MutableBufferSequence>
  size_t read_some(const MutableBufferSequence& buffers, boost::beast::error_code& ec) {
    ec = {};
    if (left_ == 0) {
      ec = boost::asio::error::eof;
      return 0;
    }
    const size_t n = boost::asio::buffer_copy(buffers, boost::asio::buffer(data_, std::min(chunk_, left_)));
    data_ += n;
    left_ -= n;
    return n;
  }
  template <class MutableBufferSequence>
  size_t read_some(const MutableBufferSequence& buffers) {
    boost::beast::error_code ec;
    const size_t n = read_some(buffers, ec);
    if (ec) throw boost::system::system_error(ec);
    return n;
  }

 private:
  const uint8_t* data_;
  size_t left_;
  size_t chunk_;
};

// Session::ReadChunkedBody in http/server.cc, with the socket read made synchronous: the same PutChunkedBody step,
// then one read of up to 64 KiB (kSocketReadBytes) when it needs input. False when the server would answer an error
// or see the peer go away.
bool ReadChunkedBody(SimulatedSocket& socket, boost::beast::flat_buffer& buffer,
                     bhttp::request_parser<bhttp::string_body>& parser) {
  boost::beast::error_code ec;
  while (true) {
    switch (fhirlake::http::PutChunkedBody(parser, buffer, ec)) {
      case fhirlake::http::ChunkedBodyStep::kDone:
        return true;
      case fhirlake::http::ChunkedBodyStep::kError:
        return false;
      case fhirlake::http::ChunkedBodyStep::kNeedInput:
        break;
    }
    const size_t n = socket.read_some(buffer.prepare(64 * 1024), ec);
    buffer.commit(n);
    if (ec) return false;
  }
}

// As Session::HandleRequest in http/server.cc.
Request BuildRequest(bhttp::request<bhttp::string_body>&& msg) {
  Request request;
  request.method = std::string(ToStd(msg.method_string()));
  request.target = std::string(ToStd(msg.target()));
  std::string_view target(request.target);
  size_t q = target.find('?');
  request.path = fhirlake::http::PercentDecode(target.substr(0, q), false);
  if (q != std::string_view::npos) {
    request.raw_query = std::string(target.substr(q + 1));
    request.query = fhirlake::http::ParseQuery(request.raw_query);
  }
  for (const auto& field : msg) {
    request.headers.Add(std::string(ToStd(field.name_string())), std::string(ToStd(field.value())));
  }
  request.body = std::move(msg.body());
  request.remote_address = "127.0.0.1:1";
  return request;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const Router& router = TheRouter();
  // The first byte is how the peer's bytes arrive: below 0x80, in reads of 1..32 bytes; otherwise all at once.
  SimulatedSocket socket(data + 1, size - 1, data[0] < 0x80 ? data[0] % 32 + 1 : size);
  boost::beast::flat_buffer buffer;  // unconsumed input, kept across pipelined requests (Session::buffer_)
  for (int n = 0; n < kMaxRequestsPerInput; ++n) {
    bhttp::request_parser<bhttp::string_body> parser;
    parser.header_limit(kHeaderLimit);
    parser.body_limit(kBodyLimit);
    // As http/server.cc: Beast's read_header (the synchronous twin of its async_read_header), then a chunked body
    // through PutChunkedBody, any other body with Beast's read (async_read's twin).
    boost::beast::error_code ec;
    bhttp::read_header(socket, buffer, parser, ec);
    if (ec) return 0;  // 400 / 431 and close, or the peer went away
    if (!parser.is_done()) {
      if (parser.chunked()) {
        if (!ReadChunkedBody(socket, buffer, parser)) return 0;
      } else {
        bhttp::read(socket, buffer, parser, ec);
        if (ec) return 0;
      }
    }
    const bool keep_alive = parser.keep_alive();
    Request request = BuildRequest(parser.release());
    std::string_view raw_path = std::string_view(request.target).substr(0, request.target.find('?'));
    for (const std::string& seg : Router::Segments(raw_path)) (void)seg.size();
    (void)router.IsInline(request);
    Response response = router.Dispatch(request);
    if (response.status < 100 || response.status > 999) Fail("status out of range", request);
    if (!keep_alive) break;
  }
  return 0;
}
