// `fhirlake load`: bulk loading of ndjson, Bundle and single-resource JSON files into a datastore, keeping
// resource ids and resolving urn:uuid references across all files of one load.
#pragma once

#include <string>
#include <vector>

namespace fhirlake::app {

struct LoadOptions {
  std::string data_dir;
  std::string datastore_id;  // empty: the default datastore
  std::vector<std::string> paths;
  size_t batch_size = 10000;          // resources per write transaction
  bool progress = true;               // a progress line when stderr is a terminal
  std::string search_index = "auto";  // auto | rebuild | incremental (ResourceStore::BeginBulkLoad)
};

// Returns the process exit code: 0 all loaded, 1 some input was rejected, 2 the load could not run.
int RunLoad(const LoadOptions& options);

}  // namespace fhirlake::app
