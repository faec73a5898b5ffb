// JSON Patch (RFC 6902) and FHIRPath Patch over nlohmann::ordered_json. The resource is parsed into a document
// that keeps member order and the text of every non-integer number (so 1.50 stays 1.50: FHIR decimals carry
// their precision), edited, and written back minified. nlohmann exceptions stay inside this file.
#include "fhir/patch.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "common/json_escape.h"
#include "fhir/json_values.h"
#include "fhir/r4.h"

namespace fhirlake::fhir {
namespace {

using Json = nlohmann::ordered_json;

// A non-integer number (or an integer too big for 64 bits) is kept as its text, in a binary value with this
// subtype: JSON text never produces binary values, so nothing else can be mistaken for one.
constexpr std::uint64_t kDecimalSubtype = 0x44;

bool IsDecimal(const Json& v) { return v.is_binary() && v.get_binary().subtype() == kDecimalSubtype; }

std::string_view DecimalText(const Json& v) {
  const auto& bytes = v.get_binary();
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

Json MakeDecimal(std::string_view text) {
  return Json::binary(std::vector<std::uint8_t>(text.begin(), text.end()), kDecimalSubtype);
}

// --- JSON in and out ---

// Builds the document from nlohmann's SAX events: like its own DOM parser, but numbers with a fraction or
// exponent keep their text, duplicate keys are rejected (which one wins is arbitrary) and depth is bounded.
class ExactDomBuilder {
 public:
  explicit ExactDomBuilder(Json* root) : root_(root) {}

  bool null() { return Place(nullptr) != nullptr; }
  bool boolean(bool b) { return Place(b) != nullptr; }
  bool number_integer(Json::number_integer_t v) { return Place(v) != nullptr; }
  bool number_unsigned(Json::number_unsigned_t v) { return Place(v) != nullptr; }
  bool number_float(Json::number_float_t /*value*/, const Json::string_t& text) {
    return Place(MakeDecimal(text)) != nullptr;
  }
  bool string(Json::string_t& s) { return Place(std::move(s)) != nullptr; }
  bool binary(Json::binary_t& /*b*/) { return Fail("unexpected binary value"); }
  bool start_object(std::size_t /*size*/) { return Open(Json::object()); }
  bool key(Json::string_t& k) {
    Json& object = *stack_.back();
    if (object.contains(k)) return Fail("duplicate key " + JsonString(k));
    key_ = std::move(k);
    return true;
  }
  bool end_object() {
    stack_.pop_back();
    return true;
  }
  bool start_array(std::size_t /*size*/) { return Open(Json::array()); }
  bool end_array() {
    stack_.pop_back();
    return true;
  }
  bool parse_error(std::size_t /*position*/, const std::string& /*last_token*/, const nlohmann::detail::exception& e) {
    return Fail(e.what());
  }

  const std::string& error() const { return error_; }

 private:
  bool Fail(std::string message) {
    if (error_.empty()) error_ = std::move(message);
    return false;
  }
  // Stores `v` where the parser is (the root, the next array element, or the current key's member) and
  // returns where it went. Pointers on the stack stay valid: a container only grows after its open child closed.
  Json* Place(Json v) {
    if (stack_.empty()) {
      *root_ = std::move(v);
      return root_;
    }
    Json& parent = *stack_.back();
    if (parent.is_array()) {
      parent.push_back(std::move(v));
      return &parent.back();
    }
    auto [it, inserted] = parent.get_ref<Json::object_t&>().emplace(std::move(key_), std::move(v));
    return &it->second;
  }
  bool Open(Json container) {
    if (static_cast<int>(stack_.size()) >= kMaxJsonDepth) {
      return Fail("JSON nesting is deeper than " + std::to_string(kMaxJsonDepth) + " levels");
    }
    stack_.push_back(Place(std::move(container)));
    return true;
  }

  Json* root_;
  std::vector<Json*> stack_;
  std::string key_;
  std::string error_;
};

Result<Json> ParseJson(std::string_view text, std::string_view what) {
  Json doc;
  ExactDomBuilder builder(&doc);
  bool ok = false;
  try {
    ok = Json::sax_parse(text.begin(), text.end(), &builder);
  } catch (const std::exception& e) {
    return Status::Invalid(std::string(what) + " is not valid JSON: " + e.what());
  }
  if (!ok) {
    std::string error = builder.error().empty() ? "syntax error" : builder.error();
    return Status::Invalid(std::string(what) + " is not valid JSON: " + error);
  }
  return doc;
}

void WriteJson(const Json& v, std::string* out) {
  switch (v.type()) {
    case Json::value_t::object: {
      out->push_back('{');
      bool first = true;
      for (const auto& [key, member] : v.items()) {
        if (!first) out->push_back(',');
        first = false;
        AppendJsonString(out, key);
        out->push_back(':');
        WriteJson(member, out);
      }
      out->push_back('}');
      break;
    }
    case Json::value_t::array: {
      out->push_back('[');
      for (std::size_t i = 0; i < v.size(); ++i) {
        if (i > 0) out->push_back(',');
        WriteJson(v[i], out);
      }
      out->push_back(']');
      break;
    }
    case Json::value_t::string:
      AppendJsonString(out, v.get_ref<const std::string&>());
      break;
    case Json::value_t::binary:
      out->append(DecimalText(v));
      break;
    default:  // null, boolean, integers: nlohmann prints these exactly
      out->append(v.dump());
  }
}

std::string ToText(const Json& v) {
  std::string out;
  WriteJson(v, &out);
  return out;
}

bool IsNumber(const Json& v) { return v.is_number() || IsDecimal(v); }

// RFC 6902 4.6 equality: numbers by value, objects regardless of member order, arrays element by element.
bool JsonEqual(const Json& a, const Json& b) {
  if (IsNumber(a) && IsNumber(b)) {
    if (a.is_number_integer() && b.is_number_integer()) return a == b;  // exact, signed against unsigned too
    std::string ta = ToText(a), tb = ToText(b);
    return std::strtod(ta.c_str(), nullptr) == std::strtod(tb.c_str(), nullptr);
  }
  if (a.type() != b.type()) return false;
  if (a.is_object()) {
    if (a.size() != b.size()) return false;
    for (const auto& [key, member] : a.items()) {
      auto it = b.find(key);
      if (it == b.end() || !JsonEqual(member, *it)) return false;
    }
    return true;
  }
  if (a.is_array()) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i) {
      if (!JsonEqual(a[i], b[i])) return false;
    }
    return true;
  }
  return a == b;
}

// The patched resource must still be the same resource.
Status CheckIdentityKept(const Json& before, const Json& after) {
  if (!after.is_object()) return Status::Invalid("the patch must not replace the resource with a non-object");
  for (const char* member : {"resourceType", "id"}) {
    auto b = before.find(member);
    auto a = after.find(member);
    bool same = (b == before.end() && a == after.end()) || (b != before.end() && a != after.end() && JsonEqual(*b, *a));
    if (!same) return Status::Invalid(std::string("the patch must not change the resource's ") + member);
  }
  return Status::Ok();
}

Result<Json> ParseResource(std::string_view resource_json) {
  ASSIGN_OR_RETURN(Json resource, ParseJson(resource_json, "the resource"));
  if (!resource.is_object()) return Status::Invalid("the resource is not a JSON object");
  return resource;
}

// --- JSON Patch ---

// A parsed JSON Pointer (RFC 6901): its unescaped reference tokens.
using Pointer = std::vector<std::string>;

Result<Pointer> ParsePointer(std::string_view text) {
  Pointer tokens;
  if (text.empty()) return tokens;
  if (text.front() != '/') return Status::Invalid("a JSON Pointer must be empty or start with '/'");
  std::string token;
  for (std::size_t i = 1; i <= text.size(); ++i) {
    if (i == text.size() || text[i] == '/') {
      tokens.push_back(std::move(token));
      token.clear();
    } else if (text[i] == '~') {
      char next = i + 1 < text.size() ? text[i + 1] : '\0';
      if (next != '0' && next != '1') return Status::Invalid("'~' must be followed by '0' or '1' in a JSON Pointer");
      token.push_back(next == '0' ? '~' : '/');
      ++i;
    } else {
      token.push_back(text[i]);
    }
  }
  return tokens;
}

// An array index token: "0" or digits without a leading zero (RFC 6901 4); "-" is handled by the callers.
Result<std::size_t> ArrayIndex(const std::string& token, std::size_t size, bool allow_end) {
  if (token == "-") {
    if (allow_end) return size;
    return Status::Invalid("'-' (past the end of the array) names no existing element");
  }
  bool digits = !token.empty() && token.size() <= 9 && token.find_first_not_of("0123456789") == std::string::npos;
  if (!digits || (token.size() > 1 && token[0] == '0')) {
    return Status::Invalid("'" + token + "' is not an array index");
  }
  std::size_t index = std::stoul(token);
  if (index > size || (index == size && !allow_end)) {
    return Status::Invalid("array index " + token + " is out of range (the array has " + std::to_string(size) +
                           " elements)");
  }
  return index;
}

// The value `pointer` names, or kInvalid when it does not exist.
Result<Json*> Resolve(Json* doc, const Pointer& pointer) {
  Json* at = doc;
  for (const std::string& token : pointer) {
    if (at->is_object()) {
      auto it = at->find(token);
      if (it == at->end()) return Status::Invalid("member " + JsonString(token) + " does not exist");
      at = &*it;
    } else if (at->is_array()) {
      ASSIGN_OR_RETURN(std::size_t index, ArrayIndex(token, at->size(), /*allow_end=*/false));
      at = &(*at)[index];
    } else {
      return Status::Invalid("cannot descend into a " + std::string(at->type_name()) + " with " + JsonString(token));
    }
  }
  return at;
}

Status AddAt(Json* doc, const Pointer& path, Json value) {
  if (path.empty()) {
    *doc = std::move(value);
    return Status::Ok();
  }
  ASSIGN_OR_RETURN(Json * parent, Resolve(doc, Pointer(path.begin(), path.end() - 1)));
  const std::string& last = path.back();
  if (parent->is_object()) {
    (*parent)[last] = std::move(value);
  } else if (parent->is_array()) {
    ASSIGN_OR_RETURN(std::size_t index, ArrayIndex(last, parent->size(), /*allow_end=*/true));
    parent->insert(parent->begin() + static_cast<std::ptrdiff_t>(index), std::move(value));
  } else {
    return Status::Invalid("the parent is a " + std::string(parent->type_name()) + ", not an object or array");
  }
  return Status::Ok();
}

Result<Json> RemoveAt(Json* doc, const Pointer& path) {
  if (path.empty()) return Status::Invalid("cannot remove the whole document");
  ASSIGN_OR_RETURN(Json * target, Resolve(doc, path));
  Json removed = std::move(*target);
  Json* parent = Resolve(doc, Pointer(path.begin(), path.end() - 1)).value();  // exists: its child did
  if (parent->is_object()) {
    parent->erase(path.back());
  } else {
    parent->erase(static_cast<std::size_t>(std::stoul(path.back())));
  }
  return removed;
}

// `prefix` is a proper prefix of `path`: moving a value into its own child.
bool IsProperPrefix(const Pointer& prefix, const Pointer& path) {
  if (prefix.size() >= path.size()) return false;
  for (std::size_t i = 0; i < prefix.size(); ++i) {
    if (prefix[i] != path[i]) return false;
  }
  return true;
}

Result<std::string> MemberString(const Json& op, const char* name) {
  auto it = op.find(name);
  if (it == op.end()) return Status::Invalid(std::string("missing '") + name + "'");
  if (!it->is_string()) return Status::Invalid(std::string("'") + name + "' is not a string");
  return it->get<std::string>();
}

Status ApplyJsonPatchOperation(Json* doc, const Json& op) {
  if (!op.is_object()) return Status::Invalid("an operation must be a JSON object");
  ASSIGN_OR_RETURN(std::string name, MemberString(op, "op"));
  ASSIGN_OR_RETURN(std::string path_text, MemberString(op, "path"));
  Result<Pointer> parsed_path = ParsePointer(path_text);
  if (!parsed_path.ok()) return parsed_path.status().WithContext("'path'");
  const Pointer& path = *parsed_path;
  auto value = [&]() -> Result<Json> {
    auto it = op.find("value");
    if (it == op.end()) return Status::Invalid("missing 'value'");
    return *it;
  };
  auto from = [&]() -> Result<Pointer> {
    ASSIGN_OR_RETURN(std::string text, MemberString(op, "from"));
    Result<Pointer> pointer = ParsePointer(text);
    if (!pointer.ok()) return pointer.status().WithContext("'from'");
    return pointer;
  };
  if (name == "add") {
    ASSIGN_OR_RETURN(Json v, value());
    return AddAt(doc, path, std::move(v));
  }
  if (name == "remove") return RemoveAt(doc, path).status();
  if (name == "replace") {
    ASSIGN_OR_RETURN(Json v, value());
    ASSIGN_OR_RETURN(Json * target, Resolve(doc, path));
    *target = std::move(v);
    return Status::Ok();
  }
  if (name == "move") {
    ASSIGN_OR_RETURN(Pointer source, from());
    if (IsProperPrefix(source, path)) return Status::Invalid("cannot move a value into one of its own children");
    ASSIGN_OR_RETURN(Json v, RemoveAt(doc, source));
    return AddAt(doc, path, std::move(v));
  }
  if (name == "copy") {
    ASSIGN_OR_RETURN(Pointer source, from());
    ASSIGN_OR_RETURN(Json * v, Resolve(doc, source));
    return AddAt(doc, path, *v);
  }
  if (name == "test") {
    ASSIGN_OR_RETURN(Json expected, value());
    ASSIGN_OR_RETURN(Json * actual, Resolve(doc, path));
    if (!JsonEqual(*actual, expected)) {
      return Status::Invalid("test failed: the value is " + ToText(*actual) + ", not " + ToText(expected));
    }
    return Status::Ok();
  }
  return Status::Invalid("unknown op " + JsonString(name) + " (expected add, remove, replace, move, copy or test)");
}

}  // namespace

