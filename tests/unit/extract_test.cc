// Tests of search/extract.h: realistic resources and the exact rows of specific parameters.
#include "search/extract.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "search/normalize.h"
#include "search/search_params.h"
#include "test_util.h"

namespace fhirlake::search {
namespace {

ParamId Id(std::string_view type, std::string_view code) {
  const ParamDef* p = FindParam(type, code);
  EXPECT_NE(p, nullptr) << type << "." << code;
  return p ? p->id : 0;
}

template <typename Row>
std::vector<Row> Of(const std::vector<Row>& rows, ParamId id) {
  std::vector<Row> out;
  for (const Row& r : rows) {
    if (r.param == id) out.push_back(r);
  }
  return out;
}

using StringSet = std::set<std::pair<std::string, std::string>>;
StringSet Strings(const IndexRows& rows, ParamId id) {
  StringSet out;
  for (const StringRow& r : Of(rows.strings, id)) out.insert({r.normalized, r.exact});
  return out;
}

using TokenSet = std::set<std::tuple<TokenKind, std::string, std::string>>;
TokenSet Tokens(const IndexRows& rows, ParamId id) {
  TokenSet out;
  for (const TokenRow& r : Of(rows.tokens, id)) out.insert({r.kind, r.system, r.code});
  return out;
}

// The token rows other than :text rows.
TokenSet CodeTokens(const IndexRows& rows, ParamId id) {
  TokenSet out;
  for (const auto& t : Tokens(rows, id)) {
    if (std::get<0>(t) != TokenKind::kText) out.insert(t);
  }
  return out;
}

using RefSet = std::set<std::tuple<std::string, std::string, std::string>>;
RefSet References(const IndexRows& rows, ParamId id) {
  RefSet out;
  for (const ReferenceRow& r : Of(rows.references, id)) out.insert({r.type, r.id, r.url});
  return out;
}

constexpr int64_t kDay = 86400000;

constexpr std::string_view kPatient = R"({
  "resourceType": "Patient", "id": "pat1",
  "meta": {"lastUpdated": "2024-01-01T00:00:00Z", "tag": [{"system": "http://t", "code": "x"}],
           "profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"]},
  "identifier": [
    {"system": "http://hospital.example/mrn", "value": "12345",
     "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}], "text": "Medical Record"}},
    {"system": "urn:oid:2.16.840.1.113883.4.1", "value": "999-99-9999"}
  ],
  "active": true,
  "name": [{"use": "official", "family": "Müller", "given": ["José", "Ann"], "prefix": ["Dr."]},
           {"text": "Joe  MÜLLER"}],
  "telecom": [{"system": "phone", "value": "+1 555 0100", "use": "home"},
              {"system": "email", "value": "jose@example.org"}],
  "gender": "male",
  "birthDate": "1974-12-25",
  "deceasedBoolean": false,
  "address": [{"line": ["1 Rue de l'Église", "Apt 4"], "city": "Zürich", "postalCode": "8001", "country": "CH"}],
  "generalPractitioner": [{"reference": "Practitioner/pr1"}],
  "managingOrganization": {"reference": "https://other.example/fhir/Organization/o9"}
})";

TEST(ExtractTest, PatientNameAddressBirthdate) {
  IndexExtractor ex;
  ASSERT_OK_AND_ASSIGN(IndexRows rows, ex.Extract(kPatient));
  EXPECT_EQ(
      Strings(rows, Id("Patient", "name")),
      (StringSet{
          {"muller", "Müller"}, {"jose", "José"}, {"ann", "Ann"}, {"dr.", "Dr."}, {"joe muller", "Joe  MÜLLER"}}));
  EXPECT_EQ(Strings(rows, Id("Patient", "family")), (StringSet{{"muller", "Müller"}}));
  EXPECT_EQ(Strings(rows, Id("Patient", "given")), (StringSet{{"jose", "José"}, {"ann", "Ann"}}));
  EXPECT_EQ(Strings(rows, Id("Patient", "address")), (StringSet{{"1 rue de l'eglise", "1 Rue de l'Église"},
                                                                {"apt 4", "Apt 4"},
                                                                {"zurich", "Zürich"},
                                                                {"8001", "8001"},
                                                                {"ch", "CH"}}));
  EXPECT_EQ(Strings(rows, Id("Patient", "address-city")), (StringSet{{"zurich", "Zürich"}}));

  auto birth = Of(rows.dates, Id("Patient", "birthdate"));
  ASSERT_EQ(birth.size(), 1u);
  const auto day = ParseDateRange("1974-12-25");
  EXPECT_EQ(birth[0].lo, day->lo);
  EXPECT_EQ(birth[0].hi, day->lo + kDay - 1);
}

