"""The Bulk Data IG's STU3 kick-off options in the IG view: `includeAssociatedData` (the Provenance of what was
exported: the most recent of each exported resource, or all of them, and no other), `organizeOutputBy=Patient`
(files of per-patient blocks: a `Parameters` header, the Patient, its compartment; a block that outgrows its file
continues in the next one, the header repeated, linked with `continuesInFile`) and `allowPartialManifests` (manifest
pages linked with `link`, full pages shown with 202 while the export runs). Every expected set is computed here from
the sample and the writes the tests make (export_helpers.Model), never by the server.
"""

from __future__ import annotations

import collections
import copy
import json
import time

import pytest
import requests

from export_helpers import servers  # noqa: F401  (fixture)
from export_helpers import (SAMPLE_GROUP_ID, assert_outcome, expected_group, expected_patient, expected_system,
                            group_members, new_session, r4)
from test_export_ig import KICKOFF, POLL, BulkClient, diff, kickoff_url
from test_export_ig import env, tpl  # noqa: F401  (fixtures: one server per module on a copy of the sample)
from test_export_ig_params import STRICT, q

HEADER_PARAM = "header"


def run(base, level="system", query="", group_id=SAMPLE_GROUP_ID, headers=KICKOFF, body=None):
    """Kick-off (GET, or POST with a Parameters body), wait; returns (manifest, {url: [parsed lines]})."""
    client = BulkClient(new_session())
    url = kickoff_url(base, level, group_id, query)
    if body is None:
        status_url = client.kickoff(url, headers=headers)
    else:
        r = client.sess.post(url, data=json.dumps(body), headers={**headers, "Content-Type": "application/fhir+json"})
        assert r.status_code == 202, r.text
        status_url = r.headers["Content-Location"]
    r = client.wait(status_url)
    assert r.status_code == 200, r.text
    m = r.json()
    bodies = {}
    for entry in m["output"]:
        got = requests.get(entry["url"], headers={"Accept-Encoding": "gzip"}, timeout=60)
        assert got.status_code == 200, got.text
        lines = got.content.split(b"\n")
        assert lines[-1] == b"", f"{entry['url']} does not end with a newline"
        parsed = [json.loads(x) for x in lines[:-1]]
        assert len(parsed) == entry["count"], (entry, len(parsed))
        bodies[entry["url"]] = parsed
    return m, bodies


def key_of(resource):
    return (resource["resourceType"], resource["id"], int(resource["meta"]["versionId"]))


# ---------------------------------------------------------------------------------------------- includeAssociatedData

def local_target(ref, base):
    """A Provenance.target reference as this server resolves it: relative, or absolute to the datastore's base."""
    if isinstance(ref, str) and ref.startswith(base + "/"):
        ref = ref[len(base) + 1:]
    return r4().parse_literal(ref)


def expected_associated(state, exported, base, latest):
    """The Provenance (keys with versions) of the resources in `exported` (Counter of (type, id, version))."""
    targets = {(t, i) for (t, i, _) in exported}
    candidates = collections.defaultdict(list)  # target -> [(recorded, provenance key)]
    for (t, i), e in state.items():
        if t != "Provenance" or e.deleted:
            continue
        for tgt in e.resource.get("target", []):
            lit = local_target(tgt.get("reference"), base)
            if lit in targets:
                candidates[lit].append((e.resource["recorded"], (t, i, e.version)))
    chosen = set()
    for tgt, provs in candidates.items():
        if latest:
            provs.sort()
            assert len(provs) == 1 or provs[-1][0] != provs[-2][0], f"a tie for {tgt}: the test must avoid it"
            chosen.add(provs[-1][1])
        else:
            chosen.update(p for _, p in provs)
    return collections.Counter(chosen)


