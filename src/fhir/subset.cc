#include "fhir/subset.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "fhir/r4.h"

namespace fhirlake::fhir {

std::string SubsetElements(std::string_view json, const std::vector<std::string>& elements) {
  nlohmann::ordered_json doc = nlohmann::ordered_json::parse(json, nullptr, /*allow_exceptions=*/false);
  if (!doc.is_object()) return std::string(json);
  const auto rt = doc.find("resourceType");
  const ShapeContext shape = rt != doc.end() && rt->is_string() ? ResourceShape(rt->get<std::string>()) : kUnknownShape;
  nlohmann::ordered_json out = nlohmann::ordered_json::object();
  for (auto it = doc.begin(); it != doc.end(); ++it) {
    const std::string& k = it.key();
    if (k == "resourceType" || k == "id" || k == "meta" ||
        std::find(elements.begin(), elements.end(), k) != elements.end() || MemberShape(shape, k).mandatory) {
      out[k] = it.value();
    }
  }
  nlohmann::ordered_json& meta = out["meta"];
  if (!meta.is_object()) meta = nlohmann::ordered_json::object();
  meta["tag"].push_back({{"system", "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"},
                         {"code", "SUBSETTED"},
                         {"display", "subsetted"}});
  return out.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

}  // namespace fhirlake::fhir
