"""Bulk export content at the three levels (system, Patient, Group), with _type, _since, the one-hop
referenced resources (and --export-no-referenced), and the describe answer.

Every expected set is computed in Python (export_helpers.expected_*) from the sample files and the writes
made here; each export is checked for (a) exact content, (b) bytes == GET _history/{v}, (c) layout and
manifest (export_helpers.verify_export).
"""

from __future__ import annotations

import collections
import copy
import datetime as dt
import re
import time
import urllib.parse

import pytest

from export_helpers import servers  # noqa: F401  (fixture)
from export_helpers import (BUCKET, HL_TIME_RE, KMS_KEY, ROLE_ARN, SAMPLE_GROUP_ID, ServerPool, Template,
                            expected_group, expected_patient, expected_system, export_body, kickoff, parse_hl_time,
                            parse_instant, r4, sample_data, start_export, utc_now_instant, verify_export, wait_done,
                            wait_status)

G1 = "export-g1"
G2 = "export-g2"


@pytest.fixture(scope="module")
def tpl(tmp_path_factory):
    return Template(tmp_path_factory.mktemp("levels"), sample_data())


def make_groups(model, srv):
    """G1: 10 patients, the 10th `inactive`; G2: 5 other patients (must never appear in G1's export)."""
    patients = model.ids("Patient")
    g1_members = [{"entity": {"reference": f"Patient/{p}"}} for p in patients[:10]]
    g1_members[9]["inactive"] = True
    g1 = {"resourceType": "Group", "id": G1, "type": "person", "actual": True, "name": "export test group 1",
          "member": g1_members}
    g2 = {"resourceType": "Group", "id": G2, "type": "person", "actual": True, "name": "export test group 2",
          "member": [{"entity": {"reference": f"Patient/{p}"}} for p in patients[20:25]]}
    model.put(srv.sess, srv.base, g1)
    model.put(srv.sess, srv.base, g2)
    return patients[:9], patients[9], patients[20:25]


def add_referenced_kinds(model, srv):
    """Resources of more kinds than the sample has: compartment resources referring to a Device, a Medication
    and a Location (each then exported one hop deep at Patient/Group level), and an unreferenced Location."""
    pid = model.ids("Patient")[0]
    device = model.ids("Device")[0]
    subject = {"reference": f"Patient/{pid}"}
    new = [
        {"resourceType": "Medication", "id": "levels-med", "code": {"text": "aspirin"}},
        {"resourceType": "Location", "id": "levels-loc", "name": "Ward 1"},
        {"resourceType": "Location", "id": "levels-loc-unreferenced", "name": "Ward 2"},
        {"resourceType": "DeviceUseStatement", "id": "levels-dus", "status": "active", "subject": subject,
         "device": {"reference": f"Device/{device}"}},
        {"resourceType": "MedicationStatement", "id": "levels-ms", "status": "active", "subject": subject,
         "medicationReference": {"reference": "Medication/levels-med"}},
        {"resourceType": "Encounter", "id": "levels-enc", "status": "finished",
         "class": {"code": "AMB"}, "subject": subject, "location": [{"location": {"reference": "Location/levels-loc"}}]},
    ]
    for r in new:
        model.put(srv.sess, srv.base, r)
    return new


class Env:
    pass


@pytest.fixture(scope="module")
def env(tpl, tmp_path_factory):
    """One server (default flags) on a copy of the sample plus the two test Groups; tests here only read."""
    root = tmp_path_factory.mktemp("levels-env")
    pool = ServerPool(root)
    e = Env()
    e.srv = pool.start(tpl.clone(root / "data"))
    e.model = tpl.model()
    e.active, e.inactive, e.g2_members = make_groups(e.model, e.srv)
    e.extras = add_referenced_kinds(e.model, e.srv)
    yield e
    errors = pool.stop_all()
    assert not errors, errors


def run(env_or_srv, tpl, expected, level="system", group_id=None, query=""):
    srv = env_or_srv.srv if hasattr(env_or_srv, "srv") else env_or_srv
    job = start_export(srv.sess, srv.base, level, group_id, query)
    d = wait_done(srv.sess, srv.base, job)
    return verify_export(srv, job, expected, tpl, d=d)


