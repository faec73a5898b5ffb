// Tests for the AWS Signature Version 4 signer (src/sink/sigv4.h): the public AWS SigV4 test suite (files under
// tests/unit/data/sigv4, see its README), the signature examples of the Amazon S3 API Reference, and the hashing,
// encoding and date helpers.
#include "sink/sigv4.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#ifndef SIGV4_TEST_DATA
#error "SIGV4_TEST_DATA must name tests/unit/data/sigv4 (see tests/unit/CMakeLists.txt)"
#endif

namespace fhirlake::sink {
namespace {

namespace fs = std::filesystem;

constexpr std::string_view kEmptySha256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

// ---------------------------------------------------------------------------------------------------------------
// The AWS test suite: parse NAME.req, compare with NAME.creq / .sts / .authz / .sreq byte for byte.

std::string ReadFileOrEmpty(const fs::path& path, bool* found = nullptr) {
  std::ifstream in(path, std::ios::binary);
  if (found != nullptr) *found = static_cast<bool>(in);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // The vectors use '\n'; a checkout with CRLF conversion must not change them.
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '\r' && i + 1 < text.size() && text[i + 1] == '\n') continue;
    out.push_back(text[i]);
  }
  return out;
}

// Expected outputs never end in a newline; tolerate one added by an editor.
std::string ReadExpected(const fs::path& path, bool* found = nullptr) {
  std::string text = ReadFileOrEmpty(path, found);
  while (!text.empty() && text.back() == '\n') text.pop_back();
  return text;
}

int HexValue(char ch) {
  if (ch >= '0' && ch <= '9') return ch - '0';
  if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
  if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
  return -1;
}

