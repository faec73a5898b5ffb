// Tests for JSON Patch (RFC 6902, with its Appendix A examples) and FHIRPath Patch (src/fhir/patch.cc).
#include "fhir/patch.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "test_util.h"

namespace fhirlake::fhir {
namespace {

// Equal as JSON values, regardless of member order (what RFC 6902 Appendix A shows is a value, not bytes).
::testing::AssertionResult SameJson(const Result<std::string>& actual, std::string_view expected) {
  if (!actual.ok()) return ::testing::AssertionFailure() << actual.status().ToString();
  if (nlohmann::json::parse(*actual) != nlohmann::json::parse(expected)) {
    return ::testing::AssertionFailure() << "got " << *actual << ", expected " << expected;
  }
  return ::testing::AssertionSuccess();
}

// RFC 6902 Appendix A applies to any JSON document; here the document also carries a resourceType (which the
// examples never touch) because the function patches resources.
std::string Doc(std::string_view members) {
  std::string doc = R"({"resourceType":"Basic")";
  if (!members.empty()) {
    doc += ',';
    doc += members;
  }
  doc += '}';
  return doc;
}

TEST(JsonPatchTest, A1AddObjectMember) {
  EXPECT_TRUE(SameJson(ApplyJsonPatch(Doc(R"("foo":"bar")"), R"([{"op":"add","path":"/baz","value":"qux"}])"),
                       Doc(R"("baz":"qux","foo":"bar")")));
}

TEST(JsonPatchTest, A2AddArrayElement) {
  EXPECT_TRUE(SameJson(ApplyJsonPatch(Doc(R"("foo":["bar","baz"])"), R"([{"op":"add","path":"/foo/1","value":"qux"}])"),
                       Doc(R"("foo":["bar","qux","baz"])")));
}

TEST(JsonPatchTest, A3RemoveObjectMember) {
  EXPECT_TRUE(SameJson(ApplyJsonPatch(Doc(R"("baz":"qux","foo":"bar")"), R"([{"op":"remove","path":"/baz"}])"),
                       Doc(R"("foo":"bar")")));
}

TEST(JsonPatchTest, A4RemoveArrayElement) {
  EXPECT_TRUE(SameJson(ApplyJsonPatch(Doc(R"("foo":["bar","qux","baz"])"), R"([{"op":"remove","path":"/foo/1"}])"),
                       Doc(R"("foo":["bar","baz"])")));
}

TEST(JsonPatchTest, A5ReplaceValue) {
  EXPECT_TRUE(
      SameJson(ApplyJsonPatch(Doc(R"("baz":"qux","foo":"bar")"), R"([{"op":"replace","path":"/baz","value":"boo"}])"),
               Doc(R"("baz":"boo","foo":"bar")")));
}

TEST(JsonPatchTest, A6MoveValue) {
  EXPECT_TRUE(SameJson(ApplyJsonPatch(Doc(R"("foo":{"bar":"baz","waldo":"fred"},"qux":{"corge":"grault"})"),
                                      R"([{"op":"move","from":"/foo/waldo","path":"/qux/thud"}])"),
                       Doc(R"("foo":{"bar":"baz"},"qux":{"corge":"grault","thud":"fred"})")));
}

TEST(JsonPatchTest, A7MoveArrayElement) {
  EXPECT_TRUE(SameJson(ApplyJsonPatch(Doc(R"("foo":["all","grass","cows","eat"])"),
                                      R"([{"op":"move","from":"/foo/1","path":"/foo/3"}])"),
                       Doc(R"("foo":["all","cows","eat","grass"])")));
}

TEST(JsonPatchTest, A8TestSuccess) {
  EXPECT_TRUE(SameJson(ApplyJsonPatch(Doc(R"("baz":"qux","foo":["a",2,"c"])"),
                                      R"([{"op":"test","path":"/baz","value":"qux"},
                                          {"op":"test","path":"/foo/1","value":2}])"),
                       Doc(R"("baz":"qux","foo":["a",2,"c"])")));
}

TEST(JsonPatchTest, A9TestFailure) {
  EXPECT_STATUS(ApplyJsonPatch(Doc(R"("baz":"qux")"), R"([{"op":"test","path":"/baz","value":"bar"}])"), kInvalid,
                R"(JSON Patch operation 0 (test at "/baz"): test failed: the value is "qux", not "bar")");
}

TEST(JsonPatchTest, A10AddNestedMemberObject) {
  EXPECT_TRUE(
      SameJson(ApplyJsonPatch(Doc(R"("foo":"bar")"), R"([{"op":"add","path":"/child","value":{"grandchild":{}}}])"),
               Doc(R"("foo":"bar","child":{"grandchild":{}})")));
}

TEST(JsonPatchTest, A11IgnoresUnrecognizedMembers) {
  EXPECT_TRUE(SameJson(ApplyJsonPatch(Doc(R"("foo":"bar")"), R"([{"op":"add","path":"/baz","value":"qux","xyz":123}])"),
                       Doc(R"("foo":"bar","baz":"qux")")));
}

TEST(JsonPatchTest, A12AddToNonexistentTargetFails) {
  EXPECT_STATUS(ApplyJsonPatch(Doc(R"("foo":"bar")"), R"([{"op":"add","path":"/baz/bat","value":"qux"}])"), kInvalid,
                R"(JSON Patch operation 0 (add at "/baz/bat"): member "baz" does not exist)");
}

TEST(JsonPatchTest, A13InvalidPatchDocument) {
  // Two "op" members: the RFC lets a parser reject the document, which this one does.
  EXPECT_STATUS(ApplyJsonPatch(Doc(R"("foo":"bar")"), R"([{"op":"add","path":"/baz","value":"qux","op":"remove"}])"),
                kInvalid, R"(the JSON Patch is not valid JSON: duplicate key "op")");
}

TEST(JsonPatchTest, A14TildeEscapeOrdering) {
  EXPECT_TRUE(SameJson(ApplyJsonPatch(Doc(R"("/":9,"~1":10)"), R"([{"op":"test","path":"/~01","value":10}])"),
                       Doc(R"("/":9,"~1":10)")));
  EXPECT_TRUE(SameJson(ApplyJsonPatch(Doc(R"("/":9,"~1":10)"), R"([{"op":"replace","path":"/~1","value":8}])"),
                       Doc(R"("/":8,"~1":10)")));
}

TEST(JsonPatchTest, A15ComparingStringsAndNumbers) {
  EXPECT_STATUS(ApplyJsonPatch(Doc(R"("/":9,"~1":10)"), R"([{"op":"test","path":"/~01","value":"10"}])"), kInvalid,
                "test failed");
}

TEST(JsonPatchTest, A16AddArrayValue) {
  EXPECT_TRUE(
      SameJson(ApplyJsonPatch(Doc(R"("foo":["bar"])"), R"([{"op":"add","path":"/foo/-","value":["abc","def"]}])"),
               Doc(R"("foo":["bar",["abc","def"]])")));
}

TEST(JsonPatchTest, CopyAndEndOfArray) {
  EXPECT_TRUE(SameJson(ApplyJsonPatch(Doc(R"("a":{"b":[1]},"c":[])"), R"([{"op":"copy","from":"/a/b","path":"/c/-"},
                                                                        {"op":"copy","from":"/a","path":"/d"}])"),
                       Doc(R"("a":{"b":[1]},"c":[[1]],"d":{"b":[1]})")));
}

