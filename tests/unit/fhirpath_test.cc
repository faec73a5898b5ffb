// Tests of search/fhirpath.h: each construct of the subset on small resources.
#include "search/fhirpath.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "search/search_params.h"
#include "test_util.h"

namespace fhirlake::search {
namespace {

class FhirPathTest : public ::testing::Test {
 protected:
  // Evaluates `expression` over `json` (the resource and the context); returns the items.
  std::vector<PathNode> Eval(std::string_view json, std::string_view expression) {
    auto path = FhirPath::Compile(expression);
    EXPECT_TRUE(path.ok()) << path.status().ToString();
    if (!path.ok()) return {};
    paths_.push_back(std::move(path).value());
    simdjson::dom::element root;
    EXPECT_EQ(parser_.parse(json).get(root), simdjson::SUCCESS);
    const PathNode resource = ResourceNode(root);
    std::vector<PathNode> out;
    paths_.back().Evaluate(resource, resource, scratch_, out);
    return out;
  }

  // The items as text: strings as they are, booleans true/false, objects as their type name in brackets.
  std::vector<std::string> Strings(std::string_view json, std::string_view expression) {
    std::vector<std::string> out;
    for (const PathNode& n : Eval(json, expression)) {
      std::string_view s;
      if (n.kind == PathNode::Kind::kBool) {
        out.push_back(n.boolean ? "true" : "false");
      } else if (n.kind == PathNode::Kind::kTypeOnly) {
        out.push_back(std::string("->").append(n.type));
      } else if (n.json.get(s) == simdjson::SUCCESS) {
        out.emplace_back(s);
      } else {
        out.push_back(std::string("[").append(n.type).append("]"));
      }
    }
    return out;
  }

  simdjson::dom::parser parser_;
  PathScratch scratch_;
  std::vector<FhirPath> paths_;
};

using Items = std::vector<std::string>;

constexpr std::string_view kPatient = R"({
  "resourceType": "Patient", "id": "p1",
  "name": [{"family": "Smith", "given": ["Ann", "Marie"]}, {"family": "Jones", "given": ["A"]}],
  "telecom": [{"system": "phone", "value": "555"}, {"system": "email", "value": "a@b.c"}],
  "deceasedBoolean": false,
  "generalPractitioner": [{"reference": "Practitioner/9"}, {"reference": "http://x.org/fhir/Organization/3"},
                          {"reference": "#c1"}],
  "contained": [{"resourceType": "Practitioner", "id": "c1"}],
  "extension": [{"url": "http://e/a", "valueString": "A"}, {"url": "http://e/b", "valueCode": "B"}]
})";

TEST_F(FhirPathTest, MemberPathsFlattenArrays) {
  EXPECT_EQ(Strings(kPatient, "Patient.name.family"), (Items{"Smith", "Jones"}));
  EXPECT_EQ(Strings(kPatient, "Patient.name.given"), (Items{"Ann", "Marie", "A"}));
  EXPECT_EQ(Strings(kPatient, "name.given"), (Items{"Ann", "Marie", "A"}));  // not type-prefixed
  EXPECT_EQ(Strings(kPatient, "Patient.name"), (Items{"[HumanName]", "[HumanName]"}));
  EXPECT_TRUE(Strings(kPatient, "Patient.address.city").empty());
  EXPECT_TRUE(Strings(kPatient, "Observation.code").empty());  // another type: nothing
}

TEST_F(FhirPathTest, TypeFilterOfResourceAndCommonParams) {
  EXPECT_EQ(Strings(kPatient, "Resource.id"), (Items{"p1"}));
  EXPECT_EQ(Strings(kPatient, "Patient"), (Items{"[Patient]"}));
}

