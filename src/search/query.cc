// Search query parsing: parameter names (modifiers, chains, _has), values by parameter type (prefixes, token and
// reference forms, composites) and the result parameters. Every rejection names the parameter and says what a
// valid value looks like.
#include "search/query.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <set>

#include "fhir/r4.h"
#include "search/normalize.h"

namespace fhirlake::search {
namespace {

constexpr size_t kMaxValueBytes = 4096;
constexpr size_t kMaxAlternatives = 100;
// Bounds on one query, so that its SQL stays within SQLite's limits (expression depth 1000, 32766 bound values) and
// its cost within reason: criteria (each parameter occurrence), values over all criteria, sort keys, and
// _include/_revinclude (after dropping repeats).
constexpr size_t kMaxCriteria = 100;
constexpr size_t kMaxValues = 1000;
constexpr size_t kMaxSortKeys = 16;
constexpr size_t kMaxIncludes = 32;
// Diagnostics quote what the client sent; they are cut to this many bytes.
constexpr size_t kMaxMessageBytes = 2000;

std::vector<std::string_view> Split(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  while (true) {
    size_t i = s.find(sep);
    out.push_back(s.substr(0, i));
    if (i == std::string_view::npos) break;
    s.remove_prefix(i + 1);
  }
  return out;
}

// Splits on `sep` except where escaped with a backslash (FHIR search escaping of `,`, `|` and `$`), and unescapes.
std::vector<std::string> SplitEscaped(std::string_view s, char sep) {
  std::vector<std::string> out(1);
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c == '\\' && i + 1 < s.size() && (s[i + 1] == ',' || s[i + 1] == '|' || s[i + 1] == '$' || s[i + 1] == '\\')) {
      out.back().push_back(s[++i]);
    } else if (c == sep) {
      out.emplace_back();
    } else {
      out.back().push_back(c);
    }
  }
  return out;
}

// Splits `s` at the first unescaped `sep` (`rest` empty and false when there is none).
bool SplitFirstEscaped(std::string_view s, char sep, std::string_view* head, std::string_view* rest) {
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size()) {
      ++i;
    } else if (s[i] == sep) {
      *head = s.substr(0, i);
      *rest = s.substr(i + 1);
      return true;
    }
  }
  *head = s;
  *rest = {};
  return false;
}

std::string Unescape(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size()) ++i;
    out.push_back(s[i]);
  }
  return out;
}

Status Bad(std::string_view param, const std::string& why) {
  return Status::Invalid("Search parameter '" + std::string(param) + "': " + why);
}

// The length of the valid UTF-8 sequence at the start of `s` (0: not valid UTF-8 there).
size_t Utf8SequenceLength(std::string_view s) {
  auto byte = [&](size_t i) { return static_cast<unsigned char>(s[i]); };
  auto cont = [&](size_t i) { return i < s.size() && (byte(i) & 0xC0) == 0x80; };
  unsigned char c = byte(0);
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) return cont(1) ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    if (!cont(1) || !cont(2)) return 0;
    if (c == 0xE0 && byte(1) < 0xA0) return 0;   // overlong
    if (c == 0xED && byte(1) >= 0xA0) return 0;  // surrogate
    return 3;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    if (!cont(1) || !cont(2) || !cont(3)) return 0;
    if (c == 0xF0 && byte(1) < 0x90) return 0;   // overlong
    if (c == 0xF4 && byte(1) >= 0x90) return 0;  // beyond U+10FFFF
    return 4;
  }
  return 0;
}

// Client text made fit for a diagnostics line (which goes out as JSON): invalid UTF-8 bytes become U+FFFD and the
// text is cut, on a character boundary, to kMaxMessageBytes.
std::string FitForMessage(std::string_view s) {
  std::string out;
  while (!s.empty()) {
    if (out.size() >= kMaxMessageBytes) {
      out += "\xE2\x80\xA6";  // …
      break;
    }
    size_t n = Utf8SequenceLength(s);
    if (n == 0) {
      out += "\xEF\xBF\xBD";
      n = 1;
    } else {
      out.append(s.substr(0, n));
    }
    s.remove_prefix(n);
  }
  return out;
}

