// Tests for HealthLake kick-off parsing (src/api/healthlake_kickoff.h).
#include "api/healthlake_kickoff.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "test_util.h"

namespace fhirlake::api {

using bulk::ExportLevel;
using bulk::ExportRequest;
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

constexpr EpochMillis kNow = 1714000000000;  // 2024-04-24T23:06:40Z
constexpr const char* kS3Field = "OutputDataConfig.S3Configuration.S3Uri";
constexpr const char* kRole = "arn:aws:iam::123456789012:role/HealthLakeExport";
constexpr const char* kKey = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";

std::string Body(const std::string& job_name = "my export", const std::string& role = kRole,
                 const std::string& uri = "s3://my-bucket/exports/", const std::string& key = kKey) {
  return R"({"JobName":")" + job_name + R"(","DataAccessRoleArn":")" + role +
         R"(","OutputDataConfig":{"S3Configuration":{"S3Uri":")" + uri + R"(","KmsKeyId":")" + key + R"("}}})";
}

Result<ExportRequest> Kickoff(const std::vector<http::QueryParam>& query, const std::string& body = Body(),
                              ExportLevel level = ExportLevel::kSystem, std::string group_id = "") {
  return ParseHealthLakeKickoff(level, std::move(group_id), query, body, kNow);
}

// 'text' (built by appending, which keeps GCC 12's -Wrestrict false positive on "'" + string away).
std::string Quoted(std::string_view text) {
  std::string s = "'";
  s.append(text);
  s.push_back('\'');
  return s;
}

// --- ParseHealthLakeKickoff ---

TEST(KickoffTest, ValidRequest) {
  auto r =
      Kickoff({{"_type", " Patient, Observation ,Patient"},
               {"_since", "2024-01-01T00:00:00+01:00"},
               {"_outputFormat", "application/ndjson"},
               {"_type", "Encounter,Observation"}},
              Body("nightly export", kRole, "s3://my-bucket/exports/2024/", "alias/export"), ExportLevel::kGroup, "g1");
  ASSERT_OK(r);
  EXPECT_EQ(r->level, ExportLevel::kGroup);
  EXPECT_EQ(r->group_id, "g1");
  EXPECT_THAT(r->types, ElementsAre("Patient", "Observation", "Encounter"));
  ASSERT_TRUE(r->since.has_value());
  EXPECT_EQ(FormatInstant(*r->since), "2023-12-31T23:00:00.000Z");
  EXPECT_EQ(r->output_format, "application/fhir+ndjson");
  EXPECT_EQ(r->job_name, "nightly export");
  EXPECT_EQ(r->data_access_role_arn, kRole);
  EXPECT_EQ(r->output.bucket, "my-bucket");
  EXPECT_EQ(r->output.prefix, "exports/2024");
  EXPECT_EQ(r->kms_key_id, "alias/export");
}

TEST(KickoffTest, MinimalRequest) {
  const std::string body = R"({"DataAccessRoleArn":")" + std::string(kRole) +
                           R"(","OutputDataConfig":{"S3Configuration":{"KmsKeyId":"alias/k","S3Uri":"s3://bkt"}}})";
  auto r = Kickoff({}, body);
  ASSERT_OK(r);
  EXPECT_EQ(r->level, ExportLevel::kSystem);
  EXPECT_THAT(r->types, IsEmpty());
  EXPECT_FALSE(r->since.has_value());
  EXPECT_EQ(r->output_format, "application/fhir+ndjson");
  EXPECT_EQ(r->job_name, "");
  EXPECT_EQ(r->output.bucket, "bkt");
  EXPECT_EQ(r->output.prefix, "");
  EXPECT_EQ(r->kms_key_id, "alias/k");
}

TEST(KickoffTest, OutputFormats) {
  for (const char* format : {"application/fhir+ndjson", "application/ndjson", "ndjson"}) {
    auto r = Kickoff({{"_outputFormat", format}});
    ASSERT_OK(r);
    EXPECT_EQ(r->output_format, "application/fhir+ndjson");
  }
  for (const char* format : {"text/csv", "application/json", "application/fhir+json", "NDJSON", ""}) {
    auto r = Kickoff({{"_outputFormat", format}});
    EXPECT_STATUS(r, kInvalid, "_outputFormat") << format;
    EXPECT_STATUS(r, kInvalid, Quoted(format)) << format;
  }
  EXPECT_STATUS(Kickoff({{"_outputFormat", "ndjson"}, {"_outputFormat", "ndjson"}}), kInvalid,
                "_outputFormat is given more than once");
}

TEST(KickoffTest, UnknownType) {
  auto r = Kickoff({{"_type", "Patient,Patinet"}});
  EXPECT_STATUS(r, kInvalid, "_type");
  EXPECT_STATUS(r, kInvalid, "'Patinet'");
  EXPECT_STATUS(Kickoff({{"_type", "patient"}}), kInvalid, "'patient'");
  EXPECT_STATUS(Kickoff({{"_type", "Patient,,Observation"}}), kInvalid, "empty resource type");
  EXPECT_STATUS(Kickoff({{"_type", ""}}), kInvalid, "_type");
  EXPECT_STATUS(Kickoff({{"_type", "Patient,"}}), kInvalid, "empty resource type");
}

