// The route table: splits the raw path into segments, decodes each, matches them against '/'-separated
// patterns with "{name}" captures, picks the first route whose method also matches, runs the authorization
// step, then the handler; 404/405 come from the ErrorResponder.
#include "http/router.h"

#include <algorithm>

#include "common/ids.h"

namespace fhirlake::http {

namespace {

bool IsCapture(std::string_view segment) {
  return segment.size() >= 2 && segment.front() == '{' && segment.back() == '}';
}

// HEAD is answered by GET routes (the server drops the body), so callers need not register HEAD twice.
bool MethodMatches(std::string_view route_method, std::string_view request_method) {
  return route_method == "*" || route_method == request_method || (request_method == "HEAD" && route_method == "GET");
}

std::string_view RawPath(const Request& request) {
  std::string_view target = request.target;
  if (target.empty()) return request.path;  // requests built in code (tests) may set only the path
  return target.substr(0, target.find('?'));
}

}  // namespace

std::vector<std::string> Router::Segments(std::string_view path) {
  // Leading and trailing slashes carry no meaning ("/Patient/" == "Patient"), but an empty segment in the
  // middle ("a//b") is kept so it can never be captured as an empty id.
  size_t begin = path.find_first_not_of('/');
  if (begin == std::string_view::npos) return {};
  size_t end = path.find_last_not_of('/');
  path = path.substr(begin, end - begin + 1);

  std::vector<std::string> segments;
  size_t pos = 0;
  while (true) {
    size_t slash = path.find('/', pos);
    std::string_view seg = path.substr(pos, slash == std::string_view::npos ? std::string_view::npos : slash - pos);
    segments.push_back(PercentDecode(seg, false));
    if (slash == std::string_view::npos) break;
    pos = slash + 1;
  }
  return segments;
}

void Router::Add(std::string method, std::string_view pattern, Handler handler, RouteInfo info) {
  Route route;
  route.method = std::move(method);
  route.name = route.method + " " + std::string(pattern);
  // Patterns are literal: split them without decoding (a pattern never contains '%').
  size_t begin = pattern.find_first_not_of('/');
  while (begin != std::string_view::npos && begin < pattern.size()) {
    size_t slash = pattern.find('/', begin);
    route.segments.emplace_back(pattern.substr(begin, slash == std::string_view::npos ? slash : slash - begin));
    if (slash == std::string_view::npos) break;
    begin = slash + 1;
  }
  if (!info.target.empty()) route.name += " " + info.target;
  route.handler = std::move(handler);
  route.info = std::move(info);
  routes_.push_back(std::move(route));
}

Router::Match Router::Find(const Request& request) const {
  const std::vector<std::string> segments = Segments(RawPath(request));
  Match match;
  const std::string_view target = request.headers.Get("X-Amz-Target");
  for (const Route& route : routes_) {
    if (route.segments.size() != segments.size()) continue;
    if (!route.info.target.empty() && route.info.target != target) continue;
    match.params.clear();
    bool path_matches = true;
    for (size_t i = 0; i < segments.size() && path_matches; ++i) {
      const std::string& pattern = route.segments[i];
      if (segments[i].empty()) {
        path_matches = false;  // "a//b": neither a literal nor a capture accepts an empty segment
      } else if (IsCapture(pattern)) {
        match.params.emplace(pattern.substr(1, pattern.size() - 2), segments[i]);
      } else {
        path_matches = pattern == segments[i];
      }
    }
    if (!path_matches) continue;
    if (MethodMatches(route.method, request.method)) {
      match.route = &route;
      return match;
    }
    if (std::find(match.allowed.begin(), match.allowed.end(), route.method) == match.allowed.end()) {
      match.allowed.push_back(route.method);
    }
  }
  match.params.clear();
  return match;
}

bool Router::IsInline(const Request& request) const {
  Match m = Find(request);
  return m.route != nullptr && m.route->info.inline_ok;
}

Response Router::Dispatch(const Request& request) const {
  const bool cross_origin = request.headers.Has("Origin");
  if (cross_origin && cors_.preflight && request.method == "OPTIONS" &&
      request.headers.Has("Access-Control-Request-Method")) {
    if (std::optional<Response> answer = cors_.preflight(request)) {
      answer->headers.Set("X-Request-Id", NewHexId().substr(0, 16));
      return std::move(*answer);
    }
  }
  Response response = DispatchRouted(request);
  if (cors_.decorate) cors_.decorate(request, &response);
  return response;
}

Response Router::DispatchRouted(const Request& request) const {
  Match m = Find(request);
  if (m.route != nullptr) {
    RequestContext ctx;
    ctx.request_id = NewHexId().substr(0, 16);
    ctx.route = m.route->name;
    ctx.info = &m.route->info;
    ctx.params = std::move(m.params);
    if (auto ds = ctx.params.find("ds"); ds != ctx.params.end()) ctx.datastore_id = ds->second;
    std::optional<Response> denied;
    if (authorizer_) denied = authorizer_(request, &ctx);
    // Handler exceptions propagate on purpose: the server turns them into a 500 for every caller alike.
    Response response = denied ? std::move(*denied) : m.route->handler(request, ctx);
    if (!response.headers.Has("X-Request-Id")) response.headers.Set("X-Request-Id", ctx.request_id);
    return response;
  }
  if (m.allowed.empty()) {
    return on_error_(request, 404, "Unknown route: " + request.method + " " + request.path);
  }
  std::string allow;
  for (const std::string& method : m.allowed) {
    if (!allow.empty()) allow += ", ";
    allow += method;
  }
  Response response = on_error_(
      request, 405, "Method " + request.method + " is not allowed on " + request.path + "; allowed: " + allow);
  response.headers.Set("Allow", allow);
  return response;
}

}  // namespace fhirlake::http
