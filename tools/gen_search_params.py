#!/usr/bin/python3
"""Generate the search parameter registry and element type table of src/search/ from the FHIR R4 4.0.1 definitions.

Inputs (relative to the repository root, see third_party/fhir-r4/README.md):
  third_party/fhir-r4/search-parameters.json  a Bundle of every R4 SearchParameter.
  third_party/fhir-r4/elements.json  the element types of every resource, data type and backbone element.

Outputs:
  src/search/search_params_generated.cc  implements src/search/search_params.h: one ParamDef per (base type, code),
      sorted by (type, code), ids dense in that order; the Resource parameters (_id, _lastUpdated, _tag, _profile,
      _security, _source) copied onto each of the 145 resource types; composite components resolved to the
      component parameter of the same type; UnsupportedParams() lists every definition (per base type) that is
      not indexed, with the reason.
  src/search/element_types_generated.cc  implements src/search/element_types.h: the JSON members of every element
      context with their FHIR type, for the FHIRPath evaluator (choice types, `as`, `is`, `ofType`).

An expression is supported when it parses with the FHIRPath subset of src/search/fhirpath.cc (the parser below
mirrors it: same tokens, same grammar, same functions). The output is deterministic and clang-format clean.

Usage:
  tools/gen_search_params.py            regenerate the output files
  tools/gen_search_params.py --check    exit 1 if a committed output differs from a fresh generation (CI)

Standard library only (Python 3.11).
"""

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

FHIR_VERSION = "4.0.1"
EXPECTED_TYPE_COUNT = 145
COLUMN_LIMIT = 120  # .clang-format ColumnLimit
# Bump when the extraction rules of src/search/extract.cc or normalize.cc change meaning: it is part of
# RegistryHash(), so stores built with other rules are reindexed.
EXTRACTION_RULES_VERSION = 2  # 2: :text rows kept only for values without a code (search answers :text from the JSON)
MAX_UNSUPPORTED_FRACTION = 0.02

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_INPUT_DIR = "third_party/fhir-r4"
DEFAULT_PARAMS_OUTPUT = "src/search/search_params_generated.cc"
DEFAULT_TYPES_OUTPUT = "src/search/element_types_generated.cc"
ELEMENTS_FILE = "elements.json"
COMPARTMENT_FILE = "compartmentdefinition-patient.json"
SEARCH_PARAMETERS_FILE = "search-parameters.json"

PARAM_TYPES = {
    "string": "kString",
    "token": "kToken",
    "reference": "kReference",
    "date": "kDate",
    "number": "kNumber",
    "quantity": "kQuantity",
    "uri": "kUri",
    "composite": "kComposite",
}
FROM_RESOURCE_TABLE = {"_id", "_lastUpdated"}
# Binary and Bundle are Resources but not DomainResources (Parameters is not among the 145 types).
NOT_DOMAIN_RESOURCES = {"Binary", "Bundle"}
# Members never reached by a search expression; left out of the element table.
SKIPPED_MEMBERS = {"extension", "modifierExtension"}


class GenError(Exception):
    pass


def load_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise GenError(f"cannot read {path}: {e}") from e


# --- FHIRPath subset: the parser of src/search/fhirpath.cc, to decide what is supported ---

FUNCTIONS = {  # name: arity ("type" = one type-name argument)
    "where": 1,
    "exists": 0,
    "empty": 0,
    "not": 0,
    "first": 0,
    "resolve": 0,
    "as": "type",
    "ofType": "type",
    "is": "type",
    "extension": 1,
}
TOKEN_RE = re.compile(
    r"\s*(?:(?P<str>'(?:[^'\\]|\\.)*')|(?P<num>\d+(?:\.\d+)?)|(?P<var>%[A-Za-z][A-Za-z0-9]*)"
    r"|(?P<id>[A-Za-z_][A-Za-z0-9_]*)|(?P<op>!=|[.()\[\]|=,]))"
)


class FhirPathError(Exception):
    pass


def tokenize(text):
    pos, tokens = 0, []
    text = text.rstrip()
    while pos < len(text):
        m = TOKEN_RE.match(text, pos)
        if not m or m.end() == pos:
            raise FhirPathError(f"unexpected character at {pos}: {text[pos:pos + 10]!r}")
        kind = m.lastgroup
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    tokens.append(("end", ""))
    return tokens


