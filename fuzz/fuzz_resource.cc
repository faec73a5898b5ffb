// Fuzzes resource ingest: ResourceParser::Parse (full validation, re-serialisation) and, on success, RenderResource;
// the stored bytes must parse again and render to the same bytes (stored bytes are final: docs/ARCHITECTURE.md).
// Also PeekTypeAndId, which the loader runs on every line before the full parse. FHIRLAKE_FUZZ_VERBOSE=1 prints
// each input's outcome.
#include <simdjson.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "fhir/resource_parser.h"

using fhirlake::fhir::ParsedResource;
using fhirlake::fhir::RenderResource;
using fhirlake::fhir::ResourceParser;

namespace {

[[noreturn]] void Fail(const char* what, std::string_view detail) {
  std::fprintf(stderr, "invariant violated: %s\n%.*s\n", what, static_cast<int>(detail.size()), detail.data());
  std::abort();
}

std::string Render(const ParsedResource& parsed) {
  return RenderResource(parsed, parsed.id.empty() ? "fuzz-id" : parsed.id, 3, "2023-04-21T17:58:02.123Z");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static ResourceParser* parser = new ResourceParser();
  const std::string_view input(reinterpret_cast<const char*>(data), size);

  std::string padded(input);
  padded.append(simdjson::SIMDJSON_PADDING, '\0');
  (void)parser->PeekTypeAndId(std::string_view(padded.data(), size), padded.data() + padded.size());

  auto parsed = parser->Parse(input, nullptr);
  if (std::getenv("FHIRLAKE_FUZZ_VERBOSE") != nullptr) {  // to see what a crash input or a seed does
    std::fprintf(stderr, "%s\n",
                 parsed.ok() ? ("ok: " + parsed->type + "/" + parsed->id).c_str() : parsed.status().ToString().c_str());
  }
  if (!parsed.ok()) return 0;
  const std::string stored = Render(*parsed);
  auto again = parser->Parse(stored, nullptr);
  if (!again.ok()) Fail("stored bytes do not parse again", stored + "\n" + again.status().ToString());
  const std::string stored_again = Render(*again);
  if (stored_again != stored) Fail("stored bytes change when parsed and rendered again", stored + "\n" + stored_again);
  return 0;
}