TEST(JsonPatchTest, KeepsMemberOrderAndDecimalText) {
  ASSERT_OK_AND_ASSIGN(std::string out,
                       ApplyJsonPatch(R"({"resourceType":"Observation","id":"o1","valueQuantity":{"value":1.50},
                                         "note":[{"text":"x"}]})",
                                      R"([{"op":"add","path":"/status","value":"final"},
                                          {"op":"add","path":"/extra","value":0.10e1}])"));
  EXPECT_EQ(out, R"({"resourceType":"Observation","id":"o1","valueQuantity":{"value":1.50},"note":[{"text":"x"}],)"
                 R"("status":"final","extra":0.10e1})");
}

TEST(JsonPatchTest, TestComparesNumbersByValueAndObjectsRegardlessOfOrder) {
  EXPECT_OK(ApplyJsonPatch(Doc(R"("n":1.0,"o":{"a":1,"b":[true,null]})"),
                           R"([{"op":"test","path":"/n","value":1},
                               {"op":"test","path":"/o","value":{"b":[true,null],"a":1.00}}])"));
  EXPECT_STATUS(ApplyJsonPatch(Doc(R"("o":{"a":1})"), R"([{"op":"test","path":"/o","value":{"a":1,"b":2}}])"), kInvalid,
                "test failed");
  EXPECT_STATUS(ApplyJsonPatch(Doc(R"("a":[1,2])"), R"([{"op":"test","path":"/a","value":[2,1]}])"), kInvalid,
                "test failed");
}

TEST(JsonPatchTest, AllOrNothing) {
  // The second operation fails: the first one's change is not returned (the function returns no document).
  EXPECT_STATUS(ApplyJsonPatch(Doc(R"("a":1)"), R"([{"op":"replace","path":"/a","value":2},
                                                    {"op":"test","path":"/a","value":1}])"),
                kInvalid, "JSON Patch operation 1 (test at \"/a\")");
}

TEST(JsonPatchTest, EmptyPatchReturnsTheResourceMinified) {
  EXPECT_EQ(*ApplyJsonPatch(R"({ "resourceType" : "Patient", "id" : "p" })", "[]"),
            R"({"resourceType":"Patient","id":"p"})");
}

TEST(JsonPatchTest, RemoveAndReplaceNeedAnExistingTarget) {
  EXPECT_STATUS(ApplyJsonPatch(Doc(""), R"([{"op":"remove","path":"/nope"}])"), kInvalid,
                R"(operation 0 (remove at "/nope"): member "nope" does not exist)");
  EXPECT_STATUS(ApplyJsonPatch(Doc(""), R"([{"op":"replace","path":"/nope","value":1}])"), kInvalid, "does not exist");
  EXPECT_STATUS(ApplyJsonPatch(Doc(""), R"([{"op":"move","from":"/nope","path":"/x"}])"), kInvalid, "does not exist");
  EXPECT_STATUS(ApplyJsonPatch(Doc(""), R"([{"op":"copy","from":"/nope","path":"/x"}])"), kInvalid, "does not exist");
  EXPECT_STATUS(ApplyJsonPatch(Doc(""), R"([{"op":"test","path":"/nope","value":1}])"), kInvalid, "does not exist");
}

