"""Export kick-off, describe and cancel with bad input: each answer is checked for its status code and an
OperationOutcome whose diagnostics name the offending parameter or field."""

from __future__ import annotations

import collections
import json
import urllib.parse

import pytest

from export_helpers import (BUCKET, FHIR_JSON, ServerPool, assert_outcome, export_body, export_url, kickoff,
                            start_export, utc_now_instant, verify_export, wait_done)


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    """A server on a fresh data dir holding one Patient and one Group."""
    root = tmp_path_factory.mktemp("export-bad-input")
    pool = ServerPool(root)
    s = pool.start(root / "data")
    for path, body in (("Patient/bad-input-pt", {"resourceType": "Patient", "id": "bad-input-pt"}),
                       ("Group/bad-input-group", {"resourceType": "Group", "id": "bad-input-group", "type": "person",
                                                  "actual": True,
                                                  "member": [{"entity": {"reference": "Patient/bad-input-pt"}}]})):
        r = s.sess.put(f"{s.base}/{path}", data=json.dumps(body), headers={"Content-Type": FHIR_JSON})
        assert r.status_code == 201, r.text
    yield s
    errors = pool.stop_all()
    assert not errors, errors


def body_without(*path):
    b = export_body()
    obj = b
    for k in path[:-1]:
        obj = obj[k]
    del obj[path[-1]]
    return b


def body_with_s3(**s3):
    b = export_body()
    b["OutputDataConfig"]["S3Configuration"].update(s3)
    return b


# ---------------------------------------------------------------------------------------------- headers

def test_missing_prefer(srv):
    r = kickoff(srv.sess, srv.base, headers={"Content-Type": FHIR_JSON})
    assert_outcome(r, 400, ["Prefer", "respond-async"])


@pytest.mark.parametrize("ct", ["text/plain", "application/xml", "application/x-www-form-urlencoded", None])
def test_wrong_content_type(srv, ct):
    h = {"Prefer": "respond-async"}
    if ct:
        h["Content-Type"] = ct
    r = kickoff(srv.sess, srv.base, headers=h)
    assert_outcome(r, 415, ["Content-Type"])


def test_json_content_type_accepted(srv):
    h = {"Prefer": "respond-async", "Content-Type": "application/json; charset=utf-8"}
    r = kickoff(srv.sess, srv.base, query="_type=Patient", headers=h)
    assert r.status_code == 202, r.text
    wait_done(srv.sess, srv.base, r.json()["jobId"], timeout=30)


# ---------------------------------------------------------------------------------------------- body

@pytest.mark.parametrize("raw,mentions", [
    ("{not json", ["JSON"]),
    ('{"DataAccessRoleArn": "arn:aws:iam::444455556666:role/x",', ["JSON"]),
    ("[]", ["object"]),
    ('"a string"', ["object"]),
    ("", ["body"]),
])
def test_invalid_body(srv, raw, mentions):
    r = kickoff(srv.sess, srv.base, raw_body=raw)
    assert_outcome(r, 400, mentions)