TEST(ExtractTest, PatientTokens) {
  IndexExtractor ex;
  ex.set_share_rows(false);  // each parameter's own rows, :text rows included (the store keeps fewer)
  ASSERT_OK_AND_ASSIGN(IndexRows rows, ex.Extract(kPatient));
  EXPECT_EQ(Tokens(rows, Id("Patient", "identifier")),
            (TokenSet{{TokenKind::kCode, "http://hospital.example/mrn", "12345"},
                      {TokenKind::kOfType, "http://terminology.hl7.org/CodeSystem/v2-0203|MR", "12345"},
                      {TokenKind::kText, "", "medical record"},
                      {TokenKind::kCode, "urn:oid:2.16.840.1.113883.4.1", "999-99-9999"}}));
  EXPECT_EQ(Tokens(rows, Id("Patient", "telecom")),
            (TokenSet{{TokenKind::kCode, "", "+1 555 0100"}, {TokenKind::kCode, "", "jose@example.org"}}));
  EXPECT_EQ(Tokens(rows, Id("Patient", "email")), (TokenSet{{TokenKind::kCode, "", "jose@example.org"}}));
  EXPECT_EQ(Tokens(rows, Id("Patient", "phone")), (TokenSet{{TokenKind::kCode, "", "+1 555 0100"}}));
  EXPECT_EQ(Tokens(rows, Id("Patient", "gender")), (TokenSet{{TokenKind::kCode, "", "male"}}));
  EXPECT_EQ(Tokens(rows, Id("Patient", "active")), (TokenSet{{TokenKind::kCode, "", "true"}}));
  EXPECT_EQ(Tokens(rows, Id("Patient", "deceased")), (TokenSet{{TokenKind::kCode, "", "false"}}));
  EXPECT_EQ(Tokens(rows, Id("Patient", "_tag")), (TokenSet{{TokenKind::kCode, "http://t", "x"}}));
  ASSERT_EQ(Of(rows.uris, Id("Patient", "_profile")).size(), 1u);
  EXPECT_EQ(Of(rows.uris, Id("Patient", "_profile"))[0].value,
            "http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient");
  // _id and _lastUpdated come from the resource table.
  EXPECT_TRUE(Of(rows.tokens, Id("Patient", "_id")).empty());
  EXPECT_TRUE(Of(rows.dates, Id("Patient", "_lastUpdated")).empty());
}

TEST(ExtractTest, PatientReferences) {
  IndexExtractor ex;
  ASSERT_OK_AND_ASSIGN(IndexRows rows, ex.Extract(kPatient));
  EXPECT_EQ(References(rows, Id("Patient", "general-practitioner")), (RefSet{{"Practitioner", "pr1", ""}}));
  EXPECT_EQ(References(rows, Id("Patient", "organization")),
            (RefSet{{"", "", "https://other.example/fhir/Organization/o9"}}));
}

