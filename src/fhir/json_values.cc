// Scalar copying and padded file reading for simdjson On-Demand.
#include "fhir/json_values.h"

#include <fstream>

namespace fhirlake::fhir {

namespace od = simdjson::ondemand;

Status JsonError(simdjson::error_code e) {
  return Status::Invalid(std::string("Invalid JSON: ") + simdjson::error_message(e));
}

Status AppendScalar(od::value value, od::json_type type, std::string* out) {
  switch (type) {
    case od::json_type::number: {
      std::string_view raw = value.raw_json_token();
      while (!raw.empty() && (raw.back() == ' ' || raw.back() == '\n' || raw.back() == '\r' || raw.back() == '\t')) {
        raw.remove_suffix(1);
      }
      double ignored;
      if (auto e = value.get_double().get(ignored)) return JsonError(e);
      out->append(raw);
      return Status::Ok();
    }
    case od::json_type::boolean: {
      bool b;
      if (auto e = value.get_bool().get(b)) return JsonError(e);
      out->append(b ? "true" : "false");
      return Status::Ok();
    }
    case od::json_type::null: {
      bool is_null = false;
      if (auto e = value.is_null().get(is_null)) return JsonError(e);
      if (!is_null) return Status::Invalid("Invalid JSON: bad literal");
      out->append("null");
      return Status::Ok();
    }
    default:
      return Status::Invalid("Invalid JSON value");
  }
}

Result<PaddedFile> ReadPaddedFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::NotFound("cannot open " + path);
  PaddedFile f;
  in.seekg(0, std::ios::end);
  f.size = static_cast<size_t>(in.tellg());
  in.seekg(0);
  f.bytes.resize(f.size + simdjson::SIMDJSON_PADDING);
  in.read(f.bytes.data(), static_cast<std::streamsize>(f.size));
  if (!in) return Status::Unavailable("cannot read " + path);
  return f;
}

}  // namespace fhirlake::fhir
