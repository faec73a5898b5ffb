// Tests of search/search_params.h against the official definitions (third_party/fhir-r4/search-parameters.json,
// read at test time): every definition with an expression is in the registry for each of its base types, with the
// same type and url, or listed as unsupported; at most 2% are unsupported.
#include "search/search_params.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "fhir/r4.h"

#ifndef SEARCH_PARAMETERS_JSON
#error "SEARCH_PARAMETERS_JSON must name third_party/fhir-r4/search-parameters.json"
#endif

namespace fhirlake::search {
namespace {

nlohmann::json LoadDefinitions() {
  std::ifstream in(SEARCH_PARAMETERS_JSON);
  EXPECT_TRUE(in.good()) << SEARCH_PARAMETERS_JSON;
  return nlohmann::json::parse(in);
}

std::vector<std::string> BaseTypes(const nlohmann::json& sp) {
  std::vector<std::string> out;
  for (const auto& base : sp["base"]) {
    const std::string b = base.get<std::string>();
    if (b == "Resource" || b == "DomainResource") {
      for (std::string_view t : fhir::AllResourceTypes()) {
        if (b == "DomainResource" && (t == "Bundle" || t == "Binary")) continue;
        out.emplace_back(t);
      }
    } else {
      out.push_back(b);
    }
  }
  return out;
}

TEST(SearchParamsTest, EveryDefinitionIsIndexedOrListedUnsupported) {
  const nlohmann::json bundle = LoadDefinitions();
  std::set<std::string> unsupported;
  for (const UnsupportedParam& u : UnsupportedParams()) {
    EXPECT_FALSE(u.reason.empty()) << u.url;
    unsupported.emplace(u.url);
  }
  size_t with_expression = 0, checked = 0;
  std::set<std::string> unsupported_with_expression;
  for (const auto& entry : bundle["entry"]) {
    const auto& sp = entry["resource"];
    const std::string url = sp["url"], code = sp["code"], type = sp["type"];
    if (!sp.contains("expression")) {
      EXPECT_TRUE(unsupported.count(url)) << url << " has no expression and is not listed as unsupported";
      continue;
    }
    ++with_expression;
    for (const std::string& base : BaseTypes(sp)) {
      const ParamDef* def = FindParam(base, code);
      if (def == nullptr) {
        EXPECT_TRUE(unsupported.count(url)) << base << "." << code << " (" << url << ") missing and not unsupported";
        unsupported_with_expression.insert(url);
        continue;
      }
      ++checked;
      EXPECT_EQ(def->url, url) << base << "." << code;
      EXPECT_EQ(ParamTypeName(def->type), type) << base << "." << code;
      EXPECT_EQ(def->resource_type, base);
      EXPECT_FALSE(def->expression.empty());
      if (type == "reference") {
        std::set<std::string> targets;
        for (const auto& t : sp.value("target", nlohmann::json::array())) targets.insert(t.get<std::string>());
        EXPECT_EQ(def->targets.size(), targets.size()) << base << "." << code;
        EXPECT_TRUE(std::is_sorted(def->targets.begin(), def->targets.end()));
      }
      if (type == "composite") {
        ASSERT_EQ(def->components.size(), sp["component"].size()) << base << "." << code;
        for (size_t i = 0; i < def->components.size(); ++i) {
          const ParamDef& component = ParamById(def->components[i].param);
          EXPECT_EQ(component.resource_type, base);
          EXPECT_EQ(component.url, sp["component"][i]["definition"].get<std::string>());
          EXPECT_EQ(def->components[i].expression, sp["component"][i]["expression"].get<std::string>());
        }
      }
    }
  }
  std::cout << "unsupported definitions (" << UnsupportedParams().size() << "):\n";
  for (const UnsupportedParam& u : UnsupportedParams()) std::cout << "  " << u.url << ": " << u.reason << "\n";
  std::cout << checked << " (type, code) pairs checked; " << unsupported_with_expression.size() << " of "
            << with_expression << " definitions with an expression unsupported\n";
  EXPECT_LE(unsupported_with_expression.size() * 50, with_expression);
  EXPECT_GT(checked, 2000u);
}

TEST(SearchParamsTest, LookupsAndOrdering) {
  EXPECT_EQ(ParamCount() > 0, true);
  for (size_t i = 0; i < ParamCount(); ++i) EXPECT_EQ(ParamById(static_cast<ParamId>(i)).id, i);
  for (std::string_view type : fhir::AllResourceTypes()) {
    auto params = ParamsForType(type);
    ASSERT_FALSE(params.empty()) << type;
    for (size_t i = 1; i < params.size(); ++i) EXPECT_LT(params[i - 1]->code, params[i]->code);
    for (std::string_view common : {"_id", "_lastUpdated", "_tag", "_profile", "_security", "_source"}) {
      const ParamDef* p = FindParam(type, common);
      ASSERT_NE(p, nullptr) << type << "." << common;
      EXPECT_EQ(p->from_resource_table, common == "_id" || common == "_lastUpdated");
    }
  }
  EXPECT_TRUE(ParamsForType("Nope").empty());
  EXPECT_EQ(FindParam("Patient", "nope"), nullptr);
  const ParamDef* birthdate = FindParam("Patient", "birthdate");
  ASSERT_NE(birthdate, nullptr);
  EXPECT_EQ(birthdate->type, ParamType::kDate);
  EXPECT_EQ(birthdate->expression, "Patient.birthDate");
  // A definition with several bases keeps only the alternatives of each base.
  const ParamDef* patient = FindParam("Observation", "patient");
  ASSERT_NE(patient, nullptr);
  EXPECT_EQ(patient->expression, "Observation.subject.where(resolve() is Patient)");
  EXPECT_EQ(patient->targets.size(), 1u);
  EXPECT_EQ(RegistryHash().size(), 16u);
}

}  // namespace
}  // namespace fhirlake::search
