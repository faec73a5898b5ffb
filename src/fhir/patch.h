// The two FHIR PATCH formats applied to a resource's JSON: JSON Patch (RFC 6902) and FHIRPath Patch (a Parameters
// resource, https://hl7.org/fhir/R4/fhirpatch.html). Pure functions of their inputs, callable from any thread;
// docs/PATCH.md lists what is supported and how failures map to HTTP.
#pragma once

#include <string>
#include <string_view>

#include "common/status.h"

namespace fhirlake::fhir {

// Applies a JSON Patch (application/json-patch+json) document to a resource's JSON; returns the patched resource,
// minified, with member order and number text (decimal precision) kept as they were. All operations apply or
// none does. kInvalid, naming the failing operation's index and path, for a malformed patch (not JSON, not an
// array, missing or unknown `op`, bad JSON Pointer, missing `value` / `from`), for a patch that does not apply
// (a failed `test`, a path that does not exist, an array index out of range), and for a result whose
// `resourceType` or `id` differs from the input's. The result is not validated as FHIR: the caller parses it
// like any other incoming resource.
Result<std::string> ApplyJsonPatch(std::string_view resource_json, std::string_view patch_json);

// Applies a FHIRPath Patch: a Parameters resource whose `operation` parameters have parts type
// (add | insert | delete | replace | move), path, name, value (value[x] or nested parts), index, source and
// destination. Paths are the resource type followed by member names, `[n]`, `first()`, `last()` and
// `where(a = 'literal' and b.c = 1 ...)`. Cardinality comes from the R4 element tables (r4.h MemberShape).
// Same result and error contract as ApplyJsonPatch (errors name the operation's index, type and path).
Result<std::string> ApplyFhirPathPatch(std::string_view resource_json, std::string_view parameters_json);

}  // namespace fhirlake::fhir
