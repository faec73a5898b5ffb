"""Authentication and authorization with `fhirlake serve --auth-config` (docs/SECURITY.md), driven by the real
clients: botocore's SigV4 signer (header form and presigned URLs, as the AWS SDKs sign) and curl --aws-sigv4,
against the running server on loopback. The configuration file is the contract: principals with IAM policies,
modes per datastore, tags for aws:ResourceTag conditions, reloaded on SIGHUP.
"""

from __future__ import annotations

import datetime
import json
import signal
import subprocess
import time
from unittest import mock

import pytest
import requests
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from export_helpers import binary_path, export_body, servers  # noqa: F401  (fixture)
from export_helpers import assert_outcome

REGION = "us-east-1"
ACCOUNT = "111122223333"
FHIR_JSON = "application/fhir+json"


def policy(*statements):
    return {"Version": "2012-10-17", "Statement": list(statements)}


def allow(action, resource="*", **cond):
    s = {"Effect": "Allow", "Action": action, "Resource": resource}
    if cond:
        s["Condition"] = cond
    return s


def deny(action, resource="*"):
    return {"Effect": "Deny", "Action": action, "Resource": resource}


PRINCIPALS = {
    "admin": ("AKIAADMIN0000000001", "admin-secret", [policy(allow(["healthlake:*", "iam:PassRole"]))]),
    "exporter": ("AKIAEXPORTNOPASS001", "exporter-secret", [policy(allow("healthlake:*"))]),
    "reader": ("AKIAREADER000000001", "reader-secret",
               [policy(allow(["healthlake:ReadResource", "healthlake:SearchWithGet"]))]),
    "nodelete": ("AKIANODELETE0000001", "nodelete-secret",
                 [policy(allow("healthlake:*")), policy(deny("healthlake:DeleteResource"))]),
    "research": ("AKIARESEARCH0000001", "research-secret",
                 [policy(allow("healthlake:*", StringEquals={"aws:ResourceTag/team": "research"}))]),
    "ops": ("AKIAOPS000000000001", "ops-secret",
            [policy(allow("healthlake:*", StringEquals={"aws:ResourceTag/team": "ops"}))]),
    "elsewhere": ("AKIAELSEWHERE000001", "elsewhere-secret",
                  [policy(allow("healthlake:*", IpAddress={"aws:SourceIp": "10.0.0.0/8"}))]),
    "stranger": ("AKIASTRANGER0000001", "stranger-secret", [policy(allow(["healthlake:*", "iam:PassRole"]))]),
}
ACCOUNT_OF = {"stranger": "444455556666"}


def write_config(path, datastores=None, default_modes=("sigv4",)):
    cfg = {"region": REGION, "accountId": ACCOUNT, "defaultModes": list(default_modes),
           "datastores": datastores or {},
           "principals": [{"accessKeyId": k, "secretAccessKey": s, "policies": p,
                           "accountId": ACCOUNT_OF.get(name, ACCOUNT)} for name, (k, s, p) in PRINCIPALS.items()]}
    path.write_text(json.dumps(cfg, indent=1))
    return path


def signed(who, method, url, body=b"", headers=None, secret=None):
    """A request signed by botocore's SigV4Auth (what boto3 and the AWS CLI use), sent with requests."""
    key, sec, _ = PRINCIPALS[who]
    req = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
    SigV4Auth(Credentials(key, secret or sec), "healthlake", REGION).add_auth(req)
    return requests.request(method, url, data=body, headers=dict(req.headers.items()), timeout=30)


def presigned(who, url, expires):
    key, sec, _ = PRINCIPALS[who]
    req = AWSRequest(method="GET", url=url)
    SigV4QueryAuth(Credentials(key, sec), "healthlake", REGION, expires=expires).add_auth(req)
    return req.url


@pytest.fixture
def srv(servers, tmp_path):
    cfg = write_config(tmp_path / "auth.json")
    s = servers.start(tmp_path / "data", ["--auth-config", str(cfg), "--audit-log", str(tmp_path / "audit.jsonl")])
    s.config = cfg
    s.audit = tmp_path / "audit.jsonl"
    return s


def put_patient(srv, who, pid="p1"):
    body = json.dumps({"resourceType": "Patient", "id": pid, "gender": "female"}).encode()
    return signed(who, "PUT", f"{srv.base}/Patient/{pid}", body, {"Content-Type": FHIR_JSON})


