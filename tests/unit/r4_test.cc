// Tests for the generated FHIR R4 tables (src/fhir/r4.h, r4_tables_generated.cc, r4_elements_generated.cc).
#include "fhir/r4.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

namespace fhirlake::fhir {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

std::vector<std::string> Paths(std::string_view type) {
  auto paths = PatientCompartmentPaths(type);
  return {paths.begin(), paths.end()};
}

TEST(R4Test, AllResourceTypesHas145SortedUniqueNames) {
  auto types = AllResourceTypes();
  EXPECT_EQ(types.size(), 145u);
  EXPECT_TRUE(std::is_sorted(types.begin(), types.end()));
  EXPECT_EQ(std::adjacent_find(types.begin(), types.end()), types.end());
  EXPECT_EQ(types.front(), "Account");
  EXPECT_EQ(types.back(), "VisionPrescription");
  for (std::string_view type : types) EXPECT_TRUE(IsKnownResourceType(type)) << type;
}

TEST(R4Test, KnownResourceTypes) {
  for (std::string_view type : {"Patient", "Observation", "Encounter", "Bundle", "Practitioner", "Device",
                                "OperationOutcome", "Binary", "Account", "VisionPrescription"}) {
    EXPECT_TRUE(IsKnownResourceType(type)) << type;
  }
}

TEST(R4Test, UnknownResourceTypes) {
  // Case-sensitive, exact match only.
  for (std::string_view type : {"patient", "PATIENT", "Patient ", " Patient", "Patien", "Patients", "", "Resource",
                                "DomainResource", "MedicationKnowledge2", "Zzz", "AAA", "DeviceUseStatements"}) {
    EXPECT_FALSE(IsKnownResourceType(type)) << type;
    EXPECT_FALSE(IsPatientCompartmentType(type)) << type;
    EXPECT_THAT(Paths(type), IsEmpty()) << type;
  }
  // Abstract types and Parameters (operation input/output only) are not in the R4 CompartmentDefinition's list.
  EXPECT_FALSE(IsKnownResourceType("Parameters"));
  // R5-only names are not R4 types.
  EXPECT_FALSE(IsKnownResourceType("DeviceUsage"));
  EXPECT_FALSE(IsKnownResourceType("Requirements"));
}

TEST(R4Test, PatientCompartmentTypes) {
  for (std::string_view type : {"Patient", "Observation", "Encounter", "Claim", "CareTeam", "Group", "Coverage",
                                "AuditEvent", "Person", "RelatedPerson", "Task", "Invoice"}) {
    EXPECT_TRUE(IsPatientCompartmentType(type)) << type;
    EXPECT_THAT(Paths(type), testing::Not(IsEmpty())) << type;
  }
  // Types whose CompartmentDefinition entry has no param are not compartment members (Device is not, in R4).
  for (std::string_view type : {"Practitioner", "Organization", "Device", "Medication", "Location", "Bundle",
                                "PractitionerRole", "HealthcareService", "Questionnaire", "ValueSet"}) {
    EXPECT_TRUE(IsKnownResourceType(type)) << type;
    EXPECT_FALSE(IsPatientCompartmentType(type)) << type;
    EXPECT_THAT(Paths(type), IsEmpty()) << type;
  }
}

TEST(R4Test, EveryCompartmentTypeHasPathsAndOnlyThose) {
  int compartment_types = 0;
  for (std::string_view type : AllResourceTypes()) {
    auto paths = PatientCompartmentPaths(type);
    EXPECT_EQ(IsPatientCompartmentType(type), !paths.empty()) << type;
    EXPECT_TRUE(std::is_sorted(paths.begin(), paths.end())) << type;
    EXPECT_EQ(std::adjacent_find(paths.begin(), paths.end()), paths.end()) << type;
    for (std::string_view path : paths) {
      EXPECT_FALSE(path.empty()) << type;
      EXPECT_FALSE(path.starts_with(type)) << type << ": " << path;  // type prefix removed
      EXPECT_EQ(path.find_first_of("[]()| "), std::string_view::npos) << type << ": " << path;
      EXPECT_FALSE(path.starts_with('.') || path.ends_with('.')) << type << ": " << path;
    }
    if (IsPatientCompartmentType(type)) ++compartment_types;
  }
  EXPECT_EQ(compartment_types, 67);  // 66 types with params in the R4 Patient CompartmentDefinition + Patient.
}

TEST(R4Test, PatientCompartmentPathSpotChecks) {
  EXPECT_THAT(Paths("Observation"), ElementsAre("performer", "subject"));
  EXPECT_THAT(Paths("Patient"), ElementsAre("link.other"));
  EXPECT_THAT(Paths("Encounter"), ElementsAre("subject"));
  EXPECT_THAT(Paths("Claim"), ElementsAre("patient", "payee.party"));
  EXPECT_THAT(Paths("CareTeam"), ElementsAre("participant.member", "subject"));
  EXPECT_THAT(Paths("Group"), ElementsAre("member.entity"));
  // "patient" via the shared multi-type clinical-patient expression (CarePlan.subject.where(resolve() is Patient)).
  EXPECT_THAT(Paths("CarePlan"), ElementsAre("activity.detail.performer", "subject"));
  // Invoice "subject" and "patient" both map to "subject": de-duplicated.
  EXPECT_THAT(Paths("Invoice"), ElementsAre("recipient", "subject"));
  EXPECT_THAT(Paths("Task"), ElementsAre("focus", "for"));
  EXPECT_THAT(Paths("AuditEvent"), ElementsAre("agent.who", "entity.what"));
  EXPECT_THAT(Paths("Coverage"), ElementsAre("beneficiary", "payor", "policyHolder", "subscriber"));
  EXPECT_THAT(Paths("Person"), ElementsAre("link.target"));
  EXPECT_THAT(Paths("Appointment"), ElementsAre("participant.actor"));
  EXPECT_THAT(Paths("MedicationAdministration"), ElementsAre("performer.actor", "subject"));
  EXPECT_THAT(Paths("Practitioner"), IsEmpty());
  EXPECT_FALSE(IsPatientCompartmentType("Practitioner"));
}

TEST(R4Test, ReturnedViewsPointAtStaticStorage) {
  // Same span on every call: nothing is built per lookup.
  EXPECT_EQ(AllResourceTypes().data(), AllResourceTypes().data());
  EXPECT_EQ(PatientCompartmentPaths("Observation").data(), PatientCompartmentPaths("Observation").data());
  std::string type = "Observation";  // lookups work with non-literal, non-NUL-terminated input
  EXPECT_THAT(Paths(std::string_view(type)), ElementsAre("performer", "subject"));
  EXPECT_TRUE(IsKnownResourceType(std::string_view("Patients").substr(0, 7)));
}

// --- element types (r4_elements_generated.cc) ---

ElementType Member(std::string_view context_name, std::string_view member) {
  ElementContext context = ResourceContext(context_name);
  EXPECT_NE(context, kOpaqueContext) << context_name;
  return MemberType(context, member);
}

TEST(R4ElementsTest, NumbersOfResourcesAndDataTypes) {
  EXPECT_EQ(Member("Observation", "valueInteger").kind, ElementKind::kInteger);
  EXPECT_EQ(Member("Patient", "multipleBirthInteger").kind, ElementKind::kInteger);
  EXPECT_EQ(Member("Bundle", "total").kind, ElementKind::kUnsignedInt);
  ElementType quantity = Member("Observation", "valueQuantity");
  ASSERT_EQ(quantity.kind, ElementKind::kComplex);
  EXPECT_EQ(ContextName(quantity.context), "Quantity");
  EXPECT_EQ(MemberType(quantity.context, "value").kind, ElementKind::kDecimal);
  EXPECT_EQ(MemberType(quantity.context, "unit").kind, ElementKind::kOpaque);  // a string: nothing to check
  ElementType telecom = Member("Patient", "telecom");
  EXPECT_EQ(ContextName(telecom.context), "ContactPoint");
  EXPECT_EQ(MemberType(telecom.context, "rank").kind, ElementKind::kPositiveInt);
}

TEST(R4ElementsTest, BackboneElementsAndContentReferences) {
  ElementType component = Member("Observation", "component");
  ASSERT_EQ(component.kind, ElementKind::kComplex);
  EXPECT_EQ(ContextName(component.context), "Observation.component");
  EXPECT_EQ(MemberType(component.context, "valueInteger").kind, ElementKind::kInteger);
  ElementType item = Member("Questionnaire", "item");
  EXPECT_EQ(ContextName(item.context), "Questionnaire.item");
  EXPECT_EQ(MemberType(item.context, "item").context, item.context);  // #Questionnaire.item
  EXPECT_EQ(MemberType(item.context, "maxLength").kind, ElementKind::kInteger);
  ElementType dosage = Member("MedicationRequest", "dosageInstruction");
  EXPECT_EQ(ContextName(dosage.context), "Dosage");
  ElementType timing = MemberType(dosage.context, "timing");
  EXPECT_EQ(ContextName(timing.context), "Timing");
  ElementType repeat = MemberType(timing.context, "repeat");  // an Element inside a data type
  EXPECT_EQ(ContextName(repeat.context), "Timing.repeat");
  EXPECT_EQ(MemberType(repeat.context, "count").kind, ElementKind::kPositiveInt);
}

TEST(R4ElementsTest, ExtensionsEverywhereAndResources) {
  for (ElementContext context : {kOpaqueContext, ResourceContext("Patient"), ExtensionContext()}) {
    EXPECT_EQ(MemberType(context, "extension").context, ExtensionContext());
    EXPECT_EQ(MemberType(context, "modifierExtension").context, ExtensionContext());
  }
  EXPECT_EQ(ContextName(ExtensionContext()), "Extension");
  EXPECT_EQ(MemberType(ExtensionContext(), "valueUnsignedInt").kind, ElementKind::kUnsignedInt);
  EXPECT_EQ(MemberType(ExtensionContext(), "valueString").kind, ElementKind::kOpaque);
  EXPECT_EQ(Member("Patient", "contained").kind, ElementKind::kResource);
  EXPECT_EQ(MemberType(MemberType(ResourceContext("Bundle"), "entry").context, "resource").kind,
            ElementKind::kResource);
  EXPECT_NE(ResourceContext("Parameters"), kOpaqueContext);  // not in AllResourceTypes(), but a resource
  EXPECT_EQ(ResourceContext("Quantity"), kOpaqueContext);    // a data type, not a resource
  EXPECT_EQ(ResourceContext("Nope"), kOpaqueContext);
  EXPECT_EQ(MemberType(kOpaqueContext, "value").kind, ElementKind::kOpaque);
  EXPECT_EQ(MemberType(ResourceContext("Patient"), "noSuchMember").kind, ElementKind::kOpaque);
  for (std::string_view type : AllResourceTypes()) {
    ElementContext context = ResourceContext(type);
    // Every DomainResource has `contained`, so every resource but Binary (no member holds a number) has a context.
    if (type == "Binary") {
      EXPECT_EQ(context, kOpaqueContext);
    } else {
      EXPECT_EQ(ContextName(context), type);
    }
  }
}

TEST(R4Test, ElementShapesGiveCardinalityAndKind) {
  ShapeContext patient = ResourceShape("Patient");
  ASSERT_NE(patient, kUnknownShape);
  EXPECT_EQ(ShapeName(patient), "Patient");
  ElementShape name = MemberShape(patient, "name");
  EXPECT_EQ(name.kind, ShapeKind::kComplex);
  EXPECT_TRUE(name.repeating);
  EXPECT_EQ(ShapeName(name.context), "HumanName");
  EXPECT_EQ(name.context, DataTypeShape("HumanName"));
  ElementShape given = MemberShape(name.context, "given");
  EXPECT_EQ(given.kind, ShapeKind::kPrimitive);
  EXPECT_TRUE(given.repeating);
  ElementShape family = MemberShape(name.context, "family");
  EXPECT_EQ(family.kind, ShapeKind::kPrimitive);
  EXPECT_FALSE(family.repeating);
  EXPECT_FALSE(MemberShape(patient, "birthDate").repeating);
  EXPECT_FALSE(MemberShape(patient, "active").repeating);
  EXPECT_EQ(MemberShape(patient, "deceasedBoolean").kind, ShapeKind::kPrimitive);  // choices by JSON name
  EXPECT_EQ(MemberShape(patient, "deceased").kind, ShapeKind::kUnknown);
  EXPECT_EQ(ShapeName(MemberShape(patient, "contact").context), "Patient.contact");  // a backbone element
  EXPECT_EQ(MemberShape(patient, "contained").kind, ShapeKind::kResource);
  EXPECT_FALSE(MemberShape(patient, "managingOrganization").repeating);
  EXPECT_EQ(MemberShape(patient, "noSuchMember").kind, ShapeKind::kUnknown);
  EXPECT_EQ(MemberShape(kUnknownShape, "name").kind, ShapeKind::kUnknown);
  EXPECT_NE(ResourceShape("Parameters"), kUnknownShape);
  EXPECT_EQ(ResourceShape("HumanName"), kUnknownShape);        // a data type, not a resource
  EXPECT_EQ(DataTypeShape("Patient"), kUnknownShape);          // a resource, not a data type
  EXPECT_EQ(DataTypeShape("Patient.contact"), kUnknownShape);  // a backbone element
  EXPECT_EQ(ResourceShape(""), kUnknownShape);
  for (std::string_view type : AllResourceTypes()) EXPECT_EQ(ShapeName(ResourceShape(type)), type);
}

}  // namespace
}  // namespace fhirlake::fhir
