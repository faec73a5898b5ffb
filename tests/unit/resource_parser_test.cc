// Tests for FHIR resource ingest (src/fhir/resource_parser.h): validation, minified re-serialisation,
// reference rewriting, compartment / reference / identifier extraction.
#include "fhir/resource_parser.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <simdjson.h>

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "test_util.h"

namespace fhirlake::fhir {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

constexpr std::string_view kLastUpdated = "2024-01-02T03:04:05.678Z";

// Parses `json` (which must be valid JSON) with simdjson's DOM API; fails the test otherwise.
simdjson::dom::element ParseDom(simdjson::dom::parser& parser, const std::string& json) {
  simdjson::dom::element doc;
  auto error = parser.parse(simdjson::padded_string(json)).get(doc);
  EXPECT_EQ(error, simdjson::SUCCESS) << simdjson::error_message(error) << " in " << json;
  return doc;
}

std::string StringAt(simdjson::dom::element doc, std::string_view pointer) {
  std::string_view s;
  auto error = doc.at_pointer(pointer).get_string().get(s);
  EXPECT_EQ(error, simdjson::SUCCESS) << pointer << ": " << simdjson::error_message(error);
  return std::string(s);
}

class ResourceParserTest : public ::testing::Test {
 protected:
  Result<ParsedResource> Parse(std::string_view json, ReferenceResolver* resolver = nullptr) {
    return parser_.Parse(json, resolver);
  }
  std::string ParseAndRender(std::string_view json, std::string_view id = "r1", int64_t version = 1) {
    auto r = Parse(json);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    if (!r.ok()) return "";
    return RenderResource(*r, id, version, kLastUpdated);
  }

  ResourceParser parser_;
};

// --- rendering ---

TEST_F(ResourceParserTest, RenderPutsTypeIdMetaFirstAndMinifies) {
  const std::string input = R"({
    "name" : [ { "family" : "Doe", "given" : [ "Jane", "K" ] } ],
    "meta" : {
      "versionId" : "17",
      "profile" : [ "http://example.org/StructureDefinition/p" ],
      "lastUpdated" : "2020-01-01T00:00:00Z",
      "tag" : [ { "system" : "http://example.org/tags", "code" : "t1" } ]
    },
    "active" : true,
    "id" : "p1",
    "resourceType" : "Patient",
    "deceasedBoolean" : false,
    "extension" : [ { "url" : "http://example.org/ext", "valueInteger" : -3 },
                    { "url" : "http://example.org/nested", "extension" : [ { "url" : "a", "valueString" : "b" } ] } ],
    "contact" : [ ]
  })";
  auto r = Parse(input);
  ASSERT_OK(r);
  EXPECT_EQ(r->type, "Patient");
  EXPECT_EQ(r->id, "p1");
  std::string out = RenderResource(*r, "p1", 3, kLastUpdated);
  EXPECT_EQ(out,
            R"({"resourceType":"Patient","id":"p1","meta":{"versionId":"3","lastUpdated":"2024-01-02T03:04:05.678Z",)"
            R"("profile":["http://example.org/StructureDefinition/p"],"tag":[{"system":"http://example.org/tags",)"
            R"("code":"t1"}]},"name":[{"family":"Doe","given":["Jane","K"]}],"active":true,"deceasedBoolean":false,)"
            R"("extension":[{"url":"http://example.org/ext","valueInteger":-3},{"url":"http://example.org/nested",)"
            R"("extension":[{"url":"a","valueString":"b"}]}],"contact":[]})");
  simdjson::dom::parser dom;
  auto doc = ParseDom(dom, out);
  EXPECT_EQ(StringAt(doc, "/meta/versionId"), "3");
  EXPECT_EQ(StringAt(doc, "/meta/lastUpdated"), kLastUpdated);
  EXPECT_EQ(StringAt(doc, "/name/0/given/1"), "K");
}

TEST_F(ResourceParserTest, RenderWithoutMetaInTheBody) {
  auto out = ParseAndRender(R"({"resourceType":"Observation","status":"final"})", "o1", 1);
  EXPECT_EQ(out, R"({"resourceType":"Observation","id":"o1","meta":{"versionId":"1",)"
                 R"("lastUpdated":"2024-01-02T03:04:05.678Z"},"status":"final"})");
}

TEST_F(ResourceParserTest, RenderUsesTheGivenIdNotTheBodyId) {
  auto r = Parse(R"({"resourceType":"Patient","id":"from-body"})");
  ASSERT_OK(r);
  EXPECT_EQ(r->id, "from-body");
  std::string out = RenderResource(*r, "server-assigned", 12, kLastUpdated);
  EXPECT_EQ(out, R"({"resourceType":"Patient","id":"server-assigned","meta":{"versionId":"12",)"
                 R"("lastUpdated":"2024-01-02T03:04:05.678Z"}})");
}

TEST_F(ResourceParserTest, MetaVersionIdAndLastUpdatedAreDroppedWhateverTheirPosition) {
  auto r = Parse(R"({"meta":{"lastUpdated":"x","security":[{"code":"R"}],"versionId":"9","source":"s"},)"
                 R"("resourceType":"Patient"})");
  ASSERT_OK(r);
  EXPECT_EQ(r->meta_rest, R"(,"security":[{"code":"R"}],"source":"s")");
  EXPECT_EQ(r->body_rest, "");
}

TEST_F(ResourceParserTest, PartsAreSeparatedWithLeadingCommas) {
  auto r = Parse(R"({"resourceType":"Patient","gender":"female","birthDate":"1970-01-01"})");
  ASSERT_OK(r);
  EXPECT_EQ(r->body_rest, R"(,"gender":"female","birthDate":"1970-01-01")");
  EXPECT_EQ(r->meta_rest, "");
  EXPECT_EQ(r->id, "");
}

