"""The export parameters that select and shape what is exported, in both views: `_typeFilter` (a search on one
type through the search engine, several OR-ed, evaluated as of the export's snapshot), `_elements` (top-level
elements plus the mandatory ones, tagged SUBSETTED), the `deleted` files of an export with `_since`, and what
`Prefer: handling=lenient` ignores, reported as OperationOutcomes in the manifest's `error`. Every expected set is
computed in Python from the sample and the writes the tests make (export_helpers.Model), never by the server.
"""

from __future__ import annotations

import collections
import copy
import json
import time
import urllib.parse

import pytest
import requests

from export_helpers import servers  # noqa: F401  (fixture)
from export_helpers import (SAMPLE_GROUP_ID, assert_outcome, collect_output, deleted_entry,
                            expected_group, expected_patient, expected_system, group_members, new_session, r4,
                            start_export, utc_now_instant, wait_done)
from export_helpers import kickoff as hl_kickoff
from test_export_ig import KICKOFF, POLL, BulkClient, diff, kickoff_url
from test_export_ig import env, tpl  # noqa: F401  (fixtures: one server per module on a copy of the sample)

STRICT = {"Accept": "application/fhir+json", "Prefer": "respond-async"}
SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED",
             "display": "subsetted"}


def q(**params) -> str:
    """A query string; list values repeat the parameter; every value percent-encoded as a client does."""
    parts = []
    for k, v in params.items():
        for item in (v if isinstance(v, list) else [v]):
            parts.append(f"{k}={urllib.parse.quote(item, safe='')}")
    return "&".join(parts)


def ig_run(base, level="system", query="", group_id=SAMPLE_GROUP_ID, headers=KICKOFF):
    """Kick-off, wait, download: (manifest, Counter of (type, id, version), {url: [parsed lines]})."""
    client = BulkClient(new_session())
    url = kickoff_url(base, level, group_id, query)
    r = client.wait(client.kickoff(url, headers=headers))
    assert r.status_code == 200, r.text
    m = r.json()
    assert m["request"] == url
    got, bodies = client.download_all(m) if m["output"] else (collections.Counter(), {})
    parsed = {u: [json.loads(x) for x in b.split(b"\n")[:-1]] for u, b in bodies.items()}
    return m, got, parsed


def hl_run(srv, level="system", query="", group_id=SAMPLE_GROUP_ID):
    job = start_export(srv.sess, srv.base, level, group_id, query=query)
    return collect_output(srv, wait_done(srv.sess, srv.base, job))


def keep(counter, pred, state):
    return collections.Counter({k: n for k, n in counter.items() if pred(state[(k[0], k[1])].resource)})


def codings(resource, element="code"):
    return [(c.get("system", ""), c.get("code", "")) for c in (resource.get(element) or {}).get("coding", [])]


def common_codes(state, n=2):
    freq = collections.Counter()
    for (t, _), e in state.items():
        if t == "Observation" and not e.deleted:
            freq.update(set(codings(e.resource)))
    return [c for c, _ in freq.most_common(n)]


def subject_patient(resource):
    lit = r4().parse_literal((resource.get("subject") or {}).get("reference"))
    return lit[1] if lit and lit[0] == "Patient" else None


# ---------------------------------------------------------------------------------------------- _typeFilter

def test_type_filter_exports_only_matching_resources_in_both_views(env):
    state = env.model.state
    (s1, c1), (s2, c2) = common_codes(state)
    base_set = expected_system(state, types={"Observation", "Patient", "Condition"})
    expected = collections.Counter()
    for k, n in base_set.items():
        r = state[(k[0], k[1])].resource
        if k[0] == "Observation" and not {(s1, c1), (s2, c2)} & set(codings(r)):
            continue
        if k[0] == "Patient" and r.get("gender") != "female":
            continue
        expected[k] = n  # Condition: no filter, every one
    assert 0 < sum(1 for k in expected if k[0] == "Observation") < sum(1 for k in base_set if k[0] == "Observation")
    filters = [f"Observation?code={s1}|{c1}", f"Observation?code={s2}|{c2}", "Patient?gender=female"]
    # Repeated _typeFilter parameters, then the same as one comma-joined value: the same set.
    for query in (q(_type="Observation,Patient,Condition", _typeFilter=filters),
                  q(_type="Observation,Patient,Condition", _typeFilter=",".join(filters))):
        _, got, _ = ig_run(env.srv.base, query=query)
        assert got == expected, diff(got, expected)
    assert hl_run(env.srv, query=q(_type="Observation,Patient,Condition", _typeFilter=filters)).counter == expected


