// Bundle processing. Entries are processed DELETE first, then POST, PUT and GET, in bundle order within each
// method (FHIR's transaction processing rules), and the response entries keep the request's order. Every
// resource is parsed and validated before the write lock is taken (a malformed entry fails the Bundle without
// ever holding it); under the lock only the resources whose references need the store are parsed again.
#include "api/transaction.h"

#include <algorithm>

#include "api/fhir_rest.h"
#include "common/ids.h"
#include "common/json_escape.h"
#include "fhir/bundle.h"
#include "fhir/json_values.h"
#include "fhir/operation_outcome.h"
#include "fhir/r4.h"
#include "http/http_types.h"
#include "search/query.h"

namespace fhirlake::api {
namespace {

struct EntryResult {
  std::string resource;  // the resource, for GET entries
  std::string status;    // "201 Created"
  std::string location;
  std::string etag;
  EpochMillis last_modified = 0;
  std::string outcome;  // OperationOutcome JSON for failed batch entries
};

bool IsUrnReference(std::string_view ref) { return ref.starts_with("urn:uuid:") || ref.starts_with("urn:oid:"); }

struct ConditionalReference {
  std::string_view type;
  IdentifierCondition condition;
};

// `Type?identifier=system|value`; nullopt when `ref` has no query (not a conditional reference).
Result<std::optional<ConditionalReference>> ParseConditionalReference(std::string_view ref) {
  size_t q = ref.find('?');
  if (q == std::string_view::npos) return std::optional<ConditionalReference>();
  std::string_view type = ref.substr(0, q);
  if (!fhir::IsKnownResourceType(type)) {
    return Status::Invalid("Conditional reference '" + std::string(ref) + "' does not start with a resource type");
  }
  ASSIGN_OR_RETURN(IdentifierCondition condition,
                   ParseIdentifierCondition(ref.substr(q + 1), "Conditional reference '" + std::string(ref) + "'"));
  return std::optional<ConditionalReference>(ConditionalReference{type, std::move(condition)});
}

struct EntryPlan {
  size_t index;
  std::string method;
  std::string type;
  std::string id;  // target id (assigned for POST)
  std::optional<int64_t> if_match;
  std::string if_none_exist;
  bool matched_existing = false;  // ifNoneExist found a resource: `id` is that resource, nothing is created
  // POST and PUT: the resource, parsed before the write lock. `reparse`: it has references only the store can
  // resolve (conditional references, urn targets of conditional creates), so it is parsed again under the lock.
  std::optional<fhir::ParsedResource> parsed;
  bool reparse = false;
};

int MethodOrder(std::string_view m) {
  if (m == "DELETE") return 0;
  if (m == "POST") return 1;
  if (m == "PUT") return 2;
  return 3;
}

std::string EntryName(size_t i) { return "Bundle.entry[" + std::to_string(i) + "]"; }

// Validates one entry's request and works out its target type/id (ids for POST are assigned here).
Result<EntryPlan> PlanEntry(const fhir::BundleEntryView& e, size_t i) {
  EntryPlan plan;
  plan.index = i;
  if (!e.has_request) return Status::Invalid(EntryName(i) + " has no request (method and url are required)");
  plan.method = e.request_method;
  if (plan.method != "POST" && plan.method != "PUT" && plan.method != "DELETE" && plan.method != "GET") {
    return Status::Invalid(EntryName(i) + ".request.method '" + plan.method +
                           "' is not supported; use POST, PUT, DELETE or GET");
  }
  std::string_view url = e.request_url;
  size_t q = url.find('?');
  std::string_view path = url.substr(0, q);
  size_t slash = path.find('/');
  plan.type = std::string(path.substr(0, slash));
  if (slash != std::string_view::npos) plan.id = std::string(path.substr(slash + 1));
  if (!fhir::IsKnownResourceType(plan.type)) {
    return Status::Invalid(EntryName(i) + ".request.url '" + e.request_url + "' does not name a known resource type");
  }
  if (!e.if_match.empty()) {
    auto v = ParseVersionTag(e.if_match);
    if (!v.ok()) return v.status().WithContext(EntryName(i) + ".request.ifMatch");
    plan.if_match = *v;
  }
  plan.if_none_exist = e.if_none_exist;
  if (plan.method == "POST") {
    if (!plan.id.empty())
      return Status::Invalid(EntryName(i) + ": a POST url is just the type, got '" + e.request_url + "'");
    plan.id = NewUuid();
  } else if (plan.id.empty() || plan.id.find('/') != std::string::npos || q != std::string_view::npos) {
    return Status::Invalid(EntryName(i) + ".request.url '" + e.request_url + "' must be Type/id for " + plan.method);
  } else if (!IsValidFhirId(plan.id)) {
    return Status::Invalid(EntryName(i) + ".request.url '" + e.request_url + "': '" + plan.id +
                           "' is not a valid id (1-64 characters of A-Z, a-z, 0-9, '-' and '.')");
  }
  if ((plan.method == "POST" || plan.method == "PUT") && e.resource_json.empty()) {
    return Status::Invalid(EntryName(i) + " has no resource for " + plan.method);
  }
  return plan;
}

// Parses (so validates) an entry's resource before the write lock. For POST and PUT the parse that decides the
// resource's type and id, checked against request.url, is the parse whose bytes are stored (a second parse under
// the lock reads the same bytes, whose keys are unique). A GET or DELETE entry's resource is unused but must still
// be well-formed JSON.
Status PrepareEntry(fhir::ResourceParser& parser, const fhir::BundleEntryView& e, const char* allocation_end,
                    const UrnMap* urns, const std::set<std::string, std::less<>>* deferred, EntryPlan* plan) {
  const std::string where = EntryName(plan->index) + ".resource";
  if (plan->method != "POST" && plan->method != "PUT") {
    if (e.resource_json.empty()) return Status::Ok();
    return fhir::ValidateJsonDocument(parser.simdjson_parser(), e.resource_json, allocation_end, where);
  }
  PlanReferenceResolver resolver(urns, deferred);
  auto parsed = parser.ParseInBuffer(e.resource_json, allocation_end, &resolver);
  if (!parsed.ok()) return parsed.status().WithContext(where);
  if (parsed->type != plan->type) {
    return Status::Invalid(EntryName(plan->index) + ": the resource is a '" + parsed->type +
                           "' but request.url names '" + plan->type + "'");
  }
  if (plan->method == "PUT" && !parsed->id.empty() && parsed->id != plan->id) {
    return Status::Invalid(EntryName(plan->index) + ": the resource id '" + parsed->id +
                           "' differs from the id in request.url '" + plan->id + "'");
  }
  plan->reparse = resolver.needs_store();
  plan->parsed = std::move(*parsed);
  return Status::Ok();
}

std::string HistoryLocation(std::string_view type, std::string_view id, int64_t version) {
  return std::string(type) + "/" + std::string(id) + "/_history/" + std::to_string(version);
}

// Conditional create: when a POST's ifNoneExist matches one resource, the entry becomes that resource (its
// fullUrl then maps to it) and nothing is created. Done for all entries before any runs, so references to the
// entry from anywhere in the Bundle resolve to the resource that will exist.
Status ResolveConditionalCreate(store::StoreTransaction* txn, const fhir::BundleEntryView& e, EntryPlan* plan,
                                UrnMap* urns) {
  if (plan->method != "POST" || plan->if_none_exist.empty()) return Status::Ok();
  std::string_view cond = plan->if_none_exist;
  if (size_t q = cond.find('?'); q != std::string_view::npos) cond = cond.substr(q + 1);
  ASSIGN_OR_RETURN(auto ids,
                   FindByCondition(*txn, plan->type, cond,
                                   EntryName(plan->index) + ".request.ifNoneExist '" + plan->if_none_exist + "'"));
  if (ids.size() > 1) {
    return Status::PreconditionFailed(EntryName(plan->index) + ": ifNoneExist '" + plan->if_none_exist + "' matches " +
                                      std::to_string(ids.size()) + " resources");
  }
  if (ids.size() == 1) {
    plan->id = ids[0];
    plan->matched_existing = true;
    if (!e.full_url.empty()) (*urns)[e.full_url] = plan->type + "/" + ids[0];
  }
  return Status::Ok();
}

// Runs one planned (and prepared) entry inside `txn`.
Result<EntryResult> RunEntry(fhir::ResourceParser& parser, const fhir::BundleEntryView& e, const EntryPlan& plan,
                             const char* allocation_end, store::StoreTransaction* txn,
                             StoreReferenceResolver* resolver) {
  EntryResult r;
  if (plan.method == "GET") {
    ASSIGN_OR_RETURN(auto cur, txn->Read(plan.type, plan.id));
    if (cur.deleted) return Status::Gone(plan.type + "/" + plan.id + " was deleted");
    r.resource = std::move(cur.json);
    r.status = "200 OK";
    r.location = HistoryLocation(plan.type, plan.id, cur.version);
    r.etag = "W/\"" + std::to_string(cur.version) + "\"";
    r.last_modified = cur.last_updated;
    return r;
  }
  if (plan.method == "DELETE") {
    ASSIGN_OR_RETURN(auto del, txn->Delete(plan.type, plan.id, plan.if_match));
    r.status = "200 OK";
    r.etag = "W/\"" + std::to_string(del.version) + "\"";
    return r;
  }
  if (plan.matched_existing) {
    ASSIGN_OR_RETURN(auto cur, txn->Read(plan.type, plan.id));
    r.status = "200 OK";
    r.location = HistoryLocation(plan.type, plan.id, cur.version);
    r.etag = "W/\"" + std::to_string(cur.version) + "\"";
    r.last_modified = cur.last_updated;
    return r;
  }
  std::optional<fhir::ParsedResource> reparsed;
  if (plan.reparse) {
    ASSIGN_OR_RETURN(reparsed, parser.ParseInBuffer(e.resource_json, allocation_end, resolver));
  }
  const fhir::ParsedResource& parsed = reparsed ? *reparsed : *plan.parsed;
  ASSIGN_OR_RETURN(auto stored, txn->Put(parsed, plan.id, plan.if_match,
                                         plan.method == "POST" ? store::WriteOp::kPost : store::WriteOp::kPut));
  r.status = stored.created ? "201 Created" : "200 OK";
  r.location = HistoryLocation(plan.type, plan.id, stored.version);
  r.etag = "W/\"" + std::to_string(stored.version) + "\"";
  r.last_modified = stored.last_updated;
  return r;
}

std::string RenderResponse(const std::string& bundle_type, const std::vector<EntryResult>& results) {
  std::string out =
      "{\"resourceType\":\"Bundle\",\"id\":\"" + NewUuid() + "\",\"type\":\"" + bundle_type + "-response\",\"entry\":[";
  for (size_t i = 0; i < results.size(); ++i) {
    const auto& r = results[i];
    if (i) out.push_back(',');
    out += "{";
    if (!r.resource.empty()) out += "\"resource\":" + r.resource + ",";
    out += "\"response\":{\"status\":";
    AppendJsonString(&out, r.status);
    if (!r.location.empty()) {
      out += ",\"location\":";
      AppendJsonString(&out, r.location);
    }
    if (!r.etag.empty()) {
      out += ",\"etag\":";
      AppendJsonString(&out, r.etag);
    }
    if (r.last_modified) out += ",\"lastModified\":\"" + FormatInstant(r.last_modified) + "\"";
    if (!r.outcome.empty()) out += ",\"outcome\":" + r.outcome;
    out += "}}";
  }
  out += "]}";
  return out;
}

std::string StatusLine(int code) {
  switch (code) {
    case 400:
      return "400 Bad Request";
    case 404:
      return "404 Not Found";
    case 409:
      return "409 Conflict";
    case 410:
      return "410 Gone";
    case 412:
      return "412 Precondition Failed";
    case 422:
      return "422 Unprocessable Entity";
    case 503:
      return "503 Service Unavailable";
    default:
      return std::to_string(code) + (code >= 500 ? " Internal Server Error" : " Error");
  }
}

// Frees the thread's parser buffers after a large Bundle (see ResourceParser::ReleaseLargeBuffers).
struct ReleaseLargeBuffersOnExit {
  fhir::ResourceParser& parser;
  ~ReleaseLargeBuffersOnExit() { parser.ReleaseLargeBuffers(); }
};

Result<std::string> ProcessBatch(store::ResourceStore& store, fhir::ResourceParser& parser,
                                 const fhir::BundleView& bundle, const char* end) {
  std::vector<EntryResult> results(bundle.entries.size());
  UrnMap urns;  // fullUrls of earlier entries whose conditional create matched
  for (size_t i = 0; i < bundle.entries.size(); ++i) {
    const auto& e = bundle.entries[i];
    auto fail = [&](const Status& st) {
      results[i].status = StatusLine(fhir::HttpStatusFor(st.code()));
      results[i].outcome = fhir::OperationOutcomeFor(st);
    };
    auto plan = PlanEntry(e, i);
    if (!plan.ok()) {
      fail(plan.status());
      continue;
    }
    if (Status st = PrepareEntry(parser, e, end, &urns, nullptr, &*plan); !st.ok()) {
      fail(st);
      continue;
    }
    auto txn = store.BeginWrite();
    if (!txn.ok()) {
      fail(txn.status());
      continue;
    }
    StoreReferenceResolver resolver(&urns, txn->get());
    Status cc = ResolveConditionalCreate(txn->get(), e, &*plan, &urns);
    if (!cc.ok()) {
      fail(cc);
      continue;
    }
    auto r = RunEntry(parser, e, *plan, end, txn->get(), &resolver);
    if (r.ok()) {
      Status st = (*txn)->Commit();
      if (st.ok()) {
        results[i] = std::move(*r);
      } else {
        fail(st);
      }
    } else {
      fail(r.status().WithContext(EntryName(i)));
    }
  }
  return RenderResponse("batch", results);
}

Result<std::string> ProcessTransaction(store::ResourceStore& store, fhir::ResourceParser& parser,
                                       const fhir::BundleView& bundle, const char* end) {
  // Plan everything first so that every urn:uuid fullUrl maps to its final Type/id, except those of conditional
  // creates, which the store decides under the lock (`deferred`).
  std::vector<EntryPlan> plans;
  UrnMap urns;
  std::set<std::string, std::less<>> deferred;
  for (size_t i = 0; i < bundle.entries.size(); ++i) {
    const auto& e = bundle.entries[i];
    ASSIGN_OR_RETURN(EntryPlan plan, PlanEntry(e, i));
    if (!e.full_url.empty() && (plan.method == "POST" || plan.method == "PUT")) {
      if (!urns.emplace(e.full_url, plan.type + "/" + plan.id).second) {
        return Status::Invalid(EntryName(i) + ".fullUrl '" + e.full_url + "' appears twice in the transaction");
      }
      if (plan.method == "POST" && !plan.if_none_exist.empty()) deferred.insert(e.full_url);
    }
    plans.push_back(std::move(plan));
  }
  for (auto& plan : plans) {
    RETURN_IF_ERROR(PrepareEntry(parser, bundle.entries[plan.index], end, &urns, &deferred, &plan));
  }
  std::vector<size_t> order(plans.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return MethodOrder(plans[a].method) < MethodOrder(plans[b].method); });

