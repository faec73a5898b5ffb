// The FHIR R4 search parameters fhirlake indexes: every SearchParameter of the base spec that has an expression,
// generated into search_params_generated.cc by tools/gen_search_params.py from
// third_party/fhir-r4/search-parameters.json, plus the common Resource parameters (_id, _lastUpdated, _tag,
// _profile, _security, _source) copied onto every resource type. Static, immutable, safe from any thread.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

namespace fhirlake::search {

enum class ParamType : uint8_t { kString, kToken, kReference, kDate, kNumber, kQuantity, kUri, kComposite };

std::string_view ParamTypeName(ParamType type);  // "string", "token", ... as in SearchParameter.type

// Parameter ids are dense indexes into one global table (stable for one build; the store keys its index rows by
// them and reindexes when RegistryHash() changes).
using ParamId = uint16_t;

struct CompositeComponent {
  ParamId param;                // the component's own parameter (resolved from SearchParameter.component.definition)
  std::string_view expression;  // FHIRPath relative to each value of the composite's expression
};

// Rows of a parameter that another parameter of the same type already holds (tools/gen_search_params.py,
// find_shared_rows): those of `param`, restricted to references of `target_type` when it is not empty.
struct StoredIn {
  ParamId param;
  std::string_view target_type;
};

struct ParamDef {
  ParamId id;
  std::string_view resource_type;  // the type this entry serves (a definition with several bases yields one per base)
  std::string_view code;           // the name used in queries ("birthdate", "_lastUpdated")
  ParamType type;
  std::string_view url;         // SearchParameter.url
  std::string_view expression;  // FHIRPath: the alternatives of the definition's expression that apply to this type
  std::span<const std::string_view> targets;       // reference targets (SearchParameter.target), sorted
  std::span<const CompositeComponent> components;  // composite only, in definition order
  // _id and _lastUpdated are answered from the resource table, not from index rows: the extractor emits nothing.
  bool from_resource_table;
  // The rows this parameter shares with others, which the store keeps only there: a search on it reads its own
  // rows and those (docs/SEARCH-EXTRACTION.md, "Shared rows"). Empty for most parameters.
  std::span<const StoredIn> stored_in;
  // Every row is one of stored_in's: the extractor does not evaluate it at all.
  bool rows_elsewhere;
};

// Every parameter of `resource_type` (common ones included), sorted by code. Empty for unknown types.
std::span<const ParamDef* const> ParamsForType(std::string_view resource_type);
// nullptr when `resource_type` has no parameter `code`.
const ParamDef* FindParam(std::string_view resource_type, std::string_view code);
const ParamDef& ParamById(ParamId id);
size_t ParamCount();
// Changes whenever the table or the extraction rules change (a store built with another hash is reindexed).
std::string_view RegistryHash();

// Definitions of the base spec the generator could not support (url + reason), for the coverage test and
// docs/SEARCH.md.
struct UnsupportedParam {
  std::string_view url;
  std::string_view reason;
};
std::span<const UnsupportedParam> UnsupportedParams();

}  // namespace fhirlake::search
