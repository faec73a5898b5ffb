// FHIR search over SQLite: the index tables (one per parameter type, keyed by (rid, param, value...) for probes and
// deletes, with a (param, value..., rid) lookup index that a bulk load may drop and rebuild), their writes, the
// reindex, and the translation of a SearchQuery into one SELECT per page (criteria as EXISTS probes, the first
// selective one as the driving rid set), keyset paging over (sort keys..., rid), totals, and _include/_revinclude.
#include "store/sqlite_search.h"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <set>
#include <variant>

#include "common/time.h"
#include "fhir/page_cursor.h"
#include "fhir/r4.h"
#include "search/extract.h"
#include "store/sqlite_rows.h"

namespace fhirlake::store {
namespace {

using search::Criterion;
using search::Modifier;
using search::ParamDef;
using search::ParamType;
using search::Prefix;
using search::SearchQuery;
using search::SearchValue;

constexpr const char* kSearchTables[] = {"sp_string", "sp_token",    "sp_reference", "sp_date",
                                         "sp_number", "sp_quantity", "sp_uri",       "sp_composite"};
constexpr size_t kMaxIncluded = 5000;  // resources _include/_revinclude may add to one page
constexpr int64_t kReindexBatch = 2000;
constexpr std::string_view kHashKey = "search_index_hash";

// The lookup indexes: (param, value...) then, implicitly, the table's key (rid, ...), so rows of one value come in
// rid order. Random keys make them the costly part of a write; bulk loads drop them and rebuild them sorted.
struct Lookup {
  const char* name;
  const char* columns;
};
constexpr Lookup kLookups[] = {{"sp_string_k", "sp_string(param, norm)"},
                               {"sp_token_k", "sp_token(param, code)"},
                               {"sp_reference_k", "sp_reference(param, id, type)"},
                               {"sp_date_k", "sp_date(param, lo, hi)"},
                               {"sp_number_k", "sp_number(param, value)"},
                               {"sp_quantity_k", "sp_quantity(param, value)"},
                               {"sp_uri_k", "sp_uri(param, value)"},
                               {"sp_composite_k", "sp_composite(param, comp, s2)"}};

const char* TableOf(ParamType t) {
  switch (t) {
    case ParamType::kString:
      return "sp_string";
    case ParamType::kToken:
      return "sp_token";
    case ParamType::kReference:
      return "sp_reference";
    case ParamType::kDate:
      return "sp_date";
    case ParamType::kNumber:
      return "sp_number";
    case ParamType::kQuantity:
      return "sp_quantity";
    case ParamType::kUri:
      return "sp_uri";
    case ParamType::kComposite:
      return "sp_composite";
  }
  return "sp_token";
}

// Positional parameters of one statement, numbered ?1, ?2, ...
class Binds {
 public:
  using Value = std::variant<int64_t, double, std::string>;
  std::string Add(Value v) {
    values_.push_back(std::move(v));
    return "?" + std::to_string(values_.size());
  }
  std::string Int(int64_t v) { return Add(v); }
  std::string Real(double v) { return Add(v); }
  std::string Text(std::string_view v) { return Add(std::string(v)); }
  void Apply(SqliteStmt& q) const {
    for (size_t i = 0; i < values_.size(); ++i) {
      int n = static_cast<int>(i + 1);
      if (auto* iv = std::get_if<int64_t>(&values_[i])) {
        q.Bind(n, *iv);
      } else if (auto* dv = std::get_if<double>(&values_[i])) {
        q.Bind(n, *dv);
      } else {
        q.Bind(n, std::string_view(std::get<std::string>(values_[i])));
      }
    }
  }

