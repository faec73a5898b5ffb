"""Bad input: every error case of the spec answers the right status with an OperationOutcome whose
diagnostics is a specific, non-empty sentence; malformed HTTP never brings the server down.

All cases share one server (started with --max-body-bytes 65536); after every test it must still be
running and answer /healthz."""

from __future__ import annotations

import json
import re

import pytest

from fhirlake_helpers import (Session, assert_outcome, check_outcome_body, describe_response, raw_exchange)

MAX_BODY = 65536
OTHER_DS = "0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def srv(module_server_factory):
    return module_server_factory(extra_args=["--max-body-bytes", str(MAX_BODY)])


@pytest.fixture(autouse=True)
def still_alive(srv):
    yield
    assert srv.alive(), f"the server died (exit code {srv.proc and srv.proc.poll()}); stderr tail:\n" \
                        f"{srv.stderr_text()[-3000:]}"
    with Session(timeout=10) as s:
        r = s.get(srv.url + "/healthz")
        assert r.status_code == 200, "server stopped answering /healthz after this bad input"


@pytest.fixture(scope="module")
def http():
    s = Session()
    yield s
    s.close()


def send(http, srv, method, path, body=None, content_type="application/fhir+json", headers=None):
    h = {"Accept": "application/fhir+json"}
    if content_type is not None:
        h["Content-Type"] = content_type
    if headers:
        h.update(headers)
    url = path if path.startswith("http") else srv.base + path
    data = body if body is None or isinstance(body, bytes) else (
        body.encode() if isinstance(body, str) else json.dumps(body).encode())
    return http.request(method, url, data=data, headers=h)


# ---- bodies -----------------------------------------------------------------------------------