constexpr std::string_view kObservation = R"({
  "resourceType": "Observation", "id": "bp1", "status": "final",
  "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
  "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9", "display": "Blood pressure panel"}],
           "text": "Blood Pressure"},
  "subject": {"reference": "Patient/pat1"},
  "encounter": {"reference": "Encounter/e1"},
  "effectivePeriod": {"start": "2021-05-06T10:00:00+02:00", "end": "2021-05-06T10:30:00+02:00"},
  "valueQuantity": {"value": 120.50, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
  "component": [
    {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
     "valueQuantity": {"value": 120, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
    {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
     "valueQuantity": {"value": 8e1, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
    {"code": {"coding": [{"system": "http://loinc.org", "code": "x-no-value"}]}}
  ]
})";

TEST(ExtractTest, ObservationCodeAndValueQuantity) {
  IndexExtractor ex;
  ex.set_share_rows(false);  // each parameter's own rows, :text rows included (the store keeps fewer)
  ASSERT_OK_AND_ASSIGN(IndexRows rows, ex.Extract(kObservation));
  EXPECT_EQ(Tokens(rows, Id("Observation", "code")), (TokenSet{{TokenKind::kCode, "http://loinc.org", "85354-9"},
                                                               {TokenKind::kText, "", "blood pressure panel"},
                                                               {TokenKind::kText, "", "blood pressure"}}));
  auto q = Of(rows.quantities, Id("Observation", "value-quantity"));
  ASSERT_EQ(q.size(), 1u);
  EXPECT_EQ(q[0].system, "http://unitsofmeasure.org");
  EXPECT_EQ(q[0].code, "mm[Hg]");
  EXPECT_EQ(q[0].unit, "mmHg");
  EXPECT_DOUBLE_EQ(q[0].value, 120.5);
  // "120.50" as written: two decimals of precision, not the double's shortest form "120.5".
  EXPECT_NEAR(q[0].lo, 120.495, 1e-9);
  EXPECT_NEAR(q[0].hi, 120.505, 1e-9);

  auto cq = Of(rows.quantities, Id("Observation", "component-value-quantity"));
  ASSERT_EQ(cq.size(), 2u);
  std::set<std::tuple<double, double, double>> ranges;
  for (const auto& r : cq) ranges.insert({r.value, r.lo, r.hi});
  EXPECT_EQ(ranges, (std::set<std::tuple<double, double, double>>{{80, 75, 85}, {120, 119.5, 120.5}}));
}

TEST(ExtractTest, ObservationDatesAndReferences) {
  IndexExtractor ex;
  ex.set_share_rows(false);  // each parameter's own rows (the store shares some: SharedRows tests)
  ASSERT_OK_AND_ASSIGN(IndexRows rows, ex.Extract(kObservation));
  auto date = Of(rows.dates, Id("Observation", "date"));
  ASSERT_EQ(date.size(), 1u);
  EXPECT_EQ(date[0].lo, ParseDateRange("2021-05-06T08:00:00Z")->lo);
  EXPECT_EQ(date[0].hi, ParseDateRange("2021-05-06T08:30:00Z")->hi);
  EXPECT_EQ(References(rows, Id("Observation", "subject")), (RefSet{{"Patient", "pat1", ""}}));
  EXPECT_EQ(References(rows, Id("Observation", "patient")), (RefSet{{"Patient", "pat1", ""}}));
  EXPECT_EQ(References(rows, Id("Observation", "encounter")), (RefSet{{"Encounter", "e1", ""}}));
}

TEST(ExtractTest, ObservationCompositeGroups) {
  IndexExtractor ex;
  ASSERT_OK_AND_ASSIGN(IndexRows rows, ex.Extract(kObservation));
  const ParamId id = Id("Observation", "component-code-value-quantity");
  auto c = Of(rows.composites, id);
  // Components 0 and 1 are complete tuples (groups 0, 1); component 2 has no value and yields no rows.
  using Key = std::tuple<int, int, std::string, std::string, double, double, double>;
  std::set<Key> got;
  for (const CompositeRow& r : c) {
    got.insert({r.group, r.component, r.s1, r.s2, r.n0, r.n1, r.n2});
    EXPECT_EQ(r.type, r.component == 0 ? ParamType::kToken : ParamType::kQuantity);
  }
  EXPECT_EQ(got, (std::set<Key>{{0, 0, "http://loinc.org", "8480-6", 0, 0, 0},
                                {0, 1, "http://unitsofmeasure.org", "mm[Hg]", 120, 119.5, 120.5},
                                {1, 0, "http://loinc.org", "8462-4", 0, 0, 0},
                                {1, 1, "http://unitsofmeasure.org", "mm[Hg]", 80, 75, 85}}));
  // The whole-resource composite: one tuple, the Observation itself.
  auto whole = Of(rows.composites, Id("Observation", "code-value-quantity"));
  ASSERT_EQ(whole.size(), 2u);
  for (const CompositeRow& r : whole) EXPECT_EQ(r.group, 0);
}

TEST(ExtractTest, EncounterPeriodAndLength) {
  IndexExtractor ex;
  ex.set_share_rows(false);  // each parameter's own rows (the store shares some: SharedRows tests)
  ASSERT_OK_AND_ASSIGN(IndexRows rows, ex.Extract(R"({
    "resourceType": "Encounter", "id": "e1", "status": "in-progress",
    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
    "type": [{"coding": [{"system": "http://snomed.info/sct", "code": "185349003"}]}],
    "subject": {"reference": "Patient/pat1"},
    "participant": [{"individual": {"reference": "Practitioner/pr1"}}],
    "period": {"start": "2021-05-06"},
    "length": {"value": 30, "unit": "min", "system": "http://unitsofmeasure.org", "code": "min"}
  })"));
  auto date = Of(rows.dates, Id("Encounter", "date"));
  ASSERT_EQ(date.size(), 1u);
  EXPECT_EQ(date[0].lo, ParseDateRange("2021-05-06")->lo);
  EXPECT_EQ(date[0].hi, kOpenHigh);  // no end: open
  EXPECT_EQ(Tokens(rows, Id("Encounter", "class")),
            (TokenSet{{TokenKind::kCode, "http://terminology.hl7.org/CodeSystem/v3-ActCode", "AMB"}}));
  EXPECT_EQ(References(rows, Id("Encounter", "patient")), (RefSet{{"Patient", "pat1", ""}}));
  EXPECT_EQ(References(rows, Id("Encounter", "practitioner")), (RefSet{{"Practitioner", "pr1", ""}}));
  auto length = Of(rows.quantities, Id("Encounter", "length"));
  ASSERT_EQ(length.size(), 1u);
  EXPECT_EQ(length[0].code, "min");
  EXPECT_DOUBLE_EQ(length[0].lo, 29.5);
}

TEST(ExtractTest, ConditionOnsetAndAbatement) {
  IndexExtractor ex;
  ex.set_share_rows(false);  // each parameter's own rows (the store shares some: SharedRows tests)
  ASSERT_OK_AND_ASSIGN(IndexRows rows, ex.Extract(R"({
    "resourceType": "Condition", "id": "c1",
    "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
    "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006", "display": "Diabetes"}]},
    "subject": {"reference": "Patient/pat1"},
    "onsetDateTime": "2019-03",
    "abatementAge": {"value": 50, "unit": "a", "system": "http://unitsofmeasure.org", "code": "a"},
    "recordedDate": "2019-04-01T12:00:00Z"
  })"));
  auto onset = Of(rows.dates, Id("Condition", "onset-date"));
  ASSERT_EQ(onset.size(), 1u);
  EXPECT_EQ(onset[0].lo, ParseDateRange("2019-03-01")->lo);
  EXPECT_EQ(onset[0].hi, ParseDateRange("2019-03-31")->hi);
  auto age = Of(rows.quantities, Id("Condition", "abatement-age"));
  ASSERT_EQ(age.size(), 1u);
  EXPECT_EQ(age[0].code, "a");
  EXPECT_TRUE(Of(rows.dates, Id("Condition", "abatement-date")).empty());
  EXPECT_EQ(Tokens(rows, Id("Condition", "clinical-status")),
            (TokenSet{{TokenKind::kCode, "http://terminology.hl7.org/CodeSystem/condition-clinical", "active"}}));
  EXPECT_EQ(References(rows, Id("Condition", "patient")), (RefSet{{"Patient", "pat1", ""}}));
  auto recorded = Of(rows.dates, Id("Condition", "recorded-date"));
  ASSERT_EQ(recorded.size(), 1u);
  EXPECT_EQ(recorded[0].hi - recorded[0].lo, 999);
}

