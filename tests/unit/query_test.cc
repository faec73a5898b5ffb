// Tests of search/query.h: ParseSearchQuery turns query parameters into normalised SearchValues for every parameter
// type and modifier, resolves chains and _has, parses the result parameters, rejects malformed input with kInvalid
// naming the parameter (or ignores it under lenient handling), and writes applied_query in a canonical order.
#include "search/query.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "test_util.h"

namespace fhirlake::search {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using Params = std::vector<std::pair<std::string, std::string>>;

constexpr std::string_view kBase = "http://localhost:8080/datastore/ds1/r4";
constexpr int64_t kYear1970End = 365LL * 86400000 - 1;
constexpr int64_t k20200304 = 1583280000000;  // 2020-03-04T00:00:00Z

Result<SearchQuery> Parse(const std::string& type, const Params& params, bool lenient = false) {
  return ParseSearchQuery(type.empty() ? std::vector<std::string>{} : std::vector<std::string>{type}, params, kBase,
                          lenient);
}

// The single value of the single criterion of `type?name=value`.
SearchValue OneValue(const std::string& type, const std::string& name, const std::string& value,
                     Modifier want_modifier = Modifier::kNone) {
  auto q = Parse(type, {{name, value}});
  EXPECT_TRUE(q.ok()) << name << "=" << value << ": " << q.status().ToString();
  if (!q.ok() || q->criteria.size() != 1 || q->criteria[0].values.size() != 1) {
    ADD_FAILURE() << name << "=" << value << " did not give one criterion with one value";
    return {};
  }
  EXPECT_EQ(q->criteria[0].modifier, want_modifier) << name;
  return q->criteria[0].values[0];
}

// kInvalid whose message names `mention` (the parameter, usually).
void ExpectInvalid(const std::string& type, const Params& params, const std::string& mention) {
  auto q = Parse(type, params);
  std::string shown;
  for (const auto& [n, v] : params) shown += n + "=" + v + "&";
  EXPECT_STATUS(q, kInvalid, mention) << shown;
}

// ---- string -------------------------------------------------------------------------------------------------

TEST(ParseSearchQueryTest, StringIsNormalisedByDefault) {
  auto q = Parse("Patient", {{"name", "  Ábel  MÜLLER "}});
  ASSERT_OK(q);
  ASSERT_EQ(q->criteria.size(), 1u);
  EXPECT_EQ(q->criteria[0].param, FindParam("Patient", "name"));
  EXPECT_EQ(q->criteria[0].modifier, Modifier::kNone);
  ASSERT_EQ(q->criteria[0].values.size(), 1u);
  EXPECT_EQ(q->criteria[0].values[0].s1, "abel muller");
}

TEST(ParseSearchQueryTest, StringExactKeepsTheValueAsGiven) {
  EXPECT_EQ(OneValue("Patient", "family:exact", "Ábel", Modifier::kExact).s1, "Ábel");
}

TEST(ParseSearchQueryTest, StringContainsIsNormalised) {
  EXPECT_EQ(OneValue("Patient", "name:contains", "ETTE", Modifier::kContains).s1, "ette");
}

TEST(ParseSearchQueryTest, StringMissing) {
  auto q = Parse("Patient", {{"name:missing", "true"}, {"family:missing", "false"}});
  ASSERT_OK(q);
  ASSERT_EQ(q->criteria.size(), 2u);
  EXPECT_EQ(q->criteria[0].modifier, Modifier::kMissing);
  EXPECT_TRUE(q->criteria[0].missing);
  EXPECT_THAT(q->criteria[0].values, IsEmpty());
  EXPECT_FALSE(q->criteria[1].missing);
}

TEST(ParseSearchQueryTest, CommaIsOrAndEscapedCommaIsNot) {
  auto q = Parse("Patient", {{"family", "Lemke,Streich"}, {"given", R"(a\,b)"}});
  ASSERT_OK(q);
  ASSERT_EQ(q->criteria.size(), 2u);
  ASSERT_EQ(q->criteria[0].values.size(), 2u);
  EXPECT_EQ(q->criteria[0].values[0].s1, "lemke");
  EXPECT_EQ(q->criteria[0].values[1].s1, "streich");
  ASSERT_EQ(q->criteria[1].values.size(), 1u);
  EXPECT_EQ(q->criteria[1].values[0].s1, "a,b");
}

TEST(ParseSearchQueryTest, RepeatedParameterIsAnd) {
  auto q = Parse("Patient", {{"given", "a"}, {"given", "b"}});
  ASSERT_OK(q);
  EXPECT_EQ(q->criteria.size(), 2u);
}

TEST(ParseSearchQueryTest, StringErrorsNameTheParameter) {
  ExpectInvalid("Patient", {{"name", ""}}, "name");
  ExpectInvalid("Patient", {{"name:missing", "maybe"}}, "name:missing");
  ExpectInvalid("Patient", {{"name:text", "x"}}, "name:text");
  ExpectInvalid("Patient", {{"name:below", "x"}}, "below");
  ExpectInvalid("Patient", {{"name", std::string(5000, 'a')}}, "name");
}

// ---- token --------------------------------------------------------------------------------------------------

TEST(ParseSearchQueryTest, TokenForms) {
  SearchValue code = OneValue("Patient", "gender", "female");
  EXPECT_EQ(code.s2, "female");
  EXPECT_TRUE(code.has_code);
  EXPECT_FALSE(code.has_system);

  SearchValue both = OneValue("Observation", "code", "http://loinc.org|8480-6");
  EXPECT_EQ(both.s1, "http://loinc.org");
  EXPECT_EQ(both.s2, "8480-6");
  EXPECT_TRUE(both.has_system);
  EXPECT_TRUE(both.has_code);

  SearchValue no_system = OneValue("Observation", "code", "|8480-6");
  EXPECT_EQ(no_system.s1, "");
  EXPECT_EQ(no_system.s2, "8480-6");
  EXPECT_TRUE(no_system.has_system);  // "|code": the system must be absent
  EXPECT_TRUE(no_system.has_code);

  SearchValue system_only = OneValue("Observation", "code", "http://loinc.org|");
  EXPECT_EQ(system_only.s1, "http://loinc.org");
  EXPECT_TRUE(system_only.has_system);
  EXPECT_FALSE(system_only.has_code);
}

TEST(ParseSearchQueryTest, TokenEscapedBarIsPartOfTheCode) {
  SearchValue v = OneValue("Patient", "identifier", R"(a\|b)");
  EXPECT_EQ(v.s2, "a|b");
  EXPECT_FALSE(v.has_system);
}

TEST(ParseSearchQueryTest, TokenPrefixIsLiteral) { EXPECT_EQ(OneValue("Observation", "code", "ge123").s2, "ge123"); }

TEST(ParseSearchQueryTest, TokenText) {
  SearchValue v = OneValue("Observation", "code:text", "Blood   PRESSURE", Modifier::kText);
  EXPECT_EQ(v.s2, "blood pressure");
}

TEST(ParseSearchQueryTest, TokenOfType) {
  SearchValue v = OneValue("Patient", "identifier:of-type", "http://terminology.hl7.org/CodeSystem/v2-0203|MR|12345",
                           Modifier::kOfType);
  EXPECT_EQ(v.s1, "http://terminology.hl7.org/CodeSystem/v2-0203|MR");
  EXPECT_EQ(v.s2, "12345");
  EXPECT_TRUE(v.has_system);
  EXPECT_TRUE(v.has_code);
}

TEST(ParseSearchQueryTest, TokenNotAndMissing) {
  auto q = Parse("Patient", {{"gender:not", "male,female"}, {"identifier:missing", "true"}});
  ASSERT_OK(q);
  ASSERT_EQ(q->criteria.size(), 2u);
  EXPECT_EQ(q->criteria[0].modifier, Modifier::kNot);
  EXPECT_EQ(q->criteria[0].values.size(), 2u);
  EXPECT_EQ(q->criteria[1].modifier, Modifier::kMissing);
  EXPECT_TRUE(q->criteria[1].missing);
}

TEST(ParseSearchQueryTest, TokenErrorsNameTheParameter) {
  ExpectInvalid("Patient", {{"gender", ""}}, "gender");
  ExpectInvalid("Patient", {{"gender", "|"}}, "gender");
  ExpectInvalid("Patient", {{"gender:exact", "male"}}, "gender:exact");
  ExpectInvalid("Patient", {{"gender:contains", "male"}}, "gender:contains");
  ExpectInvalid("Patient", {{"gender:nosuchmodifier", "male"}}, "nosuchmodifier");
  ExpectInvalid("Patient", {{"gender:text", ""}}, "gender:text");
  ExpectInvalid("Patient", {{"identifier:of-type", "sys|MR"}}, "identifier:of-type");
  ExpectInvalid("Patient", {{"identifier:of-type", "sys||123"}}, "identifier:of-type");
  ExpectInvalid("Patient", {{"gender:Patient", "male"}}, "gender:Patient");
  ExpectInvalid("Patient", {{"gender", std::string(101, ',')}}, "gender");
}

// ---- _id and _lastUpdated -----------------------------------------------------------------------------------

TEST(ParseSearchQueryTest, IdValues) {
  auto q = Parse("Patient", {{"_id", "a1,b-2.c"}});
  ASSERT_OK(q);
  ASSERT_EQ(q->criteria.size(), 1u);
  ASSERT_EQ(q->criteria[0].values.size(), 2u);
  EXPECT_EQ(q->criteria[0].values[0].s2, "a1");
  EXPECT_EQ(q->criteria[0].values[1].s2, "b-2.c");
  ExpectInvalid("Patient", {{"_id", "a/b"}}, "_id");
  ExpectInvalid("Patient", {{"_id", std::string(65, 'a')}}, "_id");
  ExpectInvalid("Patient", {{"_id:exact", "a"}}, "_id:exact");
  ExpectInvalid("Patient", {{"_id", std::string("a\0b", 3)}}, "_id");
}

TEST(ParseSearchQueryTest, LastUpdated) {
  SearchValue v = OneValue("Patient", "_lastUpdated", "gt2020-03-04");
  EXPECT_EQ(v.prefix, Prefix::kGt);
  EXPECT_EQ(v.lo, k20200304);
  ExpectInvalid("Patient", {{"_lastUpdated", "yesterday"}}, "_lastUpdated");
}

// ---- reference ----------------------------------------------------------------------------------------------

TEST(ParseSearchQueryTest, ReferenceTypeAndId) {
  SearchValue v = OneValue("Observation", "subject", "Patient/123");
  EXPECT_EQ(v.s1, "Patient");
  EXPECT_EQ(v.s2, "123");
  EXPECT_EQ(v.s3, "");
}

TEST(ParseSearchQueryTest, ReferenceBareIdMatchesAnyTarget) {
  SearchValue v = OneValue("Observation", "subject", "123");
  EXPECT_EQ(v.s1, "");
  EXPECT_EQ(v.s2, "123");
}

TEST(ParseSearchQueryTest, ReferenceVersionIsDropped) {
  SearchValue v = OneValue("Observation", "subject", "Patient/123/_history/4");
  EXPECT_EQ(v.s1, "Patient");
  EXPECT_EQ(v.s2, "123");
}

TEST(ParseSearchQueryTest, ReferenceAbsoluteUrlOfThisServerIsTypeAndId) {
  SearchValue v = OneValue("Observation", "subject", std::string(kBase) + "/Patient/123");
  EXPECT_EQ(v.s1, "Patient");
  EXPECT_EQ(v.s2, "123");
  EXPECT_EQ(v.s3, "");
  // The base must end at a path boundary.
  SearchValue other = OneValue("Observation", "subject", std::string(kBase) + "x/Patient/123");
  EXPECT_EQ(other.s3, std::string(kBase) + "x/Patient/123");
}

TEST(ParseSearchQueryTest, ReferenceOtherUrlIsMatchedAsWritten) {
  SearchValue v = OneValue("Observation", "subject", "http://other.example/fhir/Patient/1");
  EXPECT_EQ(v.s1, "");
  EXPECT_EQ(v.s3, "http://other.example/fhir/Patient/1");
  // A relative URL that is not Type/id (a canonical with a version) too.
  SearchValue canonical = OneValue("Observation", "subject", "NotAType/x");
  EXPECT_EQ(canonical.s3, "NotAType/x");
}

TEST(ParseSearchQueryTest, ReferenceUrnIsMatchedAsWritten) {
  // Regression: urn:uuid: values were rejected as "not a reference".
  SearchValue v = OneValue("Observation", "subject", "urn:uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427");
  EXPECT_EQ(v.s1, "");
  EXPECT_EQ(v.s3, "urn:uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427");
  EXPECT_EQ(OneValue("Observation", "subject", "urn:oid:1.2.3").s3, "urn:oid:1.2.3");
}

TEST(ParseSearchQueryTest, ReferenceTypeModifier) {
  auto q = Parse("Observation", {{"subject:Patient", "123"}});
  ASSERT_OK(q);
  ASSERT_EQ(q->criteria.size(), 1u);
  EXPECT_EQ(q->criteria[0].modifier, Modifier::kType);
  EXPECT_EQ(q->criteria[0].type_modifier, "Patient");
  ASSERT_EQ(q->criteria[0].values.size(), 1u);
  EXPECT_EQ(q->criteria[0].values[0].s1, "Patient");
  EXPECT_EQ(q->criteria[0].values[0].s2, "123");
}

TEST(ParseSearchQueryTest, ReferenceErrorsNameTheParameter) {
  ExpectInvalid("Observation", {{"subject", ""}}, "subject");
  ExpectInvalid("Observation", {{"subject", "Practitioner/1"}}, "subject");  // not a target of Observation.subject
  ExpectInvalid("Observation", {{"subject:Patient", "Group/1"}}, "subject:Patient");
  ExpectInvalid("Observation", {{"subject:Practitioner", "1"}}, "Practitioner");
  ExpectInvalid("Observation", {{"subject:NoSuchType", "1"}}, "NoSuchType");
  ExpectInvalid("Observation", {{"subject", "bad id!"}}, "subject");
  ExpectInvalid("Observation", {{"subject", std::string(kBase) + "/NoSuchType/1"}}, "subject");
  ExpectInvalid("Observation", {{"subject:exact", "Patient/1"}}, "subject:exact");
}

// ---- uri ----------------------------------------------------------------------------------------------------

TEST(ParseSearchQueryTest, Uri) {
  EXPECT_EQ(OneValue("ValueSet", "url", "http://x.org/vs|1.0").s1, "http://x.org/vs|1.0");
  ExpectInvalid("ValueSet", {{"url", ""}}, "url");
  ExpectInvalid("ValueSet", {{"url:contains", "x"}}, "url:contains");
}

// ---- date ---------------------------------------------------------------------------------------------------

TEST(ParseSearchQueryTest, DateWithoutPrefixIsEq) {
  SearchValue v = OneValue("Patient", "birthdate", "1970");
  EXPECT_EQ(v.prefix, Prefix::kEq);
  EXPECT_EQ(v.lo, 0);
  EXPECT_EQ(v.hi, kYear1970End);
}

TEST(ParseSearchQueryTest, DatePrefixes) {
  const std::pair<std::string, Prefix> kCases[] = {{"eq", Prefix::kEq}, {"ne", Prefix::kNe}, {"gt", Prefix::kGt},
                                                   {"lt", Prefix::kLt}, {"ge", Prefix::kGe}, {"le", Prefix::kLe},
                                                   {"sa", Prefix::kSa}, {"eb", Prefix::kEb}, {"ap", Prefix::kAp}};
  for (const auto& [text, prefix] : kCases) {
    SearchValue v = OneValue("Patient", "birthdate", text + "2020-03-04");
    EXPECT_EQ(v.prefix, prefix) << text;
    EXPECT_EQ(v.lo, k20200304) << text;
    EXPECT_EQ(v.hi, k20200304 + 86400000 - 1) << text;
  }
}

TEST(ParseSearchQueryTest, DateTimeWithZone) {
  SearchValue v = OneValue("Observation", "date", "ge2020-03-04T05:06+01:00");
  EXPECT_EQ(v.prefix, Prefix::kGe);
  EXPECT_EQ(v.lo, k20200304 + (4 * 60 + 6) * 60000);
  EXPECT_EQ(v.hi, v.lo + 60000 - 1);
}

TEST(ParseSearchQueryTest, DateRangeIsTwoCriteria) {
  auto q = Parse("Patient", {{"birthdate", "ge1970"}, {"birthdate", "lt1980"}});
  ASSERT_OK(q);
  ASSERT_EQ(q->criteria.size(), 2u);
  EXPECT_EQ(q->criteria[0].values[0].prefix, Prefix::kGe);
  EXPECT_EQ(q->criteria[1].values[0].prefix, Prefix::kLt);
  EXPECT_EQ(q->criteria[1].values[0].lo, 315532800000);  // 1980-01-01
}

TEST(ParseSearchQueryTest, DateErrorsNameTheParameter) {
  for (const char* bad : {"notadate", "xx2020", "2020-13-01", "2021-02-30", "ge", "", "2020-01-01T25:00:00Z",
                          "99999999999999999999", "2020-01-01T10:00:00+25:00"}) {
    ExpectInvalid("Patient", {{"birthdate", bad}}, "birthdate");
  }
  ExpectInvalid("Patient", {{"birthdate:exact", "2020"}}, "birthdate:exact");
}

// ---- number and quantity ------------------------------------------------------------------------------------

TEST(ParseSearchQueryTest, NumberPrecision) {
  SearchValue v = OneValue("RiskAssessment", "probability", "100");
  EXPECT_EQ(v.prefix, Prefix::kEq);
  EXPECT_DOUBLE_EQ(v.value, 100);
  EXPECT_DOUBLE_EQ(v.dlo, 99.5);
  EXPECT_DOUBLE_EQ(v.dhi, 100.5);
  SearchValue precise = OneValue("RiskAssessment", "probability", "gt100.00");
  EXPECT_EQ(precise.prefix, Prefix::kGt);
  EXPECT_DOUBLE_EQ(precise.dlo, 99.995);
  EXPECT_DOUBLE_EQ(precise.dhi, 100.005);
  SearchValue negative = OneValue("RiskAssessment", "probability", "le-0.5");
  EXPECT_EQ(negative.prefix, Prefix::kLe);
  EXPECT_DOUBLE_EQ(negative.value, -0.5);
}

TEST(ParseSearchQueryTest, NumberErrorsNameTheParameter) {
  for (const char* bad : {"abc", "gt", "", "1,2x", "0x10", "1e999999", "nan", "inf"}) {
    ExpectInvalid("RiskAssessment", {{"probability", bad}}, "probability");
  }
  // A number parameter takes no units.
  ExpectInvalid("RiskAssessment", {{"probability", "5|http://unitsofmeasure.org|mg"}}, "probability");
}

TEST(ParseSearchQueryTest, QuantityWithSystemAndCode) {
  SearchValue v = OneValue("Observation", "value-quantity", "gt5.4|http://unitsofmeasure.org|mg");
  EXPECT_EQ(v.prefix, Prefix::kGt);
  EXPECT_DOUBLE_EQ(v.value, 5.4);
  EXPECT_EQ(v.s1, "http://unitsofmeasure.org");
  EXPECT_EQ(v.s2, "mg");
  EXPECT_TRUE(v.has_system);
  EXPECT_TRUE(v.has_code);
}

TEST(ParseSearchQueryTest, QuantityCodeOnlyAndNoUnits) {
  SearchValue code_only = OneValue("Observation", "value-quantity", "5.4||mg");
  EXPECT_EQ(code_only.s2, "mg");
  EXPECT_FALSE(code_only.has_system);
  EXPECT_TRUE(code_only.has_code);
  SearchValue bare = OneValue("Observation", "value-quantity", "le5.4");
  EXPECT_EQ(bare.prefix, Prefix::kLe);
  EXPECT_FALSE(bare.has_system);
  EXPECT_FALSE(bare.has_code);
}

TEST(ParseSearchQueryTest, QuantityErrorsNameTheParameter) {
  for (const char* bad : {"abc", "ge", "5|sys", "|sys|code", "1e999999"}) {
    ExpectInvalid("Observation", {{"value-quantity", bad}}, "value-quantity");
  }
}

// ---- composite ----------------------------------------------------------------------------------------------

TEST(ParseSearchQueryTest, Composite) {
  SearchValue v = OneValue("Observation", "component-code-value-quantity", "http://loinc.org|8480-6$gt100");
  ASSERT_EQ(v.components.size(), 2u);
  EXPECT_EQ(v.components[0].s1, "http://loinc.org");
  EXPECT_EQ(v.components[0].s2, "8480-6");
  EXPECT_TRUE(v.components[0].has_system);
  EXPECT_EQ(v.components[1].prefix, Prefix::kGt);
  EXPECT_DOUBLE_EQ(v.components[1].value, 100);
}

TEST(ParseSearchQueryTest, CompositeOrAndEscapedDollar) {
  auto q = Parse("Observation", {{"code-value-quantity", R"(a\$b$1,c$2)"}});
  ASSERT_OK(q);
  ASSERT_EQ(q->criteria.size(), 1u);
  ASSERT_EQ(q->criteria[0].values.size(), 2u);
  EXPECT_EQ(q->criteria[0].values[0].components[0].s2, "a$b");
  EXPECT_DOUBLE_EQ(q->criteria[0].values[1].components[1].value, 2);
}

TEST(ParseSearchQueryTest, CompositeErrorsNameTheParameter) {
  ExpectInvalid("Observation", {{"component-code-value-quantity", "http://loinc.org|8480-6"}},
                "component-code-value-quantity");
  ExpectInvalid("Observation", {{"component-code-value-quantity", "a$1$2"}}, "component-code-value-quantity");
  ExpectInvalid("Observation", {{"component-code-value-quantity", "a$abc"}}, "component-code-value-quantity");
  ExpectInvalid("Observation", {{"component-code-value-quantity:exact", "a$1"}}, "component-code-value-quantity");
}

// ---- chains and _has ----------------------------------------------------------------------------------------

TEST(ParseSearchQueryTest, ChainWithTypeModifier) {
  auto q = Parse("Observation", {{"subject:Patient.name", "Peter"}});
  ASSERT_OK(q);
  ASSERT_EQ(q->criteria.size(), 1u);
  const Criterion& c = q->criteria[0];
  EXPECT_EQ(c.param, FindParam("Observation", "subject"));
  EXPECT_EQ(c.type_modifier, "Patient");
  EXPECT_THAT(c.values, IsEmpty());
  ASSERT_EQ(c.chain.size(), 1u);
  EXPECT_EQ(c.chain[0].param, FindParam("Patient", "name"));
  ASSERT_EQ(c.chain[0].values.size(), 1u);
  EXPECT_EQ(c.chain[0].values[0].s1, "peter");
}

TEST(ParseSearchQueryTest, ChainResolvesTheUniqueTarget) {
  auto q = Parse("Encounter", {{"patient.birthdate", "ge1970"}});
  ASSERT_OK(q);
  ASSERT_EQ(q->criteria.size(), 1u);
  const Criterion& c = q->criteria[0];
  EXPECT_EQ(c.param, FindParam("Encounter", "patient"));
  EXPECT_EQ(c.type_modifier, "Patient");
  ASSERT_EQ(c.chain.size(), 1u);
  EXPECT_EQ(c.chain[0].param, FindParam("Patient", "birthdate"));
  EXPECT_EQ(c.chain[0].values[0].prefix, Prefix::kGe);
  EXPECT_EQ(c.chain[0].values[0].lo, 0);
}

TEST(ParseSearchQueryTest, ChainInnerModifier) {
  auto q = Parse("Observation", {{"subject:Patient.name:exact", "Ábel"}});
  ASSERT_OK(q);
  ASSERT_EQ(q->criteria[0].chain.size(), 1u);
  EXPECT_EQ(q->criteria[0].chain[0].modifier, Modifier::kExact);
  EXPECT_EQ(q->criteria[0].chain[0].values[0].s1, "Ábel");
}

TEST(ParseSearchQueryTest, ChainErrorsNameTheParameter) {
  ExpectInvalid("Observation", {{"code.name", "x"}}, "code.name");            // not a reference
  ExpectInvalid("Encounter", {{"patient.nosuchparam", "x"}}, "nosuchparam");  // no target has it
  ExpectInvalid("Observation", {{"subject.name", "x"}}, "subject.name");      // several targets have it
  ExpectInvalid("Encounter", {{"patient.organization.name", "x"}}, "patient.organization.name");  // two levels
  ExpectInvalid("Observation", {{"subject:Practitioner.name", "x"}}, "Practitioner");             // not a target
  ExpectInvalid("Observation", {{"subject:Patient.birthdate", "notadate"}}, "'subject:Patient.birthdate'");
  ExpectInvalid("Observation", {{"subject:Patient._has:Observation:patient:code", "x"}}, "_has");
  ExpectInvalid("Observation", {{"subject:Patient.", "x"}}, "subject");
}

TEST(ParseSearchQueryTest, Has) {
  auto q = Parse("Patient", {{"_has:Observation:patient:code", "1234-5"}});
  ASSERT_OK(q);
  ASSERT_EQ(q->criteria.size(), 1u);
  const Criterion& c = q->criteria[0];
  EXPECT_EQ(c.has_type, "Observation");
  EXPECT_EQ(c.param, FindParam("Observation", "patient"));
  EXPECT_EQ(c.type_modifier, "Patient");
  ASSERT_EQ(c.chain.size(), 1u);
  EXPECT_EQ(c.chain[0].param, FindParam("Observation", "code"));
  EXPECT_EQ(c.chain[0].values[0].s2, "1234-5");
}

TEST(ParseSearchQueryTest, HasInnerModifier) {
  auto q = Parse("Patient", {{"_has:Observation:patient:code:text", "Glucose"}});
  ASSERT_OK(q);
  ASSERT_EQ(q->criteria[0].chain.size(), 1u);
  EXPECT_EQ(q->criteria[0].chain[0].modifier, Modifier::kText);
  EXPECT_EQ(q->criteria[0].chain[0].values[0].s2, "glucose");
}

TEST(ParseSearchQueryTest, HasErrorsNameTheParameter) {
  ExpectInvalid("Patient", {{"_has:Observation:patient", "x"}}, "_has");
  ExpectInvalid("Patient", {{"_has:Observation", "x"}}, "_has");
  ExpectInvalid("Patient", {{"_has:", "x"}}, "_has");
  ExpectInvalid("Patient", {{"_has:::", "x"}}, "_has");
  ExpectInvalid("Patient", {{"_has:NoSuchType:patient:code", "x"}}, "NoSuchType");
  ExpectInvalid("Patient", {{"_has:Observation:code:code", "x"}}, "_has");  // not a reference parameter
  ExpectInvalid("Patient", {{"_has:Observation:nosuch:code", "x"}}, "nosuch");
  ExpectInvalid("Patient", {{"_has:Observation:patient:_has:Observation:patient:code", "x"}}, "_has");
  ExpectInvalid("Patient", {{"_has:Observation:patient:subject.name", "x"}}, "subject.name");
  ExpectInvalid("Patient", {{"_has:Observation:patient:nosuch", "x"}}, "nosuch");
  ExpectInvalid("Patient", {{"_has:Observation:patient:code", ""}}, "_has");
  ExpectInvalid("Patient", {{"_has:Encounter:service-provider:type", "x"}}, "_has");  // targets Organization only
}

// ---- regressions from the bad-input probe ------------------------------------------------------------------

TEST(ParseSearchQueryTest, EmptyModifierIsInvalid) {
  // Was taken as no modifier at all: name:=x searched name=x.
  ExpectInvalid("Patient", {{"name:", "x"}}, "'name:'");
  ExpectInvalid("Observation", {{"subject:", "Patient/1"}}, "'subject:'");
  ExpectInvalid("Observation", {{"subject:.name", "x"}}, "'subject:.name'");
}

TEST(ParseSearchQueryTest, ChainWithNothingAfterTheDotIsInvalid) {
  // Was taken as no chain: patient.=x searched patient=x, subject:Patient.=x searched subject:Patient=x.
  ExpectInvalid("Encounter", {{"patient.", "x"}}, "'patient.'");
  ExpectInvalid("Observation", {{"subject:Patient.", "x"}}, "'subject:Patient.'");
}

TEST(ParseSearchQueryTest, ChainAndHasErrorsNameTheWholeParameter) {
  // The errors named the inner part only ('organization.partof.name', 'code', 'subject.name').
  ExpectInvalid("Encounter", {{"patient.organization.partof.name", "x"}}, "'patient.organization.partof.name'");
  ExpectInvalid("Patient", {{"_has:Observation:patient:code", ""}}, "'_has:Observation:patient:code'");
  ExpectInvalid("Patient", {{"_has:Observation:patient:subject.name", "x"}}, "'_has:Observation:patient:subject.name'");
  ExpectInvalid("Observation", {{"subject:Patient.nosuch", "x"}}, "'subject:Patient.nosuch'");
}

TEST(ParseSearchQueryTest, ReferenceWithATypeButNoIdIsInvalid) {
  // Was matched as a URL "Patient/" (never matching anything) with a 200.
  ExpectInvalid("Observation", {{"subject", "Patient/"}}, "subject");
  ExpectInvalid("Observation", {{"subject", "Patient//1"}}, "subject");
  ExpectInvalid("Observation", {{"subject", std::string(kBase) + "/Patient/"}}, "subject");
}

TEST(ParseSearchQueryTest, EmptyPageCursorIsInvalid) {
  // Was taken as the first page.
  ExpectInvalid("Patient", {{"page", ""}}, "page");
}

bool IsValidUtf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    auto c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k)
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    i += n;
  }
  return true;
}

