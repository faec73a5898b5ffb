// One pass over a resource with simdjson On-Demand: every value is read (so every value is validated),
// strings are unescaped and re-escaped, numbers are copied as written (FHIR decimals keep precision),
// and references are resolved and classified on the way.
#include "fhir/resource_parser.h"

#include <algorithm>
#include <charconv>
#include <span>

#include "common/ids.h"
#include "common/json_escape.h"
#include "fhir/json_values.h"
#include "fhir/r4.h"

namespace fhirlake::fhir {
namespace {

namespace od = simdjson::ondemand;
constexpr int kMaxDepth = kMaxJsonDepth;

std::string_view TrimRawNumber(std::string_view raw) {
  while (!raw.empty() && (raw.back() == ' ' || raw.back() == '\n' || raw.back() == '\r' || raw.back() == '\t')) {
    raw.remove_suffix(1);
  }
  return raw;
}

// The type name of a contained resource from the raw JSON token of its resourceType (quotes included), without
// unescaping it through simdjson: the value is unescaped once more when the object's members are walked, and
// simdjson's string buffer only has room for each string once. A type name is ASCII letters, so \u00XX is the
// only escape that can be part of one; any other escape makes the name unknown.
std::string ContainedTypeName(std::string_view raw) {
  raw = TrimRawNumber(raw);
  std::string out;
  if (raw.size() < 2 || raw.front() != '"' || raw.back() != '"') return out;
  raw = raw.substr(1, raw.size() - 2);
  for (size_t i = 0; i < raw.size(); ++i) {
    if (raw[i] != '\\') {
      out.push_back(raw[i]);
      continue;
    }
    unsigned code = 0;
    if (i + 6 > raw.size() || raw[i + 1] != 'u' ||
        std::from_chars(raw.data() + i + 2, raw.data() + i + 6, code, 16).ptr != raw.data() + i + 6 || code >= 0x80) {
      return {};
    }
    out.push_back(static_cast<char>(code));
    i += 5;
  }
  return out;
}

std::string_view KindName(ElementKind kind) {
  switch (kind) {
    case ElementKind::kInteger:
      return "integer";
    case ElementKind::kPositiveInt:
      return "positiveInt";
    case ElementKind::kUnsignedInt:
      return "unsignedInt";
    case ElementKind::kDecimal:
      return "decimal";
    default:
      return "element";
  }
}

bool IsNumberKind(ElementKind kind) {
  return kind == ElementKind::kInteger || kind == ElementKind::kPositiveInt || kind == ElementKind::kUnsignedInt ||
         kind == ElementKind::kDecimal;
}

class Walker {
 public:
  Walker(ParsedResource* out, std::span<const std::string_view> compartment_paths, ReferenceResolver* resolver)
      : out_(out), compartment_paths_(compartment_paths), resolver_(resolver) {}

  Status WriteValue(od::value value, std::string* dst, int depth, ElementType element) {
    if (depth > kMaxDepth) return Status::Invalid("JSON nesting is deeper than 64 levels");
    od::json_type type;
    if (auto e = value.type().get(type)) return At(JsonError(e));
    if (IsNumberKind(element.kind) && type != od::json_type::number && type != od::json_type::array &&
        type != od::json_type::null) {
      return Status::Invalid(Where() + " must be a JSON number (FHIR " + std::string(KindName(element.kind)) +
                             "), not " + JsonTypeName(type));
    }
    switch (type) {
      case od::json_type::object: {
        od::object obj;
        if (auto e = value.get_object().get(obj)) return JsonError(e);
        ElementContext context = element.kind == ElementKind::kComplex ? element.context : kOpaqueContext;
        if (element.kind == ElementKind::kResource) RETURN_IF_ERROR(ContainedContext(obj, &context));
        return WriteObject(obj, dst, depth, context);
      }
      case od::json_type::array: {
        od::array arr;
        if (auto e = value.get_array().get(arr)) return JsonError(e);
        dst->push_back('[');
        size_t index = 0;
        path_.push_back(PathSegment{{}, 0});
        for (auto item : arr) {
          od::value v;
          if (auto e = item.get(v)) return JsonError(e);
          if (index != 0) dst->push_back(',');
          path_.back().index = index++;
          Status st = WriteValue(v, dst, depth + 1, element);
          RETURN_IF_ERROR(st);
        }
        path_.pop_back();
        dst->push_back(']');
        return Status::Ok();
      }
      case od::json_type::string: {
        std::string_view s;
        if (auto e = value.get_string().get(s)) return At(JsonError(e));
        AppendJsonString(dst, s);
        return Status::Ok();
      }
      case od::json_type::number:
        if (element.kind != ElementKind::kDecimal && IsNumberKind(element.kind)) {
          return WriteInteger(value, element.kind, dst);
        }
        [[fallthrough]];
      default:
        return At(AppendScalar(value, type, dst));
    }
  }