BAD_BODIES = {
    "invalid-json-truncated": (b'{"resourceType": "Patient", "name": [', ()),
    "invalid-json-trailing-garbage": (b'{"resourceType": "Patient"} x', ()),
    "invalid-json-single-quotes": (b"{'resourceType': 'Patient'}", ()),
    "empty-body": (b"", ()),
    "invalid-utf8": (b'{"resourceType": "Patient", "name": [{"family": "\xff\xfe"}]}', ()),
    "array": (b'[{"resourceType": "Patient"}]', ()),
    "string": (b'"Patient"', ()),
    "number": (b"42", ()),
    "null": (b"null", ()),
    "no-resourceType": (b'{"id": "x1", "active": true}', ("resourceType",)),
    "resourceType-not-a-string": (b'{"resourceType": 7}', ("resourceType",)),
    "unknown-resourceType": (b'{"resourceType": "Foo"}', ("Foo",)),
    "type-differs-from-url": (b'{"resourceType": "Observation", "status": "final", "code": {"text": "x"}}',
                              ("Observation",)),
    # regression: a JSON object with a key twice was stored as whichever copy the parser met last
    "duplicate-resourceType": (b'{"resourceType": "Patient", "id": "d1", "resourceType": "Patient"}',
                               ("Duplicate JSON key 'resourceType'",)),
    "duplicate-nested-key": (b'{"resourceType": "Patient", "name": [{"family": "a"}, {"family": "b", "family": "c"}]}',
                             ("Duplicate JSON key 'family'", "Patient.name[1]")),
    "duplicate-key-in-meta": (b'{"resourceType": "Patient", "meta": {"source": "a", "source": "b"}}',
                              ("'source'", "Patient.meta")),
    # regression: numbers outside the FHIR primitive types' ranges were stored as sent
    "integer-out-of-range": (b'{"resourceType": "Patient", "multipleBirthInteger": 2147483648}',
                             ("Patient.multipleBirthInteger", "out of range", "integer")),
    "integer-below-range": (b'{"resourceType": "Patient", "multipleBirthInteger": -2147483649}',
                            ("Patient.multipleBirthInteger", "out of range")),
    "positiveInt-zero": (b'{"resourceType": "Patient", "telecom": [{"system": "phone", "rank": 0}]}',
                         ("Patient.telecom[0].rank", "positiveInt")),
    "unsignedInt-negative": (b'{"resourceType": "Patient", "photo": [{"size": -1}]}',
                             ("Patient.photo[0].size", "unsignedInt")),
    "integer-with-fraction": (b'{"resourceType": "Patient", "multipleBirthInteger": 1.0}',
                              ("Patient.multipleBirthInteger", "fraction or exponent")),
    "integer-with-exponent": (b'{"resourceType": "Patient", "multipleBirthInteger": 1e3}',
                              ("Patient.multipleBirthInteger", "fraction or exponent")),
    "integer-as-string": (b'{"resourceType": "Patient", "multipleBirthInteger": "2"}',
                          ("Patient.multipleBirthInteger", "JSON number")),
    "decimal-as-string": (b'{"resourceType": "Patient", "extension": [{"url": "http://x", "valueDecimal": "1.5"}]}',
                          ("Patient.extension[0].valueDecimal", "JSON number")),
    "number-in-contained-resource": (b'{"resourceType": "Patient", "contained": [{"resourceType": "Observation", '
                                     b'"status": "final", "code": {"text": "x"}, "valueInteger": 99999999999}]}',
                                     ("Patient.contained[0].valueInteger", "out of range")),
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_post_bad_body(srv, http, case):
    body, mentions = BAD_BODIES[case]
    assert_outcome(send(http, srv, "POST", "/Patient", body), 400, mentions)


@pytest.mark.parametrize("case", ["invalid-json-truncated", "array", "no-resourceType", "unknown-resourceType",
                                  "type-differs-from-url"])
def test_put_bad_body(srv, http, case):
    body, mentions = BAD_BODIES[case]
    assert_outcome(send(http, srv, "PUT", "/Patient/put-bad-1", body), 400, mentions)
    assert_outcome(send(http, srv, "GET", "/Patient/put-bad-1"), 404)


def test_put_with_a_second_resource_type_writes_nothing(srv, http):
    """Regression: the type checked against the URL and the type stored could be two different keys."""
    r = send(http, srv, "PUT", "/Observation/dup-victim",
             {"resourceType": "Observation", "id": "dup-victim", "status": "final", "code": {"text": "x"}})
    assert r.status_code == 201, describe_response(r)
    body = b'{"resourceType": "Patient", "id": "dup-victim", "resourceType": "Observation", "status": "cancelled"}'
    assert_outcome(send(http, srv, "PUT", "/Patient/dup-victim", body), 400, ("Duplicate JSON key 'resourceType'",))
    assert_outcome(send(http, srv, "PUT", "/Observation/dup-victim", body), 400, ("Duplicate JSON key",))
    assert_outcome(send(http, srv, "GET", "/Patient/dup-victim"), 404)
    r = send(http, srv, "GET", "/Observation/dup-victim")
    assert r.status_code == 200 and r.json()["status"] == "final" and r.json()["meta"]["versionId"] == "1"


def test_numbers_at_the_range_limits_are_accepted(srv, http):
    r = send(http, srv, "POST", "/Patient", b'{"resourceType": "Patient", "multipleBirthInteger": -2147483648, '
                                             b'"telecom": [{"rank": 2147483647}], "photo": [{"size": 0}], '
                                             b'"extension": [{"url": "http://x", "valueDecimal": 1.50e-3}]}')
    assert r.status_code == 201, describe_response(r)
    got = send(http, srv, "GET", f"/Patient/{r.json()['id']}")
    assert b'"multipleBirthInteger":-2147483648' in got.content and b'"valueDecimal":1.50e-3' in got.content


def test_put_id_differs_from_body_id(srv, http):
    r = send(http, srv, "PUT", "/Patient/url-id-111", {"resourceType": "Patient", "id": "body-id-222"})
    assert_outcome(r, 400, ("body-id-222",))
    assert_outcome(send(http, srv, "GET", "/Patient/url-id-111"), 404)
    assert_outcome(send(http, srv, "GET", "/Patient/body-id-222"), 404)


# ---- ids -----------------------------------------------------------------------------------------

LONG_ID = "a" * 65


@pytest.mark.parametrize("bad_id", ["bad_id!", LONG_ID, "a%20b", "%C3%BC", "a:b"])
def test_invalid_id_in_url(srv, http, bad_id):
    mentions = ("bad_id!",) if bad_id == "bad_id!" else ()
    assert_outcome(send(http, srv, "GET", f"/Patient/{bad_id}"), 400, mentions)
    assert_outcome(send(http, srv, "DELETE", f"/Patient/{bad_id}"), 400)
    assert_outcome(send(http, srv, "GET", f"/Patient/{bad_id}/_history"), 400)
    assert_outcome(send(http, srv, "GET", f"/Patient/{bad_id}/_history/1"), 400)


@pytest.mark.parametrize("bad_id", ["bad_id!", LONG_ID])
def test_invalid_id_in_url_and_body(srv, http, bad_id):
    r = send(http, srv, "PUT", f"/Patient/{bad_id}", {"resourceType": "Patient", "id": bad_id})
    assert_outcome(r, 400, ("bad_id!",) if bad_id == "bad_id!" else ())


def test_invalid_id_in_body_only(srv, http):
    r = send(http, srv, "PUT", "/Patient/good-id-1", {"resourceType": "Patient", "id": "bad_id!"})
    assert_outcome(r, 400)
    r = send(http, srv, "PUT", "/Patient/good-id-2", {"resourceType": "Patient", "id": LONG_ID})
    assert_outcome(r, 400)
    r = send(http, srv, "PUT", "/Patient/good-id-3", {"resourceType": "Patient", "id": 12})
    assert_outcome(r, 400)


# ---- media types, sizes ------------------------------------------------------------------------

@pytest.mark.parametrize("ctype", ["text/plain", "application/xml", "application/fhir+xml",
                                   "application/x-www-form-urlencoded"])
def test_unsupported_media_type(srv, http, ctype):
    body = b'{"resourceType": "Patient"}'
    mentions = (ctype,) if ctype in ("text/plain", "application/xml") else ()
    assert_outcome(send(http, srv, "POST", "/Patient", body, content_type=ctype), 415, mentions)
    assert_outcome(send(http, srv, "PUT", "/Patient/mt-1", b'{"resourceType": "Patient", "id": "mt-1"}',
                        content_type=ctype), 415)
    tx = json.dumps({"resourceType": "Bundle", "type": "batch", "entry": []}).encode()
    assert_outcome(send(http, srv, "POST", "", tx, content_type=ctype), 415)
    assert_outcome(send(http, srv, "GET", "/Patient/mt-1"), 404)


def _padded_patient(size: int) -> bytes:
    head = b'{"resourceType": "Patient", "id": "size-probe", "text": {"status": "generated", "div": "<div>'
    tail = b'</div>"}}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


def _raw(srv, method, path, body: bytes, extra=b""):
    req = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\nContent-Type: application/fhir+json\r\n"
           f"Content-Length: {len(body)}\r\nConnection: close\r\n").encode() + extra + b"\r\n" + body
    return raw_exchange(srv.port, req, timeout=15)