TEST(ParseSearchQueryTest, DiagnosticsAreValidUtf8) {
  // Invalid UTF-8 in a parameter name or value was copied into the OperationOutcome, which then was not JSON.
  const Params kBad[] = {{{"\xFF\xFE", "x"}},          {{"date", "\xFF\xFE"}},
                         {{"name:\xC3", "x"}},         {{"_sort", "\xFF"}},
                         {{"_include", "\xFF:x"}},     {{"subject:Patient.na\xED\xA0\x80me", "x"}},
                         {{"_id", "\xF0\x82\x82\xAC"}}};
  for (const Params& p : kBad) {
    auto q = Parse("Observation", p);
    ASSERT_FALSE(q.ok()) << p[0].first;
    EXPECT_EQ(q.status().code(), StatusCode::kInvalid);
    EXPECT_TRUE(IsValidUtf8(q.status().message())) << q.status().message();
    EXPECT_THAT(q.status().message(), HasSubstr("\xEF\xBF\xBD")) << q.status().message();
  }
  auto lenient = Parse("Patient", {{"f\xFFoo", "x"}}, /*lenient=*/true);
  ASSERT_OK(lenient);
  ASSERT_EQ(lenient->ignored.size(), 1u);
  EXPECT_TRUE(IsValidUtf8(lenient->ignored[0]));
  EXPECT_THAT(lenient->ignored[0], HasSubstr("f\xEF\xBF\xBDoo"));
  // Valid UTF-8 is kept.
  EXPECT_STATUS(Parse("Patient", {{"námé", "x"}}), kInvalid, "'námé'");
}

