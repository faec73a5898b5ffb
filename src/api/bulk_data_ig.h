// The Bulk Data Access IG's export view (GET kick-off, status URL, file downloads) on the one export engine.
#pragma once

#include "api/api_context.h"
#include "http/router.h"

namespace fhirlake::api {

// Registers the IG view's routes; call before the generic FHIR routes (the first match wins).
void RegisterBulkDataIg(http::Router& router, const ApiContext& ctx);

}  // namespace fhirlake::api
