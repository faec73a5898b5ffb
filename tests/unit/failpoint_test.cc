// Tests for failpoints (src/common/failpoint.h): parsing, the error/pause/kill actions, hit counting, markers.
#include "common/failpoint.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include "test_util.h"

namespace fhirlake::failpoint {
namespace {

namespace fs = std::filesystem;

class FailpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("fp-" + std::to_string(::getpid()) + "-" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    ::setenv("FHIRLAKE_FAILPOINT_DIR", dir_.c_str(), 1);
  }
  void TearDown() override {
    ::unsetenv("FHIRLAKE_FAILPOINTS");
    ASSERT_OK(Init());
    fs::remove_all(dir_);
  }
  Status Arm(const char* spec) {
    ::setenv("FHIRLAKE_FAILPOINTS", spec, 1);
    return Init();
  }
  fs::path dir_;
};

TEST_F(FailpointTest, OffByDefault) {
  ::unsetenv("FHIRLAKE_FAILPOINTS");
  ASSERT_OK(Init());
  EXPECT_FALSE(Enabled());
  EXPECT_OK(Hit("anything"));
}

TEST_F(FailpointTest, ErrorFromTheNthHitOn) {
  ASSERT_OK(Arm("a.b=error@3; other=pause"));
  EXPECT_TRUE(Enabled());
  EXPECT_OK(Hit("a.b"));
  EXPECT_OK(Hit("a.b"));
  EXPECT_FALSE(fs::exists(dir_ / "a.b.hit"));
  Status st = Hit("a.b");
  EXPECT_EQ(st.code(), StatusCode::kUnavailable);
  EXPECT_NE(st.message().find("a.b"), std::string::npos);
  EXPECT_TRUE(fs::exists(dir_ / "a.b.hit"));
  EXPECT_EQ(Hit("a.b").code(), StatusCode::kUnavailable);  // stays failed, like a full disk
  EXPECT_OK(Hit("unarmed"));
}

TEST_F(FailpointTest, BadSpecsAreRejected) {
  EXPECT_EQ(Arm("x").code(), StatusCode::kInvalid);
  EXPECT_EQ(Arm("x=explode").code(), StatusCode::kInvalid);
  EXPECT_EQ(Arm("x=kill@0").code(), StatusCode::kInvalid);
  EXPECT_EQ(Arm("x=sleep(abc)").code(), StatusCode::kInvalid);
  EXPECT_OK(Arm("x=sleep(5)"));
  EXPECT_OK(Hit("x"));
  EXPECT_TRUE(fs::exists(dir_ / "x.hit"));
}

TEST_F(FailpointTest, PauseWaitsForTheReleaseFile) {
  ASSERT_OK(Arm("p=pause"));
  std::atomic<bool> passed{false};
  std::thread t([&] {
    EXPECT_OK(Hit("p"));
    passed = true;
  });
  while (!fs::exists(dir_ / "p.hit")) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_FALSE(passed.load());  // reached, and held there
  std::ofstream(dir_ / "p.release").put('\n');
  t.join();
  EXPECT_TRUE(passed.load());
  EXPECT_OK(Hit("p"));  // released: later hits pass at once
}

TEST_F(FailpointTest, KillDiesBySigkillAfterTheMarker) {
  ASSERT_OK(Arm("k=kill@2"));
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    (void)Hit("k");
    (void)Hit("k");
    _exit(0);  // not reached when the failpoint works
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(status));
  EXPECT_EQ(WTERMSIG(status), SIGKILL);
  std::ifstream marker(dir_ / "k.hit");
  int marker_pid = 0;
  marker >> marker_pid;
  EXPECT_EQ(marker_pid, pid);
}

}  // namespace
}  // namespace fhirlake::failpoint
