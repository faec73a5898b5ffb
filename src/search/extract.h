// Extraction of a resource's index rows: every search parameter of its type, evaluated with the FHIRPath subset
// (search/fhirpath.h) over the resource JSON, normalised (search/normalize.h). Duplicate rows of one parameter are
// dropped. One IndexExtractor per thread (it owns a simdjson DOM parser).
#pragma once

#include <simdjson.h>

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"
#include "search/fhirpath.h"
#include "search/index_rows.h"

namespace fhirlake::search {

class IndexExtractor {
 public:
  // `json`: one complete resource (the stored bytes, or any valid FHIR JSON resource). kInvalid when it is not
  // JSON or has no resourceType; a resource of an unknown type yields no rows.
  Result<IndexRows> Extract(std::string_view json);
  // The same over an already parsed DOM element (the resource object).
  Result<IndexRows> Extract(simdjson::dom::element resource);
  // The normalised :text texts of token parameter `def` in `json` (CodingDisplay, CodeableConcept.text,
  // Identifier.type.text): what a `:text` search matches, evaluated on the resource since the index does not keep
  // them for values that have a code.
  Result<std::vector<std::string>> TokenTexts(std::string_view json, const ParamDef& def);
  // Tests: with false, every parameter gets all its rows, also those it shares with another (ParamDef::stored_in)
  // and the :text rows of values that have a code, so a test can check what each parameter would have alone.
  void set_share_rows(bool share) { share_rows_ = share; }

 private:
  // The JSON text of numbers, for their precision (the DOM keeps only their double value): tape index → token.
  // Built lazily, the first time a resource needs a number; only for resources parsed by Extract(string_view).
  class NumberTexts {
   public:
    void Reset(std::string_view source, const simdjson::dom::document* doc);
    // The number's text as written; a shortest round-trip rendering of its value when the source is unknown.
    std::string_view Find(simdjson::dom::element number);

   private:
    void Build();
    std::string_view source_;
    const simdjson::dom::document* doc_ = nullptr;
    bool built_ = false;
    std::vector<std::pair<size_t, std::string_view>> entries_;
    std::vector<size_t> tape_numbers_;
    std::vector<std::string_view> text_numbers_;
    char fallback_[32];
  };

  Result<IndexRows> ExtractImpl(simdjson::dom::element resource);
  void DropSharedRows(std::string_view type, IndexRows& rows);
  static void DropTextRowsBeside(std::vector<TokenRow>& tokens, size_t from);

  bool share_rows_ = true;

  simdjson::dom::parser parser_;
  NumberTexts numbers_;
  PathScratch scratch_;
  std::vector<PathNode> values_, tuples_, component_values_;
  IndexRows component_rows_;
  std::vector<CompositeRow> tuple_rows_;
};

}  // namespace fhirlake::search
