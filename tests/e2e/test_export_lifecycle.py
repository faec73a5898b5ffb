"""Export job life cycle: cancel (running, queued, finished), the per-datastore FIFO queue, recovery after
kill -9, a failing sink, and an unexportable stored row (COMPLETED_WITH_ERRORS)."""

from __future__ import annotations

import collections
import concurrent.futures
import json
import re
import shutil
import subprocess
import time

import pytest

from export_helpers import servers  # noqa: F401  (fixture)
from export_helpers import (BUCKET, INSTANT_RE, SAMPLE_GROUP_ID, BytesOracle, Template, assert_outcome, check_bytes,
                            collect_output, describe, expected_group, expected_patient, expected_system, job_dir_of,
                            new_session, parse_hl_time, parse_instant, part_files, sample_data, start_export,
                            verify_export, wait_done, wait_status)

SLOW = ["--test-export-batch-delay-ms", "200", "--export-batch-rows", "50"]
SMALL_FILES = ["--export-file-bytes", "20000"]


@pytest.fixture(scope="module")
def tpl(tmp_path_factory):
    return Template(tmp_path_factory.mktemp("lifecycle"), sample_data())


def wait_committed(srv, job, min_rows=1, timeout=20):
    """Waits until the running job has committed files holding >= min_rows rows."""
    deadline = time.time() + timeout
    while True:
        p = describe(srv.sess, srv.base, job)["exportJobProperties"]
        assert p["jobStatus"] == "IN_PROGRESS", p
        if p["exportedResourceCount"] >= min_rows:
            return p
        assert time.time() < deadline, f"no committed file after {timeout} s: {p}"
        time.sleep(0.05)


def check_subset_output(srv, tpl, d, universe: collections.Counter):
    """Output of a stopped job: files listed == files on disk, complete, no temp file, no duplicate, every
    line one of the expected versions with the GET bytes."""
    res = collect_output(srv, d)
    assert max(res.counter.values(), default=1) == 1, "a resource was exported twice"
    extra = res.counter - universe
    assert not extra, f"unexpected lines: {sorted(extra)[:10]}"
    oracle = BytesOracle(srv, tpl)
    try:
        check_bytes(res, oracle)
    finally:
        oracle.close()
    return res


# ---------------------------------------------------------------------------------------------- cancel

def test_cancel_running_job(tpl, servers, tmp_path):
    srv = servers.start(tpl.clone(tmp_path / "data"), SLOW + SMALL_FILES)
    m = tpl.model()
    job = start_export(srv.sess, srv.base, "system")
    wait_status(srv.sess, srv.base, job, "IN_PROGRESS", timeout=20)
    wait_committed(srv, job, min_rows=100)
    assert describe(srv.sess, srv.base, job)["exportJobProperties"]["jobStatus"] == "IN_PROGRESS"

    r = srv.sess.delete(f"{srv.base}/export/{job}")
    assert r.status_code == 200, r.text
    assert r.json() == {"exportJobProperties": {"jobId": job, "jobStatus": "CANCEL_SUBMITTED",
                                                "datastoreId": srv.datastore_id}}, r.text
    st = describe(srv.sess, srv.base, job)["exportJobProperties"]["jobStatus"]
    assert st in ("CANCEL_SUBMITTED", "CANCEL_IN_PROGRESS", "CANCEL_COMPLETED"), st
    d = wait_status(srv.sess, srv.base, job, "CANCEL_COMPLETED", timeout=20)
    assert "endTime" in d["exportJobProperties"]
    res = check_subset_output(srv, tpl, d, expected_system(m.state))
    total = sum(res.counter.values())
    assert 100 <= total < len(m.live()), f"{total} rows exported by a cancelled job"
    assert d["error"] == []
    # Nothing is written after CANCEL_COMPLETED.
    listing = sorted(str(p) for p in srv.s3_root().rglob("*"))
    time.sleep(1.0)
    assert sorted(str(p) for p in srv.s3_root().rglob("*")) == listing
    assert describe(srv.sess, srv.base, job) == d

    r = srv.sess.delete(f"{srv.base}/export/{job}")
    assert_outcome(r, 400, ["Interaction not supported."], code="not-supported")


