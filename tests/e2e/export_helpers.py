"""Helpers and fixtures of the bulk EXPORT end-to-end tests (test_export_*.py).

A plain module (stdlib + pytest + requests): the export tests import what they need from here. Nothing
calls project code for expectations: the expected export content is computed in Python from the sample
files we load and the writes the tests make, and the Patient compartment comes from the FHIR R4
CompartmentDefinition + SearchParameters in third_party/fhir-r4.

Main pieces
- SampleData / sample_data(): the sample folder parsed in load order (urn:uuid references resolved).
- Model: what the datastore holds, per (type, id): current version, content, deleted flag, and a
  write-sequence number (for `_since`); expected_system / expected_patient / expected_group compute
  the expected multiset of (type, id, versionId) of an export from a (snapshot of a) Model.
- Template: a data dir loaded once per module with `fhirlake load`; clone() copies it for a test.
- Server / ServerPool: `fhirlake serve` processes (port picked by the server, teardown checks exit 0).
- kickoff / start_export / describe / wait_status: the HealthLake export REST calls.
- verify_export: the three checks every export test makes (content, bytes, layout + manifest).
"""

from __future__ import annotations

import collections
import copy
import datetime as dt
import http.client
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest
import requests

from fhirlake_helpers import rewrite_references

E2E_DIR = Path(__file__).resolve().parent
REPO = E2E_DIR.parents[1]
SAMPLE_DIR = REPO / "data" / "synthea-r4-100"
FHIR_DEFS = REPO / "third_party" / "fhir-r4"
SAMPLE_GROUP_ID = "d9f31445-f448-48c0-af57-295c005e07df"

ROLE_ARN = "arn:aws:iam::444455556666:role/x"
KMS_KEY = "arn:aws:kms:us-east-1:444455556666:key/1234abcd-12ab-34cd-56ef-1234567890ab"
BUCKET = "fhirlake-export-test"
FHIR_JSON = "application/fhir+json"
KICKOFF_HEADERS = {"Content-Type": FHIR_JSON, "Prefer": "respond-async"}

ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
INSTANT_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
HL_TIME_RE = re.compile(r"^(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) ([1-9]|[12]\d|3[01]), \d{4} "
                        r"([1-9]|1[0-2]):[0-5]\d:[0-5]\d (AM|PM)$")
FILE_NAME_RE = re.compile(r"^([A-Z][A-Za-z]+)-([1-9]\d*)\.ndjson$")

TERMINAL = {"COMPLETED", "COMPLETED_WITH_ERRORS", "FAILED", "CANCEL_COMPLETED", "CANCEL_FAILED"}
FINISHED_WITH_MANIFEST = {"COMPLETED", "COMPLETED_WITH_ERRORS", "CANCEL_COMPLETED"}


def binary_path() -> Path:
    return Path(os.environ.get("FHIRLAKE_BIN", str(REPO / "build" / "fhirlake")))


def utc_now_instant(offset_s: float = 0.0) -> str:
    t = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=offset_s)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def parse_instant(s: str) -> dt.datetime:
    assert INSTANT_RE.match(s), f"not a FHIR instant: {s!r}"
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00"))


def parse_hl_time(s: str) -> dt.datetime:
    assert HL_TIME_RE.match(s), f"not a HealthLake time like 'Apr 21, 2023 5:58:02 PM': {s!r}"
    return dt.datetime.strptime(s, "%b %d, %Y %I:%M:%S %p").replace(tzinfo=dt.timezone.utc)


# ----------------------------------------------------------------------------------------------------
# FHIR R4 definitions: resource types, Patient compartment paths, literal references
# ----------------------------------------------------------------------------------------------------

