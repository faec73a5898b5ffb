// The FHIR dialect's one mapping of Status to HTTP response (an OperationOutcome body), and helpers shared by
// the FHIR handlers: datastore lookup, media-type checks.
#pragma once

#include <string_view>

#include "api/api_context.h"
#include "common/status.h"
#include "http/http_types.h"

namespace fhirlake::api {

http::Response FhirError(const Status& status);
http::Response FhirError(int http_status, std::string_view issue_code, std::string_view diagnostics);
// 404 OperationOutcome when the datastore id is unknown.
Result<store::ResourceStore*> FindDatastore(const ApiContext& ctx, std::string_view datastore_id);
// Accepts application/fhir+json and application/json (parameters such as charset ignored).
Status CheckJsonContentType(const http::Request& request);

}  // namespace fhirlake::api
