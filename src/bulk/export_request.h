// A validated export kick-off: everything HealthLake's $export accepts (level, _type, _since,
// _outputFormat and the JSON body), parsed and checked before a job exists. Pure functions, no I/O.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "common/time.h"

namespace fhirlake::bulk {

enum class ExportLevel { kSystem, kPatient, kGroup };
std::string_view LevelName(ExportLevel level);

struct S3Location {
  std::string bucket;
  std::string prefix;  // without leading or trailing '/'; may be empty
  std::string Uri() const { return "s3://" + bucket + (prefix.empty() ? "" : "/" + prefix); }
};

struct ExportRequest {
  ExportLevel level = ExportLevel::kSystem;
  std::string group_id;
  std::vector<std::string> types;  // empty: every type the level allows
  std::optional<EpochMillis> since;
  std::string output_format = "application/fhir+ndjson";
  std::string job_name;
  std::string data_access_role_arn;
  S3Location output;
  std::string kms_key_id;
  std::string request_url;  // the kick-off URL as received (absolute)
};

// Parses `s3://bucket[/prefix]` (S3 bucket naming rules; no '.'/'..' or empty segments in the prefix; a
// trailing '/' is dropped).
Result<S3Location> ParseS3Uri(std::string_view uri);
bool IsIamRoleArn(std::string_view arn);
bool IsKmsKeyId(std::string_view key);
bool IsJobName(std::string_view name);
// Types a Patient- or Group-level export can contain: compartment types and the types they reference.
bool IsPatientLevelType(std::string_view type);

}  // namespace fhirlake::bulk
