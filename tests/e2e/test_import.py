"""The control plane's import jobs (StartFHIRImportJob, DescribeFHIRImportJob, ListFHIRImportJobs) through boto3
against the running server, reading from the local bucket mapping ({data_dir}/s3/{bucket}/...; the same jobs against
Ceph RGW are in test_export_s3.py): ndjson objects, gzipped or not, and Bundle files under a prefix are loaded into
the datastore; the report (SUCCESS/, FAILURE/ line by line, manifest.json) is checked line by line; a job killed with
kill -9 resumes without losing a resource or writing one twice. Expected sets are computed here from the input files.
"""

from __future__ import annotations

import collections
import gzip
import json
import shutil
import time
from pathlib import Path

import botocore
import pytest

from export_helpers import KMS_KEY, ROLE_ARN, sample_data, servers  # noqa: F401  (fixture)
from test_control_plane import client, raw

FHIR_JSON = "application/fhir+json"
TERMINAL = ("COMPLETED", "COMPLETED_WITH_ERRORS", "FAILED")


def wait_import(hl, ds, job_id, timeout=180):
    deadline = time.time() + timeout
    while True:
        p = hl.describe_fhir_import_job(DatastoreId=ds, JobId=job_id)["ImportJobProperties"]
        if p["JobStatus"] in TERMINAL:
            return p
        assert time.time() < deadline, p
        time.sleep(0.1)


def start(hl, ds, src, out="s3://import-reports/runs", **kw):
    return hl.start_fhir_import_job(DatastoreId=ds, InputDataConfig={"S3Uri": src}, DataAccessRoleArn=ROLE_ARN,
                                    JobOutputDataConfig={"S3Configuration": {"S3Uri": out, "KmsKeyId": KMS_KEY}},
                                    **kw)


def report_dir(data_dir: Path, ds, job_id, out_bucket="import-reports", out_prefix="runs") -> Path:
    return data_dir / "s3" / out_bucket / out_prefix / f"{ds}-FHIR_IMPORT-{job_id}"