TEST_F(ResourceParserTest, DecimalsKeepTheirText) {
  const std::string input = R"({"resourceType":"Observation",
    "valueQuantity": {"value": 1.50 , "unit": "mg"},
    "component": [ {"valueDecimal": 1e3}, {"valueDecimal": 1E+3}, {"valueDecimal": -0.000},
                   {"valueDecimal": 2.5e-7 }, {"valueDecimal": 100.0000000000000000001},
                   {"valueInteger": 0}, {"valueDecimal": 12345678901234567890.12345678901234567890}
                   ],
    "x": 3.14159265358979323846264338327950288
  })";
  auto out = ParseAndRender(input, "o1");
  EXPECT_THAT(out, ::testing::HasSubstr(R"("valueQuantity":{"value":1.50,"unit":"mg"})"));
  EXPECT_THAT(out, ::testing::HasSubstr(
                       R"("component":[{"valueDecimal":1e3},{"valueDecimal":1E+3},{"valueDecimal":-0.000},)"
                       R"({"valueDecimal":2.5e-7},{"valueDecimal":100.0000000000000000001},{"valueInteger":0},)"
                       R"({"valueDecimal":12345678901234567890.12345678901234567890}])"));
  EXPECT_THAT(out, ::testing::HasSubstr(R"("x":3.14159265358979323846264338327950288})"));
  simdjson::dom::parser dom;
  ParseDom(dom, out);
}

TEST_F(ResourceParserTest, NumberFollowedByWhitespaceBeforeClosingBracket) {
  auto out = ParseAndRender("{\"resourceType\":\"Observation\",\"a\":[1.0\n\t ,2\r\n],\"b\":7 \n}", "o1");
  EXPECT_THAT(out, ::testing::HasSubstr(R"("a":[1.0,2],"b":7})"));
}

TEST_F(ResourceParserTest, StringsWithEscapesAndUnicodeSurvive) {
  // Input escapes: \u00e9 (e acute), \n, \t, quotes, backslash, \/ and a surrogate pair (U+1F600), plus raw UTF-8.
  const std::string input =
      R"({"resourceType":"Patient","text":{"status":"generated",)"
      R"("div":"caf\u00e9 \"quoted\" line1\nline2\ttab back\\slash \/ \ud83d\ude00 raw: ü 日本 😀"},)"
      R"("name":[{"family":"O'Brien \u0001 \u001f"}],"k\u00e9y":"v"})";
  std::string out = ParseAndRender(input, "p1");
  ASSERT_FALSE(out.empty());
  simdjson::dom::parser dom;
  auto doc = ParseDom(dom, out);
  EXPECT_EQ(StringAt(doc, "/text/div"),
            "caf\xc3\xa9 \"quoted\" line1\nline2\ttab back\\slash / \xf0\x9f\x98\x80 raw: \xc3\xbc "
            "\xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80");
  EXPECT_EQ(StringAt(doc, "/name/0/family"), "O'Brien \x01 \x1f");
  EXPECT_EQ(StringAt(doc, "/k\xc3\xa9y"), "v");
  // Control characters and quotes are escaped, non-ASCII text is written as UTF-8.
  EXPECT_THAT(out, ::testing::HasSubstr(R"(\"quoted\")"));
  EXPECT_THAT(out, ::testing::HasSubstr(R"(line1\nline2\ttab back\\slash)"));
  EXPECT_THAT(out, ::testing::HasSubstr(R"(\u0001 \u001f)"));
  EXPECT_THAT(out, ::testing::HasSubstr("caf\xc3\xa9"));
  EXPECT_EQ(out.find('\n'), std::string::npos);
}

TEST_F(ResourceParserTest, EmbeddedNulCharacterRoundTrips) {
  std::string out = ParseAndRender(R"({"resourceType":"Basic","note":"a\u0000b"})", "b1");
  EXPECT_THAT(out, ::testing::HasSubstr(R"("note":"a\u0000b")"));
  simdjson::dom::parser dom;
  auto doc = ParseDom(dom, out);
  EXPECT_EQ(StringAt(doc, "/note"), std::string("a\0b", 3));
}

TEST_F(ResourceParserTest, LiteralsAndEmptyContainers) {
  std::string out =
      ParseAndRender(R"({"resourceType":"Basic","t":true,"f":false,"n":null,"o":{},"a":[],"aa":[[],[{}]]})", "b1");
  EXPECT_THAT(out, ::testing::HasSubstr(R"("t":true,"f":false,"n":null,"o":{},"a":[],"aa":[[],[{}]]})"));
}

// --- errors ---

TEST_F(ResourceParserTest, RejectsInvalidJson) {
  for (const char* json : {
           R"({"resourceType":"Patient",)",
           R"({"resourceType":"Patient","active":tru})",
           R"({"resourceType":"Patient","active":True})",
           R"({"resourceType":"Patient","n":nul})",
           R"({"resourceType":"Patient","x":1.2.3})",
           R"({"resourceType":"Patient","x":01})",
           R"({"resourceType":"Patient","x":"bad \x escape"})",
           R"({"resourceType":"Patient","x":"unterminated})",
           R"({"resourceType":"Patient","x":[1,2})",
           R"({"resourceType":"Patient","x":{"a" 1}})",
           R"({"resourceType":"Patient" "x":1})",
           "{\"resourceType\":\"Patient\",\"x\":\"\xff\xfe\"}",  // invalid UTF-8
           "",
       }) {
    EXPECT_STATUS(Parse(json), kInvalid, "") << json;
  }
}

TEST_F(ResourceParserTest, RejectsTrailingContentAfterTheObject) {
  EXPECT_STATUS(Parse(R"({"resourceType":"Patient"} x)"), kInvalid, "");
  EXPECT_STATUS(Parse(R"({"resourceType":"Patient"}{})"), kInvalid, "");
  EXPECT_STATUS(Parse(R"({"resourceType":"Patient","id":"a"}])"), kInvalid, "");
  EXPECT_STATUS(Parse(R"({"resourceType":"Patient"} "more")"), kInvalid, "");
  // Trailing whitespace is fine.
  EXPECT_OK(Parse("{\"resourceType\":\"Patient\"} \n\t\r\n"));
}

TEST_F(ResourceParserTest, RejectsNonObjects) {
  for (const char* json : {"[]", R"(["resourceType","Patient"])", R"("Patient")", "42", "true", "null"}) {
    EXPECT_STATUS(Parse(json), kInvalid, "not a JSON object") << json;
  }
}

TEST_F(ResourceParserTest, RejectsMissingResourceType) {
  EXPECT_STATUS(Parse(R"({"id":"p1","active":true})"), kInvalid, "no resourceType");
  EXPECT_STATUS(Parse("{}"), kInvalid, "no resourceType");
  // A nested resourceType does not count.
  EXPECT_STATUS(Parse(R"({"contained":[{"resourceType":"Patient"}]})"), kInvalid, "no resourceType");
}

