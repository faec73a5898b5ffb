"""The Bulk Data Access IG view of export: GET kick-off at the three levels, the status URL (202 + X-Progress +
Retry-After, then 200 + Expires + the manifest), DELETE on it, and the download of the server-held files
(gzip, Range, ETag) — driven by a client that behaves as the public Bulk Data clients do (GET kick-off with
`Accept: application/fhir+json` and `Prefer: respond-async, handling=lenient`, polls with
`Accept: application/json` honouring Retry-After, parallel gzip downloads, manifest `count` and `type` checked
per file). Every expected set is computed in Python from the sample (export_helpers.expected_*), and the same
export through the HealthLake view must give the same set.
"""

from __future__ import annotations

import collections
import concurrent.futures
import gzip
import json
import socket
import time
import urllib.parse

import pytest
import requests

from export_helpers import servers  # noqa: F401  (fixture)
from export_helpers import (INSTANT_RE, SAMPLE_GROUP_ID, ServerPool, Template, assert_outcome, collect_output,
                            describe, expected_group, expected_patient, expected_system, new_session, sample_data,
                            start_export, wait_done)
from export_helpers import _add_referenced, _finish, r4
from export_helpers import kickoff as hl_kickoff

KICKOFF = {"Accept": "application/fhir+json", "Prefer": "respond-async, handling=lenient"}
POLL = {"Accept": "application/json"}
SERVER_BUCKET = "fhirlake-server-exports"


@pytest.fixture(scope="module")
def tpl(tmp_path_factory):
    return Template(tmp_path_factory.mktemp("ig"), sample_data())


class Env:
    pass


@pytest.fixture(scope="module")
def env(tpl, tmp_path_factory):
    root = tmp_path_factory.mktemp("ig-env")
    pool = ServerPool(root)
    e = Env()
    e.srv = pool.start(tpl.clone(root / "data"), ["--export-poll-seconds", "1"])
    e.model = tpl.model()
    yield e
    errors = pool.stop_all()
    assert not errors, errors


def kickoff_url(base, level, group_id=None, query=""):
    path = {"system": "/$export", "patient": "/Patient/$export", "group": f"/Group/{group_id}/$export"}[level]
    return base + path + (("?" + query) if query else "")


class BulkClient:
    """What SMART's bulk-data-client and similar clients do, step by step, with the checks they make."""

    def __init__(self, sess: requests.Session):
        self.sess = sess
        self.polls = []  # (status, Retry-After, X-Progress) of every poll

    def kickoff(self, url, headers=KICKOFF) -> str:
        r = self.sess.get(url, headers=headers)
        assert r.status_code == 202, f"kick-off {url}: {r.status_code} {r.text[:800]}"
        loc = r.headers.get("Content-Location", "")
        assert loc.startswith("http://127.0.0.1:"), f"Content-Location is not absolute: {loc!r}"
        return loc

    def wait(self, status_url, timeout=120) -> requests.Response:
        deadline = time.time() + timeout
        while True:
            r = self.sess.get(status_url, headers=POLL)
            self.polls.append((r.status_code, r.headers.get("Retry-After"), r.headers.get("X-Progress")))
            if r.status_code != 202:
                return r
            retry = r.headers.get("Retry-After")
            assert retry is not None and retry.isdigit(), f"a 202 poll without a Retry-After in seconds: {retry!r}"
            progress = r.headers.get("X-Progress", "")
            assert 0 < len(progress) <= 100, f"X-Progress {progress!r}"
            assert time.time() < deadline, f"the export did not finish in {timeout} s: {self.polls[-3:]}"
            time.sleep(max(int(retry), 0.05))

    def download_all(self, manifest, parallel=4, gzip_ok=True):
        """Downloads every output file in parallel; returns ({(type, id, version): n}, {url: bytes})."""
        headers = {"Accept": "application/fhir+ndjson"}
        if gzip_ok:
            headers["Accept-Encoding"] = "gzip"

        def one(entry):
            r = requests.get(entry["url"], headers=headers, timeout=120)
            assert r.status_code == 200, f"GET {entry['url']}: {r.status_code} {r.text[:300]}"
            assert r.headers.get("Content-Type", "").split(";")[0] == "application/fhir+ndjson", r.headers
            if gzip_ok:
                assert r.headers.get("Content-Encoding") == "gzip", r.headers
            return entry, r.content  # requests undoes the gzip

        counter = collections.Counter()
        bodies = {}
        with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
            for entry, body in pool.map(one, manifest["output"]):
                bodies[entry["url"]] = body
                lines = body.split(b"\n")
                assert lines[-1] == b"", f"{entry['url']} does not end with a newline"
                lines = lines[:-1]
                assert len(lines) == entry["count"], f"{entry['url']}: {len(lines)} lines, manifest says {entry['count']}"
                for line in lines:
                    obj = json.loads(line)
                    assert obj["resourceType"] == entry["type"], f"a {obj['resourceType']} in {entry['url']}"
                    counter[(obj["resourceType"], obj["id"], int(obj["meta"]["versionId"]))] += 1
        return counter, bodies