TEST(ExtractTest, MedicationRequestCodeOrReference) {
  IndexExtractor ex;
  ASSERT_OK_AND_ASSIGN(IndexRows rows, ex.Extract(R"({
    "resourceType": "MedicationRequest", "id": "m1", "status": "active", "intent": "order",
    "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "1049502"}]},
    "subject": {"reference": "Patient/pat1"},
    "requester": {"reference": "urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0"},
    "authoredOn": "2021-01-02T03:04:05Z",
    "dosageInstruction": [{"timing": {"event": ["2021-01-03", "2021-01-04"]}}]
  })"));
  EXPECT_EQ(Tokens(rows, Id("MedicationRequest", "code")),
            (TokenSet{{TokenKind::kCode, "http://www.nlm.nih.gov/research/umls/rxnorm", "1049502"}}));
  EXPECT_TRUE(References(rows, Id("MedicationRequest", "medication")).empty());
  EXPECT_EQ(Tokens(rows, Id("MedicationRequest", "intent")), (TokenSet{{TokenKind::kCode, "", "order"}}));
  EXPECT_EQ(References(rows, Id("MedicationRequest", "requester")),
            (RefSet{{"", "", "urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0"}}));
  auto authored = Of(rows.dates, Id("MedicationRequest", "authoredon"));
  ASSERT_EQ(authored.size(), 1u);
  EXPECT_EQ(authored[0].lo, ParseDateRange("2021-01-02T03:04:05Z")->lo);

  ASSERT_OK_AND_ASSIGN(IndexRows by_ref, ex.Extract(R"({"resourceType": "MedicationRequest",
    "medicationReference": {"reference": "Medication/med1"}, "subject": {"reference": "Patient/p"}})"));
  EXPECT_TRUE(Tokens(by_ref, Id("MedicationRequest", "code")).empty());
  EXPECT_EQ(References(by_ref, Id("MedicationRequest", "medication")), (RefSet{{"Medication", "med1", ""}}));
}

