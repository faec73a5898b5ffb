// Local-directory object sink. A file is written as "{dir}/.{name}.part-{random}", flushed, fdatasync'ed,
// then renamed to its final name and the directory fsync'ed: no partial file ever has its final name.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "common/ids.h"
#include "sink/object_sink.h"

namespace fhirlake::sink {
namespace {

namespace fs = std::filesystem;
constexpr size_t kWriteBuffer = 1 << 20;

bool IsPartName(const std::string& name) { return name.starts_with(".") && name.find(".part-") != std::string::npos; }

Status ErrnoStatus(const std::string& what, int err) {
  std::string msg = what + ": " + std::strerror(err);
  if (err == ENOSPC) msg += " (the disk is full; free space and run the export again)";
  if (err == EACCES || err == EPERM || err == EROFS) msg += " (check the permissions of the output directory)";
  return Status::Unavailable(msg);
}

class LocalWriter final : public ObjectWriter {
 public:
  LocalWriter(int fd, fs::path tmp, fs::path final_path)
      : fd_(fd), tmp_(std::move(tmp)), final_(std::move(final_path)) {
    buffer_.reserve(kWriteBuffer);
  }
  ~LocalWriter() override { Abort(); }

  Status Append(std::string_view bytes) override {
    if (fd_ < 0) return Status::Internal("write to a closed object");
    if (buffer_.size() + bytes.size() > kWriteBuffer) RETURN_IF_ERROR(Flush());
    if (bytes.size() >= kWriteBuffer) return WriteAll(bytes);
    buffer_.append(bytes);
    return Status::Ok();
  }

  Status Commit() override {
    if (fd_ < 0) return Status::Internal("commit of a closed object");
    RETURN_IF_ERROR(Flush());
    if (::fdatasync(fd_) != 0) return ErrnoStatus("cannot sync " + tmp_.string(), errno);
    ::close(fd_);
    fd_ = -1;
    if (::rename(tmp_.c_str(), final_.c_str()) != 0) {
      int err = errno;
      ::unlink(tmp_.c_str());
      return ErrnoStatus("cannot rename " + tmp_.string() + " to " + final_.string(), err);
    }
    int dfd = ::open(final_.parent_path().c_str(), O_RDONLY | O_DIRECTORY);
    if (dfd >= 0) {
      ::fsync(dfd);
      ::close(dfd);
    }
    return Status::Ok();
  }

  void Abort() override {
    if (fd_ >= 0) {
      ::close(fd_);
      fd_ = -1;
      ::unlink(tmp_.c_str());
    }
  }

 private:
  Status Flush() {
    Status st = WriteAll(buffer_);
    buffer_.clear();
    return st;
  }
  Status WriteAll(std::string_view bytes) {
    while (!bytes.empty()) {
      ssize_t n = ::write(fd_, bytes.data(), bytes.size());
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoStatus("cannot write " + tmp_.string(), errno);
      }
      bytes.remove_prefix(static_cast<size_t>(n));
    }
    return Status::Ok();
  }

  int fd_;
  fs::path tmp_;
  fs::path final_;
  std::string buffer_;
};

class LocalDirSink final : public ObjectSink {
 public:
  explicit LocalDirSink(std::string root) : root_(std::move(root)) {}

  Status CheckWritable(const WriteContext&, const std::string& bucket) override {
    fs::path dir = root_ / bucket;
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec || !fs::is_directory(dir)) {
      return Status::Invalid("Output bucket '" + bucket + "' cannot be used: " + dir.string() +
                             " is not a writable directory" + (ec ? " (" + ec.message() + ")" : ""));
    }
    if (::access(dir.c_str(), W_OK) != 0) {
      return Status::Invalid("Output bucket '" + bucket + "': " + dir.string() + " is not writable");
    }
    return Status::Ok();
  }

  Result<std::unique_ptr<ObjectWriter>> Create(const WriteContext&, const std::string& bucket,
                                               const std::string& key) override {
    fs::path final_path = root_ / bucket / key;
    std::error_code ec;
    fs::create_directories(final_path.parent_path(), ec);
    if (ec) {
      return Status::Unavailable("cannot create directory " + final_path.parent_path().string() + ": " + ec.message());
    }
    fs::path tmp =
        final_path.parent_path() / ("." + final_path.filename().string() + ".part-" + NewHexId().substr(0, 8));
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) return ErrnoStatus("cannot create " + tmp.string(), errno);
    return std::unique_ptr<ObjectWriter>(std::make_unique<LocalWriter>(fd, tmp, final_path));
  }

  Result<std::vector<ObjectInfo>> List(const WriteContext&, const std::string& bucket,
                                       const std::string& prefix) override {
    std::vector<ObjectInfo> out;
    fs::path base = root_ / bucket;
    fs::path dir = base / prefix;
    std::error_code ec;
    if (!fs::exists(dir, ec)) return out;
    for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::recursive_directory_iterator();
         it.increment(ec)) {
      std::error_code e2;
      if (!it->is_regular_file(e2) || IsPartName(it->path().filename().string())) continue;
      auto size = it->file_size(e2);
      std::string rel = it->path().string().substr(base.string().size() + 1);
      out.push_back({rel, e2 ? 0 : static_cast<int64_t>(size)});
    }
    if (ec) return Status::Unavailable("cannot list " + dir.string() + ": " + ec.message());
    return out;
  }

  Status Delete(const WriteContext&, const std::string& bucket, const std::string& key) override {
    std::error_code ec;
    fs::remove(root_ / bucket / key, ec);
    if (ec) return Status::Unavailable("cannot delete " + (root_ / bucket / key).string() + ": " + ec.message());
    return Status::Ok();
  }

  Status AbortIncomplete(const WriteContext&, const std::string& bucket, const std::string& prefix) override {
    fs::path dir = root_ / bucket / prefix;
    std::error_code ec;
    if (!fs::exists(dir, ec)) return Status::Ok();
    std::vector<fs::path> parts;
    for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::recursive_directory_iterator();
         it.increment(ec)) {
      std::error_code e2;
      if (it->is_regular_file(e2) && IsPartName(it->path().filename().string())) parts.push_back(it->path());
    }
    for (const auto& p : parts) fs::remove(p, ec);
    return Status::Ok();
  }

 private:
  fs::path root_;
};

}  // namespace

std::unique_ptr<ObjectSink> NewLocalDirSink(std::string root) {
  return std::make_unique<LocalDirSink>(std::move(root));
}

}  // namespace fhirlake::sink