@pytest.fixture(scope="module")
def provenance_env(tpl, tmp_path_factory):
    """A server on a copy of the sample with Provenance written by the test: several per target, with distinct
    `recorded` times, relative, versioned and absolute references, and one whose targets no export here includes."""
    from export_helpers import ServerPool
    root = tmp_path_factory.mktemp("ig-prov")
    pool = ServerPool(root)
    srv = pool.start(tpl.clone(root / "data"), ["--export-poll-seconds", "1"])
    model = tpl.model()
    live = model.live()
    members = sorted(group_members(live[("Group", SAMPLE_GROUP_ID)].resource))
    conds = collections.defaultdict(list)
    obs = collections.defaultdict(list)
    for (t, i), e in sorted(live.items()):
        if t in ("Condition", "Observation"):
            for p in e.patients:
                (conds if t == "Condition" else obs)[p].append(i)
    p1 = next(p for p in members if conds.get(p) and obs.get(p))
    p2 = next(p for p in sorted(conds) if p != p1)
    c1, o1, c2 = conds[p1][0], obs[p1][0], conds[p2][0]
    provs = [
        ("prov-a", "2029-01-01T00:00:00Z", [f"Patient/{p1}", f"Condition/{c1}"]),
        ("prov-b", "2030-01-01T00:00:00Z", [f"Condition/{c1}"]),
        ("prov-c", "2030-06-01T00:00:00Z", [f"Observation/{o1}"]),
        ("prov-d", "2028-01-01T00:00:00Z", [f"{srv.base}/Condition/{c2}"]),
        ("prov-e", "2027-01-01T00:00:00Z", [f"Patient/{p1}"]),
        ("prov-f", "2026-01-01T00:00:00Z", [f"Patient/{p1}/_history/1", "Patient/not-a-stored-one"]),
    ]
    for pid, recorded, targets in provs:
        model.put(srv.sess, srv.base, {
            "resourceType": "Provenance", "id": pid, "recorded": recorded,
            "target": [{"reference": t} for t in targets],
            "agent": [{"who": {"display": "fhirlake e2e"}}]})
    e = type("ProvEnv", (), {})()
    e.srv, e.model, e.p1, e.p2 = srv, model, p1, p2
    yield e
    errors = pool.stop_all()
    assert not errors, errors


@pytest.mark.parametrize("value,latest", [
    ("LatestProvenanceResources", True),
    ("RelevantProvenanceResources", False),
    # Conflicting values: the least restrictive applies (the IG).
    ("LatestProvenanceResources,RelevantProvenanceResources", False),
])
def test_include_associated_data_adds_the_provenance_of_what_was_exported(provenance_env, value, latest):
    env = provenance_env
    state = env.model.state
    exported = expected_system(state, types={"Patient", "Condition"})
    expected = exported + expected_associated(state, exported, env.srv.base, latest)
    assert sum(1 for k in expected if k[0] == "Provenance") == (3 if latest else 5)
    # Provenance named in _type changes nothing: only the associated ones are exported.
    for types in ("Patient,Condition", "Patient,Condition,Provenance"):
        m, bodies = run(env.srv.base, query=q(_type=types, includeAssociatedData=value))
        got = collections.Counter(key_of(r) for lines in bodies.values() for r in lines)
        assert got == expected, diff(got, expected)
        assert m["error"] == []
        assert {o["type"] for o in m["output"]} == {"Patient", "Condition", "Provenance"}


def test_include_associated_data_at_group_and_patient_level(provenance_env):
    env = provenance_env
    state = env.model.state
    for level, exported in (("group", expected_group(state, SAMPLE_GROUP_ID, types={"Condition"})),
                            ("patient", expected_patient(state, types={"Condition"}))):
        expected = exported + expected_associated(state, exported, env.srv.base, latest=True)
        assert any(k[0] == "Provenance" for k in expected), level
        _, bodies = run(env.srv.base, level, q(_type="Condition", includeAssociatedData="LatestProvenanceResources"))
        got = collections.Counter(key_of(r) for lines in bodies.values() for r in lines)
        assert got == expected, (level, diff(got, expected))


def test_without_include_associated_data_provenance_is_an_ordinary_type(provenance_env):
    env = provenance_env
    _, bodies = run(env.srv.base, query=q(_type="Provenance"))
    got = collections.Counter(key_of(r) for lines in bodies.values() for r in lines)
    expected = expected_system(env.model.state, types={"Provenance"})
    assert got == expected and len(got) == 6, diff(got, expected)


# ---------------------------------------------------------------------------------------------- organizeOutputBy

