// Tests for the Bundle structure reader (src/fhir/bundle.h).
#include "fhir/bundle.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <simdjson.h>

#include <string>
#include <string_view>

#include "test_util.h"

namespace fhirlake::fhir {
namespace {

// Owns a padded copy of the JSON so the string_views in the BundleView stay valid.
class BundleTest : public ::testing::Test {
 protected:
  Result<BundleView> Parse(std::string json) {
    size_t size = json.size();
    json.append(simdjson::SIMDJSON_PADDING, '\0');
    buffer_ = std::move(json);
    return ParseBundle(parser_, std::string_view(buffer_.data(), size), buffer_.data() + buffer_.size());
  }
  bool InsideBuffer(std::string_view v) const {
    return v.data() >= buffer_.data() && v.data() + v.size() <= buffer_.data() + buffer_.size();
  }

  ResourceParser parser_;
  std::string buffer_;
};

TEST_F(BundleTest, TransactionEntriesInAnyFieldOrder) {
  const std::string patient = R"({"resourceType":"Patient","name":[{"family":"Doe"}]})";
  const std::string observation =
      "{ \"resourceType\" : \"Observation\",\n  \"subject\" : {\"reference\":\"urn:uuid:1\"} }";
  auto r = Parse(R"({"resourceType":"Bundle","type":"transaction","entry":[
    {"fullUrl":"urn:uuid:1","resource":)" +
                 patient + R"(,"request":{"method":"POST","url":"Patient","ifNoneExist":"identifier=s|v"}},
    {"request":{"url":"Observation/o1","ifMatch":"W/\"3\"","method":"PUT"},"resource":)" +
                 observation + R"(,"fullUrl":"http://example.org/fhir/Observation/o1"},
    {"request":{"method":"DELETE","url":"Patient/old","ifModifiedSince":"2020-01-01T00:00:00Z"}}
  ]})");
  ASSERT_OK(r);
  EXPECT_EQ(r->type, "transaction");
  ASSERT_EQ(r->entries.size(), 3u);

  const auto& e0 = r->entries[0];
  EXPECT_EQ(e0.full_url, "urn:uuid:1");
  EXPECT_TRUE(e0.has_request);
  EXPECT_EQ(e0.request_method, "POST");
  EXPECT_EQ(e0.request_url, "Patient");
  EXPECT_EQ(e0.if_none_exist, "identifier=s|v");
  EXPECT_EQ(e0.if_match, "");
  EXPECT_EQ(e0.resource_json, patient);
  EXPECT_TRUE(InsideBuffer(e0.resource_json));

  const auto& e1 = r->entries[1];
  EXPECT_EQ(e1.full_url, "http://example.org/fhir/Observation/o1");
  EXPECT_EQ(e1.request_method, "PUT");
  EXPECT_EQ(e1.request_url, "Observation/o1");
  EXPECT_EQ(e1.if_match, "W/\"3\"");
  EXPECT_EQ(e1.resource_json, observation);  // the raw bytes, whitespace included
  EXPECT_TRUE(InsideBuffer(e1.resource_json));

  const auto& e2 = r->entries[2];
  EXPECT_EQ(e2.full_url, "");
  EXPECT_TRUE(e2.has_request);
  EXPECT_EQ(e2.request_method, "DELETE");
  EXPECT_EQ(e2.request_url, "Patient/old");
  EXPECT_TRUE(e2.resource_json.empty());
}

TEST_F(BundleTest, EntryResourceCanBeParsedInPlace) {
  auto r = Parse(R"({"entry":[{"resource":{"resourceType":"Patient","id":"p1"}}],"type":"collection",)"
                 R"("resourceType":"Bundle"})");
  ASSERT_OK(r);
  EXPECT_EQ(r->type, "collection");
  ASSERT_EQ(r->entries.size(), 1u);
  EXPECT_FALSE(r->entries[0].has_request);
  std::string_view res = r->entries[0].resource_json;
  EXPECT_EQ(res, R"({"resourceType":"Patient","id":"p1"})");
  ResourceParser other;
  auto parsed = other.ParseInBuffer(res, buffer_.data() + buffer_.size(), nullptr);
  ASSERT_OK(parsed);
  EXPECT_EQ(parsed->type, "Patient");
  EXPECT_EQ(parsed->id, "p1");
}

TEST_F(BundleTest, UnknownMembersAreSkipped) {
  auto r =
      Parse(R"({"resourceType":"Bundle","id":"b1","meta":{"tag":[{"code":"x"}]},"type":"batch",)"
            R"("timestamp":"2024-01-01T00:00:00Z","entry":[{"search":{"mode":"match"},"response":{"status":"200"},)"
            R"("link":[{"relation":"self","url":"x"}],"fullUrl":"urn:uuid:2"}],"signature":{"data":"abc"}})");
  ASSERT_OK(r);
  EXPECT_EQ(r->type, "batch");
  ASSERT_EQ(r->entries.size(), 1u);
  EXPECT_EQ(r->entries[0].full_url, "urn:uuid:2");
  EXPECT_FALSE(r->entries[0].has_request);
}

