// An AWS service model (the shapes and operations of botocore's service-2.json) as the server reads it, and the
// validation of a request body against an operation's input shape: what AWS's awsJson1_0 front end checks before an
// operation runs (types, required members, lengths and value ranges, patterns with PCRE2, enums, unions). The tables
// are generated (tools/gen_healthlake_model.py); nothing here knows HealthLake's operations.
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace fhirlake::awsjson {

enum class ShapeType { kStructure, kString, kBoolean, kList, kMap, kInteger, kLong, kDouble, kTimestamp, kBlob };

struct Member {
  std::string name;
  std::string shape;
  bool idempotency_token = false;  // the SDKs fill it in when the caller does not
};

struct Shape {
  std::string name;
  ShapeType type = ShapeType::kString;
  std::optional<double> min, max;  // string length, list size, or number range
  std::string pattern;             // a regular expression, not anchored (Smithy's pattern trait)
  std::vector<std::string> enum_values;
  std::vector<Member> members;  // structure
  std::vector<std::string> required;
  bool is_union = false;  // exactly one member set
  std::string member;     // list: the element shape
  bool exception = false;
};

struct Operation {
  std::string name;
  std::string input;
  std::string output;
  std::vector<std::string> errors;
};

struct Model {
  std::string target_prefix;  // X-Amz-Target is "{target_prefix}.{operation}"
  std::string api_version;
  std::vector<Operation> operations;
  std::map<std::string, Shape, std::less<>> shapes;

  const Operation* FindOperation(std::string_view name) const;
  const Shape* FindShape(std::string_view name) const;
};

const Model& HealthLakeModel();

// Validates `value` against shape `shape`. kInvalid, in AWS's words, naming the member by its path
// ("Value null at 'OutputDataConfig.S3Configuration.S3Uri' failed to satisfy constraint: Member must not be null").
// Members the shape does not have are refused too (a misspelt member never passes silently).
Status Validate(const Model& model, const nlohmann::json& value, std::string_view shape);

// Whether `text` matches the shape pattern `pattern` (PCRE2, UTF and Unicode properties; searched, not anchored).
// kInvalid when the pattern does not compile.
Result<bool> PatternMatches(const std::string& pattern, std::string_view text);

}  // namespace fhirlake::awsjson
