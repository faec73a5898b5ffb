"""Bulk export into a REAL S3 server: Ceph RADOS Gateway on loopback (s3_helpers.rgw), through fhirlake's S3
sink (--s3-endpoint, --s3-roles, SigV4, multipart, SSE-KMS).

Every export is checked against the expected set computed in Python (export_helpers.expected_*), and the
objects are compared byte for byte, with the same keys relative to the job folder, to what a second
fhirlake server WITHOUT --s3-endpoint (the local directory sink) writes for the same export on a copy of
the same data dir with the same export settings (that local output is itself fully verified: content,
bytes == GET _history/{v}, layout, manifest).

Also: SSE-KMS headers of every object, multipart uploads (ETag "-N"), an unknown KMS key, kick-off
refusals (role, secret, bucket), radosgw killed mid-export, cancel during a multipart upload, and the S3 sink's
read path (Stat, Open, ranged reads) against RGW through the unit test binary s3_sink_test (its RgwTest cases).

Throughput (S3 vs the local sink) is measured by bench/run's "s3" phase, not here: a test asserts what a user
sees, never wall time.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from export_helpers import (FILE_NAME_RE, TERMINAL, BytesOracle, ExportResult, ServerPool, Template, assert_outcome,
                            check_manifest_matches_disk, describe, diff_text, expected_group, expected_patient,
                            expected_system, kickoff, r4, sample_data, start_export, verify_export, wait_done,
                            wait_status)
from fhirlake_helpers import binary_path
from s3_helpers import (ACCESS_KEY, BAD_SECRET_ROLE_ARN, BUCKET, KMS_KEY, KMS_KEY_2, MISSING_BUCKET, OTHER_BUCKET,
                        ROLE_ARN, SECRET_KEY, UNKNOWN_ROLE_ARN, rgw, s3_serve_args)  # noqa: F401 (rgw is a fixture)

PART_BYTES = 5 << 20
GROUP_ID = "s3-export-group"
# Export settings shared by the S3 server and its local-sink twin.
COMMON_ARGS = ["--export-workers", "2"]
# "rotated": files closed past 4 MiB, so large types span several files (some sent whole, some in parts).
VARIANT_ARGS = {"default": COMMON_ARGS, "rotated": COMMON_ARGS + ["--export-file-bytes", str(4 << 20)]}
# A slowed-down export: small batches with a pause after each, so a test can act while it runs (the first
# multipart upload opens ~1 s in; the whole job takes ~5 s when nothing happens to it).
SLOW_ARGS = ["--export-workers", "2", "--export-batch-rows", "100", "--test-export-batch-delay-ms", "20",
             "--export-file-bytes", str(256 << 20)]


def body(s3uri, kms=KMS_KEY, role=ROLE_ARN):
    return {"DataAccessRoleArn": role,
            "OutputDataConfig": {"S3Configuration": {"S3Uri": s3uri, "KmsKeyId": kms}}}


def job_prefix(d) -> tuple:
    """(bucket, 'prefix/{datastoreId}-FHIR_EXPORT-{jobId}/') of a described job."""
    props = d["exportJobProperties"]
    uri = props["outputDataConfig"]["s3Configuration"]["s3Uri"]
    assert uri.startswith("s3://"), uri
    bucket, _, prefix = uri[5:].partition("/")
    folder = f"{props['datastoreId']}-FHIR_EXPORT-{props['jobId']}/"
    return bucket, (f"{prefix}/{folder}" if prefix else folder)


class S3Export:
    """An export job's objects in RGW, parsed and checked like export_helpers.collect_output does for a folder."""

    def __init__(self, rgw_, d, check_manifest=True):
        self.describe = d
        self.bucket, self.prefix = job_prefix(d)
        self.objects = rgw_.download(self.bucket, self.prefix)  # key -> bytes
        self.res = res = ExportResult()
        res.describe, res.props = d, d["exportJobProperties"]
        self.rel = {}  # key relative to the job folder -> bytes
        for key, data in self.objects.items():
            rel = key[len(self.prefix):]
            self.rel[rel] = data
            folder, _, name = rel.partition("/")
            m = FILE_NAME_RE.match(name)
            assert m and m.group(1) == folder, f"object {key} is not at {{Type}}/{{Type}}-{{n}}.ndjson"
            assert folder in r4().all_types, f"folder of {key} is not an R4 resource type"
            assert data.endswith(b"\n"), f"{key}: does not end with a newline"
            lines = data[:-1].split(b"\n")
            assert all(lines), f"{key}: has an empty line"
            is_error = folder == "OperationOutcome"
            (res.error_files if is_error else res.files)[key] = lines
            for i, line in enumerate(lines):
                obj = json.loads(line)
                assert obj.get("resourceType") == folder, f"{key} line {i + 1}: {obj.get('resourceType')!r}"
                if not is_error:
                    k = (folder, obj["id"], int(obj["meta"]["versionId"]))
                    res.counter[k] += 1
                    res.lines[k] = line
        if check_manifest:
            # describe's output/error == exactly these objects (s3://bucket/key) with their line counts, and the
            # exported counts/bytes add up.
            check_manifest_matches_disk(res, self.bucket)


