"""FHIR R4 search conformance: a table of query -> expected ids over the 100-patient Synthea sample (and a few
resources PUT on a second, fresh server for values the sample lacks), every expected set computed in Python from
the input files by search_eval.py (per-parameter extraction written after the R4 SearchParameter expressions),
never by asking the server. Cases with a LITERAL list / count were checked by hand with jq over the unpacked
files (the jq command is in the comment above each group); test_evaluator_matches_literals keeps the evaluator
honest against them and runs without a server:

    /usr/bin/python3 -m pytest tests/e2e/test_search.py -k evaluator

Server behaviour assumed (where R4 leaves room, the choice is stated):
- base = loaded_sample.server.base (`{url}/datastore/{id}/r4`); GET {base}/{Type}?..., POST {base}/{Type}/_search
  (form body) = the same; system search GET {base}/?_type=A,B&...; compartment GET {base}/Patient/{id}/{Type}?...
- default _count 50; the table queries add _count=1000 (the maximum) so large sets take few pages.
- Bundle: 200, application/fhir+json, type searchset, entry.fullUrl = {base}/{Type}/{id}, entry.search.mode
  match / include / outcome, link "self" always, "next" (absolute, followed as given) until the last page;
  Bundle.total present on every search (the default _total is accurate) and equal to the whole set.
- unknown parameters: 400 (strict is the default); `Prefer: handling=lenient` -> 200 with an OperationOutcome
  entry (search.mode = outcome) naming the parameter. Errors are 400 + OperationOutcome naming the parameter.
- dates without a zone are UTC (so Synthea's "...T20:00:00-05:00" is the NEXT day in a day-precision search).
- ge/le: literal R4 wording (gt or eq); every ge/le case here gives the same set under the overlap reading.
- ap on dates: 10% of the distance to now; ap cases here give the same set under plain overlap. ap on numbers:
  within 10% of the value.
- :text: starts-with (R4); every :text case here gives the same set with substring matching.
- prefixes only for number/date/quantity: `code=ge123` is the literal code "ge123" (an empty result).
- reference: {base}/Type/id (the server's own base) = Type/id; an absolute URL of another server matches nothing.
- _sort: ascending by the lowest value, descending by the highest; ties in any order (the order is checked as a
  non-decreasing/non-increasing key sequence, so ties never matter).
- _elements: only the listed elements + id, meta, resourceType; meta.tag holds the SUBSETTED code of
  http://terminology.hl7.org/CodeSystem/v3-ObservationValue.
- paging under concurrent writes: with an explicit sort on a key the writes do not change, every match comes
  exactly once (the default order is not assumed stable under updates).
"""

from __future__ import annotations

import collections
import threading
import time
import urllib.parse
from dataclasses import dataclass

import pytest

from fhirlake_helpers import (FHIR_JSON, Session, assert_fhir_json, assert_outcome,
                              describe_response)
from search_eval import Evaluator