# ---------------------------------------------------------------------------------------------- levels

def test_system_export_everything(env, tpl):
    expected = expected_system(env.model.state)
    assert sum(expected.values()) == 38473 + 2 + len(env.extras)  # the sample's unique (type, id) + ours
    run(env, tpl, expected)


def test_patient_export(env, tpl):
    expected = expected_patient(env.model.state)
    res = run(env, tpl, expected, "patient")
    got = res.counter
    # No duplicates even though Practitioners/Organizations are referenced by many resources.
    assert max(got.values()) == 1
    types = collections.Counter(k[0] for k in got)
    assert types["Patient"] == 100
    assert types["Practitioner"] > 0 and types["Organization"] > 0
    # Unreferenced Practitioners/Organizations are not exported.
    live_pracs = set(env.model.ids("Practitioner"))
    assert types["Practitioner"] < len(live_pracs) or types["Organization"] < len(env.model.ids("Organization"))


def test_group_export(env, tpl):
    expected = expected_group(env.model.state, G1)
    res = run(env, tpl, expected, "group", G1)
    keys = {(t, i) for (t, i, _) in res.counter}
    assert ("Group", G1) in keys
    assert ("Group", G2) not in keys and ("Group", SAMPLE_GROUP_ID) not in keys, "another Group was exported"
    assert {i for (t, i) in keys if t == "Patient"} == set(env.active), "exported Patients != active members"
    members = set(env.active)
    for (t, i, v) in res.counter:
        e = env.model.get(t, i)
        if t in r4().compartment_types and t not in ("Group", "Patient"):
            assert e.patients & members, f"{t}/{i} is in no member's compartment"
            assert env.inactive not in e.patients or e.patients & members


def test_group_export_of_other_group(env, tpl):
    run(env, tpl, expected_group(env.model.state, G2), "group", G2)


# ---------------------------------------------------------------------------------------------- _type

@pytest.mark.parametrize("raw", ["MedicationStatement,%20Observation", "MedicationStatement,+Observation"])
def test_type_system_with_space(env, tpl, raw):
    expected = expected_system(env.model.state, types={"MedicationStatement", "Observation"})
    assert set(k[0] for k in expected) == {"Observation", "MedicationStatement"}
    run(env, tpl, expected, query="_type=" + raw)


def test_type_system_several(env, tpl):
    types = {"Group", "Practitioner", "Device"}
    run(env, tpl, expected_system(env.model.state, types=types), query="_type=Group,Practitioner,Device")


def test_type_patient_non_compartment_type(env, tpl):
    expected = expected_patient(env.model.state, types={"Practitioner"})
    assert expected and set(k[0] for k in expected) == {"Practitioner"}
    assert sum(expected.values()) < len(env.model.ids("Practitioner"))
    run(env, tpl, expected, "patient", query="_type=Practitioner")


def test_type_patient_with_space(env, tpl):
    expected = expected_patient(env.model.state, types={"MedicationStatement", "Observation"})
    run(env, tpl, expected, "patient", query="_type=MedicationStatement,%20Observation")


def test_type_patient_device(env, tpl):
    # Device is not in the R4 Patient compartment (no param): only referenced Devices are exported.
    expected = expected_patient(env.model.state, types={"Device", "Group", "Location", "Medication"})
    assert collections.Counter(k[0] for k in expected) == {"Device": 1, "Location": 1, "Medication": 1, "Group": 3}
    run(env, tpl, expected, "patient", query="_type=Device,Group,Location,Medication")


def test_type_group(env, tpl):
    types = {"Patient", "Practitioner", "Group", "Observation"}
    expected = expected_group(env.model.state, G1, types=types)
    assert {k[0] for k in expected} == types
    run(env, tpl, expected, "group", G1, query="_type=Patient,Practitioner,%20Group,Observation")


def test_type_group_with_space(env, tpl):
    expected = expected_group(env.model.state, G1, types={"MedicationStatement", "Observation"})
    run(env, tpl, expected, "group", G1, query="_type=MedicationStatement,%20Observation")