TEST(JsonPatchTest, ArrayIndexErrors) {
  std::string doc = Doc(R"("a":[1,2])");
  EXPECT_STATUS(ApplyJsonPatch(doc, R"([{"op":"add","path":"/a/3","value":0}])"), kInvalid,
                "array index 3 is out of range (the array has 2 elements)");
  EXPECT_OK(ApplyJsonPatch(doc, R"([{"op":"add","path":"/a/2","value":0}])"));  // == size: append
  EXPECT_STATUS(ApplyJsonPatch(doc, R"([{"op":"remove","path":"/a/2"}])"), kInvalid, "out of range");
  EXPECT_STATUS(ApplyJsonPatch(doc, R"([{"op":"replace","path":"/a/-","value":0}])"), kInvalid,
                "names no existing element");
  EXPECT_STATUS(ApplyJsonPatch(doc, R"([{"op":"remove","path":"/a/01"}])"), kInvalid, "'01' is not an array index");
  EXPECT_STATUS(ApplyJsonPatch(doc, R"([{"op":"remove","path":"/a/x"}])"), kInvalid, "'x' is not an array index");
  EXPECT_STATUS(ApplyJsonPatch(doc, R"([{"op":"add","path":"/a/0/b","value":0}])"), kInvalid,
                "the parent is a number, not an object or array");
}

TEST(JsonPatchTest, MalformedPatches) {
  std::string doc = Doc(R"("a":1)");
  EXPECT_STATUS(ApplyJsonPatch(doc, "[{"), kInvalid, "the JSON Patch is not valid JSON");
  EXPECT_STATUS(ApplyJsonPatch(doc, R"({"op":"remove","path":"/a"})"), kInvalid, "must be a JSON array");
  EXPECT_STATUS(ApplyJsonPatch(doc, R"([42])"), kInvalid, "JSON Patch operation 0: an operation must be a JSON object");
  EXPECT_STATUS(ApplyJsonPatch(doc, R"([{"path":"/a"}])"), kInvalid, "JSON Patch operation 0: missing 'op'");
  EXPECT_STATUS(ApplyJsonPatch(doc, R"([{"op":5,"path":"/a"}])"), kInvalid, "'op' is not a string");
  EXPECT_STATUS(ApplyJsonPatch(doc, R"([{"op":"test","path":"/a","value":1},{"op":"frobnicate","path":"/a"}])"),
                kInvalid, R"(JSON Patch operation 1 (frobnicate at "/a"): unknown op "frobnicate")");
  EXPECT_STATUS(ApplyJsonPatch(doc, R"([{"op":"remove"}])"), kInvalid, "operation 0 (remove): missing 'path'");
  EXPECT_STATUS(ApplyJsonPatch(doc, R"([{"op":"remove","path":"a"}])"), kInvalid,
                "'path': a JSON Pointer must be empty or start with '/'");
  EXPECT_STATUS(ApplyJsonPatch(doc, R"([{"op":"remove","path":"/a~2"}])"), kInvalid,
                "'~' must be followed by '0' or '1'");
  EXPECT_STATUS(ApplyJsonPatch(doc, R"([{"op":"remove","path":"/a~"}])"), kInvalid, "'~' must be followed");
  EXPECT_STATUS(ApplyJsonPatch(doc, R"([{"op":"add","path":"/b"}])"), kInvalid, "missing 'value'");
  EXPECT_STATUS(ApplyJsonPatch(doc, R"([{"op":"replace","path":"/a"}])"), kInvalid, "missing 'value'");
  EXPECT_STATUS(ApplyJsonPatch(doc, R"([{"op":"test","path":"/a"}])"), kInvalid, "missing 'value'");
  EXPECT_STATUS(ApplyJsonPatch(doc, R"([{"op":"move","path":"/b"}])"), kInvalid, "missing 'from'");
  EXPECT_STATUS(ApplyJsonPatch(doc, R"([{"op":"copy","path":"/b","from":"x"}])"), kInvalid, "'from': a JSON Pointer");
  EXPECT_STATUS(ApplyJsonPatch(doc, R"([{"op":"move","from":"/a","path":"/a/b"}])"), kInvalid,
                "cannot move a value into one of its own children");
  EXPECT_STATUS(ApplyJsonPatch(doc, R"([{"op":"remove","path":""}])"), kInvalid, "cannot remove the whole document");
  EXPECT_STATUS(ApplyJsonPatch(doc, R"([{"op":"add","path":"/b","value":1,"value":2}])"), kInvalid,
                "duplicate key \"value\"");
}

TEST(JsonPatchTest, NullValueIsAValue) {
  EXPECT_TRUE(
      SameJson(ApplyJsonPatch(Doc(R"("a":1)"), R"([{"op":"replace","path":"/a","value":null}])"), Doc(R"("a":null)")));
}

TEST(JsonPatchTest, BadResource) {
  EXPECT_STATUS(ApplyJsonPatch("{", "[]"), kInvalid, "the resource is not valid JSON");
  EXPECT_STATUS(ApplyJsonPatch("[]", "[]"), kInvalid, "the resource is not a JSON object");
  std::string deep = std::string(100, '[') + std::string(100, ']');
  EXPECT_STATUS(ApplyJsonPatch(Doc(R"("a":)" + deep), "[]"), kInvalid, "deeper than 64");
}