TEST_F(BundleTest, NoEntries) {
  auto r = Parse(R"({"resourceType":"Bundle","type":"transaction"})");
  ASSERT_OK(r);
  EXPECT_TRUE(r->entries.empty());
  auto e = Parse(R"({"resourceType":"Bundle","type":"transaction","entry":[]})");
  ASSERT_OK(e);
  EXPECT_TRUE(e->entries.empty());
}

TEST_F(BundleTest, EntryNotAnArray) {
  EXPECT_STATUS(Parse(R"({"resourceType":"Bundle","entry":{"fullUrl":"x"}})"), kInvalid,
                "Bundle.entry must be a JSON array");
  EXPECT_STATUS(Parse(R"({"resourceType":"Bundle","entry":"x"})"), kInvalid, "Bundle.entry must be a JSON array");
}

TEST_F(BundleTest, EntryElementNotAnObject) {
  EXPECT_STATUS(Parse(R"({"resourceType":"Bundle","entry":[{"fullUrl":"a"},"oops"]})"), kInvalid,
                "Bundle.entry[1] must be a JSON object");
  EXPECT_STATUS(Parse(R"({"resourceType":"Bundle","entry":[[]]})"), kInvalid, "Bundle.entry[0]");
}

TEST_F(BundleTest, RequestNotAnObject) {
  EXPECT_STATUS(Parse(R"({"resourceType":"Bundle","entry":[{"request":{"method":"GET","url":"Patient"}},)"
                      R"({"request":"POST"}]})"),
                kInvalid, "Bundle.entry[1].request must be a JSON object");
}

TEST_F(BundleTest, ResourceNotAnObject) {
  EXPECT_STATUS(Parse(R"({"resourceType":"Bundle","entry":[{"resource":[1]}]})"), kInvalid,
                "Bundle.entry[0].resource must be a JSON object");
}

TEST_F(BundleTest, NonStringFieldsNameTheirPath) {
  EXPECT_STATUS(Parse(R"({"resourceType":"Bundle","entry":[{"fullUrl":5}]})"), kInvalid,
                "Bundle.entry[0].fullUrl must be a JSON string");
  EXPECT_STATUS(Parse(R"({"resourceType":"Bundle","entry":[{},{"request":{"method":1}}]})"), kInvalid,
                "Bundle.entry[1].request.method");
  EXPECT_STATUS(Parse(R"({"resourceType":"Bundle","entry":[{"request":{"url":null}}]})"), kInvalid,
                "Bundle.entry[0].request.url");
  EXPECT_STATUS(Parse(R"({"resourceType":"Bundle","entry":[{"request":{"ifNoneExist":[]}}]})"), kInvalid,
                "Bundle.entry[0].request.ifNoneExist");
  EXPECT_STATUS(Parse(R"({"resourceType":"Bundle","entry":[{"request":{"ifMatch":{}}}]})"), kInvalid,
                "Bundle.entry[0].request.ifMatch");
  EXPECT_STATUS(Parse(R"({"resourceType":"Bundle","type":3})"), kInvalid, "Bundle.type must be a JSON string");
}

TEST_F(BundleTest, NotABundle) {
  EXPECT_STATUS(Parse(R"({"resourceType":"Patient","id":"p1"})"), kInvalid, "got resourceType 'Patient'");
  EXPECT_STATUS(Parse(R"({"type":"transaction","entry":[]})"), kInvalid, "no resourceType 'Bundle'");
  EXPECT_STATUS(Parse(R"({"resourceType":1})"), kInvalid, "resourceType must be a JSON string");
  EXPECT_STATUS(Parse(R"([{"resourceType":"Bundle"}])"), kInvalid, "not a JSON object");
}

TEST_F(BundleTest, InvalidJson) {
  EXPECT_STATUS(Parse(R"({"resourceType":"Bundle","entry":[)"), kInvalid, "");
  EXPECT_STATUS(Parse(R"({"resourceType":"Bundle"} trailing)"), kInvalid, "");
  EXPECT_STATUS(Parse(R"({"resourceType":"Bundle"}{})"), kInvalid, "");
}

TEST_F(BundleTest, UnpaddedBufferIsAnInternalError) {
  const std::string json = R"({"resourceType":"Bundle"})";
  EXPECT_STATUS(ParseBundle(parser_, json, json.data() + json.size()), kInternal, "padded");
}

}  // namespace
}  // namespace fhirlake::fhir
