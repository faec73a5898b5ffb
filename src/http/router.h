// One route table for the whole server: (method, path pattern) -> handler. Patterns are '/'-separated
// segments; "{name}" captures one segment; every other segment matches literally. The first matching
// pattern wins, so specific routes ("Patient/$export") are registered before generic ones ("{type}/{id}").
// A path that matches some pattern but not with this method answers 405 with an Allow header.
//
// The request path (raw, as sent) is split into segments before each segment is percent-decoded, so an
// encoded '/' ("%2F") stays inside its segment and can never create a route ("Patient/a%2F_history" is the
// id "a/_history", which handlers reject, never the history of "a").
//
// The request path: match -> RequestContext (request id, the matched route and its action, path parameters,
// datastore, principal) -> the authorization step (one function, set once; it sees the matched route) ->
// handler. The authorization step may answer instead of the handler (401/403) and fills the principal.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "http/http_types.h"

namespace fhirlake::http {

using PathParams = std::map<std::string, std::string, std::less<>>;

// Who sent the request, as established by the authorization step. "anonymous" until auth exists.
struct Principal {
  std::string kind = "anonymous";  // "anonymous", "sigv4", "smart", "idp" (an external issuer's bearer JWT)
  std::string id = "anonymous";    // access key id (sigv4), client id (smart), sub (idp)
  std::string account;             // sigv4: the principal's AWS account id; idp: the issuer
  // smart, idp: the resource types its system scopes let it read ("*": all); an export is narrowed to them.
  bool scoped = false;
  std::vector<std::string> readable_types;
  bool MayRead(std::string_view type) const {
    if (!scoped) return true;
    for (const auto& t : readable_types) {
      if (t == "*" || t == type) return true;
    }
    return false;
  }
};

// What a route is, for the authorization step and for logs.
struct RouteInfo {
  std::string action;      // what the route does, e.g. "healthlake:StartFHIRExportJobWithPost"; empty: public
  bool inline_ok = false;  // cheap and non-blocking: the server may run it on an I/O thread (/healthz)
  // awsJson1_0 (the HealthLake control plane): the route matches only requests whose X-Amz-Target header is this, and
  // refusals of the authorization step are AWS JSON errors ({"__type", "message"}) rather than OperationOutcomes.
  std::string target;
  bool aws_json = false;
};

struct RequestContext {
  std::string request_id;           // unique per request (also the X-Request-Id response header)
  std::string route;                // the matched pattern, e.g. "GET /datastore/{ds}/r4/{type}/{id}"
  const RouteInfo* info = nullptr;  // the matched route's info (never null in a handler)
  PathParams params;                // decoded captures
  std::string datastore_id;         // params["ds"] when the route has one
  Principal principal;

  // A capture of the matched pattern (handlers ask only for captures their pattern has).
  const std::string& param(std::string_view name) const { return params.find(name)->second; }
};

using Handler = std::function<Response(const Request&, const RequestContext&)>;
// Builds the error response for router-level failures (404 unknown route, 405 wrong method).
// status is 404 or 405; `message` is a human-readable diagnostics line.
using ErrorResponder = std::function<Response(const Request&, int status, const std::string& message)>;
// Runs after a route matched and before its handler: authenticates (fills ctx->principal) and authorizes
// ctx->info->action on ctx->datastore_id. Returning a response answers the request instead of the handler.
using Authorizer = std::function<std::optional<Response>(const Request&, RequestContext*)>;

// CORS for browser apps: `preflight` answers an OPTIONS request carrying Origin and Access-Control-Request-Method
// (nullopt: route it as any request); `decorate` sees every answer (it adds the Access-Control-* headers to those for
// an allowed Origin, and Vary: Origin where caches must tell them apart). Both may be empty.
struct CorsPolicy {
  std::function<std::optional<Response>(const Request&)> preflight;
  std::function<void(const Request&, Response*)> decorate;
};

class Router {
 public:
  explicit Router(ErrorResponder on_error) : on_error_(std::move(on_error)) {}

  // method "*" matches any method. Call before serving starts (not thread-safe with Dispatch).
  void Add(std::string method, std::string_view pattern, Handler handler, RouteInfo info = {});
  void Add(std::string method, std::string_view pattern, RouteInfo info, Handler handler) {
    Add(std::move(method), pattern, std::move(handler), std::move(info));
  }
  // Call before serving starts. Without one, every request is anonymous and allowed.
  void SetAuthorizer(Authorizer authorizer) { authorizer_ = std::move(authorizer); }
  // Call before serving starts.
  void SetCors(CorsPolicy cors) { cors_ = std::move(cors); }

  // Thread-safe after setup. A handler's exception propagates (the server turns it into a 500).
  Response Dispatch(const Request& request) const;
  // Whether the request would be routed to an inline_ok route (the server runs those on its I/O threads).
  bool IsInline(const Request& request) const;

  // Every route as "METHOD /pattern" with its info, in registration order (the route table, for tests and for the
  // authorization step's coverage check).
  std::vector<std::pair<std::string, RouteInfo>> Routes() const {
    std::vector<std::pair<std::string, RouteInfo>> out;
    for (const auto& r : routes_) out.emplace_back(r.name, r.info);
    return out;
  }

  // The segments of a raw path, each percent-decoded after splitting. Leading/trailing '/' are dropped.
  static std::vector<std::string> Segments(std::string_view raw_path);

 private:
  struct Route {
    std::string method;
    std::string name;  // "METHOD /pattern", plus " X-Amz-Target" for a route with a target
    std::vector<std::string> segments;
    Handler handler;
    RouteInfo info;
  };
  struct Match {
    const Route* route = nullptr;
    PathParams params;
    std::vector<std::string> allowed;  // methods of routes whose path matched
  };
  Match Find(const Request& request) const;
  Response DispatchRouted(const Request& request) const;

  std::vector<Route> routes_;
  ErrorResponder on_error_;
  Authorizer authorizer_;
  CorsPolicy cors_;
  mutable std::atomic<uint64_t> next_request_{1};
};

}  // namespace fhirlake::http