def check_manifest(r: requests.Response, kickoff: str):
    assert r.status_code == 200, f"{r.status_code} {r.text[:800]}"
    assert r.headers.get("Content-Type", "").split(";")[0] == "application/json", r.headers
    assert r.headers.get("Expires"), "a finished status answer has no Expires header"
    m = r.json()
    assert INSTANT_RE.match(m["transactionTime"]), m["transactionTime"]
    assert m["request"] == kickoff, (m["request"], kickoff)
    assert m["requiresAccessToken"] is False
    assert m["error"] == [], m["error"]
    assert m["output"], "no output files"
    for o in m["output"]:
        assert set(o) == {"type", "url", "count"}, o
        assert o["url"].startswith("http://127.0.0.1:"), o
        assert o["count"] > 0, o
    return m


def ig_export(env, level="system", group_id=None, query=""):
    client = BulkClient(new_session())
    url = kickoff_url(env.srv.base, level, group_id, query)
    status_url = client.kickoff(url)
    m = check_manifest(client.wait(status_url), url)
    got, bodies = client.download_all(m)
    return client, status_url, m, got, bodies


def diff(got, expected):
    return f"missing {sorted(expected - got)[:10]}, extra {sorted(got - expected)[:10]}, " \
           f"twice {[k for k, n in got.items() if n > 1][:10]}"


# ---------------------------------------------------------------------------------------------- the three levels

def test_system_export_through_the_ig_view_is_the_expected_set(env):
    client, status_url, m, got, _ = ig_export(env)
    expected = expected_system(env.model.state)
    assert got == expected, diff(got, expected)
    statuses = [s for s, _, _ in client.polls]
    assert statuses[-1] == 200 and set(statuses[:-1]) <= {202}, client.polls


def test_patient_export_through_the_ig_view_is_the_expected_set(env):
    _, _, _, got, _ = ig_export(env, "patient")
    expected = expected_patient(env.model.state)
    assert got == expected, diff(got, expected)


def test_group_export_through_the_ig_view_is_the_expected_set(env):
    _, _, _, got, _ = ig_export(env, "group", SAMPLE_GROUP_ID)
    expected = expected_group(env.model.state, SAMPLE_GROUP_ID)
    assert got == expected, diff(got, expected)


def test_type_and_since_and_repeated_parameters(env):
    _, _, _, got, _ = ig_export(env, "patient", query="_type=Patient&_type=Condition,AllergyIntolerance"
                                                      "&_outputFormat=ndjson")
    expected = expected_patient(env.model.state, types={"Patient", "Condition", "AllergyIntolerance"})
    assert got == expected, diff(got, expected)
    # _since after every write: nothing changed since, so no files at all.
    client = BulkClient(new_session())
    since = urllib.parse.quote(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1)))
    url = kickoff_url(env.srv.base, "system", query=f"_since={since}")
    r = client.wait(client.kickoff(url))
    assert r.status_code == 200, r.text
    assert r.json()["output"] == [] and r.json()["error"] == []


def test_same_set_as_the_healthlake_view(env):
    _, _, _, got, _ = ig_export(env, "patient", query="_type=Patient,Observation")
    srv = env.srv
    job = start_export(srv.sess, srv.base, "patient", query="_type=Patient,Observation")
    d = wait_done(srv.sess, srv.base, job)
    assert collect_output(srv, d).counter == got