Result<std::string> ApplyJsonPatch(std::string_view resource_json, std::string_view patch_json) {
  ASSIGN_OR_RETURN(Json resource, ParseResource(resource_json));
  ASSIGN_OR_RETURN(Json patch, ParseJson(patch_json, "the JSON Patch"));
  if (!patch.is_array()) return Status::Invalid("a JSON Patch must be a JSON array of operations");
  Json doc = resource;
  for (std::size_t i = 0; i < patch.size(); ++i) {
    Status st = ApplyJsonPatchOperation(&doc, patch[i]);
    if (!st.ok()) {
      std::string where = "JSON Patch operation " + std::to_string(i);
      if (patch[i].is_object()) {
        auto op = patch[i].find("op");
        auto path = patch[i].find("path");
        if (op != patch[i].end() && op->is_string()) where += " (" + op->get<std::string>();
        if (op != patch[i].end() && op->is_string() && path != patch[i].end() && path->is_string()) {
          where += " at " + JsonString(path->get<std::string>()) + ")";
        } else if (op != patch[i].end() && op->is_string()) {
          where += ")";
        }
      }
      return st.WithContext(where);
    }
  }
  RETURN_IF_ERROR(CheckIdentityKept(resource, doc));
  return ToText(doc);
}

namespace {

// --- FHIRPath Patch: the path subset ---

// `path = literal` inside where(); path is one or more member names, literal a string, number or boolean.
struct Equality {
  std::vector<std::string> path;
  Json literal;
};

struct PathStep {
  enum class Kind { kMember, kIndex, kFirst, kLast, kWhere };
  Kind kind = Kind::kMember;
  std::string member;
  std::size_t index = 0;
  std::vector<Equality> where;  // all must hold
};

struct FhirPath {
  std::string root;  // the resource type
  std::vector<PathStep> steps;
};

class PathParser {
 public:
  explicit PathParser(std::string_view text) : text_(text) {}