TEST(ParseSearchQueryTest, DiagnosticsAreCut) {
  auto q = Parse("Patient", {{std::string(60000, 'n'), "x"}});
  ASSERT_FALSE(q.ok());
  EXPECT_LT(q.status().message().size(), 2100u);
  EXPECT_THAT(q.status().message(), HasSubstr("nnnn"));
}

TEST(ParseSearchQueryTest, TooManyCriteria) {
  // 1000 criteria made SQL deeper than SQLite allows: a 500 quoting the SQL.
  Params p;
  for (int i = 0; i < 100; ++i) p.emplace_back("given", "g" + std::to_string(i));
  EXPECT_OK(Parse("Patient", p));
  p.emplace_back("family", "x");
  ExpectInvalid("Patient", p, "'family'");
  Params chains;
  for (int i = 0; i <= 100; ++i) chains.emplace_back("subject:Patient.name", "n" + std::to_string(i));
  ExpectInvalid("Observation", chains, "subject:Patient.name");
}

TEST(ParseSearchQueryTest, TooManyValues) {
  std::string hundred = "ge2020";
  for (int i = 1; i < 100; ++i) hundred += ",ge2020";
  Params p(10, {"birthdate", hundred});
  EXPECT_OK(Parse("Patient", p));
  p.emplace_back("gender", "male");
  ExpectInvalid("Patient", p, "'gender'");
}

