"""SMART on FHIR Backend Services against the running server (docs/SECURITY.md): discovery, the token endpoint with
client assertions signed RS384 and ES384 by keys made with openssl in the test, every way an assertion can be wrong,
bearer tokens on the FHIR API, scopes that narrow reads and bulk exports, and export downloads that need the token.
The JWTs are built here with python3-cryptography (the server verifies them with libjwt).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import time
import uuid

import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from export_helpers import servers  # noqa: F401  (fixture)
from export_helpers import assert_outcome

FHIR_JSON = "application/fhir+json"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def openssl_key(tmp_path, kind):
    """A private key made by `openssl genpkey`: RSA 2048 or EC P-384."""
    path = tmp_path / f"{kind}-{uuid.uuid4().hex[:8]}.pem"
    opts = ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"] if kind == "rsa" else \
        ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"]
    subprocess.run(["openssl", "genpkey", *opts, "-out", str(path)], check=True, capture_output=True, timeout=60)
    return serialization.load_pem_private_key(path.read_bytes(), password=None)


def jwk(key, kid):
    pub = key.public_key()
    if isinstance(pub, rsa.RSAPublicKey):
        n = pub.public_numbers()
        return {"kty": "RSA", "kid": kid, "alg": "RS384", "n": b64u(n.n.to_bytes((n.n.bit_length() + 7) // 8, "big")),
                "e": b64u(n.e.to_bytes((n.e.bit_length() + 7) // 8, "big"))}
    n = pub.public_numbers()
    return {"kty": "EC", "kid": kid, "crv": "P-384", "alg": "ES384", "x": b64u(n.x.to_bytes(48, "big")),
            "y": b64u(n.y.to_bytes(48, "big"))}


def sign_jwt(header, claims, key=None, secret=None):
    signing_input = (b64u(json.dumps(header).encode()) + "." + b64u(json.dumps(claims).encode())).encode()
    alg = header["alg"]
    digest = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}.get(alg[2:])
    if alg.startswith("RS"):
        sig = key.sign(signing_input, padding.PKCS1v15(), digest)
    elif alg.startswith("ES"):
        size = {"256": 32, "384": 48, "512": 66}[alg[2:]]
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(digest)))
        sig = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    elif alg == "HS256":
        sig = hmac.new(secret, signing_input, hashlib.sha256).digest()
    else:
        sig = b""
    return signing_input.decode() + "." + b64u(sig)


class Smart:
    pass


@pytest.fixture
def smart(servers, tmp_path):
    e = Smart()
    e.rsa, e.ec, e.other = openssl_key(tmp_path, "rsa"), openssl_key(tmp_path, "ec"), openssl_key(tmp_path, "rsa")
    cfg = {"region": "us-east-1", "accountId": "111122223333", "defaultModes": ["smart"], "tokenLifetimeSeconds": 300,
           "smartClients": [
               {"clientId": "bulk-client", "jwks": {"keys": [jwk(e.rsa, "rsa-1"), jwk(e.ec, "ec-1")]},
                "scopes": ["system/*.*", "system/*.read", "system/Patient.rs", "patient/*.read"]},
               {"clientId": "other-client", "jwks": {"keys": [jwk(e.other, "rsa-2")]}, "scopes": ["system/*.read"]}]}
    (tmp_path / "auth.json").write_text(json.dumps(cfg))
    e.srv = servers.start(tmp_path / "data", ["--auth-config", str(tmp_path / "auth.json"),
                                              "--export-poll-seconds", "0"])
    e.root = f"http://127.0.0.1:{e.srv.port}"
    e.token_url = e.root + "/auth/token"
    e.data_dir = tmp_path / "data"
    return e


def assertion(e, key=None, kid="rsa-1", alg="RS384", client="bulk-client", **overrides):
    claims = {"iss": client, "sub": client, "aud": e.token_url, "exp": int(time.time()) + 240,
              "jti": uuid.uuid4().hex}
    claims.update(overrides)
    header = {"alg": alg, "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    return sign_jwt(header, claims, key=key if key is not None else (e.ec if alg == "ES384" else e.rsa))


def token_request(e, client_assertion, scope=None, grant_type="client_credentials"):
    form = {"grant_type": grant_type, "client_assertion_type": ASSERTION_TYPE, "client_assertion": client_assertion}
    if scope is not None:
        form["scope"] = scope
    return requests.post(e.token_url, data=form, timeout=30)


def token(e, scope, **kw):
    r = token_request(e, assertion(e, **kw), scope)
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def bearer(tok, extra=None):
    return {"Authorization": f"Bearer {tok}", **(extra or {})}


def oauth_error(r, status, error):
    assert r.status_code == status, f"{r.status_code} {r.text}"
    body = r.json()
    assert body["error"] == error, body
    assert body.get("error_description"), body
    return body["error_description"]


def test_discovery_and_capability_statement(smart):
    for url in (smart.root + "/.well-known/smart-configuration", smart.srv.base + "/.well-known/smart-configuration"):
        r = requests.get(url, timeout=30)
        assert r.status_code == 200, r.text
        c = r.json()
        assert c["token_endpoint"] == smart.token_url
        assert "private_key_jwt" in c["token_endpoint_auth_methods_supported"]
        assert {"RS384", "ES384"} <= set(c["token_endpoint_auth_signing_alg_values_supported"])
        assert c["grant_types_supported"] == ["client_credentials"]
        assert "system/*.read" in c["scopes_supported"]
    cs = requests.get(smart.srv.base + "/metadata", timeout=30).json()
    ext = cs["rest"][0]["security"]["extension"][0]
    assert ext["url"] == "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
    assert {"url": "token", "valueUri": smart.token_url} in ext["extension"]


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_token_endpoint_issues_tokens_for_both_algorithms(smart, alg):
    r = token_request(smart, assertion(smart, alg=alg, kid="ec-1" if alg == "ES384" else "rsa-1"), "system/*.read")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 300 and body["scope"] == "system/*.read"
    assert r.headers.get("Cache-Control") == "no-store"
    assert requests.get(smart.srv.base + "/Patient", headers=bearer(body["access_token"]), timeout=30).status_code == 200


def test_every_bad_assertion_is_refused(smart, tmp_path):
    e = smart
    pub_pem = e.rsa.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    now = int(time.time())
    cases = {
        "signed with a key the client did not register": assertion(e, key=e.other),
        "expired": assertion(e, exp=now - 120),
        "exp more than five minutes ahead": assertion(e, exp=now + 900),
        "aud not the token endpoint": assertion(e, aud="https://elsewhere.example/token"),
        "sub not the client": assertion(e, sub="someone-else"),
        "unknown client": assertion(e, client="nobody"),
        "no jti": assertion(e, jti=""),
        "alg none": sign_jwt({"alg": "none", "typ": "JWT"},
                             {"iss": "bulk-client", "sub": "bulk-client", "aud": e.token_url, "exp": now + 60,
                              "jti": uuid.uuid4().hex}),
        "HS256 with the public key as the secret": sign_jwt(
            {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"},
            {"iss": "bulk-client", "sub": "bulk-client", "aud": e.token_url, "exp": now + 60, "jti": uuid.uuid4().hex},
            secret=pub_pem),
        "kid naming another client's key": assertion(e, key=e.other, kid="rsa-2"),
        "RS256 instead of RS384": assertion(e, alg="RS256"),
        "not a JWT": "not-a-jwt",
    }
    for why, a in cases.items():
        oauth_error(token_request(e, a, "system/*.read"), 401, "invalid_client")
    # A jti is good once.
    a = assertion(e)
    assert token_request(e, a, "system/*.read").status_code == 200
    assert "replay" in oauth_error(token_request(e, a, "system/*.read"), 401, "invalid_client")
    # Grant type, scope, form.
    oauth_error(token_request(e, assertion(e), "system/*.read", grant_type="password"), 400, "unsupported_grant_type")
    oauth_error(token_request(e, assertion(e), "system/*.write"), 400, "invalid_scope")
    oauth_error(token_request(e, assertion(e), "system/Nonsense.read"), 400, "invalid_scope")
    oauth_error(requests.post(e.token_url, data={"grant_type": "client_credentials"}, timeout=30), 400,
                "invalid_request")
    oauth_error(requests.post(e.token_url, data="{}", headers={"Content-Type": "application/json"}, timeout=30), 400,
                "invalid_request")


def test_bearer_tokens_and_scopes_on_the_fhir_api(smart):
    e = smart
    admin = token(e, "system/*.*")
    patient = {"resourceType": "Patient", "id": "p1", "gender": "female"}
    r = requests.put(e.srv.base + "/Patient/p1", data=json.dumps(patient), headers=bearer(admin, {"Content-Type": FHIR_JSON}),
                     timeout=30)
    assert r.status_code == 201, r.text
    narrow = token(e, "system/Patient.rs")
    assert requests.get(e.srv.base + "/Patient/p1", headers=bearer(narrow), timeout=30).status_code == 200
    assert requests.get(e.srv.base + "/Patient?gender=female", headers=bearer(narrow), timeout=30).json()["total"] == 1
    assert_outcome(requests.get(e.srv.base + "/Observation/o1", headers=bearer(narrow), timeout=30), 403,
                   mentions=["Observation"])
    assert_outcome(requests.put(e.srv.base + "/Patient/p1", data=json.dumps(patient),
                                headers=bearer(narrow, {"Content-Type": FHIR_JSON}), timeout=30), 403,
                   mentions=["updating"])
    # Without a token, with a broken one, and with one this server did not sign or that expired.
    assert_outcome(requests.get(e.srv.base + "/Patient/p1", timeout=30), 401, mentions=["Bearer"])
    r = requests.get(e.srv.base + "/Patient/p1", headers=bearer("garbage"), timeout=30)
    assert_outcome(r, 401)
    assert "invalid_token" in r.headers.get("WWW-Authenticate", "")
    key = (e.data_dir / "auth" / "token-key").read_bytes()
    claims = {"iss": e.token_url, "sub": "bulk-client", "scope": "system/*.*", "exp": int(time.time()) - 5,
              "jti": "x"}
    expired = sign_jwt({"alg": "HS256", "typ": "JWT"}, claims, secret=key)
    assert_outcome(requests.get(e.srv.base + "/Patient/p1", headers=bearer(expired), timeout=30), 401,
                   mentions=["expired"])
    claims["exp"] = int(time.time()) + 60
    forged = sign_jwt({"alg": "HS256", "typ": "JWT"}, claims, secret=b"not-the-server-key")
    assert_outcome(requests.get(e.srv.base + "/Patient/p1", headers=bearer(forged), timeout=30), 401,
                   mentions=["signature"])


def test_bulk_export_with_a_token_narrowed_by_its_scopes(smart):
    e = smart
    admin = token(e, "system/*.*")
    for i in range(3):
        body = {"resourceType": "Patient", "id": f"p{i}"}
        assert requests.put(f"{e.srv.base}/Patient/p{i}", data=json.dumps(body),
                            headers=bearer(admin, {"Content-Type": FHIR_JSON}), timeout=30).status_code == 201
        obs = {"resourceType": "Observation", "id": f"o{i}", "status": "final", "code": {"text": "x"},
               "subject": {"reference": f"Patient/p{i}"}}
        assert requests.put(f"{e.srv.base}/Observation/o{i}", data=json.dumps(obs),
                            headers=bearer(admin, {"Content-Type": FHIR_JSON}), timeout=30).status_code == 201
    kick = {"Accept": FHIR_JSON, "Prefer": "respond-async"}
    narrow = token(e, "system/Patient.rs")
    r = requests.get(e.srv.base + "/$export", headers=bearer(narrow, kick), timeout=30)
    assert r.status_code == 202, r.text
    poll = r.headers["Content-Location"]
    deadline = time.time() + 60
    while True:
        s = requests.get(poll, headers=bearer(narrow, {"Accept": "application/json"}), timeout=30)
        if s.status_code == 200:
            break
        assert s.status_code == 202 and time.time() < deadline, s.text
        time.sleep(0.2)
    m = s.json()
    assert m["requiresAccessToken"] is True
    assert [o["type"] for o in m["output"]] == ["Patient"], m["output"]
    url = m["output"][0]["url"]
    assert_outcome(requests.get(url, timeout=30), 401)
    got = requests.get(url, headers=bearer(narrow), timeout=30)
    assert got.status_code == 200 and got.text.count("\n") == 3
    # Another client may not see the job at all (the same 404 as an unknown job).
    other = token(e, "system/*.read", key=e.other, kid="rsa-2", client="other-client")
    assert requests.get(poll, headers=bearer(other, {"Accept": "application/json"}), timeout=30).status_code == 404
    assert requests.get(url, headers=bearer(other), timeout=30).status_code == 404
    # A _type the scopes do not cover, and patient/ scopes: 403.
    assert_outcome(requests.get(e.srv.base + "/$export?_type=Observation", headers=bearer(narrow, kick), timeout=30),
                   403, mentions=["Observation"])
    # includeAssociatedData exports Provenance: a scope for it is needed too.
    assert_outcome(requests.get(e.srv.base + "/$export?_type=Patient&includeAssociatedData=LatestProvenanceResources",
                                headers=bearer(narrow, kick), timeout=30), 403, mentions=["Provenance"])
    patient_scoped = token(e, "patient/*.read")
    assert_outcome(requests.get(e.srv.base + "/$export", headers=bearer(patient_scoped, kick), timeout=30), 403,
                   mentions=["system/"])


ROUTES = [("GET", "/Patient/p1"), ("GET", "/Patient"), ("PUT", "/Patient/p1"), ("POST", "/Patient"),
          ("DELETE", "/Patient/p1"), ("GET", "/$export"), ("POST", "/$export"), ("GET", "/export/" + "a" * 32),
          ("DELETE", "/export/" + "a" * 32), ("GET", "/$export-poll-status/" + "a" * 32),
          ("DELETE", "/$export-poll-status/" + "a" * 32),
          ("GET", "/$export-file/" + "a" * 32 + "/Patient/Patient-1.ndjson"), ("POST", ""), ("GET", "/_history"),
          ("GET", "/Patient/_history"), ("GET", "/Patient/p1/_history"), ("GET", "/Patient/p1/$everything"),
          ("GET", "/Patient/p1/Observation"), ("POST", "/Patient/_search"), ("PATCH", "/Patient/p1"),
          ("POST", "/metadata"), ("GET", "/OperationDefinition/export")]


def test_every_route_needs_a_token_and_a_patient_scope_gets_nothing(smart):
    useless = token(smart, "patient/*.read")
    for method, path in ROUTES:
        r = requests.request(method, smart.srv.base + path, timeout=30)
        assert r.status_code == 401, (method, path, r.status_code, r.text[:300])
        r = requests.request(method, smart.srv.base + path, headers=bearer(useless), timeout=30)
        assert r.status_code == 403, (method, path, r.status_code, r.text[:300])


def test_narrow_scopes_cannot_reach_other_types(smart):
    """_include, _revinclude, _has and chains (also inside a _typeFilter) read past the searched type: with scopes
    narrower than every type they are refused; a HealthLake kick-off body (an IAM role and a bucket) is SigV4's."""
    e = smart
    narrow = token(e, "system/Patient.rs")
    for query in ("_revinclude=Observation:subject", "_include=Patient:general-practitioner",
                  "_has:Observation:subject:code=x", "general-practitioner.name=x", "organization.name=x"):
        assert_outcome(requests.get(f"{e.srv.base}/Patient?{query}", headers=bearer(narrow), timeout=30), 403,
                       mentions=["system/*.read"])
    r = requests.post(f"{e.srv.base}/Patient/_search", data="_revinclude=Observation:subject",
                      headers=bearer(narrow, {"Content-Type": "application/x-www-form-urlencoded"}), timeout=30)
    assert_outcome(r, 403, mentions=["_revinclude"])
    wide = token(e, "system/*.read")
    assert requests.get(f"{e.srv.base}/Patient?_revinclude=Observation:subject", headers=bearer(wide),
                        timeout=30).status_code == 200
    kick = {"Accept": FHIR_JSON, "Prefer": "respond-async"}
    r = requests.get(e.srv.base + "/$export?_type=Patient&_typeFilter=" +
                     requests.utils.quote("Patient?_has:Observation:subject:code=x", safe=""),
                     headers=bearer(narrow, kick), timeout=30)
    assert_outcome(r, 403, mentions=["_typeFilter"])
    body = json.dumps({"DataAccessRoleArn": "arn:aws:iam::999999999999:role/SomeoneElses",
                       "OutputDataConfig": {"S3Configuration": {"S3Uri": "s3://other-team-bucket/x",
                                                                "KmsKeyId": "alias/x"}}})
    r = requests.post(e.srv.base + "/$export?_type=Patient", data=body,
                      headers=bearer(wide, {**kick, "Content-Type": FHIR_JSON}), timeout=30)
    assert_outcome(r, 403, mentions=["iam:PassRole"])


