// The FHIRPath subset of search/fhirpath.h: a recursive-descent parser (mirrored by tools/gen_search_params.py,
// which decides which definitions are supported) into a flat expression array, and a tree-walking evaluator.
#include "search/fhirpath.h"

#include <array>
#include <optional>
#include <span>
#include <utility>

#include "fhir/r4.h"

namespace fhirlake::search {
namespace {

using Op = FhirPath::Op;
using Expr = FhirPath::Expr;
using Kind = PathNode::Kind;

constexpr std::array<std::string_view, 19> kPrimitives = {
    "base64Binary", "boolean", "canonical",   "code",   "date", "dateTime",    "decimal", "id",  "instant", "integer",
    "markdown",     "oid",     "positiveInt", "string", "time", "unsignedInt", "uri",     "url", "uuid"};

bool IsPrimitiveName(std::string_view name) {
  for (std::string_view p : kPrimitives) {
    if (p == name) return true;
  }
  return false;
}

bool IsUpper(char c) { return c >= 'A' && c <= 'Z'; }

// "DateTime" (as some definitions write it) names the primitive dateTime.
std::string CanonicalTypeName(std::string_view name) {
  std::string s(name);
  if (!s.empty() && IsUpper(s[0])) {
    std::string lower = s;
    lower[0] = static_cast<char>(lower[0] - 'A' + 'a');
    if (IsPrimitiveName(lower)) return lower;
  }
  return s;
}

// The type a choice member's JSON name implies when the element table does not know the context
// ("valueQuantity" → Quantity, "valueString" → string).
std::string_view InferChoiceType(std::string_view suffix) {
  for (std::string_view p : kPrimitives) {
    if (p.size() == suffix.size() && (p[0] - 'a' + 'A') == suffix[0] && p.substr(1) == suffix.substr(1)) return p;
  }
  return suffix;
}

enum class Tok : uint8_t { kString, kNumber, kVar, kIdent, kOp, kEnd };
struct Token {
  Tok kind;
  std::string_view text;
};

}  // namespace

class FhirPathParser {
 public:
  FhirPathParser(std::string_view text, FhirPath& path) : text_(text), path_(path) {}

  Status Parse() {
    RETURN_IF_ERROR(Tokenize());
    int root = 0;
    RETURN_IF_ERROR(ParseAnd(root));
    if (Peek().kind != Tok::kEnd) return Error("unexpected '" + std::string(Peek().text) + "'");
    path_.root_ = root;
    return Status::Ok();
  }

 private:
  Status Error(std::string what) const {
    return Status::Invalid("FHIRPath '" + std::string(text_) + "': " + std::move(what));
  }

  Status Tokenize() {
    size_t i = 0;
    while (true) {
      while (i < text_.size() && (text_[i] == ' ' || text_[i] == '\t' || text_[i] == '\n' || text_[i] == '\r')) ++i;
      if (i == text_.size()) break;
      const char c = text_[i];
      const size_t start = i;
      if (c == '\'') {
        ++i;
        while (i < text_.size() && text_[i] != '\'') i += text_[i] == '\\' ? 2 : 1;
        if (i >= text_.size()) return Error("unterminated string");
        ++i;
        tokens_.push_back({Tok::kString, text_.substr(start, i - start)});
      } else if (c >= '0' && c <= '9') {
        while (i < text_.size() && text_[i] >= '0' && text_[i] <= '9') ++i;
        if (i + 1 < text_.size() && text_[i] == '.' && text_[i + 1] >= '0' && text_[i + 1] <= '9') {
          ++i;
          while (i < text_.size() && text_[i] >= '0' && text_[i] <= '9') ++i;
        }
        tokens_.push_back({Tok::kNumber, text_.substr(start, i - start)});
      } else if (c == '%' || c == '_' || IsUpper(c) || (c >= 'a' && c <= 'z')) {
        ++i;
        if (c == '%' && (i == text_.size() || !(IsUpper(text_[i]) || (text_[i] >= 'a' && text_[i] <= 'z')))) {
          return Error("bad variable");
        }
        while (i < text_.size() && (text_[i] == '_' || IsUpper(text_[i]) || (text_[i] >= 'a' && text_[i] <= 'z') ||
                                    (text_[i] >= '0' && text_[i] <= '9'))) {
          ++i;
        }
        tokens_.push_back({c == '%' ? Tok::kVar : Tok::kIdent, text_.substr(start, i - start)});
      } else if (c == '!' && i + 1 < text_.size() && text_[i + 1] == '=') {
        i += 2;
        tokens_.push_back({Tok::kOp, text_.substr(start, 2)});
      } else if (c == '.' || c == '(' || c == ')' || c == '[' || c == ']' || c == '|' || c == '=' || c == ',') {
        ++i;
        tokens_.push_back({Tok::kOp, text_.substr(start, 1)});
      } else {
        return Error("unexpected character '" + std::string(1, c) + "'");
      }
    }
    tokens_.push_back({Tok::kEnd, {}});
    return Status::Ok();
  }

