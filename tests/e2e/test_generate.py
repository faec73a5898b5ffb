"""`fhirlake generate`: 250 patients (seed 7) cloned from the Synthea sample, checked against expectations
computed here from the sample files: per-type counts, unique ids, references that all resolve inside the
output, per-clone compartments as large as their source patient's, byte-identical reruns, seed sensitivity,
the two Groups, and a clean `fhirlake load` of the output.

The clone -> source patient mapping is recovered from content: a generated Patient equals its source Patient
once every string equal to the resource's own id is masked (Synthea repeats the id in identifier values).
"""

from __future__ import annotations

import collections
import hashlib
import json
import re
import subprocess

import pytest

from fhirlake_helpers import ID_RE, SAMPLE_DIR, PatientCompartment, rewrite_references, run_load

PATIENTS = 250
SEED = 7
# Types a patient's Bundle may carry that are shared by all patients (written once, original ids).
SHARED_TYPES = {"Organization", "Practitioner", "PractitionerRole", "Location"}


def run_generate(binary, out, patients=PATIENTS, seed=SEED, extra=()):
    cmd = [str(binary), "generate", "--patients", str(patients), "--seed", str(seed), "--out", str(out), *extra]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=300)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def dir_digest(path):
    """{relative file name: sha256} of every file under `path`."""
    return {str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(path.rglob("*")) if f.is_file()}


def mask_id(value, own_id):
    if isinstance(value, dict):
        return {k: mask_id(v, own_id) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_id(v, own_id) for v in value]
    return "<own id>" if value == own_id else value


def content_key(resource):
    return json.dumps(mask_id(resource, resource["id"]), sort_keys=True)


