// The Bulk Data Access IG's view of export jobs: GET kick-off at system, Patient and Group level, the status
// (poll) URL with its manifest, DELETE on it, and the download of the server-held files (gzip, Range). The jobs
// are the one engine's (bulk::ExportEngine); only the way in and the answers differ from HealthLake's view.
#include "api/bulk_data_ig.h"

#include <spdlog/spdlog.h>
#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>

#include "api/fhir_response.h"
#include "api/healthlake_kickoff.h"
#include "api/job_owner.h"
#include "bulk/export_engine.h"
#include "common/ids.h"
#include "common/json_escape.h"
#include "fhir/operation_outcome.h"
#include "fhir/r4.h"

namespace fhirlake::api {
namespace {

using http::Request;
using http::RequestContext;
using http::Response;
namespace js = bulk::job_status;

constexpr size_t kDownloadChunk = 256 << 10;  // gzip: the uncompressed bytes read per call
constexpr size_t kPlainChunk = 1 << 20;       // identity: the bytes read and sent per call
// The kick-off parameters of the IG view (its OperationDefinitions list the same).
constexpr std::string_view kIgKickoffParams =
    "_outputFormat, _type, _since, _until, _tag, _security, _elements, "
    "_typeFilter, patient, includeAssociatedData, organizeOutputBy, allowPartialManifests";

// An answer that is not an error (202 kick-off, poll in progress, DELETE accepted): an informational outcome.
Response Informational(int status, std::string_view diagnostics) {
  return Response::Json(status, fhir::OperationOutcome("information", "informational", diagnostics));
}

bool IsFinished(const std::string& status) { return status == js::kCompleted || status == js::kCompletedWithErrors; }

std::string PollUrl(const ApiContext& ctx, std::string_view ds, std::string_view job) {
  return ctx.FhirBase(ds) + "/$export-poll-status/" + std::string(job);
}

// "{Type}/{Type}-{n}.ndjson" of a file key: what follows the job's key prefix.
std::string_view FileTail(const store::ExportFileRecord& f, const std::string& job_prefix) {
  std::string_view key = f.key;
  if (key.size() <= job_prefix.size() + 1 || key.substr(0, job_prefix.size()) != job_prefix) return {};
  return key.substr(job_prefix.size() + 1);
}

// Media types of the kick-off's Accept: it must name application/fhir+json (the IG's only kick-off answer type).
bool AcceptsFhirJson(const Request& req) {
  return AnyHeaderItem(req, "Accept", [](std::string_view item, std::string_view) {
    return http::EqualsIgnoreCase(item, "application/fhir+json");
  });
}

// Whether the client accepts gzip (Accept-Encoding, RFC 9110: "gzip" or "x-gzip" without q=0).
bool AcceptsGzip(const Request& req) {
  return AnyHeaderItem(req, "Accept-Encoding", [](std::string_view coding, std::string_view params) {
    bool zero = false;
    if (size_t q = params.find("q="); q != std::string_view::npos) {
      std::string_view qv = params.substr(q + 2);
      zero = qv.starts_with("0") && qv.find_first_not_of("0. ") == std::string_view::npos;
    }
    return !zero && (http::EqualsIgnoreCase(coding, "gzip") || http::EqualsIgnoreCase(coding, "x-gzip"));
  });
}

Response KickOff(const ApiContext& ctx, const Request& req, const RequestContext& p, bulk::ExportLevel level) {
  return IgKickOff(ctx, req, p, level, req.query);
}

}  // namespace

Result<std::optional<std::vector<http::QueryParam>>> ParseKickoffParameters(std::string_view body) {
  nlohmann::json j = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return std::optional<std::vector<http::QueryParam>>();
  auto rt = j.find("resourceType");
  if (rt == j.end() || !rt->is_string() || rt->get<std::string>() != "Parameters") {
    return std::optional<std::vector<http::QueryParam>>();
  }
  std::vector<http::QueryParam> out;
  auto params = j.find("parameter");
  if (params == j.end()) return std::optional<std::vector<http::QueryParam>>(std::move(out));
  if (!params->is_array()) return Status::Invalid("Parameters.parameter must be an array");
  for (const auto& prm : *params) {
    if (!prm.is_object() || !prm.contains("name") || !prm["name"].is_string()) {
      return Status::Invalid("Every Parameters.parameter needs a string 'name'");
    }
    const std::string name = prm["name"].get<std::string>();
    std::optional<std::string> value;
    for (const char* key : {"valueString", "valueCode", "valueInstant", "valueDateTime", "valueUri", "valueUrl",
                            "valueCanonical", "valueId"}) {
      if (auto v = prm.find(key); v != prm.end()) {
        if (!v->is_string()) return Status::Invalid("Parameter '" + name + "': " + key + " must be a string");
        if (value) return Status::Invalid("Parameter '" + name + "' has more than one value");
        value = v->get<std::string>();
      }
    }
    if (auto b = prm.find("valueBoolean"); b != prm.end()) {
      if (!b->is_boolean()) return Status::Invalid("Parameter '" + name + "': valueBoolean must be true or false");
      if (value) return Status::Invalid("Parameter '" + name + "' has more than one value");
      value = b->get<bool>() ? "true" : "false";
    }
    if (!value && name == "patient") {
      auto ref = prm.find("valueReference");
      if (ref != prm.end() && ref->is_object() && ref->contains("reference") && (*ref)["reference"].is_string()) {
        out.push_back({name, (*ref)["reference"].get<std::string>()});
        continue;
      }
    }
    if (!value) {
      // Another value type (valueReference for `patient`, a part, ...): the parameter name alone, so the
      // kick-off answers it as unsupported (or ignores it under handling=lenient).
      out.push_back(
          {name + " (as " + (prm.size() > 1 ? std::string(std::next(prm.begin()).key()) : "no value") + ")", ""});
      continue;
    }
    out.push_back({name, *value});
  }
  return std::optional<std::vector<http::QueryParam>>(std::move(out));
}

Response IgKickOff(const ApiContext& ctx, const Request& req, const RequestContext& p, bulk::ExportLevel level,
                   const std::vector<http::QueryParam>& params) {
  auto store = FindDatastore(ctx, p.param("ds"));
  if (!store.ok()) return FhirError(store.status());
  if (!HasPreference(req, "respond-async")) {
    return FhirError(Status::Invalid("$export runs asynchronously: send the header 'Prefer: respond-async'"));
  }
  if (!AcceptsFhirJson(req)) {
    return FhirError(
        Status::Invalid("The $export kick-off answers application/fhir+json: send 'Accept: "
                        "application/fhir+json' (got '" +
                        std::string(req.headers.Get("Accept")) + "')"));
  }
  const bool lenient = HasPreference(req, "handling=lenient");
  const EpochMillis now = Clock::System().NowMillis();
  bulk::ExportRequest request;
  request.lenient = lenient;
  request.level = level;
  if (level == bulk::ExportLevel::kGroup) request.group_id = p.param("id");
  for (const auto& q : params) {
    if (q.name == "patient") {
      if (level == bulk::ExportLevel::kSystem) {
        return FhirError(
            Status::Invalid("patient is a parameter of Patient- and Group-level exports, not of a "
                            "system-level $export"));
      }
      std::string_view v = q.value;
      while (true) {
        size_t comma = v.find(',');
        std::string_view ref = v.substr(0, comma);
        if (ref.starts_with("Patient/")) ref.remove_prefix(8);
        if (!IsValidFhirId(ref)) {
          return FhirError(Status::Invalid("patient '" + q.value + "' is not a Patient reference (Patient/{id})"));
        }
        request.patients.emplace_back(ref);
        if (comma == std::string_view::npos) break;
        v.remove_prefix(comma + 1);
      }
      continue;
    }
    if (q.name == "allowPartialManifests" || q.name == "organizeOutputBy" || q.name == "includeAssociatedData") {
      std::string note;
      if (Status st = ParseIgOption(q, &request, &note); !st.ok()) return FhirError(st);
      if (!note.empty()) {
        if (!lenient) {
          return FhirError(Status::Invalid(note + "; send 'Prefer: handling=lenient' to have it ignored"));
        }
        request.notes.push_back(note + " and was ignored (Prefer: handling=lenient)");
      }
      continue;
    }
    auto known = ParseCommonExportParam(q, now, &request);
    if (!known.ok()) return FhirError(known.status());
    if (!*known) {
      if (!lenient) {
        return FhirError(
            Status::Invalid("Query parameter '" + q.name + "' is not supported by this server's $export (supported: " +
                            std::string(kIgKickoffParams) + "); send 'Prefer: handling=lenient' to have it ignored"));
      }
      request.notes.push_back("The $export parameter '" + q.name +
                              "' is not supported by this server and was ignored (Prefer: handling=lenient)");
    }
  }
  std::sort(request.patients.begin(), request.patients.end());
  request.patients.erase(std::unique(request.patients.begin(), request.patients.end()), request.patients.end());
  if (!request.organize_by.empty() && !request.associated.empty()) {
    return FhirError(Status::Invalid(
        "organizeOutputBy and includeAssociatedData cannot be combined: Provenance are not in the Patient blocks; "
        "export them in a second request"));
  }
  if (!request.organize_by.empty()) {
    // Only the Patient compartment is organised into blocks: say what else the request names is left out.
    std::vector<std::string> outside;
    for (const std::string& t : request.types) {
      if (!fhir::IsPatientCompartmentType(t) || t == "Group") outside.push_back(t);
    }
    std::string list;
    for (const auto& t : outside) list += (list.empty() ? "" : ", ") + t;
    if (!outside.empty()) {
      return FhirError(Status::Invalid("organizeOutputBy=Patient writes each Patient's compartment as a block; " +
                                       list + (outside.size() == 1 ? " is" : " are") +
                                       " outside the Patient compartment: remove it from _type, or export it in a "
                                       "second request"));
    }
    if (request.types.empty()) {
      request.notes.push_back(
          "organizeOutputBy=Patient: the blocks hold what the Patient compartment holds; resources outside it "
          "(Organization, Practitioner, Medication, Location, Group and the like) are not exported by this request");
    }
  }
  if (Status st = NarrowExportToScopes(p.principal, &request); !st.ok()) return FhirError(st);
  request.output = bulk::S3Location{ctx.server_export_bucket, ""};
  request.request_url = ctx.public_base_url + req.target;
  request.view = "ig";
  request.owner = JobOwner(p.principal);
  auto job = ctx.exports->Submit(*store, request);
  if (!job.ok()) {
    Response resp = FhirError(job.status());
    if (job.status().code() == StatusCode::kTooManyRequests) resp.headers.Set("Retry-After", "30");
    return resp;
  }
  Response resp = Informational(
      202, "The export job " + job->job_id + " was accepted; poll " + PollUrl(ctx, (*store)->info().id, job->job_id));
  resp.headers.Set("Content-Location", PollUrl(ctx, (*store)->info().id, job->job_id));
  return resp;
}

Status ParseIgOption(const http::QueryParam& q, bulk::ExportRequest* request, std::string* unsupported) {
  const std::string& v = q.value;
  if (q.name == "allowPartialManifests") {
    if (v != "true" && v != "false")
      return Status::Invalid("allowPartialManifests must be true or false (got '" + v + "')");
    request->partial_manifests = v == "true";
    return Status::Ok();
  }
  if (q.name == "organizeOutputBy") {
    if (!request->organize_by.empty()) return Status::Invalid("organizeOutputBy may be given once");
    if (v == "Patient") {
      request->organize_by = v;
      return Status::Ok();
    }
    if (!fhir::IsKnownResourceType(v)) {
      return Status::Invalid("organizeOutputBy '" + v + "' is not a FHIR R4 resource type");
    }
    *unsupported = "organizeOutputBy=" + v + " is not supported by this server (only organizeOutputBy=Patient)";
    return Status::Ok();
  }
  // includeAssociatedData: a comma-separated list; of conflicting values the least restrictive wins (the IG).
  std::string_view rest = v;
  while (true) {
    const size_t comma = rest.find(',');
    const std::string item(rest.substr(0, comma));
    if (item == "RelevantProvenanceResources") {
      request->associated = item;
    } else if (item == "LatestProvenanceResources") {
      if (request->associated.empty()) request->associated = item;
    } else if (item.size() > 1 && item[0] == '_') {
      *unsupported = "includeAssociatedData value '" + item + "' is not supported by this server";
    } else {
      return Status::Invalid("includeAssociatedData '" + item +
                             "' is not a value of the IG (LatestProvenanceResources, RelevantProvenanceResources, or "
                             "a custom value starting with '_')");
    }
    if (comma == std::string_view::npos) break;
    rest.remove_prefix(comma + 1);
  }
  return Status::Ok();
}

namespace {

// The job of an IG status or file URL: kNotFound unless it is a job of this view, not expired, files not deleted.
Result<bulk::JobView> FindIgJob(const ApiContext& ctx, store::ResourceStore* store, const std::string& job_id,
                                const http::Principal& who) {
  auto view = ctx.exports->Describe(store, job_id);
  if (!view.ok() || view->job.view != "ig" || !MaySeeJob(who, view->job.owner)) {
    if (!view.ok() && view.status().code() != StatusCode::kNotFound) return view.status();
    return Status::NotFound("There is no Bulk Data export job '" + job_id + "' in datastore " + store->info().id);
  }
  if (view->job.files_deleted_at) {
    return Status::NotFound("The export job " + job_id + " and its files were deleted at " +
                            FormatInstant(*view->job.files_deleted_at) + ": " + view->job.message);
  }
  return view;
}

std::optional<EpochMillis> ExpiresAt(const ApiContext& ctx, const store::ExportJobRecord& job) {
  if (!job.end_time) return std::nullopt;
  return *job.end_time + ctx.export_file_lifetime_ms;
}

// A manifest, or with allowPartialManifests one page of it: the output and deleted files [first, first + count) in
// commit order, and a `next` link when more files follow. Every page has the same other members (error included).
struct ManifestPage {
  size_t first = 0;
  size_t count = SIZE_MAX;
  std::string next_url;  // empty: no link
};

std::string RenderManifest(const ApiContext& ctx, const bulk::JobView& v, std::string_view ds,
                           const ManifestPage& page = {}) {
  const auto& j = v.job;
  const bool organized = !j.organize_by.empty();
  const std::string prefix = bulk::ExportEngine::JobKeyPrefix(j, ds);
  const std::string file_base = ctx.FhirBase(ds) + "/$export-file/" + j.job_id + "/";
  auto url_of = [&](std::string_view key) {
    store::ExportFileRecord k;
    k.key = std::string(key);
    return file_base + std::string(FileTail(k, prefix));
  };
  std::string out = "{\"transactionTime\":" + JsonString(j.snapshot ? FormatInstant(j.snapshot->time) : "") +
                    ",\"request\":" + JsonString(j.request_url) +
                    ",\"requiresAccessToken\":" + (ctx.RequiresAccessToken(ds) ? "true" : "false");
  if (organized) out += ",\"outputOrganizedBy\":" + JsonString(j.organize_by);
  std::vector<const store::ExportFileRecord*> files;
  for (const auto& f : v.files) files.push_back(&f);
  if (j.partial_manifests) {
    // Pages are cut in commit order, so a file never moves to another page as more files are recorded.
    std::stable_sort(files.begin(), files.end(), [](auto* a, auto* b) { return a->seq < b->seq; });
  }
  std::string output, errors, deleted;
  size_t paged = 0;  // output and deleted files seen so far
  for (const store::ExportFileRecord* f : files) {
    if (f->kind != "error") {
      const size_t n = paged++;
      if (n < page.first || n - page.first >= page.count) continue;
    }
    // organizeOutputBy: a file holds blocks of several types, so it has no `type` (the IG), and a block that goes
    // on in another file says where.
    std::string entry = "{";
    if (!(organized && f->kind == "output")) entry += "\"type\":" + JsonString(f->type) + ",";
    entry += "\"url\":" + JsonString(url_of(f->key)) + ",\"count\":" + std::to_string(f->count);
    if (!f->continues_in.empty()) entry += ",\"continuesInFile\":" + JsonString(url_of(f->continues_in));
    entry += "}";
    std::string& list = f->kind == "output" ? output : f->kind == "deleted" ? deleted : errors;
    if (!list.empty()) list.push_back(',');
    list += entry;
  }
  out += ",\"output\":[" + output + "],\"error\":[" + errors + "]";
  // With _since, the resources deleted since then (an empty list when there were none).
  if (j.since) out += ",\"deleted\":[" + deleted + "]";
  if (!page.next_url.empty()) out += ",\"link\":[{\"relation\":\"next\",\"url\":" + JsonString(page.next_url) + "}]";
  if (!j.message.empty()) out += ",\"extension\":{\"message\":" + JsonString(j.message) + "}";
  return out + "}";
}

// allowPartialManifests: the page a poll asks for (`page`, from 1; absent: 1), or 0 when the value is not one.
size_t RequestedPage(const Request& req) {
  for (const auto& q : req.query) {
    if (q.name != "page") continue;
    if (q.value.empty() || q.value.size() > 9 || q.value.find_first_not_of("0123456789") != std::string::npos) return 0;
    return static_cast<size_t>(std::stoul(q.value));
  }
  return 1;
}

Response Poll(const ApiContext& ctx, const Request& req, const RequestContext& p) {
  auto store = FindDatastore(ctx, p.param("ds"));
  if (!store.ok()) return FhirError(store.status());
  auto view = FindIgJob(ctx, *store, p.param("job"), p.principal);
  if (!view.ok()) {
    // A failure of the poll itself (not of the job): the client should retry.
    if (view.status().code() != StatusCode::kNotFound) return FhirError(500, "transient", view.status().message());
    return FhirError(view.status());
  }
  const auto& j = view->job;
  const EpochMillis now = Clock::System().NowMillis();
  const size_t page_no = RequestedPage(req);
  if (page_no == 0) return FhirError(Status::Invalid("page must be a manifest page number (1, 2, ...)"));
  if (page_no > 1 && !j.partial_manifests) {
    return FhirError(404, "not-found",
                     "The export job " + j.job_id +
                         " has one manifest (it was not kicked off with "
                         "allowPartialManifests=true): poll without 'page'");
  }
  // allowPartialManifests: page `page_no` holds the output and deleted files [first, first + per_page) in commit order.
  ManifestPage page;
  size_t paged_files = 0;
  if (j.partial_manifests) {
    const size_t per_page = static_cast<size_t>(std::max(1, ctx.export_manifest_page_files));
    for (const auto& f : view->files) paged_files += f.kind != "error" ? 1 : 0;
    page.first = (page_no - 1) * per_page;
    page.count = per_page;
    if (paged_files > page.first + per_page) {
      page.next_url = PollUrl(ctx, (*store)->info().id, j.job_id) + "?page=" + std::to_string(page_no + 1);
    }
  }
  // A page other than the first that holds files (full, or the job has ended) counts on its own, so that reading the
  // pages one after the other is not polling too often; any other request counts as a poll of the job.
  const bool own_page =
      page_no > 1 && page.first < paged_files && (paged_files >= page.first + page.count || IsFinished(j.status));
  if (ctx.export_poll_seconds > 0) {
    // Polled sooner than half the advertised interval after the previous answer to this client: 429.
    const int64_t interval_ms = int64_t{ctx.export_poll_seconds} * 1000;
    std::string client =
        p.principal.id + "@" +
        std::string(std::string_view(req.remote_address).substr(0, std::string_view(req.remote_address).rfind(':'))) +
        (own_page ? "#page" + std::to_string(page_no) : "");
    auto earlier = (*store)->jobs().RecordPoll(j.job_id, client, now, interval_ms / 2);
    if (!earlier.ok()) return FhirError(500, "transient", earlier.status().message());
    if (*earlier) {
      const int64_t wait_ms = std::max<int64_t>(0, **earlier + interval_ms - now);
      Response resp = FhirError(429, "throttled",
                                "Polled too often: wait " + std::to_string(ctx.export_poll_seconds) +
                                    " s between status requests (Retry-After)");
      resp.headers.Set("Retry-After", std::to_string(std::max<int64_t>(1, (wait_ms + 999) / 1000)));
      return resp;
    }
  }
  if (IsFinished(j.status)) {
    auto expires = ExpiresAt(ctx, j);
    if (expires && *expires <= now) {
      return FhirError(404, "not-found",
                       "The files of export job " + j.job_id + " expired at " + FormatInstant(*expires));
    }
    if (page_no > 1 && page.first >= paged_files) {
      return FhirError(404, "not-found",
                       "The manifest of export job " + j.job_id + " has no page " + std::to_string(page_no));
    }
    Response resp = Response::Json(200, RenderManifest(ctx, *view, (*store)->info().id, page), "application/json");
    if (expires) resp.headers.Set("Expires", FormatHttpDate(*expires));
    return resp;
  }
  if (j.status == js::kFailed) {
    return FhirError(500, "exception", "The export job " + j.job_id + " failed: " + j.message);
  }
  if (j.status.starts_with("CANCEL")) {
    return FhirError(404, "not-found", "The export job " + j.job_id + " was cancelled");
  }
  int percent = view->planned_rows > 0
                    ? static_cast<int>(std::min<int64_t>(99, view->written_rows * 100 / view->planned_rows))
                    : 0;
  // A partial manifest once its page is full (so that it never changes, but for the `next` link it may gain), else
  // the usual progress answer.
  Response resp = j.partial_manifests && paged_files >= page.first + page.count
                      ? Response::Json(202, RenderManifest(ctx, *view, (*store)->info().id, page), "application/json")
                      : Informational(202, "The export job " + j.job_id + " is " + j.status);
  resp.headers.Set("X-Progress", j.status + " " + std::to_string(percent) + "%");
  resp.headers.Set("Retry-After", std::to_string(ctx.export_poll_seconds));
  return resp;
}

Response Delete(const ApiContext& ctx, const RequestContext& p) {
  auto store = FindDatastore(ctx, p.param("ds"));
  if (!store.ok()) return FhirError(store.status());
  auto view = FindIgJob(ctx, *store, p.param("job"), p.principal);
  if (!view.ok()) return FhirError(view.status());
  const auto& j = view->job;
  if (IsFinished(j.status) || j.status == js::kFailed || j.status.starts_with("CANCEL")) {
    // An ended job: its files go now (a download already running finishes: the open file outlives its name).
    auto deleted = ctx.exports->DeleteServerFiles(*store, j.job_id,
                                                  "The client deleted its files (DELETE on the Bulk Data status URL).");
    if (!deleted.ok()) return FhirError(deleted.status());
    return Informational(202, "The files of export job " + j.job_id + " were deleted");
  }
  auto cancelled = ctx.exports->Cancel(*store, j.job_id);
  if (!cancelled.ok()) return FhirError(cancelled.status());
  return Informational(202, "The export job " + j.job_id + " is being cancelled");
}

// A single "bytes=first-last" / "bytes=first-" / "bytes=-suffix" range of an object of `size` bytes.
struct ByteRange {
  int64_t first = 0, last = 0;
};
enum class RangeParse { kNone, kOk, kUnsatisfiable };
RangeParse ParseRange(std::string_view header, int64_t size, ByteRange* out) {
  if (header.empty()) return RangeParse::kNone;
  if (!header.starts_with("bytes=")) return RangeParse::kNone;  // another unit: ignored (RFC 9110 14.2)
  std::string_view spec = header.substr(6);
  if (spec.find(',') != std::string_view::npos) return RangeParse::kNone;  // several ranges: the whole file
  size_t dash = spec.find('-');
  if (dash == std::string_view::npos) return RangeParse::kNone;
  auto number = [](std::string_view s, int64_t* v) {
    if (s.empty() || s.size() > 18 || s.find_first_not_of("0123456789") != std::string_view::npos) return false;
    *v = std::stoll(std::string(s));
    return true;
  };
  int64_t a = 0, b = 0;
  std::string_view first = spec.substr(0, dash), last = spec.substr(dash + 1);
  if (first.empty()) {
    if (!number(last, &b)) return RangeParse::kNone;
    if (b == 0 || size == 0) return RangeParse::kUnsatisfiable;
    out->first = std::max<int64_t>(0, size - b);
    out->last = size - 1;
    return RangeParse::kOk;
  }
  if (!number(first, &a)) return RangeParse::kNone;
  if (last.empty()) {
    b = size - 1;
  } else if (!number(last, &b) || b < a) {
    return RangeParse::kNone;
  }
  if (a >= size) return RangeParse::kUnsatisfiable;
  out->first = a;
  out->last = std::min(b, size - 1);
  return RangeParse::kOk;
}

// A running download's lease (store::JobStore::BeginDownload): recorded before the file is opened, renewed while it
// streams, ended with it, so that deleting the job's files (DELETE, expiry) waits for the download to finish.
class DownloadLease {
 public:
  static constexpr int64_t kLeaseMs = 120000;  // a lease outlives a crashed server by this much at most
  static constexpr int64_t kRenewMs = 30000;
  DownloadLease(store::JobStore* jobs, bulk::ExportEngine* engine, std::string job_id)
      : jobs_(jobs), engine_(engine), job_id_(std::move(job_id)), token_(NewHexId()) {}
  ~DownloadLease() {
    if (!begun_) return;
    if (Status st = jobs_->EndDownload(job_id_, token_); !st.ok()) {
      spdlog::warn("event=export_download_lease_end_failed job={} reason=\"{}\"", job_id_, st.message());
    }
    // A deletion may have waited for this download: the sweep finishes it now rather than within a minute.
    auto job = jobs_->GetJob(job_id_);
    if (job.ok() && job->files_deleted_at) engine_->RequestSweep();
  }
  DownloadLease(const DownloadLease&) = delete;
  DownloadLease& operator=(const DownloadLease&) = delete;