TEST_F(ResourceParserTest, RejectsUnknownOrNonStringResourceType) {
  EXPECT_STATUS(Parse(R"({"resourceType":"Patinet"})"), kInvalid, "Unknown resource type 'Patinet'");
  EXPECT_STATUS(Parse(R"({"resourceType":"patient"})"), kInvalid, "Unknown resource type 'patient'");
  EXPECT_STATUS(Parse(R"({"resourceType":"Resource"})"), kInvalid, "Unknown resource type 'Resource'");
  EXPECT_STATUS(Parse(R"({"resourceType":5})"), kInvalid, "resourceType must be a JSON string");
  EXPECT_STATUS(Parse(R"({"resourceType":null})"), kInvalid, "resourceType");
}

TEST_F(ResourceParserTest, RejectsNonStringId) {
  EXPECT_STATUS(Parse(R"({"resourceType":"Patient","id":5})"), kInvalid, "id must be a JSON string");
  EXPECT_STATUS(Parse(R"({"resourceType":"Patient","id":["a"]})"), kInvalid, "id must be a JSON string");
  EXPECT_STATUS(Parse(R"({"resourceType":"Patient","id":null})"), kInvalid, "id must be a JSON string");
}

TEST_F(ResourceParserTest, RejectsInvalidId) {
  EXPECT_STATUS(Parse(R"({"resourceType":"Patient","id":"a_b"})"), kInvalid, "'a_b'");
  EXPECT_STATUS(Parse(R"({"resourceType":"Patient","id":"a/b"})"), kInvalid, "Invalid resource id");
  EXPECT_STATUS(Parse(R"({"resourceType":"Patient","id":""})"), kOk, "");  // empty: treated as absent
  std::string long_id(65, 'x');
  EXPECT_STATUS(Parse(R"({"resourceType":"Patient","id":")" + long_id + "\"}"), kInvalid, long_id);
  std::string max_id(64, 'x');
  auto ok = Parse(R"({"resourceType":"Patient","id":")" + max_id + "\"}");
  ASSERT_OK(ok);
  EXPECT_EQ(ok->id, max_id);
}

TEST_F(ResourceParserTest, RejectsNonObjectMeta) {
  EXPECT_STATUS(Parse(R"({"resourceType":"Patient","meta":[]})"), kInvalid, "meta must be a JSON object");
  EXPECT_STATUS(Parse(R"({"resourceType":"Patient","meta":"x"})"), kInvalid, "meta must be a JSON object");
}

std::string Nested(int arrays) {
  std::string json = R"({"resourceType":"Basic","deep":)";
  json.append(static_cast<size_t>(arrays), '[');
  json.append("1");
  json.append(static_cast<size_t>(arrays), ']');
  json.append("}");
  return json;
}

std::string NestedObjects(int objects) {
  std::string json = R"({"resourceType":"Basic","deep":)";
  for (int i = 0; i < objects; ++i) json.append(R"({"a":)");
  json.append("true");
  json.append(static_cast<size_t>(objects), '}');
  json.append("}");
  return json;
}

TEST_F(ResourceParserTest, RejectsNestingDeeperThan64) {
  // The value of a top-level member is at level 1: 63 arrays put the innermost number at level 64.
  EXPECT_OK(Parse(Nested(10)));
  EXPECT_OK(Parse(Nested(63)));
  EXPECT_STATUS(Parse(Nested(64)), kInvalid, "64");
  EXPECT_STATUS(Parse(Nested(100)), kInvalid, "deeper than 64");
  EXPECT_STATUS(Parse(Nested(5000)), kInvalid, "");
  EXPECT_OK(Parse(NestedObjects(63)));
  EXPECT_STATUS(Parse(NestedObjects(64)), kInvalid, "deeper than 64");
  EXPECT_STATUS(Parse(NestedObjects(200)), kInvalid, "deeper than 64");
}

TEST_F(ResourceParserTest, ParserIsReusableAfterAnError) {
  EXPECT_STATUS(Parse(R"({"resourceType":"Nope"})"), kInvalid, "Nope");
  EXPECT_STATUS(Parse(R"({"resourceType":"Patient",)"), kInvalid, "");
  auto r = Parse(R"({"resourceType":"Patient","id":"ok"})");
  ASSERT_OK(r);
  EXPECT_EQ(r->id, "ok");
}

// --- duplicate keys (regression: a second resourceType overrode the one checked against the URL) ---

TEST_F(ResourceParserTest, RejectsADuplicateResourceTypeOrId) {
  EXPECT_STATUS(Parse(R"({"resourceType":"Patient","id":"victim","resourceType":"Observation"})"), kInvalid,
                "Duplicate JSON key 'resourceType' in Patient");
  EXPECT_STATUS(Parse(R"({"resourceType":"Patient","resourceType":"Patient"})"), kInvalid,
                "Duplicate JSON key 'resourceType'");
  EXPECT_STATUS(Parse(R"({"resourceType":"Patient","id":"a","id":"b"})"), kInvalid, "Duplicate JSON key 'id'");
  // The same key written with an escape is the same key.
  EXPECT_STATUS(Parse(R"({"resourceType":"Patient","id":"a","\u0069d":"b"})"), kInvalid, "Duplicate JSON key 'id'");
}

TEST_F(ResourceParserTest, RejectsDuplicateKeysAtAnyDepthAndSaysWhere) {
  EXPECT_STATUS(Parse(R"({"resourceType":"Patient","active":true,"active":false})"), kInvalid,
                "Duplicate JSON key 'active' in Patient;");
  EXPECT_STATUS(Parse(R"({"resourceType":"Patient","meta":{"source":"a","source":"b"}})"), kInvalid,
                "Duplicate JSON key 'source' in Patient.meta;");
  EXPECT_STATUS(Parse(R"({"resourceType":"Patient","meta":{"versionId":"1","versionId":"2"}})"), kInvalid,
                "'versionId' in Patient.meta");
  EXPECT_STATUS(Parse(R"({"resourceType":"Patient","name":[{"family":"a"},{"family":"b","family":"c"}]})"), kInvalid,
                "Duplicate JSON key 'family' in Patient.name[1];");
  EXPECT_STATUS(Parse(R"({"resourceType":"Observation","valueQuantity":{"value":1,"unit":"mg","value":2}})"), kInvalid,
                "'value' in Observation.valueQuantity;");
  EXPECT_STATUS(Parse(R"({"resourceType":"Patient","contained":[{"resourceType":"Patient","resourceType":"Basic"}]})"),
                kInvalid, "'resourceType' in Patient.contained[0];");
  EXPECT_STATUS(Parse(R"({"resourceType":"Basic","x":{"a":{"b":[{"c":1,"c":1}]}}})"), kInvalid,
                "'c' in Basic.x.a.b[0];");
  EXPECT_STATUS(Parse(R"({"resourceType":"Patient","identifier":[{"value":"1","value":"2"}]})"), kInvalid,
                "'value' in Patient.identifier[0]");
  // Equal keys in different objects are fine, and so is a key equal to one of the parent's.
  EXPECT_OK(Parse(R"({"resourceType":"Basic","a":{"a":{"a":1}},"b":[{"a":1},{"a":2}],"c":{"b":1}})"));
}