class R4Defs:
    """Patient compartment membership computed from the R4 CompartmentDefinition and SearchParameters."""

    def __init__(self, defs_dir: Path = FHIR_DEFS):
        cd = json.loads((defs_dir / "compartmentdefinition-patient.json").read_text())
        sp = json.loads((defs_dir / "search-parameters.json").read_text())
        by_base_code = collections.defaultdict(list)
        for e in sp["entry"]:
            r = e["resource"]
            for b in r.get("base", []):
                by_base_code[(b, r["code"])].append(r)
        self.all_types = {r["code"] for r in cd["resource"]} | {"Parameters"}
        self.compartment_types = set()
        self.paths: dict[str, list[list[str]]] = {}
        for r in cd["resource"]:
            t = r["code"]
            params = r.get("param") or []
            if not params:
                continue
            self.compartment_types.add(t)
            paths = []
            for code in params:
                for spr in by_base_code.get((t, code), []):
                    for alt in (spr.get("expression") or "").split(" | "):
                        alt = alt.strip()
                        if not alt.startswith(t + "."):
                            continue
                        alt = alt[len(t) + 1:]
                        suffix = ".where(resolve() is Patient)"
                        if alt.endswith(suffix):
                            alt = alt[: -len(suffix)]
                        if "(" in alt or " " in alt:
                            continue  # not a plain dotted path; none of the sample's types needs one
                        segs = alt.split(".")
                        if segs not in paths:
                            paths.append(segs)
            self.paths[t] = paths

    def parse_literal(self, ref):
        """'Type/id' or 'Type/id/_history/v' -> (Type, id); anything else -> None."""
        if not isinstance(ref, str):
            return None
        parts = ref.split("/")
        if len(parts) == 2:
            t, i = parts
        elif len(parts) == 4 and parts[2] == "_history" and parts[3]:
            t, i = parts[0], parts[1]
        else:
            return None
        if t not in self.all_types or not ID_RE.match(i):
            return None
        return (t, i)

    def patients_of(self, resource: dict) -> frozenset:
        """Ids of the Patients whose compartment holds `resource` (a Patient is in its own)."""
        t = resource.get("resourceType")
        out = set()
        if t == "Patient" and resource.get("id"):
            out.add(resource["id"])
        for segs in self.paths.get(t, []):
            values = [resource]
            for seg in segs:
                nxt = []
                for v in values:
                    if isinstance(v, dict) and seg in v:
                        x = v[seg]
                        nxt.extend(x if isinstance(x, list) else [x])
                values = nxt
            for v in values:
                if isinstance(v, dict):
                    lit = self.parse_literal(v.get("reference"))
                    if lit and lit[0] == "Patient":
                        out.add(lit[1])
        return frozenset(out)

    def references_of(self, resource: dict) -> frozenset:
        """Every literal reference (type, id) anywhere in the resource."""
        out = set()

        def walk(v):
            if isinstance(v, dict):
                for k, x in v.items():
                    if k == "reference" and isinstance(x, str):
                        lit = self.parse_literal(x)
                        if lit:
                            out.add(lit)
                    else:
                        walk(x)
            elif isinstance(v, list):
                for x in v:
                    walk(x)

        walk(resource)
        return frozenset(out)


_DEFS = None


def r4() -> R4Defs:
    global _DEFS
    if _DEFS is None:
        _DEFS = R4Defs()
    return _DEFS


# ----------------------------------------------------------------------------------------------------
# The sample and the model of a datastore
# ----------------------------------------------------------------------------------------------------

class Entry:
    __slots__ = ("type", "id", "version", "resource", "deleted", "seq", "patients", "refs")

    def __init__(self, type_, id_, version, resource, deleted, seq):
        self.type = type_
        self.id = id_
        self.version = version
        self.resource = resource
        self.deleted = deleted
        self.seq = seq
        if resource is not None:
            self.patients = r4().patients_of(resource)
            self.refs = r4().references_of(resource)
        else:
            self.patients = frozenset()
            self.refs = frozenset()


class SampleData:
    """Sample files (or a subset) in the loader's order: files sorted by path, entries in file order."""

    def __init__(self, files):
        self.files = sorted(Path(f) for f in files)
        docs = [json.loads(f.read_text()) for f in self.files]
        urn_map = {}
        for d in docs:
            if d.get("resourceType") == "Bundle":
                for e in d.get("entry", []):
                    r = e["resource"]
                    if e.get("fullUrl", "").startswith("urn:"):
                        urn_map[e["fullUrl"]] = f"{r['resourceType']}/{r['id']}"
        self.resources = []  # in load order, references resolved
        for d in docs:
            items = [e["resource"] for e in d["entry"]] if d.get("resourceType") == "Bundle" else [d]
            for r in items:
                self.resources.append(rewrite_references(r, urn_map))

    def initial_state(self) -> dict:
        state = {}
        for r in self.resources:
            key = (r["resourceType"], r["id"])
            prev = state.get(key)
            state[key] = Entry(key[0], key[1], (prev.version if prev else 0) + 1, r, False, 0)
        return state


