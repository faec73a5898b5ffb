"""An independent, deliberately small FHIR R4 search evaluator for the search conformance suite.

It answers a search (type + list of (name, value) parameters) over a set of resource dicts, from per-parameter
extraction functions written by hand after the FHIRPath `expression` of each SearchParameter in
third_party/fhir-r4/search-parameters.json (the expression is quoted next to each entry). Only the parameters the
suite uses are here. No project code is imported and the server is never asked.

Semantics (hl7.org/fhir/R4/search.html), and the choices where R4 leaves room (repeated in test_search.py):
- string: accent- and case-insensitive, whitespace collapsed; default = starts-with, :contains = substring,
  :exact = exact code-point equality. Accents removed by Unicode NFKD (only letters that decompose are used).
- token: `code`, `system|code`, `|code` (no system), `system|` (any code of the system); :not = no value matches
  (resources without any value match); :text = starts-with over CodeableConcept.text, Coding.display and
  Identifier.type.text (the self-test checks every :text case gives the same set with substring matching);
  :of-type = `typesystem|typecode|value` on Identifiers. code/boolean/ContactPoint/id values have no system.
- date: every value is the inclusive range [lo, hi] of epoch milliseconds its precision covers (no zone = UTC; a
  Period is [start.lo, end.hi], open when start/end is absent). eq: search range contains target range; ne: not
  eq; gt: target hi > search hi; lt: target lo < search lo; sa: target lo > search hi; eb: target hi < search lo;
  ge = gt or eq, le = lt or eq (literal R4 wording; the self-test checks the suite's ge/le cases give the same set
  under the common reading ge: hi >= search lo, le: lo <= search hi). ap: overlap with the search range widened
  by 10% of its distance to now on each side (the self-test checks ap cases equal plain overlap as well).
- number/quantity: eq/ne/no prefix use the implicit range of the search value's precision ("100" = [99.5,
  100.5)); gt/lt/ge/le/sa/eb compare the exact value; ap = within 10% of the search value. Quantity
  `v|system|code` needs system and code equal; `v||code` matches code or unit; `v` alone any unit.
- reference: `Type/id`, `{base}/Type/id` (the server's base stripped), bare `id` (any target type), `:Type`
  modifier. :missing on every type: true = no value, false = some value.
- composite component-code-value-quantity: `token$quantity` on the same Observation.component.
- chains (`ref.param`, `ref:Type.param`) one level deep; reverse chains `_has:Type:refparam:param` one level.
- comma = OR inside one parameter, repeated parameters = AND.
"""

from __future__ import annotations

import datetime as _dt
import re
import unicodedata
from decimal import Decimal, InvalidOperation

OPEN_LO = float("-inf")
OPEN_HI = float("inf")
PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")


# ---- normalisation ---------------------------------------------------------------------------------------

def norm(s: str) -> str:
    s = unicodedata.normalize("NFKD", s)
    s = "".join(c for c in s if not unicodedata.combining(c))
    return " ".join(s.casefold().split())


_DATE_RE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?"
                      r"(Z|[+-]\d{2}:\d{2})?)?)?)?$")


def date_range(s: str):
    """(lo, hi) inclusive epoch ms of a FHIR date/dateTime/instant at its precision; None when malformed."""
    m = _DATE_RE.match(s)
    if not m:
        return None
    y, mo, d, hh, mi, ss, frac, tz = m.groups()
    try:
        if tz is None or tz == "Z":
            tzinfo = _dt.timezone.utc
        else:
            sign = 1 if tz[0] == "+" else -1
            tzinfo = _dt.timezone(sign * _dt.timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6])))
        y = int(y)
        if mo is None:
            lo = _dt.datetime(y, 1, 1, tzinfo=tzinfo)
            hi = _dt.datetime(y + 1, 1, 1, tzinfo=tzinfo)
        elif d is None:
            mo = int(mo)
            lo = _dt.datetime(y, mo, 1, tzinfo=tzinfo)
            hi = _dt.datetime(y + (mo == 12), mo % 12 + 1, 1, tzinfo=tzinfo)
        elif hh is None:
            lo = _dt.datetime(y, int(mo), int(d), tzinfo=tzinfo)
            hi = lo + _dt.timedelta(days=1)
        elif ss is None:
            lo = _dt.datetime(y, int(mo), int(d), int(hh), int(mi), tzinfo=tzinfo)
            hi = lo + _dt.timedelta(minutes=1)
        elif frac is None:
            lo = _dt.datetime(y, int(mo), int(d), int(hh), int(mi), int(ss), tzinfo=tzinfo)
            hi = lo + _dt.timedelta(seconds=1)
        else:
            ms = int((frac[1:] + "000")[:3])
            lo = _dt.datetime(y, int(mo), int(d), int(hh), int(mi), int(ss), ms * 1000, tzinfo=tzinfo)
            hi = lo + _dt.timedelta(milliseconds=1)
    except ValueError:
        return None
    return int(lo.timestamp() * 1000), int(hi.timestamp() * 1000) - 1


