// Local-directory object sink. A file is written as "{dir}/.{name}.part-{random}", flushed, fdatasync'ed,
// then renamed to its final name and the directory fsync'ed: no partial file ever has its final name.
// Errors name the object as s3://bucket/key (clients read them in job messages and kick-off answers); the
// server path goes to the log only, for the operator.
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
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

std::string Uri(const std::string& bucket, std::string_view key) { return "s3://" + bucket + "/" + std::string(key); }

// Refuses names that would reach outside {root}/{bucket}. Kick-off validation already keeps them out of export
// keys; this holds for every caller, such as a download endpoint passing keys that come from a request.
Status CheckName(const std::string& bucket, std::string_view key, bool is_prefix) {
  if (bucket.empty() || bucket == "." || bucket == ".." || bucket.find('/') != std::string::npos ||
      bucket.find('\0') != std::string::npos) {
    return Status::Invalid("'" + bucket + "' is not a bucket name");
  }
  if (!is_prefix && (key.empty() || key.back() == '/')) {
    return Status::Invalid("'" + std::string(key) + "' is not an object key");
  }
  if (key.starts_with("/") || key.find('\0') != std::string_view::npos) {
    return Status::Invalid("'" + std::string(key) + "' is not an object key");
  }
  for (size_t start = 0; start <= key.size();) {
    size_t end = key.find('/', start);
    if (end == std::string_view::npos) end = key.size();
    std::string_view segment = key.substr(start, end - start);
    if (segment == "." || segment == "..") {
      return Status::Invalid("'" + std::string(key) + "' is not an object key: '.' and '..' segments are not allowed");
    }
    start = end + 1;
  }
  return Status::Ok();
}

// `what` names the object (s3://bucket/key); `path` is logged, never put in the Status.
Status ErrnoStatus(const std::string& what, const fs::path& path, int err) {
  spdlog::warn("event=local_sink_error path={} reason=\"{}\"", path.string(), std::strerror(err));
  std::string msg = what + ": " + std::strerror(err);
  if (err == ENOSPC) msg += " (the disk is full; free space and run the export again)";
  if (err == EACCES || err == EPERM || err == EROFS) msg += " (check the permissions of the output directory)";
  return Status::Unavailable(msg);
}

Status ErrorCodeStatus(const std::string& what, const fs::path& path, const std::error_code& ec) {
  spdlog::warn("event=local_sink_error path={} reason=\"{}\"", path.string(), ec.message());
  return Status::Unavailable(what + ": " + ec.message());
}

class LocalWriter final : public ObjectWriter {
 public:
  LocalWriter(int fd, fs::path tmp, fs::path final_path, std::string uri)
      : fd_(fd), tmp_(std::move(tmp)), final_(std::move(final_path)), uri_(std::move(uri)) {
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
    if (::fdatasync(fd_) != 0) return ErrnoStatus("cannot write " + uri_, tmp_, errno);
    ::close(fd_);
    fd_ = -1;
    if (::rename(tmp_.c_str(), final_.c_str()) != 0) {
      int err = errno;
      ::unlink(tmp_.c_str());
      return ErrnoStatus("cannot commit " + uri_, final_, err);
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
        return ErrnoStatus("cannot write " + uri_, tmp_, errno);
      }
      bytes.remove_prefix(static_cast<size_t>(n));
    }
    return Status::Ok();
  }

  int fd_;
  fs::path tmp_;
  fs::path final_;
  std::string uri_;  // s3://bucket/key, for messages
  std::string buffer_;
};

// A committed file, open for pread. The descriptor keeps the opened file readable when a later commit renames
// another file over its name, or when it is deleted: the reader keeps seeing the object it opened.
class LocalReader final : public ObjectReader {
 public:
  LocalReader(int fd, int64_t size, std::string uri) : fd_(fd), size_(size), uri_(std::move(uri)) {}
  ~LocalReader() override { ::close(fd_); }

  int64_t size() const override { return size_; }

  Result<size_t> ReadAt(int64_t offset, char* buf, size_t len) const override {
    if (offset < 0) return Status::Invalid("read of " + uri_ + " at a negative offset");
    if (offset >= size_) return size_t{0};
    len = static_cast<size_t>(std::min<uint64_t>(len, size_ - offset));
    size_t done = 0;
    while (done < len) {
      ssize_t n = ::pread(fd_, buf + done, len - done, static_cast<off_t>(offset + done));
      if (n < 0) {
        if (errno == EINTR) continue;
        return Status::Unavailable("cannot read " + uri_ + ": " + std::strerror(errno));
      }
      if (n == 0) break;  // cannot happen to a committed file; never loop on it
      done += static_cast<size_t>(n);
    }
    return done;
  }