def test_a_reload_revokes_removed_clients_and_keeps_replay_records(smart, tmp_path):
    e = smart
    other = token(e, "system/*.read", key=e.other, kid="rsa-2", client="other-client")
    used = assertion(e)
    assert token_request(e, used, "system/*.read").status_code == 200
    cfg = json.loads((tmp_path / "auth.json").read_text())
    cfg["smartClients"] = [c for c in cfg["smartClients"] if c["clientId"] != "other-client"]
    cfg["smartClients"][0]["scopes"] = ["system/*.read"]  # system/*.* taken away
    (tmp_path / "auth.json").write_text(json.dumps(cfg))
    admin_before = token(e, "system/*.*")
    e.srv.proc.send_signal(__import__("signal").SIGHUP)
    deadline = time.time() + 10
    while requests.get(e.srv.base + "/Patient", headers=bearer(other), timeout=30).status_code != 401:
        assert time.time() < deadline, "the removed client's token still works after the reload"
        time.sleep(0.1)
    assert "replay" in oauth_error(token_request(e, used, "system/*.read"), 401, "invalid_client")
    # A scope the configuration no longer grants no longer counts, even in a token issued before.
    r = requests.put(e.srv.base + "/Patient/p9", data=json.dumps({"resourceType": "Patient", "id": "p9"}),
                     headers=bearer(admin_before, {"Content-Type": FHIR_JSON}), timeout=30)
    assert_outcome(r, 403, mentions=["updating"])


