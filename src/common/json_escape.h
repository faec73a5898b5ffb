// A small JSON string escaper for the wrappers fhirlake writes around stored bytes (responses,
// manifests, OperationOutcomes). Stored resources are never re-serialised.
#pragma once

#include <string>
#include <string_view>

namespace fhirlake {

// Appends `s` as a JSON string literal (with quotes) to `out`.
void AppendJsonString(std::string* out, std::string_view s);
std::string JsonString(std::string_view s);

}  // namespace fhirlake
