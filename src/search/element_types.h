// The FHIR R4 element types the FHIRPath evaluator needs: for every resource, data type and backbone element (a
// "context"), its JSON members (choice elements expanded, e.g. valueQuantity) with their FHIR type. Generated into
// element_types_generated.cc by tools/gen_search_params.py from third_party/fhir-r4/elements.json. Static tables,
// safe from any thread.
#pragma once

#include <cstdint>
#include <string_view>

namespace fhirlake::search {

using TypeContext = uint16_t;
inline constexpr TypeContext kNoContext = 0;  // primitives, unknown types

struct ElementInfo {
  std::string_view name;  // the JSON name ("valueQuantity")
  std::string_view type;  // FHIR type ("Quantity", "dateTime", "Resource", or a backbone path "Observation.component")
  TypeContext context;    // the context of `type` (kNoContext for primitives and Resource)
  bool array;             // repeats
};

// The context of a resource, data type or backbone path ("Patient", "Quantity", "Observation.component").
TypeContext ContextOfType(std::string_view type_name);
// Member `json_name` of `context`; nullptr when it has none of that name (extension members are not listed).
const ElementInfo* FindElement(TypeContext context, std::string_view json_name);
std::string_view ContextName(TypeContext context);

}  // namespace fhirlake::search