  Result<FhirPath> Parse() {
    FhirPath path;
    SkipSpaces();
    ASSIGN_OR_RETURN(path.root, Identifier());
    while (true) {
      SkipSpaces();
      if (AtEnd()) break;
      if (Peek() == '[') {
        ++pos_;
        SkipSpaces();
        PathStep step;
        step.kind = PathStep::Kind::kIndex;
        ASSIGN_OR_RETURN(step.index, Integer());
        RETURN_IF_ERROR(Expect(']'));
        path.steps.push_back(std::move(step));
        continue;
      }
      if (Peek() != '.') return Error("expected '.' or '['");
      ++pos_;
      ASSIGN_OR_RETURN(std::string name, Identifier());
      SkipSpaces();
      if (Peek() != '(') {
        PathStep step;
        step.member = std::move(name);
        path.steps.push_back(std::move(step));
        continue;
      }
      ++pos_;
      if (name == "where") {
        PathStep step;
        step.kind = PathStep::Kind::kWhere;
        ASSIGN_OR_RETURN(step.where, Criteria());
        path.steps.push_back(std::move(step));
      } else if (name == "first" || name == "last") {
        PathStep step;
        step.kind = name == "first" ? PathStep::Kind::kFirst : PathStep::Kind::kLast;
        path.steps.push_back(std::move(step));
      } else {
        return Error("unsupported function " + name + "() (supported: where, first, last)");
      }
      RETURN_IF_ERROR(Expect(')'));
    }
    return path;
  }