 private:
  std::vector<Value> values_;
};

// `x.param IN (...)`: the ids of parameter `code` on every type searched (a system search spans types).
// The rows of parameter `def` (or, searching several types, of the parameter with its code on each of `types`) in
// the index table aliased `alias`: its own rows and those it shares with other parameters (ParamDef::stored_in;
// Observation patient = its own rows + subject's rows of type Patient).
std::string ParamIn(const std::string& alias, const ParamDef& def, const std::vector<std::string>& types, Binds* b) {
  std::vector<const ParamDef*> defs;
  if (types.size() <= 1) {
    defs.push_back(&def);
  } else {
    for (const auto& t : types) {
      if (const ParamDef* d = search::FindParam(t, def.code)) defs.push_back(d);
    }
  }
  std::set<search::ParamId> plain, all;
  std::vector<const search::StoredIn*> typed;
  for (const ParamDef* d : defs) {
    if (!d->rows_elsewhere) plain.insert(d->id);
    for (const search::StoredIn& in : d->stored_in) {
      if (in.target_type.empty()) {
        plain.insert(in.param);
      } else {
        typed.push_back(&in);
      }
      all.insert(in.param);
    }
  }
  all.insert(plain.begin(), plain.end());
  auto in_list = [&](const std::set<search::ParamId>& ids) {
    if (ids.size() == 1) return alias + ".param=" + std::to_string(*ids.begin());
    std::string out = alias + ".param IN (";
    for (auto it = ids.begin(); it != ids.end(); ++it) out += (it == ids.begin() ? "" : ",") + std::to_string(*it);
    return out + ")";
  };
  if (typed.empty()) return in_list(all);
  std::string either;
  if (!plain.empty()) either = in_list(plain);
  for (const search::StoredIn* in : typed) {
    either += (either.empty() ? "(" : " OR (") + alias + ".param=" + std::to_string(in->param) + " AND " + alias +
              ".type=" + b->Text(in->target_type) + ")";
  }
  return "(" + in_list(all) + " AND (" + either + "))";
}

// Column names of one value kind, in a main index table or in sp_composite.
struct Cols {
  std::string norm, exact;         // string
  std::string system, code, kind;  // token (kind empty in composites)
  std::string ref_type, ref_id;    // reference
  std::string url;                 // reference URL column (main table: ref_id with ref_type = '')
  std::string uri;                 // uri
  std::string lo, hi;              // date
  std::string value, dlo, dhi;     // number / quantity
  std::string unit;                // quantity
};

Cols MainCols(const std::string& a) {
  Cols c;
  c.norm = a + ".norm";
  c.exact = a + ".exact";
  c.system = a + ".system";
  c.code = a + ".code";
  c.kind = a + ".kind";
  c.ref_type = a + ".type";
  c.ref_id = a + ".id";
  c.uri = a + ".value";
  c.lo = a + ".lo";
  c.hi = a + ".hi";
  c.value = a + ".value";
  c.dlo = a + ".lo";
  c.dhi = a + ".hi";
  c.unit = a + ".unit";
  return c;
}

Cols CompositeCols(const std::string& a) {
  Cols c;
  c.norm = c.system = c.ref_type = c.uri = a + ".s1";
  c.exact = c.code = c.ref_id = a + ".s2";
  c.url = c.unit = a + ".s3";
  c.lo = a + ".i1";
  c.hi = a + ".i2";
  c.value = a + ".n0";
  c.dlo = a + ".n1";
  c.dhi = a + ".n2";
  return c;
}

std::string DateCond(const std::string& lo, const std::string& hi, const SearchValue& v, Binds* b) {
  auto ql = [&] { return b->Int(v.lo); };
  auto qh = [&] { return b->Int(v.hi); };
  switch (v.prefix) {
    case Prefix::kEq:
      return "(" + lo + ">=" + ql() + " AND " + hi + "<=" + qh() + ")";
    case Prefix::kNe:
      return "NOT (" + lo + ">=" + ql() + " AND " + hi + "<=" + qh() + ")";
    case Prefix::kGt:
      return hi + ">" + qh();
    case Prefix::kLt:
      return lo + "<" + ql();
    case Prefix::kGe:
      return "(" + hi + ">" + qh() + " OR (" + lo + ">=" + ql() + " AND " + hi + "<=" + qh() + "))";
    case Prefix::kLe:
      return "(" + lo + "<" + ql() + " OR (" + lo + ">=" + ql() + " AND " + hi + "<=" + qh() + "))";
    case Prefix::kSa:
      return lo + ">" + qh();
    case Prefix::kEb:
      return hi + "<" + ql();
    case Prefix::kAp: {
      // Approximately: the search range widened by 10% of its distance from now, overlapping the target's.
      int64_t now = Clock::System().NowMillis();
      double lo_gap = std::fabs(static_cast<double>(now) - static_cast<double>(v.lo)) * 0.1;
      double hi_gap = std::fabs(static_cast<double>(now) - static_cast<double>(v.hi)) * 0.1;
      int64_t wlo = static_cast<int64_t>(static_cast<double>(v.lo) - lo_gap);
      int64_t whi = static_cast<int64_t>(static_cast<double>(v.hi) + hi_gap);
      return "(" + lo + "<=" + b->Int(whi) + " AND " + hi + ">=" + b->Int(wlo) + ")";
    }
  }
  return "0";
}

std::string NumberCond(const std::string& value, const SearchValue& v, Binds* b) {
  switch (v.prefix) {
    case Prefix::kEq:
      return "(" + value + ">=" + b->Real(v.dlo) + " AND " + value + "<" + b->Real(v.dhi) + ")";
    case Prefix::kNe:
      return "NOT (" + value + ">=" + b->Real(v.dlo) + " AND " + value + "<" + b->Real(v.dhi) + ")";
    case Prefix::kGt:
    case Prefix::kSa:
      return value + ">" + b->Real(v.value);
    case Prefix::kLt:
    case Prefix::kEb:
      return value + "<" + b->Real(v.value);
    case Prefix::kGe:
      return value + ">=" + b->Real(v.value);
    case Prefix::kLe:
      return value + "<=" + b->Real(v.value);
    case Prefix::kAp: {
      double d = std::fabs(v.value) * 0.1;
      return "(" + value + ">=" + b->Real(v.value - d) + " AND " + value + "<=" + b->Real(v.value + d) + ")";
    }
  }
  return "0";
}

// The condition one value puts on one index row (columns `c`); `composite`: a component row of sp_composite.
std::string ValueCond(ParamType type, Modifier mod, const SearchValue& v, const Cols& c, bool composite, Binds* b) {
  switch (type) {
    case ParamType::kString:
      if (mod == Modifier::kExact) return c.exact + "=" + b->Text(v.s1);
      if (mod == Modifier::kContains) return "instr(" + c.norm + "," + b->Text(v.s1) + ")>0";
      return "(" + c.norm + ">=" + b->Text(v.s1) + " AND " + c.norm + "<" + b->Text(v.s1 + "\xff") + ")";
    case ParamType::kToken: {
      std::string kind = composite ? "" : c.kind + "=";
      if (mod == Modifier::kText) return "0";  // answered from the resource (CriterionCond, fl_token_text)
      if (mod == Modifier::kOfType) {
        return "(" + kind + "2 AND " + c.system + "=" + b->Text(v.s1) + " AND " + c.code + "=" + b->Text(v.s2) + ")";
      }
      std::string out = "(" + (composite ? std::string("1") : c.kind + "=0");
      if (v.has_code) out += " AND " + c.code + "=" + b->Text(v.s2);
      if (v.has_system) out += " AND " + c.system + "=" + b->Text(v.s1);
      return out + ")";
    }
    case ParamType::kReference:
      if (!v.s3.empty()) {
        if (composite) return c.url + "=" + b->Text(v.s3);
        return "(" + c.ref_type + "='' AND " + c.ref_id + "=" + b->Text(v.s3) + ")";
      }
      if (!v.s1.empty()) return "(" + c.ref_type + "=" + b->Text(v.s1) + " AND " + c.ref_id + "=" + b->Text(v.s2) + ")";
      return "(" + c.ref_id + "=" + b->Text(v.s2) + " AND " + c.ref_type + "<>'')";
    case ParamType::kUri:
      return c.uri + "=" + b->Text(v.s1);
    case ParamType::kDate:
      return DateCond(c.lo, c.hi, v, b);
    case ParamType::kNumber:
      return NumberCond(c.value, v, b);
    case ParamType::kQuantity: {
      std::string out = "(" + NumberCond(c.value, v, b);
      if (v.has_system && v.has_code) {
        out += " AND " + c.system + "=" + b->Text(v.s1) + " AND " + c.code + "=" + b->Text(v.s2);
      } else if (v.has_code) {
        out += " AND (" + c.code + "=" + b->Text(v.s2) + " OR " + c.unit + "=" + b->Text(v.s2) + ")";
      } else if (v.has_system) {
        out += " AND " + c.system + "=" + b->Text(v.s1);
      }
      return out + ")";
    }
    case ParamType::kComposite:
      return "0";
  }
  return "0";
}

class SqlBuilder {
 public:
  explicit SqlBuilder(const std::vector<std::string>& types) : types_(types) {}