def local_files(res: ExportResult) -> dict:
    """Files of a verified local-sink export: path relative to the job folder -> bytes."""
    if not res.job_dir.exists():
        return {}
    return {str(p.relative_to(res.job_dir)): p.read_bytes() for p in sorted(res.job_dir.rglob("*")) if p.is_file()}


def assert_same_files(s3_rel: dict, local_rel: dict):
    assert sorted(s3_rel) == sorted(local_rel), \
        f"object keys differ from the local sink's files:\n S3 only: {sorted(set(s3_rel) - set(local_rel))}\n" \
        f" local only: {sorted(set(local_rel) - set(s3_rel))}"
    differ = [k for k in s3_rel if s3_rel[k] != local_rel[k]]
    assert not differ, "objects differ from the local sink's files: " + ", ".join(
        f"{k} ({len(s3_rel[k])} vs {len(local_rel[k])} bytes)" for k in differ)


def wait_terminal(srv, job, timeout=120.0, poll=0.01):
    """Polls describe (every 10 ms) until the job ends; returns (describe, seconds from the call)."""
    t0 = time.perf_counter()
    d = wait_status(srv.sess, srv.base, job, TERMINAL, timeout, poll)
    return d, time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------- fixtures

class Env:
    """An S3 server and its local-sink twin on copies of one data dir (the sample + one Group)."""

    def __init__(self, rgw_, root, tpl):
        self.rgw = rgw_
        self.root = root
        self.tpl = tpl
        self.pool = ServerPool(root)
        self.model = tpl.model()
        # The base data dir: the sample plus a Group of 8 active patients and one inactive member.
        self.base_dir = tpl.clone(root / "base")
        srv = self.pool.start(self.base_dir)
        patients = self.model.ids("Patient")
        self.group_active = patients[:8]
        members = [{"entity": {"reference": f"Patient/{p}"}} for p in patients[:9]]
        members[8]["inactive"] = True
        self.model.put(srv.sess, srv.base, {"resourceType": "Group", "id": GROUP_ID, "type": "person",
                                            "actual": True, "name": "S3 export test group", "member": members})
        srv.stop()
        self.pairs = {}
        self.s3, self.local = self.pair("default")
        self.exports = {}

    def pair(self, variant):
        """(S3 server, local-sink server) with the export settings of `variant`, on copies of the base dir."""
        if variant not in self.pairs:
            args = VARIANT_ARGS[variant]
            s3 = self.server(f"s3-{variant}", s3_serve_args(self.rgw, PART_BYTES) + args)
            local = self.server(f"local-{variant}", args)
            assert s3.datastore_id == local.datastore_id
            self.pairs[variant] = (s3, local)
        return self.pairs[variant]

    def server(self, name, args):
        return self.pool.start(self.clone(name), args)

    def clone(self, name):
        dest = self.root / f"data-{name}"
        shutil.copytree(self.base_dir, dest)
        return dest

    def expected(self, level):
        if level == "system":
            return expected_system(self.model.state)
        if level == "patient":
            return expected_patient(self.model.state)
        return expected_group(self.model.state, GROUP_ID)

    def run_pair(self, level, kms, tag, variant="default"):
        """The same export on the local twin and on the S3 server (one after the other)."""
        group_id = GROUP_ID if level == "group" else None
        s3, local = self.pair(variant)
        out = {}
        for name, srv in (("local", local), ("s3", s3)):
            uri = f"s3://{BUCKET}/{tag}"
            job = start_export(srv.sess, srv.base, level, group_id, body=body(uri, kms))
            d, _ = wait_terminal(srv, job)
            props = d["exportJobProperties"]
            assert props["jobStatus"] == "COMPLETED", json.dumps(d, indent=1)[:3000]
            out[name] = (job, d)
        return out

    def export(self, level, variant="default"):
        """The verified export of `level` (cached): (S3Export, local ExportResult, kms key id)."""
        if (level, variant) not in self.exports:
            kms = KMS_KEY_2 if level == "patient" else KMS_KEY
            pair = self.run_pair(level, kms, f"levels/{level}-{variant}", variant)
            expected = self.expected(level)
            job_l, d_l = pair["local"]
            local_res = verify_export(self.pair(variant)[1], job_l, expected, self.tpl, d=d_l)
            job_s, d_s = pair["s3"]
            s3x = S3Export(self.rgw, d_s)
            assert s3x.res.counter == expected, f"S3 export {job_s} content differs from the expected set:\n" + \
                diff_text(s3x.res.counter, expected)
            assert not s3x.res.error_files and d_s["error"] == []
            # Nothing else under the export's S3Uri prefix than the job's folder.
            uri_prefix = f"levels/{level}-{variant}/"
            stray = [k for k in self.rgw.list_objects(BUCKET, uri_prefix) if not k.startswith(s3x.prefix)]
            assert not stray, stray
            self.exports[(level, variant)] = (s3x, local_res, kms)
        return self.exports[(level, variant)]