def period_range(p: dict):
    lo = date_range(p["start"])[0] if p.get("start") else OPEN_LO
    hi = date_range(p["end"])[1] if p.get("end") else OPEN_HI
    return lo, hi


def split_prefix(v: str):
    if len(v) > 2 and v[:2] in PREFIXES and (v[2].isdigit() or v[2] in "-+."):
        return v[:2], v[2:]
    return "eq", v


def decimal_range(s: str):
    """(value, lo, hi) with the implicit precision range [lo, hi) of a decimal as written."""
    try:
        d = Decimal(s)
    except InvalidOperation:
        return None
    if not d.is_finite():
        return None
    half = Decimal(5).scaleb(d.as_tuple().exponent - 1)
    if "e" in s.lower():  # "1e2": the precision is that of the mantissa times the power
        mant, _, exp = s.lower().partition("e")
        half = Decimal(5).scaleb(Decimal(mant).as_tuple().exponent - 1 + int(exp))
    return d, d - half, d + half


# ---- value shapes ----------------------------------------------------------------------------------------

class Tok:
    __slots__ = ("system", "code", "texts", "types")

    def __init__(self, system, code, texts=(), types=()):
        self.system, self.code, self.texts, self.types = system, code, tuple(texts), tuple(types)

    def __repr__(self):
        return f"Tok({self.system!r}, {self.code!r})"


def as_list(v):
    if v is None:
        return []
    return v if isinstance(v, list) else [v]


def get(node, path: str):
    """All values at a dotted path (lists flattened at every step)."""
    nodes = [node]
    for name in path.split("."):
        nxt = []
        for n in nodes:
            if isinstance(n, dict) and name in n:
                nxt.extend(as_list(n[name]))
        nodes = nxt
    return nodes


def choice(node, name: str):
    """[(type suffix, value)] of a choice element name[x]."""
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k.startswith(name) and len(k) > len(name) and k[len(name)].isupper():
                out.append((k[len(name):], v))
    return out


def cc_toks(cc):
    """A CodeableConcept as tokens (one per coding; texts = its text + that coding's display)."""
    out = []
    if not isinstance(cc, dict):
        return out
    text = [cc["text"]] if isinstance(cc.get("text"), str) else []
    codings = as_list(cc.get("coding"))
    for c in codings:
        out.append(Tok(c.get("system"), c.get("code"), text + ([c["display"]] if c.get("display") else [])))
    if not codings and text:
        out.append(Tok(None, None, text))
    return out


def coding_tok(c):
    return Tok(c.get("system"), c.get("code"), [c["display"]] if c.get("display") else [])


def ident_tok(i):
    types = [(c.get("system"), c.get("code")) for c in as_list((i.get("type") or {}).get("coding"))]
    texts = [i["type"]["text"]] if isinstance((i.get("type") or {}).get("text"), str) else []
    return Tok(i.get("system"), i.get("value"), texts, types)


def code_tok(v):
    if isinstance(v, bool):
        return Tok(None, "true" if v else "false")
    return Tok(None, v)


def name_strings(n):
    out = [n.get("family")] + as_list(n.get("given")) + as_list(n.get("prefix")) + as_list(n.get("suffix"))
    out.append(n.get("text"))
    return [s for s in out if isinstance(s, str)]


def address_strings(a):
    out = as_list(a.get("line")) + [a.get(k) for k in ("city", "district", "state", "postalCode", "country", "text")]
    return [s for s in out if isinstance(s, str)]


def dt_ranges(values):
    out = []
    for v in values:
        if isinstance(v, str):
            out.append(date_range(v))
        elif isinstance(v, dict) and ("start" in v or "end" in v):
            out.append(period_range(v))
    return [r for r in out if r]


def choice_dates(res, name):
    out = []
    for suffix, v in choice(res, name):
        if suffix in ("DateTime", "Date", "Instant"):
            out.append(date_range(v))
        elif suffix == "Period":
            out.append(period_range(v))
    return [r for r in out if r]


def refs(values, only_type=None):
    out = []
    for v in values:
        r = v.get("reference") if isinstance(v, dict) else None
        if isinstance(r, str) and not r.startswith("#"):
            if only_type is None or r.startswith(only_type + "/"):
                out.append(r)
    return out


def qty(q):
    if not isinstance(q, dict) or "value" not in q:
        return None
    return (Decimal(str(q["value"])), q.get("system"), q.get("code"), q.get("unit"))