// Removes a leading comparison prefix; the value is left as it is (eq) when it starts with none, so that a value
// such as "notadate" is reported as a bad value rather than as a bad prefix.
Prefix ParsePrefix(std::string_view* v) {
  static constexpr std::pair<std::string_view, Prefix> kPrefixes[] = {
      {"eq", Prefix::kEq}, {"ne", Prefix::kNe}, {"gt", Prefix::kGt}, {"lt", Prefix::kLt}, {"ge", Prefix::kGe},
      {"le", Prefix::kLe}, {"sa", Prefix::kSa}, {"eb", Prefix::kEb}, {"ap", Prefix::kAp}};
  for (auto [text, p] : kPrefixes) {
    if (v->starts_with(text)) {
      v->remove_prefix(2);
      return p;
    }
  }
  return Prefix::kEq;
}

bool IsFhirId(std::string_view s) {
  if (s.empty() || s.size() > 64) return false;
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.'; });
}

class Parser {
 public:
  Parser(std::string_view fhir_base) : fhir_base_(fhir_base) {}

  // The value of `param` (one alternative, escapes still in place for composites).
  Result<SearchValue> ParseValue(std::string_view name, const ParamDef& def, Modifier mod,
                                 const std::string& type_modifier, std::string_view raw) {
    SearchValue v;
    switch (def.type) {
      case ParamType::kString: {
        std::string s = Unescape(raw);
        if (s.empty()) return Bad(name, "a string value cannot be empty");
        v.s1 = mod == Modifier::kExact ? s : NormalizeString(s);
        return v;
      }
      case ParamType::kUri: {
        v.s1 = Unescape(raw);
        if (v.s1.empty()) return Bad(name, "a uri value cannot be empty");
        return v;
      }
      case ParamType::kToken:
        return ParseToken(name, mod, raw);
      case ParamType::kReference:
        return ParseReference(name, def, type_modifier, raw);
      case ParamType::kDate: {
        std::string_view s = raw;
        Prefix prefix = ParsePrefix(&s);
        auto range = ParseDateRange(s);
        if (!range) {
          return Bad(name,
                     "'" + std::string(raw) +
                         "' is not a date; use YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm[:ss[.sss]][Z|+hh:mm], "
                         "optionally after a prefix such as ge");
        }
        v.prefix = prefix;
        v.lo = range->lo;
        v.hi = range->hi;
        return v;
      }
      case ParamType::kNumber:
      case ParamType::kQuantity: {
        std::string_view s = raw, rest;
        std::string_view number;
        bool has_units = def.type == ParamType::kQuantity && SplitFirstEscaped(s, '|', &number, &rest);
        if (!has_units) number = s;
        Prefix prefix = ParsePrefix(&number);
        auto range = ParseDecimalRange(number);
        if (!range) {
          return Bad(name, "'" + std::string(raw) + "' is not a number" +
                               (def.type == ParamType::kQuantity
                                    ? "; use [prefix]value[|system|code], e.g. gt5.4|http://unitsofmeasure.org|mg"
                                    : "; use [prefix]value, e.g. ge2.5"));
        }
        v.prefix = prefix;
        v.value = range->value;
        v.dlo = range->lo;
        v.dhi = range->hi;
        if (has_units) {
          std::string_view system, code;
          if (!SplitFirstEscaped(rest, '|', &system, &code)) {
            return Bad(name,
                       "'" + std::string(raw) + "' has a system but no code; use value|system|code or value||code");
          }
          v.s1 = Unescape(system);
          v.s2 = Unescape(code);
          v.has_system = !v.s1.empty();
          v.has_code = !v.s2.empty();
        }
        return v;
      }
      case ParamType::kComposite: {
        std::vector<std::string> parts = SplitEscaped(raw, '$');
        if (parts.size() != def.components.size()) {
          return Bad(name, "'" + std::string(raw) + "' has " + std::to_string(parts.size()) +
                               " component(s) separated by $; " + std::string(def.code) + " has " +
                               std::to_string(def.components.size()));
        }
        for (size_t i = 0; i < parts.size(); ++i) {
          const ParamDef& comp = ParamById(def.components[i].param);
          ASSIGN_OR_RETURN(SearchValue cv, ParseValue(name, comp, Modifier::kNone, "", parts[i]));
          v.components.push_back(std::move(cv));
        }
        return v;
      }
    }
    return Bad(name, "unsupported parameter type");
  }

