// A validated export kick-off: everything HealthLake's $export accepts (level, _type, _since,
// _outputFormat and the JSON body), parsed and checked before a job exists. Pure functions, no I/O.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "common/time.h"
#include "search/query.h"

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
  std::optional<EpochMillis> until;  // _until (HealthLake's newer export): lastUpdated <= until
  // _tag / _security: "system|code", "system|" (any code of the system), "|code" (no system) or "code" (any
  // system); every one must match a coding of meta.tag / meta.security.
  std::vector<std::string> tags;
  std::vector<std::string> security;
  // `patient` (the IG's POST Parameters; Patient and Group level): only these patients (ids), sorted, unique.
  std::vector<std::string> patients;
  // _typeFilter: "Type?search-query" each (checked by ParseTypeFilters); _elements: top-level element names.
  std::vector<std::string> type_filters;
  std::vector<std::string> elements;
  // What `Prefer: handling=lenient` made the kick-off ignore, one diagnostics line each (reported in `error`).
  std::vector<std::string> notes;
  bool lenient = false;  // `Prefer: handling=lenient`: unknown search parameters in _typeFilter are ignored (noted)
  std::string output_format = "application/fhir+ndjson";
  bool output_format_given = false;  // parsing: _outputFormat was in the request
  std::string job_name;
  std::string data_access_role_arn;
  S3Location output;
  std::string kms_key_id;
  std::string request_url;          // the kick-off URL as received (absolute)
  std::string view = "healthlake";  // the dialect that started it (its status URL and answers follow it)
  std::string owner = "anonymous";  // the principal that started it
  // The control plane's ClientToken and the request in a canonical form (store::ExportJobRecord::client_request).
  std::string client_token;
  std::string client_request;
  // The IG view's STU3 options (store::ExportJobRecord has the same).
  bool partial_manifests = false;
  std::string organize_by;  // "" or "Patient"
  std::string associated;   // "", "LatestProvenanceResources" or "RelevantProvenanceResources"
};

// Parses `s3://bucket[/prefix]` (S3 bucket naming rules; no '.'/'..' or empty segments in the prefix; a
// trailing '/' is dropped). Lengths are checked for the longest key a job will write under the prefix: at most
// 1,024 bytes in all (S3's limit), and at most 255 bytes per '/'-separated segment (a file name's limit, so that the
// output also fits a local directory or a mirror of the bucket on disk).
Result<S3Location> ParseS3Uri(std::string_view uri);
// The length of the longest key a job writes below its prefix ("/{datastoreId}-FHIR_EXPORT-{jobId}/{Type}/...").
size_t LongestJobKeySuffix();
bool IsIamRoleArn(std::string_view arn);
bool IsKmsKeyId(std::string_view key);
bool IsJobName(std::string_view name);
// Checks one _tag/_security item ("system|code", "system|", "|code", "code"); kInvalid names `param`.
Status CheckCodingFilter(std::string_view param, std::string_view item);
// Whether the resource `json` has, for every item of `tags`, a matching coding in meta.tag, and likewise for
// `security` in meta.security (items as CheckCodingFilter accepts). True when both are empty.
bool MatchesMetaFilters(std::string_view json, const std::vector<std::string>& tags,
                        const std::vector<std::string>& security);
// Parses _typeFilter values ("Type?name=value&...", the query percent-encoded or not) into each type's searches, in
// the order the types first appear; several filters of one type are OR-ed. `fhir_base`: the datastore's FHIR base
// (absolute references to it are local). Search result parameters (_sort, _count, _include, ...) are refused: a
// filter selects resources. `lenient`: unknown search parameters are ignored, each reported in `ignored`.
using TypeFilters = std::vector<std::pair<std::string, std::vector<search::SearchQuery>>>;
Result<TypeFilters> ParseTypeFilters(const std::vector<std::string>& filters, std::string_view fhir_base,
                                     bool lenient = true, std::vector<std::string>* ignored = nullptr);
// The FHIR base a kick-off URL was sent to: what precedes "/$export", "/Patient/$export" or "/Group/{id}/$export".
std::string FhirBaseOfKickoffUrl(std::string_view url);
// Checks the request's _typeFilter values (ParseTypeFilters, with the base of request_url) against its level and
// _type; what handling=lenient ignored goes to `notes`.
Status CheckTypeFilters(ExportRequest* req);
// Splits one _typeFilter parameter value into its queries: a comma separates two queries only where a resource type
// and '?' follow it (a comma inside a query separates a parameter's alternatives).
std::vector<std::string> SplitTypeFilterValue(std::string_view value);

// Types a Patient- or Group-level export can contain: compartment types and the types they reference.
bool IsPatientLevelType(std::string_view type);

}  // namespace fhirlake::bulk