  // Writes `{...}`; `path_` is the location of this object (e.g. participant[0].member), `context` the element
  // context of its members.
  Status WriteObject(od::object obj, std::string* dst, int depth, ElementContext context) {
    dst->push_back('{');
    bool first = true;
    const bool is_identifier = IsTopLevelIdentifier();
    std::string system, value;
    bool has_value = false;
    ObjectKeys keys(&keys_);
    for (auto field : obj) {
      std::string_view key;
      if (auto e = field.unescaped_key().get(key)) return JsonError(e);
      if (!keys.Insert(key)) return DuplicateKey(key);
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
      path_.push_back(PathSegment{key, -1});
      RETURN_IF_ERROR(WriteValue(v, dst, depth + 1, MemberType(context, key)));
      path_.pop_back();
    }
    dst->push_back('}');
    if (is_identifier && has_value) out_->identifiers.emplace_back(std::move(system), std::move(value));
    return Status::Ok();
  }

  // Writes the top-level members of the resource into the ParsedResource parts.
  Status WriteResource(od::object obj) {
    const ElementContext context = ResourceContext(out_->type);
    ObjectKeys keys(&keys_);
    for (auto field : obj) {
      std::string_view key;
      if (auto e = field.unescaped_key().get(key)) return JsonError(e);
      if (!keys.Insert(key)) return DuplicateKey(key);
      od::value v = field.value();
      if (key == "resourceType") {
        std::string_view s;
        if (v.get_string().get(s)) return Status::Invalid("resourceType must be a string");
        continue;  // already known (and, keys being unique, the same value)
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
        path_.assign(1, PathSegment{"meta", -1});
        ObjectKeys meta_keys(&keys_);
        for (auto mf : meta) {
          std::string_view mkey;
          if (auto e = mf.unescaped_key().get(mkey)) return JsonError(e);
          if (!meta_keys.Insert(mkey)) return DuplicateKey(mkey);
          od::value mv = mf.value();
          std::string scratch;
          std::string* dst = (mkey == "versionId" || mkey == "lastUpdated") ? &scratch : &out_->meta_rest;
          dst->push_back(',');
          AppendJsonString(dst, mkey);
          dst->push_back(':');
          path_.push_back(PathSegment{mkey, -1});
          RETURN_IF_ERROR(WriteValue(mv, dst, 2, MemberType(kOpaqueContext, mkey)));
          path_.pop_back();
        }
        path_.clear();
        continue;
      }
      std::string* dst = &out_->body_rest;
      dst->push_back(',');
      AppendJsonString(dst, key);
      dst->push_back(':');
      path_.assign(1, PathSegment{key, -1});
      RETURN_IF_ERROR(WriteValue(v, dst, 1, MemberType(context, key)));
      path_.clear();
    }
    return Status::Ok();
  }

 private:
  // The element being written, for diagnostics: "Observation.component[1].valueInteger".
  std::string Where() const {
    std::string out = out_->type;
    for (const PathSegment& s : path_) {
      if (s.index >= 0) {
        out += "[" + std::to_string(s.index) + "]";
      } else {
        out.push_back('.');
        out.append(s.key);
      }
    }
    return out;
  }

  Status DuplicateKey(std::string_view key) const { return DuplicateKeyError(key, Where()); }
  // A JSON error found at the current element says where ("Patient.active: Invalid JSON: bad literal").
  // (Where() is built only for an error: this wraps the result of every scalar.)
  Status At(const Status& st) const { return st.ok() ? st : st.WithContext(Where()); }

  static std::string JsonTypeName(od::json_type type) {
    switch (type) {
      case od::json_type::object:
        return "an object";
      case od::json_type::array:
        return "an array";
      case od::json_type::string:
        return "a string";
      case od::json_type::boolean:
        return "a boolean";
      default:
        return "null";
    }
  }

