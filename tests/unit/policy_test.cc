// Tests for IAM policy parsing and evaluation (src/auth/policy.h).
#include "auth/policy.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "test_util.h"

namespace fhirlake::auth {
namespace {

const std::string kDs = "arn:aws:healthlake:us-east-1:111122223333:datastore/fhir/0123456789abcdef0123456789abcdef";

Policy P(const std::string& json) {
  auto p = ParsePolicy(json);
  EXPECT_TRUE(p.ok()) << json << ": " << p.status().ToString();
  return p.ok() ? *p : Policy{};
}

RequestFacts Facts(std::string action, std::string resource = kDs, std::map<std::string, std::string> ctx = {}) {
  return RequestFacts{std::move(action), std::move(resource), std::move(ctx)};
}

TEST(PolicyTest, DefaultDenyAllowAndExplicitDenyWins) {
  EXPECT_EQ(Evaluate({}, Facts("healthlake:ReadResource")), Decision::kImplicitDeny);
  Policy all = P(R"({"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"healthlake:*","Resource":"*"}]})");
  EXPECT_EQ(Evaluate({all}, Facts("healthlake:ReadResource")), Decision::kAllow);
  EXPECT_EQ(Evaluate({all}, Facts("iam:PassRole", "arn:aws:iam::111122223333:role/x")), Decision::kImplicitDeny);
  Policy no_delete = P(R"({"Version":"2012-10-17","Statement":{"Effect":"Deny","Action":"healthlake:DeleteResource",
                           "Resource":"*"}})");
  EXPECT_EQ(Evaluate({all, no_delete}, Facts("healthlake:DeleteResource")), Decision::kExplicitDeny);
  EXPECT_EQ(Evaluate({no_delete, all}, Facts("healthlake:DeleteResource")), Decision::kExplicitDeny);
  EXPECT_EQ(Evaluate({all, no_delete}, Facts("healthlake:UpdateResource")), Decision::kAllow);
}

TEST(PolicyTest, WildcardsInActionsAndResources) {
  Policy p = P(R"({"Version":"2012-10-17","Statement":[{"Effect":"Allow",
      "Action":["healthlake:Read*","healthlake:Search?ithGet"],
      "Resource":"arn:aws:healthlake:us-east-1:111122223333:datastore/fhir/0123*"}]})");
  EXPECT_EQ(Evaluate({p}, Facts("healthlake:ReadResource")), Decision::kAllow);
  EXPECT_EQ(Evaluate({p}, Facts("HEALTHLAKE:readresource")), Decision::kAllow);  // actions are case-insensitive
  EXPECT_EQ(Evaluate({p}, Facts("healthlake:SearchWithGet")), Decision::kAllow);
  EXPECT_EQ(Evaluate({p}, Facts("healthlake:SearchWithPost")), Decision::kImplicitDeny);
  EXPECT_EQ(Evaluate({p}, Facts("healthlake:ReadResource", kDs + "x")), Decision::kAllow);
  EXPECT_EQ(
      Evaluate({p}, Facts("healthlake:ReadResource", "arn:aws:healthlake:us-east-1:111122223333:datastore/fhir/ffff")),
      Decision::kImplicitDeny);
  EXPECT_TRUE(WildcardMatch("a*b*c", "axxbyyc", false));
  EXPECT_FALSE(WildcardMatch("a*b*c", "axxbyy", false));
  EXPECT_TRUE(WildcardMatch("*", "", false));
  EXPECT_FALSE(WildcardMatch("A", "a", false));
}

TEST(PolicyTest, RestAndSdkExportActionsAreDistinct) {
  Policy get_only = P(R"({"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":[
      "healthlake:StartFHIRExportJobWithGet","healthlake:DescribeFHIRExportJobWithGet","healthlake:GetExportedFile"],
      "Resource":"*"}]})");
  EXPECT_EQ(Evaluate({get_only}, Facts("healthlake:StartFHIRExportJobWithGet")), Decision::kAllow);
  EXPECT_EQ(Evaluate({get_only}, Facts("healthlake:StartFHIRExportJobWithPost")), Decision::kImplicitDeny);
  EXPECT_EQ(Evaluate({get_only}, Facts("healthlake:StartFHIRExportJob")), Decision::kImplicitDeny);
}

TEST(PolicyTest, NotActionAndNotResource) {
  Policy p = P(R"({"Version":"2012-10-17","Statement":[{"Effect":"Allow","NotAction":"healthlake:Delete*",
      "NotResource":"arn:aws:healthlake:*:*:datastore/fhir/ffff*"}]})");
  EXPECT_EQ(Evaluate({p}, Facts("healthlake:ReadResource")), Decision::kAllow);
  EXPECT_EQ(Evaluate({p}, Facts("healthlake:DeleteResource")), Decision::kImplicitDeny);
  EXPECT_EQ(Evaluate({p}, Facts("healthlake:ReadResource", "arn:aws:healthlake:us-east-1:1:datastore/fhir/ffff1")),
            Decision::kImplicitDeny);
}

