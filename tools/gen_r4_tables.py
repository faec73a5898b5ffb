#!/usr/bin/python3
"""Generate src/fhir/r4_tables_generated.cc and src/fhir/r4_elements_generated.cc from the FHIR R4 4.0.1 definitions.

Inputs (relative to the repository root, see third_party/fhir-r4/README.md):
  third_party/fhir-r4/compartmentdefinition-patient.json  the Patient CompartmentDefinition; its
      resource[] lists every R4 resource type, with param[] = the search parameters that link a
      resource of that type to its patient (absent for types outside the compartment).
  third_party/fhir-r4/search-parameters.json  a Bundle of every R4 SearchParameter; each compartment
      param is resolved to element paths through the SearchParameter's FHIRPath expression.
  third_party/fhir-r4/elements.json  the element types of every resource and data type, extracted from the
      official StructureDefinitions by tools/extract_r4_elements.py (the 35 MB originals are not committed).

Output: src/fhir/r4_tables_generated.cc (resource types, Patient compartment),
src/fhir/r4_elements_generated.cc (where numbers of the checked primitive types integer, positiveInt,
unsignedInt and decimal can occur) and src/fhir/r4_shapes_generated.cc (every element's cardinality and type
kind, for FHIRPath Patch), implementing src/fhir/r4.h with constant, sorted tables (emitted already
clang-format clean, so the output needs no formatter and is byte-for-byte deterministic).

The script fails (non-zero exit) rather than guess: a compartment param without a SearchParameter,
an expression alternative other than dotted identifiers with an optional trailing
`.where(resolve() is Patient)`, a param that maps to no path, or unexpected input shape.

Usage:
  tools/gen_r4_tables.py            regenerate the output file
  tools/gen_r4_tables.py --check    exit 1 if a committed output differs from a fresh generation (CI)

Standard library only (Python 3.11).
"""

import argparse
import json
import re
import sys
from pathlib import Path

FHIR_VERSION = "4.0.1"
EXPECTED_TYPE_COUNT = 145
COLUMN_LIMIT = 120  # .clang-format ColumnLimit

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_INPUT_DIR = "third_party/fhir-r4"
DEFAULT_OUTPUT = "src/fhir/r4_tables_generated.cc"
DEFAULT_ELEMENTS_OUTPUT = "src/fhir/r4_elements_generated.cc"
DEFAULT_SHAPES_OUTPUT = "src/fhir/r4_shapes_generated.cc"
ELEMENTS_FILE = "elements.json"
COMPARTMENT_FILE = "compartmentdefinition-patient.json"
SEARCH_PARAMETERS_FILE = "search-parameters.json"

TYPE_NAME_RE = re.compile(r"^[A-Z][A-Za-z0-9]*$")
# "<Type>.a.b.c" optionally followed by ".where(resolve() is Patient)"; nothing else is understood.
ALTERNATIVE_RE_TEMPLATE = r"^{type}((?:\.[A-Za-z][A-Za-z0-9]*)+)(\.where\(\s*resolve\(\)\s+is\s+Patient\s*\))?$"


class GenError(Exception):
    pass


def load_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise GenError(f"cannot read {path}: {e}") from e


def load_compartment(path):
    """Returns {type: [param codes] or None when param is absent}, in input order."""
    doc = load_json(path)
    if doc.get("resourceType") != "CompartmentDefinition" or doc.get("code") != "Patient":
        raise GenError(f"{path}: not the Patient CompartmentDefinition")
    if doc.get("version") != FHIR_VERSION:
        raise GenError(f"{path}: version {doc.get('version')!r}, expected {FHIR_VERSION}")
    types = {}
    for entry in doc.get("resource", []):
        t = entry.get("code")
        if not isinstance(t, str) or not TYPE_NAME_RE.match(t):
            raise GenError(f"{path}: bad resource type code {t!r}")
        if t in types:
            raise GenError(f"{path}: duplicate resource type {t}")
        params = entry.get("param")
        if params is not None:
            if not isinstance(params, list) or not all(isinstance(p, str) and p for p in params):
                raise GenError(f"{path}: {t}: bad param list {params!r}")
            if not params:
                params = None  # an empty list means the same as an absent one
        types[t] = params
    if len(types) != EXPECTED_TYPE_COUNT:
        raise GenError(f"{path}: {len(types)} resource types, expected {EXPECTED_TYPE_COUNT}")
    if "Patient" not in types:
        raise GenError(f"{path}: no Patient resource type")
    return types


