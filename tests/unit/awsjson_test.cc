// Tests for the HealthLake service model and request validation (src/awsjson/model.h): the generated tables match
// the model file, and each kind of constraint refuses what AWS refuses, naming the member.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "awsjson/model.h"
#include "test_util.h"

namespace fhirlake::awsjson {
namespace {

using nlohmann::json;

const Model& M() { return HealthLakeModel(); }

Status Check(const char* shape, const char* body) { return Validate(M(), json::parse(body), shape); }

TEST(AwsJsonModelTest, EveryOperationOfTheModelIsThere) {
  EXPECT_EQ(M().target_prefix, "HealthLake");
  std::set<std::string> names;
  for (const auto& op : M().operations) {
    names.insert(op.name);
    ASSERT_NE(M().FindShape(op.input), nullptr) << op.name;
    ASSERT_NE(M().FindShape(op.output), nullptr) << op.name;
    for (const auto& e : op.errors) EXPECT_TRUE(M().FindShape(e)->exception) << e;
  }
  EXPECT_EQ(names, (std::set<std::string>{"CreateFHIRDatastore", "DeleteFHIRDatastore", "DescribeFHIRDatastore",
                                          "DescribeFHIRExportJob", "DescribeFHIRImportJob", "ListFHIRDatastores",
                                          "ListFHIRExportJobs", "ListFHIRImportJobs", "ListTagsForResource",
                                          "StartFHIRExportJob", "StartFHIRImportJob", "TagResource", "UntagResource"}));
  // Every pattern of the model compiles under PCRE2 (\p{L}, \p{Z}, \p{N}, \p{ASCII}).
  for (const auto& [name, s] : M().shapes) {
    if (!s.pattern.empty()) EXPECT_OK(PatternMatches(s.pattern, "x"));
  }
}

TEST(AwsJsonModelTest, AValidStartExportPasses) {
  EXPECT_OK(Check("StartFHIRExportJobRequest", R"({"JobName": "nightly export é", "DatastoreId": "abc",
      "DataAccessRoleArn": "arn:aws:iam::111122223333:role/Export", "ClientToken": "a-1",
      "OutputDataConfig": {"S3Configuration": {"S3Uri": "s3://bucket/prefix", "KmsKeyId": "alias/k"}}})"));
}

TEST(AwsJsonModelTest, EachConstraintIsCheckedAndNamesTheMember) {
  const std::vector<std::tuple<const char*, const char*, const char*>> bad = {
      {"StartFHIRExportJobRequest",
       R"({"DatastoreId": "abc", "DataAccessRoleArn": "arn:aws:iam::111122223333:role/x"})",
       "Value null at 'OutputDataConfig' failed to satisfy constraint: Member must not be null"},
      {"StartFHIRExportJobRequest",
       R"({"DatastoreId": "abc", "DataAccessRoleArn": "arn:aws:iam::1:role/x",
           "OutputDataConfig": {"S3Configuration": {"S3Uri": "s3://b/p", "KmsKeyId": "k"}}})",
       "at 'DataAccessRoleArn' failed to satisfy constraint: Member must satisfy regular expression pattern"},
      {"StartFHIRExportJobRequest",
       R"({"DatastoreId": "abc", "DataAccessRoleArn": "arn:aws:iam::111122223333:role/x",
           "OutputDataConfig": {"S3Configuration": {"S3Uri": "s3://b/p"}}})",
       "at 'OutputDataConfig.S3Configuration.KmsKeyId' failed to satisfy constraint: Member must not be null"},
      {"StartFHIRExportJobRequest",
       R"({"DatastoreId": "abc", "DataAccessRoleArn": "arn:aws:iam::111122223333:role/x", "JobName": "",
           "OutputDataConfig": {"S3Configuration": {"S3Uri": "s3://b/p", "KmsKeyId": "k"}}})",
       "at 'JobName' failed to satisfy constraint: Member must have length greater than or equal to 1"},
      {"StartFHIRExportJobRequest",
       R"({"DatastoreId": "abc", "DataAccessRoleArn": "arn:aws:iam::111122223333:role/x", "JobName": "a<b",
           "OutputDataConfig": {"S3Configuration": {"S3Uri": "s3://b/p", "KmsKeyId": "k"}}})",
       "at 'JobName' failed to satisfy constraint: Member must satisfy regular expression pattern"},
      {"StartFHIRExportJobRequest",
       R"({"DatastoreId": "abc", "DataAccessRoleArn": "arn:aws:iam::111122223333:role/x", "Jobname": "a",
           "OutputDataConfig": {"S3Configuration": {"S3Uri": "s3://b/p", "KmsKeyId": "k"}}})",
       "'Jobname' is not a member of StartFHIRExportJobRequest"},
      {"StartFHIRExportJobRequest",
       R"({"DatastoreId": "abc", "DataAccessRoleArn": "arn:aws:iam::111122223333:role/x",
           "OutputDataConfig": {}})",
       "at 'OutputDataConfig' failed to satisfy constraint: Member must have exactly one of its members set"},
      {"ListFHIRExportJobsRequest", R"({"DatastoreId": "abc", "MaxResults": 501})",
       "at 'MaxResults' failed to satisfy constraint: Member must have value less than or equal to 500"},
      {"ListFHIRExportJobsRequest", R"({"DatastoreId": "abc", "MaxResults": "5"})",
       "at 'MaxResults' failed to satisfy constraint: Member must be a whole number"},
      {"ListFHIRExportJobsRequest", R"({"DatastoreId": "abc", "JobStatus": "DONE"})",
       "at 'JobStatus' failed to satisfy constraint: Member must satisfy enum value set: [SUBMITTED, QUEUED"},
      {"ListFHIRExportJobsRequest", R"({"DatastoreId": "abc", "SubmittedBefore": "yesterday"})",
       "at 'SubmittedBefore' failed to satisfy constraint: Member must be a timestamp"},
      {"ListFHIRExportJobsRequest", R"({"DatastoreId": "abcdefghijabcdefghijabcdefghijabc"})",
       "at 'DatastoreId' failed to satisfy constraint: Member must have length less than or equal to 32"},
      {"ListFHIRDatastoresRequest", R"({"Filter": {"DatastoreStatus": "BROKEN"}})",
       "at 'Filter.DatastoreStatus' failed to satisfy constraint: Member must satisfy enum value set"},
      {"TagResourceRequest",
       R"({"ResourceARN": "arn:aws:healthlake:us-east-1:111122223333:datastore/fhir/0123456789abcdef0123456789abcdef",
           "Tags": [{"Key": "team", "Value": "r"}, {"Key": "", "Value": "x"}]})",
       "at 'Tags.2.Key' failed to satisfy constraint: Member must have length greater than or equal to 1"},
      {"StartFHIRExportJobRequest", "[]", "Member must be a structure"},
  };
  for (const auto& [shape, body, mention] : bad) {
    EXPECT_STATUS(Check(shape, body), kInvalid, mention) << shape << " " << body;
  }
}

