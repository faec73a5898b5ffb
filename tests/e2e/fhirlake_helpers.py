"""Shared helpers of the fhirlake end-to-end tests (standard library + requests only).

Nothing here imports or calls project code: the expectations (sample content, Patient compartment)
are computed independently from the input files and the FHIR R4 definitions.
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import requests

E2E_DIR = Path(__file__).resolve().parent
REPO = E2E_DIR.parents[1]
SAMPLE_DIR = REPO / "data" / "synthea-r4-100"
FHIR_DEFS = REPO / "third_party" / "fhir-r4"

FHIR_JSON = "application/fhir+json"
JSON_HEADERS = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}

ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
HEX32_RE = re.compile(r"^[0-9a-f]{32}$")
INSTANT_MS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
HTTP_DATE_RE = re.compile(r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT$")
STOP_TIMEOUT_S = 15
START_TIMEOUT_S = 30


def binary_path() -> Path:
    return Path(os.environ.get("FHIRLAKE_BIN", str(REPO / "build" / "fhirlake")))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Session(requests.Session):
    """A requests.Session with a default timeout that ignores proxy settings of the environment."""

    def __init__(self, timeout: float = 60.0):
        super().__init__()
        self.trust_env = False  # never send loopback traffic to an http_proxy
        self._timeout = timeout

    def request(self, method, url, **kwargs):  # noqa: D401
        kwargs.setdefault("timeout", self._timeout)
        kwargs.setdefault("allow_redirects", False)
        return super().request(method, url, **kwargs)

    # JSON conveniences: body is a Python object (serialised) or bytes/str (sent as is).
    def fhir(self, method, url, body=None, headers=None, **kwargs):
        h = dict(JSON_HEADERS)
        if headers:
            h.update(headers)
        data = None
        if body is not None:
            data = body if isinstance(body, (bytes, str)) else json.dumps(body).encode("utf-8")
        return self.request(method, url, data=data, headers=h, **kwargs)


class ServerProcess:
    """One running `fhirlake serve`; stdout is collected by a thread, stderr goes to a log file."""

    def __init__(self, binary: Path, data_dir: Path, log_dir: Path, extra_args=()):
        self.binary = Path(binary)
        self.data_dir = Path(data_dir)
        self.log_dir = Path(log_dir)
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen | None = None
        self.port = None
        self.url = None
        self.base = None
        self.datastore_id = None
        self.healthz = None
        self.stdout_lines: list[str] = []
        self.returncode = None
        self._reader = None
        self._stderr_file = None

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self):
        last_error = None
        for _attempt in range(3):  # a free port may be taken between probing and binding
            self.port = free_port()
            try:
                self._start_once()
                return self
            except _PortInUse as e:
                last_error = e
        raise AssertionError(f"fhirlake serve could not start: {last_error}")

    def _start_once(self):
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.stdout_lines = []
        stderr_path = self.log_dir / f"serve-{self.port}.stderr.log"
        self._stderr_file = open(stderr_path, "wb")
        cmd = [str(self.binary), "serve", "--data-dir", str(self.data_dir),
               "--listen", f"127.0.0.1:{self.port}", *self.extra_args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._stderr_file,
                                     stdin=subprocess.DEVNULL)
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        s = Session(timeout=2)
        try:
            while True:
                rc = self.proc.poll()
                if rc is not None:
                    self._reader.join(2)
                    err = self.stderr_text()
                    self._finish(rc)
                    if "in use" in err.lower() or "address already" in err.lower():
                        raise _PortInUse(err[-500:])
                    raise AssertionError(
                        f"fhirlake serve exited with {rc} before answering /healthz.\n"
                        f"command: {' '.join(cmd)}\nstdout:\n{self.stdout_text()[-2000:]}\n"
                        f"stderr:\n{err[-4000:]}")
                try:
                    r = s.get(self.url + "/healthz")
                    if r.status_code == 200:
                        try:
                            self.healthz = r.json()
                        except ValueError:
                            raise AssertionError("GET /healthz answered 200 with a body that is not JSON: "
                                                 + r.text[:500])
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline:
                    self._kill()
                    out, err = self.stdout_text(), self.stderr_text()
                    self._finish(None)
                    raise AssertionError(
                        f"fhirlake serve did not answer GET /healthz with 200 within {START_TIMEOUT_S}s.\n"
                        f"stdout:\n{out[-2000:]}\nstderr:\n{err[-4000:]}")
                time.sleep(0.05)
        finally:
            s.close()
        stores = self.healthz.get("datastores") or []
        assert stores, f"/healthz lists no datastore: {self.healthz}"
        self.datastore_id = stores[0].get("datastoreId")
        self.base = f"{self.url}/datastore/{self.datastore_id}/r4"

    def _read_stdout(self):
        out = self.proc.stdout
        lines = self.stdout_lines
        for raw in iter(out.readline, b""):
            lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
        out.close()

    def stdout_text(self) -> str:
        return "\n".join(self.stdout_lines)

    def stderr_text(self) -> str:
        if self._stderr_file is None:
            return ""
        try:
            if not self._stderr_file.closed:
                self._stderr_file.flush()
            return Path(self._stderr_file.name).read_text("utf-8", "replace")
        except (OSError, ValueError):
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self, timeout=STOP_TIMEOUT_S):
        """SIGTERM and wait; returns (exit code, seconds). Kills and returns (None, t) on timeout."""
        if self.proc is None:
            return self.returncode, 0.0
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._kill()
            rc = None
        self._finish(rc)
        return rc, time.monotonic() - t0

    def stop(self):
        """Stop gracefully; raise AssertionError unless the process exits 0 within 15 s."""
        if self.proc is None:
            return
        already_dead = self.proc.poll() is not None
        rc, secs = self.terminate()
        if already_dead:
            hint = (" - exit code 0 without a SIGTERM from the suite: was it stopped from outside "
                    "(e.g. a `pkill fhirlake` elsewhere on this machine)?" if rc == 0 else "")
            raise AssertionError(f"fhirlake serve had already exited (code {rc}) before teardown{hint}; "
                                 f"stderr tail:\n{self.stderr_text()[-3000:]}")
        if rc is None:
            raise AssertionError(f"fhirlake serve did not exit within {STOP_TIMEOUT_S}s of SIGTERM (killed)")
        if rc != 0:
            raise AssertionError(f"fhirlake serve exited with code {rc} after SIGTERM (expected 0); "
                                 f"stderr tail:\n{self.stderr_text()[-3000:]}")

    def _kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass

    def _finish(self, rc):
        self.returncode = rc
        if self._reader:
            self._reader.join(5)
        if self._stderr_file:
            self._stderr_file.close()
        self.proc = None


class _PortInUse(Exception):
    pass


# ---- fhirlake load -------------------------------------------------------------------------------

class LoadResult:
    def __init__(self, cmd, returncode, stdout, stderr, seconds):
        self.cmd, self.returncode, self.stdout, self.stderr, self.seconds = cmd, returncode, stdout, stderr, seconds

    def loaded_count(self):
        m = re.search(r"loaded\s+([\d,]+)\s+resources", self.stdout)
        return int(m.group(1).replace(",", "")) if m else None

    def describe(self):
        return (f"command: {' '.join(map(str, self.cmd))}\nexit code: {self.returncode}\n"
                f"stdout:\n{self.stdout[-3000:]}\nstderr:\n{self.stderr[-3000:]}")


def run_load(binary, data_dir, paths, datastore=None, timeout=300, extra=()) -> LoadResult:
    cmd = [str(binary), "load", "--data-dir", str(data_dir)]
    if datastore:
        cmd += ["--datastore", datastore]
    cmd += list(extra)
    cmd += [str(p) for p in paths]
    t0 = time.monotonic()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                       timeout=timeout)
    return LoadResult(cmd, p.returncode, p.stdout.decode("utf-8", "replace"),
                      p.stderr.decode("utf-8", "replace"), time.monotonic() - t0)


# ---- assertions ----------------------------------------------------------------------------------

def describe_response(r: requests.Response, limit=1500) -> str:
    body = r.content[:limit].decode("utf-8", "replace")
    return f"{r.request.method} {r.request.url} -> {r.status_code} {r.headers.get('Content-Type')}\n{body}"


def assert_fhir_json(r: requests.Response):
    ct = r.headers.get("Content-Type", "")
    assert ct.split(";")[0].strip().lower() == FHIR_JSON, f"Content-Type {ct!r}, expected {FHIR_JSON}\n" + describe_response(r)


def assert_outcome(r: requests.Response, status, mentions=()):
    """Status (int or collection of ints) + an OperationOutcome with an error issue whose diagnostics is
    a non-empty string; each string of `mentions` must occur (case-insensitively) in the diagnostics.
    Returns the diagnostics text."""
    statuses = {status} if isinstance(status, int) else set(status)
    assert r.status_code in statuses, f"expected status {sorted(statuses)}\n" + describe_response(r)
    assert_fhir_json(r)
    try:
        body = r.json()
    except ValueError:
        raise AssertionError("error body is not JSON\n" + describe_response(r))
    assert isinstance(body, dict) and body.get("resourceType") == "OperationOutcome", \
        "error body is not an OperationOutcome\n" + describe_response(r)
    return check_outcome_body(body, mentions, context=describe_response(r))


def check_outcome_body(body, mentions=(), context=""):
    issues = body.get("issue")
    assert isinstance(issues, list) and issues, f"OperationOutcome without issue[]\n{context}"
    diags = []
    for i in issues:
        assert isinstance(i.get("code"), str) and i["code"], f"issue without code\n{context}"
        d = i.get("diagnostics")
        if i.get("severity") in ("error", "fatal") and isinstance(d, str) and d.strip():
            diags.append(d)
    assert diags, f"no issue of severity error/fatal with a non-empty diagnostics\n{context}"
    text = "\n".join(diags)
    for m in mentions:
        assert m.lower() in text.lower(), f"diagnostics does not mention {m!r}: {text!r}\n{context}"
    return text


def strip_server_meta(resource: dict) -> dict:
    """Copy without meta.versionId / meta.lastUpdated (and without meta if nothing else is left)."""
    r = dict(resource)
    meta = r.get("meta")
    if isinstance(meta, dict):
        meta = {k: v for k, v in meta.items() if k not in ("versionId", "lastUpdated")}
        if meta:
            r["meta"] = meta
        else:
            del r["meta"]
    return r


def first_difference(a, b, path="$"):
    """Path and values of the first difference between two JSON values (None if equal)."""
    if type(a) != type(b) and not (isinstance(a, (int, float)) and isinstance(b, (int, float))
                                   and not isinstance(a, bool) and not isinstance(b, bool)):
        return f"{path}: {type(a).__name__} {_short(a)} != {type(b).__name__} {_short(b)}"
    if isinstance(a, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a:
                return f"{path}.{k}: missing in stored, expected {_short(b[k])}"
            if k not in b:
                return f"{path}.{k}: unexpected in stored: {_short(a[k])}"
            d = first_difference(a[k], b[k], f"{path}.{k}")
            if d:
                return d
        return None
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{path}: list length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            d = first_difference(x, y, f"{path}[{i}]")
            if d:
                return d
        return None
    return None if a == b else f"{path}: {_short(a)} != {_short(b)}"


def _short(v, n=120):
    s = json.dumps(v, ensure_ascii=False)
    return s if len(s) <= n else s[:n] + "..."


# ---- the sample data, computed independently -----------------------------------------------------

class Sample:
    """The sample folder as `fhirlake load` must see it: files in byte order, entries in file order."""

    def __init__(self, sample_dir: Path = SAMPLE_DIR):
        self.dir = sample_dir
        self.files = sorted((p for p in sample_dir.iterdir() if p.suffix in (".json", ".ndjson")),
                            key=lambda p: p.name.encode())
        self.inputs = []  # (file name, resource) in load order
        self.urn_map = {}  # "urn:uuid:X" -> "Type/X"
        for f in self.files:
            if f.suffix == ".ndjson":
                for line in f.read_text("utf-8").splitlines():
                    if line.strip():
                        self.inputs.append((f.name, json.loads(line)))
                continue
            doc = json.loads(f.read_text("utf-8"))
            if doc.get("resourceType") == "Bundle":
                for e in doc.get("entry", []):
                    res = e["resource"]
                    self.inputs.append((f.name, res))
                    full = e.get("fullUrl")
                    if isinstance(full, str) and full.startswith("urn:uuid:"):
                        self.urn_map[full] = f"{res['resourceType']}/{res['id']}"
            else:
                self.inputs.append((f.name, doc))
        self.occurrences = collections.Counter((r["resourceType"], r["id"]) for _, r in self.inputs)
        self.expected = {}  # (type, id) -> resource after reference rewriting, last occurrence wins
        for _, res in self.inputs:
            self.expected[(res["resourceType"], res["id"])] = strip_server_meta(rewrite_references(res, self.urn_map))
        self.patient_ids = sorted(i for (t, i) in self.expected if t == "Patient")


def rewrite_references(value, urn_map):
    """Copy of `value` where every string under a key "reference" that is a known urn:uuid: is
    replaced by its Type/id."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k == "reference" and isinstance(v, str) and v in urn_map:
                out[k] = urn_map[v]
            else:
                out[k] = rewrite_references(v, urn_map)
        return out
    if isinstance(value, list):
        return [rewrite_references(v, urn_map) for v in value]
    return value