# ---- a few ids of the sample (jq -r '.entry[0].resource | .id + " " + .name[0].given[0] + " " + .name[0].family')
ABRAM = "6c5d9ca9-54d7-42f5-bfae-a7c19cd217f2"    # Abram Lemke, born 1965-01-13, Easthampton
ALETA = "58c297c4-d684-4677-8024-01131d93835e"    # Aleta Wintheiser, 1971-04-05, 5 AllergyIntolerances
ALFREDO = "538a9a4e-8437-47d3-8c01-1a17dca8f0be"  # Alfredo Alaniz, 1923-03-24, Device + ImagingStudy
RAMON = "e6dde18e-af01-4f2f-b74a-1ec7d0368f93"    # Ramón (accented given name)
MARIA = "221fe1ec-a258-4fc4-8cc8-b7c960a8a0a9"    # María Teresa
ALLERGIC = "d33efe23-cef9-40e5-a7c0-6d68c1349e51"  # 8 AllergyIntolerances
HOLYOKE = "5d4b9df1-93ae-3bc9-b680-03249990e558"  # Organization HOLYOKE MEDICAL CENTER
OTIS = "87a5ab63-4cbe-3f5c-9287-5388c7187ef1"     # Practitioner Otis Ortiz
GROUP = "d9f31445-f448-48c0-af57-295c005e07df"
SUBSETTED = ("http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "SUBSETTED")


@dataclass
class Case:
    id: str
    query: str            # "Type?params" relative to the base; "{base}" is replaced by the server's base
    literal: tuple = None  # hand-checked ids (the whole set), or
    count: int = None      # hand-checked size of a large set
    some: tuple = ()       # hand-checked members of that large set


# How the literals were checked (by hand, against the unpacked files, not with search_eval.py): jq over
# data/synthea-r4-100/*.json, e.g.
#   P='.entry[]?.resource | select(.resourceType=="Patient")'
#   jq -r "$P | select(any(.name[].family; test(\"^(lemke|streich|o.reilly)\";\"i\"))) | .id" *.json
#   jq -r "$P | .birthDate + \" \" + .id" *.json | sort           (birthdate cases)
#   jq -r '.entry[]?.resource | select(.resourceType=="ImagingStudy") | .id + " " + .started' *.json  (dates,
#       converted to UTC by hand: 1994-10-30T20:21:56-05:00 = 1994-10-31T01:21:56Z)
#   jq -r '.entry[]?.resource | select(.resourceType=="AllergyIntolerance") | .patient.reference' *.json | uniq -c
#   jq -r '.entry[]?.resource | select(.resourceType=="Observation") | .category[]?.coding[].code' *.json | uniq -c
#   join of `jq` Patient ids born >= 1970 with Encounter.subject (chain-patient-birthdate = 1769)
# i.e. one select() per case on the raw JSON (references there are still urn:uuid:<id>). The EXTRA_CASES
# literals were worked out by hand from the EXTRA resources (the reasoning is in the comments there).
C = Case
CASES = [
    # ---- string: default starts-with, case- and accent-insensitive; :exact; :contains ---------------------
    # jq '.entry[].resource | select(.resourceType=="Patient") | .name[].given[]' data/synthea-r4-100/*.json
    C("str-accent-maria", "Patient?given=maria", literal=(MARIA,)),
    C("str-accent-ramon", "Patient?given=RAMON", literal=(RAMON,)),
    C("str-exact-accented", "Patient?given:exact=Ramón", literal=(RAMON,)),
    C("str-exact-unaccented", "Patient?given:exact=Ramon", literal=()),
    C("str-exact-case", "Patient?family:exact=lemke", literal=()),
    C("str-exact-lemke", "Patient?family:exact=Lemke", literal=(ABRAM,)),
    C("str-prefix-family", "Patient?family=Streich", literal=(
        "3ca9f003-e6dd-4110-b4c2-12c056b880f4", "4026988c-ab06-4635-8c53-86cbad7b1c56",
        "69071541-e760-4d0c-bf8a-961a061cb0d5")),
    C("str-prefix-short", "Patient?family=str"),
    C("str-not-infix", "Patient?family=treich", literal=()),
    C("str-apostrophe", "Patient?family=o'reilly", literal=("6e4c37f3-964b-4e10-ab13-c208efc30e71",)),
    C("str-contains", "Patient?name:contains=ette", literal=(
        "3ca9f003-e6dd-4110-b4c2-12c056b880f4", "fbfec681-d357-4b28-b1d2-5db6434c7846")),
    C("str-name-covers-given", "Patient?name=abram", literal=(ABRAM,)),
    C("str-name-covers-prefix", "Patient?name=mr."),
    C("str-or", "Patient?family=Lemke,Streich"),
    C("str-and", "Patient?family=Streich&given=d", literal=("3ca9f003-e6dd-4110-b4c2-12c056b880f4",)),  # Donnette
    C("str-city", "Patient?address-city=boston", count=10),
    C("str-address-any-part", "Patient?address=massachusetts", count=100),
    C("str-postalcode", "Patient?address-postalcode=021"),
    C("str-state", "Patient?address-state=mass", count=100),
    C("str-org-city-mixed-case", "Organization?address-city=brockton", count=8),
    C("str-org-name-contains", "Organization?name:contains=walk-in", count=4),
    C("str-org-name", "Organization?name=holyoke"),
    C("str-practitioner-family", "Practitioner?family=ortiz"),
    C("str-practitioner-name", "Practitioner?name=dr."),
    C("str-device-name", "Device?device-name=implantable cardiac", literal=(
        "e5320920-ad11-4de4-a5a7-c43b8532ced4", "efe0c5dc-85f9-4fcd-bd33-a61f770e75a1")),
    C("str-device-udi", "Device?udi-di=5137063705", literal=("758ebcae-33c1-4e44-8cb9-383520dbcb90",)),
    C("str-value-string", "Observation?value-string=patient is", count=12),
    C("str-missing", "Patient?name:missing=false", count=100),

    # ---- token ---------------------------------------------------------------------------------------------
    C("tok-code", "Patient?gender=female", count=40),
    C("tok-or", "Patient?gender=female,male", count=100),
    C("tok-not", "Patient?gender:not=female", count=60),
    C("tok-system-code", "Observation?code=http://loinc.org|6206-7", count=8),
    C("tok-code-alone", "Observation?code=6206-7", count=8),
    C("tok-no-system", "Observation?code=|6206-7", literal=()),
    C("tok-wrong-system", "Observation?code=http://snomed.info/sct|6206-7", literal=()),
    C("tok-system-only", "ImagingStudy?modality=http://dicom.nema.org/resources/ontology/DCM|", count=16),
    C("tok-prefix-is-literal", "Observation?code=ge123", literal=()),
    C("tok-or-codes", "Observation?code=http://loinc.org|6206-7,http://loinc.org|6273-7", count=16),
    C("tok-category", "Observation?category=exam", count=9),
    C("tok-category-and-code", "Observation?category=laboratory&code=http://loinc.org|2339-0", count=371),
    C("tok-bodysite", "ImagingStudy?bodysite=http://snomed.info/sct|72696002", literal=(
        "3d3267d1-0cf8-4199-a195-136bb0d1df51", "7bf15cd3-d4d0-446d-ae7a-28a3f016427d",
        "852e9450-69de-40e6-9a56-4b6ead01a9d5", "85245c6c-3909-4358-829b-ccf8eb0848ca",
        "f1f18d81-89c4-4be4-8910-6d15f2090233")),
    C("tok-vaccine", "Immunization?vaccine-code=http://hl7.org/fhir/sid/cvx|33", count=8),
    C("tok-vaccine-leading-zero", "Immunization?vaccine-code=08", count=17),
    C("tok-vaccine-not", "Immunization?vaccine-code:not=140", count=480),
    C("tok-encounter-class", "Encounter?class=IMP", count=101),
    C("tok-encounter-class-system", "Encounter?class=http://terminology.hl7.org/CodeSystem/v3-ActCode|EMER",
      count=138),
    C("tok-encounter-status", "Encounter?status=finished", count=3697),
    C("tok-mr-status", "MedicationRequest?status=active", count=135),
    C("tok-mr-intent", "MedicationRequest?intent=order&status=active", count=135),
    C("tok-careplan-status", "CarePlan?status=completed", count=165),
    C("tok-careteam-status", "CareTeam?status:not=inactive", count=113),
    C("tok-allergy-criticality", "AllergyIntolerance?criticality=low"),
    C("tok-allergy-category", "AllergyIntolerance?category=food", count=38),
    C("tok-condition-clinical", "Condition?clinical-status=resolved"),
    C("tok-condition-code", "Condition?code=http://snomed.info/sct|444814009", count=106),
    C("tok-claim-use", "Claim?use=claim", count=6083),
    C("tok-claim-priority", "Claim?priority=http://terminology.hl7.org/CodeSystem/processpriority|normal"),
    C("tok-eob-status", "ExplanationOfBenefit?status=active", count=3697),
    C("tok-dr-category", "DiagnosticReport?category=LAB"),
    C("tok-dr-code", "DiagnosticReport?code=http://loinc.org|24357-6", count=4),
    C("tok-dr-code-single", "DiagnosticReport?code=24360-0"),
    C("tok-procedure-code", "Procedure?code=http://snomed.info/sct|430193006"),
    C("tok-org-type", "Organization?type=prov"),
    C("tok-org-active", "Organization?active=true"),
    C("tok-boolean-false", "Patient?active=false", literal=()),
    C("tok-group-type", "Group?type=person", literal=(GROUP,)),
    C("tok-group-actual", "Group?actual=true", literal=(GROUP,)),
    C("tok-identifier-value", f"Patient?identifier={ABRAM}", literal=(ABRAM,)),
    C("tok-identifier-system-value", "Patient?identifier=http://hl7.org/fhir/sid/us-ssn|999-18-8203",
      literal=(ABRAM,)),
    C("tok-identifier-system-only", "Patient?identifier=http://hl7.org/fhir/sid/us-ssn|", count=100),
    C("tok-of-type", "Patient?identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|SS|999-18-8203",
      literal=(ABRAM,)),
    C("tok-of-type-wrong-type", "Patient?identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|DL|"
      "999-18-8203", literal=()),
    C("tok-practitioner-npi", "Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|9999999889"),
    C("tok-phone", "Patient?phone=555-532-1156", literal=(ABRAM,)),
    C("tok-telecom", "Patient?telecom=555-532-1156", literal=(ABRAM,)),
    C("tok-email", "Practitioner?email=Otis.Ortiz@example.com"),
    C("tok-language", "Patient?language=urn:ietf:bcp:47|en-US"),
    C("tok-text-cc", "Observation?code:text=hemoglobin a1c", count=269),
    C("tok-text-display", "Immunization?vaccine-code:text=zoster", count=30),
    C("tok-text-word", "DiagnosticReport?code:text=lipid", count=325),
    C("tok-text-identifier-type", "Patient?identifier:text=passport", count=78),
    C("tok-value-concept", "Observation?value-concept=http://snomed.info/sct|266919005"),
    C("tok-combo-code", "Observation?combo-code=http://loinc.org|8480-6"),
    C("tok-component-code", "Observation?component-code=http://loinc.org|8462-4"),
    C("tok-id", f"Patient?_id={ABRAM}", literal=(ABRAM,)),
    C("tok-id-or", f"Patient?_id={ABRAM},{ALETA},nosuchid", literal=(ABRAM, ALETA)),
    C("tok-id-and-gender", f"Patient?_id={ABRAM},{ALETA}&gender=female", literal=(ALETA,)),
    C("tok-missing-true", "Observation?value-concept:missing=true"),
    C("tok-missing-false", "Observation?value-concept:missing=false"),
    # deceased is the boolean expression `deceased.exists() and deceased != false`: false (not missing) for the
    # living. jq '.entry[].resource | select(.resourceType=="Patient") | has("deceasedDateTime", "deceasedBoolean")'
    # is false for all 100.
    C("tok-missing-deceased", "Patient?deceased:missing=true", literal=()),
    C("tok-deceased-false", "Patient?deceased=false", count=100),
    C("tok-deceased-true", "Patient?deceased=true", literal=()),

    # ---- date ------------------------------------------------------------------------------------------------
    # jq -r '.entry[].resource | select(.resourceType=="Patient") | .birthDate' | sort
    C("date-year", "Patient?birthdate=1996", count=5),
    C("date-month", "Patient?birthdate=1965-01", literal=(ABRAM,)),
    C("date-day", "Patient?birthdate=1965-01-13", literal=(ABRAM,)),
    C("date-day-eq", "Patient?birthdate=eq1965-01-13", literal=(ABRAM,)),
    C("date-lt", "Patient?birthdate=lt1930", literal=(
        "274adb5d-0bbb-4893-ab3b-8b490fece9b8", ALFREDO, "ffa66c0a-87b0-4b78-bb7e-3a5c7c44d359")),
    C("date-eb", "Patient?birthdate=eb1931-04-18", literal=(
        "274adb5d-0bbb-4893-ab3b-8b490fece9b8", ALFREDO, "ffa66c0a-87b0-4b78-bb7e-3a5c7c44d359")),
    C("date-le-day", "Patient?birthdate=le1931-04-18"),
    C("date-gt", "Patient?birthdate=gt2005"),
    C("date-sa", "Patient?birthdate=sa2005", count=12),
    C("date-ge", "Patient?birthdate=ge1970"),
    C("date-ne", "Patient?birthdate=ne1965-01-13", count=99),
    C("date-range-and", "Patient?birthdate=ge1950&birthdate=lt1960"),
    C("date-or", "Patient?birthdate=1965-01-13,1971-04-05", literal=(ABRAM, ALETA)),
    C("date-ap-far-past", "Patient?birthdate=ap1800", literal=()),
    # ImagingStudy.started: jq -r '.. | objects | select(.resourceType=="ImagingStudy") | .id + " " + .started'
    C("date-month-tz", "ImagingStudy?started=2019-09", literal=(
        "420c0013-c147-4691-9687-7c209efcc0e3", "c1c8381f-2ebe-4266-83f3-fad8b50c267b")),
    # 1994-10-30T20:21:56-05:00 is 1994-10-31T01:21:56Z: not on the 30th in UTC
    C("date-day-utc-next-day", "ImagingStudy?started=1994-10-31", literal=("283caf4f-4b33-4047-b668-ac0a6cb95c92",)),
    C("date-day-utc-not-local-day", "ImagingStudy?started=1994-10-30", literal=()),
    C("date-second", "ImagingStudy?started=2010-12-20T22:45:58Z", literal=("fd93b6e0-0240-4a5a-ab4e-1395c223a2bb",)),
    C("date-second-offset", "ImagingStudy?started=2010-12-20T17:45:58-05:00",
      literal=("fd93b6e0-0240-4a5a-ab4e-1395c223a2bb",)),
    C("date-second-gt", "ImagingStudy?started=gt2019-09-04T15:06:40Z", literal=()),  # the latest one
    C("date-second-ge", "ImagingStudy?started=ge2019-09-04T15:06:40Z", literal=("c1c8381f-2ebe-4266-83f3-fad8b50c267b",)),
    C("date-imaging-lt", "ImagingStudy?started=lt2012", literal=(
        "283caf4f-4b33-4047-b668-ac0a6cb95c92", "fd93b6e0-0240-4a5a-ab4e-1395c223a2bb")),
    C("date-obs-day", "Observation?date=2011-02-02"),
    C("date-obs-year-and-code", "Observation?date=2019&code=http://loinc.org|8302-2"),
    C("date-encounter-period-eq-day", "Encounter?date=1985-06-18"),
    C("date-encounter-period-gt", "Encounter?date=gt2020-04"),
    C("date-encounter-period-sa", "Encounter?date=sa2020-04"),
    C("date-encounter-period-lt", "Encounter?date=lt1950"),
    C("date-encounter-period-eb", "Encounter?date=eb1950"),
    C("date-careplan-open-period-gt", "CarePlan?date=gt2030"),
    C("date-careplan-open-period-eq", "CarePlan?date=2013"),
    C("date-careteam-sa", "CareTeam?date=sa2019"),
    C("date-condition-onset", "Condition?onset-date=lt1950"),
    C("date-condition-abatement-missing", "Condition?abatement-date:missing=true", count=258),
    C("date-condition-abatement-present", "Condition?abatement-date:missing=false", count=381),
    C("date-claim-created", "Claim?created=2019-06"),
    C("date-eob-created", "ExplanationOfBenefit?created=ge2020-01-01"),
    C("date-mr-authoredon", "MedicationRequest?authoredon=2017-11-25"),
    C("date-procedure-period", "Procedure?date=2013-02-06"),
    C("date-immunization", "Immunization?date=2011"),
    C("date-dr-issued", "DiagnosticReport?issued=2011-02-02"),
    C("date-allergy-recorded", "AllergyIntolerance?date=lt1980"),

    # ---- number / quantity / composite ------------------------------------------------------------------
    C("qty-value", "Observation?value-quantity=181.2"),
    C("qty-value-system-code", "Observation?value-quantity=181.2|http://unitsofmeasure.org|cm"),
    C("qty-value-code", "Observation?value-quantity=181.2||cm"),
    C("qty-wrong-unit", "Observation?value-quantity=181.2||kg", literal=()),
    C("qty-gt", "Observation?code=http://loinc.org|8302-2&value-quantity=gt190"),
    C("qty-lt-unit", "Observation?value-quantity=lt40|http://unitsofmeasure.org|cm"),
    C("qty-ge-le", "Observation?code=http://loinc.org|29463-7&value-quantity=ge109&value-quantity=le113"),
    C("qty-precision-integer", "Observation?code=http://loinc.org|8867-4&value-quantity=70"),
    C("qty-sa-eb", "Observation?code=http://loinc.org|39156-5&value-quantity=sa40"),
    C("qty-ne", "Observation?code=http://loinc.org|8302-2&value-quantity=ne181.2"),
    C("qty-ap", "Observation?code=http://loinc.org|2093-3&value-quantity=ap300"),
    C("composite-bp", "Observation?component-code-value-quantity=http://loinc.org|8480-6$gt160"),
    C("composite-bp-diastolic", "Observation?component-code-value-quantity=http://loinc.org|8462-4$lt70"),
    C("composite-same-component", "Observation?component-code-value-quantity=http://loinc.org|8462-4$gt160",
      literal=()),  # systolic > 160 exists (composite-bp), diastolic > 160 does not

    # ---- reference -----------------------------------------------------------------------------------------
    # jq '.entry[].resource | select(.resourceType=="AllergyIntolerance") | .patient.reference' (urn:uuid:<id>)
    C("ref-type-id", f"AllergyIntolerance?patient=Patient/{ALETA}", count=5),
    C("ref-bare-id", f"AllergyIntolerance?patient={ALLERGIC}", count=8),
    C("ref-absolute", f"AllergyIntolerance?patient={{base}}/Patient/{ALETA}", count=5),
    C("ref-other-server", f"AllergyIntolerance?patient=http://other.example.org/fhir/Patient/{ALETA}", literal=()),
    C("ref-type-modifier", f"Observation?subject:Patient={ALETA}"),
    C("ref-subject-type-id", f"Observation?subject=Patient/{ABRAM}"),
    C("ref-patient-or", f"AllergyIntolerance?patient=Patient/{ALETA},Patient/{ALLERGIC}", count=13),
    C("ref-device", f"Device?patient={ALFREDO}", literal=("758ebcae-33c1-4e44-8cb9-383520dbcb90",)),
    C("ref-imaging", f"ImagingStudy?patient=Patient/{ALFREDO}"),
    C("ref-service-provider", f"Encounter?service-provider=Organization/{HOLYOKE}"),
    C("ref-practitioner", f"Encounter?practitioner={OTIS}"),
    C("ref-participant-type", f"Encounter?participant:Practitioner={OTIS}"),
    C("ref-claim-provider", f"Claim?provider=Organization/{HOLYOKE}"),
    C("ref-eob-claim", "ExplanationOfBenefit?claim=Claim/001ae14e-3afb-4b8f-b23e-3ad65fec5e4e",
      literal=("af093440-e2a5-4a1e-93a5-70b212699b02",)),
    C("ref-mr-requester", f"MedicationRequest?requester=Practitioner/{OTIS}"),
    C("ref-dr-result", "DiagnosticReport?result=Observation/d0e09312-ffeb-4a39-b7dd-81c343709bd0",
      literal=("943d816d-bad4-4125-835a-f5fafcad22df",)),
    C("ref-careteam-participant", f"CareTeam?participant=Patient/{ABRAM}"),
    C("ref-careplan-care-team", "CarePlan?care-team=CareTeam/e0134665-1b30-4ba3-92a5-ca5b91cce68d",
      literal=("ac8ce97f-0445-4a75-935b-15bca1d22472",)),
    C("ref-group-member", f"Group?member=Patient/{ABRAM}", literal=(GROUP,)),
    C("ref-condition-encounter", "Condition?encounter=Encounter/17b801ac-58e3-4f6b-8b48-8e33f3a36086",
      literal=("a5a38601-b6fe-46b4-a67e-cde9d5957dde",)),
    C("ref-missing", "Encounter?service-provider:missing=false", count=3697),
    C("ref-missing-true", "Patient?organization:missing=true", count=100),
    C("ref-missing-gp", "Patient?general-practitioner:missing=true", count=100),
    C("ref-and-code", f"Observation?patient={ABRAM}&code=http://loinc.org|8302-2"),
    C("ref-procedure-patient", f"Procedure?patient={ABRAM}"),
    C("ref-immunization-patient", f"Immunization?patient=Patient/{ABRAM}"),
    C("ref-mr-patient-status", f"MedicationRequest?patient={ABRAM}&status=stopped"),

    # ---- chains and reverse chains ---------------------------------------------------------------------------
    C("chain-subject-name", "Observation?subject:Patient.name=ramon&code=http://loinc.org|8302-2"),
    C("chain-patient-birthdate", "Encounter?patient.birthdate=ge1970", count=1769),
    C("chain-patient-gender", "AllergyIntolerance?patient.gender=male"),
    C("chain-org-name", "Encounter?service-provider.name=holyoke"),
    C("chain-condition-patient-family", "Condition?patient.family=Lemke"),
    C("chain-claim-provider-city", "Claim?provider:Organization.address-city=easthampton"),
    C("has-observation", "Patient?_has:Observation:patient:code=http://loinc.org|6206-7"),
    C("has-allergy", "Patient?_has:AllergyIntolerance:patient:criticality=low", count=9),
    C("has-device", "Patient?_has:Device:patient:status=active", count=4),
    C("has-and-gender", "Patient?_has:Device:patient:status=active&gender=female"),
    C("has-imaging", "Patient?_has:ImagingStudy:patient:bodysite=72696002"),
]

# Placeholder-free literals for the extra server (PUT fixture) are in EXTRA_CASES below.


# ---- helpers --------------------------------------------------------------------------------------------

def links(bundle):
    out = {}
    for link in bundle.get("link") or []:
        assert link.get("relation") not in out, f"two {link.get('relation')} links: {bundle.get('link')}"
        out[link.get("relation")] = link.get("url")
    return out


def check_bundle(r, base):
    assert r.status_code == 200, describe_response(r)
    assert_fhir_json(r)
    b = r.json()
    assert b.get("resourceType") == "Bundle" and b.get("type") == "searchset", describe_response(r, 400)
    assert "self" in links(b), b.get("link")
    for e in b.get("entry") or []:
        res = e.get("resource") or {}
        if (e.get("search") or {}).get("mode") == "outcome":
            continue
        assert e.get("fullUrl") == f"{base}/{res.get('resourceType')}/{res.get('id')}", e.get("fullUrl")
    return b


def run_search(http, base, url, method="GET", data=None, headers=None, max_pages=2000):
    """Follows next links; returns (pages, [(mode, Type, id)] in order, total)."""
    pages, entries, total = [], [], None
    first = True
    while url:
        assert len(pages) < max_pages, f"paging from {url} does not end"
        if first and method == "POST":
            h = {"Content-Type": "application/x-www-form-urlencoded", "Accept": FHIR_JSON}
            r = http.post(url, data=data, headers=h)
        else:
            r = http.get(url, headers=headers or {"Accept": FHIR_JSON})
        first = False
        b = check_bundle(r, base)
        assert "total" in b, f"no Bundle.total: {describe_response(r, 300)}"
        assert total is None or b["total"] == total, f"total changed between pages: {b['total']} != {total}"
        total = b["total"]
        for e in b.get("entry") or []:
            res = e["resource"]
            entries.append(((e.get("search") or {}).get("mode"), res["resourceType"], res["id"], res))
        pages.append(b)
        url = links(b).get("next")
    return pages, entries, total


def assert_exact(got_ids, want, label):
    dup = [k for k, n in collections.Counter(got_ids).items() if n > 1]
    missing = sorted(set(want) - set(got_ids))
    extra = sorted(set(got_ids) - set(want))
    assert not dup and not missing and not extra, (
        f"{label}: {len(got_ids)} returned, {len(want)} expected; missing {len(missing)} {missing[:5]}, "
        f"extra {len(extra)} {extra[:5]}, twice {dup[:5]}")


def split_query(query):
    rtype, _, qs = query.partition("?")
    return rtype, urllib.parse.parse_qsl(qs, keep_blank_values=True)


def with_count(query, count=1000):
    return query if "_count=" in query else f"{query}{'&' if '?' in query else '?'}_count={count}"


def expected_of(ev, case, base):
    rtype, params = split_query(case.query.replace("{base}", base))
    return rtype, ev.search(rtype, params)


# ---- fixtures -------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def sample_eval(sample):
    return Evaluator(sample.expected.values(), base="{base}")


@pytest.fixture(scope="module")
def search_http():
    s = Session(timeout=120)
    yield s
    s.close()


@pytest.fixture(scope="module")
def sample_server_eval(loaded_sample):
    return Evaluator(loaded_sample.sample.expected.values(), base=loaded_sample.server.base)


# ---- the evaluator against the hand-checked literals (no server) ---------------------------------------

def test_table_shape():
    assert len(CASES) + len(EXTRA_CASES) >= 150, len(CASES) + len(EXTRA_CASES)
    ids = [c.id for c in CASES + EXTRA_CASES]
    assert len(ids) == len(set(ids)), [i for i, n in collections.Counter(ids).items() if n > 1]
    types = {c.query.split("?")[0] for c in CASES + EXTRA_CASES}
    assert len(types) >= 15, types
    literal = [c for c in CASES + EXTRA_CASES if c.literal is not None or c.count is not None]
    assert len(literal) >= 30, len(literal)


def check_literal(ev, case, base="{base}"):
    _, want = expected_of(ev, case, base)
    if case.literal is not None:
        assert want == set(case.literal), f"{case.id}: evaluator {sorted(want)} != literal {sorted(case.literal)}"
    if case.count is not None:
        assert len(want) == case.count, f"{case.id}: evaluator {len(want)} != literal count {case.count}"
    assert set(case.some) <= want, f"{case.id}: literal members {set(case.some) - want} not in the evaluator's set"
    # the choices the spec leaves open do not decide any case of the table
    alts = [dict(text_contains=True)] if ":text=" in case.query else []
    alts += [dict(ge_le_overlap=True)] if "=ge" in case.query or "=le" in case.query else []
    alts += [dict(ap_plain_overlap=True)] if "=ap" in case.query else []
    for alt in alts:
        _, other = expected_of(ev.with_options(**alt), case, base)
        assert other == want, f"{case.id} depends on {alt}: {len(want)} vs {len(other)}"


def test_evaluator_matches_literals(sample_eval, extra_eval):
    for case in CASES:
        check_literal(sample_eval, case)
    for case in EXTRA_CASES:
        check_literal(extra_eval, case)


def test_evaluator_nonempty_where_meant(sample_eval):
    """Cases without a literal are not accidentally empty (an empty set tests little)."""
    for case in CASES:
        if case.literal is None and case.count is None:
            _, want = expected_of(sample_eval, case, "{base}")
            assert want, f"{case.id}: the evaluator finds nothing for {case.query}"


# ---- the table against the server -----------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_search(loaded_sample, sample_server_eval, search_http, case):
    base = loaded_sample.server.base
    rtype, want = expected_of(sample_server_eval, case, base)
    query = case.query.replace("{base}", base)
    _, entries, total = run_search(search_http, base, f"{base}/{with_count(query)}")
    assert all(m == "match" for m, *_ in entries), {m for m, *_ in entries}
    assert all(t == rtype for _, t, _, _ in entries), {t for _, t, _, _ in entries}
    got = [i for _, _, i, _ in entries]
    assert_exact(got, want, query)
    assert total == len(want), f"Bundle.total {total} != {len(want)}"


POST_CASES = ["str-accent-maria", "tok-system-code", "date-lt", "ref-absolute", "chain-patient-birthdate",
              "has-allergy", "tok-id-and-gender", "qty-value-code"]


@pytest.mark.parametrize("cid", POST_CASES)
def test_post_search_equals_get(loaded_sample, sample_server_eval, search_http, cid):
    case = next(c for c in CASES if c.id == cid)
    base = loaded_sample.server.base
    rtype, want = expected_of(sample_server_eval, case, base)
    rtype, params = split_query(case.query.replace("{base}", base))
    body = urllib.parse.urlencode(params + [("_count", "1000")])
    _, entries, total = run_search(search_http, base, f"{base}/{rtype}/_search", method="POST", data=body)
    assert_exact([i for _, _, i, _ in entries], want, f"POST {rtype}/_search {body}")
    assert total == len(want)


def test_default_page_size_and_total(loaded_sample, search_http):
    base = loaded_sample.server.base
    pages, entries, total = run_search(search_http, base, f"{base}/Patient?gender=male")
    assert total == 60 and [len(p.get("entry") or []) for p in pages] == [50, 10]
    assert_exact([i for _, _, i, _ in entries],
                 {i for (t, i), r in loaded_sample.sample.expected.items() if t == "Patient" and r["gender"] == "male"},
                 "Patient?gender=male")


@pytest.mark.parametrize("count", [37, 500])
def test_paging_every_observation(loaded_sample, search_http, count):
    base = loaded_sample.server.base
    want = {i for t, i in loaded_sample.sample.expected if t == "Observation"}
    q = "Observation?_count=37&code=http://loinc.org|8302-2,http://loinc.org|29463-7" if count == 37 \
        else "Observation?_count=500"
    if count == 37:
        want = {i for i in want if loaded_sample.sample.expected[("Observation", i)]["code"]["coding"][0]["code"]
                in ("8302-2", "29463-7")}
        assert len(want) == 1936  # 968 + 968, see the code counts in data/README
    pages, entries, total = run_search(search_http, base, f"{base}/{q}")
    assert_exact([i for _, _, i, _ in entries], want, q)
    assert total == len(want) and len(pages) == -(-len(want) // count)
    assert all(len(p.get("entry") or []) == count for p in pages[:-1])
    assert "next" not in links(pages[-1])


def test_total_accurate_and_summary_count(loaded_sample, search_http):
    base = loaded_sample.server.base
    r = search_http.get(f"{base}/Observation?category=exam&_total=accurate", headers={"Accept": FHIR_JSON})
    b = check_bundle(r, base)
    assert b["total"] == 9 and len(b["entry"]) == 9
    r = search_http.get(f"{base}/Observation?code=http://loinc.org|8302-2&_summary=count")
    b = check_bundle(r, base)
    assert b["total"] == 968 and not b.get("entry"), (b.get("total"), len(b.get("entry") or []))
    r = search_http.get(f"{base}/Encounter?_summary=count")
    assert check_bundle(r, base)["total"] == 3697


def test_count_limits_the_page(loaded_sample, search_http):
    base = loaded_sample.server.base
    b = check_bundle(search_http.get(f"{base}/Patient?_count=7"), base)
    assert len(b["entry"]) == 7 and b["total"] == 100 and "next" in links(b)
    b = check_bundle(search_http.get(f"{base}/Device?_count=10"), base)
    assert len(b["entry"]) == 4 and b["total"] == 4 and "next" not in links(b)


# ---- _include / _revinclude / :iterate --------------------------------------------------------------------

def split_modes(entries):
    modes = collections.defaultdict(list)
    for m, t, i, _ in entries:
        modes[m].append(f"{t}/{i}")
    return modes


INCLUDE_CASES = [
    # (query, includes for the evaluator, revincludes)
    ("Observation?category=exam&_include=Observation:patient", ["Observation:patient"], []),
    ("Observation?code=http://loinc.org|6206-7&_include=Observation:patient&_include=Observation:encounter",
     ["Observation:patient", "Observation:encounter"], []),
    ("Encounter?class=IMP&_include=Encounter:service-provider", ["Encounter:service-provider"], []),
    ("Observation?code=http://loinc.org|6273-7&_include=Observation:encounter"
     "&_include:iterate=Encounter:service-provider", ["Observation:encounter", "iterate:Encounter:service-provider"], []),
    ("DiagnosticReport?code=http://loinc.org|24357-6&_include=DiagnosticReport:result",
     ["DiagnosticReport:result"], []),
    ("Encounter?class=EMER&_include=Encounter:participant:Practitioner", ["Encounter:participant:Practitioner"], []),
    (f"Patient?_id={ALETA},{ALLERGIC}&_revinclude=AllergyIntolerance:patient", [], ["AllergyIntolerance:patient"]),
    ("Patient?_has:Device:patient:status=active&_revinclude=Device:patient&_revinclude=ImagingStudy:patient",
     [], ["Device:patient", "ImagingStudy:patient"]),
    (f"Patient?_id={ABRAM}&_revinclude=Condition:patient&_include=Patient:general-practitioner",
     ["Patient:general-practitioner"], ["Condition:patient"]),
]


@pytest.mark.parametrize("query,includes,revincludes", INCLUDE_CASES, ids=[f"inc{i}" for i in range(len(INCLUDE_CASES))])
def test_include(loaded_sample, sample_server_eval, search_http, query, includes, revincludes):
    base = loaded_sample.server.base
    ev = sample_server_eval
    rtype, params = split_query(query)
    want = ev.search(rtype, [(n, v) for n, v in params if not n.startswith("_include") and not n.startswith("_rev")])
    want_keys = {f"{rtype}/{i}" for i in want}
    want_inc = ev.included(want_keys, includes) | ev.revincluded(want_keys, revincludes)
    assert want_inc, query
    pages, entries, total = run_search(search_http, base, f"{base}/{with_count(query)}")
    modes = split_modes(entries)
    assert set(modes) <= {"match", "include"}, set(modes)
    assert_exact(modes["match"], want_keys, query + " (match)")
    assert total == len(want_keys), "Bundle.total counts the matches only"
    for p in pages:  # an included resource at most once per page
        inc = [f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in p.get("entry") or []
               if e["search"]["mode"] == "include"]
        assert len(inc) == len(set(inc)), "included twice on one page"
    got_inc = set(modes["include"])
    assert got_inc == want_inc, f"{query}: missing includes {sorted(want_inc - got_inc)[:5]}, " \
                                f"extra {sorted(got_inc - want_inc)[:5]}"


def test_include_literal(loaded_sample, search_http):
    """Hand-checked: ImagingStudy fd93b6e0... (Alfredo's arm X-ray) includes its patient and encounter.
    jq '.entry[].resource | select(.id=="fd93b6e0-0240-4a5a-ab4e-1395c223a2bb") | .subject, .encounter'"""
    base = loaded_sample.server.base
    q = ("ImagingStudy?_id=fd93b6e0-0240-4a5a-ab4e-1395c223a2bb&_include=ImagingStudy:patient"
         "&_include=ImagingStudy:encounter")
    _, entries, total = run_search(search_http, base, f"{base}/{q}")
    modes = split_modes(entries)
    assert modes["match"] == ["ImagingStudy/fd93b6e0-0240-4a5a-ab4e-1395c223a2bb"] and total == 1
    assert sorted(modes["include"]) == ["Encounter/02b3780f-b356-401d-a2e9-db16e295d211", f"Patient/{ALFREDO}"]


# ---- _sort --------------------------------------------------------------------------------------------

SORT_CASES = [
    ("Patient?_sort=birthdate", [("birthdate", False)]),
    ("Patient?_sort=-birthdate", [("birthdate", True)]),
    ("Patient?_sort=gender,-birthdate", [("gender", False), ("birthdate", True)]),
    ("ImagingStudy?_sort=-started", [("started", True)]),
    ("Observation?code=http://loinc.org|8302-2&_sort=date&_count=100", [("date", False)]),
    ("Observation?code=http://loinc.org|29463-7&_sort=-date&_count=100", [("date", True)]),
    ("Encounter?class=IMP&_sort=-date", [("date", True)]),
    ("Claim?patient=" + ABRAM + "&_sort=created", [("created", False)]),
    ("Immunization?vaccine-code=140&_sort=-date", [("date", True)]),
    ("Condition?code=444814009&_sort=onset-date", [("onset-date", False)]),
]


@pytest.mark.parametrize("query,keys", SORT_CASES, ids=[q for q, _ in SORT_CASES])
def test_sort(loaded_sample, sample_server_eval, search_http, query, keys):
    base = loaded_sample.server.base
    ev = sample_server_eval
    rtype, params = split_query(query)
    want = ev.search(rtype, [(n, v) for n, v in params if not n.startswith("_")])
    _, entries, total = run_search(search_http, base, f"{base}/{query}")
    got = [i for _, _, i, _ in entries]
    assert_exact(got, want, query)
    sort_codes = dict(params)["_sort"].split(",")
    assert len(sort_codes) == len(keys)

    def key(i):
        r = ev.by_key[f"{rtype}/{i}"]
        out = []
        for code, desc in keys:
            k = ev.sort_key(r, code, desc)
            out.append(k)
        return out

    seq = [key(i) for i in got]
    for a, b in zip(seq, seq[1:]):
        for (code, desc), x, y in zip(keys, a, b):
            if x == y:
                continue
            assert (x > y) if desc else (x < y), f"{query}: {a} before {b}"
            break


def test_sort_last_updated(loaded_sample, search_http):
    base = loaded_sample.server.base
    for q, desc in (("Device?_sort=_lastUpdated", False), ("Device?_sort=-_lastUpdated", True)):
        _, entries, _ = run_search(search_http, base, f"{base}/{q}")
        ts = [r["meta"]["lastUpdated"] for *_, r in entries]
        assert len(ts) == 4 and ts == sorted(ts, reverse=desc), ts


# ---- _elements, _id, _lastUpdated, _type, compartments ----------------------------------------------------

def test_elements(loaded_sample, search_http):
    base = loaded_sample.server.base
    _, entries, total = run_search(search_http, base, f"{base}/Patient?gender=female&_elements=birthDate,gender")
    assert total == 40 and len(entries) == 40
    for *_, r in entries:
        assert set(r) <= {"resourceType", "id", "meta", "birthDate", "gender"}, sorted(r)
        assert r["gender"] == "female" and "birthDate" in r
        tags = {(t.get("system"), t.get("code")) for t in r["meta"].get("tag") or []}
        assert SUBSETTED in tags, r["meta"]


def test_last_updated_of_loaded_data(loaded_sample, search_http):
    base = loaded_sample.server.base
    _, entries, total = run_search(search_http, base, f"{base}/Device?_lastUpdated=gt2000-01-01")
    assert total == 4
    _, entries, total = run_search(search_http, base, f"{base}/Device?_lastUpdated=lt2000-01-01")
    assert total == 0 and not entries


def test_system_search(loaded_sample, search_http):
    base = loaded_sample.server.base
    q = f"{base}/?_type=Patient,Organization&_id={ABRAM},{HOLYOKE},{OTIS}"
    _, entries, total = run_search(search_http, base, q)
    assert sorted(f"{t}/{i}" for _, t, i, _ in entries) == [f"Organization/{HOLYOKE}", f"Patient/{ABRAM}"]
    assert total == 2


def test_compartment_search(loaded_sample, sample_server_eval, search_http):
    base = loaded_sample.server.base
    ev = sample_server_eval
    for pid in (ABRAM, ALETA):
        want = ev.search("Observation", [("subject", f"Patient/{pid}"), ("code", "http://loinc.org|8302-2")])
        assert want
        _, entries, total = run_search(search_http, base, f"{base}/Patient/{pid}/Observation?code=http://loinc.org|8302-2")
        assert_exact([i for _, _, i, _ in entries], want, f"Patient/{pid}/Observation?code=8302-2")
        assert total == len(want)


# ---- bad input -----------------------------------------------------------------------------------------

BAD = [
    ("Patient?foo=bar", "foo"),
    ("Patient?birthdate=notadate", "birthdate"),
    ("Patient?birthdate=xx2020", "birthdate"),
    ("Patient?birthdate=2020-13-01", "birthdate"),
    ("Patient?birthdate=2021-02-30", "birthdate"),
    ("Patient?birthdate=ge", "birthdate"),
    ("Patient?_count=-1", "_count"),
    ("Patient?_count=abc", "_count"),
    ("Patient?_sort=nosuchparam", "nosuchparam"),
    ("Patient?_sort=-", "_sort"),
    ("Observation?_include=Observation:nosuch", "nosuch"),
    ("Observation?_revinclude=Observation:nosuch", "nosuch"),
    ("Observation?code.name=x", "code"),
    ("Encounter?patient.nosuchparam=x", "nosuchparam"),
    ("Patient?_has:Observation:patient=x", "_has"),
    ("Patient?_has:Observation=x", "_has"),
    ("Patient?_has:NoSuchType:patient:code=x", "_has"),
    ("Patient?name:below=x", "below"),
    ("Patient?gender:exact=male", "exact"),
    ("Patient?gender:nosuchmodifier=male", "nosuchmodifier"),
    ("Patient?name:missing=maybe", "missing"),
    ("Observation?value-quantity=abc", "value-quantity"),
    ("Observation?value-quantity=ge", "value-quantity"),
    ("Observation?subject:NoSuchType=123", "NoSuchType"),
    ("Patient?_lastUpdated=yesterday", "_lastUpdated"),
    ("Patient?_total=sometimes", "_total"),
    ("Patient?_summary=bogus", "_summary"),
    ("Observation?component-code-value-quantity=http://loinc.org|8480-6", "component-code-value-quantity"),
    ("Observation?date=2020-01-01T25:00:00Z", "date"),
    # regressions from the bad-input probe: each was a 200, a 500 quoting the SQL, or an OperationOutcome that
    # was not valid UTF-8 (so not JSON)
    ("Patient?name:=x", "name:"),
    ("Encounter?patient.=x", "patient."),
    ("Encounter?patient.organization.partof.name=x", "patient.organization.partof.name"),
    ("Patient?_has:Observation:patient:code=", "_has:Observation:patient:code"),
    ("Observation?subject=Patient/", "subject"),
    ("Patient?page=", "page"),
    ("Patient?_sort=" + ",".join(["birthdate"] * 2000), "_sort"),
    ("Patient?" + "&".join(f"given=g{i}" for i in range(1000)), "given"),
    ("Observation?" + "&".join(f"subject:Patient.name=n{i}" for i in range(1000)), "subject:Patient.name"),
    ("Patient?birthdate=%FF%FE", "birthdate"),
    ("Patient?%FF%FE=x", "\ufffd"),
    ("Patient?_sort=%FF", "_sort"),
]


@pytest.mark.parametrize("query,mention", BAD, ids=[q for q, _ in BAD])
def test_bad_input_is_400(loaded_sample, search_http, query, mention):
    base = loaded_sample.server.base
    assert_outcome(search_http.get(f"{base}/{query}", headers={"Accept": FHIR_JSON}), 400, (mention,))


GARBLED = [
    "Patient?name=" + "a" * 4000,
    "Patient?name=%FF%FE%00",
    "Patient?_id=%00%01",
    "Patient?identifier=" + "|" * 50,
    "Observation?code=%E2%82",
    "Patient?birthdate=" + "9" * 400,
    "Observation?value-quantity=1e999999",
    "Patient?_sort=" + ",".join(["birthdate"] * 200),
    "Patient?name=x&" + "&".join(f"given=g{i}" for i in range(300)),
    "Patient?_has:Observation:patient:_has:Observation:patient:code=x",
    "Encounter?patient.organization.name.foo=x",
]


@pytest.mark.parametrize("query", GARBLED, ids=[f"garbled{i}" for i in range(len(GARBLED))])
def test_garbled_never_500(loaded_sample, search_http, query):
    base = loaded_sample.server.base
    r = search_http.get(f"{base}/{query}", headers={"Accept": FHIR_JSON})
    assert r.status_code in (200, 400, 414), describe_response(r)
    if r.status_code == 400:
        assert_outcome(r, 400)
    elif r.status_code == 200:
        check_bundle(r, base)


def test_lenient_handling(loaded_sample, search_http):
    base = loaded_sample.server.base
    r = search_http.get(f"{base}/Patient?foo=bar&gender=female",
                        headers={"Accept": FHIR_JSON, "Prefer": "handling=lenient"})
    b = check_bundle(r, base)
    outcomes = [e["resource"] for e in b.get("entry") or [] if (e.get("search") or {}).get("mode") == "outcome"]
    assert len(outcomes) == 1 and outcomes[0]["resourceType"] == "OperationOutcome", outcomes
    text = " ".join(i.get("diagnostics") or "" for i in outcomes[0].get("issue") or [])
    assert "foo" in text, outcomes[0]
    ids = [e["resource"]["id"] for e in b["entry"] if e["search"]["mode"] == "match"]
    want = {i for (t, i), res in loaded_sample.sample.expected.items() if t == "Patient" and res["gender"] == "female"}
    assert_exact(ids, want, "lenient Patient?foo=bar&gender=female")
    assert b["total"] == 40
    # strict is the default, also when asked for explicitly
    assert_outcome(search_http.get(f"{base}/Patient?foo=bar", headers={"Prefer": "handling=strict"}), 400, ("foo",))


def test_lenient_outcome_of_invalid_utf8_is_json(loaded_sample, search_http):
    # Regression: the ignored parameter's name went into the outcome entry as it was, and the Bundle was not JSON.
    base = loaded_sample.server.base
    r = search_http.get(f"{base}/Patient?f%FFoo=bar&_count=1",
                        headers={"Accept": FHIR_JSON, "Prefer": "handling=lenient"})
    b = check_bundle(r, base)
    outcomes = [e["resource"] for e in b.get("entry") or [] if (e.get("search") or {}).get("mode") == "outcome"]
    assert len(outcomes) == 1, b
    text = " ".join(i.get("diagnostics") or "" for i in outcomes[0].get("issue") or [])
    assert "f\ufffdoo" in text, outcomes[0]


# ---- resources the sample lacks: a second server with PUT resources --------------------------------------

TAG = {"system": "http://example.org/fhir/tags", "code": "search-test"}
SEC = {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}
PROFILE = "http://example.org/fhir/StructureDefinition/st-patient"
UCUM = "http://unitsofmeasure.org"


def obs(oid, **kw):
    r = {"resourceType": "Observation", "id": oid, "status": "final",
         "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7", "display": "Glucose"}]},
         "subject": {"reference": "Patient/st-p1"}}
    r.update(kw)
    return r