 private:
  bool AtEnd() const { return pos_ >= text_.size(); }
  char Peek() const { return AtEnd() ? '\0' : text_[pos_]; }
  void SkipSpaces() {
    while (!AtEnd() && (Peek() == ' ' || Peek() == '\t' || Peek() == '\n' || Peek() == '\r')) ++pos_;
  }
  Status Error(std::string_view what) const {
    return Status::Invalid("bad path " + JsonString(text_) + " at offset " + std::to_string(pos_) + ": " +
                           std::string(what));
  }
  Status Expect(char c) {
    SkipSpaces();
    if (Peek() != c) return Error(std::string("expected '") + c + "'");
    ++pos_;
    return Status::Ok();
  }
  static bool IsIdentifierStart(char c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_'; }
  Result<std::string> Identifier() {
    SkipSpaces();
    if (!IsIdentifierStart(Peek())) return Error("expected an element name");
    std::size_t start = pos_;
    while (!AtEnd() && (IsIdentifierStart(Peek()) || (Peek() >= '0' && Peek() <= '9'))) ++pos_;
    return std::string(text_.substr(start, pos_ - start));
  }
  Result<std::size_t> Integer() {
    std::size_t start = pos_;
    while (!AtEnd() && Peek() >= '0' && Peek() <= '9') ++pos_;
    if (pos_ == start || pos_ - start > 9) return Error("expected an index");
    return static_cast<std::size_t>(std::stoul(std::string(text_.substr(start, pos_ - start))));
  }
  Result<Json> Literal() {
    SkipSpaces();
    if (Peek() == '\'') {
      std::string value;
      for (++pos_; !AtEnd() && Peek() != '\''; ++pos_) {
        char c = Peek();
        if (c == '\\') {
          ++pos_;
          switch (Peek()) {
            case '\'':
            case '"':
            case '`':
            case '\\':
            case '/':
              value.push_back(Peek());
              break;
            case 'n':
              value.push_back('\n');
              break;
            case 't':
              value.push_back('\t');
              break;
            case 'r':
              value.push_back('\r');
              break;
            case 'f':
              value.push_back('\f');
              break;
            default:
              return Error("unsupported escape in a string literal");
          }
        } else {
          value.push_back(c);
        }
      }
      if (AtEnd()) return Error("unterminated string literal");
      ++pos_;
      return Json(std::move(value));
    }
    for (std::string_view word : {"true", "false"}) {
      if (text_.substr(pos_, word.size()) == word) {
        pos_ += word.size();
        return Json(word == "true");
      }
    }
    std::size_t start = pos_;
    if (Peek() == '-') ++pos_;
    std::size_t digits = pos_;
    while (!AtEnd() && Peek() >= '0' && Peek() <= '9') ++pos_;
    if (pos_ == digits) return Error("expected a literal ('string', number, true or false)");
    bool fraction = Peek() == '.';
    if (fraction) {
      ++pos_;
      std::size_t fraction_digits = pos_;
      while (!AtEnd() && Peek() >= '0' && Peek() <= '9') ++pos_;
      if (pos_ == fraction_digits) return Error("expected digits after '.'");
    }
    std::string_view number = text_.substr(start, pos_ - start);
    if (fraction || pos_ - digits > 18) return MakeDecimal(number);
    return Json(static_cast<std::int64_t>(std::stoll(std::string(number))));
  }
  // The inside of where(...): equalities joined by `and`; the caller consumes the ')'.
  Result<std::vector<Equality>> Criteria() {
    std::vector<Equality> all;
    while (true) {
      Equality eq;
      ASSIGN_OR_RETURN(std::string first, Identifier());
      eq.path.push_back(std::move(first));
      SkipSpaces();
      while (Peek() == '.') {
        ++pos_;
        ASSIGN_OR_RETURN(std::string next, Identifier());
        eq.path.push_back(std::move(next));
        SkipSpaces();
      }
      if (Peek() != '=') return Error("where() supports only `element = literal`, joined by `and`");
      ++pos_;
      ASSIGN_OR_RETURN(eq.literal, Literal());
      all.push_back(std::move(eq));
      SkipSpaces();
      if (text_.substr(pos_, 3) == "and" && pos_ + 3 < text_.size() &&
          (text_[pos_ + 3] == ' ' || text_[pos_ + 3] == '\t')) {
        pos_ += 3;
        continue;
      }
      return all;
    }
  }

  std::string_view text_;
  std::size_t pos_ = 0;
};

// --- FHIRPath Patch: evaluation against the document ---

// One element a path selected, and where it sits, so an operation can replace or remove it.
struct Node {
  Json* value = nullptr;
  Json* container = nullptr;         // the object holding it; nullptr for the resource itself
  std::string member;                // its JSON name in `container`
  std::optional<std::size_t> index;  // its position when the member is an array
  ElementShape shape;                // what the element is
  int up = -1;                       // the arena index of the node of `container`; -1 for the resource
};

// The shape of an object element's members: its complex type, or for a resource its resourceType's.
ShapeContext MembersShape(const Node& node) {
  if (node.shape.kind == ShapeKind::kComplex) return node.shape.context;
  if (node.shape.kind == ShapeKind::kResource && node.value->is_object()) {
    auto type = node.value->find("resourceType");
    if (type != node.value->end() && type->is_string()) return ResourceShape(type->get<std::string>());
  }
  return kUnknownShape;
}

// The member `name` of an element of `context`. A choice element may be named without its type ("deceased",
// "value"): the type then comes from the key of the value (valueBoolean -> deceasedBoolean).
Result<std::pair<std::string, ElementShape>> ResolveMember(ShapeContext context, const std::string& name,
                                                           std::string_view value_key) {
  if (context == kUnknownShape) return Status::Invalid("cannot resolve " + JsonString(name) + ": unknown type");
  ElementShape shape = MemberShape(context, name);
  if (shape.kind != ShapeKind::kUnknown) return std::pair(name, shape);
  if (value_key.size() > 5 && value_key.starts_with("value")) {
    std::string choice = name + std::string(value_key.substr(5));
    shape = MemberShape(context, choice);
    if (shape.kind != ShapeKind::kUnknown) return std::pair(choice, shape);
  }
  return Status::Invalid(JsonString(name) + " is not an element of " + std::string(ShapeName(context)));
}

// A value part's value[x] member, if it has one.
Result<std::optional<std::pair<std::string, const Json*>>> ValueX(const Json& part) {
  std::optional<std::pair<std::string, const Json*>> found;
  for (const auto& [key, value] : part.items()) {
    if (key.size() <= 5 || !key.starts_with("value")) continue;
    if (found) return Status::Invalid("a part has both " + found->first + " and " + key);
    found = std::pair(key, &value);
  }
  return found;
}

bool IsQuantityProfile(std::string_view type) {
  return type == "Age" || type == "Count" || type == "Distance" || type == "Duration" || type == "SimpleQuantity" ||
         type == "MoneyQuantity";
}

// The JSON for `part` (a `value` part, or a nested part of one), as the element of shape `target`.
Result<Json> BuildValue(const Json& part, const ElementShape& target, std::string_view element) {
  ASSIGN_OR_RETURN(auto value_x, ValueX(part));
  auto resource = part.find("resource");
  auto parts = part.find("part");
  int kinds = (value_x ? 1 : 0) + (resource != part.end() ? 1 : 0) + (parts != part.end() ? 1 : 0);
  if (kinds != 1) {
    return Status::Invalid("the value for " + std::string(element) +
                           " must have exactly one of value[x], resource or part");
  }
  if (resource != part.end()) {
    if (target.kind != ShapeKind::kResource) return Status::Invalid(std::string(element) + " is not a resource");
    if (!resource->is_object()) return Status::Invalid("a part's resource must be a JSON object");
    return *resource;
  }
  if (value_x) {
    const auto& [key, value] = *value_x;
    std::string type = key.substr(5);
    if (target.kind == ShapeKind::kPrimitive) {
      if (value->is_object() || value->is_array() || value->is_null()) {
        return Status::Invalid(std::string(element) + " is a primitive, but " + key + " is not");
      }
      return *value;
    }
    if (target.kind != ShapeKind::kComplex) {
      return Status::Invalid(std::string(element) + " needs a resource, not " + key);
    }
    if (!value->is_object()) return Status::Invalid(std::string(element) + " is a complex element, " + key + " is not");
    ShapeContext given = DataTypeShape(type);
    std::string_view wanted = ShapeName(target.context);
    if (given != target.context && !(wanted == "Quantity" && IsQuantityProfile(type))) {
      if (wanted.find('.') != std::string_view::npos) {
        return Status::Invalid(std::string(element) + " is a backbone element: give its value as parts");
      }
      return Status::Invalid(std::string(element) + " is a " + std::string(wanted) + ", not a " + type);
    }
    return *value;
  }
  // Parts: a complex value built member by member.
  if (target.kind != ShapeKind::kComplex) {
    return Status::Invalid(std::string(element) + " is not a complex element: it cannot be built from parts");
  }
  if (!parts->is_array()) return Status::Invalid("'part' must be an array");
  Json object = Json::object();
  for (const Json& sub : *parts) {
    if (!sub.is_object()) return Status::Invalid("a part must be a JSON object");
    auto name = sub.find("name");
    if (name == sub.end() || !name->is_string()) return Status::Invalid("a part has no name");
    ASSIGN_OR_RETURN(auto sub_key, ValueX(sub));
    ASSIGN_OR_RETURN(auto member,
                     ResolveMember(target.context, name->get<std::string>(), sub_key ? sub_key->first : ""));
    std::string sub_element = std::string(element) + "." + member.first;
    ASSIGN_OR_RETURN(Json value, BuildValue(sub, member.second, sub_element));
    auto existing = object.find(member.first);
    if (member.second.repeating) {
      if (existing == object.end()) existing = object.emplace(member.first, Json::array()).first;
      existing->push_back(std::move(value));
    } else if (existing != object.end()) {
      return Status::Invalid(sub_element + " does not repeat but is given twice");
    } else {
      object.emplace(member.first, std::move(value));
    }
  }
  return object;
}

// Keeps a primitive array's `_name` sibling (ids and extensions, position by position) in step with it.
Json* ParallelArray(Json* container, const std::string& member, std::size_t size) {
  auto it = container->find("_" + member);
  if (it == container->end() || !it->is_array() || it->size() != size) return nullptr;
  return &*it;
}

class FhirPathPatcher {
 public:
  FhirPathPatcher(Json* doc, std::string resource_type) : doc_(doc), resource_type_(std::move(resource_type)) {}

