// Tests for Status, Result<T> and the RETURN_IF_ERROR / ASSIGN_OR_RETURN macros (src/common/status.h).
#include "common/status.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "test_util.h"

namespace fhirlake {
namespace {

TEST(StatusTest, DefaultIsOk) {
  Status s;
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kOk);
  EXPECT_EQ(s.message(), "");
  EXPECT_EQ(s.ToString(), "OK");
  EXPECT_TRUE(Status::Ok().ok());
}

TEST(StatusTest, FactoriesSetCodeAndMessage) {
  struct Case {
    Status status;
    StatusCode code;
    std::string_view name;
  };
  const std::vector<Case> cases = {
      {Status::Invalid("m"), StatusCode::kInvalid, "Invalid"},
      {Status::NotFound("m"), StatusCode::kNotFound, "NotFound"},
      {Status::Gone("m"), StatusCode::kGone, "Gone"},
      {Status::Conflict("m"), StatusCode::kConflict, "Conflict"},
      {Status::PreconditionFailed("m"), StatusCode::kPreconditionFailed, "PreconditionFailed"},
      {Status::UnsupportedMediaType("m"), StatusCode::kUnsupportedMediaType, "UnsupportedMediaType"},
      {Status::PayloadTooLarge("m"), StatusCode::kPayloadTooLarge, "PayloadTooLarge"},
      {Status::MethodNotAllowed("m"), StatusCode::kMethodNotAllowed, "MethodNotAllowed"},
      {Status::NotSupported("m"), StatusCode::kNotSupported, "NotSupported"},
      {Status::Unauthorized("m"), StatusCode::kUnauthorized, "Unauthorized"},
      {Status::Forbidden("m"), StatusCode::kForbidden, "Forbidden"},
      {Status::TooManyRequests("m"), StatusCode::kTooManyRequests, "TooManyRequests"},
      {Status::InsufficientStorage("m"), StatusCode::kInsufficientStorage, "InsufficientStorage"},
      {Status::Unavailable("m"), StatusCode::kUnavailable, "Unavailable"},
      {Status::Internal("m"), StatusCode::kInternal, "Internal"},
  };
  for (const auto& c : cases) {
    EXPECT_FALSE(c.status.ok()) << c.name;
    EXPECT_EQ(c.status.code(), c.code) << c.name;
    EXPECT_EQ(c.status.message(), "m") << c.name;
    EXPECT_EQ(StatusCodeName(c.code), c.name);
    EXPECT_EQ(c.status.ToString(), std::string(c.name) + ": m");
  }
  EXPECT_EQ(StatusCodeName(StatusCode::kOk), "OK");
}

TEST(StatusTest, WithContextPrefixesMessageAndKeepsCode) {
  Status s = Status::NotFound("Patient/p1 is not known");
  Status c = s.WithContext("reading the subject");
  EXPECT_EQ(c.code(), StatusCode::kNotFound);
  EXPECT_EQ(c.message(), "reading the subject: Patient/p1 is not known");
  // The original is unchanged (WithContext returns a copy).
  EXPECT_EQ(s.message(), "Patient/p1 is not known");
  // Contexts nest outermost first.
  EXPECT_EQ(c.WithContext("job j1").message(), "job j1: reading the subject: Patient/p1 is not known");
}

TEST(StatusTest, WithContextOnOkStaysOk) {
  Status c = Status::Ok().WithContext("anything");
  EXPECT_TRUE(c.ok());
  EXPECT_EQ(c.message(), "");
}

TEST(ResultTest, HoldsValue) {
  Result<int> r(42);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r.status().ok());
  EXPECT_EQ(r.value(), 42);
  EXPECT_EQ(*r, 42);
}

TEST(ResultTest, HoldsError) {
  Result<int> r(Status::Invalid("bad number"));
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalid);
  EXPECT_EQ(r.status().message(), "bad number");
}