class Parser:
    """Grammar (loosest first): and := eq ('and' eq)*; eq := union (('='|'!=') union)?;
    union := type ('|' type)*; type := postfix (('is'|'as') TypeName)?; postfix := term ('.' invocation | '[' n ']')*;
    term := invocation | %resource | 'string' | number | true | false | '(' and ')'."""

    def __init__(self, text):
        self.tokens = tokenize(text)
        self.i = 0

    def peek(self, value=None):
        kind, v = self.tokens[self.i]
        return (kind, v) if value is None else (v == value and kind in ("op", "id"))

    def take(self, value=None):
        tok = self.tokens[self.i]
        if value is not None and tok[1] != value:
            raise FhirPathError(f"expected {value!r}, got {tok[1]!r}")
        self.i += 1
        return tok

    def parse(self):
        self.expr()
        if self.peek()[0] != "end":
            raise FhirPathError(f"unexpected {self.peek()[1]!r}")

    def expr(self):
        self.eq()
        while self.peek("and"):
            self.take()
            self.eq()

    def eq(self):
        self.union()
        if self.peek("=") or self.peek("!="):
            self.take()
            self.union()

    def union(self):
        self.type_expr()
        while self.peek("|"):
            self.take()
            self.type_expr()

    def type_expr(self):
        self.postfix()
        if self.peek("is") or self.peek("as"):
            self.take()
            if self.take()[0] != "id":
                raise FhirPathError("type name expected")

    def postfix(self):
        self.term()
        while True:
            if self.peek("."):
                self.take()
                self.invocation()
            elif self.peek("["):
                self.take()
                if self.take()[0] != "num":
                    raise FhirPathError("index expected")
                self.take("]")
            else:
                return

    def invocation(self):
        kind, name = self.take()
        if kind != "id" or (name in ("and", "is", "as") and not self.peek("(")):
            raise FhirPathError(f"identifier expected, got {name!r}")
        if not self.peek("("):
            return
        self.take()
        arity = FUNCTIONS.get(name)
        if arity is None:
            raise FhirPathError(f"function {name}() is not supported")
        if arity == "type":
            if self.take()[0] != "id":
                raise FhirPathError(f"{name}() takes a type name")
        elif arity == 1:
            self.expr()
        self.take(")")

    def term(self):
        kind, v = self.peek()
        if kind == "op" and v == "(":
            self.take()
            self.expr()
            self.take(")")
        elif kind == "var":
            if v != "%resource":
                raise FhirPathError(f"variable {v} is not supported")
            self.take()
        elif kind in ("str", "num"):
            self.take()
        elif kind == "id":
            self.invocation()
        else:
            raise FhirPathError(f"unexpected {v!r}")


def check_fhirpath(expression):
    """None when the subset supports `expression`, else the reason."""
    try:
        Parser(expression).parse()
        return None
    except FhirPathError as e:
        return f"FHIRPath outside the supported subset ({e})"


def split_union(expression):
    """The top-level `|` alternatives (outside parentheses, brackets and strings)."""
    parts, depth, cur, in_str = [], 0, [], False
    for ch in expression:
        if in_str:
            cur.append(ch)
            in_str = ch != "'"
            continue
        if ch == "'":
            in_str = True
        elif ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "|" and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur).strip())
    return parts


def leading_type(alternative, type_names):
    m = re.match(r"^\(*\s*([A-Z][A-Za-z0-9]*)\b", alternative)
    return m.group(1) if m and m.group(1) in type_names else None


# --- Registry ---


def load_search_parameters(path):
    doc = load_json(path)
    if doc.get("resourceType") != "Bundle":
        raise GenError(f"{path}: not a Bundle")
    sps = [e.get("resource", {}) for e in doc.get("entry", [])]
    sps = [sp for sp in sps if sp.get("resourceType") == "SearchParameter"]
    if not sps:
        raise GenError(f"{path}: no SearchParameter resources")
    for sp in sps:
        for key in ("url", "code", "type", "base"):
            if not sp.get(key):
                raise GenError(f"{path}: SearchParameter {sp.get('id')!r} has no {key}")
    return sps