def value_qty(res):
    return [q for q in (qty(v) for s, v in choice(res, "value") if s == "Quantity") if q]


# ---- the parameters (type, code) -> (search type, extraction) ---------------------------------------------
# Each entry quotes the R4 expression alternative(s) that apply to the type.

def _p(kind, fn):
    return (kind, fn)


CLINICAL_CODE = lambda path: _p("token", lambda r: [t for cc in get(r, path) for t in cc_toks(cc)])  # noqa: E731
PATIENT_OF = lambda path: _p("reference", lambda r: refs(get(r, path), "Patient"))  # .where(resolve() is Patient)  # noqa: E731

PARAMS = {
    # common parameters: Resource.id, Resource.meta.tag/security (token), meta.profile/source (uri)
    ("*", "_id"): _p("token", lambda r: [Tok(None, r["id"])]),
    ("*", "_tag"): _p("token", lambda r: [coding_tok(c) for c in get(r, "meta.tag")]),
    ("*", "_security"): _p("token", lambda r: [coding_tok(c) for c in get(r, "meta.security")]),
    ("*", "_profile"): _p("uri", lambda r: get(r, "meta.profile")),
    ("*", "_source"): _p("uri", lambda r: get(r, "meta.source")),
    # Patient
    ("Patient", "name"): _p("string", lambda r: [s for n in get(r, "name") for s in name_strings(n)]),  # Patient.name
    ("Patient", "family"): _p("string", lambda r: get(r, "name.family")),  # Patient.name.family
    ("Patient", "given"): _p("string", lambda r: get(r, "name.given")),  # Patient.name.given
    ("Patient", "gender"): _p("token", lambda r: [code_tok(v) for v in get(r, "gender")]),  # Patient.gender
    ("Patient", "birthdate"): _p("date", lambda r: dt_ranges(get(r, "birthDate"))),  # Patient.birthDate
    ("Patient", "identifier"): _p("token", lambda r: [ident_tok(i) for i in get(r, "identifier")]),
    ("Patient", "address"): _p("string", lambda r: [s for a in get(r, "address") for s in address_strings(a)]),
    ("Patient", "address-city"): _p("string", lambda r: get(r, "address.city")),  # Patient.address.city
    ("Patient", "address-state"): _p("string", lambda r: get(r, "address.state")),
    ("Patient", "address-postalcode"): _p("string", lambda r: get(r, "address.postalCode")),
    ("Patient", "phone"): _p("token", lambda r: [Tok(None, t.get("value")) for t in get(r, "telecom")
                                                if t.get("system") == "phone"]),  # telecom.where(system='phone')
    ("Patient", "telecom"): _p("token", lambda r: [Tok(None, t.get("value")) for t in get(r, "telecom")]),
    ("Patient", "active"): _p("token", lambda r: [code_tok(v) for v in get(r, "active")]),  # Patient.active
    ("Patient", "language"): CLINICAL_CODE("communication.language"),  # Patient.communication.language
    ("Patient", "general-practitioner"): _p("reference", lambda r: refs(get(r, "generalPractitioner"))),
    ("Patient", "organization"): _p("reference", lambda r: refs(get(r, "managingOrganization"))),
    # Patient.deceased.exists() and Patient.deceased != false: a boolean EXPRESSION, so every Patient has a value:
    # without deceased[x] it is `false and {}` = false (FHIRPath three-valued `and`), never "missing".
    ("Patient", "deceased"): _p("token", lambda r: [Tok(None, "true" if any(
        v is not False for _, v in choice(r, "deceased")) else "false")]),
    ("Patient", "death-date"): _p("date", lambda r: [date_range(v) for s, v in choice(r, "deceased")
                                                     if s == "DateTime"]),  # (Patient.deceased as dateTime)
    # Practitioner
    ("Practitioner", "name"): _p("string", lambda r: [s for n in get(r, "name") for s in name_strings(n)]),
    ("Practitioner", "family"): _p("string", lambda r: get(r, "name.family")),
    ("Practitioner", "given"): _p("string", lambda r: get(r, "name.given")),
    ("Practitioner", "gender"): _p("token", lambda r: [code_tok(v) for v in get(r, "gender")]),
    ("Practitioner", "identifier"): _p("token", lambda r: [ident_tok(i) for i in get(r, "identifier")]),
    ("Practitioner", "email"): _p("token", lambda r: [Tok(None, t.get("value")) for t in get(r, "telecom")
                                                     if t.get("system") == "email"]),
    ("Practitioner", "address-city"): _p("string", lambda r: get(r, "address.city")),
    # Organization: Organization.name | Organization.alias
    ("Organization", "name"): _p("string", lambda r: get(r, "name") + get(r, "alias")),
    ("Organization", "address-city"): _p("string", lambda r: get(r, "address.city")),
    ("Organization", "address-postalcode"): _p("string", lambda r: get(r, "address.postalCode")),
    ("Organization", "type"): CLINICAL_CODE("type"),
    ("Organization", "identifier"): _p("token", lambda r: [ident_tok(i) for i in get(r, "identifier")]),
    ("Organization", "active"): _p("token", lambda r: [code_tok(v) for v in get(r, "active")]),
    # Observation
    ("Observation", "code"): CLINICAL_CODE("code"),  # Observation.code
    ("Observation", "category"): CLINICAL_CODE("category"),
    ("Observation", "status"): _p("token", lambda r: [code_tok(v) for v in get(r, "status")]),
    ("Observation", "subject"): _p("reference", lambda r: refs(get(r, "subject"))),
    ("Observation", "patient"): PATIENT_OF("subject"),  # Observation.subject.where(resolve() is Patient)
    ("Observation", "encounter"): _p("reference", lambda r: refs(get(r, "encounter"))),
    ("Observation", "performer"): _p("reference", lambda r: refs(get(r, "performer"))),
    ("Observation", "date"): _p("date", lambda r: choice_dates(r, "effective")),  # Observation.effective
    # (Observation.value as Quantity) | (Observation.value as SampledData)
    ("Observation", "value-quantity"): _p("quantity", value_qty),
    ("Observation", "value-concept"): _p("token", lambda r: [t for s, v in choice(r, "value")
                                                            if s == "CodeableConcept" for t in cc_toks(v)]),
    # (Observation.value as string) | (Observation.value as CodeableConcept).text
    ("Observation", "value-string"): _p("string", lambda r: [v for s, v in choice(r, "value") if s == "String"]
                                        + [v.get("text") for s, v in choice(r, "value")
                                           if s == "CodeableConcept" and v.get("text")]),
    ("Observation", "combo-code"): _p("token", lambda r: [t for cc in get(r, "code") + get(r, "component.code")
                                                          for t in cc_toks(cc)]),
    ("Observation", "component-code"): CLINICAL_CODE("component.code"),
    ("Observation", "identifier"): _p("token", lambda r: [ident_tok(i) for i in get(r, "identifier")]),
    # composite: Observation.component, components code + value.as(Quantity)
    ("Observation", "component-code-value-quantity"): _p("composite", lambda r: [
        ([t for t in cc_toks(c.get("code"))], value_qty(c)) for c in get(r, "component")]),
    # Encounter
    ("Encounter", "class"): _p("token", lambda r: [coding_tok(c) for c in get(r, "class")]),  # Encounter.class
    ("Encounter", "type"): CLINICAL_CODE("type"),
    ("Encounter", "status"): _p("token", lambda r: [code_tok(v) for v in get(r, "status")]),
    ("Encounter", "date"): _p("date", lambda r: dt_ranges(get(r, "period"))),  # Encounter.period
    ("Encounter", "subject"): _p("reference", lambda r: refs(get(r, "subject"))),
    ("Encounter", "patient"): PATIENT_OF("subject"),
    ("Encounter", "service-provider"): _p("reference", lambda r: refs(get(r, "serviceProvider"))),
    ("Encounter", "participant"): _p("reference", lambda r: refs(get(r, "participant.individual"))),
    ("Encounter", "practitioner"): _p("reference", lambda r: refs(get(r, "participant.individual"), "Practitioner")),
    ("Encounter", "reason-code"): CLINICAL_CODE("reasonCode"),
    # Condition
    ("Condition", "code"): CLINICAL_CODE("code"),
    ("Condition", "clinical-status"): CLINICAL_CODE("clinicalStatus"),
    ("Condition", "verification-status"): CLINICAL_CODE("verificationStatus"),
    ("Condition", "onset-date"): _p("date", lambda r: choice_dates(r, "onset")),  # onset.as(dateTime)|as(Period)
    ("Condition", "abatement-date"): _p("date", lambda r: choice_dates(r, "abatement")),
    ("Condition", "recorded-date"): _p("date", lambda r: dt_ranges(get(r, "recordedDate"))),
    ("Condition", "patient"): PATIENT_OF("subject"),
    ("Condition", "subject"): _p("reference", lambda r: refs(get(r, "subject"))),
    ("Condition", "encounter"): _p("reference", lambda r: refs(get(r, "encounter"))),
    # Claim
    ("Claim", "patient"): _p("reference", lambda r: refs(get(r, "patient"))),
    ("Claim", "created"): _p("date", lambda r: dt_ranges(get(r, "created"))),
    ("Claim", "use"): _p("token", lambda r: [code_tok(v) for v in get(r, "use")]),
    ("Claim", "status"): _p("token", lambda r: [code_tok(v) for v in get(r, "status")]),
    ("Claim", "provider"): _p("reference", lambda r: refs(get(r, "provider"))),
    ("Claim", "priority"): CLINICAL_CODE("priority"),
    ("Claim", "insurer"): _p("reference", lambda r: refs(get(r, "insurer"))),
    # ExplanationOfBenefit
    ("ExplanationOfBenefit", "patient"): _p("reference", lambda r: refs(get(r, "patient"))),
    ("ExplanationOfBenefit", "created"): _p("date", lambda r: dt_ranges(get(r, "created"))),
    ("ExplanationOfBenefit", "status"): _p("token", lambda r: [code_tok(v) for v in get(r, "status")]),
    ("ExplanationOfBenefit", "claim"): _p("reference", lambda r: refs(get(r, "claim"))),
    ("ExplanationOfBenefit", "provider"): _p("reference", lambda r: refs(get(r, "provider"))),
    ("ExplanationOfBenefit", "care-team"): _p("reference", lambda r: refs(get(r, "careTeam.provider"))),
    # MedicationRequest
    ("MedicationRequest", "code"): _p("token", lambda r: [t for s, v in choice(r, "medication")
                                                         if s == "CodeableConcept" for t in cc_toks(v)]),
    ("MedicationRequest", "status"): _p("token", lambda r: [code_tok(v) for v in get(r, "status")]),
    ("MedicationRequest", "intent"): _p("token", lambda r: [code_tok(v) for v in get(r, "intent")]),
    ("MedicationRequest", "authoredon"): _p("date", lambda r: dt_ranges(get(r, "authoredOn"))),
    ("MedicationRequest", "requester"): _p("reference", lambda r: refs(get(r, "requester"))),
    ("MedicationRequest", "encounter"): _p("reference", lambda r: refs(get(r, "encounter"))),
    ("MedicationRequest", "patient"): PATIENT_OF("subject"),
    ("MedicationRequest", "subject"): _p("reference", lambda r: refs(get(r, "subject"))),
    # Procedure
    ("Procedure", "code"): CLINICAL_CODE("code"),
    ("Procedure", "date"): _p("date", lambda r: choice_dates(r, "performed")),  # Procedure.performed
    ("Procedure", "patient"): PATIENT_OF("subject"),
    ("Procedure", "status"): _p("token", lambda r: [code_tok(v) for v in get(r, "status")]),
    ("Procedure", "encounter"): _p("reference", lambda r: refs(get(r, "encounter"))),
    ("Procedure", "reason-reference"): _p("reference", lambda r: refs(get(r, "reasonReference"))),
    # Immunization
    ("Immunization", "vaccine-code"): CLINICAL_CODE("vaccineCode"),
    ("Immunization", "date"): _p("date", lambda r: choice_dates(r, "occurrence")),  # Immunization.occurrence
    ("Immunization", "status"): _p("token", lambda r: [code_tok(v) for v in get(r, "status")]),
    ("Immunization", "patient"): _p("reference", lambda r: refs(get(r, "patient"))),
    # DiagnosticReport
    ("DiagnosticReport", "code"): CLINICAL_CODE("code"),
    ("DiagnosticReport", "category"): CLINICAL_CODE("category"),
    ("DiagnosticReport", "date"): _p("date", lambda r: choice_dates(r, "effective")),
    ("DiagnosticReport", "issued"): _p("date", lambda r: dt_ranges(get(r, "issued"))),
    ("DiagnosticReport", "result"): _p("reference", lambda r: refs(get(r, "result"))),
    ("DiagnosticReport", "patient"): PATIENT_OF("subject"),
    ("DiagnosticReport", "subject"): _p("reference", lambda r: refs(get(r, "subject"))),
    ("DiagnosticReport", "encounter"): _p("reference", lambda r: refs(get(r, "encounter"))),
    # CareTeam
    ("CareTeam", "status"): _p("token", lambda r: [code_tok(v) for v in get(r, "status")]),
    ("CareTeam", "subject"): _p("reference", lambda r: refs(get(r, "subject"))),
    ("CareTeam", "patient"): PATIENT_OF("subject"),
    ("CareTeam", "participant"): _p("reference", lambda r: refs(get(r, "participant.member"))),
    ("CareTeam", "date"): _p("date", lambda r: dt_ranges(get(r, "period"))),  # CareTeam.period
    # CarePlan
    ("CarePlan", "status"): _p("token", lambda r: [code_tok(v) for v in get(r, "status")]),
    ("CarePlan", "category"): CLINICAL_CODE("category"),
    ("CarePlan", "activity-code"): CLINICAL_CODE("activity.detail.code"),
    ("CarePlan", "date"): _p("date", lambda r: dt_ranges(get(r, "period"))),  # CarePlan.period
    ("CarePlan", "care-team"): _p("reference", lambda r: refs(get(r, "careTeam"))),
    ("CarePlan", "patient"): PATIENT_OF("subject"),
    ("CarePlan", "subject"): _p("reference", lambda r: refs(get(r, "subject"))),
    # AllergyIntolerance
    ("AllergyIntolerance", "criticality"): _p("token", lambda r: [code_tok(v) for v in get(r, "criticality")]),
    ("AllergyIntolerance", "category"): _p("token", lambda r: [code_tok(v) for v in get(r, "category")]),
    ("AllergyIntolerance", "type"): _p("token", lambda r: [code_tok(v) for v in get(r, "type")]),
    ("AllergyIntolerance", "clinical-status"): CLINICAL_CODE("clinicalStatus"),
    # AllergyIntolerance.code | AllergyIntolerance.reaction.substance
    ("AllergyIntolerance", "code"): _p("token", lambda r: [t for cc in get(r, "code") + get(r, "reaction.substance")
                                                          for t in cc_toks(cc)]),
    ("AllergyIntolerance", "patient"): _p("reference", lambda r: refs(get(r, "patient"))),
    ("AllergyIntolerance", "date"): _p("date", lambda r: dt_ranges(get(r, "recordedDate"))),
    ("AllergyIntolerance", "onset"): _p("date", lambda r: dt_ranges(get(r, "reaction.onset"))),
    # Device
    ("Device", "type"): CLINICAL_CODE("type"),
    ("Device", "patient"): _p("reference", lambda r: refs(get(r, "patient"))),
    ("Device", "status"): _p("token", lambda r: [code_tok(v) for v in get(r, "status")]),
    ("Device", "udi-di"): _p("string", lambda r: get(r, "udiCarrier.deviceIdentifier")),
    # Device.deviceName.name | Device.type.coding.display | Device.type.text
    ("Device", "device-name"): _p("string", lambda r: get(r, "deviceName.name") + get(r, "type.coding.display")
                                  + get(r, "type.text")),
    # ImagingStudy
    ("ImagingStudy", "modality"): _p("token", lambda r: [coding_tok(c) for c in get(r, "series.modality")]),
    ("ImagingStudy", "bodysite"): _p("token", lambda r: [coding_tok(c) for c in get(r, "series.bodySite")]),
    ("ImagingStudy", "started"): _p("date", lambda r: dt_ranges(get(r, "started"))),
    ("ImagingStudy", "status"): _p("token", lambda r: [code_tok(v) for v in get(r, "status")]),
    ("ImagingStudy", "identifier"): _p("token", lambda r: [ident_tok(i) for i in get(r, "identifier")]),
    ("ImagingStudy", "patient"): PATIENT_OF("subject"),
    # Group
    ("Group", "member"): _p("reference", lambda r: refs(get(r, "member.entity"))),
    ("Group", "type"): _p("token", lambda r: [code_tok(v) for v in get(r, "type")]),
    ("Group", "actual"): _p("token", lambda r: [code_tok(v) for v in get(r, "actual")]),
    ("Group", "identifier"): _p("token", lambda r: [ident_tok(i) for i in get(r, "identifier")]),
    ("Group", "code"): CLINICAL_CODE("code"),
    # extra types of the PUT fixture
    ("RiskAssessment", "probability"): _p("number", lambda r: [  # RiskAssessment.prediction.probability
        Decimal(str(v)) for p in get(r, "prediction") for s, v in choice(p, "probability") if s == "Decimal"]),
    ("MolecularSequence", "variant-start"): _p("number", lambda r: [  # MolecularSequence.variant.start
        Decimal(str(v)) for v in get(r, "variant.start")]),
    ("ValueSet", "url"): _p("uri", lambda r: get(r, "url")),  # ValueSet.url
    ("ValueSet", "name"): _p("string", lambda r: get(r, "name")),
}

