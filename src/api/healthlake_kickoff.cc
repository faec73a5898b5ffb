// HealthLake's $export kick-off (POST with the HealthLake JSON body): query parameters and body, validated into the
// dialect-neutral bulk::ExportRequest. Each error names the parameter or field and what was expected, because it is
// what a HealthLake user sees in the OperationOutcome diagnostics.
#include "api/healthlake_kickoff.h"

#include <functional>
#include <nlohmann/json.hpp>

#include "fhir/r4.h"

namespace fhirlake::api {
namespace {

using bulk::ExportLevel;
using bulk::ExportRequest;

std::string Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return std::string(s);
}

// Calls `fn` with each comma-separated item of `value`, trimmed; true when every call succeeded.
Result<bool> ForEachItem(std::string_view value, const std::function<Status(std::string)>& fn) {
  while (true) {
    size_t comma = value.find(',');
    RETURN_IF_ERROR(fn(Trim(value.substr(0, comma))));
    if (comma == std::string_view::npos) return true;
    value.remove_prefix(comma + 1);
  }
}

Status CheckSinceBeforeUntil(const ExportRequest& req) {
  if (req.since && req.until && *req.until < *req.since) {
    return Status::Invalid("_until (" + FormatInstant(*req.until) + ") is before _since (" + FormatInstant(*req.since) +
                           ")");
  }
  return Status::Ok();
}

}  // namespace

Result<bool> ParseCommonExportParam(const http::QueryParam& q, EpochMillis now, ExportRequest* req) {
  if (q.name == "_outputFormat") {
    if (req->output_format_given) return Status::Invalid("_outputFormat is given more than once");
    req->output_format_given = true;
    if (q.value != "application/fhir+ndjson" && q.value != "application/ndjson" && q.value != "ndjson") {
      return Status::Invalid("_outputFormat '" + q.value +
                             "' is not supported; use application/fhir+ndjson, application/ndjson or ndjson");
    }
    req->output_format = "application/fhir+ndjson";
    return true;
  }
  if (q.name == "_type") {
    return ForEachItem(q.value, [&](std::string type) -> Status {
      if (type.empty()) return Status::Invalid("_type '" + q.value + "' contains an empty resource type");
      if (!fhir::IsKnownResourceType(type)) {
        return Status::Invalid("_type names '" + type + "', which is not an R4 resource type");
      }
      if (req->level != ExportLevel::kSystem && !bulk::IsPatientLevelType(type)) {
        return Status::Invalid("_type names '" + type +
                               "', which is neither in the Patient compartment nor a type "
                               "exported with it (Practitioner, Organization, Location, Medication, Device, ...); "
                               "use a system-level $export for it");
      }
      if (std::find(req->types.begin(), req->types.end(), type) == req->types.end()) req->types.push_back(type);
      return Status::Ok();
    });
  }
  if (q.name == "_since") {
    if (req->since) return Status::Invalid("_since is given more than once");
    auto since = ParseInstant(q.value);
    if (!since.ok()) return since.status().WithContext("_since");
    if (*since > now) {
      return Status::Invalid("_since '" + q.value + "' is in the future (server time is " + FormatInstant(now) + ")");
    }
    req->since = *since;
    RETURN_IF_ERROR(CheckSinceBeforeUntil(*req));
    return true;
  }
  if (q.name == "_tag" || q.name == "_security") {
    std::vector<std::string>& into = q.name == "_tag" ? req->tags : req->security;
    return ForEachItem(q.value, [&](std::string item) -> Status {
      RETURN_IF_ERROR(bulk::CheckCodingFilter(q.name, item));
      if (std::find(into.begin(), into.end(), item) == into.end()) into.push_back(item);
      return Status::Ok();
    });
  }
  if (q.name == "_elements") {
    return ForEachItem(q.value, [&](std::string e) -> Status {
      // "name" or "Type.name": a top-level element of every type, or of one.
      const size_t dot = e.find('.');
      std::string_view type = dot == std::string::npos ? std::string_view() : std::string_view(e).substr(0, dot);
      std::string_view name = dot == std::string::npos ? std::string_view(e) : std::string_view(e).substr(dot + 1);
      const bool name_ok = !name.empty() && std::all_of(name.begin(), name.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
      });
      if (!name_ok || (dot != std::string::npos && !fhir::IsKnownResourceType(type))) {
        return Status::Invalid("_elements '" + e +
                               "' is not a top-level element name (such as 'status') or a resource type and one "
                               "('Observation.status')");
      }
      if (std::find(req->elements.begin(), req->elements.end(), e) == req->elements.end()) req->elements.push_back(e);
      return Status::Ok();
    });
  }
  if (q.name == "_typeFilter") {
    for (std::string& f : bulk::SplitTypeFilterValue(q.value)) {
      if (std::find(req->type_filters.begin(), req->type_filters.end(), f) == req->type_filters.end()) {
        req->type_filters.push_back(std::move(f));
      }
    }
    return true;
  }
  if (q.name == "_until") {
    if (req->until) return Status::Invalid("_until is given more than once");
    auto until = ParseInstant(q.value);
    if (!until.ok()) return until.status().WithContext("_until");
    // An _until after the job's transactionTime means the transactionTime: the snapshot bounds it anyway.
    req->until = *until;
    RETURN_IF_ERROR(CheckSinceBeforeUntil(*req));
    return true;
  }
  return false;
}

Result<ExportRequest> ParseHealthLakeKickoff(ExportLevel level, std::string group_id,
                                             const std::vector<http::QueryParam>& query, std::string_view body,
                                             EpochMillis now) {
  ExportRequest req;
  req.level = level;
  req.group_id = std::move(group_id);
  for (const auto& q : query) {
    ASSIGN_OR_RETURN(bool known, ParseCommonExportParam(q, now, &req));
    if (!known) {
      return Status::Invalid("Query parameter '" + q.name +
                             "' is not supported by $export; supported: _outputFormat, _type, _since, _until, "
                             "_tag, _security, _elements, _typeFilter");
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
    if (!bulk::IsJobName(req.job_name)) {
      return Status::Invalid("JobName '" + req.job_name +
                             "' must be 1 to 64 characters of letters, digits, spaces and _.:/=+-%@");
    }
  }
  RETURN_IF_ERROR(string_field(j, "DataAccessRoleArn", "DataAccessRoleArn", &req.data_access_role_arn));
  if (!bulk::IsIamRoleArn(req.data_access_role_arn)) {
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
  ASSIGN_OR_RETURN(req.output, bulk::ParseS3Uri(uri));
  RETURN_IF_ERROR(string_field(*s3, "KmsKeyId", "OutputDataConfig.S3Configuration.KmsKeyId", &req.kms_key_id));
  if (!bulk::IsKmsKeyId(req.kms_key_id)) {
    return Status::Invalid("OutputDataConfig.S3Configuration.KmsKeyId '" + req.kms_key_id +
                           "' must be 1 to 400 characters: a KMS key id, key ARN, alias name (alias/...) or alias ARN");
  }
  return req;
}

}  // namespace fhirlake::api