def _bad_bodies():
    k = "OutputDataConfig"
    s3 = "S3Configuration"
    cases = [
        ("unknown-field", dict(export_body(), JobNmae="x"), ["JobNmae"]),
        ("unknown-odc-field", None, ["OutputDataConfig", "Foo"]),
        ("unknown-s3-field", None, ["S3Configuration", "Bucket"]),
        ("missing-role", body_without("DataAccessRoleArn"), ["DataAccessRoleArn"]),
        ("role-not-string", dict(export_body(), DataAccessRoleArn=123), ["DataAccessRoleArn"]),
        ("role-bad-account", dict(export_body(), DataAccessRoleArn="arn:aws:iam::123:role/x"), ["DataAccessRoleArn"]),
        ("role-not-role", dict(export_body(), DataAccessRoleArn="arn:aws:iam::444455556666:user/x"),
         ["DataAccessRoleArn"]),
        ("role-garbage", dict(export_body(), DataAccessRoleArn="my-role"), ["DataAccessRoleArn"]),
        ("missing-odc", body_without(k), ["OutputDataConfig"]),
        ("odc-not-object", dict(export_body(), OutputDataConfig="s3://b/p"), ["OutputDataConfig"]),
        ("missing-s3config", body_without(k, s3), ["S3Configuration"]),
        ("missing-s3uri", body_without(k, s3, "S3Uri"), ["S3Uri"]),
        ("missing-kms", body_without(k, s3, "KmsKeyId"), ["KmsKeyId"]),
        ("s3uri-https", body_with_s3(S3Uri="https://bucket/prefix"), ["S3Uri"]),
        ("s3uri-no-scheme", body_with_s3(S3Uri="bucket/prefix"), ["S3Uri"]),
        ("s3uri-uppercase-bucket", body_with_s3(S3Uri="s3://MyBucket/prefix"), ["S3Uri", "MyBucket"]),
        ("s3uri-short-bucket", body_with_s3(S3Uri="s3://ab/prefix"), ["S3Uri", "ab"]),
        ("s3uri-empty-bucket", body_with_s3(S3Uri="s3:///prefix"), ["S3Uri"]),
        ("s3uri-underscore-bucket", body_with_s3(S3Uri="s3://my_bucket"), ["S3Uri", "my_bucket"]),
        ("s3uri-dotdot", body_with_s3(S3Uri="s3://bucket/a/../b"), ["S3Uri", ".."]),
        ("s3uri-dotdot-first", body_with_s3(S3Uri="s3://bucket/../b"), ["S3Uri", ".."]),
        ("s3uri-empty-segment", body_with_s3(S3Uri="s3://bucket/a//b"), ["S3Uri"]),
        ("s3uri-not-string", body_with_s3(S3Uri=["s3://bucket/p"]), ["S3Uri"]),
        ("s3uri-dot-segment", body_with_s3(S3Uri="s3://bucket/a/./b"), ["S3Uri"]),
        ("s3uri-backslash", body_with_s3(S3Uri="s3://bucket/a\\b"), ["S3Uri"]),
        ("s3uri-ip-bucket", body_with_s3(S3Uri="s3://192.168.1.1/p"), ["S3Uri", "192.168.1.1"]),
        ("s3uri-hyphen-bucket", body_with_s3(S3Uri="s3://-bucket/p"), ["S3Uri", "-bucket"]),
        ("s3uri-64-char-bucket", body_with_s3(S3Uri="s3://" + "b" * 64 + "/p"), ["S3Uri"]),
        ("s3uri-too-long", body_with_s3(S3Uri="s3://bucket/" + "a" * 1100), ["S3Uri"]),
        ("kms-401", body_with_s3(KmsKeyId="k" * 401), ["KmsKeyId"]),
        ("kms-invalid", body_with_s3(KmsKeyId="not a key!"), ["KmsKeyId"]),
        ("kms-empty", body_with_s3(KmsKeyId=""), ["KmsKeyId"]),
        ("jobname-65", export_body(job_name="j" * 65), ["JobName"]),
        ("jobname-empty", export_body(job_name=""), ["JobName"]),
        ("jobname-bad-char", export_body(job_name="bad*name"), ["JobName"]),
        ("jobname-not-string", dict(export_body(), JobName=5), ["JobName"]),
    ]
    b = export_body()
    b[k]["Foo"] = 1
    cases[1] = (cases[1][0], b, cases[1][2])
    b = export_body()
    b[k][s3]["Bucket"] = "x"
    cases[2] = (cases[2][0], b, cases[2][2])
    return cases


@pytest.mark.parametrize("name,body,mentions", _bad_bodies(), ids=[c[0] for c in _bad_bodies()])
def test_bad_body_field(srv, name, body, mentions):
    for level, gid in (("system", None), ("patient", None), ("group", "bad-input-group")):
        r = kickoff(srv.sess, srv.base, level, gid, body=body)
        assert_outcome(r, 400, mentions)


@pytest.mark.parametrize("body", [
    export_body(job_name="j" * 64),
    export_body(job_name="Name with spaces_.:/=+-%@ and ünïcode"),
    body_with_s3(KmsKeyId="k" * 400),
    body_with_s3(KmsKeyId="1234abcd-12ab-34cd-56ef-1234567890ab"),
    body_with_s3(KmsKeyId="alias/my-key"),
    body_with_s3(KmsKeyId="arn:aws:kms:us-east-1:444455556666:alias/my-key"),
], ids=["jobname-64", "jobname-chars", "kms-400", "kms-id", "kms-alias", "kms-alias-arn"])
def test_accepted_body_limits(srv, body):
    r = kickoff(srv.sess, srv.base, query="_type=Patient", body=body)
    assert r.status_code == 202, r.text
    d = wait_done(srv.sess, srv.base, r.json()["jobId"], timeout=30)
    if "JobName" in body:
        assert d["exportJobProperties"]["jobName"] == body["JobName"]
    assert d["exportJobProperties"]["outputDataConfig"]["s3Configuration"]["kmsKeyId"] == \
        body["OutputDataConfig"]["S3Configuration"]["KmsKeyId"]