def test_healthlake_describe_shows_an_ig_job_with_the_server_location(env):
    client = BulkClient(new_session())
    status_url = client.kickoff(kickoff_url(env.srv.base, "system", query="_type=Organization"))
    client.wait(status_url)
    job_id = status_url.rsplit("/", 1)[1]
    d = describe(env.srv.sess, env.srv.base, job_id)
    props = d["exportJobProperties"]
    assert props["jobStatus"] == "COMPLETED", props
    assert props["outputDataConfig"]["s3Configuration"]["s3Uri"] == f"s3://{SERVER_BUCKET}", props


def test_until_in_both_views(tpl, servers, tmp_path):
    """_until: only resources whose version as of the snapshot was last updated at or before it."""
    srv = servers.start(tpl.clone(tmp_path / "data"), ["--export-poll-seconds", "1"])
    model = tpl.model()
    sess = srv.sess
    updated = {}

    def put(rid):
        r = model.put(sess, srv.base, {"resourceType": "Basic", "id": rid, "code": {"text": rid}})
        updated[rid] = r.json()["meta"]["lastUpdated"]

    put("until-early")
    put("until-changed")
    time.sleep(0.05)
    now = time.time()  # one reading: seconds and milliseconds of the same instant
    until = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + ".%03dZ" % (int(now * 1000) % 1000)
    time.sleep(0.05)
    put("until-late")
    put("until-changed")  # its version as of the export is after _until: not exported
    expected = collections.Counter({k: n for k, n in expected_system(model.state, types={"Basic"}).items()
                                    if updated.get(k[1], "") <= until})
    assert set(k[1] for k in expected) >= {"until-early"} and not {"until-late", "until-changed"} & {
        k[1] for k in expected}
    q = "_type=Basic&_until=" + urllib.parse.quote(until)
    client = BulkClient(new_session())
    url = kickoff_url(srv.base, "system", query=q)
    r = client.wait(client.kickoff(url))
    assert r.status_code == 200, r.text
    got, _ = client.download_all(r.json())
    assert got == expected, diff(got, expected)
    hl = start_export(sess, srv.base, "system", query=q)
    assert collect_output(srv, wait_done(sess, srv.base, hl)).counter == expected
    # _until before _since, a bad instant, twice: 400 in both views
    for bad, mention in ((f"_since=2020-01-02T00:00:00Z&_until=2020-01-01T00:00:00Z", "before _since"),
                         ("_until=soon", "_until"), ("_until=2020-01-01T00:00:00Z&_until=2021-01-01T00:00:00Z",
                                                     "more than once")):
        assert_outcome(requests.get(kickoff_url(srv.base, "system", query=bad), headers=KICKOFF, timeout=30), 400,
                       mentions=[mention])
        assert_outcome(hl_kickoff(sess, srv.base, "system", query=bad), 400, mentions=[mention])


def test_polling_too_often_is_429_with_retry_after(tpl, servers, tmp_path):
    srv = servers.start(tpl.clone(tmp_path / "data"),
                        ["--export-poll-seconds", "2", "--test-export-batch-delay-ms", "200",
                         "--export-batch-rows", "200"])
    client = BulkClient(new_session())
    status_url = client.kickoff(kickoff_url(srv.base, "system"))
    first = requests.get(status_url, headers=POLL, timeout=30)
    assert first.status_code == 202 and first.headers["Retry-After"] == "2", first.headers
    again = requests.get(status_url, headers=POLL, timeout=30)
    assert_outcome(again, 429, mentions=["too often"])
    assert again.headers["Retry-After"] in ("1", "2"), again.headers
    time.sleep(1.1)  # half the interval: allowed again
    assert requests.get(status_url, headers=POLL, timeout=30).status_code == 202
    # A client that honours Retry-After is never throttled.
    time.sleep(2)
    r = client.wait(status_url, timeout=300)
    assert r.status_code == 200, r.text
    assert all(status != 429 for status, _, _ in client.polls), client.polls