TEST(PolicyTest, ResourceTagConditions) {
  Policy p = P(R"({"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"healthlake:*","Resource":"*",
      "Condition":{"StringEquals":{"aws:ResourceTag/team":["research","ops"]}}}]})");
  EXPECT_EQ(Evaluate({p}, Facts("healthlake:ReadResource", kDs, {{"aws:ResourceTag/team", "research"}})),
            Decision::kAllow);
  EXPECT_EQ(Evaluate({p}, Facts("healthlake:ReadResource", kDs, {{"aws:resourcetag/team", "ops"}})),
            Decision::kAllow);  // keys are case-insensitive
  EXPECT_EQ(Evaluate({p}, Facts("healthlake:ReadResource", kDs, {{"aws:ResourceTag/team", "Research"}})),
            Decision::kImplicitDeny);
  EXPECT_EQ(Evaluate({p}, Facts("healthlake:ReadResource")), Decision::kImplicitDeny);  // no tag
  Policy like = P(R"({"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"healthlake:*","Resource":"*",
      "Condition":{"StringLike":{"aws:ResourceTag/project":"trial-*"}}}]})");
  EXPECT_EQ(Evaluate({like}, Facts("healthlake:ReadResource", kDs, {{"aws:ResourceTag/project", "trial-7"}})),
            Decision::kAllow);
  EXPECT_EQ(Evaluate({like}, Facts("healthlake:ReadResource", kDs, {{"aws:ResourceTag/project", "other"}})),
            Decision::kImplicitDeny);
  Policy not_equal = P(R"({"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":"*","Resource":"*",
      "Condition":{"StringNotEquals":{"aws:ResourceTag/team":"research"}}}]})");
  EXPECT_EQ(Evaluate({not_equal}, Facts("healthlake:ReadResource")),
            Decision::kExplicitDeny);  // missing key: not equal
  Policy if_exists = P(R"({"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*",
      "Condition":{"StringEqualsIfExists":{"aws:ResourceTag/team":"research"}}}]})");
  EXPECT_EQ(Evaluate({if_exists}, Facts("healthlake:ReadResource")), Decision::kAllow);
}

TEST(PolicyTest, SourceIpConditions) {
  Policy p = P(R"({"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*",
      "Condition":{"IpAddress":{"aws:SourceIp":["10.0.0.0/8","::1"]}}}]})");
  EXPECT_EQ(Evaluate({p}, Facts("healthlake:ReadResource", kDs, {{"aws:SourceIp", "10.1.2.3"}})), Decision::kAllow);
  EXPECT_EQ(Evaluate({p}, Facts("healthlake:ReadResource", kDs, {{"aws:SourceIp", "::1"}})), Decision::kAllow);
  EXPECT_EQ(Evaluate({p}, Facts("healthlake:ReadResource", kDs, {{"aws:SourceIp", "11.0.0.1"}})),
            Decision::kImplicitDeny);
  Policy deny = P(R"({"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"},
      {"Effect":"Deny","Action":"*","Resource":"*","Condition":{"NotIpAddress":{"aws:SourceIp":"127.0.0.0/8"}}}]})");
  EXPECT_EQ(Evaluate({deny}, Facts("healthlake:ReadResource", kDs, {{"aws:SourceIp", "127.0.0.1"}})), Decision::kAllow);
  EXPECT_EQ(Evaluate({deny}, Facts("healthlake:ReadResource", kDs, {{"aws:SourceIp", "192.168.1.1"}})),
            Decision::kExplicitDeny);
}

TEST(PolicyTest, BadDocumentsAreRefusedWithTheReason) {
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"[]", "JSON object"},
      {R"({"Statement":[]})", ""},  // an empty list is a document that allows nothing: accepted below
      {R"({"Version":"2012-10-18","Statement":[]})", "Version"},
      {R"({"Version":"2012-10-17"})", "Statement is required"},
      {R"({"Version":"2012-10-17","Statement":[{"Effect":"Maybe","Action":"*","Resource":"*"}]})", "Effect"},
      {R"({"Version":"2012-10-17","Statement":[{"Effect":"Allow","Resource":"*"}]})", "Action"},
      {R"({"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","NotAction":"x","Resource":"*"}]})",
       "Action"},
      {R"({"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*"}]})", "Resource"},
      {R"({"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*","Principal":"*"}]})",
       "Principal"},
      {R"({"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*",
          "Condition":{"DateGreaterThan":{"aws:CurrentTime":"2020-01-01T00:00:00Z"}}}]})",
       "DateGreaterThan"},
      {R"({"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*",
          "Condition":{"IpAddress":{"aws:SourceIp":"not-an-ip"}}}]})",
       "not-an-ip"},
      {R"({"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":[],"Resource":"*"}]})", "non-empty"},
  };
  for (const auto& [doc, mention] : bad) {
    auto p = ParsePolicy(doc);
    if (mention.empty()) {
      EXPECT_TRUE(p.ok()) << doc;
      continue;
    }
    EXPECT_STATUS(p, kInvalid, mention) << doc;
  }
}

}  // namespace
}  // namespace fhirlake::auth
