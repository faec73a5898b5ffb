// Failpoint registry: parsed once from the environment, then read-only except for the per-point hit counters.
#include "common/failpoint.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

namespace fhirlake::failpoint {
namespace {

enum class Action { kKill, kPause, kError, kSleep };

struct Point {
  Action action = Action::kKill;
  int64_t on_hit = 1;  // act on this hit (1-based)
  int64_t sleep_ms = 0;
  std::atomic<int64_t> hits{0};
};

struct Registry {
  std::string dir = ".";
  std::map<std::string, std::unique_ptr<Point>, std::less<>> points;
};

std::atomic<bool> g_enabled{false};
std::mutex g_mu;                             // guards replacing g_registry (Init)
std::shared_ptr<const Registry> g_registry;  // GUARDED_BY(g_mu) for writes; readers copy the pointer under it

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

void WriteMarker(const Registry& reg, std::string_view name) {
  std::string path = reg.dir + "/" + std::string(name) + ".hit";
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd >= 0) {
    std::string pid = std::to_string(::getpid()) + "\n";
    (void)!::write(fd, pid.data(), pid.size());
    ::fsync(fd);
    ::close(fd);
  }
}

Result<std::unique_ptr<Point>> ParseAction(std::string_view name, std::string_view spec) {
  auto point = std::make_unique<Point>();
  if (size_t at = spec.find('@'); at != std::string_view::npos) {
    std::string n(spec.substr(at + 1));
    char* end = nullptr;
    long long v = std::strtoll(n.c_str(), &end, 10);
    if (n.empty() || *end != '\0' || v < 1) {
      return Status::Invalid("failpoint " + std::string(name) + ": '@" + n + "' is not a positive hit number");
    }
    point->on_hit = v;
    spec = spec.substr(0, at);
  }
  if (spec == "kill") {
    point->action = Action::kKill;
  } else if (spec == "pause") {
    point->action = Action::kPause;
  } else if (spec == "error") {
    point->action = Action::kError;
  } else if (spec.starts_with("sleep(") && spec.ends_with(")")) {
    std::string ms(spec.substr(6, spec.size() - 7));
    char* end = nullptr;
    long long v = std::strtoll(ms.c_str(), &end, 10);
    if (ms.empty() || *end != '\0' || v < 0) return Status::Invalid("failpoint " + std::string(name) + ": bad sleep");
    point->action = Action::kSleep;
    point->sleep_ms = v;
  } else {
    return Status::Invalid("failpoint " + std::string(name) + ": unknown action '" + std::string(spec) +
                           "' (kill, pause, error, sleep(MS), each optionally @N)");
  }
  return point;
}

}  // namespace

Status Init() {
  auto reg = std::make_shared<Registry>();
  const char* dir = std::getenv("FHIRLAKE_FAILPOINT_DIR");
  if (dir != nullptr && *dir != '\0') reg->dir = dir;
  const char* spec = std::getenv("FHIRLAKE_FAILPOINTS");
  std::string_view rest = spec != nullptr ? spec : "";
  while (!rest.empty()) {
    size_t semi = rest.find(';');
    std::string_view item = Trim(rest.substr(0, semi));
    rest = semi == std::string_view::npos ? std::string_view() : rest.substr(semi + 1);
    if (item.empty()) continue;
    size_t eq = item.find('=');
    if (eq == std::string_view::npos) {
      return Status::Invalid("FHIRLAKE_FAILPOINTS: '" + std::string(item) + "' is not NAME=ACTION");
    }
    std::string_view name = Trim(item.substr(0, eq));
    ASSIGN_OR_RETURN(auto point, ParseAction(name, Trim(item.substr(eq + 1))));
    reg->points[std::string(name)] = std::move(point);
  }
  std::lock_guard<std::mutex> lock(g_mu);
  g_enabled.store(!reg->points.empty(), std::memory_order_relaxed);
  g_registry = std::move(reg);
  return Status::Ok();
}

bool Enabled() { return g_enabled.load(std::memory_order_relaxed); }

Status Hit(std::string_view name) {
  if (!g_enabled.load(std::memory_order_relaxed)) return Status::Ok();
  std::shared_ptr<const Registry> reg;
  {
    std::lock_guard<std::mutex> lock(g_mu);
    reg = g_registry;
  }
  if (!reg) return Status::Ok();
  auto it = reg->points.find(name);
  if (it == reg->points.end()) return Status::Ok();
  Point& p = *it->second;
  const int64_t hit = p.hits.fetch_add(1) + 1;
  // "error" and "pause" act on every hit from the N-th on (a full disk stays full; every worker that reaches a
  // paused point waits, and once released they all pass); "kill" and "sleep" act once.
  const bool sticky = p.action == Action::kError || p.action == Action::kPause;
  if (sticky ? hit < p.on_hit : hit != p.on_hit) return Status::Ok();
  switch (p.action) {
    case Action::kKill:
      WriteMarker(*reg, name);
      ::kill(::getpid(), SIGKILL);
      ::_exit(137);  // not reached
    case Action::kPause: {
      WriteMarker(*reg, name);
      std::string release = reg->dir + "/" + std::string(name) + ".release";
      while (::access(release.c_str(), F_OK) != 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
      return Status::Ok();
    }
    case Action::kSleep:
      WriteMarker(*reg, name);
      std::this_thread::sleep_for(std::chrono::milliseconds(p.sleep_ms));
      return Status::Ok();
    case Action::kError:
      WriteMarker(*reg, name);
      return Status::Unavailable("injected failure at failpoint " + std::string(name));
  }
  return Status::Ok();
}

}  // namespace fhirlake::failpoint