# Targets of reference parameters (SearchParameter.target) where the tests use a bare id or a chain.
TARGETS = {
    "patient": ["Patient"], "subject": ["Group", "Device", "Patient", "Location"], "encounter": ["Encounter"],
    "service-provider": ["Organization"], "provider": ["Practitioner", "Organization", "PractitionerRole"],
    "participant": ["Practitioner", "PractitionerRole", "RelatedPerson", "Organization", "CareTeam", "Patient"],
    "practitioner": ["Practitioner"], "requester": ["Practitioner", "Organization", "Device", "Patient"],
    "general-practitioner": ["Practitioner", "Organization", "PractitionerRole"], "organization": ["Organization"],
    "claim": ["Claim"], "result": ["Observation"], "member": ["Practitioner", "Group", "Device", "Patient"],
    "care-team": ["CareTeam", "Practitioner", "Organization"], "reason-reference": ["Condition", "Observation"],
}


def param(rtype, code):
    p = PARAMS.get((rtype, code)) or PARAMS.get(("*", code))
    if p is None:
        raise KeyError(f"the test evaluator has no parameter {rtype}.{code}")
    return p


# ---- matching --------------------------------------------------------------------------------------------

class Options:
    """Choices left open by the spec, switchable so the self-test can prove a case does not depend on them."""

    def __init__(self, text_contains=False, ge_le_overlap=False, ap_plain_overlap=False, now_ms=None):
        self.text_contains = text_contains
        self.ge_le_overlap = ge_le_overlap
        self.ap_plain_overlap = ap_plain_overlap
        self.now_ms = now_ms if now_ms is not None else int(_dt.datetime.now(_dt.timezone.utc).timestamp() * 1000)


