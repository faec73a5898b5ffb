// The structure of a FHIR Bundle (type and entries with fullUrl, request and the raw bytes of each
// entry's resource), read without parsing the resources themselves; ResourceParser parses those.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "fhir/resource_parser.h"

namespace fhirlake::fhir {

struct BundleEntryView {
  std::string full_url;
  bool has_request = false;
  std::string request_method;
  std::string request_url;
  std::string if_none_exist;
  std::string if_match;
  std::string_view resource_json;  // raw bytes inside the caller's buffer; empty when the entry has none
};

struct BundleView {
  std::string type;  // Bundle.type
  std::vector<BundleEntryView> entries;
};

// `json` must be followed by readable memory up to `allocation_end` (>= SIMDJSON_PADDING past its end).
Result<BundleView> ParseBundle(ResourceParser& parser, std::string_view json, const char* allocation_end);

}  // namespace fhirlake::fhir