TEST(ExtractTest, DuplicatesAreDropped) {
  IndexExtractor ex;
  ASSERT_OK_AND_ASSIGN(IndexRows rows, ex.Extract(R"({"resourceType": "Patient",
    "name": [{"family": "Smith"}, {"family": "Smith"}],
    "identifier": [{"system": "s", "value": "1"}, {"system": "s", "value": "1"}]})"));
  EXPECT_EQ(Of(rows.strings, Id("Patient", "family")).size(), 1u);
  EXPECT_EQ(Of(rows.tokens, Id("Patient", "identifier")).size(), 1u);
}

TEST(ExtractTest, DomOverloadAndErrors) {
  IndexExtractor ex;
  EXPECT_FALSE(ex.Extract(std::string_view("{not json")).ok());
  EXPECT_FALSE(ex.Extract(std::string_view(R"({"id": "x"})")).ok());
  ASSERT_OK_AND_ASSIGN(IndexRows unknown, ex.Extract(std::string_view(R"({"resourceType": "Nope", "id": "x"})")));
  EXPECT_TRUE(unknown.empty());

  simdjson::dom::parser parser;
  simdjson::dom::element root;
  ASSERT_EQ(parser.parse(kObservation).get(root), simdjson::SUCCESS);
  ASSERT_OK_AND_ASSIGN(IndexRows rows, ex.Extract(root));
  // Without the source text the value's shortest form gives the precision: 120.5 → [120.45, 120.55).
  auto q = Of(rows.quantities, Id("Observation", "value-quantity"));
  ASSERT_EQ(q.size(), 1u);
  EXPECT_NEAR(q[0].lo, 120.45, 1e-9);
  EXPECT_EQ(Tokens(rows, Id("Observation", "status")), (TokenSet{{TokenKind::kCode, "", "final"}}));
}

