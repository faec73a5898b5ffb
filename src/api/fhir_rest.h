// FHIR REST interactions on /datastore/{id}/r4: create, read, vread, update, delete, history, batch and
// transaction Bundles, compartment search, the CapabilityStatement; and the operator's /healthz.
#pragma once

#include "api/api_context.h"
#include "http/router.h"

namespace fhirlake::api {

void RegisterFhirRest(http::Router& router, const ApiContext& ctx);

// Parses an ETag / If-Match value: W/"3", "3" or 3. Invalid → kInvalid.
Result<int64_t> ParseVersionTag(std::string_view tag);

}  // namespace fhirlake::api