@pytest.fixture(scope="module")
def tpl(tmp_path_factory):
    return Template(tmp_path_factory.mktemp("s3-tpl"), sample_data())


@pytest.fixture(scope="module")
def env(rgw, tpl, tmp_path_factory):
    e = Env(rgw, tmp_path_factory.mktemp("s3-env"), tpl)
    yield e
    errors = e.pool.stop_all()
    assert not errors, errors


@pytest.fixture
def pool(tmp_path):
    p = ServerPool(tmp_path)
    yield p
    errors = p.stop_all()
    assert not errors, "server teardown: " + "\n".join(errors)


# ---------------------------------------------------------------------------------------------------- tests

@pytest.mark.parametrize("level,variant", [("system", "default"), ("patient", "default"), ("group", "default"),
                                           ("system", "rotated")])
def test_export_to_rgw_equals_expected_and_local_sink(env, level, variant):
    s3x, local_res, kms = env.export(level, variant)
    assert s3x.objects, "no object written"
    # Same relative keys, same bytes as the local directory sink.
    assert_same_files(s3x.rel, local_files(local_res))
    # describe's output: s3://bucket/key of exactly the objects, with their line counts (checked in S3Export);
    # spelled out once more here for the reader.
    d = s3x.describe
    assert {o["url"] for o in d["output"]} == {f"s3://{BUCKET}/{k}" for k in s3x.objects}
    for o in d["output"]:
        key = o["url"][len(f"s3://{BUCKET}/"):]
        assert o["count"] == s3x.objects[key].count(b"\n"), o
    assert d["exportJobProperties"]["outputDataConfig"]["s3Configuration"] == {
        "s3Uri": f"s3://{BUCKET}/levels/{level}-{variant}", "kmsKeyId": kms}
    if level == "group":
        patients = {k[1] for k in s3x.res.counter if k[0] == "Patient"}
        assert patients == set(env.group_active)
        assert ("Group", GROUP_ID, 1) in s3x.res.counter
    if variant == "rotated":
        per_type = collections.Counter(k.split("/")[0] for k in s3x.rel)
        assert per_type["Observation"] >= 3 and per_type["ExplanationOfBenefit"] >= 3, per_type


def test_every_object_has_sse_kms_with_the_requested_key(env):
    checked = 0
    for level, variant in (("system", "default"), ("patient", "default"), ("group", "default"),
                           ("system", "rotated")):
        s3x, _, kms = env.export(level, variant)
        for key in s3x.objects:
            h = env.rgw.head(BUCKET, key)
            assert h.get("ServerSideEncryption") == "aws:kms", (key, h)
            assert h.get("SSEKMSKeyId") == kms, (key, h.get("SSEKMSKeyId"), kms)
            checked += 1
    assert checked > 40


