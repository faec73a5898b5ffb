// AWS Signature Version 4 (header-based, single-chunk payload): the canonical request, the string to sign and
// the Authorization header an S3 client sends to AWS S3 or Ceph RGW. Pure functions over strings; the HTTP
// transport (libcurl) lives elsewhere and only has to send the headers this leaves in the request.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/time.h"  // EpochMillis

namespace fhirlake::sink {

// Long-term (access key) or temporary (STS, with session_token) credentials.
struct AwsCredentials {
  std::string access_key_id;
  std::string secret_access_key;
  std::string session_token;  // empty for long-term credentials
};

// A request as it will go on the wire, before the Authorization header is added.
struct SigV4Request {
  std::string method;  // "GET", "PUT", ...
  // The raw (decoded) path, e.g. "/bucket/a key/ü.ndjson"; encoded by the signer. Send the path on the wire as
  // UriEncode(path, /*encode_slash=*/false) so that it matches what was signed.
  std::string path;
  // Decoded names/values, any order, repeats allowed. A parameter without a value ("?lifecycle") is {"lifecycle", ""}.
  // Send each as UriEncode(name, true) + "=" + UriEncode(value, true).
  std::vector<std::pair<std::string, std::string>> query;
  // As they will be sent, including Host and X-Amz-Date. Every header here is signed except an Authorization header
  // (ignored, so a request can be signed again). Names are case-insensitive; a repeated name is signed as one header
  // whose values are joined with ',' in the order given.
  std::vector<std::pair<std::string, std::string>> headers;
  std::string payload_sha256;  // lowercase hex of the body, or "UNSIGNED-PAYLOAD"
};

// Lowercase hex SHA-256 of `data`. Empty only if OpenSSL fails (out of memory), which makes the signature invalid.
std::string Sha256Hex(std::string_view data);

// HMAC-SHA256 of `data` under `key`: the 32 raw bytes (not hex). Empty only if OpenSSL fails.
std::string HmacSha256(std::string_view key, std::string_view data);

// RFC 3986 encoding as SigV4 wants it: unreserved A-Za-z0-9-._~ kept, everything else %XX (uppercase hex), byte by
// byte (so UTF-8 characters become one %XX per byte); '/' kept when !encode_slash.
std::string UriEncode(std::string_view s, bool encode_slash);

// The X-Amz-Date value for `ms` (UTC, seconds truncated): "20150830T123600Z". Its first 8 characters, "20150830", are
// the date of the credential scope.
std::string AmzDate(EpochMillis ms);

// The canonical request: method, canonical URI, canonical query string, canonical headers, signed headers and the
// payload hash, separated by '\n'.
//
// Canonical URI: with double_encode_path (every service but S3) the path is normalised first ("." and ".." segments
// and empty segments from duplicate slashes removed; a trailing slash kept) and each segment is encoded twice: the
// path as sent on the wire, UriEncode(path), is encoded again. For S3 pass double_encode_path=false: the path is
// neither normalised nor re-encoded, only UriEncode(path, false) once. An empty path is "/".
// Query: names and values UriEncode'd (with '/' encoded), sorted by encoded name then encoded value, "name=value"
// joined with '&' ("name=" when the value is empty).
// Headers: lowercase names sorted; values trimmed, runs of inner spaces/tabs collapsed to one space, repeated names
// joined with ','; each as "name:value\n". Signed headers: the sorted names joined with ';'.
std::string CanonicalRequest(const SigV4Request& r, bool double_encode_path = true);  // S3: double_encode_path=false

// "AWS4-HMAC-SHA256\n<amz_date>\n<date>/<region>/<service>/aws4_request\n<Sha256Hex(canonical_request)>", where
// <date> is the first 8 characters of amz_date.
std::string StringToSign(std::string_view canonical_request, std::string_view amz_date, std::string_view region,
                         std::string_view service);

// The lowercase hex signature of `string_to_sign` under the signing key derived from the secret key: HMAC chain
// "AWS4" + secret -> date -> region -> service -> "aws4_request". `date` is "20150830" (an X-Amz-Date such as
// "20150830T123600Z" is accepted too: only its first 8 characters are used).
std::string Signature(const AwsCredentials& c, std::string_view string_to_sign, std::string_view date,
                      std::string_view region, std::string_view service);

// The full Authorization header value: "AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/service/aws4_request,
// SignedHeaders=host;x-amz-date, Signature=<64 hex>". `amz_date` must equal the X-Amz-Date header in r.headers.
std::string AuthorizationHeader(const SigV4Request& r, const AwsCredentials& c, std::string_view amz_date,
                                std::string_view region, std::string_view service, bool double_encode_path = true);

// Convenience for S3 (service "s3", single path encoding): sets x-amz-date (AmzDate(now)), x-amz-content-sha256
// (= r->payload_sha256; an empty payload_sha256 is first set to "UNSIGNED-PAYLOAD") and, when the credentials have a
// session token, x-amz-security-token in r->headers, then appends the Authorization header. Headers of those names
// already in r->headers (any case) are replaced, so a request can be re-signed for a retry. r->headers must already
// hold Host (and every other header that will be sent and should be signed, e.g. Content-Type, Range).
void SignS3Request(SigV4Request* r, const AwsCredentials& c, std::string_view region, EpochMillis now);

}  // namespace fhirlake::sink