def load_resource_types(path):
    doc = load_json(path)
    types = sorted(r["code"] for r in doc.get("resource", []))
    if len(types) != EXPECTED_TYPE_COUNT:
        raise GenError(f"{path}: {len(types)} resource types, expected {EXPECTED_TYPE_COUNT}")
    return types


def build_registry(sps, resource_types):
    """Returns (params sorted by (type, code) as dicts, unsupported [(url, reason)], with-expression count)."""
    type_names = set(resource_types) | {"Resource", "DomainResource"}
    candidates = {}  # (type, code) -> dict
    unsupported = []
    with_expression = 0
    by_url = {sp["url"]: sp for sp in sps}
    for sp in sps:
        bases = []
        for base in sp["base"]:
            if base == "Resource":
                bases.extend(resource_types)
            elif base == "DomainResource":
                bases.extend(t for t in resource_types if t not in NOT_DOMAIN_RESOURCES)
            elif base in resource_types:
                bases.append(base)
            else:
                raise GenError(f"{sp['url']}: unknown base {base!r}")
        expression = (sp.get("expression") or "").strip()
        if expression:
            with_expression += 1
        if not expression:
            unsupported.append((sp["url"], "no expression (a special parameter of the search framework)"))
            continue
        if sp["type"] not in PARAM_TYPES:
            unsupported.append((sp["url"], f"type {sp['type']} (geographic proximity search) is not indexed"))
            continue
        reason = check_fhirpath(expression)
        if reason:
            unsupported.append((sp["url"], reason))
            continue
        alternatives = split_union(expression)
        prefixed = [a for a in alternatives if leading_type(a, type_names)]
        for base in bases:
            if prefixed:
                mine = [a for a in alternatives if leading_type(a, type_names) in (base, "Resource", "DomainResource")]
                if not mine:
                    unsupported.append((sp["url"], f"no expression alternative for base {base}"))
                    continue
                expr = " | ".join(mine)
            else:
                expr = expression
            key = (base, sp["code"])
            if key in candidates:
                raise GenError(f"{base}: two SearchParameters with code {sp['code']!r}")
            candidates[key] = {
                "type_name": base,
                "code": sp["code"],
                "type": PARAM_TYPES[sp["type"]],
                "url": sp["url"],
                "expression": expr,
                "targets": sorted(set(sp.get("target", []))),
                "components": sp.get("component", []),
                "from_resource_table": sp["code"] in FROM_RESOURCE_TABLE,
            }
    # Composites: every component must resolve to a supported parameter of the same type.
    changed = True
    while changed:
        changed = False
        for key in sorted(candidates):
            p = candidates[key]
            if p["type"] != "kComposite" or "resolved" in p:
                continue
            resolved, reason = [], None
            for comp in p["components"]:
                target = by_url.get(comp.get("definition"))
                cexpr = (comp.get("expression") or "").strip()
                if target is None:
                    reason = f"component definition {comp.get('definition')} is unknown"
                elif (p["type_name"], target["code"]) not in candidates or candidates[
                    (p["type_name"], target["code"])
                ]["url"] != target["url"]:
                    reason = f"component {target['url']} is not indexed for {p['type_name']}"
                elif candidates[(p["type_name"], target["code"])]["type"] == "kComposite":
                    reason = "a composite component that is itself composite"
                elif not cexpr or check_fhirpath(cexpr):
                    reason = f"component expression {cexpr!r} is not supported"
                if reason:
                    break
                resolved.append((target["code"], cexpr))
            if reason:
                unsupported.append((p["url"], f"{p['type_name']}: {reason}"))
                del candidates[key]
                changed = True
                break
            p["resolved"] = resolved
    params = [candidates[k] for k in sorted(candidates)]
    ids = {(p["type_name"], p["code"]): i for i, p in enumerate(params)}
    for p in params:
        p["component_ids"] = [(ids[(p["type_name"], code)], e) for code, e in p.get("resolved", [])]
    if len(params) >= 65535:
        raise GenError("too many parameters for a uint16_t ParamId")
    find_shared_rows(params)
    unsupported = sorted(set(unsupported))
    counted = {u for u, r in unsupported if not r.startswith("no expression")}
    if len(counted) > MAX_UNSUPPORTED_FRACTION * with_expression:
        raise GenError(f"{len(counted)} of {with_expression} definitions unsupported (over the 2% budget)")
    return params, unsupported, with_expression