def multipart_etag(data: bytes, part_bytes: int) -> str:
    """The ETag S3 gives an object uploaded in parts cut the way the sink cuts them: the sink appends a row's
    bytes, then "\\n", and sends a part as soon as its buffer holds >= part_bytes."""
    pieces = []
    for line in data[:-1].split(b"\n"):
        pieces += [line, b"\n"]
    parts, buf = [], bytearray()
    for p in pieces:
        buf += p
        if len(buf) >= part_bytes:
            parts.append(bytes(buf))
            buf = bytearray()
    if buf or not parts:
        parts.append(bytes(buf))
    digest = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest()
    return f'"{digest}-{len(parts)}"'


def test_multipart_upload_of_large_files(env):
    s3x, local_res, _ = env.export("system")
    obs = [k for k in s3x.objects if k.endswith("/Observation/Observation-1.ndjson")]
    assert len(obs) == 1, sorted(s3x.objects)
    size = len(s3x.objects[obs[0]])
    assert size > 2 * PART_BYTES, size
    etag = env.rgw.head(BUCKET, obs[0])["ETag"]
    m = re.match(r'^"[0-9a-f]{32}-(\d+)"$', etag)
    assert m, f"Observation object ETag {etag} is not a multipart ETag"
    n = int(m.group(1))
    assert 1 < n <= math.ceil(size / PART_BYTES), (n, size)
    # Every object (also of the export with 4 MiB files): multipart exactly when it reached the part size, and
    # then made of exactly the parts expected (the multipart ETag is the MD5 of the parts' MD5s).
    counts = collections.Counter()
    for variant in ("default", "rotated"):
        for key, data in env.export("system", variant)[0].objects.items():
            etag = env.rgw.head(BUCKET, key)["ETag"]
            if len(data) >= PART_BYTES:
                assert etag == multipart_etag(data, PART_BYTES), (key, len(data), etag)
                counts[(variant, "multipart")] += 1
            else:
                assert re.match(r'^"[0-9a-f]{32}"$', etag), (key, len(data), etag)
                counts[(variant, "single")] += 1
    assert counts[("default", "multipart")] == 3, counts  # Observation, ExplanationOfBenefit, Claim
    assert counts[("rotated", "multipart")] >= 1 and counts[("rotated", "single")] > counts[("default", "single")], \
        counts
    # Content: equal to the local sink's file (itself verified line by line against GET _history).
    rel = obs[0][len(s3x.prefix):]
    assert s3x.objects[obs[0]] == (local_res.job_dir / rel).read_bytes()


@pytest.mark.parametrize("types", ["", "Observation"])
def test_unknown_kms_key_fails_the_job(env, types):
    """An unknown key id: the first PutObject (or CreateMultipartUpload, for a large file) is refused; the job
    ends FAILED with a message naming the key, and no multipart upload or object is left."""
    srv = env.s3
    tag = f"badkms/{types or 'all'}"
    job = start_export(srv.sess, srv.base, "system", query=f"_type={types}" if types else "",
                       body=body(f"s3://{BUCKET}/{tag}", kms="no-such-key"))
    d, _ = wait_terminal(srv, job)
    props = d["exportJobProperties"]
    assert props["jobStatus"] == "FAILED", json.dumps(d, indent=1)[:3000]
    assert "no-such-key" in props.get("message", ""), props
    if types == "Observation":  # ~13 MB: the refusal comes from CreateMultipartUpload
        assert "CreateMultipartUpload" in props["message"], props
    assert "output" not in d, d
    assert env.rgw.list_uploads(BUCKET) == []
    assert env.rgw.list_objects(BUCKET, tag + "/") == {}


def test_kickoff_refusals(env):
    srv = env.s3
    cases = [
        # role not in the --s3-roles file
        (body(f"s3://{BUCKET}/refused", role=UNKNOWN_ROLE_ARN), [UNKNOWN_ROLE_ARN]),
        # the role's secret is wrong: HeadBucket answers 403
        (body(f"s3://{BUCKET}/refused", role=BAD_SECRET_ROLE_ARN), [BAD_SECRET_ROLE_ARN, BUCKET]),
        # a bucket the role may not write (it exists)
        (body(f"s3://{OTHER_BUCKET}/refused"), [OTHER_BUCKET, ROLE_ARN]),
        # a bucket the role may write but that does not exist
        (body(f"s3://{MISSING_BUCKET}/refused"), [MISSING_BUCKET, "does not exist"]),
    ]
    for b, mentions in cases:
        for level, group in (("system", None), ("group", GROUP_ID)):
            r = kickoff(srv.sess, srv.base, level, group, body=b)
            assert_outcome(r, 400, mentions)
    assert env.rgw.list_objects(BUCKET, "refused/") == {}
    assert env.rgw.list_objects(OTHER_BUCKET) == {}
    assert MISSING_BUCKET not in [b["Name"] for b in env.rgw.s3.list_buckets()["Buckets"]]