TEST(ParseSearchQueryTest, TooManySortKeys) {
  // 2000 sort keys: a 500 quoting the SQL.
  std::string keys = "birthdate";
  for (int i = 1; i < 16; ++i) keys += ",birthdate";
  EXPECT_OK(Parse("Patient", {{"_sort", keys}}));
  ExpectInvalid("Patient", {{"_sort", keys + ",name"}}, "_sort");
  ExpectInvalid("Patient", {{"_sort", keys}, {"_sort", "name"}}, "_sort");
}

TEST(ParseSearchQueryTest, RepeatedIncludesCountOnceAndAreBounded) {
  // 300 copies of one _revinclude:iterate ran 300 times each (minutes for one request).
  Params p(300, {"_revinclude:iterate", "Observation:subject"});
  p.emplace_back("_include", "Patient:organization");
  p.emplace_back("_include", "Patient:organization");
  auto q = Parse("Patient", p);
  ASSERT_OK(q);
  EXPECT_EQ(q->revincludes.size(), 1u);
  EXPECT_EQ(q->includes.size(), 1u);
  Params distinct;
  for (std::string_view param : FindParam("Observation", "subject")->targets) {
    distinct.emplace_back("_include", "Observation:subject:" + std::string(param));
  }
  distinct.emplace_back("_include", "Observation:performer");
  for (const char* type : {"Observation", "Provenance", "AuditEvent", "Encounter", "Condition"}) {
    for (const ParamDef* def : ParamsForType(type)) {
      if (def->type == ParamType::kReference)
        distinct.emplace_back("_revinclude", type + (":" + std::string(def->code)));
    }
  }
  ASSERT_GT(distinct.size(), 32u);
  ExpectInvalid("Observation", distinct, "_revinclude");
}