  Status Apply(const Json& operation) {
    if (!operation.is_object()) return Status::Invalid("a parameter must be a JSON object");
    auto name = operation.find("name");
    if (name == operation.end() || *name != "operation") {
      return Status::Invalid("every parameter of a FHIRPath Patch must be named 'operation'");
    }
    auto parts = operation.find("part");
    if (parts == operation.end() || !parts->is_array()) return Status::Invalid("the operation has no parts");
    Operation op;
    for (const Json& part : *parts) RETURN_IF_ERROR(ReadPart(part, &op));
    if (!op.type) return Status::Invalid("the operation has no 'type' part");
    if (!op.path) return Status::Invalid("the operation has no 'path' part");
    ASSIGN_OR_RETURN(FhirPath path, PathParser(*op.path).Parse());
    if (path.root != resource_type_) {
      return Status::Invalid("the path must start with the resource type " + resource_type_ + ", not " + path.root);
    }
    const std::string& type = *op.type;
    if (type == "add") {
      if (!op.name) return Status::Invalid("add needs a 'name' part");
      if (!op.value) return Status::Invalid("add needs a 'value' part");
      return Add(path, *op.name, *op.value);
    }
    if (type == "insert") {
      if (!op.index) return Status::Invalid("insert needs an 'index' part");
      if (!op.value) return Status::Invalid("insert needs a 'value' part");
      return Insert(path, *op.index, *op.value);
    }
    if (type == "delete") return Delete(path);
    if (type == "replace") {
      if (!op.value) return Status::Invalid("replace needs a 'value' part");
      return Replace(path, *op.value);
    }
    if (type == "move") {
      if (!op.source || !op.destination) return Status::Invalid("move needs 'source' and 'destination' parts");
      return Move(path, *op.source, *op.destination);
    }
    return Status::Invalid("unknown operation type " + JsonString(type) +
                           " (expected add, insert, delete, replace or move)");
  }

