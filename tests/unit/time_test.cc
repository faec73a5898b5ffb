// Tests for instant formatting and parsing (src/common/time.h).
#include "common/time.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "test_util.h"

namespace fhirlake {
namespace {

constexpr EpochMillis k20230421 = 1682099882123;  // 2023-04-21T17:58:02.123Z, a Friday

TEST(FormatInstantTest, Epoch) { EXPECT_EQ(FormatInstant(0), "1970-01-01T00:00:00.000Z"); }

TEST(FormatInstantTest, AlwaysThreeDigitMillis) {
  EXPECT_EQ(FormatInstant(k20230421), "2023-04-21T17:58:02.123Z");
  EXPECT_EQ(FormatInstant(1682099882000), "2023-04-21T17:58:02.000Z");
  EXPECT_EQ(FormatInstant(1682099882007), "2023-04-21T17:58:02.007Z");
  EXPECT_EQ(FormatInstant(1), "1970-01-01T00:00:00.001Z");
}

TEST(FormatInstantTest, LeapDays) {
  EXPECT_EQ(FormatInstant(1709210096789), "2024-02-29T12:34:56.789Z");
  EXPECT_EQ(FormatInstant(951782400000), "2000-02-29T00:00:00.000Z");
  // The day after the leap day.
  EXPECT_EQ(FormatInstant(1709210096789 + 86400000), "2024-03-01T12:34:56.789Z");
}

TEST(FormatInstantTest, Pre1970) {
  EXPECT_EQ(FormatInstant(-1), "1969-12-31T23:59:59.999Z");
  EXPECT_EQ(FormatInstant(-1000), "1969-12-31T23:59:59.000Z");
  EXPECT_EQ(FormatInstant(-1001), "1969-12-31T23:59:58.999Z");
  EXPECT_EQ(FormatInstant(-86400000), "1969-12-31T00:00:00.000Z");
  EXPECT_EQ(FormatInstant(-14182940000), "1969-07-20T20:17:40.000Z");
  EXPECT_EQ(FormatInstant(-2203891200000), "1900-03-01T00:00:00.000Z");
  EXPECT_EQ(FormatInstant(-62135596800000), "0001-01-01T00:00:00.000Z");
}

TEST(FormatInstantTest, FarFuture) { EXPECT_EQ(FormatInstant(253402300799999), "9999-12-31T23:59:59.999Z"); }

TEST(ParseInstantTest, Utc) {
  auto r = ParseInstant("2023-04-21T17:58:02Z");
  ASSERT_OK(r);
  EXPECT_EQ(*r, 1682099882000);
  ASSERT_OK(ParseInstant("1970-01-01T00:00:00Z"));
  EXPECT_EQ(*ParseInstant("1970-01-01T00:00:00Z"), 0);
}

TEST(ParseInstantTest, Offsets) {
  auto plus = ParseInstant("2023-04-21T19:58:02+02:00");
  ASSERT_OK(plus);
  EXPECT_EQ(*plus, 1682099882000);
  auto minus = ParseInstant("2023-04-21T12:58:02-05:00");
  ASSERT_OK(minus);
  EXPECT_EQ(*minus, 1682099882000);
  auto half = ParseInstant("2023-04-21T23:28:02.123+05:30");
  ASSERT_OK(half);
  EXPECT_EQ(*half, k20230421);
  auto zero = ParseInstant("2023-04-21T17:58:02+00:00");
  ASSERT_OK(zero);
  EXPECT_EQ(*zero, 1682099882000);
  // An offset that crosses a day (and a year) boundary.
  auto cross = ParseInstant("2023-01-01T01:00:00+02:00");
  ASSERT_OK(cross);
  EXPECT_EQ(FormatInstant(*cross), "2022-12-31T23:00:00.000Z");
  auto max_offset = ParseInstant("2023-04-22T07:58:02+14:00");
  ASSERT_OK(max_offset);
  EXPECT_EQ(*max_offset, 1682099882000);
}

TEST(ParseInstantTest, FractionalSecondsOneToNineDigits) {
  const std::vector<std::pair<std::string, EpochMillis>> cases = {
      {".1", 100},      {".12", 120},      {".123", 123},      {".1234", 123},      {".12345", 123},
      {".123456", 123}, {".1234567", 123}, {".12345678", 123}, {".123456789", 123}, {".5", 500},
      {".05", 50},      {".005", 5},       {".000000001", 0},  {".999999999", 999}, {".0", 0},
  };
  for (const auto& [frac, millis] : cases) {
    std::string text = "2023-04-21T17:58:02" + frac + "Z";
    auto r = ParseInstant(text);
    ASSERT_OK(r);
    EXPECT_EQ(*r, 1682099882000 + millis) << text;
  }
  auto with_offset = ParseInstant("2023-04-21T19:58:02.123456789+02:00");
  ASSERT_OK(with_offset);
  EXPECT_EQ(*with_offset, k20230421);
}

TEST(ParseInstantTest, Pre1970) {
  auto r = ParseInstant("1969-12-31T23:59:59.999Z");
  ASSERT_OK(r);
  EXPECT_EQ(*r, -1);
  auto moon = ParseInstant("1969-07-20T20:17:40Z");
  ASSERT_OK(moon);
  EXPECT_EQ(*moon, -14182940000);
  auto old = ParseInstant("1900-03-01T00:00:00Z");
  ASSERT_OK(old);
  EXPECT_EQ(*old, -2203891200000);
}

TEST(ParseInstantTest, LeapDays) {
  auto r2024 = ParseInstant("2024-02-29T12:34:56.789Z");
  ASSERT_OK(r2024);
  EXPECT_EQ(*r2024, 1709210096789);
  auto r2000 = ParseInstant("2000-02-29T00:00:00Z");  // divisible by 400: leap
  ASSERT_OK(r2000);
  EXPECT_EQ(*r2000, 951782400000);
}

TEST(ParseInstantTest, RejectsFeb29OnNonLeapYears) {
  for (const char* text : {"2023-02-29T00:00:00Z", "1900-02-29T00:00:00Z", "2100-02-29T00:00:00Z"}) {
    EXPECT_STATUS(ParseInstant(text), kInvalid, text);
  }
}

TEST(ParseInstantTest, RejectsMissingZone) {
  EXPECT_STATUS(ParseInstant("2023-04-21T17:58:02"), kInvalid, "2023-04-21T17:58:02");
  EXPECT_STATUS(ParseInstant("2023-04-21T17:58:02.123"), kInvalid, "not a FHIR instant");
}

TEST(ParseInstantTest, RejectsBadDates) {
  for (const char* text : {
           "2023-00-21T17:58:02Z",
           "2023-13-21T17:58:02Z",
           "2023-04-00T17:58:02Z",
           "2023-04-31T17:58:02Z",
           "2023-06-31T17:58:02Z",
           "2023-01-32T17:58:02Z",
           "2023-02-30T00:00:00Z",
           "2023-04-21T24:00:00Z",
           "2023-04-21T17:60:02Z",
           "2023-04-21T17:58:61Z",
       }) {
    EXPECT_STATUS(ParseInstant(text), kInvalid, text);
  }
}

TEST(ParseInstantTest, RejectsMalformedText) {
  for (const char* text : {
           "",
           "2023",
           "2023-04-21",                  // a date is not an instant
           "2023-04-21 17:58:02Z",        // space instead of T
           "2023/04/21T17:58:02Z",        // wrong separators
           "2023-4-21T17:58:02Z",         // one-digit month
           "23-04-21T17:58:02Z",          // two-digit year
           "2023-04-21T17:58Z",           // no seconds
           "2023-04-21T17:58:02.Z",       // '.' without digits
           "2023-04-21T17:58:02z",        // lower-case zone
           "2023-04-21T17:58:02+02",      // offset without minutes
           "2023-04-21T17:58:02+0200",    // offset without ':'
           "2023-04-21T17:58:02+2:00",    // one-digit offset hour
           "2023-04-21T17:58:02+15:00",   // offset out of range
           "2023-04-21T17:58:02+02:60",   // offset minutes out of range
           "2023-04-21T17:58:02ZZ",       // trailing garbage
           "2023-04-21T17:58:02Z ",       // trailing space
           "2023-04-21T17:58:02+02:00x",  // trailing garbage after an offset
           "2023-04-21T17:58:02.123Zjunk",
           " 2023-04-21T17:58:02Z",  // leading space
           "abcd-04-21T17:58:02Z",
       }) {
    EXPECT_STATUS(ParseInstant(text), kInvalid, "not a FHIR instant") << "'" << text << "'";
  }
}

TEST(ParseInstantTest, ErrorMessageQuotesTheInputAndShowsAnExample) {
  auto r = ParseInstant("yesterday");
  EXPECT_STATUS(r, kInvalid, "'yesterday'");
  EXPECT_STATUS(r, kInvalid, "2024-05-09T00:00:00Z");
}

TEST(FormatHttpDateTest, ImfFixdate) {
  EXPECT_EQ(FormatHttpDate(k20230421), "Fri, 21 Apr 2023 17:58:02 GMT");
  EXPECT_EQ(FormatHttpDate(0), "Thu, 01 Jan 1970 00:00:00 GMT");
  EXPECT_EQ(FormatHttpDate(1709210096789), "Thu, 29 Feb 2024 12:34:56 GMT");
  EXPECT_EQ(FormatHttpDate(1682035509000), "Fri, 21 Apr 2023 00:05:09 GMT");
}

TEST(FormatHttpDateTest, Pre1970Weekdays) {
  EXPECT_EQ(FormatHttpDate(-1), "Wed, 31 Dec 1969 23:59:59 GMT");
  EXPECT_EQ(FormatHttpDate(-14182940000), "Sun, 20 Jul 1969 20:17:40 GMT");
  EXPECT_EQ(FormatHttpDate(-2203891200000), "Thu, 01 Mar 1900 00:00:00 GMT");
}

TEST(FormatHttpDateTest, EveryWeekday) {
  // 2023-04-16 was a Sunday.
  const char* expected[] = {"Sun, 16", "Mon, 17", "Tue, 18", "Wed, 19", "Thu, 20", "Fri, 21", "Sat, 22"};
  const EpochMillis sunday = 1681603200000;  // 2023-04-16T00:00:00Z
  for (int i = 0; i < 7; ++i) {
    std::string date = FormatHttpDate(sunday + i * 86400000LL);
    EXPECT_EQ(date.substr(0, 7), expected[i]) << date;
  }
}

TEST(FormatHealthLakeTimeTest, Afternoon) { EXPECT_EQ(FormatHealthLakeTime(k20230421), "Apr 21, 2023 5:58:02 PM"); }

TEST(FormatHealthLakeTimeTest, MidnightIsTwelveAm) {
  EXPECT_EQ(FormatHealthLakeTime(1682035509000), "Apr 21, 2023 12:05:09 AM");
  EXPECT_EQ(FormatHealthLakeTime(0), "Jan 1, 1970 12:00:00 AM");
}

TEST(FormatHealthLakeTimeTest, NoonIsTwelvePm) {
  EXPECT_EQ(FormatHealthLakeTime(1682078400000), "Apr 21, 2023 12:00:00 PM");
  EXPECT_EQ(FormatHealthLakeTime(1682078400000 - 1000), "Apr 21, 2023 11:59:59 AM");
  EXPECT_EQ(FormatHealthLakeTime(1682078400000 + 3600000), "Apr 21, 2023 1:00:00 PM");
}

TEST(FormatHealthLakeTimeTest, LateEveningAndSingleDigitDay) {
  // 2024-03-01T23:59:59Z
  EXPECT_EQ(FormatHealthLakeTime(1709337599000), "Mar 1, 2024 11:59:59 PM");
}

TEST(TimeRoundTripTest, FormatThenParse) {
  std::vector<EpochMillis> values = {0,
                                     1,
                                     -1,
                                     999,
                                     -999,
                                     1000,
                                     -1000,
                                     k20230421,
                                     1709210096789,
                                     951782400000,
                                     -14182940000,
                                     -2203891200000,
                                     253402300799999,
                                     -62135596800000};
  std::mt19937_64 rng(12345);
  std::uniform_int_distribution<EpochMillis> dist(-62135596800000, 253402300799999);
  for (int i = 0; i < 2000; ++i) values.push_back(dist(rng));
  for (EpochMillis ms : values) {
    std::string text = FormatInstant(ms);
    auto parsed = ParseInstant(text);
    ASSERT_OK(parsed);
    EXPECT_EQ(*parsed, ms) << text;
  }
}

TEST(TimeRoundTripTest, ParseThenFormatNormalisesToUtcMillis) {
  auto r = ParseInstant("2023-04-21T19:58:02.1+02:00");
  ASSERT_OK(r);
  EXPECT_EQ(FormatInstant(*r), "2023-04-21T17:58:02.100Z");
}

TEST(ClockTest, SystemClockIsNow) {
  auto before =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count();
  EpochMillis now = Clock::System().NowMillis();
  auto after =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count();
  EXPECT_GE(now, before);
  EXPECT_LE(now, after);
  EXPECT_EQ(&Clock::System(), &Clock::System());
}

}  // namespace
}  // namespace fhirlake
