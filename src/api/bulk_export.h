// HealthLake's FHIR REST export API: $export kick-off at system, Patient and Group level, describe
// (GET .../export/{jobId}) and cancel (DELETE .../export/{jobId}).
#pragma once

#include "api/api_context.h"
#include "http/router.h"

namespace fhirlake::api {

void RegisterBulkExport(http::Router& router, const ApiContext& ctx);

}  // namespace fhirlake::api
