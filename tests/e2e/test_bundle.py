"""Transactions and batches posted to the FHIR base."""

from __future__ import annotations

import re

import pytest

from fhirlake_helpers import ID_RE, assert_fhir_json, assert_outcome, check_outcome_body, describe_response

MRN = "http://example.org/mrn"
PAT_URN = "urn:uuid:0c3a2a4e-5b8f-4d5e-9b1a-111111111111"
ENC_URN = "urn:uuid:0c3a2a4e-5b8f-4d5e-9b1a-222222222222"
OBS_URN = "urn:uuid:0c3a2a4e-5b8f-4d5e-9b1a-333333333333"


def bundle(kind, *entries):
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def post_entry(resource, full_url=None, if_none_exist=None):
    e = {"resource": resource, "request": {"method": "POST", "url": resource["resourceType"]}}
    if full_url:
        e["fullUrl"] = full_url
    if if_none_exist:
        e["request"]["ifNoneExist"] = if_none_exist
    return e


def put_entry(resource, url=None):
    return {"resource": resource, "request": {"method": "PUT", "url": url or f"{resource['resourceType']}/{resource['id']}"}}


def delete_entry(url):
    return {"request": {"method": "DELETE", "url": url}}


def patient(mrn=None, **kw):
    p = {"resourceType": "Patient", "name": [{"family": "Bundle", "given": ["Test"]}]}
    if mrn:
        p["identifier"] = [{"system": MRN, "value": mrn}]
    p.update(kw)
    return p


def observation(subject_ref, **kw):
    o = {"resourceType": "Observation", "status": "final", "code": {"text": "heart rate"},
         "subject": {"reference": subject_ref}, "valueQuantity": {"value": 61, "unit": "/min"}}
    o.update(kw)
    return o


def submit(http, server, b):
    return http.fhir("POST", server.base, b)


def ok_bundle(r, kind):
    assert r.status_code == 200, describe_response(r)
    assert_fhir_json(r)
    body = r.json()
    assert body.get("resourceType") == "Bundle" and body.get("type") == kind, describe_response(r)
    return body


LOC_RE = re.compile(r"^([A-Za-z]+)/([A-Za-z0-9\-.]{1,64})/_history/(\d+)$")


def parse_location(entry):
    resp = entry.get("response") or {}
    loc = resp.get("location", "")
    m = LOC_RE.match(loc)
    assert m, f"response.location {loc!r} is not Type/id/_history/v (entry {entry})"
    etag = resp.get("etag")
    assert etag == f'W/"{m.group(3)}"', f"response.etag {etag!r} for location {loc}"
    return m.group(1), m.group(2), int(m.group(3))


def status_code(entry):
    st = (entry.get("response") or {}).get("status", "")
    m = re.match(r"^(\d{3})\b", st)
    assert m, f"response.status {st!r} does not start with a status code"
    return int(m.group(1))


def get(http, server, ref):
    return http.get(f"{server.base}/{ref}")


# ---- transaction -----------------------------------------------------------------------------------

def test_transaction_rewrites_urn_uuid(server, http):
    tx = bundle("transaction",
                post_entry(patient("tx-1", id="ignored-client-id"), PAT_URN),
                post_entry({"resourceType": "Encounter", "status": "finished",
                            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                            "subject": {"reference": PAT_URN}}, ENC_URN),
                post_entry(observation(PAT_URN, encounter={"reference": ENC_URN},
                                       performer=[{"reference": "Practitioner/external-1"}, {"reference": PAT_URN}],
                                       extension=[{"url": "http://example.org/focus",
                                                   "valueReference": {"reference": ENC_URN}}]), OBS_URN))
    body = ok_bundle(submit(http, server, tx), "transaction-response")
    entries = body.get("entry") or []
    assert len(entries) == 3, body
    locs = []
    for e, t in zip(entries, ("Patient", "Encounter", "Observation")):
        assert status_code(e) == 201, e
        rt, rid, v = parse_location(e)
        assert rt == t and v == 1, f"entry order must follow the request: {e}"
        assert ID_RE.match(rid)
        locs.append(rid)
    pid, eid, oid = locs
    assert pid != "ignored-client-id"
    r = get(http, server, f"Observation/{oid}")
    assert r.status_code == 200, describe_response(r)
    obs = r.json()
    assert obs["subject"]["reference"] == f"Patient/{pid}"
    assert obs["encounter"]["reference"] == f"Encounter/{eid}"
    assert obs["performer"] == [{"reference": "Practitioner/external-1"}, {"reference": f"Patient/{pid}"}]
    assert obs["extension"][0]["valueReference"]["reference"] == f"Encounter/{eid}"
    assert obs["meta"]["versionId"] == "1"
    enc = get(http, server, f"Encounter/{eid}").json()
    assert enc["subject"]["reference"] == f"Patient/{pid}"
    p = get(http, server, f"Patient/{pid}").json()
    assert p["identifier"] == [{"system": MRN, "value": "tx-1"}]