def test_cancel_finished_job(tpl, servers, tmp_path):
    srv = servers.start(tpl.clone(tmp_path / "data"))
    job = start_export(srv.sess, srv.base, "system", query="_type=Patient")
    d = wait_done(srv.sess, srv.base, job, timeout=30)
    r = srv.sess.delete(f"{srv.base}/export/{job}")
    assert_outcome(r, 400, ["Interaction not supported."], code="not-supported")
    assert describe(srv.sess, srv.base, job) == d


def test_cancel_queued_job(tpl, servers, tmp_path):
    srv = servers.start(tpl.clone(tmp_path / "data"), SLOW)
    j1 = start_export(srv.sess, srv.base, "system")
    wait_status(srv.sess, srv.base, j1, "IN_PROGRESS", timeout=20)
    j2 = start_export(srv.sess, srv.base, "system", query="_type=Patient")
    wait_status(srv.sess, srv.base, j2, "QUEUED", timeout=10)
    assert describe(srv.sess, srv.base, j1)["exportJobProperties"]["jobStatus"] == "IN_PROGRESS"

    r = srv.sess.delete(f"{srv.base}/export/{j2}")
    assert r.status_code == 200, r.text
    assert r.json() == {"exportJobProperties": {"jobId": j2, "jobStatus": "CANCEL_SUBMITTED",
                                                "datastoreId": srv.datastore_id}}
    d2 = wait_status(srv.sess, srv.base, j2, "CANCEL_COMPLETED", timeout=10)
    assert d2.get("output", []) == [] and d2["exportJobProperties"]["exportedResourceCount"] == 0

    assert not job_dir_of(srv, d2).exists()
    # The running job is not affected, and the cancelled one never runs.
    assert describe(srv.sess, srv.base, j1)["exportJobProperties"]["jobStatus"] == "IN_PROGRESS"
    r = srv.sess.delete(f"{srv.base}/export/{j2}")
    assert_outcome(r, 400, ["Interaction not supported."], code="not-supported")
    # Stop the long job.
    assert srv.sess.delete(f"{srv.base}/export/{j1}").status_code == 200
    wait_status(srv.sess, srv.base, j1, "CANCEL_COMPLETED", timeout=20)
    time.sleep(0.6)  # a scheduler pass
    assert describe(srv.sess, srv.base, j2)["exportJobProperties"]["jobStatus"] == "CANCEL_COMPLETED"
    assert not job_dir_of(srv, d2).exists()
    # It never started, so it has no transactionTime; if the field is there it must still be a FHIR instant.
    assert "transactionTime" not in d2 or INSTANT_RE.match(d2["transactionTime"]), \
        f"transactionTime {d2['transactionTime']!r} is not a FHIR instant"


# ---------------------------------------------------------------------------------------------- queue

