// One route table for the whole server: (method, path pattern) -> handler. Patterns are '/'-separated
// segments; "{name}" captures one segment; every other segment matches literally. The first matching
// pattern wins, so specific routes ("Patient/$export") are registered before generic ones ("{type}/{id}").
// A path that matches some pattern but not with this method answers 405 with an Allow header.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "http/http_types.h"

namespace fhirlake::http {

using PathParams = std::map<std::string, std::string, std::less<>>;
using Handler = std::function<Response(const Request&, const PathParams&)>;
// Builds the error response for router-level failures (404 unknown route, 405 wrong method).
// status is 404 or 405; `message` is a human-readable diagnostics line.
using ErrorResponder = std::function<Response(const Request&, int status, const std::string& message)>;

class Router {
 public:
  explicit Router(ErrorResponder on_error) : on_error_(std::move(on_error)) {}

  // method "*" matches any method. Call before serving starts (not thread-safe with Dispatch).
  void Add(std::string method, std::string_view pattern, Handler handler);

  // Thread-safe after setup. Never throws: a handler's exception becomes a 500 via on_error-like path
  // in the server, not here.
  Response Dispatch(const Request& request) const;

 private:
  struct Route {
    std::string method;
    std::vector<std::string> segments;
    Handler handler;
  };
  static std::vector<std::string_view> Split(std::string_view path);
  std::vector<Route> routes_;
  ErrorResponder on_error_;
};

}  // namespace fhirlake::http