def references(value):
    """Every string under a key "reference"."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "reference" and isinstance(v, str):
                yield v
            else:
                yield from references(v)
    elif isinstance(value, list):
        for v in value:
            yield from references(v)


class SourceModel:
    """The sample as generate must read it: patient Bundles (exactly one Patient) and shared resources."""

    def __init__(self, sample_dir=SAMPLE_DIR):
        files = sorted((p for p in sample_dir.iterdir() if p.suffix == ".json"), key=lambda p: p.name.encode())
        bundles = []  # (file name, [resource])
        self.urn_map = {}
        for f in files:
            doc = json.loads(f.read_text("utf-8"))
            if doc.get("resourceType") != "Bundle":
                assert doc.get("resourceType") == "Group", f"{f.name}: unexpected plain {doc.get('resourceType')}"
                continue  # the sample's Group of the source patients is not part of the output
            resources = []
            for e in doc.get("entry", []):
                resources.append(e["resource"])
                if e.get("fullUrl", "").startswith("urn:uuid:"):
                    self.urn_map[e["fullUrl"]] = f"{e['resource']['resourceType']}/{e['resource']['id']}"
            bundles.append((f.name, resources))
        self.patients = {}  # source patient id -> {"patient", "locals", "counts"}
        shared = {}
        for name, resources in bundles:
            pats = [r for r in resources if r["resourceType"] == "Patient"]
            if len(pats) != 1:
                for r in resources:
                    shared[(r["resourceType"], r["id"])] = r
                continue
            local = [rewrite_references(r, self.urn_map) for r in resources if r["resourceType"] not in SHARED_TYPES]
            for r in resources:
                if r["resourceType"] in SHARED_TYPES:
                    shared[(r["resourceType"], r["id"])] = r
            pid = pats[0]["id"]
            self.patients[pid] = {
                "patient": rewrite_references(pats[0], self.urn_map),
                "locals": local,
                "counts": collections.Counter(r["resourceType"] for r in local),
            }
        self.shared_counts = collections.Counter(t for t, _ in shared)
        self.shared_keys = set(shared)
        self.by_content = {content_key(p["patient"]): pid for pid, p in self.patients.items()}
        assert len(self.by_content) == len(self.patients), "two source patients with the same content"
        self.ids = {r["id"] for _, rs in bundles for r in rs}


class Output:
    """A generated folder, parsed: {Type}.ndjson files, one resource per line."""

    def __init__(self, path):
        self.path = path
        self.by_type = {}
        self.lines = 0
        for f in sorted(path.glob("*.ndjson")):
            rows = []
            for line in f.read_bytes().split(b"\n"):
                if not line:
                    continue
                self.lines += 1
                rows.append(json.loads(line))
            self.by_type[f.stem] = rows
        self.all = [r for rows in self.by_type.values() for r in rows]
        self.keys = {(r["resourceType"], r["id"]) for r in self.all}


@pytest.fixture(scope="module")
def source():
    assert SAMPLE_DIR.is_dir(), f"sample folder missing: {SAMPLE_DIR} (run scripts/sample-data.sh)"
    return SourceModel()


@pytest.fixture(scope="module")
def runs(fhirlake_bin, tmp_path_factory):
    """Two runs with seed 7 and one with seed 8 (same N)."""
    out = {}
    for name, seed in (("a", SEED), ("b", SEED), ("c", SEED + 1)):
        path = tmp_path_factory.mktemp(f"gen-{name}") / "out"
        rc, stdout, stderr = run_generate(fhirlake_bin, path, seed=seed)
        assert rc == 0, f"generate (seed {seed}) exited {rc}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        out[name] = (path, stdout)
    return out


@pytest.fixture(scope="module")
def output(runs):
    return Output(runs["a"][0])


@pytest.fixture(scope="module")
def clone_sources(output, source):
    """{generated patient id: source patient id}."""
    mapping = {}
    for p in output.by_type.get("Patient", []):
        key = content_key(p)
        assert key in source.by_content, f"Patient/{p['id']} is not a copy of any source patient"
        mapping[p["id"]] = source.by_content[key]
    return mapping


def test_summary_and_layout(runs, output):
    path, stdout = runs["a"]
    assert re.search(rf"\b{PATIENTS} patients\b", stdout), stdout
    m = re.search(r"([\d,]+) resources", stdout)
    assert m and int(m.group(1).replace(",", "")) == output.lines, stdout
    m = re.search(r"([\d,]+) bytes", stdout)
    total = sum(f.stat().st_size for f in path.glob("*.ndjson"))
    assert m and int(m.group(1).replace(",", "")) == total, stdout
    assert re.search(r"[\d.]+ s\b", stdout) and "MB/s" in stdout, stdout
    assert all(f.suffix == ".ndjson" for f in path.iterdir()), sorted(f.name for f in path.iterdir())
    for t, rows in output.by_type.items():
        assert all(r["resourceType"] == t for r in rows), f"{t}.ndjson holds other types"
    raw = (path / "Observation.ndjson").read_bytes()
    assert raw.endswith(b"\n") and b"\n " not in raw, "one minified resource per line"


def test_clones_cycle_through_shuffled_sources(output, source, clone_sources):
    order = [clone_sources[p["id"]] for p in output.by_type["Patient"]]
    assert len(order) == PATIENTS
    n = len(source.patients)
    assert sorted(order[:n]) == sorted(source.patients), "clones 0..99 are a permutation of the sources"
    assert all(order[k] == order[k % n] for k in range(PATIENTS)), "clone k copies source perm[k mod 100]"
    assert order[:n] != sorted(order[:n]), "the source order is shuffled"


def test_per_type_counts(output, source, clone_sources):
    uses = collections.Counter(clone_sources.values())
    assert sorted(collections.Counter(uses.values()).items()) == [(2, 50), (3, 50)], uses
    expected = collections.Counter()
    for pid, times in uses.items():
        for t, c in source.patients[pid]["counts"].items():
            expected[t] += times * c
    local_total = sum(expected.values())
    per_patient_total = sum(sum(p["counts"].values()) for p in source.patients.values())
    assert 2 * per_patient_total < local_total < 3 * per_patient_total  # ~2.5x the sample
    expected.update(source.shared_counts)
    expected["Group"] += 2
    got = collections.Counter({t: len(rows) for t, rows in output.by_type.items()})
    assert got == expected, {t: (got[t], expected[t]) for t in set(got) | set(expected) if got[t] != expected[t]}


def test_ids_unique_and_fresh(output, source):
    keys = [(r["resourceType"], r["id"]) for r in output.all]
    dup = [k for k, n in collections.Counter(keys).items() if n > 1]
    assert not dup, f"{len(dup)} duplicate ids, e.g. {dup[:5]}"
    ids = [r["id"] for r in output.all]
    assert len(set(ids)) == len(ids), "ids are unique across types too"
    bad = [i for i in ids if not ID_RE.match(i)]
    assert not bad, bad[:5]
    shared = {k for k in output.keys if k[0] in SHARED_TYPES}
    assert shared == source.shared_keys, "shared resources keep their ids, each written once"
    local_ids = {i for t, i in output.keys if t not in SHARED_TYPES and t != "Group"}
    assert not (local_ids & source.ids), "every cloned resource has a fresh id"
    groups = {r["id"] for r in output.by_type["Group"]}
    assert f"group-1pct-{SEED}" in groups and len(groups) == 2


def test_every_reference_resolves(output, runs):
    problems = []
    for r in output.all:
        for ref in references(r):
            if ref.startswith("#"):
                continue  # contained resource
            t, _, i = ref.partition("/")
            if (t, i) not in output.keys:
                problems.append(f"{r['resourceType']}/{r['id']}: {ref}")
    assert not problems, f"{len(problems)} unresolved references: {problems[:10]}"
    for f in runs["a"][0].glob("*.ndjson"):
        assert b"urn:uuid:" not in f.read_bytes(), f"{f.name} still has urn:uuid: values"


def test_groups(output):
    groups = {g["id"]: g for g in output.by_type["Group"]}
    patients = [p["id"] for p in output.by_type["Patient"]]
    everyone = [m["entity"]["reference"] for m in groups[f"group-all-{SEED}"]["member"]]
    assert sorted(everyone) == sorted(f"Patient/{p}" for p in patients)
    pct = groups[f"group-1pct-{SEED}"]
    members = [m["entity"]["reference"] for m in pct["member"]]
    assert members == [f"Patient/{patients[k]}" for k in range(0, PATIENTS, 100)], "every 100th patient"
    assert pct["quantity"] == len(members) == 3


def test_compartments_complete_and_separate(output, source, clone_sources):
    """Each clone's compartment is as large as its source's; its resources only reach each other."""
    compartment = PatientCompartment()
    got = collections.Counter()
    for r in output.all:
        if r["resourceType"] == "Group":
            continue  # the generated Groups list every patient; the sample's own Group is not copied
        for pid in compartment.patients_of(r):
            got[pid] += 1
    for pid, src in clone_sources.items():
        want = sum(1 for r in source.patients[src]["locals"] if src in compartment.patients_of(r))
        assert got[pid] == want, f"Patient/{pid} (copy of {src}): compartment {got[pid]}, source has {want}"
    # Connected components of the patient-local resources over their references.
    parent = {}

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    local = [r for r in output.all if r["resourceType"] not in SHARED_TYPES and r["resourceType"] != "Group"]
    for r in local:
        parent[(r["resourceType"], r["id"])] = (r["resourceType"], r["id"])
    for r in local:
        for ref in references(r):
            t, _, i = ref.partition("/")
            if (t, i) in parent:
                a, b = find((r["resourceType"], r["id"])), find((t, i))
                parent[a] = b
    components = collections.defaultdict(list)
    for key in parent:
        components[find(key)].append(key)
    assert len(components) == PATIENTS, f"{len(components)} connected groups of resources for {PATIENTS} patients"
    for members in components.values():
        pats = [i for t, i in members if t == "Patient"]
        assert len(pats) == 1, f"a group of {len(members)} resources holds {len(pats)} Patients"
        src = clone_sources[pats[0]]
        assert len(members) == len(source.patients[src]["locals"]), f"Patient/{pats[0]}: resources of the copy"


def test_deterministic_and_seeded(runs, output):
    a, b, c = (dir_digest(runs[k][0]) for k in ("a", "b", "c"))
    assert a == b, "same (patients, seed) gives byte-identical output"
    assert a.keys() == c.keys()
    assert a["Patient.ndjson"] != c["Patient.ndjson"], "another seed gives other patients"
    ids_c = {json.loads(line)["id"] for line in (runs["c"][0] / "Patient.ndjson").read_bytes().splitlines()}
    assert not (ids_c & {p["id"] for p in output.by_type["Patient"]}), "seeds 7 and 8 share patient ids"


def test_load_generated_output(fhirlake_bin, runs, output, tmp_path):
    load = run_load(fhirlake_bin, tmp_path / "data", [runs["a"][0]])
    assert load.returncode == 0, load.describe()
    assert load.loaded_count() == output.lines, load.describe()
    assert re.search(r"\b0 unresolved", load.stdout), load.describe()
    assert re.search(r"\b0 errors", load.stdout), load.describe()
    assert not re.search(r"\.(nd)?json:\d+:", load.stderr), load.describe()


def test_bundles_mode_loads(fhirlake_bin, source, tmp_path):
    out = tmp_path / "out"
    rc, stdout, stderr = run_generate(fhirlake_bin, out, patients=3, extra=("--bundles",))
    assert rc == 0, stdout + stderr
    bundles = sorted((out / "bundles").glob("*.json"))
    assert [b.name for b in bundles] == ["patient-0.json", "patient-1.json", "patient-2.json"]
    entries = 0
    for b in bundles:
        doc = json.loads(b.read_text("utf-8"))
        assert doc["resourceType"] == "Bundle" and doc["type"] == "transaction"
        entries += len(doc["entry"])
    assert not list(out.glob("Patient.ndjson")), "patients are in the Bundles only"
    load = run_load(fhirlake_bin, tmp_path / "data", [out])
    assert load.returncode == 0, load.describe()
    assert load.loaded_count() == entries + sum(source.shared_counts.values()) + 2, load.describe()
    assert re.search(r"\b0 unresolved", load.stdout) and re.search(r"\b0 errors", load.stdout), load.describe()


def test_refuses_non_empty_out(fhirlake_bin, tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    rc, stdout, stderr = run_generate(fhirlake_bin, tmp_path, patients=1)
    assert rc != 0 and "not empty" in stderr, stdout + stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
