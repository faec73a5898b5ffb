"""Create / read / update / vread / history / delete round trips, headers, server-set meta, restart,
graceful shutdown, /healthz and /metadata."""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import re
import socket
import time

import pytest

from fhirlake_helpers import (HEX32_RE, HTTP_DATE_RE, ID_RE, INSTANT_MS_RE, Session, assert_fhir_json,
                              assert_outcome, binary_path, describe_response, raw_exchange,
                              strip_server_meta)


def patient(**extra):
    p = {
        "resourceType": "Patient",
        "active": True,
        "name": [{"family": "Zoë-Łukasz", "given": ["Ämma", "北京"]}],
        "gender": "female",
        "birthDate": "1970-01-02",
        "identifier": [{"system": "http://example.org/mrn", "value": "A-1"}],
        "extension": [{"url": "http://example.org/x", "valueDecimal": 12.5}],
    }
    p.update(extra)
    return p


def parse_instant(s: str) -> dt.datetime:
    return dt.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc)


def check_version_headers(r, version: int, last_updated: str | None = None):
    assert r.headers.get("ETag") == f'W/"{version}"', f"ETag {r.headers.get('ETag')!r}\n" + describe_response(r)
    lm = r.headers.get("Last-Modified")
    assert lm and HTTP_DATE_RE.match(lm), f"Last-Modified {lm!r} is not an HTTP date\n" + describe_response(r)
    if last_updated:
        lm_dt = email.utils.parsedate_to_datetime(lm)
        lu = parse_instant(last_updated).replace(microsecond=0)
        assert lm_dt == lu, f"Last-Modified {lm} differs from meta.lastUpdated {last_updated}"


def check_meta(body: dict, version: int):
    meta = body.get("meta") or {}
    assert meta.get("versionId") == str(version), f"meta.versionId {meta.get('versionId')!r}, expected {version!r}"
    lu = meta.get("lastUpdated")
    assert isinstance(lu, str) and INSTANT_MS_RE.match(lu), \
        f"meta.lastUpdated {lu!r} is not a UTC instant with milliseconds (e.g. 2026-11-23T20:58:02.123Z)"
    now = dt.datetime.now(dt.timezone.utc)
    assert abs((parse_instant(lu) - now).total_seconds()) < 300, f"meta.lastUpdated {lu} is not now ({now})"
    return lu


def without(res, *keys):
    return {k: v for k, v in strip_server_meta(res).items() if k not in keys}


def test_binary_exists():
    path = binary_path()
    assert path.is_file(), f"fhirlake binary missing at {path} (build it or set FHIRLAKE_BIN)"


# ---- /healthz, startup banner, /metadata ----------------------------------------------------------

def test_healthz_and_banner(server, http):
    r = http.get(server.url + "/healthz")
    assert r.status_code == 200, describe_response(r)
    body = r.json()
    assert body.get("status") == "ok", body
    assert isinstance(body.get("version"), str) and body["version"], body
    stores = body.get("datastores")
    assert isinstance(stores, list) and len(stores) >= 1, body
    ds = stores[0]
    assert HEX32_RE.match(ds.get("datastoreId", "")), f"datastoreId {ds.get('datastoreId')!r} is not 32 hex"
    assert isinstance(ds.get("datastoreName"), str) and ds["datastoreName"], ds
    assert ds.get("fhirBase") == f"{server.url}/datastore/{ds['datastoreId']}/r4", ds
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        out = server.stdout_text()
        if f"listening on http://127.0.0.1:{server.port}" in out and re.search(r"datastore [0-9a-f]{32}", out):
            break
        time.sleep(0.1)
    out = server.stdout_text()
    assert f"listening on http://127.0.0.1:{server.port}" in out, f"stdout lacks the listening line:\n{out}"
    m = re.search(r"datastore ([0-9a-f]{32})\b", out)
    assert m, f"stdout lacks a 'datastore <32-hex-id>' line:\n{out}"
    assert m.group(1) == ds["datastoreId"], f"stdout datastore {m.group(1)} != /healthz {ds['datastoreId']}"


