// Identifiers: random datastore/job ids (32 lowercase hex, as HealthLake), UUIDs for server-assigned
// resource ids, and the FHIR id syntax check.
#pragma once

#include <string>
#include <string_view>

namespace fhirlake {

// 32 lowercase hex characters from the kernel CSPRNG (getrandom; thread-safe, fork-safe).
std::string NewHexId();
// RFC 4122 version 4 UUID, lowercase.
std::string NewUuid();
// FHIR id: [A-Za-z0-9\-\.]{1,64}.
bool IsValidFhirId(std::string_view id);
bool IsHexId(std::string_view id);

}  // namespace fhirlake