 private:
  Result<SearchValue> ParseToken(std::string_view name, Modifier mod, std::string_view raw) {
    SearchValue v;
    if (mod == Modifier::kText) {
      v.s2 = NormalizeString(Unescape(raw));
      if (v.s2.empty()) return Bad(name, ":text needs a non-empty text");
      return v;
    }
    std::string_view head, rest;
    if (mod == Modifier::kOfType) {
      // system|code|value: the identifier type's coding, then the identifier value.
      std::string_view system, code, value;
      if (!SplitFirstEscaped(raw, '|', &system, &rest) || !SplitFirstEscaped(rest, '|', &code, &value) ||
          code.empty() || value.empty()) {
        return Bad(name, ":of-type needs system|code|value (the identifier type's coding and the identifier value)");
      }
      v.s1 = Unescape(system) + "|" + Unescape(code);
      v.s2 = Unescape(value);
      v.has_system = v.has_code = true;
      return v;
    }
    if (SplitFirstEscaped(raw, '|', &head, &rest)) {
      v.s1 = Unescape(head);
      v.s2 = Unescape(rest);
      v.has_system = true;  // "|code" means: no system
      v.has_code = !v.s2.empty();
      if (v.s1.empty() && !v.has_code)
        return Bad(name, "'|' alone is not a token; use code, system|code, |code or system|");
    } else {
      v.s2 = Unescape(raw);
      v.has_code = true;
      if (v.s2.empty()) return Bad(name, "a token value cannot be empty");
    }
    return v;
  }

  Result<SearchValue> ParseReference(std::string_view name, const ParamDef& def, const std::string& type_modifier,
                                     std::string_view raw) {
    SearchValue v;
    std::string s = Unescape(raw);
    if (s.empty()) return Bad(name, "a reference value cannot be empty");
    std::string_view rel = s;
    bool absolute = s.find("://") != std::string::npos;
    if (s.starts_with("urn:")) {
      v.s3 = s;  // urn:uuid: / urn:oid: (a reference not resolved to a resource of this server)
      return v;
    }
    if (absolute) {
      if (!fhir_base_.empty() && rel.starts_with(fhir_base_) && rel.size() > fhir_base_.size() &&
          rel[fhir_base_.size()] == '/') {
        rel.remove_prefix(fhir_base_.size() + 1);
      } else {
        v.s3 = s;  // another server's resource, or a canonical URL
        return v;
      }
    }
    size_t slash = rel.find('/');
    if (slash == std::string_view::npos) {
      if (!IsFhirId(rel)) return Bad(name, "'" + s + "' is not a reference; use Type/id, id or an absolute URL");
      v.s1 = type_modifier;
      v.s2 = std::string(rel);
      return v;
    }
    std::string_view type = rel.substr(0, slash), id = rel.substr(slash + 1);
    if (size_t h = id.find("/_history/"); h != std::string_view::npos) id = id.substr(0, h);
    if (fhir::IsKnownResourceType(type) && (id.empty() || id.starts_with('/'))) {
      return Bad(name, "'" + s + "' has no id after the type; use Type/id");
    }
    if (!fhir::IsKnownResourceType(type) || !IsFhirId(id)) {
      if (!absolute) {
        // Not Type/id: a relative URL or a canonical such as "ValueSet/x|1.0" is matched as written.
        v.s3 = s;
        return v;
      }
      return Bad(name, "'" + s + "' does not name a resource of this server; use Type/id");
    }
    if (!type_modifier.empty() && type != type_modifier) {
      return Bad(name, "'" + s + "' names a " + std::string(type) + " but the modifier asks for " + type_modifier);
    }
    if (!def.targets.empty() && std::find(def.targets.begin(), def.targets.end(), type) == def.targets.end()) {
      return Bad(name, std::string(type) + " is not a target type of " + std::string(def.code));
    }
    v.s1 = std::string(type);
    v.s2 = std::string(id);
    return v;
  }