def test_type_filter_with_a_chain_at_patient_and_group_level(env):
    state = env.model.state
    male = {i for (t, i), e in state.items() if t == "Patient" and not e.deleted and e.resource.get("gender") == "male"}
    flt = q(_type="Observation,Patient", _typeFilter="Observation?patient.gender=male")
    for level, base_set in (("patient", expected_patient(state, types={"Observation", "Patient"})),
                            ("group", expected_group(state, SAMPLE_GROUP_ID, types={"Observation", "Patient"}))):
        expected = collections.Counter({k: n for k, n in base_set.items()
                                        if k[0] == "Patient" or subject_patient(state[(k[0], k[1])].resource) in male})
        assert any(k[0] == "Observation" for k in expected)
        _, got, _ = ig_run(env.srv.base, level, flt)
        assert got == expected, (level, diff(got, expected))


def test_type_filter_is_evaluated_as_of_the_snapshot(tpl, servers, tmp_path):
    """Resources changed after the export's snapshot are matched by their version as of the snapshot: one that
    stops matching is still exported (that version), one that starts matching is not."""
    srv = servers.start(tpl.clone(tmp_path / "data"),
                        ["--export-poll-seconds", "1", "--test-export-batch-delay-ms", "300",
                         "--export-batch-rows", "50"])
    model = tpl.model()
    (s1, c1), _ = common_codes(model.state)
    obs = [k for k, e in model.state.items() if k[0] == "Observation" and not e.deleted]
    matching = [k for k in obs if (s1, c1) in codings(model.state[k].resource)]
    other = [k for k in obs if (s1, c1) not in codings(model.state[k].resource)]
    before = copy.deepcopy(model.state)
    expected = keep(expected_system(before, types={"Observation"}), lambda r: (s1, c1) in codings(r), before)
    client = BulkClient(new_session())
    status_url = client.kickoff(kickoff_url(srv.base, "system", query=q(
        _type="Observation", _typeFilter=f"Observation?code={s1}|{c1}")))
    deadline = time.time() + 60
    while True:  # until the job has its snapshot (IN_PROGRESS)
        r = requests.get(status_url, headers=POLL, timeout=30)
        assert r.status_code in (202, 429), r.text
        if "IN_PROGRESS" in r.headers.get("X-Progress", ""):
            break
        assert time.time() < deadline, r.headers
        time.sleep(1.0)
    stops = copy.deepcopy(model.state[matching[0]].resource)
    stops["code"] = {"coding": [{"system": "http://example.org", "code": "changed"}]}
    model.put(srv.sess, srv.base, stops)
    starts = copy.deepcopy(model.state[other[0]].resource)
    starts["code"] = {"coding": [{"system": s1, "code": c1}]}
    model.put(srv.sess, srv.base, starts)
    time.sleep(1.0)
    r = client.wait(status_url, timeout=300)
    assert r.status_code == 200, r.text
    got, _ = client.download_all(r.json())
    assert got == expected, diff(got, expected)
    assert ("Observation", matching[0][1], before[matching[0]].version) in got
    assert not any(k[1] == other[0][1] for k in got)