def find_shared_rows(params):
    """Marks the parameters whose index rows other parameters of the same type already hold, so the store keeps
    them once (docs/SEARCH-EXTRACTION.md, "Shared rows"). Two forms, both provable from the expressions alone:
    - union: P's alternatives (for composites: (alternative, components) pairs) are exactly the union of those of
      other parameters Q of its type and kind (Observation combo-code = code | component-code). P then has no rows
      of its own: p["stored_in"] = [(Q, "")...], p["rows_elsewhere"] = True.
    - restriction: an alternative of a reference parameter P is `E.where(resolve() is T)` where another reference
      parameter Q's whole expression is E (Observation patient / subject). Q's rows of type T are P's rows, so P
      keeps only its other rows: p["stored_in"] += [(Q, T)].
    A parameter that holds another's rows (a target) never itself stores its rows elsewhere, so one lookup level
    always suffices."""
    def signatures(p):
        alts = split_union(p["expression"])
        if p["type"] != "kComposite":
            return frozenset(alts)
        comps = tuple((params[cid]["type"], e) for cid, e in p["component_ids"])
        return frozenset((a, comps) for a in alts)

    by_type = {}
    for i, p in enumerate(params):
        p["stored_in"], p["rows_elsewhere"] = [], False
        if not p["from_resource_table"]:
            by_type.setdefault(p["type_name"], []).append(i)
    for idxs in by_type.values():
        sig = {i: signatures(params[i]) for i in idxs}
        targets, aliases = set(), set()
        # Larger unions first; of two identical parameters the later one stores its rows in the earlier one.
        for i in sorted(idxs, key=lambda i: (-len(sig[i]), -i)):
            if i in targets:
                continue
            p = params[i]
            parts = [j for j in idxs if j != i and j not in aliases and params[j]["type"] == p["type"]
                     and sig[j] <= sig[i] and (sig[j] != sig[i] or j < i)]
            covered = frozenset().union(*(sig[j] for j in parts)) if parts else frozenset()
            if parts and covered == sig[i]:
                p["stored_in"] = [(j, "") for j in sorted(parts)]
                p["rows_elsewhere"] = True
                aliases.add(i)
                targets.update(parts)
                continue
            if p["type"] != "kReference":
                continue
            for alt in sorted(sig[i]):
                m = re.fullmatch(r"(.+)\.where\(resolve\(\) is ([A-Z][A-Za-z]+)\)", alt)
                if not m:
                    continue
                for j in idxs:
                    if (j != i and j not in aliases and params[j]["type"] == "kReference"
                            and sig[j] == frozenset([m.group(1)])):
                        p["stored_in"].append((j, m.group(2)))
                        targets.add(j)
                        break
            if p["stored_in"]:
                aliases.add(i)
    for p in params:
        for j, _ in p["stored_in"]:
            if params[j]["stored_in"]:
                raise GenError(f"{p['url']}: shares rows with {params[j]['url']}, which itself shares rows")


def cpp_str(s):
    if any(ord(c) < 0x20 or ord(c) > 0x7E for c in s):
        raise GenError(f"unexpected characters in {s!r}")
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def cpp_str_lines(s, indent, width):
    """A literal, split into adjacent literals of at most `width` characters each line."""
    if len(cpp_str(s)) + indent <= COLUMN_LIMIT - 1:
        return [" " * indent + cpp_str(s)]
    chunks = [s[i : i + width] for i in range(0, len(s), width)]
    return [" " * indent + cpp_str(c) for c in chunks]


