"""Export engine hardening (issue 8): a crash at each named failpoint of the export path, then a restart, gives
exactly the expected output; job state stays truthful when state writes fail or the disk fills; kick-offs are
refused with 429 beyond the queue quota and 507 below the free-space floor; describe and DELETE answer while a
job is being planned; the Group's members are read as of the job's snapshot.

Failpoints (docs/ARCHITECTURE.md, "Failpoints"): FHIRLAKE_FAILPOINTS=name=kill makes the server SIGKILL itself
at that point after writing {FHIRLAKE_FAILPOINT_DIR}/name.hit; every test asserts that the marker exists and that
the process died by SIGKILL, so a renamed or dead failpoint fails the test."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from export_helpers import servers  # noqa: F401  (fixture)
from export_helpers import (BUCKET, SAMPLE_GROUP_ID, Template, assert_outcome, collect_output, describe,
                            expected_group, expected_patient, expected_system, job_dir_of, kickoff, part_files,
                            sample_data, start_export, verify_export, wait_done, wait_status)

SLOW = ["--test-export-batch-delay-ms", "100", "--export-batch-rows", "100"]
SMALL_FILES = ["--export-file-bytes", "20000"]


@pytest.fixture(scope="module")
def tpl(tmp_path_factory):
    return Template(tmp_path_factory.mktemp("hardening"), sample_data())


def failpoint_env(fp_dir: Path, spec: str) -> dict:
    fp_dir.mkdir(parents=True, exist_ok=True)
    return {"FHIRLAKE_FAILPOINTS": spec, "FHIRLAKE_FAILPOINT_DIR": str(fp_dir)}


def wait_killed_at(srv, fp_dir: Path, point: str, timeout=60):
    """Waits for the server to die at `point`: SIGKILL, with the point's marker written by that process."""
    proc = srv.proc
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the server did not die at failpoint {point} within {timeout} s:\n{srv.log_tail()}")
    srv.proc = None
    srv._log.close()
    assert rc == -signal.SIGKILL, f"server exited {rc}, not by SIGKILL at {point}:\n{srv.log_tail()}"
    marker = fp_dir / f"{point}.hit"
    assert marker.is_file(), f"failpoint {point} was never reached (no {marker})"
    assert marker.read_text().strip() == str(proc.pid), "the marker was written by another process"


def expected_for(tpl, level):
    m = tpl.model()
    if level == "system":
        return expected_system(m.state)
    if level == "patient":
        return expected_patient(m.state)
    return expected_group(m.state, SAMPLE_GROUP_ID)


def assert_only_listed_files(srv, d):
    """The job's folder holds exactly the files its describe lists (no stray, no unfinished, none twice)."""
    res = collect_output(srv, d)  # checks describe's output/error == the files on disk, and no .part- file
    listed = [f["url"] for f in d.get("output", []) + d.get("error", [])]
    assert len(listed) == len(set(listed)), f"a file is listed twice: {listed}"
    return res


# ------------------------------------------------------------------------------------------ kill at each point

KILL_POINTS = [
    # (failpoint, level, extra server args)
    ("export.plan", "patient", []),
    ("export.scope", "group", []),
    ("export.mid_file", "system", SMALL_FILES),
    ("export.after_sink_commit", "patient", SMALL_FILES),
    ("export.after_store_commit", "group", SMALL_FILES),
    ("export.finalize", "system", []),
]


@pytest.mark.parametrize("point,level,args", KILL_POINTS, ids=[p[0] for p in KILL_POINTS])
def test_kill_at_failpoint_then_restart_gives_the_exact_output(tpl, servers, tmp_path, point, level, args):
    data = tpl.clone(tmp_path / "data")
    fp = tmp_path / "fp"
    # @3 for points met many times: the crash then falls after some files were committed.
    spec = f"{point}=kill@3" if point in ("export.mid_file", "export.after_sink_commit",
                                          "export.after_store_commit") else f"{point}=kill"
    srv = servers.start(data, args, env=failpoint_env(fp, spec))
    job = start_export(srv.sess, srv.base, level, SAMPLE_GROUP_ID if level == "group" else None)
    wait_killed_at(srv, fp, point)

    srv2 = servers.start(data)  # no failpoints
    d = wait_done(srv2.sess, srv2.base, job, timeout=120)
    verify_export(srv2, job, expected_for(tpl, level), tpl, d=d)  # every resource once, none missing
    assert_only_listed_files(srv2, d)
    assert not part_files(srv2.s3_root())