  // The condition `c` puts on the resource row `r` (an alias of `resources`).
  std::string CriterionCond(const Criterion& c, const std::string& r, Binds* b) {
    const ParamDef& def = *c.param;
    if (!c.has_type.empty()) {
      std::string x = Alias("h"), s = Alias("hs");
      return "EXISTS(SELECT 1 FROM sp_reference " + x + " JOIN resources " + s + " ON " + s + ".rid=" + x +
             ".rid WHERE " + ParamIn(x, def, {}, b) + " AND " + x + ".type=" + r + ".type AND " + x + ".id=" + r +
             ".id AND " + s + ".deleted=0 AND " + s + ".type=" + b->Text(c.has_type) + " AND " +
             SubCond(c.chain[0], s, c.has_type, b) + ")";
    }
    if (!c.chain.empty()) {
      std::string x = Alias("c"), t = Alias("ct");
      return "EXISTS(SELECT 1 FROM sp_reference " + x + " JOIN resources " + t + " ON " + t + ".type=" + x +
             ".type AND " + t + ".id=" + x + ".id WHERE " + x + ".rid=" + r + ".rid AND " + ParamIn(x, def, types_, b) +
             " AND " + x + ".type=" + b->Text(c.type_modifier) + " AND " + t + ".deleted=0 AND " +
             SubCond(c.chain[0], t, c.type_modifier, b) + ")";
    }
    if (def.from_resource_table) {
      if (c.modifier == Modifier::kMissing) return c.missing ? "0" : "1";
      std::string out;
      if (def.code == "_id") {
        out = r + ".id IN (";
        for (size_t i = 0; i < c.values.size(); ++i) out += (i ? "," : "") + b->Text(c.values[i].s2);
        out += ")";
        return c.modifier == Modifier::kNot ? "NOT " + out : out;
      }
      for (const auto& v : c.values) {
        if (!out.empty()) out += " OR ";
        out += DateCond(r + ".last_updated", r + ".last_updated", v, b);
      }
      return "(" + out + ")";
    }
    if (def.type == ParamType::kToken && c.modifier == Modifier::kText) {
      // The index keeps no :text rows for values with a code: evaluate the parameter on the resource itself.
      std::string out = "fl_token_text(" + r + ".type," + r + ".json," + b->Text(def.code);
      for (const auto& v : c.values) out += "," + b->Text(v.s2);
      return out + ")";
    }
    std::string x = Alias("x");
    std::string table = TableOf(def.type);
    std::string probe = "SELECT 1 FROM " + std::string(table) + " " + x + " WHERE " + x + ".rid=" + r + ".rid AND " +
                        ParamIn(x, def, types_, b);
    if (c.modifier == Modifier::kMissing) return (c.missing ? "NOT EXISTS(" : "EXISTS(") + probe + ")";
    if (def.type == ParamType::kComposite) return CompositeCond(def, c.values, r, b);
    std::string alts = Alternatives(def.type, c.modifier == Modifier::kNot ? Modifier::kNone : c.modifier, c.values,
                                    MainCols(x), false, b);
    if (c.modifier == Modifier::kNot) return "NOT EXISTS(" + probe + " AND " + alts + ")";
    return "EXISTS(" + probe + " AND " + alts + ")";
  }

  // `r.rid IN (...)` for a criterion that can drive the search from its index (an equality on a selective type),
  // or empty. `after_rid`: the keyset position when the search is in rid order (0: none).
  std::string DriverCond(const Criterion& c, const std::string& r, int64_t after_rid, Binds* b) {
    if (!Drives(c, /*ranges=*/true)) return "";
    if (!c.chain.empty()) return ChainDriverCond(c, r, after_rid, b);
    std::string x = Alias("d");
    std::string out = r + ".rid IN (SELECT " + x + ".rid" + DriverRows(c, x, b);
    if (after_rid > 0) out += " AND " + x + ".rid>" + b->Int(after_rid);
    return out + ")";
  }

  // Whether `c` can drive (DriverCond): an equality on a selective type, a chain whose target criterion is one, or
  // with `ranges` a date range (an index-only scan of the parameter's rows, which beats probing every row of the
  // type). The caller prefers equalities: RunSearch asks without ranges first.
  static bool Drives(const Criterion& c, bool ranges) {
    const ParamDef& def = *c.param;
    if (!c.chain.empty()) return c.has_type.empty() && Drives(c.chain[0], /*ranges=*/false);
    if (!c.has_type.empty() || def.from_resource_table) return false;
    if (c.modifier == Modifier::kMissing || c.modifier == Modifier::kNot || c.modifier == Modifier::kText) return false;
    switch (def.type) {
      case ParamType::kReference:
      case ParamType::kUri:
        return true;
      case ParamType::kToken:
        return (c.modifier == Modifier::kNone || c.modifier == Modifier::kOfType) &&
               std::all_of(c.values.begin(), c.values.end(), [](const SearchValue& v) { return v.has_code; });
      case ParamType::kString:
        return c.modifier != Modifier::kContains;
      case ParamType::kDate:
        return ranges;
      default:
        return false;
    }
  }

  // A chain drives when its criterion on the target type would drive there (Observation?patient.name=x: the few
  // Patients named x first, then the rows that refer to them), or empty. The same rows as CriterionCond's chain.
  std::string ChainDriverCond(const Criterion& c, const std::string& r, int64_t after_rid, Binds* b) {
    const std::string t = Alias("ct");
    SqlBuilder inner({c.type_modifier});
    inner.aliases_ = aliases_ + 100;
    const std::string target = inner.DriverCond(c.chain[0], t, 0, b);
    aliases_ = inner.aliases_;
    if (target.empty()) return "";
    const std::string x = Alias("d");
    std::string out = r + ".rid IN (SELECT " + x + ".rid FROM sp_reference " + x + " WHERE " +
                      ParamIn(x, *c.param, types_, b) + " AND " + x + ".type=" + b->Text(c.type_modifier) + " AND " +
                      x + ".id IN (SELECT " + t + ".id FROM resources " + t + " WHERE " + t +
                      ".type=" + b->Text(c.type_modifier) + " AND " + t + ".deleted=0 AND " + target + ")";
    if (after_rid > 0) out += " AND " + x + ".rid>" + b->Int(after_rid);
    return out + ")";
  }

  // `SELECT count(DISTINCT rid)` over a driving criterion's index rows alone: the total of a search whose only
  // criterion drove it (no compartment). Index rows exist only for current, not deleted versions of the
  // parameter's own type, so the index answers without touching the resource rows.
  std::string IndexOnlyCount(const Criterion& c, Binds* b) {
    std::string x = Alias("n");
    return "SELECT count(DISTINCT " + x + ".rid)" + DriverRows(c, x, b);
  }

 private:
  // " FROM <table> x WHERE <parameter> AND <alternatives>" of a driving criterion.
  std::string DriverRows(const Criterion& c, const std::string& x, Binds* b) {
    const ParamDef& def = *c.param;
    return " FROM " + std::string(TableOf(def.type)) + " " + x + " WHERE " + ParamIn(x, def, types_, b) + " AND " +
           Alternatives(def.type, c.modifier, c.values, MainCols(x), false, b);
  }

 public:
 private:
  std::string Alias(const char* stem) { return std::string(stem) + std::to_string(++aliases_); }

  // A criterion of a chain or _has on the resource row `r` of type `type`.
  std::string SubCond(const Criterion& c, const std::string& r, const std::string& type, Binds* b) {
    SqlBuilder inner({type});
    inner.aliases_ = aliases_ + 100;
    std::string out = inner.CriterionCond(c, r, b);
    aliases_ = inner.aliases_;
    return out;
  }