_SAMPLES: dict = {}


def sample_data(files=None) -> SampleData:
    if files is None:
        files = [p for p in SAMPLE_DIR.iterdir() if p.suffix == ".json"]
    key = tuple(sorted(str(f) for f in files))
    if key not in _SAMPLES:
        _SAMPLES[key] = SampleData([Path(f) for f in key])
    return _SAMPLES[key]


def smallest_patient_files(n: int) -> list:
    """The n patient Bundles with the fewest entries (each is self-contained: it holds its Organizations
    and Practitioners too)."""
    sizes = []
    for p in SAMPLE_DIR.iterdir():
        if p.suffix != ".json" or not re.search(r"_[0-9a-f]{8}-", p.name):
            continue
        sizes.append((p.stat().st_size, p))
    sizes.sort()
    return [p for _, p in sizes[:n]]


class Model:
    """What a datastore holds, maintained by the tests from what they loaded and wrote."""

    def __init__(self, state: dict):
        self.state = dict(state)
        self.seq = 0
        self.template_versions = {k: e.version for k, e in state.items()}

    def snapshot(self) -> dict:
        return dict(self.state)

    def live(self, state=None) -> dict:
        st = self.state if state is None else state
        return {k: e for k, e in st.items() if not e.deleted}

    def ids(self, type_, state=None) -> list:
        st = self.state if state is None else state
        return sorted(i for (t, i), e in st.items() if t == type_ and not e.deleted)

    def get(self, type_, id_) -> Entry:
        return self.state[(type_, id_)]

    # Writes through the REST API, mirrored in the model.
    def put(self, sess, base, resource: dict) -> requests.Response:
        resource = copy.deepcopy(resource)
        resource.pop("meta", None)
        key = (resource["resourceType"], resource["id"])
        r = sess.put(f"{base}/{key[0]}/{key[1]}", data=json.dumps(resource),
                     headers={"Content-Type": FHIR_JSON})
        prev = self.state.get(key)
        version = (prev.version if prev else 0) + 1
        created = prev is None or prev.deleted  # a PUT after a DELETE creates the resource again (201)
        assert r.status_code == (201 if created else 200), \
            f"PUT {key[0]}/{key[1]}: expected {201 if created else 200}, got {r.status_code}: {r.text[:500]}"
        got = json.loads(r.content)
        assert got["meta"]["versionId"] == str(version), f"PUT {key}: versionId {got['meta']['versionId']} != {version}"
        self.seq += 1
        self.state[key] = Entry(key[0], key[1], version, resource, False, self.seq)
        return r

    def delete(self, sess, base, type_, id_) -> requests.Response:
        key = (type_, id_)
        r = sess.delete(f"{base}/{type_}/{id_}")
        assert r.status_code in (200, 204), f"DELETE {type_}/{id_}: {r.status_code} {r.text[:300]}"
        prev = self.state[key]
        self.seq += 1
        self.state[key] = Entry(type_, id_, prev.version + 1, None, True, self.seq)
        return r


def _finish(scope: set, live: dict, types=None, since_seq=None) -> collections.Counter:
    out = collections.Counter()
    for key in scope:
        e = live[key]
        if types is not None and e.type not in types:
            continue
        if since_seq is not None and e.seq <= since_seq:
            continue
        out[(e.type, e.id, e.version)] += 1
    return out


def expected_system(state: dict, types=None, since_seq=None) -> collections.Counter:
    live = {k: e for k, e in state.items() if not e.deleted}
    return _finish(set(live), live, types, since_seq)


def _add_referenced(scope: set, live: dict):
    comp = r4().compartment_types
    extra = set()
    for key in scope:
        for ref in live[key].refs:
            if ref[0] not in comp and ref in live:
                extra.add(ref)
    scope |= extra


def expected_patient(state: dict, types=None, since_seq=None, referenced=True) -> collections.Counter:
    live = {k: e for k, e in state.items() if not e.deleted}
    comp = r4().compartment_types
    scope = {k for k, e in live.items() if e.type in comp and (e.type == "Patient" or e.patients)}
    if referenced:
        _add_referenced(scope, live)
    return _finish(scope, live, types, since_seq)