  Status Begin() {
    last_ = Clock::System().NowMillis();
    RETURN_IF_ERROR(jobs_->BeginDownload(job_id_, token_, last_ + kLeaseMs));
    begun_ = true;
    return Status::Ok();
  }
  void Renew() {
    const EpochMillis now = Clock::System().NowMillis();
    if (now - last_ < kRenewMs) return;
    last_ = now;
    if (Status st = jobs_->BeginDownload(job_id_, token_, now + kLeaseMs); !st.ok()) {
      spdlog::warn("event=export_download_lease_renew_failed job={} reason=\"{}\"", job_id_, st.message());
    }
  }

 private:
  store::JobStore* jobs_;
  bulk::ExportEngine* engine_;
  std::string job_id_;
  std::string token_;
  EpochMillis last_ = 0;
  bool begun_ = false;
};

// Streams [first, last] of `reader`, optionally gzip-compressed as it goes (bounded memory: one chunk in, one out).
class FileStream {
 public:
  FileStream(std::shared_ptr<sink::ObjectReader> reader, int64_t first, int64_t last, bool gzip,
             std::shared_ptr<DownloadLease> lease)
      : reader_(std::move(reader)), lease_(std::move(lease)), next_(first), last_(last), gzip_(gzip) {
    if (gzip_) {
      std::memset(&z_, 0, sizeof z_);
      // windowBits 15 + 16: a gzip wrapper; level 1: ndjson compresses well even so, and it keeps pace with disks.
      z_ok_ = deflateInit2(&z_, 1, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) == Z_OK;
    }
  }
  ~FileStream() {
    if (gzip_ && z_ok_) deflateEnd(&z_);
  }
  FileStream(const FileStream&) = delete;
  FileStream& operator=(const FileStream&) = delete;