def match_date(prefix, s, t, opt):
    slo, shi = s
    tlo, thi = t
    eq = slo <= tlo and thi <= shi
    if prefix == "eq":
        return eq
    if prefix == "ne":
        return not eq
    if prefix == "gt":
        return thi > shi
    if prefix == "lt":
        return tlo < slo
    if prefix == "ge":
        return thi >= slo if opt.ge_le_overlap else (thi > shi or eq)
    if prefix == "le":
        return tlo <= shi if opt.ge_le_overlap else (tlo < slo or eq)
    if prefix == "sa":
        return tlo > shi
    if prefix == "eb":
        return thi < slo
    if prefix == "ap":
        if opt.ap_plain_overlap:
            return tlo <= shi and thi >= slo
        lo = slo - 0.1 * abs(opt.now_ms - slo)
        hi = shi + 0.1 * abs(opt.now_ms - shi)
        return tlo <= hi and thi >= lo
    raise ValueError(prefix)


def match_number(prefix, q, v):
    d, lo, hi = q
    if prefix == "eq":
        return lo <= v < hi
    if prefix == "ne":
        return not (lo <= v < hi)
    if prefix in ("gt", "sa"):
        return v > d
    if prefix in ("lt", "eb"):
        return v < d
    if prefix == "ge":
        return v >= d
    if prefix == "le":
        return v <= d
    if prefix == "ap":
        return abs(v - d) <= abs(d) / 10
    raise ValueError(prefix)


