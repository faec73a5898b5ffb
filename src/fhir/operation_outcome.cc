// OperationOutcome rendering and the one mapping of Status codes to FHIR issue types and HTTP statuses.
#include "fhir/operation_outcome.h"

#include "common/json_escape.h"

namespace fhirlake::fhir {

std::string OperationOutcome(std::string_view severity, std::string_view code, std::string_view diagnostics) {
  std::string out = R"({"resourceType":"OperationOutcome","issue":[{"severity":)";
  AppendJsonString(&out, severity);
  out.append(",\"code\":");
  AppendJsonString(&out, code);
  out.append(",\"diagnostics\":");
  AppendJsonString(&out, diagnostics);
  out.append("}]}");
  return out;
}

std::string_view IssueCodeFor(StatusCode code) {
  switch (code) {
    case StatusCode::kOk:
      return "informational";
    case StatusCode::kInvalid:
      return "invalid";
    case StatusCode::kNotFound:
      return "not-found";
    case StatusCode::kGone:
      return "deleted";
    case StatusCode::kConflict:
      return "conflict";
    case StatusCode::kPreconditionFailed:
      return "conflict";
    case StatusCode::kUnsupportedMediaType:
      return "not-supported";
    case StatusCode::kPayloadTooLarge:
      return "too-costly";
    case StatusCode::kMethodNotAllowed:
      return "not-supported";
    case StatusCode::kNotSupported:
      return "not-supported";
    case StatusCode::kUnauthorized:
      return "login";
    case StatusCode::kForbidden:
      return "forbidden";
    case StatusCode::kTooManyRequests:
      return "throttled";
    case StatusCode::kInsufficientStorage:
      return "too-costly";
    case StatusCode::kUnavailable:
      return "transient";
    case StatusCode::kInternal:
      return "exception";
  }
  return "exception";
}

int HttpStatusFor(StatusCode code) {
  switch (code) {
    case StatusCode::kOk:
      return 200;
    case StatusCode::kInvalid:
      return 400;
    case StatusCode::kNotFound:
      return 404;
    case StatusCode::kGone:
      return 410;
    case StatusCode::kConflict:
      return 409;
    case StatusCode::kPreconditionFailed:
      return 412;
    case StatusCode::kUnsupportedMediaType:
      return 415;
    case StatusCode::kPayloadTooLarge:
      return 413;
    case StatusCode::kMethodNotAllowed:
      return 405;
    case StatusCode::kNotSupported:
      return 400;
    case StatusCode::kUnauthorized:
      return 401;
    case StatusCode::kForbidden:
      return 403;
    case StatusCode::kTooManyRequests:
      return 429;
    case StatusCode::kInsufficientStorage:
      return 507;
    case StatusCode::kUnavailable:
      return 503;
    case StatusCode::kInternal:
      return 500;
  }
  return 500;
}

std::string OperationOutcomeFor(const Status& status) {
  return OperationOutcome(status.code() == StatusCode::kInternal ? "fatal" : "error", IssueCodeFor(status.code()),
                          status.message());
}

}  // namespace fhirlake::fhir
