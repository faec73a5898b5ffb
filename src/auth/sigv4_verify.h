// The server side of AWS Signature Version 4: verifies a request signed in the header form (Authorization:
// AWS4-HMAC-SHA256 ...) or the presigned-query form (X-Amz-Algorithm, X-Amz-Credential, ... X-Amz-Signature),
// exactly as AWS does for a non-S3 service: the canonical URI is the path as sent, normalised and URI-encoded once
// more; the canonical query is every parameter but X-Amz-Signature, decoded and encoded again, sorted; the signed
// headers must include host (and x-amz-date in the header form); the payload hash is SHA-256 of the body (an
// X-Amz-Content-SHA256 header must equal it); the request time must be within 15 minutes of the server's; a presigned
// URL is refused after X-Amz-Expires. The signature is compared in constant time.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "common/status.h"
#include "common/time.h"
#include "http/http_types.h"
#include "sink/sigv4.h"

namespace fhirlake::auth {

struct SigV4Options {
  std::string region;                    // the server's region: the credential scope must name it
  std::string service = "healthlake";    // the signing name
  int64_t max_skew_ms = 15 * 60 * 1000;  // AWS's window
  int64_t max_presign_seconds = 7 * 24 * 3600;
};

// Whether the request carries a SigV4 signature in either form (it may still be invalid).
bool HasSigV4(const http::Request& request);

// The credentials of an access key id, or nullopt when the key is unknown.
using CredentialLookup = std::function<std::optional<sink::AwsCredentials>(std::string_view access_key_id)>;

// Verifies the request's signature at `now`. Returns the access key id that signed it. kUnauthorized when it
// carries no signature; kForbidden with a reason a client can act on (unknown key, signature mismatch, expired,
// wrong scope, a required header not signed, ...), never a secret or the expected signature.
Result<std::string> VerifySigV4(const http::Request& request, const SigV4Options& options, EpochMillis now,
                                const CredentialLookup& lookup);

// The canonical URI of a path as sent on the wire (botocore's and AWS's normalisation: "." and ".." segments and
// empty segments removed, a trailing '/' kept, then URI-encoded with '/' kept).
std::string CanonicalUriOfWirePath(std::string_view wire_path);

}  // namespace fhirlake::auth
