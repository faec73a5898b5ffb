// Percent-encoding of URL components (RFC 3986), shared by the HTTP layer and the places that read URLs carried
// inside values (the Bulk Data IG's _typeFilter holds a search query within a query parameter).
#pragma once

#include <string>
#include <string_view>

namespace fhirlake {

// Percent-decodes `s`; when `plus_is_space`, '+' becomes ' ' (query strings). Invalid escapes are kept as-is.
std::string PercentDecode(std::string_view s, bool plus_is_space);

}  // namespace fhirlake
