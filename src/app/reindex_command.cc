#include "app/reindex_command.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>

#include "store/resource_store.h"

namespace fhirlake::app {

int RunReindex(const ReindexOptions& options) {
  store::StoreOptions so;
  so.data_dir = options.data_dir;
  so.writer_cache_bytes = int64_t{256} << 20;
  auto catalog = store::OpenSqliteCatalog(so);
  if (!catalog.ok()) {
    std::fprintf(stderr, "fhirlake reindex: %s\n", catalog.status().ToString().c_str());
    return 2;
  }
  std::vector<store::ResourceStore*> stores;
  if (options.datastore_id.empty()) {
    stores = (*catalog)->All();
  } else if (auto* s = (*catalog)->Find(options.datastore_id)) {
    stores.push_back(s);
  } else {
    std::fprintf(stderr, "fhirlake reindex: datastore '%s' is not in %s\n", options.datastore_id.c_str(),
                 options.data_dir.c_str());
    return 2;
  }
  for (auto* s : stores) {
    auto start = std::chrono::steady_clock::now();
    auto n = s->Reindex();
    if (!n.ok()) {
      std::fprintf(stderr, "fhirlake reindex: datastore %s: %s\n", s->info().id.c_str(), n.status().ToString().c_str());
      return 2;
    }
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("reindexed %lld resources of datastore %s in %.2f s\n", static_cast<long long>(*n),
                s->info().id.c_str(), secs);
  }
  return 0;
}

}  // namespace fhirlake::app