def test_capability_statement(server, http):
    r = http.get(server.base + "/metadata", headers={"Accept": "application/fhir+json"})
    assert r.status_code == 200, describe_response(r)
    assert_fhir_json(r)
    cs = r.json()
    assert cs.get("resourceType") == "CapabilityStatement"
    assert cs.get("fhirVersion") == "4.0.1"
    rest = cs["rest"][0]
    resources = rest.get("resource") or []
    types = {x.get("type") for x in resources}
    for t in ("Patient", "Observation", "Encounter", "Group", "Organization"):
        assert t in types, f"CapabilityStatement lacks resource {t}"
    needed = {"read", "vread", "update", "delete", "history-instance", "create"}
    for x in resources:
        have = {i.get("code") for i in x.get("interaction") or []}
        assert needed <= have, f"{x.get('type')}: interactions {sorted(have)} lack {sorted(needed - have)}"
    sys_inter = {i.get("code") for i in rest.get("interaction") or []}
    assert {"transaction", "batch"} <= sys_inter, f"rest.interaction {sorted(sys_inter)}"


# ---- CRUD round trip ------------------------------------------------------------------------------

def test_create_read_update_vread_history_delete(server, http):
    base = server.base
    sent = patient(id="client-chosen-id")
    r = http.fhir("POST", base + "/Patient", sent)
    assert r.status_code == 201, describe_response(r)
    assert_fhir_json(r)
    created = r.json()
    pid = created.get("id")
    assert isinstance(pid, str) and ID_RE.match(pid), f"server id {pid!r}"
    assert pid != "client-chosen-id", "POST must ignore the id of the body and assign its own"
    assert r.headers.get("Location") == f"{base}/Patient/{pid}/_history/1", r.headers.get("Location")
    lu1 = check_meta(created, 1)
    check_version_headers(r, 1, lu1)
    assert without(created, "id") == without(sent, "id"), "stored content differs from the posted content"

    # a second POST gets another id
    r2 = http.fhir("POST", base + "/Patient", sent)
    assert r2.status_code == 201, describe_response(r2)
    assert r2.json()["id"] != pid

    # read
    r = http.get(f"{base}/Patient/{pid}")
    assert r.status_code == 200, describe_response(r)
    assert_fhir_json(r)
    assert r.json() == created, "GET differs from the create response"
    check_version_headers(r, 1, lu1)

    # update
    upd = dict(sent, id=pid, gender="male", active=False)
    time.sleep(0.005)
    r = http.fhir("PUT", f"{base}/Patient/{pid}", upd)
    assert r.status_code == 200, describe_response(r)
    v2 = r.json()
    lu2 = check_meta(v2, 2)
    assert r.headers.get("ETag") == 'W/"2"', r.headers
    assert parse_instant(lu2) >= parse_instant(lu1)
    assert without(v2) == without(upd), "updated content differs from the PUT body"
    r = http.get(f"{base}/Patient/{pid}")
    assert r.status_code == 200 and r.json() == v2
    check_version_headers(r, 2, lu2)

    # vread
    r = http.get(f"{base}/Patient/{pid}/_history/1")
    assert r.status_code == 200, describe_response(r)
    assert r.json() == created
    assert r.headers.get("ETag") == 'W/"1"'
    r = http.get(f"{base}/Patient/{pid}/_history/2")
    assert r.status_code == 200 and r.json() == v2
    assert_outcome(http.get(f"{base}/Patient/{pid}/_history/3"), 404)
    assert_outcome(http.get(f"{base}/Patient/{pid}/_history/99"), 404)

    # history
    r = http.get(f"{base}/Patient/{pid}/_history")
    assert r.status_code == 200, describe_response(r)
    assert_fhir_json(r)
    h = r.json()
    assert h.get("resourceType") == "Bundle" and h.get("type") == "history", h.get("type")
    assert h.get("total") == 2, h.get("total")
    assert len(h["entry"]) == 2
    versions = [e["resource"]["meta"]["versionId"] for e in h["entry"]]
    assert versions == ["2", "1"], f"history must be newest first: {versions}"
    assert [e["request"]["method"] for e in h["entry"]] == ["PUT", "POST"]
    for e, v in zip(h["entry"], (2, 1)):
        assert e.get("fullUrl", "").endswith(f"Patient/{pid}"), e.get("fullUrl")
        assert isinstance(e["request"].get("url"), str) and e["request"]["url"].startswith("Patient")
        resp = e.get("response") or {}
        assert resp.get("status", "").startswith("200" if v == 2 else "201"), resp
        assert resp.get("etag") == f'W/"{v}"', resp
        assert isinstance(resp.get("lastModified"), str) and resp["lastModified"], resp
    assert h["entry"][0]["resource"] == v2 and h["entry"][1]["resource"] == created

    # delete
    r = http.delete(f"{base}/Patient/{pid}")
    assert r.status_code in (200, 204), describe_response(r)
    if r.status_code == 200:
        body = r.json()
        assert body.get("resourceType") == "OperationOutcome", body
        assert body["issue"] and body["issue"][0].get("severity") in ("information", "warning"), body
    assert_outcome(http.get(f"{base}/Patient/{pid}"), 410)
    # earlier versions stay readable, the delete version is gone
    r = http.get(f"{base}/Patient/{pid}/_history/2")
    assert r.status_code == 200 and r.json() == v2
    assert_outcome(http.get(f"{base}/Patient/{pid}/_history/3"), 410)
    h = http.get(f"{base}/Patient/{pid}/_history").json()
    assert h.get("total") == 3 and len(h["entry"]) == 3, h
    d = h["entry"][0]
    assert "resource" not in d, "a delete entry of a history has no resource"
    assert d["request"]["method"] == "DELETE", d
    assert d["request"]["url"] == f"Patient/{pid}", d
    assert d["response"]["status"].startswith("2"), d
    assert d["response"].get("etag") == 'W/"3"', d
    # delete again is fine, unknown is 404
    r = http.delete(f"{base}/Patient/{pid}")
    assert r.status_code in (200, 204), describe_response(r)
    assert_outcome(http.get(f"{base}/Patient/{pid}"), 410)
    assert_outcome(http.delete(f"{base}/Patient/never-existed-1"), 404)
    assert_outcome(http.get(f"{base}/Patient/never-existed-1"), 404)
    assert_outcome(http.get(f"{base}/Patient/never-existed-1/_history/1"), 404)
    # the other patient is untouched
    r = http.get(f"{base}/Patient/{r2.json()['id']}")
    assert r.status_code == 200


