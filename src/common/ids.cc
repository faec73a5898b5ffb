// Random identifiers: a per-thread generator seeded from std::random_device.
#include "common/ids.h"

#include <cstdint>
#include <random>

namespace fhirlake {
namespace {

std::mt19937_64& ThreadRng() {
  thread_local std::mt19937_64 rng([] {
    std::random_device rd;
    std::seed_seq seq{rd(), rd(), rd(), rd(), rd(), rd(), rd(), rd()};
    return std::mt19937_64(seq);
  }());
  return rng;
}

void AppendHex(std::string* out, uint64_t v, int digits) {
  static constexpr char kHex[] = "0123456789abcdef";
  for (int i = digits - 1; i >= 0; --i) out->push_back(kHex[(v >> (i * 4)) & 0xf]);
}

}  // namespace

std::string NewHexId() {
  std::string s;
  s.reserve(32);
  AppendHex(&s, ThreadRng()(), 16);
  AppendHex(&s, ThreadRng()(), 16);
  return s;
}

std::string NewUuid() {
  uint64_t hi = ThreadRng()();
  uint64_t lo = ThreadRng()();
  hi = (hi & 0xffffffffffff0fffULL) | 0x0000000000004000ULL;  // version 4
  lo = (lo & 0x3fffffffffffffffULL) | 0x8000000000000000ULL;  // variant 10
  std::string s;
  s.reserve(36);
  AppendHex(&s, hi >> 32, 8);
  s.push_back('-');
  AppendHex(&s, (hi >> 16) & 0xffff, 4);
  s.push_back('-');
  AppendHex(&s, hi & 0xffff, 4);
  s.push_back('-');
  AppendHex(&s, lo >> 48, 4);
  s.push_back('-');
  AppendHex(&s, lo & 0xffffffffffffULL, 12);
  return s;
}

bool IsValidFhirId(std::string_view id) {
  if (id.empty() || id.size() > 64) return false;
  for (char c : id) {
    bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.';
    if (!ok) return false;
  }
  return true;
}

bool IsHexId(std::string_view id) {
  if (id.size() != 32) return false;
  for (char c : id) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

}  // namespace fhirlake