TEST_F(FhirPathTest, UnionAndIndex) {
  EXPECT_EQ(Strings(kPatient, "Patient.name.family | Patient.telecom.value"),
            (Items{"Smith", "Jones", "555", "a@b.c"}));
  EXPECT_EQ(Strings(kPatient, "Patient.name[1].family"), (Items{"Jones"}));
  EXPECT_TRUE(Strings(kPatient, "Patient.name[5].family").empty());
}

TEST_F(FhirPathTest, WhereWithEquality) {
  EXPECT_EQ(Strings(kPatient, "Patient.telecom.where(system='email').value"), (Items{"a@b.c"}));
  EXPECT_EQ(Strings(kPatient, "Patient.telecom.where(system='phone')"), (Items{"[ContactPoint]"}));
  EXPECT_TRUE(Strings(kPatient, "Patient.telecom.where(system='fax')").empty());
}

TEST_F(FhirPathTest, ResolveIsType) {
  EXPECT_EQ(Strings(kPatient, "Patient.generalPractitioner.resolve()"),
            (Items{"->Practitioner", "->Organization", "->Practitioner"}));
  EXPECT_EQ(Strings(kPatient, "Patient.generalPractitioner.where(resolve() is Organization).reference"),
            (Items{"http://x.org/fhir/Organization/3"}));
  EXPECT_EQ(Strings(kPatient, "Patient.generalPractitioner.where(resolve() is Practitioner).reference"),
            (Items{"Practitioner/9", "#c1"}));
}

TEST_F(FhirPathTest, ChoiceTypesAndAs) {
  constexpr std::string_view obs = R"({"resourceType": "Observation", "status": "final",
    "valueQuantity": {"value": 5.5, "unit": "mg"},
    "effectiveDateTime": "2020-01-02",
    "component": [{"code": {"text": "a"}, "valueString": "x"}, {"code": {"text": "b"}, "valueQuantity": {"value": 1}}]})";
  EXPECT_EQ(Strings(obs, "Observation.value"), (Items{"[Quantity]"}));
  EXPECT_EQ(Strings(obs, "(Observation.value as Quantity)"), (Items{"[Quantity]"}));
  EXPECT_TRUE(Strings(obs, "(Observation.value as CodeableConcept)").empty());
  EXPECT_EQ(Strings(obs, "Observation.value.as(Quantity).unit"), (Items{"mg"}));
  EXPECT_EQ(Strings(obs, "Observation.value.ofType(Quantity).unit"), (Items{"mg"}));
  EXPECT_EQ(Strings(obs, "Observation.effective"), (Items{"2020-01-02"}));
  auto effective = Eval(obs, "Observation.effective");
  ASSERT_EQ(effective.size(), 1u);
  EXPECT_EQ(effective[0].type, "dateTime");
  EXPECT_EQ(Strings(obs, "Observation.effective.as(DateTime)"), (Items{"2020-01-02"}));  // capitalised primitive
  EXPECT_EQ(Strings(obs, "Observation.component.value.as(string)"), (Items{"x"}));
  EXPECT_EQ(Strings(obs, "Observation.component.value as Quantity"), (Items{"[Quantity]"}));
  EXPECT_EQ(Strings(obs, "Observation.value is Quantity"), (Items{"true"}));
  EXPECT_EQ(Strings(obs, "Observation.value.is(Range)"), (Items{"false"}));
}

TEST_F(FhirPathTest, SubtypesMatchAs) {
  constexpr std::string_view cond = R"({"resourceType": "Condition", "onsetAge": {"value": 40, "unit": "a"}})";
  auto age = Eval(cond, "Condition.onset.as(Age)");
  ASSERT_EQ(age.size(), 1u);
  EXPECT_EQ(age[0].type, "Age");
  EXPECT_EQ(Eval(cond, "Condition.onset.as(Quantity)").size(), 1u);  // Age is a Quantity
  EXPECT_TRUE(Eval(cond, "Condition.onset.as(Range)").empty());
  EXPECT_TRUE(IsOfType("canonical", "uri"));
  EXPECT_TRUE(IsOfType("code", "string"));
  EXPECT_TRUE(IsOfType("Patient", "Resource"));
  EXPECT_FALSE(IsOfType("Bundle", "DomainResource"));
  EXPECT_FALSE(IsOfType("date", "dateTime"));
}