def test_kill_during_cancel_then_restart_ends_cancel_completed(tpl, servers, tmp_path):
    data = tpl.clone(tmp_path / "data")
    fp = tmp_path / "fp"
    srv = servers.start(data, SLOW + SMALL_FILES, env=failpoint_env(fp, "export.cancel=kill"))
    job = start_export(srv.sess, srv.base, "system")
    wait_status(srv.sess, srv.base, job, "IN_PROGRESS", timeout=20)
    deadline = time.time() + 30
    while describe(srv.sess, srv.base, job)["exportJobProperties"]["exportedResourceCount"] == 0:
        assert time.time() < deadline, "no file committed"
        time.sleep(0.05)
    r = srv.sess.delete(f"{srv.base}/export/{job}")
    assert r.status_code == 200, r.text
    assert r.json()["exportJobProperties"]["jobStatus"] == "CANCEL_SUBMITTED"
    wait_killed_at(srv, fp, "export.cancel")

    srv2 = servers.start(data)
    d = wait_status(srv2.sess, srv2.base, job, {"CANCEL_COMPLETED"}, timeout=60)
    p = d["exportJobProperties"]
    assert "endTime" in p
    # What was exported before the cancel stays listed and exact; nothing unlisted is left in the job folder.
    res = assert_only_listed_files(srv2, d)
    assert sum(len(v) for v in res.files.values()) == p["exportedResourceCount"]
    universe = expected_system(tpl.model().state)
    assert all(universe[k] == 1 for k in res.counter), "a cancelled export wrote a resource not in the data"
    assert all(n == 1 for n in res.counter.values()), "a resource was exported twice"


# ------------------------------------------------------------------------------------------ state writes fail

def test_final_state_write_failure_is_reported_failed_after_restart(tpl, servers, tmp_path):
    """The final state write fails on every attempt (as on a full disk): the job is never reported as done; the
    outcome goes to the preallocated journal, and the next start reports the job FAILED with what happened."""
    data = tpl.clone(tmp_path / "data")
    fp = tmp_path / "fp"
    srv = servers.start(data, [], env=failpoint_env(fp, "export.persist_final=error"))
    job = start_export(srv.sess, srv.base, "patient")
    deadline = time.time() + 60
    while not (fp / "export.persist_final.hit").exists():
        assert time.time() < deadline, f"the final write was never attempted:\n{srv.log_tail()}"
        time.sleep(0.05)
    # Every file is written, but the store could not record the end: it says what it last recorded.
    for _ in range(20):
        p = describe(srv.sess, srv.base, job)["exportJobProperties"]
        assert p["jobStatus"] == "IN_PROGRESS", p
        time.sleep(0.05)
    assert srv.sess.get(f"http://127.0.0.1:{srv.port}/healthz").status_code == 200
    srv.stop()

    srv2 = servers.start(data)
    d = describe(srv2.sess, srv2.base, job)
    p = d["exportJobProperties"]
    assert p["jobStatus"] == "FAILED", p
    assert "final state could not be recorded" in p["message"], p["message"]
    assert "injected failure at failpoint export.persist_final" in p["message"], p["message"]
    assert str(data) not in p["message"]
    # The server goes on: the next export completes exactly.
    job2 = start_export(srv2.sess, srv2.base, "patient")
    d2 = wait_done(srv2.sess, srv2.base, job2, timeout=120)
    verify_export(srv2, job2, expected_for(tpl, "patient"), tpl, d=d2)


# ------------------------------------------------------------------------------------------ admission

def test_queue_quota_answers_429_with_retry_after(tpl, servers, tmp_path):
    srv = servers.start(tpl.clone(tmp_path / "data"), SLOW + ["--export-queue-limit", "2"])
    running = start_export(srv.sess, srv.base, "system")
    wait_status(srv.sess, srv.base, running, "IN_PROGRESS", timeout=20)
    waiting = [start_export(srv.sess, srv.base, "system") for _ in range(2)]  # SUBMITTED/QUEUED: the quota
    r = kickoff(srv.sess, srv.base, "patient")
    assert_outcome(r, 429, mentions=["2", "waiting"], code="throttled")
    assert r.headers.get("Retry-After", "").isdigit(), r.headers
    # The running job does not count; a cancelled waiting job frees a place.
    r = srv.sess.delete(f"{srv.base}/export/{waiting[0]}")
    assert r.status_code == 200, r.text
    wait_status(srv.sess, srv.base, waiting[0], {"CANCEL_COMPLETED"}, timeout=20)
    r = kickoff(srv.sess, srv.base, "patient")
    assert r.status_code == 202, r.text
    # The quota is kept in the store: after a restart it still holds.
    srv.stop()
    srv2 = servers.start(tmp_path / "data", SLOW + ["--export-queue-limit", "2"])
    states = {describe(srv2.sess, srv2.base, j)["exportJobProperties"]["jobStatus"] for j in [waiting[1]]}
    assert states <= {"SUBMITTED", "QUEUED", "IN_PROGRESS"}, states
    r = kickoff(srv2.sess, srv2.base, "system")
    assert r.status_code in (202, 429), r.text
    for j in [running, waiting[1]]:
        srv2.sess.delete(f"{srv2.base}/export/{j}")


