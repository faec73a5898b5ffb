// Handlers for the FHIR REST interactions. Each parses the request into plain values, runs the store
// operation, and renders stored bytes as they are (never re-serialised).
#include "api/fhir_rest.h"

#include <charconv>

#include "api/fhir_response.h"
#include "api/fhir_search.h"
#include "api/transaction.h"
#include "common/ids.h"
#include "common/json_escape.h"
#include "fhir/operation_outcome.h"
#include "fhir/page_cursor.h"
#include "fhir/patch.h"
#include "fhir/r4.h"
#include "fhir/resource_parser.h"
#include "search/search_params.h"

namespace fhirlake::api {
namespace {

using http::Request;
using http::RequestContext;
using http::Response;

fhir::ResourceParser& Parser() {
  thread_local fhir::ResourceParser parser;
  return parser;
}

Status CheckId(std::string_view id) {
  if (!IsValidFhirId(id)) {
    return Status::Invalid("Invalid resource id '" + std::string(id) +
                           "': an id is 1-64 characters of A-Z, a-z, 0-9, '-' and '.'");
  }
  return Status::Ok();
}

std::string ETag(int64_t version) { return "W/\"" + std::to_string(version) + "\""; }

Response ResourceResponse(int status, const store::StoredResource& r, const std::string& fhir_base,
                          bool with_location) {
  Response resp = Response::Json(status, r.json);
  resp.headers.Set("ETag", ETag(r.version));
  resp.headers.Set("Last-Modified", FormatHttpDate(r.last_updated));
  if (with_location) {
    std::string loc = fhir_base + "/" + r.type + "/" + r.id + "/_history/" + std::to_string(r.version);
    resp.headers.Set(status == 201 ? "Location" : "Content-Location", loc);
    if (status == 201) resp.headers.Set("Content-Location", loc);
  }
  return resp;
}

// A request body parsed (so validated) before the write lock. `needs_store`: it has conditional references, which
// only the store can resolve, so it is parsed again under the lock (ResolveUnderLock).
struct ParsedBody {
  fhir::ParsedResource resource;
  bool needs_store = false;
};

Result<ParsedBody> ParseBody(const Request& req, std::string_view url_type) {
  RETURN_IF_ERROR(CheckJsonContentType(req));
  if (req.body.empty()) return Status::Invalid("The request has no body; send a FHIR resource as JSON");
  PlanReferenceResolver resolver(nullptr, nullptr);
  auto parsed = Parser().Parse(req.body, &resolver);
  Parser().ReleaseLargeBuffers();  // the result owns its bytes
  if (!parsed.ok()) return parsed.status();
  if (parsed->type != url_type) {
    return Status::Invalid("The resource is a '" + parsed->type + "' but the URL names '" + std::string(url_type) +
                           "'; they must match");
  }
  return ParsedBody{std::move(*parsed), resolver.needs_store()};
}

// The final content of a parsed body, under the write lock: conditional references resolved against `txn` (one
// match is rewritten to Type/id, so the resource also joins that Patient's compartment; none or several: 412).
Result<fhir::ParsedResource> ResolveUnderLock(const Request& req, ParsedBody body, store::StoreTransaction* txn) {
  if (!body.needs_store) return std::move(body.resource);
  StoreReferenceResolver resolver(nullptr, txn);
  auto parsed = Parser().Parse(req.body, &resolver);
  Parser().ReleaseLargeBuffers();
  return parsed;
}

Result<Response> Create(store::ResourceStore& store, const std::string& base, const Request& req,
                        const std::string& type) {
  RETURN_IF_ERROR(CheckType(type));
  ASSIGN_OR_RETURN(ParsedBody body, ParseBody(req, type));
  ASSIGN_OR_RETURN(auto txn, store.BeginWrite());
  if (req.headers.Has("If-None-Exist")) {  // conditional create
    std::string_view cond = req.headers.Get("If-None-Exist");
    if (size_t q = cond.find('?'); q != std::string_view::npos) cond = cond.substr(q + 1);
    ASSIGN_OR_RETURN(auto ids, FindByCondition(*txn, type, cond, "If-None-Exist '" + std::string(cond) + "'"));
    if (ids.size() > 1) {
      return Status::PreconditionFailed("If-None-Exist '" + std::string(cond) + "' matches " +
                                        std::to_string(ids.size()) + " resources; it must match at most one");
    }
    if (ids.size() == 1) {
      ASSIGN_OR_RETURN(auto existing, txn->Read(type, ids[0]));
      return ResourceResponse(200, existing, base, true);
    }
  }
  ASSIGN_OR_RETURN(fhir::ParsedResource parsed, ResolveUnderLock(req, std::move(body), txn.get()));
  ASSIGN_OR_RETURN(auto stored, txn->Put(parsed, NewUuid(), std::nullopt, store::WriteOp::kPost));
  RETURN_IF_ERROR(txn->Commit());
  return ResourceResponse(201, stored, base, true);
}

Result<Response> Update(store::ResourceStore& store, const std::string& base, const Request& req,
                        const std::string& type, const std::string& id) {
  RETURN_IF_ERROR(CheckType(type));
  RETURN_IF_ERROR(CheckId(id));
  ASSIGN_OR_RETURN(ParsedBody body, ParseBody(req, type));
  if (body.resource.id.empty()) {
    return Status::Invalid("The resource has no id; an update (PUT) must carry id '" + id + "'");
  }
  if (body.resource.id != id) {
    return Status::Invalid("The resource id '" + body.resource.id + "' differs from the id in the URL '" + id + "'");
  }
  std::optional<int64_t> if_match;
  if (req.headers.Has("If-Match")) {
    ASSIGN_OR_RETURN(int64_t v, ParseVersionTag(req.headers.Get("If-Match")));
    if_match = v;
  }
  ASSIGN_OR_RETURN(auto txn, store.BeginWrite());
  ASSIGN_OR_RETURN(fhir::ParsedResource parsed, ResolveUnderLock(req, std::move(body), txn.get()));
  ASSIGN_OR_RETURN(auto stored, txn->Put(parsed, id, if_match));
  RETURN_IF_ERROR(txn->Commit());
  return ResourceResponse(stored.created ? 201 : 200, stored, base, true);
}

std::optional<int64_t> NoVersion() { return std::nullopt; }

Result<std::optional<int64_t>> IfMatch(const Request& req) {
  if (!req.headers.Has("If-Match")) return NoVersion();
  ASSIGN_OR_RETURN(int64_t v, ParseVersionTag(req.headers.Get("If-Match")));
  return std::optional<int64_t>(v);
}

// PUT {type}?criteria (FHIR R4 3.1.0.4.3): no match creates (with the body's id, or a new one), one match updates
// it, several are a 412; all decided under the write lock.
Result<Response> ConditionalUpdate(store::ResourceStore& store, const std::string& base, const Request& req,
                                   const std::string& type) {
  RETURN_IF_ERROR(CheckType(type));
  if (req.raw_query.empty())
    return Status::Invalid("PUT " + type + " needs an id (PUT " + type + "/{id}) or search criteria");
  ASSIGN_OR_RETURN(ParsedBody body, ParseBody(req, type));
  ASSIGN_OR_RETURN(std::optional<int64_t> if_match, IfMatch(req));
  ASSIGN_OR_RETURN(auto txn, store.BeginWrite());
  const std::string what = "The conditional update criteria '" + req.raw_query + "'";
  ASSIGN_OR_RETURN(auto ids, FindByCondition(*txn, type, req.raw_query, what));
  if (ids.size() > 1) {
    return Status::PreconditionFailed(what + " match " + std::to_string(ids.size()) +
                                      " or more resources; they must match at most one");
  }
  std::string id;
  if (ids.size() == 1) {
    id = ids[0];
    if (!body.resource.id.empty() && body.resource.id != id) {
      return Status::Invalid("The resource id '" + body.resource.id + "' differs from the matching resource's id '" +
                             id + "'");
    }
  } else {
    id = body.resource.id.empty() ? NewUuid() : body.resource.id;
    if (!body.resource.id.empty()) {
      auto existing = txn->Read(type, id);
      if (existing.ok() && !existing->deleted) {
        return Status::Conflict("The criteria match nothing but " + type + "/" + id +
                                " exists and does not match them; update it by id instead");
      }
    }
  }
  ASSIGN_OR_RETURN(fhir::ParsedResource parsed, ResolveUnderLock(req, std::move(body), txn.get()));
  ASSIGN_OR_RETURN(auto stored,
                   txn->Put(parsed, id, if_match, ids.empty() ? store::WriteOp::kPost : store::WriteOp::kPut));
  RETURN_IF_ERROR(txn->Commit());
  return ResourceResponse(stored.created ? 201 : 200, stored, base, true);
}

// DELETE {type}?criteria: no match is a success, one is deleted, several are a 412 (single-delete mode).
Result<Response> ConditionalDelete(store::ResourceStore& store, const Request& req, const std::string& type) {
  RETURN_IF_ERROR(CheckType(type));
  if (req.raw_query.empty()) {
    return Status::Invalid("DELETE " + type + " needs an id (DELETE " + type + "/{id}) or search criteria");
  }
  ASSIGN_OR_RETURN(std::optional<int64_t> if_match, IfMatch(req));
  ASSIGN_OR_RETURN(auto txn, store.BeginWrite());
  const std::string what = "The conditional delete criteria '" + req.raw_query + "'";
  ASSIGN_OR_RETURN(auto ids, FindByCondition(*txn, type, req.raw_query, what));
  if (ids.size() > 1) {
    return Status::PreconditionFailed(what + " match " + std::to_string(ids.size()) +
                                      " or more resources; a conditional delete deletes at most one");
  }
  if (ids.empty()) {
    return Response::Json(200, fhir::OperationOutcome("information", "informational",
                                                      "No " + type + " matches the criteria; nothing was deleted"));
  }
  ASSIGN_OR_RETURN(auto tomb, txn->Delete(type, ids[0], if_match));
  RETURN_IF_ERROR(txn->Commit());
  Response resp = Response::Json(200, fhir::OperationOutcome("information", "informational",
                                                             "Deleted " + type + "/" + ids[0] + " (version " +
                                                                 std::to_string(tomb.version) + ")"));
  resp.headers.Set("ETag", ETag(tomb.version));
  return resp;
}

// PATCH {type}/{id} with a JSON Patch (application/json-patch+json) or a FHIRPath Patch Parameters resource
// (application/fhir+json), applied to the current version under the write lock; the result is validated like any
// update. docs/PATCH.md.
Result<Response> Patch(store::ResourceStore& store, const std::string& base, const Request& req,
                       const std::string& type, const std::string& id) {
  RETURN_IF_ERROR(CheckType(type));
  RETURN_IF_ERROR(CheckId(id));
  std::string_view ct = req.headers.Get("Content-Type");
  ct = ct.substr(0, ct.find(';'));
  while (!ct.empty() && ct.back() == ' ') ct.remove_suffix(1);
  const bool json_patch = ct == "application/json-patch+json";
  if (!json_patch && ct != "application/fhir+json" && ct != "application/json") {
    return Status::UnsupportedMediaType(
        "PATCH takes a JSON Patch (Content-Type: application/json-patch+json) or a "
        "FHIRPath Patch Parameters resource (Content-Type: application/fhir+json), "
        "not '" +
        std::string(ct) + "'");
  }
  if (req.body.empty()) return Status::Invalid("The PATCH request has no body");
  ASSIGN_OR_RETURN(std::optional<int64_t> if_match, IfMatch(req));
  ASSIGN_OR_RETURN(auto txn, store.BeginWrite());
  ASSIGN_OR_RETURN(auto current, txn->Read(type, id));
  if (current.deleted) return Status::Gone("Resource " + type + "/" + id + " was deleted; there is nothing to patch");
  if (if_match && *if_match != current.version) {
    return Status::PreconditionFailed("If-Match expected version " + std::to_string(*if_match) + " of " + type + "/" +
                                      id + " but the current version is " + std::to_string(current.version));
  }
  auto patched =
      json_patch ? fhir::ApplyJsonPatch(current.json, req.body) : fhir::ApplyFhirPathPatch(current.json, req.body);
  if (!patched.ok()) return patched.status();
  PlanReferenceResolver plan_resolver(nullptr, nullptr);
  auto parsed = Parser().Parse(*patched, &plan_resolver);
  Parser().ReleaseLargeBuffers();
  if (!parsed.ok()) return parsed.status().WithContext("the patched resource is not valid");
  if (plan_resolver.needs_store()) {
    StoreReferenceResolver resolver(nullptr, txn.get());
    parsed = Parser().Parse(*patched, &resolver);
    Parser().ReleaseLargeBuffers();
    if (!parsed.ok()) return parsed.status().WithContext("the patched resource is not valid");
  }
  ASSIGN_OR_RETURN(auto stored, txn->Put(*parsed, id, current.version));
  RETURN_IF_ERROR(txn->Commit());
  return ResourceResponse(200, stored, base, true);
}

Result<Response> Read(store::ResourceStore& store, const std::string& base, const std::string& type,
                      const std::string& id) {
  RETURN_IF_ERROR(CheckType(type));
  RETURN_IF_ERROR(CheckId(id));
  ASSIGN_OR_RETURN(auto r, store.Read(type, id));
  if (r.deleted) {
    return Status::Gone("Resource " + type + "/" + id + " was deleted (version " + std::to_string(r.version) + ")");
  }
  return ResourceResponse(200, r, base, false);
}

Result<Response> VRead(store::ResourceStore& store, const std::string& base, const std::string& type,
                       const std::string& id, const std::string& vid) {
  RETURN_IF_ERROR(CheckType(type));
  RETURN_IF_ERROR(CheckId(id));
  int64_t version = 0;
  auto [ptr, ec] = std::from_chars(vid.data(), vid.data() + vid.size(), version);
  if (ec != std::errc() || ptr != vid.data() + vid.size() || version < 1) {
    return Status::NotFound("Version '" + vid + "' of " + type + "/" + id + " is not known; versions are 1, 2, ...");
  }
  ASSIGN_OR_RETURN(auto r, store.ReadVersion(type, id, version));
  if (r.deleted) return Status::Gone("Version " + vid + " of " + type + "/" + id + " is a deletion");
  return ResourceResponse(200, r, base, false);
}

Result<Response> Delete(store::ResourceStore& store, const Request& req, const std::string& type,
                        const std::string& id) {
  RETURN_IF_ERROR(CheckType(type));
  RETURN_IF_ERROR(CheckId(id));
  std::optional<int64_t> if_match;
  if (req.headers.Has("If-Match")) {
    ASSIGN_OR_RETURN(int64_t v, ParseVersionTag(req.headers.Get("If-Match")));
    if_match = v;
  }
  ASSIGN_OR_RETURN(auto txn, store.BeginWrite());
  ASSIGN_OR_RETURN(auto tomb, txn->Delete(type, id, if_match));
  RETURN_IF_ERROR(txn->Commit());
  Response resp = Response::Json(
      200, fhir::OperationOutcome("information", "informational",
                                  "Deleted " + type + "/" + id + " (version " + std::to_string(tomb.version) + ")"));
  resp.headers.Set("ETag", ETag(tomb.version));
  return resp;
}

// _count and the page cursor of a paged read (history, compartment). Bundle.link carries `self` and, when more rows
// follow, `next`, whose `page` cursor (fhir/page_cursor.h) holds the sort key of this page's last row.
constexpr size_t kDefaultPageSize = 100;
constexpr size_t kMaxPageSize = 1000;

struct PageParams {
  size_t count = kDefaultPageSize;
  std::optional<int64_t> after;
  std::string cursor;  // as given, for the self link
};

Result<PageParams> ParsePageParams(const Request& req, std::string_view scope) {
  PageParams out;
  if (const std::string* count = req.QueryValue("_count")) {
    size_t n = 0;
    auto [ptr, ec] = std::from_chars(count->data(), count->data() + count->size(), n);
    if (count->empty() || ec != std::errc() || ptr != count->data() + count->size() || n < 1 || n > kMaxPageSize) {
      return Status::Invalid("_count '" + *count +
                             "' is not valid; give a whole number of entries per page from 1 to " +
                             std::to_string(kMaxPageSize) + " (default " + std::to_string(kDefaultPageSize) + ")");
    }
    out.count = n;
  }
  if (const std::string* page = req.QueryValue("page")) {
    ASSIGN_OR_RETURN(int64_t key, fhir::DecodePageCursor(*page, scope));
    out.after = key;
    out.cursor = *page;
  }
  return out;
}

// `{"resourceType":"Bundle",...,"link":[self, next?],"entry":[` for one page of `url` (absolute, without query).
std::string PageBundleStart(std::string_view bundle_type, int64_t total, const std::string& url, const PageParams& p,
                            const std::string& next_cursor) {
  std::string query = "?_count=" + std::to_string(p.count);
  std::string out = "{\"resourceType\":\"Bundle\",\"id\":\"" + NewUuid() + "\",\"type\":\"" + std::string(bundle_type) +
                    "\",\"total\":" + std::to_string(total) + ",\"link\":[{\"relation\":\"self\",\"url\":" +
                    JsonString(url + query + (p.cursor.empty() ? "" : "&page=" + p.cursor)) + "}";
  if (!next_cursor.empty()) {
    out += ",{\"relation\":\"next\",\"url\":" + JsonString(url + query + "&page=" + next_cursor) + "}";
  }
  out += "],\"entry\":[";
  return out;
}

// The store returns up to count + 1 rows: the extra one means there is a next page, which starts after the last
// row shown.
template <typename KeyOf>
std::string NextCursor(std::vector<store::StoredResource>* rows, size_t count, std::string_view scope, KeyOf key_of) {
  if (rows->size() <= count) return "";
  rows->resize(count);
  return fhir::EncodePageCursor(scope, key_of(rows->back()));
}

// One history entry (history Bundles of an instance, a type or the whole system).
std::string HistoryEntry(const std::string& base, const store::StoredResource& v) {
  std::string out = "{\"fullUrl\":" + JsonString(base + "/" + v.type + "/" + v.id);
  if (!v.deleted) out += ",\"resource\":" + v.json;
  const char* method = v.deleted ? "DELETE" : (v.created_by_post ? "POST" : "PUT");
  std::string url = v.created_by_post ? v.type : v.type + "/" + v.id;
  out += ",\"request\":{\"method\":\"" + std::string(method) + "\",\"url\":" + JsonString(url) + "}";
  out += ",\"response\":{\"status\":\"" +
         std::string(v.deleted ? "204 No Content" : (v.version == 1 ? "201 Created" : "200 OK")) +
         "\",\"etag\":" + JsonString(ETag(v.version)) + ",\"lastModified\":\"" + FormatInstant(v.last_updated) + "\"}}";
  return out;
}

Result<Response> History(store::ResourceStore& store, const std::string& base, const Request& req,
                         const std::string& type, const std::string& id) {
  RETURN_IF_ERROR(CheckType(type));
  RETURN_IF_ERROR(CheckId(id));
  ASSIGN_OR_RETURN(PageParams p, ParsePageParams(req, "history"));
  ASSIGN_OR_RETURN(auto page, store.History(type, id, {p.after, p.count}));
  auto& versions = page.rows;
  // Newest first: the key is the version, and the next page has the older ones.
  std::string next = NextCursor(&versions, p.count, "history", [](const auto& v) { return v.version; });
  std::string out = PageBundleStart("history", page.total, base + "/" + type + "/" + id + "/_history", p, next);
  for (size_t i = 0; i < versions.size(); ++i) {
    if (i) out.push_back(',');
    out += HistoryEntry(base, versions[i]);
  }
  out += "]}";
  return Response::Json(200, std::move(out));
}

// GET [base]/_history and GET [base]/{type}/_history: every version, newest first, `_since`, `_count`, paged by a
// keyset cursor over (seq, rid) that also carries the total of the first page.
Result<Response> HistoryAll(store::ResourceStore& store, const std::string& base, const Request& req,
                            const std::string& type) {
  if (!type.empty()) RETURN_IF_ERROR(CheckType(type));
  store::ResourceStore::HistoryPageRequest hp;
  size_t count = kDefaultPageSize;
  std::string since_text, cursor;
  int64_t carried_total = -1;
  for (const auto& q : req.query) {
    if (q.name == "_count") {
      size_t n = 0;
      auto [ptr, ec] = std::from_chars(q.value.data(), q.value.data() + q.value.size(), n);
      if (q.value.empty() || ec != std::errc() || ptr != q.value.data() + q.value.size() || n < 1 || n > kMaxPageSize) {
        return Status::Invalid("_count '" + q.value + "' is not valid; give a whole number from 1 to " +
                               std::to_string(kMaxPageSize));
      }
      count = n;
    } else if (q.name == "_since") {
      auto t = ParseInstant(q.value);
      if (!t.ok()) {
        return Status::Invalid("_since '" + q.value + "' is not an instant; use e.g. 2024-01-01T00:00:00Z");
      }
      hp.since = *t;
      since_text = q.value;
    } else if (q.name == "page") {
      ASSIGN_OR_RETURN(std::string key, fhir::DecodePageCursorText(q.value, "historyall"));
      int64_t seq = 0, rid = 0;
      if (std::sscanf(key.c_str(), "%ld;%ld;%ld", &seq, &rid, &carried_total) != 3) {
        return Status::Invalid("The page cursor is not valid; follow the next link this server returned");
      }
      hp.after = std::make_pair(seq, rid);
      cursor = q.value;
    } else if (q.name != "_format") {
      return Status::Invalid("History does not take the parameter '" + q.name + "'; it takes _count, _since and page");
    }
  }
  hp.limit = count;
  ASSIGN_OR_RETURN(auto page, store.HistoryAll(type, hp));
  int64_t total = hp.after ? carried_total : page.total;
  std::string next;
  if (page.rows.size() > count) {
    page.rows.resize(count);
    const auto& last = page.rows.back();
    next = fhir::EncodePageCursorText(
        "historyall", std::to_string(last.seq) + ";" + std::to_string(last.rid) + ";" + std::to_string(total));
  }
  std::string url = base + (type.empty() ? "" : "/" + type) + "/_history";
  std::string query = "?_count=" + std::to_string(count) + (since_text.empty() ? "" : "&_since=" + since_text);
  std::string out = "{\"resourceType\":\"Bundle\",\"id\":\"" + NewUuid() + "\",\"type\":\"history\"";
  if (total >= 0) out += ",\"total\":" + std::to_string(total);
  out += ",\"link\":[{\"relation\":\"self\",\"url\":" +
         JsonString(url + query + (cursor.empty() ? "" : "&page=" + cursor)) + "}";
  if (!next.empty()) out += ",{\"relation\":\"next\",\"url\":" + JsonString(url + query + "&page=" + next) + "}";
  out += "],\"entry\":[";
  for (size_t i = 0; i < page.rows.size(); ++i) {
    if (i) out.push_back(',');
    out += HistoryEntry(base, page.rows[i]);
  }
  out += "]}";
  return Response::Json(200, std::move(out));
}

// GET [base]/Patient/{id}/$everything: the Patient's compartment (every type, storage order, paged like the
// compartment read) and, on each page, the resources outside the compartment that the page's resources refer to
// (Organization, Practitioner, Medication, ...), with search.mode = include.
Result<Response> Everything(store::ResourceStore& store, const std::string& base, const Request& req,
                            const std::string& patient_id) {
  RETURN_IF_ERROR(CheckId(patient_id));
  ASSIGN_OR_RETURN(PageParams p, ParsePageParams(req, "everything"));
  for (const auto& q : req.query) {
    if (q.name != "_count" && q.name != "page" && q.name != "_format") {
      return Status::Invalid("$everything does not take the parameter '" + q.name + "'; it takes _count and page");
    }
  }
  ASSIGN_OR_RETURN(auto patient, store.Read("Patient", patient_id));
  if (patient.deleted) return Status::Gone("Patient/" + patient_id + " was deleted");
  ASSIGN_OR_RETURN(auto page, store.ReadCompartment(patient_id, "", {p.after, p.count}));
  auto& rows = page.rows;
  std::string next = NextCursor(&rows, p.count, "everything", [](const auto& r) { return r.rid; });
  std::vector<int64_t> rids;
  for (const auto& r : rows) rids.push_back(r.rid);
  ASSIGN_OR_RETURN(auto referenced, store.ReferencedBy(rids, 5000));
  std::string out = PageBundleStart("searchset", page.total, base + "/Patient/" + patient_id + "/$everything", p, next);
  for (size_t i = 0; i < rows.size(); ++i) {
    if (i) out.push_back(',');
    out += "{\"fullUrl\":" + JsonString(base + "/" + rows[i].type + "/" + rows[i].id) +
           ",\"resource\":" + rows[i].json + ",\"search\":{\"mode\":\"match\"}}";
  }
  for (size_t i = 0; i < referenced.size(); ++i) {
    if (i || !rows.empty()) out.push_back(',');
    out += "{\"fullUrl\":" + JsonString(base + "/" + referenced[i].type + "/" + referenced[i].id) +
           ",\"resource\":" + referenced[i].json + ",\"search\":{\"mode\":\"include\"}}";
  }
  out += "]}";
  return Response::Json(200, std::move(out));
}

Result<Response> Compartment(store::ResourceStore& store, const std::string& base, const Request& req,
                             const std::string& patient_id, const std::string& type) {
  RETURN_IF_ERROR(CheckId(patient_id));
  // With search parameters (anything but _count and page) this is a compartment search.
  bool search = std::any_of(req.query.begin(), req.query.end(),
                            [](const http::QueryParam& q) { return q.name != "_count" && q.name != "page"; });
  if (search) {
    if (type == "*") return Status::Invalid("A compartment search needs a resource type: Patient/{id}/{type}?...");
    if (fhir::IsKnownResourceType(type) && !fhir::IsPatientCompartmentType(type)) {
      return Status::Invalid("Resources of type '" + type + "' are never in a Patient compartment");
    }
    return SearchCompartment(store, base, req, patient_id, type);
  }
  if (type != "*") {
    RETURN_IF_ERROR(CheckType(type));
    if (!fhir::IsPatientCompartmentType(type)) {
      return Status::Invalid("Resources of type '" + type + "' are never in a Patient compartment");
    }
  }
  ASSIGN_OR_RETURN(PageParams p, ParsePageParams(req, "compartment"));
  ASSIGN_OR_RETURN(auto page, store.ReadCompartment(patient_id, type == "*" ? "" : type, {p.after, p.count}));
  auto& rows = page.rows;
  // Storage order: the key is the rid, stable under concurrent writes (a resource keeps its rid across versions).
  std::string next = NextCursor(&rows, p.count, "compartment", [](const auto& r) { return r.rid; });
  std::string out = PageBundleStart("searchset", page.total, base + "/Patient/" + patient_id + "/" + type, p, next);
  for (size_t i = 0; i < rows.size(); ++i) {
    if (i) out.push_back(',');
    out += "{\"fullUrl\":" + JsonString(base + "/" + rows[i].type + "/" + rows[i].id) +
           ",\"resource\":" + rows[i].json + ",\"search\":{\"mode\":\"match\"}}";
  }
  out += "]}";
  return Response::Json(200, std::move(out));
}

std::string CapabilityStatement(const ApiContext& ctx, const store::ResourceStore& store) {
  std::string out = R"({"resourceType":"CapabilityStatement","status":"active","date":")" +
                    FormatInstant(Clock::System().NowMillis()) +
                    R"(","kind":"instance","software":{"name":"fhirlake","version":)" + JsonString(ctx.version) +
                    R"(},"implementation":{"description":"fhirlake datastore )" + store.info().id + R"(","url":)" +
                    JsonString(ctx.FhirBase(store.info().id)) +
                    R"(},"instantiates":["http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"],)"
                    R"("fhirVersion":"4.0.1","format":["application/fhir+json","application/json"],)"
                    R"("rest":[{"mode":"server","resource":[)";
  bool first = true;
  for (std::string_view type : fhir::AllResourceTypes()) {
    if (!first) out.push_back(',');
    first = false;
    out +=
        R"({"type":")" + std::string(type) +
        R"(","interaction":[{"code":"read"},{"code":"vread"},{"code":"update"},{"code":"delete"},)"
        R"({"code":"history-instance"},{"code":"create"},{"code":"search-type"}],"versioning":"versioned","readHistory":true,)"
        R"("updateCreate":true,"conditionalCreate":true,"searchParam":[)";
    bool first_param = true;
    for (const search::ParamDef* def : search::ParamsForType(type)) {
      if (!first_param) out.push_back(',');
      first_param = false;
      out += "{\"name\":" + JsonString(def->code) + ",\"definition\":" + JsonString(def->url) + ",\"type\":\"" +
             std::string(search::ParamTypeName(def->type)) + "\"}";
    }
    out += "]";
    // Both names: test kits look the type-level export up as "export" and as "patient-export"/"group-export".
    if (type == "Patient" || type == "Group") {
      const std::string op = type == "Patient" ? "patient-export" : "group-export";
      const std::string def = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/" + op;
      out += R"(,"operation":[{"name":"export","definition":")" + def + R"("},{"name":")" + op + R"(","definition":")" +
             def + R"("}])";
    }
    out += "}";
  }
  out += "]";
  if (ctx.smart_enabled) {
    // SMART on FHIR: where to get a token (the oauth-uris extension), and that the server takes SMART tokens.
    out +=
        R"(,"security":{"service":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/restful-security-service","code":"SMART-on-FHIR"}]}],)"
        R"("extension":[{"url":"http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris","extension":[{"url":"token","valueUri":)" +
        JsonString(ctx.public_base_url + "/auth/token") + "}]}]}";
  }
  out += R"(,"interaction":[{"code":"transaction"},{"code":"batch"}],"compartment":)"
         R"(["http://hl7.org/fhir/CompartmentDefinition/patient"],"operation":[{"name":"export","definition":)"
         R"("http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"}]}]})";
  return out;
}

}  // namespace