TEST_F(ResourceParserTest, DuplicateKeysInLargeObjects) {
  // Past the linear scan's limit the check switches to a set: duplicates are still found, wherever they are.
  auto object = [](int keys, int duplicate_of) {
    std::string json = R"({"resourceType":"Basic","big":{)";
    for (int i = 0; i < keys; ++i) json += (i ? ",\"k" : "\"k") + std::to_string(i) + "\":" + std::to_string(i);
    if (duplicate_of >= 0) json += ",\"k" + std::to_string(duplicate_of) + "\":0";
    return json + "}}";
  };
  for (int keys : {31, 32, 33, 100, 5000}) {
    SCOPED_TRACE(keys);
    EXPECT_OK(Parse(object(keys, -1)));
    EXPECT_STATUS(Parse(object(keys, 0)), kInvalid, "Duplicate JSON key 'k0' in Basic.big") << keys;
    EXPECT_STATUS(Parse(object(keys, keys - 1)), kInvalid, "Duplicate JSON key 'k" + std::to_string(keys - 1) + "'")
        << keys;
  }
  // The top level too.
  std::string top = R"({"resourceType":"Basic")";
  for (int i = 0; i < 100; ++i) top += ",\"m" + std::to_string(i) + "\":true";
  EXPECT_OK(Parse(top + "}"));
  EXPECT_STATUS(Parse(top + R"(,"resourceType":"Basic"})"), kInvalid, "Duplicate JSON key 'resourceType'");
}

TEST_F(ResourceParserTest, PeekTypeAndIdRejectsADuplicateResourceTypeOrId) {
  auto peek = [&](std::string json) {
    size_t size = json.size();
    json.append(simdjson::SIMDJSON_PADDING, '\0');
    return parser_.PeekTypeAndId(std::string_view(json.data(), size), json.data() + json.size());
  };
  EXPECT_STATUS(peek(R"({"resourceType":"Patient","id":"v","resourceType":"Observation"})"), kInvalid,
                "Duplicate JSON key 'resourceType'");
  EXPECT_STATUS(peek(R"({"id":"a","resourceType":"Patient","id":"b"})"), kInvalid, "Duplicate JSON key 'id'");
}

// --- numbers of the FHIR primitive types integer, positiveInt, unsignedInt and decimal ---

TEST_F(ResourceParserTest, IntegerRangesAtTheirBoundaries) {
  // Observation.valueInteger: integer; Patient.telecom.rank: positiveInt; Patient.photo.size: unsignedInt.
  EXPECT_OK(Parse(R"({"resourceType":"Observation","valueInteger":2147483647})"));
  EXPECT_OK(Parse(R"({"resourceType":"Observation","valueInteger":-2147483648})"));
  EXPECT_OK(Parse(R"({"resourceType":"Observation","valueInteger":-0})"));
  EXPECT_STATUS(Parse(R"({"resourceType":"Observation","valueInteger":2147483648})"), kInvalid,
                "Observation.valueInteger: 2147483648 is out of range for FHIR integer (-2147483648 to 2147483647)");
  EXPECT_STATUS(Parse(R"({"resourceType":"Observation","valueInteger":-2147483649})"), kInvalid,
                "Observation.valueInteger: -2147483649 is out of range");
  EXPECT_STATUS(Parse(R"({"resourceType":"Observation","valueInteger":99999999999999999999999})"), kInvalid,
                "out of range for FHIR integer");
  EXPECT_OK(Parse(R"({"resourceType":"Patient","telecom":[{"rank":1},{"rank":2147483647}]})"));
  EXPECT_STATUS(Parse(R"({"resourceType":"Patient","telecom":[{"rank":1},{"rank":0}]})"), kInvalid,
                "Patient.telecom[1].rank: 0 is out of range for FHIR positiveInt (1 to 2147483647)");
  EXPECT_STATUS(Parse(R"({"resourceType":"Patient","telecom":[{"rank":2147483648}]})"), kInvalid, "positiveInt");
  EXPECT_OK(Parse(R"({"resourceType":"Patient","photo":[{"size":0},{"size":2147483647}]})"));
  EXPECT_STATUS(Parse(R"({"resourceType":"Patient","photo":[{"size":-1}]})"), kInvalid,
                "Patient.photo[0].size: -1 is out of range for FHIR unsignedInt (0 to 2147483647)");
  EXPECT_STATUS(Parse(R"({"resourceType":"Patient","photo":[{"size":-0}]})"), kInvalid, "unsignedInt");
  EXPECT_STATUS(Parse(R"({"resourceType":"Patient","photo":[{"size":4294967296}]})"), kInvalid, "unsignedInt");
}

TEST_F(ResourceParserTest, IntegersHaveNoFractionOrExponent) {
  for (const char* value : {"1.0", "1e3", "1E3", "-2.5", "0.0", "1e0"}) {
    EXPECT_STATUS(Parse(std::string(R"({"resourceType":"Observation","valueInteger":)") + value + "}"), kInvalid,
                  std::string("Observation.valueInteger: ") + value +
                      " is not a FHIR integer; write a whole number without fraction or exponent")
        << value;
  }
  // Still invalid JSON first.
  EXPECT_STATUS(Parse(R"({"resourceType":"Observation","valueInteger":01})"), kInvalid, "Invalid JSON");
  EXPECT_STATUS(Parse(R"({"resourceType":"Observation","valueInteger":1.})"), kInvalid, "Invalid JSON");
}