def start_slow_job(rgw_, srv, tag):
    """Kicks off a slowed-down system export; waits until it is IN_PROGRESS with a multipart upload open and at
    least one object committed. Returns (job, describe, prefix, uploads)."""
    job = start_export(srv.sess, srv.base, "system", body=body(f"s3://{BUCKET}/{tag}"))
    deadline = time.time() + 60
    seen = []
    while True:
        d = describe(srv.sess, srv.base, job)
        st = d["exportJobProperties"]["jobStatus"]
        seen.append(st)
        assert st not in TERMINAL, f"job ended {st} before a multipart upload was seen: {json.dumps(d)[:2000]}"
        if st == "IN_PROGRESS":
            _, prefix = job_prefix(d)
            uploads = rgw_.list_uploads(BUCKET, prefix)
            if uploads and d["exportJobProperties"]["exportedResourceCount"] > 0:
                d = describe(srv.sess, srv.base, job)
                assert d["exportJobProperties"]["jobStatus"] == "IN_PROGRESS", d
                return job, d, prefix, uploads
        assert time.time() < deadline, f"no open multipart upload within 60 s (statuses {sorted(set(seen))})"
        time.sleep(0.02)


@pytest.mark.parametrize("max_attempts", [None, 2], ids=["default-retries", "2-attempts"])
def test_radosgw_killed_mid_export(env, pool, max_attempts):
    """radosgw is killed while a multipart upload is open, and started again ~3 s later. With the default retry
    budget the requests wait it out and the job completes; with 2 attempts per request it fails while radosgw
    is down. Either way: a clean end (exact output, or FAILED with a message) and no multipart upload left."""
    rgw_ = env.rgw
    srv = pool.start(env.clone(f"kill-{max_attempts}"), s3_serve_args(rgw_, PART_BYTES, max_attempts) + SLOW_ARGS)
    job, d, prefix, uploads = start_slow_job(rgw_, srv, f"killed-{max_attempts}")
    assert rgw_.list_parts(BUCKET, *uploads[0]) is not None
    killed_at = time.time()
    try:
        rgw_.kill_radosgw()
        time.sleep(3)
        st = describe(srv.sess, srv.base, job)["exportJobProperties"]["jobStatus"]
        if max_attempts is None:
            assert st == "IN_PROGRESS", f"job {st} while radosgw was down (retries should hold it)"
    finally:
        rgw_.start_radosgw()
    down = time.time() - killed_at
    d, _ = wait_terminal(srv, job, timeout=120)
    props = d["exportJobProperties"]
    print(f"\nradosgw down {down:.1f} s; job ended {props['jobStatus']} {props.get('message', '')}")
    assert props["jobStatus"] in ("COMPLETED", "FAILED"), json.dumps(d, indent=1)[:3000]
    # The outage was really met: some request had to be retried.
    assert "event=s3_retry" in srv.log_tail(1 << 22), "no S3 request met the outage"
    if max_attempts == 2:
        assert props["jobStatus"] == "FAILED", "2 attempts cannot outlast a 3 s outage"
    left = rgw_.list_uploads(BUCKET)
    assert left == [], f"multipart uploads left after the job ended {props['jobStatus']}: {left}\n" + \
        "\n".join(x for x in srv.log_tail(20000).splitlines() if "abort" in x or "cleanup" in x or "failed" in x)
    if props["jobStatus"] == "COMPLETED":
        s3x = S3Export(rgw_, d)
        expected = env.expected("system")
        assert s3x.res.counter == expected, diff_text(s3x.res.counter, expected)
        oracle = BytesOracle(srv, env.tpl)
        try:
            bad = [k for k, line in s3x.res.lines.items() if oracle.body(*k) != line]
        finally:
            oracle.close()
        assert not bad, f"{len(bad)} lines differ from GET _history, e.g. {bad[:5]}"
        # Same bytes as the local sink's system export (same data, same order, one file per type).
        _, local_res, _ = env.export("system")
        assert_same_files(s3x.rel, local_files(local_res))
    else:
        msg = props.get("message", "")
        assert msg.startswith("The export failed: ") and ("S3" in msg or "s3://" in msg), props
        assert "output" not in d


