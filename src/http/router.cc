// The route table: matches a request's decoded path against '/'-separated patterns with "{name}" captures,
// picks the first route whose method also matches, and produces 404/405 through the ErrorResponder.
#include "http/router.h"

#include <algorithm>

namespace fhirlake::http {

namespace {

bool IsCapture(std::string_view segment) {
  return segment.size() >= 2 && segment.front() == '{' && segment.back() == '}';
}

// HEAD is answered by GET routes (the server drops the body), so callers need not register HEAD twice.
bool MethodMatches(std::string_view route_method, std::string_view request_method) {
  return route_method == "*" || route_method == request_method || (request_method == "HEAD" && route_method == "GET");
}

}  // namespace

std::vector<std::string_view> Router::Split(std::string_view path) {
  // Leading and trailing slashes carry no meaning ("/Patient/" == "Patient"), but an empty segment in the
  // middle ("a//b") is kept so it can never be captured as an empty id.
  size_t begin = path.find_first_not_of('/');
  if (begin == std::string_view::npos) return {};
  size_t end = path.find_last_not_of('/');
  path = path.substr(begin, end - begin + 1);

  std::vector<std::string_view> segments;
  size_t pos = 0;
  while (true) {
    size_t slash = path.find('/', pos);
    if (slash == std::string_view::npos) {
      segments.push_back(path.substr(pos));
      break;
    }
    segments.push_back(path.substr(pos, slash - pos));
    pos = slash + 1;
  }
  return segments;
}

void Router::Add(std::string method, std::string_view pattern, Handler handler) {
  Route route;
  route.method = std::move(method);
  for (std::string_view segment : Split(pattern)) route.segments.emplace_back(segment);
  route.handler = std::move(handler);
  routes_.push_back(std::move(route));
}

Response Router::Dispatch(const Request& request) const {
  const std::vector<std::string_view> segments = Split(request.path);
  std::vector<std::string> allowed;  // methods of routes whose path matched, in registration order
  PathParams params;

  for (const Route& route : routes_) {
    if (route.segments.size() != segments.size()) continue;
    params.clear();
    bool path_matches = true;
    for (size_t i = 0; i < segments.size() && path_matches; ++i) {
      const std::string& pattern = route.segments[i];
      if (segments[i].empty()) {
        path_matches = false;  // "a//b": neither a literal nor a capture accepts an empty segment
      } else if (IsCapture(pattern)) {
        params.emplace(pattern.substr(1, pattern.size() - 2), std::string(segments[i]));
      } else {
        path_matches = pattern == segments[i];
      }
    }
    if (!path_matches) continue;
    if (MethodMatches(route.method, request.method)) {
      // Handler exceptions propagate on purpose: the server turns them into a 500 for every caller alike.
      return route.handler(request, params);
    }
    if (std::find(allowed.begin(), allowed.end(), route.method) == allowed.end()) allowed.push_back(route.method);
  }

  if (allowed.empty()) {
    return on_error_(request, 404, "Unknown route: " + request.method + " " + request.path);
  }
  std::string allow;
  for (const std::string& m : allowed) {
    if (!allow.empty()) allow += ", ";
    allow += m;
  }
  Response response = on_error_(
      request, 405, "Method " + request.method + " is not allowed on " + request.path + "; allowed: " + allow);
  response.headers.Set("Allow", allow);
  return response;
}

}  // namespace fhirlake::http
