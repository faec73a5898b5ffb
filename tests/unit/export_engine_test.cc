// Tests for the export engine (src/bulk/export_engine.h) on a real SQLite store in a temp dir and the in-memory
// sink with fault injection: planning, checkpoints and resume, cancel at every stage, failure paths, the queue
// quota, and the final-state journal.
#include "bulk/export_engine.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/failpoint.h"
#include "fhir/resource_parser.h"
#include "sink/memory_sink.h"
#include "store/resource_store.h"
#include "test_util.h"

namespace fhirlake::bulk {
namespace {

namespace fs = std::filesystem;
using sink::MemorySink;
using ::testing::HasSubstr;
using testutil::TempDir;
namespace js = job_status;

constexpr const char* kBucket = "out";

class ExportEngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ::unsetenv("FHIRLAKE_FAILPOINTS");
    ASSERT_OK(failpoint::Init());
    store::StoreOptions so;
    so.data_dir = (fs::path(tmp_.str()) / "data").string();
    so.busy_timeout_ms = 5000;
    auto catalog = store::OpenSqliteCatalog(so);
    ASSERT_OK(catalog);
    catalog_ = std::move(catalog).value();
    store_ = catalog_->Default();
    sink_ = sink::NewMemorySink();
    options_.workers = 2;
    options_.batch_rows = 7;  // many batches and files from little data
    options_.file_bytes = 2000;
    options_.journal_dir = (fs::path(tmp_.str()) / "journal").string();
    options_.state_retry_initial_ms = 1;
  }
  void TearDown() override {
    engine_.reset();
    ::unsetenv("FHIRLAKE_FAILPOINTS");
    ASSERT_OK(failpoint::Init());
  }

  void StartEngine() {
    engine_.reset();
    engine_ = std::make_unique<ExportEngine>(catalog_.get(), sink_.get(), options_, Clock::System());
    ASSERT_OK(engine_->Start());
  }

  void Arm(const std::string& spec) {
    ::setenv("FHIRLAKE_FAILPOINT_DIR", tmp_.str().c_str(), 1);
    ::setenv("FHIRLAKE_FAILPOINTS", spec.c_str(), 1);
    ASSERT_OK(failpoint::Init());
  }
  bool Reached(const std::string& point) { return fs::exists(fs::path(tmp_.str()) / (point + ".hit")); }
  void Release(const std::string& point) { std::ofstream(fs::path(tmp_.str()) / (point + ".release")).put('\n'); }