  // integer, positiveInt and unsignedInt: a JSON number without fraction or exponent, in the type's range.
  Status WriteInteger(od::value value, ElementKind kind, std::string* dst) {
    std::string_view raw = TrimRawNumber(value.raw_json_token());
    const bool negative = raw.starts_with('-');
    std::string_view digits = raw.substr(negative ? 1 : 0);
    const bool plain = !digits.empty() && (digits.size() == 1 || digits[0] != '0') &&
                       std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; });
    if (!plain) {
      double ignored;
      if (auto e = value.get_double().get(ignored)) return At(JsonError(e));
      return Status::Invalid(Where() + ": " + std::string(raw) + " is not a FHIR " + std::string(KindName(kind)) +
                             "; write a whole number without fraction or exponent");
    }
    constexpr int64_t kMax = 2147483647;
    int64_t n = kMax + 1;  // more digits than an int64 holds are out of range anyway
    if (digits.size() <= 12) std::from_chars(digits.data(), digits.data() + digits.size(), n);
    if (negative) n = -n;
    const int64_t min = kind == ElementKind::kInteger ? -kMax - 1 : kind == ElementKind::kPositiveInt ? 1 : 0;
    if (n < min || n > kMax || (negative && kind != ElementKind::kInteger)) {
      return Status::Invalid(Where() + ": " + std::string(raw) + " is out of range for FHIR " +
                             std::string(KindName(kind)) + " (" + std::to_string(min) + " to " + std::to_string(kMax) +
                             ")");
    }
    dst->append(raw);
    return Status::Ok();
  }

  // The element context of a resource nested in this one (contained, Bundle.entry.resource), from its
  // resourceType, which may come after other members: looked up first, then the object is walked from its start.
  Status ContainedContext(od::object& obj, ElementContext* context) {
    od::value rt;
    auto err = obj.find_field_unordered("resourceType").get(rt);
    if (err && err != simdjson::NO_SUCH_FIELD) return JsonError(err);
    *context = err ? kOpaqueContext : ResourceContext(ContainedTypeName(rt.raw_json_token()));
    bool ignored;
    if (auto e = obj.reset().get(ignored)) return JsonError(e);
    return Status::Ok();
  }

  // The object being written is the top-level `identifier` (or one of its array items).
  bool IsTopLevelIdentifier() const {
    if (path_.empty() || path_[0].key != "identifier" || path_.size() > 2) return false;
    return path_.size() == 1 || path_[1].index >= 0;
  }

  // The element path of the value being written, without array indices ("participant.member").
  std::string_view ElementPath() {
    plain_path_.clear();
    for (const PathSegment& s : path_) {
      if (s.index >= 0) continue;
      if (!plain_path_.empty()) plain_path_.push_back('.');
      plain_path_.append(s.key);
    }
    return plain_path_;
  }

  Status WriteReference(od::value v, std::string* dst) {
    std::string_view s;
    if (auto e = v.get_string().get(s)) return At(JsonError(e));
    std::string value(s);
    if (resolver_ != nullptr) {
      ASSIGN_OR_RETURN(std::optional<std::string> replacement, resolver_->Resolve(value));
      if (replacement) value = std::move(*replacement);
    }
    if (value.starts_with("urn:uuid:")) ++out_->unresolved_urn_references;
    AppendJsonString(dst, value);
    if (auto ref = ParseLiteralReference(value)) {
      if (ref->type == "Patient" && !compartment_paths_.empty() &&
          std::find(compartment_paths_.begin(), compartment_paths_.end(), ElementPath()) != compartment_paths_.end()) {
        out_->compartment_patients.push_back(ref->id);
      }
      out_->references.push_back(std::move(*ref));
    }
    return Status::Ok();
  }

  ParsedResource* out_;
  std::span<const std::string_view> compartment_paths_;
  ReferenceResolver* resolver_;
  // Where the walk is: member names (views into simdjson's string buffer, valid for the document) and array
  // indices. Strings are built from it only for an error message or a reference's compartment check.
  struct PathSegment {
    std::string_view key;
    int64_t index;  // >= 0: an array item; -1: the member `key`
  };
  std::vector<PathSegment> path_;
  std::string plain_path_;
  std::vector<std::string_view> keys_;
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

void ResourceParser::ReleaseLargeBuffers(size_t keep_bytes) {
  if (parser_.capacity() > keep_bytes) parser_ = od::parser();  // frees its buffers; the next document reallocates
  if (scratch_.capacity() > keep_bytes) std::string().swap(scratch_);
}

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
  bool seen_type = false, seen_id = false;
  for (auto field : obj) {
    std::string_view key;
    if (auto e = field.unescaped_key().get(key)) return JsonError(e);
    if (key == "resourceType" || key == "id") {
      bool& seen = key == "id" ? seen_id : seen_type;
      // Which of two values a reader takes is arbitrary: the resource is rejected instead.
      if (seen) return Status::Invalid("Duplicate JSON key '" + std::string(key) + "' in the resource");
      seen = true;
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