TEST(KickoffTest, TypesAllowedAtPatientAndGroupLevel) {
  for (ExportLevel level : {ExportLevel::kPatient, ExportLevel::kGroup}) {
    auto code_system = Kickoff({{"_type", "Patient,CodeSystem"}}, Body(), level, "g");
    EXPECT_STATUS(code_system, kInvalid, "_type");
    EXPECT_STATUS(code_system, kInvalid, "'CodeSystem'");
    auto practitioner = Kickoff({{"_type", "Practitioner,Patient,Organization"}}, Body(), level, "g");
    ASSERT_OK(practitioner);
    EXPECT_THAT(practitioner->types, ElementsAre("Practitioner", "Patient", "Organization"));
  }
  // System level allows any type.
  auto system = Kickoff({{"_type", "CodeSystem,ValueSet"}});
  ASSERT_OK(system);
  EXPECT_THAT(system->types, ElementsAre("CodeSystem", "ValueSet"));
}

TEST(KickoffTest, Since) {
  auto exact_now = Kickoff({{"_since", FormatInstant(kNow)}});
  ASSERT_OK(exact_now);
  EXPECT_EQ(exact_now->since, kNow);
  auto future = Kickoff({{"_since", FormatInstant(kNow + 1)}});
  EXPECT_STATUS(future, kInvalid, "_since");
  EXPECT_STATUS(future, kInvalid, "in the future");
  EXPECT_STATUS(future, kInvalid, FormatInstant(kNow));
  for (const char* bad : {"2024-01-01", "yesterday", "2024-01-01T00:00:00", "2024-02-30T00:00:00Z", ""}) {
    auto r = Kickoff({{"_since", bad}});
    EXPECT_STATUS(r, kInvalid, "_since") << bad;
    EXPECT_STATUS(r, kInvalid, "not a FHIR instant") << bad;
  }
  EXPECT_STATUS(Kickoff({{"_since", "2024-01-01T00:00:00Z"}, {"_since", "2024-01-02T00:00:00Z"}}), kInvalid,
                "_since is given more than once");
}

TEST(KickoffTest, UnknownQueryParameter) {
  for (const char* name : {"patient", "includeAssociatedData", "organizeOutputBy", "_TYPE"}) {
    auto r = Kickoff({{name, "x"}});
    EXPECT_STATUS(r, kInvalid, Quoted(name)) << name;
    EXPECT_STATUS(r, kInvalid, "not supported") << name;
  }
}

TEST(KickoffTest, ElementsAreTopLevelNamesOptionallyOfOneType) {
  auto r = Kickoff({{"_elements", "status, Patient.gender"}, {"_elements", "status"}});
  ASSERT_OK(r);
  EXPECT_THAT(r->elements, ElementsAre("status", "Patient.gender"));
  for (const char* bad : {"", "a-b", "Nonsense.status", "Observation.", "code.coding", ".status", "a,,b"}) {
    EXPECT_STATUS(Kickoff({{"_elements", bad}}), kInvalid, "_elements") << bad;
  }
}

TEST(KickoffTest, TypeFiltersAreCollectedWhole) {
  // Repeated, and comma-joined: a comma separates two queries only before "Type?".
  auto r = Kickoff({{"_typeFilter", "Observation?code=a,b&status=final,Patient?gender=female"},
                    {"_typeFilter", "Condition?clinical-status=active"},
                    {"_typeFilter", "Patient?gender=female"}});
  ASSERT_OK(r);
  EXPECT_THAT(r->type_filters, ElementsAre("Observation?code=a,b&status=final", "Patient?gender=female",
                                           "Condition?clinical-status=active"));
}

TEST(KickoffTest, BodyMustBeAJsonObject) {
  EXPECT_STATUS(Kickoff({}, ""), kInvalid, "no body");
  EXPECT_STATUS(Kickoff({}, "{"), kInvalid, "not valid JSON");
  EXPECT_STATUS(Kickoff({}, Body() + "x"), kInvalid, "not valid JSON");
  EXPECT_STATUS(Kickoff({}, "[]"), kInvalid, "must be a JSON object");
  EXPECT_STATUS(Kickoff({}, "\"DataAccessRoleArn\""), kInvalid, "must be a JSON object");
}

TEST(KickoffTest, UnknownFieldsAreNamed) {
  std::string body = Body();
  body.insert(1, R"("ClientToken":"abc",)");
  EXPECT_STATUS(Kickoff({}, body), kInvalid, "Unknown field 'ClientToken'");

  std::string odc = R"({"DataAccessRoleArn":")" + std::string(kRole) +
                    R"(","OutputDataConfig":{"S3Configuration":{"S3Uri":"s3://bkt","KmsKeyId":"alias/k"},"Extra":1}})";
  EXPECT_STATUS(Kickoff({}, odc), kInvalid, "'OutputDataConfig.Extra'");

  std::string s3 = R"({"DataAccessRoleArn":")" + std::string(kRole) +
                   R"(","OutputDataConfig":{"S3Configuration":{"S3Uri":"s3://bkt","KmsKeyId":"alias/k","Sse":true}}})";
  EXPECT_STATUS(Kickoff({}, s3), kInvalid, "'OutputDataConfig.S3Configuration.Sse'");
}