def load_search_parameters(path):
    """Returns {(base type, code): [(SearchParameter id, expression or None)]}."""
    doc = load_json(path)
    if doc.get("resourceType") != "Bundle":
        raise GenError(f"{path}: not a Bundle")
    index = {}
    for entry in doc.get("entry", []):
        sp = entry.get("resource", {})
        if sp.get("resourceType") != "SearchParameter":
            continue
        code = sp.get("code")
        for base in sp.get("base", []):
            index.setdefault((base, code), []).append((sp.get("id"), sp.get("expression")))
    if not index:
        raise GenError(f"{path}: no SearchParameter resources")
    return index


def paths_for_param(type_name, code, sp_index):
    """Element paths (type prefix removed) that the compartment param `code` of `type_name` points at."""
    matches = sp_index.get((type_name, code))
    if not matches:
        raise GenError(f"{type_name}: compartment param {code!r} has no SearchParameter with that base and code")
    if len(matches) > 1:
        ids = ", ".join(str(m[0]) for m in matches)
        raise GenError(f"{type_name}: compartment param {code!r} is ambiguous (SearchParameters {ids})")
    sp_id, expression = matches[0]
    if not isinstance(expression, str) or not expression.strip():
        raise GenError(f"{type_name}: compartment param {code!r} (SearchParameter {sp_id}) has no expression")

    alternative_re = re.compile(ALTERNATIVE_RE_TEMPLATE.format(type=re.escape(type_name)))
    # Mentions of the type that are not a plain "<Type>." prefix (e.g. "(Type.x as Reference)") are
    # forms this script does not understand; dropping them silently would lose compartment members.
    mention_re = re.compile(r"(?<![A-Za-z0-9_])" + re.escape(type_name) + r"(?![A-Za-z0-9_])")
    paths = []
    for alternative in (a.strip() for a in expression.split("|")):
        if alternative.startswith(type_name + "."):
            m = alternative_re.match(alternative)
            if not m:
                raise GenError(
                    f"{type_name}: compartment param {code!r} (SearchParameter {sp_id}): "
                    f"cannot understand expression alternative {alternative!r}"
                )
            paths.append(m.group(1)[1:])
        elif mention_re.search(alternative):
            raise GenError(
                f"{type_name}: compartment param {code!r} (SearchParameter {sp_id}): "
                f"expression alternative {alternative!r} mentions {type_name} in an unsupported form"
            )
    if not paths:
        raise GenError(
            f"{type_name}: compartment param {code!r} (SearchParameter {sp_id}) maps to no path: {expression!r}"
        )
    return paths


def build_tables(compartment, sp_index):
    """Returns a list, sorted by type, of (type, in_patient_compartment, sorted paths, {param: sorted paths})."""
    rows = []
    for type_name in sorted(compartment):
        params = compartment[type_name]
        paths = set()
        param_paths = {}
        for code in params or []:
            param_paths[code] = sorted(set(paths_for_param(type_name, code, sp_index)))
            paths.update(param_paths[code])
        in_compartment = params is not None or type_name == "Patient"
        if params is not None and not paths:
            raise GenError(f"{type_name}: has compartment params but no paths")
        rows.append((type_name, in_compartment, sorted(paths), dict(sorted(param_paths.items()))))
    return rows


