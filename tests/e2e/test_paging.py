"""Paged history and Patient compartment reads (regression: both returned everything in one response, buffered
whole): `_count` (default 100, at most 1000), Bundle.link `self` and `next` with an opaque, URL-safe `page`
cursor, and Bundle.total counting the whole set on every page. Walking the next links gives exactly the unpaged
set: nothing missing, nothing twice, no next link on the last page."""

from __future__ import annotations

import collections
import re
import urllib.parse

import pytest

from fhirlake_helpers import assert_fhir_json, assert_outcome, describe_response

TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def links(bundle):
    out = {}
    for link in bundle.get("link") or []:
        assert link.get("relation") not in out, f"two {link.get('relation')} links: {bundle.get('link')}"
        out[link["relation"]] = link["url"]
    return out


def walk(http, url, count=None):
    """Follows next links from `url`; returns the pages (Bundles). Checks what every page must satisfy."""
    pages, total = [], None
    while url:
        assert len(pages) < 2000, f"paging from {url} does not end"
        r = http.get(url)
        assert r.status_code == 200, describe_response(r)
        assert_fhir_json(r)
        b = r.json()
        assert b.get("resourceType") == "Bundle", describe_response(r, 300)
        assert total is None or b.get("total") == total, f"total changed between pages: {b.get('total')} != {total}"
        total = b.get("total")
        ln = links(b)
        assert "self" in ln, b.get("link")
        entries = b.get("entry") or []
        if count is not None:
            assert len(entries) <= count, f"{len(entries)} entries with _count={count}"
        if "next" in ln:
            q = urllib.parse.parse_qs(urllib.parse.urlsplit(ln["next"]).query)
            assert len(q.get("page", [])) == 1 and TOKEN_RE.match(q["page"][0]), ln["next"]
            if count is not None:
                assert len(entries) == count, f"a page before the last holds {len(entries)} of {count} entries"
        pages.append(b)
        url = ln.get("next")
    return pages


def history_versions(pages):
    return [int(e["response"]["etag"].split('"')[1]) for p in pages for e in p.get("entry") or []]


def compartment_keys(pages):
    return [(e["resource"]["resourceType"], e["resource"]["id"]) for p in pages for e in p.get("entry") or []]


def put(http, server, resource):
    r = http.fhir("PUT", f"{server.base}/{resource['resourceType']}/{resource['id']}", resource)
    assert r.status_code in (200, 201), describe_response(r)


def observation(oid, pid):
    return {"resourceType": "Observation", "id": oid, "status": "final", "code": {"text": "x"},
            "subject": {"reference": f"Patient/{pid}"}}


def transaction(*resources):
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}} for r in resources]}


# ---- history ---------------------------------------------------------------------------------

