// Tests for the S3 reply parser (src/sink/s3_xml.h): replies as AWS S3 and Ceph RGW send them (namespaces,
// entities in keys, truncated listings, 200 replies carrying an <Error>), and broken or hostile bodies, which must
// give a clear Status and never a crash or a wrong value.
#include "sink/s3_xml.h"

#include <gtest/gtest.h>

#include <string>

#include "test_util.h"

namespace fhirlake::sink::s3xml {
namespace {

constexpr const char* kDecl = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";

TEST(S3XmlTest, ErrorCodeAndMessage) {
  ASSERT_OK_AND_ASSIGN(ErrorReply e, ParseError(std::string(kDecl) +
                                                "<Error><Code>NoSuchUpload</Code><Message>The specified upload does "
                                                "not exist. The upload ID may be invalid.</Message><UploadId>2~abc"
                                                "</UploadId><RequestId>tx0001</RequestId></Error>"));
  EXPECT_EQ(e.code, "NoSuchUpload");
  EXPECT_EQ(e.message, "The specified upload does not exist. The upload ID may be invalid.");
}

TEST(S3XmlTest, RgwErrorWithEmptyMessage) {
  // RGW 16 answers <Message/> (empty).
  ASSERT_OK_AND_ASSIGN(ErrorReply e,
                       ParseError("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>InvalidArgument</Code>"
                                  "<Message></Message><BucketName>b</BucketName><RequestId>tx1</RequestId>"
                                  "<HostId>h</HostId></Error>"));
  EXPECT_EQ(e.code, "InvalidArgument");
  EXPECT_EQ(e.message, "");
}

TEST(S3XmlTest, ErrorMessageEntitiesAreDecoded) {
  ASSERT_OK_AND_ASSIGN(ErrorReply e, ParseError("<Error><Code>KMS.NotFoundException</Code><Message>Key &quot;a&amp;b"
                                                "&quot; &lt;x&gt; isn&apos;t &#x263A; &#65;</Message></Error>"));
  EXPECT_EQ(e.code, "KMS.NotFoundException");
  EXPECT_EQ(e.message, "Key \"a&b\" <x> isn't \xE2\x98\xBA A");
}

TEST(S3XmlTest, ErrorOfANonErrorBodyFails) {
  EXPECT_STATUS(ParseError(""), kUnavailable, "empty");
  EXPECT_STATUS(ParseError("<html><body>502 Bad Gateway</body></html>"), kUnavailable, "<html>");
  EXPECT_STATUS(ParseError("upstream connect error"), kUnavailable, "not well-formed");
  EXPECT_STATUS(ParseError("<ListBucketResult/>"), kUnavailable, "expected <Error>");
}

TEST(S3XmlTest, InitiateMultipartUploadWithNamespace) {
  ASSERT_OK_AND_ASSIGN(std::string id,
                       ParseInitiateMultipartUpload(
                           std::string(kDecl) +
                           "<InitiateMultipartUploadResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
                           "<Bucket>fhirlake-s3-e2e</Bucket><Key>a&amp;b/Patient-1.ndjson</Key>"
                           "<UploadId>2~Qz7ZJ1w4c9RxYoxk3l_yEWOQ9pMXTsI</UploadId></InitiateMultipartUploadResult>"));
  EXPECT_EQ(id, "2~Qz7ZJ1w4c9RxYoxk3l_yEWOQ9pMXTsI");
}

TEST(S3XmlTest, InitiateMultipartUploadWithAPrefixedNamespace) {
  ASSERT_OK_AND_ASSIGN(std::string id,
                       ParseInitiateMultipartUpload("<s3:InitiateMultipartUploadResult "
                                                    "xmlns:s3=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
                                                    "<s3:UploadId>VXBsb2FkIElE</s3:UploadId>"
                                                    "</s3:InitiateMultipartUploadResult>"));
  EXPECT_EQ(id, "VXBsb2FkIElE");
}

TEST(S3XmlTest, InitiateMultipartUploadWithoutUploadIdFails) {
  EXPECT_STATUS(ParseInitiateMultipartUpload("<InitiateMultipartUploadResult><Bucket>b</Bucket>"
                                             "</InitiateMultipartUploadResult>"),
                kUnavailable, "no UploadId");
  EXPECT_STATUS(ParseInitiateMultipartUpload("<InitiateMultipartUploadResult><UploadId></UploadId>"
                                             "</InitiateMultipartUploadResult>"),
                kUnavailable, "no UploadId");
  // An UploadId nested elsewhere is not the reply's.
  EXPECT_STATUS(ParseInitiateMultipartUpload("<InitiateMultipartUploadResult><Owner><UploadId>x</UploadId></Owner>"
                                             "</InitiateMultipartUploadResult>"),
                kUnavailable, "no UploadId");
}

TEST(S3XmlTest, InitiateMultipartUploadThatIsAnErrorSaysSo) {
  EXPECT_STATUS(ParseInitiateMultipartUpload("<Error><Code>AccessDenied</Code><Message>Access Denied</Message>"
                                             "</Error>"),
                kUnavailable, "AccessDenied: Access Denied");
}

TEST(S3XmlTest, ListObjectsV2Page) {
  ASSERT_OK_AND_ASSIGN(
      ObjectListing l,
      ParseListObjects(std::string(kDecl) +
                       "<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
                       "<Name>fhirlake-s3-e2e</Name><Prefix>exp/</Prefix><KeyCount>3</KeyCount><MaxKeys>3</MaxKeys>"
                       "<IsTruncated>true</IsTruncated>"
                       "<NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=</NextContinuationToken>"
                       "<Contents><Key>exp/Patient/Patient-1.ndjson</Key><LastModified>2024-01-02T03:04:05.000Z"
                       "</LastModified><ETag>&quot;d41d8cd98f00b204e9800998ecf8427e&quot;</ETag><Size>12345</Size>"
                       "<StorageClass>STANDARD</StorageClass></Contents>"
                       "<Contents><Key>exp/a&amp;b &lt;c&gt; &#39;d&#39;.ndjson</Key><Size>0</Size></Contents>"
                       "<Contents><Key>  spaced key  </Key><Size>\n  9000000000 \n</Size></Contents>"
                       "</ListBucketResult>"));
  ASSERT_EQ(l.objects.size(), 3u);
  EXPECT_EQ(l.objects[0].key, "exp/Patient/Patient-1.ndjson");
  EXPECT_EQ(l.objects[0].size, 12345);
  EXPECT_EQ(l.objects[0].etag, "\"d41d8cd98f00b204e9800998ecf8427e\"");
  EXPECT_EQ(l.objects[1].key, "exp/a&b <c> 'd'.ndjson");
  EXPECT_EQ(l.objects[1].size, 0);
  EXPECT_EQ(l.objects[2].key, "  spaced key  ");  // keys are exact: never trimmed
  EXPECT_EQ(l.objects[2].size, 9000000000);
  EXPECT_TRUE(l.is_truncated);
  EXPECT_EQ(l.next_continuation_token, "1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=");
}

TEST(S3XmlTest, ListObjectsLastPageAndEmptyListing) {
  ASSERT_OK_AND_ASSIGN(ObjectListing last,
                       ParseListObjects("<ListBucketResult><IsTruncated>false</IsTruncated><Contents><Key>k</Key>"
                                        "<Size>1</Size></Contents></ListBucketResult>"));
  EXPECT_FALSE(last.is_truncated);
  ASSERT_EQ(last.objects.size(), 1u);
  ASSERT_OK_AND_ASSIGN(ObjectListing empty,
                       ParseListObjects("<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>b"
                                        "</Name><Prefix>nothing/</Prefix><KeyCount>0</KeyCount><IsTruncated>false"
                                        "</IsTruncated></ListBucketResult>"));
  EXPECT_TRUE(empty.objects.empty());
  EXPECT_FALSE(empty.is_truncated);
}

TEST(S3XmlTest, ListObjectsV1Marker) {
  ASSERT_OK_AND_ASSIGN(ObjectListing l,
                       ParseListObjects("<ListBucketResult><IsTruncated>true</IsTruncated><NextMarker>k2</NextMarker>"
                                        "<Contents><Key>k1</Key><Size>1</Size></Contents></ListBucketResult>"));
  EXPECT_EQ(l.next_marker, "k2");
  EXPECT_EQ(l.next_continuation_token, "");
}

TEST(S3XmlTest, CommonPrefixesAreNotObjects) {
  ASSERT_OK_AND_ASSIGN(ObjectListing l,
                       ParseListObjects("<ListBucketResult><CommonPrefixes><Prefix>a/</Prefix></CommonPrefixes>"
                                        "<Contents><Key>b</Key><Size>2</Size></Contents></ListBucketResult>"));
  ASSERT_EQ(l.objects.size(), 1u);
  EXPECT_EQ(l.objects[0].key, "b");
}

TEST(S3XmlTest, ListObjectsWithBadFieldsFails) {
  EXPECT_STATUS(ParseListObjects("<ListBucketResult><Contents><Key>k</Key><Size>12a</Size></Contents>"
                                 "</ListBucketResult>"),
                kUnavailable, "Size '12a' of key 'k'");
  EXPECT_STATUS(ParseListObjects("<ListBucketResult><Contents><Key>k</Key><Size>-1</Size></Contents>"
                                 "</ListBucketResult>"),
                kUnavailable, "Size '-1'");
  EXPECT_STATUS(ParseListObjects("<ListBucketResult><Contents><Key>k</Key></Contents></ListBucketResult>"),
                kUnavailable, "Size ''");
  EXPECT_STATUS(ParseListObjects("<ListBucketResult><Contents><Key>k</Key><Size>99999999999999999999</Size>"
                                 "</Contents></ListBucketResult>"),
                kUnavailable, "not a byte count");
  EXPECT_STATUS(ParseListObjects("<ListBucketResult><Contents><Size>1</Size></Contents></ListBucketResult>"),
                kUnavailable, "without a Key");
  EXPECT_STATUS(ParseListObjects("<ListBucketResult><IsTruncated>maybe</IsTruncated></ListBucketResult>"), kUnavailable,
                "IsTruncated is 'maybe'");
}

TEST(S3XmlTest, ListMultipartUploadsTruncated) {
  ASSERT_OK_AND_ASSIGN(
      UploadListing l,
      ParseListMultipartUploads(
          std::string(kDecl) +
          "<ListMultipartUploadsResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
          "<Bucket>b</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>"
          "<NextKeyMarker>exp/O&amp;P.ndjson</NextKeyMarker><NextUploadIdMarker>2~u2</NextUploadIdMarker>"
          "<Prefix>exp/</Prefix><MaxUploads>2</MaxUploads><IsTruncated>true</IsTruncated>"
          "<Upload><Key>exp/Patient-1.ndjson</Key><UploadId>2~u1</UploadId><Initiator><ID>x</ID></Initiator>"
          "<Owner><ID>x</ID></Owner><StorageClass>STANDARD</StorageClass><Initiated>2024-01-01T00:00:00.000Z"
          "</Initiated></Upload>"
          "<Upload><Key>exp/O&amp;P.ndjson</Key><UploadId>2~u2</UploadId></Upload>"
          "</ListMultipartUploadsResult>"));
  ASSERT_EQ(l.uploads.size(), 2u);
  EXPECT_EQ(l.uploads[0].key, "exp/Patient-1.ndjson");
  EXPECT_EQ(l.uploads[0].upload_id, "2~u1");
  EXPECT_EQ(l.uploads[1].key, "exp/O&P.ndjson");
  EXPECT_TRUE(l.is_truncated);
  EXPECT_EQ(l.next_key_marker, "exp/O&P.ndjson");
  EXPECT_EQ(l.next_upload_id_marker, "2~u2");
}

TEST(S3XmlTest, ListMultipartUploadsEmpty) {
  ASSERT_OK_AND_ASSIGN(UploadListing l,
                       ParseListMultipartUploads("<ListMultipartUploadsResult><Bucket>b</Bucket><IsTruncated>false"
                                                 "</IsTruncated></ListMultipartUploadsResult>"));
  EXPECT_TRUE(l.uploads.empty());
  EXPECT_FALSE(l.is_truncated);
}

TEST(S3XmlTest, ListMultipartUploadsWithoutUploadIdFails) {
  EXPECT_STATUS(ParseListMultipartUploads("<ListMultipartUploadsResult><Upload><Key>k</Key></Upload>"
                                          "</ListMultipartUploadsResult>"),
                kUnavailable, "without a Key or an UploadId");
}

TEST(S3XmlTest, CompleteMultipartUpload) {
  ASSERT_OK_AND_ASSIGN(
      CompletedUpload c,
      ParseCompleteMultipartUpload(std::string(kDecl) +
                                   "<CompleteMultipartUploadResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
                                   "<Location>http://127.0.0.1/b/k</Location><Bucket>b</Bucket><Key>a&amp;b</Key>"
                                   "<ETag>&quot;3858f62230ac3c915f300c664312c11f-9&quot;</ETag>"
                                   "</CompleteMultipartUploadResult>"));
  EXPECT_EQ(c.bucket, "b");
  EXPECT_EQ(c.key, "a&b");
  EXPECT_EQ(c.etag, "\"3858f62230ac3c915f300c664312c11f-9\"");
  // RGW 16 answers an empty ETag.
  ASSERT_OK_AND_ASSIGN(CompletedUpload rgw, ParseCompleteMultipartUpload(
                                                "<CompleteMultipartUploadResult><Bucket>b</Bucket><Key>k</Key><ETag>"
                                                "</ETag></CompleteMultipartUploadResult>"));
  EXPECT_EQ(rgw.etag, "");
}

TEST(S3XmlTest, CompleteMultipartUploadWithAnErrorIn200) {
  // S3 may send "200 OK" and then fail: the body is an Error.
  EXPECT_STATUS(ParseCompleteMultipartUpload(std::string(kDecl) +
                                             "\n\n<Error><Code>InternalError</Code><Message>We encountered an internal "
                                             "error. Please try again.</Message></Error>"),
                kUnavailable, "InternalError: We encountered an internal error. Please try again.");
}

TEST(S3XmlTest, MalformedBodiesGiveAClearStatus) {
  const char* bodies[] = {
      "",
      "   ",
      "<ListBucketResult>",                                           // truncated body
      "<ListBucketResult><Contents><Key>k</Key></ListBucketResult>",  // mismatched tags
      "<ListBucketResult><Key>a & b</Key></ListBucketResult>",        // bare ampersand
      "<ListBucketResult><Key>&nosuch;</Key></ListBucketResult>",     // undefined entity
      "<ListBucketResult></ListBucketResult><ListBucketResult/>",     // two roots
      "<ListBucketResult><Key>\x01</Key></ListBucketResult>",         // not an XML character
      "<ListBucketResult><Key>\xff\xfe</Key></ListBucketResult>",     // not UTF-8
      "{\"error\": \"not xml\"}",
  };
  for (const char* body : bodies) {
    auto r = ParseListObjects(body);
    ASSERT_FALSE(r.ok()) << body;
    EXPECT_EQ(r.status().code(), StatusCode::kUnavailable) << body;
    EXPECT_NE(r.status().message().find("S3 ListObjects reply"), std::string::npos) << r.status().ToString();
  }
  EXPECT_STATUS(ParseListObjects("<ListBucketResult><Contents>"), kUnavailable, "not well-formed XML");
  EXPECT_STATUS(ParseListObjects("<ListBucketResult><Contents>"), kUnavailable, "line 1");
}

TEST(S3XmlTest, BodyCutAtEveryByteNeverParsesAsAShorterListing) {
  const std::string full =
      "<ListBucketResult><IsTruncated>false</IsTruncated><Contents><Key>k1</Key><Size>1</Size></Contents>"
      "<Contents><Key>k2</Key><Size>2</Size></Contents></ListBucketResult>";
  ASSERT_OK(ParseListObjects(full));
  for (size_t n = 0; n < full.size(); ++n) {
    EXPECT_FALSE(ParseListObjects(full.substr(0, n)).ok()) << n;
  }
}

TEST(S3XmlTest, DoctypeAndEntityExpansionAreRefused) {
  const std::string laughs =
      "<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;&lol;&lol;&lol;&lol;"
      "&lol;&lol;&lol;&lol;\"><!ENTITY lol3 \"&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;\">]>"
      "<Error><Code>&lol3;</Code></Error>";
  EXPECT_STATUS(ParseError(laughs), kUnavailable, "DOCTYPE");
  EXPECT_STATUS(ParseError("<!DOCTYPE Error SYSTEM \"file:///etc/passwd\"><Error><Code>x</Code></Error>"), kUnavailable,
                "DOCTYPE");
}

TEST(S3XmlTest, DeepNestingIsRefused) {
  std::string deep;
  for (int i = 0; i < 100000; ++i) deep += "<a>";
  EXPECT_STATUS(ParseListObjects(deep), kUnavailable, "nested too deeply");
  std::string ok = "<ListBucketResult>";
  for (int i = 0; i < 20; ++i) ok += "<x>";
  for (int i = 0; i < 20; ++i) ok += "</x>";
  ok += "</ListBucketResult>";
  EXPECT_OK(ParseListObjects(ok));
}

TEST(S3XmlTest, WrongRootElementIsNamed) {
  EXPECT_STATUS(ParseListMultipartUploads("<ListBucketResult/>"), kUnavailable,
                "root element <ListBucketResult>, expected <ListMultipartUploadsResult>");
}

}  // namespace
}  // namespace fhirlake::sink::s3xml
