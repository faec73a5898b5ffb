// Route registration order matters: the first matching pattern wins, so the export routes
// (".../Patient/$export", ".../export/{jobId}") are added before the generic "{type}/{id}" ones.
#include "api/routes.h"

#include "api/bulk_data_ig.h"
#include "api/bulk_export.h"
#include "api/control_plane.h"
#include "api/fhir_response.h"
#include "api/fhir_rest.h"
#include "api/fhir_search.h"

namespace fhirlake::api {

std::unique_ptr<http::Router> BuildRouter(const ApiContext& ctx) {
  auto router = std::make_unique<http::Router>([](const http::Request&, int status, const std::string& message) {
    return FhirError(status, status == 405 ? "not-supported" : "not-found", message);
  });
  if (ctx.register_auth_routes) ctx.register_auth_routes(*router);
  if (ctx.exports != nullptr) RegisterBulkExport(*router, ctx);
  if (ctx.exports != nullptr && ctx.catalog != nullptr) RegisterControlPlane(*router, ctx);
  if (ctx.exports != nullptr && ctx.sink != nullptr) RegisterBulkDataIg(*router, ctx);
  RegisterFhirRest(*router, ctx);
  RegisterFhirSearch(*router, ctx);
  return router;
}

}  // namespace fhirlake::api