 private:
  int fd_;
  int64_t size_;
  std::string uri_;
};

class LocalDirSink final : public ObjectSink {
 public:
  explicit LocalDirSink(std::string root) : root_(std::move(root)) {}

  Status CheckWritable(const WriteContext&, const std::string& bucket) override {
    RETURN_IF_ERROR(CheckName(bucket, "", true));
    fs::path dir = root_ / bucket;
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec || !fs::is_directory(dir)) {
      spdlog::warn("event=local_sink_error path={} reason=\"not a writable directory{}\"", dir.string(),
                   ec ? ": " + ec.message() : "");
      return Status::Invalid("Output bucket '" + bucket + "' cannot be used: it is not a writable directory" +
                             (ec ? " (" + ec.message() + ")" : ""));
    }
    if (::access(dir.c_str(), W_OK) != 0) {
      spdlog::warn("event=local_sink_error path={} reason=\"not writable\"", dir.string());
      return Status::Invalid("Output bucket '" + bucket + "' is not writable");
    }
    return Status::Ok();
  }

  Result<std::unique_ptr<ObjectWriter>> Create(const WriteContext&, const std::string& bucket,
                                               const std::string& key) override {
    RETURN_IF_ERROR(CheckName(bucket, key, false));
    fs::path final_path = root_ / bucket / key;
    std::error_code ec;
    fs::create_directories(final_path.parent_path(), ec);
    if (ec) return ErrorCodeStatus("cannot create " + Uri(bucket, key), final_path.parent_path(), ec);
    fs::path tmp =
        final_path.parent_path() / ("." + final_path.filename().string() + ".part-" + NewHexId().substr(0, 8));
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) return ErrnoStatus("cannot create " + Uri(bucket, key), tmp, errno);
    return std::unique_ptr<ObjectWriter>(std::make_unique<LocalWriter>(fd, tmp, final_path, Uri(bucket, key)));
  }

  Result<std::vector<ObjectInfo>> List(const WriteContext&, const std::string& bucket,
                                       const std::string& prefix) override {
    RETURN_IF_ERROR(CheckName(bucket, prefix, true));
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
    if (ec) return ErrorCodeStatus("cannot list " + Uri(bucket, prefix), dir, ec);
    return out;
  }

  Status Delete(const WriteContext&, const std::string& bucket, const std::string& key) override {
    RETURN_IF_ERROR(CheckName(bucket, key, false));
    std::error_code ec;
    fs::remove(root_ / bucket / key, ec);
    if (ec) return ErrorCodeStatus("cannot delete " + Uri(bucket, key), root_ / bucket / key, ec);
    return Status::Ok();
  }

  Status AbortIncomplete(const WriteContext&, const std::string& bucket, const std::string& prefix) override {
    RETURN_IF_ERROR(CheckName(bucket, prefix, true));
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

  Result<ObjectInfo> Stat(const WriteContext&, const std::string& bucket, const std::string& key) override {
    RETURN_IF_ERROR(CheckName(bucket, key, false));
    fs::path path = root_ / bucket / key;
    if (IsPartName(path.filename().string())) return Status::NotFound(Uri(bucket, key) + " does not exist");
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
      if (errno == ENOENT || errno == ENOTDIR) return Status::NotFound(Uri(bucket, key) + " does not exist");
      return ErrnoStatus("cannot read " + Uri(bucket, key), path, errno);
    }
    if (!S_ISREG(st.st_mode)) return Status::NotFound(Uri(bucket, key) + " does not exist");
    return ObjectInfo{key, static_cast<int64_t>(st.st_size)};
  }

  Result<std::unique_ptr<ObjectReader>> Open(const WriteContext&, const std::string& bucket,
                                             const std::string& key) override {
    RETURN_IF_ERROR(CheckName(bucket, key, false));
    fs::path path = root_ / bucket / key;
    if (IsPartName(path.filename().string())) return Status::NotFound(Uri(bucket, key) + " does not exist");
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      if (errno == ENOENT || errno == ENOTDIR) return Status::NotFound(Uri(bucket, key) + " does not exist");
      return ErrnoStatus("cannot read " + Uri(bucket, key), path, errno);
    }
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      return Status::NotFound(Uri(bucket, key) + " does not exist");
    }
    return std::unique_ptr<ObjectReader>(
        std::make_unique<LocalReader>(fd, static_cast<int64_t>(st.st_size), Uri(bucket, key)));
  }

 private:
  fs::path root_;
};

}  // namespace

std::unique_ptr<ObjectSink> NewLocalDirSink(std::string root) {
  return std::make_unique<LocalDirSink>(std::move(root));
}

}  // namespace fhirlake::sink
