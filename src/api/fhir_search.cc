// FHIR search interactions: type search (GET [base]/{type}?..., POST [base]/{type}/_search), system search
// (GET [base]?_type=...) and compartment search (GET [base]/Patient/{id}/{type}?...). Each parses the parameters
// into a search::SearchQuery, runs one page in the store and renders a searchset Bundle around the stored bytes.
#include "api/fhir_search.h"

#include <nlohmann/json.hpp>

#include "api/fhir_response.h"
#include "common/ids.h"
#include "common/json_escape.h"
#include "common/time.h"
#include "fhir/operation_outcome.h"
#include "fhir/r4.h"
#include "fhir/subset.h"
#include "search/query.h"

namespace fhirlake::api {
namespace {

using http::Request;
using http::RequestContext;
using http::Response;

bool Lenient(const Request& req) {
  std::string_view prefer = req.headers.Get("Prefer");
  return prefer.find("handling=lenient") != std::string_view::npos;
}

std::string Entry(const std::string& base, const store::StoredResource& r, const char* mode,
                  const std::vector<std::string>& elements) {
  return "{\"fullUrl\":" + JsonString(base + "/" + r.type + "/" + r.id) + ",\"resource\":" +
         (elements.empty() || std::string_view(mode) != "match" ? r.json : fhir::SubsetElements(r.json, elements)) +
         ",\"search\":{\"mode\":\"" + mode + "\"}}";
}

// `url`: the absolute URL searched, without its query.
Result<Response> RunSearch(store::ResourceStore& store, const std::string& base, const std::string& url,
                           std::vector<std::string> types, const std::vector<http::QueryParam>& params, bool lenient,
                           std::string_view compartment_patient) {
  std::vector<std::pair<std::string, std::string>> pairs;
  pairs.reserve(params.size());
  for (const auto& p : params) pairs.emplace_back(p.name, p.value);
  ASSIGN_OR_RETURN(search::SearchQuery query, search::ParseSearchQuery(std::move(types), pairs, base, lenient));
  ASSIGN_OR_RETURN(store::SearchResult page, store.Search(query, compartment_patient));
  std::string out = "{\"resourceType\":\"Bundle\",\"id\":\"" + NewUuid() + "\",\"meta\":{\"lastUpdated\":\"" +
                    FormatInstant(Clock::System().NowMillis()) + "\"},\"type\":\"searchset\"";
  if (page.total) out += ",\"total\":" + std::to_string(*page.total);
  std::string self = url + "?" + query.applied_query;
  out += ",\"link\":[{\"relation\":\"self\",\"url\":" +
         JsonString(self + (query.page.empty() ? "" : "&page=" + query.page)) + "}";
  if (!page.next_page.empty()) {
    out += ",{\"relation\":\"next\",\"url\":" + JsonString(self + "&page=" + page.next_page) + "}";
  }
  out += "],\"entry\":[";
  bool first = true;
  auto sep = [&] {
    if (!first) out.push_back(',');
    first = false;
  };
  for (const auto& r : page.matches) {
    sep();
    out += Entry(base, r, "match", query.elements);
  }
  for (const auto& r : page.included) {
    sep();
    out += Entry(base, r, "include", query.elements);
  }
  if (!query.ignored.empty()) {
    std::string why = "Ignored search parameters (Prefer: handling=lenient): ";
    for (size_t i = 0; i < query.ignored.size(); ++i) why += (i ? "; " : "") + query.ignored[i];
    sep();
    out += "{\"resource\":" + fhir::OperationOutcome("warning", "not-supported", why) +
           ",\"search\":{\"mode\":\"outcome\"}}";
  }
  out += "]}";
  return Response::Json(200, std::move(out));
}

// The form body of POST _search (application/x-www-form-urlencoded), followed by any URL parameters.
Result<std::vector<http::QueryParam>> SearchPostParams(const Request& req) {
  std::string_view ct = req.headers.Get("Content-Type");
  if (!ct.empty() && ct.substr(0, ct.find(';')) != "application/x-www-form-urlencoded") {
    return Status::UnsupportedMediaType(
        "POST _search takes a form body (Content-Type: "
        "application/x-www-form-urlencoded), not '" +
        std::string(ct) + "'");
  }
  std::vector<http::QueryParam> params = http::ParseQuery(req.body);
  params.insert(params.end(), req.query.begin(), req.query.end());
  return params;
}

}  // namespace

Result<Response> SearchType(store::ResourceStore& store, const std::string& base, const Request& req,
                            const std::string& type, const std::vector<http::QueryParam>& params) {
  RETURN_IF_ERROR(CheckType(type));
  return RunSearch(store, base, base + "/" + type, {type}, params, Lenient(req), "");
}

Result<Response> SearchCompartment(store::ResourceStore& store, const std::string& base, const Request& req,
                                   const std::string& patient_id, const std::string& type) {
  RETURN_IF_ERROR(CheckType(type));
  if (!IsValidFhirId(patient_id)) return Status::Invalid("Invalid Patient id '" + patient_id + "'");
  return RunSearch(store, base, base + "/Patient/" + patient_id + "/" + type, {type}, req.query, Lenient(req),
                   patient_id);
}

void RegisterFhirSearch(http::Router& router, const ApiContext& ctx) {
  const ApiContext* c = &ctx;
  const std::string r4 = "/datastore/{ds}/r4";
  router.Add("GET", r4, http::RouteInfo{"healthlake:SearchWithGet"}, [c](const Request& req, const RequestContext& p) {
    return WithStore(*c, p, [&](store::ResourceStore& s, const std::string& base) {
      return RunSearch(s, base, base, {}, req.query, Lenient(req), "");
    });
  });
  router.Add("POST", r4 + "/{type}/_search", http::RouteInfo{"healthlake:SearchWithPost"},
             [c](const Request& req, const RequestContext& p) {
               return WithStore(*c, p, [&](store::ResourceStore& s, const std::string& base) -> Result<Response> {
                 ASSIGN_OR_RETURN(auto params, SearchPostParams(req));
                 return SearchType(s, base, req, p.param("type"), params);
               });
             });
  router.Add("GET", r4 + "/{type}", http::RouteInfo{"healthlake:SearchWithGet"},
             [c](const Request& req, const RequestContext& p) {
               return WithStore(*c, p, [&](store::ResourceStore& s, const std::string& base) {
                 return SearchType(s, base, req, p.param("type"), req.query);
               });
             });
}

}  // namespace fhirlake::api