# ---------------------------------------------------------------------------------------------- query

@pytest.mark.parametrize("fmt", ["application/xml", "json", "application/fhir+json", "text/csv"])
def test_bad_output_format(srv, fmt):
    r = kickoff(srv.sess, srv.base, query="_outputFormat=" + urllib.parse.quote(fmt, safe=""))
    assert_outcome(r, 400, ["_outputFormat"])


@pytest.mark.parametrize("fmt", ["application/fhir+ndjson", "application/ndjson", "ndjson"])
def test_accepted_output_formats(srv, fmt):
    q = "_outputFormat=" + urllib.parse.quote(fmt, safe="") + "&_type=Patient"
    job = start_export(srv.sess, srv.base, "system", query=q)
    d = wait_done(srv.sess, srv.base, job, timeout=30)
    verify_export(srv, job, collections.Counter({("Patient", "bad-input-pt", 1): 1}), d=d)


@pytest.mark.parametrize("level,query,mentions", [
    ("system", "_type=Foo", ["_type", "Foo"]),
    ("system", "_type=Patient,Foo", ["_type", "Foo"]),
    ("system", "_type=patient", ["_type", "patient"]),
    ("system", "_type=", ["_type"]),
    ("system", "_type=Patient,", ["_type"]),
    ("patient", "_type=CodeSystem", ["_type", "CodeSystem"]),
    ("patient", "_type=Patient,%20ValueSet", ["_type", "ValueSet"]),
    ("group", "_type=CodeSystem", ["_type", "CodeSystem"]),
    ("system", "_since=2024-13-01T00:00:00Z", ["_since"]),
    ("system", "_since=yesterday", ["_since"]),
    ("system", "_since=2024-05-09", ["_since"]),
    ("system", "_since=2024-05-09T00:00:00", ["_since"]),
    ("patient", "_since=2024-02-30T00:00:00Z", ["_since"]),
    ("system", "_since=2024-05-09T00:00:00Z&_since=2024-05-10T00:00:00Z", ["_since"]),
    ("system", "_foo=1", ["_foo"]),
    ("system", "_typ=Patient", ["_typ"]),
    ("patient", "patient=Patient/bad-input-pt", ["patient"]),
    ("group", "_elements=a-b", ["_elements"]),
    ("group", "_typeFilter=Observation", ["_typeFilter"]),
    ("system", "_typeFilter=Observation%3F_sort%3Ddate", ["_typeFilter", "_sort"]),
    ("system", "_outputFormat=ndjson&_outputFormat=ndjson", ["_outputFormat"]),
])
def test_bad_query(srv, level, query, mentions):
    r = kickoff(srv.sess, srv.base, level, "bad-input-group" if level == "group" else None, query=query)
    assert_outcome(r, 400, mentions)


@pytest.mark.parametrize("level", ["system", "patient", "group"])
def test_since_in_the_future(srv, level):
    since = utc_now_instant(offset_s=3600)
    r = kickoff(srv.sess, srv.base, level, "bad-input-group" if level == "group" else None,
                query="_since=" + urllib.parse.quote(since, safe=""))
    assert_outcome(r, 400, ["_since", "future"])


def test_type_patient_level_accepts_referenced_types(srv):
    for level, gid in (("patient", None), ("group", "bad-input-group")):
        job = start_export(srv.sess, srv.base, level, gid, query="_type=Practitioner,Organization,Location,Medication")
        wait_done(srv.sess, srv.base, job, timeout=30)


# ---------------------------------------------------------------------------------------------- unknown ids

def test_unknown_datastore(srv):
    bad = srv.base.replace(srv.datastore_id, "0" * 32)
    for level, gid in (("system", None), ("patient", None), ("group", "bad-input-group")):
        r = kickoff(srv.sess, bad, level, gid)
        assert_outcome(r, 404, ["0" * 32])
    assert_outcome(srv.sess.get(f"{bad}/export/{'1' * 32}"), 404)
    assert_outcome(srv.sess.delete(f"{bad}/export/{'1' * 32}"), 404)


def test_unknown_group(srv):
    r = kickoff(srv.sess, srv.base, "group", "no-such-group")
    assert_outcome(r, 404, ["no-such-group"], code="not-found")