  std::string Alternatives(ParamType type, Modifier mod, const std::vector<SearchValue>& values, const Cols& cols,
                           bool composite, Binds* b) {
    std::string out;
    for (const auto& v : values) {
      if (!out.empty()) out += " OR ";
      out += ValueCond(type, mod, v, cols, composite, b);
    }
    return "(" + out + ")";
  }

  // The composite values (OR): one tuple (group) of the parameter whose every component matches one of them. One
  // probe for all the values, so that many alternatives cost one join per resource, not one each.
  std::string CompositeCond(const ParamDef& def, const std::vector<SearchValue>& values, const std::string& r,
                            Binds* b) {
    std::vector<std::string> as;
    for (size_t i = 0; i < def.components.size(); ++i) as.push_back(Alias("k"));
    std::string out = "EXISTS(SELECT 1 FROM sp_composite " + as[0];
    for (size_t i = 1; i < as.size(); ++i) {
      out += " JOIN sp_composite " + as[i] + " ON " + as[i] + ".rid=" + as[0] + ".rid AND " + as[i] +
             ".param=" + as[0] + ".param AND " + as[i] + ".grp=" + as[0] + ".grp AND " + as[i] +
             ".comp=" + std::to_string(i);
    }
    out += " WHERE " + as[0] + ".rid=" + r + ".rid AND " + ParamIn(as[0], def, types_, b) + " AND " + as[0] + ".comp=0";
    std::string alts;
    for (const SearchValue& v : values) {
      std::string tuple;
      for (size_t i = 0; i < as.size(); ++i) {
        const ParamDef& comp = search::ParamById(def.components[i].param);
        tuple +=
            (i ? " AND " : "") + ValueCond(comp.type, Modifier::kNone, v.components[i], CompositeCols(as[i]), true, b);
      }
      alts += (alts.empty() ? "(" : " OR (") + tuple + ")";
    }
    return out + " AND (" + alts + "))";
  }

  std::vector<std::string> types_;
  int aliases_ = 0;
};

// The SQL of a sort key of the row `r`; missing values sort last both ways (see the sentinels).
std::string SortExpr(const search::SortKey& k, const std::vector<std::string>& types, Binds* b) {
  const ParamDef& def = *k.param;
  if (def.code == "_lastUpdated") return "r.last_updated";
  if (def.code == "_id") return "r.id";
  std::string agg = k.descending ? "max" : "min";
  std::string col;
  std::string extra;
  switch (def.type) {
    case ParamType::kString:
      col = "norm";
      break;
    case ParamType::kToken:
      col = "code";
      extra = " AND s.kind=0";
      break;
    case ParamType::kReference:
      col = "type||'/'||s.id";
      break;
    case ParamType::kDate:
      col = k.descending ? "hi" : "lo";
      break;
    case ParamType::kNumber:
    case ParamType::kQuantity:
    case ParamType::kUri:
      col = "value";
      break;
    case ParamType::kComposite:
      col = "s1";
      break;
  }
  std::string expr = "(SELECT " + agg + "(s." + col + ") FROM " + TableOf(def.type) + " s WHERE s.rid=r.rid AND " +
                     ParamIn("s", def, types, b) + extra + ")";
  // Ascending: a blob sorts after every number and text; descending: -1e308 before every number and text.
  return k.descending ? "coalesce(" + expr + ",-1e308)" : "coalesce(" + expr + ",x'ff')";
}

// A sort key value of a row, typed as SQLite typed it, for the cursor.
struct KeyValue {
  int type = SQLITE_NULL;
  int64_t i = 0;
  double d = 0;
  std::string s;
};

char HexDigit(int v) { return "0123456789abcdef"[v & 15]; }

std::string EncodeKey(const KeyValue& k) {
  switch (k.type) {
    case SQLITE_INTEGER:
      return "i" + std::to_string(k.i);
    case SQLITE_FLOAT: {
      char buf[64];
      auto [p, ec] = std::to_chars(buf, buf + sizeof buf, k.d);
      return "r" + std::string(buf, p);
    }
    case SQLITE_TEXT:
    case SQLITE_BLOB: {
      std::string out(1, k.type == SQLITE_TEXT ? 't' : 'b');
      for (unsigned char c : k.s) {
        out.push_back(HexDigit(c >> 4));
        out.push_back(HexDigit(c));
      }
      return out;
    }
    default:
      return "n";
  }
}

std::optional<KeyValue> DecodeKey(std::string_view s) {
  KeyValue k;
  if (s.empty()) return std::nullopt;
  char tag = s[0];
  s.remove_prefix(1);
  if (tag == 'i') {
    k.type = SQLITE_INTEGER;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), k.i);
    if (ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  } else if (tag == 'r') {
    k.type = SQLITE_FLOAT;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), k.d);
    if (ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  } else if (tag == 't' || tag == 'b') {
    k.type = tag == 't' ? SQLITE_TEXT : SQLITE_BLOB;
    if (s.size() % 2) return std::nullopt;
    for (size_t i = 0; i < s.size(); i += 2) {
      auto hex = [](char c) { return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1; };
      int hi = hex(s[i]), lo = hex(s[i + 1]);
      if (hi < 0 || lo < 0) return std::nullopt;
      k.s.push_back(static_cast<char>(hi * 16 + lo));
    }
  } else if (tag == 'n' && s.empty()) {
    k.type = SQLITE_NULL;
  } else {
    return std::nullopt;
  }
  return k;
}

std::string KeySql(const KeyValue& k, Binds* b) {
  switch (k.type) {
    case SQLITE_INTEGER:
      return b->Int(k.i);
    case SQLITE_FLOAT:
      return b->Real(k.d);
    case SQLITE_TEXT:
      return b->Text(k.s);
    case SQLITE_BLOB: {
      std::string hex;
      for (unsigned char c : k.s) {
        hex.push_back(HexDigit(c >> 4));
        hex.push_back(HexDigit(c));
      }
      return "x'" + hex + "'";
    }
    default:
      return "NULL";
  }
}

// The cursor: "<total or -1>;<rid>[;<key>...];q<search>", `search` a fingerprint of the search it pages (types,
// compartment, parameters without _count), so that a cursor given to another search is refused rather than
// starting it at a foreign position. Cursors without the fingerprint (made before it existed) are still read.
struct Cursor {
  int64_t total = -1;
  int64_t rid = 0;
  std::vector<KeyValue> keys;
};

Status BadSearchCursor() {
  return Status::Invalid(
      "The page cursor does not belong to this search; follow the next link this server returned, or leave 'page' "
      "out to start at the first page");
}

