// The one route table of the server: every surface registers its routes here, specific before generic.
#pragma once

#include <memory>

#include "api/api_context.h"
#include "http/router.h"

namespace fhirlake::api {

std::unique_ptr<http::Router> BuildRouter(const ApiContext& ctx);

}  // namespace fhirlake::api