def test_deleted_group(srv):
    g = {"resourceType": "Group", "id": "deleted-group", "type": "person", "actual": True}
    assert srv.sess.put(f"{srv.base}/Group/deleted-group", data=json.dumps(g),
                        headers={"Content-Type": FHIR_JSON}).status_code == 201
    assert srv.sess.delete(f"{srv.base}/Group/deleted-group").status_code in (200, 204)
    assert_outcome(kickoff(srv.sess, srv.base, "group", "deleted-group"), 404, ["deleted-group"])


@pytest.mark.parametrize("job", ["0123456789abcdef0123456789abcdef", "nope"])
def test_unknown_job(srv, job):
    assert_outcome(srv.sess.get(f"{srv.base}/export/{job}"), 404, [job], code="not-found")
    assert_outcome(srv.sess.delete(f"{srv.base}/export/{job}"), 404, [job], code="not-found")


# ---------------------------------------------------------------------------------------------- S3Uri forms

@pytest.mark.parametrize("uri,normal", [
    (f"s3://{BUCKET}/trailing/slash/", f"s3://{BUCKET}/trailing/slash"),
    ("s3://bucket-root-only/", "s3://bucket-root-only"),
    ("s3://bucket-no-prefix", "s3://bucket-no-prefix"),
])
def test_s3uri_trailing_slash_normalised(srv, uri, normal):
    job = start_export(srv.sess, srv.base, "system", query="_type=Patient", body=export_body(s3uri=uri))
    d = wait_done(srv.sess, srv.base, job, timeout=30)
    assert d["exportJobProperties"]["outputDataConfig"]["s3Configuration"]["s3Uri"] == normal
    res = verify_export(srv, job, collections.Counter({("Patient", "bad-input-pt", 1): 1}), d=d)
    bucket, _, prefix = normal[5:].partition("/")
    folder = f"{srv.datastore_id}-FHIR_EXPORT-{job}"
    want_dir = srv.s3_root() / bucket / prefix / folder if prefix else srv.s3_root() / bucket / folder
    assert res.job_dir == want_dir and want_dir.is_dir()
    key = f"{prefix + '/' if prefix else ''}{folder}/Patient/Patient-1.ndjson"
    assert [o["url"] for o in d["output"]] == [f"s3://{bucket}/{key}"]
    assert "//" not in d["output"][0]["url"][5:]


# ---------------------------------------------------------------------------------------------- more

def test_repeated_type_parameters_add_up(srv):
    job = start_export(srv.sess, srv.base, "system", query="_type=Patient&_type=Group,%20Patient")
    d = wait_done(srv.sess, srv.base, job, timeout=30)
    verify_export(srv, job, collections.Counter({("Patient", "bad-input-pt", 1): 1,
                                                 ("Group", "bad-input-group", 1): 1}), d=d)


def test_unwritable_bucket(srv):
    srv.s3_root().mkdir(parents=True, exist_ok=True)
    blocker = srv.s3_root() / "not-a-directory-bucket"
    blocker.write_text("a file where the bucket folder would be\n")
    r = kickoff(srv.sess, srv.base, body=export_body(s3uri="s3://not-a-directory-bucket/prefix"))
    assert_outcome(r, 400, ["not-a-directory-bucket"])
    assert blocker.read_text() == "a file where the bucket folder would be\n"


@pytest.mark.parametrize("name,value", [
    ("Prefer", "respond-async, wait=10"),
    ("Prefer", "wait=10, respond-async"),
    ("prefer", "respond-async"),
    ("Prefer", "Respond-Async"),  # RFC 7240: preference names compare case-insensitively
])
def test_prefer_header_forms(srv, name, value):
    r = kickoff(srv.sess, srv.base, query="_type=Patient", headers={name: value, "Content-Type": FHIR_JSON})
    assert r.status_code == 202, r.text
    wait_done(srv.sess, srv.base, r.json()["jobId"], timeout=30)


@pytest.mark.parametrize("ct", ["application/fhir+json; fhirVersion=4.0", "Application/FHIR+JSON",
                                "application/json"])
def test_content_type_forms(srv, ct):
    r = kickoff(srv.sess, srv.base, query="_type=Patient", headers={"Prefer": "respond-async", "Content-Type": ct})
    assert r.status_code == 202, r.text
    wait_done(srv.sess, srv.base, r.json()["jobId"], timeout=30)


def test_type_with_encoded_comma(srv):
    job = start_export(srv.sess, srv.base, "system", query="_type=Patient%2CGroup")
    d = wait_done(srv.sess, srv.base, job, timeout=30)
    verify_export(srv, job, collections.Counter({("Patient", "bad-input-pt", 1): 1,
                                                 ("Group", "bad-input-group", 1): 1}), d=d)