// FNV-1a over what identifies a search, as 16 hex digits.
std::string SearchFingerprint(const SearchQuery& query, std::string_view compartment_patient) {
  uint64_t h = 14695981039346656037ull;
  auto mix = [&](std::string_view s) {
    for (unsigned char c : s) {
      h ^= c;
      h *= 1099511628211ull;
    }
    h ^= 0xff;  // separator
    h *= 1099511628211ull;
  };
  for (const auto& t : query.types) mix(t);
  mix(compartment_patient);
  std::string_view applied = query.applied_query;
  while (!applied.empty()) {
    size_t amp = applied.find('&');
    std::string_view param = applied.substr(0, amp);
    if (!param.starts_with("_count=")) mix(param);
    if (amp == std::string_view::npos) break;
    applied.remove_prefix(amp + 1);
  }
  std::string out(16, '0');
  for (int i = 15; i >= 0; --i, h >>= 4) out[i] = HexDigit(static_cast<int>(h & 15));
  return out;
}

Result<Cursor> DecodeCursor(std::string_view token, size_t key_count, std::string_view fingerprint) {
  ASSIGN_OR_RETURN(std::string text, fhir::DecodePageCursorText(token, "search"));
  std::vector<std::string_view> parts;
  std::string_view s = text;
  while (true) {
    size_t i = s.find(';');
    parts.push_back(s.substr(0, i));
    if (i == std::string_view::npos) break;
    s.remove_prefix(i + 1);
  }
  if (parts.size() == key_count + 3 && parts.back().starts_with('q')) {
    if (parts.back().substr(1) != fingerprint) return BadSearchCursor();
    parts.pop_back();
  }
  if (parts.size() != key_count + 2) return BadSearchCursor();
  Cursor c;
  auto [p1, e1] = std::from_chars(parts[0].data(), parts[0].data() + parts[0].size(), c.total);
  auto [p2, e2] = std::from_chars(parts[1].data(), parts[1].data() + parts[1].size(), c.rid);
  if (e1 != std::errc() || e2 != std::errc() || p1 != parts[0].data() + parts[0].size() ||
      p2 != parts[1].data() + parts[1].size() || c.rid < 0) {
    return BadSearchCursor();
  }
  for (size_t i = 2; i < parts.size(); ++i) {
    auto k = DecodeKey(parts[i]);
    if (!k) return BadSearchCursor();
    c.keys.push_back(std::move(*k));
  }
  return c;
}

std::string EncodeCursor(const Cursor& c, std::string_view fingerprint) {
  std::string text = std::to_string(c.total) + ";" + std::to_string(c.rid);
  for (const auto& k : c.keys) text += ";" + EncodeKey(k);
  text += ";q" + std::string(fingerprint);
  return fhir::EncodePageCursorText("search", text);
}

// Prepares one statement of a search. Its SQL is generated from the client's query: a failure names what SQLite
// said, never the SQL (diagnostics go to the client).
Result<std::unique_ptr<SqliteStmt>> PrepareSearchSql(SqliteConnection& conn, const std::string& sql) {
  sqlite3_stmt* stmt = nullptr;
  int rc = sqlite3_prepare_v2(conn.raw(), sql.data(), static_cast<int>(sql.size()), &stmt, nullptr);
  if (rc != SQLITE_OK) {
    sqlite3_finalize(stmt);
    return SqliteError(conn.raw(), "The search could not be prepared");
  }
  return std::make_unique<SqliteStmt>(stmt, conn.raw(), /*owned=*/true);
}

// Adds the _include / _revinclude resources of `rows` to `out` (skipping `seen`).
Status AddIncludes(SqliteConnection& conn, const SearchQuery& query, const std::vector<StoredResource>& rows,
                   bool iterate_pass, std::set<int64_t>* seen, std::vector<StoredResource>* out) {
  std::vector<StoredResource> added;
  auto add_row = [&](StoredResource r) {
    if (out->size() + added.size() >= kMaxIncluded) return;
    if (seen->insert(r.rid).second) added.push_back(std::move(r));
  };
  for (const auto& inc : query.includes) {
    if (iterate_pass && !inc.iterate) continue;
    std::string rids;
    for (const auto& r : rows) {
      if (r.type != inc.source_type) continue;
      rids += (rids.empty() ? "" : ",") + std::to_string(r.rid);
    }
    if (rids.empty()) continue;
    Binds b;
    std::string sql = std::string("SELECT ") + kResourceRowColumns +
                      " FROM resources r WHERE r.deleted=0 AND r.rid IN (SELECT t.rid FROM sp_reference x JOIN "
                      "resources t ON t.type=x.type AND t.id=x.id WHERE x.rid IN (" +
                      rids + ") AND " + ParamIn("x", *inc.param, {}, &b) + " AND x.type<>''";
    if (!inc.target_type.empty()) sql += " AND x.type=" + b.Text(inc.target_type);
    sql += ") ORDER BY r.rid";
    ASSIGN_OR_RETURN(auto q, PrepareSearchSql(conn, sql));
    b.Apply(*q);
    while (true) {
      ASSIGN_OR_RETURN(bool row, q->Step());
      if (!row) break;
      add_row(ReadResourceRow(*q));
    }
  }
  for (const auto& inc : query.revincludes) {
    if (iterate_pass && !inc.iterate) continue;
    std::string ids, keys;
    Binds b;
    for (const auto& r : rows) {
      ids += (ids.empty() ? "" : ",") + b.Text(r.id);
      keys += (keys.empty() ? "" : ",") + b.Text(r.type + "/" + r.id);
    }
    if (ids.empty()) continue;
    std::string sql = std::string("SELECT ") + kResourceRowColumns +
                      " FROM resources r WHERE r.deleted=0 AND r.type=" + b.Text(inc.source_type) +
                      " AND r.rid IN (SELECT x.rid FROM sp_reference x WHERE " + ParamIn("x", *inc.param, {}, &b) +
                      " AND x.id IN (" + ids + ") AND x.type||'/'||x.id IN (" + keys + ")";
    if (!inc.target_type.empty()) sql += " AND x.type=" + b.Text(inc.target_type);
    sql += ") ORDER BY r.rid";
    ASSIGN_OR_RETURN(auto q, PrepareSearchSql(conn, sql));
    b.Apply(*q);
    while (true) {
      ASSIGN_OR_RETURN(bool row, q->Step());
      if (!row) break;
      add_row(ReadResourceRow(*q));
    }
  }
  if (!iterate_pass && !added.empty()) {
    bool any_iterate =
        std::any_of(query.includes.begin(), query.includes.end(), [](const auto& i) { return i.iterate; }) ||
        std::any_of(query.revincludes.begin(), query.revincludes.end(), [](const auto& i) { return i.iterate; });
    if (any_iterate) {
      std::vector<StoredResource> first = added;
      for (auto& r : added) out->push_back(std::move(r));
      return AddIncludes(conn, query, first, /*iterate_pass=*/true, seen, out);
    }
  }
  for (auto& r : added) out->push_back(std::move(r));
  return Status::Ok();
}

