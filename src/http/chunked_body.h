// How a chunked request body goes from the read buffer into Beast's request parser: the one step http/server.cc
// runs between socket reads, and fuzz/fuzz_http_request.cc runs between simulated reads (so the fuzzer drives this
// very code). Internal to http/ (and its fuzz harness and tests): it is the only header besides server.cc's own
// includes that exposes Beast.
#pragma once

// g++12 in C++20 mode: <utility> has to come before any asio header (see http/server.cc).
// clang-format off
#include <utility>
// clang-format on

#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>
#include <cstddef>
#include <string_view>

namespace fhirlake::http {

enum class ChunkedBodyStep {
  kNeedInput,  // read more from the peer into the buffer, then call PutChunkedBody again
  kDone,       // the message is complete (parser.is_done())
  kError,      // the body is malformed or over the parser's body limit: `ec` says which
};

// True when `unconsumed` (what the parser left of a chunked body) must not be put yet. Beast 1.74's
// parse_chunk_header asserts n >= 5 when the final chunk is put again after need_more, but an empty body that arrives
// as "0\r\n", then one more byte, is put again with n == 4 (boostorg/beast#2861, fixed upstream in 2024). With NDEBUG
// (Release) the assert is compiled out and the parse is right; in Debug and sanitizer builds a client could abort
// the process. Four bytes starting "0\r\n" are never a whole body (the least is "0\r\n\r\n"), so waiting for the
// fifth byte costs nothing and never stalls a request.
inline bool BeastCannotTakeYet(std::string_view unconsumed) {
  return unconsumed.size() == 4 && unconsumed.substr(0, 3) == "0\r\n";
}

// Puts the buffered bytes of a chunked body into `parser` (its header is done) and consumes what it used, as
// beast::http::read_some does but without its socket reads, until the body is complete, is malformed, or needs
// more input. The caller reads from the peer on kNeedInput; at end of stream the request is incomplete. Anything
// the parser's body string grows by comes out of `buffer`, so its size bounds the growth of one call.
inline ChunkedBodyStep PutChunkedBody(boost::beast::http::request_parser<boost::beast::http::string_body>& parser,
                                      boost::beast::flat_buffer& buffer, boost::beast::error_code& ec) {
  ec = {};
  while (!parser.is_done()) {
    const auto data = buffer.data();
    if (data.size() == 0 || BeastCannotTakeYet({static_cast<const char*>(data.data()), data.size()})) {
      return ChunkedBodyStep::kNeedInput;
    }
    const size_t used = parser.put(data, ec);
    buffer.consume(used);
    if (ec == boost::beast::http::error::need_more) {
      ec = {};
      return ChunkedBodyStep::kNeedInput;
    }
    if (ec) return ChunkedBodyStep::kError;
    if (used == 0) return ChunkedBodyStep::kNeedInput;  // not expected without need_more; never spin on it
  }
  return ChunkedBodyStep::kDone;
}

}  // namespace fhirlake::http
