// Status → OperationOutcome responses for every FHIR path.
#include "api/fhir_response.h"

#include <functional>

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
  // Being created (preloaded) or deleted through the control plane: no FHIR requests until it is ACTIVE.
  if (const std::string status = s->status(); status != store::datastore_status::kActive) {
    return Status::NotFound(
        "Datastore '" + std::string(datastore_id) + "' is " + status +
        (status == store::datastore_status::kCreating ? ": it answers once it is ACTIVE" : ": it is being deleted"));
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

bool AnyHeaderItem(const http::Request& request, std::string_view header,
                   const std::function<bool(std::string_view, std::string_view)>& fn) {
  auto trim = [](std::string_view v) {
    while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
    while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
    return v;
  };
  for (const auto& [name, value] : request.headers.items()) {
    if (!http::EqualsIgnoreCase(name, header)) continue;
    std::string_view rest = value;
    while (!rest.empty()) {
      const size_t comma = rest.find(',');
      const std::string_view item = rest.substr(0, comma);
      const size_t semi = item.find(';');
      if (fn(trim(item.substr(0, semi)), semi == std::string_view::npos ? std::string_view() : item.substr(semi + 1))) {
        return true;
      }
      if (comma == std::string_view::npos) break;
      rest.remove_prefix(comma + 1);
    }
  }
  return false;
}

bool HasPreference(const http::Request& request, std::string_view preference) {
  return AnyHeaderItem(request, "Prefer", [&](std::string_view item, std::string_view) {
    return http::EqualsIgnoreCase(item, preference);
  });
}

}  // namespace fhirlake::api