def read_blocks(manifest, bodies):
    """The blocks of an organized export, split blocks joined again: [(patient id, [resources])]. Checks the
    format on the way: every file starts with a header, a continued block starts the next file with its header."""
    assert manifest["outputOrganizedBy"] == "Patient"
    entries = manifest["output"]
    by_url = {e["url"]: e for e in entries}
    continuations = {}
    for e in entries:
        assert "type" not in e, e
        assert set(e) <= {"url", "count", "continuesInFile"}, e
        if "continuesInFile" in e:
            assert e["continuesInFile"] in by_url, e
            continuations[e["continuesInFile"]] = e["url"]
    per_file = {}
    for url, lines in bodies.items():
        blocks = []
        for r in lines:
            if r["resourceType"] == "Parameters":
                (prm,) = r["parameter"]
                assert prm["name"] == HEADER_PARAM and set(prm) == {"name", "valueReference"}, r
                ref = prm["valueReference"]["reference"]
                assert ref.startswith("Patient/"), ref
                blocks.append((ref[len("Patient/"):], []))
            else:
                assert blocks, f"{url} starts with a {r['resourceType']}, not a header"
                blocks[-1][1].append(r)
        for pid, rs in blocks:
            assert rs, f"an empty block for Patient/{pid} in {url}"
        per_file[url] = blocks
    # Join: a file that continues another starts with the same Patient's header.
    out = []
    for url in bodies:
        if url in continuations:
            continue  # joined onto the file it continues
        blocks = [list(b) for b in per_file[url]]
        cur = url
        while "continuesInFile" in by_url[cur]:
            nxt = by_url[cur]["continuesInFile"]
            first, *rest = per_file[nxt]
            assert first[0] == blocks[-1][0], f"{nxt} continues {cur} but starts with Patient/{first[0]}"
            blocks[-1][1].extend(first[1])
            blocks.extend(list(b) for b in rest)
            cur = nxt
        out.extend((pid, rs) for pid, rs in blocks)
    return out


def expected_blocks(state, patients, types):
    """{patient id: Counter of its block}: the Patient (when a type asked for), then its compartment without other
    Patients and Groups, only the types asked for; patients whose block would be empty have none."""
    live = {k: e for k, e in state.items() if not e.deleted}
    comp = r4().compartment_types
    out = {}
    for p in patients:
        block = collections.Counter()
        if "Patient" in types and ("Patient", p) in live:
            e = live[("Patient", p)]
            block[(e.type, e.id, e.version)] += 1
        for k, e in live.items():
            if e.type in ("Patient", "Group") or e.type not in comp or e.type not in types:
                continue
            if p in e.patients:
                block[(e.type, e.id, e.version)] += 1
        if block:
            out[p] = block
    return out


@pytest.fixture(scope="module")
def small_files_env(tpl, tmp_path_factory):
    """Small files and small reads, so that blocks outgrow their files and continue in the next."""
    from export_helpers import ServerPool
    root = tmp_path_factory.mktemp("ig-org")
    pool = ServerPool(root)
    e = type("OrgEnv", (), {})()
    e.srv = pool.start(tpl.clone(root / "data"), ["--export-poll-seconds", "1", "--export-file-bytes", "40000",
                                                  "--export-batch-rows", "40"])
    e.model = tpl.model()
    yield e
    errors = pool.stop_all()
    assert not errors, errors


def check_organized(m, bodies, expected):
    blocks = read_blocks(m, bodies)
    seen = [pid for pid, _ in blocks]
    assert len(seen) == len(set(seen)), "a Patient has two blocks"
    assert set(seen) == set(expected), (sorted(set(seen) ^ set(expected)))[:10]
    for pid, rs in blocks:
        got = collections.Counter(key_of(r) for r in rs)
        assert got == expected[pid], (pid, diff(got, expected[pid]))
        if ("Patient", pid) in {(k[0], k[1]) for k in got}:
            assert rs[0]["resourceType"] == "Patient" and rs[0]["id"] == pid, f"Patient/{pid} is not first"


def test_organize_output_by_patient_at_system_level_with_blocks_split_across_files(small_files_env):
    env = small_files_env
    types = {"Patient", "Condition", "Observation"}
    live_patients = env.model.ids("Patient")
    expected = expected_blocks(env.model.state, live_patients, types)
    m, bodies = run(env.srv.base, query=q(_type="Patient,Condition,Observation", organizeOutputBy="Patient"))
    assert any("continuesInFile" in e for e in m["output"]), "no block was split: the test needs smaller files"
    check_organized(m, bodies, expected)