# ---------------------------------------------------------------------------------------------- _since

def test_since(tpl, servers, tmp_path):
    srv = servers.start(tpl.clone(tmp_path / "data"))
    m = tpl.model()
    make_groups(m, srv)
    time.sleep(0.05)
    since = utc_now_instant()
    mark = m.seq
    time.sleep(0.05)
    obs = m.ids("Observation")[:2]
    for oid in obs:
        r = copy.deepcopy(m.get("Observation", oid).resource)
        r["status"] = "amended"
        m.put(srv.sess, srv.base, r)
    time.sleep(0.01)  # the next write has a later lastUpdated (used as an exact _since below)
    pat = copy.deepcopy(m.get("Patient", m.ids("Patient")[3]).resource)
    pat["language"] = "en-GB"
    m.put(srv.sess, srv.base, pat)
    # A Practitioner that some compartment resource references (so it is also in the Patient-level scope).
    enc = m.get("Encounter", m.ids("Encounter")[0])
    prac_ref = sorted(r for r in enc.refs if r[0] == "Practitioner")[0]
    prac = copy.deepcopy(m.get(*prac_ref).resource)
    prac["language"] = "en-GB"
    m.put(srv.sess, srv.base, prac)
    new_enc = copy.deepcopy(enc.resource)
    new_enc["id"] = "since-new-encounter"
    m.put(srv.sess, srv.base, new_enc)
    m.delete(srv.sess, srv.base, "Condition", m.ids("Condition")[0])  # deleted: in no export

    q = "_since=" + urllib.parse.quote(since, safe="")
    expected = expected_system(m.state, since_seq=mark)
    assert sorted(k[:2] for k in expected) == sorted(
        [("Observation", o) for o in obs] + [("Patient", pat["id"]), prac_ref, ("Encounter", "since-new-encounter")])
    run(srv, tpl, expected, query=q)
    run(srv, tpl, expected_patient(m.state, since_seq=mark), "patient", query=q)
    run(srv, tpl, expected_system(m.state, types={"Observation"}, since_seq=mark), query=q + "&_type=Observation")
    # The same instant written with an offset.
    t = parse_instant(since).astimezone(dt.timezone(dt.timedelta(hours=2)))
    since_offset = t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}+02:00"
    run(srv, tpl, expected, query="_since=" + urllib.parse.quote(since_offset, safe=""))
    # _since equal to a resource's lastUpdated includes it (>=): from the Patient's update on.
    pat_updated = srv.sess.get(f"{srv.base}/Patient/{pat['id']}").json()["meta"]["lastUpdated"]
    pat_seq = m.get("Patient", pat["id"]).seq
    run(srv, tpl, expected_system(m.state, since_seq=pat_seq - 1),
        query="_since=" + urllib.parse.quote(pat_updated, safe=""))
    # A Group containing the updated Patient.
    g = {"resourceType": "Group", "id": "since-group", "type": "person", "actual": True,
         "member": [{"entity": {"reference": f"Patient/{pat['id']}"}}]}
    m.put(srv.sess, srv.base, g)
    run(srv, tpl, expected_group(m.state, "since-group", since_seq=mark), "group", "since-group", query=q)


# ---------------------------------------------------------------------------------------------- referenced

def test_no_referenced_flag(tpl, servers, tmp_path):
    srv = servers.start(tpl.clone(tmp_path / "data"), ["--export-no-referenced"])
    m = tpl.model()
    make_groups(m, srv)
    exp_p = expected_patient(m.state, referenced=False)
    assert not {k[0] for k in exp_p} & {"Practitioner", "Organization"}
    run(srv, tpl, exp_p, "patient")
    run(srv, tpl, expected_group(m.state, G1, referenced=False), "group", G1)
    res = run(srv, tpl, collections.Counter(), "patient", query="_type=Practitioner")
    assert res.describe["output"] == []