TEST(JsonPatchTest, ResourceTypeAndIdCannotChange) {
  std::string patient = R"({"resourceType":"Patient","id":"p1","active":true})";
  EXPECT_STATUS(ApplyJsonPatch(patient, R"([{"op":"replace","path":"/id","value":"p2"}])"), kInvalid,
                "must not change the resource's id");
  EXPECT_STATUS(ApplyJsonPatch(patient, R"([{"op":"remove","path":"/id"}])"), kInvalid, "resource's id");
  EXPECT_STATUS(ApplyJsonPatch(patient, R"([{"op":"replace","path":"/resourceType","value":"Group"}])"), kInvalid,
                "must not change the resource's resourceType");
  EXPECT_STATUS(ApplyJsonPatch(patient, R"([{"op":"replace","path":"","value":[]}])"), kInvalid, "non-object");
  // Replacing the whole document is fine when it stays the same resource.
  EXPECT_TRUE(
      SameJson(ApplyJsonPatch(patient, R"([{"op":"replace","path":"","value":{"resourceType":"Patient","id":"p1"}}])"),
               R"({"resourceType":"Patient","id":"p1"})"));
  // Writing the same id back is no change.
  EXPECT_OK(ApplyJsonPatch(patient, R"([{"op":"replace","path":"/id","value":"p1"}])"));
}

// --- FHIRPath Patch ---

constexpr std::string_view kPatient =
    R"({"resourceType":"Patient","id":"p1","active":true,)"
    R"("name":[{"use":"official","family":"Chalmers","given":["Peter","James"]},{"use":"usual","given":["Jim"]}],)"
    R"("telecom":[{"system":"phone","value":"555-1","use":"home"},{"system":"email","value":"p@example.org"}],)"
    R"("birthDate":"1974-12-25"})";

// A Parameters body with one operation whose parts are given as JSON (each part an object, comma-separated).
std::string Op(std::string_view parts) {
  return R"({"resourceType":"Parameters","parameter":[{"name":"operation","part":[)" + std::string(parts) + "]}]}";
}

std::string Ops(std::initializer_list<std::string_view> operations) {
  std::string body = R"({"resourceType":"Parameters","parameter":[)";
  bool first = true;
  for (std::string_view parts : operations) {
    if (!first) body += ",";
    first = false;
    body += R"({"name":"operation","part":[)" + std::string(parts) + "]}";
  }
  return body + "]}";
}

