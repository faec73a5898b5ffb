"""Memory stays bounded: a large request body does not leave its parse buffers behind (regression: each handler
thread's parser kept buffers for the largest document it had seen, several times its size, for the life of the
process; four 40 MiB bodies grew the server by about 250 MiB)."""

from __future__ import annotations

import json

from fhirlake_helpers import Session, describe_response

BIG = 40 << 20


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_large_bodies_do_not_pin_parser_memory(server):
    big = {"resourceType": "Patient", "text": {"status": "generated", "div": "<div>" + "x" * BIG + "</div>"}}
    # A Patient posted to /Observation and in a transaction entry for Observation: parsed whole, then rejected, so
    # nothing reaches the database (whose page cache would grow too) and only the parse buffers could stay.
    direct = json.dumps(big).encode()
    tx = json.dumps({"resourceType": "Bundle", "type": "transaction",
                     "entry": [{"resource": big, "request": {"method": "POST", "url": "Observation"}}]}).encode()
    headers = {"Connection": "close"}  # no keep-alive read buffer stays behind either
    with Session() as s:
        r = s.fhir("POST", server.base + "/Patient", {"resourceType": "Patient"}, headers=headers)
        assert r.status_code == 201, describe_response(r)
        before = rss_mib(server.proc.pid)
        # More requests than handler threads would need to all be hit, so several threads see a large body.
        for body, url in [(direct, server.base + "/Observation")] * 4 + [(tx, server.base)] * 4:
            r = s.fhir("POST", url, body, headers=headers)
            assert r.status_code == 400, describe_response(r, 300)
        after = rss_mib(server.proc.pid)
    assert after - before < 60, f"RSS grew from {before:.0f} MiB to {after:.0f} MiB after 40 MiB bodies were rejected"
