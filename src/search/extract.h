// Extraction of a resource's index rows: every search parameter of its type, evaluated with the FHIRPath subset
// (search/fhirpath.h) over the resource JSON, normalised (search/normalize.h). Duplicate rows of one parameter are
// dropped. One IndexExtractor per thread (it owns a simdjson DOM parser).
#pragma once

#include <simdjson.h>

#include <string_view>

#include "common/status.h"
#include "search/index_rows.h"

namespace fhirlake::search {

class IndexExtractor {
 public:
  // `json`: one complete resource (the stored bytes, or any valid FHIR JSON resource). kInvalid when it is not
  // JSON or has no resourceType; a resource of an unknown type yields no rows.
  Result<IndexRows> Extract(std::string_view json);
  // The same over an already parsed DOM element (the resource object).
  Result<IndexRows> Extract(simdjson::dom::element resource);

 private:
  simdjson::dom::parser parser_;
};

}  // namespace fhirlake::search