TEST(ResultTest, ArrowAndMoveOut) {
  Result<std::string> r(std::string("hello"));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->size(), 5u);
  r->append(" world");
  EXPECT_EQ(*r, "hello world");
  std::string moved = std::move(r).value();
  EXPECT_EQ(moved, "hello world");
}

TEST(ResultTest, MoveOnlyValue) {
  Result<std::unique_ptr<int>> r(std::make_unique<int>(7));
  ASSERT_TRUE(r.ok());
  std::unique_ptr<int> p = std::move(r).value();
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(*p, 7);
}

TEST(ResultTest, ConstAccess) {
  const Result<std::vector<int>> r(std::vector<int>{1, 2, 3});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->size(), 3u);
  EXPECT_EQ((*r)[2], 3);
  EXPECT_EQ(r.value().front(), 1);
}

// --- macro flow ---

Result<int> ParsePositive(int v) {
  if (v <= 0) return Status::Invalid("value " + std::to_string(v) + " is not positive");
  return v;
}

Status CheckEven(int v) {
  if (v % 2 != 0) return Status::Conflict("value " + std::to_string(v) + " is odd");
  return Status::Ok();
}

// Uses both macros; `steps` records how far the function got.
Result<int> DoubleIfEven(int v, std::vector<std::string>* steps) {
  steps->push_back("start");
  ASSIGN_OR_RETURN(int parsed, ParsePositive(v));
  steps->push_back("parsed");
  RETURN_IF_ERROR(CheckEven(parsed));
  steps->push_back("checked");
  return parsed * 2;
}

TEST(MacroTest, SuccessRunsEveryStep) {
  std::vector<std::string> steps;
  auto r = DoubleIfEven(4, &steps);
  ASSERT_OK(r);
  EXPECT_EQ(*r, 8);
  EXPECT_EQ(steps, (std::vector<std::string>{"start", "parsed", "checked"}));
}

TEST(MacroTest, AssignOrReturnPropagatesError) {
  std::vector<std::string> steps;
  auto r = DoubleIfEven(-3, &steps);
  EXPECT_STATUS(r, kInvalid, "value -3 is not positive");
  EXPECT_EQ(steps, (std::vector<std::string>{"start"}));
}

TEST(MacroTest, ReturnIfErrorPropagatesError) {
  std::vector<std::string> steps;
  auto r = DoubleIfEven(3, &steps);
  EXPECT_STATUS(r, kConflict, "value 3 is odd");
  EXPECT_EQ(steps, (std::vector<std::string>{"start", "parsed"}));
}

Status TwoAssignsOnDifferentLines(int a, int b, int* sum) {
  ASSIGN_OR_RETURN(int x, ParsePositive(a));
  ASSIGN_OR_RETURN(int y, ParsePositive(b));
  *sum = x + y;
  return Status::Ok();
}

TEST(MacroTest, SeveralAssignsInOneFunction) {
  int sum = 0;
  ASSERT_OK(TwoAssignsOnDifferentLines(2, 3, &sum));
  EXPECT_EQ(sum, 5);
  sum = 0;
  EXPECT_STATUS(TwoAssignsOnDifferentLines(2, 0, &sum), kInvalid, "value 0");
  EXPECT_EQ(sum, 0);
}

Status AssignToExisting(std::string* out) {
  std::string value;
  ASSIGN_OR_RETURN(value, Result<std::string>(std::string("assigned")));
  *out = value;
  return Status::Ok();
}

TEST(MacroTest, AssignToExistingVariable) {
  std::string out;
  ASSERT_OK(AssignToExisting(&out));
  EXPECT_EQ(out, "assigned");
}

TEST(MacroTest, ReturnIfErrorWithContext) {
  auto fn = []() -> Status {
    RETURN_IF_ERROR(CheckEven(5).WithContext("checking"));
    return Status::Ok();
  };
  EXPECT_STATUS(fn(), kConflict, "checking: value 5 is odd");
}

}  // namespace
}  // namespace fhirlake