 private:
  struct Operation {
    std::optional<std::string> type, path, name;
    const Json* value = nullptr;
    std::optional<std::size_t> index, source, destination;
  };

  static Status ReadPart(const Json& part, Operation* op) {
    if (!part.is_object()) return Status::Invalid("a part must be a JSON object");
    auto name_it = part.find("name");
    if (name_it == part.end() || !name_it->is_string()) return Status::Invalid("a part has no name");
    const std::string& name = name_it->get_ref<const std::string&>();
    ASSIGN_OR_RETURN(auto value_x, ValueX(part));
    auto text = [&](std::optional<std::string>* out) -> Status {
      if (*out) return Status::Invalid("the operation has two '" + name + "' parts");
      if (!value_x || !value_x->second->is_string()) return Status::Invalid("'" + name + "' must be a string");
      *out = value_x->second->get<std::string>();
      return Status::Ok();
    };
    auto count = [&](std::optional<std::size_t>* out) -> Status {
      if (*out) return Status::Invalid("the operation has two '" + name + "' parts");
      if (!value_x || !value_x->second->is_number_integer() || *value_x->second < 0) {
        return Status::Invalid("'" + name + "' must be a non-negative integer");
      }
      *out = value_x->second->get<std::size_t>();
      return Status::Ok();
    };
    if (name == "type") return text(&op->type);
    if (name == "path") return text(&op->path);
    if (name == "name") return text(&op->name);
    if (name == "index") return count(&op->index);
    if (name == "source") return count(&op->source);
    if (name == "destination") return count(&op->destination);
    if (name == "value") {
      if (op->value != nullptr) return Status::Invalid("the operation has two 'value' parts");
      op->value = &part;
      return Status::Ok();
    }
    return Status::Invalid("unknown part " + JsonString(name));
  }