def match_token(q, tok):
    if "|" in q:
        system, code = q.split("|", 1)
        if system == "":
            return tok.system is None and tok.code == code
        if code == "":
            return tok.system == system
        return tok.system == system and tok.code == code
    return tok.code == q


def match_quantity(q, v):
    parts = q.split("|")
    prefix, num = split_prefix(parts[0])
    rng = decimal_range(num)
    if not match_number(prefix, rng, v[0]):
        return False
    if len(parts) == 1:
        return True
    system, code = parts[1], parts[2]
    if system == "":
        return code in (v[2], v[3])
    return v[1] == system and v[2] == code


def match_one(kind, modifier, q, values, opt, base):
    if kind == "string":
        nq = norm(q)
        if modifier == "exact":
            return any(v == q for v in values)
        if modifier == "contains":
            return any(nq in norm(v) for v in values)
        assert modifier is None, modifier
        return any(norm(v).startswith(nq) for v in values)
    if kind == "token":
        if modifier == "text":
            nq = norm(q)
            if opt.text_contains:
                return any(nq in norm(t) for tok in values for t in tok.texts)
            return any(norm(t).startswith(nq) for tok in values for t in tok.texts)
        if modifier == "of-type":
            tsys, tcode, value = q.split("|", 2)
            return any((tsys, tcode) in tok.types and tok.code == value for tok in values)
        assert modifier is None, modifier
        return any(match_token(q, tok) for tok in values)
    if kind == "date":
        prefix, v = split_prefix(q)
        s = date_range(v)
        assert s, q
        return any(match_date(prefix, s, t, opt) for t in values)
    if kind == "number":
        prefix, v = split_prefix(q)
        rng = decimal_range(v)
        return any(match_number(prefix, rng, x) for x in values)
    if kind == "quantity":
        return any(match_quantity(q, v) for v in values)
    if kind == "uri":
        return any(v == q for v in values)
    if kind == "reference":
        if base and q.startswith(base + "/"):
            q = q[len(base) + 1:]
        if modifier:  # :Type
            q = f"{modifier}/{q}"
        if "/" in q:
            return q in values
        return any(v.split("/")[-1] == q for v in values)
    if kind == "composite":
        qc, qq = q.split("$", 1)
        return any(any(match_token(qc, t) for t in toks) and any(match_quantity(qq, x) for x in qs)
                   for toks, qs in values)
    raise ValueError(kind)


