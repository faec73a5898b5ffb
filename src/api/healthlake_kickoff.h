// HealthLake's $export kick-off dialect: parses the query parameters and the JSON body into bulk::ExportRequest.
// Pure functions, no I/O.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "bulk/export_request.h"
#include "common/status.h"
#include "common/time.h"
#include "http/http_types.h"

namespace fhirlake::api {

// One kick-off query parameter shared by both views (_outputFormat, _type, _since) into `req`. Returns false (and
// leaves `req` alone) for a parameter it does not know; kInvalid names the parameter and what was expected.
Result<bool> ParseCommonExportParam(const http::QueryParam& q, EpochMillis now, bulk::ExportRequest* req);

// Validates the query parameters and the HealthLake JSON body of a kick-off. `now` bounds `_since`.
Result<bulk::ExportRequest> ParseHealthLakeKickoff(bulk::ExportLevel level, std::string group_id,
                                                   const std::vector<http::QueryParam>& query, std::string_view body,
                                                   EpochMillis now);

}  // namespace fhirlake::api