  ASSIGN_OR_RETURN(auto txn, store.BeginWrite());
  for (size_t i = 0; i < plans.size(); ++i) {
    RETURN_IF_ERROR(ResolveConditionalCreate(txn.get(), bundle.entries[i], &plans[i], &urns));
  }
  StoreReferenceResolver resolver(&urns, txn.get());
  std::vector<EntryResult> results(bundle.entries.size());
  for (size_t i : order) {
    auto r = RunEntry(parser, bundle.entries[i], plans[i], end, txn.get(), &resolver);
    if (!r.ok()) return r.status().WithContext(EntryName(i) + " (" + plans[i].method + " " + plans[i].type + ")");
    results[i] = std::move(*r);
  }
  RETURN_IF_ERROR(txn->Commit());
  return RenderResponse("transaction", results);
}

}  // namespace

Result<IdentifierCondition> ParseIdentifierCondition(std::string_view criterion, std::string_view what) {
  if (!criterion.starts_with("identifier=") || criterion.find('&') != std::string_view::npos) {
    return Status::Invalid(std::string(what) + " is not supported; only identifier=system|value is");
  }
  std::string token = http::PercentDecode(criterion.substr(11), false);
  size_t bar = token.find('|');
  IdentifierCondition out;
  out.system = bar == std::string::npos ? "" : token.substr(0, bar);
  out.value = bar == std::string::npos ? token : token.substr(bar + 1);
  if (out.value.empty()) return Status::Invalid(std::string(what) + " has no identifier value");
  return out;
}