def _outcome_of_raw(data: bytes):
    head, _, body = data.partition(b"\r\n\r\n")
    assert re.search(rb"(?im)^content-type:\s*application/fhir\+json", head), head
    oc = json.loads(body)
    assert oc.get("resourceType") == "OperationOutcome", body[:300]
    return check_outcome_body(oc, context=data[:500].decode("utf-8", "replace"))


def test_body_over_limit_413(srv):
    path = f"/datastore/{srv.datastore_id}/r4/Patient/size-probe"
    status, data, ended = _raw(srv, "PUT", path, _padded_patient(MAX_BODY + 1))
    assert status == 413, f"body of {MAX_BODY + 1} bytes with --max-body-bytes {MAX_BODY}: {ended} {data[:300]!r}"
    _outcome_of_raw(data)
    status, data, ended = _raw(srv, "POST", f"/datastore/{srv.datastore_id}/r4/Patient", b"x" * (3 * MAX_BODY))
    assert status == 413, f"{ended} {data[:300]!r}"
    _outcome_of_raw(data)


def test_body_at_limit_accepted(srv, http):
    body = _padded_patient(MAX_BODY)
    assert len(body) == MAX_BODY
    r = send(http, srv, "PUT", "/Patient/size-probe", body)
    assert r.status_code in (200, 201), describe_response(r)