TEST_F(ResourceParserTest, CheckedNumbersMustBeJsonNumbers) {
  EXPECT_STATUS(Parse(R"({"resourceType":"Observation","valueInteger":"5"})"), kInvalid,
                "Observation.valueInteger must be a JSON number (FHIR integer), not a string");
  EXPECT_STATUS(Parse(R"({"resourceType":"Observation","valueQuantity":{"value":"1.5"}})"), kInvalid,
                "Observation.valueQuantity.value must be a JSON number (FHIR decimal), not a string");
  EXPECT_STATUS(Parse(R"({"resourceType":"Observation","valueQuantity":{"value":true}})"), kInvalid, "not a boolean");
  EXPECT_STATUS(Parse(R"({"resourceType":"Observation","valueQuantity":{"value":{}}})"), kInvalid, "not an object");
  // decimal: any JSON number, kept as written.
  auto out = ParseAndRender(R"({"resourceType":"Observation","valueQuantity":{"value":-1.50e+2}})");
  EXPECT_THAT(out, ::testing::HasSubstr(R"("valueQuantity":{"value":-1.50e+2})"));
  // Arrays of a checked type are checked item by item; null items (paired with `_x` extensions) stay allowed.
  EXPECT_OK(Parse(R"({"resourceType":"ClaimResponse","item":[{"noteNumber":[1,null,3]}]})"));
  EXPECT_STATUS(Parse(R"({"resourceType":"ClaimResponse","item":[{"noteNumber":[1,0]}]})"), kInvalid,
                "ClaimResponse.item[0].noteNumber[1]: 0 is out of range for FHIR positiveInt");
  // Numbers of other or unknown elements keep what they had: copied as written, whatever their form.
  EXPECT_OK(Parse(R"({"resourceType":"Observation","status":5,"x":1e300,"y":1.5})"));
}

TEST_F(ResourceParserTest, NumbersAreCheckedThroughDataTypesBackbonesAndContentReferences) {
  // Timing.repeat (an Element in a data type) inside Dosage inside MedicationRequest.
  EXPECT_STATUS(
      Parse(R"({"resourceType":"MedicationRequest","dosageInstruction":[{"timing":{"repeat":{"count":0}}}]})"),
      kInvalid, "MedicationRequest.dosageInstruction[0].timing.repeat.count: 0 is out of range for FHIR positiveInt");
  // Questionnaire.item.item is a contentReference to Questionnaire.item.
  EXPECT_STATUS(Parse(R"({"resourceType":"Questionnaire","item":[{"item":[{"item":[{"maxLength":1.5}]}]}]})"), kInvalid,
                "Questionnaire.item[0].item[0].item[0].maxLength: 1.5 is not a FHIR integer");
  // Observation.component.valueQuantity (a backbone element, then a data type).
  EXPECT_STATUS(Parse(R"({"resourceType":"Observation","component":[{"valueQuantity":{"value":"7"}}]})"), kInvalid,
                "Observation.component[0].valueQuantity.value must be a JSON number");
  // Quantity profiles (Age) are checked as Quantity.
  EXPECT_STATUS(Parse(R"({"resourceType":"Condition","onsetAge":{"value":"40"}})"), kInvalid,
                "Condition.onsetAge.value must be a JSON number");
}

TEST_F(ResourceParserTest, NumbersAreCheckedInExtensionsEverywhere) {
  // An extension of an element whose own members hold no checked number (CodeableConcept, Coding).
  EXPECT_STATUS(Parse(R"({"resourceType":"Observation","code":{"coding":[{"extension":[{"url":"u",)"
                      R"("valuePositiveInt":0}]}]}})"),
                kInvalid, "Observation.code.coding[0].extension[0].valuePositiveInt: 0 is out of range");
  // Nested extensions, modifierExtension, meta and primitive extensions (`_birthDate`).
  EXPECT_STATUS(Parse(R"({"resourceType":"Patient","extension":[{"url":"a","extension":[{"url":"b",)"
                      R"("valueUnsignedInt":-1}]}]})"),
                kInvalid, "Patient.extension[0].extension[0].valueUnsignedInt: -1 is out of range");
  EXPECT_STATUS(Parse(R"({"resourceType":"Patient","modifierExtension":[{"url":"a","valueInteger":1e2}]})"), kInvalid,
                "Patient.modifierExtension[0].valueInteger: 1e2 is not a FHIR integer");
  EXPECT_STATUS(Parse(R"({"resourceType":"Patient","meta":{"extension":[{"url":"a","valueDecimal":"1"}]}})"), kInvalid,
                "Patient.meta.extension[0].valueDecimal must be a JSON number");
  EXPECT_STATUS(Parse(R"({"resourceType":"Patient","birthDate":"2000-01-01","_birthDate":{"extension":)"
                      R"([{"url":"a","valueInteger":2147483648}]}})"),
                kInvalid, "Patient._birthDate.extension[0].valueInteger: 2147483648 is out of range");
  EXPECT_STATUS(Parse(R"({"resourceType":"Patient","extension":[{"url":"a","valueQuantity":{"value":"1"}}]})"),
                kInvalid, "Patient.extension[0].valueQuantity.value must be a JSON number");
}

TEST_F(ResourceParserTest, NumbersAreCheckedInContainedAndNestedResources) {
  // The contained resource's type comes after the member that needs it.
  EXPECT_STATUS(Parse(R"({"resourceType":"MedicationRequest","contained":[{"valueInteger":2147483648,)"
                      R"("resourceType":"Observation","id":"o"}]})"),
                kInvalid, "MedicationRequest.contained[0].valueInteger: 2147483648 is out of range");
  // An escaped resourceType names the same type.
  EXPECT_STATUS(Parse(R"({"resourceType":"Patient","contained":[{"resourceType":"Observ\u0061tion",)"
                      R"("valueInteger":1.5}]})"),
                kInvalid, "Patient.contained[0].valueInteger: 1.5 is not a FHIR integer");
  // A Bundle resource: Bundle.total is an unsignedInt, Bundle.entry.resource any resource.
  EXPECT_STATUS(Parse(R"({"resourceType":"Bundle","type":"collection","total":-1})"), kInvalid,
                "Bundle.total: -1 is out of range for FHIR unsignedInt");
  EXPECT_STATUS(Parse(R"({"resourceType":"Bundle","type":"collection","entry":[{"resource":)"
                      R"({"resourceType":"Patient","multipleBirthInteger":"2"}}]})"),
                kInvalid, "Bundle.entry[0].resource.multipleBirthInteger must be a JSON number");
  // Contained resources of unknown type, or without one, are walked as before (extensions still checked).
  EXPECT_OK(Parse(R"({"resourceType":"Patient","contained":[{"resourceType":"Nope","valueInteger":1.5},)"
                  R"({"valueInteger":1.5}]})"));
  EXPECT_STATUS(Parse(R"({"resourceType":"Patient","contained":[{"resourceType":"Nope","extension":)"
                      R"([{"url":"a","valueInteger":1.5}]}]})"),
                kInvalid, "not a FHIR integer");
  // Valid contained resources render as they were written.
  auto out = ParseAndRender(R"({"resourceType":"Patient","contained":[{"valueInteger":5,)"
                            R"("resourceType":"Observation"}]})");
  EXPECT_THAT(out, ::testing::HasSubstr(R"("contained":[{"valueInteger":5,"resourceType":"Observation"}])"));
}

