"""The REST interactions that rest on search: conditional update / delete / create with search criteria, PATCH
(JSON Patch and FHIRPath Patch) with If-Match, system and type history, and Patient/{id}/$everything. Every
expectation is written out here from the requests the test itself makes."""

from __future__ import annotations

import subprocess

import pytest

from fhirlake_helpers import Session, assert_outcome, describe_response

FHIR = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
JSON_PATCH = {"Content-Type": "application/json-patch+json", "Accept": "application/fhir+json"}


@pytest.fixture()
def srv(server_factory):
    return server_factory()


@pytest.fixture()
def http():
    with Session() as s:
        yield s


def patient(family, given=None, **extra):
    name = {"family": family}
    if given:
        name["given"] = [given]
    return {"resourceType": "Patient", "name": [name], **extra}


def ids_of(http, url):
    r = http.get(url)
    assert r.status_code == 200, describe_response(r)
    return sorted(e["resource"]["id"] for e in r.json().get("entry", []) if e["search"]["mode"] == "match")


def test_conditional_update_zero_one_many(srv, http):
    b = srv.base
    r = http.put(f"{b}/Patient?family=Quill", json=patient("Quill", "Ann"), headers=FHIR)
    assert r.status_code == 201, describe_response(r)
    first = r.json()["id"]
    r = http.put(f"{b}/Patient?family=Quill", json=patient("Quill", "Anna", active=True), headers=FHIR)
    assert r.status_code == 200, describe_response(r)
    assert r.json()["id"] == first and r.json()["meta"]["versionId"] == "2" and r.json()["active"] is True
    assert ids_of(http, f"{b}/Patient?given=anna") == [first]
    assert ids_of(http, f"{b}/Patient?given:exact=Ann") == []  # the old version's index rows are gone
    r = http.post(f"{b}/Patient", json=patient("Quill"), headers=FHIR)
    assert r.status_code == 201
    second = r.json()["id"]
    r = http.put(f"{b}/Patient?family=Quill", json=patient("Quill", "Zed"), headers=FHIR)
    assert_outcome(r, 412, ("match 2",))
    assert ids_of(http, f"{b}/Patient?family=quill") == sorted([first, second])
    # an id in the body that differs from the one match
    r = http.put(f"{b}/Patient?given=anna", json={**patient("Quill"), "id": "someone-else"}, headers=FHIR)
    assert_outcome(r, 400, ("someone-else",))
    # bad criteria name the parameter
    assert_outcome(http.put(f"{b}/Patient?nosuch=1", json=patient("X"), headers=FHIR), 400, ("nosuch",))
    assert_outcome(http.put(f"{b}/Patient?birthdate=notadate", json=patient("X"), headers=FHIR), 400, ("birthdate",))


def test_conditional_delete_and_create(srv, http):
    b = srv.base
    a = http.post(f"{b}/Patient", json=patient("Rook", "Amy"), headers=FHIR).json()["id"]
    c = http.post(f"{b}/Patient", json=patient("Rook", "Cal"), headers=FHIR).json()["id"]
    assert_outcome(http.delete(f"{b}/Patient?family=rook"), 412, ("match 2",))
    r = http.delete(f"{b}/Patient?given=amy")
    assert r.status_code == 200, describe_response(r)
    assert a in r.json()["issue"][0]["diagnostics"]
    assert http.get(f"{b}/Patient/{a}").status_code == 410
    assert ids_of(http, f"{b}/Patient?family=rook") == [c]
    r = http.delete(f"{b}/Patient?given=nobody")
    assert r.status_code == 200 and "nothing was deleted" in r.json()["issue"][0]["diagnostics"]
    # conditional create with search criteria: one match returns it, none creates
    r = http.post(f"{b}/Patient", json=patient("Rook", "Cal"), headers={**FHIR, "If-None-Exist": "given=cal"})
    assert r.status_code == 200 and r.json()["id"] == c
    r = http.post(f"{b}/Patient", json=patient("Rook", "Dee"), headers={**FHIR, "If-None-Exist": "given=dee"})
    assert r.status_code == 201 and r.json()["id"] not in (a, c)
    assert_outcome(http.post(f"{b}/Patient", json=patient("Rook"), headers={**FHIR, "If-None-Exist": "family=rook"}),
                   412)


