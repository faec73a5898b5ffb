// What every request handler may use: the datastores, the export engine, and server settings.
// Built once at start-up by app/ and read-only afterwards (all members are thread-safe to use).
#pragma once

#include <cstddef>
#include <string>

#include "http/http_types.h"
#include "store/resource_store.h"

namespace fhirlake::bulk {
class ExportEngine;
}

namespace fhirlake::api {

struct ApiContext {
  store::DatastoreCatalog* catalog = nullptr;
  bulk::ExportEngine* exports = nullptr;
  std::string public_base_url;  // e.g. "http://127.0.0.1:8080" (no trailing slash)
  std::string version;

  std::string FhirBase(std::string_view datastore_id) const {
    return public_base_url + "/datastore/" + std::string(datastore_id) + "/r4";
  }
};

}  // namespace fhirlake::api
