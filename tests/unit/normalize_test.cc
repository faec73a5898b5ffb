// Tests of search/normalize.h: string folding, date ranges at every precision, decimal ranges.
#include "search/normalize.h"

#include <gtest/gtest.h>

#include <cstdint>

namespace fhirlake::search {
namespace {

constexpr int64_t kDay = 86400000;
// 2020-03-04T00:00:00Z
constexpr int64_t k20200304 = 1583280000000;

TEST(NormalizeStringTest, CaseAndAccents) {
  EXPECT_EQ(NormalizeString("Smith"), "smith");
  EXPECT_EQ(NormalizeString("Éloïse"), "eloise");
  EXPECT_EQ(NormalizeString("MÜLLER"), "muller");
  EXPECT_EQ(NormalizeString("Straße"), "strasse");
  EXPECT_EQ(NormalizeString("Øresund"), "oresund");
  EXPECT_EQ(NormalizeString("Ñoño"), "nono");
  EXPECT_EQ(NormalizeString("Dvořák Łódź Œuvre"), "dvorak lodz oeuvre");
  EXPECT_EQ(NormalizeString("ÀÉÎÕÜ àéîõü ÇçÆæÞþÐð"), "aeiou aeiou ccaeaeththdd");
}

TEST(NormalizeStringTest, Whitespace) {
  EXPECT_EQ(NormalizeString("  van   der\tBerg \n"), "van der berg");
  EXPECT_EQ(NormalizeString("a\xC2\xA0"
                            "b"),
            "a b");  // no-break space
  EXPECT_EQ(NormalizeString(""), "");
  EXPECT_EQ(NormalizeString("   "), "");
}

TEST(NormalizeStringTest, DecomposedAccentsAndOtherCodePoints) {
  EXPECT_EQ(NormalizeString("e\xCC\x81l\xCC\x88"), "el");  // e + U+0301, l + U+0308
  EXPECT_EQ(NormalizeString("Ωμέγα 東京"), "Ωμέγα 東京");  // outside the folded ranges: unchanged
  EXPECT_EQ(NormalizeString("×÷"), "×÷");
}

TEST(NormalizeStringTest, InvalidUtf8PassesUnchanged) {
  EXPECT_EQ(NormalizeString("A\xFF"
                            "B"),
            "a\xFF"
            "b");
  EXPECT_EQ(NormalizeString("x\xC3"), "x\xC3");  // truncated sequence
  EXPECT_EQ(NormalizeString("\x80Z"), "\x80z");
}

TEST(ParseDateRangeTest, Year) {
  auto r = ParseDateRange("2020");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->lo, 1577836800000);      // 2020-01-01T00:00:00Z
  EXPECT_EQ(r->hi, 1609459200000 - 1);  // 2020-12-31T23:59:59.999Z
}

TEST(ParseDateRangeTest, MonthAndLeapFebruary) {
  auto r = ParseDateRange("2020-03");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->lo, 1583020800000);  // 2020-03-01
  EXPECT_EQ(r->hi, 1583020800000 + 31 * kDay - 1);
  auto feb = ParseDateRange("2020-02");
  ASSERT_TRUE(feb);
  EXPECT_EQ(feb->hi - feb->lo + 1, 29 * kDay);
  auto feb2019 = ParseDateRange("2019-02");
  ASSERT_TRUE(feb2019);
  EXPECT_EQ(feb2019->hi - feb2019->lo + 1, 28 * kDay);
  auto feb1900 = ParseDateRange("1900-02");  // not a leap year
  ASSERT_TRUE(feb1900);
  EXPECT_EQ(feb1900->hi - feb1900->lo + 1, 28 * kDay);
  auto feb2000 = ParseDateRange("2000-02");  // a leap year
  ASSERT_TRUE(feb2000);
  EXPECT_EQ(feb2000->hi - feb2000->lo + 1, 29 * kDay);
}

TEST(ParseDateRangeTest, Day) {
  auto r = ParseDateRange("2020-03-04");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->lo, k20200304);
  EXPECT_EQ(r->hi, k20200304 + kDay - 1);
  auto leap = ParseDateRange("2024-02-29");
  ASSERT_TRUE(leap);
  EXPECT_EQ(leap->lo, 1709164800000);
  auto before_epoch = ParseDateRange("1969-12-31");
  ASSERT_TRUE(before_epoch);
  EXPECT_EQ(before_epoch->lo, -kDay);
  EXPECT_EQ(before_epoch->hi, -1);
}

TEST(ParseDateRangeTest, MinutesSecondsMillis) {
  const int64_t t = k20200304 + (5 * 3600 + 6 * 60) * 1000;
  auto minutes = ParseDateRange("2020-03-04T05:06Z");
  ASSERT_TRUE(minutes);
  EXPECT_EQ(minutes->lo, t);
  EXPECT_EQ(minutes->hi, t + 60000 - 1);
  auto seconds = ParseDateRange("2020-03-04T05:06:07Z");
  ASSERT_TRUE(seconds);
  EXPECT_EQ(seconds->lo, t + 7000);
  EXPECT_EQ(seconds->hi, t + 7999);
  auto millis = ParseDateRange("2020-03-04T05:06:07.123Z");
  ASSERT_TRUE(millis);
  EXPECT_EQ(millis->lo, t + 7123);
  EXPECT_EQ(millis->hi, t + 7123);
  auto tenths = ParseDateRange("2020-03-04T05:06:07.1Z");
  ASSERT_TRUE(tenths);
  EXPECT_EQ(tenths->lo, t + 7100);
  EXPECT_EQ(tenths->hi, t + 7199);
  auto micros = ParseDateRange("2020-03-04T05:06:07.123456Z");
  ASSERT_TRUE(micros);
  EXPECT_EQ(micros->lo, t + 7123);
  EXPECT_EQ(micros->hi, t + 7123);
}

