// Shared helpers for the unit tests: status assertions that print the Status message on failure, and a
// temporary directory that is removed with everything in it when the helper goes out of scope.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

#include "common/status.h"

namespace fhirlake::testutil {

inline Status ToStatus(const Status& s) { return s; }
template <typename T>
Status ToStatus(const Result<T>& r) {
  return r.status();
}

// Passes when `status` has `code` and its message contains `substring`; the failure shows the whole status.
inline ::testing::AssertionResult StatusIs(const Status& status, StatusCode code, std::string_view substring = {}) {
  if (status.code() != code) {
    return ::testing::AssertionFailure() << "expected code " << StatusCodeName(code) << ", got " << status.ToString();
  }
  if (status.message().find(substring) == std::string::npos) {
    return ::testing::AssertionFailure() << "expected the message to contain '" << substring << "', got "
                                         << status.ToString();
  }
  return ::testing::AssertionSuccess();
}

// A fresh directory under the test temp dir; removed recursively on destruction.
class TempDir {
 public:
  TempDir() {
    std::string base = ::testing::TempDir();
    if (base.empty()) base = "/tmp/";
    if (base.back() != '/') base.push_back('/');
    std::string tmpl = base + "fhirlake_test_XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed for " + tmpl);
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::permissions(path_, std::filesystem::perms::owner_all, std::filesystem::perm_options::add, ec);
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::string str() const { return path_.string(); }
  std::filesystem::path operator/(std::string_view rel) const { return path_ / rel; }

 private:
  std::filesystem::path path_;
};

inline std::string ReadFileToString(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline void WriteStringToFile(const std::filesystem::path& p, std::string_view content) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(content.data(), static_cast<std::streamsize>(content.size()));
}

}  // namespace fhirlake::testutil

#define FHIRLAKE_TEST_CONCAT_INNER(a, b) a##b
#define FHIRLAKE_TEST_CONCAT(a, b) FHIRLAKE_TEST_CONCAT_INNER(a, b)

// Work with a Status or a Result<T>; on failure they print the code and message.
#define ASSERT_OK(expr)                                                           \
  do {                                                                            \
    const ::fhirlake::Status _fl_status = ::fhirlake::testutil::ToStatus((expr)); \
    ASSERT_TRUE(_fl_status.ok()) << #expr << ": " << _fl_status.ToString();       \
  } while (0)

#define EXPECT_OK(expr)                                                           \
  do {                                                                            \
    const ::fhirlake::Status _fl_status = ::fhirlake::testutil::ToStatus((expr)); \
    EXPECT_TRUE(_fl_status.ok()) << #expr << ": " << _fl_status.ToString();       \
  } while (0)

// ASSERT_OK_AND_ASSIGN(auto x, FnReturningResult()); — fails the test (and returns) when not ok.
#define ASSERT_OK_AND_ASSIGN(lhs, expr) \
  ASSERT_OK_AND_ASSIGN_IMPL(FHIRLAKE_TEST_CONCAT(_fl_result_, __LINE__), lhs, expr)
#define ASSERT_OK_AND_ASSIGN_IMPL(tmp, lhs, expr)                    \
  auto tmp = (expr);                                                 \
  ASSERT_TRUE(tmp.ok()) << #expr << ": " << tmp.status().ToString(); \
  lhs = std::move(tmp).value()

// EXPECT_STATUS(expr, kInvalid, "substring") for a Status or a Result<T>.
#define EXPECT_STATUS(expr, code, substring) \
  EXPECT_TRUE(                               \
      ::fhirlake::testutil::StatusIs(::fhirlake::testutil::ToStatus((expr)), ::fhirlake::StatusCode::code, substring))
#define ASSERT_STATUS(expr, code, substring) \
  ASSERT_TRUE(                               \
      ::fhirlake::testutil::StatusIs(::fhirlake::testutil::ToStatus((expr)), ::fhirlake::StatusCode::code, substring))