def test_queue_fifo_one_job_at_a_time(tpl, servers, tmp_path):
    srv = servers.start(tpl.clone(tmp_path / "data"),
                        ["--test-export-batch-delay-ms", "200", "--export-batch-rows", "10",
                         "--export-jobs-per-datastore", "1"])
    m = tpl.model()
    types = {"Patient", "AllergyIntolerance", "ImagingStudy"}
    q = "_type=Patient,AllergyIntolerance,ImagingStudy"
    jobs = [start_export(srv.sess, srv.base, "system", query=q, job_name=f"queued-{i}") for i in range(3)]

    wait_status(srv.sess, srv.base, jobs[0], "IN_PROGRESS", timeout=20)
    for j in jobs[1:]:
        wait_status(srv.sess, srv.base, j, "QUEUED", timeout=5)
    assert describe(srv.sess, srv.base, jobs[0])["exportJobProperties"]["jobStatus"] == "IN_PROGRESS", \
        "job 1 finished before the others were seen QUEUED: the test proves nothing"

    # Poll later jobs first: once a later job is seen started, an earlier one must be finished.
    history = collections.defaultdict(list)
    deadline = time.time() + 90
    while True:
        statuses = {}
        for j in reversed(jobs):
            statuses[j] = describe(srv.sess, srv.base, j)["exportJobProperties"]["jobStatus"]
            if not history[j] or history[j][-1] != statuses[j]:
                history[j].append(statuses[j])
        started = [i for i, j in enumerate(jobs) if statuses[j] not in ("SUBMITTED", "QUEUED")]
        running = [i for i, j in enumerate(jobs) if statuses[j] == "IN_PROGRESS"]
        assert len(running) <= 1, f"jobs {running} IN_PROGRESS at once: {statuses}"
        if started:
            last = max(started)
            for i in range(last):
                assert statuses[jobs[i]] == "COMPLETED", \
                    f"job {last + 1} started while job {i + 1} is {statuses[jobs[i]]}: {dict(history)}"
        if all(s == "COMPLETED" for s in statuses.values()):
            break
        assert time.time() < deadline, dict(history)
        time.sleep(0.05)
    for j in jobs[1:]:
        assert history[j][:2] == ["QUEUED", "IN_PROGRESS"], history[j]

    ds = [describe(srv.sess, srv.base, j) for j in jobs]
    tts = [parse_instant(d["transactionTime"]) for d in ds]
    # endedAt (fhirlake's millisecond end time) when present, else HealthLake's whole-second endTime.
    ends = [parse_instant(d["exportJobProperties"]["endedAt"]) if "endedAt" in d["exportJobProperties"]
            else parse_hl_time(d["exportJobProperties"]["endTime"]) for d in ds]
    assert tts[0] < tts[1] < tts[2], tts
    for i in (1, 2):
        assert ends[i - 1].timestamp() <= tts[i].timestamp(), (ends[i - 1], tts[i])
    expected = expected_system(m.state, types=types)
    for j, d in zip(jobs, ds):
        verify_export(srv, j, expected, tpl, d=d)


# ---------------------------------------------------------------------------------------------- crash

@pytest.mark.parametrize("level,how", [("system", "kill9"), ("patient", "kill9"), ("group", "kill9"),
                                       ("system", "sigterm")])
def test_server_stop_during_export_then_resume(tpl, servers, tmp_path, level, how):
    """kill -9 (or a graceful stop) while a job is IN_PROGRESS with some files committed; restarted on the
    same data dir with the slow mode off, the job completes with exactly the expected content. Before the
    restart we also plant what a crash can leave behind: an unfinished temp file, and a finished file the
    store never recorded (crash between the file's rename and the checkpoint commit)."""
    data = tpl.clone(tmp_path / "data")
    srv = servers.start(data, SLOW + SMALL_FILES)
    m = tpl.model()
    gid = SAMPLE_GROUP_ID if level == "group" else None
    job = start_export(srv.sess, srv.base, level, gid)
    wait_status(srv.sess, srv.base, job, "IN_PROGRESS", timeout=20)
    p = wait_committed(srv, job, min_rows=300)
    time.sleep(0.3)
    d0 = describe(srv.sess, srv.base, job)
    if how == "kill9":
        srv.kill9()
    else:
        srv.stop()
    assert p["exportedResourceCount"] < len(m.live())
    job_dir = job_dir_of(srv, d0)
    committed = sorted(job_dir.rglob("*.ndjson"))
    assert committed, "no file committed before the stop"
    victim = committed[-1]
    m_ = re.match(r"^(\w+)-(\d+)\.ndjson$", victim.name)
    orphan = victim.parent / f"{m_.group(1)}-{int(m_.group(2)) + 1}.ndjson"
    if not orphan.exists():
        shutil.copyfile(victim, orphan)
    (victim.parent / f".{m_.group(1)}-{int(m_.group(2)) + 2}.ndjson.part-0badf00d").write_bytes(victim.read_bytes()[:100])

    srv2 = servers.start(data)  # slow mode off
    d = wait_done(srv2.sess, srv2.base, job, timeout=90)
    if level == "system":
        expected = expected_system(m.state)
    elif level == "patient":
        expected = expected_patient(m.state)
    else:
        expected = expected_group(m.state, SAMPLE_GROUP_ID)
    verify_export(srv2, job, expected, tpl, d=d)
    assert not part_files(srv2.s3_root())