def test_chunked_body_over_limit_413(srv):
    body = _padded_patient(MAX_BODY * 2)
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 8192]), body[i:i + 8192]) for i in range(0, len(body), 8192))
    req = (f"PUT /datastore/{srv.datastore_id}/r4/Patient/size-probe HTTP/1.1\r\nHost: x\r\n"
           f"Content-Type: application/fhir+json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode() \
        + chunked + b"0\r\n\r\n"
    status, data, ended = raw_exchange(srv.port, req, timeout=15)
    assert status == 413, f"{ended} {data[:300]!r}"


def test_chunked_body_accepted(srv):
    body = json.dumps({"resourceType": "Patient", "id": "chunked-1"}).encode()
    req = (f"PUT /datastore/{srv.datastore_id}/r4/Patient/chunked-1 HTTP/1.1\r\nHost: x\r\n"
           f"Content-Type: application/fhir+json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode() \
        + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    status, data, ended = raw_exchange(srv.port, req, timeout=15)
    assert status in (200, 201), f"{ended} {data[:300]!r}"


# ---- routes and methods -------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/nope", "/datastore", f"/datastore/{OTHER_DS}/r4/Patient/x",
                                  f"/datastore/{OTHER_DS}/r4/metadata", "/datastore/not-hex/r4/Patient/x",
                                  "{own}/r5/metadata", "/r4/Patient/x"])
def test_unknown_route_404(srv, http, path):
    path = path.replace("{own}", f"/datastore/{srv.datastore_id}")
    mentions = (OTHER_DS,) if path == f"/datastore/{OTHER_DS}/r4/Patient/x" else ()
    assert_outcome(send(http, srv, "GET", srv.url + path), 404, mentions)


def test_unknown_datastore_on_write_404(srv, http):
    r = send(http, srv, "PUT", f"{srv.url}/datastore/{OTHER_DS}/r4/Patient/x", {"resourceType": "Patient", "id": "x"})
    assert_outcome(r, 404)


@pytest.mark.parametrize("method,path", [("PATCH", "/Patient/x/_history"), ("DELETE", "/metadata"), ("PUT", "/metadata"),
                                         ("POST", "/metadata"), ("PATCH", "/Patient")])
def test_method_not_allowed_405(srv, http, method, path):
    body = b'{"resourceType": "Patient"}' if method in ("PATCH", "PUT", "POST") else None
    assert_outcome(send(http, srv, method, path, body), 405)


@pytest.mark.parametrize("method,path", [("GET", "/Foo/1"), ("DELETE", "/Foo/1"), ("GET", "/Foo/1/_history"),
                                         ("POST", "/Foo"), ("PUT", "/Foo/1"), ("GET", "/patient/1")])
def test_unknown_type_in_url(srv, http, method, path):
    body = b'{"resourceType": "Foo", "id": "1"}' if method in ("POST", "PUT") else None
    assert_outcome(send(http, srv, method, path, body), (400, 404))


@pytest.mark.parametrize("vid", ["abc", "0", "-1", "1.5"])
def test_bad_version_id(srv, http, vid):
    r = send(http, srv, "PUT", "/Patient/vid-1", {"resourceType": "Patient", "id": "vid-1"})
    assert r.status_code in (200, 201)
    assert_outcome(send(http, srv, "GET", f"/Patient/vid-1/_history/{vid}"), (400, 404))


# ---- bundles -------------------------------------------------------------------------------------

def test_transaction_with_one_bad_entry(srv, http):
    tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "id": "tx-bad-1"}, "request": {"method": "PUT", "url": "Patient/tx-bad-1"}},
        {"resource": {"resourceType": "Observation", "id": "tx-bad-2", "status": "final", "code": {"text": "x"},
                      "subject": {"reference": "Patient/tx-bad-1"}},
         "request": {"method": "PUT", "url": "Observation/tx-bad-2"}},
        {"resource": {"resourceType": "Patient", "id": "bad_id!"}, "request": {"method": "PUT", "url": "Patient/bad_id!"}},
    ]}
    assert_outcome(send(http, srv, "POST", "", tx), 400)
    assert_outcome(send(http, srv, "GET", "/Patient/tx-bad-1"), 404)
    assert_outcome(send(http, srv, "GET", "/Observation/tx-bad-2"), 404)