// --- memory (regression: a thread's parser kept buffers for the largest body ever seen) ---

TEST_F(ResourceParserTest, ReleaseLargeBuffersFreesWhatALargeDocumentGrew) {
  std::string big = R"({"resourceType":"Basic","text":{"status":"generated","div":")";
  big.append(ResourceParser::kKeepBytes + (1 << 20), 'x');
  big.append("\"}}");
  ASSERT_OK(Parse(big));
  EXPECT_GT(parser_.retained_capacity(), ResourceParser::kKeepBytes);
  parser_.ReleaseLargeBuffers();
  EXPECT_LT(parser_.retained_capacity(), 64u);  // an empty std::string may keep its small inline buffer
  // Buffers for ordinary documents stay (no reallocation per request), and the parser still works.
  ASSERT_OK(Parse(R"({"resourceType":"Patient","id":"p1"})"));
  const size_t small = parser_.retained_capacity();
  EXPECT_GT(small, 0u);
  parser_.ReleaseLargeBuffers();
  EXPECT_EQ(parser_.retained_capacity(), small);
  ASSERT_OK(Parse(R"({"resourceType":"Patient","id":"p2"})"));
}

// --- references and compartments ---

TEST_F(ResourceParserTest, ObservationCompartmentFromSubjectAndPerformerOnly) {
  auto r = Parse(R"({"resourceType":"Observation","id":"o1",
    "subject":{"reference":"Patient/p1"},
    "performer":[{"reference":"Patient/p2"},{"reference":"Practitioner/d1"}],
    "focus":[{"reference":"Patient/p3"}],
    "status":"final"})");
  ASSERT_OK(r);
  EXPECT_THAT(r->compartment_patients, ElementsAre("p1", "p2"));
  EXPECT_THAT(r->references, ElementsAre(TypedId{"Patient", "p1"}, TypedId{"Patient", "p2"}, TypedId{"Patient", "p3"},
                                         TypedId{"Practitioner", "d1"}));
}

TEST_F(ResourceParserTest, EncounterParticipantIndividualIsNotACompartmentPath) {
  auto r = Parse(R"({"resourceType":"Encounter","participant":[{"individual":{"reference":"Patient/x"}}]})");
  ASSERT_OK(r);
  EXPECT_THAT(r->compartment_patients, IsEmpty());
  EXPECT_THAT(r->references, ElementsAre(TypedId{"Patient", "x"}));
  auto s = Parse(R"({"resourceType":"Encounter","subject":{"reference":"Patient/s"}})");
  ASSERT_OK(s);
  EXPECT_THAT(s->compartment_patients, ElementsAre("s"));
}

TEST_F(ResourceParserTest, CareTeamParticipantMemberIsACompartmentPath) {
  auto r = Parse(R"({"resourceType":"CareTeam",
    "participant":[{"member":{"reference":"Patient/y"}},{"member":{"reference":"Practitioner/d"}},
                   {"onBehalfOf":{"reference":"Patient/z"}}]})");
  ASSERT_OK(r);
  EXPECT_THAT(r->compartment_patients, ElementsAre("y"));
  EXPECT_THAT(r->references,
              ElementsAre(TypedId{"Patient", "y"}, TypedId{"Patient", "z"}, TypedId{"Practitioner", "d"}));
}

TEST_F(ResourceParserTest, PatientLinkOtherIsACompartmentPath) {
  auto r = Parse(R"({"resourceType":"Patient","id":"a",
    "link":[{"other":{"reference":"Patient/b"},"type":"seealso"}],
    "generalPractitioner":[{"reference":"Patient/c"}]})");
  ASSERT_OK(r);
  EXPECT_THAT(r->compartment_patients, ElementsAre("b"));
}

TEST_F(ResourceParserTest, ReferencesInExtensionsAndContainedAreNotCompartmentPaths) {
  auto r = Parse(R"({"resourceType":"Observation",
    "extension":[{"url":"u","valueReference":{"reference":"Patient/e"}}],
    "contained":[{"resourceType":"Observation","id":"c1","subject":{"reference":"Patient/c"}}],
    "subject":{"reference":"#c1"}})");
  ASSERT_OK(r);
  EXPECT_THAT(r->compartment_patients, IsEmpty());
  EXPECT_THAT(r->references, ElementsAre(TypedId{"Patient", "c"}, TypedId{"Patient", "e"}));
}

