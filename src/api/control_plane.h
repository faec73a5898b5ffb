// The HealthLake control plane (awsJson1_0, docs/CONTROL_PLANE.md): POST / with X-Amz-Target: HealthLake.<Operation>,
// on the FHIR API's port, so that `aws healthlake ... --endpoint-url` and boto3 work unchanged. One route per
// operation of the model (each with its IAM action, healthlake:<Operation>); the body is validated against the
// operation's input shape (awsjson::Validate) before it runs; errors are the AWS JSON errors the SDKs parse.
#pragma once

#include <string>
#include <vector>

#include "api/api_context.h"
#include "http/router.h"
#include "store/resource_store.h"

namespace fhirlake::api {

void RegisterControlPlane(http::Router& router, const ApiContext& ctx);

// The auth modes a datastore created through the control plane asks for by its IdentityProviderConfiguration's
// AuthorizationStrategy: SMART_ON_FHIR_V1 / SMART_ON_FHIR -> sigv4 and smart, AWS_AUTH -> sigv4; none for a datastore
// without one (the auth configuration decides).
std::vector<std::string> AuthModesOfDatastore(const store::ResourceStore& store);

// {"__type": type, "message": message} with Content-Type application/x-amz-json-1.0.
http::Response AwsJsonError(int status, std::string_view type, std::string_view message);

}  // namespace fhirlake::api