  const Token& Peek() const { return tokens_[pos_]; }
  bool PeekIs(std::string_view v) const {
    return (Peek().kind == Tok::kOp || Peek().kind == Tok::kIdent) && Peek().text == v;
  }
  bool PeekNextIs(std::string_view v) const {
    return pos_ + 1 < tokens_.size() && tokens_[pos_ + 1].kind == Tok::kOp && tokens_[pos_ + 1].text == v;
  }
  Token Take() { return tokens_[pos_ < tokens_.size() - 1 ? pos_++ : pos_]; }
  Status Expect(std::string_view v) {
    if (!PeekIs(v)) return Error("expected '" + std::string(v) + "'");
    ++pos_;
    return Status::Ok();
  }

  int Add(Expr e) {
    path_.exprs_.push_back(std::move(e));
    return static_cast<int>(path_.exprs_.size() - 1);
  }

  Status ParseAnd(int& out) {
    RETURN_IF_ERROR(ParseEquality(out));
    while (PeekIs("and") && Peek().kind == Tok::kIdent) {
      ++pos_;
      int rhs = 0;
      RETURN_IF_ERROR(ParseEquality(rhs));
      out = Add({.op = Op::kAnd, .lhs = out, .rhs = rhs});
    }
    return Status::Ok();
  }

  Status ParseEquality(int& out) {
    RETURN_IF_ERROR(ParseUnion(out));
    if (PeekIs("=") || PeekIs("!=")) {
      const Op op = Take().text == "=" ? Op::kEqual : Op::kNotEqual;
      int rhs = 0;
      RETURN_IF_ERROR(ParseUnion(rhs));
      out = Add({.op = op, .lhs = out, .rhs = rhs});
    }
    return Status::Ok();
  }

  Status ParseUnion(int& out) {
    RETURN_IF_ERROR(ParseTypeExpr(out));
    while (PeekIs("|")) {
      ++pos_;
      int rhs = 0;
      RETURN_IF_ERROR(ParseTypeExpr(rhs));
      out = Add({.op = Op::kUnion, .lhs = out, .rhs = rhs});
    }
    return Status::Ok();
  }

  Status ParseTypeExpr(int& out) {
    RETURN_IF_ERROR(ParsePostfix(out));
    if ((PeekIs("is") || PeekIs("as")) && Peek().kind == Tok::kIdent) {
      const Op op = Take().text == "is" ? Op::kIs : Op::kAs;
      Token t = Take();
      if (t.kind != Tok::kIdent) return Error("type name expected");
      out = Add({.op = op, .input = out, .name = CanonicalTypeName(t.text)});
    }
    return Status::Ok();
  }