Result<std::vector<std::string>> FindByCondition(store::StoreTransaction& txn, std::string_view type,
                                                 std::string_view criterion, std::string_view what) {
  // identifier=[system|]value alone: the identifier index answers directly.
  if (auto simple = ParseIdentifierCondition(criterion, what); simple.ok()) {
    return txn.FindByIdentifier(type, simple->system, simple->value);
  }
  // Any other criterion is a search (docs/SEARCH.md), run inside the write transaction.
  std::vector<std::pair<std::string, std::string>> params;
  for (auto& p : http::ParseQuery(criterion)) {
    if (p.name == "_count" || p.name == "page" || p.name == "_sort" || p.name == "_total" || p.name == "_summary" ||
        p.name == "_elements" || p.name.starts_with("_include") || p.name.starts_with("_revinclude")) {
      return Status::Invalid(std::string(what) + ": '" + p.name + "' is not a search criterion");
    }
    params.emplace_back(std::move(p.name), std::move(p.value));
  }
  if (params.empty()) return Status::Invalid(std::string(what) + " has no search criteria");
  auto query = search::ParseSearchQuery({std::string(type)}, params, "", /*lenient=*/false);
  if (!query.ok()) return query.status().WithContext(std::string(what));
  query->count = 2;  // zero, one or several is all a conditional operation needs to know
  query->total = search::TotalMode::kNone;
  ASSIGN_OR_RETURN(store::SearchResult found, txn.Search(*query));
  std::vector<std::string> ids;
  for (auto& r : found.matches) ids.push_back(std::move(r.id));
  return ids;
}

