// Tests for the page cursor format (src/fhir/page_cursor.h): round trips, URL safety, and rejection of anything
// this server did not make for the same kind of read.
#include "fhir/page_cursor.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>

#include "test_util.h"

namespace fhirlake::fhir {
namespace {

TEST(PageCursorTest, RoundTripsAndIsUrlSafe) {
  for (int64_t key : {int64_t{0}, int64_t{1}, int64_t{42}, int64_t{1} << 40, INT64_MAX}) {
    for (const char* scope : {"history", "compartment", "search"}) {
      std::string token = EncodePageCursor(scope, key);
      EXPECT_EQ(token.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"),
                std::string::npos)
          << token;
      auto decoded = DecodePageCursor(token, scope);
      ASSERT_OK(decoded);
      EXPECT_EQ(*decoded, key);
    }
  }
}

TEST(PageCursorTest, TheDocumentedFormat) {
  // base64url("v1:history:4") without padding (docs/STORAGE.md).
  EXPECT_EQ(EncodePageCursor("history", 4), "djE6aGlzdG9yeTo0");
  EXPECT_EQ(*DecodePageCursor("djE6aGlzdG9yeTo0", "history"), 4);
}

TEST(PageCursorTest, RejectsWhatThisServerDidNotMake) {
  const std::string history = EncodePageCursor("history", 7);
  EXPECT_STATUS(DecodePageCursor(history, "compartment"), kInvalid, "another kind of read");
  EXPECT_STATUS(DecodePageCursor("", "history"), kInvalid, "not a cursor");
  EXPECT_STATUS(DecodePageCursor("not a cursor!", "history"), kInvalid, "use the 'page' value of a next link");
  EXPECT_STATUS(DecodePageCursor(history + "=", "history"), kInvalid, "not a cursor");  // padding
  EXPECT_STATUS(DecodePageCursor("djE6aGlzdG9yeTo0x", "history"), kInvalid, "");        // impossible length
  EXPECT_STATUS(DecodePageCursor(std::string(200, 'A'), "history"), kInvalid, "not a cursor");
  // Well-formed base64url of texts that are not cursors.
  EXPECT_STATUS(DecodePageCursor("djI6aGlzdG9yeTo0", "history"), kInvalid, "unknown format");  // v2:history:4
  EXPECT_STATUS(DecodePageCursor("aGlzdG9yeTo0", "history"), kInvalid, "unknown format");      // history:4
  EXPECT_STATUS(DecodePageCursor("djE6aGlzdG9yeTot", "history"), kInvalid, "bad position");    // v1:history:-
  EXPECT_STATUS(DecodePageCursor("djE6aGlzdG9yeTotMQ", "history"), kInvalid, "bad position");  // v1:history:-1
  EXPECT_STATUS(DecodePageCursor("djE6aGlzdG9yeTowNA", "history"), kInvalid, "bad position");  // v1:history:04
  EXPECT_STATUS(DecodePageCursor("djE6aGlzdG9yeTo0YQ", "history"), kInvalid, "bad position");  // v1:history:4a
  // v1:history:99999999999999999999 (past int64)
  EXPECT_STATUS(DecodePageCursor("djE6aGlzdG9yeTo5OTk5OTk5OTk5OTk5OTk5OTk5OQ", "history"), kInvalid, "bad position");
  // Non-zero unused bits: a second spelling of "djE6aGlzdG9yeTo0Mg" (v1:history:42) is refused.
  EXPECT_EQ(*DecodePageCursor("djE6aGlzdG9yeTo0Mg", "history"), 42);
  EXPECT_STATUS(DecodePageCursor("djE6aGlzdG9yeTo0Mh", "history"), kInvalid, "not a cursor");
}

}  // namespace
}  // namespace fhirlake::fhir
