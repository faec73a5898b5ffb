// The FHIR dialect's one mapping of Status to HTTP response (an OperationOutcome body), and helpers shared by
// the FHIR handlers: datastore lookup, media-type checks.
#pragma once

#include <functional>
#include <string_view>

#include "api/api_context.h"
#include "common/status.h"
#include "http/http_types.h"
#include "http/router.h"

namespace fhirlake::api {

http::Response FhirError(const Status& status);
http::Response FhirError(int http_status, std::string_view issue_code, std::string_view diagnostics);
// 404 OperationOutcome when the datastore id is unknown.
Result<store::ResourceStore*> FindDatastore(const ApiContext& ctx, std::string_view datastore_id);
// Accepts application/fhir+json and application/json (parameters such as charset ignored).
Status CheckJsonContentType(const http::Request& request);
// RFC 7240: whether any Prefer header lists `preference` ("respond-async", "handling=lenient"); names and values
// compared case-insensitively, preference parameters (";...") ignored.
bool HasPreference(const http::Request& request, std::string_view preference);
// Whether `fn(item, parameters)` holds for some item of the comma-separated lists in every `header` header (items
// trimmed, cut at the first ';', whose rest is `parameters`).
bool AnyHeaderItem(const http::Request& request, std::string_view header,
                   const std::function<bool(std::string_view, std::string_view)>& fn);
// 404 unless `type` is an R4 resource type (case-sensitive).
Status CheckType(std::string_view type);

// Runs `fn(store, fhir_base)` with the datastore named in the path, turning any Status into an OperationOutcome.
template <typename Fn>
http::Response WithStore(const ApiContext& ctx, const http::RequestContext& p, Fn fn) {
  auto store = FindDatastore(ctx, p.param("ds"));
  if (!store.ok()) return FhirError(store.status());
  Result<http::Response> r = fn(**store, ctx.FhirBase((*store)->info().id));
  if (!r.ok()) return FhirError(r.status());
  return std::move(r).value();
}

}  // namespace fhirlake::api
