// Tests for the local-directory object sink (src/sink/object_sink.h, local_dir_sink.cc) on a real temp dir.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
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
  std::string path = (tmp_.path() / "file-bucket").string();
  EXPECT_STATUS(sink_->CheckWritable(ctx_, "file-bucket"), kInvalid, path);
  EXPECT_STATUS(sink_->CheckWritable(ctx_, "file-bucket"), kInvalid, "'file-bucket'");
  // Creating an object in it fails too, without leaving anything.
  EXPECT_FALSE(sink_->Create(ctx_, "file-bucket", "k").ok());
  EXPECT_EQ(ReadFileToString(tmp_.path() / "file-bucket"), "not a directory");
}

TEST_F(LocalSinkTest, CheckWritableFailsWhenTheRootIsAFile) {
  WriteStringToFile(tmp_.path() / "root-file", "x");
  auto sink = NewLocalDirSink((tmp_.path() / "root-file").string());
  EXPECT_STATUS(sink->CheckWritable(ctx_, "bucket"), kInvalid, (tmp_.path() / "root-file" / "bucket").string());
}

}  // namespace
}  // namespace fhirlake::sink