TEST(KickoffTest, JobName) {
  EXPECT_STATUS(Kickoff({}, Body("bad!name")), kInvalid, "JobName 'bad!name'");
  EXPECT_STATUS(Kickoff({}, Body(std::string(65, 'n'))), kInvalid, "JobName");
  EXPECT_STATUS(Kickoff({}, Body("")), kInvalid, "JobName");
  std::string numeric = Body();
  numeric.replace(numeric.find("\"my export\""), 11, "42");
  EXPECT_STATUS(Kickoff({}, numeric), kInvalid, "JobName must be a string");
}

TEST(KickoffTest, DataAccessRoleArn) {
  auto r = Kickoff({}, Body("n", "arn:aws:iam::123:role/x"));
  EXPECT_STATUS(r, kInvalid, "DataAccessRoleArn 'arn:aws:iam::123:role/x'");
  EXPECT_STATUS(r, kInvalid, "IAM role ARN");
  const std::string missing = R"({"OutputDataConfig":{"S3Configuration":{"S3Uri":"s3://bkt","KmsKeyId":"alias/k"}}})";
  EXPECT_STATUS(Kickoff({}, missing), kInvalid, "DataAccessRoleArn is required");
  const std::string not_string =
      R"({"DataAccessRoleArn":["x"],"OutputDataConfig":{"S3Configuration":{"S3Uri":"s3://bkt","KmsKeyId":"alias/k"}}})";
  EXPECT_STATUS(Kickoff({}, not_string), kInvalid, "DataAccessRoleArn must be a string");
}

TEST(KickoffTest, OutputDataConfigShape) {
  const std::string role = R"({"DataAccessRoleArn":")" + std::string(kRole) + "\"";
  EXPECT_STATUS(Kickoff({}, role + "}"), kInvalid, "OutputDataConfig is required");
  EXPECT_STATUS(Kickoff({}, role + R"(,"OutputDataConfig":"s3://bkt"})"), kInvalid,
                "OutputDataConfig must be an object");
  EXPECT_STATUS(Kickoff({}, role + R"(,"OutputDataConfig":{}})"), kInvalid,
                "OutputDataConfig.S3Configuration is required");
  EXPECT_STATUS(Kickoff({}, role + R"(,"OutputDataConfig":{"S3Configuration":[]}})"), kInvalid,
                "OutputDataConfig.S3Configuration must be an object");
  EXPECT_STATUS(Kickoff({}, role + R"(,"OutputDataConfig":{"S3Configuration":{"KmsKeyId":"alias/k"}}})"), kInvalid,
                "OutputDataConfig.S3Configuration.S3Uri is required");
  EXPECT_STATUS(Kickoff({}, role + R"(,"OutputDataConfig":{"S3Configuration":{"S3Uri":1,"KmsKeyId":"alias/k"}}})"),
                kInvalid, "OutputDataConfig.S3Configuration.S3Uri must be a string");
  EXPECT_STATUS(Kickoff({}, role + R"(,"OutputDataConfig":{"S3Configuration":{"S3Uri":"s3://bkt"}}})"), kInvalid,
                "OutputDataConfig.S3Configuration.KmsKeyId is required");
}

TEST(KickoffTest, S3Uri) {
  auto r = Kickoff({}, Body("n", kRole, "s3://Bad_Bucket/x"));
  EXPECT_STATUS(r, kInvalid, kS3Field);
  EXPECT_STATUS(r, kInvalid, "Bad_Bucket");
  EXPECT_STATUS(Kickoff({}, Body("n", kRole, "s3://bucket/a/../b")), kInvalid, kS3Field);
  EXPECT_STATUS(Kickoff({}, Body("n", kRole, "https://bucket/x")), kInvalid, kS3Field);
}

TEST(KickoffTest, KmsKeyId) {
  auto r = Kickoff({}, Body("n", kRole, "s3://bucket", "not a key"));
  EXPECT_STATUS(r, kInvalid, "OutputDataConfig.S3Configuration.KmsKeyId 'not a key'");
  EXPECT_STATUS(Kickoff({}, Body("n", kRole, "s3://bucket", std::string(401, 'k'))), kInvalid,
                "OutputDataConfig.S3Configuration.KmsKeyId");
  EXPECT_OK(Kickoff({}, Body("n", kRole, "s3://bucket", std::string(400, 'k'))));
}

TEST(KickoffTest, QueryErrorsComeBeforeBodyErrors) {
  // A bad query parameter is reported even when the body is also wrong.
  EXPECT_STATUS(Kickoff({{"_type", "Nope"}}, ""), kInvalid, "'Nope'");
}

}  // namespace
}  // namespace fhirlake::api
