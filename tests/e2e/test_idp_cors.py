"""External identity providers, JWKS URLs and CORS against the running server (docs/SECURITY.md): bearer JWTs of a
configured issuer (RS256 and ES256, keys made by openssl here) with every check that can fail (iss, aud, alg, exp,
nbf, key), keys fetched from a JWKS URL served on loopback by this test (and fetched again when the issuer rotates its
keys), an issuer's scope ceiling, job ownership by issuer subject, and the CORS answers browser apps depend on.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from export_helpers import servers  # noqa: F401  (fixture)
from export_helpers import assert_outcome
from test_smart import ASSERTION_TYPE, b64u, openssl_key, sign_jwt

FHIR_JSON = "application/fhir+json"
IDP = "https://idp.example"
NOT_SIGNED = "not signed by a key of this server or of a configured issuer"
AUD = "fhirlake-e2e"
APP = "https://app.example.org"


def p256_key(tmp_path):
    path = tmp_path / f"p256-{uuid.uuid4().hex[:8]}.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out",
                    str(path)], check=True, capture_output=True, timeout=60)
    return serialization.load_pem_private_key(path.read_bytes(), password=None)


def public_jwk(key, kid):
    pub = key.public_key()
    if isinstance(pub, rsa.RSAPublicKey):
        n = pub.public_numbers()
        return {"kty": "RSA", "kid": kid, "n": b64u(n.n.to_bytes((n.n.bit_length() + 7) // 8, "big")),
                "e": b64u(n.e.to_bytes((n.e.bit_length() + 7) // 8, "big"))}
    n = pub.public_numbers()
    size = (pub.curve.key_size + 7) // 8
    crv = {256: "P-256", 384: "P-384"}[pub.curve.key_size]
    return {"kty": "EC", "kid": kid, "crv": crv, "x": b64u(n.x.to_bytes(size, "big")),
            "y": b64u(n.y.to_bytes(size, "big"))}


class JwksServer:
    """Serves JWKS documents on 127.0.0.1 and counts the GETs of each."""

    def __init__(self):
        self.docs: dict[str, dict] = {}
        self.hits: dict[str, int] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.hits[self.path] = outer.hits.get(self.path, 0) + 1
                doc = outer.docs.get(self.path)
                body = json.dumps(doc).encode() if doc is not None else b"{}"
                self.send_response(200 if doc is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class Env:
    pass


@pytest.fixture
def env(servers, tmp_path):
    e = Env()
    e.jwks = JwksServer()
    e.rsa, e.p256, e.rotated, e.stranger = (openssl_key(tmp_path, "rsa"), p256_key(tmp_path),
                                            openssl_key(tmp_path, "rsa"), openssl_key(tmp_path, "rsa"))
    e.client_key = openssl_key(tmp_path, "rsa")
    # As Keycloak publishes it: signature keys, and an encryption key (RSA-OAEP) and an Ed25519 key that this server
    # does not verify with (left out, not a reason to refuse the set).
    enc = dict(public_jwk(e.stranger, "idp-enc"), use="enc", alg="RSA-OAEP")
    okp = {"kty": "OKP", "crv": "Ed25519", "kid": "idp-okp", "x": b64u(b"\x01" * 32), "use": "sig"}
    e.jwks.docs["/idp.json"] = {"keys": [dict(public_jwk(e.rsa, "idp-rsa"), use="sig", alg="RS256"), enc, okp,
                                         public_jwk(e.p256, "idp-ec")]}
    e.jwks.docs["/client.json"] = {"keys": [dict(public_jwk(e.client_key, "c-1"), alg="RS384")]}
    e.ceiling_key = openssl_key(tmp_path, "ec")
    e.cfg = {"defaultModes": ["smart"],
             "smartClients": [{"clientId": "url-client", "jwksUrl": e.jwks.url + "/client.json",
                               "scopes": ["system/*.read"]}],
             "issuers": [{"issuer": IDP, "audience": AUD, "jwksUrl": e.jwks.url + "/idp.json",
                          "algorithms": ["RS256", "ES256"]},
                         {"issuer": "https://narrow.example", "audience": AUD, "algorithms": ["ES384"],
                          "jwks": {"keys": [public_jwk(e.ceiling_key, "n-1")]}, "scopes": ["system/Patient.rs"]}],
             "corsOrigins": [APP, "http://localhost:3000"]}
    e.config = tmp_path / "auth.json"
    e.config.write_text(json.dumps(e.cfg))
    e.srv = servers.start(tmp_path / "data", ["--auth-config", str(e.config), "--export-poll-seconds", "0"])
    e.root = f"http://127.0.0.1:{e.srv.port}"
    yield e
    e.jwks.close()


def idp_token(e, sub="analyst-1", scope="system/*.cruds", alg="RS256", kid="idp-rsa", key=None, **overrides):
    now = int(time.time())
    claims = {"iss": IDP, "sub": sub, "aud": AUD, "exp": now + 300, "iat": now, "scope": scope}
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    if key is None:
        key = e.p256 if alg == "ES256" else e.rsa
    header = {"alg": alg, "typ": "JWT", "kid": kid}
    return sign_jwt(header, claims, key=key)


def auth(tok, extra=None):
    return {"Authorization": f"Bearer {tok}", **(extra or {})}


def put(e, tok, resource):
    r = requests.put(f"{e.srv.base}/{resource['resourceType']}/{resource['id']}", data=json.dumps(resource),
                     headers=auth(tok, {"Content-Type": FHIR_JSON}), timeout=30)
    assert r.status_code in (200, 201), r.text
    return r


@pytest.mark.parametrize("alg,kid", [("RS256", "idp-rsa"), ("ES256", "idp-ec")])
def test_an_issuers_tokens_are_accepted_with_their_scopes(env, alg, kid):
    e = env
    tok = idp_token(e, alg=alg, kid=kid)
    put(e, tok, {"resourceType": "Patient", "id": "p1", "gender": "male"})
    r = requests.get(f"{e.srv.base}/Patient/p1", headers=auth(tok), timeout=30)
    assert r.status_code == 200 and r.json()["gender"] == "male", r.text
    # "scp" (an array) is read when "scope" is absent; a read scope does not let it write.
    reader = idp_token(e, alg=alg, kid=kid, scope=None, scp=["system/Patient.rs"])
    assert requests.get(f"{e.srv.base}/Patient/p1", headers=auth(reader), timeout=30).status_code == 200
    assert_outcome(requests.put(f"{e.srv.base}/Patient/p1", data=json.dumps({"resourceType": "Patient", "id": "p1"}),
                                headers=auth(reader, {"Content-Type": FHIR_JSON}), timeout=30), 403,
                   mentions=["analyst-1", IDP, "updating"])


def test_every_bad_issuer_token_is_refused_with_the_reason(env, tmp_path):
    e = env
    now = int(time.time())
    hs_key = b"a-shared-secret"
    cases = [
        (idp_token(e, aud="someone-else"), "aud"),
        (idp_token(e, aud=["x", "y"]), "aud"),
        (idp_token(e, exp=now - 120), "expired"),
        (idp_token(e, exp=None), "exp"),
        (idp_token(e, nbf=now + 600), "nbf"),
        (idp_token(e, sub=None), "sub"),
        # Before the signature verifies, the answer is the same whatever the reason (it does not tell which issuers
        # are configured or what they accept); the log has the reason.
        (idp_token(e, key=e.stranger), NOT_SIGNED),
        (idp_token(e, kid="idp-ec", alg="RS256"), NOT_SIGNED),  # the kid names an EC key
        (idp_token(e, kid="idp-enc", key=e.stranger), NOT_SIGNED),  # an encryption key never verifies
        (idp_token(e, iss="https://unknown.example"), NOT_SIGNED),
        (sign_jwt({"alg": "HS256", "typ": "JWT"}, {"iss": IDP, "sub": "x", "aud": AUD, "exp": now + 60},
                  secret=hs_key), NOT_SIGNED),
        (sign_jwt({"alg": "none", "typ": "JWT"}, {"iss": IDP, "sub": "x", "aud": AUD, "exp": now + 60}),
         NOT_SIGNED),
        (sign_jwt({"alg": "RS384", "typ": "JWT", "kid": "idp-rsa"},
                  {"iss": IDP, "sub": "x", "aud": AUD, "exp": now + 60}, key=e.rsa), NOT_SIGNED),
    ]
    for tok, mention in cases:
        r = requests.get(f"{e.srv.base}/Patient", headers=auth(tok), timeout=30)
        assert_outcome(r, 401, mentions=[mention])
        assert "invalid_token" in r.headers.get("WWW-Authenticate", ""), r.headers
    # An HS256 token whose secret is the issuer's public key (the classic confusion) is refused the same way.
    pem = e.rsa.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    confused = sign_jwt({"alg": "HS256", "typ": "JWT", "kid": "idp-rsa"},
                        {"iss": IDP, "sub": "x", "aud": AUD, "exp": now + 60, "scope": "system/*.read"}, secret=pem)
    assert_outcome(requests.get(f"{e.srv.base}/Patient", headers=auth(confused), timeout=30), 401,
                   mentions=[NOT_SIGNED])
    # A filtered v2.2 scope from an issuer whose scopes do not list it grants nothing (its filter is not applied).
    filtered = idp_token(e, scope="system/Patient.rs?gender=male")
    assert_outcome(requests.get(f"{e.srv.base}/Patient", headers=auth(filtered), timeout=30), 403)
    assert e.srv.alive()


def test_rotated_keys_are_fetched_again_at_most_once_a_minute(env):
    e = env
    assert e.jwks.hits.get("/idp.json") == 1  # fetched when the configuration loaded
    new = idp_token(e, key=e.rotated, kid="idp-rsa-2")
    assert_outcome(requests.get(f"{e.srv.base}/Patient", headers=auth(new), timeout=30), 401)
    assert e.jwks.hits["/idp.json"] == 2  # the unknown kid made it look again: not there yet
    e.jwks.docs["/idp.json"]["keys"].append(public_jwk(e.rotated, "idp-rsa-2"))
    # Within the minute it does not look again (a stream of bad tokens cannot make it hammer the issuer).
    assert_outcome(requests.get(f"{e.srv.base}/Patient", headers=auth(new), timeout=30), 401)
    assert e.jwks.hits["/idp.json"] == 2
    # A reload fetches it again: the rotated key now verifies.
    e.srv.proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 10
    while requests.get(f"{e.srv.base}/Patient", headers=auth(new), timeout=30).status_code != 200:
        assert time.time() < deadline, "the rotated key was not picked up after SIGHUP"
        time.sleep(0.1)
    assert e.jwks.hits["/idp.json"] == 3
    # Known keys are not fetched for.
    assert requests.get(f"{e.srv.base}/Patient", headers=auth(idp_token(e)), timeout=30).status_code == 200
    assert e.jwks.hits["/idp.json"] == 3
    # The provider is down during a reload: the keys it had served stay in force.
    saved = e.jwks.docs.pop("/idp.json")
    e.srv.proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 10
    while e.jwks.hits["/idp.json"] < 4:
        assert time.time() < deadline, "the reload did not try the JWKS URL"
        time.sleep(0.05)
    time.sleep(0.3)  # the reload has swapped the configuration in
    assert requests.get(f"{e.srv.base}/Patient", headers=auth(new), timeout=30).status_code == 200
    e.jwks.docs["/idp.json"] = saved


def test_a_smart_client_with_a_jwks_url_gets_tokens(env):
    e = env
    token_url = e.root + "/auth/token"
    claims = {"iss": "url-client", "sub": "url-client", "aud": token_url, "exp": int(time.time()) + 240,
              "jti": uuid.uuid4().hex}
    form = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": sign_jwt({"alg": "RS384", "typ": "JWT", "kid": "c-1"}, claims, key=e.client_key),
            "scope": "system/*.read"}
    r = requests.post(token_url, data=form, timeout=30)
    assert r.status_code == 200, r.text
    assert requests.get(f"{e.srv.base}/Patient", headers=auth(r.json()["access_token"]),
                        timeout=30).status_code == 200
    assert e.jwks.hits["/client.json"] == 1


def test_an_issuers_scope_ceiling_and_job_ownership_by_subject(env):
    e = env
    admin = idp_token(e)
    put(e, admin, {"resourceType": "Patient", "id": "p1"})
    put(e, admin, {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"},
                   "subject": {"reference": "Patient/p1"}})
    # The narrow issuer's tokens may carry system/Patient.rs only: other scopes they claim are ignored.
    now = int(time.time())
    narrow = sign_jwt({"alg": "ES384", "typ": "JWT", "kid": "n-1"},
                      {"iss": "https://narrow.example", "sub": "robot", "aud": AUD, "exp": now + 300,
                       "scope": "system/Observation.rs system/Patient.rs system/*.cruds"}, key=e.ceiling_key)
    assert requests.get(f"{e.srv.base}/Patient/p1", headers=auth(narrow), timeout=30).status_code == 200
    assert_outcome(requests.get(f"{e.srv.base}/Observation/o1", headers=auth(narrow), timeout=30), 403,
                   mentions=["Observation"])
    # A job belongs to the issuer's subject: another subject of the same issuer does not see it.
    kick = {"Accept": FHIR_JSON, "Prefer": "respond-async"}
    r = requests.get(f"{e.srv.base}/$export", headers=auth(admin, kick), timeout=30)
    assert r.status_code == 202, r.text
    poll = r.headers["Content-Location"]
    deadline = time.time() + 60
    while True:
        s = requests.get(poll, headers=auth(admin, {"Accept": "application/json"}), timeout=30)
        if s.status_code == 200:
            break
        assert s.status_code == 202 and time.time() < deadline, s.text
        time.sleep(0.2)
    assert sorted(o["type"] for o in s.json()["output"]) == ["Observation", "Patient"]
    url = s.json()["output"][0]["url"]
    assert requests.get(url, headers=auth(admin), timeout=30).status_code == 200
    other = idp_token(e, sub="analyst-2")
    for u in (poll, url):
        assert requests.get(u, headers=auth(other, {"Accept": "application/json"}), timeout=30).status_code == 404
    assert requests.get(poll, headers=auth(narrow, {"Accept": "application/json"}), timeout=30).status_code == 404


EXPOSED = {"content-location", "location", "etag", "last-modified", "expires", "retry-after", "x-progress",
           "x-request-id", "content-range", "accept-ranges"}


def split(value):
    return {v.strip().lower() for v in value.split(",") if v.strip()}


def test_cors_preflight_and_answers(env):
    e = env
    url = f"{e.srv.base}/Patient"
    pre = {"Origin": APP, "Access-Control-Request-Method": "GET",
           "Access-Control-Request-Headers": "authorization, prefer"}
    r = requests.options(url, headers=pre, timeout=30)
    assert r.status_code == 204, r.text
    assert r.headers["Access-Control-Allow-Origin"] == APP
    assert r.headers["Access-Control-Allow-Credentials"] == "true"
    assert {"authorization", "prefer", "x-amz-date"} <= split(r.headers["Access-Control-Allow-Headers"])
    assert {"get", "post", "delete"} <= split(r.headers["Access-Control-Allow-Methods"])
    assert "origin" in split(r.headers["Vary"])
    # A preflight needs no credentials, but a disallowed origin gets no CORS headers (the browser then stops).
    bad = requests.options(url, headers={**pre, "Origin": "https://evil.example"}, timeout=30)
    assert_outcome(bad, 403, mentions=["https://evil.example", "corsOrigins"])
    assert "Access-Control-Allow-Origin" not in bad.headers
    # Answers to an allowed origin carry the headers, refusals too (the app can read why).
    tok = idp_token(e)
    ok = requests.get(url, headers=auth(tok, {"Origin": APP}), timeout=30)
    assert ok.status_code == 200
    assert ok.headers["Access-Control-Allow-Origin"] == APP
    assert EXPOSED <= split(ok.headers["Access-Control-Expose-Headers"])
    refused = requests.get(url, headers={"Origin": APP}, timeout=30)
    assert refused.status_code == 401 and refused.headers["Access-Control-Allow-Origin"] == APP
    other = requests.get(url, headers=auth(tok, {"Origin": "https://evil.example"}), timeout=30)
    assert other.status_code == 200 and "Access-Control-Allow-Origin" not in other.headers
    plain = requests.get(url, headers=auth(tok), timeout=30)
    assert plain.headers.get("Access-Control-Allow-Origin") is None
    assert "origin" in split(plain.headers["Vary"])  # caches keep the answers per Origin apart
    # OPTIONS without the preflight headers is no preflight: routed, and no route takes OPTIONS.
    assert requests.options(url, headers={"Origin": APP}, timeout=30).status_code == 405


def test_cors_wildcard_never_allows_credentials(env):
    e = env
    e.cfg["corsOrigins"] = ["*"]
    e.config.write_text(json.dumps(e.cfg))
    e.srv.proc.send_signal(signal.SIGHUP)
    url = f"{e.srv.base}/Patient"
    pre = {"Origin": "https://anyone.example", "Access-Control-Request-Method": "GET"}
    deadline = time.time() + 10
    while True:
        r = requests.options(url, headers=pre, timeout=30)
        if r.status_code == 204 and r.headers.get("Access-Control-Allow-Origin") == "*":
            break
        assert time.time() < deadline, (r.status_code, r.headers)
        time.sleep(0.1)
    assert "Access-Control-Allow-Credentials" not in r.headers
    got = requests.get(url, headers=auth(idp_token(e), {"Origin": "https://anyone.example"}), timeout=30)
    assert got.status_code == 200 and got.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in got.headers
    # Without corsOrigins there is no CORS at all: a preflight is routed like any OPTIONS.
    del e.cfg["corsOrigins"]
    e.config.write_text(json.dumps(e.cfg))
    e.srv.proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 10
    while requests.options(url, headers=pre, timeout=30).status_code != 405:
        assert time.time() < deadline
        time.sleep(0.1)
