// One pass over a resource with simdjson On-Demand: every value is read (so every value is validated),
// strings are unescaped and re-escaped, numbers are copied as written (FHIR decimals keep precision),
// and references are resolved and classified on the way.
#include "fhir/resource_parser.h"

#include <algorithm>
#include <span>

#include "common/ids.h"
#include "common/json_escape.h"
#include "fhir/json_values.h"
#include "fhir/r4.h"

namespace fhirlake::fhir {
namespace {

namespace od = simdjson::ondemand;
constexpr int kMaxDepth = 64;

class Walker {
 public:
  Walker(ParsedResource* out, std::span<const std::string_view> compartment_paths, ReferenceResolver* resolver)
      : out_(out), compartment_paths_(compartment_paths), resolver_(resolver) {}

  Status WriteValue(od::value value, std::string* dst, int depth) {
    if (depth > kMaxDepth) return Status::Invalid("JSON nesting is deeper than 64 levels");
    od::json_type type;
    if (auto e = value.type().get(type)) return JsonError(e);
    switch (type) {
      case od::json_type::object: {
        od::object obj;
        if (auto e = value.get_object().get(obj)) return JsonError(e);
        return WriteObject(obj, dst, depth);
      }
      case od::json_type::array: {
        od::array arr;
        if (auto e = value.get_array().get(arr)) return JsonError(e);
        dst->push_back('[');
        bool first = true;
        for (auto element : arr) {
          od::value v;
          if (auto e = element.get(v)) return JsonError(e);
          if (!first) dst->push_back(',');
          first = false;
          RETURN_IF_ERROR(WriteValue(v, dst, depth + 1));
        }
        dst->push_back(']');
        return Status::Ok();
      }
      case od::json_type::string: {
        std::string_view s;
        if (auto e = value.get_string().get(s)) return JsonError(e);
        AppendJsonString(dst, s);
        return Status::Ok();
      }
      default:
        return AppendScalar(value, type, dst);
    }
  }

  // Writes `{...}`; `path_` is the element path of this object (e.g. "participant.member").
  Status WriteObject(od::object obj, std::string* dst, int depth) {
    dst->push_back('{');
    bool first = true;
    const bool is_identifier = path_ == "identifier";
    std::string system, value;
    bool has_value = false;
    for (auto field : obj) {
      std::string_view key;
      if (auto e = field.unescaped_key().get(key)) return JsonError(e);
      if (!first) dst->push_back(',');
      first = false;
      AppendJsonString(dst, key);
      dst->push_back(':');
      od::value v = field.value();
      if (is_identifier && (key == "system" || key == "value")) {
        std::string_view s;
        if (v.get_string().get(s)) return Status::Invalid("identifier." + std::string(key) + " must be a string");
        AppendJsonString(dst, s);
        if (key == "system") {
          system.assign(s);
        } else {
          value.assign(s);
          has_value = true;
        }
        continue;
      }
      if (key == "reference") {
        od::json_type t;
        if (auto e = v.type().get(t)) return JsonError(e);
        if (t == od::json_type::string) {
          RETURN_IF_ERROR(WriteReference(v, dst));
          continue;
        }
      }
      size_t mark = path_.size();
      if (!path_.empty()) path_.push_back('.');
      path_.append(key);
      Status st = WriteValue(v, dst, depth + 1);
      path_.resize(mark);
      RETURN_IF_ERROR(st);
    }
    dst->push_back('}');
    if (is_identifier && has_value) out_->identifiers.emplace_back(std::move(system), std::move(value));
    return Status::Ok();
  }

  // Writes the top-level members of the resource into the ParsedResource parts.
  Status WriteResource(od::object obj) {
    for (auto field : obj) {
      std::string_view key;
      if (auto e = field.unescaped_key().get(key)) return JsonError(e);
      od::value v = field.value();
      if (key == "resourceType") {
        std::string_view s;
        if (v.get_string().get(s)) return Status::Invalid("resourceType must be a string");
        continue;  // already known
      }
      if (key == "id") {
        std::string_view s;
        if (v.get_string().get(s)) return Status::Invalid("Resource id must be a JSON string");
        out_->id.assign(s);
        continue;
      }
      if (key == "meta") {
        od::object meta;
        if (v.get_object().get(meta)) return Status::Invalid("Resource meta must be a JSON object");
        path_ = "meta";
        for (auto mf : meta) {
          std::string_view mkey;
          if (auto e = mf.unescaped_key().get(mkey)) return JsonError(e);
          od::value mv = mf.value();
          std::string scratch;
          std::string* dst = (mkey == "versionId" || mkey == "lastUpdated") ? &scratch : &out_->meta_rest;
          dst->push_back(',');
          AppendJsonString(dst, mkey);
          dst->push_back(':');
          size_t mark = path_.size();
          path_.push_back('.');
          path_.append(mkey);
          Status st = WriteValue(mv, dst, 2);
          path_.resize(mark);
          RETURN_IF_ERROR(st);
        }
        path_.clear();
        continue;
      }
      std::string* dst = &out_->body_rest;
      dst->push_back(',');
      AppendJsonString(dst, key);
      dst->push_back(':');
      path_.assign(key);
      RETURN_IF_ERROR(WriteValue(v, dst, 1));
      path_.clear();
    }
    return Status::Ok();
  }