// fl_token_text(type, json, code, needle...): 1 when a :text text of the token parameter `code` of `type` in the
// resource `json` contains one of the (normalised) needles. One extractor per thread.
void TokenTextFunction(sqlite3_context* ctx, int argc, sqlite3_value** argv) {
  if (argc < 4) return sqlite3_result_error(ctx, "fl_token_text needs type, json, code and a text", -1);
  auto text = [&](int i) {
    const unsigned char* p = sqlite3_value_text(argv[i]);
    return p == nullptr
               ? std::string_view()
               : std::string_view(reinterpret_cast<const char*>(p), static_cast<size_t>(sqlite3_value_bytes(argv[i])));
  };
  const ParamDef* def = search::FindParam(text(0), text(2));
  if (def == nullptr) return sqlite3_result_int(ctx, 0);
  thread_local search::IndexExtractor extractor;
  auto texts = extractor.TokenTexts(text(1), *def);
  if (!texts.ok()) return sqlite3_result_error(ctx, texts.status().message().c_str(), -1);
  for (int i = 3; i < argc; ++i) {
    const std::string_view needle = text(i);
    for (const std::string& t : *texts) {
      if (t.find(needle) != std::string::npos) return sqlite3_result_int(ctx, 1);
    }
  }
  sqlite3_result_int(ctx, 0);
}

}  // namespace

Status RegisterSearchFunctions(SqliteConnection& conn) {
  int rc = sqlite3_create_function_v2(conn.raw(), "fl_token_text", -1, SQLITE_UTF8 | SQLITE_DETERMINISTIC, nullptr,
                                      TokenTextFunction, nullptr, nullptr, nullptr);
  if (rc != SQLITE_OK) return SqliteError(conn.raw(), "registering the search functions failed");
  return Status::Ok();
}

Status WriteSearchRows(SqliteConnection& conn, int64_t rid, const search::IndexRows& rows) {
  if (!rows.strings.empty()) {
    ASSIGN_OR_RETURN(auto q,
                     conn.Prepare("INSERT OR IGNORE INTO sp_string(param, norm, rid, exact) VALUES (?1,?2,?3,?4)"));
    for (const auto& r : rows.strings) {
      q->Bind(1, static_cast<int64_t>(r.param)).Bind(2, r.normalized).Bind(3, rid).Bind(4, r.exact);
      RETURN_IF_ERROR(q->Run());
    }
  }
  if (!rows.tokens.empty()) {
    ASSIGN_OR_RETURN(auto q, conn.Prepare("INSERT OR IGNORE INTO sp_token(param, code, rid, kind, system) VALUES "
                                          "(?1,?2,?3,?4,?5)"));
    for (const auto& r : rows.tokens) {
      q->Bind(1, static_cast<int64_t>(r.param)).Bind(2, r.code).Bind(3, rid).Bind(4, static_cast<int64_t>(r.kind));
      q->Bind(5, r.system);
      RETURN_IF_ERROR(q->Run());
    }
  }
  if (!rows.references.empty()) {
    ASSIGN_OR_RETURN(auto q,
                     conn.Prepare("INSERT OR IGNORE INTO sp_reference(param, id, type, rid) VALUES (?1,?2,?3,?4)"));
    for (const auto& r : rows.references) {
      q->Bind(1, static_cast<int64_t>(r.param));
      if (r.type.empty()) {
        // An empty text, not a default string_view: its null data() would bind NULL, which the NOT NULL column
        // refuses and INSERT OR IGNORE then drops silently.
        q->Bind(2, r.url).Bind(3, std::string_view(""));
      } else {
        q->Bind(2, r.id).Bind(3, r.type);
      }
      q->Bind(4, rid);
      RETURN_IF_ERROR(q->Run());
    }
  }
  if (!rows.dates.empty()) {
    ASSIGN_OR_RETURN(auto q, conn.Prepare("INSERT OR IGNORE INTO sp_date(param, lo, hi, rid) VALUES (?1,?2,?3,?4)"));
    for (const auto& r : rows.dates) {
      q->Bind(1, static_cast<int64_t>(r.param)).Bind(2, r.lo).Bind(3, r.hi).Bind(4, rid);
      RETURN_IF_ERROR(q->Run());
    }
  }
  if (!rows.numbers.empty()) {
    ASSIGN_OR_RETURN(auto q, conn.Prepare("INSERT OR IGNORE INTO sp_number(param, value, lo, hi, rid) VALUES "
                                          "(?1,?2,?3,?4,?5)"));
    for (const auto& r : rows.numbers) {
      q->Bind(1, static_cast<int64_t>(r.param)).Bind(2, r.value).Bind(3, r.lo).Bind(4, r.hi).Bind(5, rid);
      RETURN_IF_ERROR(q->Run());
    }
  }
  if (!rows.quantities.empty()) {
    ASSIGN_OR_RETURN(auto q, conn.Prepare("INSERT OR IGNORE INTO sp_quantity(param, value, code, system, unit, lo, hi, "
                                          "rid) VALUES (?1,?2,?3,?4,?5,?6,?7,?8)"));
    for (const auto& r : rows.quantities) {
      q->Bind(1, static_cast<int64_t>(r.param)).Bind(2, r.value).Bind(3, r.code).Bind(4, r.system).Bind(5, r.unit);
      q->Bind(6, r.lo).Bind(7, r.hi).Bind(8, rid);
      RETURN_IF_ERROR(q->Run());
    }
  }
  if (!rows.uris.empty()) {
    ASSIGN_OR_RETURN(auto q, conn.Prepare("INSERT OR IGNORE INTO sp_uri(param, value, rid) VALUES (?1,?2,?3)"));
    for (const auto& r : rows.uris) {
      q->Bind(1, static_cast<int64_t>(r.param)).Bind(2, r.value).Bind(3, rid);
      RETURN_IF_ERROR(q->Run());
    }
  }
  if (!rows.composites.empty()) {
    ASSIGN_OR_RETURN(auto q, conn.Prepare("INSERT INTO sp_composite(param, grp, comp, s1, s2, s3, i1, i2, n0, n1, n2, "
                                          "rid) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12)"));
    for (const auto& r : rows.composites) {
      q->Bind(1, static_cast<int64_t>(r.param)).Bind(2, static_cast<int64_t>(r.group));
      q->Bind(3, static_cast<int64_t>(r.component)).Bind(4, r.s1).Bind(5, r.s2).Bind(6, r.s3);
      q->Bind(7, r.i1).Bind(8, r.i2).Bind(9, r.n0).Bind(10, r.n1).Bind(11, r.n2).Bind(12, rid);
      RETURN_IF_ERROR(q->Run());
    }
  }
  return Status::Ok();
}

Status DropSearchRows(SqliteConnection& conn, int64_t rid) {
  static const std::vector<std::string> kDeletes = [] {
    std::vector<std::string> out;
    for (const char* t : kSearchTables) out.push_back(std::string("DELETE FROM ") + t + " WHERE rid=?1");
    return out;
  }();
  for (const auto& sql : kDeletes) {
    ASSIGN_OR_RETURN(auto q, conn.Prepare(sql));
    q->Bind(1, rid);
    RETURN_IF_ERROR(q->Run());
  }
  return Status::Ok();
}

