// Tests for the in-memory object sink (src/sink/memory_sink.h): the ObjectSink contract as the other sinks keep
// it, inspection, fault injection (Nth call, sticky faults, hooks) and use from many threads at once.
#include "sink/memory_sink.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "test_util.h"

namespace fhirlake::sink {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::Pair;
using Op = MemorySink::Op;

class MemorySinkTest : public ::testing::Test {
 protected:
  void Put(const std::string& bucket, const std::string& key, const std::string& bytes) {
    ASSERT_OK_AND_ASSIGN(auto w, sink_->Create(ctx_, bucket, key));
    ASSERT_OK(w->Append(bytes));
    ASSERT_OK(w->Commit());
  }

  std::string ReadAll(ObjectReader& r) {
    std::string out(static_cast<size_t>(r.size()), '\0');
    auto n = r.ReadAt(0, out.data(), out.size());
    EXPECT_OK(n);
    out.resize(n.ok() ? *n : 0);
    return out;
  }

  std::unique_ptr<MemorySink> sink_ = NewMemorySink();
  WriteContext ctx_{"arn:aws:iam::123456789012:role/Export", "alias/export"};
};

TEST_F(MemorySinkTest, ObjectIsVisibleOnlyAfterCommit) {
  ASSERT_OK_AND_ASSIGN(auto w, sink_->Create(ctx_, "b", "job/Patient-1.ndjson"));
  ASSERT_OK(w->Append("{\"a\":1}\n"));
  ASSERT_OK(w->Append(std::string("\0x\n", 3)));
  EXPECT_THAT(sink_->Objects("b"), IsEmpty());
  EXPECT_STATUS(sink_->Stat(ctx_, "b", "job/Patient-1.ndjson"), kNotFound, "s3://b/job/Patient-1.ndjson");
  EXPECT_STATUS(sink_->Open(ctx_, "b", "job/Patient-1.ndjson"), kNotFound, "does not exist");
  ASSERT_OK_AND_ASSIGN(auto listed, sink_->List(ctx_, "b", ""));
  EXPECT_THAT(listed, IsEmpty());
  ASSERT_EQ(sink_->Pending().size(), 1u);
  EXPECT_EQ(sink_->Pending()[0].key, "job/Patient-1.ndjson");
  EXPECT_EQ(sink_->Pending()[0].bytes, std::string("{\"a\":1}\n\0x\n", 11));

  ASSERT_OK(w->Commit());
  EXPECT_THAT(sink_->Objects("b"), ElementsAre(Pair("job/Patient-1.ndjson", std::string("{\"a\":1}\n\0x\n", 11))));
  EXPECT_THAT(sink_->Pending(), IsEmpty());
  ASSERT_OK_AND_ASSIGN(ObjectInfo info, sink_->Stat(ctx_, "b", "job/Patient-1.ndjson"));
  EXPECT_EQ(info.size, 11);
  EXPECT_EQ(sink_->LastWriteContext().kms_key_id, "alias/export");
  EXPECT_STATUS(w->Append("more"), kInternal, "closed");
  EXPECT_STATUS(w->Commit(), kInternal, "closed");
}

TEST_F(MemorySinkTest, WriterDroppedOrAbortedLeavesNothing) {
  {
    ASSERT_OK_AND_ASSIGN(auto w, sink_->Create(ctx_, "b", "dropped"));
    ASSERT_OK(w->Append("x"));
  }
  ASSERT_OK_AND_ASSIGN(auto w, sink_->Create(ctx_, "b", "aborted"));
  ASSERT_OK(w->Append("y"));
  w->Abort();
  w->Abort();
  EXPECT_THAT(sink_->Objects("b"), IsEmpty());
  EXPECT_THAT(sink_->Pending(), IsEmpty());
  EXPECT_FALSE(w->Commit().ok());
}

TEST_F(MemorySinkTest, ListByPrefixSortedWithSizesAndDelete) {
  Put("b", "exp/job1/Patient-1.ndjson", "12345");
  Put("b", "exp/job1/Observation-1.ndjson", "1");
  Put("b", "exp/job2/Patient-1.ndjson", "x");
  Put("other", "exp/job1/Patient-1.ndjson", "x");
  ASSERT_OK_AND_ASSIGN(auto listed, sink_->List(ctx_, "b", "exp/job1/"));
  ASSERT_EQ(listed.size(), 2u);
  EXPECT_EQ(listed[0].key, "exp/job1/Observation-1.ndjson");
  EXPECT_EQ(listed[1].key, "exp/job1/Patient-1.ndjson");
  EXPECT_EQ(listed[1].size, 5);
  ASSERT_OK(sink_->Delete(ctx_, "b", "exp/job1/Patient-1.ndjson"));
  ASSERT_OK(sink_->Delete(ctx_, "b", "exp/job1/Patient-1.ndjson"));  // deleting what is gone is fine (as S3)
  ASSERT_OK(sink_->Delete(ctx_, "nobucket", "k"));
  EXPECT_FALSE(sink_->Object("b", "exp/job1/Patient-1.ndjson").has_value());
  EXPECT_EQ(sink_->Object("other", "exp/job1/Patient-1.ndjson"), "x");
}

TEST_F(MemorySinkTest, CommitReplacesButAnOpenReaderKeepsItsBytes) {
  Put("b", "k", "old bytes");
  ASSERT_OK_AND_ASSIGN(auto r, sink_->Open(ctx_, "b", "k"));
  Put("b", "k", "new");
  EXPECT_EQ(r->size(), 9);
  EXPECT_EQ(ReadAll(*r), "old bytes");
  ASSERT_OK(sink_->Delete(ctx_, "b", "k"));
  EXPECT_EQ(ReadAll(*r), "old bytes");
}

TEST_F(MemorySinkTest, RangedReads) {
  Put("b", "k", "0123456789");
  ASSERT_OK_AND_ASSIGN(auto r, sink_->Open(ctx_, "b", "k"));
  char buf[16] = {};
  ASSERT_OK_AND_ASSIGN(size_t n, r->ReadAt(3, buf, 4));
  EXPECT_EQ(std::string(buf, n), "3456");
  ASSERT_OK_AND_ASSIGN(n, r->ReadAt(8, buf, 16));
  EXPECT_EQ(std::string(buf, n), "89");
  ASSERT_OK_AND_ASSIGN(n, r->ReadAt(10, buf, 16));
  EXPECT_EQ(n, 0u);
  ASSERT_OK_AND_ASSIGN(n, r->ReadAt(1000, buf, 16));
  EXPECT_EQ(n, 0u);
  EXPECT_STATUS(r->ReadAt(-1, buf, 1), kInvalid, "negative");
}

TEST_F(MemorySinkTest, AbortIncompleteRemovesUnfinishedUnderThePrefixOnly) {
  ASSERT_OK_AND_ASSIGN(auto in, sink_->Create(ctx_, "b", "job1/a"));
  ASSERT_OK_AND_ASSIGN(auto out, sink_->Create(ctx_, "b", "job2/a"));
  ASSERT_OK(in->Append("x"));
  ASSERT_OK(out->Append("y"));
  Put("b", "job1/done", "z");
  ASSERT_OK(sink_->AbortIncomplete(ctx_, "b", "job1/"));
  ASSERT_EQ(sink_->Pending().size(), 1u);
  EXPECT_EQ(sink_->Pending()[0].key, "job2/a");
  // The writer whose object was removed fails from now on, as after an aborted S3 upload.
  EXPECT_STATUS(in->Append("more"), kUnavailable, "s3://b/job1/a");
  EXPECT_STATUS(in->Commit(), kUnavailable, "removed");
  EXPECT_FALSE(sink_->Object("b", "job1/a").has_value());
  EXPECT_EQ(sink_->Object("b", "job1/done"), "z");
  ASSERT_OK(out->Commit());
  EXPECT_EQ(sink_->Object("b", "job2/a"), "y");
}

TEST_F(MemorySinkTest, FailNthAppendLikeADiskFull) {
  const Status enospc = Status::Unavailable("cannot write s3://b/k: No space left on device");
  sink_->FailNth(Op::kAppend, 3, enospc);
  ASSERT_OK_AND_ASSIGN(auto w, sink_->Create(ctx_, "b", "k"));
  EXPECT_OK(w->Append("1"));
  EXPECT_OK(w->Append("2"));
  EXPECT_STATUS(w->Append("3"), kUnavailable, "No space left on device");
  EXPECT_OK(w->Append("4"));  // only the 3rd
  EXPECT_EQ(sink_->Calls(Op::kAppend), 4);
  ASSERT_OK(w->Commit());
  EXPECT_EQ(sink_->Object("b", "k"), "124");  // the failed append wrote nothing
}

TEST_F(MemorySinkTest, StickyFaultFromTheNthCallOn) {
  sink_->FailNth(Op::kCreate, 2, Status::Unavailable("disk full"), MemorySink::kForever);
  EXPECT_OK(sink_->Create(ctx_, "b", "1"));
  for (int i = 0; i < 5; ++i) EXPECT_STATUS(sink_->Create(ctx_, "b", "k"), kUnavailable, "disk full");
  EXPECT_EQ(sink_->Calls(Op::kCreate), 6);
}

TEST_F(MemorySinkTest, FailedCommitLeavesTheWriterOpenAndNothingVisible) {
  sink_->FailNth(Op::kCommit, 1, Status::Unavailable("sync failed"), 2);
  ASSERT_OK_AND_ASSIGN(auto w, sink_->Create(ctx_, "b", "k"));
  ASSERT_OK(w->Append("x"));
  EXPECT_STATUS(w->Commit(), kUnavailable, "sync failed");
  EXPECT_STATUS(w->Commit(), kUnavailable, "sync failed");
  EXPECT_FALSE(sink_->Object("b", "k").has_value());
  EXPECT_EQ(sink_->Pending().size(), 1u);
  ASSERT_OK(w->Commit());  // the 3rd commit is not faulted
  EXPECT_EQ(sink_->Object("b", "k"), "x");
}

TEST_F(MemorySinkTest, FaultsOnEveryOperation) {
  Put("b", "k", "x");
  ASSERT_OK_AND_ASSIGN(auto r, sink_->Open(ctx_, "b", "k"));
  for (Op op : {Op::kCheckWritable, Op::kList, Op::kDelete, Op::kAbortIncomplete, Op::kStat, Op::kOpen, Op::kReadAt}) {
    sink_->FailNth(op, sink_->Calls(op) + 1, Status::Unavailable("injected"));
  }
  char c;
  EXPECT_STATUS(sink_->CheckWritable(ctx_, "b"), kUnavailable, "injected");
  EXPECT_STATUS(sink_->List(ctx_, "b", ""), kUnavailable, "injected");
  EXPECT_STATUS(sink_->Delete(ctx_, "b", "k"), kUnavailable, "injected");
  EXPECT_STATUS(sink_->AbortIncomplete(ctx_, "b", ""), kUnavailable, "injected");
  EXPECT_STATUS(sink_->Stat(ctx_, "b", "k"), kUnavailable, "injected");
  EXPECT_STATUS(sink_->Open(ctx_, "b", "k"), kUnavailable, "injected");
  EXPECT_STATUS(r->ReadAt(0, &c, 1), kUnavailable, "injected");
  EXPECT_EQ(sink_->Object("b", "k"), "x");  // the failed Delete deleted nothing
  // Each fault hit once only.
  EXPECT_OK(sink_->Stat(ctx_, "b", "k"));
  EXPECT_OK(r->ReadAt(0, &c, 1));
}

TEST_F(MemorySinkTest, HookSeesEveryCallAndCanFailIt) {
  std::vector<std::string> seen;
  sink_->SetHook([&](const MemorySink::Call& call) {
    seen.push_back(std::to_string(static_cast<int>(call.op)) + ":" + call.key + "#" + std::to_string(call.n));
    if (call.op == Op::kCommit && call.key == "bad") return Status::Unavailable("hook says no");
    return Status::Ok();
  });
  ASSERT_OK_AND_ASSIGN(auto good, sink_->Create(ctx_, "b", "good"));
  ASSERT_OK_AND_ASSIGN(auto bad, sink_->Create(ctx_, "b", "bad"));
  ASSERT_OK(good->Append("g"));
  ASSERT_OK(good->Commit());
  EXPECT_STATUS(bad->Commit(), kUnavailable, "hook says no");
  const auto k = [](Op op) { return std::to_string(static_cast<int>(op)); };
  EXPECT_THAT(seen, ElementsAre(k(Op::kCreate) + ":good#1", k(Op::kCreate) + ":bad#2", k(Op::kAppend) + ":good#1",
                                k(Op::kCommit) + ":good#1", k(Op::kCommit) + ":bad#2"));
  EXPECT_THAT(sink_->Objects("b"), ElementsAre(Pair("good", "g")));
  // FailNth wins over the hook.
  sink_->FailNth(Op::kStat, 1, Status::NotFound("fault"));
  EXPECT_STATUS(sink_->Stat(ctx_, "b", "good"), kNotFound, "fault");
}

TEST_F(MemorySinkTest, ManyThreadsWriteAndReadAtOnce) {
  constexpr int kThreads = 8;
  constexpr int kFiles = 50;
  sink_->FailNth(Op::kCommit, 100, Status::Unavailable("the 100th commit fails"));
  std::atomic<int> failed_commits{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kFiles; ++i) {
        std::string key = "t";  // built with += : g++ 12 warns falsely (-Wrestrict) on "t" + std::to_string(t)
        key += std::to_string(t) + "/f" + std::to_string(i);
        auto w = sink_->Create(ctx_, "b", key);
        if (!w.ok()) continue;
        for (int line = 0; line < 10; ++line) (void)(*w)->Append(key + "\n");
        if (!(*w)->Commit().ok()) ++failed_commits;
        (void)sink_->List(ctx_, "b", "t");
        auto r = sink_->Open(ctx_, "b", key);
        if (r.ok()) {
          std::string buf(static_cast<size_t>((*r)->size()), '\0');
          (void)(*r)->ReadAt(0, buf.data(), buf.size());
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failed_commits.load(), 1);
  EXPECT_EQ(sink_->Calls(Op::kCommit), kThreads * kFiles);
  auto objects = sink_->Objects("b");
  EXPECT_EQ(objects.size(), static_cast<size_t>(kThreads * kFiles - 1));
  for (const auto& [key, bytes] : objects) {
    std::string want;
    for (int line = 0; line < 10; ++line) want += key + "\n";
    EXPECT_EQ(bytes, want) << key;
  }
  EXPECT_THAT(sink_->Pending(), IsEmpty());  // the writer whose commit failed was dropped: aborted
}

}  // namespace
}  // namespace fhirlake::sink
