// FinalStateJournal: preallocated fixed-slot file, pwrite + fdatasync per record.
#include "bulk/final_state_journal.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace fhirlake::bulk {
namespace {

constexpr std::string_view kMagic = "FLJ1\t";

std::string Clean(std::string s) {
  for (char& c : s) {
    if (c == '\t' || c == '\n' || c == '\0') c = ' ';
  }
  return s;
}

Status ErrnoStatus(std::string_view what) {
  return Status::Unavailable("export journal: " + std::string(what) + ": " + std::strerror(errno));
}

}  // namespace

FinalStateJournal::~FinalStateJournal() {
  if (fd_ >= 0) ::close(fd_);
}

Status FinalStateJournal::Open(const std::string& path) {
  std::lock_guard<std::mutex> lock(mu_);
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus("cannot open the journal file");
  // Allocate every block now, while there is space: later writes then never need any.
  int rc = ::posix_fallocate(fd, 0, static_cast<off_t>(kSlots * kSlotBytes));
  if (rc != 0) {
    ::close(fd);
    errno = rc;
    return ErrnoStatus("cannot allocate the journal file");
  }
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
  return Status::Ok();
}

Status FinalStateJournal::Record(const std::string& datastore_id, const std::string& job_id, const std::string& status,
                                 const std::string& message) {
  std::lock_guard<std::mutex> lock(mu_);
  if (fd_ < 0) return Status::Internal("export journal is not open");
  std::string line =
      std::string(kMagic) + Clean(datastore_id) + "\t" + Clean(job_id) + "\t" + Clean(status) + "\t" + Clean(message);
  if (line.size() > kSlotBytes - 1) line.resize(kSlotBytes - 1);
  line.push_back('\n');
  line.resize(kSlotBytes, '\0');
  // The first free slot, else the next one round-robin (the oldest entry is lost only after kSlots failures).
  size_t slot = next_slot_;
  for (size_t i = 0; i < kSlots; ++i) {
    char first = 0;
    ssize_t n = ::pread(fd_, &first, 1, static_cast<off_t>(i * kSlotBytes));
    if (n == 1 && first == '\0') {
      slot = i;
      break;
    }
  }
  next_slot_ = (slot + 1) % kSlots;
  ssize_t n = ::pwrite(fd_, line.data(), line.size(), static_cast<off_t>(slot * kSlotBytes));
  if (n != static_cast<ssize_t>(line.size())) return ErrnoStatus("cannot write an entry");
  if (::fdatasync(fd_) != 0) return ErrnoStatus("cannot sync an entry");
  return Status::Ok();
}

Result<std::vector<FinalStateJournal::Entry>> FinalStateJournal::ReadAll() {
  std::lock_guard<std::mutex> lock(mu_);
  if (fd_ < 0) return Status::Internal("export journal is not open");
  std::vector<Entry> out;
  std::string buf(kSlotBytes, '\0');
  for (size_t i = 0; i < kSlots; ++i) {
    ssize_t n = ::pread(fd_, buf.data(), buf.size(), static_cast<off_t>(i * kSlotBytes));
    if (n != static_cast<ssize_t>(buf.size())) return ErrnoStatus("cannot read");
    std::string_view line(buf.data(), std::strlen(buf.c_str()));
    if (!line.starts_with(kMagic) || !line.ends_with('\n')) continue;  // empty or torn
    line.remove_prefix(kMagic.size());
    line.remove_suffix(1);
    std::vector<std::string> parts;
    for (int k = 0; k < 3; ++k) {
      size_t tab = line.find('\t');
      if (tab == std::string_view::npos) break;
      parts.emplace_back(line.substr(0, tab));
      line.remove_prefix(tab + 1);
    }
    if (parts.size() != 3) continue;
    out.push_back(Entry{i, parts[0], parts[1], parts[2], std::string(line)});
  }
  return out;
}

Status FinalStateJournal::Clear(size_t slot) {
  std::lock_guard<std::mutex> lock(mu_);
  if (fd_ < 0) return Status::Internal("export journal is not open");
  if (slot >= kSlots) return Status::Internal("export journal: no slot " + std::to_string(slot));
  std::string zeros(kSlotBytes, '\0');
  ssize_t n = ::pwrite(fd_, zeros.data(), zeros.size(), static_cast<off_t>(slot * kSlotBytes));
  if (n != static_cast<ssize_t>(zeros.size())) return ErrnoStatus("cannot clear an entry");
  if (::fdatasync(fd_) != 0) return ErrnoStatus("cannot sync");
  return Status::Ok();
}

}  // namespace fhirlake::bulk