def test_a_restart_does_not_reopen_a_replay_window(servers, tmp_path):
    """Used assertion ids are kept in the data directory: after a restart the same assertion is still a replay. The
    public URL is fixed so that the token URL (the assertions' aud) stays the same across the restart."""
    key = openssl_key(tmp_path, "ec")
    cfg = {"defaultModes": ["smart"], "smartClients": [
        {"clientId": "bulk-client", "jwks": {"keys": [jwk(key, "ec-1")]}, "scopes": ["system/*.read"]}]}
    (tmp_path / "auth.json").write_text(json.dumps(cfg))
    public = "http://127.0.0.1:9"  # what the server writes in URLs; requests go to its real port
    srv = servers.start(tmp_path / "data", ["--auth-config", str(tmp_path / "auth.json"), "--public-url", public])
    e = Smart()
    e.token_url = public + "/auth/token"
    used = assertion(e, key=key, kid="ec-1", alg="ES384")

    def post(a):
        form = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE, "client_assertion": a}
        return requests.post(f"http://127.0.0.1:{srv.port}/auth/token", data=form, timeout=30)

    assert post(used).status_code == 200
    srv.stop()
    srv = servers.start(tmp_path / "data", ["--auth-config", str(tmp_path / "auth.json"), "--public-url", public])
    assert "replay" in oauth_error(post(used), 401, "invalid_client")
    assert post(assertion(e, key=key, kid="ec-1", alg="ES384")).status_code == 200
    ids = (tmp_path / "data" / "auth" / "assertion-ids").read_text()
    assert len(ids.splitlines()) == 2 and "bulk-client" not in ids  # ids are encoded, one line each
