"""Snapshot consistency: writes made while an export runs are not in it; the export holds exactly the versions
current at its transactionTime (the job's start).

These use a smaller datastore (the 15 smallest patient Bundles of the sample, ~2,000 resources; each Bundle
also holds the Organizations and Practitioners it refers to) so that the slow mode the brief asks for
(--test-export-batch-delay-ms 200 --export-batch-rows 50 --export-workers 1) keeps each job running for a
few seconds instead of minutes.
"""

from __future__ import annotations

import copy
import time
import urllib.parse

import pytest

from export_helpers import servers  # noqa: F401  (fixture)
from export_helpers import (Template, describe, expected_group, expected_patient, expected_system, parse_hl_time,
                            parse_instant, sample_data, smallest_patient_files, start_export, utc_now_instant,
                            verify_export, wait_done, wait_status)

SLOW = ["--test-export-batch-delay-ms", "200", "--export-batch-rows", "50", "--export-workers", "1"]


@pytest.fixture(scope="module")
def tpl(tmp_path_factory):
    return Template(tmp_path_factory.mktemp("consistency"), sample_data(smallest_patient_files(15)))


def loaded_order(tpl, type_):
    """Ids of a type in load order (the last ones have the highest row ids: an export scans them last)."""
    return [r["id"] for r in tpl.sample.resources if r["resourceType"] == type_]


def test_writes_during_export_are_not_in_it(tpl, servers, tmp_path):
    srv = servers.start(tpl.clone(tmp_path / "data"), SLOW)
    m = tpl.model()
    obs_id = loaded_order(tpl, "Observation")[-1]
    enc_id = loaded_order(tpl, "Encounter")[-1]
    old_obs = m.get("Observation", obs_id)
    old_enc = m.get("Encounter", enc_id)
    total = len(m.live())
    assert total > 1500

    job = start_export(srv.sess, srv.base, "system")
    d = wait_status(srv.sess, srv.base, job, "IN_PROGRESS", timeout=20)
    assert d["exportJobProperties"]["jobStatus"] == "IN_PROGRESS"
    snapshot = m.snapshot()
    mark = m.seq

    new_pt = copy.deepcopy(m.get("Patient", m.ids("Patient")[0]).resource)
    new_pt["id"] = "created-during-export"
    m.put(srv.sess, srv.base, new_pt)
    upd = copy.deepcopy(old_obs.resource)
    upd["status"] = "amended"
    m.put(srv.sess, srv.base, upd)
    m.delete(srv.sess, srv.base, "Encounter", enc_id)

    p = describe(srv.sess, srv.base, job)["exportJobProperties"]
    assert p["jobStatus"] == "IN_PROGRESS", "the job finished before the writes: the test proves nothing"
    assert p["progress"]["resourcesWritten"] < total

    d = wait_done(srv.sess, srv.base, job, timeout=120)
    res = verify_export(srv, job, expected_system(snapshot), tpl, d=d)
    assert ("Patient", "created-during-export") not in {k[:2] for k in res.counter}
    assert ("Observation", obs_id, old_obs.version) in res.counter, "updated Observation not at its old version"
    assert ("Encounter", enc_id, old_enc.version) in res.counter, "deleted Encounter not exported"
    cur = srv.sess.get(f"{srv.base}/Observation/{obs_id}")
    assert cur.status_code == 200 and cur.content != res.lines[("Observation", obs_id, old_obs.version)]
    assert srv.sess.get(f"{srv.base}/Encounter/{enc_id}").status_code == 410

    # transactionTime is the job's start, between submit and end.
    tt = parse_instant(d["transactionTime"])
    p = d["exportJobProperties"]
    assert parse_hl_time(p["submitTime"]).timestamp() <= tt.timestamp() < parse_hl_time(p["endTime"]).timestamp() + 1

    # A later export since that transactionTime holds exactly what was written during the first one.
    q = "_since=" + urllib.parse.quote(d["transactionTime"], safe="")
    expected = expected_system(m.state, since_seq=mark)
    assert sorted(k[:2] for k in expected) == [("Observation", obs_id), ("Patient", "created-during-export")]
    job2 = start_export(srv.sess, srv.base, "system", query=q)
    verify_export(srv, job2, expected, tpl, d=wait_done(srv.sess, srv.base, job2, timeout=60))


def test_patient_level_snapshot_when_compartment_changes(tpl, servers, tmp_path):
    """Patient level: a resource that leaves every compartment (or moves to another patient) after the
    job started is still exported at its version as of transactionTime; one created after is not."""
    srv = servers.start(tpl.clone(tmp_path / "data"), SLOW)
    m = tpl.model()
    obs_ids = m.ids("Observation")
    by_order = loaded_order(tpl, "Observation")
    leaver, mover = by_order[-1], by_order[-2]
    other_patient = next(p for p in m.ids("Patient") if p not in m.get("Observation", mover).patients)

    job = start_export(srv.sess, srv.base, "patient")
    wait_status(srv.sess, srv.base, job, "IN_PROGRESS", timeout=20)
    snapshot = m.snapshot()

    r = copy.deepcopy(m.get("Observation", leaver).resource)
    del r["subject"]  # now in no Patient compartment
    m.put(srv.sess, srv.base, r)
    r = copy.deepcopy(m.get("Observation", mover).resource)
    r["subject"] = {"reference": f"Patient/{other_patient}"}
    m.put(srv.sess, srv.base, r)
    new = copy.deepcopy(m.get("Observation", obs_ids[0]).resource)
    new["id"] = "obs-created-during-export"
    m.put(srv.sess, srv.base, new)
    # One-hop resources changed after the start: exported as they were.
    enc = m.get("Encounter", loaded_order(tpl, "Encounter")[-1])
    prac = sorted(r for r in enc.refs if r[0] == "Practitioner")[0]
    org = sorted(r for r in enc.refs if r[0] == "Organization")[0]
    r = copy.deepcopy(m.get(*prac).resource)
    r["language"] = "fr"
    m.put(srv.sess, srv.base, r)
    m.delete(srv.sess, srv.base, *org)
    assert describe(srv.sess, srv.base, job)["exportJobProperties"]["jobStatus"] == "IN_PROGRESS", \
        "the job finished before the writes: the test proves nothing"

    d = wait_done(srv.sess, srv.base, job, timeout=120)
    expected = expected_patient(snapshot)
    assert ("Observation", leaver, snapshot[("Observation", leaver)].version) in expected
    assert ("Practitioner", prac[1], snapshot[prac].version) in expected
    assert ("Organization", org[1], snapshot[org].version) in expected
    verify_export(srv, job, expected, tpl, d=d)


