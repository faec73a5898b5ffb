// A FHIR search request parsed and validated into plain values (no SQL, no store): which types, which criteria
// (each an OR of normalised values; the criteria are ANDed), chains and reverse chains, sort keys, page size,
// _total, _summary=count, _elements, _include/_revinclude. The store turns a SearchQuery into its own query
// language (store/sqlite_search.cc); every value is already in the normalised form the index rows use
// (search/normalize.h), so both sides compare like with like.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"
#include "search/search_params.h"

namespace fhirlake::search {

enum class Prefix : uint8_t { kEq, kNe, kGt, kLt, kGe, kLe, kSa, kEb, kAp };
enum class Modifier : uint8_t { kNone, kMissing, kExact, kContains, kText, kNot, kOfType, kType };

// One comma-separated alternative of a parameter's value, normalised for the parameter's type:
//   string     s1 = NormalizeString(value) (default, :contains) or the value as given (:exact)
//   token      s1 = system, s2 = code (has_system / has_code tell which parts were given: "a|b", "|b", "a|", "b");
//              :text: s2 = NormalizeString(text); :of-type: s1 = "<type system>|<type code>", s2 = value
//   reference  s1 = type (empty: any of the parameter's targets), s2 = id; or s3 = a URL that is not this server's
//   uri        s1
//   date       lo..hi (epoch ms, inclusive) with prefix
//   number     value, dlo..dhi (implicit precision range, hi exclusive) with prefix
//   quantity   as number, plus s1 = system and s2 = code (has_system / has_code)
//   composite  components[i] for each component, in definition order
struct SearchValue {
  Prefix prefix = Prefix::kEq;
  std::string s1, s2, s3;
  bool has_system = false;
  bool has_code = false;
  int64_t lo = 0, hi = 0;
  double value = 0, dlo = 0, dhi = 0;
  std::vector<SearchValue> components;
};

struct Criterion {
  const ParamDef* param = nullptr;
  Modifier modifier = Modifier::kNone;
  std::string type_modifier;        // reference :Type, or the chain's target type
  bool missing = false;             // :missing=true
  std::vector<SearchValue> values;  // OR; empty for :missing, chains and _has
  // Chaining (`subject:Patient.name=x`): `param` is a reference parameter, `type_modifier` the target type and
  // chain[0] the criterion on the target. Reverse chaining (`_has:Observation:patient:code=x`): has_type names the
  // referring type, `param` its reference parameter pointing here, chain[0] the criterion on the referring resource.
  std::vector<Criterion> chain;
  std::string has_type;
};

struct SortKey {
  const ParamDef* param = nullptr;  // _id / _lastUpdated included (from_resource_table)
  bool descending = false;
};

struct Include {
  std::string source_type;
  const ParamDef* param = nullptr;  // a reference parameter of source_type
  std::string target_type;          // empty: every target
  bool iterate = false;
};

enum class TotalMode : uint8_t { kNone, kEstimate, kAccurate };

struct SearchQuery {
  std::vector<std::string> types;   // one for a type search; several (or every type) for a system search
  std::vector<Criterion> criteria;  // AND
  std::vector<SortKey> sort;
  size_t count = 50;
  TotalMode total = TotalMode::kAccurate;
  bool summary_count = false;
  std::vector<std::string> elements;  // top-level element names of _elements; empty: all
  std::vector<Include> includes;
  std::vector<Include> revincludes;
  std::vector<std::string> ignored;  // parameters ignored under Prefer: handling=lenient, with why
  std::string page;                  // the page cursor, as given
  // The parameters applied, in a canonical order, URL-encoded, without `page` (Bundle.link self/next).
  std::string applied_query;
};

struct SearchLimits {
  size_t default_count = 50;
  size_t max_count = 1000;
};

// Parses the query parameters of a search on `types` (one type; several for `GET [base]?_type=`; empty for a
// system search over every type). `fhir_base`: this server's base URL for the datastore (absolute references to it
// become Type/id). `lenient`: Prefer: handling=lenient (unknown parameters are ignored and reported, not a 400).
// kInvalid with a diagnostics line naming the parameter for anything malformed.
Result<SearchQuery> ParseSearchQuery(std::vector<std::string> types,
                                     const std::vector<std::pair<std::string, std::string>>& params,
                                     std::string_view fhir_base, bool lenient, const SearchLimits& limits = {});

// Percent-encodes a query component (RFC 3986 unreserved characters pass).
std::string UrlEncodeQueryComponent(std::string_view s);

}  // namespace fhirlake::search