@pytest.mark.parametrize("flt,mention", [
    ("Observation", "search query"),
    ("?code=1", "search query"),
    ("Nonsense?code=1", "Nonsense"),
    ("Observation?", "no search parameter"),
    ("Observation?_sort=date", "_sort"),
    ("Observation?_count=5", "_count"),
    ("Observation?date=yesterday", "date"),
    ("Observation?code:nonsense=1", "nonsense"),
    ("Observation?noSuchParameter=1", "noSuchParameter"),
    ("Patient?gender=male", "_type leaves out"),
])
def test_type_filter_bad_input_is_400_in_both_views(env, flt, mention):
    query = q(_type="Observation", _typeFilter=flt)
    assert_outcome(requests.get(kickoff_url(env.srv.base, "system", query=query), headers=STRICT, timeout=30), 400,
                   mentions=["_typeFilter", mention])
    assert_outcome(hl_kickoff(env.srv.sess, env.srv.base, "system", query=query), 400,
                   mentions=["_typeFilter", mention])


def test_type_filter_on_a_type_the_level_does_not_export_is_400(env):
    r = requests.get(kickoff_url(env.srv.base, "patient", query=q(_typeFilter="Library?name=x")), headers=STRICT,
                     timeout=30)
    assert_outcome(r, 400, mentions=["Library", "patient-level"])


def test_lenient_ignores_unknown_filter_parameters_and_reports_them_in_error(env):
    state = env.model.state
    query = q(_type="Observation,Patient", _typeFilter=["Observation?noSuchParameter=1", "Patient?gender=female"],
              _madeUpParameter="x")
    for strict_query, mention in ((q(_type="Observation", _typeFilter="Observation?noSuchParameter=1"),
                                   "noSuchParameter"), (query, "_madeUpParameter")):
        r = requests.get(kickoff_url(env.srv.base, "system", query=strict_query), headers=STRICT, timeout=30)
        assert_outcome(r, 400, mentions=[mention])
    m, got, _ = ig_run(env.srv.base, query=query)
    # The ignored criterion leaves Observation unfiltered; Patient's filter applies.
    expected = collections.Counter({k: n for k, n in expected_system(state, types={"Observation", "Patient"}).items()
                                    if k[0] == "Observation" or state[(k[0], k[1])].resource.get("gender") == "female"})
    assert got == expected, diff(got, expected)
    assert len(m["error"]) == 1 and m["error"][0]["type"] == "OperationOutcome", m["error"]
    r = requests.get(m["error"][0]["url"], timeout=30)
    assert r.status_code == 200
    outcomes = [json.loads(x) for x in r.text.splitlines()]
    assert len(outcomes) == m["error"][0]["count"] == 2, outcomes
    text = " ".join(o["issue"][0]["diagnostics"] for o in outcomes)
    assert "noSuchParameter" in text and "_madeUpParameter" in text, text
    assert all(o["resourceType"] == "OperationOutcome" and o["issue"][0]["severity"] == "warning" for o in outcomes)


# ---------------------------------------------------------------------------------------------- _elements

def check_subset(lines_by_type, elements_of, state):
    """Every line has exactly the kept members of its stored version (same values) and the SUBSETTED tag."""
    mandatory = {"Observation": {"status", "code"}, "Patient": set(), "Condition": {"subject"}}
    n = 0
    for t, lines in lines_by_type.items():
        for obj in lines:
            full = state[(t, obj["id"])].resource
            want = {k for k in full if k in elements_of(t) | mandatory[t] | {"resourceType", "id"}}
            assert set(obj) - {"meta"} == want, (t, obj["id"], sorted(obj), sorted(want))
            for k in want:
                assert obj[k] == full[k], (t, obj["id"], k)
            assert SUBSETTED in obj["meta"]["tag"], obj["meta"]
            n += 1
    return n


