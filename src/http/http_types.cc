// Plain HTTP request/response helpers: case-insensitive headers, percent-decoding and query parsing.
// Kept free of Beast so every layer can use them cheaply.
#include "http/http_types.h"

#include <algorithm>

namespace fhirlake::http {

namespace {

char AsciiLower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

}  // namespace

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (AsciiLower(a[i]) != AsciiLower(b[i])) return false;
  }
  return true;
}

void Headers::Set(std::string_view name, std::string value) {
  // Keep the position of the first occurrence so the header order stays stable for the client.
  auto first =
      std::find_if(items_.begin(), items_.end(), [&](const auto& h) { return EqualsIgnoreCase(h.first, name); });
  if (first == items_.end()) {
    items_.emplace_back(std::string(name), std::move(value));
    return;
  }
  first->second = std::move(value);
  items_.erase(
      std::remove_if(std::next(first), items_.end(), [&](const auto& h) { return EqualsIgnoreCase(h.first, name); }),
      items_.end());
}

std::string_view Headers::Get(std::string_view name) const {
  for (const auto& [n, v] : items_) {
    if (EqualsIgnoreCase(n, name)) return v;
  }
  return {};
}

bool Headers::Has(std::string_view name) const {
  return std::any_of(items_.begin(), items_.end(), [&](const auto& h) { return EqualsIgnoreCase(h.first, name); });
}

const std::string* Request::QueryValue(std::string_view name) const {
  for (const auto& p : query) {
    if (p.name == name) return &p.value;
  }
  return nullptr;
}

Response Response::Json(int status, std::string body, std::string_view content_type) {
  Response r;
  r.status = status;
  r.headers.Set("Content-Type", std::string(content_type));
  r.body = std::move(body);
  return r;
}

std::vector<QueryParam> ParseQuery(std::string_view raw_query) {
  std::vector<QueryParam> params;
  size_t pos = 0;
  while (pos <= raw_query.size()) {
    size_t amp = raw_query.find('&', pos);
    if (amp == std::string_view::npos) amp = raw_query.size();
    std::string_view pair = raw_query.substr(pos, amp - pos);
    // Empty pairs ("a=1&&b=2", a trailing '&') carry nothing; skip them rather than emit a nameless param.
    if (!pair.empty()) {
      size_t eq = pair.find('=');
      QueryParam p;
      if (eq == std::string_view::npos) {
        p.name = PercentDecode(pair, true);  // "?flag" -> name "flag", empty value
      } else {
        p.name = PercentDecode(pair.substr(0, eq), true);
        p.value = PercentDecode(pair.substr(eq + 1), true);
      }
      params.push_back(std::move(p));
    }
    pos = amp + 1;
  }
  return params;
}

}  // namespace fhirlake::http