def test_organize_output_by_patient_at_group_and_patient_level(small_files_env):
    env = small_files_env
    state = env.model.state
    members = group_members(state[("Group", SAMPLE_GROUP_ID)].resource)
    types = {"Patient", "Condition", "Encounter", "Procedure"}
    m, bodies = run(env.srv.base, "group", q(_type=",".join(sorted(types)), organizeOutputBy="Patient"))
    check_organized(m, bodies, expected_blocks(state, sorted(members), types))
    # Every type of the compartment, at Patient level, for the patients a POST names.
    chosen = sorted(members)[:3]
    body = {"resourceType": "Parameters", "parameter": [{"name": "organizeOutputBy", "valueString": "Patient"}] +
            [{"name": "patient", "valueReference": {"reference": f"Patient/{p}"}} for p in chosen]}
    m, bodies = run(env.srv.base, "patient", body=body)
    check_organized(m, bodies, expected_blocks(state, chosen, r4().compartment_types))
    # What the request left out is said in `error` (resources outside the Patient compartment).
    (err,) = m["error"]
    outcome = requests.get(err["url"], timeout=30).json()
    assert "outside" in outcome["issue"][0]["diagnostics"], outcome


def test_organize_output_by_with_a_type_filter_and_elements(small_files_env):
    env = small_files_env
    state = env.model.state
    female = [p for p in env.model.ids("Patient") if state[("Patient", p)].resource.get("gender") == "female"]
    expected = expected_blocks(state, female, {"Patient", "Condition"})
    m, bodies = run(env.srv.base, query=q(_type="Patient,Condition", organizeOutputBy="Patient",
                                          _typeFilter="Patient?gender=female", _elements="id"))
    blocks = read_blocks(m, bodies)
    assert {pid for pid, _ in blocks} == set(expected)
    for pid, rs in blocks:
        assert collections.Counter(key_of(r) for r in rs) == expected[pid]
        for r in rs:
            # `id` asked for; resourceType, meta and the mandatory elements (Condition.subject) always kept.
            assert set(r) <= {"resourceType", "id", "meta", "subject"}, r
            assert any(t.get("code") == "SUBSETTED" for t in r["meta"].get("tag", [])), r
    # Elements of one type cut that type only: the Patients stay whole.
    m, bodies = run(env.srv.base, query=q(_type="Patient,Condition", organizeOutputBy="Patient",
                                          _elements="Condition.code"))
    kinds = collections.Counter()
    for _, rs in read_blocks(m, bodies):
        for r in rs:
            subsetted = any(t.get("code") == "SUBSETTED" for t in r["meta"].get("tag", []))
            kinds[(r["resourceType"], subsetted)] += 1
            if r["resourceType"] == "Condition":
                assert set(r) <= {"resourceType", "id", "meta", "subject", "code"}, r
    assert set(kinds) == {("Patient", False), ("Condition", True)}, kinds
    # A filter on a type inside the blocks selects its resources there; the other types stay whole.
    def active(r):
        return any(c.get("code") == "active" for c in (r.get("clinicalStatus") or {}).get("coding", []))
    expected = expected_blocks(state, env.model.ids("Patient"), {"Condition", "Encounter"})
    expected = {p: collections.Counter({k: n for k, n in b.items() if k[0] != "Condition" or
                                        active(state[(k[0], k[1])].resource)}) for p, b in expected.items()}
    expected = {p: b for p, b in expected.items() if b}
    assert 0 < sum(1 for b in expected.values() for k in b if k[0] == "Condition") < \
        sum(1 for (t, _), e in state.items() if t == "Condition" and not e.deleted)
    m, bodies = run(env.srv.base, query=q(_type="Condition,Encounter", organizeOutputBy="Patient",
                                          _typeFilter="Condition?clinical-status=active"))
    check_organized(m, bodies, expected)


# ---------------------------------------------------------------------------------------------- allowPartialManifests