TEST_F(ResourceParserTest, ReferenceListIsSortedUniqueAndSkipsNonLiteralReferences) {
  auto r = Parse(R"({"resourceType":"Observation",
    "subject":{"reference":"Patient/p1"},
    "performer":[{"reference":"Patient/p1"},{"reference":"Patient/p1/_history/3"},
                 {"reference":"Organization/org-1"}],
    "encounter":{"reference":"Encounter/e1/_history/2"},
    "hasMember":[{"reference":"http://other.org/fhir/Observation/x"},{"reference":"#contained-1"},
                 {"reference":"Observation/o2"},{"reference":"Observation/o2"},
                 {"reference":"urn:uuid:0b4e8bd6-2f2e-4b1d-9c0e-6f8ad4a4d6a1"},
                 {"reference":"Observation/o3/_history/"},{"reference":"Observation/o4/extra"}],
    "derivedFrom":[{"reference":"Unknown/1"},{"reference":"Observation/bad_id"},{"reference":"Observation/"},
                   {"reference":"Observation"},{"reference":""},{"display":"no reference"}],
    "basedOn":[{"reference":"ServiceRequest/a"},{"reference":"CarePlan/b"}]})");
  ASSERT_OK(r);
  EXPECT_THAT(r->references,
              ElementsAre(TypedId{"CarePlan", "b"}, TypedId{"Encounter", "e1"}, TypedId{"Observation", "o2"},
                          TypedId{"Organization", "org-1"}, TypedId{"Patient", "p1"}, TypedId{"ServiceRequest", "a"}));
  EXPECT_THAT(r->compartment_patients, ElementsAre("p1"));
  EXPECT_EQ(r->unresolved_urn_references, 1);
  // Reference values are written unchanged when there is no resolver.
  std::string out = RenderResource(*r, "o1", 1, kLastUpdated);
  EXPECT_THAT(out, ::testing::HasSubstr(R"({"reference":"Patient/p1/_history/3"})"));
  EXPECT_THAT(out, ::testing::HasSubstr(R"({"reference":"http://other.org/fhir/Observation/x"})"));
  EXPECT_THAT(out, ::testing::HasSubstr(R"({"reference":"urn:uuid:0b4e8bd6-2f2e-4b1d-9c0e-6f8ad4a4d6a1"})"));
}

TEST_F(ResourceParserTest, NonStringReferenceIsKeptAsAValue) {
  auto out = ParseAndRender(R"({"resourceType":"Observation","subject":{"reference":{"odd":1}}})", "o1");
  EXPECT_THAT(out, ::testing::HasSubstr(R"("subject":{"reference":{"odd":1}})"));
}

TEST(ParseLiteralReferenceTest, Forms) {
  EXPECT_EQ(ParseLiteralReference("Patient/p1"), (TypedId{"Patient", "p1"}));
  EXPECT_EQ(ParseLiteralReference("Patient/p1/_history/2"), (TypedId{"Patient", "p1"}));
  EXPECT_EQ(ParseLiteralReference("Patient/p1/_history/"), std::nullopt);
  EXPECT_EQ(ParseLiteralReference("Patient/p1/other/2"), std::nullopt);
  EXPECT_EQ(ParseLiteralReference("Patient/p_1"), std::nullopt);
  EXPECT_EQ(ParseLiteralReference("Patient/"), std::nullopt);
  EXPECT_EQ(ParseLiteralReference("Patient"), std::nullopt);
  EXPECT_EQ(ParseLiteralReference("Foo/p1"), std::nullopt);
  EXPECT_EQ(ParseLiteralReference("#p1"), std::nullopt);
  EXPECT_EQ(ParseLiteralReference("https://example.org/fhir/Patient/p1"), std::nullopt);
  EXPECT_EQ(ParseLiteralReference("urn:uuid:0b4e8bd6-2f2e-4b1d-9c0e-6f8ad4a4d6a1"), std::nullopt);
  EXPECT_EQ(ParseLiteralReference(""), std::nullopt);
}

// --- resolver ---

class MapResolver : public ReferenceResolver {
 public:
  explicit MapResolver(std::map<std::string, std::string> map) : map_(std::move(map)) {}
  Result<std::optional<std::string>> Resolve(std::string_view reference) override {
    calls.emplace_back(reference);
    if (reference == "Patient?identifier=missing") {
      return Status::PreconditionFailed("conditional reference Patient?identifier=missing matches nothing");
    }
    auto it = map_.find(std::string(reference));
    if (it == map_.end()) return std::optional<std::string>();
    return std::optional<std::string>(it->second);
  }
  std::vector<std::string> calls;

 private:
  std::map<std::string, std::string> map_;
};

TEST_F(ResourceParserTest, ResolverRewritesUrnUuidReferences) {
  MapResolver resolver({{"urn:uuid:aaa", "Patient/p1"}, {"Patient?identifier=s|v", "Patient/p9"}});
  auto r = Parse(R"({"resourceType":"Observation",
    "subject":{"reference":"urn:uuid:aaa","display":"Jane"},
    "performer":[{"reference":"urn:uuid:bbb"},{"reference":"Patient?identifier=s|v"}],
    "hasMember":[{"reference":"Observation/o2"}]})",
                 &resolver);
  ASSERT_OK(r);
  EXPECT_EQ(resolver.calls,
            (std::vector<std::string>{"urn:uuid:aaa", "urn:uuid:bbb", "Patient?identifier=s|v", "Observation/o2"}));
  EXPECT_EQ(r->unresolved_urn_references, 1);
  EXPECT_THAT(r->compartment_patients, ElementsAre("p1", "p9"));
  EXPECT_THAT(r->references,
              ElementsAre(TypedId{"Observation", "o2"}, TypedId{"Patient", "p1"}, TypedId{"Patient", "p9"}));
  std::string out = RenderResource(*r, "o1", 1, kLastUpdated);
  EXPECT_THAT(out, ::testing::HasSubstr(R"("subject":{"reference":"Patient/p1","display":"Jane"})"));
  EXPECT_THAT(out, ::testing::HasSubstr(R"("performer":[{"reference":"urn:uuid:bbb"},{"reference":"Patient/p9"}])"));
  EXPECT_EQ(out.find("urn:uuid:aaa"), std::string::npos);
}

TEST_F(ResourceParserTest, ResolverErrorPropagates) {
  MapResolver resolver(std::map<std::string, std::string>{});
  auto r = Parse(R"({"resourceType":"Observation","subject":{"reference":"Patient?identifier=missing"}})", &resolver);
  EXPECT_STATUS(r, kPreconditionFailed, "Patient?identifier=missing matches nothing");
}

TEST_F(ResourceParserTest, ResolverSeesReferencesInNestedElements) {
  MapResolver resolver(std::map<std::string, std::string>{{"urn:uuid:x", "Organization/o1"}});
  auto r = Parse(R"({"resourceType":"Patient",
    "managingOrganization":{"reference":"urn:uuid:x"},
    "contact":[{"organization":{"reference":"urn:uuid:x"}}]})",
                 &resolver);
  ASSERT_OK(r);
  EXPECT_EQ(resolver.calls.size(), 2u);
  EXPECT_EQ(r->unresolved_urn_references, 0);
  EXPECT_THAT(r->references, ElementsAre(TypedId{"Organization", "o1"}));
}