// ---- result parameters --------------------------------------------------------------------------------------

TEST(ParseSearchQueryTest, Count) {
  auto def = Parse("Patient", {});
  ASSERT_OK(def);
  EXPECT_EQ(def->count, 50u);
  auto zero = Parse("Patient", {{"_count", "0"}});
  ASSERT_OK(zero);
  EXPECT_EQ(zero->count, 0u);
  auto max = Parse("Patient", {{"_count", "1000"}});
  ASSERT_OK(max);
  EXPECT_EQ(max->count, 1000u);
  for (const char* bad : {"1001", "-1", "abc", "", "1.5", " 5", "+5", "99999999999999999999999"}) {
    ExpectInvalid("Patient", {{"_count", bad}}, "_count");
  }
}

TEST(ParseSearchQueryTest, CountFollowsTheLimits) {
  SearchLimits limits;
  limits.default_count = 7;
  limits.max_count = 10;
  auto q = ParseSearchQuery({"Patient"}, {}, kBase, false, limits);
  ASSERT_OK(q);
  EXPECT_EQ(q->count, 7u);
  EXPECT_STATUS(ParseSearchQuery({"Patient"}, {{"_count", "11"}}, kBase, false, limits), kInvalid, "_count");
}

TEST(ParseSearchQueryTest, Total) {
  auto q = Parse("Patient", {});
  ASSERT_OK(q);
  EXPECT_EQ(q->total, TotalMode::kAccurate);
  const std::pair<std::string, TotalMode> kCases[] = {
      {"none", TotalMode::kNone}, {"estimate", TotalMode::kEstimate}, {"accurate", TotalMode::kAccurate}};
  for (const auto& [text, mode] : kCases) {
    auto t = Parse("Patient", {{"_total", text}});
    ASSERT_OK(t);
    EXPECT_EQ(t->total, mode) << text;
  }
  ExpectInvalid("Patient", {{"_total", "sometimes"}}, "_total");
}