def test_elements_keeps_the_listed_and_mandatory_elements_in_both_views(env):
    state = env.model.state
    types = {"Observation", "Patient", "Condition"}
    expected = expected_system(state, types=types)
    query = q(_type="Observation,Patient,Condition", _elements="status,Patient.gender,Patient.birthDate")

    def elements_of(t):
        return {"status"} | ({"gender", "birthDate"} if t == "Patient" else set())

    m, got, parsed = ig_run(env.srv.base, query=query)
    assert got == expected, diff(got, expected)
    by_type = collections.defaultdict(list)
    for entry in m["output"]:
        by_type[entry["type"]].extend(parsed[entry["url"]])
    assert check_subset(by_type, elements_of, state) == sum(expected.values())
    hl = hl_run(env.srv, query=query)
    assert hl.counter == expected
    hl_by_type = collections.defaultdict(list)
    for key, lines in hl.files.items():
        hl_by_type[key.split("/")[-2]].extend(json.loads(x) for x in lines)
    check_subset(hl_by_type, elements_of, state)


@pytest.mark.parametrize("value", ["", "a-b", "Nonsense.status", "Observation.", "code.coding"])
def test_elements_bad_input_is_400_in_both_views(env, value):
    query = "_type=Observation&_elements=" + urllib.parse.quote(value)
    assert_outcome(requests.get(kickoff_url(env.srv.base, "system", query=query), headers=STRICT, timeout=30), 400,
                   mentions=["_elements"])
    assert_outcome(hl_kickoff(env.srv.sess, env.srv.base, "system", query=query), 400, mentions=["_elements"])


# ---------------------------------------------------------------------------------------------- deleted

def test_deleted_files_list_the_deletions_since_at_every_level(tpl, servers, tmp_path):
    srv = servers.start(tpl.clone(tmp_path / "data"), ["--export-poll-seconds", "1"])
    model = tpl.model()
    state = model.state
    # A Group of a few patients (the sample's Group holds them all).
    group_id = "deleted-test-group"
    members = set(model.ids("Patient")[:3])
    model.put(srv.sess, srv.base, {"resourceType": "Group", "id": group_id, "type": "person", "actual": True,
                                   "member": [{"entity": {"reference": f"Patient/{p}"}} for p in sorted(members)]})
    member_obs = sorted(k for k, e in state.items() if k[0] == "Observation" and subject_patient(e.resource) in members)
    other_obs = sorted(k for k, e in state.items()
                       if k[0] == "Observation" and subject_patient(e.resource) not in members)
    orgs = model.ids("Organization")
    assert len(member_obs) >= 3 and other_obs and len(orgs) >= 2
    model.delete(srv.sess, srv.base, *member_obs[0])  # before _since: listed nowhere
    time.sleep(0.05)
    since = utc_now_instant()
    time.sleep(0.05)
    was_in = {}  # (type, id) -> compartments of the version its deletion ended

    def delete(key):
        was_in[key] = state[key].patients
        model.delete(srv.sess, srv.base, *key)

    delete(member_obs[1])
    delete(other_obs[0])
    delete(("Organization", orgs[0]))
    recreated = copy.deepcopy(state[member_obs[2]].resource)
    delete(member_obs[2])
    model.put(srv.sess, srv.base, recreated)
    del was_in[member_obs[2]]  # re-created after its deletion: live, in output, not in deleted
    model.put(srv.sess, srv.base, {"resourceType": "Basic", "id": "since-new", "code": {"text": "x"}})
    delete(("Basic", "since-new"))  # created and deleted after _since: listed (the client may not know it; harmless)
    first_delete_seq = 2  # model.seq counts this test's writes: only the first two are before _since

    comp = r4().compartment_types
    cases = {
        "system": {k for k in was_in},
        "patient": {k for k, pts in was_in.items() if k[0] in comp and pts},
        "group": {k for k, pts in was_in.items() if k[0] in comp and pts & members},
    }
    assert cases["system"] > cases["patient"] > cases["group"] and member_obs[1] in cases["group"]
    outputs = {
        "system": expected_system(state, since_seq=first_delete_seq),
        "patient": expected_patient(state, since_seq=first_delete_seq),
        "group": expected_group(state, group_id, since_seq=first_delete_seq),
    }
    for level, want_deleted in cases.items():
        m, got, _ = ig_run(srv.base, level, q(_since=since), group_id=group_id)
        assert got == outputs[level], (level, diff(got, outputs[level]))
        assert "deleted" in m, m
        listed = collections.Counter()
        for entry in m["deleted"]:
            assert entry["type"] == "Bundle" and "/deleted/" in entry["url"], entry
            r = requests.get(entry["url"], headers={"Accept-Encoding": "gzip"}, timeout=30)
            assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/fhir+ndjson")
            lines = r.content.split(b"\n")[:-1]
            assert len(lines) == entry["count"]
            listed.update(deleted_entry(x) for x in lines)
        assert listed == collections.Counter(want_deleted), (level, listed, want_deleted)
        assert not {(t, i) for t, i, _ in got} & set(listed), "a resource both in output and in deleted"
        # The HealthLake view lists the same deletions in its describe answer, as files under deleted/.
        hl = hl_run(srv, level, q(_since=since), group_id=group_id)
        assert hl.counter == outputs[level]
        assert hl.deleted == collections.Counter(want_deleted), (level, hl.deleted)
        assert all("/deleted/deleted-" in u["url"] for u in hl.describe["deleted"]), hl.describe["deleted"]
    # _type applies to deletions too; without _since there is no `deleted` at all.
    m, _, _ = ig_run(srv.base, "system", q(_since=since, _type="Organization"))
    urls = [e["url"] for e in m["deleted"]]
    assert len(urls) == 1
    assert [deleted_entry(x) for x in requests.get(urls[0], timeout=30).content.split(b"\n")[:-1]] == \
        [("Organization", orgs[0])]
    m, _, _ = ig_run(srv.base, "system", q(_type="Organization"))
    assert "deleted" not in m