// --- identifiers ---

TEST_F(ResourceParserTest, IdentifiersFromTopLevelIdentifierArrayOnly) {
  auto r = Parse(R"({"resourceType":"Patient",
    "identifier":[
      {"type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v2-0203","code":"MR"}]},
       "system":"urn:sys:mrn","value":"12345"},
      {"value":"no-system"},
      {"system":"urn:sys:only-system"},
      {"value":"v3","system":"urn:sys:3","assigner":{"identifier":{"system":"urn:org","value":"org-1"}}}
    ],
    "managingOrganization":{"identifier":{"system":"urn:org","value":"org-2"}},
    "contained":[{"resourceType":"Patient","identifier":[{"system":"urn:contained","value":"c"}]}],
    "generalPractitioner":[{"identifier":{"system":"urn:gp","value":"gp"}}]})");
  ASSERT_OK(r);
  using P = std::pair<std::string, std::string>;
  EXPECT_THAT(r->identifiers, ElementsAre(P{"urn:sys:mrn", "12345"}, P{"", "no-system"}, P{"urn:sys:3", "v3"}));
}

TEST_F(ResourceParserTest, IdentifierValuesAreKeptInTheOutput) {
  auto out = ParseAndRender(R"({"resourceType":"Patient","identifier":[{"system":"s","value":"v\"q"}]})", "p1");
  EXPECT_THAT(out, ::testing::HasSubstr(R"("identifier":[{"system":"s","value":"v\"q"}])"));
  auto r = Parse(R"({"resourceType":"Patient","identifier":[{"system":"s","value":"v\"q"}]})");
  ASSERT_OK(r);
  ASSERT_EQ(r->identifiers.size(), 1u);
  EXPECT_EQ(r->identifiers[0].second, "v\"q");
}

TEST_F(ResourceParserTest, NonStringIdentifierValueIsRejected) {
  EXPECT_STATUS(Parse(R"({"resourceType":"Patient","identifier":[{"system":"s","value":5}]})"), kInvalid,
                "identifier.value");
  EXPECT_STATUS(Parse(R"({"resourceType":"Patient","identifier":[{"system":true,"value":"v"}]})"), kInvalid,
                "identifier.system");
}

// --- buffers ---

TEST_F(ResourceParserTest, ParseInBufferWithAViewInsideALargerPaddedBuffer) {
  const std::string json = R"({"resourceType":"Patient","id":"in-buffer","active":true})";
  // Other content before and after the view; the bytes after it must not be read as part of the document.
  std::string buffer = R"([{"resourceType":"Bundle"},)" + json + R"(,{"resourceType":"Observation","id":"x"}])";
  buffer.append(simdjson::SIMDJSON_PADDING, ' ');
  size_t start = buffer.find(json);
  ASSERT_NE(start, std::string::npos);
  std::string_view view(buffer.data() + start, json.size());
  auto r = parser_.ParseInBuffer(view, buffer.data() + buffer.size(), nullptr);
  ASSERT_OK(r);
  EXPECT_EQ(r->type, "Patient");
  EXPECT_EQ(r->id, "in-buffer");
  EXPECT_EQ(r->body_rest, R"(,"active":true)");
  // The buffer is not modified.
  EXPECT_EQ(buffer.substr(start, json.size()), json);
}

TEST_F(ResourceParserTest, ParseInBufferWithoutEnoughPaddingFallsBackToACopy) {
  const std::string json = R"({"resourceType":"Patient","id":"short"})";
  auto r = parser_.ParseInBuffer(json, json.data() + json.size(), nullptr);
  ASSERT_OK(r);
  EXPECT_EQ(r->id, "short");
}

TEST_F(ResourceParserTest, ParseInBufferRejectsTrailingContentInsideTheView) {
  std::string buffer = R"({"resourceType":"Patient"} {"resourceType":"Patient"})";
  buffer.append(simdjson::SIMDJSON_PADDING, '\0');
  std::string_view view(buffer.data(), buffer.size() - simdjson::SIMDJSON_PADDING);
  EXPECT_STATUS(parser_.ParseInBuffer(view, buffer.data() + buffer.size(), nullptr), kInvalid, "");
}

TEST_F(ResourceParserTest, PeekTypeAndIdInAnyOrder) {
  std::string buffer = R"({"meta":{"versionId":"1"},"id":"p7","name":[{"family":"x"}],"resourceType":"Patient"})";
  size_t size = buffer.size();
  buffer.append(simdjson::SIMDJSON_PADDING, '\0');
  auto r = parser_.PeekTypeAndId(std::string_view(buffer.data(), size), buffer.data() + buffer.size());
  ASSERT_OK(r);
  EXPECT_EQ(r->type, "Patient");
  EXPECT_EQ(r->id, "p7");
}

TEST_F(ResourceParserTest, PeekTypeAndIdWithoutIdOrType) {
  std::string buffer = R"({"resourceType":"Observation","status":"final"})";
  size_t size = buffer.size();
  buffer.append(simdjson::SIMDJSON_PADDING, '\0');
  auto r = parser_.PeekTypeAndId(std::string_view(buffer.data(), size), buffer.data() + buffer.size());
  ASSERT_OK(r);
  EXPECT_EQ(r->type, "Observation");
  EXPECT_EQ(r->id, "");

  std::string empty = "{}";
  size = empty.size();
  empty.append(simdjson::SIMDJSON_PADDING, '\0');
  auto e = parser_.PeekTypeAndId(std::string_view(empty.data(), size), empty.data() + empty.size());
  ASSERT_OK(e);
  EXPECT_EQ(e->type, "");
  EXPECT_EQ(e->id, "");
}

TEST_F(ResourceParserTest, PeekTypeAndIdErrors) {
  auto peek = [&](std::string json) {
    size_t size = json.size();
    json.append(simdjson::SIMDJSON_PADDING, '\0');
    return parser_.PeekTypeAndId(std::string_view(json.data(), size), json.data() + json.size());
  };
  EXPECT_STATUS(peek("[1,2]"), kInvalid, "not an object");
  EXPECT_STATUS(peek(R"({"resourceType":"Patient","id":5})"), kInvalid, "id must be a string");
  EXPECT_STATUS(peek(R"({"resourceType":7})"), kInvalid, "resourceType must be a string");
}

}  // namespace
}  // namespace fhirlake::fhir