def test_partial_manifests_are_pages_linked_with_next_and_full_pages_show_while_running(tpl, servers, tmp_path):
    srv = servers.start(tpl.clone(tmp_path / "data"),
                        ["--export-poll-seconds", "0", "--export-file-bytes", "30000", "--export-batch-rows", "60",
                         "--export-manifest-page-files", "3", "--test-export-batch-delay-ms", "120"])
    model = tpl.model()
    types = "Patient,Condition,Immunization,Procedure"
    expected = expected_system(model.state, types=set(types.split(",")))
    client = BulkClient(new_session())
    status_url = client.kickoff(kickoff_url(srv.base, "system", query=q(_type=types, allowPartialManifests="true")))
    seen_running = {}  # page 1 as answered with 202 (partial), the last such answer
    deadline = time.time() + 120
    while True:
        r = requests.get(status_url, headers=POLL, timeout=30)
        if r.status_code == 200:
            break
        assert r.status_code == 202, r.text
        assert r.headers.get("X-Progress") and r.headers.get("Retry-After") == "0"
        if r.headers.get("Content-Type", "").startswith("application/json"):
            page = r.json()
            assert len(page["output"]) == 3, page  # a page is shown only once it is full
            seen_running = page
        assert time.time() < deadline
        time.sleep(0.05)
    assert seen_running, "no partial manifest while the export ran"
    # Follow the pages: each has the same other members, at most 3 files, the last without a `next` link.
    pages, url = [], status_url
    while url:
        r = requests.get(url, headers=POLL, timeout=30)
        assert r.status_code == 200, r.text
        page = r.json()
        pages.append(page)
        links = page.get("link", [])
        assert all(set(x) == {"relation", "url"} and x["relation"] == "next" for x in links), links
        url = links[0]["url"] if links else None
    assert len(pages) >= 3
    common = {k: v for k, v in pages[0].items() if k not in ("output", "deleted", "link")}
    for i, page in enumerate(pages):
        assert {k: v for k, v in page.items() if k not in ("output", "deleted", "link")} == common
        assert 1 <= len(page["output"]) <= 3 and (len(page["output"]) == 3 or i == len(pages) - 1), page
    # The page seen while running is the final page 1 but for the `link` it may have gained.
    assert {k: v for k, v in seen_running.items() if k != "link"} == \
        {k: v for k, v in pages[0].items() if k != "link"}
    urls = [o["url"] for p in pages for o in p["output"]]
    assert len(urls) == len(set(urls)), "a file is on two pages"
    got, _ = client.download_all({"output": [o for p in pages for o in p["output"]]})
    assert got == expected, diff(got, expected)
    # Pages past the last, and page numbers that are not numbers.
    assert_outcome(requests.get(status_url + f"?page={len(pages) + 1}", headers=POLL, timeout=30), 404,
                   mentions=["page"])
    for bad in ("0", "x", "-1", "1.5"):
        assert_outcome(requests.get(status_url + "?page=" + bad, headers=POLL, timeout=30), 400, mentions=["page"])


def test_pages_that_do_not_exist_yet_count_as_polls(tpl, servers, tmp_path):
    """A page other than the first is its own poll only once it holds files: asking for page 2, 3, ... of a job still
    running is polling the job, and too soon is 429 like any poll."""
    srv = servers.start(tpl.clone(tmp_path / "data"),
                        ["--export-poll-seconds", "10", "--test-export-batch-delay-ms", "300", "--export-batch-rows",
                         "20"])
    client = BulkClient(new_session())
    status_url = client.kickoff(kickoff_url(srv.base, "system", query=q(_type="Observation",
                                                                       allowPartialManifests="true")))
    assert requests.get(status_url, headers=POLL, timeout=30).status_code == 202
    for n in (2, 3, 7):
        r = requests.get(f"{status_url}?page={n}", headers=POLL, timeout=30)
        assert_outcome(r, 429)
        assert r.headers.get("Retry-After")
    assert requests.delete(status_url, timeout=30).status_code == 202


def test_without_allow_partial_manifests_there_is_one_manifest(env):
    client = BulkClient(new_session())
    status_url = client.kickoff(kickoff_url(env.srv.base, "system", query="_type=Patient"))
    r = client.wait(status_url)
    assert r.status_code == 200 and "link" not in r.json()
    time.sleep(1.1)
    assert_outcome(requests.get(status_url + "?page=2", headers=POLL, timeout=30), 404,
                   mentions=["allowPartialManifests"])


# ---------------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("query,mention", [
    ("allowPartialManifests=yes", "allowPartialManifests"),
    ("organizeOutputBy=NotAType", "NotAType"),
    ("organizeOutputBy=Patient&organizeOutputBy=Patient", "once"),
    ("organizeOutputBy=Patient&_type=Patient,Organization", "Organization"),
    ("organizeOutputBy=Patient&includeAssociatedData=LatestProvenanceResources", "combined"),
    ("includeAssociatedData=LatestProvenance", "LatestProvenance"),
    ("includeAssociatedData=", "includeAssociatedData"),
    # Well-formed, not supported: 400 unless lenient.
    ("organizeOutputBy=Encounter", "organizeOutputBy=Encounter"),
    ("includeAssociatedData=_myPreset", "_myPreset"),
])
def test_stu3_options_bad_input_is_400(env, query, mention):
    assert_outcome(requests.get(kickoff_url(env.srv.base, "system", query=query), headers=STRICT, timeout=30), 400,
                   mentions=[mention])