  // The body producer: appends the next piece; false when done. Throws when the file cannot be read (the server
  // then cuts the connection, so a client sees a truncated transfer, never a short file that looks whole).
  bool Next(std::string* chunk) {
    if (done_) return false;
    lease_->Renew();
    if (!gzip_) {
      // Straight into the chunk (no copy), in large pieces: the socket write of one overlaps the read of the next.
      const size_t want = static_cast<size_t>(std::min<int64_t>(kPlainChunk, last_ - next_ + 1));
      chunk->resize(want);
      const size_t n = ReadSome(chunk->data(), want);
      chunk->resize(n);
      done_ = next_ > last_;
      return !done_;
    }
    in_.resize(kDownloadChunk);
    const size_t n =
        next_ <= last_ ? ReadSome(in_.data(), static_cast<size_t>(std::min<int64_t>(kDownloadChunk, last_ - next_ + 1)))
                       : 0;
    const bool end = next_ > last_;
    if (!z_ok_) throw std::runtime_error("gzip could not be initialised");
    z_.next_in = reinterpret_cast<Bytef*>(in_.data());
    z_.avail_in = static_cast<uInt>(n);
    const int flush = end ? Z_FINISH : Z_NO_FLUSH;
    char out[64 << 10];
    do {
      z_.next_out = reinterpret_cast<Bytef*>(out);
      z_.avail_out = sizeof out;
      int rc = deflate(&z_, flush);
      if (rc == Z_STREAM_ERROR) throw std::runtime_error("gzip failed");
      chunk->append(out, sizeof out - z_.avail_out);
      if (rc == Z_STREAM_END) break;
    } while (z_.avail_out == 0 || (flush == Z_FINISH));
    done_ = end;
    return !end;
  }