  // The arena indices of the nodes `steps` select, starting at the resource.
  Result<std::vector<int>> Evaluate(std::span<const PathStep> steps) {
    nodes_.clear();
    Node root;
    root.value = doc_;
    root.shape = {ShapeKind::kResource, false, kUnknownShape};
    nodes_.push_back(std::move(root));
    std::vector<int> current = {0};
    for (const PathStep& step : steps) {
      std::vector<int> next;
      switch (step.kind) {
        case PathStep::Kind::kMember:
          for (int i : current) {
            if (!nodes_[i].value->is_object()) continue;  // primitives have no members here
            ShapeContext context = MembersShape(nodes_[i]);
            ASSIGN_OR_RETURN(auto member, ResolveMember(context, step.member, ""));
            Json* container = nodes_[i].value;
            auto it = container->find(member.first);
            if (it == container->end()) continue;
            if (it->is_array()) {
              for (std::size_t k = 0; k < it->size(); ++k) {
                nodes_.push_back(Node{&(*it)[k], container, member.first, k, member.second, i});
                next.push_back(static_cast<int>(nodes_.size()) - 1);
              }
            } else {
              nodes_.push_back(Node{&*it, container, member.first, std::nullopt, member.second, i});
              next.push_back(static_cast<int>(nodes_.size()) - 1);
            }
          }
          break;
        case PathStep::Kind::kIndex:
          if (step.index < current.size()) next.push_back(current[step.index]);
          break;
        case PathStep::Kind::kFirst:
          if (!current.empty()) next.push_back(current.front());
          break;
        case PathStep::Kind::kLast:
          if (!current.empty()) next.push_back(current.back());
          break;
        case PathStep::Kind::kWhere:
          for (int i : current) {
            if (Matches(*nodes_[i].value, step.where)) next.push_back(i);
          }
          break;
      }
      current = std::move(next);
    }
    return current;
  }

  static bool Matches(const Json& element, const std::vector<Equality>& criteria) {
    for (const Equality& eq : criteria) {
      std::vector<const Json*> values = {&element};
      for (const std::string& name : eq.path) {
        std::vector<const Json*> next;
        for (const Json* v : values) {
          if (!v->is_object()) continue;
          auto it = v->find(name);
          if (it == v->end()) continue;
          if (it->is_array()) {
            for (const Json& item : *it) next.push_back(&item);
          } else {
            next.push_back(&*it);
          }
        }
        values = std::move(next);
      }
      // FHIRPath `=`: a collection of one equals the literal; an empty or longer one does not.
      if (values.size() != 1 || !JsonEqual(*values.front(), eq.literal)) return false;
    }
    return true;
  }

  Result<int> EvaluateOne(std::span<const PathStep> steps) {
    ASSIGN_OR_RETURN(std::vector<int> nodes, Evaluate(steps));
    if (nodes.empty()) return Status::Invalid("the path matches nothing");
    if (nodes.size() > 1) {
      return Status::Invalid("the path matches " + std::to_string(nodes.size()) + " elements, not one");
    }
    return nodes.front();
  }

  // The list (a repeating member) the path names: its last step is the member, the rest selects one element.
  struct List {
    Json* container;
    std::string member;
    ElementShape shape;  // of one item
    Json* array;
  };
  Result<List> EvaluateList(const FhirPath& path) {
    if (path.steps.empty() || path.steps.back().kind != PathStep::Kind::kMember) {
      return Status::Invalid("the path must end with the name of a repeating element");
    }
    std::span<const PathStep> steps(path.steps);
    ASSIGN_OR_RETURN(int owner, EvaluateOne(steps.first(steps.size() - 1)));
    if (!nodes_[owner].value->is_object()) return Status::Invalid("the path matches nothing");
    ASSIGN_OR_RETURN(auto member, ResolveMember(MembersShape(nodes_[owner]), path.steps.back().member, ""));
    if (!member.second.repeating) return Status::Invalid(JsonString(member.first) + " is not a repeating element");
    Json* container = nodes_[owner].value;
    auto it = container->find(member.first);
    if (it == container->end() || !it->is_array()) return Status::Invalid("the path matches nothing");
    return List{container, member.first, member.second, &*it};
  }

  Status Add(const FhirPath& path, const std::string& name, const Json& value_part) {
    ASSIGN_OR_RETURN(int target, EvaluateOne(path.steps));
    if (!nodes_[target].value->is_object()) return Status::Invalid("cannot add an element to a primitive");
    ASSIGN_OR_RETURN(auto value_key, ValueX(value_part));
    ASSIGN_OR_RETURN(auto member, ResolveMember(MembersShape(nodes_[target]), name, value_key ? value_key->first : ""));
    ASSIGN_OR_RETURN(Json value, BuildValue(value_part, member.second, member.first));
    Json* container = nodes_[target].value;
    auto it = container->find(member.first);
    if (member.second.repeating) {
      if (it == container->end()) {
        Json list = Json::array();
        list.push_back(std::move(value));
        (*container)[member.first] = std::move(list);
        return Status::Ok();
      }
      if (!it->is_array()) return Status::Invalid(JsonString(member.first) + " repeats but is not a JSON array");
      if (Json* parallel = ParallelArray(container, member.first, it->size())) parallel->push_back(nullptr);
      it->push_back(std::move(value));
      return Status::Ok();
    }
    if (it != container->end()) {
      return Status::Invalid(JsonString(member.first) + " does not repeat and already has a value (use replace)");
    }
    (*container)[member.first] = std::move(value);
    return Status::Ok();
  }

  Status Insert(const FhirPath& path, std::size_t index, const Json& value_part) {
    ASSIGN_OR_RETURN(List list, EvaluateList(path));
    std::size_t size = list.array->size();
    if (index > size) {
      return Status::Invalid("index " + std::to_string(index) + " is out of range (the list has " +
                             std::to_string(size) + " elements)");
    }
    ASSIGN_OR_RETURN(Json value, BuildValue(value_part, list.shape, list.member));
    if (Json* parallel = ParallelArray(list.container, list.member, size)) {
      parallel->insert(parallel->begin() + static_cast<std::ptrdiff_t>(index), nullptr);
    }
    list.array->insert(list.array->begin() + static_cast<std::ptrdiff_t>(index), std::move(value));
    return Status::Ok();
  }