def test_disk_admission_answers_507(tpl, servers, tmp_path):
    srv = servers.start(tpl.clone(tmp_path / "data"), ["--export-min-free-bytes", str(1 << 50)])  # 1 PiB
    r = kickoff(srv.sess, srv.base, "system")
    assert_outcome(r, 507, mentions=["free", "--export-min-free-bytes"])
    assert str(tmp_path) not in r.text
    assert not (srv.s3_root() / BUCKET).exists() or not any((srv.s3_root() / BUCKET).iterdir())


def test_long_prefix_segment_is_refused_at_kickoff(tpl, servers, tmp_path):
    """Regression (defect 6): a 300-byte prefix segment was accepted (202), then the job failed with 'File name too
    long' and a message carrying the server's data path."""
    srv = servers.start(tpl.clone(tmp_path / "data"))
    from export_helpers import export_body
    r = kickoff(srv.sess, srv.base, "system", body=export_body(s3uri=f"s3://{BUCKET}/{'x' * 300}"))
    assert_outcome(r, 400, mentions=["255"])
    assert str(tmp_path) not in r.text


# ------------------------------------------------------------------------------------------ no lock across I/O

def test_describe_and_cancel_answer_while_a_job_is_being_planned(tpl, servers, tmp_path):
    """Planning is paused at a failpoint: describe and DELETE of that job and of another one answer meanwhile
    (before, planning ran under the engine lock that describe and cancel also take). No wall-clock assertion:
    the requests simply complete while the planner is provably held at the failpoint."""
    data = tpl.clone(tmp_path / "data")
    fp = tmp_path / "fp"
    srv = servers.start(data, ["--export-jobs-per-datastore", "2"], env=failpoint_env(fp, "export.plan=pause"))
    planned = start_export(srv.sess, srv.base, "group", SAMPLE_GROUP_ID)
    deadline = time.time() + 30
    while not (fp / "export.plan.hit").exists():
        assert time.time() < deadline, "planning never reached the failpoint"
        time.sleep(0.02)
    other = start_export(srv.sess, srv.base, "system")  # kick-off answers too
    for job in (planned, other):
        p = describe(srv.sess, srv.base, job)["exportJobProperties"]
        assert p["jobStatus"] in ("SUBMITTED", "QUEUED"), p
    for job in (other, planned):
        r = srv.sess.delete(f"{srv.base}/export/{job}")
        assert r.status_code == 200, r.text
        assert r.json()["exportJobProperties"]["jobStatus"] == "CANCEL_SUBMITTED"
    assert (fp / "export.plan.hit").exists() and not (fp / "export.plan.release").exists()
    (fp / "export.plan.release").write_text("go\n")
    # The planner finds the job cancelled at its compare-and-set and ends it; it never runs.
    for job in (planned, other):
        d = wait_status(srv.sess, srv.base, job, {"CANCEL_COMPLETED"}, timeout=30)
        assert d["exportJobProperties"]["exportedResourceCount"] == 0, d
        assert not job_dir_of(srv, d).exists() or not any(job_dir_of(srv, d).rglob("*.ndjson"))


# ------------------------------------------------------------------------------------------ Group at snapshot

def test_group_members_are_read_as_of_the_snapshot(tpl, servers, tmp_path):
    """The Group is changed after the job's transactionTime (planning is paused right after it took the snapshot,
    before it reads the Group): the export contains the members as of its snapshot, not the new ones."""
    data = tpl.clone(tmp_path / "data")
    fp = tmp_path / "fp"
    srv = servers.start(data, [], env=failpoint_env(fp, "export.snapshot=pause"))
    m = tpl.model()
    job = start_export(srv.sess, srv.base, "group", SAMPLE_GROUP_ID)
    deadline = time.time() + 30
    while not (fp / "export.snapshot.hit").exists():
        assert time.time() < deadline, "planning never reached the failpoint after its snapshot"
        time.sleep(0.02)
    expected = expected_group(m.state, SAMPLE_GROUP_ID)
    # Now empty the Group (a newer version than the snapshot): the export must not lose its members.
    group = srv.sess.get(f"{srv.base}/Group/{SAMPLE_GROUP_ID}").json()
    group.pop("meta", None)
    group["member"] = group["member"][:1]
    r = srv.sess.put(f"{srv.base}/Group/{SAMPLE_GROUP_ID}", data=json.dumps(group),
                     headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 200, r.text
    (fp / "export.snapshot.release").write_text("go\n")
    d = wait_done(srv.sess, srv.base, job, timeout=120)
    verify_export(srv, job, expected, tpl, d=d)


# ------------------------------------------------------------------------------------------ full disks

class Tmpfs:
    """A small tmpfs mounted by the test (CI runs as root). A failed mount fails the test: it never skips."""

    def __init__(self, path: Path, size: str):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                           capture_output=True, text=True)
        assert p.returncode == 0, f"cannot mount a tmpfs at {path} (the disk-full tests need root): {p.stderr}"

    def resize(self, size: str):
        p = subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr

    def fill(self) -> Path:
        """Writes a filler file until the file system is full; returns it."""
        filler = self.path / f"filler-{uuid.uuid4().hex}"
        chunk = b"\0" * (1 << 20)
        with open(filler, "wb", buffering=0) as f:
            try:
                while True:
                    f.write(chunk)
            except OSError:
                pass
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError:
                pass
        st = os.statvfs(self.path)
        assert st.f_bavail * st.f_frsize < (1 << 20), "the file system is not full"
        return filler

    def unmount(self):
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


