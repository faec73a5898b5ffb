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
      if (value.get_bool().get(b)) return Status::Invalid("Invalid JSON: bad literal");
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

// Past kLinearScan keys (or once switched): the keys move from the stack into a hash set.
bool ObjectKeys::InsertLarge(std::string_view key) {
  if (!large_) {
    large_ = std::make_unique<std::unordered_set<std::string_view>>(stack_->begin() + mark_, stack_->end());
    stack_->resize(mark_);
  }
  return large_->insert(key).second;
}

Status DuplicateKeyError(std::string_view key, std::string_view where) {
  return Status::Invalid("Duplicate JSON key '" + std::string(key) + "' in " + std::string(where) +
                         "; a key may appear only once in an object");
}

Status ValidateJsonValue(od::value value, int depth, std::string* path, std::vector<std::string_view>* keys) {
  if (depth > kMaxJsonDepth) return Status::Invalid("JSON nesting is deeper than 64 levels at " + *path);
  // Errors made here say where; errors from nested values already do.
  auto here = [&](Status st) { return st.WithContext(*path); };
  od::json_type type;
  if (auto e = value.type().get(type)) return here(JsonError(e));
  const size_t mark = path->size();
  switch (type) {
    case od::json_type::object: {
      od::object obj;
      if (auto e = value.get_object().get(obj)) return here(JsonError(e));
      ObjectKeys seen(keys);
      for (auto field : obj) {
        std::string_view key;
        if (auto e = field.unescaped_key().get(key)) return here(JsonError(e));
        if (!seen.Insert(key)) return DuplicateKeyError(key, *path);
        path->push_back('.');
        path->append(key);
        Status st = ValidateJsonValue(field.value(), depth + 1, path, keys);
        path->resize(mark);
        RETURN_IF_ERROR(st);
      }
      return Status::Ok();
    }
    case od::json_type::array: {
      od::array arr;
      if (auto e = value.get_array().get(arr)) return here(JsonError(e));
      size_t index = 0;
      for (auto item : arr) {
        od::value v;
        if (auto e = item.get(v)) return here(JsonError(e));
        path->append("[" + std::to_string(index++) + "]");
        Status st = ValidateJsonValue(v, depth + 1, path, keys);
        path->resize(mark);
        RETURN_IF_ERROR(st);
      }
      return Status::Ok();
    }
    case od::json_type::string: {
      std::string_view s;
      if (auto e = value.get_string().get(s)) return here(JsonError(e));
      return Status::Ok();
    }
    default: {
      std::string ignored;
      return here(AppendScalar(value, type, &ignored));
    }
  }
}

Status ValidateJsonDocument(od::parser& parser, std::string_view json, const char* allocation_end,
                            std::string_view what) {
  const size_t capacity = static_cast<size_t>(allocation_end - json.data());
  if (capacity < json.size() + simdjson::SIMDJSON_PADDING)
    return Status::Internal("ValidateJsonDocument needs padding");
  od::document doc;
  if (auto e = parser.iterate(json.data(), json.size(), capacity).get(doc)) return JsonError(e).WithContext(what);
  od::value root;
  if (auto e = doc.get_value().get(root)) return JsonError(e).WithContext(what);
  std::string path(what);
  std::vector<std::string_view> keys;
  RETURN_IF_ERROR(ValidateJsonValue(root, 0, &path, &keys));
  if (doc.current_location().error() != simdjson::OUT_OF_BOUNDS) {
    return Status::Invalid("Invalid JSON: unexpected content after " + std::string(what));
  }
  return Status::Ok();
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
