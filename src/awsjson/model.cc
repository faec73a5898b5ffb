#include "awsjson/model.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <mutex>

namespace fhirlake::awsjson {
namespace {

using nlohmann::json;

struct CodeFree {
  void operator()(pcre2_code* c) const { pcre2_code_free(c); }
};

// Compiled patterns, kept for the life of the process (the model has a few dozen).
std::mutex patterns_mu;
std::map<std::string, std::unique_ptr<pcre2_code, CodeFree>, std::less<>>& Patterns() {
  static auto* patterns = new std::map<std::string, std::unique_ptr<pcre2_code, CodeFree>, std::less<>>;
  return *patterns;
}

// A value as AWS quotes it in a validation message (long values shortened).
std::string Quote(const json& v) {
  if (v.is_null()) return "null";
  std::string s = v.is_string() ? v.get<std::string>() : v.dump();
  if (s.size() > 64) {
    size_t cut = 61;
    while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;  // not inside a UTF-8 sequence
    s = s.substr(0, cut) + "...";
  }
  return "'" + s + "'";
}

Status Fail(const json& v, const std::string& path, const std::string& constraint) {
  return Status::Invalid("1 validation error detected: Value " + Quote(v) + " at '" + path +
                         "' failed to satisfy constraint: " + constraint);
}

// The number of Unicode code points of UTF-8 `s` (lengths in the model count characters).
size_t CodePoints(std::string_view s) {
  return static_cast<size_t>(std::count_if(s.begin(), s.end(), [](char c) { return (c & 0xC0) != 0x80; }));
}

std::string Num(double d) {
  if (d == std::floor(d) && std::abs(d) < 1e15) return std::to_string(static_cast<int64_t>(d));
  return std::to_string(d);
}

Status ValidateAt(const Model& model, const json& v, const Shape& shape, const std::string& path) {
  switch (shape.type) {
    case ShapeType::kStructure: {
      if (!v.is_object()) return Fail(v, path, "Member must be a structure (a JSON object)");
      for (const auto& name : shape.required) {
        if (!v.contains(name) || v[name].is_null()) {
          return Fail(json(), path.empty() ? name : path + "." + name, "Member must not be null");
        }
      }
      int set = 0;
      for (auto it = v.begin(); it != v.end(); ++it) {
        const std::string child = path.empty() ? it.key() : path + "." + it.key();
        auto m = std::find_if(shape.members.begin(), shape.members.end(),
                              [&](const Member& mm) { return mm.name == it.key(); });
        if (m == shape.members.end()) {
          return Status::Invalid("1 validation error detected: '" + child + "' is not a member of " + shape.name +
                                 " (members: " +
                                 [&] {
                                   std::string l;
                                   for (const auto& mm : shape.members) l += (l.empty() ? "" : ", ") + mm.name;
                                   return l;
                                 }() +
                                 ")");
        }
        if (it->is_null()) continue;  // an absent optional member
        ++set;
        const Shape* ms = model.FindShape(m->shape);
        if (ms == nullptr) return Status::Internal("the model has no shape " + m->shape);
        RETURN_IF_ERROR(ValidateAt(model, *it, *ms, child));
      }
      if (shape.is_union && set != 1) {
        return Fail(v, path, "Member must have exactly one of its members set (" + std::to_string(set) + " are)");
      }
      return Status::Ok();
    }
    case ShapeType::kString: {
      if (!v.is_string()) return Fail(v, path, "Member must be a string");
      const std::string s = v.get<std::string>();
      const size_t n = CodePoints(s);
      if (shape.min && n < *shape.min) {
        return Fail(v, path, "Member must have length greater than or equal to " + Num(*shape.min));
      }
      if (shape.max && n > *shape.max) {
        return Fail(v, path, "Member must have length less than or equal to " + Num(*shape.max));
      }
      if (!shape.enum_values.empty() &&
          std::find(shape.enum_values.begin(), shape.enum_values.end(), s) == shape.enum_values.end()) {
        std::string l;
        for (const auto& e : shape.enum_values) l += (l.empty() ? "" : ", ") + e;
        return Fail(v, path, "Member must satisfy enum value set: [" + l + "]");
      }
      if (!shape.pattern.empty()) {
        ASSIGN_OR_RETURN(bool ok, PatternMatches(shape.pattern, s));
        if (!ok) return Fail(v, path, "Member must satisfy regular expression pattern: " + shape.pattern);
      }
      return Status::Ok();
    }
    case ShapeType::kBoolean:
      if (!v.is_boolean()) return Fail(v, path, "Member must be a boolean");
      return Status::Ok();
    case ShapeType::kInteger:
    case ShapeType::kLong: {
      if (!v.is_number_integer()) return Fail(v, path, "Member must be a whole number");
      const double d = v.get<double>();
      if (shape.type == ShapeType::kInteger && (d < -2147483648.0 || d > 2147483647.0)) {
        return Fail(v, path, "Member must be a 32-bit integer");
      }
      if (shape.min && d < *shape.min) {
        return Fail(v, path, "Member must have value greater than or equal to " + Num(*shape.min));
      }
      if (shape.max && d > *shape.max) {
        return Fail(v, path, "Member must have value less than or equal to " + Num(*shape.max));
      }
      return Status::Ok();
    }
    case ShapeType::kDouble:
      if (!v.is_number()) return Fail(v, path, "Member must be a number");
      return Status::Ok();
    case ShapeType::kTimestamp:
      // awsJson1_0 sends timestamps as epoch seconds (a number, fractions allowed).
      if (!v.is_number() || v.get<double>() < 0) {
        return Fail(v, path, "Member must be a timestamp in seconds since the epoch");
      }
      return Status::Ok();
    case ShapeType::kList: {
      if (!v.is_array()) return Fail(v, path, "Member must be a list (a JSON array)");
      if (shape.min && v.size() < *shape.min) {
        return Fail(v, path, "Member must have length greater than or equal to " + Num(*shape.min));
      }
      if (shape.max && v.size() > *shape.max) {
        return Fail(v, path, "Member must have length less than or equal to " + Num(*shape.max));
      }
      const Shape* es = model.FindShape(shape.member);
      if (es == nullptr) return Status::Internal("the model has no shape " + shape.member);
      for (size_t i = 0; i < v.size(); ++i) {
        RETURN_IF_ERROR(ValidateAt(model, v[i], *es, path + "." + std::to_string(i + 1)));
      }
      return Status::Ok();
    }
    case ShapeType::kMap:
    case ShapeType::kBlob:
      return Status::Ok();  // the HealthLake model has neither in a request
  }
  return Status::Ok();
}

}  // namespace

const Operation* Model::FindOperation(std::string_view name) const {
  for (const auto& op : operations) {
    if (op.name == name) return &op;
  }
  return nullptr;
}

const Shape* Model::FindShape(std::string_view name) const {
  auto it = shapes.find(name);
  return it == shapes.end() ? nullptr : &it->second;
}

// `$` matches only at the very end (PCRE2_DOLLAR_ENDONLY), as in the ECMAScript patterns the models are written for:
// "owner\n" does not satisfy ^(...)$.
Result<bool> PatternMatches(const std::string& pattern, std::string_view text) {
  pcre2_code* code = nullptr;
  {
    std::lock_guard<std::mutex> lock(patterns_mu);
    auto& patterns = Patterns();
    auto it = patterns.find(pattern);
    if (it == patterns.end()) {
      int err = 0;
      PCRE2_SIZE offset = 0;
      pcre2_code* compiled = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                           PCRE2_UTF | PCRE2_UCP | PCRE2_DOLLAR_ENDONLY, &err, &offset, nullptr);
      if (compiled == nullptr) {
        PCRE2_UCHAR message[256];
        pcre2_get_error_message(err, message, sizeof message);
        return Status::Invalid("the pattern " + pattern + " does not compile at offset " + std::to_string(offset) +
                               ": " + reinterpret_cast<const char*>(message));
      }
      it = patterns.emplace(pattern, std::unique_ptr<pcre2_code, CodeFree>(compiled)).first;
    }
    code = it->second.get();
  }
  // A compiled pattern may be matched from several threads at once; each match has its own match data.
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(code, nullptr);
  if (md == nullptr) return Status::Internal("no memory to match a pattern");
  const int rc = pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), 0, 0, md, nullptr);
  pcre2_match_data_free(md);
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc == PCRE2_ERROR_UTF8_ERR1 || (rc <= PCRE2_ERROR_UTF8_ERR1 && rc >= PCRE2_ERROR_UTF8_ERR21)) return false;
  if (rc < 0)
    return Status::Invalid("the pattern " + pattern + " cannot be matched (PCRE2 error " + std::to_string(rc) + ")");
  return true;
}

Status Validate(const Model& model, const json& value, std::string_view shape) {
  const Shape* s = model.FindShape(shape);
  if (s == nullptr) return Status::Internal("the model has no shape " + std::string(shape));
  return ValidateAt(model, value, *s, "");
}

}  // namespace fhirlake::awsjson