def test_tag_and_security_in_both_views(tpl, servers, tmp_path):
    srv = servers.start(tpl.clone(tmp_path / "data"), ["--export-poll-seconds", "1"])
    assert tpl.model().ids("Basic") == [], "the sample has Basic resources: pick another type for this test"
    T, S = "http://example.org/tags", "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
    written = {
        "tag-a": {"tag": [{"system": T, "code": "a"}]},
        "tag-ab": {"tag": [{"system": T, "code": "a"}, {"system": T, "code": "b"}]},
        "tag-a-r": {"tag": [{"system": T, "code": "a"}], "security": [{"system": S, "code": "R"}]},
        "sec-r": {"security": [{"system": S, "code": "R"}]},
        "tag-other": {"tag": [{"system": "http://other", "code": "a"}]},
        "untagged": {},
    }
    for rid, meta in written.items():
        body = {"resourceType": "Basic", "id": rid, "code": {"text": rid}}
        if meta:
            body["meta"] = meta
        r = srv.sess.put(f"{srv.base}/Basic/{rid}", data=json.dumps(body), headers={"Content-Type": "application/fhir+json"})
        assert r.status_code == 201, r.text

    def expect(tags=(), security=()):
        def ok(items, codings):
            for item in items:
                system, bar, code = item.rpartition("|") if "|" in item else (None, "", item)
                if not any((system is None or (c.get("system", "") == system if system else "system" not in c))
                           and (not code or c.get("code") == code) for c in codings):
                    return False
            return True
        return collections.Counter({("Basic", rid, 1): 1 for rid, meta in written.items()
                                    if ok(tags, meta.get("tag", [])) and ok(security, meta.get("security", []))})

    cases = [
        (f"_tag={T}|a", expect([f"{T}|a"])),
        (f"_tag={T}|a&_tag={T}|b", expect([f"{T}|a", f"{T}|b"])),
        (f"_tag={T}|", expect([f"{T}|"])),
        ("_tag=a", expect(["a"])),
        (f"_security={S}|R", expect(security=[f"{S}|R"])),
        (f"_tag={T}|a&_security={S}|R", expect([f"{T}|a"], [f"{S}|R"])),
    ]
    assert [sum(e.values()) for _, e in cases] == [3, 1, 3, 4, 2, 1], "the expected sets are not what the cases mean"
    for q, expected in cases:
        query = "_type=Basic&" + "&".join(f"{k}={urllib.parse.quote(v)}" for k, v in
                                          (part.split("=", 1) for part in q.split("&")))
        client = BulkClient(new_session())
        r = client.wait(client.kickoff(kickoff_url(srv.base, "system", query=query)))
        assert r.status_code == 200, r.text
        got, _ = client.download_all(r.json()) if r.json()["output"] else (collections.Counter(), {})
        assert got == expected, (q, diff(got, expected))
        hl = start_export(srv.sess, srv.base, "system", query=query)
        assert collect_output(srv, wait_done(srv.sess, srv.base, hl)).counter == expected, q
    for bad, mention in (("_tag=", "_tag"), ("_security=a|b|c", "more than one"), ("_tag=|", "_tag")):
        assert_outcome(requests.get(kickoff_url(srv.base, "system", query=bad), headers=KICKOFF, timeout=30), 400,
                       mentions=[mention])
        assert_outcome(hl_kickoff(srv.sess, srv.base, "system", query=bad), 400, mentions=[mention])


# ---------------------------------------------------------------------------------------------- files

def test_gzip_download_is_byte_identical_to_the_plain_one(env):
    _, _, m, _, bodies = ig_export(env, "system", query="_type=Patient,Encounter")
    for entry in m["output"]:
        plain = requests.get(entry["url"], headers={"Accept-Encoding": "identity"}, timeout=60)
        assert plain.status_code == 200 and "Content-Encoding" not in plain.headers, plain.headers
        raw = requests.get(entry["url"], headers={"Accept-Encoding": "gzip"}, timeout=60, stream=True)
        compressed = raw.raw.read(decode_content=False)
        assert raw.headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(compressed) == plain.content == bodies[entry["url"]]
        assert len(compressed) < len(plain.content) / 3, "ndjson should compress well"
        assert raw.headers["ETag"] != plain.headers["ETag"], "one strong ETag per encoding"
        assert plain.headers["ETag"].startswith('"') and not plain.headers["ETag"].startswith('W/')


def test_range_requests_resume_a_download(env):
    _, _, m, _, bodies = ig_export(env, "system", query="_type=Patient")
    url = m["output"][0]["url"]
    whole = bodies[url]
    size = len(whole)
    cut = size // 3
    r = requests.get(url, headers={"Range": f"bytes={cut}-", "Accept-Encoding": "gzip"}, timeout=60)
    assert r.status_code == 206, r.text[:300]
    assert "Content-Encoding" not in r.headers, "ranges are of the identity encoding"
    assert r.headers["Content-Range"] == f"bytes {cut}-{size - 1}/{size}"
    assert whole[:cut] + r.content == whole
    r = requests.get(url, headers={"Range": "bytes=10-19"}, timeout=60)
    assert r.status_code == 206 and r.content == whole[10:20], r.headers
    r = requests.get(url, headers={"Range": "bytes=-5"}, timeout=60)
    assert r.status_code == 206 and r.content == whole[-5:], r.headers
    r = requests.get(url, headers={"Range": f"bytes={size}-"}, timeout=60)
    assert_outcome(r, 416)
    assert r.headers["Content-Range"] == f"bytes */{size}"


