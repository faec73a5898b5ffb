"""The HealthLake control plane (awsJson1_0 on POST /, docs/CONTROL_PLANE.md) against the running server, driven by
Debian's boto3 (botocore 1.29: the older model) and `aws` CLI (2.9.19), and by the aws CLI again with the newer
model of models/ loaded through AWS_DATA_PATH: datastores listed and described, SDK export jobs started, described
until COMPLETED, listed with filters and paging, and seen through the REST describe (and REST jobs through the SDK);
idempotent ClientToken; request shapes validated with the member named; AWS errors as the SDKs parse them; and, with
SigV4 on, the refusals (unsigned, wrong secret, denied by policy).
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import time
from pathlib import Path

import boto3
import botocore
import pytest
import requests
from botocore.config import Config

from export_helpers import BUCKET, KMS_KEY, ROLE_ARN, servers, start_export  # noqa: F401  (fixture)

FHIR_JSON = "application/fhir+json"
MODELS = Path(__file__).resolve().parents[2] / "models"
KEY, SECRET = "AKIACONTROLPLANE001", "control-plane-secret"


def client(srv, key=KEY, secret=SECRET):
    return boto3.client("healthlake", endpoint_url=srv.root, region_name="us-east-1", aws_access_key_id=key,
                        aws_secret_access_key=secret, config=Config(retries={"max_attempts": 1}))


def aws(srv, *args, data_path=None, secret=SECRET):
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "AWS_ACCESS_KEY_ID": KEY,
           "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": "us-east-1", "AWS_PAGER": ""}
    if data_path:
        env["AWS_DATA_PATH"] = str(data_path)
    r = subprocess.run(["/usr/bin/aws", "healthlake", *args, "--endpoint-url", srv.root, "--output", "json"],
                       capture_output=True, text=True, timeout=120, env=env)
    return r


def raw(srv, target, body, content_type="application/x-amz-json-1.0"):
    headers = {"Content-Type": content_type}
    if target:
        headers["X-Amz-Target"] = target
    return requests.post(srv.root + "/", data=body if isinstance(body, str) else json.dumps(body), headers=headers,
                         timeout=30)


def s3_config(prefix):
    return {"S3Configuration": {"S3Uri": f"s3://{BUCKET}/{prefix}", "KmsKeyId": KMS_KEY}}


@pytest.fixture
def srv(servers, tmp_path):
    s = servers.start(tmp_path / "data")
    for i in range(3):
        r = s.sess.put(f"{s.base}/Patient/p{i}", data=json.dumps({"resourceType": "Patient", "id": f"p{i}"}),
                       headers={"Content-Type": FHIR_JSON})
        assert r.status_code == 201, r.text
    return s


def wait_completed(hl, ds, job_id):
    deadline = time.time() + 60
    while True:
        p = hl.describe_fhir_export_job(DatastoreId=ds, JobId=job_id)["ExportJobProperties"]
        if p["JobStatus"] in ("COMPLETED", "COMPLETED_WITH_ERRORS", "FAILED"):
            return p
        assert time.time() < deadline, p
        time.sleep(0.1)


def test_datastores_are_listed_and_described(srv):
    hl = client(srv)
    listed = hl.list_fhir_datastores()["DatastorePropertiesList"]
    assert len(listed) == 1
    d = listed[0]
    assert d["DatastoreId"] == srv.datastore_id and d["DatastoreStatus"] == "ACTIVE"
    assert d["DatastoreTypeVersion"] == "R4" and d["DatastoreEndpoint"] == srv.base + "/"
    assert d["DatastoreArn"] == f"arn:aws:healthlake:us-east-1:111122223333:datastore/fhir/{srv.datastore_id}"
    assert d["CreatedAt"].year >= 2024  # botocore turned the epoch seconds into a datetime
    described = hl.describe_fhir_datastore(DatastoreId=srv.datastore_id)["DatastoreProperties"]
    assert described == d
    assert hl.list_fhir_datastores(Filter={"DatastoreStatus": "DELETED"})["DatastorePropertiesList"] == []
    assert hl.list_fhir_datastores(Filter={"DatastoreName": "no-such-name"})["DatastorePropertiesList"] == []
    with pytest.raises(botocore.exceptions.ClientError) as err:
        hl.list_fhir_datastores(NextToken="bm90LWEtdG9rZW4")
    assert err.value.response["Error"]["Code"] == "ValidationException"
    with pytest.raises(botocore.exceptions.ClientError) as err:
        hl.describe_fhir_datastore(DatastoreId="0" * 32)
    assert err.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert "0" * 32 in err.value.response["Error"]["Message"]


def test_an_sdk_export_is_the_same_job_as_a_rest_one(srv):
    hl = client(srv)
    ds = srv.datastore_id
    started = hl.start_fhir_export_job(JobName="sdk-export", DatastoreId=ds, DataAccessRoleArn=ROLE_ARN,
                                       OutputDataConfig=s3_config("sdk"))
    assert started["DatastoreId"] == ds and started["JobStatus"] == "SUBMITTED"
    p = wait_completed(hl, ds, started["JobId"])
    assert p["JobStatus"] == "COMPLETED" and p["JobName"] == "sdk-export" and p["DataAccessRoleArn"] == ROLE_ARN
    assert p["OutputDataConfig"]["S3Configuration"] == {"S3Uri": f"s3://{BUCKET}/sdk", "KmsKeyId": KMS_KEY}
    assert p["EndTime"] >= p["SubmitTime"]
    # The REST describe knows it, with its files.
    rest = srv.sess.get(f"{srv.base}/export/{started['JobId']}").json()
    assert rest["exportJobProperties"]["jobStatus"] == "COMPLETED"
    assert rest["exportJobProperties"]["jobName"] == "sdk-export"
    assert [o["type"] for o in rest["output"]] == ["Patient"] and rest["output"][0]["count"] == 3
    # And a REST job is an SDK job too: described, and listed with the SDK one.
    rest_job = start_export(srv.sess, srv.base, job_name="rest-export")
    assert wait_completed(hl, ds, rest_job)["JobName"] == "rest-export"
    jobs = hl.list_fhir_export_jobs(DatastoreId=ds)["ExportJobPropertiesList"]
    assert [j["JobId"] for j in jobs] == [started["JobId"], rest_job]
    assert [j["JobId"] for j in hl.list_fhir_export_jobs(DatastoreId=ds, JobName="rest-export")
            ["ExportJobPropertiesList"]] == [rest_job]
    with pytest.raises(botocore.exceptions.ClientError) as err:
        hl.describe_fhir_export_job(DatastoreId=ds, JobId="f" * 32)
    assert err.value.response["Error"]["Code"] == "ResourceNotFoundException"


def test_list_pages_and_filters(srv):
    hl = client(srv)
    ds = srv.datastore_id
    ids = [hl.start_fhir_export_job(JobName=f"job-{i}", DatastoreId=ds, DataAccessRoleArn=ROLE_ARN,
                                    OutputDataConfig=s3_config(f"page-{i}"))["JobId"] for i in range(3)]
    for job_id in ids:
        wait_completed(hl, ds, job_id)
    seen, token = [], None
    while True:
        kw = {"NextToken": token} if token else {}
        page = hl.list_fhir_export_jobs(DatastoreId=ds, MaxResults=1, **kw)
        assert len(page["ExportJobPropertiesList"]) == 1
        seen += [j["JobId"] for j in page["ExportJobPropertiesList"]]
        token = page.get("NextToken")
        if not token:
            break
    assert seen == ids  # every job once, in the order submitted
    two = hl.list_fhir_export_jobs(DatastoreId=ds, MaxResults=2)
    rest = hl.list_fhir_export_jobs(DatastoreId=ds, MaxResults=2, NextToken=two["NextToken"])
    assert [j["JobId"] for j in two["ExportJobPropertiesList"] + rest["ExportJobPropertiesList"]] == ids
    assert "NextToken" not in rest
    done = hl.list_fhir_export_jobs(DatastoreId=ds, JobStatus="COMPLETED")["ExportJobPropertiesList"]
    assert len(done) == 3
    assert hl.list_fhir_export_jobs(DatastoreId=ds, JobStatus="FAILED")["ExportJobPropertiesList"] == []
    # botocore sends whole epoch seconds: a second before the first job, and a minute after the last.
    before_all = done[0]["SubmitTime"] - datetime.timedelta(seconds=1)
    later = done[-1]["SubmitTime"] + datetime.timedelta(seconds=60)
    assert len(hl.list_fhir_export_jobs(DatastoreId=ds, SubmittedAfter=before_all)["ExportJobPropertiesList"]) == 3
    assert hl.list_fhir_export_jobs(DatastoreId=ds, SubmittedBefore=before_all)["ExportJobPropertiesList"] == []
    assert hl.list_fhir_export_jobs(DatastoreId=ds, SubmittedAfter=later)["ExportJobPropertiesList"] == []
    assert len(hl.list_fhir_export_jobs(DatastoreId=ds, SubmittedBefore=later)["ExportJobPropertiesList"]) == 3
    with pytest.raises(botocore.exceptions.ClientError) as err:
        hl.list_fhir_export_jobs(DatastoreId=ds, NextToken="not-a-token!")
    assert err.value.response["Error"]["Code"] == "ValidationException"


def test_a_client_token_makes_a_start_idempotent(srv):
    hl = client(srv)
    ds = srv.datastore_id
    kw = dict(DatastoreId=ds, DataAccessRoleArn=ROLE_ARN, OutputDataConfig=s3_config("idem"), ClientToken="tok-1")
    first = hl.start_fhir_export_job(JobName="once", **kw)
    again = hl.start_fhir_export_job(JobName="once", **kw)
    assert again["JobId"] == first["JobId"]
    assert len(hl.list_fhir_export_jobs(DatastoreId=ds)["ExportJobPropertiesList"]) == 1
    with pytest.raises(botocore.exceptions.ClientError) as err:
        hl.start_fhir_export_job(JobName="other", **kw)
    assert err.value.response["Error"]["Code"] == "ValidationException"
    assert "tok-1" in err.value.response["Error"]["Message"] and first["JobId"] in err.value.response["Error"]["Message"]
    # Without a token the SDK makes one per call: two calls, two jobs.
    del kw["ClientToken"]
    a = hl.start_fhir_export_job(**kw)["JobId"]
    b = hl.start_fhir_export_job(**kw)["JobId"]
    assert a != b


@pytest.mark.parametrize("target,body,code,mention", [
    ("HealthLake.StartFHIRExportJob", {"DatastoreId": "x" * 32, "DataAccessRoleArn": "arn:aws:iam::1:role/r",
                                       "OutputDataConfig": s3_config("v")},
     "ValidationException", "'DataAccessRoleArn' failed to satisfy constraint: Member must satisfy regular expression"),
    ("HealthLake.StartFHIRExportJob", {"DatastoreId": "x" * 32, "DataAccessRoleArn": ROLE_ARN},
     "ValidationException", "Value null at 'OutputDataConfig'"),
    ("HealthLake.StartFHIRExportJob", {"DatastoreId": "x" * 32, "DataAccessRoleArn": ROLE_ARN,
                                       "OutputDataConfig": {"S3Configuration": {"S3Uri": "s3://b/p"}}},
     "ValidationException", "'OutputDataConfig.S3Configuration.KmsKeyId'"),
    ("HealthLake.ListFHIRExportJobs", {"DatastoreId": "x" * 32, "MaxResults": 0},
     "ValidationException", "'MaxResults' failed to satisfy constraint: Member must have value greater than or equal to 1"),
    ("HealthLake.ListFHIRExportJobs", {"DatastoreId": "x" * 32, "Status": "COMPLETED"},
     "ValidationException", "'Status' is not a member of ListFHIRExportJobsRequest"),
    ("HealthLake.ListFHIRDatastores", {"Filter": {"DatastoreStatus": "GONE"}},
     "ValidationException", "'Filter.DatastoreStatus' failed to satisfy constraint: Member must satisfy enum value set"),
    ("HealthLake.DescribeFHIRDatastore", {}, "ValidationException", "Value null at 'DatastoreId'"),
    ("HealthLake.DescribeFHIRDatastore", "{not json", "SerializationException", "not JSON"),
    ("HealthLake.ListFHIRExportJobs", {"DatastoreId": "x" * 32, "JobName": "\u00e9" * 65},
     "ValidationException", "'JobName' failed to satisfy constraint: Member must have length less than or equal to 64"),
    ("HealthLake.TagResource", {"ResourceARN": "arn:aws:healthlake:us-east-1:111122223333:datastore/fhir/" + "a" * 32,
                                "Tags": [{"Key": "owner\n", "Value": "alice"}]},
     "ValidationException", "'Tags.1.Key' failed to satisfy constraint: Member must satisfy regular expression"),
    ("HealthLake.Nonsense", {}, "UnknownOperationException", "HealthLake.Nonsense"),
    (None, {}, "UnknownOperationException", "X-Amz-Target"),
])
def test_bad_requests_get_the_aws_error_naming_the_member(srv, target, body, code, mention):
    r = raw(srv, target, body)
    assert r.status_code == 400, r.text
    assert r.headers["Content-Type"].startswith("application/x-amz-json-1.0")
    err = r.json()
    assert err["__type"] == code, err
    assert mention in err["message"], err
    assert srv.alive()


def test_null_members_are_absent_members(srv):
    ds = srv.datastore_id
    r = raw(srv, "HealthLake.ListFHIRExportJobs", {"DatastoreId": ds, "MaxResults": None, "NextToken": None,
                                                   "SubmittedBefore": None})
    assert r.status_code == 200 and r.json() == {"ExportJobPropertiesList": []}, r.text
    r = raw(srv, "HealthLake.ListFHIRDatastores", {"Filter": {"CreatedAfter": None}, "MaxResults": None})
    assert r.status_code == 200 and len(r.json()["DatastorePropertiesList"]) == 1, r.text
    r = raw(srv, "HealthLake.StartFHIRExportJob", {"DatastoreId": ds, "JobName": None, "ClientToken": None,
                                                   "DataAccessRoleArn": ROLE_ARN, "OutputDataConfig": s3_config("n")})
    assert r.status_code == 200 and r.json()["JobStatus"] == "SUBMITTED", r.text


def test_the_wrong_content_type_and_every_operation_built(srv):
    r = raw(srv, "HealthLake.ListFHIRDatastores", {}, content_type="application/json")
    assert r.status_code == 400 and r.json()["__type"] == "SerializationException"
    hl = client(srv)
    # Every operation of the model is built: none answers NotImplemented.
    assert hl.list_fhir_import_jobs(DatastoreId=srv.datastore_id)["ImportJobPropertiesList"] == []


def test_the_aws_cli_with_both_models(srv):
    r = aws(srv, "list-fhir-datastores")
    assert r.returncode == 0, r.stderr
    assert [d["DatastoreId"] for d in json.loads(r.stdout)["DatastorePropertiesList"]] == [srv.datastore_id]
    r = aws(srv, "start-fhir-export-job", "--datastore-id", srv.datastore_id, "--data-access-role-arn", ROLE_ARN,
            "--output-data-config", json.dumps(s3_config("cli")), "--job-name", "from-the-cli")
    assert r.returncode == 0, r.stderr
    job_id = json.loads(r.stdout)["JobId"]
    wait_completed(client(srv), srv.datastore_id, job_id)
    # The newer model (models/healthlake/2017-07-01/service-2.json) through AWS_DATA_PATH: the same answers parse.
    for data_path in (None, MODELS):
        r = aws(srv, "describe-fhir-export-job", "--datastore-id", srv.datastore_id, "--job-id", job_id,
                data_path=data_path)
        assert r.returncode == 0, r.stderr
        p = json.loads(r.stdout)["ExportJobProperties"]
        assert p["JobStatus"] == "COMPLETED" and p["JobName"] == "from-the-cli", p
    r = aws(srv, "describe-fhir-datastore", "--datastore-id", "0" * 32)
    assert r.returncode != 0 and "ResourceNotFoundException" in r.stderr, r.stderr


def test_with_sigv4_the_control_plane_refuses_as_aws_does(servers, tmp_path):
    cfg = {"region": "us-east-1", "accountId": "111122223333", "defaultModes": ["sigv4"],
           "principals": [
               {"accessKeyId": KEY, "secretAccessKey": SECRET, "policies": [{"Version": "2012-10-17", "Statement": [
                   {"Effect": "Allow", "Action": ["healthlake:*", "iam:PassRole"], "Resource": "*"}]}]},
               {"accessKeyId": "AKIALISTONLY0000001", "secretAccessKey": "list-secret",
                "policies": [{"Version": "2012-10-17", "Statement": [
                    {"Effect": "Allow", "Action": ["healthlake:List*", "healthlake:StartFHIRExportJob"],
                     "Resource": "*"}]}]},
               {"accessKeyId": "AKIAOTHERACCOUNT001", "secretAccessKey": "other-secret", "accountId": "444455556666",
                "policies": [{"Version": "2012-10-17", "Statement": [
                    {"Effect": "Allow", "Action": ["healthlake:*", "iam:PassRole"], "Resource": "*"}]}]}]}
    (tmp_path / "auth.json").write_text(json.dumps(cfg))
    srv = servers.start(tmp_path / "data", ["--auth-config", str(tmp_path / "auth.json")])
    assert len(client(srv).list_fhir_datastores()["DatastorePropertiesList"]) == 1
    cases = [
        (lambda: client(srv, secret="wrong").list_fhir_datastores(), "InvalidSignatureException"),
        (lambda: client(srv, key="AKIAUNKNOWN00000001").list_fhir_datastores(), "UnrecognizedClientException"),
        (lambda: client(srv, "AKIALISTONLY0000001", "list-secret").describe_fhir_datastore(
            DatastoreId=srv.datastore_id), "AccessDeniedException"),
        # Starting an export names a role: without iam:PassRole on it, refused.
        (lambda: client(srv, "AKIALISTONLY0000001", "list-secret").start_fhir_export_job(
            DatastoreId=srv.datastore_id, DataAccessRoleArn=ROLE_ARN, OutputDataConfig=s3_config("x")),
         "AccessDeniedException"),
    ]
    for call, code in cases:
        with pytest.raises(botocore.exceptions.ClientError) as err:
            call()
        assert err.value.response["Error"]["Code"] == code, err.value.response
    denied = err.value.response["Error"]["Message"]
    assert "iam:PassRole" in denied and ROLE_ARN in denied
    r = raw(srv, "HealthLake.ListFHIRDatastores", {})
    assert r.status_code in (401, 403) and r.json()["__type"] == "MissingAuthenticationTokenException", r.text
    # ClientTokens belong to an account: another account's same token starts a job of its own and learns nothing.
    kw = dict(DatastoreId=srv.datastore_id, DataAccessRoleArn=ROLE_ARN, ClientToken="shared-token")
    mine = client(srv).start_fhir_export_job(OutputDataConfig=s3_config("a"), **kw)["JobId"]
    other = client(srv, "AKIAOTHERACCOUNT001", "other-secret")
    theirs = other.start_fhir_export_job(OutputDataConfig=s3_config("b"), **kw)["JobId"]
    assert theirs != mine
    assert other.start_fhir_export_job(OutputDataConfig=s3_config("b"), **kw)["JobId"] == theirs
    assert [j["JobId"] for j in other.list_fhir_export_jobs(DatastoreId=srv.datastore_id)
            ["ExportJobPropertiesList"]] == [theirs]
    # A body cannot write lines into the server log (the datastore id of a refused request is never logged raw).
    unprivileged = client(srv, "AKIALISTONLY0000001", "list-secret")
    with pytest.raises(botocore.exceptions.ClientError):
        unprivileged.describe_fhir_datastore(DatastoreId="x\n[2026-01-01] event=FORGED")
    with pytest.raises(botocore.exceptions.ClientError):
        unprivileged.start_fhir_export_job(DatastoreId=srv.datastore_id, OutputDataConfig=s3_config("x"),
                                           DataAccessRoleArn="arn:aws:iam::111122223333:role/x\nevent=FORGED")
    assert "\nevent=FORGED" not in srv.log_path.read_text() and "] event=FORGED" not in srv.log_path.read_text()
    # Debian's aws CLI signs as the SDKs do: verified, and refused with a wrong secret.
    r = aws(srv, "list-fhir-datastores")
    assert r.returncode == 0, r.stderr
    assert [d["DatastoreId"] for d in json.loads(r.stdout)["DatastorePropertiesList"]] == [srv.datastore_id]
    r = aws(srv, "list-fhir-datastores", secret="not-the-secret")
    assert r.returncode != 0 and "InvalidSignatureException" in r.stderr, r.stderr


def test_tags_are_kept_with_the_datastore(servers, tmp_path):
    srv = servers.start(tmp_path / "data")
    hl = client(srv)
    arn = hl.describe_fhir_datastore(DatastoreId=srv.datastore_id)["DatastoreProperties"]["DatastoreArn"]
    assert hl.list_tags_for_resource(ResourceARN=arn)["Tags"] == []
    hl.tag_resource(ResourceARN=arn, Tags=[{"Key": "team", "Value": "research"}, {"Key": "env", "Value": "ci"}])
    hl.tag_resource(ResourceARN=arn, Tags=[{"Key": "env", "Value": "test"}])  # a key again: its value replaced
    assert hl.list_tags_for_resource(ResourceARN=arn)["Tags"] == [{"Key": "env", "Value": "test"},
                                                                    {"Key": "team", "Value": "research"}]
    hl.untag_resource(ResourceARN=arn, TagKeys=["env", "not-there"])
    assert hl.list_tags_for_resource(ResourceARN=arn)["Tags"] == [{"Key": "team", "Value": "research"}]
    # Kept in the store: a restart keeps them.
    srv.stop()
    srv = servers.start(tmp_path / "data")
    hl = client(srv)
    assert hl.list_tags_for_resource(ResourceARN=arn)["Tags"] == [{"Key": "team", "Value": "research"}]
    for bad_arn in (arn[:-1] + ("0" if arn[-1] != "0" else "1"),  # another datastore id
                    arn.replace("111122223333", "999999999999")):  # another account's
        with pytest.raises(botocore.exceptions.ClientError) as err:
            hl.list_tags_for_resource(ResourceARN=bad_arn)
        assert err.value.response["Error"]["Code"] == "ResourceNotFoundException"
    with pytest.raises(botocore.exceptions.ClientError) as err:
        hl.tag_resource(ResourceARN=arn, Tags=[{"Key": f"k{i}", "Value": "v"} for i in range(50)])
    assert err.value.response["Error"]["Code"] == "ValidationException" and "at most 50" in \
        err.value.response["Error"]["Message"]
    r = raw(srv, "HealthLake.TagResource", {"ResourceARN": arn, "Tags": [{"Key": "a\tb", "Value": "x"}]})
    assert r.json()["__type"] == "ValidationException" and "'Tags.1.Key'" in r.json()["message"]


def test_resource_tag_conditions_see_the_tags_the_control_plane_wrote(servers, tmp_path):
    cfg = {"region": "us-east-1", "accountId": "111122223333", "defaultModes": ["sigv4"],
           "principals": [
               {"accessKeyId": KEY, "secretAccessKey": SECRET, "policies": [{"Version": "2012-10-17", "Statement": [
                   {"Effect": "Allow", "Action": "healthlake:*", "Resource": "*"}]}]},
               {"accessKeyId": "AKIARESEARCHONLY001", "secretAccessKey": "research-secret",
                "policies": [{"Version": "2012-10-17", "Statement": [
                    {"Effect": "Allow", "Action": "healthlake:*", "Resource": "*",
                     "Condition": {"StringEquals": {"aws:ResourceTag/team": "research"}}}]}]}]}
    (tmp_path / "auth.json").write_text(json.dumps(cfg))
    srv = servers.start(tmp_path / "data", ["--auth-config", str(tmp_path / "auth.json")])
    admin, research = client(srv), client(srv, "AKIARESEARCHONLY001", "research-secret")
    ds = srv.datastore_id
    with pytest.raises(botocore.exceptions.ClientError) as err:
        research.describe_fhir_datastore(DatastoreId=ds)
    assert err.value.response["Error"]["Code"] == "AccessDeniedException"
    arn = admin.describe_fhir_datastore(DatastoreId=ds)["DatastoreProperties"]["DatastoreArn"]
    admin.tag_resource(ResourceARN=arn, Tags=[{"Key": "team", "Value": "research"}])
    assert research.describe_fhir_datastore(DatastoreId=ds)["DatastoreProperties"]["DatastoreId"] == ds
    assert research.list_tags_for_resource(ResourceARN=arn)["Tags"] == [{"Key": "team", "Value": "research"}]
    admin.untag_resource(ResourceARN=arn, TagKeys=["team"])
    with pytest.raises(botocore.exceptions.ClientError) as err:
        research.list_tags_for_resource(ResourceARN=arn)
    assert err.value.response["Error"]["Code"] == "AccessDeniedException"


def test_bearer_tokens_cannot_use_the_control_plane(servers, tmp_path):
    """A SMART access token (even with system/*.read) may not start an SDK export: its body names a role and a bucket
    the server would write with, which is SigV4's (with iam:PassRole); every control-plane action is."""
    from test_smart import ASSERTION_TYPE, jwk, openssl_key, sign_jwt
    key = openssl_key(tmp_path, "ec")
    cfg = {"defaultModes": ["sigv4", "smart"], "smartClients": [
        {"clientId": "bulk-client", "jwks": {"keys": [jwk(key, "ec-1")]}, "scopes": ["system/*.read"]}],
           "principals": [{"accessKeyId": KEY, "secretAccessKey": SECRET, "policies": [
               {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "healthlake:*",
                                                        "Resource": "*"}]}]}]}
    (tmp_path / "auth.json").write_text(json.dumps(cfg))
    srv = servers.start(tmp_path / "data", ["--auth-config", str(tmp_path / "auth.json")])
    token_url = srv.root + "/auth/token"
    claims = {"iss": "bulk-client", "sub": "bulk-client", "aud": token_url, "exp": int(time.time()) + 240,
              "jti": os.urandom(8).hex()}
    form = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": sign_jwt({"alg": "ES384", "kid": "ec-1"}, claims, key=key)}
    tok = requests.post(token_url, data=form, timeout=30).json()["access_token"]
    body = {"DatastoreId": srv.datastore_id, "DataAccessRoleArn": "arn:aws:iam::999999999999:role/AnyRole",
            "OutputDataConfig": s3_config("stolen")}
    for target, b in (("HealthLake.StartFHIRExportJob", body), ("HealthLake.ListFHIRDatastores", {}),
                      ("HealthLake.ListFHIRExportJobs", {"DatastoreId": srv.datastore_id})):
        r = requests.post(srv.root + "/", data=json.dumps(b), timeout=30,
                          headers={"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": target,
                                   "Authorization": f"Bearer {tok}"})
        assert r.status_code == 403 and r.json()["__type"] == "AccessDeniedException", (target, r.text)
        assert "not open to SMART clients" in r.json()["message"], r.text
    # Nothing was started (as the account's SigV4 principal sees it).
    assert client(srv).list_fhir_export_jobs(DatastoreId=srv.datastore_id)["ExportJobPropertiesList"] == []


# ---------------------------------------------------------------------------------------------- datastores

def wait_datastore(hl, ds, status, timeout=120):
    deadline = time.time() + timeout
    while True:
        try:
            p = hl.describe_fhir_datastore(DatastoreId=ds)["DatastoreProperties"]
        except botocore.exceptions.ClientError as e:
            raise AssertionError(f"describe {ds}: {e.response['Error']}") from e
        if p["DatastoreStatus"] == status:
            return p
        assert time.time() < deadline, p
        time.sleep(0.1)


def sample_dir():
    return Path(__file__).resolve().parents[2] / "data" / "synthea-r4-100"


def test_a_datastore_is_created_preloaded_used_and_deleted(servers, tmp_path):
    from export_helpers import expected_system, sample_data, wait_done, collect_output
    srv = servers.start(tmp_path / "data", ["--preload-dir", str(sample_dir())])
    hl = client(srv)
    made = hl.create_fhir_datastore(DatastoreName="preloaded", DatastoreTypeVersion="R4",
                                    PreloadDataConfig={"PreloadDataType": "SYNTHEA"},
                                    Tags=[{"Key": "team", "Value": "research"}])
    ds = made["DatastoreId"]
    assert made["DatastoreStatus"] == "CREATING" and made["DatastoreEndpoint"] == f"{srv.root}/datastore/{ds}/r4/"
    assert made["DatastoreArn"].endswith(f":datastore/fhir/{ds}")
    p = wait_datastore(hl, ds, "ACTIVE")
    assert p["DatastoreName"] == "preloaded" and p["PreloadDataConfig"] == {"PreloadDataType": "SYNTHEA"}
    assert p["SseConfiguration"] == {"KmsEncryptionConfig": {"CmkType": "AWS_OWNED_KMS_KEY"}}
    assert hl.list_tags_for_resource(ResourceARN=made["DatastoreArn"])["Tags"] == [{"Key": "team", "Value": "research"}]
    # The FHIR API of the new datastore has the whole sample; an SDK export of it gives exactly the sample.
    base = made["DatastoreEndpoint"].rstrip("/")
    expected = expected_system(sample_data().initial_state())
    r = srv.sess.get(f"{base}/Patient?_summary=count")
    assert r.status_code == 200 and r.json()["total"] == sum(1 for k in expected if k[0] == "Patient"), r.text
    job = hl.start_fhir_export_job(DatastoreId=ds, DataAccessRoleArn=ROLE_ARN, OutputDataConfig=s3_config("pre"))
    done = wait_done(srv.sess, base, job["JobId"])
    got = collect_output(srv, done).counter
    assert got == expected, (sum(got.values()), sum(expected.values()))
    # Listed beside the default datastore, with filters.
    names = {d["DatastoreName"] for d in hl.list_fhir_datastores()["DatastorePropertiesList"]}
    assert names == {"fhirlake-default", "preloaded"}
    assert [d["DatastoreId"] for d in hl.list_fhir_datastores(Filter={"DatastoreName": "preloaded"})
            ["DatastorePropertiesList"]] == [ds]

    # Deleted: DELETING, then DELETED (still described and listed), its FHIR API gone, its folder gone; the files the
    # export wrote to the user's bucket stay.
    bucket_files = sorted(p.relative_to(srv.s3_root()) for p in srv.s3_root().rglob("*.ndjson"))
    assert bucket_files
    gone = hl.delete_fhir_datastore(DatastoreId=ds)
    assert gone["DatastoreStatus"] == "DELETING" and gone["DatastoreId"] == ds
    p = wait_datastore(hl, ds, "DELETED")
    assert p["DatastoreName"] == "preloaded" and p["DatastoreEndpoint"] == made["DatastoreEndpoint"]
    assert {d["DatastoreStatus"] for d in hl.list_fhir_datastores(Filter={"DatastoreStatus": "DELETED"})
            ["DatastorePropertiesList"]} == {"DELETED"}
    r = srv.sess.get(f"{base}/Patient")
    assert r.status_code == 404, r.text
    assert not (tmp_path / "data" / "datastores" / ds).exists()
    assert sorted(p.relative_to(srv.s3_root()) for p in srv.s3_root().rglob("*.ndjson")) == bucket_files
    with pytest.raises(botocore.exceptions.ClientError) as err:
        hl.start_fhir_export_job(DatastoreId=ds, DataAccessRoleArn=ROLE_ARN, OutputDataConfig=s3_config("x"))
    assert err.value.response["Error"]["Code"] == "ResourceNotFoundException"
    # After a restart the deleted datastore is still DELETED and no default datastore appears in its place.
    srv2 = servers.start(tmp_path / "data", ["--preload-dir", str(sample_dir())])
    hl2 = client(srv2)
    assert hl2.describe_fhir_datastore(DatastoreId=ds)["DatastoreProperties"]["DatastoreStatus"] == "DELETED"
    assert len(hl2.list_fhir_datastores(Filter={"DatastoreStatus": "ACTIVE"})["DatastorePropertiesList"]) == 1


def test_deleting_the_default_datastore_and_server_held_files(servers, tmp_path):
    """The default datastore is deleted like any other; its running export is cancelled and the files of its IG
    exports (the server's own bucket) go; after the last datastore is gone a restart makes no new default."""
    srv = servers.start(tmp_path / "data", ["--test-export-batch-delay-ms", "200", "--export-batch-rows", "1"])
    hl = client(srv)
    ds = srv.datastore_id
    for i in range(30):
        assert srv.sess.put(f"{srv.base}/Patient/p{i}", data=json.dumps({"resourceType": "Patient", "id": f"p{i}"}),
                            headers={"Content-Type": FHIR_JSON}).status_code == 201
    r = srv.sess.get(f"{srv.base}/$export?_type=Patient",
                     headers={"Accept": FHIR_JSON, "Prefer": "respond-async"})
    assert r.status_code == 202, r.text
    ig_job = r.headers["Content-Location"].rsplit("/", 1)[1]
    from export_helpers import wait_done
    wait_done(srv.sess, srv.base, ig_job)
    held = list((srv.s3_root() / "fhirlake-server-exports").rglob("*.ndjson"))
    assert held, "the IG export wrote no file"
    running = start_export(srv.sess, srv.base, job_name="running")
    from export_helpers import wait_status
    wait_status(srv.sess, srv.base, running, "IN_PROGRESS", timeout=20)
    assert hl.delete_fhir_datastore(DatastoreId=ds)["DatastoreStatus"] == "DELETING"
    # Not again, and not through the data plane meanwhile.
    assert hl.delete_fhir_datastore(DatastoreId=ds)["DatastoreStatus"] in ("DELETING", "DELETED")
    wait_datastore(hl, ds, "DELETED")
    assert not any(p.exists() for p in held)
    assert hl.list_fhir_datastores(Filter={"DatastoreStatus": "ACTIVE"})["DatastorePropertiesList"] == []
    srv2 = servers.start(tmp_path / "data")
    assert client(srv2).list_fhir_datastores(Filter={"DatastoreStatus": "ACTIVE"})["DatastorePropertiesList"] == []
    assert requests.get(srv2.root + "/healthz", timeout=30).json()["datastores"] == []


@pytest.mark.parametrize("body,mention", [
    ({"DatastoreTypeVersion": "R5"}, "DatastoreTypeVersion"),
    ({}, "DatastoreTypeVersion"),
    ({"DatastoreTypeVersion": "R4", "PreloadDataConfig": {"PreloadDataType": "OTHER"}}, "PreloadDataType"),
    ({"DatastoreTypeVersion": "R4", "DatastoreName": "x" * 300}, "DatastoreName"),
    # A server without the sample (--preload-dir ""), asked to preload it.
    ({"DatastoreTypeVersion": "R4", "PreloadDataConfig": {"PreloadDataType": "SYNTHEA"}}, "preload-dir"),
    ({"DatastoreTypeVersion": "R4", "Tags": [{"Key": f"k{i}", "Value": "v"} for i in range(51)]}, "Tags"),
])
def test_create_datastore_bad_input(servers, tmp_path, body, mention):
    srv = servers.start(tmp_path / "data", ["--preload-dir", ""])
    r = raw(srv, "HealthLake.CreateFHIRDatastore", body)
    assert r.status_code == 400 and r.json()["__type"] == "ValidationException", r.text
    assert mention in r.json()["message"], r.text


def test_create_datastore_is_idempotent_by_client_token_and_smart_datastores_need_credentials(servers, tmp_path):
    srv = servers.start(tmp_path / "data", ["--preload-dir", ""])
    hl = client(srv)
    a = hl.create_fhir_datastore(DatastoreName="a", DatastoreTypeVersion="R4", ClientToken="tok-1")
    b = hl.create_fhir_datastore(DatastoreName="a", DatastoreTypeVersion="R4", ClientToken="tok-1")
    assert a["DatastoreId"] == b["DatastoreId"]
    with pytest.raises(botocore.exceptions.ClientError) as err:
        hl.create_fhir_datastore(DatastoreName="other", DatastoreTypeVersion="R4", ClientToken="tok-1")
    assert err.value.response["Error"]["Code"] == "ValidationException" and "tok-1" in str(err.value)
    wait_datastore(hl, a["DatastoreId"], "ACTIVE")
    # A new datastore's FHIR API works at once, and with it both export views.
    base = a["DatastoreEndpoint"].rstrip("/")
    assert srv.sess.put(f"{base}/Patient/x", data=json.dumps({"resourceType": "Patient", "id": "x"}),
                        headers={"Content-Type": FHIR_JSON}).status_code == 201
    r = srv.sess.get(f"{base}/$export", headers={"Accept": FHIR_JSON, "Prefer": "respond-async"})
    assert r.status_code == 202, r.text


def test_a_smart_datastore_refuses_what_its_strategy_does_not_allow(servers, tmp_path):
    cfg = {"region": "us-east-1", "accountId": "111122223333", "defaultModes": ["none"],
           "principals": [{"accessKeyId": KEY, "secretAccessKey": SECRET, "accountId": "111122223333",
                           "policies": [{"Statement": [{"Effect": "Allow", "Action": "healthlake:*",
                                                        "Resource": "*"}]}]}]}
    path = tmp_path / "auth.json"
    path.write_text(json.dumps(cfg))
    srv = servers.start(tmp_path / "data", ["--auth-config", str(path), "--preload-dir", ""])
    hl = client(srv)
    # IdentityProviderConfiguration is in the newer model only: the aws CLI with models/ (AWS_DATA_PATH).
    idp = {"AuthorizationStrategy": "SMART_ON_FHIR_V1", "FineGrainedAuthorizationEnabled": False,
           "Metadata": json.dumps({"issuer": "https://idp.example"})}
    r = aws(srv, "create-fhir-datastore", "--datastore-name", "smart", "--datastore-type-version", "R4",
            "--identity-provider-configuration", json.dumps(idp), data_path=MODELS)
    assert r.returncode == 0, r.stderr
    made = json.loads(r.stdout)
    wait_datastore(hl, made["DatastoreId"], "ACTIVE")
    r = aws(srv, "describe-fhir-datastore", "--datastore-id", made["DatastoreId"], data_path=MODELS)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["DatastoreProperties"]["IdentityProviderConfiguration"] == idp
    base = made["DatastoreEndpoint"].rstrip("/")
    # The default datastore is open (mode none); the SMART one wants SigV4 or a bearer token.
    assert requests.get(f"{srv.base}/Patient", timeout=30).status_code == 200
    assert requests.get(f"{base}/Patient", timeout=30).status_code == 401


def test_a_preload_killed_half_way_resumes_after_a_restart(servers, tmp_path):
    """kill -9 while a datastore is CREATING (its preload running); restarted, it is made again and ends ACTIVE
    with every resource of the sample, none with a version the load would not have given it."""
    from export_helpers import sample_data
    srv = servers.start(tmp_path / "data", ["--preload-dir", str(sample_dir())])
    hl = client(srv)
    ds = hl.create_fhir_datastore(DatastoreTypeVersion="R4", PreloadDataConfig={"PreloadDataType": "SYNTHEA"})[
        "DatastoreId"]
    folder = tmp_path / "data" / "datastores" / ds
    deadline = time.time() + 30
    while not any(p.stat().st_size > 1 << 20 for p in folder.glob("fhir.db*")):  # the load has written something
        assert time.time() < deadline
        time.sleep(0.02)
    assert hl.describe_fhir_datastore(DatastoreId=ds)["DatastoreProperties"]["DatastoreStatus"] == "CREATING"
    srv.kill9()
    srv2 = servers.start(tmp_path / "data", ["--preload-dir", str(sample_dir())])
    hl2 = client(srv2)
    wait_datastore(hl2, ds, "ACTIVE")
    expected = sample_data().initial_state()
    base = f"{srv2.root}/datastore/{ds}/r4"
    got = {}
    for t in sorted({k[0] for k in expected}):
        url = f"{base}/{t}?_count=1000&_elements=id"
        while url:
            page = srv2.sess.get(url).json()
            for e in page.get("entry", []):
                r = e["resource"]
                got[(r["resourceType"], r["id"])] = int(r["meta"]["versionId"])
            url = next((x["url"] for x in page.get("link", []) if x["relation"] == "next"), None)
    assert set(got) == set(expected)
    assert all(got[k] <= expected[k].version for k in got), [k for k in got if got[k] > expected[k].version][:5]