  std::string fhir_base_;
};

// Modifiers allowed on each parameter type.
bool ModifierAllowed(ParamType type, Modifier m) {
  switch (m) {
    case Modifier::kNone:
    case Modifier::kMissing:
      return true;
    case Modifier::kExact:
    case Modifier::kContains:
      return type == ParamType::kString;
    case Modifier::kText:
    case Modifier::kNot:
    case Modifier::kOfType:
      return type == ParamType::kToken;
    case Modifier::kType:
      return type == ParamType::kReference;
  }
  return false;
}

struct NameParts {
  std::string code;
  std::string modifier;   // text after ':' (may be a type name)
  std::string chain;      // text after the first '.', for reference parameters
  bool chained = false;   // the name has a '.' (`chain` may still be empty: "subject.")
  bool modified = false;  // the name has a ':' (`modifier` may still be empty: "name:")
};

NameParts SplitName(std::string_view name) {
  NameParts out;
  size_t dot = name.find('.');
  std::string_view head = name.substr(0, dot);
  if (dot != std::string_view::npos) {
    out.chained = true;
    out.chain = std::string(name.substr(dot + 1));
  }
  size_t colon = head.find(':');
  out.code = std::string(head.substr(0, colon));
  if (colon != std::string_view::npos) {
    out.modified = true;
    out.modifier = std::string(head.substr(colon + 1));
  }
  return out;
}

class QueryBuilder {
 public:
  QueryBuilder(std::string_view fhir_base, bool lenient) : values_(fhir_base), lenient_(lenient) {}