def test_cancel_during_multipart_upload(env, pool):
    rgw_ = env.rgw
    srv = pool.start(env.clone("cancel"), s3_serve_args(rgw_, PART_BYTES) + SLOW_ARGS)
    job, d, prefix, uploads = start_slow_job(rgw_, srv, "cancelled")
    r = srv.sess.delete(f"{srv.base}/export/{job}")
    assert r.status_code == 200, r.text
    assert r.json()["exportJobProperties"]["jobStatus"] == "CANCEL_SUBMITTED", r.text
    d = wait_done(srv.sess, srv.base, job, expect="CANCEL_COMPLETED")
    assert rgw_.list_uploads(BUCKET) == [], "multipart uploads left after the cancel"
    # The files completed before the cancel stay, and describe lists exactly them (checked by S3Export).
    s3x = S3Export(rgw_, d)
    assert s3x.objects and d["output"], "no completed file was kept"
    for key, _ in uploads:
        assert key not in s3x.objects, f"{key} was being uploaded at the cancel but is now an object"
    # Each kept file is a whole type (one task and one file per type here): exactly the expected rows.
    expected = env.expected("system")
    types = {k.split("/")[-2] for k in s3x.objects}
    want = collections.Counter({k: n for k, n in expected.items() if k[0] in types})
    assert s3x.res.counter == want, diff_text(s3x.res.counter, want)
    assert len(types) < len({k[0] for k in expected}), "the cancel came after every type was done"


def s3_sink_unit_test() -> Path:
    """The s3_sink_test binary of the build that made the binary under test ($FHIRLAKE_S3_SINK_TEST overrides)."""
    return Path(os.environ.get("FHIRLAKE_S3_SINK_TEST", str(binary_path().parent / "tests" / "unit" / "s3_sink_test")))


def unit_payload(n: int = 11 << 20) -> bytes:
    """The bytes s3_sink_test's Payload(n) writes: numbered ndjson lines cut at n bytes."""
    out, i = bytearray(), 0
    while len(out) < n:
        out += b'{"line":%d}\n' % i
        i += 1
    return bytes(out[:n])


def test_sink_read_path_against_rgw(rgw, tmp_path):
    """The S3 sink's Stat / Open / ranged reads (and writes, List, AbortIncomplete) against a real S3 server: the
    RgwTest cases of tests/unit/s3_sink_test.cc, which skip without FHIRLAKE_TEST_S3_ENDPOINT. Here every one of
    them must run and pass (a skip fails this test), and what they wrote is checked independently with boto3."""
    exe = s3_sink_unit_test()
    if not exe.is_file() or not os.access(exe, os.X_OK):
        pytest.fail(f"unit test binary not found at {exe} (build the unit tests, or set FHIRLAKE_S3_SINK_TEST)",
                    pytrace=False)
    env = dict(os.environ, FHIRLAKE_TEST_S3_ENDPOINT=rgw.endpoint, FHIRLAKE_TEST_S3_ACCESS_KEY=ACCESS_KEY,
               FHIRLAKE_TEST_S3_SECRET_KEY=SECRET_KEY, FHIRLAKE_TEST_S3_BUCKET=BUCKET,
               FHIRLAKE_TEST_S3_KMS_KEY=KMS_KEY)
    report = tmp_path / "s3_sink_test.xml"
    p = subprocess.run([str(exe), "--gtest_filter=RgwTest.*", f"--gtest_output=xml:{report}"], env=env,
                       capture_output=True, text=True, timeout=600)
    output = p.stdout[-6000:] + p.stderr[-2000:]
    assert p.returncode == 0, f"s3_sink_test exited {p.returncode}:\n{output}"
    cases = ET.parse(report).getroot().iter("testcase")
    results = {c.get("name"): ("skipped" if c.find("skipped") is not None or c.get("result") == "skipped"
                               else "failed" if c.find("failure") is not None else c.get("result"))
               for c in cases}
    assert len(results) >= 3, f"expected the RgwTest cases, ran {results}\n{output}"
    assert set(results.values()) == {"completed"}, f"every RgwTest case must run and pass: {results}\n{output}"
    # What the sink wrote is what a plain S3 client reads; nothing unfinished is left behind.
    prefix = "unit/WrittenObjectsReadBackByRanges/"
    assert rgw.download(BUCKET, prefix) == {
        prefix + "Observation/Observation-1.ndjson": unit_payload(),
        prefix + "a&b <c> 'd' \u00fc.ndjson": b'{"resourceType":"Patient","id":"a"}\n',
    }
    etag = rgw.head(BUCKET, prefix + "Observation/Observation-1.ndjson")["ETag"]
    assert re.match(r'^"[0-9a-f]{32}-3"$', etag), f"expected a 3-part multipart upload, ETag {etag}"
    assert rgw.list_uploads(BUCKET, "unit/") == []


