"""`fhirlake load`: the full sample read back resource by resource, loading twice, bad input,
unresolvable references, and a load next to a running server."""

from __future__ import annotations

import json
import re

import pytest
import requests

from fhirlake_helpers import (INSTANT_MS_RE, SAMPLE_DIR, PatientCompartment, Session, describe_response, first_difference,
                              run_load, strip_server_meta)

SAMPLE_DISTINCT = 38_473
SAMPLE_ENTRIES = 38_971
GROUP_ID = "d9f31445-f448-48c0-af57-295c005e07df"


def read_back(base, expected: dict, keys=None, version_check=None):
    """GET every (type, id) of `keys` (default: all of `expected`) over one keep-alive session and
    compare it with the expected content. Returns (problems, {key: stored resource})."""
    problems, stored = [], {}
    with Session() as s:
        for key in (keys if keys is not None else expected):
            t, i = key
            try:
                r = s.get(f"{base}/{t}/{i}")
            except requests.RequestException as e:
                raise AssertionError(f"GET {t}/{i} failed after {len(stored)} resources read: {e}") from None
            if r.status_code != 200:
                problems.append(f"GET {t}/{i} -> {r.status_code} {r.text[:200]}")
                continue
            body = r.json()
            stored[key] = body
            diff = first_difference(strip_server_meta(body), expected[key])
            if diff:
                problems.append(f"{t}/{i}: {diff}")
            if version_check:
                msg = version_check(key, body, r)
                if msg:
                    problems.append(f"{t}/{i}: {msg}")
    return problems, stored


def summarize(problems, total, limit=25):
    return f"{len(problems)} problem(s) over {total} resources:\n" + "\n".join(problems[:limit])


# ---- the sample ------------------------------------------------------------------------------------

def test_sample_input_shape(sample):
    """Sanity of the test's own model of the input."""
    assert len(sample.inputs) == SAMPLE_ENTRIES
    assert len(sample.expected) == SAMPLE_DISTINCT
    assert ("Group", GROUP_ID) in sample.expected
    assert len(sample.patient_ids) == 100
    names = [f.name for f in sample.files]
    assert names == sorted(names, key=str.encode)


def test_sample_load_summary(loaded_sample):
    load = loaded_sample.load
    assert load.returncode == 0, "load of the sample failed\n" + load.describe()
    n = load.loaded_count()
    assert n is not None, "summary lacks 'loaded N resources'\n" + load.describe()
    assert n in (SAMPLE_ENTRIES, SAMPLE_DISTINCT), f"summary says loaded {n}; the sample has {SAMPLE_ENTRIES} " \
        f"resources ({SAMPLE_DISTINCT} distinct)\n" + load.describe()
    assert not re.search(r"\.(nd)?json:\d+:", load.stderr), "errors reported for a valid sample\n" + load.describe()
    m = re.search(r"(\d+)\s+unresolved", load.stdout, re.I) or re.search(r"unresolved[^\d\n]*(\d+)", load.stdout, re.I)
    if m:
        assert int(m.group(1)) == 0, "every urn:uuid: of the sample resolves\n" + load.describe()


@pytest.mark.slow
def test_sample_read_back_every_resource(loaded_sample):
    sample = loaded_sample.sample
    assert len(sample.expected) == SAMPLE_DISTINCT

    def version_check(key, body, r):
        meta = body.get("meta") or {}
        v, k = meta.get("versionId"), sample.occurrences[key]
        allowed = {"1"} if k == 1 else {"1", str(k)}  # repeats: one version per load or per occurrence
        if v not in allowed:
            return f"versionId {v!r} after one load, expected one of {sorted(allowed)}"
        if not INSTANT_MS_RE.match(meta.get("lastUpdated") or ""):
            return f"meta.lastUpdated {meta.get('lastUpdated')!r} is not an instant with milliseconds"
        if r.headers.get("ETag") != f'W/"{v}"':
            return f"ETag {r.headers.get('ETag')!r} for version {v}"
        return None

    problems, stored = read_back(loaded_sample.server.base, sample.expected, version_check=version_check)
    assert not problems, summarize(problems, len(sample.expected))
    assert len(stored) == SAMPLE_DISTINCT
    assert ("Group", GROUP_ID) in stored
    assert len(stored[("Group", GROUP_ID)]["member"]) == 100