  Status Delete(const FhirPath& path) {
    ASSIGN_OR_RETURN(std::vector<int> nodes, Evaluate(path.steps));
    if (nodes.empty()) return Status::Ok();  // the spec: deleting what is not there is no error
    if (nodes.size() > 1) {
      return Status::Invalid("the path matches " + std::to_string(nodes.size()) + " elements, not one");
    }
    if (nodes.front() == 0) return Status::Invalid("cannot delete the resource itself");
    Remove(nodes.front());
    return Status::Ok();
  }

  // Removes a node's element, its `_name` sibling, and containers that it leaves empty (FHIR JSON has no empty
  // objects or arrays). Only names are used after an erase: erasing moves an object's later members.
  void Remove(int n) {
    const Node& node = nodes_[n];
    Json* container = node.container;
    if (node.index) {
      Json& list = container->at(node.member);
      Json* parallel = ParallelArray(container, node.member, list.size());
      list.erase(*node.index);
      bool list_empty = list.empty();
      bool parallel_empty = false;
      if (parallel != nullptr) {
        parallel->erase(*node.index);
        parallel_empty = std::all_of(parallel->begin(), parallel->end(), [](const Json& v) { return v.is_null(); });
      }
      if (list_empty) container->erase(node.member);
      if (parallel_empty) container->erase("_" + node.member);
    } else {
      container->erase(node.member);
      if (node.shape.kind == ShapeKind::kPrimitive) container->erase("_" + node.member);
    }
    if (node.up > 0 && container->empty()) Remove(node.up);
  }

  Status Replace(const FhirPath& path, const Json& value_part) {
    ASSIGN_OR_RETURN(int n, EvaluateOne(path.steps));
    if (n == 0) return Status::Invalid("cannot replace the resource itself");
    ASSIGN_OR_RETURN(Json value, BuildValue(value_part, nodes_[n].shape, nodes_[n].member));
    *nodes_[n].value = std::move(value);
    return Status::Ok();
  }

  Status Move(const FhirPath& path, std::size_t source, std::size_t destination) {
    ASSIGN_OR_RETURN(List list, EvaluateList(path));
    std::size_t size = list.array->size();
    if (source >= size || destination >= size) {
      return Status::Invalid("source " + std::to_string(source) + " or destination " + std::to_string(destination) +
                             " is out of range (the list has " + std::to_string(size) + " elements)");
    }
    auto move_within = [&](Json* array) {
      Json v = std::move((*array)[source]);
      array->erase(source);
      array->insert(array->begin() + static_cast<std::ptrdiff_t>(destination), std::move(v));
    };
    Json* parallel = ParallelArray(list.container, list.member, size);
    move_within(list.array);
    if (parallel != nullptr) move_within(parallel);
    return Status::Ok();
  }

  Json* doc_;
  std::string resource_type_;
  std::vector<Node> nodes_;  // of the last evaluation; indices are stable while it grows
};

// "FHIRPath Patch operation 2 (replace at 'Patient.name')", with what of type and path is readable.
std::string OperationLabel(const Json& operation, std::size_t i) {
  std::string label = "FHIRPath Patch operation " + std::to_string(i);
  std::string type, path;
  auto parts = operation.is_object() ? operation.find("part") : operation.end();
  if (parts != operation.end() && parts->is_array()) {
    for (const Json& part : *parts) {
      if (!part.is_object()) continue;
      auto name = part.find("name");
      if (name == part.end()) continue;
      for (const char* key : {"valueCode", "valueString"}) {
        auto v = part.find(key);
        if (v == part.end() || !v->is_string()) continue;
        if (*name == "type") type = v->get<std::string>();
        if (*name == "path") path = v->get<std::string>();
      }
    }
  }
  if (!type.empty() || !path.empty()) {
    label += " (" + (type.empty() ? std::string("?") : type);
    if (!path.empty()) label += " at " + JsonString(path);
    label += ")";
  }
  return label;
}

}  // namespace

Result<std::string> ApplyFhirPathPatch(std::string_view resource_json, std::string_view parameters_json) {
  ASSIGN_OR_RETURN(Json resource, ParseResource(resource_json));
  auto type = resource.find("resourceType");
  if (type == resource.end() || !type->is_string() || ResourceShape(type->get<std::string>()) == kUnknownShape) {
    return Status::Invalid("the resource has no R4 resourceType");
  }
  ASSIGN_OR_RETURN(Json parameters, ParseJson(parameters_json, "the FHIRPath Patch"));
  if (!parameters.is_object() || parameters.value("resourceType", Json()) != "Parameters") {
    return Status::Invalid("a FHIRPath Patch must be a Parameters resource");
  }
  Json doc = resource;
  auto operations = parameters.find("parameter");
  if (operations != parameters.end()) {
    if (!operations->is_array()) return Status::Invalid("Parameters.parameter must be an array");
    FhirPathPatcher patcher(&doc, type->get<std::string>());
    for (std::size_t i = 0; i < operations->size(); ++i) {
      Status st = patcher.Apply((*operations)[i]);
      if (!st.ok()) return st.WithContext(OperationLabel((*operations)[i], i));
    }
  }
  RETURN_IF_ERROR(CheckIdentityKept(resource, doc));
  return ToText(doc);
}

}  // namespace fhirlake::fhir