def test_import_from_rgw_then_export_back(rgw, pool, tmp_path):
    """StartFHIRImportJob reading ndjson objects (one gzipped, one with a bad line) from a prefix in RGW, through
    boto3 against fhirlake; the report lands in RGW (listed with the `aws s3` CLI); the imported data exports back
    through StartFHIRExportJob to RGW with exactly what was imported."""
    import gzip as gz
    from test_control_plane import client as hl_client
    from test_import import wait_import
    patients = [{"resourceType": "Patient", "id": f"rgw-imp-{i}", "gender": "male"} for i in range(20)]
    conds = [{"resourceType": "Condition", "id": f"rgw-cond-{i}", "subject": {"reference": f"Patient/rgw-imp-{i}"},
              "code": {"text": "c"}} for i in range(20)]
    prefix = "imports/run-1"
    rgw.s3.put_object(Bucket=BUCKET, Key=f"{prefix}/patients.ndjson",
                      Body=("\n".join(json.dumps(p) for p in patients) + "\n{broken\n").encode())
    rgw.s3.put_object(Bucket=BUCKET, Key=f"{prefix}/conditions.ndjson.gz",
                      Body=gz.compress(("\n".join(json.dumps(c) for c in conds) + "\n").encode()))
    srv = pool.start(tmp_path / "data", s3_serve_args(rgw))
    hl = hl_client(srv)
    ds = srv.datastore_id
    job = hl.start_fhir_import_job(DatastoreId=ds, InputDataConfig={"S3Uri": f"s3://{BUCKET}/{prefix}"},
                                   DataAccessRoleArn=ROLE_ARN,
                                   JobOutputDataConfig={"S3Configuration": {"S3Uri": f"s3://{BUCKET}/import-reports",
                                                                            "KmsKeyId": KMS_KEY}})["JobId"]
    p = wait_import(hl, ds, job)
    assert p["JobStatus"] == "COMPLETED_WITH_ERRORS", p
    assert p["Message"] == "Imported 40 resources from 2 objects; 1 line was rejected (see FAILURE/)", p
    report = f"import-reports/{ds}-FHIR_IMPORT-{job}/"
    env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY,
               AWS_DEFAULT_REGION="us-east-1", AWS_PAGER="")
    listed = subprocess.run(["/usr/bin/aws", "s3", "ls", "--recursive", f"s3://{BUCKET}/{report}",
                             "--endpoint-url", rgw.endpoint], capture_output=True, text=True, env=env, timeout=120)
    assert listed.returncode == 0, listed.stderr
    keys = sorted(line.split()[-1] for line in listed.stdout.splitlines())
    assert keys == sorted(report + k for k in ("FAILURE/patients.ndjson", "SUCCESS/conditions.ndjson",
                                               "SUCCESS/patients.ndjson", "manifest.json")), keys
    fail = rgw.s3.get_object(Bucket=BUCKET, Key=report + "FAILURE/patients.ndjson")["Body"].read().decode()
    assert [json.loads(x)["line"] for x in fail.splitlines()] == [21]
    # Exported back to RGW: exactly what was imported.
    exp = hl.start_fhir_export_job(DatastoreId=ds, DataAccessRoleArn=ROLE_ARN,
                                   OutputDataConfig={"S3Configuration": {"S3Uri": f"s3://{BUCKET}/after-import",
                                                                         "KmsKeyId": KMS_KEY}})["JobId"]
    d = wait_done(srv.sess, srv.base, exp)
    got = set()
    for o in d["output"]:
        bucket, key = o["url"][len("s3://"):].split("/", 1)
        for line in rgw.s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode().splitlines():
            r = json.loads(line)
            got.add((r["resourceType"], r["id"], r["meta"]["versionId"]))
    assert got == {(r["resourceType"], r["id"], "1") for r in patients + conds}
