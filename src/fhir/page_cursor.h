// Keyset page cursors: the opaque `page` token of a Bundle's next link, naming where the next page starts. The
// format (docs/STORAGE.md, "Page cursors") is shared by every paged read: base64url without padding of
// "v1:<scope>:<key>", with `scope` naming the read (history, compartment; search will add its own) and `key` the
// sort key of the previous page's last row. Cursors are not signed: a forged one can only start a read elsewhere
// in the same, already authorised, result.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/status.h"

namespace fhirlake::fhir {

// `scope`: lower-case letters; `key` >= 0.
std::string EncodePageCursor(std::string_view scope, int64_t key);
// The key of a cursor made by EncodePageCursor for `scope`; kInvalid (with a diagnostics line saying what to do)
// for anything else, including a cursor of another scope or version.
Result<int64_t> DecodePageCursor(std::string_view token, std::string_view scope);

// The same with a text key (search: the sort keys and rid of the last row), at most kMaxTextKeyBytes long.
inline constexpr size_t kMaxTextKeyBytes = 1536;
std::string EncodePageCursorText(std::string_view scope, std::string_view key);
Result<std::string> DecodePageCursorText(std::string_view token, std::string_view scope);

}  // namespace fhirlake::fhir
