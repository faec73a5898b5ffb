"""Patient compartment search, checked against a compartment computed independently in Python from
the R4 CompartmentDefinition and SearchParameters (no project code is used)."""

from __future__ import annotations

import collections

import pytest

from fhirlake_helpers import PatientCompartment, Session, assert_fhir_json, describe_response


@pytest.fixture(scope="session")
def compartment():
    return PatientCompartment()


@pytest.fixture(scope="session")
def expected_compartments(loaded_sample, compartment):
    """{patient id: {(type, id)}} computed from the input after the urn:uuid -> Type/id rewrite."""
    return compartment.expected_by_patient(loaded_sample.sample.expected.values())


def next_link(bundle):
    links = [l for l in bundle.get("link") or [] if l.get("relation") == "next"]
    assert len(links) <= 1, bundle.get("link")
    return links[0]["url"] if links else None


def searchset(session, url, page_counts=None):
    """The keys of every entry of a (paged) searchset, following next links to the last page. Bundle.total is the
    size of the whole set, on every page. The number of pages is appended to `page_counts` when given."""
    keys, total, pages = [], None, 0
    while url:
        pages += 1
        assert pages <= 1000, f"more than 1000 pages from {url}"
        r = session.get(url)
        assert r.status_code == 200, describe_response(r)
        assert_fhir_json(r)
        b = r.json()
        assert b.get("resourceType") == "Bundle" and b.get("type") == "searchset", describe_response(r, 300)
        assert total is None or b.get("total") == total, f"total changed between pages: {b.get('total')} != {total}"
        total = b.get("total")
        for e in b.get("entry") or []:
            res = e.get("resource")
            assert isinstance(res, dict) and res.get("resourceType") and res.get("id"), f"entry without resource: {e}"
            keys.append((res["resourceType"], res["id"]))
        url = next_link(b)
    assert total == len(keys), f"total {total} != {len(keys)} entries over {pages} page(s)"
    if page_counts is not None:
        page_counts.append(pages)
    return keys


def diff_message(pid, got, want):
    dup = [k for k, n in collections.Counter(got).items() if n > 1]
    missing = sorted(want - set(got))
    extra = sorted(set(got) - want)
    return (f"Patient/{pid}/*: {len(got)} entries, expected {len(want)}; "
            f"missing {len(missing)} {missing[:5]}, extra {len(extra)} {extra[:5]}, twice {dup[:5]}")


def test_walker_covers_the_sample_types(compartment, loaded_sample):
    """The test's own compartment model understands every type of the sample."""
    types = {t for t, _ in loaded_sample.sample.expected}
    assert not (types & set(compartment.unsupported)), compartment.unsupported
    assert compartment.paths["Observation"] == [["subject"], ["performer"]]
    assert ["member", "entity"] in compartment.paths["Group"]
    assert "Device" not in compartment.paths and "Organization" not in compartment.paths


@pytest.mark.slow
def test_every_patient_compartment(loaded_sample, expected_compartments):
    sample = loaded_sample.sample
    base = loaded_sample.server.base
    assert len(sample.patient_ids) == 100
    failures, seen = [], set()
    with Session() as s:
        for pid in sample.patient_ids:
            got = searchset(s, f"{base}/Patient/{pid}/*")
            want = expected_compartments.get(pid, set())
            assert ("Patient", pid) in want
            if len(got) != len(set(got)) or set(got) != want:
                failures.append(diff_message(pid, got, want))
            seen |= set(got)
    assert not failures, f"{len(failures)} of 100 compartments differ:\n" + "\n".join(failures[:10])
    in_some = set().union(*expected_compartments.values())
    assert in_some <= seen, f"{len(in_some - seen)} resources of some compartment never returned"
    # sanity of the expectation itself: every clinical resource of the sample is in a compartment
    assert len(in_some) == sum(1 for t, _ in sample.expected if t not in ("Organization", "Practitioner", "Device"))


def test_compartment_restricted_to_a_type(loaded_sample, expected_compartments):
    base = loaded_sample.server.base
    pids = loaded_sample.sample.patient_ids
    with Session() as s:
        for pid in pids[::7]:
            want_all = expected_compartments[pid]
            for t in ("Observation", "Encounter", "Group", "Patient", "Claim"):
                got = searchset(s, f"{base}/Patient/{pid}/{t}")
                want = {k for k in want_all if k[0] == t}
                assert len(got) == len(set(got)) and set(got) == want, diff_message(pid, got, want) + f" (type {t})"


def test_compartment_pages_of_the_largest_patient(loaded_sample, expected_compartments):
    """Walking the next links of the biggest compartment of the sample gives it exactly, whatever the page size."""
    base = loaded_sample.server.base
    pid = max(expected_compartments, key=lambda p: len(expected_compartments[p]))
    want = expected_compartments[pid]
    assert len(want) > 1000, len(want)  # more than the largest page: paging is exercised at every size
    with Session() as s:
        for count in (1000, 100, 37):
            pages = []
            got = searchset(s, f"{base}/Patient/{pid}/*?_count={count}", pages)
            assert len(got) == len(set(got)) and set(got) == want, diff_message(pid, got, want) + f" (_count={count})"
            assert pages == [-(-len(want) // count)], f"{pages} pages of {count} for {len(want)} entries"


def test_compartment_follows_changes(server, http):
    """Only current resources: a deleted one leaves, an updated reference moves it."""
    b = server.base
    for pid in ("cmp-a", "cmp-b"):
        assert http.fhir("PUT", f"{b}/Patient/{pid}", {"resourceType": "Patient", "id": pid}).status_code == 201
    obs = {"resourceType": "Observation", "id": "cmp-o1", "status": "final", "code": {"text": "x"},
           "subject": {"reference": "Patient/cmp-a"}}
    assert http.fhir("PUT", f"{b}/Observation/cmp-o1", obs).status_code == 201
    cond = {"resourceType": "Condition", "id": "cmp-c1", "subject": {"reference": "Patient/cmp-a"},
            "asserter": {"reference": "Patient/cmp-b"}}
    assert http.fhir("PUT", f"{b}/Condition/cmp-c1", cond).status_code == 201
    enc = {"resourceType": "Encounter", "id": "cmp-e1", "status": "finished",
           "class": {"code": "AMB"}, "subject": {"reference": "Patient/cmp-b"}}
    assert http.fhir("PUT", f"{b}/Encounter/cmp-e1", enc).status_code == 201

    def comp(pid):
        return sorted(searchset(http, f"{b}/Patient/{pid}/*"))

    assert comp("cmp-a") == [("Condition", "cmp-c1"), ("Observation", "cmp-o1"), ("Patient", "cmp-a")]
    assert comp("cmp-b") == [("Condition", "cmp-c1"), ("Encounter", "cmp-e1"), ("Patient", "cmp-b")]
    assert http.fhir("PUT", f"{b}/Observation/cmp-o1", dict(obs, subject={"reference": "Patient/cmp-b"})).status_code == 200
    r = http.delete(f"{b}/Encounter/cmp-e1")
    assert r.status_code in (200, 204)
    assert comp("cmp-a") == [("Condition", "cmp-c1"), ("Patient", "cmp-a")]
    assert comp("cmp-b") == [("Condition", "cmp-c1"), ("Observation", "cmp-o1"), ("Patient", "cmp-b")]
    got = http.get(f"{b}/Patient/cmp-b/Observation").json()
    assert got["total"] == 1 and got["entry"][0]["resource"]["subject"]["reference"] == "Patient/cmp-b"
