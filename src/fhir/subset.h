// _elements (FHIR R4 search 3.1.1.5.9, and the Bulk Data IG's export parameter): a resource cut down to some of its
// top-level elements.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace fhirlake::fhir {

// `json` (a resource) with only `elements` among its top-level members, plus resourceType, id, meta and the
// resource type's mandatory elements (minimum cardinality 1), and meta.tag SUBSETTED
// (http://terminology.hl7.org/CodeSystem/v3-ObservationValue). Members keep their order. Not an object: unchanged.
std::string SubsetElements(std::string_view json, const std::vector<std::string>& elements);

}  // namespace fhirlake::fhir