def test_sample_duplicates_resolve_to_last_occurrence(loaded_sample):
    """Organization/Practitioner ids that repeat with different content: the last one wins."""
    sample = loaded_sample.sample
    dups = [k for k, n in sample.occurrences.items() if n > 1]
    assert len(dups) == 324
    problems, _ = read_back(loaded_sample.server.base, sample.expected, keys=dups)
    assert not problems, summarize(problems, len(dups))


# ---- loading twice ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_load_twice_keeps_one_current_version(fhirlake_bin, server_factory, sample, tmp_path):
    data_dir = tmp_path / "data"
    first = run_load(fhirlake_bin, data_dir, [SAMPLE_DIR])
    assert first.returncode == 0, first.describe()
    second = run_load(fhirlake_bin, data_dir, [SAMPLE_DIR])
    assert second.returncode == 0, second.describe()
    srv = server_factory(data_dir=data_dir)

    def version_check(key, body, r):
        v = body.get("meta", {}).get("versionId")
        k = sample.occurrences[key]
        allowed = {"2"} if k == 1 else {"2", str(2 * k)}  # repeats: one version per load or per occurrence
        if v not in allowed:
            return f"current versionId {v!r}, expected one of {sorted(allowed)} after two loads"
        if r.headers.get("ETag") != f'W/"{v}"':
            return f"ETag {r.headers.get('ETag')!r} for version {v}"
        return None

    problems, stored = read_back(srv.base, sample.expected, version_check=version_check)
    assert not problems, summarize(problems, len(sample.expected))
    assert len(stored) == SAMPLE_DISTINCT

    # vread of version 2 and the history, for a spread of resources and every repeated id
    keys = list(sample.expected)
    probe = keys[::97] + [k for k, n in sample.occurrences.items() if n > 1]
    problems = []
    with Session() as s:
        for t, i in probe:
            r = s.get(f"{srv.base}/{t}/{i}/_history/2")
            if r.status_code != 200:
                problems.append(f"vread {t}/{i}/_history/2 -> {r.status_code}")
                continue
            if sample.occurrences[(t, i)] == 1:
                d = first_difference(strip_server_meta(r.json()), sample.expected[(t, i)])
                if d:
                    problems.append(f"vread {t}/{i}/_history/2: {d}")
            h = s.get(f"{srv.base}/{t}/{i}/_history")
            if h.status_code != 200:
                problems.append(f"history {t}/{i} -> {h.status_code}")
                continue
            hb = h.json()
            cur = int(stored[(t, i)]["meta"]["versionId"])
            vids = [e["resource"]["meta"]["versionId"] for e in hb.get("entry", []) if "resource" in e]
            if hb.get("total") != cur or vids != [str(v) for v in range(cur, 0, -1)]:
                problems.append(f"history {t}/{i}: total {hb.get('total')}, versions {vids}, current {cur}")
    assert not problems, summarize(problems, len(probe))

    # no duplicate current version in the compartment index either
    comp = PatientCompartment()
    expected = comp.expected_by_patient(sample.expected.values())
    with Session() as s:
        for pid in sample.patient_ids[::10]:
            got, url = [], f"{srv.base}/Patient/{pid}/*"
            while url:  # the compartment read is paged: follow next to the end
                r = s.get(url)
                assert r.status_code == 200, describe_response(r)
                got += [(e["resource"]["resourceType"], e["resource"]["id"]) for e in r.json().get("entry", [])]
                url = next((l["url"] for l in r.json().get("link", []) if l.get("relation") == "next"), None)
            assert len(got) == len(set(got)), f"Patient/{pid}/* lists a resource twice after two loads"
            assert set(got) == expected[pid], f"Patient/{pid}/* differs after two loads"


# ---- bad input ----------------------------------------------------------------------------------