def test_unknown_files_and_jobs_are_404(env):
    _, status_url, m, _, _ = ig_export(env, "system", query="_type=Organization")
    base = env.srv.base
    job_id = status_url.rsplit("/", 1)[1]
    url = m["output"][0]["url"]
    for bad in [url.replace("-1.ndjson", "-99.ndjson"), url.replace("Organization/", "Patient/"),
                f"{base}/$export-file/{job_id}/..%2F..%2Fetc/passwd", f"{base}/$export-file/0000/Organization/x"]:
        r = requests.get(bad, timeout=30)
        assert_outcome(r, 404)
        assert "/tmp" not in r.text and "/work" not in r.text, r.text
    r = requests.get(f"{base}/$export-poll-status/{'0' * 32}", headers=POLL, timeout=30)
    assert_outcome(r, 404)
    # A HealthLake-view job has no IG status URL.
    srv = env.srv
    hl = start_export(srv.sess, srv.base, "system", query="_type=Organization")
    wait_done(srv.sess, srv.base, hl)
    assert_outcome(requests.get(f"{base}/$export-poll-status/{hl}", headers=POLL, timeout=30), 404)


# ---------------------------------------------------------------------------------------------- DELETE

def test_delete_cancels_a_running_job_and_the_status_url_then_404s(tpl, servers, tmp_path):
    srv = servers.start(tpl.clone(tmp_path / "data"),
                        ["--export-poll-seconds", "0", "--test-export-batch-delay-ms", "300",
                         "--export-batch-rows", "100"])
    client = BulkClient(new_session())
    status_url = client.kickoff(kickoff_url(srv.base, "system"))
    r = requests.get(status_url, headers=POLL, timeout=30)
    assert r.status_code == 202, r.text
    r = requests.delete(status_url, timeout=30)
    assert r.status_code == 202, r.text
    deadline = time.time() + 60
    while True:
        r = requests.get(status_url, headers=POLL, timeout=30)
        if r.status_code == 404:
            break
        assert r.status_code == 202 and time.time() < deadline, (r.status_code, r.text[:300])
        time.sleep(0.2)
    assert_outcome(r, 404, mentions=["cancel"])


def test_delete_of_an_ended_job_removes_its_files(env):
    _, status_url, m, _, _ = ig_export(env, "system", query="_type=Organization,Location")
    job_id = status_url.rsplit("/", 1)[1]
    files = [env.srv.s3_root() / SERVER_BUCKET / f"{env.srv.datastore_id}-FHIR_EXPORT-{job_id}" /
             o["url"].split("/")[-2] / o["url"].split("/")[-1] for o in m["output"]]
    assert files and all(f.is_file() for f in files), files
    # A download that has started when the DELETE comes finishes whole.
    running = requests.get(m["output"][0]["url"], stream=True, timeout=30)
    assert running.status_code == 200
    r = requests.delete(status_url, timeout=30)
    assert r.status_code == 202, r.text
    assert r.json()["issue"][0]["severity"] == "information"
    assert_outcome(requests.get(status_url, headers=POLL, timeout=30), 404, mentions=["deleted"])
    for o in m["output"]:
        assert_outcome(requests.get(o["url"], timeout=30), 404)
    assert b"".join(running.iter_content(1 << 16)).count(b"\n") == m["output"][0]["count"]
    running.close()
    # Gone once the download has ended (test_a_delete_during_a_download... shows it waits for one still running).
    deadline = time.time() + 15
    while any(f.exists() for f in files):
        assert time.time() < deadline, "the files are still on disk after the download ended"
        time.sleep(0.1)
    assert_outcome(requests.delete(status_url, timeout=30), 404)
    # HealthLake's describe keeps the final status and says the files were deleted.
    props = describe(env.srv.sess, env.srv.base, job_id)["exportJobProperties"]
    assert props["jobStatus"] == "COMPLETED", props
    assert "deleted" in props["message"], props


