// Tests for export kick-off validation (src/bulk/export_request.h).
#include "bulk/export_request.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "test_util.h"

namespace fhirlake::bulk {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

constexpr const char* kS3Field = "OutputDataConfig.S3Configuration.S3Uri";
constexpr const char* kRole = "arn:aws:iam::123456789012:role/HealthLakeExport";
constexpr const char* kKey = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";

// --- ParseS3Uri ---

TEST(ParseS3UriTest, BucketOnly) {
  auto r = ParseS3Uri("s3://my-bucket");
  ASSERT_OK(r);
  EXPECT_EQ(r->bucket, "my-bucket");
  EXPECT_EQ(r->prefix, "");
  EXPECT_EQ(r->Uri(), "s3://my-bucket");
  auto slash = ParseS3Uri("s3://my-bucket/");
  ASSERT_OK(slash);
  EXPECT_EQ(slash->bucket, "my-bucket");
  EXPECT_EQ(slash->prefix, "");
  EXPECT_EQ(slash->Uri(), "s3://my-bucket");
}

TEST(ParseS3UriTest, PrefixWithTrailingSlashIsNormalised) {
  for (const char* uri :
       {"s3://my-bucket/exports/2024", "s3://my-bucket/exports/2024/", "s3://my-bucket/exports/2024//"}) {
    auto r = ParseS3Uri(uri);
    ASSERT_OK(r);
    EXPECT_EQ(r->bucket, "my-bucket") << uri;
    EXPECT_EQ(r->prefix, "exports/2024") << uri;
    EXPECT_EQ(r->Uri(), "s3://my-bucket/exports/2024") << uri;
  }
  auto dotted = ParseS3Uri("s3://my.bucket.name/a/.hidden/b..c/x-y_z");
  ASSERT_OK(dotted);
  EXPECT_EQ(dotted->bucket, "my.bucket.name");
  EXPECT_EQ(dotted->prefix, "a/.hidden/b..c/x-y_z");
}

TEST(ParseS3UriTest, RejectsDotAndEmptySegments) {
  for (const char* uri : {"s3://my-bucket/a/../b", "s3://my-bucket/..", "s3://my-bucket/a/..", "s3://my-bucket/./a",
                          "s3://my-bucket/a/.", "s3://my-bucket/a//b", "s3://my-bucket//a", "s3://my-bucket/a/./b/"}) {
    auto r = ParseS3Uri(uri);
    EXPECT_STATUS(r, kInvalid, kS3Field) << uri;
    EXPECT_STATUS(r, kInvalid, "segments") << uri;
    EXPECT_STATUS(r, kInvalid, uri) << uri;
  }
}

TEST(ParseS3UriTest, RejectsControlCharactersAndBackslashes) {
  EXPECT_STATUS(ParseS3Uri("s3://my-bucket/a\\b"), kInvalid, kS3Field);
  EXPECT_STATUS(ParseS3Uri("s3://my-bucket/a\nb"), kInvalid, "control character");
  EXPECT_STATUS(ParseS3Uri(std::string("s3://my-bucket/a\0b", 18)), kInvalid, kS3Field);
}

TEST(ParseS3UriTest, RejectsOtherSchemes) {
  for (const char* uri : {"", "my-bucket/prefix", "S3://my-bucket", "s3:/my-bucket",
                          "https://my-bucket.s3.amazonaws.com/x", "file:///tmp/x", "s3:my-bucket"}) {
    EXPECT_STATUS(ParseS3Uri(uri), kInvalid, kS3Field) << uri;
  }
  EXPECT_STATUS(ParseS3Uri("https://x"), kInvalid, "s3://bucket");
}

TEST(ParseS3UriTest, RejectsTooLongUris) {
  std::string uri = "s3://my-bucket/" + std::string(1010, 'a');
  ASSERT_GT(uri.size(), 1024u);
  EXPECT_STATUS(ParseS3Uri(uri), kInvalid, "1024");
}

// Regression (hardening issue, defect 6): a prefix segment over 255 bytes was accepted (202) and the job then failed
// with "File name too long", its message carrying the server's data path. Lengths are checked at kick-off against
// the longest key the job will write below the prefix.
TEST(ParseS3UriTest, PrefixLengthsLeaveRoomForTheJobsKeys) {
  EXPECT_STATUS(ParseS3Uri("s3://my-bucket/" + std::string(256, 'a')), kInvalid, "at most 255 bytes");
  EXPECT_OK(ParseS3Uri("s3://my-bucket/" + std::string(255, 'a')));
  // The longest prefix that still fits: segments of 255 bytes and one shorter one.
  const size_t room = 1024 - LongestJobKeySuffix();
  ASSERT_GT(room, 600u);
  std::string prefix;
  while (prefix.size() + 256 <= room) prefix += std::string(255, 'b') + "/";
  prefix += std::string(room - prefix.size(), 'c');
  ASSERT_EQ(prefix.size(), room);
  auto fits = ParseS3Uri("s3://my-bucket/" + prefix);
  ASSERT_OK(fits);
  EXPECT_EQ(fits->prefix, prefix);
  EXPECT_STATUS(ParseS3Uri("s3://my-bucket/" + prefix + "c"), kInvalid, "1024");
}

TEST(ParseS3UriTest, BucketNameRules) {
  EXPECT_OK(ParseS3Uri("s3://abc"));
  EXPECT_OK(ParseS3Uri("s3://" + std::string(63, 'a')));
  EXPECT_OK(ParseS3Uri("s3://1bucket-with.dots-and-0-digits9"));
  EXPECT_OK(ParseS3Uri("s3://192.168.1.bucket"));  // looks like an IP address only in part

  struct Case {
    std::string bucket;
    const char* why;
  };
  const std::vector<Case> bad = {
      {"", "3 to 63"},
      {"ab", "3 to 63"},
      {std::string(64, 'a'), "3 to 63"},
      {"MyBucket", "a-z, 0-9"},
      {"my_bucket", "a-z, 0-9"},
      {"my bucket", "a-z, 0-9"},
      {"-bucket", "start and end"},
      {"bucket-", "start and end"},
      {".bucket", "start and end"},
      {"bucket.", "start and end"},
      {"my..bucket", "'..'"},
      {"192.168.1.1", "IP address"},
      {"10.0.0.255", "IP address"},
  };
  for (const auto& c : bad) {
    auto r = ParseS3Uri("s3://" + c.bucket + "/prefix");
    EXPECT_STATUS(r, kInvalid, kS3Field) << c.bucket;
    EXPECT_STATUS(r, kInvalid, "bucket name '" + c.bucket + "'") << c.bucket;
    EXPECT_STATUS(r, kInvalid, c.why) << c.bucket;
  }
}

// --- ARNs, key ids, job names ---

TEST(IsIamRoleArnTest, Accepts) {
  EXPECT_TRUE(IsIamRoleArn("arn:aws:iam::123456789012:role/MyRole"));
  EXPECT_TRUE(IsIamRoleArn("arn:aws:iam::123456789012:role/service-role/path/My_Role+=,.@-1"));
  EXPECT_TRUE(IsIamRoleArn("arn:aws-cn:iam::123456789012:role/R"));
  EXPECT_TRUE(IsIamRoleArn("arn:aws-us-gov:iam::123456789012:role/R"));
}

TEST(IsIamRoleArnTest, Rejects) {
  EXPECT_FALSE(IsIamRoleArn(""));
  EXPECT_FALSE(IsIamRoleArn("MyRole"));
  EXPECT_FALSE(IsIamRoleArn("arn:aws:iam::12345678901:role/R"));    // 11 digits
  EXPECT_FALSE(IsIamRoleArn("arn:aws:iam::1234567890123:role/R"));  // 13 digits
  EXPECT_FALSE(IsIamRoleArn("arn:aws:iam::123456789012:user/R"));
  EXPECT_FALSE(IsIamRoleArn("arn:aws:iam::123456789012:role/"));
  EXPECT_FALSE(IsIamRoleArn("arn:aws:iam::123456789012:role/with space"));
  EXPECT_FALSE(IsIamRoleArn("arn:aws:s3:::my-bucket"));
  EXPECT_FALSE(IsIamRoleArn("arn:aws:iam:us-east-1:123456789012:role/R"));
  EXPECT_FALSE(IsIamRoleArn(" arn:aws:iam::123456789012:role/R"));
  EXPECT_FALSE(IsIamRoleArn("arn:aws:iam::123456789012:role/R\n"));
  EXPECT_FALSE(IsIamRoleArn("arn:aws:iam::123456789012:role/" + std::string(2048, 'r')));
}

TEST(IsKmsKeyIdTest, Accepts) {
  EXPECT_TRUE(IsKmsKeyId("1234abcd-12ab-34cd-56ef-1234567890ab"));
  EXPECT_TRUE(IsKmsKeyId(kKey));
  EXPECT_TRUE(IsKmsKeyId("alias/x"));
  EXPECT_TRUE(IsKmsKeyId("alias/aws/healthlake"));
  EXPECT_TRUE(IsKmsKeyId("arn:aws:kms:us-east-1:123456789012:alias/ExampleAlias"));
  EXPECT_TRUE(IsKmsKeyId("arn:aws-us-gov:kms:us-gov-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"));
  EXPECT_TRUE(IsKmsKeyId("mrk-1234abcd12ab34cd56ef1234567890ab"));
  EXPECT_TRUE(IsKmsKeyId(std::string(400, 'a')));
}

TEST(IsKmsKeyIdTest, Rejects) {
  EXPECT_FALSE(IsKmsKeyId(""));
  EXPECT_FALSE(IsKmsKeyId(std::string(401, 'a')));
  EXPECT_FALSE(IsKmsKeyId("alias/"));
  EXPECT_FALSE(IsKmsKeyId("key with spaces"));
  EXPECT_FALSE(IsKmsKeyId("arn:aws:kms:us-east-1:123456789012:user/x"));
  EXPECT_FALSE(IsKmsKeyId("arn:aws:kms:us-east-1:123456789012:"));
  EXPECT_FALSE(IsKmsKeyId("alias/x y"));
  EXPECT_FALSE(IsKmsKeyId("arn:aws:kms:us-east-1:1234:key/abc"));
}

TEST(IsJobNameTest, Accepts) {
  EXPECT_TRUE(IsJobName("a"));
  EXPECT_TRUE(IsJobName("my export 2024"));
  EXPECT_TRUE(IsJobName("_.:/=+-%@"));
  EXPECT_TRUE(IsJobName("J\xc3\xb6rg"));  // non-ASCII letters (UTF-8)
  EXPECT_TRUE(IsJobName("\xe6\x97\xa5\xe6\x9c\xac"));
  EXPECT_TRUE(IsJobName(std::string(64, 'x')));
}

TEST(IsJobNameTest, Rejects) {
  EXPECT_FALSE(IsJobName(""));
  EXPECT_FALSE(IsJobName(std::string(65, 'x')));
  EXPECT_FALSE(IsJobName("bad!name"));
  EXPECT_FALSE(IsJobName("a#b"));
  EXPECT_FALSE(IsJobName("a\nb"));
  EXPECT_FALSE(IsJobName("a\tb"));
  EXPECT_FALSE(IsJobName("quote\"d"));
  EXPECT_FALSE(IsJobName("semi;colon"));
}

TEST(IsPatientLevelTypeTest, CompartmentAndReferencedTypes) {
  for (const char* type : {"Patient", "Observation", "Encounter", "Group", "Practitioner", "Organization", "Location",
                           "Medication", "Device", "PractitionerRole"}) {
    EXPECT_TRUE(IsPatientLevelType(type)) << type;
  }
  for (const char* type : {"CodeSystem", "ValueSet", "StructureDefinition", "Bundle", "SearchParameter", "Nope"}) {
    EXPECT_FALSE(IsPatientLevelType(type)) << type;
  }
}

TEST(LevelNameTest, Names) {
  EXPECT_EQ(LevelName(ExportLevel::kSystem), "system");
  EXPECT_EQ(LevelName(ExportLevel::kPatient), "patient");
  EXPECT_EQ(LevelName(ExportLevel::kGroup), "group");
}

TEST(MetaFiltersTest, SystemCodeForms) {
  const std::string r = R"({"resourceType":"Basic","id":"b","meta":{"tag":[{"system":"http://t","code":"a"},)"
                        R"({"code":"nosys"}],"security":[{"system":"http://s","code":"R"}]}})";
  EXPECT_TRUE(MatchesMetaFilters(r, {}, {}));
  EXPECT_TRUE(MatchesMetaFilters(r, {"http://t|a"}, {}));
  EXPECT_TRUE(MatchesMetaFilters(r, {"http://t|"}, {}));
  EXPECT_TRUE(MatchesMetaFilters(r, {"a"}, {}));
  EXPECT_TRUE(MatchesMetaFilters(r, {"|nosys"}, {}));
  EXPECT_FALSE(MatchesMetaFilters(r, {"|a"}, {}));  // "|a": a code without a system; this one has a system
  EXPECT_FALSE(MatchesMetaFilters(r, {"http://t|b"}, {}));
  EXPECT_FALSE(MatchesMetaFilters(r, {"http://other|"}, {}));
  EXPECT_TRUE(MatchesMetaFilters(r, {"http://t|a", "nosys"}, {}));  // several: all must match
  EXPECT_FALSE(MatchesMetaFilters(r, {"http://t|a", "missing"}, {}));
  EXPECT_TRUE(MatchesMetaFilters(r, {"http://t|a"}, {"http://s|R"}));  // both given: both must match
  EXPECT_FALSE(MatchesMetaFilters(r, {"http://t|a"}, {"http://s|V"}));
  EXPECT_FALSE(MatchesMetaFilters(r, {}, {"http://t|a"}));  // a tag is not a security label
  EXPECT_FALSE(MatchesMetaFilters(R"({"resourceType":"Basic","id":"x"})", {"a"}, {}));
  EXPECT_FALSE(MatchesMetaFilters("not json", {"a"}, {}));
}

TEST(MetaFiltersTest, CheckCodingFilter) {
  EXPECT_TRUE(CheckCodingFilter("_tag", "http://t|a").ok());
  EXPECT_TRUE(CheckCodingFilter("_tag", "http://t|").ok());
  EXPECT_TRUE(CheckCodingFilter("_tag", "|a").ok());
  EXPECT_TRUE(CheckCodingFilter("_tag", "a").ok());
  EXPECT_STATUS(CheckCodingFilter("_tag", ""), kInvalid, "_tag");
  EXPECT_STATUS(CheckCodingFilter("_security", "|"), kInvalid, "_security");
  EXPECT_STATUS(CheckCodingFilter("_tag", "a|b|c"), kInvalid, "more than one");
}

TEST(TypeFilterTest, SplitsCommaJoinedQueriesOnlyBeforeAType) {
  EXPECT_THAT(SplitTypeFilterValue("Observation?code=a,b,Patient?gender=male"),
              ElementsAre("Observation?code=a,b", "Patient?gender=male"));
  EXPECT_THAT(SplitTypeFilterValue("Observation?code=a,Nonsense?x"), ElementsAre("Observation?code=a,Nonsense?x"));
  EXPECT_THAT(SplitTypeFilterValue("Observation?code=a"), ElementsAre("Observation?code=a"));
}

TEST(TypeFilterTest, ParsesEachTypesQueriesInOrder) {
  ASSERT_OK_AND_ASSIGN(auto f, ParseTypeFilters({"Observation?code=http%3A%2F%2Floinc.org%7C1234-5&status=final",
                                                 "Patient?gender=female", "Observation?code=x"},
                                                "http://h/r4", /*lenient=*/false));
  ASSERT_EQ(f.size(), 2u);
  EXPECT_EQ(f[0].first, "Observation");
  ASSERT_EQ(f[0].second.size(), 2u);
  ASSERT_EQ(f[0].second[0].criteria.size(), 2u);
  EXPECT_EQ(f[0].second[0].criteria[0].values[0].s1, "http://loinc.org");  // percent-decoded
  EXPECT_EQ(f[0].second[0].criteria[0].values[0].s2, "1234-5");
  EXPECT_EQ(f[1].first, "Patient");
  EXPECT_THAT(f[0].second[0].types, ElementsAre("Observation"));
}

TEST(TypeFilterTest, RejectsWhatIsNotAFilter) {
  for (const char* bad : {"Observation", "?code=1", "Nonsense?code=1", "Observation?", "Observation?_sort=date",
                          "Observation?_include=Observation:subject", "Observation?_count=3", "Observation?page=x",
                          "Observation?date=yesterday", "Observation?unknownParam=1"}) {
    EXPECT_STATUS(ParseTypeFilters({bad}, "", false), kInvalid, "_typeFilter") << bad;
  }
}

TEST(TypeFilterTest, LenientIgnoresUnknownParametersAndReportsThem) {
  std::vector<std::string> ignored;
  ASSERT_OK_AND_ASSIGN(auto f, ParseTypeFilters({"Observation?unknownParam=1&status=final"}, "", true, &ignored));
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].second[0].criteria.size(), 1u);
  ASSERT_EQ(ignored.size(), 1u);
  EXPECT_THAT(ignored[0], ::testing::HasSubstr("unknownParam"));
}

