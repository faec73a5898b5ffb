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

// --- members the server does not use are validated (regression: malformed JSON and 100,000-deep nesting there were
// accepted) ---

std::string NestedArrays(int arrays) {
  return std::string(static_cast<size_t>(arrays), '[') + "1" + std::string(static_cast<size_t>(arrays), ']');
}

TEST_F(BundleTest, MalformedJsonInUnusedMembersIsRejected) {
  for (std::string member : {R"("meta":{"tag":[tru]})", R"("identifier":{"value":01})", R"("total":1.2.3)",
                             R"("timestamp":"bad \x escape")", R"("link":[{"url":nul}])", R"("signature":{"a" 1})"}) {
    EXPECT_STATUS(Parse(R"({"resourceType":"Bundle","type":"batch",)" + member + "}"), kInvalid, "Invalid JSON")
        << member;
  }
  for (std::string member : {R"("search":{"mode":tru})", R"("response":{"status":"200","etag":01})",
                             R"("link":[{"relation":"self","url":"x"},{"url":nul}])"}) {
    EXPECT_STATUS(Parse(R"({"resourceType":"Bundle","type":"batch","entry":[{"fullUrl":"a",)" + member + "}]}"),
                  kInvalid, "Invalid JSON")
        << member;
  }
  EXPECT_STATUS(Parse(R"({"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"x",)"
                      R"("ifModifiedSince":[1,]}}]})"),
                kInvalid, "Invalid JSON");
}

TEST_F(BundleTest, DeepNestingInUnusedMembersIsRejected) {
  // Levels count from the Bundle: a top-level member's value is at 1, like a resource's.
  EXPECT_OK(Parse(R"({"resourceType":"Bundle","meta":)" + NestedArrays(63) + "}"));
  EXPECT_STATUS(Parse(R"({"resourceType":"Bundle","meta":)" + NestedArrays(64) + "}"), kInvalid,
                "JSON nesting is deeper than 64 levels at Bundle.meta[0]");
  EXPECT_STATUS(Parse(R"({"resourceType":"Bundle","meta":)" + NestedArrays(100000) + "}"), kInvalid, "deeper than 64");
  EXPECT_STATUS(Parse(R"({"resourceType":"Bundle","x":{"a":)" + NestedArrays(100000) + "}}"), kInvalid,
                "deeper than 64 levels at Bundle.x.a");
  // entry members are at level 3, request members at 4.
  EXPECT_OK(Parse(R"({"resourceType":"Bundle","entry":[{"search":)" + NestedArrays(61) + "}]}"));
  EXPECT_STATUS(Parse(R"({"resourceType":"Bundle","entry":[{"search":)" + NestedArrays(62) + "}]}"), kInvalid,
                "deeper than 64 levels at Bundle.entry[0].search");
  EXPECT_STATUS(Parse(R"({"resourceType":"Bundle","entry":[{"response":)" + NestedArrays(100000) + "}]}"), kInvalid,
                "at Bundle.entry[0].response");
  EXPECT_STATUS(Parse(R"({"resourceType":"Bundle","entry":[{"request":{"method":"GET","ifNoneMatch":)" +
                      NestedArrays(100000) + "}}]}"),
                kInvalid, "at Bundle.entry[0].request.ifNoneMatch");
}

TEST_F(BundleTest, DuplicateKeysAnywhereInTheBundleAreRejected) {
  EXPECT_STATUS(Parse(R"({"resourceType":"Bundle","type":"batch","type":"transaction"})"), kInvalid,
                "Duplicate JSON key 'type' in Bundle;");
  EXPECT_STATUS(Parse(R"({"resourceType":"Bundle","entry":[],"entry":[]})"), kInvalid, "Duplicate JSON key 'entry'");
  EXPECT_STATUS(Parse(R"({"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Patient"},)"
                      R"("resource":{"resourceType":"Observation"}}]})"),
                kInvalid, "Duplicate JSON key 'resource' in Bundle.entry[0];");
  EXPECT_STATUS(Parse(R"({"resourceType":"Bundle","entry":[{},{"request":{"method":"PUT","url":"Patient/a",)"
                      R"("url":"Patient/b"}}]})"),
                kInvalid, "Duplicate JSON key 'url' in Bundle.entry[1].request;");
  EXPECT_STATUS(Parse(R"({"resourceType":"Bundle","meta":{"tag":[{"code":"a","code":"b"}]}})"), kInvalid,
                "Duplicate JSON key 'code' in Bundle.meta.tag[0];");
  EXPECT_STATUS(Parse(R"({"resourceType":"Bundle","entry":[{"response":{"status":"1","status":"2"}}]})"), kInvalid,
                "'status' in Bundle.entry[0].response;");
}

}  // namespace
}  // namespace fhirlake::fhir
