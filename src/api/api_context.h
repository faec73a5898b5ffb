// What every request handler may use: the datastores, the export engine, and server settings.
// Built once at start-up by app/ and read-only afterwards (all members are thread-safe to use).
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include "http/http_types.h"
#include "http/router.h"
#include "store/resource_store.h"

namespace fhirlake::bulk {
class ExportEngine;
}
namespace fhirlake::sink {
class ObjectSink;
}
namespace fhirlake::ingest {
class ImportEngine;
}

namespace fhirlake::api {

struct ApiContext {
  store::DatastoreCatalog* catalog = nullptr;
  bulk::ExportEngine* exports = nullptr;
  ingest::ImportEngine* imports = nullptr;  // the control plane's import jobs
  // Called once the server listens and serves (background work that must not start in a process that then fails to).
  mutable std::vector<std::function<void()>> on_serving;
  std::string public_base_url;  // e.g. "http://127.0.0.1:8080" (no trailing slash)
  std::string version;
  // The Bulk Data IG view: its files go to this bucket of `sink` (the server's own output location) and are
  // served from it until `export_file_lifetime_ms` after the job ended; polls are told to come back after
  // `export_poll_seconds`.
  sink::ObjectSink* sink = nullptr;
  std::string server_export_bucket = "fhirlake-server-exports";
  int64_t export_file_lifetime_ms = int64_t{48} * 3600 * 1000;
  int export_poll_seconds = 1;
  // The control plane's PreloadDataConfig SYNTHEA loads the files of this directory (empty: not offered).
  std::string preload_dir;
  int export_manifest_page_files = 1000;  // allowPartialManifests: output + deleted files per manifest page
  // Auth (app/ fills these from --auth-config): routes registered before every other (the SMART discovery and token
  // endpoints), whether the token endpoint exists (the CapabilityStatement's oauth-uris), and whether a datastore's
  // export files need credentials (the manifest's requiresAccessToken).
  std::function<void(http::Router&)> register_auth_routes;
  bool smart_enabled = false;
  std::function<bool(std::string_view datastore_id)> requires_access_token;
  bool RequiresAccessToken(std::string_view ds) const { return requires_access_token && requires_access_token(ds); }

  // This server's AWS region and account (the auth configuration's, or these defaults): datastore ARNs.
  std::string aws_region = "us-east-1";
  std::string aws_account_id = "111122223333";

  std::string FhirBase(std::string_view datastore_id) const {
    return public_base_url + "/datastore/" + std::string(datastore_id) + "/r4";
  }
};

}  // namespace fhirlake::api
