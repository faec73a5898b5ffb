#!/usr/bin/python3
"""Extract the element types of every FHIR R4 resource and data type into third_party/fhir-r4/elements.json.

Input: the official StructureDefinition Bundles of FHIR R4 4.0.1, `profiles-types.json` and
`profiles-resources.json` (35 MB, not committed; from the FHIR R4 definitions download,
https://hl7.org/fhir/R4/definitions.json.zip), in the directory given by --source.

Output: a compact JSON file (about 1% of the input) that tools/gen_r4_tables.py turns into C++ tables, so a
build, and `gen_r4_tables.py --check`, need only what is committed. Its shape:

  {"fhirVersion": "4.0.1",
   "primitives": ["base64Binary", ...],            primitive data types (JSON scalars)
   "contexts": {                                   one line per complex type, resource and backbone element
     "Quantity": {"value": "decimal", "comparator": "code", ...},
     "Observation": {"component": "#Observation.component[]", "valueQuantity": "Quantity", ...},
     ...},
   "mandatory": {                                  per resource, its top-level elements of minimum cardinality 1
     "Observation": ["code", "status"], ...}}        (what _elements keeps besides the elements asked for)

Each context maps an element's JSON name to its type: a primitive or complex type name, a resource type name,
"Resource" (any resource; its resourceType says which), "System.String" and the like (FHIRPath system types:
ids and urls of elements, JSON strings), or "#<path>" for a backbone element (or a contentReference) whose
members are the context of that path. A trailing "[]" marks an element that repeats (a JSON array). Choice
elements ("value[x]") appear once per allowed type under their JSON names ("valueQuantity", "valueInteger").
Constrained profiles (SimpleQuantity, MoneyQuantity) are not types of their own and are left out.

Usage: tools/extract_r4_elements.py --source DIR [--output third_party/fhir-r4/elements.json]
Standard library only (Python 3.11).
"""

import argparse
import json
import sys
from pathlib import Path

FHIR_VERSION = "4.0.1"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = "third_party/fhir-r4/elements.json"
SYSTEM_PREFIX = "http://hl7.org/fhirpath/"


class ExtractError(Exception):
    pass


def load_definitions(path):
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ExtractError(f"cannot read {path}: {e}") from e
    if doc.get("resourceType") != "Bundle":
        raise ExtractError(f"{path}: not a Bundle")
    out = []
    for entry in doc.get("entry", []):
        sd = entry.get("resource", {})
        if sd.get("resourceType") != "StructureDefinition":
            continue
        if sd.get("fhirVersion") != FHIR_VERSION:
            # The 4.0.1 download's profiles-resources.json carries one R4B (4.3.0) definition,
            # SubscriptionStatus, which is no R4 resource: definitions of other versions are left out.
            print(f"extract_r4_elements: skipping {sd.get('id')} (fhirVersion {sd.get('fhirVersion')})", file=sys.stderr)
            continue
        out.append(sd)
    return out


def type_name(code):
    if code.startswith(SYSTEM_PREFIX):
        return code[len(SYSTEM_PREFIX):]
    return code


def extract(definitions):
    primitives = sorted(sd["id"] for sd in definitions if sd.get("kind") == "primitive-type")
    contexts = {}
    mandatory = {}
    for sd in definitions:
        kind = sd.get("kind")
        if kind not in ("complex-type", "resource") or sd.get("derivation") == "constraint":
            continue
        name = sd["type"]
        if sd.get("abstract") and name not in ("Element", "BackboneElement", "Resource", "DomainResource"):
            continue
        if name in contexts:
            raise ExtractError(f"{name}: defined twice")
        elements = sd.get("snapshot", {}).get("element", [])
        if not elements or elements[0].get("path") != name:
            raise ExtractError(f"{name}: snapshot does not start with the type's root element")
        contexts[name] = {}
        for el in elements[1:]:
            path = el["path"]
            if el.get("id") != path:
                raise ExtractError(f"{name}: sliced element {el.get('id')!r} in a base definition")
            parent, _, member = path.rpartition(".")
            if parent not in contexts:
                raise ExtractError(f"{name}: element {path} comes before its parent")
            repeats = "[]" if el.get("max") not in ("0", "1") else ""
            types = [type_name(t["code"]) for t in el.get("type", [])]
            if "contentReference" in el:
                ref = el["contentReference"]
                if types or not ref.startswith("#") or ref[1:] not in contexts:
                    raise ExtractError(f"{path}: unexpected contentReference {ref!r}")
                entries = {member: ref + repeats}
            elif not types:
                raise ExtractError(f"{path}: no type")
            elif member.endswith("[x]"):
                base = member[:-3]
                entries = {base + t[0].upper() + t[1:]: t + repeats for t in types}
            elif len(types) != 1:
                raise ExtractError(f"{path}: {len(types)} types but not a choice element")
            elif types[0] in ("BackboneElement", "Element"):
                contexts[path] = {}
                entries = {member: "#" + path + repeats}
            else:
                entries = {member: types[0] + repeats}
            for json_name, t in entries.items():
                if json_name in contexts[parent]:
                    raise ExtractError(f"{parent}: element {json_name} defined twice")
                contexts[parent][json_name] = t
                if kind == "resource" and parent == name and el.get("min", 0) >= 1:
                    mandatory.setdefault(name, []).append(json_name)
    return {"fhirVersion": FHIR_VERSION, "primitives": primitives, "contexts": dict(sorted(contexts.items())),
            "mandatory": {k: sorted(v) for k, v in sorted(mandatory.items())}}


def render(doc):
    lines = ["{", f'"fhirVersion": {json.dumps(doc["fhirVersion"])},', f'"primitives": {json.dumps(doc["primitives"])},',
             '"contexts": {']
    items = list(doc["contexts"].items())
    for i, (name, members) in enumerate(items):
        sep = "," if i + 1 < len(items) else ""
        lines.append(f"{json.dumps(name)}: {json.dumps(members, separators=(',', ':'))}{sep}")
    lines.append("},")
    lines.append('"mandatory": {')
    items = list(doc["mandatory"].items())
    for i, (name, members) in enumerate(items):
        sep = "," if i + 1 < len(items) else ""
        lines.append(f"{json.dumps(name)}: {json.dumps(members, separators=(',', ':'))}{sep}")
    lines.append("}}")
    return "\n".join(lines) + "\n"


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, required=True,
                        help="directory with profiles-types.json and profiles-resources.json")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / DEFAULT_OUTPUT, help="default: %(default)s")
    args = parser.parse_args(argv)
    try:
        definitions = load_definitions(args.source / "profiles-types.json")
        definitions += load_definitions(args.source / "profiles-resources.json")
        text = render(extract(definitions))
    except ExtractError as e:
        print(f"extract_r4_elements: error: {e}", file=sys.stderr)
        return 2
    args.output.write_text(text, encoding="utf-8")
    print(f"extract_r4_elements: wrote {args.output} ({len(text)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