TEST(ParseSearchQueryTest, Summary) {
  auto count = Parse("Patient", {{"_summary", "count"}});
  ASSERT_OK(count);
  EXPECT_TRUE(count->summary_count);
  auto no = Parse("Patient", {{"_summary", "false"}});
  ASSERT_OK(no);
  EXPECT_FALSE(no->summary_count);
  ExpectInvalid("Patient", {{"_summary", "true"}}, "_summary");
  ExpectInvalid("Patient", {{"_summary", "bogus"}}, "_summary");
  auto lenient = Parse("Patient", {{"_summary", "text"}}, /*lenient=*/true);
  ASSERT_OK(lenient);
  EXPECT_FALSE(lenient->summary_count);
  ASSERT_EQ(lenient->ignored.size(), 1u);
  EXPECT_THAT(lenient->ignored[0], HasSubstr("_summary"));
}

TEST(ParseSearchQueryTest, Elements) {
  auto q = Parse("Patient", {{"_elements", "name,gender"}});
  ASSERT_OK(q);
  EXPECT_THAT(q->elements, ElementsAre("name", "gender"));
  ExpectInvalid("Patient", {{"_elements", "name.family"}}, "_elements");
  ExpectInvalid("Patient", {{"_elements", ""}}, "_elements");
  ExpectInvalid("Patient", {{"_elements", "name,"}}, "_elements");
  ExpectInvalid("Patient", {{"_elements", "na\"me"}}, "_elements");
}