def test_put_create_then_update(server, http):
    base = server.base
    body = patient(id="put-created-1")
    r = http.fhir("PUT", base + "/Patient/put-created-1", body)
    assert r.status_code == 201, describe_response(r)
    created = r.json()
    assert created["id"] == "put-created-1"
    lu = check_meta(created, 1)
    assert r.headers.get("ETag") == 'W/"1"'
    loc = r.headers.get("Location")
    assert loc is None or loc == f"{base}/Patient/put-created-1/_history/1", loc
    assert without(created) == without(body)
    r = http.get(base + "/Patient/put-created-1")
    assert r.status_code == 200 and r.json() == created
    check_version_headers(r, 1, lu)
    r = http.fhir("PUT", base + "/Patient/put-created-1", dict(body, gender="other"))
    assert r.status_code == 200, describe_response(r)
    check_meta(r.json(), 2)
    assert r.json()["gender"] == "other"
    # the history records the interactions that made each version: two PUTs
    h = http.get(base + "/Patient/put-created-1/_history").json()
    reqs = [(e["request"]["method"], e["request"]["url"]) for e in h["entry"]]
    assert reqs == [("PUT", "Patient/put-created-1")] * 2, f"history request of a PUT create + PUT update: {reqs}"
    for e in h["entry"]:
        assert e["response"]["lastModified"] == e["resource"]["meta"]["lastUpdated"], e
    assert_outcome(http.get(base + "/Patient/never-existed-2/_history"), 404)
    # 64 characters is the longest valid id
    long_id = "a" * 63 + "Z"
    r = http.fhir("PUT", f"{base}/Patient/{long_id}", patient(id=long_id))
    assert r.status_code == 201, describe_response(r)
    assert http.get(f"{base}/Patient/{long_id}").status_code == 200