def render_params(params, unsupported, with_expression, resource_types):
    body = []
    emit = body.append
    # Shared target lists.
    target_lists = sorted({tuple(p["targets"]) for p in params if p["targets"]})
    target_index = {t: i for i, t in enumerate(target_lists)}
    for i, targets in enumerate(target_lists):
        emit(f"constexpr std::string_view kTargets{i}[] = {{")
        line = "   "
        for t in targets:
            item = f" {cpp_str(t)},"
            if len(line) + len(item) > COLUMN_LIMIT:
                emit(line)
                line = "   "
            line += item
        emit(line)
        emit("};")
    emit("")
    for i, p in enumerate(params):
        if p["component_ids"]:
            emit(f"constexpr CompositeComponent kComponents{i}[] = {{")
            for cid, cexpr in p["component_ids"]:
                emit(f"    {{{cid}, {cpp_str(cexpr)}}},")
            emit("};")
    for i, p in enumerate(params):
        if p["stored_in"]:
            emit(f"constexpr StoredIn kStoredIn{i}[] = {{")
            for j, target_type in p["stored_in"]:
                emit(f"    {{{j}, {cpp_str(target_type)}}},")
            emit("};")
    emit("")
    emit("constexpr ParamDef kParams[] = {")
    for i, p in enumerate(params):
        targets = f"kTargets{target_index[tuple(p['targets'])]}" if p["targets"] else "{}"
        components = f"kComponents{i}" if p["component_ids"] else "{}"
        emit(f"    {{{i}, {cpp_str(p['type_name'])}, {cpp_str(p['code'])}, {p['type']},")
        emit(f"     {cpp_str(p['url'])},")
        lines = cpp_str_lines(p["expression"], 5, 100)
        lines[-1] += ","
        body.extend(lines)
        stored_in = f"kStoredIn{i}" if p["stored_in"] else "{}"
        emit(f"     {targets}, {components}, {'true' if p['from_resource_table'] else 'false'}, {stored_in},")
        emit(f"     {'true' if p['rows_elsewhere'] else 'false'}}},")
    emit("};")
    emit("")
    emit("constexpr UnsupportedParam kUnsupported[] = {")
    for url, reason in unsupported:
        emit(f"    {{{cpp_str(url)},")
        lines = cpp_str_lines(reason, 5, 100)
        lines[-1] += "},"
        body.extend(lines)
    emit("};")

    table_text = "\n".join(body)
    digest = hashlib.sha256(f"rules={EXTRACTION_RULES_VERSION}\n{table_text}".encode()).hexdigest()[:16]

    out = []
    emit = out.append
    n_counted = sum(1 for _, r in unsupported if not r.startswith("no expression"))
    emit("// Generated by tools/gen_search_params.py from FHIR R4 4.0.1; do not edit.")
    emit("// Source: third_party/fhir-r4/search-parameters.json.")
    emit(f"// {len(params)} parameters over {len(resource_types)} resource types; {len(unsupported)} definitions not indexed")
    emit(f"// ({n_counted} of the {with_expression} with an expression).")
    emit("#include <algorithm>")
    emit("#include <cstddef>")
    emit("#include <iterator>")
    emit("#include <span>")
    emit("#include <string_view>")
    emit("#include <vector>")
    emit("")
    emit('#include "search/search_params.h"')
    emit("")
    emit("namespace fhirlake::search {")
    emit("namespace {")
    emit("")
    emit("using enum ParamType;")
    emit("")
    emit(f"constexpr std::string_view kRegistryHash = \"{digest}\";  // sha256 prefix of rules v{EXTRACTION_RULES_VERSION} + tables")
    emit("")
    emit("// clang-format off")
    out.extend(body)
    emit("// clang-format on")
    emit("")
    emit("constexpr bool ParamsAreSorted() {")
    emit("  for (std::size_t i = 0; i < std::size(kParams); ++i) {")
    emit("    if (kParams[i].id != i) return false;")
    emit("    if (i > 0 &&")
    emit("        !(kParams[i - 1].resource_type < kParams[i].resource_type ||")
    emit("          (kParams[i - 1].resource_type == kParams[i].resource_type && kParams[i - 1].code < kParams[i].code))) {")
    emit("      return false;")
    emit("    }")
    emit("  }")
    emit("  return true;")
    emit("}")
    emit("static_assert(ParamsAreSorted());")
    emit("")
    emit("struct TypeRange {")
    emit("  std::string_view type;")
    emit("  std::vector<const ParamDef*> params;")
    emit("};")
    emit("")
    emit("// Built once (thread-safe static initialisation): the parameters of each type, in kParams order.")
    emit("const std::vector<TypeRange>& TypeRanges() {")
    emit("  static const std::vector<TypeRange> ranges = [] {")
    emit("    std::vector<TypeRange> r;")
    emit("    for (const ParamDef& p : kParams) {")
    emit("      if (r.empty() || r.back().type != p.resource_type) r.push_back({p.resource_type, {}});")
    emit("      r.back().params.push_back(&p);")
    emit("    }")
    emit("    return r;")
    emit("  }();")
    emit("  return ranges;")
    emit("}")
    emit("")
    emit("}  // namespace")
    emit("")
    emit("std::span<const ParamDef* const> ParamsForType(std::string_view resource_type) {")
    emit("  const auto& ranges = TypeRanges();")
    emit("  auto it = std::ranges::lower_bound(ranges, resource_type, {}, &TypeRange::type);")
    emit("  if (it == ranges.end() || it->type != resource_type) return {};")
    emit("  return it->params;")
    emit("}")
    emit("")
    emit("const ParamDef* FindParam(std::string_view resource_type, std::string_view code) {")
    emit("  auto params = ParamsForType(resource_type);")
    emit("  auto it = std::ranges::lower_bound(params, code, {}, [](const ParamDef* p) { return p->code; });")
    emit("  return it != params.end() && (*it)->code == code ? *it : nullptr;")
    emit("}")
    emit("")
    emit("const ParamDef& ParamById(ParamId id) { return kParams[id]; }")
    emit("")
    emit("size_t ParamCount() { return std::size(kParams); }")
    emit("")
    emit("std::string_view RegistryHash() { return kRegistryHash; }")
    emit("")
    emit("std::span<const UnsupportedParam> UnsupportedParams() { return kUnsupported; }")
    emit("")
    emit("}  // namespace fhirlake::search")
    check_columns(out)
    return "\n".join(out) + "\n"