def cpp_string(s):
    if not re.match(r"^[A-Za-z0-9.]+$", s):
        raise GenError(f"unexpected characters in {s!r}")
    return f'"{s}"'


def render(rows):
    n_types = len(rows)
    n_compartment = sum(1 for r in rows if r[1])
    out = []
    emit = out.append
    emit("// Generated by tools/gen_r4_tables.py from FHIR R4 4.0.1; do not edit.")
    emit("// Sources: third_party/fhir-r4/compartmentdefinition-patient.json, third_party/fhir-r4/search-parameters.json.")
    emit(f"// {n_types} resource types (as listed by the CompartmentDefinition, which omits Parameters), {n_compartment} of")
    emit("// them in the Patient compartment.")
    emit("#include <algorithm>")
    emit("#include <array>")
    emit("#include <cstddef>")
    emit("#include <iterator>")
    emit("#include <span>")
    emit("#include <string_view>")
    emit("")
    emit('#include "fhir/r4.h"')
    emit("")
    emit("namespace fhirlake::fhir {")
    emit("namespace {")
    emit("")
    emit("// Patient compartment paths per type: the union of the paths of the type's CompartmentDefinition params")
    emit("// (shown in the comment as param -> paths), de-duplicated and sorted.")
    for type_name, in_compartment, paths, params in rows:
        if not in_compartment:
            continue
        if not paths:
            # Only possible for Patient without params; keep the table shape uniform.
            emit(f"constexpr std::span<const std::string_view> k{type_name}Paths;")
            continue
        sources = "; ".join(f"{code} -> {', '.join(code_paths)}" for code, code_paths in params.items())
        emit(f"// {type_name}: {sources}")
        emit(f"constexpr std::string_view k{type_name}Paths[] = {{{', '.join(cpp_string(p) for p in paths)}}};")
    emit("")
    emit("struct TypeInfo {")
    emit("  std::string_view name;")
    emit("  bool in_patient_compartment;")
    emit("  std::span<const std::string_view> patient_compartment_paths;")
    emit("};")
    emit("")
    emit("// Sorted by name (byte order), for binary search.")
    emit("constexpr TypeInfo kTypes[] = {")
    for type_name, in_compartment, paths, params in rows:
        if in_compartment:
            emit(f"    {{{cpp_string(type_name)}, true, k{type_name}Paths}},")
        else:
            emit(f"    {{{cpp_string(type_name)}, false, {{}}}},")
    emit("};")
    emit("")
    emit("constexpr auto kTypeNames = [] {")
    emit("  std::array<std::string_view, std::size(kTypes)> names{};")
    emit("  for (std::size_t i = 0; i < names.size(); ++i) names[i] = kTypes[i].name;")
    emit("  return names;")
    emit("}();")
    emit("")
    emit("constexpr bool TablesAreSorted() {")
    emit("  if (!std::ranges::is_sorted(kTypeNames)) return false;")
    emit("  if (std::ranges::adjacent_find(kTypeNames) != kTypeNames.end()) return false;")
    emit("  for (const TypeInfo& t : kTypes) {")
    emit("    if (!std::ranges::is_sorted(t.patient_compartment_paths)) return false;")
    emit("    if (std::ranges::adjacent_find(t.patient_compartment_paths) != t.patient_compartment_paths.end()) return false;")
    emit("  }")
    emit("  return true;")
    emit("}")
    emit("")
    emit(f"static_assert(std::size(kTypes) == {n_types});")
    emit("static_assert(TablesAreSorted());")
    emit("")
    emit("const TypeInfo* FindType(std::string_view type) {")
    emit("  auto it = std::ranges::lower_bound(kTypes, type, {}, &TypeInfo::name);")
    emit("  if (it == std::ranges::end(kTypes) || it->name != type) return nullptr;")
    emit("  return it;")
    emit("}")
    emit("")
    emit("}  // namespace")
    emit("")
    emit("std::span<const std::string_view> AllResourceTypes() { return kTypeNames; }")
    emit("")
    emit("bool IsKnownResourceType(std::string_view type) { return FindType(type) != nullptr; }")
    emit("")
    emit("bool IsPatientCompartmentType(std::string_view type) {")
    emit("  const TypeInfo* t = FindType(type);")
    emit("  return t != nullptr && t->in_patient_compartment;")
    emit("}")
    emit("")
    emit("std::span<const std::string_view> PatientCompartmentPaths(std::string_view type) {")
    emit("  const TypeInfo* t = FindType(type);")
    emit("  return t != nullptr ? t->patient_compartment_paths : std::span<const std::string_view>();")
    emit("}")
    emit("")
    emit("}  // namespace fhirlake::fhir")
    for line in out:
        if len(line) > COLUMN_LIMIT:
            raise GenError(f"generated line exceeds {COLUMN_LIMIT} columns: {line!r}")
    return "\n".join(out) + "\n"


