// The index rows of one resource version: what its search parameters extract from it, normalised for matching
// (search/normalize.h). The store writes these rows in the same transaction as the resource and deletes them when
// the version stops being current. Produced by ExtractIndexRows (search/extract.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "search/search_params.h"

namespace fhirlake::search {

struct StringRow {
  ParamId param;
  std::string normalized;  // NormalizeString(value): accents removed, case folded (prefix / :contains matching)
  std::string exact;       // the value as it is (:exact)
};

enum class TokenKind : uint8_t {
  kCode = 0,    // system + code (Coding, Identifier system/value, code, boolean "true"/"false", ContactPoint value...)
  kText = 1,    // code = NormalizeString(CodeableConcept.text or Coding.display or Identifier.type.text) for :text
  kOfType = 2,  // Identifier with a type coding: system = "<type system>|<type code>", code = value (:of-type)
};

struct TokenRow {
  ParamId param;
  TokenKind kind;
  std::string system;  // empty when the value has no system
  std::string code;
};

struct ReferenceRow {
  ParamId param;
  std::string type;  // a relative literal reference Type/id (or Type/id/_history/v): its type and id
  std::string id;
  std::string url;  // any other reference value (absolute URL, canonical, urn:...) as written; empty when type/id set
};

// Dates, dateTimes, instants and Periods as the inclusive range of epoch milliseconds they cover (a date
// "2020-03" covers 2020-03-01T00:00:00.000Z .. 2020-03-31T23:59:59.999Z; a Period without end is open: hi =
// kOpenHigh; without start, lo = kOpenLow). Values without a time zone are taken as UTC.
struct DateRow {
  ParamId param;
  int64_t lo;
  int64_t hi;
};
inline constexpr int64_t kOpenLow = INT64_MIN;
inline constexpr int64_t kOpenHigh = INT64_MAX;

// A number or quantity value with the range its precision implies ("100" is [99.5, 100.5), "1e2" likewise).
struct NumberRow {
  ParamId param;
  double value;
  double lo;
  double hi;
};

struct QuantityRow {
  ParamId param;
  std::string system;
  std::string code;
  std::string unit;
  double value;
  double lo;
  double hi;
};

struct UriRow {
  ParamId param;
  std::string value;
};

// One component value of one composite tuple. `group` numbers the tuples of one composite parameter within the
// resource (0, 1, ...); all components of a tuple share it. Exactly the fields of the component's type are set,
// as in the rows above (token: s1 = system, s2 = code; string: s1 = normalized, s2 = exact; reference: s1 = type,
// s2 = id, s3 = url; uri: s1; date: i1 = lo, i2 = hi; number: n0 = value, n1 = lo, n2 = hi; quantity: s1 = system,
// s2 = code, s3 = unit, n0 = value, n1 = lo, n2 = hi).
struct CompositeRow {
  ParamId param;      // the composite parameter
  uint16_t group;     // tuple number
  uint8_t component;  // index into ParamDef::components
  ParamType type;     // the component's type
  std::string s1, s2, s3;
  int64_t i1 = 0, i2 = 0;
  double n0 = 0, n1 = 0, n2 = 0;
};

struct IndexRows {
  std::vector<StringRow> strings;
  std::vector<TokenRow> tokens;
  std::vector<ReferenceRow> references;
  std::vector<DateRow> dates;
  std::vector<NumberRow> numbers;
  std::vector<QuantityRow> quantities;
  std::vector<UriRow> uris;
  std::vector<CompositeRow> composites;
  bool empty() const {
    return strings.empty() && tokens.empty() && references.empty() && dates.empty() && numbers.empty() &&
           quantities.empty() && uris.empty() && composites.empty();
  }
};

}  // namespace fhirlake::search
