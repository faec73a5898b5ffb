// Kick-off validation. Each error names the parameter or field and what was expected, because it is what a
// HealthLake user sees in the OperationOutcome diagnostics.
#include "bulk/export_request.h"

#include <nlohmann/json.hpp>
#include <regex>

#include "fhir/r4.h"

namespace fhirlake::bulk {
namespace {

std::string Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return std::string(s);
}

bool IsLowerAlnum(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }

Status CheckBucketName(std::string_view b, std::string_view uri) {
  auto bad = [&](std::string why) {
    return Status::Invalid("OutputDataConfig.S3Configuration.S3Uri '" + std::string(uri) + "': bucket name '" +
                           std::string(b) + "' " + why);
  };
  if (b.size() < 3 || b.size() > 63) return bad("must be 3 to 63 characters long");
  for (char c : b) {
    if (!IsLowerAlnum(c) && c != '.' && c != '-') return bad("may contain only a-z, 0-9, '.' and '-'");
  }
  if (!IsLowerAlnum(b.front()) || !IsLowerAlnum(b.back())) return bad("must start and end with a letter or digit");
  if (b.find("..") != std::string_view::npos) return bad("must not contain '..'");
  static const std::regex kIp(R"(^\d+\.\d+\.\d+\.\d+$)");
  if (std::regex_match(std::string(b), kIp)) return bad("must not be formatted as an IP address");
  return Status::Ok();
}

}  // namespace

bool IsPatientLevelType(std::string_view type) {
  // Outside the compartment, these are what clinical resources point at; they are exported one hop deep.
  static constexpr std::string_view kReferenced[] = {"BiologicallyDerivedProduct",
                                                     "Device",
                                                     "DeviceDefinition",
                                                     "Endpoint",
                                                     "HealthcareService",
                                                     "Location",
                                                     "Medication",
                                                     "Organization",
                                                     "OrganizationAffiliation",
                                                     "Practitioner",
                                                     "PractitionerRole",
                                                     "Questionnaire",
                                                     "Substance"};
  if (fhir::IsPatientCompartmentType(type)) return true;
  return std::find(std::begin(kReferenced), std::end(kReferenced), type) != std::end(kReferenced);
}

std::string_view LevelName(ExportLevel level) {
  switch (level) {
    case ExportLevel::kSystem:
      return "system";
    case ExportLevel::kPatient:
      return "patient";
    case ExportLevel::kGroup:
      return "group";
  }
  return "system";
}

Result<S3Location> ParseS3Uri(std::string_view uri) {
  const std::string field = "OutputDataConfig.S3Configuration.S3Uri";
  if (uri.size() > 1024) return Status::Invalid(field + " is longer than 1024 characters");
  if (!uri.starts_with("s3://")) {
    return Status::Invalid(field + " '" + std::string(uri) + "' must be an S3 URI: s3://bucket[/prefix]");
  }
  std::string_view rest = uri.substr(5);
  size_t slash = rest.find('/');
  S3Location loc;
  loc.bucket = std::string(rest.substr(0, slash));
  RETURN_IF_ERROR(CheckBucketName(loc.bucket, uri));
  if (slash == std::string_view::npos) return loc;
  std::string_view prefix = rest.substr(slash + 1);
  while (prefix.ends_with('/')) prefix.remove_suffix(1);
  std::string_view p = prefix;
  while (!p.empty()) {
    size_t next = p.find('/');
    std::string_view seg = p.substr(0, next);
    if (seg.empty() || seg == "." || seg == "..") {
      return Status::Invalid(field + " '" + std::string(uri) +
                             "': the key prefix must not contain empty, '.' or '..' segments");
    }
    for (char c : seg) {
      if (static_cast<unsigned char>(c) < 0x20 || c == '\\') {
        return Status::Invalid(field + " '" + std::string(uri) +
                               "': the key prefix contains a control character or '\\'");
      }
    }
    if (next == std::string_view::npos) break;
    p.remove_prefix(next + 1);
  }
  loc.prefix = std::string(prefix);
  return loc;
}

bool IsIamRoleArn(std::string_view arn) {
  static const std::regex kRole(R"(^arn:aws(-[^:]+)?:iam::[0-9]{12}:role/[\w+=,.@/-]+$)");
  return arn.size() >= 20 && arn.size() <= 2048 && std::regex_match(std::string(arn), kRole);
}

bool IsKmsKeyId(std::string_view key) {
  static const std::regex kKey(
      R"(^(arn:aws((-us-gov)|(-iso)|(-iso-b)|(-cn))?:kms:)?([a-z]{2}-[a-z]+(-[a-z]+)?-\d:)?(\d{12}:)?)"
      R"((((key/)?[a-zA-Z0-9_-]+)|(alias/[a-zA-Z0-9:/_-]+))$)");
  return !key.empty() && key.size() <= 400 && std::regex_match(std::string(key), kKey);
}

bool IsJobName(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  for (unsigned char c : name) {
    if (c >= 0x80) continue;  // non-ASCII letters and numbers (UTF-8) are allowed
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == ' ' ||
              std::string_view("_.:/=+-%@").find(static_cast<char>(c)) != std::string_view::npos;
    if (!ok) return false;
  }
  return true;
}