  // Writes `patients` Patients, each with `obs` Observations in its compartment, and one Practitioner they
  // reference. Returns the expected "Type/id" set of a system export.
  std::set<std::string> Load(int patients, int obs) {
    std::set<std::string> all;
    fhir::ResourceParser parser;
    auto txn = store_->BeginWrite();
    EXPECT_TRUE(txn.ok());
    auto put = [&](const std::string& json, const std::string& type, const std::string& id) {
      auto parsed = parser.Parse(json, nullptr);
      ASSERT_OK(parsed);
      ASSERT_OK((*txn)->Put(*parsed, id, std::nullopt));
      all.insert(type + "/" + id);
    };
    put(R"({"resourceType":"Practitioner","id":"doc"})", "Practitioner", "doc");
    for (int p = 0; p < patients; ++p) {
      std::string pid = "p" + std::to_string(p);
      put(R"({"resourceType":"Patient","id":")" + pid + R"("})", "Patient", pid);
      for (int o = 0; o < obs; ++o) {
        std::string oid = pid + "-o" + std::to_string(o);
        put(R"({"resourceType":"Observation","id":")" + oid + R"(","status":"final","subject":{"reference":"Patient/)" +
                pid + R"("},"performer":[{"reference":"Practitioner/doc"}]})",
            "Observation", oid);
      }
    }
    EXPECT_OK((*txn)->Commit());
    return all;
  }

  ExportRequest Request(ExportLevel level = ExportLevel::kSystem) {
    ExportRequest r;
    r.level = level;
    r.output.bucket = kBucket;
    r.output.prefix = "exports";
    r.data_access_role_arn = "arn:aws:iam::123456789012:role/Export";
    r.kms_key_id = "alias/k";
    r.request_url = "http://localhost/datastore/x/r4/$export";
    r.owner = "tester";
    return r;
  }

  std::string Submit(const ExportRequest& r) {
    auto job = engine_->Submit(store_, r);
    EXPECT_TRUE(job.ok()) << job.status().ToString();
    return job.ok() ? job->job_id : "";
  }

  store::ExportJobRecord WaitFor(const std::string& job_id, std::set<std::string> statuses, int timeout_s = 30) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
    while (true) {
      auto job = store_->jobs().GetJob(job_id);
      EXPECT_TRUE(job.ok());
      if (!job.ok() || statuses.count(job->status)) return job.ok() ? *job : store::ExportJobRecord{};
      if (std::chrono::steady_clock::now() > deadline) {
        ADD_FAILURE() << "job " << job_id << " is still " << job->status;
        return *job;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }

  // "Type/id" of every line of every committed object of the job, with how often each appears.
  std::map<std::string, int> ExportedLines(const std::string& job_id) {
    std::map<std::string, int> out;
    for (const auto& [key, bytes] : sink_->Objects(kBucket)) {
      if (key.find(job_id) == std::string::npos || key.find("/OperationOutcome/") != std::string::npos) continue;
      size_t pos = 0;
      while (pos < bytes.size()) {
        size_t nl = bytes.find('\n', pos);
        std::string line = bytes.substr(pos, nl - pos);
        pos = nl + 1;
        auto type_at = line.find("\"resourceType\":\"") + 16;
        auto id_at = line.find("\"id\":\"") + 6;
        out[line.substr(type_at, line.find('"', type_at) - type_at) + "/" +
            line.substr(id_at, line.find('"', id_at) - id_at)] += 1;
      }
    }
    return out;
  }

  // Every committed object of the job is recorded in the store, and every record has its object.
  void ExpectObjectsEqualRecords(const std::string& job_id) {
    auto files = store_->jobs().Files(job_id);
    ASSERT_OK(files);
    std::set<std::string> recorded, stored;
    for (const auto& f : *files) recorded.insert(f.key);
    for (const auto& [key, bytes] : sink_->Objects(kBucket)) {
      if (key.find(job_id) != std::string::npos) stored.insert(key);
    }
    EXPECT_EQ(stored, recorded);
    EXPECT_TRUE(sink_->Pending().empty()) << sink_->Pending().size() << " writers left open";
  }

  static std::map<std::string, int> Once(const std::set<std::string>& s) {
    std::map<std::string, int> out;
    for (const auto& k : s) out[k] = 1;
    return out;
  }

  TempDir tmp_;
  std::unique_ptr<store::DatastoreCatalog> catalog_;
  store::ResourceStore* store_ = nullptr;
  std::unique_ptr<MemorySink> sink_;
  EngineOptions options_;
  std::unique_ptr<ExportEngine> engine_;
};

TEST_F(ExportEngineTest, SystemExportWritesEveryResourceOnceInManyFiles) {
  auto all = Load(20, 5);
  StartEngine();
  std::string job = Submit(Request());
  auto done = WaitFor(job, {js::kCompleted});
  EXPECT_EQ(done.status, js::kCompleted);
  EXPECT_EQ(done.owner, "tester");
  ASSERT_TRUE(done.snapshot.has_value());
  ASSERT_TRUE(done.end_time.has_value());
  EXPECT_EQ(ExportedLines(job), Once(all));
  ExpectObjectsEqualRecords(job);
  auto files = store_->jobs().Files(job);
  ASSERT_OK(files);
  EXPECT_GT(files->size(), 3u);  // rotated by bytes
  auto tasks = store_->jobs().Tasks(job);
  ASSERT_OK(tasks);
  for (const auto& t : *tasks) EXPECT_TRUE(t.done) << t.type;
}

TEST_F(ExportEngineTest, LargeTypesAreSplitIntoTaskRanges) {
  auto all = Load(30, 3);
  options_.task_rows = 10;
  StartEngine();
  std::string job = Submit(Request());
  WaitFor(job, {js::kCompleted});
  auto tasks = store_->jobs().Tasks(job);
  ASSERT_OK(tasks);
  int observation_tasks = 0;
  int64_t planned = 0;
  for (const auto& t : *tasks) {
    observation_tasks += t.type == "Observation";
    planned += t.planned_rows;
  }
  EXPECT_EQ(observation_tasks, 9);  // 90 rows / 10
  EXPECT_EQ(planned, static_cast<int64_t>(all.size()));
  EXPECT_EQ(ExportedLines(job), Once(all));
}

TEST_F(ExportEngineTest, PatientExportHasTheCompartmentsAndTheReferencedResources) {
  auto all = Load(5, 2);
  {
    fhir::ResourceParser parser;
    auto parsed = parser.Parse(R"({"resourceType":"Organization","id":"lonely"})", nullptr);
    ASSERT_OK(parsed);
    auto txn = store_->BeginWrite();
    ASSERT_OK(txn);
    ASSERT_OK((*txn)->Put(*parsed, "lonely", std::nullopt));
    ASSERT_OK((*txn)->Commit());
  }
  StartEngine();
  std::string job = Submit(Request(ExportLevel::kPatient));
  WaitFor(job, {js::kCompleted});
  EXPECT_EQ(ExportedLines(job), Once(all));  // the Organization outside every compartment is not there
}

