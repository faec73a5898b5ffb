// The Bulk Data Access IG's export view (GET kick-off, status URL, file downloads) on the one export engine.
#pragma once

#include <optional>
#include <string_view>
#include <vector>

#include "api/api_context.h"
#include "bulk/export_request.h"
#include "common/status.h"
#include "http/router.h"

namespace fhirlake::api {

// A kick-off of the IG view: GET with query parameters, or POST with a Parameters body (`params` then come from
// ParseKickoffParameters). Answers 202 + Content-Location, or an OperationOutcome.
http::Response IgKickOff(const ApiContext& ctx, const http::Request& req, const http::RequestContext& p,
                         bulk::ExportLevel level, const std::vector<http::QueryParam>& params);
// The parameters of a FHIR Parameters kick-off body, as name/value pairs like a query's (string-like values:
// valueString, valueCode, valueInstant, ...). A parameter with another kind of value (valueReference: `patient`)
// comes back named "<name> (as valueReference)" with no value, so that the kick-off reports it as unsupported.
// nullopt when the body is not a Parameters resource at all (then it is HealthLake's); kInvalid when it is one
// but malformed.
Result<std::optional<std::vector<http::QueryParam>>> ParseKickoffParameters(std::string_view body);

// The IG's STU3 kick-off options (allowPartialManifests, organizeOutputBy, includeAssociatedData) into `request`.
// kInvalid for a malformed value; a well-formed one this server does not support sets `unsupported` to a diagnostics
// line (the caller refuses it, or under handling=lenient ignores it and reports it).
Status ParseIgOption(const http::QueryParam& q, bulk::ExportRequest* request, std::string* unsupported);

// Registers the IG view's routes; call before the generic FHIR routes (the first match wins).
void RegisterBulkDataIg(http::Router& router, const ApiContext& ctx);

}  // namespace fhirlake::api
