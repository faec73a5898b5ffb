// FHIR search on /datastore/{id}/r4: type search (GET {type}?..., POST {type}/_search), system search (GET ?_type=)
// and compartment search (GET Patient/{id}/{type}?...), as docs/SEARCH.md describes.
#pragma once

#include <string>
#include <vector>

#include "api/api_context.h"
#include "http/router.h"

namespace fhirlake::api {

void RegisterFhirSearch(http::Router& router, const ApiContext& ctx);

// A search of `type` in `store` with `params`; `base` is the datastore's FHIR base URL.
Result<http::Response> SearchType(store::ResourceStore& store, const std::string& base, const http::Request& req,
                                  const std::string& type, const std::vector<http::QueryParam>& params);
// A search of `type` within Patient `patient_id`'s compartment.
Result<http::Response> SearchCompartment(store::ResourceStore& store, const std::string& base, const http::Request& req,
                                         const std::string& patient_id, const std::string& type);

}  // namespace fhirlake::api