def check_columns(lines):
    for line in lines:
        if len(line) > COLUMN_LIMIT:
            raise GenError(f"generated line exceeds {COLUMN_LIMIT} columns: {line!r}")


# --- Element types ---


def load_element_types(path):
    doc = load_json(path)
    if doc.get("fhirVersion") != FHIR_VERSION:
        raise GenError(f"{path}: fhirVersion {doc.get('fhirVersion')!r}, expected {FHIR_VERSION}")
    contexts = doc.get("contexts")
    if not isinstance(contexts, dict) or not contexts:
        raise GenError(f"{path}: no contexts")
    return contexts


def render_types(contexts):
    names = sorted(contexts)
    index = {n: i + 1 for i, n in enumerate(names)}  # 0: no context (primitives, unknown)
    out = []
    emit = out.append
    emit("// Generated by tools/gen_search_params.py from FHIR R4 4.0.1; do not edit.")
    emit("// Source: third_party/fhir-r4/elements.json (extracted by tools/extract_r4_elements.py).")
    emit(f"// {len(names)} element contexts (resources, data types, backbone elements) with their members' FHIR types.")
    emit("#include <algorithm>")
    emit("#include <cstddef>")
    emit("#include <iterator>")
    emit("#include <span>")
    emit("#include <string_view>")
    emit("")
    emit('#include "search/element_types.h"')
    emit("")
    emit("namespace fhirlake::search {")
    emit("namespace {")
    emit("")
    emit("// clang-format off")
    n_members = 0
    for name in names:
        members = []
        for member, t in sorted(contexts[name].items()):
            if member in SKIPPED_MEMBERS:
                continue
            array = t.endswith("[]")
            base = t[:-2] if array else t
            if base == "System.String":
                base = "string"
            ctx = 0
            if base.startswith("#"):
                base = base[1:]
                if base not in index:
                    raise GenError(f"{name}.{member}: unknown backbone {base}")
                ctx = index[base]
            elif base in index:
                ctx = index[base]
            members.append((member, base, ctx, array))
        n_members += len(members)
        emit(f"// {name}")
        emit(f"constexpr ElementInfo kMembers{index[name]}[] = {{")
        for member, base, ctx, array in members:
            line = f"    {{{cpp_str(member)}, {cpp_str(base)}, {ctx}, {'true' if array else 'false'}}},"
            if len(line) > COLUMN_LIMIT:
                emit(f"    {{{cpp_str(member)},")
                line = f"     {cpp_str(base)}, {ctx}, {'true' if array else 'false'}}},"
            emit(line)
        emit("};")
    emit("")
    emit("struct Context {")
    emit("  std::string_view name;")
    emit("  std::span<const ElementInfo> members;")
    emit("};")
    emit("")
    emit("// Indexed by TypeContext; sorted by name, 0 being no context.")
    emit("constexpr Context kContexts[] = {")
    emit('    {"", {}},')
    for name in names:
        emit(f"    {{{cpp_str(name)}, kMembers{index[name]}}},")
    emit("};")
    emit("// clang-format on")
    emit("")
    emit("constexpr bool ContextsAreSorted() {")
    emit("  for (std::size_t i = 2; i < std::size(kContexts); ++i) {")
    emit("    if (!(kContexts[i - 1].name < kContexts[i].name)) return false;")
    emit("  }")
    emit("  for (const Context& c : kContexts) {")
    emit("    for (std::size_t j = 1; j < c.members.size(); ++j) {")
    emit("      if (!(c.members[j - 1].name < c.members[j].name)) return false;")
    emit("    }")
    emit("  }")
    emit("  return true;")
    emit("}")
    emit(f"static_assert(std::size(kContexts) == {len(names) + 1});")
    emit("static_assert(ContextsAreSorted());")
    emit("")
    emit("}  // namespace")
    emit("")
    emit("TypeContext ContextOfType(std::string_view type_name) {")
    emit("  auto begin = std::begin(kContexts) + 1;")
    emit("  auto it = std::lower_bound(begin, std::end(kContexts), type_name,")
    emit("                             [](const Context& c, std::string_view n) { return c.name < n; });")
    emit("  return it != std::end(kContexts) && it->name == type_name ? static_cast<TypeContext>(it - kContexts) : 0;")
    emit("}")
    emit("")
    emit("const ElementInfo* FindElement(TypeContext context, std::string_view json_name) {")
    emit("  if (context == kNoContext || context >= std::size(kContexts)) return nullptr;")
    emit("  const auto& members = kContexts[context].members;")
    emit("  auto it = std::ranges::lower_bound(members, json_name, {}, &ElementInfo::name);")
    emit("  return it != members.end() && it->name == json_name ? &*it : nullptr;")
    emit("}")
    emit("")
    emit("std::string_view ContextName(TypeContext context) {")
    emit("  return context < std::size(kContexts) ? kContexts[context].name : std::string_view();")
    emit("}")
    emit("")
    emit("}  // namespace fhirlake::search")
    check_columns(out)
    return "\n".join(out) + "\n", n_members