 private:
  Status WriteReference(od::value v, std::string* dst) {
    std::string_view s;
    if (auto e = v.get_string().get(s)) return JsonError(e);
    std::string value(s);
    if (resolver_ != nullptr) {
      ASSIGN_OR_RETURN(std::optional<std::string> replacement, resolver_->Resolve(value));
      if (replacement) value = std::move(*replacement);
    }
    if (value.starts_with("urn:uuid:")) ++out_->unresolved_urn_references;
    AppendJsonString(dst, value);
    if (auto ref = ParseLiteralReference(value)) {
      if (ref->type == "Patient" && std::find(compartment_paths_.begin(), compartment_paths_.end(),
                                              std::string_view(path_)) != compartment_paths_.end()) {
        out_->compartment_patients.push_back(ref->id);
      }
      out_->references.push_back(std::move(*ref));
    }
    return Status::Ok();
  }

  ParsedResource* out_;
  std::span<const std::string_view> compartment_paths_;
  ReferenceResolver* resolver_;
  std::string path_;
};

template <typename T>
void SortUnique(std::vector<T>* v) {
  std::sort(v->begin(), v->end());
  v->erase(std::unique(v->begin(), v->end()), v->end());
}

}  // namespace

std::optional<TypedId> ParseLiteralReference(std::string_view ref) {
  size_t slash = ref.find('/');
  if (slash == std::string_view::npos) return std::nullopt;
  std::string_view type = ref.substr(0, slash);
  std::string_view rest = ref.substr(slash + 1);
  size_t next = rest.find('/');
  std::string_view id = rest.substr(0, next);
  if (next != std::string_view::npos) {
    std::string_view tail = rest.substr(next);
    if (!tail.starts_with("/_history/") || tail.size() == 10) return std::nullopt;
  }
  if (!IsKnownResourceType(type) || !IsValidFhirId(id)) return std::nullopt;
  return TypedId{std::string(type), std::string(id)};
}

std::string RenderResource(const ParsedResource& p, std::string_view id, int64_t version_id,
                           std::string_view last_updated) {
  std::string out;
  out.reserve(p.type.size() + id.size() + p.meta_rest.size() + p.body_rest.size() + 96);
  out.append("{\"resourceType\":");
  AppendJsonString(&out, p.type);
  out.append(",\"id\":");
  AppendJsonString(&out, id);
  out.append(",\"meta\":{\"versionId\":\"");
  out.append(std::to_string(version_id));
  out.append("\",\"lastUpdated\":\"");
  out.append(last_updated);
  out.push_back('"');
  out.append(p.meta_rest);
  out.push_back('}');
  out.append(p.body_rest);
  out.push_back('}');
  return out;
}

ResourceParser::ResourceParser() = default;

Result<ParsedResource> ResourceParser::Parse(std::string_view json, ReferenceResolver* resolver) {
  scratch_.assign(json);
  scratch_.append(simdjson::SIMDJSON_PADDING, '\0');
  return ParseInBuffer(std::string_view(scratch_.data(), json.size()), scratch_.data() + scratch_.size(), resolver);
}

Result<TypedId> ResourceParser::PeekTypeAndId(std::string_view json, const char* allocation_end) {
  od::document doc;
  if (auto e = parser_.iterate(json.data(), json.size(), static_cast<size_t>(allocation_end - json.data())).get(doc)) {
    return JsonError(e);
  }
  od::object obj;
  if (doc.get_object().get(obj)) return Status::Invalid("The JSON is not an object");
  TypedId out;
  for (auto field : obj) {
    std::string_view key;
    if (auto e = field.unescaped_key().get(key)) return JsonError(e);
    if (key == "resourceType" || key == "id") {
      std::string_view s;
      if (field.value().get_string().get(s)) return Status::Invalid(std::string(key) + " must be a string");
      (key == "id" ? out.id : out.type).assign(s);
    }
  }
  return out;
}

Result<ParsedResource> ResourceParser::ParseInBuffer(std::string_view json, const char* allocation_end,
                                                     ReferenceResolver* resolver) {
  size_t capacity = static_cast<size_t>(allocation_end - json.data());
  if (capacity < json.size() + simdjson::SIMDJSON_PADDING) return Parse(json, resolver);
  od::document doc;
  if (auto e = parser_.iterate(json.data(), json.size(), capacity).get(doc)) return JsonError(e);
  ParsedResource out;
  {
    od::json_type type;
    if (auto e = doc.type().get(type)) return JsonError(e);
    if (type != od::json_type::object) return Status::Invalid("The body is not a JSON object; a FHIR resource is one");
    od::object obj;
    if (auto e = doc.get_object().get(obj)) return JsonError(e);
    od::value rt;
    auto err = obj.find_field_unordered("resourceType").get(rt);
    if (err == simdjson::NO_SUCH_FIELD) return Status::Invalid("The resource has no resourceType");
    if (err) return JsonError(err);
    std::string_view s;
    if (rt.get_string().get(s)) return Status::Invalid("resourceType must be a JSON string");
    if (!IsKnownResourceType(s)) {
      return Status::Invalid("Unknown resource type '" + std::string(s) +
                             "'; expected an R4 resource type such as Patient");
    }
    out.type.assign(s);
  }
  doc.rewind();
  od::object obj;
  if (auto e = doc.get_object().get(obj)) return JsonError(e);
  Walker walker(&out, PatientCompartmentPaths(out.type), resolver);
  RETURN_IF_ERROR(walker.WriteResource(obj));
  if (doc.current_location().error() != simdjson::OUT_OF_BOUNDS)
    return Status::Invalid("Invalid JSON: unexpected content after the resource object");
  if (!out.id.empty() && !IsValidFhirId(out.id)) {
    return Status::Invalid("Invalid resource id '" + out.id +
                           "': an id is 1-64 characters of A-Z, a-z, 0-9, '-' and '.'");
  }
  SortUnique(&out.compartment_patients);
  SortUnique(&out.references);
  return out;
}

}  // namespace fhirlake::fhir