# --- element types: where checked numbers can occur ---

NUMBER_KINDS = {"integer": "kInteger", "positiveInt": "kPositiveInt", "unsignedInt": "kUnsignedInt",
                "decimal": "kDecimal"}
# Every element's extensions; the C++ side maps these names to the Extension context in any context.
EXTENSION_MEMBERS = ("extension", "modifierExtension")


def load_elements(path, resource_types):
    doc = load_json(path)
    if doc.get("fhirVersion") != FHIR_VERSION:
        raise GenError(f"{path}: fhirVersion {doc.get('fhirVersion')!r}, expected {FHIR_VERSION}")
    contexts = doc.get("contexts")
    primitives = doc.get("primitives")
    if not isinstance(contexts, dict) or not isinstance(primitives, list):
        raise GenError(f"{path}: no contexts or primitives")
    for t in NUMBER_KINDS:
        if t not in primitives:
            raise GenError(f"{path}: primitive type {t} missing")
    missing = sorted(t for t in resource_types if t not in contexts)
    if missing:
        raise GenError(f"{path}: no element types for resource types {missing[:5]}")
    if "Extension" not in contexts or "Parameters" not in contexts:
        raise GenError(f"{path}: no Extension or Parameters context")
    for name, members in contexts.items():
        for member in EXTENSION_MEMBERS:
            if member in members and members[member] != "Extension[]":
                raise GenError(f"{path}: {name}.{member} is {members[member]!r}, expected Extension[]")
        for member, t in members.items():
            base = t[:-2] if t.endswith("[]") else t
            target = base[1:] if base.startswith("#") else base
            known = base in primitives or base.startswith("System.") or base == "Resource" or target in contexts
            if not known:
                raise GenError(f"{path}: {name}.{member} has unknown type {t!r}")
    return contexts


def element_rows(contexts, resource_types):
    """Returns (sorted context rows [(name, [(member, kind, target context)])], sorted resource rows)."""

    def classify(t):
        base = t[:-2] if t.endswith("[]") else t
        if base in NUMBER_KINDS:
            return NUMBER_KINDS[base], None
        if base == "Resource":
            return "kResource", None
        target = base[1:] if base.startswith("#") else base
        if target in contexts:
            return "kComplex", target
        return None, None  # other primitives: nothing to check

    # A context matters when a member, other than its extensions (checked everywhere), is a checked number, any
    # resource, or a complex element whose context matters. Every other element is opaque.
    relevant = set()
    changed = True
    while changed:
        changed = False
        for name, members in contexts.items():
            if name in relevant:
                continue
            for member, t in members.items():
                kind, target = classify(t)
                if member in EXTENSION_MEMBERS or kind is None:
                    continue
                if kind != "kComplex" or target in relevant:
                    relevant.add(name)
                    changed = True
                    break
    names = sorted(relevant)
    index = {name: i + 1 for i, name in enumerate(names)}  # 0 is the opaque context
    rows = []
    for name in names:
        members = []
        for member, t in sorted(contexts[name].items()):
            kind, target = classify(t)
            if member in EXTENSION_MEMBERS or kind is None or (kind == "kComplex" and target not in relevant):
                continue
            members.append((member, kind, index[target] if target else 0))
        rows.append((name, members))
    resources = sorted(t for t in list(resource_types) + ["Parameters"] if t in relevant)
    return rows, index, resources