Result<ExportRequest> ParseHealthLakeKickoff(ExportLevel level, std::string group_id,
                                             const std::vector<http::QueryParam>& query, std::string_view body,
                                             EpochMillis now) {
  ExportRequest req;
  req.level = level;
  req.group_id = std::move(group_id);
  bool saw_format = false;
  for (const auto& q : query) {
    if (q.name == "_outputFormat") {
      if (saw_format) return Status::Invalid("_outputFormat is given more than once");
      saw_format = true;
      if (q.value != "application/fhir+ndjson" && q.value != "application/ndjson" && q.value != "ndjson") {
        return Status::Invalid("_outputFormat '" + q.value +
                               "' is not supported; use application/fhir+ndjson, application/ndjson or ndjson");
      }
      req.output_format = "application/fhir+ndjson";
    } else if (q.name == "_type") {
      std::string_view v = q.value;
      while (true) {
        size_t comma = v.find(',');
        std::string type = Trim(v.substr(0, comma));
        if (type.empty()) return Status::Invalid("_type '" + q.value + "' contains an empty resource type");
        if (!fhir::IsKnownResourceType(type)) {
          return Status::Invalid("_type names '" + type + "', which is not an R4 resource type");
        }
        if (level != ExportLevel::kSystem && !IsPatientLevelType(type)) {
          return Status::Invalid("_type names '" + type +
                                 "', which is neither in the Patient compartment nor a type "
                                 "exported with it (Practitioner, Organization, Location, Medication, Device, ...); "
                                 "use a system-level $export for it");
        }
        if (std::find(req.types.begin(), req.types.end(), type) == req.types.end()) req.types.push_back(type);
        if (comma == std::string_view::npos) break;
        v.remove_prefix(comma + 1);
      }
    } else if (q.name == "_since") {
      if (req.since) return Status::Invalid("_since is given more than once");
      auto since = ParseInstant(q.value);
      if (!since.ok()) return since.status().WithContext("_since");
      if (*since > now) {
        return Status::Invalid("_since '" + q.value + "' is in the future (server time is " + FormatInstant(now) + ")");
      }
      req.since = *since;
    } else {
      return Status::Invalid("Query parameter '" + q.name +
                             "' is not supported by $export; supported: _outputFormat, _type, _since");
    }
  }

  if (body.empty()) {
    return Status::Invalid(
        "The request has no body; send {\"DataAccessRoleArn\": ..., \"OutputDataConfig\": "
        "{\"S3Configuration\": {\"S3Uri\": ..., \"KmsKeyId\": ...}}}");
  }
  nlohmann::json j = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Status::Invalid("The request body is not valid JSON");
  if (!j.is_object()) return Status::Invalid("The request body must be a JSON object");
  auto string_field = [](const nlohmann::json& obj, const std::string& key, const std::string& path,
                         std::string* out) -> Status {
    auto it = obj.find(key);
    if (it == obj.end()) return Status::Invalid(path + " is required");
    if (!it->is_string()) return Status::Invalid(path + " must be a string");
    *out = it->get<std::string>();
    return Status::Ok();
  };
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() != "JobName" && it.key() != "DataAccessRoleArn" && it.key() != "OutputDataConfig") {
      return Status::Invalid("Unknown field '" + it.key() +
                             "' in the request body; expected JobName, DataAccessRoleArn and OutputDataConfig");
    }
  }
  if (j.contains("JobName")) {
    RETURN_IF_ERROR(string_field(j, "JobName", "JobName", &req.job_name));
    if (!IsJobName(req.job_name)) {
      return Status::Invalid("JobName '" + req.job_name +
                             "' must be 1 to 64 characters of letters, digits, spaces and _.:/=+-%@");
    }
  }
  RETURN_IF_ERROR(string_field(j, "DataAccessRoleArn", "DataAccessRoleArn", &req.data_access_role_arn));
  if (!IsIamRoleArn(req.data_access_role_arn)) {
    return Status::Invalid("DataAccessRoleArn '" + req.data_access_role_arn +
                           "' is not an IAM role ARN; expected arn:aws:iam::<12-digit account>:role/<name>");
  }
  auto odc = j.find("OutputDataConfig");
  if (odc == j.end()) return Status::Invalid("OutputDataConfig is required");
  if (!odc->is_object()) return Status::Invalid("OutputDataConfig must be an object with S3Configuration");
  for (auto it = odc->begin(); it != odc->end(); ++it) {
    if (it.key() != "S3Configuration") {
      return Status::Invalid("Unknown field 'OutputDataConfig." + it.key() + "'; expected S3Configuration");
    }
  }
  auto s3 = odc->find("S3Configuration");
  if (s3 == odc->end()) return Status::Invalid("OutputDataConfig.S3Configuration is required");
  if (!s3->is_object()) return Status::Invalid("OutputDataConfig.S3Configuration must be an object");
  for (auto it = s3->begin(); it != s3->end(); ++it) {
    if (it.key() != "S3Uri" && it.key() != "KmsKeyId") {
      return Status::Invalid("Unknown field 'OutputDataConfig.S3Configuration." + it.key() +
                             "'; expected S3Uri and KmsKeyId");
    }
  }
  std::string uri;
  RETURN_IF_ERROR(string_field(*s3, "S3Uri", "OutputDataConfig.S3Configuration.S3Uri", &uri));
  ASSIGN_OR_RETURN(req.output, ParseS3Uri(uri));
  RETURN_IF_ERROR(string_field(*s3, "KmsKeyId", "OutputDataConfig.S3Configuration.KmsKeyId", &req.kms_key_id));
  if (!IsKmsKeyId(req.kms_key_id)) {
    return Status::Invalid("OutputDataConfig.S3Configuration.KmsKeyId '" + req.kms_key_id +
                           "' must be 1 to 400 characters: a KMS key id, key ARN, alias name (alias/...) or alias ARN");
  }
  return req;
}

}  // namespace fhirlake::bulk