def test_history_pages_cover_every_version_once(server, http):
    for i in range(23):
        put(http, server, {"resourceType": "Patient", "id": "pg-h1", "active": i % 2 == 0})
    r = http.delete(f"{server.base}/Patient/pg-h1")
    assert r.status_code in (200, 204), describe_response(r)
    want = list(range(24, 0, -1))  # newest first; 24 is the deletion
    for count in (1, 2, 5, 23, 24, 25, 1000):
        pages = walk(http, f"{server.base}/Patient/pg-h1/_history?_count={count}", count)
        assert history_versions(pages) == want, f"_count={count}"
        assert len(pages) == -(-24 // count), f"_count={count}: {len(pages)} pages"
        assert all(p["total"] == 24 for p in pages)
        assert "next" not in links(pages[-1])
    # the unpaged default fits in one page
    pages = walk(http, f"{server.base}/Patient/pg-h1/_history")
    assert len(pages) == 1 and history_versions(pages) == want
    assert pages[0]["entry"][0]["request"]["method"] == "DELETE"


def test_history_default_page_is_100(server, http):
    for i in range(130):
        put(http, server, {"resourceType": "Basic", "id": "pg-h2", "code": {"text": str(i)}})
    pages = walk(http, f"{server.base}/Basic/pg-h2/_history")
    assert [len(p["entry"]) for p in pages] == [100, 30]
    assert history_versions(pages) == list(range(130, 0, -1))
    # the next link keeps the page size
    assert "_count=100" in links(pages[0])["next"]


def test_history_cursor_is_stable_under_new_versions(server, http):
    for i in range(10):
        put(http, server, {"resourceType": "Patient", "id": "pg-h3", "gender": "other"})
    first = walk(http, f"{server.base}/Patient/pg-h3/_history?_count=4", 4)[0]
    assert history_versions([first]) == [10, 9, 8, 7]
    put(http, server, {"resourceType": "Patient", "id": "pg-h3", "gender": "male"})  # version 11, after the cursor
    rest = walk(http, links(first)["next"], 4)
    assert history_versions(rest) == [6, 5, 4, 3, 2, 1]
    assert rest[0]["total"] == 11


# ---- compartment -----------------------------------------------------------------------------

def test_compartment_pages_equal_the_whole_compartment(server, http):
    pid = "pg-c1"
    put(http, server, {"resourceType": "Patient", "id": pid})
    obs = [observation(f"pg-c1-o{i}", pid) for i in range(230)]
    encs = [{"resourceType": "Encounter", "id": f"pg-c1-e{i}", "status": "finished", "class": {"code": "AMB"},
             "subject": {"reference": f"Patient/{pid}"}} for i in range(40)]
    others = [observation(f"pg-c1-x{i}", "someone-else") for i in range(20)]
    r = http.fhir("POST", server.base, transaction(*obs, *encs, *others))
    assert r.status_code == 200, describe_response(r)
    want = [("Patient", pid)] + [("Observation", o["id"]) for o in obs] + [("Encounter", e["id"]) for e in encs]

    for count in (None, 1, 7, 100, 270, 271, 1000):
        q = "" if count is None else f"?_count={count}"
        pages = walk(http, f"{server.base}/Patient/{pid}/*{q}", count or 100)
        got = compartment_keys(pages)
        twice = [k for k, n in collections.Counter(got).items() if n > 1]
        assert not twice, f"_count={count}: returned twice: {twice[:5]}"
        assert sorted(got) == sorted(want), f"_count={count}: missing {set(want) - set(got)}, extra {set(got) - set(want)}"
        assert all(p["total"] == len(want) for p in pages)
        assert "next" not in links(pages[-1])
    assert len(walk(http, f"{server.base}/Patient/{pid}/*")) == 3  # 271 members, 100 a page

    # one type
    pages = walk(http, f"{server.base}/Patient/{pid}/Encounter?_count=15", 15)
    assert sorted(compartment_keys(pages)) == sorted(("Encounter", e["id"]) for e in encs)
    assert [len(p["entry"]) for p in pages] == [15, 15, 10]
    assert pages[0]["total"] == 40


def test_compartment_cursor_under_concurrent_writes(server, http):
    """A cursor is a position, not a snapshot: members changed behind it stay where they were (no duplicates),
    members deleted ahead of it are not returned, members added later come at the end."""
    pid = "pg-c2"
    put(http, server, {"resourceType": "Patient", "id": pid})
    r = http.fhir("POST", server.base, transaction(*[observation(f"pg-c2-o{i}", pid) for i in range(12)]))
    assert r.status_code == 200, describe_response(r)
    first = walk(http, f"{server.base}/Patient/{pid}/*?_count=5", 5)[0]
    seen = compartment_keys([first])
    assert seen[0] == ("Patient", pid)
    put(http, server, observation("pg-c2-o0", pid))  # already shown: updated in place
    assert http.delete(f"{server.base}/Observation/pg-c2-o8").status_code in (200, 204)
    put(http, server, observation("pg-c2-new", pid))
    rest = compartment_keys(walk(http, links(first)["next"], 5))
    assert ("Observation", "pg-c2-o0") not in rest and ("Observation", "pg-c2-o8") not in rest
    assert rest[-1] == ("Observation", "pg-c2-new")
    assert sorted(seen + rest) == sorted([("Patient", pid)] + [("Observation", f"pg-c2-o{i}") for i in range(12)
                                                                if i != 8] + [("Observation", "pg-c2-new")])


# ---- bad paging parameters -------------------------------------------------------------------

@pytest.mark.parametrize("count", ["0", "-1", "abc", "1001", "1.5", "", "99999999999999999999"])
def test_bad_count_is_400(server, http, count):
    put(http, server, {"resourceType": "Patient", "id": "pg-bad"})
    for path in ("Patient/pg-bad/_history", "Patient/pg-bad/*", "Patient/pg-bad/Observation"):
        assert_outcome(http.get(f"{server.base}/{path}?_count={count}"), 400, ("_count", "1000"))


def test_bad_cursor_is_400(server, http):
    for i in range(3):
        put(http, server, {"resourceType": "Patient", "id": "pg-cur", "active": bool(i)})
    history_next = links(walk(http, f"{server.base}/Patient/pg-cur/_history?_count=1", 1)[0])["next"]
    token = urllib.parse.parse_qs(urllib.parse.urlsplit(history_next).query)["page"][0]
    bad = ["garbage!", "AAAA", token + "x", token[:-1], "", "djI6aGlzdG9yeTo0",  # base64url of v2:history:4
           "djE6aGlzdG9yeTotMQ"]  # v1:history:-1
    for b in bad:
        assert_outcome(http.get(f"{server.base}/Patient/pg-cur/_history", params={"page": b}), 400, ("page cursor",))
    # a history cursor is no compartment cursor
    assert_outcome(http.get(f"{server.base}/Patient/pg-cur/*", params={"page": token}), 400,
                   ("another kind of read",))
    # the good one still works
    assert http.get(history_next).status_code == 200