def test_transaction_invalid_json(srv, http):
    assert_outcome(send(http, srv, "POST", "", b'{"resourceType": "Bundle", "type": "transaction", "entry": ['), 400)


def test_batch_with_one_bad_entry(srv, http):
    b = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Patient", "id": "bt-bad-1"}, "request": {"method": "PUT", "url": "Patient/bt-bad-1"}},
        {"resource": {"resourceType": "Patient", "id": "bad_id!"}, "request": {"method": "PUT", "url": "Patient/bad_id!"}},
        {"resource": {"resourceType": "Patient", "id": "bt-bad-3"}, "request": {"method": "PUT", "url": "Patient/bt-bad-3"}},
    ]}
    r = send(http, srv, "POST", "", b)
    assert r.status_code == 200, describe_response(r)
    body = r.json()
    assert body.get("type") == "batch-response"
    st = [e["response"]["status"] for e in body["entry"]]
    assert st[0].startswith("2") and st[2].startswith("2") and st[1].startswith("4"), st
    check_outcome_body(body["entry"][1]["response"].get("outcome") or {}, context=str(body["entry"][1]))
    assert send(http, srv, "GET", "/Patient/bt-bad-1").status_code == 200
    assert send(http, srv, "GET", "/Patient/bt-bad-3").status_code == 200


# ---- malformed HTTP over a raw socket -----------------------------------------------------------

MALFORMED = {
    "garbage-request-line": b"GARBAGE\r\n\r\n",
    "binary-junk": b"\x00\x01\x02\xff\xfe\xfd\r\n\r\n",
    "tls-client-hello": bytes.fromhex("160301020001000200030300") + b"\x00" * 64,
    "bad-version": b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
    "header-without-colon": b"GET /healthz HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n",
    "content-length-not-a-number": b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    "content-length-negative": b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    "two-content-lengths": b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    "bad-chunk-size": b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n",
    "huge-url": b"GET /" + b"a" * 200_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "huge-header": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 200_000 + b"\r\n\r\n",
    "many-headers": b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(20000)) + b"\r\n",
}
OK_REJECTIONS = {400, 404, 405, 411, 413, 414, 431, 501, 505}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_http(srv, case):
    status, data, ended = raw_exchange(srv.port, MALFORMED[case], timeout=10, shutdown_write=True)
    assert ended != "timeout" or data, f"{case}: no answer and connection still open after 10 s"
    assert status is None or status in OK_REJECTIONS, f"{case}: answered {data[:300]!r}"


@pytest.mark.parametrize("case", ["request-line-then-eof", "headers-then-eof", "short-body-then-eof"])
def test_truncated_requests(srv, case):
    p = f"/datastore/{srv.datastore_id}/r4/Patient"
    payload = {
        "request-line-then-eof": b"GET /healthz HTTP/1.1\r\n",
        "headers-then-eof": f"POST {p} HTTP/1.1\r\nHost: x\r\nContent-Type: application/fhir+json\r\n".encode(),
        "short-body-then-eof": f"POST {p} HTTP/1.1\r\nHost: x\r\nContent-Type: application/fhir+json\r\n"
                               f"Content-Length: 100\r\n\r\n{{\"resourceType\":".encode(),
    }[case]
    status, data, ended = raw_exchange(srv.port, payload, timeout=10, shutdown_write=True)
    assert ended != "timeout", f"{case}: connection left open 10 s after the client's EOF"
    assert status is None or status in OK_REJECTIONS, f"{case}: answered {data[:300]!r}"


def test_keep_alive_survives_an_error(srv):
    """An error response on a keep-alive connection does not break the next request on it."""
    with Session() as s:
        r1 = s.fhir("POST", srv.base + "/Patient", b"{not json")
        assert_outcome(r1, 400)
        r2 = s.fhir("POST", srv.base + "/Patient", {"resourceType": "Patient"})
        assert r2.status_code == 201, describe_response(r2)


def test_zz_server_survived_the_barrage(srv):
    with Session() as s:
        r = s.get(srv.url + "/healthz")
        assert r.status_code == 200 and r.json().get("status") == "ok"
        r = s.fhir("POST", srv.base + "/Patient", {"resourceType": "Patient", "active": True})
        assert r.status_code == 201, describe_response(r)
