// `fhirlake serve`: opens the datastores, starts the export engine and the HTTP server, and shuts all of
// it down gracefully on SIGINT/SIGTERM.
#pragma once

#include <cstddef>
#include <string>

namespace fhirlake::app {

struct ServeOptions {
  std::string data_dir;
  std::string listen = "127.0.0.1:8080";
  std::string public_url;            // empty: http://{listen} (https:// with TLS)
  std::string tls_cert;              // --tls-cert PEM (certificate chain); with tls_key: HTTPS only
  std::string tls_key;               // --tls-key PEM (its private key)
  std::string auth_config;           // --auth-config FILE (docs/SECURITY.md); empty: mode none, loopback only
  bool allow_insecure_none = false;  // --allow-insecure-none: mode none on a non-loopback address
  std::string audit_log;             // --audit-log FILE: JSON lines of every authorization decision
  int http_threads = 4;
  size_t max_body_bytes = 64 << 20;
  // HTTP admission control (README option table): handler threads and their queue, connection cap, header
  // deadline, server-wide budget for buffered request bodies.
  int http_workers = 8;
  size_t http_queue_limit = 256;
  size_t http_max_connections = 1024;
  int http_header_timeout_seconds = 10;
  size_t http_body_budget_bytes = size_t{256} << 20;
  int64_t sqlite_writer_cache_bytes = 16 << 20;
  // Export engine settings (docs/EXPORT.md).
  int export_workers = 0;  // 0: number of cores
  int export_jobs_per_datastore = 1;
  size_t export_file_bytes = 256 << 20;
  size_t export_batch_rows = 2000;
  size_t export_batch_bytes = 8 << 20;
  int export_batch_delay_ms = 0;  // test-only: slows each batch down
  bool export_include_referenced = true;
  int64_t export_task_rows = 200000;
  int export_queue_limit = 25;                       // SUBMITTED + QUEUED per datastore; beyond: 429
  int64_t export_min_free_bytes = int64_t{1} << 30;  // local output: refuse kick-offs below this (507)
  // The Bulk Data IG view (docs/EXPORT.md): where its files are held, for how long, and the poll interval.
  std::string export_server_bucket = "fhirlake-server-exports";
  int export_file_hours = 48;
  int export_poll_seconds = 1;
  int export_manifest_page_files = 1000;  // allowPartialManifests: files per manifest page
  // PreloadDataConfig SYNTHEA: the sample's folder ("auto": data/synthea-r4-100 beside the binary's folder, when
  // unpacked there; "": not offered).
  std::string preload_dir = "auto";
  int64_t test_export_file_lifetime_ms = 0;  // test-only: overrides export_file_hours (and sweeps that often)
  int64_t test_export_sweep_ms = 0;          // test-only: the sweep interval (0: a minute, or as above)
  // S3 output (docs/EXPORT.md "S3"); with no endpoint, s3:// URIs map to {data_dir}/s3/.
  std::string s3_endpoint;
  std::string s3_region = "us-east-1";
  bool s3_virtual_hosted = false;
  std::string s3_roles_file;
  size_t s3_part_bytes = 16 << 20;
  int s3_max_attempts = 8;
};

int RunServe(const ServeOptions& options);

}  // namespace fhirlake::app