// A sink that fails mid-export (ENOSPC on an Append): the job ends FAILED with the sink's message, no writer is
// left open, and every object left is complete and recorded.
TEST_F(ExportEngineTest, SinkFailureFailsTheJobWithItsMessage) {
  Load(20, 5);
  sink_->FailNth(MemorySink::Op::kAppend, 40, Status::Unavailable("cannot write s3://out/x: No space left on device"),
                 MemorySink::kForever);
  StartEngine();
  std::string job = Submit(Request());
  auto failed = WaitFor(job, {js::kFailed});
  EXPECT_EQ(failed.status, js::kFailed);
  EXPECT_THAT(failed.message, HasSubstr("No space left on device"));
  ASSERT_TRUE(failed.end_time.has_value());
  ExpectObjectsEqualRecords(job);
  for (const auto& [k, n] : ExportedLines(job)) EXPECT_EQ(n, 1) << k;
}

TEST_F(ExportEngineTest, FailedCommitFailsTheJob) {
  Load(10, 5);
  sink_->FailNth(MemorySink::Op::kCommit, 2, Status::Unavailable("upload failed"));
  StartEngine();
  std::string job = Submit(Request());
  auto failed = WaitFor(job, {js::kFailed});
  EXPECT_THAT(failed.message, HasSubstr("upload failed"));
  ExpectObjectsEqualRecords(job);
}

