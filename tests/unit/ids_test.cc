// Tests for random identifiers and the FHIR id syntax check (src/common/ids.h).
#include "common/ids.h"

#include <gtest/gtest.h>

#include <regex>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace fhirlake {
namespace {

bool IsLowerHex(const std::string& s) {
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

TEST(NewHexIdTest, Is32LowercaseHex) {
  for (int i = 0; i < 100; ++i) {
    std::string id = NewHexId();
    EXPECT_EQ(id.size(), 32u) << id;
    EXPECT_TRUE(IsLowerHex(id)) << id;
    EXPECT_TRUE(IsHexId(id)) << id;
  }
}

TEST(NewHexIdTest, UniqueOver10k) {
  std::set<std::string> seen;
  for (int i = 0; i < 10000; ++i) seen.insert(NewHexId());
  EXPECT_EQ(seen.size(), 10000u);
}

TEST(NewHexIdTest, UniqueAcrossThreads) {
  constexpr int kThreads = 4;
  constexpr int kPerThread = 2500;
  std::vector<std::vector<std::string>> results(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&results, t] {
      for (int i = 0; i < kPerThread; ++i) results[t].push_back(NewHexId());
    });
  }
  for (auto& th : threads) th.join();
  std::set<std::string> seen;
  for (const auto& r : results) seen.insert(r.begin(), r.end());
  EXPECT_EQ(seen.size(), static_cast<size_t>(kThreads * kPerThread));
}

TEST(NewHexIdTest, UsesAllHexDigits) {
  // 1000 ids have 32000 digits; every one of the 16 digits shows up.
  std::set<char> digits;
  for (int i = 0; i < 1000; ++i) {
    for (char c : NewHexId()) digits.insert(c);
  }
  EXPECT_EQ(digits.size(), 16u);
}

TEST(NewUuidTest, Version4Format) {
  static const std::regex kUuidV4("^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$");
  for (int i = 0; i < 1000; ++i) {
    std::string u = NewUuid();
    EXPECT_EQ(u.size(), 36u) << u;
    EXPECT_TRUE(std::regex_match(u, kUuidV4)) << u;
  }
}

TEST(NewUuidTest, UniqueAndValidFhirIds) {
  std::set<std::string> seen;
  for (int i = 0; i < 10000; ++i) {
    std::string u = NewUuid();
    EXPECT_TRUE(IsValidFhirId(u)) << u;
    seen.insert(std::move(u));
  }
  EXPECT_EQ(seen.size(), 10000u);
}

TEST(IsValidFhirIdTest, Accepts) {
  EXPECT_TRUE(IsValidFhirId("a"));
  EXPECT_TRUE(IsValidFhirId("1"));
  EXPECT_TRUE(IsValidFhirId("example"));
  EXPECT_TRUE(IsValidFhirId("Patient-1.v2"));
  EXPECT_TRUE(IsValidFhirId("ABCxyz019"));
  EXPECT_TRUE(IsValidFhirId("-"));
  EXPECT_TRUE(IsValidFhirId("."));
  EXPECT_TRUE(IsValidFhirId("123e4567-e89b-12d3-a456-426614174000"));
  EXPECT_TRUE(IsValidFhirId(std::string(64, 'a')));
  EXPECT_TRUE(IsValidFhirId(std::string(63, 'Z') + "9"));
}

TEST(IsValidFhirIdTest, Rejects) {
  EXPECT_FALSE(IsValidFhirId(""));
  EXPECT_FALSE(IsValidFhirId(std::string(65, 'a')));
  EXPECT_FALSE(IsValidFhirId("a_b"));
  EXPECT_FALSE(IsValidFhirId("_history"));
  EXPECT_FALSE(IsValidFhirId("a b"));
  EXPECT_FALSE(IsValidFhirId("a/b"));
  EXPECT_FALSE(IsValidFhirId("a:b"));
  EXPECT_FALSE(IsValidFhirId("a#b"));
  EXPECT_FALSE(IsValidFhirId("a\nb"));
  EXPECT_FALSE(IsValidFhirId("caf\xc3\xa9"));  // non-ASCII letters are not allowed
  EXPECT_FALSE(IsValidFhirId(std::string_view("a\0b", 3)));
}

TEST(IsHexIdTest, Checks32LowercaseHex) {
  EXPECT_TRUE(IsHexId("0123456789abcdef0123456789abcdef"));
  EXPECT_FALSE(IsHexId("0123456789ABCDEF0123456789ABCDEF"));   // upper case
  EXPECT_FALSE(IsHexId("0123456789abcdef0123456789abcde"));    // 31
  EXPECT_FALSE(IsHexId("0123456789abcdef0123456789abcdef0"));  // 33
  EXPECT_FALSE(IsHexId("0123456789abcdef0123456789abcdeg"));
  EXPECT_FALSE(IsHexId(""));
}

}  // namespace
}  // namespace fhirlake
