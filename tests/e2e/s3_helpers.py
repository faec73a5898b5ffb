"""A real S3 server (Ceph RADOS Gateway on loopback, no Docker) for the S3 export tests (test_export_s3.py).

- rgw (module-scoped fixture): starts a throw-away Ceph cluster + radosgw with scripts/start-s3.sh on a free
  port (state in a temp dir, data in RAM), creates the test buckets with boto3, writes a --s3-roles file,
  and stops everything with scripts/stop-s3.sh at teardown. Yields an Rgw.
- Rgw: boto3 client (path-style, us-east-1) and helpers: list/download/head objects, list multipart uploads,
  kill radosgw alone (pid file) and start it alone again (the cluster and its objects survive).
- s3_serve_args(): the `fhirlake serve` flags that send export output to this RGW.

Needs /usr/bin/python3 with boto3 (Debian's python3-boto3) and the ceph packages (start-s3.sh installs them
with apt when missing).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

try:
    import boto3
    import botocore.config
    import botocore.exceptions
except ImportError:  # pragma: no cover - reported by the fixture
    boto3 = None

E2E_DIR = Path(__file__).resolve().parent
REPO = E2E_DIR.parents[1]
START_S3 = REPO / "scripts" / "start-s3.sh"
STOP_S3 = REPO / "scripts" / "stop-s3.sh"

ACCESS_KEY = "fhirlakee2eaccess"
SECRET_KEY = "fhirlakee2esecret0123456789"
REGION = "us-east-1"

# Roles of the --s3-roles file.
ROLE_ARN = "arn:aws:iam::111122223333:role/fhirlake-export"               # good credentials, fhirlake-s3-*
BAD_SECRET_ROLE_ARN = "arn:aws:iam::111122223333:role/fhirlake-bad-secret"  # right key id, wrong secret
UNKNOWN_ROLE_ARN = "arn:aws:iam::111122223333:role/not-in-the-roles-file"

BUCKET = "fhirlake-s3-e2e"               # allowed for ROLE_ARN (pattern fhirlake-s3-*), exists
OTHER_BUCKET = "other-team-bucket"        # exists, but ROLE_ARN may not write it
MISSING_BUCKET = "fhirlake-s3-missing"    # allowed by the pattern, never created
KMS_KEY = "testkey-1"                     # key ids RGW's test KMS accepts (start-s3.sh)
KMS_KEY_2 = "testkey-2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _client(endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY, attempts=3, timeout=60):
    return boto3.client(
        "s3", endpoint_url=endpoint, region_name=REGION, aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=botocore.config.Config(s3={"addressing_style": "path"}, signature_version="s3v4",
                                      retries={"max_attempts": attempts, "mode": "standard"},
                                      connect_timeout=5, read_timeout=timeout))


class Rgw:
    def __init__(self, port: int, s3_dir: Path, endpoint: str, roles_file: Path):
        self.port = port
        self.dir = s3_dir
        self.endpoint = endpoint
        self.roles_file = roles_file
        self.s3 = _client(endpoint)

    # ------------------------------------------------------------------ objects and uploads
    def list_objects(self, bucket: str, prefix: str = "") -> dict:
        """key -> size of every object under prefix (ListObjectsV2, paginated)."""
        out = {}
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix,
                                                                      PaginationConfig={"PageSize": 200}):
            for o in page.get("Contents", []):
                out[o["Key"]] = o["Size"]
        return out

    def get(self, bucket: str, key: str) -> bytes:
        return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()

    def download(self, bucket: str, prefix: str) -> dict:
        """key -> bytes of every object under prefix."""
        return {k: self.get(bucket, k) for k in sorted(self.list_objects(bucket, prefix))}

    def head(self, bucket: str, key: str) -> dict:
        return self.s3.head_object(Bucket=bucket, Key=key)

    def list_uploads(self, bucket: str, prefix: str = "") -> list:
        """[(key, uploadId)] of the multipart uploads in progress under prefix."""
        out = []
        kw = {"Bucket": bucket, "Prefix": prefix}
        while True:
            r = self.s3.list_multipart_uploads(**kw)
            out += [(u["Key"], u["UploadId"]) for u in r.get("Uploads", [])]
            if not r.get("IsTruncated"):
                return out
            kw["KeyMarker"] = r["NextKeyMarker"]
            kw["UploadIdMarker"] = r["NextUploadIdMarker"]

    def list_parts(self, bucket: str, key: str, upload_id: str) -> list:
        return self.s3.list_parts(Bucket=bucket, Key=key, UploadId=upload_id).get("Parts", [])

    # ------------------------------------------------------------------ radosgw alone (fault tests)
    @property
    def conf(self) -> Path:
        return self.dir / "ceph.conf"

    @property
    def rgw_pid_file(self) -> Path:
        return self.dir / "run" / "client.rgw.a.pid"

    def radosgw_pid(self) -> int:
        pid = int(self.rgw_pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        assert "radosgw" in cmdline and str(self.conf) in cmdline, f"pid {pid} is not our radosgw: {cmdline!r}"
        return pid

    def ready(self) -> bool:
        try:
            _client(self.endpoint, attempts=1, timeout=3).list_buckets()
            return True
        except Exception:  # noqa: BLE001 - connection refused, 5xx while starting, ...
            return False

    def kill_radosgw(self):
        """SIGKILL radosgw only (mon and OSD keep the data)."""
        pid = self.radosgw_pid()
        os.kill(pid, signal.SIGKILL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                state = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                break
            if "\nState:\tZ" in state:
                break
            time.sleep(0.02)
        else:
            raise AssertionError(f"radosgw {pid} still alive 10 s after SIGKILL")
        assert not self.ready(), "the endpoint still answers after radosgw was killed"

    def start_radosgw(self, timeout=60):
        """Starts radosgw alone again on the existing cluster (never start-s3.sh: it would wipe it)."""
        err = self.dir / "log" / "restart.err"
        with open(err, "ab") as f:
            rc = subprocess.call(["radosgw", "-c", str(self.conf), "-n", "client.rgw.a"], stdout=f, stderr=f,
                                 stdin=subprocess.DEVNULL, timeout=60)
        assert rc == 0, f"radosgw restart exited {rc}: {err.read_text()[-2000:]}"
        deadline = time.time() + timeout
        while not self.ready():
            assert time.time() < deadline, f"radosgw did not answer {timeout} s after its restart"
            time.sleep(0.1)


def write_roles(path: Path):
    roles = {"roles": [
        {"roleArn": ROLE_ARN, "accessKeyId": ACCESS_KEY, "secretAccessKey": SECRET_KEY,
         "buckets": ["fhirlake-s3-*"]},
        {"roleArn": BAD_SECRET_ROLE_ARN, "accessKeyId": ACCESS_KEY, "secretAccessKey": SECRET_KEY + "-wrong",
         "buckets": ["*"]},
    ]}
    path.write_text(json.dumps(roles, indent=1))


def s3_serve_args(rgw: Rgw, part_bytes: int | None = 5 << 20, max_attempts: int | None = None) -> list:
    args = ["--s3-endpoint", rgw.endpoint, "--s3-region", REGION, "--s3-roles", str(rgw.roles_file)]
    if part_bytes is not None:
        args += ["--s3-part-bytes", str(part_bytes)]
    if max_attempts is not None:
        args += ["--s3-max-attempts", str(max_attempts)]
    return args


@pytest.fixture(scope="module")
def rgw(tmp_path_factory):
    if boto3 is None:
        pytest.fail("boto3 is required (Debian: apt-get install python3-boto3; run with /usr/bin/python3)",
                    pytrace=False)
    port = free_port()
    # Short path: Ceph's admin sockets live under it (unix socket paths are limited to ~107 bytes).
    s3_dir = Path(tempfile.mkdtemp(prefix="fhirlake-s3-"))
    env = dict(os.environ, S3_DIR=str(s3_dir), S3_MEM_BYTES=os.environ.get("S3_MEM_BYTES", str(4 << 30)))
    t0 = time.time()
    p = subprocess.run(["bash", str(START_S3), str(port), ACCESS_KEY, SECRET_KEY], env=env, capture_output=True,
                       text=True, timeout=600)
    if p.returncode != 0:
        subprocess.run(["bash", str(STOP_S3), str(port)], env=env, capture_output=True, timeout=60)
        shutil.rmtree(s3_dir, ignore_errors=True)
        pytest.fail(f"start-s3.sh exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr[-4000:]}",
                    pytrace=False)
    endpoint = p.stdout.strip().splitlines()[-1]
    assert endpoint == f"http://127.0.0.1:{port}", p.stdout
    print(f"\nRGW {endpoint} up in {time.time() - t0:.1f} s (S3_DIR={s3_dir})")
    roles_file = tmp_path_factory.mktemp("s3-roles") / "roles.json"
    write_roles(roles_file)
    r = Rgw(port, s3_dir, endpoint, roles_file)
    try:
        for b in (BUCKET, OTHER_BUCKET):
            r.s3.create_bucket(Bucket=b)
        yield r
    finally:
        p = subprocess.run(["bash", str(STOP_S3), str(port)], env=env, capture_output=True, text=True, timeout=120)
        shutil.rmtree(s3_dir, ignore_errors=True)
        assert p.returncode == 0, f"stop-s3.sh exited {p.returncode}: {p.stderr}"