 private:
  size_t ReadSome(char* into, size_t want) {
    if (want == 0) return 0;
    auto got = reader_->ReadAt(next_, into, want);
    if (!got.ok()) throw std::runtime_error("export file read failed: " + got.status().message());
    if (*got == 0) throw std::runtime_error("export file ended before its recorded size");
    next_ += static_cast<int64_t>(*got);
    return *got;
  }

  std::shared_ptr<sink::ObjectReader> reader_;
  std::shared_ptr<DownloadLease> lease_;
  int64_t next_, last_;
  bool gzip_;
  bool z_ok_ = false;
  bool done_ = false;
  z_stream z_{};
  std::string in_;
};

Response Download(const ApiContext& ctx, const Request& req, const RequestContext& p) {
  auto store = FindDatastore(ctx, p.param("ds"));
  if (!store.ok()) return FhirError(store.status());
  auto view = FindIgJob(ctx, *store, p.param("job"), p.principal);
  if (!view.ok()) return FhirError(view.status());
  const auto& j = view->job;
  const std::string name = p.param("type") + "/" + p.param("file");
  auto not_found = [&] { return FhirError(404, "not-found", "Export job " + j.job_id + " has no file " + name); };
  if (!IsFinished(j.status)) return not_found();
  auto expires = ExpiresAt(ctx, j);
  const EpochMillis now = Clock::System().NowMillis();
  if (expires && *expires <= now) {
    return FhirError(404, "not-found",
                     "The files of export job " + j.job_id + " expired at " + FormatInstant(*expires));
  }
  const std::string prefix = bulk::ExportEngine::JobKeyPrefix(j, (*store)->info().id);
  const store::ExportFileRecord* file = nullptr;
  for (const auto& f : view->files) {
    if (FileTail(f, prefix) == name) file = &f;
  }
  if (file == nullptr) return not_found();
  auto lease = std::make_shared<DownloadLease>(&(*store)->jobs(), ctx.exports, j.job_id);
  if (Status st = lease->Begin(); !st.ok()) {
    return FhirError(500, "transient", "Export file " + name + " could not be opened: " + st.message());
  }
  // Read again now that the lease is recorded: a deletion that came first is seen here, one that comes later waits.
  auto again = (*store)->jobs().GetJob(j.job_id);
  if (!again.ok()) return FhirError(500, "transient", "Export job " + j.job_id + ": " + again.status().message());
  if (again->files_deleted_at) return not_found();
  auto out = bulk::ExportEngine::JobOutput(j);
  if (!out.ok()) return FhirError(out.status());
  auto reader = ctx.sink->Open({j.data_access_role_arn, j.kms_key_id}, out->bucket, file->key);
  if (!reader.ok()) {
    if (reader.status().code() == StatusCode::kNotFound) return not_found();
    return FhirError(500, "transient", "Export file " + name + " could not be opened: " + reader.status().message());
  }
  std::shared_ptr<sink::ObjectReader> r = std::move(reader).value();
  const int64_t size = r->size();
  const std::string tag =
      j.job_id + "-" + file->kind + "-" + file->type + "-" + std::to_string(file->file_no) + "-" + std::to_string(size);
  ByteRange range;
  RangeParse rp = ParseRange(req.headers.Get("Range"), size, &range);
  Response resp;
  resp.headers.Set("Accept-Ranges", "bytes");
  resp.headers.Set("Last-Modified", FormatHttpDate(j.end_time.value_or(now)));
  if (expires) resp.headers.Set("Expires", FormatHttpDate(*expires));
  resp.headers.Set("Vary", "Accept-Encoding");
  if (rp == RangeParse::kUnsatisfiable) {
    Response bad = FhirError(416, "invalid",
                             "Range '" + std::string(req.headers.Get("Range")) + "' is outside " + name + " (" +
                                 std::to_string(size) + " bytes)");
    bad.headers.Set("Content-Range", "bytes */" + std::to_string(size));
    return bad;
  }
  resp.headers.Set("Content-Type", "application/fhir+ndjson");
  bool gzip = false;
  if (rp == RangeParse::kOk) {
    // Ranges are of the identity encoding, so a resumed download continues the same bytes.
    resp.status = 206;
    resp.headers.Set("Content-Range", "bytes " + std::to_string(range.first) + "-" + std::to_string(range.last) + "/" +
                                          std::to_string(size));
    resp.headers.Set("ETag", "\"" + tag + "\"");
  } else {
    range = ByteRange{0, size - 1};
    gzip = AcceptsGzip(req);
    if (gzip) resp.headers.Set("Content-Encoding", "gzip");
    resp.headers.Set("ETag", "\"" + tag + (gzip ? "-gzip" : "") + "\"");
  }
  auto stream = std::make_shared<FileStream>(std::move(r), range.first, range.last, gzip, std::move(lease));
  resp.body_producer = [stream](std::string* chunk) { return stream->Next(chunk); };
  return resp;
}

// The OperationDefinitions of the three kick-offs as this server implements them: the IG's canonical definition as
// `base`, and exactly the parameters the IG view accepts (HealthLake's _tag and _security included).
std::string OperationDefinition(const ApiContext& ctx, std::string_view ds, std::string_view id) {
  struct Param {
    const char* name;
    const char* type;
    const char* max;
    bool type_level;  // Patient and Group level only
    const char* doc;
  };
  static constexpr Param kParams[] = {
      {"_outputFormat", "string", "1", false, "application/fhir+ndjson (also application/ndjson, ndjson)"},
      {"_since", "instant", "1", false,
       "only resources last updated at or after it; with it, the manifest lists the deletions since in `deleted`"},
      {"_until", "instant", "1", false, "only resources last updated at or before it"},
      {"_type", "string", "*", false, "only these resource types (comma-separated or repeated)"},
      {"_elements", "string", "*", false,
       "top-level elements ('name' or 'Type.name') kept besides the mandatory ones; resources tagged SUBSETTED"},
      {"_typeFilter", "string", "*", false,
       "a FHIR search query on one type ('Type?name=value'); several for one type are OR-ed"},
      {"_tag", "string", "*", false, "meta.tag system|code every exported resource has (HealthLake)"},
      {"_security", "string", "*", false, "meta.security system|code every exported resource has (HealthLake)"},
      {"patient", "Reference", "*", true, "only these patients (POST with a Parameters body)"},
      {"includeAssociatedData", "code", "*", false,
       "LatestProvenanceResources or RelevantProvenanceResources: the Provenance of the exported resources (the "
       "latest of each, or all), and no other"},
      {"organizeOutputBy", "string", "1", false,
       "Patient: files of per-patient blocks (a Parameters header, the Patient, its compartment)"},
      {"allowPartialManifests", "boolean", "1", false,
       "true: manifest pages linked with `link`, and full pages shown (202) while the export runs"},
  };
  const bool system = id == "export";
  std::string out =
      "{\"resourceType\":\"OperationDefinition\",\"id\":" + JsonString(id) +
      ",\"url\":" + JsonString(ctx.FhirBase(ds) + "/OperationDefinition/" + std::string(id)) +
      ",\"version\":" + JsonString(ctx.version) + ",\"name\":" +
      JsonString(system                   ? "FhirlakeBulkDataExport"
                 : id == "patient-export" ? "FhirlakeBulkDataPatientExport"
                                          : "FhirlakeBulkDataGroupExport") +
      ",\"status\":\"active\",\"kind\":\"operation\",\"affectsState\":false,\"code\":\"export\"" +
      ",\"base\":" + JsonString("http://hl7.org/fhir/uv/bulkdata/OperationDefinition/" + std::string(id)) +
      ",\"system\":" + (system ? "true" : "false") + ",\"type\":" + (system ? "false" : "true") +
      ",\"instance\":" + (id == "group-export" ? "true" : "false");
  if (!system) out += std::string(",\"resource\":[") + (id == "patient-export" ? "\"Patient\"" : "\"Group\"") + "]";
  out += ",\"parameter\":[";
  bool first = true;
  for (const Param& prm : kParams) {
    if (prm.type_level && system) continue;
    if (!first) out.push_back(',');
    first = false;
    out += "{\"name\":" + JsonString(prm.name) + ",\"use\":\"in\",\"min\":0,\"max\":" + JsonString(prm.max) +
           ",\"type\":" + JsonString(prm.type) + ",\"documentation\":" + JsonString(prm.doc) + "}";
  }
  return out + "]}";
}

}  // namespace

void RegisterBulkDataIg(http::Router& router, const ApiContext& ctx) {
  const ApiContext* c = &ctx;
  const std::string r4 = "/datastore/{ds}/r4";
  router.Add(
      "GET", r4 + "/$export", http::RouteInfo{"healthlake:StartFHIRExportJobWithGet"},
      [c](const Request& req, const RequestContext& p) { return KickOff(*c, req, p, bulk::ExportLevel::kSystem); });
  router.Add(
      "GET", r4 + "/Patient/$export", http::RouteInfo{"healthlake:StartFHIRExportJobWithGet"},
      [c](const Request& req, const RequestContext& p) { return KickOff(*c, req, p, bulk::ExportLevel::kPatient); });
  router.Add(
      "GET", r4 + "/Group/{id}/$export", http::RouteInfo{"healthlake:StartFHIRExportJobWithGet"},
      [c](const Request& req, const RequestContext& p) { return KickOff(*c, req, p, bulk::ExportLevel::kGroup); });
  router.Add("GET", r4 + "/$export-poll-status/{job}", http::RouteInfo{"healthlake:DescribeFHIRExportJobWithGet"},
             [c](const Request& req, const RequestContext& p) { return Poll(*c, req, p); });
  router.Add("DELETE", r4 + "/$export-poll-status/{job}", http::RouteInfo{"healthlake:CancelFHIRExportJobWithDelete"},
             [c](const Request&, const RequestContext& p) { return Delete(*c, p); });
  router.Add("GET", r4 + "/$export-file/{job}/{type}/{file}", http::RouteInfo{"healthlake:GetExportedFile"},
             [c](const Request& req, const RequestContext& p) { return Download(*c, req, p); });
  // Only these three ids: any other OperationDefinition is a stored resource like any other.
  for (const char* id : {"export", "patient-export", "group-export"}) {
    router.Add("GET", r4 + "/OperationDefinition/" + id, http::RouteInfo{"healthlake:ReadResource"},
               [c, id](const Request&, const RequestContext& p) {
                 auto store = FindDatastore(*c, p.param("ds"));
                 if (!store.ok()) return FhirError(store.status());
                 return Response::Json(200, OperationDefinition(*c, (*store)->info().id, id));
               });
  }
}

}  // namespace fhirlake::api
