// Validation shared by every export dialect: S3 output locations, role ARNs, KMS key ids, job names, the types a
// Patient-level export may contain. Each error names the field and what was expected.
#include "bulk/export_request.h"

#include <simdjson.h>

#include <algorithm>
#include <regex>

#include "common/url.h"
#include "fhir/r4.h"

namespace fhirlake::bulk {
namespace {

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

std::vector<std::string> SplitTypeFilterValue(std::string_view value) {
  std::vector<std::string> out;
  size_t start = 0;
  for (size_t comma = value.find(','); comma != std::string_view::npos; comma = value.find(',', comma + 1)) {
    std::string_view next = value.substr(comma + 1);
    size_t q = next.find('?');
    if (q == std::string_view::npos || !fhir::IsKnownResourceType(next.substr(0, q))) continue;
    out.emplace_back(value.substr(start, comma - start));
    start = comma + 1;
  }
  out.emplace_back(value.substr(start));
  return out;
}

Result<TypeFilters> ParseTypeFilters(const std::vector<std::string>& filters, std::string_view fhir_base, bool lenient,
                                     std::vector<std::string>* ignored) {
  // Parameters that shape a search's answer rather than select resources.
  static constexpr std::string_view kNotFilters[] = {"_sort",   "_count",    "_include",   "_revinclude",    "_summary",
                                                     "_total",  "_elements", "_contained", "_containedType", "page",
                                                     "_format", "_pretty",   "_type"};
  TypeFilters out;
  for (const std::string& filter : filters) {
    auto bad = [&](const std::string& why) { return Status::Invalid("_typeFilter '" + filter + "': " + why); };
    size_t q = filter.find('?');
    if (q == std::string::npos || q == 0)
      return bad("expected a search query on one type, such as Observation?code=...");
    std::string type = filter.substr(0, q);
    if (!fhir::IsKnownResourceType(type)) return bad("'" + type + "' is not an R4 resource type");
    std::vector<std::pair<std::string, std::string>> params;
    std::string_view rest = std::string_view(filter).substr(q + 1);
    while (!rest.empty()) {
      size_t amp = rest.find('&');
      std::string_view pair = rest.substr(0, amp);
      if (!pair.empty()) {
        size_t eq = pair.find('=');
        std::string name = PercentDecode(pair.substr(0, eq), true);
        std::string value = eq == std::string_view::npos ? "" : PercentDecode(pair.substr(eq + 1), true);
        std::string bare = name.substr(0, name.find(':'));
        if (std::find(std::begin(kNotFilters), std::end(kNotFilters), bare) != std::end(kNotFilters)) {
          return bad("'" + name +
                     "' shapes a search's answer and selects no resources; a filter takes search "
                     "parameters only");
        }
        params.emplace_back(std::move(name), std::move(value));
      }
      if (amp == std::string_view::npos) break;
      rest.remove_prefix(amp + 1);
    }
    if (params.empty()) return bad("the query has no search parameter");
    auto parsed = search::ParseSearchQuery({type}, params, fhir_base, lenient);
    if (!parsed.ok()) return bad(parsed.status().message());
    if (ignored) {
      for (const std::string& why : parsed->ignored) ignored->push_back("_typeFilter " + type + ": " + why);
    }
    auto it = std::find_if(out.begin(), out.end(), [&](const auto& e) { return e.first == type; });
    if (it == out.end()) {
      out.emplace_back(type, std::vector<search::SearchQuery>());
      it = std::prev(out.end());
    }
    it->second.push_back(std::move(*parsed));
  }
  return out;
}

std::string FhirBaseOfKickoffUrl(std::string_view url) {
  url = url.substr(0, url.find('?'));
  if (url.ends_with("/$export")) url.remove_suffix(8);
  if (url.ends_with("/Patient")) {
    url.remove_suffix(8);
  } else if (size_t g = url.rfind("/Group/");
             g != std::string_view::npos && url.find('/', g + 7) == std::string_view::npos) {
    url = url.substr(0, g);
  }
  return std::string(url);
}

Status CheckTypeFilters(ExportRequest* req) {
  if (req->type_filters.empty()) return Status::Ok();
  std::vector<std::string> ignored;
  ASSIGN_OR_RETURN(TypeFilters parsed,
                   ParseTypeFilters(req->type_filters, FhirBaseOfKickoffUrl(req->request_url), req->lenient, &ignored));
  for (const auto& [type, queries] : parsed) {
    if (!req->types.empty() && std::find(req->types.begin(), req->types.end(), type) == req->types.end()) {
      return Status::Invalid("_typeFilter filters " + type + ", which _type leaves out; add " + type +
                             " to _type, or drop the filter");
    }
    if (req->level != ExportLevel::kSystem && !IsPatientLevelType(type)) {
      return Status::Invalid("_typeFilter filters " + type + ", which a " + std::string(LevelName(req->level)) +
                             "-level export does not contain");
    }
  }
  req->notes.insert(req->notes.end(), ignored.begin(), ignored.end());
  return Status::Ok();
}

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

size_t LongestJobKeySuffix() {
  size_t longest_type = std::string_view("OperationOutcome").size();
  for (std::string_view t : fhir::AllResourceTypes()) longest_type = std::max(longest_type, t.size());
  // "/{datastoreId}-FHIR_EXPORT-{jobId}/{Type}/{Type}-{n}.ndjson", n up to 10 digits.
  return 1 + 32 + std::string_view("-FHIR_EXPORT-").size() + 32 + 1 + longest_type + 1 + longest_type + 1 + 10 +
         std::string_view(".ndjson").size();
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
    if (seg.size() > 255) {
      return Status::Invalid(field + ": the key prefix segment '" + std::string(seg.substr(0, 32)) + "...' is " +
                             std::to_string(seg.size()) +
                             " bytes long; each '/'-separated segment may have at most 255 bytes");
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
  if (prefix.size() + LongestJobKeySuffix() > 1024) {
    return Status::Invalid(field + ": the key prefix is " + std::to_string(prefix.size()) +
                           " bytes long; with the job folder and file names below it, keys would exceed S3's limit of "
                           "1024 bytes (the prefix may have at most " +
                           std::to_string(1024 - LongestJobKeySuffix()) + " bytes)");
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

Status CheckCodingFilter(std::string_view param, std::string_view item) {
  if (item.empty()) return Status::Invalid(std::string(param) + " has an empty value; expected system|code");
  if (item == "|") return Status::Invalid(std::string(param) + " '|' names neither a system nor a code");
  if (std::count(item.begin(), item.end(), '|') > 1) {
    return Status::Invalid(std::string(param) + " '" + std::string(item) +
                           "' has more than one '|'; expected system|code, system|, |code or code");
  }
  return Status::Ok();
}

namespace {

// One item against the codings of `list` (meta.tag or meta.security).
bool AnyCodingMatches(simdjson::dom::element meta, const char* list, std::string_view item) {
  simdjson::dom::array codings;
  if (meta[list].get(codings) != simdjson::SUCCESS) return false;
  const size_t bar = item.find('|');
  const bool any_system = bar == std::string_view::npos;
  const std::string_view system = any_system ? std::string_view() : item.substr(0, bar);
  const std::string_view code = any_system ? item : item.substr(bar + 1);
  for (simdjson::dom::element c : codings) {
    std::string_view cs, cc;
    const bool has_system = c["system"].get(cs) == simdjson::SUCCESS;
    const bool has_code = c["code"].get(cc) == simdjson::SUCCESS;
    if (!any_system && (system.empty() ? has_system && !cs.empty() : cs != system)) continue;
    if (!code.empty() && (!has_code || cc != code)) continue;
    return true;
  }
  return false;
}

}  // namespace

bool MatchesMetaFilters(std::string_view json, const std::vector<std::string>& tags,
                        const std::vector<std::string>& security) {
  if (tags.empty() && security.empty()) return true;
  thread_local simdjson::dom::parser parser;
  simdjson::dom::element root, meta;
  if (parser.parse(json.data(), json.size()).get(root) != simdjson::SUCCESS) return false;
  if (root["meta"].get(meta) != simdjson::SUCCESS) return false;
  for (const auto& t : tags) {
    if (!AnyCodingMatches(meta, "tag", t)) return false;
  }
  for (const auto& s : security) {
    if (!AnyCodingMatches(meta, "security", s)) return false;
  }
  return true;
}

}  // namespace fhirlake::bulk