  // A criterion on `type` from parameter name `name` (modifier and chain included) with value `value`. nullopt:
  // ignored (lenient mode; recorded in `ignored`). `full`: the parameter name as the client wrote it (`name` is the
  // part of it left inside a chain or _has); errors name `full`.
  Result<std::optional<Criterion>> Build(const std::string& type, std::string_view name, std::string_view full,
                                         std::string_view value, int depth, std::vector<std::string>* ignored) {
    if (value.size() > kMaxValueBytes)
      return Bad(full, "the value is longer than " + std::to_string(kMaxValueBytes) + " bytes");
    if (name.starts_with("_has:")) return BuildHas(type, name, full, value, depth, ignored);
    NameParts parts = SplitName(name);
    const ParamDef* def = FindParam(type, parts.code);
    if (def == nullptr) {
      std::string why = "unknown search parameter '" + parts.code + "' for " + type;
      if (lenient_) {
        ignored->push_back(std::string(full) + " (" + why + ")");
        return std::optional<Criterion>();
      }
      if (depth > 0) return Bad(full, why);
      return Status::Invalid("Unknown search parameter '" + std::string(full) + "' for " + type +
                             " (see the CapabilityStatement at /metadata for the supported ones; send "
                             "'Prefer: handling=lenient' to ignore unknown parameters)");
    }
    Criterion c;
    c.param = def;
    if (parts.chained && parts.chain.empty()) return Bad(full, "nothing follows the '.' of the chain");
    if (!parts.chain.empty()) {
      if (def->type != ParamType::kReference) {
        return Bad(full, "only reference parameters can be chained; " + parts.code + " is a " +
                             std::string(ParamTypeName(def->type)) + " parameter");
      }
      if (depth > 0) return Bad(full, "chains of more than one level are not supported");
      std::string target = parts.modifier;
      if (parts.modified && target.empty()) return Bad(full, "nothing follows the ':' of the type modifier");
      if (target.empty()) {
        // Without a type modifier the chain applies to the parameter's targets; one target is required so the
        // chained parameter has a definite meaning.
        std::vector<std::string> candidates;
        NameParts inner = SplitName(parts.chain);
        for (std::string_view t : def->targets)
          if (FindParam(t, inner.code) != nullptr) candidates.emplace_back(t);
        if (candidates.size() != 1) {
          return Bad(full, candidates.empty()
                               ? "no target type of " + parts.code + " has a parameter '" + inner.code + "'"
                               : "'" + inner.code + "' exists on several target types of " + parts.code +
                                     "; name one with a type modifier, e.g. " + parts.code + ":" + candidates[0] + "." +
                                     parts.chain);
        }
        target = candidates[0];
      } else if (!fhir::IsKnownResourceType(target) ||
                 (!def->targets.empty() &&
                  std::find(def->targets.begin(), def->targets.end(), target) == def->targets.end())) {
        return Bad(full, "'" + target + "' is not a target type of " + parts.code);
      }
      ASSIGN_OR_RETURN(auto inner, Build(target, parts.chain, full, value, depth + 1, ignored));
      if (!inner) return std::optional<Criterion>();
      c.type_modifier = target;
      c.chain.push_back(std::move(*inner));
      return std::optional<Criterion>(std::move(c));
    }
    Modifier mod = Modifier::kNone;
    if (parts.modified && parts.modifier.empty()) return Bad(full, "nothing follows the ':' of the modifier");
    if (!parts.modifier.empty()) {
      static constexpr std::pair<std::string_view, Modifier> kMods[] = {
          {"missing", Modifier::kMissing}, {"exact", Modifier::kExact}, {"contains", Modifier::kContains},
          {"text", Modifier::kText},       {"not", Modifier::kNot},     {"of-type", Modifier::kOfType}};
      bool found = false;
      for (auto [text, m] : kMods) {
        if (parts.modifier == text) {
          mod = m;
          found = true;
        }
      }
      if (!found && def->type == ParamType::kReference && fhir::IsKnownResourceType(parts.modifier)) {
        mod = Modifier::kType;
        c.type_modifier = parts.modifier;
        if (!def->targets.empty() &&
            std::find(def->targets.begin(), def->targets.end(), parts.modifier) == def->targets.end()) {
          return Bad(full, "'" + parts.modifier + "' is not a target type of " + parts.code);
        }
        found = true;
      }
      if (!found || !ModifierAllowed(def->type, mod)) {
        return Bad(full, "the modifier ':" + parts.modifier + "' is not supported on " +
                             std::string(ParamTypeName(def->type)) + " parameters (see docs/SEARCH.md)");
      }
      if (def->from_resource_table && mod != Modifier::kNone && mod != Modifier::kMissing && mod != Modifier::kNot) {
        return Bad(full, "the modifier ':" + parts.modifier + "' is not supported on " + parts.code);
      }
    }
    c.modifier = mod;
    if (mod == Modifier::kMissing) {
      if (value != "true" && value != "false") return Bad(full, ":missing takes true or false");
      c.missing = value == "true";
      return std::optional<Criterion>(std::move(c));
    }
    std::vector<std::string_view> alternatives;
    {
      // Split on unescaped commas, keeping escapes for the value parser.
      size_t start = 0;
      for (size_t i = 0; i < value.size(); ++i) {
        if (value[i] == '\\' && i + 1 < value.size()) {
          ++i;
        } else if (value[i] == ',') {
          alternatives.push_back(value.substr(start, i - start));
          start = i + 1;
        }
      }
      alternatives.push_back(value.substr(start));
    }
    if (alternatives.size() > kMaxAlternatives) {
      return Bad(full, "more than " + std::to_string(kMaxAlternatives) + " comma-separated values");
    }
    for (std::string_view alt : alternatives) {
      if (def->code == "_id") {
        if (!IsFhirId(alt)) return Bad(full, "'" + std::string(alt) + "' is not a resource id");
        SearchValue v;
        v.s2 = std::string(alt);
        v.has_code = true;
        c.values.push_back(std::move(v));
        continue;
      }
      ASSIGN_OR_RETURN(SearchValue v, values_.ParseValue(full, *def, mod, c.type_modifier, alt));
      c.values.push_back(std::move(v));
    }
    return std::optional<Criterion>(std::move(c));
  }

