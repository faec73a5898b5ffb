// `fhirlake load`: the command around ingest::LoadFiles (bulk index mode, progress, the summary line).
#include "app/load_command.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>

#include "ingest/loader.h"
#include "store/resource_store.h"

namespace fhirlake::app {

namespace fs = std::filesystem;

int RunLoad(const LoadOptions& options) {
  auto expanded = ingest::ExpandPaths(options.paths);
  if (!expanded.ok()) {
    std::fprintf(stderr, "fhirlake load: %s\n", expanded.status().message().c_str());
    return 2;
  }
  const std::vector<std::string>& files = *expanded;
  store::StoreOptions so;
  so.data_dir = options.data_dir;
  so.writer_cache_bytes = int64_t{256} << 20;  // random index inserts: the more of the indexes in memory, the better
  auto catalog = store::OpenSqliteCatalog(so);
  if (!catalog.ok()) {
    std::fprintf(stderr, "fhirlake load: %s\n", catalog.status().ToString().c_str());
    return 2;
  }
  store::ResourceStore* store =
      options.datastore_id.empty() ? (*catalog)->Default() : (*catalog)->Find(options.datastore_id);
  if (store == nullptr) {
    std::fprintf(stderr, "fhirlake load: datastore '%s' is not in %s\n", options.datastore_id.c_str(),
                 options.data_dir.c_str());
    return 2;
  }
  int64_t incoming = 0;
  for (const auto& f : files) {
    std::error_code ec;
    auto n = fs::file_size(f, ec);
    if (!ec) incoming += static_cast<int64_t>(n);
  }
  using BulkIndexing = store::ResourceStore::BulkIndexing;
  const BulkIndexing mode = options.search_index == "rebuild"       ? BulkIndexing::kDeferred
                            : options.search_index == "incremental" ? BulkIndexing::kImmediate
                                                                    : BulkIndexing::kAuto;
  auto deferred = store->BeginBulkLoad(mode, incoming);
  if (!deferred.ok()) {
    std::fprintf(stderr, "fhirlake load: %s\n", deferred.status().ToString().c_str());
    return 2;
  }
  ingest::LoadSettings settings;
  settings.batch_size = options.batch_size;
  settings.on_error = [](const std::string& file, size_t line, const Status& st) {
    std::fprintf(stderr, "%s:%zu: %s\n", file.c_str(), line, st.message().c_str());
  };
  if (options.progress && isatty(STDERR_FILENO)) {
    settings.on_progress = [](int64_t loaded, double s) {
      std::fprintf(stderr, "\r%lld resources, %.0f resources/s   ", static_cast<long long>(loaded),
                   s > 0 ? static_cast<double>(loaded) / s : 0.0);
    };
  }
  const auto started = std::chrono::steady_clock::now();
  auto report = ingest::LoadFiles(store, files, settings);
  Status st = report.status();
  // Rebuild the lookup indexes also after a failed load: what was committed is in the store and searchable.
  double index_seconds = 0;
  if (*deferred) {
    auto start = std::chrono::steady_clock::now();
    if (options.progress && isatty(STDERR_FILENO)) std::fprintf(stderr, "\r%-60s", "building the search index...");
    Status built = store->EndBulkLoad();
    index_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (st.ok()) st = built;
  }
  if (!st.ok()) {
    std::fprintf(stderr, "\nfhirlake load: stopped: %s\n", st.ToString().c_str());
    return 2;
  }
  const ingest::LoadReport& loader = *report;
  // Timed to the end of the index rebuild, as the summary line says.
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  if (options.progress && isatty(STDERR_FILENO)) std::fprintf(stderr, "\r%60s\r", "");
  if (*deferred) std::printf("search index lookups rebuilt in %.2f s (included below)\n", index_seconds);
  std::printf(
      "loaded %lld resources of %zu types from %lld files into datastore %s in %.2f s (%.0f resources/s); "
      "%lld unresolved references kept as they are; %lld errors\n",
      static_cast<long long>(loader.loaded), loader.types.size(), static_cast<long long>(loader.files),
      store->info().id.c_str(), s, s > 0 ? static_cast<double>(loader.loaded) / s : 0.0,
      static_cast<long long>(loader.unresolved), static_cast<long long>(loader.errors));
  return loader.errors > 0 ? 1 : 0;
}

}  // namespace fhirlake::app
