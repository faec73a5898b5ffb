// Loading FHIR files into a datastore (`fhirlake load`, the control plane's preload and import): ndjson, Bundle and
// single-resource JSON files, keeping resource ids and resolving urn:uuid references across all files of one load.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/status.h"
#include "store/resource_store.h"

namespace fhirlake::ingest {

struct LoadSettings {
  size_t batch_size = 10000;  // resources per write transaction
  // A load run again after it stopped (a resumed preload or import): resources whose current version was written
  // after this commit sequence (by the first run) are left as they are, so nothing is written twice and no version is
  // added; older ones are written as a first run would. Unset: every resource is written.
  std::optional<int64_t> skip_written_after_seq;
  // An input problem (file, line, what): the resource is skipped and the load goes on.
  std::function<void(const std::string& file, size_t line, const Status& problem)> on_error;
  // Each resource that parsed and will be stored (also one skipped as written before), in input order.
  std::function<void(const std::string& file, size_t line, const std::string& type, const std::string& id)> on_parsed;
  // Asked before each resource: true stops the load (LoadFiles then fails with kUnavailable; what was committed stays).
  std::function<bool()> should_stop;
  // Now and then: resources stored so far and seconds since the start.
  std::function<void(int64_t loaded, double seconds)> on_progress;
};

struct LoadReport {
  int64_t loaded = 0;      // resources written
  int64_t skipped = 0;     // written before (skip_written_after_seq)
  int64_t errors = 0;      // input problems (on_error was called for each)
  int64_t unresolved = 0;  // urn:uuid references left as they are
  int64_t files = 0;
  std::set<std::string> types;
  double seconds = 0;
};

// The files of `paths`: a directory stands for its .json, .ndjson and .jsonl files (recursively, sorted). kNotFound
// names a path that does not exist.
Result<std::vector<std::string>> ExpandPaths(const std::vector<std::string>& paths);

// Loads `files` into `store`. Two passes: the first reads only Bundle fullUrls and the type/id of their resources (to
// map urn:uuid:X -> Type/id across files), the second parses and validates on this thread while a writer thread
// stores the parsed batches in large transactions (a bounded queue between them keeps memory flat; ndjson files are
// read in chunks, never whole). An error Status means the store failed (what was committed stays); the report then
// is lost, input problems never stop the load.
Result<LoadReport> LoadFiles(store::ResourceStore* store, const std::vector<std::string>& files,
                             const LoadSettings& settings);

}  // namespace fhirlake::ingest