TEST(AwsJsonModelTest, LengthsCountCharactersNotBytes) {
  // 64 two-byte characters is a JobName of length 64 (the maximum), not 128.
  std::string name;
  for (int i = 0; i < 64; ++i) name += "\xc3\xa9";
  json body = {{"DatastoreId", "abc"}, {"JobName", name}};
  EXPECT_OK(Validate(M(), body, "ListFHIRExportJobsRequest"));
  body["JobName"] = name + "a";
  EXPECT_STATUS(Validate(M(), body, "ListFHIRExportJobsRequest"), kInvalid, "less than or equal to 64");
}

TEST(AwsJsonModelTest, TheGeneratedTablesAreTheCommittedModel) {
  std::ifstream in(std::string(FHIRLAKE_SOURCE_DIR) + "/models/healthlake/2017-07-01/service-2.json");
  ASSERT_TRUE(in.good());
  std::stringstream ss;
  ss << in.rdbuf();
  json model = json::parse(ss.str());
  EXPECT_EQ(model["operations"].size(), M().operations.size());
  EXPECT_EQ(model["shapes"].size(), M().shapes.size());
  for (auto it = model["shapes"].begin(); it != model["shapes"].end(); ++it) {
    const Shape* s = M().FindShape(it.key());
    ASSERT_NE(s, nullptr) << it.key();
    EXPECT_EQ(s->pattern, it->value("pattern", "")) << it.key();
    EXPECT_EQ(s->required.size(), it->value("required", json::array()).size()) << it.key();
  }
}

}  // namespace
}  // namespace fhirlake::awsjson
