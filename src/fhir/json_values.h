// Helpers shared by the code that copies JSON with simdjson On-Demand (the resource parser, the generator):
// scalar values copied as written (numbers keep their text), and whole files read into padded buffers.
#pragma once

#include <simdjson.h>

#include <string>
#include <string_view>

#include "common/status.h"

namespace fhirlake::fhir {

Status JsonError(simdjson::error_code e);

// Appends a number, boolean or null value as written in the input (validated); kInvalid for other types.
Status AppendScalar(simdjson::ondemand::value value, simdjson::ondemand::json_type type, std::string* out);

// A file's bytes followed by simdjson::SIMDJSON_PADDING zero bytes, so it can be parsed in place.
struct PaddedFile {
  std::string bytes;
  size_t size = 0;
  std::string_view view() const { return std::string_view(bytes.data(), size); }
  const char* end() const { return bytes.data() + bytes.size(); }
};
Result<PaddedFile> ReadPaddedFile(const std::string& path);

}  // namespace fhirlake::fhir