def test_patch_json_patch_fhirpath_patch_and_if_match(srv, http):
    b = srv.base
    r = http.put(f"{b}/Patient/pp-1", json={**patient("Pike", "Ida"), "id": "pp-1", "active": True}, headers=FHIR)
    assert r.status_code == 201
    r = http.patch(f"{b}/Patient/pp-1", data='[{"op":"replace","path":"/active","value":false}]',
                   headers={**JSON_PATCH, "If-Match": 'W/"1"'})
    assert r.status_code == 200, describe_response(r)
    assert r.json()["active"] is False and r.json()["meta"]["versionId"] == "2"
    assert r.headers["ETag"] == 'W/"2"'
    # a stale If-Match
    r = http.patch(f"{b}/Patient/pp-1", data='[{"op":"replace","path":"/active","value":true}]',
                   headers={**JSON_PATCH, "If-Match": 'W/"1"'})
    assert_outcome(r, 412, ("current version is 2",))
    params = {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
        {"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Patient"},
        {"name": "name", "valueString": "birthDate"}, {"name": "value", "valueDate": "1971-02-03"}]}]}
    r = http.patch(f"{b}/Patient/pp-1", json=params, headers=FHIR)
    assert r.status_code == 200, describe_response(r)
    assert r.json()["birthDate"] == "1971-02-03" and r.json()["meta"]["versionId"] == "3"
    assert ids_of(http, f"{b}/Patient?birthdate=1971-02") == ["pp-1"]  # the patch was indexed
    # bad patches: 400 with a diagnostics line, nothing written
    for body, ct in [("not json", JSON_PATCH), ('{"op":"add"}', JSON_PATCH),
                     ('[{"op":"frobnicate","path":"/a"}]', JSON_PATCH),
                     ('[{"op":"replace","path":"/id","value":"other"}]', JSON_PATCH),
                     ('[{"op":"test","path":"/active","value":true}]', JSON_PATCH),  # active is false
                     ('[{"op":"add","path":"/name/0/given","value":{"not":"a string list"}},'
                      '{"op":"add","path":"/multipleBirthInteger","value":1.5}]', JSON_PATCH),
                     ('{"resourceType":"Patient"}', FHIR)]:
        r = http.patch(f"{b}/Patient/pp-1", data=body, headers=ct)
        assert_outcome(r, (400, 422))
    assert http.get(f"{b}/Patient/pp-1").json()["meta"]["versionId"] == "3"
    assert_outcome(http.patch(f"{b}/Patient/pp-1", data="[]", headers={"Content-Type": "text/plain"}), 415)
    assert_outcome(http.patch(f"{b}/Patient/missing-1", data="[]", headers=JSON_PATCH), 404)