Result<std::optional<std::string>> PlanReferenceResolver::Resolve(std::string_view ref) {
  if (IsUrnReference(ref)) {
    if (deferred_ != nullptr && deferred_->contains(ref)) {
      needs_store_ = true;
      return std::optional<std::string>();
    }
    if (urns_ != nullptr) {
      if (auto it = urns_->find(ref); it != urns_->end()) return std::optional<std::string>(it->second);
    }
    return std::optional<std::string>();
  }
  ASSIGN_OR_RETURN(auto conditional, ParseConditionalReference(ref));
  if (conditional) needs_store_ = true;
  return std::optional<std::string>();
}

Result<std::optional<std::string>> StoreReferenceResolver::Resolve(std::string_view ref) {
  if (IsUrnReference(ref)) {
    if (urns_ != nullptr) {
      if (auto it = urns_->find(ref); it != urns_->end()) return std::optional<std::string>(it->second);
    }
    return std::optional<std::string>();
  }
  ASSIGN_OR_RETURN(auto conditional, ParseConditionalReference(ref));
  if (!conditional) return std::optional<std::string>();
  ASSIGN_OR_RETURN(
      auto ids, txn_->FindByIdentifier(conditional->type, conditional->condition.system, conditional->condition.value));
  if (ids.size() != 1) {
    return Status::PreconditionFailed("Conditional reference '" + std::string(ref) + "' matches " +
                                      (ids.empty() ? "no resource" : std::to_string(ids.size()) + " resources") +
                                      "; it must match exactly one");
  }
  return std::optional<std::string>(std::string(conditional->type) + "/" + ids[0]);
}

Result<std::string> ProcessBundle(store::ResourceStore& store, std::string_view body) {
  thread_local fhir::ResourceParser parser;
  ReleaseLargeBuffersOnExit release{parser};
  std::string buffer(body);
  buffer.append(simdjson::SIMDJSON_PADDING, '\0');
  const char* end = buffer.data() + buffer.size();
  std::string_view json(buffer.data(), body.size());
  ASSIGN_OR_RETURN(fhir::BundleView bundle, fhir::ParseBundle(parser, json, end));
  if (bundle.type == "batch") return ProcessBatch(store, parser, bundle, end);
  if (bundle.type == "transaction") return ProcessTransaction(store, parser, bundle, end);
  return Status::Invalid("Bundle.type '" + bundle.type +
                         "' cannot be processed at the base; POST a 'transaction' or 'batch' Bundle");
}

}  // namespace fhirlake::api
