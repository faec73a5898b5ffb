// The FHIRPath subset the R4 search parameter expressions use (docs/SEARCH-EXTRACTION.md): member paths with
// implicit array flattening and choice types, `|`, `and`, `=`, `!=`, `is`/`as` (operators and functions),
// ofType(), where(), exists(), empty(), not(), first(), resolve() as a type test, extension('url'), [n] and
// %resource. An expression is compiled once (FhirPath::Compile) and evaluated over a simdjson DOM; a compiled
// expression is immutable and may be evaluated from any number of threads, each with its own PathScratch.
#pragma once

#include <simdjson.h>

#include <cstdint>
#include <deque>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "search/element_types.h"

namespace fhirlake::search {

// One item of a FHIRPath collection.
struct PathNode {
  enum class Kind : uint8_t {
    kJson,      // `json` holds the value, `type` its FHIR type ("" when unknown)
    kBool,      // a computed boolean (`boolean`)
    kString,    // a string literal (`text`)
    kNumber,    // a number literal (`number`)
    kTypeOnly,  // the result of resolve(): only `type` (the referenced resource type) is known
  };
  Kind kind = Kind::kJson;
  bool boolean = false;
  TypeContext context = kNoContext;  // the member types of a complex `json` value
  std::string_view type;             // points into static tables, the compiled expression or the DOM
  simdjson::dom::element json;
  std::string_view text;
  double number = 0;
};

// The node of a whole resource (its type from resourceType; an unknown type has no context).
PathNode ResourceNode(simdjson::dom::element resource);

// Reusable buffers of one evaluating thread: after warm-up an evaluation allocates nothing.
class PathScratch {
 public:
  std::vector<PathNode>& Acquire();
  void Release() { --depth_; }

 private:
  std::deque<std::vector<PathNode>> buffers_;  // a deque: growing it keeps handed-out buffers in place
  size_t depth_ = 0;
};

class FhirPath {
 public:
  // kInvalid with the reason when `expression` is outside the subset.
  static Result<FhirPath> Compile(std::string_view expression);

  // Appends to `out` the items `expression` yields with `focus` as $this and `resource` as %resource.
  void Evaluate(const PathNode& focus, const PathNode& resource, PathScratch& scratch,
                std::vector<PathNode>& out) const;

  std::string_view source() const { return source_; }

  // Resolves, once, the member steps whose input type is known statically when $this is of type `this_type`
  // (e.g. "Observation.code" for an Observation parameter), so evaluation skips their element-table lookup. Only
  // a speed-up: a bound step still checks the actual context. Not thread-safe; call before sharing the path.
  void Bind(std::string_view this_type);

  enum class Op : uint8_t {
    kMember,      // name: a member of each input item (choice names match name + TypeName)
    kTypeFilter,  // a leading type name ("Patient.x"): the context when it is of that type
    kWhere,       // arg: criteria
    kExists,
    kEmpty,
    kNot,
    kFirst,
    kResolve,
    kAs,         // name: type (also ofType)
    kIs,         // name: type
    kExtension,  // name: url
    kIndex,      // index
    kUnion,      // lhs | rhs
    kAnd,
    kEqual,
    kNotEqual,
    kString,  // name: the literal
    kNumber,
    kBoolean,
    kResourceVar,  // %resource
    kThis,         // the context item ($this)
  };
  struct Expr {
    Op op;
    int input = -1;  // the expression whose result the operation applies to; -1: the context item
    int lhs = -1, rhs = -1, arg = -1;
    std::string name{};
    int64_t index = 0;
    double number = 0;
    TypeContext bound_context = kNoContext;  // kMember: the input context `bound` was looked up in (Bind)
    const ElementInfo* bound = nullptr;
  };

 private:
  friend class FhirPathParser;
  TypeContext BindExpr(int e, TypeContext this_context, TypeContext resource_context);
  void Eval(int e, const PathNode& focus, const PathNode& resource, PathScratch& scratch,
            std::vector<PathNode>& out) const;

  std::string source_;
  std::vector<Expr> exprs_;
  int root_ = -1;
};

// True when a value of FHIR type `type` is a `target` (the same type, or a specialisation: Age is a Quantity,
// code a string, canonical a uri, any resource type a Resource).
bool IsOfType(std::string_view type, std::string_view target);

// The resource type a reference value points at: "Patient" for "Patient/1", ".../fhir/Patient/1/_history/2" or a
// contained "#x" whose resource is a Patient; empty when unknown.
std::string_view ReferenceTargetType(std::string_view reference, const PathNode& resource);

}  // namespace fhirlake::search
