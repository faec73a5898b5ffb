// Random identifiers from the kernel's CSPRNG (getrandom(2)): job and resource ids are unguessable, since a job id
// is all that stands between one client and another's job (until auth, and still a defence in depth after).
#include "common/ids.h"

#include <pthread.h>
#include <sys/random.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace fhirlake {
namespace {

// Bumped in a forked child, so the child never reuses random words its parent buffered (and will hand out too).
std::atomic<uint64_t> g_fork_generation{0};

// A per-thread buffer refilled from getrandom, so an id costs one syscall per 32 ids, not one per id.
class ThreadRandom {
 public:
  ThreadRandom() {
    static const int registered = pthread_atfork(nullptr, nullptr, [] { g_fork_generation.fetch_add(1); });
    (void)registered;
  }
  uint64_t Next() {
    uint64_t generation = g_fork_generation.load(std::memory_order_relaxed);
    if (pos_ == kWords || generation != generation_) {
      generation_ = generation;
      Refill();
    }
    return words_[pos_++];
  }

 private:
  static constexpr size_t kWords = 64;
  void Refill() {
    auto* p = reinterpret_cast<unsigned char*>(words_);
    size_t got = 0;
    while (got < sizeof(words_)) {
      ssize_t n = getrandom(p + got, sizeof(words_) - got, 0);
      if (n < 0) {
        if (errno == EINTR) continue;
        // Without the kernel's CSPRNG no id would be safe to hand out; this is not a client-reachable state.
        std::fprintf(stderr, "fhirlake: getrandom failed: %s\n", std::strerror(errno));
        std::abort();
      }
      got += static_cast<size_t>(n);
    }
    pos_ = 0;
  }
  uint64_t words_[kWords];
  size_t pos_ = kWords;
  uint64_t generation_ = 0;
};

uint64_t RandomWord() {
  thread_local ThreadRandom rng;
  return rng.Next();
}

void AppendHex(std::string* out, uint64_t v, int digits) {
  static constexpr char kHex[] = "0123456789abcdef";
  for (int i = digits - 1; i >= 0; --i) out->push_back(kHex[(v >> (i * 4)) & 0xf]);
}

}  // namespace

std::string NewHexId() {
  std::string s;
  s.reserve(32);
  AppendHex(&s, RandomWord(), 16);
  AppendHex(&s, RandomWord(), 16);
  return s;
}

std::string NewUuid() {
  uint64_t hi = RandomWord();
  uint64_t lo = RandomWord();
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
