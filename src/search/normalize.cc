// Normalisation of search values (normalize.h): one implementation for the stored side and the query side.
#include "search/normalize.h"

#include <charconv>
#include <cmath>
#include <cstddef>

namespace fhirlake::search {
namespace {

// Folds of U+00C0 .. U+017F (Latin-1 Supplement letters and Latin Extended-A): the base letters, lower case.
// nullptr: the code point passes unchanged (× and ÷).
// clang-format off
constexpr const char* kLatinFold[0x180 - 0xC0] = {
    // U+00C0: À Á Â Ã Ä Å Æ Ç È É Ê Ë Ì Í Î Ï
    "a", "a", "a", "a", "a", "a", "ae", "c", "e", "e", "e", "e", "i", "i", "i", "i",
    // U+00D0: Ð Ñ Ò Ó Ô Õ Ö × Ø Ù Ú Û Ü Ý Þ ß
    "d", "n", "o", "o", "o", "o", "o", nullptr, "o", "u", "u", "u", "u", "y", "th", "ss",
    // U+00E0: à á â ã ä å æ ç è é ê ë ì í î ï
    "a", "a", "a", "a", "a", "a", "ae", "c", "e", "e", "e", "e", "i", "i", "i", "i",
    // U+00F0: ð ñ ò ó ô õ ö ÷ ø ù ú û ü ý þ ÿ
    "d", "n", "o", "o", "o", "o", "o", nullptr, "o", "u", "u", "u", "u", "y", "th", "y",
    // U+0100: Ā ā Ă ă Ą ą Ć ć Ĉ ĉ Ċ ċ Č č Ď ď
    "a", "a", "a", "a", "a", "a", "c", "c", "c", "c", "c", "c", "c", "c", "d", "d",
    // U+0110: Đ đ Ē ē Ĕ ĕ Ė ė Ę ę Ě ě Ĝ ĝ Ğ ğ
    "d", "d", "e", "e", "e", "e", "e", "e", "e", "e", "e", "e", "g", "g", "g", "g",
    // U+0120: Ġ ġ Ģ ģ Ĥ ĥ Ħ ħ Ĩ ĩ Ī ī Ĭ ĭ Į į
    "g", "g", "g", "g", "h", "h", "h", "h", "i", "i", "i", "i", "i", "i", "i", "i",
    // U+0130: İ ı Ĳ ĳ Ĵ ĵ Ķ ķ ĸ Ĺ ĺ Ļ ļ Ľ ľ Ŀ
    "i", "i", "ij", "ij", "j", "j", "k", "k", "k", "l", "l", "l", "l", "l", "l", "l",
    // U+0140: ŀ Ł ł Ń ń Ņ ņ Ň ň ŉ Ŋ ŋ Ō ō Ŏ ŏ
    "l", "l", "l", "n", "n", "n", "n", "n", "n", "n", "n", "n", "o", "o", "o", "o",
    // U+0150: Ő ő Œ œ Ŕ ŕ Ŗ ŗ Ř ř Ś ś Ŝ ŝ Ş ş
    "o", "o", "oe", "oe", "r", "r", "r", "r", "r", "r", "s", "s", "s", "s", "s", "s",
    // U+0160: Š š Ţ ţ Ť ť Ŧ ŧ Ũ ũ Ū ū Ŭ ŭ Ů ů
    "s", "s", "t", "t", "t", "t", "t", "t", "u", "u", "u", "u", "u", "u", "u", "u",
    // U+0170: Ű ű Ų ų Ŵ ŵ Ŷ ŷ Ÿ Ź ź Ż ż Ž ž ſ
    "u", "u", "u", "u", "w", "w", "y", "y", "y", "z", "z", "z", "z", "z", "z", "s",
};
// clang-format on

bool IsAsciiSpace(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

// Parses exactly `n` digits at s[pos]; -1 when they are not all digits or the string is too short.
int Digits(std::string_view s, size_t pos, size_t n) {
  if (pos + n > s.size()) return -1;
  int v = 0;
  for (size_t i = 0; i < n; ++i) {
    char c = s[pos + i];
    if (c < '0' || c > '9') return -1;
    v = v * 10 + (c - '0');
  }
  return v;
}

bool IsLeap(int y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

int DaysInMonth(int y, int m) {
  static constexpr int kDays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  return m == 2 && IsLeap(y) ? 29 : kDays[m - 1];
}

// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
int64_t DaysFromCivil(int64_t y, int m, int d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const int64_t yoe = y - era * 400;
  const int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

constexpr int64_t kMsPerDay = 86400000;

}  // namespace

std::string NormalizeString(std::string_view value) {
  std::string out;
  out.reserve(value.size());
  bool pending_space = false;
  auto put = [&](std::string_view s) {
    if (pending_space && !out.empty()) out.push_back(' ');
    pending_space = false;
    out.append(s);
  };
  for (size_t i = 0; i < value.size();) {
    const auto c = static_cast<unsigned char>(value[i]);
    if (c < 0x80) {
      if (IsAsciiSpace(c)) {
        pending_space = true;
      } else {
        const char lower = c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : static_cast<char>(c);
        put(std::string_view(&lower, 1));
      }
      ++i;
      continue;
    }
    // Two-byte sequences cover U+0080 .. U+07FF: the Latin ranges folded here, NBSP, and combining marks.
    if ((c & 0xE0) == 0xC0 && i + 1 < value.size() && (static_cast<unsigned char>(value[i + 1]) & 0xC0) == 0x80) {
      const unsigned cp = ((c & 0x1Fu) << 6) | (static_cast<unsigned char>(value[i + 1]) & 0x3Fu);
      if (cp >= 0x80) {    // not an overlong encoding
        if (cp == 0xA0) {  // no-break space
          pending_space = true;
          i += 2;
          continue;
        }
        if (cp >= 0x300 && cp <= 0x36F) {  // combining diacritical marks (decomposed accents): dropped
          i += 2;
          continue;
        }
        if (cp >= 0xC0 && cp < 0x180 && kLatinFold[cp - 0xC0] != nullptr) {
          put(kLatinFold[cp - 0xC0]);
          i += 2;
          continue;
        }
      }
      put(value.substr(i, 2));
      i += 2;
      continue;
    }
    // Any other lead byte (3- and 4-byte sequences, stray continuation bytes): copied byte by byte, unchanged.
    put(value.substr(i, 1));
    ++i;
  }
  return out;
}

std::optional<DateRange> ParseDateRange(std::string_view s) {
  const int year = Digits(s, 0, 4);
  if (year < 0) return std::nullopt;
  int month = 1, day = 1, hour = 0, minute = 0, second = 0, millis = 0;
  int64_t span_ms;  // the length of the covered range minus one ms, fixed by the precision
  size_t pos = 4;
  if (pos == s.size()) {
    const int64_t lo = DaysFromCivil(year, 1, 1) * kMsPerDay;
    return DateRange{lo, DaysFromCivil(year + 1, 1, 1) * kMsPerDay - 1};
  }
  if (s[pos] != '-' || (month = Digits(s, pos + 1, 2)) < 1 || month > 12) return std::nullopt;
  pos += 3;
  if (pos == s.size()) {
    const int64_t lo = DaysFromCivil(year, month, 1) * kMsPerDay;
    return DateRange{lo, lo + DaysInMonth(year, month) * kMsPerDay - 1};
  }
  if (s[pos] != '-' || (day = Digits(s, pos + 1, 2)) < 1 || day > DaysInMonth(year, month)) return std::nullopt;
  pos += 3;
  if (pos == s.size()) {
    const int64_t lo = DaysFromCivil(year, month, day) * kMsPerDay;
    return DateRange{lo, lo + kMsPerDay - 1};
  }
  if (s[pos] != 'T') return std::nullopt;
  if ((hour = Digits(s, pos + 1, 2)) < 0 || hour > 23 || pos + 3 >= s.size() || s[pos + 3] != ':' ||
      (minute = Digits(s, pos + 4, 2)) < 0 || minute > 59) {
    return std::nullopt;
  }
  pos += 6;
  span_ms = 60000 - 1;
  if (pos < s.size() && s[pos] == ':') {
    if ((second = Digits(s, pos + 1, 2)) < 0 || second > 59) return std::nullopt;
    pos += 3;
    span_ms = 1000 - 1;
    if (pos < s.size() && s[pos] == '.') {
      size_t n = 0;
      int frac = 0;
      while (pos + 1 + n < s.size() && s[pos + 1 + n] >= '0' && s[pos + 1 + n] <= '9') {
        if (n < 3) frac = frac * 10 + (s[pos + 1 + n] - '0');
        ++n;
      }
      if (n == 0) return std::nullopt;
      // ".1" covers .100 .. .199; three digits or more name one millisecond (finer digits are truncated).
      int scale = 1;
      for (size_t k = n; k < 3; ++k) scale *= 10;
      millis = frac * scale;
      span_ms = scale - 1;
      pos += 1 + n;
    }
  }
  int offset_minutes = 0;
  if (pos < s.size()) {
    if (s[pos] == 'Z') {
      ++pos;
    } else if (s[pos] == '+' || s[pos] == '-') {
      const int oh = Digits(s, pos + 1, 2);
      if (oh < 0 || oh > 14 || pos + 3 >= s.size() || s[pos + 3] != ':') return std::nullopt;
      const int om = Digits(s, pos + 4, 2);
      if (om < 0 || om > 59) return std::nullopt;
      offset_minutes = (oh * 60 + om) * (s[pos] == '-' ? -1 : 1);
      pos += 6;
    } else {
      return std::nullopt;
    }
  }
  if (pos != s.size()) return std::nullopt;
  const int64_t local =
      DaysFromCivil(year, month, day) * kMsPerDay + ((hour * 60 + minute) * 60 + second) * int64_t{1000} + millis;
  const int64_t lo = local - offset_minutes * int64_t{60000};
  return DateRange{lo, lo + span_ms};
}

std::optional<DecimalRange> ParseDecimalRange(std::string_view s) {
  // FHIR decimal: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
  size_t pos = 0;
  if (pos < s.size() && s[pos] == '-') ++pos;
  const size_t int_begin = pos;
  while (pos < s.size() && s[pos] >= '0' && s[pos] <= '9') ++pos;
  const size_t int_digits = pos - int_begin;
  if (int_digits == 0 || (int_digits > 1 && s[int_begin] == '0')) return std::nullopt;
  int frac_digits = 0;
  if (pos < s.size() && s[pos] == '.') {
    ++pos;
    while (pos < s.size() && s[pos] >= '0' && s[pos] <= '9') {
      ++pos;
      ++frac_digits;
    }
    if (frac_digits == 0) return std::nullopt;
  }
  int exponent = 0;
  if (pos < s.size() && (s[pos] == 'e' || s[pos] == 'E')) {
    ++pos;
    bool negative = false;
    if (pos < s.size() && (s[pos] == '+' || s[pos] == '-')) negative = s[pos++] == '-';
    const size_t exp_begin = pos;
    while (pos < s.size() && s[pos] >= '0' && s[pos] <= '9') {
      if (exponent < 10000) exponent = exponent * 10 + (s[pos] - '0');
      ++pos;
    }
    if (pos == exp_begin) return std::nullopt;
    if (negative) exponent = -exponent;
  }
  if (pos != s.size()) return std::nullopt;
  double value = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (ec != std::errc() || end != s.data() + s.size() || !std::isfinite(value)) return std::nullopt;
  // The last significant digit is worth 10^(exponent - frac_digits); the range is half of that either side.
  const double half = 0.5 * std::pow(10.0, exponent - frac_digits);
  return DecimalRange{value, value - half, value + half};
}

}  // namespace fhirlake::search
