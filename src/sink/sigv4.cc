// AWS Signature Version 4: canonical request, string to sign, signing-key derivation and the Authorization header.
// Hashing and HMAC use OpenSSL 3's non-deprecated one-shot EVP_Digest() and HMAC().
#include "sink/sigv4.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <algorithm>
#include <climits>
#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace fhirlake::sink {
namespace {

constexpr std::string_view kAlgorithm = "AWS4-HMAC-SHA256";
constexpr std::string_view kTerminator = "aws4_request";
constexpr char kHexUpper[] = "0123456789ABCDEF";
constexpr char kHexLower[] = "0123456789abcdef";

// Never hands OpenSSL a null pointer (an empty string_view may hold one): HMAC() treats a null key specially.
const unsigned char* Bytes(std::string_view s) {
  static const unsigned char kNothing = 0;
  return s.empty() ? &kNothing : reinterpret_cast<const unsigned char*>(s.data());
}

std::string HexLower(const unsigned char* p, size_t n) {
  std::string out;
  out.reserve(n * 2);
  for (size_t i = 0; i < n; ++i) {
    out.push_back(kHexLower[p[i] >> 4]);
    out.push_back(kHexLower[p[i] & 0x0F]);
  }
  return out;
}

bool IsUnreserved(unsigned char ch) {
  return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' || ch == '.' ||
         ch == '_' || ch == '~';
}

char AsciiLower(char ch) { return (ch >= 'A' && ch <= 'Z') ? static_cast<char>(ch - 'A' + 'a') : ch; }

std::string AsciiLower(std::string_view s) {
  std::string out(s);
  for (char& ch : out) ch = AsciiLower(ch);
  return out;
}

bool IsSpace(char ch) { return ch == ' ' || ch == '\t'; }

// Trims leading/trailing spaces and tabs and collapses each inner run of them to a single space.
std::string CanonicalHeaderValue(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  bool pending_space = false;
  for (char ch : v) {
    if (IsSpace(ch)) {
      pending_space = !out.empty();
      continue;
    }
    if (pending_space) out.push_back(' ');
    pending_space = false;
    out.push_back(ch);
  }
  return out;
}

// Every service but S3: "." and ".." segments and empty segments (duplicate slashes) removed, as in RFC 3986
// remove_dot_segments; a trailing slash is kept when the last segment was empty, "." or "..". Each remaining segment
// is then encoded twice: once for the wire form of the path, once more for the canonical URI.
std::string NormalizedDoubleEncodedPath(std::string_view path) {
  if (!path.empty() && path.front() == '/') path.remove_prefix(1);
  std::vector<std::string_view> segments;
  bool trailing_slash = false;
  size_t start = 0;
  while (true) {
    size_t slash = path.find('/', start);
    std::string_view seg = path.substr(start, slash == std::string_view::npos ? std::string_view::npos : slash - start);
    trailing_slash = seg.empty() || seg == "." || seg == "..";
    if (seg == "..") {
      if (!segments.empty()) segments.pop_back();
    } else if (!seg.empty() && seg != ".") {
      segments.push_back(seg);
    }
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  std::string out;
  for (std::string_view seg : segments) {
    out.push_back('/');
    out += UriEncode(UriEncode(seg, true), true);
  }
  if (out.empty() || trailing_slash) out.push_back('/');
  return out;
}

std::string CanonicalUri(std::string_view path, bool double_encode_path) {
  if (double_encode_path) return NormalizedDoubleEncodedPath(path);
  if (path.empty()) return "/";
  return UriEncode(path, false);
}

std::string CanonicalQuery(const std::vector<std::pair<std::string, std::string>>& query) {
  std::vector<std::pair<std::string, std::string>> encoded;
  encoded.reserve(query.size());
  for (const auto& [name, value] : query) encoded.emplace_back(UriEncode(name, true), UriEncode(value, true));
  std::sort(encoded.begin(), encoded.end());
  std::string out;
  for (const auto& [name, value] : encoded) {
    if (!out.empty()) out.push_back('&');
    out += name;
    out.push_back('=');
    out += value;
  }
  return out;
}

// The canonical request, with the signed-header list (also part of it) returned through `signed_headers`.
std::string BuildCanonicalRequest(const SigV4Request& r, bool double_encode_path, std::string* signed_headers) {
  std::vector<std::pair<std::string, std::string>> headers;
  headers.reserve(r.headers.size());
  for (const auto& [name, value] : r.headers) {
    std::string lower = AsciiLower(name);
    if (lower == "authorization") continue;
    headers.emplace_back(std::move(lower), CanonicalHeaderValue(value));
  }
  // Stable: the values of a repeated header keep the order in which they were given.
  std::stable_sort(headers.begin(), headers.end(), [](const auto& a, const auto& b) { return a.first < b.first; });

  std::string canonical_headers;
  signed_headers->clear();
  for (size_t i = 0; i < headers.size(); ++i) {
    if (i > 0 && headers[i].first == headers[i - 1].first) {
      canonical_headers.pop_back();  // the '\n' of the previous value of this header
      canonical_headers.push_back(',');
    } else {
      if (!signed_headers->empty()) signed_headers->push_back(';');
      *signed_headers += headers[i].first;
      canonical_headers += headers[i].first;
      canonical_headers.push_back(':');
    }
    canonical_headers += headers[i].second;
    canonical_headers.push_back('\n');
  }

  std::string out;
  out += r.method;
  out.push_back('\n');
  out += CanonicalUri(r.path, double_encode_path);
  out.push_back('\n');
  out += CanonicalQuery(r.query);
  out.push_back('\n');
  out += canonical_headers;
  out.push_back('\n');
  out += *signed_headers;
  out.push_back('\n');
  out += r.payload_sha256;
  return out;
}

std::string_view DatePart(std::string_view date_or_amz_date) { return date_or_amz_date.substr(0, 8); }

bool HeaderNamed(std::string_view name, std::string_view lower) {
  if (name.size() != lower.size()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    if (AsciiLower(name[i]) != lower[i]) return false;
  }
  return true;
}

}  // namespace

std::string Sha256Hex(std::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(Bytes(data), data.size(), md, &len, EVP_sha256(), nullptr) != 1) return {};
  return HexLower(md, len);
}

