// Helpers shared by the code that reads JSON with simdjson On-Demand (the resource parser, the Bundle reader, the
// generator): scalar values copied as written (numbers keep their text), duplicate-key detection, validation of
// values nobody reads, and whole files read into padded buffers.
#pragma once

#include <simdjson.h>

#include <memory>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "common/status.h"

namespace fhirlake::fhir {

Status JsonError(simdjson::error_code e);

// Appends a number, boolean or null value as written in the input (validated); kInvalid for other types.
Status AppendScalar(simdjson::ondemand::value value, simdjson::ondemand::json_type type, std::string* out);

// How deep JSON may nest: a top-level member's value is at level 1. Deeper input is rejected (it is never FHIR,
// and the readers recurse).
inline constexpr int kMaxJsonDepth = 64;

// The keys of one JSON object, to reject duplicates (which of two values a reader would take is arbitrary, and
// two readers may take different ones). Nested objects share one stack: an object's keys are contiguous on it
// while its own members are read (a nested object pops its keys before the parent's next key is pushed). Small
// objects scan linearly; past kLinearScan keys a hash set takes over, so a hostile object with a million keys
// costs a million lookups, not 10^12. The views must stay valid while the object is read (simdjson's unescaped
// keys do: they live in the parser's string buffer until the next document).
class ObjectKeys {
 public:
  static constexpr size_t kLinearScan = 32;
  explicit ObjectKeys(std::vector<std::string_view>* stack) : stack_(stack), mark_(stack->size()) {}
  ~ObjectKeys() { stack_->resize(mark_); }
  ObjectKeys(const ObjectKeys&) = delete;
  ObjectKeys& operator=(const ObjectKeys&) = delete;

  // False when the object already has `key`. Inline: it runs for every key of every resource.
  bool Insert(std::string_view key) {
    if (large_) return InsertLarge(key);
    for (size_t i = mark_, n = stack_->size(); i < n; ++i) {
      const std::string_view seen = (*stack_)[i];
      // Length and first byte settle almost every comparison without a call to memcmp.
      if (seen.size() == key.size() && (key.empty() || seen[0] == key[0]) && seen == key) return false;
    }
    if (stack_->size() - mark_ >= kLinearScan) return InsertLarge(key);
    stack_->push_back(key);
    return true;
  }

 private:
  bool InsertLarge(std::string_view key);

  std::vector<std::string_view>* stack_;
  size_t mark_;
  std::unique_ptr<std::unordered_set<std::string_view>> large_;
};

Status DuplicateKeyError(std::string_view key, std::string_view where);

// Reads a whole value, so that On-Demand validates all of it (structure, literals, numbers, strings), for members a
// reader skips. Rejects duplicate keys and nesting deeper than kMaxJsonDepth (`depth`: the value's own level).
// `path` names the value in errors ("Bundle.entry[0].search"); it is restored on return. `keys` is the key stack
// shared with the caller's ObjectKeys.
Status ValidateJsonValue(simdjson::ondemand::value value, int depth, std::string* path,
                         std::vector<std::string_view>* keys);

// ValidateJsonValue over a whole document (a resource nobody reads, such as a GET entry's), whose bytes are followed
// by readable memory up to `allocation_end` (>= SIMDJSON_PADDING past the end). `what` names it in errors.
Status ValidateJsonDocument(simdjson::ondemand::parser& parser, std::string_view json, const char* allocation_end,
                            std::string_view what);

// A file's bytes followed by simdjson::SIMDJSON_PADDING zero bytes, so it can be parsed in place.
struct PaddedFile {
  std::string bytes;
  size_t size = 0;
  std::string_view view() const { return std::string_view(bytes.data(), size); }
  const char* end() const { return bytes.data() + bytes.size(); }
};
Result<PaddedFile> ReadPaddedFile(const std::string& path);

}  // namespace fhirlake::fhir