GOOD_NDJSON = [
    {"resourceType": "Patient", "id": "ld-good-p1", "gender": "female"},
    {"resourceType": "Observation", "id": "ld-good-o1", "status": "final", "code": {"text": "x"},
     "subject": {"reference": "Patient/ld-good-p1"}},
    {"resourceType": "Organization", "id": "ld-good-org1", "name": "Org"},
]
BROKEN_GOOD_LINES = {
    1: {"resourceType": "Patient", "id": "ld-broken-l1"},
    4: {"resourceType": "Practitioner", "id": "ld-broken-l4", "name": [{"family": "Four"}]},
}


def write_bad_input_folder(folder):
    folder.mkdir()
    (folder / "a_good.ndjson").write_text("".join(json.dumps(r) + "\n" for r in GOOD_NDJSON))
    (folder / "b_broken.ndjson").write_text(
        json.dumps(BROKEN_GOOD_LINES[1]) + "\n"
        + '{"resourceType": "Patient", "id": "ld-broken-l2", "name": [\n'[:-1] + "\n"   # line 2: invalid JSON
        + json.dumps({"resourceType": "NoSuchType", "id": "ld-broken-l3"}) + "\n"     # line 3: unknown type
        + json.dumps(BROKEN_GOOD_LINES[4]) + "\n")
    full = json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:7d9a8b57-0000-4000-8000-00000000000%d" % n,
         "resource": {"resourceType": "Patient", "id": "7d9a8b57-0000-4000-8000-00000000000%d" % n},
         "request": {"method": "POST", "url": "Patient"}} for n in range(1, 4)]}, indent=2)
    (folder / "c_truncated.json").write_text(full[: len(full) * 2 // 3])


def test_load_bad_input(fhirlake_bin, server_factory, tmp_path):
    folder = tmp_path / "input"
    write_bad_input_folder(folder)
    data_dir = tmp_path / "data"
    res = run_load(fhirlake_bin, data_dir, [folder])
    assert res.returncode == 1, "some input failed: exit code must be 1\n" + res.describe()
    for pattern in (r"b_broken\.ndjson:2:\s*\S", r"b_broken\.ndjson:3:\s*\S", r"c_truncated\.json:\d+:\s*\S"):
        assert re.search(pattern, res.stderr), f"stderr lacks {pattern!r}\n" + res.describe()
    assert not re.search(r"a_good\.ndjson:\d+:", res.stderr), res.describe()
    assert not re.search(r"b_broken\.ndjson:[14]:", res.stderr), res.describe()
    n = res.loaded_count()
    assert n is not None and n >= 5, "summary must say 'loaded N resources' with N >= 5\n" + res.describe()
    srv = server_factory(data_dir=data_dir)
    with Session() as s:
        for r in GOOD_NDJSON + list(BROKEN_GOOD_LINES.values()):
            got = s.get(f"{srv.base}/{r['resourceType']}/{r['id']}")
            assert got.status_code == 200, describe_response(got)
            assert strip_server_meta(got.json()) == r
        assert s.get(f"{srv.base}/Patient/ld-broken-l2").status_code == 404


def test_load_unresolved_reference_kept_verbatim(fhirlake_bin, server_factory, tmp_path):
    pid = "5f0e7d4c-1111-4a2b-9c3d-000000000001"
    missing = "urn:uuid:5f0e7d4c-9999-4a2b-9c3d-00000000dead"
    b = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": f"urn:uuid:{pid}", "resource": {"resourceType": "Patient", "id": pid},
         "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:5f0e7d4c-1111-4a2b-9c3d-000000000002",
         "resource": {"resourceType": "Observation", "id": "5f0e7d4c-1111-4a2b-9c3d-000000000002",
                      "status": "final", "code": {"text": "x"}, "subject": {"reference": f"urn:uuid:{pid}"},
                      "performer": [{"reference": missing}]},
         "request": {"method": "POST", "url": "Observation"}}]}
    f = tmp_path / "one.json"
    f.write_text(json.dumps(b))
    data_dir = tmp_path / "data"
    res = run_load(fhirlake_bin, data_dir, [f])
    assert res.returncode == 0, "everything loaded: exit code 0\n" + res.describe()
    assert res.loaded_count() == 2, res.describe()
    m = re.search(r"(\d+)\s+unresolved", res.stdout, re.I) or re.search(r"unresolved[^\d\n]*(\d+)", res.stdout, re.I)
    assert m and int(m.group(1)) == 1, "summary must mention 1 unresolved reference\n" + res.describe()
    srv = server_factory(data_dir=data_dir)
    with Session() as s:
        obs = s.get(f"{srv.base}/Observation/5f0e7d4c-1111-4a2b-9c3d-000000000002").json()
    assert obs["subject"]["reference"] == f"Patient/{pid}"
    assert obs["performer"] == [{"reference": missing}], "an unresolvable urn:uuid: must be kept verbatim"