// %XX escapes to bytes; anything else (including '+') stays as it is.
std::string PercentDecode(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() && HexValue(s[i + 1]) >= 0 && HexValue(s[i + 2]) >= 0) {
      out.push_back(static_cast<char>(HexValue(s[i + 1]) * 16 + HexValue(s[i + 2])));
      i += 2;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

std::vector<std::string_view> Split(std::string_view s, char sep) {
  std::vector<std::string_view> parts;
  size_t start = 0;
  while (true) {
    size_t pos = s.find(sep, start);
    parts.push_back(s.substr(start, pos == std::string_view::npos ? std::string_view::npos : pos - start));
    if (pos == std::string_view::npos) return parts;
    start = pos + 1;
  }
}

// "METHOD /path?query HTTP/1.1", header lines "Name:value", a blank line, the body. The request line's path is the
// wire form; SigV4Request wants it decoded. The method ends at the first space and the version starts after the
// last one, so a path may contain spaces (get-space).
SigV4Request ParseRequest(std::string_view text) {
  SigV4Request r;
  std::string_view head = text;
  std::string_view body;
  if (size_t blank = text.find("\n\n"); blank != std::string_view::npos) {
    head = text.substr(0, blank);
    body = text.substr(blank + 2);
  }
  std::vector<std::string_view> lines = Split(head, '\n');
  const std::string_view request_line = lines.front();
  const size_t first_space = request_line.find(' ');
  const size_t last_space = request_line.rfind(' ');
  r.method = std::string(request_line.substr(0, first_space));
  std::string_view target = request_line.substr(first_space + 1, last_space - first_space - 1);
  std::string_view query;
  if (size_t q = target.find('?'); q != std::string_view::npos) {
    query = target.substr(q + 1);
    target = target.substr(0, q);
  }
  r.path = PercentDecode(target);
  if (!query.empty()) {
    for (std::string_view param : Split(query, '&')) {
      size_t eq = param.find('=');
      r.query.emplace_back(PercentDecode(param.substr(0, eq)),
                           eq == std::string_view::npos ? std::string() : PercentDecode(param.substr(eq + 1)));
    }
  }
  for (size_t i = 1; i < lines.size(); ++i) {
    if (lines[i].empty()) continue;
    size_t colon = lines[i].find(':');
    r.headers.emplace_back(std::string(lines[i].substr(0, colon)), std::string(lines[i].substr(colon + 1)));
  }
  r.payload_sha256 = Sha256Hex(body);
  return r;
}

struct SuiteCase {
  std::string name;
  bool double_encode_path = true;
  std::string amz_date = "20150830T123600Z";
  std::string service = "service";
};

std::ostream& operator<<(std::ostream& os, const SuiteCase& c) { return os << c.name; }

const AwsCredentials kSuiteCredentials{"AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", ""};

std::vector<SuiteCase> SuiteCases() {
  std::vector<SuiteCase> cases;
  for (const char* name : {"get-vanilla",
                           "get-vanilla-query",
                           "get-vanilla-empty-query-key",
                           "get-vanilla-query-order-key",
                           "get-vanilla-query-order-key-case",
                           "get-vanilla-query-order-value",
                           "get-vanilla-query-unreserved",
                           "get-vanilla-utf8-query",
                           "get-header-key-duplicate",
                           "get-header-value-order",
                           "get-header-value-trim",
                           "get-unreserved",
                           "get-slash",
                           "get-slash-dot-slash",
                           "get-slash-pointless-dot",
                           "get-slashes",
                           "get-relative",
                           "get-relative-relative",
                           "post-vanilla",
                           "post-vanilla-query",
                           "post-vanilla-empty-query-value",
                           "post-header-key-case",
                           "post-header-key-sort",
                           "post-header-value-case",
                           "post-x-www-form-urlencoded",
                           "post-x-www-form-urlencoded-parameters",
                           "post-sts-header-before",
                           "post-sts-header-after"}) {
    cases.push_back({name});
  }
  // The 2015 suite writes these paths unencoded on the request line and encodes them once in the canonical URI:
  // for a decoded SigV4Request::path that is single encoding (README.md, "Path encoding").
  cases.push_back({"get-space", /*double_encode_path=*/false});
  cases.push_back({"get-utf8", /*double_encode_path=*/false});
  // botocore's double-encoded 2011 cases: wire path "/%20/foo" -> decoded "/ /foo" -> canonical "/%2520/foo".
  cases.push_back({"botocore-get-space", true, "20110909T233600Z", "host"});
  cases.push_back({"botocore-get-utf8", true, "20110909T233600Z", "host"});
  return cases;
}

class AwsTestSuite : public ::testing::TestWithParam<SuiteCase> {};

TEST_P(AwsTestSuite, MatchesVectors) {
  const SuiteCase& c = GetParam();
  const fs::path dir = fs::path(SIGV4_TEST_DATA) / c.name;
  bool found = false;
  const std::string req = ReadFileOrEmpty(dir / (c.name + ".req"), &found);
  ASSERT_TRUE(found) << "missing " << (dir / (c.name + ".req"));
  const std::string creq = ReadExpected(dir / (c.name + ".creq"), &found);
  ASSERT_TRUE(found);
  const std::string sts = ReadExpected(dir / (c.name + ".sts"), &found);
  ASSERT_TRUE(found);
  const std::string authz = ReadExpected(dir / (c.name + ".authz"), &found);
  ASSERT_TRUE(found);
  bool has_sreq = false;
  const std::string sreq = ReadExpected(dir / (c.name + ".sreq"), &has_sreq);

  const SigV4Request r = ParseRequest(req);
  const std::string actual_creq = CanonicalRequest(r, c.double_encode_path);
  EXPECT_EQ(actual_creq, creq);
  EXPECT_EQ(StringToSign(actual_creq, c.amz_date, "us-east-1", c.service), sts);
  // The signature step on its own, from the expected string to sign.
  EXPECT_EQ(Signature(kSuiteCredentials, sts, c.amz_date.substr(0, 8), "us-east-1", c.service),
            authz.substr(authz.rfind('=') + 1));
  const std::string actual_authz =
      AuthorizationHeader(r, kSuiteCredentials, c.amz_date, "us-east-1", c.service, c.double_encode_path);
  EXPECT_EQ(actual_authz, authz);
  if (has_sreq) {
    // The signed request carries exactly this Authorization line.
    std::string authorization_line;
    for (std::string_view line : Split(sreq, '\n')) {
      if (line.starts_with("Authorization: ")) authorization_line = std::string(line);
    }
    EXPECT_EQ(authorization_line, "Authorization: " + actual_authz);
  }
}

INSTANTIATE_TEST_SUITE_P(Vectors, AwsTestSuite, ::testing::ValuesIn(SuiteCases()),
                         [](const ::testing::TestParamInfo<SuiteCase>& info) {
                           std::string name = info.param.name;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

// Every directory of vectors is run (none was added and forgotten).
TEST(AwsTestSuiteData, EveryDirectoryIsListed) {
  std::set<std::string> listed;
  for (const SuiteCase& c : SuiteCases()) listed.insert(c.name);
  std::set<std::string> on_disk;
  for (const auto& entry : fs::directory_iterator(SIGV4_TEST_DATA)) {
    if (entry.is_directory()) on_disk.insert(entry.path().filename().string());
  }
  EXPECT_EQ(on_disk, listed);
}

// The parser itself: a request line with a space in the path, a query without value, a body.
TEST(AwsTestSuiteData, ParseRequest) {
  SigV4Request r = ParseRequest("PUT /a%20b/c d?x&y=%E1%88%B4 HTTP/1.1\nHost:h\nA: v\n\nbody\n\nmore");
  EXPECT_EQ(r.method, "PUT");
  EXPECT_EQ(r.path, "/a b/c d");
  ASSERT_EQ(r.query.size(), 2u);
  EXPECT_EQ(r.query[0], (std::pair<std::string, std::string>("x", "")));
  EXPECT_EQ(r.query[1], (std::pair<std::string, std::string>("y", "\xE1\x88\xB4")));
  ASSERT_EQ(r.headers.size(), 2u);
  EXPECT_EQ(r.headers[1], (std::pair<std::string, std::string>("A", " v")));
  EXPECT_EQ(r.payload_sha256, Sha256Hex("body\n\nmore"));
}

// ---------------------------------------------------------------------------------------------------------------
// Amazon S3 API Reference, "Signature Calculations for the Authorization Header: Transferring Payload in a Single
// Chunk (AWS Signature Version 4)", section "Examples: Signature Calculations". The canonical requests, their SHA-256
// (the last line of the string to sign) and the signatures are the published ones.

const AwsCredentials kS3Credentials{"AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", ""};
constexpr EpochMillis k20130524 = 1369353600000;  // 2013-05-24T00:00:00Z
constexpr std::string_view kS3Host = "examplebucket.s3.amazonaws.com";

std::string S3StringToSign(std::string_view creq_sha256) {
  return "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n" + std::string(creq_sha256);
}

std::string S3Authorization(std::string_view signed_headers, std::string_view signature) {
  return "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=" +
         std::string(signed_headers) + ", Signature=" + std::string(signature);
}

const std::string* FindHeader(const SigV4Request& r, std::string_view name) {
  for (const auto& [n, v] : r.headers) {
    if (n == name) return &v;
  }
  return nullptr;
}

int CountHeader(const SigV4Request& r, std::string_view name) {
  return static_cast<int>(
      std::count_if(r.headers.begin(), r.headers.end(), [&](const auto& h) { return h.first == name; }));
}

TEST(S3ExamplesTest, SigningKey) {
  std::string key = HmacSha256("AWS4wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "20130524");
  key = HmacSha256(key, "us-east-1");
  key = HmacSha256(key, "s3");
  key = HmacSha256(key, "aws4_request");
  std::string hex;
  for (unsigned char ch : key) {
    constexpr char kDigits[] = "0123456789abcdef";
    hex.push_back(kDigits[ch >> 4]);
    hex.push_back(kDigits[ch & 0x0F]);
  }
  EXPECT_EQ(hex, "dbb893acc010964918f1fd433add87c70e8b0db6be30c1fbeafefa5ec6ba8378");
}

TEST(S3ExamplesTest, GetObjectWithRange) {
  SigV4Request r{"GET",
                 "/test.txt",
                 {},
                 {{"Host", std::string(kS3Host)},
                  {"Range", "bytes=0-9"},
                  {"x-amz-content-sha256", std::string(kEmptySha256)},
                  {"x-amz-date", "20130524T000000Z"}},
                 std::string(kEmptySha256)};
  const std::string creq = CanonicalRequest(r, /*double_encode_path=*/false);
  EXPECT_EQ(creq,
            "GET\n/test.txt\n\nhost:examplebucket.s3.amazonaws.com\nrange:bytes=0-9\n"
            "x-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n"
            "x-amz-date:20130524T000000Z\n\nhost;range;x-amz-content-sha256;x-amz-date\n"
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(StringToSign(creq, "20130524T000000Z", "us-east-1", "s3"),
            S3StringToSign("7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972"));
  const std::string expected = S3Authorization("host;range;x-amz-content-sha256;x-amz-date",
                                               "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
  EXPECT_EQ(AuthorizationHeader(r, kS3Credentials, "20130524T000000Z", "us-east-1", "s3", false), expected);

  // The same through SignS3Request, which adds x-amz-date and x-amz-content-sha256 itself.
  SigV4Request s{
      "GET", "/test.txt", {}, {{"Host", std::string(kS3Host)}, {"Range", "bytes=0-9"}}, std::string(kEmptySha256)};
  SignS3Request(&s, kS3Credentials, "us-east-1", k20130524);
  ASSERT_NE(FindHeader(s, "Authorization"), nullptr);
  EXPECT_EQ(*FindHeader(s, "Authorization"), expected);
  EXPECT_EQ(*FindHeader(s, "x-amz-date"), "20130524T000000Z");
  EXPECT_EQ(*FindHeader(s, "x-amz-content-sha256"), kEmptySha256);
  EXPECT_EQ(FindHeader(s, "x-amz-security-token"), nullptr);
}

TEST(S3ExamplesTest, PutObjectWithStorageClass) {
  const std::string body = "Welcome to Amazon S3.";
  SigV4Request r{"PUT",
                 "/test$file.text",
                 {},
                 {{"Host", std::string(kS3Host)},
                  {"Date", "Fri, 24 May 2013 00:00:00 GMT"},
                  {"x-amz-storage-class", "REDUCED_REDUNDANCY"}},
                 Sha256Hex(body)};
  EXPECT_EQ(r.payload_sha256, "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072");
  SignS3Request(&r, kS3Credentials, "us-east-1", k20130524);
  const std::string creq = CanonicalRequest(r, false);  // the Authorization header just added is not signed
  EXPECT_EQ(creq,
            "PUT\n/test%24file.text\n\ndate:Fri, 24 May 2013 00:00:00 GMT\nhost:examplebucket.s3.amazonaws.com\n"
            "x-amz-content-sha256:44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072\n"
            "x-amz-date:20130524T000000Z\nx-amz-storage-class:REDUCED_REDUNDANCY\n\n"
            "date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class\n"
            "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072");
  EXPECT_EQ(StringToSign(creq, "20130524T000000Z", "us-east-1", "s3"),
            S3StringToSign("9e0e90d9c76de8fa5b200d8c849cd5b8dc7a3be3951ddb7f6a76b4158342019d"));
  ASSERT_NE(FindHeader(r, "Authorization"), nullptr);
  EXPECT_EQ(*FindHeader(r, "Authorization"),
            S3Authorization("date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class",
                            "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"));
}

TEST(S3ExamplesTest, GetBucketLifecycle) {
  SigV4Request r{"GET", "/", {{"lifecycle", ""}}, {{"Host", std::string(kS3Host)}}, std::string(kEmptySha256)};
  SignS3Request(&r, kS3Credentials, "us-east-1", k20130524);
  const std::string creq = CanonicalRequest(r, false);
  EXPECT_EQ(creq,
            "GET\n/\nlifecycle=\nhost:examplebucket.s3.amazonaws.com\n"
            "x-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n"
            "x-amz-date:20130524T000000Z\n\nhost;x-amz-content-sha256;x-amz-date\n"
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(StringToSign(creq, "20130524T000000Z", "us-east-1", "s3"),
            S3StringToSign("9766c798316ff2757b517bc739a67f6213b4ab36dd5da2f94eaebf79c77395ca"));
  ASSERT_NE(FindHeader(r, "Authorization"), nullptr);
  EXPECT_EQ(*FindHeader(r, "Authorization"),
            S3Authorization("host;x-amz-content-sha256;x-amz-date",
                            "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"));
}

TEST(S3ExamplesTest, GetBucketListObjects) {
  // Given out of order: the canonical query string sorts them.
  SigV4Request r{
      "GET", "/", {{"prefix", "J"}, {"max-keys", "2"}}, {{"Host", std::string(kS3Host)}}, std::string(kEmptySha256)};
  SignS3Request(&r, kS3Credentials, "us-east-1", k20130524);
  const std::string creq = CanonicalRequest(r, false);
  EXPECT_EQ(creq,
            "GET\n/\nmax-keys=2&prefix=J\nhost:examplebucket.s3.amazonaws.com\n"
            "x-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n"
            "x-amz-date:20130524T000000Z\n\nhost;x-amz-content-sha256;x-amz-date\n"
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(StringToSign(creq, "20130524T000000Z", "us-east-1", "s3"),
            S3StringToSign("df57d21db20da04d7fa30298dd4488ba3a2b47ca3a489c74750e0f1e7df1b9b7"));
  ASSERT_NE(FindHeader(r, "Authorization"), nullptr);
  EXPECT_EQ(*FindHeader(r, "Authorization"),
            S3Authorization("host;x-amz-content-sha256;x-amz-date",
                            "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"));
}

// ---------------------------------------------------------------------------------------------------------------
// SignS3Request with temporary credentials, re-signing, defaults.

TEST(SignS3RequestTest, SessionTokenIsSentAndSigned) {
  const AwsCredentials creds{"ASIAEXAMPLE", "secret", "FwoGZXIvYXdzEXAMPLE//token+="};
  SigV4Request r{"PUT", "/bucket/export/Patient.ndjson", {}, {{"Host", "rgw.example:8080"}}, Sha256Hex("{}")};
  SignS3Request(&r, creds, "us-east-1", k20130524);

  ASSERT_NE(FindHeader(r, "x-amz-security-token"), nullptr);
  EXPECT_EQ(*FindHeader(r, "x-amz-security-token"), "FwoGZXIvYXdzEXAMPLE//token+=");
  ASSERT_NE(FindHeader(r, "Authorization"), nullptr);
  const std::string& authorization = *FindHeader(r, "Authorization");
  EXPECT_NE(authorization.find("Credential=ASIAEXAMPLE/20130524/us-east-1/s3/aws4_request, "), std::string::npos);
  EXPECT_NE(authorization.find("SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token, "),
            std::string::npos)
      << authorization;
  EXPECT_NE(CanonicalRequest(r, false).find("\nx-amz-security-token:FwoGZXIvYXdzEXAMPLE//token+=\n"),
            std::string::npos);
  // The signature covers the token: a different token signs differently.
  SigV4Request other{"PUT", "/bucket/export/Patient.ndjson", {}, {{"Host", "rgw.example:8080"}}, Sha256Hex("{}")};
  SignS3Request(&other, {"ASIAEXAMPLE", "secret", "another-token"}, "us-east-1", k20130524);
  EXPECT_NE(*FindHeader(other, "Authorization"), authorization);
}

TEST(SignS3RequestTest, ResigningReplacesTheHeadersItOwns) {
  const AwsCredentials temporary{"ASIAEXAMPLE", "secret", "token"};
  SigV4Request r{
      "GET", "/bucket/key", {}, {{"Host", "s3.example"}, {"X-Amz-Date", "19990101T000000Z"}}, "UNSIGNED-PAYLOAD"};
  SignS3Request(&r, temporary, "eu-west-1", k20130524);
  const std::string first = *FindHeader(r, "Authorization");
  SignS3Request(&r, temporary, "eu-west-1", k20130524);
  EXPECT_EQ(*FindHeader(r, "Authorization"), first);
  EXPECT_EQ(CountHeader(r, "Authorization"), 1);
  EXPECT_EQ(CountHeader(r, "x-amz-date"), 1);
  EXPECT_EQ(CountHeader(r, "X-Amz-Date"), 0);
  EXPECT_EQ(CountHeader(r, "x-amz-content-sha256"), 1);
  EXPECT_EQ(CountHeader(r, "x-amz-security-token"), 1);
  EXPECT_EQ(*FindHeader(r, "x-amz-content-sha256"), "UNSIGNED-PAYLOAD");

  // Re-signed later with long-term credentials: the stale token goes away.
  SignS3Request(&r, {"AKIAEXAMPLE", "secret", ""}, "eu-west-1", k20130524 + 60'000);
  EXPECT_EQ(CountHeader(r, "x-amz-security-token"), 0);
  EXPECT_EQ(*FindHeader(r, "x-amz-date"), "20130524T000100Z");
  EXPECT_EQ(FindHeader(r, "Authorization")->find("x-amz-security-token"), std::string::npos);
}

TEST(SignS3RequestTest, EmptyPayloadHashMeansUnsignedPayload) {
  SigV4Request r{"PUT", "/bucket/key", {}, {{"Host", "s3.example"}}, ""};
  SignS3Request(&r, kS3Credentials, "us-east-1", k20130524);
  EXPECT_EQ(r.payload_sha256, "UNSIGNED-PAYLOAD");
  EXPECT_EQ(*FindHeader(r, "x-amz-content-sha256"), "UNSIGNED-PAYLOAD");
  EXPECT_TRUE(CanonicalRequest(r, false).ends_with("\nUNSIGNED-PAYLOAD"));
}

// ---------------------------------------------------------------------------------------------------------------
// Canonical request details not covered by the vectors.

TEST(CanonicalRequestTest, S3PathIsEncodedOnceAndNotNormalised) {
  SigV4Request r{"GET", "/bucket/a key/\xC3\xBC.ndjson", {}, {{"Host", "h"}}, "UNSIGNED-PAYLOAD"};
  EXPECT_TRUE(CanonicalRequest(r, false).starts_with("GET\n/bucket/a%20key/%C3%BC.ndjson\n"));
  EXPECT_TRUE(CanonicalRequest(r, true).starts_with("GET\n/bucket/a%2520key/%25C3%25BC.ndjson\n"));
  r.path = "/bucket//a/./b/../c";
  EXPECT_TRUE(CanonicalRequest(r, false).starts_with("GET\n/bucket//a/./b/../c\n"));
  EXPECT_TRUE(CanonicalRequest(r, true).starts_with("GET\n/bucket/a/c\n"));
  r.path = "";
  EXPECT_TRUE(CanonicalRequest(r, false).starts_with("GET\n/\n"));
  EXPECT_TRUE(CanonicalRequest(r, true).starts_with("GET\n/\n"));
}

TEST(CanonicalRequestTest, PathNormalisation) {
  auto canonical_uri = [](std::string path) {
    SigV4Request r{"GET", std::move(path), {}, {}, "UNSIGNED-PAYLOAD"};
    std::string creq = CanonicalRequest(r, true);
    size_t start = creq.find('\n') + 1;
    return creq.substr(start, creq.find('\n', start) - start);
  };
  EXPECT_EQ(canonical_uri("/"), "/");
  EXPECT_EQ(canonical_uri("/a/b"), "/a/b");
  EXPECT_EQ(canonical_uri("/a/b/"), "/a/b/");
  EXPECT_EQ(canonical_uri("/a/./b/../c/"), "/a/c/");
  EXPECT_EQ(canonical_uri("/a/b/.."), "/a/");
  EXPECT_EQ(canonical_uri("/../../a"), "/a");
  EXPECT_EQ(canonical_uri("a/b"), "/a/b");
  EXPECT_EQ(canonical_uri("/a%2Fb"), "/a%25252Fb");  // a literal '%' in a segment, encoded twice
}

TEST(CanonicalRequestTest, QueryIsEncodedAndSortedByEncodedNameThenValue) {
  SigV4Request r{"GET",
                 "/",
                 {{"b", "2"}, {"a b", "x/y"}, {"a", "z"}, {"a", "y"}, {"~", "+"}, {"A", ""}, {"\xE1\x88\xB4", "1"}},
                 {},
                 "UNSIGNED-PAYLOAD"};
  EXPECT_TRUE(CanonicalRequest(r).starts_with("GET\n/\n%E1%88%B4=1&A=&a=y&a=z&a%20b=x%2Fy&b=2&~=%2B\n"))
      << CanonicalRequest(r);
}

TEST(CanonicalRequestTest, HeadersAreLowercasedTrimmedCollapsedAndMerged) {
  SigV4Request r{"GET",
                 "/",
                 {},
                 {{"Host", "h"},
                  {"X-Multi", " one "},
                  {"x-multi", "two\t\tthree"},
                  {"X-Empty", "   "},
                  {"Authorization", "ignored"}},
                 "UNSIGNED-PAYLOAD"};
  EXPECT_EQ(CanonicalRequest(r),
            "GET\n/\n\nhost:h\nx-empty:\nx-multi:one,two three\n\nhost;x-empty;x-multi\nUNSIGNED-PAYLOAD");
}

// ---------------------------------------------------------------------------------------------------------------
// Helpers.

TEST(UriEncodeTest, UnreservedCharactersAreKept) {
  EXPECT_EQ(UriEncode("AZaz09-._~", true), "AZaz09-._~");
  EXPECT_EQ(UriEncode("~", true), "~");
  EXPECT_EQ(UriEncode("", true), "");
}

TEST(UriEncodeTest, SpaceAndReservedCharacters) {
  EXPECT_EQ(UriEncode(" ", true), "%20");
  EXPECT_EQ(UriEncode("a b", false), "a%20b");
  EXPECT_EQ(UriEncode("+", true), "%2B");
  EXPECT_EQ(UriEncode("%", true), "%25");
  EXPECT_EQ(UriEncode("=&?#*$!'()", true), "%3D%26%3F%23%2A%24%21%27%28%29");
}

TEST(UriEncodeTest, SlashKeptOrEncoded) {
  EXPECT_EQ(UriEncode("/a/b/", false), "/a/b/");
  EXPECT_EQ(UriEncode("/a/b/", true), "%2Fa%2Fb%2F");
}

TEST(UriEncodeTest, NonAsciiBytesAreUppercaseHex) {
  EXPECT_EQ(UriEncode("\xC3\xBC", true), "%C3%BC");         // ü
  EXPECT_EQ(UriEncode("\xE1\x88\xB4", true), "%E1%88%B4");  // U+1234
  EXPECT_EQ(UriEncode(std::string_view("\x00\x7F\xFF", 3), true), "%00%7F%FF");
}

TEST(HashTest, Sha256Hex) {
  EXPECT_EQ(Sha256Hex(""), kEmptySha256);
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(HashTest, HmacSha256Rfc4231Case2) {
  const std::string mac = HmacSha256("Jefe", "what do ya want for nothing?");
  ASSERT_EQ(mac.size(), 32u);
  std::string hex;
  for (unsigned char ch : mac) {
    constexpr char kDigits[] = "0123456789abcdef";
    hex.push_back(kDigits[ch >> 4]);
    hex.push_back(kDigits[ch & 0x0F]);
  }
  EXPECT_EQ(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  EXPECT_EQ(HmacSha256("", "").size(), 32u);
}

TEST(AmzDateTest, Formats) {
  EXPECT_EQ(AmzDate(1440938160000), "20150830T123600Z");
  EXPECT_EQ(AmzDate(1440938160999), "20150830T123600Z");  // milliseconds are dropped
  EXPECT_EQ(AmzDate(k20130524), "20130524T000000Z");
  EXPECT_EQ(AmzDate(0), "19700101T000000Z");
}

TEST(SignatureTest, AcceptsDateOrAmzDate) {
  const std::string sts = "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\nabc";
  EXPECT_EQ(Signature(kSuiteCredentials, sts, "20150830", "us-east-1", "service"),
            Signature(kSuiteCredentials, sts, "20150830T123600Z", "us-east-1", "service"));
}

}  // namespace
}  // namespace fhirlake::sink