TEST(ExtractTest, NumbersKeepTheirWrittenPrecisionAmongOthers) {
  IndexExtractor ex;
  // Numbers elsewhere in the document (and a string that looks like one) must not shift the text mapping.
  ASSERT_OK_AND_ASSIGN(IndexRows rows, ex.Extract(R"({"resourceType": "RiskAssessment", "note": [{"text": "-1 2 3e4"}],
    "prediction": [{"probabilityDecimal": 0.250, "relativeRisk": 2}, {"probabilityDecimal": 1E-1}]})"));
  auto n = Of(rows.numbers, Id("RiskAssessment", "probability"));
  std::set<std::tuple<double, double>> got;
  for (const auto& r : n) got.insert({r.lo, r.hi});
  ASSERT_EQ(got.size(), 2u);
  EXPECT_NEAR(std::get<0>(*got.begin()), 0.05, 1e-12);     // 1E-1: one significant digit
  EXPECT_NEAR(std::get<0>(*got.rbegin()), 0.2495, 1e-12);  // 0.250

  // A Range: from its low bound's range to its high bound's.
  ASSERT_OK_AND_ASSIGN(IndexRows range, ex.Extract(R"({"resourceType": "RiskAssessment",
    "prediction": [{"probabilityRange": {"low": {"value": 0.2}, "high": {"value": 0.40}}}]})"));
  auto r = Of(range.numbers, Id("RiskAssessment", "probability"));
  ASSERT_EQ(r.size(), 1u);
  EXPECT_NEAR(r[0].lo, 0.15, 1e-12);
  EXPECT_NEAR(r[0].hi, 0.405, 1e-12);
}

// ---- shared rows (ParamDef::stored_in) -------------------------------------------------------------------

TEST(ExtractTest, SharedRowsAreKeptOnceAndWhatResolveTypedWithoutATypeStays) {
  constexpr std::string_view kObs = R"({"resourceType": "Observation", "id": "o1", "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
    "subject": {"reference": "Patient/pat1"},
    "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                   "valueQuantity": {"value": 120, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}]})";
  IndexExtractor ex;
  ASSERT_OK_AND_ASSIGN(IndexRows rows, ex.Extract(kObs));
  EXPECT_EQ(References(rows, Id("Observation", "subject")), (RefSet{{"Patient", "pat1", ""}}));
  EXPECT_EQ(References(rows, Id("Observation", "patient")), RefSet{});  // subject's Patient rows are its rows
  EXPECT_EQ(Tokens(rows, Id("Observation", "combo-code")), TokenSet{});
  EXPECT_EQ(Of(rows.composites, Id("Observation", "combo-code-value-quantity")).size(), 0u);
  EXPECT_EQ(Of(rows.quantities, Id("Observation", "combo-value-quantity")).size(), 0u);
  EXPECT_EQ(Tokens(rows, Id("Observation", "component-code")),
            (TokenSet{{TokenKind::kCode, "http://loinc.org", "8480-6"}}));
  // A subject that resolve() types as Patient but whose row has no type (another server's URL): patient keeps it.
  constexpr std::string_view kRemote = R"({"resourceType": "Observation", "id": "o2", "status": "final",
    "code": {"text": "x"}, "subject": {"reference": "https://other.example/fhir/Patient/p9"}})";
  ASSERT_OK_AND_ASSIGN(IndexRows remote, ex.Extract(kRemote));
  const RefSet url{{"", "", "https://other.example/fhir/Patient/p9"}};
  EXPECT_EQ(References(remote, Id("Observation", "subject")), url);
  EXPECT_EQ(References(remote, Id("Observation", "patient")), url);
}

TEST(ExtractTest, TextRowsAreKeptOnlyForValuesWithoutACode) {
  constexpr std::string_view kCond = R"({"resourceType": "Condition", "id": "c1",
    "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006", "display": "Diabetes"}],
             "text": "Type 2 diabetes"},
    "category": [{"text": "Only text here"}],
    "subject": {"reference": "Patient/p1"}})";
  IndexExtractor ex;
  ASSERT_OK_AND_ASSIGN(IndexRows rows, ex.Extract(kCond));
  EXPECT_EQ(Tokens(rows, Id("Condition", "code")),
            (TokenSet{{TokenKind::kCode, "http://snomed.info/sct", "44054006"}}));
  EXPECT_EQ(Tokens(rows, Id("Condition", "category")),
            (TokenSet{{TokenKind::kText, "", NormalizeString("Only text here")}}));
  const ParamDef* code = FindParam("Condition", "code");
  ASSERT_NE(code, nullptr);
  ASSERT_OK_AND_ASSIGN(auto texts, ex.TokenTexts(kCond, *code));
  EXPECT_EQ(std::set<std::string>(texts.begin(), texts.end()),
            (std::set<std::string>{NormalizeString("Diabetes"), NormalizeString("Type 2 diabetes")}));
  const ParamDef* subject = FindParam("Condition", "subject");
  ASSERT_NE(subject, nullptr);
  ASSERT_OK_AND_ASSIGN(auto none, ex.TokenTexts(kCond, *subject));  // not a token parameter
  EXPECT_TRUE(none.empty());
  EXPECT_FALSE(ex.TokenTexts("{not json", *code).ok());
}