def test_transaction_put_and_delete_entries(server, http):
    r = http.fhir("PUT", server.base + "/Patient/tx-del-1", patient(id="tx-del-1"))
    assert r.status_code == 201, describe_response(r)
    r = http.fhir("PUT", server.base + "/Patient/tx-upd-1", patient(id="tx-upd-1"))
    assert r.status_code == 201, describe_response(r)
    tx = bundle("transaction",
                put_entry(patient(id="tx-upd-1", gender="male")),
                put_entry(patient(id="tx-new-1")),
                delete_entry("Patient/tx-del-1"))
    body = ok_bundle(submit(http, server, tx), "transaction-response")
    e = body["entry"]
    assert len(e) == 3
    assert status_code(e[0]) == 200 and parse_location(e[0]) == ("Patient", "tx-upd-1", 2)
    assert status_code(e[1]) == 201 and parse_location(e[1]) == ("Patient", "tx-new-1", 1)
    assert status_code(e[2]) in (200, 204), e[2]
    assert get(http, server, "Patient/tx-upd-1").json()["gender"] == "male"
    assert get(http, server, "Patient/tx-new-1").status_code == 200
    assert_outcome(get(http, server, "Patient/tx-del-1"), 410)


def _atomicity_setup(http, server):
    r = http.fhir("PUT", server.base + "/Patient/atom-existing", patient(id="atom-existing", gender="female"))
    assert r.status_code == 201, describe_response(r)
    r = http.fhir("PUT", server.base + "/Patient/atom-victim", patient(id="atom-victim"))
    assert r.status_code == 201, describe_response(r)


BAD_ENTRIES = {
    "unknown-resourceType": (400, {"resource": {"resourceType": "NoSuchType", "id": "x"},
                                   "request": {"method": "POST", "url": "NoSuchType"}}),
    "invalid-id": (400, {"resource": {"resourceType": "Patient", "id": "bad_id!"},
                         "request": {"method": "PUT", "url": "Patient/bad_id!"}}),
    "url-id-differs-from-body-id": (400, {"resource": {"resourceType": "Patient", "id": "body-id-1"},
                                          "request": {"method": "PUT", "url": "Patient/url-id-1"}}),
    "type-differs-from-url": (400, {"resource": {"resourceType": "Observation", "status": "final",
                                                 "code": {"text": "x"}},
                                    "request": {"method": "POST", "url": "Patient"}}),
    "unresolvable-conditional-reference": (412, post_entry(observation(f"Patient?identifier={MRN}|no-such-mrn"))),
    "integer-out-of-range": (400, post_entry({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                                              "subject": {"reference": PAT_URN}, "valueInteger": 2147483648})),
}


@pytest.mark.parametrize("bad", sorted(BAD_ENTRIES))
def test_transaction_is_atomic(server, http, bad):
    _atomicity_setup(http, server)
    status, bad_entry = BAD_ENTRIES[bad]
    tx = bundle("transaction",
                post_entry(patient("atom-mrn-1"), PAT_URN),
                post_entry(observation(PAT_URN), OBS_URN),
                put_entry(patient(id="atom-new-1")),
                put_entry(patient(id="atom-existing", gender="male")),
                delete_entry("Patient/atom-victim"),
                bad_entry)
    r = submit(http, server, tx)
    assert_outcome(r, status)
    # nothing was written
    assert_outcome(get(http, server, "Patient/atom-new-1"), 404)
    cur = get(http, server, "Patient/atom-existing")
    assert cur.status_code == 200 and cur.json()["gender"] == "female" and cur.json()["meta"]["versionId"] == "1"
    v = get(http, server, "Patient/atom-victim")
    assert v.status_code == 200 and v.json()["meta"]["versionId"] == "1", describe_response(v)
    # the POSTed patient was not created: a conditional create on its identifier creates a new one
    probe = bundle("transaction", post_entry(patient("atom-mrn-1"), if_none_exist=f"identifier={MRN}|atom-mrn-1"))
    e = ok_bundle(submit(http, server, probe), "transaction-response")["entry"][0]
    assert status_code(e) == 201, f"a patient with identifier atom-mrn-1 exists after the failed transaction: {e}"