TEST(TypeFilterTest, CheckedAgainstTypeAndLevel) {
  ExportRequest r;
  r.request_url = "http://h/datastore/x/r4/Patient/$export?_typeFilter=...";
  r.level = ExportLevel::kPatient;
  r.type_filters = {"Library?name=x"};
  EXPECT_STATUS(CheckTypeFilters(&r), kInvalid, "patient-level");
  r.type_filters = {"Observation?status=final"};
  EXPECT_OK(CheckTypeFilters(&r));
  r.types = {"Condition"};
  EXPECT_STATUS(CheckTypeFilters(&r), kInvalid, "_type leaves out");
  r.types = {};
  r.lenient = true;
  r.type_filters = {"Observation?unknownParam=1"};
  EXPECT_OK(CheckTypeFilters(&r));
  ASSERT_EQ(r.notes.size(), 1u);
}

TEST(TypeFilterTest, FhirBaseOfTheKickoffUrl) {
  EXPECT_EQ(FhirBaseOfKickoffUrl("http://h:1/datastore/ab/r4/$export?_type=Patient"), "http://h:1/datastore/ab/r4");
  EXPECT_EQ(FhirBaseOfKickoffUrl("http://h/r4/Patient/$export"), "http://h/r4");
  EXPECT_EQ(FhirBaseOfKickoffUrl("http://h/r4/Group/g1/$export?x=/Group/"), "http://h/r4");
}

}  // namespace
}  // namespace fhirlake::bulk