// Key of a composite tuple: its component rows without the parameter and group numbers.
using TupleKey =
    std::set<std::tuple<int, std::string, std::string, std::string, int64_t, int64_t, double, double, double>>;
std::set<TupleKey> Tuples(const IndexRows& rows, ParamId id) {
  std::map<int, TupleKey> by_group;
  for (const CompositeRow& r : Of(rows.composites, id)) {
    by_group[r.group].insert({r.component, r.s1, r.s2, r.s3, r.i1, r.i2, r.n0, r.n1, r.n2});
  }
  std::set<TupleKey> out;
  for (auto& [g, t] : by_group) out.insert(t);
  return out;
}

template <typename Key>
void CheckShared(const ParamDef& p, const std::function<std::set<Key>(const IndexRows&, const StoredIn*)>& of,
                 const IndexRows& all, const IndexRows& stored, const std::string& where) {
  std::set<Key> rebuilt = of(stored, nullptr);
  for (const Key& k : rebuilt) ASSERT_TRUE(of(all, nullptr).count(k)) << where << ": a row " << p.code << " lacks";
  for (const StoredIn& in : p.stored_in) {
    for (const Key& k : of(stored, &in)) {
      EXPECT_FALSE(of(stored, nullptr).count(k)) << where << ": " << p.code << " keeps a shared row twice";
      rebuilt.insert(k);
    }
  }
  EXPECT_EQ(rebuilt, of(all, nullptr)) << where << ": " << p.code << " (own rows + shared rows)";
  if (p.rows_elsewhere) EXPECT_TRUE(of(stored, nullptr).empty()) << where << ": " << p.code;
}