@pytest.mark.parametrize("query,mention", [
    ("_type=Patient&organizeOutputBy=Encounter", "organizeOutputBy=Encounter"),
    ("_type=Patient&includeAssociatedData=_myPreset", "_myPreset"),
])
def test_unsupported_stu3_values_are_ignored_and_reported_under_lenient(env, query, mention):
    m, bodies = run(env.srv.base, query=query)
    got = collections.Counter(key_of(r) for lines in bodies.values() for r in lines)
    expected = expected_system(env.model.state, types={"Patient"})
    assert got == expected, diff(got, expected)
    assert "outputOrganizedBy" not in m
    (err,) = m["error"]
    outcome = requests.get(err["url"], timeout=30).json()
    assert mention in outcome["issue"][0]["diagnostics"], outcome


@pytest.mark.parametrize("parameter,mention", [
    ({"name": "allowPartialManifests", "valueBoolean": "true"}, "valueBoolean"),
    ({"name": "allowPartialManifests", "valueString": "sometimes"}, "allowPartialManifests"),
])
def test_stu3_options_bad_parameters_bodies_are_400(env, parameter, mention):
    body = json.dumps({"resourceType": "Parameters", "parameter": [parameter]})
    r = requests.post(kickoff_url(env.srv.base, "system"), data=body,
                      headers={**STRICT, "Content-Type": "application/fhir+json"}, timeout=30)
    assert_outcome(r, 400, mentions=[mention])


def test_operation_definitions_list_the_stu3_options(env):
    for op in ("export", "patient-export", "group-export"):
        od = requests.get(f"{env.srv.base}/OperationDefinition/{op}", timeout=30).json()
        names = {p["name"] for p in od["parameter"]}
        assert {"includeAssociatedData", "organizeOutputBy", "allowPartialManifests"} <= names, names


# ---------------------------------------------------------------------------------------------- crash

def on(srv, url):
    """`url` (of an earlier server process on the same data directory) on `srv`."""
    return srv.root + url[url.index("/datastore/"):]


def test_organized_and_associated_exports_resume_after_kill9(tpl, servers, tmp_path):
    """kill -9 while an organized and then an associated export run, with files committed; restarted on the same
    data directory, each finishes with exactly the expected content: no block twice, none missing."""
    from export_helpers import describe
    data = tpl.clone(tmp_path / "data")
    slow = ["--export-poll-seconds", "0", "--test-export-batch-delay-ms", "150", "--export-batch-rows", "40",
            "--export-file-bytes", "20000"]
    srv = servers.start(data, slow)
    model = tpl.model()
    model.put(srv.sess, srv.base, {"resourceType": "Provenance", "id": "prov-kill", "recorded": "2030-01-01T00:00:00Z",
                                   "target": [{"reference": f"Patient/{model.ids('Patient')[0]}"}]})
    client = BulkClient(new_session())
    organized = client.kickoff(kickoff_url(srv.base, "system", query=q(_type="Patient,Condition,Observation",
                                                                      organizeOutputBy="Patient")))
    job = organized.rsplit("/", 1)[1]
    deadline = time.time() + 60
    while describe(srv.sess, srv.base, job)["exportJobProperties"].get("exportedResourceCount", 0) < 200:
        assert time.time() < deadline, describe(srv.sess, srv.base, job)
        time.sleep(0.05)
    srv.kill9()
    srv = servers.start(data, slow)
    r = client.wait(on(srv, organized))
    assert r.status_code == 200, r.text
    m = r.json()
    bodies = {e["url"]: [json.loads(x) for x in requests.get(e["url"], timeout=60).content.split(b"\n")[:-1]]
              for e in m["output"]}
    check_organized(m, bodies, expected_blocks(model.state, model.ids("Patient"),
                                               {"Patient", "Condition", "Observation"}))

    associated = client.kickoff(kickoff_url(srv.base, "system", query=q(_type="Patient,Observation",
                                                                       includeAssociatedData="RelevantProvenanceResources")))
    job = associated.rsplit("/", 1)[1]
    while describe(srv.sess, srv.base, job)["exportJobProperties"].get("exportedResourceCount", 0) < 200:
        assert time.time() < deadline + 60, describe(srv.sess, srv.base, job)
        time.sleep(0.05)
    srv.kill9()
    srv = servers.start(data)
    r = client.wait(on(srv, associated))
    assert r.status_code == 200, r.text
    got, _ = client.download_all(r.json())
    exported = expected_system(model.state, types={"Patient", "Observation"})
    expected = exported + expected_associated(model.state, exported, srv.base, latest=False)
    assert ("Provenance", "prov-kill", 1) in expected
    assert got == expected, diff(got, expected)