def test_a_delete_during_a_download_waits_for_it_and_then_removes_the_files(tpl, servers, tmp_path):
    """A file is never removed while it is being downloaded: the download holds a lease in the store, the DELETE
    records the deletion (status URL and new downloads 404 at once) and the objects go when the last lease ends."""
    srv = servers.start(tpl.clone(tmp_path / "data"), ["--export-poll-seconds", "1", "--test-export-sweep-ms", "200"])
    client = BulkClient(new_session())
    status_url = client.kickoff(kickoff_url(srv.base, "system", query="_type=Observation"))
    r = client.wait(status_url)
    assert r.status_code == 200, r.text
    entry = r.json()["output"][0]
    job_id = status_url.rsplit("/", 1)[1]
    path = srv.s3_root() / SERVER_BUCKET / f"{srv.datastore_id}-FHIR_EXPORT-{job_id}" / "Observation" / \
        entry["url"].split("/")[-1]
    whole = path.read_bytes()
    assert len(whole) > 8 << 20, f"the file ({len(whole)} bytes) is too small to still be streaming below"
    # A raw connection with a small receive buffer: the server blocks on it, its download half-way.
    url = urllib.parse.urlsplit(entry["url"])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    sock.settimeout(60)
    sock.connect((url.hostname, url.port))
    sock.sendall(f"GET {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\nConnection: close\r\n\r\n".encode())
    received = bytearray(sock.recv(1 << 16))
    assert received.startswith(b"HTTP/1.1 200"), bytes(received[:200])
    assert requests.delete(status_url, timeout=30).status_code == 202
    assert_outcome(requests.get(entry["url"], timeout=30), 404)
    assert_outcome(requests.get(status_url, headers=POLL, timeout=30), 404, mentions=["deleted"])
    time.sleep(1.5)  # several sweeps: each finds the lease and leaves the file
    assert path.exists(), "the file was removed while it was being downloaded"
    while True:
        piece = sock.recv(1 << 20)
        if not piece:
            break
        received += piece
    sock.close()
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower(), head
    data, pos = bytearray(), 0
    while True:  # undo the chunked framing
        eol = body.index(b"\r\n", pos)
        size = int(body[pos:eol].split(b";")[0], 16)
        if size == 0:
            break
        data += body[eol + 2:eol + 2 + size]
        pos = eol + 2 + size + 2
    assert bytes(data) == whole, "the download was cut or changed by the DELETE"
    deadline = time.time() + 15
    while path.exists():
        assert time.time() < deadline, "the file is still there after its download ended"
        time.sleep(0.1)
    assert "deleted" in describe(srv.sess, srv.base, job_id)["exportJobProperties"]["message"]


def test_files_expire_and_are_swept(tpl, servers, tmp_path):
    srv = servers.start(tpl.clone(tmp_path / "data"),
                        ["--export-poll-seconds", "1", "--test-export-file-lifetime-ms", "1500"])
    client = BulkClient(new_session())
    status_url = client.kickoff(kickoff_url(srv.base, "system", query="_type=Organization"))
    r = client.wait(status_url)
    assert r.status_code == 200, r.text
    m = r.json()
    expires = r.headers["Expires"]
    assert expires.endswith(" GMT"), expires
    job_id = status_url.rsplit("/", 1)[1]
    folder = srv.s3_root() / SERVER_BUCKET / f"{srv.datastore_id}-FHIR_EXPORT-{job_id}"
    assert any(folder.rglob("*.ndjson"))
    deadline = time.time() + 30
    while any(folder.rglob("*.ndjson")):
        assert time.time() < deadline, "expired files were not removed"
        time.sleep(0.2)
    assert_outcome(requests.get(status_url, headers=POLL, timeout=30), 404, mentions=["expired"])
    assert_outcome(requests.get(m["output"][0]["url"], timeout=30), 404)
    props = describe(srv.sess, srv.base, job_id)["exportJobProperties"]
    assert props["jobStatus"] == "COMPLETED" and "expired" in props["message"], props
    # A user's own bucket (the HealthLake view) is never swept.
    hl = start_export(srv.sess, srv.base, "system", query="_type=Organization")
    d = wait_done(srv.sess, srv.base, hl)
    time.sleep(2.5)
    assert collect_output(srv, d).counter, "the HealthLake job's files were removed"