TEST(ParseSearchQueryTest, Sort) {
  auto q = Parse("Patient", {{"_sort", "birthdate,-name,_id,-_lastUpdated"}});
  ASSERT_OK(q);
  ASSERT_EQ(q->sort.size(), 4u);
  EXPECT_EQ(q->sort[0].param, FindParam("Patient", "birthdate"));
  EXPECT_FALSE(q->sort[0].descending);
  EXPECT_EQ(q->sort[1].param, FindParam("Patient", "name"));
  EXPECT_TRUE(q->sort[1].descending);
  EXPECT_EQ(q->sort[2].param, FindParam("Patient", "_id"));
  EXPECT_EQ(q->sort[3].param, FindParam("Patient", "_lastUpdated"));
  EXPECT_TRUE(q->sort[3].descending);
}

TEST(ParseSearchQueryTest, SortErrorsNameTheParameter) {
  ExpectInvalid("Patient", {{"_sort", "nosuchparam"}}, "nosuchparam");
  ExpectInvalid("Patient", {{"_sort", "-"}}, "_sort");
  ExpectInvalid("Patient", {{"_sort", ""}}, "_sort");
  ExpectInvalid("Patient", {{"_sort", "birthdate,"}}, "_sort");
  ExpectInvalid("Patient", {{"_sort", "--birthdate"}}, "_sort");
  ExpectInvalid("Patient", {{"_sort", "name:exact"}}, "_sort");
  ExpectInvalid("Observation", {{"_sort", "component-code-value-quantity"}}, "_sort");
  ExpectInvalid("", {{"_sort", "name"}}, "_sort");  // not common to every type
}

TEST(ParseSearchQueryTest, Include) {
  auto q = Parse("Observation", {{"_include", "Observation:subject"},
                                 {"_include", "Observation:performer:Practitioner"},
                                 {"_include:iterate", "Patient:general-practitioner"},
                                 {"_revinclude", "Provenance:target"},
                                 {"_revinclude:iterate", "Observation:has-member"}});
  ASSERT_OK(q);
  ASSERT_EQ(q->includes.size(), 3u);
  EXPECT_EQ(q->includes[0].source_type, "Observation");
  EXPECT_EQ(q->includes[0].param, FindParam("Observation", "subject"));
  EXPECT_EQ(q->includes[0].target_type, "");
  EXPECT_FALSE(q->includes[0].iterate);
  EXPECT_EQ(q->includes[1].target_type, "Practitioner");
  EXPECT_EQ(q->includes[2].source_type, "Patient");
  EXPECT_TRUE(q->includes[2].iterate);
  ASSERT_EQ(q->revincludes.size(), 2u);
  EXPECT_EQ(q->revincludes[0].source_type, "Provenance");
  EXPECT_EQ(q->revincludes[0].param, FindParam("Provenance", "target"));
  EXPECT_FALSE(q->revincludes[0].iterate);
  EXPECT_TRUE(q->revincludes[1].iterate);
}

TEST(ParseSearchQueryTest, IncludeErrorsNameTheParameter) {
  ExpectInvalid("Observation", {{"_include", "Observation:nosuch"}}, "nosuch");
  ExpectInvalid("Observation", {{"_revinclude", "Observation:nosuch"}}, "nosuch");
  ExpectInvalid("Observation", {{"_include", "*"}}, "_include");
  ExpectInvalid("Observation", {{"_include", "Observation:*"}}, "_include");
  ExpectInvalid("Observation", {{"_include", "Observation:code"}}, "_include");  // not a reference
  ExpectInvalid("Observation", {{"_include", "Observation:subject:Practitioner"}}, "_include");
  ExpectInvalid("Observation", {{"_include", "Observation:subject:Patient:x"}}, "_include");
  ExpectInvalid("Observation", {{"_include", "NoSuchType:subject"}}, "_include");
  ExpectInvalid("Observation", {{"_include", "Patient:general-practitioner"}}, "_include");  // not the type searched
  ExpectInvalid("Observation", {{"_include", ""}}, "_include");
  ExpectInvalid("Observation", {{"_include:nosuch", "Observation:subject"}}, "_include:nosuch");
}

