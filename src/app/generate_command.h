// `fhirlake generate`: test data of any size from a small Synthea sample. Every patient of the sample is
// cloned with fresh ids derived from (seed, clone, original id) and written as ndjson per resource type (or
// one transaction Bundle per patient), together with the shared Organizations/Practitioners and two Groups.
#pragma once

#include <cstdint>
#include <string>

namespace fhirlake::app {

struct GenerateOptions {
  int64_t patients = 0;    // clones to write; clone k copies source patient perm[k mod P]
  std::string out_dir;     // created if missing; must be empty
  uint64_t seed = 0;       // drives the order of source patients and every generated id
  std::string source_dir;  // empty: <repo>/data/synthea-r4-100 (found next to the binary or the cwd)
  bool bundles = false;    // patient resources as bundles/patient-<k>.json instead of {Type}.ndjson
};

// Returns the process exit code: 0 written, 2 nothing or not everything could be written.
int RunGenerate(const GenerateOptions& options);

}  // namespace fhirlake::app
