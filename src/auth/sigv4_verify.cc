#include "auth/sigv4_verify.h"

#include <openssl/crypto.h>

#include <algorithm>
#include <cctype>
#include <ctime>
#include <vector>

namespace fhirlake::auth {
namespace {

constexpr std::string_view kAlgorithm = "AWS4-HMAC-SHA256";

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

std::vector<std::string_view> Split(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  while (true) {
    size_t p = s.find(sep);
    out.push_back(s.substr(0, p));
    if (p == std::string_view::npos) return out;
    s.remove_prefix(p + 1);
  }
}

// "20150830T123600Z" -> epoch ms; nullopt when malformed.
std::optional<EpochMillis> ParseAmzDate(std::string_view s) {
  if (s.size() != 16 || s[8] != 'T' || s[15] != 'Z') return std::nullopt;
  for (size_t i = 0; i < 15; ++i) {
    if (i != 8 && !std::isdigit(static_cast<unsigned char>(s[i]))) return std::nullopt;
  }
  auto num = [&](size_t at, size_t n) { return std::stoi(std::string(s.substr(at, n))); };
  std::tm tm{};
  tm.tm_year = num(0, 4) - 1900;
  tm.tm_mon = num(4, 2) - 1;
  tm.tm_mday = num(6, 2);
  tm.tm_hour = num(9, 2);
  tm.tm_min = num(11, 2);
  tm.tm_sec = num(13, 2);
  if (tm.tm_mon > 11 || tm.tm_mday < 1 || tm.tm_mday > 31 || tm.tm_hour > 23 || tm.tm_min > 59 || tm.tm_sec > 60) {
    return std::nullopt;
  }
  return static_cast<EpochMillis>(timegm(&tm)) * 1000;
}

bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

struct Parsed {
  std::string access_key;
  std::string date;  // credential scope date, 8 digits
  std::string region;
  std::string service;
  std::vector<std::string> signed_headers;  // lowercase, as listed
  std::string signature;
  std::string amz_date;
  std::optional<int64_t> expires_s;  // presigned only
  bool presigned = false;
};

Status Bad(const std::string& why) { return Status::Forbidden("The request signature is not valid: " + why); }

Status ParseCredential(std::string_view credential, Parsed* p) {
  auto parts = Split(credential, '/');
  if (parts.size() != 5 || parts[4] != "aws4_request" || parts[0].empty()) {
    return Bad("the Credential must be <access key id>/<date>/<region>/<service>/aws4_request");
  }
  p->access_key = std::string(parts[0]);
  p->date = std::string(parts[1]);
  p->region = std::string(parts[2]);
  p->service = std::string(parts[3]);
  return Status::Ok();
}

Status ParseSignedHeaders(std::string_view list, Parsed* p) {
  for (std::string_view h : Split(list, ';')) {
    if (h.empty()) return Bad("SignedHeaders has an empty name");
    p->signed_headers.push_back(Lower(h));
  }
  return Status::Ok();
}

Result<Parsed> ParseHeaderForm(std::string_view auth) {
  Parsed p;
  if (!auth.starts_with(kAlgorithm) || auth.size() == kAlgorithm.size() || auth[kAlgorithm.size()] != ' ') {
    return Bad("the Authorization header must start with AWS4-HMAC-SHA256");
  }
  auth.remove_prefix(kAlgorithm.size() + 1);
  bool cred = false, sh = false, sig = false;
  for (std::string_view item : Split(auth, ',')) {
    item = Trim(item);
    size_t eq = item.find('=');
    if (eq == std::string_view::npos) return Bad("the Authorization header has a part without '='");
    std::string_view k = item.substr(0, eq), v = item.substr(eq + 1);
    if (k == "Credential") {
      RETURN_IF_ERROR(ParseCredential(v, &p));
      cred = true;
    } else if (k == "SignedHeaders") {
      RETURN_IF_ERROR(ParseSignedHeaders(v, &p));
      sh = true;
    } else if (k == "Signature") {
      p.signature = std::string(v);
      sig = true;
    } else {
      return Bad("the Authorization header has an unknown part '" + std::string(k) + "'");
    }
  }
  if (!cred || !sh || !sig) return Bad("the Authorization header needs Credential, SignedHeaders and Signature");
  return p;
}

}  // namespace

bool HasSigV4(const http::Request& request) {
  if (request.headers.Get("Authorization").starts_with(kAlgorithm)) return true;
  return request.QueryValue("X-Amz-Algorithm") != nullptr || request.QueryValue("X-Amz-Signature") != nullptr;
}

std::string CanonicalUriOfWirePath(std::string_view wire_path) {
  if (wire_path.empty()) return "/";
  std::vector<std::string_view> out;
  for (std::string_view seg : Split(wire_path, '/')) {
    if (seg.empty() || seg == ".") continue;
    if (seg == "..") {
      if (!out.empty()) out.pop_back();
      continue;
    }
    out.push_back(seg);
  }
  std::string path = wire_path.front() == '/' ? "/" : "";
  for (size_t i = 0; i < out.size(); ++i) {
    if (i) path += "/";
    path += out[i];
  }
  if (wire_path.back() == '/' && !out.empty()) path += "/";
  return sink::UriEncode(path, /*encode_slash=*/false);
}

Result<std::string> VerifySigV4(const http::Request& request, const SigV4Options& options, EpochMillis now,
                                const CredentialLookup& lookup) {
  const std::string_view auth = request.headers.Get("Authorization");
  const bool header_form = auth.starts_with(kAlgorithm);
  const bool query_form = request.QueryValue("X-Amz-Algorithm") != nullptr;
  if (!header_form && !query_form) {
    return Status::Unauthorized("The request is not signed: send it signed with AWS Signature Version 4 (service '" +
                                options.service + "', region '" + options.region + "')");
  }
  if (header_form && query_form) return Bad("it is signed both in the Authorization header and in the query");
  Parsed p;
  if (header_form) {
    ASSIGN_OR_RETURN(p, ParseHeaderForm(auth));
    p.amz_date = std::string(request.headers.Get("X-Amz-Date"));
    if (p.amz_date.empty()) return Bad("the X-Amz-Date header is missing");
    if (std::find(p.signed_headers.begin(), p.signed_headers.end(), "x-amz-date") == p.signed_headers.end()) {
      return Bad("x-amz-date must be a signed header");
    }
  } else {
    p.presigned = true;
    auto q = [&](std::string_view name) -> const std::string* { return request.QueryValue(name); };
    if (*q("X-Amz-Algorithm") != kAlgorithm) return Bad("X-Amz-Algorithm must be AWS4-HMAC-SHA256");
    for (const char* name :
         {"X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires", "X-Amz-SignedHeaders", "X-Amz-Signature"}) {
      if (q(name) == nullptr) return Bad(std::string("the presigned URL has no ") + name);
    }
    RETURN_IF_ERROR(ParseCredential(*q("X-Amz-Credential"), &p));
    RETURN_IF_ERROR(ParseSignedHeaders(*q("X-Amz-SignedHeaders"), &p));
    p.signature = *q("X-Amz-Signature");
    p.amz_date = *q("X-Amz-Date");
    const std::string& e = *q("X-Amz-Expires");
    if (e.empty() || e.size() > 9 || !std::all_of(e.begin(), e.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      return Bad("X-Amz-Expires must be a number of seconds");
    }
    p.expires_s = std::stoll(e);
    if (*p.expires_s < 1 || *p.expires_s > options.max_presign_seconds) {
      return Bad("X-Amz-Expires must be between 1 and " + std::to_string(options.max_presign_seconds) + " seconds");
    }
  }
  if (std::find(p.signed_headers.begin(), p.signed_headers.end(), "host") == p.signed_headers.end()) {
    return Bad("host must be a signed header");
  }
  if (!std::is_sorted(p.signed_headers.begin(), p.signed_headers.end())) {
    return Bad("SignedHeaders must be sorted lowercase names");
  }
  auto when = ParseAmzDate(p.amz_date);
  if (!when) return Bad("the request time '" + p.amz_date + "' is not of the form 20150830T123600Z");
  if (p.date != p.amz_date.substr(0, 8)) return Bad("the credential scope date is not the date of the request time");
  if (p.region != options.region) {
    return Bad("the credential scope names region '" + p.region + "'; this server is '" + options.region + "'");
  }
  if (p.service != options.service) {
    return Bad("the credential scope names service '" + p.service + "'; sign for '" + options.service + "'");
  }
  if (p.presigned) {
    if (now > *when + *p.expires_s * 1000) {
      return Bad("the presigned URL expired at " + FormatInstant(*when + *p.expires_s * 1000));
    }
    if (*when - now > options.max_skew_ms) return Bad("the request time is more than 15 minutes in the future");
  } else if (now - *when > options.max_skew_ms || *when - now > options.max_skew_ms) {
    return Bad("the request time " + FormatInstant(*when) + " is more than 15 minutes from the server's time " +
               FormatInstant(now) + " (check the client's clock)");
  }
  std::optional<sink::AwsCredentials> creds = lookup(p.access_key);
  if (!creds) return Status::Forbidden("The security token included in the request is invalid: unknown access key id");
  // Temporary credentials: the session token must come with the request (header or query) and match.
  if (!creds->session_token.empty()) {
    std::string_view token = request.headers.Get("X-Amz-Security-Token");
    if (p.presigned && token.empty() && request.QueryValue("X-Amz-Security-Token")) {
      token = *request.QueryValue("X-Amz-Security-Token");
    }
    if (!ConstantTimeEquals(token, creds->session_token)) {
      return Status::Forbidden(
          "The security token included in the request is invalid: the session token is missing "
          "or does not match");
    }
  }

  // AWS removes "." and ".." segments and empty ones before signing; the router trims leading and trailing slashes
  // but routes the rest as it is (an id "." or an empty segment in the middle stay). Where the two would differ, two
  // different requests would share one signature: such a path is refused instead of normalised.
  {
    std::string_view trimmed = std::string_view(request.target).substr(0, request.target.find('?'));
    while (trimmed.starts_with('/')) trimmed.remove_prefix(1);
    while (trimmed.ends_with('/')) trimmed.remove_suffix(1);
    bool ambiguous = trimmed.find("//") != std::string_view::npos;
    for (std::string_view seg : Split(trimmed, '/')) ambiguous = ambiguous || seg == "." || seg == "..";
    if (ambiguous) return Bad("a path with '.' or '..' segments, or '//' inside it, cannot be verified unambiguously");
  }
  sink::SigV4Request r;
  r.method = request.method;
  r.path = "/";  // replaced below: CanonicalRequest encodes a decoded path, AWS encodes the wire path once more
  for (const auto& q : request.query) {
    if (p.presigned && q.name == "X-Amz-Signature") continue;
    r.query.emplace_back(q.name, q.value);
  }
  for (const std::string& name : p.signed_headers) {
    bool found = false;
    for (const auto& [k, v] : request.headers.items()) {
      if (Lower(k) == name) {
        r.headers.emplace_back(name, v);
        found = true;
      }
    }
    if (!found) return Bad("the signed header '" + name + "' is not in the request");
  }
  const std::string body_hash = sink::Sha256Hex(request.body);
  if (std::string_view h = request.headers.Get("X-Amz-Content-SHA256"); !h.empty()) {
    if (h != body_hash) return Bad("X-Amz-Content-SHA256 is not the SHA-256 of the body");
  }
  r.payload_sha256 = body_hash;
  std::string canonical = sink::CanonicalRequest(r, /*double_encode_path=*/false);
  {
    const std::string_view wire_path = std::string_view(request.target).substr(0, request.target.find('?'));
    const size_t first = canonical.find('\n');
    const size_t second = canonical.find('\n', first + 1);
    canonical = canonical.substr(0, first + 1) + CanonicalUriOfWirePath(wire_path) + canonical.substr(second);
  }
  const std::string sts = sink::StringToSign(canonical, p.amz_date, p.region, p.service);
  const std::string expected = sink::Signature(*creds, sts, p.date, p.region, p.service);
  if (expected.empty() || !ConstantTimeEquals(expected, p.signature)) {
    return Status::Forbidden(
        "The request signature we calculated does not match the signature you provided. Check your AWS secret access "
        "key and signing method.");
  }
  return p.access_key;
}

}  // namespace fhirlake::auth