def test_transaction_conditional_create(server, http):
    def tx():
        return bundle("transaction",
                      post_entry(patient("cc-1"), PAT_URN, if_none_exist=f"identifier={MRN}|cc-1"),
                      post_entry(observation(PAT_URN), OBS_URN))
    b1 = ok_bundle(submit(http, server, tx()), "transaction-response")
    assert status_code(b1["entry"][0]) == 201, b1
    _, pid, v = parse_location(b1["entry"][0])
    assert v == 1
    b2 = ok_bundle(submit(http, server, tx()), "transaction-response")
    e = b2["entry"][0]
    assert status_code(e) == 200, f"second conditional create must not create: {e}"
    assert parse_location(e) == ("Patient", pid, 1), e
    # the second Observation refers to the EXISTING patient
    _, oid2, _ = parse_location(b2["entry"][1])
    assert get(http, server, f"Observation/{oid2}").json()["subject"]["reference"] == f"Patient/{pid}"
    p = get(http, server, f"Patient/{pid}").json()
    assert p["meta"]["versionId"] == "1"
    # a different identifier creates another patient
    b3 = ok_bundle(submit(http, server, bundle("transaction", post_entry(
        patient("cc-2"), if_none_exist=f"identifier={MRN}|cc-2"))), "transaction-response")
    assert status_code(b3["entry"][0]) == 201
    assert parse_location(b3["entry"][0])[1] != pid


def test_transaction_conditional_create_referenced_earlier(server, http):
    """An entry that refers to a conditionally created Patient BEFORE that Patient's entry must end up pointing
    at the existing Patient, not at an id that is never created."""
    r = http.fhir("PUT", server.base + "/Patient/cc-early-1", patient("cc-early", id="cc-early-1"))
    assert r.status_code == 201, describe_response(r)
    tx = bundle("transaction",
                post_entry(observation(PAT_URN), OBS_URN),
                post_entry(patient("cc-early"), PAT_URN, if_none_exist=f"identifier={MRN}|cc-early"))
    b = ok_bundle(submit(http, server, tx), "transaction-response")
    assert status_code(b["entry"][0]) == 201 and status_code(b["entry"][1]) == 200, b
    assert parse_location(b["entry"][1]) == ("Patient", "cc-early-1", 1), b
    _, oid, _ = parse_location(b["entry"][0])
    assert get(http, server, f"Observation/{oid}").json()["subject"]["reference"] == "Patient/cc-early-1"
    comp = get(http, server, "Patient/cc-early-1/Observation").json()
    assert [e["resource"]["id"] for e in comp.get("entry", [])] == [oid], comp


def test_batch_get_entry_returns_the_resource(server, http):
    r = http.fhir("PUT", server.base + "/Patient/batch-get-1", patient(id="batch-get-1"))
    assert r.status_code == 201
    b = ok_bundle(submit(http, server, bundle("batch", {"request": {"method": "GET", "url": "Patient/batch-get-1"}})),
                  "batch-response")
    e = b["entry"][0]
    assert status_code(e) == 200, e
    assert e["resource"] == get(http, server, "Patient/batch-get-1").json()