Status DropSearchLookups(SqliteConnection& conn) {
  for (const Lookup& l : kLookups) RETURN_IF_ERROR(conn.Exec(std::string("DROP INDEX IF EXISTS ") + l.name));
  return Status::Ok();
}

Result<int> EnsureSearchLookups(SqliteConnection& conn,
                                const std::function<void(std::string_view, int64_t, double)>& built) {
  int count = 0;
  for (const Lookup& l : kLookups) {
    ASSIGN_OR_RETURN(auto q, conn.Prepare("SELECT count(*) FROM sqlite_master WHERE type='index' AND name=?1"));
    q->Bind(1, std::string_view(l.name));
    ASSIGN_OR_RETURN(bool row, q->Step());
    bool exists = row && q->Int(0) > 0;
    q.reset();
    if (exists) continue;
    std::string table(l.columns, std::string_view(l.columns).find('('));
    int64_t rows = 0;
    {
      ASSIGN_OR_RETURN(auto n, conn.Prepare("SELECT count(*) FROM " + table));
      ASSIGN_OR_RETURN(bool has, n->Step());
      rows = has ? n->Int(0) : 0;
    }
    auto start = std::chrono::steady_clock::now();
    // The sort spills to temporary files rather than memory (connections default to temp_store=MEMORY, which
    // would hold the whole index in RAM while it is sorted); a helper thread sorts beside the main one.
    RETURN_IF_ERROR(conn.Exec("PRAGMA temp_store=FILE; PRAGMA threads=1"));
    Status st = conn.Exec(std::string("CREATE INDEX IF NOT EXISTS ") + l.name + " ON " + l.columns);
    Status restore = conn.Exec("PRAGMA temp_store=MEMORY; PRAGMA threads=0");
    RETURN_IF_ERROR(st);
    RETURN_IF_ERROR(restore);
    ++count;
    if (built && rows > 0)
      built(l.name, rows, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return count;
}

Result<int64_t> ReindexIfNeeded(SqliteConnection& conn, bool force,
                                const std::function<void(int64_t, int64_t)>& progress) {
  const std::string hash(search::RegistryHash());
  int64_t total = 0;
  {
    RETURN_IF_ERROR(conn.Exec("BEGIN IMMEDIATE"));
    auto step = [&]() -> Result<bool> {
      ASSIGN_OR_RETURN(auto q, conn.Prepare("SELECT value FROM meta WHERE key=?1"));
      q->Bind(1, kHashKey);
      ASSIGN_OR_RETURN(bool row, q->Step());
      if (!force && row && q->Text(0) == hash) return false;
      ASSIGN_OR_RETURN(auto n, conn.Prepare("SELECT count(*) FROM resources WHERE deleted=0"));
      ASSIGN_OR_RETURN(bool has, n->Step());
      total = has ? n->Int(0) : 0;
      n.reset();
      q.reset();                                 // a schema change refuses to run beside a statement still stepping
      RETURN_IF_ERROR(DropSearchLookups(conn));  // rebuilt sorted once every row is in (EnsureSearchLookups)
      for (const char* t : kSearchTables) RETURN_IF_ERROR(conn.Exec(std::string("DELETE FROM ") + t));
      ASSIGN_OR_RETURN(auto del, conn.Prepare("DELETE FROM meta WHERE key=?1"));
      del->Bind(1, kHashKey);
      RETURN_IF_ERROR(del->Run());
      return true;
    };
    auto needed = step();
    Status st = needed.ok() ? conn.Exec("COMMIT") : needed.status();
    if (!st.ok()) {
      if (!sqlite3_get_autocommit(conn.raw())) RETURN_IF_ERROR(conn.Exec("ROLLBACK"));
      return st;
    }
    if (!*needed) return 0;
  }
  search::IndexExtractor extractor;
  int64_t after = 0, done = 0;
  int64_t next_report = 0;
  while (true) {
    RETURN_IF_ERROR(conn.Exec("BEGIN IMMEDIATE"));
    auto batch = [&]() -> Result<int64_t> {
      ASSIGN_OR_RETURN(auto q, conn.Prepare("SELECT rid, type, id, json FROM resources WHERE rid>?1 AND deleted=0 "
                                            "ORDER BY rid LIMIT ?2"));
      q->Bind(1, after).Bind(2, kReindexBatch);
      std::vector<std::pair<int64_t, std::string>> rows;
      while (true) {
        ASSIGN_OR_RETURN(bool row, q->Step());
        if (!row) break;
        rows.emplace_back(q->Int(0), q->Str(3));
      }
      q.reset();
      for (const auto& [rid, json] : rows) {
        auto index = extractor.Extract(json);
        if (!index.ok()) return index.status().WithContext("reindexing row " + std::to_string(rid));
        RETURN_IF_ERROR(DropSearchRows(conn, rid));  // a write since the reindex began may have indexed it
        RETURN_IF_ERROR(WriteSearchRows(conn, rid, *index));
        after = rid;
      }
      return static_cast<int64_t>(rows.size());
    };
    auto n = batch();
    Status st = n.ok() ? conn.Exec("COMMIT") : n.status();
    if (!st.ok()) {
      if (!sqlite3_get_autocommit(conn.raw())) RETURN_IF_ERROR(conn.Exec("ROLLBACK"));
      return st;
    }
    done += *n;
    if (done >= next_report || *n == 0) {
      if (progress && total > 0) progress(done, total);
      next_report = done + 100000;
    }
    if (*n < kReindexBatch) break;
  }
  ASSIGN_OR_RETURN(auto ins, conn.Prepare("INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)"));
  ins->Bind(1, kHashKey).Bind(2, hash);
  RETURN_IF_ERROR(ins->Run());
  return done;
}

namespace {

// The WHERE clause of a search on the resource row `r`: current, not deleted, of the query's types, in the
// compartment when one is given, and every criterion (the driving one as an index lookup). `driver_out`: which
// criterion drives (criteria.size(): none). `rid_after`: the keyset position of a search in rid order (0: none).
std::string SearchWhere(const SearchQuery& query, std::string_view compartment_patient, int64_t rid_after,
                        SqlBuilder& builder, Binds* b, size_t* driver_out) {
  std::string where;
  if (query.types.size() == 1) {
    where = "r.type=" + b->Text(query.types[0]);
  } else if (query.types.size() < fhir::AllResourceTypes().size()) {
    where = "r.type IN (";
    for (size_t i = 0; i < query.types.size(); ++i) where += (i ? "," : "") + b->Text(query.types[i]);
    where += ")";
  } else {
    where = "1";
  }
  where += " AND r.deleted=0";
  if (!compartment_patient.empty()) {
    where += " AND r.rid IN (SELECT c.rid FROM compartment c WHERE c.patient_id=" + b->Text(compartment_patient) +
             " AND c.until_seq IS NULL)";
  }
  // The driving criterion: the first equality that can drive, else the first date range.
  size_t& driver = *driver_out;
  driver = query.criteria.size();
  for (bool ranges : {false, true}) {
    for (size_t i = 0; i < query.criteria.size() && driver == query.criteria.size(); ++i) {
      if (SqlBuilder::Drives(query.criteria[i], ranges)) driver = i;
    }
  }
  for (size_t i = 0; i < query.criteria.size(); ++i) {
    // the driver's condition is the criterion itself
    where += " AND " + (i == driver ? builder.DriverCond(query.criteria[i], "r", rid_after, b)
                                    : builder.CriterionCond(query.criteria[i], "r", b));
  }
  return where;
}

}  // namespace

Status ForEachMatchingRid(SqliteConnection& conn, const SearchQuery& query, const std::function<Status(int64_t)>& fn) {
  Binds b;
  SqlBuilder builder(query.types);
  size_t driver = 0;
  const std::string where = SearchWhere(query, "", 0, builder, &b, &driver);
  ASSIGN_OR_RETURN(auto q, PrepareSearchSql(conn, "SELECT r.rid FROM resources r WHERE " + where + " ORDER BY r.rid"));
  b.Apply(*q);
  while (true) {
    ASSIGN_OR_RETURN(bool row, q->Step());
    if (!row) return Status::Ok();
    RETURN_IF_ERROR(fn(q->Int(0)));
  }
}

Result<SearchResult> RunSearch(SqliteConnection& conn, const SearchQuery& query, std::string_view compartment_patient) {
  SearchResult out;
  std::optional<Cursor> cursor;
  const std::string fingerprint = SearchFingerprint(query, compartment_patient);
  if (!query.page.empty()) {
    ASSIGN_OR_RETURN(Cursor c, DecodeCursor(query.page, query.sort.size(), fingerprint));
    cursor = std::move(c);
  }
  Binds b;
  SqlBuilder builder(query.types);
  const int64_t rid_after = query.sort.empty() && cursor ? cursor->rid : 0;
  size_t driver = 0;
  const std::string where = SearchWhere(query, compartment_patient, rid_after, builder, &b, &driver);
  const bool have_driver = driver < query.criteria.size();
  // Total (first page only; later pages carry it in the cursor: the count of when the first page was served).
  std::optional<int64_t> total;
  if (cursor) {
    if (cursor->total >= 0) total = cursor->total;
  } else if (query.total != search::TotalMode::kNone || query.summary_count) {
    // One criterion that drove the search and no compartment: its index rows alone give the count.
    const bool index_only =
        have_driver && query.criteria.size() == 1 && query.criteria[0].chain.empty() && compartment_patient.empty();
    Binds cb;
    std::string count_sql =
        index_only ? builder.IndexOnlyCount(query.criteria[0], &cb) : "SELECT count(*) FROM resources r WHERE " + where;
    ASSIGN_OR_RETURN(auto n, PrepareSearchSql(conn, count_sql));
    (index_only ? cb : b).Apply(*n);
    ASSIGN_OR_RETURN(bool row, n->Step());
    total = row ? n->Int(0) : 0;
  }
  out.total = total;
  if (query.summary_count || query.count == 0) return out;

  // The page: keyset over (sort keys..., rid).
  std::string select = std::string("SELECT ") + kResourceRowColumns;
  std::vector<std::string> key_exprs;
  for (const auto& k : query.sort) key_exprs.push_back(SortExpr(k, query.types, &b));
  for (size_t i = 0; i < key_exprs.size(); ++i) select += ", " + key_exprs[i] + " AS k" + std::to_string(i);
  std::string sql = "SELECT * FROM (" + select + " FROM resources r WHERE " + where + ") r";
  if (cursor) {
    if (key_exprs.empty()) {
      sql += " WHERE r.rid>" + b.Int(cursor->rid);
    } else {
      std::string keyset;
      for (size_t i = 0; i <= key_exprs.size(); ++i) {
        std::string term;
        for (size_t j = 0; j < i; ++j) term += "r.k" + std::to_string(j) + "=" + KeySql(cursor->keys[j], &b) + " AND ";
        if (i == key_exprs.size()) {
          term += "r.rid>" + b.Int(cursor->rid);
        } else {
          term += "r.k" + std::to_string(i) + (query.sort[i].descending ? "<" : ">") + KeySql(cursor->keys[i], &b);
        }
        keyset += (keyset.empty() ? "(" : " OR (") + term + ")";
      }
      sql += " WHERE " + keyset;
    }
  }
  sql += " ORDER BY ";
  for (size_t i = 0; i < key_exprs.size(); ++i) {
    sql += "r.k" + std::to_string(i) + (query.sort[i].descending ? " DESC, " : ", ");
  }
  sql += "r.rid LIMIT " + b.Int(static_cast<int64_t>(query.count) + 1);
  ASSIGN_OR_RETURN(auto q, PrepareSearchSql(conn, sql));
  b.Apply(*q);
  std::vector<std::vector<KeyValue>> keys;
  while (true) {
    ASSIGN_OR_RETURN(bool row, q->Step());
    if (!row) break;
    out.matches.push_back(ReadResourceRow(*q));
    std::vector<KeyValue> kv;
    for (size_t i = 0; i < key_exprs.size(); ++i) {
      int col = 9 + static_cast<int>(i);
      KeyValue k;
      k.type = q->Type(col);
      if (k.type == SQLITE_INTEGER) k.i = q->Int(col);
      if (k.type == SQLITE_FLOAT) k.d = q->Double(col);
      if (k.type == SQLITE_TEXT || k.type == SQLITE_BLOB) k.s = q->Str(col);
      kv.push_back(std::move(k));
    }
    keys.push_back(std::move(kv));
  }
  q.reset();
  if (out.matches.size() > query.count) {
    out.matches.resize(query.count);
    Cursor next;
    next.total = total.value_or(-1);
    next.rid = out.matches.back().rid;
    next.keys = keys[query.count - 1];
    out.next_page = EncodeCursor(next, fingerprint);
    if (out.next_page.size() > (fhir::kMaxTextKeyBytes + 64) * 4 / 3) {
      return Status::Invalid(
          "Search parameter '_sort': a sort key of this search is too long to page through; sort on another "
          "parameter");
    }
  }
  if (!query.includes.empty() || !query.revincludes.empty()) {
    std::set<int64_t> seen;
    for (const auto& r : out.matches) seen.insert(r.rid);
    RETURN_IF_ERROR(AddIncludes(conn, query, out.matches, false, &seen, &out.included));
  }
  return out;
}

}  // namespace fhirlake::store