def cpp_ident(context_name, index):
    """The members array of a context, named by its index (paths are too long for names)."""
    if not re.match(r"^[A-Za-z][A-Za-z0-9.]*$", context_name):
        raise GenError(f"unexpected characters in context {context_name!r}")
    return f"kMembers{index[context_name]}"


def render_elements(rows, index, resources):
    out = []
    emit = out.append
    n_members = sum(len(m) for _, m in rows)
    emit("// Generated by tools/gen_r4_tables.py from FHIR R4 4.0.1; do not edit.")
    emit("// Source: third_party/fhir-r4/elements.json (extracted from the StructureDefinitions by")
    emit("// tools/extract_r4_elements.py).")
    emit(f"// {len(rows)} element contexts that can hold a checked number (integer, positiveInt, unsignedInt, decimal)")
    emit(f"// other than in extensions, with {n_members} members: the members that are such a number, any resource, or a")
    emit("// complex element of such a context. Members not listed are opaque (only their extensions are checked).")
    emit("#include <algorithm>")
    emit("#include <cstddef>")
    emit("#include <iterator>")
    emit("#include <span>")
    emit("#include <string_view>")
    emit("")
    emit('#include "fhir/r4.h"')
    emit("")
    emit("namespace fhirlake::fhir {")
    emit("namespace {")
    emit("")
    emit("using enum ElementKind;")
    emit("")
    emit("struct Member {")
    emit("  std::string_view name;")
    emit("  ElementKind kind;")
    emit("  ElementContext context;  // kComplex: the members' context")
    emit("};")
    emit("")
    emit("// One member per line, for readable diffs of the generated tables.")
    emit("// clang-format off")
    for name, members in rows:
        emit(f"// {name}")
        if not members:
            raise GenError(f"{name}: relevant but no members")
        emit(f"constexpr Member {cpp_ident(name, index)}[] = {{")
        for member, kind, target_index in members:
            emit(f'    {{{cpp_string(member)}, {kind}, {target_index}}},')
        emit("};")
    emit("")
    emit("struct Context {")
    emit("  std::string_view name;")
    emit("  std::span<const Member> members;")
    emit("};")
    emit("")
    emit("// Indexed by ElementContext; sorted by name (byte order), 0 being the opaque context.")
    emit("constexpr Context kContexts[] = {")
    emit('    {"", {}},')
    for name, _ in rows:
        emit(f"    {{{cpp_string(name)}, {cpp_ident(name, index)}}},")
    emit("};")
    emit("")
    emit("struct ResourceEntry {")
    emit("  std::string_view type;")
    emit("  ElementContext context;")
    emit("};")
    emit("")
    emit("// Resource types whose context is not opaque, sorted.")
    emit("constexpr ResourceEntry kResources[] = {")
    for t in resources:
        emit(f"    {{{cpp_string(t)}, {index[t]}}},")
    emit("};")
    emit("// clang-format on")
    emit("")
    emit("constexpr bool TablesAreSorted() {")
    emit("  for (std::size_t i = 1; i < std::size(kContexts); ++i) {")
    emit("    if (!(kContexts[i - 1].name < kContexts[i].name)) return false;")
    emit("    const auto& m = kContexts[i].members;")
    emit("    for (std::size_t j = 1; j < m.size(); ++j) {")
    emit("      if (!(m[j - 1].name < m[j].name)) return false;")
    emit("    }")
    emit("  }")
    emit("  for (std::size_t i = 1; i < std::size(kResources); ++i) {")
    emit("    if (!(kResources[i - 1].type < kResources[i].type)) return false;")
    emit("  }")
    emit("  return true;")
    emit("}")
    emit("")
    emit(f"static_assert(std::size(kContexts) == {len(rows) + 1});")
    emit("static_assert(TablesAreSorted());")
    emit(f"static_assert(kContexts[{index['Extension']}].name == \"Extension\");")
    emit("")
    emit("}  // namespace")
    emit("")
    emit(f"ElementContext ExtensionContext() {{ return {index['Extension']}; }}")
    emit("")
    emit("ElementContext ResourceContext(std::string_view type) {")
    emit("  auto it = std::ranges::lower_bound(kResources, type, {}, &ResourceEntry::type);")
    emit("  return it != std::ranges::end(kResources) && it->type == type ? it->context : kOpaqueContext;")
    emit("}")
    emit("")
    emit("ElementType MemberType(ElementContext context, std::string_view name) {")
    emit('  if (name == "extension" || name == "modifierExtension") return {kComplex, ExtensionContext()};')
    emit("  if (context == kOpaqueContext || context >= std::size(kContexts)) return {};")
    emit("  // Runs for every key of every resource. Most contexts have a handful of members, where a scan comparing")
    emit("  // lengths first beats a binary search (each of whose steps is a memcmp); Extension has dozens.")
    emit("  const auto& members = kContexts[context].members;")
    emit("  if (members.size() > 16) {")
    emit("    auto it = std::ranges::lower_bound(members, name, {}, &Member::name);")
    emit("    if (it == members.end() || it->name != name) return {};")
    emit("    return {it->kind, it->context};")
    emit("  }")
    emit("  for (const Member& m : members) {")
    emit("    if (m.name.size() == name.size() && m.name == name) return {m.kind, m.context};")
    emit("  }")
    emit("  return {};")
    emit("}")
    emit("")
    emit("std::string_view ContextName(ElementContext context) {")
    emit("  return context < std::size(kContexts) ? kContexts[context].name : std::string_view();")
    emit("}")
    emit("")
    emit("}  // namespace fhirlake::fhir")
    for line in out:
        if len(line) > COLUMN_LIMIT:
            raise GenError(f"generated line exceeds {COLUMN_LIMIT} columns: {line!r}")
    return "\n".join(out) + "\n"