# ---------------------------------------------------------------------------------------------- failures

def test_sink_failure_fails_the_job(tpl, servers, tmp_path):
    srv = servers.start(tpl.clone(tmp_path / "data"), SLOW + SMALL_FILES)
    job = start_export(srv.sess, srv.base, "system")
    wait_status(srv.sess, srv.base, job, "IN_PROGRESS", timeout=20)
    wait_committed(srv, job, min_rows=50)
    job_dir = job_dir_of(srv, describe(srv.sess, srv.base, job))
    assert job_dir.is_dir()
    # Moved aside in one step (the server may be creating a file in it right now, which would make a recursive
    # delete fail with "directory not empty"), then replaced by a file: the job's next write must fail.
    aside = job_dir.with_name(job_dir.name + ".moved-aside")
    job_dir.rename(aside)
    job_dir.write_text("not a folder\n")

    d = wait_status(srv.sess, srv.base, job, {"FAILED"}, timeout=30)
    p = d["exportJobProperties"]
    assert "endTime" in p
    # The message names the object the client knows (s3://bucket/key), never the server's path (hardening issue,
    # defect 6: it used to carry the absolute data directory).
    message = p.get("message", "")
    assert f"s3://{BUCKET}/" in message and job_dir.name in message, f"message does not name the object: {message!r}"
    assert str(srv.data_dir) not in message and "/tmp/" not in message, f"server path in message: {message!r}"
    assert "transactionTime" not in d and "output" not in d
    assert job_dir.read_text() == "not a folder\n"
    r = srv.sess.delete(f"{srv.base}/export/{job}")
    assert_outcome(r, 400, ["Interaction not supported."], code="not-supported")
    # The datastore still exports.
    j2 = start_export(srv.sess, srv.base, "system", query="_type=Device")
    wait_done(srv.sess, srv.base, j2, timeout=30)