def group_members(group: dict) -> set:
    out = set()
    for m in group.get("member", []):
        if m.get("inactive") is True:
            continue
        lit = r4().parse_literal((m.get("entity") or {}).get("reference"))
        if lit and lit[0] == "Patient":
            out.add(lit[1])
    return out


def expected_group(state: dict, group_id, types=None, since_seq=None, referenced=True) -> collections.Counter:
    live = {k: e for k, e in state.items() if not e.deleted}
    comp = r4().compartment_types
    gkey = ("Group", group_id)
    members = group_members(live[gkey].resource)
    scope = {gkey}
    scope |= {("Patient", p) for p in members if ("Patient", p) in live}
    for k, e in live.items():
        if e.type in ("Group", "Patient") or e.type not in comp:
            continue
        if e.patients & members:
            scope.add(k)
    if referenced:
        _add_referenced(scope, live)
    return _finish(scope, live, types, since_seq)


# ----------------------------------------------------------------------------------------------------
# Processes
# ----------------------------------------------------------------------------------------------------

def run_load(data_dir: Path, paths, timeout=300):
    cmd = [str(binary_path()), "load", "--no-progress", "--data-dir", str(data_dir)] + [str(p) for p in paths]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{' '.join(cmd)} exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    assert " 0 errors" in p.stdout, p.stdout
    return p


_LOG_COUNTER = itertools.count(1)


