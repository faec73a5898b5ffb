// Ingest of one FHIR JSON resource: full validation, reference rewriting (urn:uuid and conditional
// references), compartment and reference extraction, and minified re-serialisation into the parts the
// store needs to render the final stored bytes. One ResourceParser per thread (it owns a simdjson parser).
#pragma once

#include <simdjson.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"

namespace fhirlake::fhir {

// Rewrites reference values while a resource is parsed. Return nullopt to keep the value, a string to
// replace it, or an error to reject the resource (e.g. a conditional reference with no match).
class ReferenceResolver {
 public:
  virtual ~ReferenceResolver() = default;
  virtual Result<std::optional<std::string>> Resolve(std::string_view reference) = 0;
};

struct TypedId {
  std::string type;
  std::string id;
  bool operator==(const TypedId&) const = default;
  auto operator<=>(const TypedId&) const = default;
};

struct ParsedResource {
  std::string type;
  std::string id;         // as carried by the body; empty when absent
  std::string meta_rest;  // meta members other than versionId/lastUpdated, each as `,"k":v`
  std::string body_rest;  // top-level members other than resourceType/id/meta, each as `,"k":v`
  // Patient ids whose compartment this resource is in through its own references (not itself).
  std::vector<std::string> compartment_patients;  // sorted, unique
  // Every relative literal reference `Type/id` (or `Type/id/_history/v`) with a known type, sorted, unique.
  std::vector<TypedId> references;
  // Top-level Identifier (system, value) pairs, for conditional create and conditional references.
  std::vector<std::pair<std::string, std::string>> identifiers;
  int unresolved_urn_references = 0;  // references still of the form urn:uuid:... after resolution
};

// The stored bytes: {"resourceType":T,"id":ID,"meta":{"versionId":V,"lastUpdated":LU,...},...}.
std::string RenderResource(const ParsedResource& parsed, std::string_view id, int64_t version_id,
                           std::string_view last_updated);

// Splits a relative literal reference "Type/id" or "Type/id/_history/v" (known type, valid id).
std::optional<TypedId> ParseLiteralReference(std::string_view reference);

class ResourceParser {
 public:
  ResourceParser();
  // Parses a resource whose bytes are followed by readable memory up to `allocation_end`, at least
  // simdjson::SIMDJSON_PADDING bytes past the end of `json` (so views into a padded buffer parse in place).
  Result<ParsedResource> ParseInBuffer(std::string_view json, const char* allocation_end, ReferenceResolver* resolver);
  // Copies `json` into a padded scratch buffer first.
  Result<ParsedResource> Parse(std::string_view json, ReferenceResolver* resolver);

  // Reads only resourceType and id (empty when absent). Cheap: values are skipped, not validated.
  Result<TypedId> PeekTypeAndId(std::string_view json, const char* allocation_end);

  simdjson::ondemand::parser& simdjson_parser() { return parser_; }

  // A parser keeps buffers sized for the largest document it has seen (simdjson's, several times the document,
  // and Parse's padded copy). A long-lived parser (one per server thread) calls this after each request: past
  // `keep_bytes` of document capacity they are freed, so one 60 MiB body does not pin hundreds of MiB per thread
  // for the life of the process. Buffers for documents up to `keep_bytes` are kept (no reallocation per request).
  static constexpr size_t kKeepBytes = 8 << 20;
  void ReleaseLargeBuffers(size_t keep_bytes = kKeepBytes);
  // Document capacity currently held (simdjson's capacity plus the padded copy's), for tests.
  size_t retained_capacity() const { return parser_.capacity() + scratch_.capacity(); }

 private:
  simdjson::ondemand::parser parser_;
  std::string scratch_;
};

}  // namespace fhirlake::fhir