def lines(path: Path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def read_all(srv, type_):
    out = {}
    url = f"{srv.base}/{type_}?_count=1000"
    while url:
        page = srv.sess.get(url).json()
        for e in page.get("entry", []):
            r = e["resource"]
            out[r["id"]] = r
        url = next((x["url"] for x in page.get("link", []) if x["relation"] == "next"), None)
    return out


def test_an_import_loads_ndjson_and_gzip_objects_and_reports_every_line(servers, tmp_path):
    data = tmp_path / "data"
    src = data / "s3" / "import-src" / "batch1"
    (src / "more").mkdir(parents=True)
    patients = [{"resourceType": "Patient", "id": f"imp-{i}", "gender": "female"} for i in range(3)]
    bad = ['{"resourceType": "Patient", "id": "bad id with spaces"}', "this is not json",
           '{"resourceType": "NotAType", "id": "x"}']
    text = "\n".join([json.dumps(patients[0]), bad[0], json.dumps(patients[1]), bad[1], "",
                      json.dumps(patients[2]), bad[2]]) + "\n"
    (src / "patients.ndjson").write_text(text)
    obs = [{"resourceType": "Observation", "id": f"imp-obs-{i}", "status": "final", "code": {"text": "x"},
            "subject": {"reference": f"Patient/imp-{i}"}} for i in range(2)]
    (src / "more" / "observations.ndjson.gz").write_bytes(gzip.compress(
        ("\n".join(json.dumps(o) for o in obs) + "\n").encode()))
    (src / "README.txt").write_text("not an input object")
    srv = servers.start(data)
    hl = client(srv)
    ds = srv.datastore_id
    started = start(hl, ds, "s3://import-src/batch1", JobName="first-import", ClientToken="imp-token-1")
    assert started["JobStatus"] == "SUBMITTED" and started["DatastoreId"] == ds
    # The same token and request: the same job; another request: an error.
    again = start(hl, ds, "s3://import-src/batch1", JobName="first-import", ClientToken="imp-token-1")
    assert again["JobId"] == started["JobId"]
    with pytest.raises(botocore.exceptions.ClientError) as err:
        start(hl, ds, "s3://import-src/other", JobName="first-import", ClientToken="imp-token-1")
    assert err.value.response["Error"]["Code"] == "ValidationException"
    p = wait_import(hl, ds, started["JobId"])
    assert p["JobStatus"] == "COMPLETED_WITH_ERRORS", p
    assert p["JobName"] == "first-import" and p["InputDataConfig"] == {"S3Uri": "s3://import-src/batch1"}
    assert p["JobOutputDataConfig"]["S3Configuration"] == {"S3Uri": "s3://import-reports/runs", "KmsKeyId": KMS_KEY}
    assert p["Message"] == "Imported 5 resources from 2 objects; 3 lines were rejected (see FAILURE/)", p
    assert p["EndTime"] >= p["SubmitTime"]
    # In the datastore, version 1 each, content as imported.
    got = read_all(srv, "Patient")
    assert set(got) == {"imp-0", "imp-1", "imp-2"}
    assert all(r["meta"]["versionId"] == "1" and r["gender"] == "female" for r in got.values())
    assert set(read_all(srv, "Observation")) == {"imp-obs-0", "imp-obs-1"}
    # The report, line by line.
    rep = report_dir(data, ds, started["JobId"])
    assert lines(rep / "SUCCESS" / "patients.ndjson") == [
        {"file": "batch1/patients.ndjson", "line": n, "resourceType": "Patient", "id": f"imp-{i}"}
        for i, n in ((0, 1), (1, 3), (2, 6))]
    assert [x["id"] for x in lines(rep / "SUCCESS" / "more" / "observations.ndjson")] == ["imp-obs-0", "imp-obs-1"]
    failures = lines(rep / "FAILURE" / "patients.ndjson")
    assert [(f["file"], f["line"]) for f in failures] == [("batch1/patients.ndjson", n) for n in (2, 4, 7)]
    assert "id" in failures[0]["error"] and "NotAType" in failures[2]["error"], failures
    assert not (rep / "FAILURE" / "more").exists()
    m = json.loads((rep / "manifest.json").read_text())
    assert m["importedResources"] == 5 and m["failedLines"] == 3
    assert m["inputDataConfig"] == {"s3Uri": "s3://import-src/batch1"}
    assert m["successOutput"]["successOutputS3Uri"] == \
        f"s3://import-reports/runs/{ds}-FHIR_IMPORT-{started['JobId']}/SUCCESS/"
    assert [(o["input"], o["imported"], o["failed"]) for o in m["objects"]] == [
        ("s3://import-src/batch1/more/observations.ndjson.gz", 2, 0), ("s3://import-src/batch1/patients.ndjson", 3, 3)]
    # The input is never touched, and the staging folder is gone.
    assert (src / "patients.ndjson").read_text() == text
    staging = data / "import-staging"
    assert not staging.exists() or not any(staging.iterdir()), list(staging.iterdir())
    # Listed, with filters and paging.
    second = start(hl, ds, "s3://import-src/batch1/more", JobName="second")
    wait_import(hl, ds, second["JobId"])
    listed = hl.list_fhir_import_jobs(DatastoreId=ds)["ImportJobPropertiesList"]
    assert [j["JobId"] for j in listed] == [started["JobId"], second["JobId"]]
    assert [j["JobId"] for j in hl.list_fhir_import_jobs(DatastoreId=ds, JobName="second")
            ["ImportJobPropertiesList"]] == [second["JobId"]]
    page = hl.list_fhir_import_jobs(DatastoreId=ds, MaxResults=1)
    assert [j["JobId"] for j in page["ImportJobPropertiesList"]] == [started["JobId"]]
    page2 = hl.list_fhir_import_jobs(DatastoreId=ds, MaxResults=1, NextToken=page["NextToken"])
    assert [j["JobId"] for j in page2["ImportJobPropertiesList"]] == [second["JobId"]]
    # The second import of the same observations updated them: version 2.
    assert {r["meta"]["versionId"] for r in read_all(srv, "Observation").values()} == {"2"}


def test_import_bad_input(servers, tmp_path):
    data = tmp_path / "data"
    (data / "s3" / "import-src" / "empty").mkdir(parents=True)
    (data / "s3" / "import-src" / "empty" / "notes.txt").write_text("x")
    srv = servers.start(data)
    hl = client(srv)
    ds = srv.datastore_id
    ok_out = {"S3Configuration": {"S3Uri": "s3://import-reports/x", "KmsKeyId": KMS_KEY}}
    for body, code, mention in [
        ({"DatastoreId": ds, "InputDataConfig": {}, "JobOutputDataConfig": ok_out, "DataAccessRoleArn": ROLE_ARN},
         "ValidationException", "InputDataConfig"),
        ({"DatastoreId": ds, "InputDataConfig": {"S3Uri": "s3://Bad_Bucket/x"}, "JobOutputDataConfig": ok_out,
          "DataAccessRoleArn": ROLE_ARN}, "ValidationException", "InputDataConfig.S3Uri"),
        ({"DatastoreId": ds, "InputDataConfig": {"S3Uri": "s3://import-src/a/../b"}, "JobOutputDataConfig": ok_out,
          "DataAccessRoleArn": ROLE_ARN}, "ValidationException", ".."),
        ({"DatastoreId": ds, "InputDataConfig": {"S3Uri": "s3://import-src/x"}, "JobOutputDataConfig": {},
          "DataAccessRoleArn": ROLE_ARN}, "ValidationException", "JobOutputDataConfig"),
        ({"DatastoreId": "0" * 32, "InputDataConfig": {"S3Uri": "s3://import-src/x"}, "JobOutputDataConfig": ok_out,
          "DataAccessRoleArn": ROLE_ARN}, "ResourceNotFoundException", "0" * 32),
        ({"DatastoreId": ds, "InputDataConfig": {"S3Uri": "s3://import-src/x"}, "JobOutputDataConfig": ok_out},
         "ValidationException", "DataAccessRoleArn"),
    ]:
        r = raw(srv, "HealthLake.StartFHIRImportJob", body)
        assert r.status_code == 400 and r.json()["__type"] == code, (body, r.text)
        assert mention in r.json()["message"], (mention, r.text)
    with pytest.raises(botocore.exceptions.ClientError) as err:
        hl.describe_fhir_import_job(DatastoreId=ds, JobId="f" * 32)
    assert err.value.response["Error"]["Code"] == "ResourceNotFoundException"
    # A prefix without any ndjson object, and one that does not exist: the job fails and says why.
    for src in ("s3://import-src/empty", "s3://import-src/no-such-prefix"):
        p = wait_import(hl, ds, start(hl, ds, src)["JobId"])
        assert p["JobStatus"] == "FAILED" and "no .ndjson" in p["Message"] and src in p["Message"], p
        assert str(data) not in p["Message"]


def test_an_import_killed_half_way_resumes_without_losing_or_repeating_a_resource(servers, tmp_path):
    """The 100-patient sample (Bundle files) imported; kill -9 while it loads; restarted, the job goes on and ends
    COMPLETED with every resource of the sample, none with more versions than one load gives, and the report lists
    every resource once."""
    sample = sample_data()
    data = tmp_path / "data"
    src = data / "s3" / "import-src" / "synthea"
    shutil.copytree(Path(__file__).resolve().parents[2] / "data" / "synthea-r4-100", src,
                    ignore=shutil.ignore_patterns(".complete"))
    srv = servers.start(data)
    hl = client(srv)
    ds = srv.datastore_id
    # A resource the datastore has before the import, which the import updates: updated once, whatever the crash.
    expected = sample.initial_state()
    before = sorted(i for (t, i) in expected if t == "Patient")[-1]
    r = srv.sess.put(f"{srv.base}/Patient/{before}", data=json.dumps({"resourceType": "Patient", "id": before}),
                     headers={"Content-Type": FHIR_JSON})
    assert r.status_code == 201, r.text
    job = start(hl, ds, "s3://import-src/synthea")["JobId"]
    deadline = time.time() + 60
    while srv.sess.get(f"{srv.base}/Encounter?_summary=count").json()["total"] < 300:  # well into the load
        assert time.time() < deadline
        time.sleep(0.02)
    assert hl.describe_fhir_import_job(DatastoreId=ds, JobId=job)["ImportJobProperties"]["JobStatus"] == "IN_PROGRESS"
    srv.kill9()
    srv = servers.start(data)
    hl = client(srv)
    p = wait_import(hl, ds, job)
    assert p["JobStatus"] == "COMPLETED", p
    got = {}
    for t in sorted({k[0] for k in expected}):
        for i, r in read_all(srv, t).items():
            got[(t, i)] = int(r["meta"]["versionId"])
    assert set(got) == set(expected)
    assert got[("Patient", before)] == expected[("Patient", before)].version + 1
    assert read_all(srv, "Patient")[before].get("name") == expected[("Patient", before)].resource.get("name")
    del got[("Patient", before)]
    assert all(got[k] <= expected[k].version for k in got), [k for k in got if got[k] > expected[k].version][:5]
    rep = report_dir(data, ds, job)
    success = collections.Counter()
    for f in (rep / "SUCCESS").iterdir():
        for x in lines(f):
            success[(x["resourceType"], x["id"])] += 1
    # Every entry of every Bundle is reported once (a resource in two Bundles twice: once per entry).
    entries = collections.Counter()
    for f in sorted(src.glob("*.json")):
        doc = json.loads(f.read_text())
        for r in ([e.get("resource") or {} for e in doc.get("entry", [])] if doc["resourceType"] == "Bundle"
                  else [doc]):
            if "id" in r:
                entries[(r["resourceType"], r["id"])] += 1
    assert success == entries


def test_import_routes_need_an_active_datastore(servers, tmp_path):
    srv = servers.start(tmp_path / "data", ["--preload-dir", ""])
    hl = client(srv)
    made = hl.create_fhir_datastore(DatastoreTypeVersion="R4")
    deadline = time.time() + 30
    while hl.describe_fhir_datastore(DatastoreId=made["DatastoreId"])["DatastoreProperties"]["DatastoreStatus"] \
            != "ACTIVE":
        assert time.time() < deadline
        time.sleep(0.05)
    hl.delete_fhir_datastore(DatastoreId=made["DatastoreId"])
    with pytest.raises(botocore.exceptions.ClientError) as err:
        start(hl, made["DatastoreId"], "s3://import-src/x")
    assert err.value.response["Error"]["Code"] in ("ConflictException", "ResourceNotFoundException")