# ---- Patient compartment, computed from the R4 definitions ---------------------------------------

class PatientCompartment:
    """Which resources are in which Patient compartment, from compartmentdefinition-patient.json and
    search-parameters.json only."""

    WHERE_SUFFIX = ".where(resolve() is Patient)"

    def __init__(self, defs_dir: Path = FHIR_DEFS):
        cd = json.loads((defs_dir / "compartmentdefinition-patient.json").read_text("utf-8"))
        sp = json.loads((defs_dir / "search-parameters.json").read_text("utf-8"))
        by_code = collections.defaultdict(list)
        for e in sp.get("entry", []):
            r = e.get("resource", {})
            if r.get("resourceType") == "SearchParameter" and r.get("code"):
                by_code[r["code"]].append(r)
        self.paths = {}  # type -> list of paths (each a list of element names after the type)
        self.unsupported = {}  # type -> expressions this simple walker cannot follow
        for res in cd.get("resource", []):
            t = res["code"]
            params = res.get("param") or []
            if not params:
                continue
            paths = []
            for code in params:
                matches = [r for r in by_code.get(code, []) if t in (r.get("base") or [])]
                if not matches:
                    raise AssertionError(f"no SearchParameter {code!r} with base {t}")
                for r in matches:
                    for alt in (r.get("expression") or "").split(" | "):
                        alt = alt.strip()
                        if not alt.startswith(t + "."):
                            continue
                        if alt.endswith(self.WHERE_SUFFIX):
                            alt = alt[: -len(self.WHERE_SUFFIX)]
                        if not re.fullmatch(r"[A-Za-z]+(\.[A-Za-z]+)+", alt):
                            self.unsupported.setdefault(t, []).append(alt)
                            continue
                        p = alt.split(".")[1:]
                        if p not in paths:
                            paths.append(p)
            self.paths[t] = paths

    def patients_of(self, resource: dict) -> set:
        """Ids of the patients whose compartment holds `resource`."""
        t = resource["resourceType"]
        if t in self.unsupported:
            raise AssertionError(f"compartment expression(s) of {t} not supported by the test walker: "
                                 f"{self.unsupported[t]}")
        out = set()
        if t == "Patient":
            out.add(resource["id"])
        for path in self.paths.get(t, []):
            nodes = [resource]
            for name in path:
                nxt = []
                for n in nodes:
                    if isinstance(n, dict) and name in n:
                        v = n[name]
                        nxt.extend(v if isinstance(v, list) else [v])
                nodes = nxt
            for n in nodes:
                if isinstance(n, dict):
                    ref = n.get("reference")
                    if isinstance(ref, str) and ref.startswith("Patient/") and "/" not in ref[len("Patient/"):]:
                        out.add(ref[len("Patient/"):])
        return out

    def expected_by_patient(self, resources) -> dict:
        """{patient id: set of (type, id)} over `resources` (an iterable of resource dicts)."""
        result = collections.defaultdict(set)
        for r in resources:
            for pid in self.patients_of(r):
                result[pid].add((r["resourceType"], r["id"]))
        return result


# ---- raw HTTP --------------------------------------------------------------------------------

def raw_exchange(port, payload: bytes, timeout=10.0, shutdown_write=False, chunks=None):
    """Send raw bytes and read until the server closes or one full response arrived.
    Returns (status code or None, raw response bytes, how it ended: 'response'|'closed'|'reset'|'timeout')."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    data = b""
    ended = "closed"
    try:
        try:
            if chunks is None:
                s.sendall(payload)
            else:
                for c in chunks:
                    s.sendall(c)
            if shutdown_write:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        while True:
            try:
                b = s.recv(65536)
            except socket.timeout:
                ended = "timeout"
                break
            except ConnectionResetError:
                ended = "reset"
                break
            if not b:
                ended = "closed"
                break
            data += b
            if _complete_response(data):
                ended = "response"
                break
    finally:
        s.close()
    m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return (int(m.group(1)) if m else None), data, ended


def _complete_response(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    m = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
    if m:
        return len(body) >= int(m.group(1))
    return False
