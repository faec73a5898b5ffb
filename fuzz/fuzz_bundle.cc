// Fuzzes Bundle processing: fhir::ParseBundle on the raw bytes, then api::ProcessBundle (batch / transaction, with
// urn:uuid and conditional references) on a real SQLite datastore in a temp dir opened once per process. The store
// keeps what earlier inputs wrote, so a crash may need the inputs before it: rerun with the crash file alone first.
// FHIRLAKE_FUZZ_VERBOSE=1 prints each input's outcome.
#include <simdjson.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>

#include "api/transaction.h"
#include "fhir/bundle.h"
#include "fhir/resource_parser.h"
#include "store/resource_store.h"

namespace {

std::string* temp_dir = nullptr;

void RemoveTempDir() {
  if (temp_dir == nullptr) return;
  std::error_code ec;
  std::filesystem::remove_all(*temp_dir, ec);
}

fhirlake::store::ResourceStore& TheStore() {
  static std::unique_ptr<fhirlake::store::DatastoreCatalog> catalog = [] {
    std::string tmpl = (std::filesystem::temp_directory_path() / "fhirlake-fuzz-store.XXXXXX").string();
    if (mkdtemp(tmpl.data()) == nullptr) {
      std::perror("mkdtemp");
      std::abort();
    }
    temp_dir = new std::string(tmpl);
    std::atexit(RemoveTempDir);
    fhirlake::store::StoreOptions options;
    options.data_dir = tmpl;
    options.writer_cache_bytes = 4 << 20;
    auto opened = fhirlake::store::OpenSqliteCatalog(options);
    if (!opened.ok()) {
      std::fprintf(stderr, "cannot open the store in %s: %s\n", tmpl.c_str(), opened.status().ToString().c_str());
      std::abort();
    }
    return std::move(*opened);
  }();
  return *catalog->Default();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static fhirlake::fhir::ResourceParser* parser = new fhirlake::fhir::ResourceParser();
  fhirlake::store::ResourceStore& store = TheStore();
  const std::string_view body(reinterpret_cast<const char*>(data), size);

  std::string padded(body);
  padded.append(simdjson::SIMDJSON_PADDING, '\0');
  auto view =
      fhirlake::fhir::ParseBundle(*parser, std::string_view(padded.data(), size), padded.data() + padded.size());
  if (view.ok()) {
    for (const auto& entry : view->entries) (void)entry.resource_json.size();
  }
  auto result = fhirlake::api::ProcessBundle(store, body);
  if (std::getenv("FHIRLAKE_FUZZ_VERBOSE") != nullptr) {  // to see what a crash input or a seed does
    std::fprintf(stderr, "ParseBundle: %s; ProcessBundle: %s\n", view.ok() ? "ok" : view.status().ToString().c_str(),
                 result.ok() ? result->substr(0, 300).c_str() : result.status().ToString().c_str());
  }
  return 0;
}
