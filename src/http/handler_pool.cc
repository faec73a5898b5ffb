// HandlerPool: a fixed set of worker threads and a bounded FIFO queue. Admission counts idle workers, so a task
// is refused only when it would really have to wait behind `queue_limit` others.
#include "http/handler_pool.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <exception>

namespace fhirlake::http {

HandlerPool::HandlerPool(int workers, size_t queue_limit) : workers_(std::max(1, workers)), queue_limit_(queue_limit) {}

HandlerPool::~HandlerPool() { Shutdown(/*drop_queued=*/true); }

Status HandlerPool::Start() {
  try {
    threads_.reserve(static_cast<size_t>(workers_));
    worker_ids_.reserve(static_cast<size_t>(workers_));
    for (int i = 0; i < workers_; ++i) {
      {
        // Counted before the thread exists, so a task submitted right after Start() is admitted.
        std::lock_guard lock(mu_);
        ++idle_;
      }
      threads_.emplace_back([this] { Run(); });
      worker_ids_.push_back(threads_.back().get_id());
    }
  } catch (const std::exception& e) {
    Shutdown(/*drop_queued=*/true);
    return Status::Unavailable(std::string("cannot start the http handler threads: ") + e.what());
  }
  return Status::Ok();
}

bool HandlerPool::TrySubmit(std::function<void()> task) {
  {
    std::lock_guard lock(mu_);
    if (shutting_down_ || threads_.empty()) return false;
    // Tasks already queued will take idle workers first; only what is left over has to wait in the queue.
    const size_t waiting = queue_.size() + 1;
    if (waiting > idle_ + queue_limit_) return false;
    queue_.push_back(std::move(task));
  }
  cv_.notify_one();
  return true;
}

void HandlerPool::Run() {
  while (true) {
    std::function<void()> task;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [this] { return shutting_down_ || !queue_.empty(); });
      if (queue_.empty()) return;  // shutting down and nothing left to run
      task = std::move(queue_.front());
      queue_.pop_front();
      --idle_;
    }
    try {
      task();
    } catch (const std::exception& e) {
      spdlog::error("http: handler task threw: {}", e.what());
    } catch (...) {
      spdlog::error("http: handler task threw a non-standard exception");
    }
    task = nullptr;  // what it captured (a connection, a request body) goes now, not when the next task comes
    std::lock_guard lock(mu_);
    ++idle_;
  }
}

void HandlerPool::Shutdown(bool drop_queued) {
  std::deque<std::function<void()>> dropped;
  {
    std::lock_guard lock(mu_);
    shutting_down_ = true;
    if (drop_queued) dropped.swap(queue_);
  }
  cv_.notify_all();
  // Destroyed outside the lock: a task may own the last reference to a connection, whose teardown takes locks.
  dropped.clear();
  std::lock_guard join_lock(join_mu_);
  for (auto& t : threads_) {
    if (t.joinable()) t.join();
  }
}

bool HandlerPool::IsWorkerThread() const {
  const auto me = std::this_thread::get_id();
  return std::find(worker_ids_.begin(), worker_ids_.end(), me) != worker_ids_.end();
}

}  // namespace fhirlake::http
