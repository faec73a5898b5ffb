// The last resort for a job's final state: when the store cannot record that a job failed (its disk is full, it is
// locked past every retry), the engine writes the outcome here, into a file whose space was allocated when the
// engine started, so writing it needs no new disk blocks. The next start applies every entry to the store (the job
// is then reported FAILED with what happened) before it resumes anything, and clears the entry. Without it such a
// job would show IN_PROGRESS forever, or be resumed over scratch data that may be gone.
//
// Format (docs/EXPORT.md): kSlots fixed-size slots of kSlotBytes; an empty slot starts with '\0'; a used one holds
// "FLJ1\t{datastoreId}\t{jobId}\t{status}\t{message}\n" padded with '\0'.
//
// Threading: all methods are serialised by an internal mutex.
#pragma once

#include <cstddef>
#include <mutex>
#include <string>
#include <vector>

#include "common/status.h"

namespace fhirlake::bulk {

class FinalStateJournal {
 public:
  static constexpr size_t kSlots = 128;
  static constexpr size_t kSlotBytes = 1024;

  struct Entry {
    size_t slot = 0;
    std::string datastore_id;
    std::string job_id;
    std::string status;
    std::string message;
  };

  FinalStateJournal() = default;
  ~FinalStateJournal();
  FinalStateJournal(const FinalStateJournal&) = delete;
  FinalStateJournal& operator=(const FinalStateJournal&) = delete;

  // Opens (creating, with its space allocated) the journal file at `path`.
  Status Open(const std::string& path);
  // Durably records the outcome (fdatasync). Overwrites the oldest entry when every slot is used.
  Status Record(const std::string& datastore_id, const std::string& job_id, const std::string& status,
                const std::string& message);
  Result<std::vector<Entry>> ReadAll();
  Status Clear(size_t slot);

 private:
  std::mutex mu_;
  int fd_ = -1;           // GUARDED_BY(mu_)
  size_t next_slot_ = 0;  // GUARDED_BY(mu_): where Record writes when no slot is free
};

}  // namespace fhirlake::bulk
