// OperationOutcome bodies for FHIR error responses and export error files.
#pragma once

#include <string>
#include <string_view>

#include "common/status.h"

namespace fhirlake::fhir {

// {"resourceType":"OperationOutcome","issue":[{"severity":..,"code":..,"diagnostics":..}]}
std::string OperationOutcome(std::string_view severity, std::string_view code, std::string_view diagnostics);
// The FHIR issue type (IssueType value set) for a Status code.
std::string_view IssueCodeFor(StatusCode code);
// The HTTP status a FHIR endpoint answers for a Status code.
int HttpStatusFor(StatusCode code);
std::string OperationOutcomeFor(const Status& status);

}  // namespace fhirlake::fhir