def test_if_match(server, http):
    base = server.base
    r = http.fhir("PUT", base + "/Observation/ifm-1", {
        "resourceType": "Observation", "id": "ifm-1", "status": "final",
        "code": {"text": "weight"}, "valueQuantity": {"value": 70.25, "unit": "kg"}})
    assert r.status_code == 201, describe_response(r)
    body = r.json()
    r = http.fhir("PUT", base + "/Observation/ifm-1", dict(body, status="amended"), headers={"If-Match": 'W/"1"'})
    assert r.status_code == 200, describe_response(r)
    check_meta(r.json(), 2)
    # stale version -> 412, nothing changes
    r = http.fhir("PUT", base + "/Observation/ifm-1", dict(body, status="cancelled"), headers={"If-Match": 'W/"1"'})
    assert_outcome(r, 412)
    cur = http.get(base + "/Observation/ifm-1")
    assert cur.status_code == 200 and cur.json()["status"] == "amended"
    assert cur.json()["meta"]["versionId"] == "2"
    r = http.fhir("PUT", base + "/Observation/ifm-1", dict(body, status="cancelled"), headers={"If-Match": 'W/"7"'})
    assert_outcome(r, 412)
    # current version -> success
    r = http.fhir("PUT", base + "/Observation/ifm-1", dict(body, status="cancelled"), headers={"If-Match": 'W/"2"'})
    assert r.status_code == 200, describe_response(r)
    check_meta(r.json(), 3)
    assert r.headers.get("ETag") == 'W/"3"'
    assert http.get(base + "/Observation/ifm-1").json()["status"] == "cancelled"


def test_put_after_delete_recreates_with_201(server, http):
    base = server.base
    r = http.fhir("PUT", base + "/Patient/recreate-1", {"resourceType": "Patient", "id": "recreate-1"})
    assert r.status_code == 201, describe_response(r)
    assert http.delete(base + "/Patient/recreate-1").status_code in (200, 204)
    r = http.fhir("PUT", base + "/Patient/recreate-1", {"resourceType": "Patient", "id": "recreate-1", "active": True})
    assert r.status_code == 201, describe_response(r)  # a new current resource, version 3 (after the tombstone)
    assert r.json()["meta"]["versionId"] == "3"
    r = http.fhir("PUT", base + "/Patient/recreate-1", {"resourceType": "Patient", "id": "recreate-1", "active": False})
    assert r.status_code == 200, describe_response(r)


def test_conditional_create_if_none_exist(server, http):
    base = server.base
    patient = {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "ine-42"}],
               "name": [{"family": "Once"}]}
    r1 = http.fhir("POST", base + "/Patient", patient, headers={"If-None-Exist": "identifier=urn:mrn|ine-42"})
    assert r1.status_code == 201, describe_response(r1)
    first_id = r1.json()["id"]
    # a match: no second resource, 200 with the existing one
    r2 = http.fhir("POST", base + "/Patient", dict(patient, name=[{"family": "Twice"}]),
                   headers={"If-None-Exist": "identifier=urn:mrn|ine-42"})
    assert r2.status_code == 200, describe_response(r2)
    assert r2.json()["id"] == first_id and r2.json()["name"] == [{"family": "Once"}]
    assert r2.headers.get("Content-Location", "").endswith(f"/Patient/{first_id}/_history/1")
    # two matches -> 412 (by identifier, and by any other search criterion); an unknown criterion -> 400
    http.fhir("POST", base + "/Patient", patient)
    assert_outcome(http.fhir("POST", base + "/Patient", patient, headers={"If-None-Exist": "identifier=urn:mrn|ine-42"}),
                   412)
    assert_outcome(http.fhir("POST", base + "/Patient", patient, headers={"If-None-Exist": "name=Once"}), 412)
    r = http.fhir("POST", base + "/Patient", patient, headers={"If-None-Exist": "nosuchparam=Once"})
    assert_outcome(r, 400, ("nosuchparam",))
    assert "If-None-Exist" in r.json()["issue"][0]["diagnostics"]