def test_system_and_type_history_paged(srv, http):
    b = srv.base
    http.put(f"{b}/Patient/h-1", json={**patient("Hale"), "id": "h-1"}, headers=FHIR)
    http.put(f"{b}/Patient/h-1", json={**patient("Hale", "Two"), "id": "h-1"}, headers=FHIR)
    http.put(f"{b}/Organization/o-1", json={"resourceType": "Organization", "id": "o-1", "name": "Org"}, headers=FHIR)
    http.delete(f"{b}/Patient/h-1")
    expected_all = [("Patient", "h-1", "DELETE"), ("Organization", "o-1", "PUT"), ("Patient", "h-1", "PUT"),
                    ("Patient", "h-1", "PUT")]
    got, url, totals = [], f"{b}/_history?_count=1", set()
    while url:
        r = http.get(url)
        assert r.status_code == 200, describe_response(r)
        body = r.json()
        assert body["type"] == "history"
        totals.add(body.get("total"))
        got += [(e["fullUrl"].split("/")[-2], e["fullUrl"].split("/")[-1], e["request"]["method"])
                for e in body["entry"]]
        url = next((l["url"] for l in body["link"] if l["relation"] == "next"), None)
    assert got == expected_all
    assert totals == {4}
    r = http.get(f"{b}/Patient/_history")
    assert [e["request"]["method"] for e in r.json()["entry"]] == ["DELETE", "PUT", "PUT"]
    assert r.json()["total"] == 3
    assert http.get(f"{b}/Patient/_history?_since=2999-01-01T00:00:00Z").json()["total"] == 0
    assert_outcome(http.get(f"{b}/_history?_since=yesterday"), 400, ("_since",))
    assert_outcome(http.get(f"{b}/_history?_count=0"), 400, ("_count",))
    assert_outcome(http.get(f"{b}/_history?page=garbage"), 400)
    assert_outcome(http.get(f"{b}/_history?foo=1"), 400, ("foo",))


def test_everything_compartment_plus_referenced(srv, http):
    b = srv.base
    http.put(f"{b}/Organization/ev-org", json={"resourceType": "Organization", "id": "ev-org", "name": "O"},
             headers=FHIR)
    http.put(f"{b}/Patient/ev-p", json={**patient("Eve"), "id": "ev-p",
                                         "managingOrganization": {"reference": "Organization/ev-org"}}, headers=FHIR)
    for i in range(3):
        http.put(f"{b}/Observation/ev-o{i}", json={"resourceType": "Observation", "id": f"ev-o{i}", "status": "final",
                                                   "code": {"text": "x"}, "subject": {"reference": "Patient/ev-p"}},
                 headers=FHIR)
    http.put(f"{b}/Observation/other", json={"resourceType": "Observation", "id": "other", "status": "final",
                                             "code": {"text": "x"}}, headers=FHIR)
    matches, includes, url = [], [], f"{b}/Patient/ev-p/$everything?_count=2"
    while url:
        r = http.get(url)
        assert r.status_code == 200, describe_response(r)
        for e in r.json()["entry"]:
            (matches if e["search"]["mode"] == "match" else includes).append("/".join(e["fullUrl"].split("/")[-2:]))
        assert r.json()["total"] == 4
        url = next((l["url"] for l in r.json()["link"] if l["relation"] == "next"), None)
    assert sorted(matches) == ["Observation/ev-o0", "Observation/ev-o1", "Observation/ev-o2", "Patient/ev-p"]
    assert includes == ["Organization/ev-org"]
    assert_outcome(http.get(f"{b}/Patient/nobody/$everything"), 404)
    assert_outcome(http.get(f"{b}/Patient/ev-p/$everything?_type=Observation"), 400, ("_type",))


def test_reindex_command_rebuilds_the_index(server_factory, fhirlake_bin, http):
    srv = server_factory()
    b = srv.base
    for i in range(5):
        r = http.put(f"{b}/Patient/ri-{i}", json={**patient(f"Reindex{i}"), "id": f"ri-{i}"}, headers=FHIR)
        assert r.status_code == 201
    http.delete(f"{b}/Patient/ri-4")
    srv.stop()
    out = subprocess.run([str(fhirlake_bin), "reindex", "--data-dir", str(srv.data_dir)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"reindexed 4 resources of datastore {srv.datastore_id}" in out.stdout  # the tombstone has no rows
    bad = subprocess.run([str(fhirlake_bin), "reindex", "--data-dir", str(srv.data_dir), "--datastore", "0" * 32],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "is not in" in bad.stderr
    srv.start()
    assert ids_of(http, f"{srv.base}/Patient?family=reindex") == ["ri-0", "ri-1", "ri-2", "ri-3"]
    assert ids_of(http, f"{srv.base}/Patient?family:exact=Reindex2") == ["ri-2"]