  Status ParsePostfix(int& out) {
    RETURN_IF_ERROR(ParseTerm(out));
    while (true) {
      if (PeekIs(".")) {
        ++pos_;
        RETURN_IF_ERROR(ParseInvocation(out, out));
      } else if (PeekIs("[")) {
        ++pos_;
        Token t = Take();
        if (t.kind != Tok::kNumber || t.text.find('.') != std::string_view::npos) return Error("index expected");
        int64_t index = 0;
        for (char c : t.text) index = index * 10 + (c - '0');
        RETURN_IF_ERROR(Expect("]"));
        out = Add({.op = Op::kIndex, .input = out, .index = index});
      } else {
        return Status::Ok();
      }
    }
  }

  Status ParseTerm(int& out) {
    const Token& t = Peek();
    switch (t.kind) {
      case Tok::kOp:
        if (t.text != "(") return Error("unexpected '" + std::string(t.text) + "'");
        ++pos_;
        RETURN_IF_ERROR(ParseAnd(out));
        return Expect(")");
      case Tok::kVar:
        if (t.text != "%resource") return Error("variable " + std::string(t.text) + " is not supported");
        ++pos_;
        out = Add({.op = Op::kResourceVar});
        return Status::Ok();
      case Tok::kString: {
        std::string literal;
        const std::string_view body = t.text.substr(1, t.text.size() - 2);
        for (size_t i = 0; i < body.size(); ++i) {
          if (body[i] == '\\' && i + 1 < body.size()) ++i;
          literal.push_back(body[i]);
        }
        ++pos_;
        out = Add({.op = Op::kString, .name = std::move(literal)});
        return Status::Ok();
      }
      case Tok::kNumber: {
        double v = 0;
        const std::string text(t.text);
        v = std::stod(text);
        ++pos_;
        out = Add({.op = Op::kNumber, .number = v});
        return Status::Ok();
      }
      case Tok::kIdent:
        if ((t.text == "true" || t.text == "false") && !PeekNextIs("(")) {
          out = Add({.op = Op::kBoolean, .index = t.text == "true" ? 1 : 0});
          ++pos_;
          return Status::Ok();
        }
        return ParseInvocation(-1, out);
      case Tok::kEnd:
        return Error("unexpected end");
    }
    return Error("unexpected token");
  }

  // A member or function applied to `input` (-1: the context item).
  Status ParseInvocation(int input, int& out) {
    Token t = Take();
    if (t.kind != Tok::kIdent) return Error("identifier expected");
    const std::string_view name = t.text;
    if (!PeekIs("(")) {
      if (name == "and" || name == "is" || name == "as") return Error("identifier expected, got " + std::string(name));
      if (input < 0 && IsUpper(name[0])) {
        out = Add({.op = Op::kTypeFilter, .name = std::string(name)});
      } else {
        out = Add({.op = Op::kMember, .input = input, .name = std::string(name)});
      }
      return Status::Ok();
    }
    ++pos_;  // (
    Expr e{.op = Op::kMember, .input = input};
    if (name == "where") {
      e.op = Op::kWhere;
      RETURN_IF_ERROR(ParseAnd(e.arg));
    } else if (name == "exists" || name == "empty" || name == "not" || name == "first" || name == "resolve") {
      e.op = name == "exists"  ? Op::kExists
             : name == "empty" ? Op::kEmpty
             : name == "not"   ? Op::kNot
             : name == "first" ? Op::kFirst
                               : Op::kResolve;
    } else if (name == "as" || name == "ofType" || name == "is") {
      e.op = name == "is" ? Op::kIs : Op::kAs;
      Token type = Take();
      if (type.kind != Tok::kIdent) return Error(std::string(name) + "() takes a type name");
      e.name = CanonicalTypeName(type.text);
    } else if (name == "extension") {
      e.op = Op::kExtension;
      Token url = Take();
      if (url.kind != Tok::kString) return Error("extension() takes a string literal");
      e.name = std::string(url.text.substr(1, url.text.size() - 2));
    } else {
      return Error("function " + std::string(name) + "() is not supported");
    }
    RETURN_IF_ERROR(Expect(")"));
    out = Add(std::move(e));
    return Status::Ok();
  }