def test_conditional_reference_in_create_and_update(server, http):
    """Regression: a conditional reference in a plain POST/PUT body was stored verbatim (even when it matched two
    resources) and the resource missed its compartment. It is resolved as in a transaction: one match is
    rewritten to Type/id, none or several answer 412 and nothing is stored."""
    base = server.base
    mrn = "http://example.org/cref"
    r = http.fhir("PUT", base + "/Patient/cref-p1",
                  {"resourceType": "Patient", "id": "cref-p1", "identifier": [{"system": mrn, "value": "one"}]})
    assert r.status_code == 201, describe_response(r)

    def obs(criterion, **extra):
        return dict({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                     "subject": {"reference": f"Patient?identifier={criterion}"}}, **extra)

    r = http.fhir("POST", base + "/Observation", obs(f"{mrn}|one"))
    assert r.status_code == 201, describe_response(r)
    created = r.json()
    assert created["subject"]["reference"] == "Patient/cref-p1"
    assert http.get(f"{base}/Observation/{created['id']}").json()["subject"]["reference"] == "Patient/cref-p1"
    r = http.fhir("PUT", base + "/Observation/cref-o2", obs(f"{mrn}|one", id="cref-o2"))
    assert r.status_code == 201 and r.json()["subject"]["reference"] == "Patient/cref-p1", describe_response(r)
    comp = http.get(f"{base}/Patient/cref-p1/Observation").json()
    assert sorted(e["resource"]["id"] for e in comp.get("entry", [])) == sorted([created["id"], "cref-o2"]), comp

    for pid in ("cref-twin-a", "cref-twin-b"):
        r = http.fhir("PUT", f"{base}/Patient/{pid}",
                      {"resourceType": "Patient", "id": pid, "identifier": [{"system": mrn, "value": "twin"}]})
        assert r.status_code == 201, describe_response(r)
    assert_outcome(http.fhir("POST", base + "/Observation", obs(f"{mrn}|twin")), 412, ("matches 2 resources",))
    assert_outcome(http.fhir("PUT", base + "/Observation/cref-o3", obs(f"{mrn}|twin", id="cref-o3")), 412)
    assert_outcome(http.fhir("POST", base + "/Observation", obs(f"{mrn}|nobody")), 412, ("matches no resource",))
    assert_outcome(http.fhir("PUT", base + "/Observation/cref-o3", obs(f"{mrn}|nobody", id="cref-o3")), 412)
    assert_outcome(http.get(base + "/Observation/cref-o3"), 404)
    for pid in ("cref-twin-a", "cref-twin-b"):
        assert http.get(f"{base}/Patient/{pid}/Observation").json()["total"] == 0
    # an unsupported criterion is a 400, as in transactions
    r = http.fhir("POST", base + "/Observation", dict(obs("x"), subject={"reference": "Patient?name=x"}))
    assert_outcome(r, 400, ("only identifier=system|value",))


def test_meta_is_set_by_server(server, http):
    base = server.base
    sent = patient(meta={"versionId": "42", "lastUpdated": "2001-02-03T04:05:06.789Z",
                         "profile": ["http://example.org/StructureDefinition/p"]})
    r = http.fhir("POST", base + "/Patient", sent)
    assert r.status_code == 201, describe_response(r)
    body = r.json()
    lu = check_meta(body, 1)
    assert lu != "2001-02-03T04:05:06.789Z"
    assert body["meta"].get("profile") == ["http://example.org/StructureDefinition/p"], \
        "meta elements other than versionId/lastUpdated must be kept"
    got = http.get(f"{base}/Patient/{body['id']}").json()
    assert got == body
    # PUT with a client versionId: ignored as well
    r = http.fhir("PUT", f"{base}/Patient/{body['id']}", dict(sent, id=body["id"]))
    assert r.status_code == 200, describe_response(r)
    check_meta(r.json(), 2)


@pytest.mark.parametrize("content_type", ["application/json", "application/fhir+json; charset=utf-8",
                                          "application/json; charset=utf-8"])
def test_accepted_content_types(server, http, content_type):
    r = http.fhir("POST", server.base + "/Patient", patient(), headers={"Content-Type": content_type})
    assert r.status_code == 201, describe_response(r)


# ---- restart and shutdown ---------------------------------------------------------------------------

def test_datastore_id_stable_across_restart(server_factory, http, tmp_path):
    data_dir = tmp_path / "data"
    s1 = server_factory(data_dir=data_dir)
    id1 = s1.datastore_id
    assert HEX32_RE.match(id1 or ""), id1
    r = http.fhir("PUT", s1.base + "/Patient/restart-1", patient(id="restart-1"))
    assert r.status_code == 201, describe_response(r)
    stored = r.json()
    http.close()
    s1.stop()
    s2 = server_factory(data_dir=data_dir)
    assert s2.datastore_id == id1, f"datastore id changed across restart: {id1} -> {s2.datastore_id}"
    with Session() as s:
        r = s.get(s2.base + "/Patient/restart-1")
        assert r.status_code == 200, describe_response(r)
        assert r.json() == stored
    # another data dir gets another datastore id
    s3 = server_factory()
    assert s3.datastore_id != id1