def test_since_export_with_writes_during_it(tpl, servers, tmp_path):
    """_since and the snapshot together: the version as of transactionTime is exported only when its own
    lastUpdated >= _since."""
    srv = servers.start(tpl.clone(tmp_path / "data"),
                        ["--test-export-batch-delay-ms", "200", "--export-batch-rows", "10", "--export-workers", "1"])
    m = tpl.model()
    order = loaded_order(tpl, "Observation")
    a, b, c = order[-3:]  # scanned last

    def touch(oid, status):
        r = copy.deepcopy(m.get("Observation", oid).resource)
        r["status"] = status
        m.put(srv.sess, srv.base, r)

    touch(a, "amended")  # before _since
    time.sleep(0.05)
    since = utc_now_instant()
    mark = m.seq
    time.sleep(0.05)
    for oid in order[:100]:  # keeps the job busy: ~10 batches of 10 rows with a 200 ms pause
        touch(oid, "corrected")
    touch(b, "amended")
    touch(c, "amended")

    job = start_export(srv.sess, srv.base, "system", query="_since=" + urllib.parse.quote(since, safe=""))
    wait_status(srv.sess, srv.base, job, "IN_PROGRESS", timeout=20)
    snapshot = m.snapshot()
    touch(a, "cancelled")
    touch(b, "cancelled")
    m.delete(srv.sess, srv.base, "Observation", c)
    new = copy.deepcopy(m.get("Observation", a).resource)
    new["id"] = "since-created-during-export"
    m.put(srv.sess, srv.base, new)
    assert describe(srv.sess, srv.base, job)["exportJobProperties"]["jobStatus"] == "IN_PROGRESS", \
        "the job finished before the writes: the test proves nothing"

    d = wait_done(srv.sess, srv.base, job, timeout=60)
    expected = expected_system(snapshot, since_seq=mark)
    assert sum(expected.values()) == 102
    assert ("Observation", b, 2) in expected and ("Observation", c, 2) in expected
    assert not any(k[1] == a for k in expected)
    verify_export(srv, job, expected, tpl, d=d)


def test_group_level_snapshot(tpl, servers, tmp_path):
    """Group level with writes while the job runs: the Group's member list, the members' compartments and
    the one-hop resources are all as of transactionTime."""
    srv = servers.start(tpl.clone(tmp_path / "data"), SLOW)
    m = tpl.model()
    patients = m.ids("Patient")
    members, outsider = patients[:10], patients[10]
    group = {"resourceType": "Group", "id": "consistency-group", "type": "person", "actual": True,
             "member": [{"entity": {"reference": f"Patient/{p}"}} for p in members]}
    m.put(srv.sess, srv.base, group)
    # Resources of members, scanned last (highest row ids first in the list).
    member_obs = [i for i in reversed(loaded_order(tpl, "Observation"))
                  if m.get("Observation", i).patients & set(members)]
    enc = next(m.get("Encounter", i) for i in reversed(loaded_order(tpl, "Encounter"))
               if m.get("Encounter", i).patients & set(members))
    prac = sorted(r for r in enc.refs if r[0] == "Practitioner")[0]

    job = start_export(srv.sess, srv.base, "group", "consistency-group")
    wait_status(srv.sess, srv.base, job, "IN_PROGRESS", timeout=20)
    snapshot = m.snapshot()

    g2 = copy.deepcopy(group)
    g2["member"].append({"entity": {"reference": f"Patient/{outsider}"}})  # joins after the start: not exported
    g2["member"][0]["inactive"] = True  # leaves after the start: still exported
    m.put(srv.sess, srv.base, g2)
    m.delete(srv.sess, srv.base, "Observation", member_obs[0])
    r = copy.deepcopy(m.get("Observation", member_obs[1]).resource)
    r["subject"] = {"reference": f"Patient/{outsider}"}  # moves out of the group after the start
    m.put(srv.sess, srv.base, r)
    r = copy.deepcopy(m.get(*prac).resource)
    r["language"] = "fr"
    m.put(srv.sess, srv.base, r)
    r = copy.deepcopy(m.get("Observation", member_obs[2]).resource)
    r["id"] = "group-obs-created-during-export"
    m.put(srv.sess, srv.base, r)
    assert describe(srv.sess, srv.base, job)["exportJobProperties"]["jobStatus"] == "IN_PROGRESS", \
        "the job finished before the writes: the test proves nothing"

    d = wait_done(srv.sess, srv.base, job, timeout=120)
    expected = expected_group(snapshot, "consistency-group")
    assert ("Practitioner", prac[1], snapshot[prac].version) in expected
    assert not any(k[:2] == ("Patient", outsider) for k in expected)
    verify_export(srv, job, expected, tpl, d=d)