def test_unsigned_requests_are_401_and_only_the_public_routes_answer(srv):
    assert requests.get(f"http://127.0.0.1:{srv.port}/healthz", timeout=30).status_code == 200
    meta = requests.get(f"{srv.base}/metadata", timeout=30)
    assert meta.status_code == 200 and meta.json()["resourceType"] == "CapabilityStatement"
    for method, path in (("GET", "/Patient/p1"), ("GET", "/Patient"), ("PUT", "/Patient/p1"), ("POST", "/Patient"),
                         ("DELETE", "/Patient/p1"), ("GET", "/$export"), ("POST", "/$export"),
                         ("GET", "/export/" + "a" * 32), ("GET", "/$export-poll-status/" + "a" * 32),
                         ("GET", "/$export-file/" + "a" * 32 + "/Patient/Patient-1.ndjson"), ("POST", ""),
                         ("GET", "/_history"), ("POST", "/metadata")):
        r = requests.request(method, srv.base + path, timeout=30)
        assert_outcome(r, 401, mentions=["not signed"])
        assert r.headers.get("WWW-Authenticate") == "AWS4-HMAC-SHA256", r.headers


def test_botocore_signed_requests_follow_the_policies(srv):
    r = put_patient(srv, "admin")
    assert r.status_code == 201, r.text
    assert signed("admin", "GET", f"{srv.base}/Patient/p1").json()["gender"] == "female"
    assert signed("reader", "GET", f"{srv.base}/Patient/p1").status_code == 200
    assert signed("reader", "GET", f"{srv.base}/Patient?gender=female").json()["total"] == 1
    arn = f"arn:aws:healthlake:{REGION}:{ACCOUNT}:datastore/fhir/{srv.datastore_id}"
    assert_outcome(put_patient(srv, "reader"), 403,
                   mentions=["AKIAREADER000000001", "is not authorized to perform: healthlake:UpdateResource", arn])
    # An explicit Deny beats the Allow of healthlake:*.
    assert_outcome(signed("nodelete", "DELETE", f"{srv.base}/Patient/p1"), 403, mentions=["explicit deny"])
    assert signed("nodelete", "GET", f"{srv.base}/Patient/p1").status_code == 200
    # aws:SourceIp: this client is 127.0.0.1, not in 10.0.0.0/8.
    assert_outcome(signed("elsewhere", "GET", f"{srv.base}/Patient/p1"), 403, mentions=["healthlake:ReadResource"])


def test_bad_signatures_are_403_with_the_reason(srv):
    assert_outcome(signed("admin", "GET", f"{srv.base}/Patient/p1", secret="wrong"), 403, mentions=["does not match"])
    req = AWSRequest(method="GET", url=f"{srv.base}/Patient/p1")
    SigV4Auth(Credentials("AKIAUNKNOWN00000001", "x"), "healthlake", REGION).add_auth(req)
    assert_outcome(requests.get(req.url, headers=dict(req.headers.items()), timeout=30), 403,
                   mentions=["unknown access key"])
    # Signed for another service or region.
    for service, region, mention in (("s3", REGION, "service"), ("healthlake", "eu-west-1", "region")):
        req = AWSRequest(method="GET", url=f"{srv.base}/Patient/p1")
        SigV4Auth(Credentials(*PRINCIPALS["admin"][:2]), service, region).add_auth(req)
        assert_outcome(requests.get(req.url, headers=dict(req.headers.items()), timeout=30), 403, mentions=[mention])
    # A signed request whose body was changed on the way.
    body = json.dumps({"resourceType": "Patient", "id": "p1"}).encode()
    req = AWSRequest(method="PUT", url=f"{srv.base}/Patient/p1", data=body, headers={"Content-Type": FHIR_JSON})
    SigV4Auth(Credentials(*PRINCIPALS["admin"][:2]), "healthlake", REGION).add_auth(req)
    r = requests.put(req.url, data=body.replace(b"p1", b"p2"), headers=dict(req.headers.items()), timeout=30)
    assert_outcome(r, 403, mentions=["does not match"])
    # Correctly signed, but more than 15 minutes away from the server's clock (botocore's clock moved back).
    class Earlier(datetime.datetime):
        @classmethod
        def utcnow(cls):
            return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - datetime.timedelta(minutes=16)

    req = AWSRequest(method="PUT", url=f"{srv.base}/Patient/p1", data=body, headers={"Content-Type": FHIR_JSON})
    with mock.patch("botocore.auth.datetime.datetime", Earlier):
        SigV4Auth(Credentials(*PRINCIPALS["admin"][:2]), "healthlake", REGION).add_auth(req)
    r = requests.put(req.url, data=body, headers=dict(req.headers.items()), timeout=30)
    assert_outcome(r, 403, mentions=["15 minutes"])