TEST(FhirPathPatchTest, AddPrimitiveToResource) {
  ASSERT_OK_AND_ASSIGN(
      std::string out,
      ApplyFhirPathPatch(R"({"resourceType":"Patient","id":"p1"})",
                         Op(R"({"name":"type","valueCode":"add"},{"name":"path","valueString":"Patient"},
                               {"name":"name","valueString":"birthDate"},{"name":"value","valueDate":"1974-12-25"})")));
  EXPECT_EQ(out, R"({"resourceType":"Patient","id":"p1","birthDate":"1974-12-25"})");
}

TEST(FhirPathPatchTest, AddRepeatingElementCreatesOrAppendsToTheArray) {
  // No telecom yet: the table says telecom repeats, so the value goes into a new array.
  ASSERT_OK_AND_ASSIGN(
      std::string out,
      ApplyFhirPathPatch(R"({"resourceType":"Patient","id":"p1"})",
                         Op(R"({"name":"type","valueCode":"add"},{"name":"path","valueString":"Patient"},
                               {"name":"name","valueString":"telecom"},
                               {"name":"value","valueContactPoint":{"system":"phone","value":"555-2"}})")));
  EXPECT_EQ(out, R"({"resourceType":"Patient","id":"p1","telecom":[{"system":"phone","value":"555-2"}]})");
  // A given name added to the official name: appended to its array.
  EXPECT_TRUE(SameJson(
      ApplyFhirPathPatch(
          R"({"resourceType":"Patient","id":"p1","name":[{"use":"official","given":["Peter"]},{"use":"usual"}]})",
          Op(R"j({"name":"type","valueCode":"add"},{"name":"path","valueString":"Patient.name.where(use='official')"},
                {"name":"name","valueString":"given"},{"name":"value","valueString":"Jim"})j")),
      R"({"resourceType":"Patient","id":"p1","name":[{"use":"official","given":["Peter","Jim"]},{"use":"usual"}]})"));
}

TEST(FhirPathPatchTest, AddComplexValueFromParts) {
  ASSERT_OK_AND_ASSIGN(
      std::string out,
      ApplyFhirPathPatch(R"({"resourceType":"Patient","id":"p1"})",
                         Op(R"({"name":"type","valueCode":"add"},{"name":"path","valueString":"Patient"},
                               {"name":"name","valueString":"name"},
                               {"name":"value","part":[{"name":"use","valueCode":"official"},
                                                       {"name":"family","valueString":"Chalmers"},
                                                       {"name":"given","valueString":"Peter"},
                                                       {"name":"given","valueString":"James"},
                                                       {"name":"period","part":[{"name":"start",
                                                                                 "valueDateTime":"2020"}]}]})")));
  EXPECT_EQ(out, R"({"resourceType":"Patient","id":"p1","name":[{"use":"official","family":"Chalmers",)"
                 R"("given":["Peter","James"],"period":{"start":"2020"}}]})");
}

TEST(FhirPathPatchTest, AddBackboneElementAndChoiceByBaseName) {
  EXPECT_TRUE(
      SameJson(ApplyFhirPathPatch(R"({"resourceType":"Patient","id":"p1"})",
                                  Ops({R"({"name":"type","valueCode":"add"},{"name":"path","valueString":"Patient"},
                                 {"name":"name","valueString":"contact"},
                                 {"name":"value","part":[{"name":"name","valueHumanName":{"family":"Doe"}},
                                                         {"name":"gender","valueCode":"female"}]})",
                                       R"({"name":"type","valueCode":"add"},{"name":"path","valueString":"Patient"},
                                 {"name":"name","valueString":"deceased"},{"name":"value","valueBoolean":false})"})),
               R"({"resourceType":"Patient","id":"p1","contact":[{"name":{"family":"Doe"},"gender":"female"}],)"
               R"("deceasedBoolean":false})"));
}

TEST(FhirPathPatchTest, AddErrors) {
  auto add = [](std::string_view path, std::string_view name, std::string_view value) {
    return ApplyFhirPathPatch(kPatient, Op(R"({"name":"type","valueCode":"add"},{"name":"path","valueString":")" +
                                           std::string(path) + R"("},{"name":"name","valueString":")" +
                                           std::string(name) + R"("},{"name":"value",)" + std::string(value) + "}"));
  };
  EXPECT_STATUS(
      add("Patient", "birthDate", R"("valueDate":"2000-01-01")"), kInvalid,
      R"(FHIRPath Patch operation 0 (add at "Patient"): "birthDate" does not repeat and already has a value)");
  EXPECT_STATUS(add("Patient", "nickname", R"("valueString":"x")"), kInvalid,
                R"("nickname" is not an element of Patient)");
  EXPECT_STATUS(add("Patient.name", "text", R"("valueString":"x")"), kInvalid, "the path matches 2 elements, not one");
  EXPECT_STATUS(add("Patient.contact", "name", R"("valueString":"x")"), kInvalid, "the path matches nothing");
  EXPECT_STATUS(add("Patient", "active", R"("valueCoding":{"code":"x"})"), kInvalid, "active is a primitive");
  EXPECT_STATUS(add("Patient", "maritalStatus", R"("valueCoding":{"code":"M"})"), kInvalid,
                "maritalStatus is a CodeableConcept, not a Coding");
  EXPECT_STATUS(add("Patient", "maritalStatus", R"("valueString":"M")"), kInvalid,
                "maritalStatus is a complex element, valueString is not");
  EXPECT_STATUS(add("Patient", "contact", R"("valueHumanName":{"family":"Doe"})"), kInvalid,
                "contact is a backbone element: give its value as parts");
  EXPECT_STATUS(add("Patient", "name", R"("part":[{"name":"nick","valueString":"x"}])"), kInvalid,
                R"("nick" is not an element of HumanName)");
  EXPECT_STATUS(
      add("Patient", "name", R"("part":[{"name":"family","valueString":"a"},{"name":"family","valueString":"b"}])"),
      kInvalid, "name.family does not repeat but is given twice");
  EXPECT_STATUS(add("Patient", "gender", R"("id":"v")"), kInvalid,
                "must have exactly one of value[x], resource or part");
  EXPECT_STATUS(ApplyFhirPathPatch(kPatient, Op(R"({"name":"type","valueCode":"add"},
                                                   {"name":"path","valueString":"Patient"},
                                                   {"name":"value","valueString":"x"})")),
                kInvalid, "add needs a 'name' part");
  EXPECT_STATUS(ApplyFhirPathPatch(kPatient, Op(R"({"name":"type","valueCode":"add"},
                                                   {"name":"path","valueString":"Patient"},
                                                   {"name":"name","valueString":"gender"})")),
                kInvalid, "add needs a 'value' part");
}

TEST(FhirPathPatchTest, InsertAtIndex) {
  auto insert = [](std::string_view path, int index, std::string_view value) {
    return ApplyFhirPathPatch(kPatient, Op(R"({"name":"type","valueCode":"insert"},{"name":"path","valueString":")" +
                                           std::string(path) + R"("},{"name":"index","valueInteger":)" +
                                           std::to_string(index) + R"(},{"name":"value",)" + std::string(value) + "}"));
  };
  ASSERT_OK_AND_ASSIGN(std::string out,
                       insert("Patient.telecom", 0, R"("valueContactPoint":{"system":"fax","value":"555-3"})"));
  EXPECT_NE(out.find(R"("telecom":[{"system":"fax","value":"555-3"},{"system":"phone")"), std::string::npos) << out;
  ASSERT_OK_AND_ASSIGN(out, insert("Patient.name[0].given", 1, R"("valueString":"P.")"));
  EXPECT_NE(out.find(R"("given":["Peter","P.","James"])"), std::string::npos) << out;
  ASSERT_OK_AND_ASSIGN(out, insert("Patient.name.where(use='official').given", 2, R"("valueString":"Jr")"));
  EXPECT_NE(out.find(R"("given":["Peter","James","Jr"])"), std::string::npos) << out;  // index == size: the end
  EXPECT_STATUS(insert("Patient.telecom", 3, R"("valueContactPoint":{"value":"x"})"), kInvalid,
                "index 3 is out of range (the list has 2 elements)");
  EXPECT_STATUS(insert("Patient.address", 0, R"("valueAddress":{"city":"x"})"), kInvalid, "the path matches nothing");
  EXPECT_STATUS(insert("Patient.birthDate", 0, R"("valueDate":"2000")"), kInvalid,
                R"("birthDate" is not a repeating element)");
  EXPECT_STATUS(insert("Patient.name.given", 0, R"("valueString":"x")"), kInvalid, "matches 2 elements, not one");
  EXPECT_STATUS(insert("Patient.telecom[0]", 0, R"("valueString":"x")"), kInvalid,
                "the path must end with the name of a repeating element");
  EXPECT_STATUS(ApplyFhirPathPatch(kPatient, Op(R"({"name":"type","valueCode":"insert"},
                                                   {"name":"path","valueString":"Patient.telecom"},
                                                   {"name":"value","valueContactPoint":{"value":"x"}})")),
                kInvalid, "insert needs an 'index' part");
}

TEST(FhirPathPatchTest, DeleteElements) {
  auto del = [](std::string_view resource, std::string_view path) {
    return ApplyFhirPathPatch(resource, Op(R"({"name":"type","valueCode":"delete"},{"name":"path","valueString":")" +
                                           std::string(path) + R"("})"));
  };
  ASSERT_OK_AND_ASSIGN(std::string out, del(kPatient, "Patient.birthDate"));
  EXPECT_EQ(out.find("birthDate"), std::string::npos) << out;
  ASSERT_OK_AND_ASSIGN(out, del(kPatient, "Patient.active"));
  EXPECT_EQ(out.find("active"), std::string::npos) << out;
  ASSERT_OK_AND_ASSIGN(out, del(kPatient, "Patient.telecom.where(system='email')"));
  EXPECT_NE(out.find(R"("telecom":[{"system":"phone","value":"555-1","use":"home"}])"), std::string::npos) << out;
  ASSERT_OK_AND_ASSIGN(out, del(kPatient, "Patient.name.where(use='official').given.last()"));
  EXPECT_NE(out.find(R"("given":["Peter"])"), std::string::npos) << out;
  // Deleting the only given name of the usual name removes the member, not just the array's element.
  ASSERT_OK_AND_ASSIGN(out, del(kPatient, "Patient.name[1].given"));
  EXPECT_NE(out.find(R"(,{"use":"usual"}],)"), std::string::npos) << out;
  // Deleting an object's last member removes the object (FHIR JSON has no empty objects), and so on upwards.
  ASSERT_OK_AND_ASSIGN(
      out, del(R"({"resourceType":"Patient","id":"p1","name":[{"family":"X"}]})", "Patient.name[0].family"));
  EXPECT_EQ(out, R"({"resourceType":"Patient","id":"p1"})");
  // A primitive's `_name` sibling (its id and extensions) goes with it, position by position in arrays.
  ASSERT_OK_AND_ASSIGN(out, del(R"({"resourceType":"Patient","id":"p1","birthDate":"1970","_birthDate":{"id":"b"},)"
                                R"("name":[{"given":["A","B"],"_given":[{"id":"a"},null]}]})",
                                "Patient.name.given.first()"));
  ASSERT_OK_AND_ASSIGN(out, del(out, "Patient.birthDate"));
  EXPECT_EQ(out, R"({"resourceType":"Patient","id":"p1","name":[{"given":["B"]}]})");
  // Nothing matches: no error, nothing changes.
  ASSERT_OK_AND_ASSIGN(out, del(kPatient, "Patient.address"));
  EXPECT_TRUE(SameJson(out, kPatient));
  ASSERT_OK_AND_ASSIGN(out, del(kPatient, "Patient.name.where(use='old')"));
  EXPECT_TRUE(SameJson(out, kPatient));
  EXPECT_STATUS(del(kPatient, "Patient.name"), kInvalid, "the path matches 2 elements, not one");
  EXPECT_STATUS(del(kPatient, "Patient"), kInvalid, "cannot delete the resource itself");
  EXPECT_STATUS(del(kPatient, "Patient.id"), kInvalid, "must not change the resource's id");
}

TEST(FhirPathPatchTest, ReplaceValues) {
  auto replace = [](std::string_view path, std::string_view value) {
    return ApplyFhirPathPatch(kPatient, Op(R"({"name":"type","valueCode":"replace"},{"name":"path","valueString":")" +
                                           std::string(path) + R"("},{"name":"value",)" + std::string(value) + "}"));
  };
  ASSERT_OK_AND_ASSIGN(std::string out, replace("Patient.birthDate", R"("valueDate":"1975-01-01")"));
  EXPECT_NE(out.find(R"("birthDate":"1975-01-01")"), std::string::npos) << out;
  ASSERT_OK_AND_ASSIGN(out, replace("Patient.active", R"("valueBoolean":false)"));
  EXPECT_NE(out.find(R"("active":false,)"), std::string::npos) << out;
  ASSERT_OK_AND_ASSIGN(
      out, replace("Patient.telecom.where(system='phone' and use='home').value", R"("valueString":"555-9")"));
  EXPECT_NE(out.find(R"({"system":"phone","value":"555-9","use":"home"})"), std::string::npos) << out;
  ASSERT_OK_AND_ASSIGN(out, replace("Patient.name.where(use='usual')", R"("valueHumanName":{"text":"Jimmy"})"));
  EXPECT_NE(out.find(R"("name":[{"use":"official","family":"Chalmers","given":["Peter","James"]},{"text":"Jimmy"}])"),
            std::string::npos)
      << out;
  ASSERT_OK_AND_ASSIGN(out, replace("Patient.name.first().given[1]", R"("valueString":"Jay")"));
  EXPECT_NE(out.find(R"("given":["Peter","Jay"])"), std::string::npos) << out;
  EXPECT_STATUS(replace("Patient.gender", R"("valueCode":"male")"), kInvalid,
                R"(FHIRPath Patch operation 0 (replace at "Patient.gender"): the path matches nothing)");
  EXPECT_STATUS(replace("Patient.telecom", R"("valueContactPoint":{"value":"x"})"), kInvalid,
                "the path matches 2 elements, not one");
  EXPECT_STATUS(replace("Patient.birthDate", R"("valuePeriod":{"start":"2000"})"), kInvalid,
                "birthDate is a primitive, but valuePeriod is not");
  EXPECT_STATUS(replace("Patient.id", R"("valueId":"p2")"), kInvalid, "must not change the resource's id");
  EXPECT_STATUS(ApplyFhirPathPatch(kPatient, Op(R"({"name":"type","valueCode":"replace"},
                                                   {"name":"path","valueString":"Patient.active"})")),
                kInvalid, "replace needs a 'value' part");
}

TEST(FhirPathPatchTest, ReplaceKeepsDecimalPrecision) {
  ASSERT_OK_AND_ASSIGN(
      std::string out,
      ApplyFhirPathPatch(R"({"resourceType":"Observation","id":"o","valueQuantity":{"value":1.50,"unit":"mg"}})",
                         Op(R"({"name":"type","valueCode":"replace"},
                               {"name":"path","valueString":"Observation.valueQuantity.value"},
                               {"name":"value","valueDecimal":2.250})")));
  EXPECT_EQ(out, R"({"resourceType":"Observation","id":"o","valueQuantity":{"value":2.250,"unit":"mg"}})");
}

TEST(FhirPathPatchTest, MoveWithinAList) {
  auto move = [](std::string_view path, int source, int destination) {
    return ApplyFhirPathPatch(
        kPatient, Op(R"({"name":"type","valueCode":"move"},{"name":"path","valueString":")" + std::string(path) +
                     R"("},{"name":"source","valueInteger":)" + std::to_string(source) +
                     R"(},{"name":"destination","valueInteger":)" + std::to_string(destination) + "}"));
  };
  ASSERT_OK_AND_ASSIGN(std::string out, move("Patient.telecom", 1, 0));
  EXPECT_NE(out.find(R"("telecom":[{"system":"email","value":"p@example.org"},{"system":"phone")"), std::string::npos)
      << out;
  ASSERT_OK_AND_ASSIGN(out, move("Patient.name.where(use='official').given", 0, 1));
  EXPECT_NE(out.find(R"("given":["James","Peter"])"), std::string::npos) << out;
  EXPECT_STATUS(move("Patient.telecom", 2, 0), kInvalid, "out of range (the list has 2 elements)");
  EXPECT_STATUS(move("Patient.telecom", 0, 2), kInvalid, "out of range");
  EXPECT_STATUS(move("Patient.address", 0, 0), kInvalid, "the path matches nothing");
  EXPECT_STATUS(ApplyFhirPathPatch(kPatient, Op(R"({"name":"type","valueCode":"move"},
                                                   {"name":"path","valueString":"Patient.telecom"},
                                                   {"name":"source","valueInteger":0})")),
                kInvalid, "move needs 'source' and 'destination' parts");
}

TEST(FhirPathPatchTest, MoveKeepsPrimitiveExtensionsInStep) {
  ASSERT_OK_AND_ASSIGN(
      std::string out,
      ApplyFhirPathPatch(
          R"({"resourceType":"Patient","id":"p","name":[{"given":["A","B"],"_given":[{"id":"a"},null]}]})",
          Op(R"({"name":"type","valueCode":"move"},{"name":"path","valueString":"Patient.name.given"},
                               {"name":"source","valueInteger":0},{"name":"destination","valueInteger":1})")));
  EXPECT_EQ(out, R"({"resourceType":"Patient","id":"p","name":[{"given":["B","A"],"_given":[null,{"id":"a"}]}]})");
}

TEST(FhirPathPatchTest, OperationsApplyInOrder) {
  EXPECT_TRUE(SameJson(
      ApplyFhirPathPatch(R"({"resourceType":"Patient","id":"p1"})",
                         Ops({R"({"name":"type","valueCode":"add"},{"name":"path","valueString":"Patient"},
                                 {"name":"name","valueString":"active"},{"name":"value","valueBoolean":true})",
                              R"({"name":"type","valueCode":"replace"},{"name":"path","valueString":"Patient.active"},
                                 {"name":"value","valueBoolean":false})"})),
      R"({"resourceType":"Patient","id":"p1","active":false})"));
}

TEST(FhirPathPatchTest, BadInput) {
  EXPECT_STATUS(ApplyFhirPathPatch(kPatient, "nope"), kInvalid, "the FHIRPath Patch is not valid JSON");
  EXPECT_STATUS(ApplyFhirPathPatch(kPatient, R"({"resourceType":"Patient"})"), kInvalid,
                "a FHIRPath Patch must be a Parameters resource");
  EXPECT_STATUS(ApplyFhirPathPatch(kPatient, "[]"), kInvalid, "must be a Parameters resource");
  EXPECT_STATUS(ApplyFhirPathPatch(R"({"resourceType":"Nope"})", Op("")), kInvalid, "no R4 resourceType");
  EXPECT_STATUS(ApplyFhirPathPatch(kPatient, R"({"resourceType":"Parameters","parameter":[{"name":"op"}]})"), kInvalid,
                "FHIRPath Patch operation 0: every parameter of a FHIRPath Patch must be named 'operation'");
  EXPECT_STATUS(ApplyFhirPathPatch(kPatient, R"({"resourceType":"Parameters","parameter":[{"name":"operation"}]})"),
                kInvalid, "the operation has no parts");
  EXPECT_STATUS(ApplyFhirPathPatch(kPatient, Op(R"({"name":"path","valueString":"Patient.active"})")), kInvalid,
                "the operation has no 'type' part");
  EXPECT_STATUS(ApplyFhirPathPatch(kPatient, Op(R"({"name":"type","valueCode":"delete"})")), kInvalid,
                "FHIRPath Patch operation 0 (delete): the operation has no 'path' part");
  EXPECT_STATUS(ApplyFhirPathPatch(kPatient, Op(R"({"name":"type","valueCode":"upsert"},
                                                   {"name":"path","valueString":"Patient.active"})")),
                kInvalid, R"(unknown operation type "upsert")");
  EXPECT_STATUS(ApplyFhirPathPatch(kPatient, Op(R"({"name":"type","valueCode":"delete"},
                                                   {"name":"path","valueString":"Patient.active"},
                                                   {"name":"colour","valueString":"red"})")),
                kInvalid, R"(unknown part "colour")");
  EXPECT_STATUS(ApplyFhirPathPatch(kPatient, Op(R"({"name":"type","valueCode":"delete"},
                                                   {"name":"type","valueCode":"delete"},
                                                   {"name":"path","valueString":"Patient.active"})")),
                kInvalid, "two 'type' parts");
  EXPECT_STATUS(ApplyFhirPathPatch(kPatient, Op(R"({"name":"type","valueCode":"insert"},
                                                   {"name":"path","valueString":"Patient.name"},
                                                   {"name":"index","valueInteger":-1})")),
                kInvalid, "'index' must be a non-negative integer");
}

TEST(FhirPathPatchTest, BadPaths) {
  auto del = [](std::string_view path) {
    return ApplyFhirPathPatch(kPatient, Op(R"({"name":"type","valueCode":"delete"},{"name":"path","valueString":")" +
                                           std::string(path) + R"("})"));
  };
  EXPECT_STATUS(del("Observation.status"), kInvalid, "the path must start with the resource type Patient");
  EXPECT_STATUS(del("Patient.nickname"), kInvalid, R"("nickname" is not an element of Patient)");
  EXPECT_STATUS(del("Patient.name.nick"), kInvalid, R"("nick" is not an element of HumanName)");
  EXPECT_STATUS(del("Patient..name"), kInvalid, "expected an element name");
  EXPECT_STATUS(del("Patient.name["), kInvalid, "expected an index");
  EXPECT_STATUS(del("Patient.name[0"), kInvalid, "expected ']'");
  EXPECT_STATUS(del("Patient.name.exists()"), kInvalid, "unsupported function exists()");
  EXPECT_STATUS(del("Patient.name.where(use!='x')"), kInvalid, "where() supports only `element = literal`");
  EXPECT_STATUS(del("Patient.name.where(use='x)"), kInvalid, "unterminated string literal");
  EXPECT_STATUS(del("Patient.name.where(use='x'"), kInvalid, "expected ')'");
  EXPECT_STATUS(del("Patient.name or Patient.telecom"), kInvalid, "expected '.' or '['");
  EXPECT_STATUS(del(""), kInvalid, "expected an element name");
}

TEST(FhirPathPatchTest, WhereLiterals) {
  std::string obs = R"({"resourceType":"Observation","id":"o","component":[{"valueInteger":3,"code":{"text":"a"}},)"
                    R"({"valueBoolean":true,"code":{"text":"it's"}},{"valueQuantity":{"value":1.0}}]})";
  auto del = [&](std::string_view path) {
    return ApplyFhirPathPatch(obs, Op(R"({"name":"type","valueCode":"delete"},{"name":"path","valueString":")" +
                                      std::string(path) + R"("})"));
  };
  ASSERT_OK_AND_ASSIGN(std::string out, del("Observation.component.where(valueInteger=3)"));
  EXPECT_EQ(out.find("valueInteger"), std::string::npos) << out;
  ASSERT_OK_AND_ASSIGN(out, del("Observation.component.where(valueBoolean = true)"));
  EXPECT_EQ(out.find("valueBoolean"), std::string::npos) << out;
  ASSERT_OK_AND_ASSIGN(out, del("Observation.component.where(code.text='it\\\\'s')"));
  EXPECT_EQ(out.find("it's"), std::string::npos) << out;
  ASSERT_OK_AND_ASSIGN(out, del("Observation.component.where(valueQuantity.value=1)"));
  EXPECT_EQ(out.find("valueQuantity"), std::string::npos) << out;
}

}  // namespace
}  // namespace fhirlake::fhir
