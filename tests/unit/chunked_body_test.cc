// PutChunkedBody (http/chunked_body.h), the step that hands a chunked request body to Beast's parser: every body
// fed one byte per read must parse as it does in one read, without tripping Beast 1.74's own asserts (this file
// also runs in the Debug ASan build, scripts/sanitize.sh asan-unit, where those asserts are live).
#include "http/chunked_body.h"

#include <gtest/gtest.h>

#include <boost/asio/buffer.hpp>
#include <string>

namespace fhirlake::http {
namespace {

namespace bhttp = boost::beast::http;

struct Outcome {
  ChunkedBodyStep step = ChunkedBodyStep::kNeedInput;
  std::string body;
  std::string trailer_or_error;
};

// Puts a request header, then `body` `read` bytes at a time through PutChunkedBody, as Session::ReadChunkedBody does.
Outcome Feed(const std::string& body, size_t read) {
  bhttp::request_parser<bhttp::string_body> parser;
  parser.eager(false);  // as async_read_header leaves it
  boost::beast::error_code ec;
  const std::string head = "PUT /r HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
  EXPECT_EQ(parser.put(boost::asio::buffer(head), ec), head.size());
  EXPECT_FALSE(ec) << ec.message();
  EXPECT_TRUE(parser.is_header_done());
  boost::beast::flat_buffer buffer;
  Outcome out;
  for (size_t pos = 0; pos < body.size() && out.step == ChunkedBodyStep::kNeedInput;) {
    const size_t n = std::min(read, body.size() - pos);
    buffer.commit(boost::asio::buffer_copy(buffer.prepare(n), boost::asio::buffer(body.data() + pos, n)));
    pos += n;
    out.step = PutChunkedBody(parser, buffer, ec);
  }
  if (out.step == ChunkedBodyStep::kError) out.trailer_or_error = ec.message();
  if (out.step == ChunkedBodyStep::kDone) {
    out.body = parser.get().body();
    out.trailer_or_error = std::string(parser.get()["X-T"]);
    EXPECT_EQ(buffer.size(), 0u);
  }
  return out;
}

// The fuzzer's crash (fuzz_http_request, 1-byte reads): "0\r\n" put, then "0\r\n\r" put again, hit Beast's
// assert(n >= 5) in parse_chunk_header.
TEST(ChunkedBodyTest, EmptyBodyReadOneByteAtATimeCompletes) {
  Outcome out = Feed("0\r\n\r\n", 1);
  EXPECT_EQ(out.step, ChunkedBodyStep::kDone);
  EXPECT_EQ(out.body, "");
}

TEST(ChunkedBodyTest, EveryBodyParsesTheSameWhateverTheReadSize) {
  const struct {
    std::string wire, body, trailer;
  } cases[] = {
      {"0\r\n\r\n", "", ""},
      {"00\r\n\r\n", "", ""},
      {"0;ext=1\r\n\r\n", "", ""},
      {"0\r\nX-T: v\r\n\r\n", "", "v"},
      {"3\r\nabc\r\n0\r\n\r\n", "abc", ""},
      {"1\r\na\r\n2;e\r\nbc\r\n0\r\nX-T: w\r\n\r\n", "abc", "w"},
  };
  for (const auto& c : cases) {
    for (size_t read = 1; read <= c.wire.size(); ++read) {
      Outcome out = Feed(c.wire, read);
      EXPECT_EQ(out.step, ChunkedBodyStep::kDone) << c.wire << " read " << read << ": " << out.trailer_or_error;
      EXPECT_EQ(out.body, c.body) << c.wire << " read " << read;
      EXPECT_EQ(out.trailer_or_error, c.trailer) << c.wire << " read " << read;
    }
  }
}

TEST(ChunkedBodyTest, IncompleteBodyNeedsInput) {
  for (const std::string wire : {"0\r\n", "0\r\n\r", "0\r\nX", "3\r\nab", "3\r\nabc\r\n0\r\n\r"}) {
    for (size_t read = 1; read <= wire.size(); ++read) {
      EXPECT_EQ(Feed(wire, read).step, ChunkedBodyStep::kNeedInput) << wire << " read " << read;
    }
  }
}

TEST(ChunkedBodyTest, MalformedBodyIsAnErrorWhateverTheReadSize) {
  for (const std::string wire : {"Z\r\n\r\n", "3\r\nabcX\r\n0\r\n\r\n", "1\r\na\r\n0\r\nbad trailer\r\n\r\n"}) {
    for (size_t read = 1; read <= wire.size(); ++read) {
      EXPECT_EQ(Feed(wire, read).step, ChunkedBodyStep::kError) << wire << " read " << read;
    }
  }
}

}  // namespace
}  // namespace fhirlake::http
