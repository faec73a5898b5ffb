// Names and formatting for Status codes.
#include "common/status.h"

namespace fhirlake {

std::string_view StatusCodeName(StatusCode code) {
  switch (code) {
    case StatusCode::kOk:
      return "OK";
    case StatusCode::kInvalid:
      return "Invalid";
    case StatusCode::kNotFound:
      return "NotFound";
    case StatusCode::kGone:
      return "Gone";
    case StatusCode::kConflict:
      return "Conflict";
    case StatusCode::kPreconditionFailed:
      return "PreconditionFailed";
    case StatusCode::kUnsupportedMediaType:
      return "UnsupportedMediaType";
    case StatusCode::kPayloadTooLarge:
      return "PayloadTooLarge";
    case StatusCode::kMethodNotAllowed:
      return "MethodNotAllowed";
    case StatusCode::kNotSupported:
      return "NotSupported";
    case StatusCode::kUnauthorized:
      return "Unauthorized";
    case StatusCode::kForbidden:
      return "Forbidden";
    case StatusCode::kTooManyRequests:
      return "TooManyRequests";
    case StatusCode::kInsufficientStorage:
      return "InsufficientStorage";
    case StatusCode::kUnavailable:
      return "Unavailable";
    case StatusCode::kInternal:
      return "Internal";
  }
  return "Unknown";
}

std::string Status::ToString() const {
  if (ok()) return "OK";
  std::string s(StatusCodeName(code_));
  s += ": ";
  s += message_;
  return s;
}

Status Status::WithContext(std::string_view context) const {
  if (ok()) return *this;
  std::string m(context);
  m += ": ";
  m += message_;
  return Status(code_, std::move(m));
}

}  // namespace fhirlake