def test_corrupt_row_completes_with_errors(tpl, servers, tmp_path):
    data = tpl.clone(tmp_path / "data")
    m = tpl.model()
    bad_id = m.ids("Observation")[17]
    first = servers.start(data)
    db = first.db_path()
    first.stop()
    out = subprocess.run(["sqlite3", str(db), "UPDATE resources SET json='not json' WHERE type='Observation' "
                          f"AND id='{bad_id}'; SELECT changes();"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "1", (out.stdout, out.stderr)

    srv = servers.start(data)
    job = start_export(srv.sess, srv.base, "system")
    d = wait_done(srv.sess, srv.base, job, timeout=60, expect="COMPLETED_WITH_ERRORS")
    expected = expected_system(m.state)
    del expected[("Observation", bad_id, m.get("Observation", bad_id).version)]
    res = verify_export(srv, job, expected, tpl, expect_status="COMPLETED_WITH_ERRORS", d=d)
    assert ("Observation", bad_id) not in {k[:2] for k in res.counter}
    job_dir = job_dir_of(srv, d)
    bucket_dir = srv.s3_root() / d["exportJobProperties"]["outputDataConfig"]["s3Configuration"]["s3Uri"][5:].split("/")[0]
    assert list(res.error_files) == [str((job_dir / "OperationOutcome" / "OperationOutcome-1.ndjson")
                                         .relative_to(bucket_dir))], list(res.error_files)
    lines = next(iter(res.error_files.values()))
    assert len(lines) == 1, lines
    oo = json.loads(lines[0])
    assert oo["resourceType"] == "OperationOutcome" and oo["issue"][0]["severity"] in ("error", "fatal")
    assert f"Observation/{bad_id}" in oo["issue"][0].get("diagnostics", ""), oo
    assert [e["type"] for e in d["error"]] == ["OperationOutcome"] and d["error"][0]["count"] == 1
    assert d["exportJobProperties"]["progress"]["percent"] == 100


def test_errors_survive_kill9(tpl, servers, tmp_path):
    """A damaged row met before a crash is still reported after the restart: its error file was committed with
    the task checkpoint, so the resumed job ends COMPLETED_WITH_ERRORS exactly like a clean run."""
    data = tpl.clone(tmp_path / "data")
    m = tpl.model()
    early = next(t for t in ("AllergyIntolerance", "CarePlan", "CareTeam", "Claim") if m.ids(t))
    bad_id = m.ids(early)[0]
    first = servers.start(data)
    db = first.db_path()
    first.stop()
    out = subprocess.run(["sqlite3", str(db), f"UPDATE resources SET json='not json' WHERE type='{early}' "
                          f"AND id='{bad_id}'; SELECT changes();"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "1", (out.stdout, out.stderr)

    srv = servers.start(data, SLOW + SMALL_FILES)
    job = start_export(srv.sess, srv.base, "system")
    wait_status(srv.sess, srv.base, job, "IN_PROGRESS", timeout=20)
    wait_committed(srv, job, min_rows=300)  # past the early type (types run in name order)
    d0 = describe(srv.sess, srv.base, job)
    assert d0["exportJobProperties"]["jobStatus"] == "IN_PROGRESS"
    srv.kill9()

    srv2 = servers.start(data)
    d = wait_done(srv2.sess, srv2.base, job, timeout=90, expect="COMPLETED_WITH_ERRORS")
    expected = expected_system(m.state)
    del expected[(early, bad_id, m.get(early, bad_id).version)]
    res = verify_export(srv2, job, expected, tpl, expect_status="COMPLETED_WITH_ERRORS", d=d)
    lines = [line for f in res.error_files.values() for line in f]
    assert len(lines) == 1, lines
    assert f"{early}/{bad_id}" in json.loads(lines[0])["issue"][0]["diagnostics"]


def test_restart_with_cancelling_and_queued_jobs(tpl, servers, tmp_path):
    """kill -9 while one job is being cancelled and two wait QUEUED (one of them cancelled): after the restart
    the cancelling job ends CANCEL_COMPLETED with its completed files listed, the cancelled queued job stays
    CANCEL_COMPLETED, and the other queued job runs and completes with exactly the expected content."""
    data = tpl.clone(tmp_path / "data")
    srv = servers.start(data, ["--test-export-batch-delay-ms", "3000", "--export-batch-rows", "50"] + SMALL_FILES)
    m = tpl.model()
    j1 = start_export(srv.sess, srv.base, "system")
    wait_status(srv.sess, srv.base, j1, "IN_PROGRESS", timeout=20)
    j2 = start_export(srv.sess, srv.base, "system", query="_type=Patient,Device")
    j3 = start_export(srv.sess, srv.base, "system", query="_type=Patient")
    wait_status(srv.sess, srv.base, j2, "QUEUED", timeout=5)
    wait_status(srv.sess, srv.base, j3, "QUEUED", timeout=5)
    assert srv.sess.delete(f"{srv.base}/export/{j3}").status_code == 200
    wait_status(srv.sess, srv.base, j3, "CANCEL_COMPLETED", timeout=5)
    wait_committed(srv, j1, min_rows=1)
    r = srv.sess.delete(f"{srv.base}/export/{j1}")
    assert r.status_code == 200 and r.json()["exportJobProperties"]["jobStatus"] == "CANCEL_SUBMITTED", r.text
    st = describe(srv.sess, srv.base, j1)["exportJobProperties"]["jobStatus"]
    assert st in ("CANCEL_SUBMITTED", "CANCEL_IN_PROGRESS"), f"{st}: the cancel finished before the kill"
    srv.kill9()

    srv2 = servers.start(data)
    d1 = wait_status(srv2.sess, srv2.base, j1, "CANCEL_COMPLETED", timeout=20)
    check_subset_output(srv2, tpl, d1, expected_system(m.state))
    assert d1["exportJobProperties"]["exportedResourceCount"] >= 1
    d2 = wait_done(srv2.sess, srv2.base, j2, timeout=30)
    verify_export(srv2, j2, expected_system(m.state, types={"Patient", "Device"}), tpl, d=d2)
    d3 = describe(srv2.sess, srv2.base, j3)
    assert d3["exportJobProperties"]["jobStatus"] == "CANCEL_COMPLETED"
    assert not job_dir_of(srv2, d3).exists()
    assert not part_files(srv2.s3_root())


def test_jobs_per_datastore_two(tpl, servers, tmp_path):
    """--export-jobs-per-datastore 2: two jobs run at once, the third waits QUEUED and starts when one ends."""
    srv = servers.start(tpl.clone(tmp_path / "data"),
                        ["--test-export-batch-delay-ms", "200", "--export-batch-rows", "10",
                         "--export-jobs-per-datastore", "2", "--export-workers", "4"])
    m = tpl.model()
    q = "_type=Patient,AllergyIntolerance"
    jobs = [start_export(srv.sess, srv.base, "system", query=q) for _ in range(3)]
    wait_status(srv.sess, srv.base, jobs[0], "IN_PROGRESS", timeout=20)
    wait_status(srv.sess, srv.base, jobs[1], "IN_PROGRESS", timeout=5)
    wait_status(srv.sess, srv.base, jobs[2], "QUEUED", timeout=5)
    st = [describe(srv.sess, srv.base, j)["exportJobProperties"]["jobStatus"] for j in jobs]
    assert st == ["IN_PROGRESS", "IN_PROGRESS", "QUEUED"], st
    ds = [wait_done(srv.sess, srv.base, j, timeout=60) for j in jobs]
    tts = [parse_instant(d["transactionTime"]) for d in ds]
    first_end = min(parse_instant(d["exportJobProperties"]["endedAt"]) if "endedAt" in d["exportJobProperties"]
                    else parse_hl_time(d["exportJobProperties"]["endTime"]) for d in ds[:2])
    assert first_end.timestamp() <= tts[2].timestamp(), (first_end, tts[2])
    expected = expected_system(m.state, types={"Patient", "AllergyIntolerance"})
    for j, d in zip(jobs, ds):
        verify_export(srv, j, expected, tpl, d=d)


def test_concurrent_kickoffs(tpl, servers, tmp_path):
    srv = servers.start(tpl.clone(tmp_path / "data"))
    m = tpl.model()

    def one(i):
        s = new_session()
        try:
            return start_export(s, srv.base, "system", query="_type=Device", job_name=f"concurrent-{i}")
        finally:
            s.close()

    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        jobs = list(ex.map(one, range(16)))
    assert len(set(jobs)) == 16
    expected = expected_system(m.state, types={"Device"})
    for j in jobs:
        verify_export(srv, j, expected, tpl, d=wait_done(srv.sess, srv.base, j, timeout=60))


def test_group_deleted_while_job_queued(tpl, servers, tmp_path):
    """A Group export whose Group is deleted before the job starts: FAILED, with a message naming the Group."""
    srv = servers.start(tpl.clone(tmp_path / "data"), SLOW)
    m = tpl.model()
    g = {"resourceType": "Group", "id": "soon-deleted", "type": "person", "actual": True,
         "member": [{"entity": {"reference": f"Patient/{m.ids('Patient')[0]}"}}]}
    m.put(srv.sess, srv.base, g)
    j1 = start_export(srv.sess, srv.base, "system")
    wait_status(srv.sess, srv.base, j1, "IN_PROGRESS", timeout=20)
    j2 = start_export(srv.sess, srv.base, "group", "soon-deleted")
    wait_status(srv.sess, srv.base, j2, "QUEUED", timeout=5)
    m.delete(srv.sess, srv.base, "Group", "soon-deleted")
    assert srv.sess.delete(f"{srv.base}/export/{j1}").status_code == 200
    d = wait_status(srv.sess, srv.base, j2, {"FAILED"}, timeout=20)
    assert "soon-deleted" in d["exportJobProperties"].get("message", ""), d