@pytest.fixture
def tmpfs_factory():
    mounted = []

    def make(path: Path, size: str) -> Tmpfs:
        t = Tmpfs(path, size)
        mounted.append(t)
        return t

    yield make
    for t in reversed(mounted):
        t.unmount()


def test_full_output_disk_fails_the_job_cleanly_and_the_next_export_completes(tpl, servers, tmp_path,
                                                                            tmpfs_factory):
    data = tpl.clone(tmp_path / "data")
    out = tmpfs_factory(data / "s3", "3m")  # the local bucket: far smaller than a system export
    srv = servers.start(data, SMALL_FILES + ["--export-min-free-bytes", "0"])
    job = start_export(srv.sess, srv.base, "system")
    d = wait_status(srv.sess, srv.base, job, {"FAILED"}, timeout=120)
    p = d["exportJobProperties"]
    assert "No space left on device" in p["message"], p["message"]
    assert f"s3://{BUCKET}/" in p["message"] and str(tmp_path) not in p["message"], p["message"]
    assert srv.sess.get(f"http://127.0.0.1:{srv.port}/healthz").status_code == 200
    # No half-written file is left: what remains are complete files, exactly the ones counted.
    res = collect_output(srv, d, check_manifest=False)
    assert not part_files(out.path)
    on_disk = sum(len(lines) for lines in res.files.values())
    assert on_disk == p["exportedResourceCount"], (on_disk, p["exportedResourceCount"])
    assert all(n == 1 for n in res.counter.values()), "a resource was written twice"

    out.resize("512m")  # space is freed
    job2 = start_export(srv.sess, srv.base, "system")
    d2 = wait_done(srv.sess, srv.base, job2, timeout=180)
    verify_export(srv, job2, expected_for(tpl, "system"), tpl, d=d2)


def test_full_store_disk_reports_the_job_failed_after_restart(tpl, servers, tmp_path, tmpfs_factory):
    """The store itself sits on the full disk, so even the job's final state cannot be written: the server stays
    up, and the job is reported FAILED (at the latest on the next start), never IN_PROGRESS forever."""
    mnt = tmpfs_factory(tmp_path / "mnt", "256m")
    data = tpl.clone(mnt.path / "data")
    srv = servers.start(data, SLOW + SMALL_FILES + ["--export-min-free-bytes", "0"])
    job = start_export(srv.sess, srv.base, "system")
    wait_status(srv.sess, srv.base, job, "IN_PROGRESS", timeout=30)
    filler = mnt.fill()
    deadline = time.time() + 120
    while "event=export_task_failed" not in srv.log_tail(1 << 20):
        assert time.time() < deadline, f"the export did not notice the full disk:\n{srv.log_tail()}"
        assert srv.sess.get(f"http://127.0.0.1:{srv.port}/healthz").status_code == 200
        time.sleep(0.1)
    status = describe(srv.sess, srv.base, job)["exportJobProperties"]["jobStatus"]
    assert status in ("IN_PROGRESS", "FAILED"), status  # what the store last recorded
    time.sleep(1.0)  # let the engine try to record the failure against the full disk
    srv.stop()
    filler.unlink()

    srv2 = servers.start(data, ["--export-min-free-bytes", "0"])
    d = describe(srv2.sess, srv2.base, job)
    p = d["exportJobProperties"]
    assert p["jobStatus"] == "FAILED", p
    assert p["message"], p
    assert str(mnt.path) not in p["message"], p["message"]
    job2 = start_export(srv2.sess, srv2.base, "patient")
    d2 = wait_done(srv2.sess, srv2.base, job2, timeout=180)
    verify_export(srv2, job2, expected_for(tpl, "patient"), tpl, d=d2)