def test_transaction_conditional_reference(server, http):
    r = http.fhir("PUT", server.base + "/Patient/cref-1", patient("cref-mrn", id="cref-1"))
    assert r.status_code == 201, describe_response(r)
    b = ok_bundle(submit(http, server, bundle("transaction", post_entry(
        observation(f"Patient?identifier={MRN}|cref-mrn")))), "transaction-response")
    _, oid, _ = parse_location(b["entry"][0])
    assert get(http, server, f"Observation/{oid}").json()["subject"]["reference"] == "Patient/cref-1"

    # several matches -> the transaction fails and writes nothing
    for pid in ("cref-dup-a", "cref-dup-b"):
        r = http.fhir("PUT", f"{server.base}/Patient/{pid}", patient("cref-dup", id=pid))
        assert r.status_code == 201
    tx = bundle("transaction", put_entry(observation(f"Patient?identifier={MRN}|cref-dup", id="cref-obs-dup")))
    assert_outcome(submit(http, server, tx), 412, ("matches 2 resources",))
    assert_outcome(get(http, server, "Observation/cref-obs-dup"), 404)
    # no match -> fails as well
    tx = bundle("transaction", put_entry(observation(f"Patient?identifier={MRN}|nobody", id="cref-obs-none")))
    assert_outcome(submit(http, server, tx), 412, ("matches no resource",))
    assert_outcome(get(http, server, "Observation/cref-obs-none"), 404)


def test_transaction_second_resource_type_cannot_overwrite_another_resource(server, http):
    """Regression: an entry whose resource carried two resourceType keys passed the check against request.url with
    one and was stored with the other: `PUT Patient/victim` overwrote Observation/victim."""
    r = http.fhir("PUT", server.base + "/Observation/victim", observation("Patient/x", id="victim"))
    assert r.status_code == 201, describe_response(r)
    raw = (b'{"resourceType":"Bundle","type":"transaction","entry":[{"resource":{"resourceType":"Patient",'
           b'"id":"victim","resourceType":"Observation","status":"cancelled","code":{"text":"x"}},'
           b'"request":{"method":"PUT","url":"Patient/victim"}}]}')
    assert_outcome(submit(http, server, raw), 400, ("Duplicate JSON key 'resourceType'", "Bundle.entry[0]"))
    batch = raw.replace(b'"transaction"', b'"batch"')
    e = ok_bundle(submit(http, server, batch), "batch-response")["entry"][0]
    assert status_code(e) == 400, e
    check_outcome_body(e["response"]["outcome"], ("Duplicate JSON key 'resourceType'",))
    v = get(http, server, "Observation/victim")
    assert v.status_code == 200 and v.json()["status"] == "final" and v.json()["meta"]["versionId"] == "1"
    assert_outcome(get(http, server, "Patient/victim"), 404)


DEEP = "[" * 100_000 + "]" * 100_000
UNUSED_MEMBERS = {
    # regression: the members the server skips were not validated at all
    "malformed-meta": ('"meta": {"tag": [tru]}', "Bundle.meta.tag[0]"),
    "malformed-identifier": ('"identifier": {"value": 01}', "Bundle.identifier"),
    "deep-meta": ('"meta": ' + DEEP, "deeper than 64 levels at Bundle.meta"),
    "deep-unknown-member": ('"x": {"y": ' + DEEP + "}", "deeper than 64 levels at Bundle.x.y"),
    "duplicate-type": ('"type": "batch"', "Duplicate JSON key 'type' in Bundle"),
    "malformed-entry-search": (None, '"search": {"mode": "match", "score": 1.2.3}'),
    "malformed-entry-response": (None, '"response": {"status": "200", "etag": nul}'),
    "deep-entry-search": (None, '"search": ' + DEEP),
    "deep-request-member": (None, 'REQUEST"ifModifiedSince": ' + DEEP),
    "duplicate-entry-resource": (None, '"resource": {"resourceType": "Patient", "id": "dup-res"}'),
    "duplicate-request-url": (None, 'REQUEST"url": "Patient/elsewhere"'),
}


@pytest.mark.parametrize("case", sorted(UNUSED_MEMBERS))
def test_bundle_members_the_server_skips_are_validated(server, http, case):
    top, extra = UNUSED_MEMBERS[case]
    request = '"request": {"method": "PUT", "url": "Patient/unused-1"'
    entry = '{"resource": {"resourceType": "Patient", "id": "unused-1"}, '
    if top is None and extra.startswith("REQUEST"):
        entry += request + ", " + extra[len("REQUEST"):] + "}}"
        mention = "Bundle.entry[0].request"
    elif top is None:
        entry += request + "}, " + extra + "}"
        mention = "Bundle.entry[0]"
    else:
        entry += request + "}}"
    raw = '{"resourceType": "Bundle", "type": "transaction", ' + (top + ", " if top else "") + \
          '"entry": [' + entry + "]}"
    if top is not None:
        mention = extra
    for kind in ("transaction", "batch"):
        body = raw.replace('"type": "transaction"', f'"type": "{kind}"', 1).encode()
        assert_outcome(submit(http, server, body), 400, (mention,))
    assert_outcome(get(http, server, "Patient/unused-1"), 404)
    assert_outcome(get(http, server, "Patient/dup-res"), 404)