class Server:
    """One `fhirlake serve` on 127.0.0.1 with a port the server picks; stdout+stderr go to a log file."""

    def __init__(self, data_dir: Path, extra_args=(), log_dir: Path | None = None, env=None):
        self.data_dir = Path(data_dir)
        self.extra_args = [str(a) for a in extra_args]
        self.env = env  # extra environment variables (failpoints)
        self.log_path = Path(log_dir or self.data_dir.parent) / f"serve-{os.getpid()}-{next(_LOG_COUNTER)}.log"
        self.proc = None
        self.port = None
        self.base = None
        self.datastore_id = None
        self.sess = None

    def start(self, timeout=30):
        cmd = [str(binary_path()), "serve", "--data-dir", str(self.data_dir), "--listen", "127.0.0.1:0",
               *self.extra_args]
        self._log = open(self.log_path, "ab")
        env = dict(os.environ, **self.env) if self.env else None
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env)
        deadline = time.time() + timeout
        while True:
            text = self.log_path.read_bytes().decode("utf-8", "replace")
            m = re.search(r"listening on (https?)://127\.0\.0\.1:(\d+)", text)
            if m:
                self.scheme, self.port = m.group(1), int(m.group(2))
                break
            if self.proc.poll() is not None:
                raise AssertionError(f"fhirlake serve exited {self.proc.returncode} at start:\n{self.log_tail()}")
            if time.time() > deadline:
                self.kill9()
                raise AssertionError(f"fhirlake serve did not start in {timeout} s:\n{self.log_tail()}")
            time.sleep(0.02)
        self.sess = new_session()
        if self.scheme == "https":  # a self-signed certificate is its own CA
            self.sess.verify = self.extra_args[self.extra_args.index("--tls-cert") + 1]
        self.root = f"{self.scheme}://127.0.0.1:{self.port}"
        h = self.sess.get(f"{self.root}/healthz")
        assert h.status_code == 200, h.text
        listed = h.json()["datastores"]
        if not listed:  # every datastore was deleted (the control plane): no FHIR base to talk to
            self.datastore_id = self.base = self.public_base = None
            return self
        ds = listed[0]
        self.datastore_id = ds["datastoreId"]
        self.base = f"{self.root}/datastore/{self.datastore_id}/r4"  # where we send requests
        self.public_base = ds["fhirBase"]  # what the server writes in absolute URLs (--public-url)
        if "--public-url" not in self.extra_args:
            assert self.public_base == self.base, (self.public_base, self.base)
        return self

    def log_tail(self, n=4000) -> str:
        try:
            return self.log_path.read_bytes().decode("utf-8", "replace")[-n:]
        except OSError:
            return "(no log)"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=30):
        """SIGTERM; the server must exit 0 within `timeout`."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if self.sess:
            self.sess.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                self._log.close()
                raise AssertionError(f"fhirlake serve did not stop within {timeout} s of SIGTERM:\n{self.log_tail()}")
        else:
            rc = proc.returncode
        self._log.close()
        assert rc == 0, f"fhirlake serve exited {rc} (expected 0):\n{self.log_tail()}"

    def kill9(self):
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if self.sess:
            self.sess.close()
        proc.kill()
        proc.wait()
        self._log.close()

    def s3_root(self) -> Path:
        return self.data_dir / "s3"

    def db_path(self) -> Path:
        return self.data_dir / "datastores" / self.datastore_id / "fhir.db"


class ServerPool:
    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.servers = []

    def start(self, data_dir, extra_args=(), env=None) -> Server:
        s = Server(data_dir, extra_args, self.log_dir, env=env)
        self.servers.append(s)
        return s.start()

    def stop_all(self):
        errors = []
        for s in self.servers:
            try:
                s.stop()
            except AssertionError as e:
                errors.append(str(e))
        return errors


def new_session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    orig = s.request

    def request(method, url, **kw):
        kw.setdefault("timeout", 60)
        kw.setdefault("allow_redirects", False)
        return orig(method, url, **kw)

    s.request = request
    return s


class Template:
    """A data dir holding the loaded sample (never served directly: tests serve copies)."""

    def __init__(self, root: Path, sample: SampleData):
        self.dir = root / "template-data"
        self.sample = sample
        run_load(self.dir, sample.files)
        self.state = sample.initial_state()
        self.cache = {}  # (type, id, version) -> bytes of GET _history/version, for versions in the template
        self.versions = {k: e.version for k, e in self.state.items()}

    def clone(self, dest: Path) -> Path:
        shutil.copytree(self.dir, dest)
        return dest

    def model(self) -> Model:
        return Model(self.state)


@pytest.fixture
def servers(tmp_path):
    pool = ServerPool(tmp_path)
    yield pool
    errors = pool.stop_all()
    if errors:
        pytest.fail("server teardown: " + "\n".join(errors), pytrace=False)


# ----------------------------------------------------------------------------------------------------
# Export REST calls
# ----------------------------------------------------------------------------------------------------

_PREFIX_COUNTER = itertools.count(1)


def export_body(s3uri=None, job_name=None, **overrides):
    body = {"DataAccessRoleArn": ROLE_ARN,
            "OutputDataConfig": {"S3Configuration": {
                "S3Uri": s3uri or f"s3://{BUCKET}/run-{os.getpid()}-{next(_PREFIX_COUNTER)}",
                "KmsKeyId": KMS_KEY}}}
    if job_name is not None:
        body["JobName"] = job_name
    body.update(overrides)
    return body


def export_url(base, level="system", group_id=None, query="") -> str:
    if level == "system":
        url = f"{base}/$export"
    elif level == "patient":
        url = f"{base}/Patient/$export"
    elif level == "group":
        url = f"{base}/Group/{group_id}/$export"
    else:
        raise ValueError(level)
    return url + (("?" + query) if query else "")


def kickoff(sess, base, level="system", group_id=None, query="", body=None, headers=None, raw_body=None):
    h = dict(KICKOFF_HEADERS) if headers is None else headers
    data = raw_body if raw_body is not None else json.dumps(body if body is not None else export_body())
    return sess.post(export_url(base, level, group_id, query), data=data, headers=h)


def start_export(sess, base, level="system", group_id=None, query="", body=None, job_name=None, public_base=None):
    """Kick-off that must succeed; checks the 202 answer and returns the job id."""
    if body is None:
        body = export_body(job_name=job_name)
    r = kickoff(sess, base, level, group_id, query, body)
    assert r.status_code == 202, f"kick-off {r.request.url}: expected 202, got {r.status_code}: {r.text[:1000]}"
    j = r.json()
    assert set(j) == {"datastoreId", "jobStatus", "jobId"}, j
    assert j["jobStatus"] == "SUBMITTED", j
    assert base.endswith("/datastore/" + j["datastoreId"] + "/r4")
    assert re.match(r"^[0-9a-f]{32}$", j["jobId"]), j  # docs/EXPORT.md: 32 hex
    assert r.headers.get("Content-Location") == f"{public_base or base}/export/{j['jobId']}", r.headers
    return j["jobId"]


def describe(sess, base, job_id) -> dict:
    r = sess.get(f"{base}/export/{job_id}")
    assert r.status_code == 200, f"describe {job_id}: {r.status_code} {r.text[:1000]}"
    return r.json()


def wait_status(sess, base, job_id, statuses, timeout=60.0, poll=0.02) -> dict:
    """Polls describe until jobStatus is in `statuses`; fails on a terminal status not in it."""
    statuses = {statuses} if isinstance(statuses, str) else set(statuses)
    deadline = time.time() + timeout
    seen = []
    while True:
        d = describe(sess, base, job_id)
        st = d["exportJobProperties"]["jobStatus"]
        if not seen or seen[-1] != st:
            seen.append(st)
        if st in statuses:
            return d
        if st in TERMINAL:
            raise AssertionError(f"job {job_id} ended {st} while waiting for {sorted(statuses)} "
                                 f"(statuses seen: {seen}):\n{json.dumps(d, indent=1)[:3000]}")
        if time.time() > deadline:
            raise AssertionError(f"job {job_id} not in {sorted(statuses)} after {timeout} s "
                                 f"(statuses seen: {seen}):\n{json.dumps(d, indent=1)[:3000]}")
        time.sleep(poll)


def wait_done(sess, base, job_id, timeout=120.0, expect="COMPLETED") -> dict:
    d = wait_status(sess, base, job_id, TERMINAL, timeout)
    st = d["exportJobProperties"]["jobStatus"]
    assert st == expect, f"job {job_id} ended {st}, expected {expect}:\n{json.dumps(d, indent=1)[:3000]}"
    return d


def assert_outcome(r: requests.Response, status: int, mentions=(), code=None):
    """An OperationOutcome error answer with `status` whose diagnostics mention every string in `mentions`."""
    assert r.status_code == status, \
        f"{r.request.method} {r.request.url}: expected {status}, got {r.status_code}: {r.text[:800]}"
    try:
        body = r.json()
    except ValueError:
        raise AssertionError(f"{r.request.url}: error body is not JSON: {r.text[:500]!r}")
    assert body.get("resourceType") == "OperationOutcome", body
    issues = body.get("issue") or []
    assert issues and issues[0].get("severity") in ("error", "fatal"), body
    if code is not None:
        assert issues[0].get("code") == code, body
    diag = " ".join(i.get("diagnostics", "") for i in issues)
    for m in mentions:
        assert m in diag, f"diagnostics {diag!r} should mention {m!r}"
    return diag


# ----------------------------------------------------------------------------------------------------
# Verification of an export's output
# ----------------------------------------------------------------------------------------------------

class BytesOracle:
    """GET {base}/{type}/{id}/_history/{v} over raw keep-alive connections (10k+/s). Bodies of versions that
    exist in the template the server's data dir was copied from are cached in the Template (the copy holds
    the same stored bytes)."""

    def __init__(self, server: Server, template: Template | None = None):
        self.server = server
        self.template = template
        self.path_prefix = urllib.parse.urlparse(server.base).path
        self.conn = None

    def _get(self, path):
        for attempt in range(3):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=30)
                self.conn.request("GET", path)
                resp = self.conn.getresponse()
                return resp.status, resp.read()
            except (http.client.HTTPException, OSError):
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise

    def body(self, type_, id_, version: int) -> bytes:
        key = (type_, id_, version)
        cacheable = self.template is not None and version <= self.template.versions.get((type_, id_), 0)
        if cacheable and key in self.template.cache:
            return self.template.cache[key]
        status, data = self._get(f"{self.path_prefix}/{type_}/{id_}/_history/{version}")
        assert status == 200, f"GET {type_}/{id_}/_history/{version}: {status} {data[:300]!r}"
        if cacheable:
            self.template.cache[key] = data
        return data

    def close(self):
        if self.conn is not None:
            self.conn.close()


class ExportResult:
    def __init__(self):
        self.props = None
        self.describe = None
        self.lines = {}  # (type, id, version) -> bytes of the line (without "\n")
        self.counter = collections.Counter()
        self.files = {}  # key (relative to the bucket) -> list of line bytes
        self.error_files = {}
        self.deleted_files = {}  # key -> list of line bytes (the `deleted` files of an export with _since)
        self.deleted = collections.Counter()  # (type, id) of each DELETE entry in them
        self.job_dir = None


def job_dir_of(server: Server, d: dict) -> Path:
    props = d["exportJobProperties"]
    uri = props["outputDataConfig"]["s3Configuration"]["s3Uri"]
    assert uri.startswith("s3://"), uri
    bucket, _, prefix = uri[5:].partition("/")
    folder = f"{props['datastoreId']}-FHIR_EXPORT-{props['jobId']}"
    return server.s3_root() / bucket / prefix / folder if prefix else server.s3_root() / bucket / folder


def part_files(root: Path) -> list:
    return sorted(str(p) for p in root.rglob("*") if ".part-" in p.name) if root.exists() else []


def collect_output(server: Server, d: dict, check_manifest=True) -> ExportResult:
    """Reads the job's folder and checks its layout; when check_manifest, also that describe's output/error
    lists exactly the files on disk with their line counts."""
    res = ExportResult()
    res.describe = d
    res.props = props = d["exportJobProperties"]
    uri = props["outputDataConfig"]["s3Configuration"]["s3Uri"]
    bucket = uri[5:].partition("/")[0]
    bucket_dir = server.s3_root() / bucket
    res.job_dir = job_dir = job_dir_of(server, d)
    # (other jobs may be running: only this job's folder is checked here)
    assert not part_files(job_dir), f"unfinished files remain: {part_files(job_dir)}"
    disk = {}
    if job_dir.exists():
        assert job_dir.is_dir(), f"{job_dir} is not a folder"
        for p in sorted(job_dir.rglob("*")):
            if p.is_dir():
                assert p.parent == job_dir, f"unexpected nested folder {p}"
                continue
            rel = p.relative_to(job_dir)
            assert len(rel.parts) == 2, f"file {rel} is not at {{Type}}/{{Type}}-{{n}}.ndjson"
            folder, name = rel.parts
            if folder == "deleted":
                assert re.match(r"^deleted-[1-9][0-9]*\.ndjson$", name), f"file {rel} is not deleted/deleted-{{n}}.ndjson"
                data = p.read_bytes()
                assert data.endswith(b"\n"), f"{rel}: does not end with a newline"
                lines = data[:-1].split(b"\n")
                res.deleted_files[str(p.relative_to(bucket_dir))] = lines
                for line in lines:
                    res.deleted[deleted_entry(line)] += 1
                continue
            m = FILE_NAME_RE.match(name)
            assert m and m.group(1) == folder, f"file {rel} is not named {{Type}}/{{Type}}-{{n}}.ndjson"
            assert folder in r4().all_types, f"folder {folder} is not an R4 resource type"
            data = p.read_bytes()
            assert data.endswith(b"\n"), f"{rel}: does not end with a newline"
            lines = data[:-1].split(b"\n")
            assert all(lines), f"{rel}: has an empty line"
            disk[str(p.relative_to(bucket_dir))] = (folder, lines)
    for key, (folder, lines) in disk.items():
        is_error = folder == "OperationOutcome"
        (res.error_files if is_error else res.files)[key] = lines
        for i, line in enumerate(lines):
            try:
                obj = json.loads(line)
            except ValueError:
                raise AssertionError(f"{key} line {i + 1} is not JSON: {line[:200]!r}")
            assert isinstance(obj, dict) and obj.get("resourceType") == folder, \
                f"{key} line {i + 1}: resourceType {obj.get('resourceType')!r} in the {folder} file"
            if is_error:
                continue
            k = (folder, obj["id"], int(obj["meta"]["versionId"]))
            res.counter[k] += 1
            res.lines[k] = line
    if check_manifest:
        check_manifest_matches_disk(res, bucket)
    return res


def check_manifest_matches_disk(res: ExportResult, bucket: str):
    d, props = res.describe, res.props
    assert "output" in d and "error" in d, f"no output/error manifest in {json.dumps(d)[:1500]}"
    lists = [("output", res.files), ("error", res.error_files)]
    if res.deleted_files or "deleted" in d:
        lists.append(("deleted", res.deleted_files))
    for name, files in lists:
        listed = d[name]
        urls = [o["url"] for o in listed]
        assert len(urls) == len(set(urls)), f"{name} lists a file twice: {urls}"
        want = {f"s3://{bucket}/{k}": len(v) for k, v in files.items()}
        got = {o["url"]: o["count"] for o in listed}
        assert got == want, (f"describe {name} != files on disk:\n only listed: {sorted(set(got) - set(want))}\n"
                             f" only on disk: {sorted(set(want) - set(got))}\n"
                             f" count differences: {[(u, got[u], want[u]) for u in got if u in want and got[u] != want[u]]}")
        for o in listed:
            assert set(o) == {"type", "url", "count"}, o
            assert o["url"].split("/")[-2] == ("deleted" if name == "deleted" else o["type"]), o
    total = sum(len(v) for v in res.files.values())
    assert props["exportedResourceCount"] == total, (props["exportedResourceCount"], total)
    per_type = collections.Counter()
    for k, v in res.files.items():
        per_type[k.split("/")[-2]] += len(v)
    assert {e["type"]: e["count"] for e in props["exportedResources"]} == dict(per_type), props["exportedResources"]
    nbytes = sum(sum(len(x) + 1 for x in v) for v in res.files.values())
    assert props["exportedBytes"] == nbytes, (props["exportedBytes"], nbytes)


def deleted_entry(line: bytes) -> tuple:
    """The (type, id) of a line of a `deleted` file: a transaction Bundle with one DELETE entry (the IG's format)."""
    b = json.loads(line)
    assert b.get("resourceType") == "Bundle" and b.get("type") == "transaction", b
    entries = b.get("entry") or []
    assert len(entries) == 1 and entries[0]["request"]["method"] == "DELETE", b
    t, _, i = entries[0]["request"]["url"].partition("/")
    assert t and i and "/" not in i, b
    return (t, i)


def diff_text(got: collections.Counter, expected: collections.Counter, limit=15) -> str:
    missing = expected - got
    extra = got - expected
    dups = [k for k, n in got.items() if n > 1]
    parts = []
    if missing:
        parts.append(f"{sum(missing.values())} missing, e.g. {sorted(missing)[:limit]}; "
                     f"by type {dict(collections.Counter(k[0] for k in missing))}")
    if extra:
        parts.append(f"{sum(extra.values())} unexpected, e.g. {sorted(extra)[:limit]}; "
                     f"by type {dict(collections.Counter(k[0] for k in extra))}")
    if dups:
        parts.append(f"{len(dups)} exported more than once, e.g. {sorted(dups)[:limit]}")
    return "\n".join(parts)


def check_bytes(res: ExportResult, oracle: BytesOracle):
    bad = []
    for (t, i, v), line in res.lines.items():
        body = oracle.body(t, i, v)
        if body != line:
            bad.append((t, i, v))
    assert not bad, f"{len(bad)} lines differ from GET {{type}}/{{id}}/_history/{{v}}, e.g. {bad[:10]}"


def verify_export(server: Server, job_id, expected: collections.Counter, template: Template | None = None,
                  expect_status="COMPLETED", d=None) -> ExportResult:
    """(a) the multiset of (type, id, versionId) == expected; (b) every line == GET _history/{v};
    (c) layout, no unfinished file, describe's output/error == the files on disk."""
    if d is None:
        d = describe(server.sess, server.base, job_id)
    assert d["exportJobProperties"]["jobStatus"] == expect_status, json.dumps(d)[:2000]
    res = collect_output(server, d)
    assert res.counter == expected, f"export {job_id} content differs from the expected set:\n" + \
        diff_text(res.counter, expected)
    oracle = BytesOracle(server, template)
    try:
        check_bytes(res, oracle)
    finally:
        oracle.close()
    props = d["exportJobProperties"]
    if expect_status in ("COMPLETED", "COMPLETED_WITH_ERRORS"):
        prog = props["progress"]
        assert prog["percent"] == 100, prog
        assert prog["resourcesWritten"] == props["exportedResourceCount"], (prog, props["exportedResourceCount"])
        assert prog["bytesWritten"] == props["exportedBytes"], (prog, props["exportedBytes"])
        assert prog["plannedResources"] >= props["exportedResourceCount"], prog
    if expect_status == "COMPLETED":
        assert not res.error_files and d["error"] == [], d["error"]
    return res
