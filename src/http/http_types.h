// The project's own HTTP request/response types. Beast stays inside http/ (server.cc); every other
// layer sees only these plain structs.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/url.h"

namespace fhirlake::http {

// Case-insensitive header list (names compared ASCII-case-insensitively; order preserved).
class Headers {
 public:
  void Add(std::string name, std::string value) { items_.emplace_back(std::move(name), std::move(value)); }
  // Replaces every header of that name with one value.
  void Set(std::string_view name, std::string value);
  // First value of the header, or empty view when absent.
  std::string_view Get(std::string_view name) const;
  bool Has(std::string_view name) const;
  const std::vector<std::pair<std::string, std::string>>& items() const { return items_; }

 private:
  std::vector<std::pair<std::string, std::string>> items_;
};

bool EqualsIgnoreCase(std::string_view a, std::string_view b);

struct QueryParam {
  std::string name;   // percent-decoded
  std::string value;  // percent-decoded ('+' is a space)
};

struct Request {
  std::string method;     // "GET", "POST", ... (upper case as sent)
  std::string target;     // raw request target, e.g. "/datastore/x/r4/Patient?name=a"
  std::string path;       // percent-decoded path without the query string
  std::string raw_query;  // the query string as sent (without '?')
  std::vector<QueryParam> query;
  Headers headers;
  std::string body;
  std::string remote_address;  // "127.0.0.1:53422"
  bool secure = false;         // it came over TLS

  // First value of a query parameter, or nullptr.
  const std::string* QueryValue(std::string_view name) const;
};

// A response body is either a string held in memory, or a streamed producer (for file downloads):
// the producer is called repeatedly and appends up to ~256 KiB per call; it returns false when done.
struct Response {
  int status = 200;
  Headers headers;
  std::string body;
  std::function<bool(std::string* chunk)> body_producer;  // when set, `body` is ignored and the
                                                          // response is sent chunked

  static Response Json(int status, std::string body, std::string_view content_type = "application/fhir+json");
};

using fhirlake::PercentDecode;  // common/url.h
// Splits "a=1&b=2" into decoded params.
std::vector<QueryParam> ParseQuery(std::string_view raw_query);

}  // namespace fhirlake::http