 private:
  // _has:Type:refparam:param=value (one level; `param` may carry a modifier).
  Result<std::optional<Criterion>> BuildHas(const std::string& type, std::string_view name, std::string_view full,
                                            std::string_view value, int depth, std::vector<std::string>* ignored) {
    std::vector<std::string_view> parts = Split(name, ':');
    if (parts.size() < 4 || parts[1].empty() || parts[2].empty() || parts[3].empty()) {
      return Bad(full,
                 "_has needs the form _has:Type:reference-parameter:parameter=value, e.g. "
                 "_has:Observation:patient:code=1234-5");
    }
    if (depth > 0) return Bad(full, "_has cannot be nested or chained");
    std::string has_type(parts[1]);
    if (!fhir::IsKnownResourceType(has_type)) return Bad(full, "'" + has_type + "' is not a resource type");
    const ParamDef* ref = FindParam(has_type, parts[2]);
    if (ref == nullptr || ref->type != ParamType::kReference) {
      return Bad(full, "'" + std::string(parts[2]) + "' is not a reference parameter of " + has_type);
    }
    if (!ref->targets.empty() && std::find(ref->targets.begin(), ref->targets.end(), type) == ref->targets.end()) {
      return Bad(full, has_type + "." + std::string(parts[2]) + " never refers to a " + type);
    }
    std::string inner_name(parts[3]);
    for (size_t i = 4; i < parts.size(); ++i) inner_name += ":" + std::string(parts[i]);
    ASSIGN_OR_RETURN(auto inner, Build(has_type, inner_name, full, value, depth + 1, ignored));
    if (!inner) return std::optional<Criterion>();
    Criterion c;
    c.param = ref;
    c.has_type = has_type;
    c.type_modifier = type;
    c.chain.push_back(std::move(*inner));
    return std::optional<Criterion>(std::move(c));
  }

  Parser values_;
  bool lenient_;
};

Result<size_t> ParseCount(std::string_view v, const SearchLimits& limits) {
  size_t n = 0;
  auto [ptr, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  if (v.empty() || ec != std::errc() || ptr != v.data() + v.size()) {
    return Bad("_count",
               "'" + std::string(v) + "' is not a whole number; give 0 to " + std::to_string(limits.max_count));
  }
  if (n > limits.max_count) {
    return Bad("_count", std::to_string(n) + " is more than the maximum page size " + std::to_string(limits.max_count));
  }
  return n;
}

Result<Include> ParseInclude(std::string_view name, std::string_view value, bool reverse,
                             const std::vector<std::string>& types) {
  Include inc;
  inc.iterate = name.ends_with(":iterate") || name.ends_with(":recurse");
  std::vector<std::string_view> parts = Split(value, ':');
  if (parts.size() < 2 || parts.size() > 3) {
    return Bad(name, "'" + std::string(value) + "' is not Type:parameter or Type:parameter:TargetType");
  }
  inc.source_type = std::string(parts[0]);
  if (!fhir::IsKnownResourceType(inc.source_type)) return Bad(name, "'" + inc.source_type + "' is not a resource type");
  if (parts[1] == "*") return Bad(name, "the wildcard '*' is not supported; name the reference parameter");
  inc.param = FindParam(inc.source_type, parts[1]);
  if (inc.param == nullptr || inc.param->type != ParamType::kReference) {
    return Bad(name, "'" + std::string(parts[1]) + "' is not a reference parameter of " + inc.source_type);
  }
  if (parts.size() == 3) {
    inc.target_type = std::string(parts[2]);
    if (!fhir::IsKnownResourceType(inc.target_type) ||
        (!inc.param->targets.empty() && std::find(inc.param->targets.begin(), inc.param->targets.end(),
                                                  inc.target_type) == inc.param->targets.end())) {
      return Bad(name,
                 "'" + inc.target_type + "' is not a target type of " + std::string(value.substr(0, value.rfind(':'))));
    }
  }
  if (!inc.iterate && !reverse && std::find(types.begin(), types.end(), inc.source_type) == types.end()) {
    return Bad(name, "'" + std::string(value) + "' starts at " + inc.source_type +
                         ", which is not the type searched; use _include:iterate to include from included resources");
  }
  return inc;
}

}  // namespace