// ---- unknown parameters, _type, applied_query ---------------------------------------------------------------

TEST(ParseSearchQueryTest, UnknownParameterStrict) {
  auto q = Parse("Patient", {{"foo", "bar"}});
  EXPECT_STATUS(q, kInvalid, "'foo'");
  EXPECT_STATUS(Parse("Patient", {{"foo:exact", "bar"}}), kInvalid, "foo");
}

TEST(ParseSearchQueryTest, UnknownParameterLenient) {
  auto q = Parse("Patient", {{"foo", "bar"}, {"gender", "female"}}, true);
  ASSERT_OK(q);
  ASSERT_EQ(q->criteria.size(), 1u);
  EXPECT_EQ(q->criteria[0].param, FindParam("Patient", "gender"));
  ASSERT_EQ(q->ignored.size(), 1u);
  EXPECT_THAT(q->ignored[0], HasSubstr("foo"));
  EXPECT_EQ(q->applied_query, "_count=50&gender=female");
  // Malformed values of known parameters stay errors.
  EXPECT_STATUS(Parse("Patient", {{"birthdate", "notadate"}}, true), kInvalid, "birthdate");
}

TEST(ParseSearchQueryTest, LenientChainWithUnknownInnerParameterIsIgnored) {
  auto q = Parse("Observation", {{"subject:Patient.nosuch", "x"}}, true);
  ASSERT_OK(q);
  EXPECT_THAT(q->criteria, IsEmpty());
  ASSERT_EQ(q->ignored.size(), 1u);
  EXPECT_THAT(q->ignored[0], HasSubstr("nosuch"));
}

TEST(ParseSearchQueryTest, SystemSearch) {
  auto all = Parse("", {{"_lastUpdated", "gt2020"}});
  ASSERT_OK(all);
  EXPECT_GT(all->types.size(), 100u);
  auto two = Parse("", {{"_type", "Patient,Observation"}, {"_id", "x"}});
  ASSERT_OK(two);
  EXPECT_THAT(two->types, ElementsAre("Patient", "Observation"));
  EXPECT_EQ(two->applied_query, "_count=50&_id=x&_type=Patient%2CObservation");
  ExpectInvalid("", {{"_type", "Patient,Nope"}}, "_type");
  ExpectInvalid("", {{"_type", ""}}, "_type");
  ExpectInvalid("Patient", {{"_type", "Patient"}}, "_type");
  ExpectInvalid("", {{"_type", "Patient,Observation"}, {"name", "x"}}, "name");
  auto lenient = Parse("", {{"_type", "Patient,Observation"}, {"name", "x"}}, true);
  ASSERT_OK(lenient);
  EXPECT_THAT(lenient->criteria, IsEmpty());
  ASSERT_EQ(lenient->ignored.size(), 1u);
  EXPECT_THAT(lenient->ignored[0], HasSubstr("name"));
}

TEST(ParseSearchQueryTest, AppliedQueryIsCanonical) {
  auto q = Parse("Patient", {{"name", "b"},
                             {"gender", "female"},
                             {"_count", "10"},
                             {"page", "abc"},
                             {"_format", "json"},
                             {"identifier", "http://x|1 2"},
                             {"given", "z"},
                             {"given", "a"}});
  ASSERT_OK(q);
  EXPECT_EQ(q->page, "abc");
  // Sorted by name, repeated names in the order given; `page` and _format left out; values percent-encoded.
  EXPECT_EQ(q->applied_query, "_count=10&gender=female&given=z&given=a&identifier=http%3A%2F%2Fx%7C1%202&name=b");
  auto same = Parse("Patient", {{"identifier", "http://x|1 2"},
                                {"_count", "10"},
                                {"given", "z"},
                                {"name", "b"},
                                {"given", "a"},
                                {"gender", "female"}});
  ASSERT_OK(same);
  EXPECT_EQ(same->applied_query, q->applied_query);
}

TEST(ParseSearchQueryTest, AppliedQueryMakesCountExplicit) {
  auto q = Parse("Patient", {});
  ASSERT_OK(q);
  EXPECT_EQ(q->applied_query, "_count=50");
  auto r = Parse("Patient", {{"gender", "male"}});
  ASSERT_OK(r);
  EXPECT_EQ(r->applied_query, "_count=50&gender=male");
}

TEST(ParseSearchQueryTest, AppliedQueryHasTheCountInEffectOnce) {
  // Regression: the implicit _count went at the end (not in order) and a repeated _count appeared twice.
  auto implicit = Parse("Patient", {{"gender", "male"}, {"_id", "a"}});
  ASSERT_OK(implicit);
  auto explicit_count = Parse("Patient", {{"_count", "50"}, {"gender", "male"}, {"_id", "a"}});
  ASSERT_OK(explicit_count);
  EXPECT_EQ(implicit->applied_query, "_count=50&_id=a&gender=male");
  EXPECT_EQ(explicit_count->applied_query, implicit->applied_query);
  auto repeated = Parse("Patient", {{"_count", "5"}, {"gender", "male"}, {"_count", "7"}});
  ASSERT_OK(repeated);
  EXPECT_EQ(repeated->count, 7u);
  EXPECT_EQ(repeated->applied_query, "_count=7&gender=male");
}

TEST(ParseSearchQueryTest, EmptyNamesAreSkipped) {
  auto q = Parse("Patient", {{"", ""}, {"", "x"}, {"gender", "male"}});
  ASSERT_OK(q);
  EXPECT_EQ(q->criteria.size(), 1u);
  EXPECT_EQ(q->applied_query, "_count=50&gender=male");
}

TEST(UrlEncodeQueryComponentTest, UnreservedPass) {
  EXPECT_EQ(UrlEncodeQueryComponent("aZ09-._~"), "aZ09-._~");
  EXPECT_EQ(UrlEncodeQueryComponent("a b/|,$\xff"), "a%20b%2F%7C%2C%24%FF");
  EXPECT_EQ(UrlEncodeQueryComponent(std::string("\0", 1)), "%00");
}

}  // namespace
}  // namespace fhirlake::search