TEST(ParseDateRangeTest, Zones) {
  const int64_t t = k20200304 + (5 * 3600 + 6 * 60 + 7) * 1000;
  auto plus = ParseDateRange("2020-03-04T05:06:07+02:00");
  ASSERT_TRUE(plus);
  EXPECT_EQ(plus->lo, t - 2 * 3600 * 1000);
  auto minus = ParseDateRange("2020-03-04T05:06:07-05:30");
  ASSERT_TRUE(minus);
  EXPECT_EQ(minus->lo, t + (5 * 3600 + 30 * 60) * 1000);
  auto none = ParseDateRange("2020-03-04T05:06:07");  // no zone: UTC
  ASSERT_TRUE(none);
  EXPECT_EQ(none->lo, t);
  auto zero = ParseDateRange("2020-03-04T05:06:07+00:00");
  ASSERT_TRUE(zero);
  EXPECT_EQ(zero->lo, t);
  // Crossing midnight backwards.
  auto early = ParseDateRange("2020-03-04T00:30:00+01:00");
  ASSERT_TRUE(early);
  EXPECT_EQ(early->lo, k20200304 - 30 * 60 * 1000);
}

TEST(ParseDateRangeTest, Malformed) {
  for (const char* bad : {"",
                          "20",
                          "202",
                          "2020-",
                          "2020-13",
                          "2020-00",
                          "2020-02-30",
                          "2019-02-29",
                          "2020-04-31",
                          "2020-03-04T",
                          "2020-03-04T25:00Z",
                          "2020-03-04T05:60Z",
                          "2020-03-04T05:06:61Z",
                          "2020-03-04T05Z",
                          "2020-03-04T05:06:07.Z",
                          "2020-03-04Z",
                          "2020-03-04T05:06:07+2:00",
                          "2020-03-04T05:06:07+15:00",
                          "2020-03-04T05:06:07X",
                          "2020/03/04",
                          "abcd",
                          "2020-3-4",
                          "2020-03-04 05:06"}) {
    EXPECT_FALSE(ParseDateRange(bad)) << bad;
  }
}

TEST(ParseDecimalRangeTest, PrecisionRanges) {
  auto r100 = ParseDecimalRange("100");
  ASSERT_TRUE(r100);
  EXPECT_DOUBLE_EQ(r100->value, 100);
  EXPECT_DOUBLE_EQ(r100->lo, 99.5);
  EXPECT_DOUBLE_EQ(r100->hi, 100.5);
  auto r10000 = ParseDecimalRange("100.00");
  ASSERT_TRUE(r10000);
  EXPECT_DOUBLE_EQ(r10000->value, 100);
  EXPECT_NEAR(r10000->lo, 99.995, 1e-12);
  EXPECT_NEAR(r10000->hi, 100.005, 1e-12);
  auto e2 = ParseDecimalRange("1e2");
  ASSERT_TRUE(e2);
  EXPECT_DOUBLE_EQ(e2->value, 100);
  EXPECT_DOUBLE_EQ(e2->lo, 50);
  EXPECT_DOUBLE_EQ(e2->hi, 150);
  auto e2b = ParseDecimalRange("1.0E+2");
  ASSERT_TRUE(e2b);
  EXPECT_DOUBLE_EQ(e2b->lo, 95);
  EXPECT_DOUBLE_EQ(e2b->hi, 105);
  auto neg = ParseDecimalRange("-3.5");
  ASSERT_TRUE(neg);
  EXPECT_DOUBLE_EQ(neg->value, -3.5);
  EXPECT_DOUBLE_EQ(neg->lo, -3.55);
  EXPECT_DOUBLE_EQ(neg->hi, -3.45);
  auto small = ParseDecimalRange("0.001");
  ASSERT_TRUE(small);
  EXPECT_DOUBLE_EQ(small->value, 0.001);
  EXPECT_NEAR(small->lo, 0.0005, 1e-15);
  EXPECT_NEAR(small->hi, 0.0015, 1e-15);
  auto zero = ParseDecimalRange("0");
  ASSERT_TRUE(zero);
  EXPECT_DOUBLE_EQ(zero->lo, -0.5);
  auto neg_exp = ParseDecimalRange("25e-1");
  ASSERT_TRUE(neg_exp);
  EXPECT_DOUBLE_EQ(neg_exp->value, 2.5);
  EXPECT_NEAR(neg_exp->lo, 2.45, 1e-12);
}

TEST(ParseDecimalRangeTest, Malformed) {
  for (const char* bad : {"", "-", "+1", "01", "1.", ".5", "1e", "1e+", "1.2.3", "abc", "1,5", " 1", "1 ", "NaN", "inf",
                          "0x10", "1e400"}) {
    EXPECT_FALSE(ParseDecimalRange(bad)) << bad;
  }
}

}  // namespace
}  // namespace fhirlake::search