# ---------------------------------------------------------------------------------------------- POST Parameters

def test_post_with_a_parameters_body_is_the_ig_view(env):
    client = BulkClient(new_session())
    url = kickoff_url(env.srv.base, "patient")
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "_type", "valueString": "Patient,Condition"}, {"name": "_outputFormat", "valueString": "ndjson"}]}
    r = client.sess.post(url, data=json.dumps(body), headers={**KICKOFF, "Content-Type": "application/fhir+json"})
    assert r.status_code == 202, r.text
    status_url = r.headers["Content-Location"]
    assert "/$export-poll-status/" in status_url
    m = check_manifest(client.wait(status_url), url)
    got, _ = client.download_all(m)
    expected = expected_patient(env.model.state, types={"Patient", "Condition"})
    assert got == expected, diff(got, expected)


@pytest.mark.parametrize("parameter,mention", [
    ({"name": "includeAssociatedData", "valueCode": "_aCustomPreset"}, "includeAssociatedData"),
    ({"name": "_type", "valueInteger": 3}, "_type"),
])
def test_parameters_the_server_does_not_support_are_400_unless_lenient(env, parameter, mention):
    url = kickoff_url(env.srv.base, "patient")
    body = json.dumps({"resourceType": "Parameters", "parameter": [parameter]})
    strict = {"Accept": "application/fhir+json", "Prefer": "respond-async", "Content-Type": "application/fhir+json"}
    assert_outcome(requests.post(url, data=body, headers=strict, timeout=30), 400, mentions=[mention])
    r = requests.post(url, data=body, headers={**KICKOFF, "Content-Type": "application/fhir+json"}, timeout=30)
    assert r.status_code == 202, r.text
    done = BulkClient(new_session()).wait(r.headers["Content-Location"])
    assert done.status_code == 200
    # Ignored, and said so in the manifest's `error`: one OperationOutcome naming the parameter.
    errors = done.json()["error"]
    assert len(errors) == 1 and errors[0]["type"] == "OperationOutcome" and errors[0]["count"] == 1, errors
    outcome = json.loads(requests.get(errors[0]["url"], timeout=30).text)
    assert mention in outcome["issue"][0]["diagnostics"], outcome


@pytest.mark.parametrize("body,mention", [
    ({"resourceType": "Parameters", "parameter": {"name": "_type"}}, "array"),
    ({"resourceType": "Parameters", "parameter": [{"valueString": "Patient"}]}, "name"),
    ({"resourceType": "Parameters", "parameter": [{"name": "_type", "valueString": "Patient",
                                                   "valueCode": "Patient"}]}, "more than one"),
    ({"resourceType": "Parameters", "parameter": [{"name": "_type", "valueString": "NotAType"}]}, "NotAType"),
])
def test_malformed_parameters_bodies_are_400(env, body, mention):
    r = requests.post(kickoff_url(env.srv.base, "system"), data=json.dumps(body),
                      headers={**KICKOFF, "Content-Type": "application/fhir+json"}, timeout=30)
    assert_outcome(r, 400, mentions=[mention])


def expected_for_patients(state, patient_ids, group_id=None):
    """The Group-level rule with the members given: those Patients, their compartments, one hop of references."""
    live = {k: e for k, e in state.items() if not e.deleted}
    comp = r4().compartment_types
    members = set(patient_ids)
    scope = {("Group", group_id)} if group_id else set()
    scope |= {("Patient", p) for p in members if ("Patient", p) in live}
    for k, e in live.items():
        if e.type not in ("Group", "Patient") and e.type in comp and e.patients & members:
            scope.add(k)
    _add_referenced(scope, live)
    return _finish(scope, live)


@pytest.mark.parametrize("level", ["patient", "group"])
def test_patient_parameter_exports_only_those_patients(env, level):
    from export_helpers import group_members
    members = sorted(group_members(env.model.get("Group", SAMPLE_GROUP_ID).resource))
    chosen = members[:2] if level == "group" else env.model.ids("Patient")[3:5]
    url = kickoff_url(env.srv.base, level, SAMPLE_GROUP_ID)
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": {"reference": f"Patient/{chosen[0]}"}},
        {"name": "patient", "valueReference": {"reference": f"Patient/{chosen[1]}"}}]}
    client = BulkClient(new_session())
    r = client.sess.post(url, data=json.dumps(body), headers={**KICKOFF, "Content-Type": "application/fhir+json"})
    assert r.status_code == 202, r.text
    m = check_manifest(client.wait(r.headers["Content-Location"]), url)
    got, _ = client.download_all(m)
    expected = expected_for_patients(env.model.state, chosen, SAMPLE_GROUP_ID if level == "group" else None)
    assert {k[1] for k in got if k[0] == "Patient"} == set(chosen)
    assert got == expected, diff(got, expected)