# --- element shapes: every element's cardinality and kind (FHIRPath Patch) ---


def shape_rows(contexts, primitives, resource_types, mandatory):
    """Returns sorted [(context name, is_resource, [(member, kind, repeating, target context name or None,
    mandatory)])]; `mandatory`: per resource, its top-level members of minimum cardinality 1."""
    resources = set(resource_types) | {"Parameters"}
    rows = []
    for name in sorted(contexts):
        members = []
        required = set(mandatory.get(name, []))
        for member, t in sorted(contexts[name].items()):
            repeating = t.endswith("[]")
            base = t[:-2] if repeating else t
            target = base[1:] if base.startswith("#") else base
            must = member in required
            if base in primitives or base.startswith("System."):
                members.append((member, "kPrimitive", repeating, None, must))
            elif base == "Resource":
                members.append((member, "kResource", repeating, None, must))
            elif target in contexts:
                members.append((member, "kComplex", repeating, target, must))
            else:
                raise GenError(f"{name}.{member}: unknown type {t!r}")
        rows.append((name, name in resources, members))
    return rows


def render_shapes(rows):
    index = {name: i + 1 for i, (name, _, _) in enumerate(rows)}  # 0 is the unknown shape
    n_members = sum(len(m) for _, _, m in rows)
    n_repeating = sum(1 for _, _, m in rows for x in m if x[2])
    n_mandatory = sum(1 for _, _, m in rows for x in m if x[4])
    out = []
    emit = out.append
    emit("// Generated by tools/gen_r4_tables.py from FHIR R4 4.0.1; do not edit.")
    emit("// Source: third_party/fhir-r4/elements.json (extracted from the StructureDefinitions by")
    emit("// tools/extract_r4_elements.py).")
    emit(f"// {len(rows)} resources, data types and backbone elements with {n_members} members ({n_repeating} of them")
    emit("// repeating): each member's kind (primitive, complex, any resource), whether it is a JSON array, and for a")
    emit("// complex member the shape of its own members; and the resources' " + str(n_mandatory) +
         " mandatory top-level members (minimum")
    emit("// cardinality 1).")
    emit("#include <algorithm>")
    emit("#include <cstddef>")
    emit("#include <iterator>")
    emit("#include <span>")
    emit("#include <string_view>")
    emit("")
    emit('#include "fhir/r4.h"')
    emit("")
    emit("namespace fhirlake::fhir {")
    emit("namespace {")
    emit("")
    emit("using enum ShapeKind;")
    emit("")
    emit("struct ShapeMember {")
    emit("  std::string_view name;")
    emit("  ShapeKind kind;")
    emit("  bool repeating;")
    emit("  ShapeContext context;  // kComplex: the members' shape")
    emit("  bool mandatory;        // a resource's top-level member of minimum cardinality 1")
    emit("};")
    emit("")
    emit("// One member per line, for readable diffs of the generated tables.")
    emit("// clang-format off")
    for name, _, members in rows:
        emit(f"// {name}")
        if not members:
            raise GenError(f"{name}: no members")
        emit(f"constexpr ShapeMember kShape{index[name]}[] = {{")
        for member, kind, repeating, target, must in members:
            target_index = index[target] if target else 0
            emit(f"    {{{cpp_string(member)}, {kind}, {'true' if repeating else 'false'}, {target_index}, "
                 f"{'true' if must else 'false'}}},")
        emit("};")
    emit("")
    emit("struct ShapeEntry {")
    emit("  std::string_view name;")
    emit("  bool resource;  // a resource type (or Parameters), not a data type or backbone element")
    emit("  std::span<const ShapeMember> members;")
    emit("};")
    emit("")
    emit("// Indexed by ShapeContext; sorted by name (byte order), 0 being the unknown shape.")
    emit("constexpr ShapeEntry kShapes[] = {")
    emit('    {"", false, {}},')
    for name, is_resource, _ in rows:
        emit(f"    {{{cpp_string(name)}, {'true' if is_resource else 'false'}, kShape{index[name]}}},")
    emit("};")
    emit("// clang-format on")
    emit("")
    emit("constexpr bool TablesAreSorted() {")
    emit("  for (std::size_t i = 1; i < std::size(kShapes); ++i) {")
    emit("    if (!(kShapes[i - 1].name < kShapes[i].name)) return false;")
    emit("    const auto& m = kShapes[i].members;")
    emit("    for (std::size_t j = 1; j < m.size(); ++j) {")
    emit("      if (!(m[j - 1].name < m[j].name)) return false;")
    emit("    }")
    emit("  }")
    emit("  return true;")
    emit("}")
    emit("")
    emit(f"static_assert(std::size(kShapes) == {len(rows) + 1});")
    emit("static_assert(TablesAreSorted());")
    emit("")
    emit("// The empty name sorts first, so FindShape(\"\") is the unknown shape.")
    emit("ShapeContext FindShape(std::string_view name) {")
    emit("  auto it = std::ranges::lower_bound(kShapes, name, {}, &ShapeEntry::name);")
    emit("  if (it == std::ranges::end(kShapes) || it->name != name) return kUnknownShape;")
    emit("  return static_cast<ShapeContext>(it - std::ranges::begin(kShapes));")
    emit("}")
    emit("")
    emit("}  // namespace")
    emit("")
    emit("ShapeContext ResourceShape(std::string_view resource_type) {")
    emit("  ShapeContext s = FindShape(resource_type);")
    emit("  return kShapes[s].resource ? s : kUnknownShape;")
    emit("}")
    emit("")
    emit("ShapeContext DataTypeShape(std::string_view type_name) {")
    emit("  ShapeContext s = FindShape(type_name);")
    emit("  bool data_type = !kShapes[s].resource && kShapes[s].name.find('.') == std::string_view::npos;")
    emit("  return data_type ? s : kUnknownShape;")
    emit("}")
    emit("")
    emit("ElementShape MemberShape(ShapeContext context, std::string_view name) {")
    emit("  if (context == kUnknownShape || context >= std::size(kShapes)) return {};")
    emit("  const auto& members = kShapes[context].members;")
    emit("  auto it = std::ranges::lower_bound(members, name, {}, &ShapeMember::name);")
    emit("  if (it == members.end() || it->name != name) return {};")
    emit("  return {it->kind, it->repeating, it->context, it->mandatory};")
    emit("}")
    emit("")
    emit("std::string_view ShapeName(ShapeContext context) {")
    emit("  return context < std::size(kShapes) ? kShapes[context].name : std::string_view();")
    emit("}")
    emit("")
    emit("}  // namespace fhirlake::fhir")
    for line in out:
        if len(line) > COLUMN_LIMIT:
            raise GenError(f"generated line exceeds {COLUMN_LIMIT} columns: {line!r}")
    return "\n".join(out) + "\n"