# ---- the evaluator ---------------------------------------------------------------------------------------

class Evaluator:
    def __init__(self, resources, base=None, opt=None):
        self.by_type = {}
        self.by_key = {}
        for r in resources:
            self.by_type.setdefault(r["resourceType"], []).append(r)
            self.by_key[f"{r['resourceType']}/{r['id']}"] = r
        self.base = base
        self.opt = opt or Options()
        self._cache = {}

    def with_options(self, **kw):
        e = Evaluator([], self.base, Options(now_ms=self.opt.now_ms, **kw))
        e.by_type, e.by_key, e._cache = self.by_type, self.by_key, self._cache
        return e

    def values(self, r, code):
        key = (r["resourceType"], r["id"], code)
        if key not in self._cache:
            kind, fn = param(r["resourceType"], code)
            self._cache[key] = (kind, fn(r))
        return self._cache[key]

    def referring(self, rtype, code):
        """{Type/id: [resources of rtype whose parameter `code` refers to it]}"""
        key = ("referring", rtype, code)
        if key not in self._cache:
            idx = {}
            for x in self.by_type.get(rtype, []):
                for v in set(self.values(x, code)[1]):
                    idx.setdefault(v, []).append(x)
            self._cache[key] = idx
        return self._cache[key]

    def matches(self, r, name, value):
        """One parameter (name with modifier/chain, value with commas) against one resource."""
        if name.startswith("_has:"):
            _, htype, href, hparam = name.split(":", 3)
            me = f"{r['resourceType']}/{r['id']}"
            return any(self.matches(x, hparam, value) for x in self.referring(htype, href).get(me, []))
        if "." in name:  # chain: ref[:Type].param
            ref, chained = name.split(".", 1)
            code, _, rtype = ref.partition(":")
            targets = [self.by_key[v] for v in self.values(r, code)[1] if v in self.by_key]
            if rtype:
                targets = [t for t in targets if t["resourceType"] == rtype]
            return any(self.matches(t, chained, value) for t in targets)
        code, _, modifier = name.partition(":")
        modifier = modifier or None
        kind, vals = self.values(r, code)
        if modifier == "missing":
            return (not vals) == (value == "true")
        if modifier == "not":
            return not any(match_one("token", None, q, vals, self.opt, self.base) for q in value.split(","))
        return any(match_one(kind, modifier, q, vals, self.opt, self.base) for q in value.split(","))

    def search(self, rtype, params):
        """Ids of `rtype` matching every (name, value) of `params` (AND), values with commas = OR."""
        out = set()
        for r in self.by_type.get(rtype, []):
            if all(self.matches(r, n, v) for n, v in params if not n.startswith("_") or n.split(":")[0] in (
                    "_id", "_tag", "_security", "_profile", "_source", "_has")):
                out.add(r["id"])
        return out

    def sort_key(self, r, code, descending):
        """The sort value of a resource for one parameter: the lowest value ascending, the highest descending."""
        kind, vals = self.values(r, code)
        if kind == "date":
            keys = [lo for lo, hi in vals] if not descending else [hi for lo, hi in vals]
        elif kind == "string":
            keys = [norm(v) for v in vals]
        elif kind == "token":
            keys = [t.code for t in vals if t.code is not None]
        elif kind in ("number",):
            keys = list(vals)
        elif kind == "quantity":
            keys = [v[0] for v in vals]
        else:
            keys = list(vals)
        if not keys:
            return None
        return max(keys) if descending else min(keys)

    def included(self, match_keys, includes):
        """{Type/id} that `_include` values (source:param[:target]) add to `match_keys` (a set of Type/id). Values
        prefixed 'iterate:' are applied again to everything included, until nothing new comes."""
        def apply(specs, keys):
            found = set()
            for key in keys:
                r = self.by_key[key]
                for spec in specs:
                    src, code, *tgt = spec.split(":")
                    if r["resourceType"] != src:
                        continue
                    for v in self.values(r, code)[1]:
                        if v in self.by_key and (not tgt or v.startswith(tgt[0] + "/")):
                            found.add(v)
            return found

        plain = [i for i in includes if not i.startswith("iterate:")]
        itr = [i[len("iterate:"):] for i in includes if i.startswith("iterate:")]
        out = apply(plain + itr, match_keys) - set(match_keys)
        frontier = set(out)
        while itr and frontier:
            frontier = apply(itr, frontier) - out - set(match_keys)
            out |= frontier
        return out

    def revincluded(self, match_keys, revincludes):
        out = set()
        for spec in revincludes:
            src, code = spec.split(":")[:2]
            for x in self.by_type.get(src, []):
                if set(self.values(x, code)[1]) & match_keys:
                    out.add(f"{src}/{x['id']}")
        return out