  std::string_view text_;
  FhirPath& path_;
  std::vector<Token> tokens_;
  size_t pos_ = 0;
};

namespace {

// One scratch buffer for the duration of a scope.
class ScratchBuffer {
 public:
  explicit ScratchBuffer(PathScratch& scratch) : scratch_(scratch), buffer_(scratch.Acquire()) {}
  ~ScratchBuffer() { scratch_.Release(); }
  ScratchBuffer(const ScratchBuffer&) = delete;
  ScratchBuffer& operator=(const ScratchBuffer&) = delete;
  std::vector<PathNode>& get() { return buffer_; }

 private:
  PathScratch& scratch_;
  std::vector<PathNode>& buffer_;
};

PathNode BoolNode(bool b) {
  PathNode n;
  n.kind = Kind::kBool;
  n.boolean = b;
  n.type = "boolean";
  return n;
}

void AppendOne(simdjson::dom::element value, std::string_view type, TypeContext context, std::vector<PathNode>& out) {
  if (value.is_null()) return;
  if (type == "Resource") {
    if (value.is_object()) out.push_back(ResourceNode(value));
    return;
  }
  PathNode n;
  n.json = value;
  n.type = type;
  n.context = context;
  out.push_back(n);
}

void AppendValue(simdjson::dom::element value, std::string_view type, TypeContext context, std::vector<PathNode>& out) {
  if (value.is_array()) {
    const simdjson::dom::array items = value.get_array().value_unsafe();
    for (simdjson::dom::element item : items) AppendOne(item, type, context, out);
  } else {
    AppendOne(value, type, context, out);
  }
}

void AppendMember(const PathNode& node, const Expr& x, std::vector<PathNode>& out) {
  if (node.kind != Kind::kJson || !node.json.is_object()) return;
  const std::string_view name = x.name;
  const simdjson::dom::object obj = node.json.get_object().value_unsafe();
  if (x.bound != nullptr && node.context == x.bound_context) {
    simdjson::dom::element v;
    if (obj.at_key(name).get(v) == simdjson::SUCCESS) AppendValue(v, x.bound->type, x.bound->context, out);
    return;
  }
  if (name == "extension" || name == "modifierExtension") {  // every element's; not in the element table
    static const TypeContext kExtension = ContextOfType("Extension");
    simdjson::dom::element v;
    if (obj.at_key(name).get(v) == simdjson::SUCCESS) AppendValue(v, "Extension", kExtension, out);
    return;
  }
  if (node.context != kNoContext) {
    if (const ElementInfo* info = FindElement(node.context, name)) {
      simdjson::dom::element v;
      if (obj.at_key(name).get(v) == simdjson::SUCCESS) AppendValue(v, info->type, info->context, out);
      return;
    }
  } else {
    simdjson::dom::element v;
    if (obj.at_key(name).get(v) == simdjson::SUCCESS) {
      AppendValue(v, {}, kNoContext, out);
      return;
    }
  }
  // A choice element: `value` matches valueQuantity, valueString, ...
  for (auto field : obj) {
    const std::string_view key = field.key;
    if (key.size() <= name.size() || !IsUpper(key[name.size()]) || key.substr(0, name.size()) != name) continue;
    if (node.context != kNoContext) {
      if (const ElementInfo* info = FindElement(node.context, key))
        AppendValue(field.value, info->type, info->context, out);
    } else {
      const std::string_view type = InferChoiceType(key.substr(name.size()));
      AppendValue(field.value, type, ContextOfType(type), out);
    }
  }
}

// -1: empty, 0: false, 1: true (FHIRPath singleton evaluation of collections).
int Truth(std::span<const PathNode> items) {
  if (items.empty()) return -1;
  if (items.size() == 1) {
    const PathNode& n = items[0];
    if (n.kind == Kind::kBool) return n.boolean ? 1 : 0;
    if (n.kind == Kind::kJson && n.json.is_bool()) return n.json.get_bool().value_unsafe() ? 1 : 0;
  }
  return 1;
}

// Equality of two singletons: 1 equal, 0 not (different types are not equal), -1 not comparable (empty).
int Equal(std::span<const PathNode> a, std::span<const PathNode> b) {
  if (a.size() != 1 || b.size() != 1) return -1;
  enum class Cat { kNone, kBool, kString, kNumber };
  auto classify = [](const PathNode& n, bool& bv, std::string_view& sv, double& dv) {
    switch (n.kind) {
      case Kind::kBool:
        bv = n.boolean;
        return Cat::kBool;
      case Kind::kString:
        sv = n.text;
        return Cat::kString;
      case Kind::kNumber:
        dv = n.number;
        return Cat::kNumber;
      case Kind::kJson:
        if (n.json.is_string()) {
          sv = n.json.get_string().value_unsafe();
          return Cat::kString;
        }
        if (n.json.is_bool()) {
          bv = n.json.get_bool().value_unsafe();
          return Cat::kBool;
        }
        if (n.json.is_number()) {
          dv = n.json.get_double().value_unsafe();
          return Cat::kNumber;
        }
        return Cat::kNone;
      case Kind::kTypeOnly:
        return Cat::kNone;
    }
    return Cat::kNone;
  };
  bool ab = false, bb = false;
  std::string_view as, bs;
  double ad = 0, bd = 0;
  const Cat ca = classify(a[0], ab, as, ad);
  const Cat cb = classify(b[0], bb, bs, bd);
  if (ca != cb || ca == Cat::kNone) return 0;
  switch (ca) {
    case Cat::kBool:
      return ab == bb;
    case Cat::kString:
      return as == bs;
    case Cat::kNumber:
      return ad == bd;
    case Cat::kNone:
      break;
  }
  return 0;
}

}  // namespace

PathNode ResourceNode(simdjson::dom::element resource) {
  PathNode n;
  n.json = resource;
  std::string_view type;
  if (resource.is_object() && resource["resourceType"].get(type) == simdjson::SUCCESS) {
    n.type = type;
    n.context = fhir::IsKnownResourceType(type) ? ContextOfType(type) : kNoContext;
  }
  return n;
}

std::vector<PathNode>& PathScratch::Acquire() {
  if (depth_ == buffers_.size()) buffers_.emplace_back();
  std::vector<PathNode>& b = buffers_[depth_++];
  b.clear();
  return b;
}

bool IsOfType(std::string_view type, std::string_view target) {
  if (type == target) return !type.empty();
  if (target == "Resource") return fhir::IsKnownResourceType(type);
  if (target == "DomainResource") return fhir::IsKnownResourceType(type) && type != "Bundle" && type != "Binary";
  if (target == "Quantity") {
    return type == "Age" || type == "Count" || type == "Distance" || type == "Duration" || type == "SimpleQuantity" ||
           type == "MoneyQuantity";
  }
  if (target == "string") return type == "code" || type == "id" || type == "markdown";
  if (target == "uri") return type == "url" || type == "canonical" || type == "oid" || type == "uuid";
  if (target == "integer") return type == "positiveInt" || type == "unsignedInt";
  return false;
}

std::string_view ReferenceTargetType(std::string_view reference, const PathNode& resource) {
  if (reference.empty()) return {};
  if (reference[0] == '#') {
    if (resource.kind != Kind::kJson || !resource.json.is_object()) return {};
    simdjson::dom::array contained;
    if (resource.json["contained"].get(contained) != simdjson::SUCCESS) return {};
    for (simdjson::dom::element c : contained) {
      std::string_view id, type;
      if (c["id"].get(id) == simdjson::SUCCESS && id == reference.substr(1) &&
          c["resourceType"].get(type) == simdjson::SUCCESS) {
        return type;
      }
    }
    return {};
  }
  if (reference.find('?') != std::string_view::npos) return {};
  if (size_t h = reference.find("/_history/"); h != std::string_view::npos) reference = reference.substr(0, h);
  const size_t last = reference.rfind('/');
  if (last == std::string_view::npos || last == 0 || last + 1 == reference.size()) return {};
  const size_t prev = reference.rfind('/', last - 1);
  const std::string_view type =
      prev == std::string_view::npos ? reference.substr(0, last) : reference.substr(prev + 1, last - prev - 1);
  return fhir::IsKnownResourceType(type) ? type : std::string_view();
}

Result<FhirPath> FhirPath::Compile(std::string_view expression) {
  FhirPath path;
  path.source_ = std::string(expression);
  FhirPathParser parser(path.source_, path);
  RETURN_IF_ERROR(parser.Parse());
  return path;
}

void FhirPath::Bind(std::string_view this_type) {
  const TypeContext context = ContextOfType(this_type);
  if (root_ >= 0) BindExpr(root_, context, context);
}

TypeContext FhirPath::BindExpr(int e, TypeContext this_context, TypeContext resource_context) {
  Expr& x = exprs_[e];
  auto input = [&] { return x.input >= 0 ? BindExpr(x.input, this_context, resource_context) : this_context; };
  switch (x.op) {
    case Op::kThis:
      return this_context;
    case Op::kResourceVar:
      return resource_context;
    case Op::kTypeFilter:
      return this_context != kNoContext && IsOfType(ContextName(this_context), x.name) ? this_context : kNoContext;
    case Op::kMember: {
      const TypeContext in = input();
      if (in == kNoContext || x.name == "extension" || x.name == "modifierExtension") return kNoContext;
      const ElementInfo* info = FindElement(in, x.name);
      if (info == nullptr) return kNoContext;  // a choice element: resolved per value
      x.bound_context = in;
      x.bound = info;
      return info->context;
    }
    case Op::kWhere: {
      const TypeContext in = input();
      BindExpr(x.arg, in, resource_context);
      return in;
    }
    case Op::kFirst:
    case Op::kIndex:
      return input();
    case Op::kAs:
      input();
      return ContextOfType(x.name);
    case Op::kUnion:
    case Op::kAnd:
    case Op::kEqual:
    case Op::kNotEqual:
      BindExpr(x.lhs, this_context, resource_context);
      BindExpr(x.rhs, this_context, resource_context);
      return kNoContext;
    default:
      input();
      return kNoContext;
  }
}

void FhirPath::Evaluate(const PathNode& focus, const PathNode& resource, PathScratch& scratch,
                        std::vector<PathNode>& out) const {
  if (root_ >= 0) Eval(root_, focus, resource, scratch, out);
}

void FhirPath::Eval(int e, const PathNode& focus, const PathNode& resource, PathScratch& scratch,
                    std::vector<PathNode>& out) const {
  const Expr& x = exprs_[e];
  switch (x.op) {
    case Op::kThis:
      out.push_back(focus);
      return;
    case Op::kResourceVar:
      out.push_back(resource);
      return;
    case Op::kString: {
      PathNode n;
      n.kind = Kind::kString;
      n.type = "string";
      n.text = x.name;
      out.push_back(n);
      return;
    }
    case Op::kNumber: {
      PathNode n;
      n.kind = Kind::kNumber;
      n.type = "decimal";
      n.number = x.number;
      out.push_back(n);
      return;
    }
    case Op::kBoolean:
      out.push_back(BoolNode(x.index != 0));
      return;
    case Op::kUnion:
      Eval(x.lhs, focus, resource, scratch, out);
      Eval(x.rhs, focus, resource, scratch, out);
      return;
    case Op::kAnd:
    case Op::kEqual:
    case Op::kNotEqual: {
      ScratchBuffer lhs(scratch), rhs(scratch);
      Eval(x.lhs, focus, resource, scratch, lhs.get());
      Eval(x.rhs, focus, resource, scratch, rhs.get());
      if (x.op == Op::kAnd) {
        const int a = Truth(lhs.get()), b = Truth(rhs.get());
        if (a == 0 || b == 0) {
          out.push_back(BoolNode(false));
        } else if (a == 1 && b == 1) {
          out.push_back(BoolNode(true));
        }
        return;
      }
      const int eq = Equal(lhs.get(), rhs.get());
      if (eq >= 0) out.push_back(BoolNode(x.op == Op::kEqual ? eq == 1 : eq == 0));
      return;
    }
    default:
      break;
  }

  // Operations on an input collection: the context item, or what x.input yields.
  std::span<const PathNode> in(&focus, 1);
  std::optional<ScratchBuffer> input;
  if (x.input >= 0) {
    input.emplace(scratch);
    Eval(x.input, focus, resource, scratch, input->get());
    in = input->get();
  }
  switch (x.op) {
    case Op::kMember:
      for (const PathNode& n : in) AppendMember(n, x, out);
      return;
    case Op::kTypeFilter:
      for (const PathNode& n : in) {
        if (IsOfType(n.type, x.name)) out.push_back(n);
      }
      return;
    case Op::kWhere: {
      ScratchBuffer criteria(scratch);
      for (const PathNode& n : in) {
        criteria.get().clear();
        Eval(x.arg, n, resource, scratch, criteria.get());
        if (Truth(criteria.get()) == 1) out.push_back(n);
      }
      return;
    }
    case Op::kExists:
      out.push_back(BoolNode(!in.empty()));
      return;
    case Op::kEmpty:
      out.push_back(BoolNode(in.empty()));
      return;
    case Op::kNot: {
      const int t = Truth(in);
      if (t >= 0) out.push_back(BoolNode(t == 0));
      return;
    }
    case Op::kFirst:
      if (!in.empty()) out.push_back(in[0]);
      return;
    case Op::kResolve:
      for (const PathNode& n : in) {
        if (n.kind != Kind::kJson) continue;
        std::string_view ref;
        if (n.json.is_string()) {
          ref = n.json.get_string().value_unsafe();
        } else if (!n.json.is_object() || n.json["reference"].get(ref) != simdjson::SUCCESS) {
          continue;
        }
        const std::string_view type = ReferenceTargetType(ref, resource);
        if (type.empty()) continue;
        PathNode t;
        t.kind = Kind::kTypeOnly;
        t.type = type;
        out.push_back(t);
      }
      return;
    case Op::kAs:
      for (const PathNode& n : in) {
        if (IsOfType(n.type, x.name)) out.push_back(n);
      }
      return;
    case Op::kIs:
      if (in.size() == 1) out.push_back(BoolNode(IsOfType(in[0].type, x.name)));
      return;
    case Op::kExtension: {
      static const TypeContext kExtension = ContextOfType("Extension");
      for (const PathNode& n : in) {
        simdjson::dom::array extensions;
        if (n.kind != Kind::kJson || !n.json.is_object() || n.json["extension"].get(extensions) != simdjson::SUCCESS) {
          continue;
        }
        for (simdjson::dom::element ext : extensions) {
          std::string_view url;
          if (ext.is_object() && ext["url"].get(url) == simdjson::SUCCESS && url == x.name) {
            AppendOne(ext, "Extension", kExtension, out);
          }
        }
      }
      return;
    }
    case Op::kIndex:
      if (x.index >= 0 && static_cast<size_t>(x.index) < in.size()) out.push_back(in[x.index]);
      return;
    default:
      return;
  }
}

}  // namespace fhirlake::search