def test_patient_parameter_bad_input(env):
    from export_helpers import group_members
    members = group_members(env.model.get("Group", SAMPLE_GROUP_ID).resource)
    outsider = next(p for p in env.model.ids("Patient") if p not in members) if len(members) < 100 else None
    hdrs = {**KICKOFF, "Content-Type": "application/fhir+json"}

    def post(level, refs):
        body = {"resourceType": "Parameters",
                "parameter": [{"name": "patient", "valueReference": {"reference": ref}} for ref in refs]}
        return requests.post(kickoff_url(env.srv.base, level, SAMPLE_GROUP_ID), data=json.dumps(body), headers=hdrs,
                             timeout=30)

    assert_outcome(post("patient", ["Patient/no-such-patient"]), 400, mentions=["no-such-patient"])
    assert_outcome(post("system", ["Patient/" + env.model.ids("Patient")[0]]), 400, mentions=["system-level"])
    assert_outcome(post("patient", ["Observation/x y"]), 400, mentions=["Patient reference"])
    if outsider:
        assert_outcome(post("group", [f"Patient/{outsider}"]), 400, mentions=["not an active member"])


# ---------------------------------------------------------------------------------------------- bad kick-offs

@pytest.mark.parametrize("headers,mention", [
    ({"Accept": "application/fhir+json"}, "respond-async"),
    ({"Prefer": "respond-async"}, "Accept"),
    ({"Prefer": "respond-async", "Accept": "application/xml"}, "Accept"),
])
@pytest.mark.parametrize("level", ["system", "patient", "group"])
def test_kickoff_headers_are_required(env, headers, mention, level):
    r = requests.get(kickoff_url(env.srv.base, level, SAMPLE_GROUP_ID), headers=headers, timeout=30)
    assert_outcome(r, 400, mentions=[mention])


@pytest.mark.parametrize("query,mention", [
    ("_outputFormat=application/xml", "_outputFormat"),
    ("_outputFormat=text/html", "_outputFormat"),
    ("_type=Patient,Nonsense", "Nonsense"),
    ("_since=yesterday", "_since"),
    ("_since=2999-01-01T00:00:00Z", "future"),
])
def test_bad_parameters_are_400(env, query, mention):
    r = requests.get(kickoff_url(env.srv.base, "system", query=query), headers=KICKOFF, timeout=30)
    assert_outcome(r, 400, mentions=[mention])


def test_unsupported_parameter_is_400_unless_lenient(env):
    url = kickoff_url(env.srv.base, "system", query="_type=Organization&_unknownThing=1")
    strict = {"Accept": "application/fhir+json", "Prefer": "respond-async"}
    r = requests.get(url, headers=strict, timeout=30)
    assert_outcome(r, 400, mentions=["_unknownThing", "handling=lenient"])
    client = BulkClient(new_session())
    assert client.wait(client.kickoff(url)).status_code == 200


def test_unknown_group_is_404(env):
    r = requests.get(kickoff_url(env.srv.base, "group", "no-such-group"), headers=KICKOFF, timeout=30)
    assert_outcome(r, 404, mentions=["no-such-group"])


def test_capability_statement_instantiates_bulk_data_and_names_the_operations(env):
    r = requests.get(env.srv.base + "/metadata", timeout=30)
    assert r.status_code == 200
    cs = r.json()
    assert "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data" in cs["instantiates"]
    rest = cs["rest"][0]
    assert {"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"} \
        in rest["operation"]
    by_type = {res["type"]: res for res in rest["resource"]}
    for t, op in (("Patient", "patient-export"), ("Group", "group-export")):
        ops = {(o["name"], o["definition"]) for o in by_type[t]["operation"]}
        want = f"http://hl7.org/fhir/uv/bulkdata/OperationDefinition/{op}"
        assert ops == {("export", want), (op, want)}, ops