Result<int64_t> ParseVersionTag(std::string_view tag) {
  std::string_view s = tag;
  if (s.starts_with("W/")) s.remove_prefix(2);
  if (s.size() >= 2 && s.front() == '"' && s.back() == '"') s = s.substr(1, s.size() - 2);
  int64_t v = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || ptr != s.data() + s.size() || v < 1) {
    return Status::Invalid("Version tag '" + std::string(tag) +
                           "' is not valid; expected W/\"<version>\", e.g. W/\"2\"");
  }
  return v;
}

void RegisterFhirRest(http::Router& router, const ApiContext& ctx) {
  const ApiContext* c = &ctx;
  router.Add("GET", "/healthz", http::RouteInfo{"", true}, [c](const Request&, const RequestContext&) {
    std::string out = "{\"status\":\"ok\",\"version\":" + JsonString(c->version) + ",\"datastores\":[";
    bool first = true;
    for (auto* s : c->catalog->All()) {
      if (!first) out.push_back(',');
      first = false;
      out += "{\"datastoreId\":" + JsonString(s->info().id) + ",\"datastoreName\":" + JsonString(s->info().name) +
             ",\"fhirBase\":" + JsonString(c->FhirBase(s->info().id)) + ",\"status\":" + JsonString(s->status()) + "}";
    }
    out += "]}";
    return Response::Json(200, std::move(out), "application/json");
  });
  const std::string r4 = "/datastore/{ds}/r4";
  // Public: a client discovers the server (and how to authenticate) here.
  router.Add("GET", r4 + "/metadata", http::RouteInfo{}, [c](const Request&, const RequestContext& p) {
    return WithStore(*c, p, [&](store::ResourceStore& s, const std::string&) -> Result<Response> {
      return Response::Json(200, CapabilityStatement(*c, s));
    });
  });
  router.Add("*", r4 + "/metadata", http::RouteInfo{"healthlake:GetCapabilities"},
             [](const Request& req, const RequestContext&) {
               Response resp =
                   FhirError(405, "not-supported", "Method " + req.method + " is not allowed on /metadata; use GET");
               resp.headers.Set("Allow", "GET");
               return resp;
             });
  router.Add("POST", r4, http::RouteInfo{"healthlake:ProcessBundle"}, [c](const Request& req, const RequestContext& p) {
    return WithStore(*c, p, [&](store::ResourceStore& s, const std::string&) -> Result<Response> {
      RETURN_IF_ERROR(CheckJsonContentType(req));
      if (req.body.empty()) return Status::Invalid("The request has no body; POST a transaction or batch Bundle");
      ASSIGN_OR_RETURN(std::string out, ProcessBundle(s, req.body));
      return Response::Json(200, std::move(out));
    });
  });
  router.Add("GET", r4 + "/_history", http::RouteInfo{"healthlake:ReadResource"},
             [c](const Request& req, const RequestContext& p) {
               return WithStore(*c, p, [&](store::ResourceStore& s, const std::string& base) {
                 return HistoryAll(s, base, req, "");
               });
             });
  router.Add("GET", r4 + "/{type}/_history", http::RouteInfo{"healthlake:ReadResource"},
             [c](const Request& req, const RequestContext& p) {
               return WithStore(*c, p, [&](store::ResourceStore& s, const std::string& base) {
                 return HistoryAll(s, base, req, p.param("type"));
               });
             });
  router.Add("GET", r4 + "/Patient/{id}/$everything", http::RouteInfo{"healthlake:SearchWithGet"},
             [c](const Request& req, const RequestContext& p) {
               return WithStore(*c, p, [&](store::ResourceStore& s, const std::string& base) {
                 return Everything(s, base, req, p.param("id"));
               });
             });
  router.Add("GET", r4 + "/Patient/{id}/*", http::RouteInfo{"healthlake:SearchWithGet"},
             [c](const Request& req, const RequestContext& p) {
               return WithStore(*c, p, [&](store::ResourceStore& s, const std::string& base) {
                 return Compartment(s, base, req, p.param("id"), "*");
               });
             });
  router.Add("GET", r4 + "/{type}/{id}/_history/{vid}", http::RouteInfo{"healthlake:ReadResource"},
             [c](const Request&, const RequestContext& p) {
               return WithStore(*c, p, [&](store::ResourceStore& s, const std::string& base) {
                 return VRead(s, base, p.param("type"), p.param("id"), p.param("vid"));
               });
             });
  router.Add("GET", r4 + "/{type}/{id}/_history", http::RouteInfo{"healthlake:ReadResource"},
             [c](const Request& req, const RequestContext& p) {
               return WithStore(*c, p, [&](store::ResourceStore& s, const std::string& base) {
                 return History(s, base, req, p.param("type"), p.param("id"));
               });
             });
  router.Add("GET", r4 + "/Patient/{id}/{ctype}", http::RouteInfo{"healthlake:SearchWithGet"},
             [c](const Request& req, const RequestContext& p) {
               return WithStore(*c, p, [&](store::ResourceStore& s, const std::string& base) {
                 return Compartment(s, base, req, p.param("id"), p.param("ctype"));
               });
             });
  router.Add("GET", r4 + "/{type}/{id}", http::RouteInfo{"healthlake:ReadResource"},
             [c](const Request&, const RequestContext& p) {
               return WithStore(*c, p, [&](store::ResourceStore& s, const std::string& base) {
                 return Read(s, base, p.param("type"), p.param("id"));
               });
             });
  router.Add("PUT", r4 + "/{type}/{id}", http::RouteInfo{"healthlake:UpdateResource"},
             [c](const Request& req, const RequestContext& p) {
               return WithStore(*c, p, [&](store::ResourceStore& s, const std::string& base) {
                 return Update(s, base, req, p.param("type"), p.param("id"));
               });
             });
  router.Add("DELETE", r4 + "/{type}/{id}", http::RouteInfo{"healthlake:DeleteResource"},
             [c](const Request& req, const RequestContext& p) {
               return WithStore(*c, p, [&](store::ResourceStore& s, const std::string&) {
                 return Delete(s, req, p.param("type"), p.param("id"));
               });
             });
  router.Add("PATCH", r4 + "/{type}/{id}", http::RouteInfo{"healthlake:UpdateResource"},
             [c](const Request& req, const RequestContext& p) {
               return WithStore(*c, p, [&](store::ResourceStore& s, const std::string& base) {
                 return Patch(s, base, req, p.param("type"), p.param("id"));
               });
             });
  router.Add("PUT", r4 + "/{type}", http::RouteInfo{"healthlake:UpdateResource"},
             [c](const Request& req, const RequestContext& p) {
               return WithStore(*c, p, [&](store::ResourceStore& s, const std::string& base) {
                 return ConditionalUpdate(s, base, req, p.param("type"));
               });
             });
  router.Add("DELETE", r4 + "/{type}", http::RouteInfo{"healthlake:DeleteResource"},
             [c](const Request& req, const RequestContext& p) {
               return WithStore(*c, p, [&](store::ResourceStore& s, const std::string&) {
                 return ConditionalDelete(s, req, p.param("type"));
               });
             });
  router.Add("POST", r4 + "/{type}", http::RouteInfo{"healthlake:CreateResource"},
             [c](const Request& req, const RequestContext& p) {
               return WithStore(*c, p, [&](store::ResourceStore& s, const std::string& base) {
                 return Create(s, base, req, p.param("type"));
               });
             });
}

}  // namespace fhirlake::api