def write_or_check(output, text, check):
    if check:
        try:
            current = output.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            print(f"gen_search_params: {output}: {e}; run tools/gen_search_params.py", file=sys.stderr)
            return 1
        if current != text:
            print(f"gen_search_params: {output} is out of date; run tools/gen_search_params.py", file=sys.stderr)
            return 1
        print(f"gen_search_params: {output} is up to date")
        return 0
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.exists() and output.read_bytes() == text.encode("utf-8"):
        print(f"gen_search_params: {output} unchanged")
    else:
        output.write_bytes(text.encode("utf-8"))
        print(f"gen_search_params: wrote {output}")
    return 0


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help="repository root (default: %(default)s)")
    parser.add_argument("--input-dir", default=DEFAULT_INPUT_DIR, help="input directory, relative to --root")
    parser.add_argument("--output", default=DEFAULT_PARAMS_OUTPUT, help="registry output, relative to --root")
    parser.add_argument("--types-output", default=DEFAULT_TYPES_OUTPUT, help="element types output, relative to --root")
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if an output is missing or stale")
    parser.add_argument("--list-unsupported", action="store_true", help="print the unsupported definitions")
    args = parser.parse_args(argv)

    input_dir = args.root / args.input_dir
    try:
        resource_types = load_resource_types(input_dir / COMPARTMENT_FILE)
        sps = load_search_parameters(input_dir / SEARCH_PARAMETERS_FILE)
        params, unsupported, with_expression = build_registry(sps, resource_types)
        params_text = render_params(params, unsupported, with_expression, resource_types)
        types_text, _ = render_types(load_element_types(input_dir / ELEMENTS_FILE))
    except GenError as e:
        print(f"gen_search_params: error: {e}", file=sys.stderr)
        return 2
    if args.list_unsupported:
        for url, reason in unsupported:
            print(f"{url}: {reason}")
    rc = write_or_check(args.root / args.output, params_text, args.check)
    return max(rc, write_or_check(args.root / args.types_output, types_text, args.check))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