std::string UrlEncodeQueryComponent(std::string_view s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

namespace {

size_t ValueCount(const Criterion& c) {
  size_t n = c.values.size();
  for (const auto& inner : c.chain) n += ValueCount(inner);
  return n;
}

bool SameInclude(const Include& a, const Include& b) {
  return a.source_type == b.source_type && a.param == b.param && a.target_type == b.target_type &&
         a.iterate == b.iterate;
}

Result<SearchQuery> ParseUnchecked(std::vector<std::string> types,
                                   const std::vector<std::pair<std::string, std::string>>& params,
                                   std::string_view fhir_base, bool lenient, const SearchLimits& limits) {
  SearchQuery q;
  q.count = limits.default_count;
  bool system_search = types.empty();
  // _type first: it decides which parameters the others may name.
  for (const auto& [name, value] : params) {
    if (name != "_type") continue;
    if (!system_search) return Bad("_type", "_type is only allowed on a system search (GET [base]?_type=...)");
    for (std::string_view t : Split(value, ',')) {
      if (!fhir::IsKnownResourceType(t)) return Bad("_type", "'" + std::string(t) + "' is not a resource type");
      if (std::find(types.begin(), types.end(), t) == types.end()) types.emplace_back(t);
    }
  }
  if (types.empty()) {
    for (std::string_view t : fhir::AllResourceTypes()) types.emplace_back(t);
  }
  q.types = types;
  QueryBuilder builder(fhir_base, lenient);
  std::vector<std::pair<std::string, std::string>> applied;
  size_t value_count = 0;
  for (const auto& [name, value] : params) {
    if (name == "page") {
      if (value.empty()) return Bad("page", "the cursor is empty; leave 'page' out to start at the first page");
      q.page = value;
      continue;
    }
    if (name == "_type" || name == "_format" || name == "_pretty") {
      if (name == "_type") applied.emplace_back(name, value);
      continue;
    }
    if (name == "_count") {
      ASSIGN_OR_RETURN(q.count, ParseCount(value, limits));
    } else if (name == "_total") {
      if (value == "none") {
        q.total = TotalMode::kNone;
      } else if (value == "estimate") {
        q.total = TotalMode::kEstimate;
      } else if (value == "accurate") {
        q.total = TotalMode::kAccurate;
      } else {
        return Bad("_total", "'" + value + "' is not none, estimate or accurate");
      }
    } else if (name == "_summary") {
      if (value == "count") {
        q.summary_count = true;
      } else if (value == "false") {
        q.summary_count = false;
      } else if (lenient) {
        q.ignored.push_back("_summary=" + value + " (only _summary=count and _summary=false are supported)");
        continue;
      } else {
        return Bad("_summary", "'" + value + "' is not supported; use count or false");
      }
    } else if (name == "_elements") {
      for (std::string_view e : Split(value, ',')) {
        if (e.empty() || e.find('.') != std::string_view::npos || !std::all_of(e.begin(), e.end(), [](char c) {
              return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
            })) {
          return Bad("_elements", "'" + std::string(e) + "' is not a top-level element name");
        }
        q.elements.emplace_back(e);
      }
    } else if (name == "_sort") {
      std::vector<std::string_view> keys = Split(value, ',');
      if (q.sort.size() + keys.size() > kMaxSortKeys) {
        return Bad("_sort", "more than " + std::to_string(kMaxSortKeys) + " sort keys");
      }
      for (std::string_view key : keys) {
        SortKey k;
        if (key.starts_with('-')) {
          k.descending = true;
          key.remove_prefix(1);
        }
        for (const std::string& t : types) {
          k.param = FindParam(t, key);
          if (k.param == nullptr) break;
        }
        if (key.empty() || k.param == nullptr) {
          return Bad("_sort", "'" + std::string(key) + "' is not a search parameter of " +
                                  (types.size() == 1 ? types[0] : std::string("every type searched")));
        }
        if (k.param->type == ParamType::kComposite)
          return Bad("_sort", "cannot sort on the composite parameter " + std::string(key));
        q.sort.push_back(k);
      }
    } else if (name == "_include" || name == "_include:iterate" || name == "_include:recurse" ||
               name == "_revinclude" || name == "_revinclude:iterate" || name == "_revinclude:recurse") {
      bool reverse = name.starts_with("_revinclude");
      ASSIGN_OR_RETURN(Include inc, ParseInclude(name, value, reverse, types));
      std::vector<Include>& list = reverse ? q.revincludes : q.includes;
      if (std::none_of(list.begin(), list.end(), [&](const Include& i) { return SameInclude(i, inc); })) {
        if (q.includes.size() + q.revincludes.size() >= kMaxIncludes) {
          return Bad(name, "more than " + std::to_string(kMaxIncludes) + " different _include and _revinclude values");
        }
        list.push_back(std::move(inc));
      }
    } else {
      if (name.empty()) continue;
      if (types.size() != 1) {
        // A system search: the parameter must exist on every type searched (the common ones do).
        std::string missing_on;
        for (const std::string& t : types) {
          if (!name.starts_with("_has:") && FindParam(t, SplitName(name).code) == nullptr) {
            missing_on = t;
            break;
          }
        }
        if (!missing_on.empty()) {
          if (!lenient) {
            return Status::Invalid("Search parameter '" + name + "' is not defined for every type searched (" +
                                   missing_on +
                                   " has none); a system search takes only parameters common to its types");
          }
          q.ignored.push_back(name + " (not a parameter of " + missing_on + ")");
          continue;
        }
      }
      // Over several types only common Resource parameters get here, whose definitions agree on every type: the
      // first type's criterion serves all (the store matches the parameter's id on each type searched).
      ASSIGN_OR_RETURN(auto c, builder.Build(types[0], name, name, value, 0, &q.ignored));
      if (!c) continue;
      if (q.criteria.size() >= kMaxCriteria) {
        return Bad(name, "a search takes at most " + std::to_string(kMaxCriteria) + " search parameters");
      }
      value_count += ValueCount(*c);
      if (value_count > kMaxValues) {
        return Bad(name, "a search takes at most " + std::to_string(kMaxValues) + " values over all its parameters");
      }
      q.criteria.push_back(std::move(*c));
    }
    applied.emplace_back(name, value);
  }
  // The applied parameters, sorted by name (a canonical self link), with _count explicit: once, with the page size
  // in effect, also when the request repeated it or left it out.
  std::erase_if(applied, [](const auto& p) { return p.first == "_count"; });
  applied.emplace_back("_count", std::to_string(q.count));
  std::stable_sort(applied.begin(), applied.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  for (const auto& [name, value] : applied) {
    if (!q.applied_query.empty()) q.applied_query.push_back('&');
    q.applied_query += UrlEncodeQueryComponent(name) + "=" + UrlEncodeQueryComponent(value);
  }
  return q;
}

}  // namespace

Result<SearchQuery> ParseSearchQuery(std::vector<std::string> types,
                                     const std::vector<std::pair<std::string, std::string>>& params,
                                     std::string_view fhir_base, bool lenient, const SearchLimits& limits) {
  Result<SearchQuery> q = ParseUnchecked(std::move(types), params, fhir_base, lenient, limits);
  // Diagnostics and the lenient outcome quote parameter names and values: keep them valid UTF-8 (they go out as
  // JSON) and short.
  if (!q.ok()) return Status(q.status().code(), FitForMessage(q.status().message()));
  for (std::string& why : q->ignored) why = FitForMessage(why);
  return q;
}

}  // namespace fhirlake::search