std::string HmacSha256(std::string_view key, std::string_view data) {
  if (key.size() > static_cast<size_t>(INT_MAX)) return {};
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (HMAC(EVP_sha256(), Bytes(key), static_cast<int>(key.size()), Bytes(data), data.size(), md, &len) == nullptr) {
    return {};
  }
  return std::string(reinterpret_cast<const char*>(md), len);
}

std::string UriEncode(std::string_view s, bool encode_slash) {
  std::string out;
  out.reserve(s.size() * 3);
  for (char ch : s) {
    const auto byte = static_cast<unsigned char>(ch);
    if (IsUnreserved(byte) || (ch == '/' && !encode_slash)) {
      out.push_back(ch);
    } else {
      out.push_back('%');
      out.push_back(kHexUpper[byte >> 4]);
      out.push_back(kHexUpper[byte & 0x0F]);
    }
  }
  return out;
}

std::string AmzDate(EpochMillis ms) {
  // FormatInstant gives "2015-08-30T12:36:00.000Z"; SigV4 wants the basic ISO 8601 form "20150830T123600Z".
  std::string out;
  for (char ch : FormatInstant(ms)) {
    if (ch == '.') break;
    if (ch != '-' && ch != ':') out.push_back(ch);
  }
  out.push_back('Z');
  return out;
}

std::string CanonicalRequest(const SigV4Request& r, bool double_encode_path) {
  std::string signed_headers;
  return BuildCanonicalRequest(r, double_encode_path, &signed_headers);
}

namespace {

// "20150830/us-east-1/service/aws4_request"
std::string CredentialScope(std::string_view amz_date, std::string_view region, std::string_view service) {
  std::string out(DatePart(amz_date));
  out.push_back('/');
  out += region;
  out.push_back('/');
  out += service;
  out.push_back('/');
  out += kTerminator;
  return out;
}

}  // namespace

std::string StringToSign(std::string_view canonical_request, std::string_view amz_date, std::string_view region,
                         std::string_view service) {
  std::string out;
  out += kAlgorithm;
  out.push_back('\n');
  out += amz_date;
  out.push_back('\n');
  out += CredentialScope(amz_date, region, service);
  out.push_back('\n');
  out += Sha256Hex(canonical_request);
  return out;
}

std::string Signature(const AwsCredentials& c, std::string_view string_to_sign, std::string_view date,
                      std::string_view region, std::string_view service) {
  std::string key = HmacSha256("AWS4" + c.secret_access_key, DatePart(date));
  key = HmacSha256(key, region);
  key = HmacSha256(key, service);
  key = HmacSha256(key, kTerminator);
  const std::string mac = HmacSha256(key, string_to_sign);
  return HexLower(reinterpret_cast<const unsigned char*>(mac.data()), mac.size());
}

std::string AuthorizationHeader(const SigV4Request& r, const AwsCredentials& c, std::string_view amz_date,
                                std::string_view region, std::string_view service, bool double_encode_path) {
  std::string signed_headers;
  const std::string canonical_request = BuildCanonicalRequest(r, double_encode_path, &signed_headers);
  const std::string string_to_sign = StringToSign(canonical_request, amz_date, region, service);
  std::string out;
  out += kAlgorithm;
  out += " Credential=";
  out += c.access_key_id;
  out.push_back('/');
  out += CredentialScope(amz_date, region, service);
  out += ", SignedHeaders=";
  out += signed_headers;
  out += ", Signature=";
  out += Signature(c, string_to_sign, amz_date, region, service);
  return out;
}

void SignS3Request(SigV4Request* r, const AwsCredentials& c, std::string_view region, EpochMillis now) {
  if (r->payload_sha256.empty()) r->payload_sha256 = "UNSIGNED-PAYLOAD";
  std::erase_if(r->headers, [](const auto& h) {
    return HeaderNamed(h.first, "x-amz-date") || HeaderNamed(h.first, "x-amz-content-sha256") ||
           HeaderNamed(h.first, "x-amz-security-token") || HeaderNamed(h.first, "authorization");
  });
  const std::string amz_date = AmzDate(now);
  r->headers.emplace_back("x-amz-date", amz_date);
  r->headers.emplace_back("x-amz-content-sha256", r->payload_sha256);
  if (!c.session_token.empty()) r->headers.emplace_back("x-amz-security-token", c.session_token);
  std::string authorization = AuthorizationHeader(*r, c, amz_date, region, "s3", /*double_encode_path=*/false);
  r->headers.emplace_back("Authorization", std::move(authorization));
}

}  // namespace fhirlake::sink