TEST_F(FhirPathTest, ExistsAndBooleanLogic) {
  EXPECT_EQ(Strings(kPatient, "Patient.deceased.exists() and Patient.deceased != false"), (Items{"false"}));
  EXPECT_EQ(Strings(R"({"resourceType":"Patient","deceasedDateTime":"2020"})",
                    "Patient.deceased.exists() and Patient.deceased != false"),
            (Items{"true"}));
  EXPECT_EQ(Strings(R"({"resourceType":"Patient","deceasedBoolean":true})",
                    "Patient.deceased.exists() and Patient.deceased != false"),
            (Items{"true"}));
  // Absent: exists() is false, so the conjunction is false (not empty).
  EXPECT_EQ(Strings(R"({"resourceType":"Patient"})", "Patient.deceased.exists() and Patient.deceased != false"),
            (Items{"false"}));
  EXPECT_EQ(Strings(kPatient, "Patient.name.exists()"), (Items{"true"}));
  EXPECT_EQ(Strings(kPatient, "Patient.address.empty()"), (Items{"true"}));
  EXPECT_EQ(Strings(kPatient, "Patient.address.exists().not()"), (Items{"true"}));
  EXPECT_EQ(Strings(kPatient, "Patient.name.first().family"), (Items{"Smith"}));
}

TEST_F(FhirPathTest, ExtensionByUrl) {
  EXPECT_EQ(Strings(kPatient, "Patient.extension('http://e/b').value"), (Items{"B"}));
  EXPECT_EQ(Strings(kPatient, "Patient.extension.where(url='http://e/a').value"), (Items{"A"}));
}

TEST_F(FhirPathTest, BundleEntryResourceAndResourceVariable) {
  constexpr std::string_view bundle = R"({"resourceType": "Bundle", "type": "document",
    "entry": [{"resource": {"resourceType": "Composition", "id": "c", "title": "T"}},
              {"resource": {"resourceType": "Patient", "id": "p"}}]})";
  auto first = Eval(bundle, "Bundle.entry[0].resource");
  ASSERT_EQ(first.size(), 1u);
  EXPECT_EQ(first[0].type, "Composition");
  EXPECT_EQ(Strings(bundle, "Bundle.entry[0].resource.title"), (Items{"T"}));  // typed by its resourceType
  EXPECT_EQ(Strings(bundle, "%resource.type"), (Items{"document"}));
}

TEST_F(FhirPathTest, RejectsWhatIsOutsideTheSubset) {
  for (const char* bad : {"Patient.name.select(family)", "Patient.name.count() > 1", "%context.id", "Patient.",
                          "Patient.name[x]", "(Patient.name", "Patient.name 'x'", "Patient.name as", "a ~ b"}) {
    EXPECT_FALSE(FhirPath::Compile(bad).ok()) << bad;
  }
}

TEST_F(FhirPathTest, EveryRegistryExpressionCompiles) {
  size_t compiled = 0;
  for (size_t i = 0; i < ParamCount(); ++i) {
    const ParamDef& def = ParamById(static_cast<ParamId>(i));
    auto p = FhirPath::Compile(def.expression);
    EXPECT_TRUE(p.ok()) << def.resource_type << "." << def.code << ": " << p.status().ToString();
    for (const CompositeComponent& c : def.components) {
      auto cp = FhirPath::Compile(c.expression);
      EXPECT_TRUE(cp.ok()) << def.resource_type << "." << def.code << ": " << cp.status().ToString();
    }
    compiled += p.ok();
  }
  EXPECT_EQ(compiled, ParamCount());
}

}  // namespace
}  // namespace fhirlake::search