// A committed object the store never recorded (the crash window between sink commit and store commit) is removed
// when the job is resumed, and the resumed job's output is exact.
TEST_F(ExportEngineTest, ResumeAfterStopRemovesUnrecordedObjectsAndCompletesExactly) {
  auto all = Load(30, 5);
  options_.batch_delay_ms = 5;
  StartEngine();
  std::string job = Submit(Request());
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (store_->jobs().Files(job)->size() < 3) {
    ASSERT_LT(std::chrono::steady_clock::now(), deadline);
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  engine_->Stop();
  EXPECT_EQ(store_->jobs().GetJob(job)->status, js::kInProgress);
  // Plant an object in the job's folder that no record knows.
  auto stray = sink_->Create({}, kBucket,
                             ExportEngine::JobKeyPrefix(*store_->jobs().GetJob(job), store_->info().id) +
                                 "/Observation/Observation-999.ndjson");
  ASSERT_OK(stray);
  ASSERT_OK((*stray)->Append("{\"resourceType\":\"Observation\",\"id\":\"ghost\"}\n"));
  ASSERT_OK((*stray)->Commit());
  options_.batch_delay_ms = 0;
  StartEngine();
  WaitFor(job, {js::kCompleted});
  EXPECT_EQ(ExportedLines(job), Once(all));
  ExpectObjectsEqualRecords(job);
}

TEST_F(ExportEngineTest, CancelWhileRunningEndsCancelCompletedOnce) {
  Load(30, 5);
  options_.batch_delay_ms = 20;
  StartEngine();
  std::string job = Submit(Request());
  WaitFor(job, {js::kInProgress});
  auto cancelled = engine_->Cancel(store_, job);
  ASSERT_OK(cancelled);
  EXPECT_EQ(cancelled->status, js::kCancelSubmitted);
  EXPECT_STATUS(engine_->Cancel(store_, job), kNotSupported, "not supported");
  auto done = WaitFor(job, {js::kCancelCompleted});
  ASSERT_TRUE(done.end_time.has_value());
  const auto end = *done.end_time;
  std::this_thread::sleep_for(std::chrono::milliseconds(600));  // a scheduler pass or two later
  auto later = store_->jobs().GetJob(job);
  ASSERT_OK(later);
  EXPECT_EQ(later->status, js::kCancelCompleted);
  EXPECT_EQ(later->end_time, end);  // never rewritten
  ExpectObjectsEqualRecords(job);
}

TEST_F(ExportEngineTest, CancelOfAQueuedJobNeverRunsIt) {
  Load(20, 5);
  options_.batch_delay_ms = 20;
  options_.jobs_per_datastore = 1;
  StartEngine();
  std::string first = Submit(Request());
  std::string second = Submit(Request());
  WaitFor(second, {js::kQueued});
  ASSERT_OK(engine_->Cancel(store_, second));
  auto done = WaitFor(second, {js::kCancelCompleted});
  EXPECT_FALSE(done.snapshot.has_value());  // it never started
  EXPECT_TRUE(ExportedLines(second).empty());
  ASSERT_OK(engine_->Cancel(store_, first));
  WaitFor(first, {js::kCancelCompleted});
}

// The cancel lands after the last task finished but before the job's final transition: the store's
// compare-and-set makes the cancel win, and everything exported stays listed.
TEST_F(ExportEngineTest, CancelDuringFinalizeWins) {
  auto all = Load(5, 2);
  Arm("export.finalize=pause");
  StartEngine();
  std::string job = Submit(Request());
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!Reached("export.finalize")) {
    ASSERT_LT(std::chrono::steady_clock::now(), deadline);
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  auto cancelled = engine_->Cancel(store_, job);
  ASSERT_OK(cancelled);
  Release("export.finalize");
  auto done = WaitFor(job, {js::kCancelCompleted, js::kCompleted});
  EXPECT_EQ(done.status, js::kCancelCompleted);
  EXPECT_EQ(ExportedLines(job), Once(all));
  ExpectObjectsEqualRecords(job);
}

// Planning is paused: Describe and Cancel answer meanwhile (the engine lock is not held across planning), and the
// planner's own transition then fails its compare-and-set, so the job ends CANCEL_COMPLETED without running.
TEST_F(ExportEngineTest, CancelWhilePlanningIsPausedEndsTheJobBeforeItRuns) {
  Load(5, 2);
  Arm("export.plan=pause");
  StartEngine();
  std::string job = Submit(Request(ExportLevel::kPatient));
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!Reached("export.plan")) {
    ASSERT_LT(std::chrono::steady_clock::now(), deadline);
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  auto view = engine_->Describe(store_, job);
  ASSERT_OK(view);
  EXPECT_EQ(view->job.status, js::kSubmitted);
  ASSERT_OK(engine_->Cancel(store_, job));
  Release("export.plan");
  auto done = WaitFor(job, {js::kCancelCompleted});
  EXPECT_EQ(done.status, js::kCancelCompleted);
  EXPECT_TRUE(ExportedLines(job).empty());
  // The scratch rows are dropped right after the final state is durable (the status becomes visible first, so
  // this waits for the drop rather than racing it).
  auto drop_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (true) {
    auto types = store_->TypesInJobScope(job);
    ASSERT_OK(types);
    if (types->empty()) break;
    ASSERT_LT(std::chrono::steady_clock::now(), drop_deadline) << "the cancelled job's scratch rows stay";
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

TEST_F(ExportEngineTest, QueueLimitRefusesWithTooManyRequests) {
  Load(20, 5);
  options_.batch_delay_ms = 50;
  options_.queue_limit = 2;
  StartEngine();
  std::string running = Submit(Request());
  WaitFor(running, {js::kInProgress});
  Submit(Request());
  Submit(Request());
  auto refused = engine_->Submit(store_, Request());
  EXPECT_STATUS(refused, kTooManyRequests, "limit is 2");
}

// The final write fails on every attempt: the job is not reported as finished, its outcome is journaled, and a
// new engine on the same store reports it FAILED before doing anything else.
TEST_F(ExportEngineTest, UnwritableFinalStateIsJournaledAndAppliedAtTheNextStart) {
  Load(5, 2);
  Arm("export.persist_final=error");
  StartEngine();
  std::string job = Submit(Request());
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!Reached("export.persist_final")) {
    ASSERT_LT(std::chrono::steady_clock::now(), deadline);
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(store_->jobs().GetJob(job)->status, js::kInProgress);  // the last state really recorded
  engine_->Stop();
  ::unsetenv("FHIRLAKE_FAILPOINTS");
  ASSERT_OK(failpoint::Init());
  StartEngine();
  auto job_now = store_->jobs().GetJob(job);
  ASSERT_OK(job_now);
  EXPECT_EQ(job_now->status, js::kFailed);
  EXPECT_THAT(job_now->message, HasSubstr("final state could not be recorded"));
  EXPECT_THAT(job_now->message, HasSubstr("export.persist_final"));
  // And only once: the journal entry is cleared.
  engine_.reset();
  FinalStateJournal journal;
  ASSERT_OK(journal.Open(options_.journal_dir + "/final-states.journal"));
  auto entries = journal.ReadAll();
  ASSERT_OK(entries);
  EXPECT_TRUE(entries->empty());
}

TEST_F(ExportEngineTest, JobMessagesNeverCarryTheDataDirectory) {
  Load(5, 2);
  options_.redact_paths = {tmp_.str()};
  sink_->FailNth(MemorySink::Op::kCommit, 1, Status::Unavailable("cannot rename " + tmp_.str() + "/data/x: EIO"));
  StartEngine();
  std::string job = Submit(Request());
  auto failed = WaitFor(job, {js::kFailed});
  EXPECT_THAT(failed.message, HasSubstr("<data-dir>/data/x"));
  EXPECT_EQ(failed.message.find(tmp_.str()), std::string::npos) << failed.message;
}

}  // namespace
}  // namespace fhirlake::bulk