def test_presigned_urls_work_until_they_expire(srv):
    assert put_patient(srv, "admin").status_code == 201
    url = presigned("reader", f"{srv.base}/Patient/p1", expires=2)
    r = requests.get(url, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == "p1"
    time.sleep(3)
    assert_outcome(requests.get(url, timeout=30), 403, mentions=["expired"])
    assert_outcome(requests.get(presigned("reader", f"{srv.base}/Patient/p1", 60).replace("Patient/p1", "Patient/p2"),
                                timeout=30), 403, mentions=["does not match"])


def test_curl_aws_sigv4(srv):
    assert put_patient(srv, "admin").status_code == 201
    key, secret, _ = PRINCIPALS["reader"]
    out = subprocess.run(["curl", "-sS", "--aws-sigv4", f"aws:amz:{REGION}:healthlake", "--user", f"{key}:{secret}",
                          "-w", "\n%{http_code}", f"{srv.base}/Patient/p1"], capture_output=True, text=True,
                         timeout=60)
    body, _, code = out.stdout.rpartition("\n")
    assert code == "200", out.stdout + out.stderr
    assert json.loads(body)["id"] == "p1"
    out = subprocess.run(["curl", "-sS", "--aws-sigv4", f"aws:amz:{REGION}:healthlake", "--user", f"{key}:wrong",
                          "-o", "/dev/null", "-w", "%{http_code}", f"{srv.base}/Patient/p1"], capture_output=True,
                         text=True, timeout=60)
    assert out.stdout == "403", out.stdout + out.stderr


def test_a_kickoff_naming_a_role_needs_iam_pass_role(srv):
    body = json.dumps(export_body()).encode()
    headers = {"Content-Type": FHIR_JSON, "Prefer": "respond-async"}
    r = signed("exporter", "POST", f"{srv.base}/$export?_type=Patient", body, headers)
    assert_outcome(r, 403, mentions=["iam:PassRole", export_body()["DataAccessRoleArn"]])
    r = signed("admin", "POST", f"{srv.base}/$export?_type=Patient", body, headers)
    assert r.status_code == 202, r.text
    job = r.json()["jobId"]
    assert signed("admin", "GET", f"{srv.base}/export/{job}").status_code == 200
    # The IG view's GET kick-off names no role.
    r = signed("exporter", "GET", f"{srv.base}/$export?_type=Patient",
               headers={"Accept": FHIR_JSON, "Prefer": "respond-async"})
    assert r.status_code == 202, r.text


def test_resource_tag_conditions_and_modes_per_datastore_reloaded_on_sighup(srv):
    assert put_patient(srv, "admin").status_code == 201
    # No tags yet: neither tag-conditioned principal is allowed.
    assert_outcome(signed("research", "GET", f"{srv.base}/Patient/p1"), 403)
    write_config(srv.config, datastores={srv.datastore_id: {"tags": {"team": "research"}}})
    srv.proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 10
    while signed("research", "GET", f"{srv.base}/Patient/p1").status_code != 200:
        assert time.time() < deadline, "the reloaded configuration did not take effect"
        time.sleep(0.1)
    assert_outcome(signed("ops", "GET", f"{srv.base}/Patient/p1"), 403, mentions=["healthlake:ReadResource"])
    # Mode none for this datastore: anonymous requests pass.
    write_config(srv.config, datastores={srv.datastore_id: {"modes": ["none"]}})
    srv.proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 10
    while requests.get(f"{srv.base}/Patient/p1", timeout=30).status_code != 200:
        assert time.time() < deadline, "mode none did not take effect"
        time.sleep(0.1)
    # A file that does not parse leaves the last good configuration in force.
    srv.config.write_text("{not json")
    srv.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert requests.get(f"{srv.base}/Patient/p1", timeout=30).status_code == 200
    assert srv.alive()


@pytest.mark.parametrize("config,mention", [
    ('{"issuers": [{"issuer": "https://idp.example", "audience": "fhirlake", "jwks": {"keys": []},'
     ' "algorithms": ["HS256"]}]}', "'HS256' is not accepted"),
    ('{"corsOrigins": ["https://app.example/path"]}', "not an origin"),
    ('{"principals": [{"accessKeyId": "short", "secretAccessKey": "x"}]}', "accessKeyId"),
    ("[1, 2]", "JSON object"),
])
def test_a_bad_configuration_stops_the_start_with_the_reason(tmp_path, config, mention):
    (tmp_path / "auth.json").write_text(config)
    r = subprocess.run([str(binary_path()), "serve", "--data-dir", str(tmp_path / "data"), "--listen", "127.0.0.1:0",
                        "--auth-config", str(tmp_path / "auth.json")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert mention in r.stderr, r.stderr


def test_mode_none_on_a_non_loopback_address_is_refused(tmp_path):
    # Refused before anything is bound.
    r = subprocess.run([str(binary_path()), "serve", "--data-dir", str(tmp_path / "data"), "--listen", "0.0.0.0:0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "--allow-insecure-none" in r.stderr and "--auth-config" in r.stderr, r.stderr


def test_jobs_are_visible_to_their_account_only(srv):
    body = json.dumps(export_body()).encode()
    r = signed("admin", "POST", f"{srv.base}/$export?_type=Patient", body,
               {"Content-Type": FHIR_JSON, "Prefer": "respond-async"})
    assert r.status_code == 202, r.text
    job = r.json()["jobId"]
    assert signed("exporter", "GET", f"{srv.base}/export/{job}").status_code == 200  # the same account
    # Another account's principal, allowed healthlake:*, is told what an unknown id gets: nothing reveals the job.
    theirs = signed("stranger", "GET", f"{srv.base}/export/{job}")
    unknown = signed("stranger", "GET", f"{srv.base}/export/{'f' * 32}")
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.json()["issue"][0]["diagnostics"] == unknown.json()["issue"][0]["diagnostics"].replace("f" * 32, job)
    assert signed("stranger", "DELETE", f"{srv.base}/export/{job}").status_code == 404
    # The IG view's status URL likewise.
    r = signed("admin", "GET", f"{srv.base}/$export?_type=Patient", headers={"Accept": FHIR_JSON,
                                                                              "Prefer": "respond-async"})
    assert r.status_code == 202, r.text
    poll = r.headers["Content-Location"]
    assert signed("stranger", "GET", poll, headers={"Accept": "application/json"}).status_code == 404
    assert signed("stranger", "DELETE", poll).status_code == 404
    assert signed("exporter", "GET", poll, headers={"Accept": "application/json"}).status_code in (200, 202)


def test_the_audit_log_records_every_decision_and_no_secret(srv):
    assert put_patient(srv, "admin").status_code == 201
    assert signed("reader", "GET", f"{srv.base}/Patient/p1").status_code == 200
    assert put_patient(srv, "reader").status_code == 403
    assert requests.get(f"{srv.base}/Patient/p1", timeout=30).status_code == 401
    assert signed("admin", "GET", f"{srv.base}/Patient/p1", secret="wrong").status_code == 403
    assert requests.get(f"{srv.base}/metadata", timeout=30).status_code == 200  # public: not judged, not logged
    text = srv.audit.read_text()
    lines = [json.loads(x) for x in text.splitlines()]
    got = [(x["principal"], x["action"], x["decision"], x.get("status")) for x in lines]
    user = f"arn:aws:iam::{ACCOUNT}:user/"
    assert got == [
        (user + "AKIAADMIN0000000001", "healthlake:UpdateResource", "allow", None),
        (user + "AKIAREADER000000001", "healthlake:ReadResource", "allow", None),
        (user + "AKIAREADER000000001", "healthlake:UpdateResource", "deny", 403),
        ("anonymous", "healthlake:ReadResource", "unauthenticated", 401),
        ("anonymous", "healthlake:ReadResource", "unauthenticated", 403),
    ], got
    assert all(x["datastoreId"] == srv.datastore_id and x["type"] == "Patient" and x["id"] == "p1" for x in lines)
    assert all(x["time"].endswith("Z") and len(x["requestId"]) == 16 for x in lines)
    for name, (_, secret, _) in PRINCIPALS.items():
        assert secret not in text, f"the audit log holds {name}'s secret"
    assert "Signature=" not in text and "AWS4-HMAC-SHA256" not in text