EXTRA = [
    {"resourceType": "Patient", "id": "st-p1", "meta": {"tag": [TAG], "security": [SEC], "profile": [PROFILE],
                                                         "source": "http://example.org/source#st"},
     "name": [{"family": "Müller", "given": ["José", "Zoë"]}], "gender": "other", "birthDate": "1950-06-15",
     "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}],
                              "text": "Medical record"}, "system": "http://example.org/mrn", "value": "MRN-1"}]},
    {"resourceType": "Patient", "id": "st-p2", "meta": {"tag": [{"system": "http://example.org/fhir/tags",
                                                                  "code": "other"}]},
     "name": [{"family": "Muller", "given": ["Jose"]}], "gender": "male", "birthDate": "1930-01-01"},
    {"resourceType": "Patient", "id": "st-p3", "name": [{"family": "Ångström", "text": "Anders Ångström"}],
     "gender": "female", "birthDate": "1975"},
    {"resourceType": "Patient", "id": "st-p4", "active": False, "birthDate": "1975-05-20"},
    obs("st-o1", valueQuantity={"value": 100, "unit": "mg", "system": UCUM, "code": "mg"},
        effectiveDateTime="2020-01"),
    obs("st-o2", valueQuantity={"value": 100.00, "unit": "mg/dL", "system": UCUM, "code": "mg/dL"},
        effectivePeriod={"start": "2020-01-01T00:00:00Z", "end": "2020-01-31T23:59:59Z"}),
    obs("st-o3", valueQuantity={"value": 99.6, "unit": "mg", "system": UCUM, "code": "mg"},
        effectivePeriod={"start": "2020-01-15T10:00:00Z"}),
    obs("st-o4", valueQuantity={"value": 5.4, "unit": "mg"}, effectiveDateTime="2020-02-01T00:30:00+01:00"),
    obs("st-o5", valueQuantity={"value": 100.6, "unit": "milligram", "system": UCUM, "code": "mg"},
        effectiveDateTime="2019-12-31T23:59:59Z"),
    obs("st-o6", code={"text": "Zoë free text"}, valueString="x", effectiveDateTime="2021"),
    obs("st-o7", code={"coding": [{"system": "http://loinc.org", "code": "85354-9"}]}, effectiveDateTime="2020-03-03",
        component=[{"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                    "valueQuantity": {"value": 150, "unit": "mm[Hg]", "system": UCUM, "code": "mm[Hg]"}},
                   {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                    "valueQuantity": {"value": 95, "unit": "mm[Hg]", "system": UCUM, "code": "mm[Hg]"}}]),
    obs("st-o8", code={"coding": [{"system": "http://loinc.org", "code": "85354-9"}]}, effectiveDateTime="2020-03-04",
        component=[{"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                    "valueQuantity": {"value": 95, "unit": "mm[Hg]", "system": UCUM, "code": "mm[Hg]"}},
                   {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                    "valueQuantity": {"value": 150, "unit": "mm[Hg]", "system": UCUM, "code": "mm[Hg]"}}]),
    {"resourceType": "RiskAssessment", "id": "st-ra1", "status": "final", "subject": {"reference": "Patient/st-p1"},
     "prediction": [{"probabilityDecimal": 0.25}]},
    {"resourceType": "RiskAssessment", "id": "st-ra2", "status": "final", "subject": {"reference": "Patient/st-p1"},
     "prediction": [{"probabilityDecimal": 0.8}]},
    {"resourceType": "RiskAssessment", "id": "st-ra3", "status": "final", "subject": {"reference": "Patient/st-p2"},
     "prediction": [{"probabilityDecimal": 0.02}, {"probabilityDecimal": 0.5}]},
    {"resourceType": "MolecularSequence", "id": "st-ms1", "coordinateSystem": 0, "variant": [{"start": 100}]},
    {"resourceType": "MolecularSequence", "id": "st-ms2", "coordinateSystem": 0,
     "variant": [{"start": 2500}, {"start": 40}]},
    {"resourceType": "ValueSet", "id": "st-vs1", "status": "active", "name": "StColors",
     "url": "http://example.org/fhir/ValueSet/st-colors"},
    {"resourceType": "ValueSet", "id": "st-vs2", "status": "active", "name": "StColorsExtended",
     "url": "http://example.org/fhir/ValueSet/st-colors-extended"},
]

# Hand reasoning for the dates: st-o1 "2020-01" = the whole of January; st-o2 = [Jan 1 00:00Z, Jan 31 23:59:59Z];
# st-o3 = [Jan 15 10:00Z, open); st-o4 = 2020-01-31T23:30:00Z (written +01:00); st-o5 = 2019-12-31T23:59:59Z;
# st-o6 = 2021; st-o7/8 = 2020-03-03/04. Quantities: 100 mg, 100.00 mg/dL, 99.6 mg, 5.4 (unit mg, no code),
# 100.6 (unit "milligram", code mg). "1e2" is [50, 150) by significant figures and [95, 105) in the R4 table:
# every value here is in both or in neither.
E = Case
EXTRA_CASES = [
    E("x-accent-family", "Patient?family=muller", literal=("st-p1", "st-p2")),
    E("x-accent-family-upper", "Patient?family=MÜLLER", literal=("st-p1", "st-p2")),
    E("x-exact-umlaut", "Patient?family:exact=Müller", literal=("st-p1",)),
    E("x-accent-given-second", "Patient?given=zoe", literal=("st-p1",)),
    E("x-ring-accent", "Patient?name=angstrom", literal=("st-p3",)),
    E("x-name-text-contains", "Patient?name:contains=ers ång", literal=("st-p3",)),
    E("x-year-birthdate-eq-year", "Patient?birthdate=1975", literal=("st-p3", "st-p4")),
    E("x-year-birthdate-month", "Patient?birthdate=1975-05", literal=("st-p4",)),  # the year 1975 is not in May
    E("x-year-birthdate-gt-month", "Patient?birthdate=gt1975-05", literal=("st-p3",)),
    E("x-year-birthdate-lt-month", "Patient?birthdate=lt1975-05", literal=("st-p1", "st-p2", "st-p3")),
    E("x-ap-date", "Patient?birthdate=ap1950-06-15", literal=("st-p1",)),
    E("x-birthdate-missing", "Patient?birthdate:missing=true", literal=()),
    E("x-active-false", "Patient?active=false", literal=("st-p4",)),
    E("x-active-missing", "Patient?active:missing=true", literal=("st-p1", "st-p2", "st-p3")),
    E("x-gender-not", "Patient?gender:not=male", literal=("st-p1", "st-p3", "st-p4")),
    E("x-of-type", "Patient?identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|MRN-1",
      literal=("st-p1",)),
    E("x-identifier-text", "Patient?identifier:text=medical", literal=("st-p1",)),
    E("x-tag", "Patient?_tag=http://example.org/fhir/tags|search-test", literal=("st-p1",)),
    E("x-tag-system", "Patient?_tag=http://example.org/fhir/tags|", literal=("st-p1", "st-p2")),
    E("x-tag-not", "Patient?_tag:not=search-test", literal=("st-p2", "st-p3", "st-p4")),
    E("x-tag-missing", "Patient?_tag:missing=true", literal=("st-p3", "st-p4")),
    E("x-security", "Patient?_security=http://terminology.hl7.org/CodeSystem/v3-Confidentiality|R", literal=("st-p1",)),
    E("x-profile", f"Patient?_profile={PROFILE}", literal=("st-p1",)),
    E("x-source", "Patient?_source=http://example.org/source#st".replace("#", "%23"), literal=("st-p1",)),
    E("x-text-cc-text", "Observation?code:text=zoe", literal=("st-o6",)),
    E("x-qty-100-precision", "Observation?value-quantity=100", literal=("st-o1", "st-o2", "st-o3")),
    E("x-qty-100.00-precision", "Observation?value-quantity=100.00", literal=("st-o1", "st-o2")),
    E("x-qty-1e2", "Observation?value-quantity=1e2", literal=("st-o1", "st-o2", "st-o3", "st-o5")),
    E("x-qty-system-code", f"Observation?value-quantity=100|{UCUM}|mg", literal=("st-o1", "st-o3")),
    E("x-qty-code-or-unit", "Observation?value-quantity=5.4||mg", literal=("st-o4",)),
    E("x-qty-unit-not-code", "Observation?value-quantity=100.6||milligram", literal=("st-o5",)),
    E("x-qty-gt-exact", "Observation?value-quantity=gt100", literal=("st-o5",)),
    E("x-qty-ge", "Observation?value-quantity=ge100", literal=("st-o1", "st-o2", "st-o5")),
    E("x-qty-lt", "Observation?value-quantity=lt100", literal=("st-o3", "st-o4")),
    E("x-qty-ne", "Observation?value-quantity=ne100", literal=("st-o4", "st-o5")),
    E("x-qty-ap", "Observation?value-quantity=ap5", literal=("st-o4",)),
    E("x-qty-missing", "Observation?value-quantity:missing=true", literal=("st-o6", "st-o7", "st-o8")),
    E("x-date-month-point", "Observation?date=2020-01", literal=("st-o1", "st-o2", "st-o4")),
    E("x-date-open-period-gt", "Observation?date=gt2020-02", literal=("st-o3", "st-o6", "st-o7", "st-o8")),
    E("x-date-period-sa", "Observation?date=sa2019-12-31", literal=("st-o1", "st-o2", "st-o3", "st-o4",
                                                                   "st-o6", "st-o7", "st-o8")),
    E("x-date-period-eb", "Observation?date=eb2020-01-15", literal=("st-o5",)),
    E("x-date-zone-shift", "Observation?date=2020-01-31", literal=("st-o4",)),  # 2020-02-01T00:30+01:00
    E("x-date-lt-day", "Observation?date=lt2020-01-01", literal=("st-o5",)),
    E("x-composite", "Observation?component-code-value-quantity=http://loinc.org|8480-6$gt140", literal=("st-o7",)),
    E("x-composite-other", "Observation?component-code-value-quantity=http://loinc.org|8462-4$gt140",
      literal=("st-o8",)),
    E("x-composite-units", f"Observation?component-code-value-quantity=http://loinc.org|8480-6$95|{UCUM}|mm[Hg]",
      literal=("st-o8",)),
    E("x-number-eq", "RiskAssessment?probability=0.25", literal=("st-ra1",)),
    E("x-number-precision", "RiskAssessment?probability=0.4", literal=()),  # [0.35, 0.45)
    E("x-number-coarse", "RiskAssessment?probability=0", literal=("st-ra1", "st-ra3")),
    E("x-number-gt", "RiskAssessment?probability=gt0.5", literal=("st-ra2",)),
    E("x-number-ge", "RiskAssessment?probability=ge0.5", literal=("st-ra2", "st-ra3")),
    E("x-number-lt", "RiskAssessment?probability=lt0.1", literal=("st-ra3",)),
    E("x-number-le-and", "RiskAssessment?probability=le0.8&probability=ge0.25", literal=("st-ra1", "st-ra2", "st-ra3")),
    E("x-number-ap", "RiskAssessment?probability=ap0.79", literal=("st-ra2",)),
    E("x-int-eq", "MolecularSequence?variant-start=100", literal=("st-ms1",)),
    E("x-int-gt", "MolecularSequence?variant-start=gt1000", literal=("st-ms2",)),
    E("x-int-lt", "MolecularSequence?variant-start=lt50", literal=("st-ms2",)),
    E("x-int-ne", "MolecularSequence?variant-start=ne100", literal=("st-ms2",)),
    E("x-uri-eq", "ValueSet?url=http://example.org/fhir/ValueSet/st-colors", literal=("st-vs1",)),
    E("x-uri-no-prefix", "ValueSet?url=http://example.org/fhir/ValueSet/st", literal=()),
]


@pytest.fixture(scope="session")
def extra_eval():
    return Evaluator(EXTRA, base="{base}")


@pytest.fixture(scope="module")
def extra_server(module_server_factory):
    srv = module_server_factory()
    with Session() as s:
        t0 = time.time()
        for r in EXTRA[:4]:
            resp = s.fhir("PUT", f"{srv.base}/{r['resourceType']}/{r['id']}", r)
            assert resp.status_code == 201, describe_response(resp)
        time.sleep(1.2)
        srv.mid_time = time.time()
        time.sleep(1.2)
        for r in EXTRA[4:]:
            resp = s.fhir("PUT", f"{srv.base}/{r['resourceType']}/{r['id']}", r)
            assert resp.status_code == 201, describe_response(resp)
        srv.t0 = t0
    return srv


@pytest.mark.parametrize("case", EXTRA_CASES, ids=[c.id for c in EXTRA_CASES])
def test_search_extra(extra_server, extra_eval, search_http, case):
    base = extra_server.base
    ev = Evaluator(EXTRA, base=base)
    rtype, want = expected_of(ev, case, base)
    query = case.query.replace("{base}", base)
    _, entries, total = run_search(search_http, base, f"{base}/{query}")
    assert_exact([i for _, _, i, _ in entries], want, query)
    assert total == len(want)


def _iso(t):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + "Z"


def test_last_updated_extra(extra_server, search_http):
    base = extra_server.base
    later = {r["id"] for r in EXTRA[4:] if r["resourceType"] == "Observation"}
    _, entries, _ = run_search(search_http, base, f"{base}/Observation?_lastUpdated=gt{_iso(extra_server.mid_time)}")
    assert_exact([i for _, _, i, _ in entries], later, "_lastUpdated=gt mid")
    _, entries, _ = run_search(search_http, base, f"{base}/Patient?_lastUpdated=lt{_iso(extra_server.mid_time)}")
    assert_exact([i for _, _, i, _ in entries], {"st-p1", "st-p2", "st-p3", "st-p4"}, "_lastUpdated=lt mid")
    _, entries, _ = run_search(search_http, base, f"{base}/Patient?_lastUpdated=gt{_iso(extra_server.mid_time)}")
    assert not entries
    # sorted by _lastUpdated across types of one system search: patients (earlier) first
    _, entries, _ = run_search(search_http, base, f"{base}/?_type=Patient,Observation&_sort=_lastUpdated&_count=100")
    kinds = [t for _, t, _, _ in entries]
    assert kinds == ["Patient"] * 4 + ["Observation"] * 8, kinds
    ts = [r["meta"]["lastUpdated"] for *_, r in entries]
    assert ts == sorted(ts)


def test_paging_under_concurrent_writes(server, search_http):
    """Matching resources re-PUT unchanged (same code and date) and non-matching resources updated while a
    reader walks the pages: every match exactly once."""
    base = server.base
    match = [obs(f"cw-m{i:03d}", effectiveDateTime=f"2020-01-01T00:{i // 60:02d}:{i % 60:02d}Z",
                 code={"coding": [{"system": "http://example.org/cs", "code": "match"}]}) for i in range(240)]
    other = [obs(f"cw-n{i:03d}", effectiveDateTime="2020-01-01T00:00:00Z",
                 code={"coding": [{"system": "http://example.org/cs", "code": "other"}]}) for i in range(60)]
    with Session() as s:
        s.fhir("PUT", f"{base}/Patient/st-p1", {"resourceType": "Patient", "id": "st-p1"})
        for chunk in range(0, 300, 100):
            bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
                {"resource": r, "request": {"method": "PUT", "url": f"Observation/{r['id']}"}}
                for r in (match + other)[chunk:chunk + 100]]}
            resp = s.fhir("POST", base, bundle)
            assert resp.status_code == 200, describe_response(resp)
    stop = threading.Event()
    errors = []

    def writer():
        with Session() as w:
            n = 0
            while not stop.is_set():
                n += 1
                r = dict(other[n % 60], valueString=f"v{n}")
                m = dict(match[(n * 7) % 240], note=[{"text": f"touched {n}"}])
                for res in (r, m):
                    resp = w.fhir("PUT", f"{base}/Observation/{res['id']}", res)
                    if resp.status_code != 200:
                        errors.append(describe_response(resp))

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        want = {r["id"] for r in match}
        for q in ("Observation?code=http://example.org/cs|match&_sort=date&_count=13",
                  "Observation?code=match&_sort=-date&_count=17",
                  "Observation?code=match&_sort=_id&_count=11"):
            _, entries, total = run_search(search_http, base, f"{base}/{q}")
            assert_exact([i for _, _, i, _ in entries], want, q)
            assert total == 240
    finally:
        stop.set()
        t.join(10)
    assert not errors, errors[:3]
