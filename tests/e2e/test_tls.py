"""TLS (--tls-cert/--tls-key) against the running server: a certificate made by openssl in the test, FHIR requests
and a whole Bulk Data export (kick-off, poll, download) over HTTPS with Python requests and curl, TLS 1.2 and 1.3
accepted and TLS 1.0/1.1 refused by the server (the client offers them), plain HTTP on the TLS port refused without
harm, SigV4 over TLS with aws:SecureTransport, and bad TLS options stopping the start with the reason.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time
import warnings

import pytest
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from export_helpers import binary_path, servers  # noqa: F401  (fixture)
from export_helpers import assert_outcome

FHIR_JSON = "application/fhir+json"


def make_cert(dirpath, name="server"):
    cert, key = dirpath / f"{name}.crt", dirpath / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.fixture
def tls(servers, tmp_path):
    cert, key = make_cert(tmp_path)
    srv = servers.start(tmp_path / "data", ["--tls-cert", str(cert), "--tls-key", str(key),
                                            "--export-poll-seconds", "0"])
    srv.cert = cert
    return srv


def test_fhir_and_a_bulk_export_over_https(tls):
    s = tls
    assert s.base.startswith("https://127.0.0.1:")
    sess = requests.Session()
    sess.trust_env = False  # else REQUESTS_CA_BUNDLE would override verify
    sess.verify = str(s.cert)
    for i in range(3):
        r = sess.put(f"{s.base}/Patient/p{i}", data=json.dumps({"resourceType": "Patient", "id": f"p{i}"}),
                     headers={"Content-Type": FHIR_JSON}, timeout=30)
        assert r.status_code == 201, r.text
    assert sess.get(f"{s.base}/Patient/p1", timeout=30).json()["id"] == "p1"
    r = sess.get(f"{s.base}/$export", headers={"Accept": FHIR_JSON, "Prefer": "respond-async"}, timeout=30)
    assert r.status_code == 202, r.text
    poll = r.headers["Content-Location"]
    assert poll.startswith("https://127.0.0.1:"), poll
    deadline = time.time() + 60
    while (m := sess.get(poll, timeout=30)).status_code != 200:
        assert m.status_code == 202 and time.time() < deadline, m.text
        time.sleep(0.1)
    out = m.json()["output"]
    assert [o["type"] for o in out] == ["Patient"] and out[0]["url"].startswith("https://"), out
    got = sess.get(out[0]["url"], headers={"Accept-Encoding": "gzip"}, timeout=30)
    assert got.status_code == 200 and got.headers["Content-Encoding"] == "gzip"
    assert sorted(json.loads(line)["id"] for line in got.text.splitlines()) == ["p0", "p1", "p2"]
    part = sess.get(out[0]["url"], headers={"Range": "bytes=0-9"}, timeout=30)
    assert part.status_code == 206 and len(part.content) == 10
    # Without the certificate the client refuses the server: nothing falls back to plain HTTP.
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{s.root}/healthz", timeout=30)


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_curl_with_tls_12_and_13(tls, version):
    r = subprocess.run(["curl", "-sS", "--cacert", str(tls.cert), f"--tlsv{version}", "--tls-max", version,
                        "-o", "/dev/null", "-w", "%{http_code}", f"{tls.root}/healthz"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout == "200", r.stdout + r.stderr


def handshake(port, cafile, maximum):
    """A TLS handshake offering TLS 1.0 up to `maximum` (OpenSSL's security level 0, so 1.0/1.1 can be offered)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():  # TLS 1.0 and 1.1 are deprecated: offering them is the point here
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = maximum
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
            return conn.version()


def test_the_server_refuses_tls_10_and_11(tls):
    # The same client settings succeed up to TLS 1.2: the refusal below is the server's.
    assert handshake(tls.port, tls.cert, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old_versions = (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1)
    for old in old_versions:
        with pytest.raises(ssl.SSLError) as err:
            handshake(tls.port, tls.cert, old)
        assert "version" in str(err.value).lower() or "protocol" in str(err.value).lower(), err.value
    assert tls.alive()


def test_plain_http_on_the_tls_port_is_refused_without_harm(tls):
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{tls.port}/healthz", timeout=30)
    # A client that connects and sends garbage, or nothing, does not hold the server up.
    with socket.create_connection(("127.0.0.1", tls.port), timeout=30) as raw:
        raw.sendall(b"\x16\x03\x01\x00\x05hello")
    assert tls.sess.get(f"{tls.root}/healthz").status_code == 200
    assert tls.alive()


def test_an_error_answer_closes_the_tls_connection_cleanly(servers, tmp_path):
    """A 413 ends the connection (Connection: close): over TLS with close_notify, and the client reads the answer."""
    cert, key = make_cert(tmp_path)
    srv = servers.start(tmp_path / "data", ["--tls-cert", str(cert), "--tls-key", str(key),
                                            "--max-body-bytes", "1000"])
    big = tmp_path / "big.json"
    big.write_bytes(b"x" * (20 << 20))
    # 20 MB sent at once (no Expect: 100-continue), so the client is still uploading when the 413 comes: the server
    # reads and drops the rest before it closes, and every try gets the answer.
    for attempt in range(5):
        r = subprocess.run(["curl", "-sS", "--cacert", str(cert), "-X", "POST", "-H", f"Content-Type: {FHIR_JSON}",
                            "-H", "Expect:", "--data-binary", f"@{big}", "-w", "\n%{http_code}", f"{srv.base}/Patient"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, (attempt, r.stderr)
        body, status = r.stdout.rsplit("\n", 1)
        assert status == "413" and json.loads(body)["resourceType"] == "OperationOutcome", (attempt, r.stdout)
    assert srv.sess.get(f"{srv.root}/healthz").status_code == 200


def test_sigv4_over_tls_sees_secure_transport(servers, tmp_path):
    cert, key = make_cert(tmp_path)
    only_tls = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "healthlake:*", "Resource": "*",
         "Condition": {"Bool": {"aws:SecureTransport": "true"}}}]}
    cfg = {"region": "us-east-1", "accountId": "111122223333", "defaultModes": ["sigv4"],
           "principals": [{"accessKeyId": "AKIATLSONLY00000001", "secretAccessKey": "tls-secret",
                           "policies": [only_tls]}]}
    (tmp_path / "auth.json").write_text(json.dumps(cfg))
    over_tls = servers.start(tmp_path / "a", ["--auth-config", str(tmp_path / "auth.json"), "--tls-cert", str(cert),
                                              "--tls-key", str(key)])
    plain = servers.start(tmp_path / "b", ["--auth-config", str(tmp_path / "auth.json")])

    def get(srv, verify):
        url = f"{srv.base}/Patient"
        req = AWSRequest(method="GET", url=url)
        SigV4Auth(Credentials("AKIATLSONLY00000001", "tls-secret"), "healthlake", "us-east-1").add_auth(req)
        return requests.get(url, headers=dict(req.headers.items()), verify=verify, timeout=30)

    assert get(over_tls, str(cert)).status_code == 200
    assert_outcome(get(plain, True), 403, mentions=["not authorized", "healthlake:SearchWithGet"])


@pytest.mark.parametrize("args,mention", [
    (["--tls-cert", "{cert}"], "--tls-key"),
    (["--tls-key", "{key}"], "--tls-cert"),
    (["--tls-cert", "{other_cert}", "--tls-key", "{key}"], "does not belong to the certificate"),
    (["--tls-cert", "{cert}", "--tls-key", "{tmp}/missing.key"], "cannot use the TLS private key"),
    (["--tls-cert", "{tmp}/missing.crt", "--tls-key", "{key}"], "cannot load the TLS certificate"),
    (["--tls-cert", "{key}", "--tls-key", "{key}"], "cannot load the TLS certificate"),
])
def test_bad_tls_options_stop_the_start_with_the_reason(tmp_path, args, mention):
    cert, key = make_cert(tmp_path)
    other_cert, _ = make_cert(tmp_path, "other")
    subst = {"cert": cert, "key": key, "other_cert": other_cert, "tmp": tmp_path}
    r = subprocess.run([str(binary_path()), "serve", "--data-dir", str(tmp_path / "data"), "--listen", "127.0.0.1:0",
                        *[a.format(**subst) for a in args]], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert mention in r.stderr, r.stderr
    assert "BEGIN" not in r.stderr  # never the key's contents