// Over every resource of the 100-patient sample: for each parameter that shares rows, its own stored rows plus the
// shared rows of the parameters it names are exactly the rows it would have alone, and no row is kept twice.
TEST(ExtractTest, SharedRowsRebuildEveryParametersOwnRowsOnTheSample) {
  const std::filesystem::path dir = std::filesystem::path(FHIRLAKE_SAMPLE_DIR);
  ASSERT_TRUE(std::filesystem::is_directory(dir)) << dir << " is missing: run scripts/sample-data.sh";
  IndexExtractor full, shared;
  full.set_share_rows(false);
  simdjson::dom::parser parser;
  size_t resources = 0, checked = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (e.path().extension() != ".json") continue;
    std::ifstream in(e.path(), std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    simdjson::dom::element bundle;
    ASSERT_EQ(parser.parse(text.str()).get(bundle), simdjson::SUCCESS) << e.path();
    simdjson::dom::array entries;
    if (bundle["entry"].get(entries) != simdjson::SUCCESS) continue;  // not a Bundle (the sample's own notes)
    // Synthea's bundles refer by urn:uuid; written as the loader stores them (Type/id), as in a real store.
    std::map<std::string, std::string, std::less<>> local;
    for (simdjson::dom::element entry : entries) {
      std::string_view url, type, id;
      if (entry["fullUrl"].get(url) == simdjson::SUCCESS &&
          entry["resource"]["resourceType"].get(type) == simdjson::SUCCESS &&
          entry["resource"]["id"].get(id) == simdjson::SUCCESS) {
        local.emplace(std::string(url), std::string(type) + "/" + std::string(id));
      }
    }
    for (simdjson::dom::element entry : entries) {
      simdjson::dom::element res;
      if (entry["resource"].get(res) != simdjson::SUCCESS) continue;
      std::string json = simdjson::minify(res);
      constexpr std::string_view kRef = "\"reference\":\"";
      for (size_t at = json.find(kRef); at != std::string::npos; at = json.find(kRef, at + 1)) {
        const size_t start = at + kRef.size(), end = json.find('"', start);
        auto it = local.find(std::string_view(json).substr(start, end - start));
        if (it != local.end()) json.replace(start, end - start, it->second);
      }
      ASSERT_OK_AND_ASSIGN(IndexRows all, full.Extract(json));
      ASSERT_OK_AND_ASSIGN(IndexRows stored, shared.Extract(json));
      ++resources;
      std::string_view type = res["resourceType"].get_string().value_unsafe();
      for (const ParamDef* p : ParamsForType(type)) {
        if (p->stored_in.empty()) {
          if (p->type == ParamType::kToken) {
            // :text rows are kept only for values without a code; code rows all; and a parameter with any row
            // keeps one (so :missing answers as before).
            const TokenSet l = Tokens(all, p->id), st = Tokens(stored, p->id);
            ASSERT_EQ(CodeTokens(stored, p->id), CodeTokens(all, p->id)) << type << "." << p->code;
            for (const auto& t : st) ASSERT_TRUE(l.count(t)) << type << "." << p->code;
            ASSERT_EQ(l.empty(), st.empty()) << type << "." << p->code << " in " << e.path().filename();
          }
          continue;
        }
        ++checked;
        const std::string where = std::string(type) + " in " + e.path().filename().string();
        auto ids = [&](const StoredIn* in) { return in ? in->param : p->id; };
        switch (p->type) {
          case ParamType::kReference:
            CheckShared<std::tuple<std::string, std::string, std::string>>(
                *p,
                [&](const IndexRows& r, const StoredIn* in) {
                  RefSet out;
                  for (const auto& x : References(r, ids(in))) {
                    if (!in || in->target_type.empty() || std::get<0>(x) == in->target_type) out.insert(x);
                  }
                  return out;
                },
                all, stored, where);
            break;
          case ParamType::kToken:
            CheckShared<std::tuple<TokenKind, std::string, std::string>>(
                *p, [&](const IndexRows& r, const StoredIn* in) { return CodeTokens(r, ids(in)); }, all, stored, where);
            break;
          case ParamType::kString:
            CheckShared<std::pair<std::string, std::string>>(
                *p, [&](const IndexRows& r, const StoredIn* in) { return Strings(r, ids(in)); }, all, stored, where);
            break;
          case ParamType::kQuantity:
            CheckShared<std::tuple<std::string, std::string, std::string, double, double, double>>(
                *p,
                [&](const IndexRows& r, const StoredIn* in) {
                  std::set<std::tuple<std::string, std::string, std::string, double, double, double>> out;
                  for (const QuantityRow& q : Of(r.quantities, ids(in)))
                    out.insert({q.system, q.code, q.unit, q.value, q.lo, q.hi});
                  return out;
                },
                all, stored, where);
            break;
          case ParamType::kComposite:
            CheckShared<TupleKey>(
                *p, [&](const IndexRows& r, const StoredIn* in) { return Tuples(r, ids(in)); }, all, stored, where);
            break;
          default:
            ADD_FAILURE() << p->code << ": a shared parameter of a type this test does not compare";
        }
        if (::testing::Test::HasFailure()) return;
      }
    }
  }
  EXPECT_GT(resources, 30000u);
  EXPECT_GT(checked, 30000u);  // every Observation, Encounter, Condition... has some
}

// One extractor per thread; the compiled expressions are shared (built once, whichever thread comes first).
TEST(ExtractTest, ExtractorsOnSeveralThreadsAgree) {
  std::vector<size_t> counts(4);
  std::vector<std::thread> threads;
  for (size_t t = 0; t < counts.size(); ++t) {
    threads.emplace_back([&counts, t] {
      IndexExtractor ex;
      for (int i = 0; i < 200; ++i) {
        auto rows = ex.Extract(i % 2 ? kObservation : kPatient);
        if (rows.ok() && i % 2) counts[t] = rows->tokens.size() + rows->composites.size() + rows->quantities.size();
      }
    });
  }
  for (auto& th : threads) th.join();
  IndexExtractor reference;
  ASSERT_OK_AND_ASSIGN(IndexRows expected, reference.Extract(kObservation));
  for (size_t c : counts)
    EXPECT_EQ(c, expected.tokens.size() + expected.composites.size() + expected.quantities.size());
}

}  // namespace
}  // namespace fhirlake::search
