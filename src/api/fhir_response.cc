// Status → OperationOutcome responses for every FHIR path.
#include "api/fhir_response.h"

#include "fhir/operation_outcome.h"
#include "fhir/r4.h"

namespace fhirlake::api {

http::Response FhirError(const Status& status) {
  return http::Response::Json(fhir::HttpStatusFor(status.code()), fhir::OperationOutcomeFor(status));
}

http::Response FhirError(int http_status, std::string_view issue_code, std::string_view diagnostics) {
  return http::Response::Json(http_status, fhir::OperationOutcome("error", issue_code, diagnostics));
}

Status CheckType(std::string_view type) {
  if (!fhir::IsKnownResourceType(type)) {
    return Status::NotFound("Unknown resource type '" + std::string(type) +
                            "'; expected an R4 resource type such as Patient or Observation");
  }
  return Status::Ok();
}

Result<store::ResourceStore*> FindDatastore(const ApiContext& ctx, std::string_view datastore_id) {
  store::ResourceStore* s = ctx.catalog->Find(datastore_id);
  if (s == nullptr) {
    return Status::NotFound("Datastore '" + std::string(datastore_id) +
                            "' is not known to this server; GET /healthz lists the datastores");
  }
  return s;
}

Status CheckJsonContentType(const http::Request& request) {
  std::string_view ct = request.headers.Get("Content-Type");
  std::string_view media = ct.substr(0, ct.find(';'));
  while (!media.empty() && media.back() == ' ') media.remove_suffix(1);
  while (!media.empty() && media.front() == ' ') media.remove_prefix(1);
  if (http::EqualsIgnoreCase(media, "application/fhir+json") || http::EqualsIgnoreCase(media, "application/json")) {
    return Status::Ok();
  }
  return Status::UnsupportedMediaType(ct.empty()
                                          ? "The request has no Content-Type; send the body as application/fhir+json"
                                          : "Content-Type '" + std::string(ct) +
                                                "' is not supported; send application/fhir+json (or "
                                                "application/json)");
}

bool HasPreference(const http::Request& request, std::string_view preference) {
  for (const auto& [name, value] : request.headers.items()) {
    if (!http::EqualsIgnoreCase(name, "Prefer")) continue;
    std::string_view rest = value;
    while (!rest.empty()) {
      size_t comma = rest.find(',');
      std::string_view pref = rest.substr(0, comma);
      pref = pref.substr(0, pref.find(';'));
      while (!pref.empty() && (pref.front() == ' ' || pref.front() == '\t')) pref.remove_prefix(1);
      while (!pref.empty() && (pref.back() == ' ' || pref.back() == '\t')) pref.remove_suffix(1);
      if (http::EqualsIgnoreCase(pref, preference)) return true;
      if (comma == std::string_view::npos) break;
      rest.remove_prefix(comma + 1);
    }
  }
  return false;
}

}  // namespace fhirlake::api