# ---------------------------------------------------------------------------------------------- discovery

def test_operation_definitions_list_exactly_the_parameters_implemented(env):
    common = {"_outputFormat", "_since", "_until", "_type", "_elements", "_typeFilter", "_tag", "_security",
              "includeAssociatedData", "organizeOutputBy", "allowPartialManifests"}
    for op, names in (("export", common), ("patient-export", common | {"patient"}),
                      ("group-export", common | {"patient"})):
        r = requests.get(f"{env.srv.base}/OperationDefinition/{op}", timeout=30)
        assert r.status_code == 200, r.text
        d = r.json()
        assert d["resourceType"] == "OperationDefinition" and d["id"] == op and d["code"] == "export", d
        assert d["base"] == f"http://hl7.org/fhir/uv/bulkdata/OperationDefinition/{op}", d
        assert d["url"] == f"{env.srv.base}/OperationDefinition/{op}"
        assert {p["name"] for p in d["parameter"]} == names, d["parameter"]
        assert all(p["use"] == "in" and p["min"] == 0 for p in d["parameter"]), d["parameter"]
        assert d["system"] is (op == "export") and d["type"] is (op != "export")
        if op != "export":
            assert d["resource"] == [{"patient-export": "Patient", "group-export": "Group"}[op]]
    # Each parameter listed is accepted by the kick-off (strict, no lenient): none is listed but unsupported.
    query = q(_outputFormat="ndjson", _since="2000-01-01T00:00:00Z", _until="2100-01-01T00:00:00Z",
              _type="Patient", _elements="gender", _typeFilter="Patient?gender=female", _tag="a", _security="b",
              allowPartialManifests="true", organizeOutputBy="Patient")
    client = BulkClient(new_session())
    assert client.wait(client.kickoff(kickoff_url(env.srv.base, "patient", query=query), headers=STRICT)) \
        .status_code == 200
    query = q(_type="Patient", includeAssociatedData="LatestProvenanceResources")
    assert client.wait(client.kickoff(kickoff_url(env.srv.base, "patient", query=query), headers=STRICT)) \
        .status_code == 200
    # Any other id is an ordinary (here missing) stored resource.
    assert_outcome(requests.get(f"{env.srv.base}/OperationDefinition/something-else", timeout=30), 404)