def _post_request_bytes(server, body: bytes) -> bytes:
    path = f"/datastore/{server.datastore_id}/r4/Patient"
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            f"Content-Type: application/fhir+json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def test_sigterm_while_request_in_flight(server_factory, tmp_path):
    """SIGTERM arrives while a POST body is half sent; the client then completes it. A request whose headers have
    arrived is in flight: the server answers it (201, with Connection: close, as it is stopping), exits 0 within
    15 s, and the resource is there after a restart. (This test used to pass when no answer came at all.)"""
    data_dir = tmp_path / "data"
    srv = server_factory(data_dir=data_dir)
    body = json.dumps(patient(text={"status": "generated", "div": "<div>" + "x" * 200_000 + "</div>"})).encode()
    req = _post_request_bytes(srv, body)
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=15)
    half = len(req) // 2
    resp = b""
    try:
        sock.sendall(req[:half])
        time.sleep(0.3)
        srv.proc.send_signal(15)
        time.sleep(0.3)
        sock.sendall(req[half:])
        while True:
            b = sock.recv(65536)
            if not b:
                break
            resp += b
    finally:
        sock.close()
    rc, secs = srv.terminate()
    assert rc == 0, f"exit code {rc} after SIGTERM with a request in flight (None = did not exit in 15 s)"
    head, sep, rest = resp.partition(b"\r\n\r\n")
    m = re.match(rb"HTTP/1\.1 (\d{3})", head)
    assert sep and m and int(m.group(1)) == 201, f"the in-flight request was not answered 201: {resp[:300]!r}"
    assert re.search(rb"(?im)^connection:\s*close\s*$", head), head
    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    assert length and len(rest) == int(length.group(1)), f"incomplete response: {resp[:300]!r}"
    loc = re.search(rb"(?im)^location:\s*(\S+)", head)
    assert loc, head
    rid = re.search(rb"/Patient/([^/]+)/_history/1", loc.group(1)).group(1).decode()
    assert json.loads(rest)["id"] == rid
    s2 = server_factory(data_dir=data_dir)
    with Session() as s:
        r = s.get(f"{s2.base}/Patient/{rid}")
        assert r.status_code == 200, "a create answered 201 before shutdown is lost after restart"


@pytest.mark.parametrize("client", ["stalled-request", "idle-keepalive"])
def test_sigterm_with_open_connections(server_factory, client):
    """Clients that never finish (or never send) a request must not keep the server from exiting 0."""
    srv = server_factory()
    socks = []
    try:
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=15)
            if client == "stalled-request":
                s.sendall(_post_request_bytes(srv, b'{"resourceType":"Patient"}')[:-10])
            else:
                s.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n\r\n".encode())
                time.sleep(0.1)
                s.recv(65536)
            socks.append(s)
        rc, secs = srv.terminate()
        assert rc == 0, f"exit code {rc} (None = still running 15 s after SIGTERM)"
    finally:
        for s in socks:
            s.close()


def test_sigterm_during_concurrent_load(server_factory, tmp_path):
    """A burst of creates over several connections while SIGTERM arrives: exit 0, and every create
    that got 201 is readable after restart."""
    import threading
    data_dir = tmp_path / "data"
    srv = server_factory(data_dir=data_dir)
    created, lock, stop = [], threading.Lock(), threading.Event()

    def worker():
        with Session(timeout=15) as s:
            while not stop.is_set():
                try:
                    r = s.fhir("POST", srv.base + "/Patient", patient())
                except Exception:
                    return
                if r.status_code == 201:
                    with lock:
                        created.append(r.json()["id"])
                elif r.status_code != 503:
                    return

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    rc, secs = srv.terminate()
    stop.set()
    for t in threads:
        t.join(20)
    assert rc == 0, f"exit code {rc} after SIGTERM under load (None = did not exit in 15 s)"
    assert created, "no create succeeded before SIGTERM"
    s2 = server_factory(data_dir=data_dir)
    with Session() as s:
        missing = [i for i in created if s.get(f"{s2.base}/Patient/{i}").status_code != 200]
    assert not missing, f"{len(missing)} of {len(created)} acknowledged creates lost after restart: {missing[:5]}"