def test_load_next_to_running_server(fhirlake_bin, server, tmp_path):
    """`load --datastore ID` while the server runs on the same data dir: the server serves the result."""
    f = tmp_path / "live.ndjson"
    rows = [{"resourceType": "Patient", "id": f"live-{n}", "birthDate": "1999-01-01"} for n in range(50)]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with Session() as s:
        r = s.fhir("PUT", server.base + "/Patient/live-0", {"resourceType": "Patient", "id": "live-0"})
        assert r.status_code == 201, describe_response(r)
        res = run_load(fhirlake_bin, server.data_dir, [f], datastore=server.datastore_id, timeout=120)
        assert res.returncode == 0, res.describe()
        assert res.loaded_count() == 50, res.describe()
        for row in rows:
            got = s.get(f"{server.base}/Patient/{row['id']}")
            assert got.status_code == 200, describe_response(got)
            assert strip_server_meta(got.json()) == row
        assert s.get(f"{server.base}/Patient/live-0").json()["meta"]["versionId"] == "2"
        assert s.get(server.url + "/healthz").status_code == 200


@pytest.mark.parametrize("mode", ["rebuild", "incremental", "auto"])
def test_load_search_index_modes_next_to_running_server(fhirlake_bin, server, tmp_path, mode):
    """Each --search-index mode leaves the loaded resources searchable through the running server, and says
    when it rebuilt the lookup indexes; searches on what was there before are unchanged."""
    f = tmp_path / f"{mode}.ndjson"
    rows = [{"resourceType": "Patient", "id": f"{mode}-{n}", "birthDate": "1931-02-03",
             "name": [{"family": f"Indexmode{mode.capitalize()}"}]} for n in range(40)]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with Session() as s:
        r = s.fhir("PUT", server.base + f"/Patient/{mode}-before",
                   {"resourceType": "Patient", "id": f"{mode}-before", "gender": "unknown",
                    "name": [{"family": f"Indexmode{mode.capitalize()}"}]})
        assert r.status_code == 201, describe_response(r)
        res = run_load(fhirlake_bin, server.data_dir, [f], datastore=server.datastore_id, timeout=120,
                       extra=["--search-index", mode])
        assert res.returncode == 0, res.describe()
        assert res.loaded_count() == 40, res.describe()
        rebuilt = "search index lookups rebuilt" in res.stdout
        # auto: 40 small rows beside a store that already holds data → incremental
        assert rebuilt == (mode == "rebuild"), res.describe()
        got = s.get(f"{server.base}/Patient", params={"family": f"indexmode{mode}", "_count": "100"})
        assert got.status_code == 200, describe_response(got)
        ids = sorted(e["resource"]["id"] for e in got.json().get("entry", []))
        assert ids == sorted([f"{mode}-{n}" for n in range(40)] + [f"{mode}-before"])
        assert got.json()["total"] == 41
        got = s.get(f"{server.base}/Patient", params={"birthdate": "1931-02-03", "family": f"indexmode{mode}",
                                                      "_count": "100", "_elements": "id"})
        assert got.status_code == 200, describe_response(got)
        assert got.json()["total"] == 40


def test_load_search_index_bad_value(fhirlake_bin, tmp_path):
    res = run_load(fhirlake_bin, tmp_path / "data", [tmp_path], extra=["--search-index", "sometimes"])
    assert res.returncode != 0, res.describe()
    assert "--search-index" in res.stderr and "sometimes" in res.stderr, res.describe()
