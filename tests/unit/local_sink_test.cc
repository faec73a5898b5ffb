// Tests for the local-directory object sink (src/sink/object_sink.h, local_dir_sink.cc) on a real temp dir.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "sink/object_sink.h"
#include "test_util.h"

namespace fhirlake::sink {
namespace {

namespace fs = std::filesystem;
using ::fhirlake::testutil::ReadFileToString;
using ::fhirlake::testutil::TempDir;
using ::fhirlake::testutil::WriteStringToFile;
using ::testing::ElementsAre;
using ::testing::IsEmpty;

// Every regular file under `dir`, relative to it, sorted.
std::vector<std::string> FilesUnder(const fs::path& dir) {
  std::vector<std::string> out;
  if (!fs::exists(dir)) return out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) out.push_back(fs::relative(e.path(), dir).string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

bool HasPartFile(const fs::path& dir) {
  for (const auto& f : FilesUnder(dir)) {
    if (f.find(".part-") != std::string::npos) return true;
  }
  return false;
}

std::vector<std::string> Keys(const std::vector<ObjectInfo>& objects) {
  std::vector<std::string> keys;
  for (const auto& o : objects) keys.push_back(o.key);
  std::sort(keys.begin(), keys.end());
  return keys;
}

class LocalSinkTest : public ::testing::Test {
 protected:
  LocalSinkTest() : sink_(NewLocalDirSink(tmp_.str())) {}

  // Writes and commits `content` at bucket/key in pieces.
  void Put(const std::string& bucket, const std::string& key, const std::string& content) {
    auto w = sink_->Create(ctx_, bucket, key);
    ASSERT_OK(w);
    ASSERT_OK((*w)->Append(content));
    ASSERT_OK((*w)->Commit());
  }

  // Status messages become job messages and HTTP answers: no part of the server's directory may show.
  void ExpectNoServerPath(const Status& st) {
    ASSERT_FALSE(st.ok());
    const std::string& m = st.message();
    EXPECT_EQ(m.find(tmp_.str()), std::string::npos) << m;
    EXPECT_EQ(m.find(tmp_.path().filename().string()), std::string::npos) << m;  // fhirlake_test_XXXXXX
    EXPECT_EQ(m.find("/tmp"), std::string::npos) << m;
    EXPECT_EQ(m.find(".part-"), std::string::npos) << m;  // the temporary file's name
  }

  std::string ReadAll(const ObjectReader& r, size_t chunk) {
    std::string out;
    std::string buf(chunk, '\0');
    for (int64_t off = 0; off < r.size();) {
      auto n = r.ReadAt(off, buf.data(), buf.size());
      EXPECT_OK(n);
      if (!n.ok() || *n == 0) break;
      out.append(buf.data(), *n);
      off += static_cast<int64_t>(*n);
    }
    return out;
  }

  TempDir tmp_;
  std::unique_ptr<ObjectSink> sink_;
  WriteContext ctx_{"arn:aws:iam::123456789012:role/Export", "alias/export"};
};

TEST_F(LocalSinkTest, CreateAppendCommitWritesExactBytes) {
  auto w = sink_->Create(ctx_, "bucket", "prefix/job/Patient-1.ndjson");
  ASSERT_OK(w);
  ASSERT_OK((*w)->Append("{\"resourceType\":\"Patient\",\"id\":\"a\"}\n"));
  ASSERT_OK((*w)->Append(""));
  ASSERT_OK((*w)->Append(std::string("with\0nul\n", 9)));
  ASSERT_OK((*w)->Append("{\"resourceType\":\"Patient\",\"id\":\"b\"}\n"));
  // Nothing is visible under the key before the commit.
  fs::path final_path = tmp_.path() / "bucket" / "prefix" / "job" / "Patient-1.ndjson";
  EXPECT_FALSE(fs::exists(final_path));
  ASSERT_OK((*w)->Commit());
  EXPECT_EQ(ReadFileToString(final_path), std::string("{\"resourceType\":\"Patient\",\"id\":\"a\"}\n"
                                                      "with\0nul\n"
                                                      "{\"resourceType\":\"Patient\",\"id\":\"b\"}\n",
                                                      9 + 2 * 36));
  EXPECT_THAT(FilesUnder(tmp_.path()), ElementsAre("bucket/prefix/job/Patient-1.ndjson"));
  EXPECT_FALSE(HasPartFile(tmp_.path()));
}

TEST_F(LocalSinkTest, LargeAppendsKeepTheirOrder) {
  // Pieces below, at and above the 1 MiB write buffer.
  std::string expected;
  auto w = sink_->Create(ctx_, "bucket", "big.ndjson");
  ASSERT_OK(w);
  const size_t sizes[] = {10, 700 * 1024, 500 * 1024, 1 << 20, 3, (1 << 20) + 17, 2 << 20, 1};
  char fill = 'a';
  for (size_t n : sizes) {
    std::string piece(n, fill);
    piece.back() = '\n';
    fill = fill == 'z' ? 'a' : static_cast<char>(fill + 1);
    expected += piece;
    ASSERT_OK((*w)->Append(piece));
  }
  ASSERT_OK((*w)->Commit());
  std::string got = ReadFileToString(tmp_.path() / "bucket" / "big.ndjson");
  EXPECT_EQ(got.size(), expected.size());
  EXPECT_TRUE(got == expected);
}

TEST_F(LocalSinkTest, EmptyObject) {
  auto w = sink_->Create(ctx_, "bucket", "empty");
  ASSERT_OK(w);
  ASSERT_OK((*w)->Commit());
  fs::path p = tmp_.path() / "bucket" / "empty";
  ASSERT_TRUE(fs::exists(p));
  EXPECT_EQ(fs::file_size(p), 0u);
}

TEST_F(LocalSinkTest, CommitReplacesAnExistingObject) {
  Put("bucket", "k", "old content that is longer");
  Put("bucket", "k", "new");
  EXPECT_EQ(ReadFileToString(tmp_.path() / "bucket" / "k"), "new");
  EXPECT_FALSE(HasPartFile(tmp_.path()));
}

TEST_F(LocalSinkTest, DestroyingAWriterWithoutCommitLeavesNothing) {
  {
    auto w = sink_->Create(ctx_, "bucket", "prefix/unfinished.ndjson");
    ASSERT_OK(w);
    ASSERT_OK((*w)->Append("partial data\n"));
    ASSERT_OK((*w)->Append(std::string(2 << 20, 'x')));  // some of it already on disk
  }
  EXPECT_FALSE(fs::exists(tmp_.path() / "bucket" / "prefix" / "unfinished.ndjson"));
  EXPECT_THAT(FilesUnder(tmp_.path()), IsEmpty());
}

TEST_F(LocalSinkTest, AbortLeavesNothingAndClosesTheWriter) {
  auto w = sink_->Create(ctx_, "bucket", "aborted");
  ASSERT_OK(w);
  ASSERT_OK((*w)->Append("data"));
  (*w)->Abort();
  EXPECT_THAT(FilesUnder(tmp_.path()), IsEmpty());
  EXPECT_FALSE((*w)->Append("more").ok());
  EXPECT_FALSE((*w)->Commit().ok());
  (*w)->Abort();  // twice is harmless
  EXPECT_THAT(FilesUnder(tmp_.path()), IsEmpty());
}

TEST_F(LocalSinkTest, WriterIsClosedAfterCommit) {
  auto w = sink_->Create(ctx_, "bucket", "k");
  ASSERT_OK(w);
  ASSERT_OK((*w)->Append("a"));
  ASSERT_OK((*w)->Commit());
  EXPECT_STATUS((*w)->Append("b"), kInternal, "closed");
  EXPECT_STATUS((*w)->Commit(), kInternal, "closed");
  (*w)->Abort();  // does not remove the committed object
  EXPECT_EQ(ReadFileToString(tmp_.path() / "bucket" / "k"), "a");
}

TEST_F(LocalSinkTest, ConcurrentWritersOfTheSameKeyDoNotCollide) {
  auto a = sink_->Create(ctx_, "bucket", "same");
  auto b = sink_->Create(ctx_, "bucket", "same");
  ASSERT_OK(a);
  ASSERT_OK(b);
  ASSERT_OK((*a)->Append("from a"));
  ASSERT_OK((*b)->Append("from b"));
  ASSERT_OK((*b)->Commit());
  ASSERT_OK((*a)->Commit());
  EXPECT_EQ(ReadFileToString(tmp_.path() / "bucket" / "same"), "from a");
  EXPECT_THAT(FilesUnder(tmp_.path()), ElementsAre("bucket/same"));
}

TEST_F(LocalSinkTest, ListReturnsCommittedObjectsWithSizes) {
  Put("bucket", "exports/job1/Patient-1.ndjson", "12345");
  Put("bucket", "exports/job1/sub/Observation-1.ndjson", "1234567890");
  Put("bucket", "exports/job2/Patient-1.ndjson", "x");
  Put("other", "exports/job1/Patient-1.ndjson", "x");
  auto unfinished = sink_->Create(ctx_, "bucket", "exports/job1/Encounter-1.ndjson");
  ASSERT_OK(unfinished);
  ASSERT_OK((*unfinished)->Append("not yet"));

  auto list = sink_->List(ctx_, "bucket", "exports/job1");
  ASSERT_OK(list);
  EXPECT_THAT(Keys(*list), ElementsAre("exports/job1/Patient-1.ndjson", "exports/job1/sub/Observation-1.ndjson"));
  std::map<std::string, int64_t> sizes;
  for (const auto& o : *list) sizes[o.key] = o.size;
  EXPECT_EQ(sizes["exports/job1/Patient-1.ndjson"], 5);
  EXPECT_EQ(sizes["exports/job1/sub/Observation-1.ndjson"], 10);
  auto with_slash = sink_->List(ctx_, "bucket", "exports/job1/");
  ASSERT_OK(with_slash);
  EXPECT_EQ(with_slash->size(), 2u);
  auto whole_bucket = sink_->List(ctx_, "bucket", "");
  ASSERT_OK(whole_bucket);
  EXPECT_THAT(Keys(*whole_bucket), ElementsAre("exports/job1/Patient-1.ndjson", "exports/job1/sub/Observation-1.ndjson",
                                               "exports/job2/Patient-1.ndjson"));
  // The unfinished object is on disk but not listed.
  EXPECT_TRUE(HasPartFile(tmp_.path() / "bucket"));
}

TEST_F(LocalSinkTest, ListOfMissingPrefixOrBucketIsEmpty) {
  auto list = sink_->List(ctx_, "bucket", "nothing/here");
  ASSERT_OK(list);
  EXPECT_THAT(*list, IsEmpty());
  auto no_bucket = sink_->List(ctx_, "no-such-bucket", "");
  ASSERT_OK(no_bucket);
  EXPECT_THAT(*no_bucket, IsEmpty());
}

TEST_F(LocalSinkTest, AbortIncompleteRemovesOnlyUnfinishedFiles) {
  Put("bucket", "exports/job1/Patient-1.ndjson", "done");
  auto u1 = sink_->Create(ctx_, "bucket", "exports/job1/Patient-2.ndjson");
  auto u2 = sink_->Create(ctx_, "bucket", "exports/job1/deep/Observation-1.ndjson");
  auto u3 = sink_->Create(ctx_, "bucket", "exports/job2/Patient-1.ndjson");  // another prefix
  ASSERT_OK(u1);
  ASSERT_OK(u2);
  ASSERT_OK(u3);
  ASSERT_OK((*u1)->Append("x"));
  ASSERT_OK((*u2)->Append("y"));
  ASSERT_OK((*u3)->Append("z"));
  // A crashed process leaves temporary files behind: simulate one that no writer owns.
  WriteStringToFile(tmp_.path() / "bucket" / "exports" / "job1" / ".Stale-1.ndjson.part-deadbeef", "stale");
  ASSERT_TRUE(HasPartFile(tmp_.path() / "bucket" / "exports" / "job1"));

  ASSERT_OK(sink_->AbortIncomplete(ctx_, "bucket", "exports/job1"));
  EXPECT_THAT(FilesUnder(tmp_.path() / "bucket" / "exports" / "job1"), ElementsAre("Patient-1.ndjson"));
  EXPECT_TRUE(HasPartFile(tmp_.path() / "bucket" / "exports" / "job2"));
  EXPECT_EQ(ReadFileToString(tmp_.path() / "bucket" / "exports" / "job1" / "Patient-1.ndjson"), "done");
  // Missing prefixes are fine.
  EXPECT_OK(sink_->AbortIncomplete(ctx_, "bucket", "nothing/here"));
  EXPECT_OK(sink_->AbortIncomplete(ctx_, "no-such-bucket", ""));
}

TEST_F(LocalSinkTest, Delete) {
  Put("bucket", "a/b.ndjson", "x");
  Put("bucket", "a/c.ndjson", "y");
  ASSERT_OK(sink_->Delete(ctx_, "bucket", "a/b.ndjson"));
  EXPECT_FALSE(fs::exists(tmp_.path() / "bucket" / "a" / "b.ndjson"));
  auto list = sink_->List(ctx_, "bucket", "a");
  ASSERT_OK(list);
  EXPECT_THAT(Keys(*list), ElementsAre("a/c.ndjson"));
  // Deleting what is not there is not an error (as in S3).
  EXPECT_OK(sink_->Delete(ctx_, "bucket", "a/b.ndjson"));
  EXPECT_OK(sink_->Delete(ctx_, "no-such-bucket", "k"));
}

TEST_F(LocalSinkTest, CheckWritableCreatesTheBucketDirectory) {
  ASSERT_FALSE(fs::exists(tmp_.path() / "new-bucket"));
  ASSERT_OK(sink_->CheckWritable(ctx_, "new-bucket"));
  EXPECT_TRUE(fs::is_directory(tmp_.path() / "new-bucket"));
  // Again, on an existing directory.
  EXPECT_OK(sink_->CheckWritable(ctx_, "new-bucket"));
}

TEST_F(LocalSinkTest, CheckWritableFailsWhenTheBucketIsAFile) {
  WriteStringToFile(tmp_.path() / "file-bucket", "not a directory");
  Status st = sink_->CheckWritable(ctx_, "file-bucket");
  EXPECT_STATUS(st, kInvalid, "'file-bucket'");
  EXPECT_STATUS(st, kInvalid, "not a writable directory");
  // The kick-off answer names the bucket the client sent, not where the server keeps it.
  ExpectNoServerPath(st);
  // Creating an object in it fails too, without leaving anything.
  EXPECT_FALSE(sink_->Create(ctx_, "file-bucket", "k").ok());
  EXPECT_EQ(ReadFileToString(tmp_.path() / "file-bucket"), "not a directory");
}

TEST_F(LocalSinkTest, CheckWritableFailsWhenTheRootIsAFile) {
  WriteStringToFile(tmp_.path() / "root-file", "x");
  auto sink = NewLocalDirSink((tmp_.path() / "root-file").string());
  Status st = sink->CheckWritable(ctx_, "bucket");
  EXPECT_STATUS(st, kInvalid, "Output bucket 'bucket' cannot be used");
  ExpectNoServerPath(st);
}

// Regression: a failed write's message named the server's temporary file ("cannot write
// /var/lib/fhirlake/s3/bucket/.../.Patient-1.ndjson.part-1a2b3c4d: ..."), and it became the job message clients
// read. A file size limit makes the write fail the way a full disk does, for root too.
TEST_F(LocalSinkTest, FailedWriteNamesTheObjectNotTheServerPath) {
  auto w = sink_->Create(ctx_, "bucket", "exports/job/Patient-1.ndjson");
  ASSERT_OK(w);
  struct rlimit old_limit {};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old_limit), 0);
  struct rlimit small = old_limit;
  small.rlim_cur = 4096;
  auto old_handler = ::signal(SIGXFSZ, SIG_IGN);  // the write fails with EFBIG instead of killing the process
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  Status st = (*w)->Append(std::string(2 << 20, 'x'));
  ::setrlimit(RLIMIT_FSIZE, &old_limit);
  ::signal(SIGXFSZ, old_handler);
  EXPECT_STATUS(st, kUnavailable, "cannot write s3://bucket/exports/job/Patient-1.ndjson: File too large");
  ExpectNoServerPath(st);
  (*w)->Abort();
  EXPECT_THAT(FilesUnder(tmp_.path()), IsEmpty());
}

TEST_F(LocalSinkTest, FailedCommitNamesTheObjectNotTheServerPath) {
  auto w = sink_->Create(ctx_, "bucket", "exports/job/Patient-1.ndjson");
  ASSERT_OK(w);
  ASSERT_OK((*w)->Append("data\n"));
  // A directory where the file goes: the rename fails (EISDIR).
  fs::create_directories(tmp_.path() / "bucket/exports/job/Patient-1.ndjson/x");
  Status st = (*w)->Commit();
  EXPECT_STATUS(st, kUnavailable, "cannot commit s3://bucket/exports/job/Patient-1.ndjson");
  ExpectNoServerPath(st);
  EXPECT_FALSE(HasPartFile(tmp_.path()));
}

TEST_F(LocalSinkTest, FailedCreateNamesTheObjectNotTheServerPath) {
  WriteStringToFile(tmp_.path() / "bucket", "a file where the bucket directory goes");
  auto w = sink_->Create(ctx_, "bucket", "exports/job/Patient-1.ndjson");
  EXPECT_STATUS(w, kUnavailable, "cannot create s3://bucket/exports/job/Patient-1.ndjson");
  ExpectNoServerPath(w.status());
}

TEST_F(LocalSinkTest, NamesThatWouldLeaveTheRootAreRefused) {
  WriteStringToFile(tmp_.path() / "secret", "outside the bucket");
  for (const std::string key : {"../secret", "a/../../secret", "./x", "a/./b", "/abs", "a/..", "", "dir/"}) {
    EXPECT_STATUS(sink_->Stat(ctx_, "bucket", key), kInvalid, "is not an object key") << key;
    EXPECT_STATUS(sink_->Open(ctx_, "bucket", key), kInvalid, "is not an object key") << key;
    EXPECT_STATUS(sink_->Create(ctx_, "bucket", key), kInvalid, "is not an object key") << key;
    EXPECT_STATUS(sink_->Delete(ctx_, "bucket", key), kInvalid, "is not an object key") << key;
  }
  for (const std::string bucket : {"..", ".", "", "a/b"}) {
    EXPECT_STATUS(sink_->Open(ctx_, bucket, "secret"), kInvalid, "is not a bucket name") << bucket;
    EXPECT_STATUS(sink_->CheckWritable(ctx_, bucket), kInvalid, "is not a bucket name") << bucket;
  }
  EXPECT_STATUS(sink_->List(ctx_, "bucket", "../"), kInvalid, "'..'");
  EXPECT_STATUS(sink_->AbortIncomplete(ctx_, "bucket", "a/../.."), kInvalid, "'..'");
  EXPECT_EQ(ReadFileToString(tmp_.path() / "secret"), "outside the bucket");
}

TEST_F(LocalSinkTest, StatAndOpenReadCommittedObjects) {
  std::string data;
  for (int i = 0; data.size() < (3 << 20); ++i) data += "{\"line\":" + std::to_string(i) + "}\n";
  Put("bucket", "exports/job/Observation-1.ndjson", data);
  ASSERT_OK_AND_ASSIGN(ObjectInfo info, sink_->Stat(ctx_, "bucket", "exports/job/Observation-1.ndjson"));
  EXPECT_EQ(info.key, "exports/job/Observation-1.ndjson");
  EXPECT_EQ(info.size, static_cast<int64_t>(data.size()));
  ASSERT_OK_AND_ASSIGN(auto r, sink_->Open(ctx_, "bucket", "exports/job/Observation-1.ndjson"));
  EXPECT_EQ(r->size(), static_cast<int64_t>(data.size()));
  EXPECT_TRUE(ReadAll(*r, 256 << 10) == data);
  EXPECT_TRUE(ReadAll(*r, 7) == data.substr(0, data.size()));
  char buf[100];
  ASSERT_OK_AND_ASSIGN(size_t n, r->ReadAt(1000, buf, sizeof(buf)));
  EXPECT_EQ(std::string(buf, n), data.substr(1000, 100));
  ASSERT_OK_AND_ASSIGN(n, r->ReadAt(r->size() - 5, buf, sizeof(buf)));
  EXPECT_EQ(std::string(buf, n), data.substr(data.size() - 5));
  ASSERT_OK_AND_ASSIGN(n, r->ReadAt(r->size(), buf, sizeof(buf)));
  EXPECT_EQ(n, 0u);
  ASSERT_OK_AND_ASSIGN(n, r->ReadAt(r->size() + 100, buf, sizeof(buf)));
  EXPECT_EQ(n, 0u);
  EXPECT_STATUS(r->ReadAt(-1, buf, 1), kInvalid, "negative");
  Put("bucket", "empty", "");
  ASSERT_OK_AND_ASSIGN(auto e, sink_->Open(ctx_, "bucket", "empty"));
  EXPECT_EQ(e->size(), 0);
  ASSERT_OK_AND_ASSIGN(n, e->ReadAt(0, buf, sizeof(buf)));
  EXPECT_EQ(n, 0u);
}

TEST_F(LocalSinkTest, UnfinishedAndMissingObjectsAreNotFound) {
  auto w = sink_->Create(ctx_, "bucket", "exports/unfinished.ndjson");
  ASSERT_OK(w);
  ASSERT_OK((*w)->Append(std::string(2 << 20, 'x')));  // on disk, under a temporary name
  EXPECT_STATUS(sink_->Stat(ctx_, "bucket", "exports/unfinished.ndjson"), kNotFound,
                "s3://bucket/exports/unfinished.ndjson does not exist");
  EXPECT_STATUS(sink_->Open(ctx_, "bucket", "exports/unfinished.ndjson"), kNotFound, "does not exist");
  // Nor by the temporary file's own name.
  for (const auto& f : FilesUnder(tmp_.path() / "bucket")) {
    EXPECT_STATUS(sink_->Stat(ctx_, "bucket", f), kNotFound, "does not exist") << f;
    EXPECT_STATUS(sink_->Open(ctx_, "bucket", f), kNotFound, "does not exist") << f;
  }
  EXPECT_STATUS(sink_->Stat(ctx_, "bucket", "exports"), kNotFound, "does not exist");  // a directory
  EXPECT_STATUS(sink_->Open(ctx_, "bucket", "exports"), kNotFound, "does not exist");
  EXPECT_STATUS(sink_->Stat(ctx_, "no-such-bucket", "k"), kNotFound, "does not exist");
  EXPECT_STATUS(sink_->Open(ctx_, "bucket", "exports/unfinished.ndjson/below"), kNotFound, "does not exist");
  ASSERT_OK((*w)->Commit());
  ASSERT_OK_AND_ASSIGN(ObjectInfo info, sink_->Stat(ctx_, "bucket", "exports/unfinished.ndjson"));
  EXPECT_EQ(info.size, 2 << 20);
}

TEST_F(LocalSinkTest, OpenReaderKeepsTheObjectItOpened) {
  Put("bucket", "k", "first version\n");
  ASSERT_OK_AND_ASSIGN(auto r, sink_->Open(ctx_, "bucket", "k"));
  Put("bucket", "k", "second, longer version\n");
  EXPECT_EQ(ReadAll(*r, 4), "first version\n");
  ASSERT_OK(sink_->Delete(ctx_, "bucket", "k"));
  EXPECT_EQ(ReadAll(*r, 100), "first version\n");
}

TEST_F(LocalSinkTest, ConcurrentRangedReadsOfOneReader) {
  std::string data;
  for (int i = 0; data.size() < (4 << 20); ++i) data += std::to_string(i) + "\n";
  Put("bucket", "k", data);
  ASSERT_OK_AND_ASSIGN(auto r, sink_->Open(ctx_, "bucket", "k"));
  std::vector<std::thread> threads;
  std::atomic<int> mismatches{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::string buf(4096 + t, '\0');
      for (int64_t off = t * 777; off < r->size(); off += 65536) {
        auto n = r->ReadAt(off, buf.data(), buf.size());
        if (!n.ok() || std::string_view(buf.data(), *n) != std::string_view(data).substr(off, buf.size())) {
          ++mismatches;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(mismatches.load(), 0);
}

}  // namespace
}  // namespace fhirlake::sink