# ---- concurrency ------------------------------------------------------------------------------------

def test_concurrent_creates_get_distinct_ids(server):
    import threading
    ids, errors, lock = [], [], threading.Lock()

    def worker(n):
        with Session() as s:
            for k in range(40):
                r = s.fhir("POST", server.base + "/Patient", patient(birthDate=f"19{n}0-01-{k % 28 + 1:02d}"))
                with lock:
                    (ids.append(r.json()["id"]) if r.status_code == 201 else errors.append(describe_response(r)))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]
    assert len(ids) == 160 and len(set(ids)) == 160, "concurrent creates must get distinct ids"
    with Session() as s:
        assert all(s.get(f"{server.base}/Patient/{i}").status_code == 200 for i in ids)


def test_if_match_under_concurrency(server):
    """Read-modify-write with If-Match from 4 clients: every version is produced by exactly one
    successful PUT; the others get 412."""
    import threading
    url = server.base + "/Patient/race-1"
    with Session() as s:
        assert s.fhir("PUT", url, patient(id="race-1")).status_code == 201
    wins, unexpected, lock = [], [], threading.Lock()

    def worker(n):
        with Session() as s:
            for k in range(25):
                cur = s.get(url)
                v = cur.json()["meta"]["versionId"]
                r = s.fhir("PUT", url, patient(id="race-1", birthDate=f"19{n}0-01-{k + 1:02d}"),
                           headers={"If-Match": f'W/"{v}"'})
                with lock:
                    if r.status_code == 200:
                        wins.append((v, r.json()["meta"]["versionId"]))
                    elif r.status_code != 412:
                        unexpected.append(describe_response(r))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not unexpected, unexpected[:3]
    bases = [b for b, _ in wins]
    assert len(bases) == len(set(bases)), "two If-Match PUTs succeeded on the same version"
    assert all(int(n) == int(b) + 1 for b, n in wins), wins[:5]
    with Session() as s:
        final = int(s.get(url).json()["meta"]["versionId"])
        assert final == 1 + len(wins), f"final version {final}, successful PUTs {len(wins)}"
        h = s.get(url + "/_history").json()
        assert h["total"] == final


def _read_responses(sock, n, timeout=10):
    """Read n complete HTTP responses (Content-Length framed) from a socket."""
    sock.settimeout(timeout)
    buf, out = b"", []
    while len(out) < n:
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {len(out)} of {n} responses"
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        assert m, f"response without Content-Length: {head[:300]!r}"
        length = int(m.group(1))
        while len(rest) < length:
            chunk = sock.recv(65536)
            assert chunk, "connection closed inside a response body"
            rest += chunk
        out.append((int(head.split(b" ")[1]), rest[:length]))
        buf = rest[length:]
    return out


def test_keep_alive_and_pipelining(server):
    host = f"Host: 127.0.0.1:{server.port}\r\n"
    path = f"/datastore/{server.datastore_id}/r4"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        for _ in range(3):  # sequential requests on one connection
            s.sendall(f"GET /healthz HTTP/1.1\r\n{host}\r\n".encode())
            (status, body), = _read_responses(s, 1)
            assert status == 200 and json.loads(body)["status"] == "ok"
        body = b'{"resourceType": "Patient", "id": "pipe-1"}'
        reqs = (f"PUT {path}/Patient/pipe-1 HTTP/1.1\r\n{host}Content-Type: application/fhir+json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        reqs += f"GET {path}/Patient/pipe-1 HTTP/1.1\r\n{host}\r\n".encode()
        reqs += f"GET {path}/Patient/pipe-404 HTTP/1.1\r\n{host}\r\n".encode()
        s.sendall(reqs)  # pipelined: answers must come back in order
        res = _read_responses(s, 3)
        assert [st for st, _ in res] == [201, 200, 404], [(st, b[:100]) for st, b in res]
        assert json.loads(res[1][1])["id"] == "pipe-1"
