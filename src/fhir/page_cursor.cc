// Page cursor encoding: base64url (RFC 4648 §5) without padding over a short versioned text.
#include "fhir/page_cursor.h"

#include <charconv>

namespace fhirlake::fhir {
namespace {

constexpr std::string_view kAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
constexpr std::string_view kVersion = "v1";
constexpr size_t kMaxTokenChars = 128;  // far more than any cursor this server makes

std::string Base64UrlEncode(std::string_view in) {
  std::string out;
  out.reserve((in.size() * 4 + 2) / 3);
  uint32_t bits = 0;
  int nbits = 0;
  for (unsigned char c : in) {
    bits = (bits << 8) | c;
    nbits += 8;
    while (nbits >= 6) {
      nbits -= 6;
      out.push_back(kAlphabet[(bits >> nbits) & 0x3f]);
    }
  }
  if (nbits > 0) out.push_back(kAlphabet[(bits << (6 - nbits)) & 0x3f]);
  return out;
}

// False for characters outside the alphabet, padding, a length no encoding has, or non-zero unused bits (so each
// cursor has exactly one spelling).
bool Base64UrlDecode(std::string_view in, std::string* out) {
  if (in.size() % 4 == 1) return false;
  uint32_t bits = 0;
  int nbits = 0;
  for (char c : in) {
    size_t v = kAlphabet.find(c);
    if (v == std::string_view::npos) return false;
    bits = (bits << 6) | static_cast<uint32_t>(v);
    nbits += 6;
    if (nbits >= 8) {
      nbits -= 8;
      out->push_back(static_cast<char>((bits >> nbits) & 0xff));
    }
  }
  return (bits & ((1u << nbits) - 1)) == 0;
}

Status BadCursor(std::string_view why) {
  return Status::Invalid("The page cursor is not valid (" + std::string(why) +
                         "); use the 'page' value of a next link this server returned, or leave it out to start at "
                         "the first page");
}

}  // namespace

std::string EncodePageCursor(std::string_view scope, int64_t key) {
  return Base64UrlEncode(std::string(kVersion) + ":" + std::string(scope) + ":" + std::to_string(key));
}

Result<int64_t> DecodePageCursor(std::string_view token, std::string_view scope) {
  std::string text;
  if (token.empty() || token.size() > kMaxTokenChars || !Base64UrlDecode(token, &text)) {
    return BadCursor("not a cursor");
  }
  std::string_view rest = text;
  if (!rest.starts_with(kVersion) || rest.substr(kVersion.size(), 1) != ":") return BadCursor("unknown format");
  rest.remove_prefix(kVersion.size() + 1);
  size_t colon = rest.find(':');
  if (colon == std::string_view::npos) return BadCursor("unknown format");
  if (rest.substr(0, colon) != scope) return BadCursor("it belongs to another kind of read");
  std::string_view digits = rest.substr(colon + 1);
  int64_t key = -1;
  auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), key);
  if (digits.empty() || ec != std::errc() || ptr != digits.data() + digits.size() || key < 0 ||
      (digits.size() > 1 && digits[0] == '0')) {
    return BadCursor("bad position");
  }
  return key;
}

std::string EncodePageCursorText(std::string_view scope, std::string_view key) {
  return Base64UrlEncode(std::string(kVersion) + ":" + std::string(scope) + ":" + std::string(key));
}

Result<std::string> DecodePageCursorText(std::string_view token, std::string_view scope) {
  std::string text;
  if (token.empty() || token.size() > (kMaxTextKeyBytes + 64) * 4 / 3 + 4 || !Base64UrlDecode(token, &text)) {
    return BadCursor("not a cursor");
  }
  std::string_view rest = text;
  if (!rest.starts_with(kVersion) || rest.substr(kVersion.size(), 1) != ":") return BadCursor("unknown format");
  rest.remove_prefix(kVersion.size() + 1);
  size_t colon = rest.find(':');
  if (colon == std::string_view::npos) return BadCursor("unknown format");
  if (rest.substr(0, colon) != scope) return BadCursor("it belongs to another kind of read");
  return std::string(rest.substr(colon + 1));
}

}  // namespace fhirlake::fhir
