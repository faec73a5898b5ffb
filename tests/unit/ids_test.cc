// Tests for random identifiers and the FHIR id syntax check (src/common/ids.h).
#include "common/ids.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <random>
#include <regex>
#include <set>
#include <sstream>
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

// Inverts mt19937_64's output tempering, giving back the state word an output came from.
uint64_t UndoXorShiftRight(uint64_t y, int shift, uint64_t mask) {
  uint64_t x = y;
  for (int i = 0; i < 64 / shift + 1; ++i) x = y ^ ((x >> shift) & mask);
  return x;
}
uint64_t UndoXorShiftLeft(uint64_t y, int shift, uint64_t mask) {
  uint64_t x = y;
  for (int i = 0; i < 64 / shift + 1; ++i) x = y ^ ((x << shift) & mask);
  return x;
}
uint64_t Untemper(uint64_t y) {
  y = UndoXorShiftRight(y, 43, ~uint64_t{0});
  y = UndoXorShiftLeft(y, 37, 0xFFF7EEE000000000ULL);
  y = UndoXorShiftLeft(y, 17, 0x71D67FFFEDA60000ULL);
  y = UndoXorShiftRight(y, 29, 0x5555555555555555ULL);
  return y;
}
uint64_t HexWord(const std::string& s) { return std::stoull(s, nullptr, 16); }

// Regression (hardening issue): ids came from a seeded mt19937_64, whose whole state follows from 312 outputs, so
// anyone who saw 156 job ids could compute the next ones. With a CSPRNG the reconstruction predicts nothing.
TEST(NewHexIdTest, NextIdCannotBePredictedFromPreviousOnes) {
  // First the attack itself, against a real mt19937_64, to show it works.
  std::mt19937_64 victim(12345);
  std::vector<uint64_t> seen(312);
  for (auto& w : seen) w = victim();
  std::stringstream state;
  for (uint64_t w : seen) state << Untemper(w) << ' ';
  state << 312;
  std::mt19937_64 clone;
  state >> clone;
  ASSERT_FALSE(state.fail());
  ASSERT_EQ(clone(), victim());  // predicted

  // Then against NewHexId: 156 ids are 312 consecutive 64-bit outputs of one thread.
  std::stringstream ids_state;
  for (int i = 0; i < 156; ++i) {
    std::string id = NewHexId();
    ids_state << Untemper(HexWord(id.substr(0, 16))) << ' ' << Untemper(HexWord(id.substr(16))) << ' ';
  }
  ids_state << 312;
  std::mt19937_64 predictor;
  ids_state >> predictor;
  ASSERT_FALSE(ids_state.fail());
  std::string next = NewHexId();
  uint64_t predicted_hi = predictor();
  EXPECT_NE(HexWord(next.substr(0, 16)), predicted_hi) << "the next id was predicted from the previous 156";
}

// A forked child must not hand out the ids its parent will (a per-thread buffer copied by fork would).
TEST(NewHexIdTest, ForkedChildGetsOtherIds) {
  (void)NewHexId();  // fill this thread's buffer before forking
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::string id = NewHexId();
    (void)!write(fds[1], id.data(), id.size());
    _exit(0);
  }
  close(fds[1]);
  std::string parent_id = NewHexId();
  char buf[32];
  ASSERT_EQ(read(fds[0], buf, sizeof buf), 32);
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_NE(std::string(buf, 32), parent_id);
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
