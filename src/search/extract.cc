// Index extraction (extract.h): every parameter of the resource's type evaluated with the compiled FHIRPath subset,
// each value turned into rows by the parameter's type and the value's FHIR type (docs/SEARCH-EXTRACTION.md).
#include "search/extract.h"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <limits>
#include <optional>
#include <tuple>
#include <type_traits>

#include "fhir/r4.h"
#include "fhir/resource_parser.h"
#include "search/normalize.h"

namespace fhirlake::search {
namespace {

using Kind = PathNode::Kind;
using simdjson::dom::element;

// Every parameter's expression (and composite components), compiled once on first use (a thread-safe static).
struct CompiledParam {
  std::optional<FhirPath> path;
  std::vector<std::optional<FhirPath>> components;
};

const std::vector<CompiledParam>& CompiledParams() {
  static const std::vector<CompiledParam> compiled = [] {
    std::vector<CompiledParam> v(ParamCount());
    for (size_t i = 0; i < v.size(); ++i) {
      const ParamDef& def = ParamById(static_cast<ParamId>(i));
      if (def.from_resource_table) continue;
      if (auto p = FhirPath::Compile(def.expression); p.ok()) {
        v[i].path = std::move(p).value();
        v[i].path->Bind(def.resource_type);
      }
      for (const CompositeComponent& c : def.components) {
        auto p = FhirPath::Compile(c.expression);
        v[i].components.push_back(p.ok() ? std::optional<FhirPath>(std::move(p).value()) : std::nullopt);
      }
    }
    return v;
  }();
  return compiled;
}

// dom::element is a (document*, tape index) pair with no accessor for the index; the number texts are keyed by it.
struct TapeRefMirror {
  const simdjson::dom::document* doc;
  size_t json_index;
};
static_assert(sizeof(element) == sizeof(TapeRefMirror) && std::is_trivially_copyable_v<element>,
              "simdjson::dom::element layout changed: revisit IndexExtractor::NumberTexts");
TapeRefMirror TapeRef(element e) {
  TapeRefMirror m;
  std::memcpy(&m, &e, sizeof(m));
  return m;
}

std::string_view StringMember(element obj, std::string_view key) {
  std::string_view v;
  if (obj[key].get(v) != simdjson::SUCCESS) return {};
  return v;
}

// Calls f(string_view) for a string member that may repeat (HumanName.given, Address.line).
template <typename F>
void ForEachString(element obj, std::string_view key, F&& f) {
  element v;
  if (obj[key].get(v) != simdjson::SUCCESS) return;
  if (v.is_array()) {
    const simdjson::dom::array items = v.get_array().value_unsafe();
    for (element item : items) {
      std::string_view s;
      if (item.get(s) == simdjson::SUCCESS) f(s);
    }
  } else if (std::string_view s; v.get(s) == simdjson::SUCCESS) {
    f(s);
  }
}

template <typename F>
void ForEachObject(element obj, std::string_view key, F&& f) {
  element v;
  if (obj[key].get(v) != simdjson::SUCCESS) return;
  if (v.is_array()) {
    const simdjson::dom::array items = v.get_array().value_unsafe();
    for (element item : items) {
      if (item.is_object()) f(item);
    }
  } else if (v.is_object()) {
    f(v);
  }
}

bool IsQuantityType(std::string_view t) { return t == "Quantity" || IsOfType(t, "Quantity"); }

// --- Rows by parameter type ---

void AddString(ParamId p, std::string_view s, IndexRows& rows) {
  if (s.empty()) return;
  rows.strings.push_back({p, NormalizeString(s), std::string(s)});
}

void StringRows(ParamId p, const PathNode& n, IndexRows& rows) {
  if (n.kind == Kind::kString) return AddString(p, n.text, rows);
  if (n.kind != Kind::kJson) return;
  if (std::string_view s; n.json.get(s) == simdjson::SUCCESS) return AddString(p, s, rows);
  if (!n.json.is_object()) return;
  auto add = [&](std::string_view s) { AddString(p, s, rows); };
  if (n.type == "HumanName") {
    for (std::string_view key : {"family", "given", "prefix", "suffix", "text"}) ForEachString(n.json, key, add);
  } else if (n.type == "Address") {
    for (std::string_view key : {"line", "city", "district", "state", "postalCode", "country", "text"}) {
      ForEachString(n.json, key, add);
    }
  }
}

void AddToken(ParamId p, TokenKind kind, std::string_view system, std::string_view code, IndexRows& rows) {
  rows.tokens.push_back({p, kind, std::string(system), std::string(code)});
}

void CodingRows(ParamId p, element coding, IndexRows& rows) {
  const std::string_view system = StringMember(coding, "system"), code = StringMember(coding, "code");
  if (!system.empty() || !code.empty()) AddToken(p, TokenKind::kCode, system, code, rows);
  if (std::string_view display = StringMember(coding, "display"); !display.empty()) {
    rows.tokens.push_back({p, TokenKind::kText, {}, NormalizeString(display)});
  }
}

void TokenRows(ParamId p, const PathNode& n, IndexRows& rows) {
  if (n.kind == Kind::kBool) return AddToken(p, TokenKind::kCode, {}, n.boolean ? "true" : "false", rows);
  if (n.kind == Kind::kString) return AddToken(p, TokenKind::kCode, {}, n.text, rows);
  if (n.kind != Kind::kJson) return;
  if (bool b; n.json.get(b) == simdjson::SUCCESS) return AddToken(p, TokenKind::kCode, {}, b ? "true" : "false", rows);
  if (std::string_view s; n.json.get(s) == simdjson::SUCCESS) {
    if (!s.empty()) AddToken(p, TokenKind::kCode, {}, s, rows);
    return;
  }
  if (!n.json.is_object()) return;
  if (n.type == "Coding") {
    CodingRows(p, n.json, rows);
  } else if (n.type == "CodeableConcept") {
    ForEachObject(n.json, "coding", [&](element c) { CodingRows(p, c, rows); });
    if (std::string_view text = StringMember(n.json, "text"); !text.empty()) {
      rows.tokens.push_back({p, TokenKind::kText, {}, NormalizeString(text)});
    }
  } else if (n.type == "Identifier") {
    const std::string_view system = StringMember(n.json, "system"), value = StringMember(n.json, "value");
    if (!value.empty()) AddToken(p, TokenKind::kCode, system, value, rows);
    element type;
    if (n.json["type"].get(type) == simdjson::SUCCESS && type.is_object()) {
      if (!value.empty()) {
        ForEachObject(type, "coding", [&](element c) {
          const std::string_view ts = StringMember(c, "system"), tc = StringMember(c, "code");
          if (tc.empty()) return;
          std::string of_type;
          of_type.reserve(ts.size() + 1 + tc.size());
          of_type.append(ts).append("|").append(tc);
          rows.tokens.push_back({p, TokenKind::kOfType, std::move(of_type), std::string(value)});
        });
      }
      if (std::string_view text = StringMember(type, "text"); !text.empty()) {
        rows.tokens.push_back({p, TokenKind::kText, {}, NormalizeString(text)});
      }
    }
  } else if (n.type == "ContactPoint") {
    if (std::string_view value = StringMember(n.json, "value"); !value.empty()) {
      AddToken(p, TokenKind::kCode, {}, value, rows);
    }
  }
}

void AddReference(ParamId p, std::string_view ref, IndexRows& rows) {
  if (ref.empty()) return;
  if (auto typed = fhir::ParseLiteralReference(ref)) {
    rows.references.push_back({p, std::move(typed->type), std::move(typed->id), {}});
  } else {
    rows.references.push_back({p, {}, {}, std::string(ref)});
  }
}

void ReferenceRows(ParamId p, const PathNode& n, IndexRows& rows) {
  if (n.kind != Kind::kJson) return;
  if (std::string_view s; n.json.get(s) == simdjson::SUCCESS) return AddReference(p, s, rows);  // canonical, uri
  if (!n.json.is_object()) return;
  if (fhir::IsKnownResourceType(n.type)) {  // a resource itself (Bundle.entry[0].resource)
    if (std::string_view id = StringMember(n.json, "id"); !id.empty()) {
      rows.references.push_back({p, std::string(n.type), std::string(id), {}});
    }
    return;
  }
  AddReference(p, StringMember(n.json, "reference"), rows);
}

void AddDate(ParamId p, std::string_view s, IndexRows& rows) {
  if (auto r = ParseDateRange(s)) rows.dates.push_back({p, r->lo, r->hi});
}

void DateRows(ParamId p, const PathNode& n, IndexRows& rows) {
  if (n.kind != Kind::kJson) return;
  if (std::string_view s; n.json.get(s) == simdjson::SUCCESS) return AddDate(p, s, rows);
  if (!n.json.is_object()) return;
  if (n.type == "Period") {
    const std::string_view start = StringMember(n.json, "start"), end = StringMember(n.json, "end");
    if (start.empty() && end.empty()) return;
    std::optional<DateRange> lo = start.empty() ? std::nullopt : ParseDateRange(start);
    std::optional<DateRange> hi = end.empty() ? std::nullopt : ParseDateRange(end);
    if ((!start.empty() && !lo) || (!end.empty() && !hi)) return;  // malformed bounds: not indexed
    rows.dates.push_back({p, lo ? lo->lo : kOpenLow, hi ? hi->hi : kOpenHigh});
  } else if (n.type == "Timing") {
    ForEachString(n.json, "event", [&](std::string_view s) { AddDate(p, s, rows); });
  }
}

template <typename NumberText>
std::optional<DecimalRange> NumberRange(element v, NumberText& text_of) {
  if (!v.is_number()) return std::nullopt;
  return ParseDecimalRange(text_of(v));
}

template <typename NumberText>
void NumberRows(ParamId p, const PathNode& n, IndexRows& rows, NumberText& text_of) {
  if (n.kind != Kind::kJson) return;
  if (auto r = NumberRange(n.json, text_of)) {
    rows.numbers.push_back({p, r->value, r->lo, r->hi});
  } else if (n.type == "Range" && n.json.is_object()) {  // RiskAssessment.prediction.probabilityRange
    element v;
    std::optional<DecimalRange> lo, hi;
    if (n.json.at_pointer("/low/value").get(v) == simdjson::SUCCESS) lo = NumberRange(v, text_of);
    if (n.json.at_pointer("/high/value").get(v) == simdjson::SUCCESS) hi = NumberRange(v, text_of);
    if (!lo && !hi) return;
    rows.numbers.push_back({p, lo ? lo->value : hi->value, lo ? lo->lo : -std::numeric_limits<double>::infinity(),
                            hi ? hi->hi : std::numeric_limits<double>::infinity()});
  }
}

template <typename NumberText>
void QuantityRows(ParamId p, const PathNode& n, IndexRows& rows, NumberText& text_of) {
  if (n.kind != Kind::kJson || !n.json.is_object()) return;
  element v;
  if (n.type == "Range") {
    element low, high;
    const bool has_low = n.json["low"].get(low) == simdjson::SUCCESS && low.is_object();
    const bool has_high = n.json["high"].get(high) == simdjson::SUCCESS && high.is_object();
    std::optional<DecimalRange> lo, hi;
    if (has_low && low["value"].get(v) == simdjson::SUCCESS) lo = NumberRange(v, text_of);
    if (has_high && high["value"].get(v) == simdjson::SUCCESS) hi = NumberRange(v, text_of);
    if (!lo && !hi) return;
    const element unit_of = lo ? low : high;
    rows.quantities.push_back({p, std::string(StringMember(unit_of, "system")),
                               std::string(StringMember(unit_of, "code")), std::string(StringMember(unit_of, "unit")),
                               lo ? lo->value : hi->value, lo ? lo->lo : -std::numeric_limits<double>::infinity(),
                               hi ? hi->hi : std::numeric_limits<double>::infinity()});
    return;
  }
  if (n.json["value"].get(v) != simdjson::SUCCESS) return;
  auto r = NumberRange(v, text_of);
  if (!r) return;
  if (n.type == "Money") {
    rows.quantities.push_back(
        {p, "urn:iso:std:iso:4217", std::string(StringMember(n.json, "currency")), {}, r->value, r->lo, r->hi});
  } else if (IsQuantityType(n.type) || n.type.empty()) {
    rows.quantities.push_back({p, std::string(StringMember(n.json, "system")),
                               std::string(StringMember(n.json, "code")), std::string(StringMember(n.json, "unit")),
                               r->value, r->lo, r->hi});
  }
}

void UriRows(ParamId p, const PathNode& n, IndexRows& rows) {
  if (n.kind != Kind::kJson) return;
  if (std::string_view s; n.json.get(s) == simdjson::SUCCESS && !s.empty()) rows.uris.push_back({p, std::string(s)});
}

template <typename NumberText>
void ValueRows(ParamType type, ParamId p, const PathNode& n, IndexRows& rows, NumberText& text_of) {
  switch (type) {
    case ParamType::kString:
      return StringRows(p, n, rows);
    case ParamType::kToken:
      return TokenRows(p, n, rows);
    case ParamType::kReference:
      return ReferenceRows(p, n, rows);
    case ParamType::kDate:
      return DateRows(p, n, rows);
    case ParamType::kNumber:
      return NumberRows(p, n, rows, text_of);
    case ParamType::kQuantity:
      return QuantityRows(p, n, rows, text_of);
    case ParamType::kUri:
      return UriRows(p, n, rows);
    case ParamType::kComposite:
      return;
  }
}

// Drops duplicate rows in v[begin, end).
template <typename T, typename Key>
void Dedupe(std::vector<T>& v, size_t begin, Key key) {
  if (v.size() - begin < 2) return;
  auto less = [&](const T& a, const T& b) { return key(a) < key(b); };
  auto equal = [&](const T& a, const T& b) { return key(a) == key(b); };
  std::sort(v.begin() + begin, v.end(), less);
  v.erase(std::unique(v.begin() + begin, v.end(), equal), v.end());
}

struct Marks {
  size_t strings, tokens, references, dates, numbers, quantities, uris, composites;
  explicit Marks(const IndexRows& r)
      : strings(r.strings.size()),
        tokens(r.tokens.size()),
        references(r.references.size()),
        dates(r.dates.size()),
        numbers(r.numbers.size()),
        quantities(r.quantities.size()),
        uris(r.uris.size()),
        composites(r.composites.size()) {}
};

void DedupeSince(IndexRows& r, const Marks& m) {
  Dedupe(r.strings, m.strings, [](const StringRow& x) { return std::tie(x.normalized, x.exact); });
  Dedupe(r.tokens, m.tokens, [](const TokenRow& x) { return std::tie(x.kind, x.system, x.code); });
  Dedupe(r.references, m.references, [](const ReferenceRow& x) { return std::tie(x.type, x.id, x.url); });
  Dedupe(r.dates, m.dates, [](const DateRow& x) { return std::tie(x.lo, x.hi); });
  Dedupe(r.numbers, m.numbers, [](const NumberRow& x) { return std::tie(x.value, x.lo, x.hi); });
  Dedupe(r.quantities, m.quantities,
         [](const QuantityRow& x) { return std::tie(x.system, x.code, x.unit, x.value, x.lo, x.hi); });
  Dedupe(r.uris, m.uris, [](const UriRow& x) { return std::tie(x.value); });
  Dedupe(r.composites, m.composites, [](const CompositeRow& x) {
    return std::tie(x.group, x.component, x.type, x.s1, x.s2, x.s3, x.i1, x.i2, x.n0, x.n1, x.n2);
  });
}

// Moves the component rows of `from` (one component's values) into composite rows.
void ToCompositeRows(ParamId composite, uint16_t group, uint8_t component, ParamType type, IndexRows& from,
                     std::vector<CompositeRow>& out) {
  auto row = [&]() -> CompositeRow& {
    CompositeRow& r = out.emplace_back();
    r.param = composite;
    r.group = group;
    r.component = component;
    r.type = type;
    return r;
  };
  for (TokenRow& t : from.tokens) {
    if (t.kind != TokenKind::kCode) continue;
    CompositeRow& r = row();
    r.s1 = std::move(t.system);
    r.s2 = std::move(t.code);
  }
  for (StringRow& s : from.strings) {
    CompositeRow& r = row();
    r.s1 = std::move(s.normalized);
    r.s2 = std::move(s.exact);
  }
  for (ReferenceRow& ref : from.references) {
    CompositeRow& r = row();
    r.s1 = std::move(ref.type);
    r.s2 = std::move(ref.id);
    r.s3 = std::move(ref.url);
  }
  for (UriRow& u : from.uris) row().s1 = std::move(u.value);
  for (const DateRow& d : from.dates) {
    CompositeRow& r = row();
    r.i1 = d.lo;
    r.i2 = d.hi;
  }
  for (const NumberRow& n : from.numbers) {
    CompositeRow& r = row();
    r.n0 = n.value;
    r.n1 = n.lo;
    r.n2 = n.hi;
  }
  for (QuantityRow& q : from.quantities) {
    CompositeRow& r = row();
    r.s1 = std::move(q.system);
    r.s2 = std::move(q.code);
    r.s3 = std::move(q.unit);
    r.n0 = q.value;
    r.n1 = q.lo;
    r.n2 = q.hi;
  }
}

void Clear(IndexRows& r) {
  r.strings.clear();
  r.tokens.clear();
  r.references.clear();
  r.dates.clear();
  r.numbers.clear();
  r.quantities.clear();
  r.uris.clear();
  r.composites.clear();
}

}  // namespace

void IndexExtractor::NumberTexts::Reset(std::string_view source, const simdjson::dom::document* doc) {
  source_ = source;
  doc_ = doc;
  built_ = false;
  entries_.clear();
}

void IndexExtractor::NumberTexts::Build() {
  built_ = true;
  if (doc_ == nullptr || source_.empty()) return;
  // Numbers on the tape, in document order (each takes two tape words).
  tape_numbers_.clear();
  const uint64_t* tape = doc_->tape.get();
  const size_t end = tape[0] & simdjson::internal::JSON_VALUE_MASK;
  for (size_t i = 1; i < end;) {
    const auto t = static_cast<char>(tape[i] >> 56);
    if (t == 'l' || t == 'u' || t == 'd') {
      tape_numbers_.push_back(i);
      i += 2;
    } else {
      ++i;
    }
  }
  // Number tokens of the text, in document order (outside strings every '-' or digit starts one).
  text_numbers_.clear();
  for (size_t i = 0; i < source_.size();) {
    const char c = source_[i];
    if (c == '"') {
      for (++i; i < source_.size() && source_[i] != '"'; ++i) {
        if (source_[i] == '\\') ++i;
      }
      ++i;
    } else if (c == '-' || (c >= '0' && c <= '9')) {
      const size_t start = i;
      while (i < source_.size() && ((source_[i] >= '0' && source_[i] <= '9') || source_[i] == '-' ||
                                    source_[i] == '+' || source_[i] == '.' || source_[i] == 'e' || source_[i] == 'E')) {
        ++i;
      }
      text_numbers_.push_back(source_.substr(start, i - start));
    } else {
      ++i;
    }
  }
  if (tape_numbers_.size() != text_numbers_.size()) return;  // cannot happen for valid JSON; fall back to values
  entries_.reserve(tape_numbers_.size());
  for (size_t k = 0; k < tape_numbers_.size(); ++k) entries_.emplace_back(tape_numbers_[k], text_numbers_[k]);
}

std::string_view IndexExtractor::NumberTexts::Find(element number) {
  const TapeRefMirror ref = TapeRef(number);
  if (ref.doc == doc_ && doc_ != nullptr) {
    if (!built_) Build();
    auto it = std::lower_bound(entries_.begin(), entries_.end(), ref.json_index,
                               [](const auto& e, size_t index) { return e.first < index; });
    if (it != entries_.end() && it->first == ref.json_index) return it->second;
  }
  // No source text: the shortest rendering that reads back as the same double (trailing zeros are lost).
  char* end = fallback_;
  if (int64_t i; number.get(i) == simdjson::SUCCESS) {
    end = std::to_chars(fallback_, fallback_ + sizeof(fallback_), i).ptr;
  } else if (uint64_t u; number.get(u) == simdjson::SUCCESS) {
    end = std::to_chars(fallback_, fallback_ + sizeof(fallback_), u).ptr;
  } else if (double d; number.get(d) == simdjson::SUCCESS) {
    end = std::to_chars(fallback_, fallback_ + sizeof(fallback_), d).ptr;
  }
  return std::string_view(fallback_, end - fallback_);
}

Result<IndexRows> IndexExtractor::Extract(std::string_view json) {
  element root;
  if (auto err = parser_.parse(json.data(), json.size()).get(root); err != simdjson::SUCCESS) {
    return Status::Invalid(std::string("resource is not valid JSON: ") + simdjson::error_message(err));
  }
  numbers_.Reset(json, &parser_.doc);
  return ExtractImpl(root);
}

Result<IndexRows> IndexExtractor::Extract(element resource) {
  numbers_.Reset({}, nullptr);
  return ExtractImpl(resource);
}

Result<IndexRows> IndexExtractor::ExtractImpl(element resource) {
  std::string_view type;
  if (!resource.is_object() || resource["resourceType"].get(type) != simdjson::SUCCESS) {
    return Status::Invalid("resource has no resourceType");
  }
  IndexRows rows;
  const PathNode root = ResourceNode(resource);
  const auto& compiled = CompiledParams();
  auto text_of = [this](element number) { return numbers_.Find(number); };
  for (const ParamDef* def : ParamsForType(type)) {
    const CompiledParam& c = compiled[def->id];
    if (def->from_resource_table || !c.path) continue;
    if (def->rows_elsewhere && share_rows_) continue;  // its rows are those of def->stored_in
    const Marks marks(rows);
    values_.clear();
    c.path->Evaluate(root, root, scratch_, values_);
    if (def->type == ParamType::kToken) {
      for (const PathNode& n : values_) {
        const size_t before = rows.tokens.size();
        ValueRows(def->type, def->id, n, rows, text_of);
        if (share_rows_) DropTextRowsBeside(rows.tokens, before);
      }
    } else if (def->type != ParamType::kComposite) {
      for (const PathNode& n : values_) ValueRows(def->type, def->id, n, rows, text_of);
    } else {
      // values_ are the tuples; each component is evaluated relative to one tuple.
      for (size_t g = 0; g < values_.size() && g <= UINT16_MAX; ++g) {
        tuple_rows_.clear();
        bool complete = true;
        for (size_t k = 0; k < def->components.size() && complete; ++k) {
          const ParamDef& component = ParamById(def->components[k].param);
          if (!c.components[k]) {
            complete = false;
            break;
          }
          component_values_.clear();
          c.components[k]->Evaluate(values_[g], root, scratch_, component_values_);
          Clear(component_rows_);
          for (const PathNode& n : component_values_) {
            ValueRows(component.type, component.id, n, component_rows_, text_of);
          }
          const size_t before = tuple_rows_.size();
          ToCompositeRows(def->id, static_cast<uint16_t>(g), static_cast<uint8_t>(k), component.type, component_rows_,
                          tuple_rows_);
          complete = tuple_rows_.size() > before;
        }
        if (!complete) continue;  // a tuple missing a component can match no composite query
        for (CompositeRow& r : tuple_rows_) rows.composites.push_back(std::move(r));
      }
    }
    DedupeSince(rows, marks);
  }
  if (share_rows_) DropSharedRows(type, rows);
  return rows;
}

// The :text rows of one token value (a coding's display, a concept's or identifier type's text) are not stored
// when the value has a code row: searches answer :text from the resource itself (TokenTexts), and :missing needs
// only some row. A value with text only keeps its text rows, so that it still counts as present.
void IndexExtractor::DropTextRowsBeside(std::vector<TokenRow>& tokens, size_t from) {
  const bool has_code = std::any_of(tokens.begin() + static_cast<std::ptrdiff_t>(from), tokens.end(),
                                    [](const TokenRow& t) { return t.kind != TokenKind::kText; });
  if (!has_code) return;
  tokens.erase(std::remove_if(tokens.begin() + static_cast<std::ptrdiff_t>(from), tokens.end(),
                              [](const TokenRow& t) { return t.kind == TokenKind::kText; }),
               tokens.end());
}

Result<std::vector<std::string>> IndexExtractor::TokenTexts(std::string_view json, const ParamDef& def) {
  std::vector<std::string> out;
  if (def.type != ParamType::kToken) return out;
  element root_element;
  numbers_.Reset({}, nullptr);
  if (parser_.parse(json.data(), json.size()).get(root_element) != simdjson::SUCCESS) {
    return Status::Invalid("stored resource is not JSON");
  }
  const CompiledParam& c = CompiledParams()[def.id];
  if (!c.path) return out;
  const PathNode root = ResourceNode(root_element);
  values_.clear();
  c.path->Evaluate(root, root, scratch_, values_);
  IndexRows rows;
  auto text_of = [this](element number) { return numbers_.Find(number); };
  for (const PathNode& n : values_) ValueRows(def.type, def.id, n, rows, text_of);
  for (TokenRow& t : rows.tokens) {
    if (t.kind == TokenKind::kText) out.push_back(std::move(t.code));
  }
  return out;
}

// A reference parameter whose rows of a target type are another's (Observation patient: subject's Patient rows)
// keeps only its other rows (absolute URLs elsewhere, contained resources), which resolve() typed but whose row
// carries no type.
void IndexExtractor::DropSharedRows(std::string_view type, IndexRows& rows) {
  for (const ParamDef* def : ParamsForType(type)) {
    if (def->stored_in.empty() || def->rows_elsewhere || def->type != ParamType::kReference) continue;
    auto shared = [&](const ReferenceRow& mine) {
      for (const StoredIn& in : def->stored_in) {
        for (const ReferenceRow& other : rows.references) {
          if (other.param == in.param && (in.target_type.empty() || other.type == in.target_type) &&
              other.type == mine.type && other.id == mine.id && other.url == mine.url) {
            return true;
          }
        }
      }
      return false;
    };
    std::erase_if(rows.references, [&](const ReferenceRow& r) { return r.param == def->id && shared(r); });
  }
}

}  // namespace fhirlake::search
