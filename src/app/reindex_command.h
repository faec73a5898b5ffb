// `fhirlake reindex`: rebuilds the search index of a datastore from its current resources (docs/SEARCH.md). A store
// whose index was built by another version of the search parameter table is reindexed on open anyway; this forces it.
#pragma once

#include <string>

namespace fhirlake::app {

struct ReindexOptions {
  std::string data_dir;
  std::string datastore_id;  // empty: every datastore of the data directory
};

// Returns the process exit code: 0 done, 2 the reindex could not run.
int RunReindex(const ReindexOptions& options);

}  // namespace fhirlake::app
