// The threads that run request handlers, so that a handler blocking on SQLite, a lock or a failpoint never stalls
// the I/O threads (accepting, reading, writing, timers). A fixed number of workers fed by a bounded FIFO queue:
// when every worker is busy and the queue is full, TrySubmit refuses and the server answers 503 at once instead
// of letting requests (and their bodies) pile up.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "common/status.h"

namespace fhirlake::http {

class HandlerPool {
 public:
  // `queue_limit` bounds the tasks waiting for a worker; a task is always accepted while a worker is idle, so
  // with queue_limit 0 the pool takes exactly as many tasks as it has workers.
  HandlerPool(int workers, size_t queue_limit);
  ~HandlerPool();  // Shutdown(/*drop_queued=*/true)
  HandlerPool(const HandlerPool&) = delete;
  HandlerPool& operator=(const HandlerPool&) = delete;

  // Starts the worker threads; fails (without throwing) when a thread cannot be created. Call once.
  Status Start();
  // Thread-safe. Queues `task` unless the pool is full or shut down (then false: the caller must answer
  // itself). A task's exception is logged and swallowed: it costs that task, never a worker.
  [[nodiscard]] bool TrySubmit(std::function<void()> task);
  // Thread-safe, idempotent; must not be called from a worker. Refuses new tasks, discards queued ones that
  // no worker has started when `drop_queued` (else runs them), and waits for the running ones to return.
  void Shutdown(bool drop_queued);
  // Whether the calling thread is one of the workers (they must not wait for the pool to shut down).
  bool IsWorkerThread() const;

 private:
  void Run();

  const int workers_;
  const size_t queue_limit_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;  // GUARDED_BY(mu_)
  size_t idle_ = 0;                          // GUARDED_BY(mu_): workers not running a task
  bool shutting_down_ = false;               // GUARDED_BY(mu_)
  // Written by Start() only, which happens-before any other call, so readers need no lock. The ids are kept
  // apart because joining a std::thread resets its id (IsWorkerThread may run while Shutdown joins).
  std::vector<std::thread> threads_;
  std::vector<std::thread::id> worker_ids_;
  std::mutex join_mu_;  // serialises concurrent Shutdown() calls around joining
};

}  // namespace fhirlake::http