def write_or_check(output, text, check):
    if check:
        try:
            current = output.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            print(f"gen_r4_tables: {output}: {e}; run tools/gen_r4_tables.py", file=sys.stderr)
            return 1
        if current != text:
            print(f"gen_r4_tables: {output} is out of date; run tools/gen_r4_tables.py", file=sys.stderr)
            return 1
        print(f"gen_r4_tables: {output} is up to date")
        return 0
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.exists() and output.read_bytes() == text.encode("utf-8"):
        print(f"gen_r4_tables: {output} unchanged")
    else:
        output.write_bytes(text.encode("utf-8"))
        print(f"gen_r4_tables: wrote {output}")
    return 0


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help="repository root (default: %(default)s)")
    parser.add_argument(
        "--input-dir", default=DEFAULT_INPUT_DIR, help="input directory, relative to --root (default: %(default)s)"
    )
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="output file, relative to --root (default: %(default)s)")
    parser.add_argument(
        "--elements-output",
        default=DEFAULT_ELEMENTS_OUTPUT,
        help="element tables output file, relative to --root (default: %(default)s)",
    )
    parser.add_argument(
        "--shapes-output",
        default=DEFAULT_SHAPES_OUTPUT,
        help="element shapes output file, relative to --root (default: %(default)s)",
    )
    parser.add_argument(
        "--check", action="store_true", help="do not write; exit 1 if an output file is missing or out of date"
    )
    args = parser.parse_args(argv)

    input_dir = args.root / args.input_dir
    try:
        compartment = load_compartment(input_dir / COMPARTMENT_FILE)
        sp_index = load_search_parameters(input_dir / SEARCH_PARAMETERS_FILE)
        text = render(build_tables(compartment, sp_index))
        contexts = load_elements(input_dir / ELEMENTS_FILE, compartment.keys())
        elements_text = render_elements(*element_rows(contexts, compartment.keys()))
        primitives = load_json(input_dir / ELEMENTS_FILE)["primitives"]
        mandatory = load_json(input_dir / ELEMENTS_FILE).get("mandatory", {})
        shapes_text = render_shapes(shape_rows(contexts, primitives, compartment.keys(), mandatory))
    except GenError as e:
        print(f"gen_r4_tables: error: {e}", file=sys.stderr)
        return 2

    rc = write_or_check(args.root / args.output, text, args.check)
    rc = max(rc, write_or_check(args.root / args.elements_output, elements_text, args.check))
    return max(rc, write_or_check(args.root / args.shapes_output, shapes_text, args.check))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