# ---- batch -------------------------------------------------------------------------------------

def test_batch_entries_are_independent(server, http):
    r = http.fhir("PUT", server.base + "/Patient/batch-existing", patient(id="batch-existing"))
    assert r.status_code == 201
    b = bundle("batch",
               post_entry(patient("batch-1")),
               {"resource": {"resourceType": "NoSuchType"}, "request": {"method": "POST", "url": "NoSuchType"}},
               put_entry(patient(id="batch-put-1")),
               {"resource": {"resourceType": "Patient", "id": "bad_id!"}, "request": {"method": "PUT", "url": "Patient/bad_id!"}},
               put_entry(patient(id="batch-existing", gender="male")),
               {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"}},
                "request": {"method": "POST", "url": "Patient"}},
               delete_entry("Patient/batch-existing-not"))
    body = ok_bundle(submit(http, server, b), "batch-response")
    e = body.get("entry") or []
    assert len(e) == 7, body
    assert status_code(e[0]) == 201
    _, pid, _ = parse_location(e[0])
    for i in (1, 3, 5):
        # entry 1 names an unknown type in its URL too, which may be routed as 404 (like GET /Foo/1)
        assert status_code(e[i]) in ((400, 404) if i == 1 else (400,)), f"entry {i}: {e[i]}"
        oc = (e[i].get("response") or {}).get("outcome")
        assert isinstance(oc, dict) and oc.get("resourceType") == "OperationOutcome", f"entry {i} lacks outcome: {e[i]}"
        check_outcome_body(oc, context=str(e[i]))
    assert status_code(e[2]) == 201 and parse_location(e[2]) == ("Patient", "batch-put-1", 1)
    assert status_code(e[4]) == 200 and parse_location(e[4]) == ("Patient", "batch-existing", 2)
    assert status_code(e[6]) == 404, e[6]
    assert get(http, server, f"Patient/{pid}").status_code == 200
    assert get(http, server, "Patient/batch-put-1").status_code == 200
    assert get(http, server, "Patient/batch-existing").json()["gender"] == "male"


def test_batch_with_only_failures_is_still_200(server, http):
    b = bundle("batch", {"resource": {"resourceType": "NoSuchType"}, "request": {"method": "POST", "url": "NoSuchType"}})
    body = ok_bundle(submit(http, server, b), "batch-response")
    assert len(body["entry"]) == 1 and status_code(body["entry"][0]) in (400, 404), body


@pytest.mark.parametrize("payload", [
    {"resourceType": "Patient"},
    {"resourceType": "Bundle", "type": "collection", "entry": []},
    {"resourceType": "Bundle", "entry": []},
    {"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": {"resourceType": "Patient"}}]},
])
def test_base_post_rejects_non_transaction(server, http, payload):
    """Not a transaction/batch Bundle (or an entry without request) -> a client error with an
    OperationOutcome (the spec names no exact code here)."""
    r = submit(http, server, payload)
    assert 400 <= r.status_code < 500, describe_response(r)
    assert_outcome(r, r.status_code)


def test_concurrent_conditional_creates_make_one_resource(server):
    """Several clients race the same conditional create: exactly one creates, the others find it."""
    import threading
    from fhirlake_helpers import Session
    results, lock = [], threading.Lock()
    barrier = threading.Barrier(4)

    def worker():
        with Session() as s:
            barrier.wait(10)
            for _ in range(5):
                r = s.fhir("POST", server.base, bundle("transaction", post_entry(
                    patient("race-mrn"), PAT_URN, if_none_exist=f"identifier={MRN}|race-mrn")))
                with lock:
                    results.append(r)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 20
    created, found = [], []
    for r in results:
        e = ok_bundle(r, "transaction-response")["entry"][0]
        (created if status_code(e) == 201 else found).append(parse_location(e)[1])
    assert len(created) == 1, f"{len(created)} conditional creates created a resource: {created}"
    assert set(found) == set(created), f"the others must point at the one created: {set(found)}"