@pytest.mark.parametrize("level", ["patient", "group"])
def test_referenced_only_from_exported_resources(tpl, servers, tmp_path, level):
    """The one-hop resources are those referenced by resources that are exported: a Practitioner whose only
    referrer was deleted (or updated not to refer to it) is not exported."""
    srv = servers.start(tpl.clone(tmp_path / "data"))
    m = tpl.model()
    pid = m.ids("Patient")[0]
    for n in (1, 2, 3):
        m.put(srv.sess, srv.base, {"resourceType": "Practitioner", "id": f"only-ref-prac-{n}",
                                   "name": [{"family": f"OnlyRef{n}"}]})
        m.put(srv.sess, srv.base, {"resourceType": "Observation", "id": f"only-ref-obs-{n}", "status": "final",
                                   "code": {"text": "test"}, "subject": {"reference": f"Patient/{pid}"},
                                   "performer": [{"reference": f"Practitioner/only-ref-prac-{n}"}]})
    m.delete(srv.sess, srv.base, "Observation", "only-ref-obs-1")
    o2 = copy.deepcopy(m.get("Observation", "only-ref-obs-2").resource)
    del o2["performer"]
    m.put(srv.sess, srv.base, o2)
    g = {"resourceType": "Group", "id": "ref-group", "type": "person", "actual": True,
         "member": [{"entity": {"reference": f"Patient/{pid}"}}]}
    m.put(srv.sess, srv.base, g)
    if level == "patient":
        expected = expected_patient(m.state)
        run(srv, tpl, expected, "patient")
    else:
        expected = expected_group(m.state, "ref-group")
        run(srv, tpl, expected, "group", "ref-group")
    assert ("Practitioner", "only-ref-prac-3", 1) in expected
    assert ("Practitioner", "only-ref-prac-1", 1) not in expected
    assert ("Practitioner", "only-ref-prac-2", 1) not in expected


# ---------------------------------------------------------------------------------------------- describe

CAMEL = re.compile(r"^[a-z][A-Za-z0-9]*$")


def camel_keys(obj, path="$"):
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert CAMEL.match(k), f"key {path}.{k} is not camelCase"
            camel_keys(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            camel_keys(v, f"{path}[{i}]")


def test_describe_fields(tpl, servers, tmp_path):
    srv = servers.start(tpl.clone(tmp_path / "data"),
                        ["--test-export-batch-delay-ms", "100", "--export-batch-rows", "10"])
    m = tpl.model()
    s3uri = f"s3://{BUCKET}/describe/test"
    body = export_body(s3uri=s3uri, job_name="describe job:1")
    before = time.time()
    r = kickoff(srv.sess, srv.base, "patient", query="_type=Patient", body=body)
    assert r.status_code == 202, r.text
    job = r.json()["jobId"]
    kick_url = r.request.url

    d = wait_status(srv.sess, srv.base, job, "IN_PROGRESS", timeout=20)
    assert set(d) == {"exportJobProperties"}, f"manifest fields before the job finished: {sorted(d)}"
    p = d["exportJobProperties"]
    camel_keys(d)
    assert p["jobId"] == job and p["jobName"] == "describe job:1" and p["datastoreId"] == srv.datastore_id
    assert "endTime" not in p
    assert p["outputDataConfig"] == {"s3Configuration": {"s3Uri": s3uri, "kmsKeyId": KMS_KEY}}
    assert p["dataAccessRoleArn"] == ROLE_ARN
    assert 0 <= p["progress"]["percent"] < 100
    assert "endedAt" not in p
    if "startedAt" in p:
        parse_instant(p["startedAt"])
    submit = parse_hl_time(p["submitTime"])
    assert abs(submit.timestamp() - before) < 5, (p["submitTime"], before)

    d = wait_done(srv.sess, srv.base, job, timeout=30)
    camel_keys(d)
    assert set(d) == {"exportJobProperties", "transactionTime", "request", "requiresAccessToken", "output", "error"}
    p = d["exportJobProperties"]
    allowed = {"jobId", "jobName", "jobStatus", "submitTime", "endTime", "datastoreId", "outputDataConfig",
               "dataAccessRoleArn", "message", "exportedResourceCount", "exportedBytes", "exportedResources",
               "startedAt", "endedAt", "progress"}  # startedAt/endedAt: fhirlake's millisecond times (docs)
    assert set(p) <= allowed and {"jobId", "jobStatus", "submitTime", "endTime", "datastoreId",
                                  "outputDataConfig", "dataAccessRoleArn"} <= set(p), sorted(p)
    assert HL_TIME_RE.match(p["submitTime"]) and HL_TIME_RE.match(p["endTime"]), (p["submitTime"], p["endTime"])
    end = parse_hl_time(p["endTime"])
    tt = parse_instant(d["transactionTime"])
    assert submit <= end and abs(end.timestamp() - time.time()) < 30
    assert submit.timestamp() <= tt.timestamp() < end.timestamp() + 1, (p["submitTime"], d["transactionTime"],
                                                                       p["endTime"])
    if "startedAt" in p or "endedAt" in p:
        started, ended = parse_instant(p["startedAt"]), parse_instant(p["endedAt"])
        assert submit.timestamp() <= started.timestamp() <= ended.timestamp()
        assert ended.replace(microsecond=0) == end, (p["endedAt"], p["endTime"])
    assert d["request"] == kick_url, (d["request"], kick_url)
    assert d["requiresAccessToken"] is False
    assert d["error"] == []
    assert p["progress"]["percent"] == 100
    assert p["exportedResourceCount"] == 100
    assert p["exportedResources"][0]["type"] == "Patient" and p["exportedResources"][0]["count"] == 100
    for o in d["output"]:
        assert o["url"].startswith(f"s3://{BUCKET}/describe/test/{srv.datastore_id}-FHIR_EXPORT-{job}/Patient/")
    verify_export(srv, job, expected_patient(m.state, types={"Patient"}), tpl, d=d)
    # The kick-off answer and the describe of a job name without JobName.
    job2 = start_export(srv.sess, srv.base, "system", query="_type=Device")
    d2 = wait_done(srv.sess, srv.base, job2, timeout=30)
    assert "jobName" not in d2["exportJobProperties"]
    assert d2["request"] == f"{srv.base}/$export?_type=Device"


# ---------------------------------------------------------------------------------------------- files and tasks

def test_file_split_and_parallel_tasks(tpl, servers, tmp_path):
    """Small files (--export-file-bytes) and a type split into several parallel tasks (--export-task-rows):
    still each resource exactly once, files numbered per type, manifest == disk."""
    file_bytes = 300000
    srv = servers.start(tpl.clone(tmp_path / "data"),
                        ["--export-file-bytes", str(file_bytes), "--export-batch-rows", "100",
                         "--export-task-rows", "3000", "--export-workers", "4"])
    m = tpl.model()
    job = start_export(srv.sess, srv.base, "system", query="_type=Observation,Claim,Patient,Device")
    d = wait_done(srv.sess, srv.base, job, timeout=60)
    res = verify_export(srv, job, expected_system(m.state, types={"Observation", "Claim", "Patient", "Device"}),
                        tpl, d=d)
    per_type = collections.defaultdict(list)
    for key, lines in res.files.items():
        t, name = key.split("/")[-2:]
        per_type[t].append(int(re.match(r"^\w+-(\d+)\.ndjson$", name).group(1)))
        size = sum(len(x) + 1 for x in lines)
        assert size < file_bytes + 100 * max(len(x) + 1 for x in lines), (key, size)
    assert len(per_type["Observation"]) > 10 and len(per_type["Claim"]) > 3, dict(per_type)
    for t, nums in per_type.items():
        assert len(nums) == len(set(nums)), (t, sorted(nums))


def test_public_url_in_absolute_urls(tpl, servers, tmp_path):
    srv = servers.start(tpl.clone(tmp_path / "data"), ["--public-url", "https://fhir.example.org/lake/"])
    public = f"https://fhir.example.org/lake/datastore/{srv.datastore_id}/r4"
    assert srv.public_base == public
    job = start_export(srv.sess, srv.base, "patient", query="_type=Patient", public_base=public)
    d = wait_done(srv.sess, srv.base, job, timeout=30)
    assert d["request"] == f"{public}/Patient/$export?_type=Patient"
    verify_export(srv, job, expected_patient(tpl.model().state, types={"Patient"}), tpl, d=d)
