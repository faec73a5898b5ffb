// The fhirlake binary: `serve`, `load` and `--version`, each with --help (CLI11). Options can also come from
// environment variables (FHIRLAKE_*) and a config file (--config, INI/TOML).
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "app/generate_command.h"
#include "app/load_command.h"
#include "app/reindex_command.h"
#include "app/serve_command.h"
#include "common/failpoint.h"

int main(int argc, char** argv) {
  CLI::App cli{"fhirlake: a self-hosted FHIR R4 data store with HealthLake-compatible bulk export"};
  cli.set_version_flag("--version", std::string("fhirlake ") + FHIRLAKE_VERSION);
  cli.require_subcommand(1);
  std::string log_level = "info";
  cli.add_option("--log-level", log_level, "trace, debug, info, warn, error, off")
      ->envname("FHIRLAKE_LOG_LEVEL")
      ->capture_default_str();

  fhirlake::app::ServeOptions serve;
  serve.export_workers = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  auto* s = cli.add_subcommand("serve", "Run the FHIR server (HTTP/1.1) on a data directory");
  s->set_config("--config", "", "Read options from an INI/TOML file (keys are the long option names)");
  s->add_option("--data-dir", serve.data_dir, "Directory holding the datastores (created if missing)")
      ->envname("FHIRLAKE_DATA_DIR")
      ->required();
  s->add_option("--auth-config", serve.auth_config,
                "Authentication and authorization (JSON, docs/SECURITY.md): modes per datastore, SigV4 principals "
                "and their IAM policies, SMART clients, external identity providers, CORS origins; re-read on SIGHUP. "
                "Without it every request is anonymous (mode none)")
      ->envname("FHIRLAKE_AUTH_CONFIG");
  s->add_option("--audit-log", serve.audit_log,
                "Append one JSON line per authorization decision (principal, action, datastore, resource, "
                "decision) to FILE; needs --auth-config")
      ->envname("FHIRLAKE_AUDIT_LOG");
  s->add_flag("--allow-insecure-none", serve.allow_insecure_none,
              "Allow mode none (no authentication) on a listen address other than loopback");
  s->add_option("--listen", serve.listen, "HOST:PORT to listen on (port 0 picks a free one)")
      ->envname("FHIRLAKE_LISTEN")
      ->capture_default_str();
  s->add_option("--tls-cert", serve.tls_cert,
                "Serve HTTPS (TLS 1.2 and 1.3 only) with this PEM certificate (chain); needs --tls-key")
      ->envname("FHIRLAKE_TLS_CERT");
  s->add_option("--tls-key", serve.tls_key, "The PEM private key of --tls-cert")->envname("FHIRLAKE_TLS_KEY");
  s->add_option("--public-url", serve.public_url,
                "Base URL clients use to reach this server, for absolute URLs in responses (default http://LISTEN, "
                "https://LISTEN with --tls-cert)")
      ->envname("FHIRLAKE_PUBLIC_URL");
  s->add_option("--http-threads", serve.http_threads, "Threads serving HTTP requests")
      ->envname("FHIRLAKE_HTTP_THREADS")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  s->add_option("--max-body-bytes", serve.max_body_bytes, "Largest accepted request body; larger ones get 413")
      ->envname("FHIRLAKE_MAX_BODY_BYTES")
      ->capture_default_str();
  s->add_option("--http-workers", serve.http_workers,
                "Threads running request handlers (the HTTP threads only move bytes)")
      ->envname("FHIRLAKE_HTTP_WORKERS")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  s->add_option("--http-queue-limit", serve.http_queue_limit,
                "Requests that may wait for a handler thread; beyond it 503 + Retry-After")
      ->envname("FHIRLAKE_HTTP_QUEUE_LIMIT")
      ->check(CLI::Range(size_t{0}, size_t{1} << 20))
      ->capture_default_str();
  s->add_option("--http-max-connections", serve.http_max_connections,
                "Open connections; beyond it new ones wait in the listen queue until one closes")
      ->envname("FHIRLAKE_HTTP_MAX_CONNECTIONS")
      ->check(CLI::Range(size_t{1}, size_t{1} << 20))
      ->capture_default_str();
  s->add_option("--http-header-timeout", serve.http_header_timeout_seconds,
                "Seconds in which a request line and all its headers must arrive; slower connections are closed")
      ->envname("FHIRLAKE_HTTP_HEADER_TIMEOUT")
      ->check(CLI::Range(1, 3600))
      ->capture_default_str();
  s->add_option("--http-body-budget-bytes", serve.http_body_budget_bytes,
                "Request bodies buffered at once, server-wide; a body that does not fit gets 503 + Retry-After "
                "(keep it >= --max-body-bytes)")
      ->envname("FHIRLAKE_HTTP_BODY_BUDGET_BYTES")
      ->check(CLI::Range(size_t{1}, size_t{1} << 40))
      ->capture_default_str();

  s->add_option("--sqlite-writer-cache-bytes", serve.sqlite_writer_cache_bytes,
                "Page cache of the datastore's writer connection: larger speeds up big HTTP loads, costs RSS")
      ->envname("FHIRLAKE_SQLITE_WRITER_CACHE_BYTES")
      ->check(CLI::Range(int64_t{1} << 20, int64_t{1} << 34))
      ->capture_default_str();
  s->add_option("--export-workers", serve.export_workers, "Export tasks running at once (default: cores)")
      ->envname("FHIRLAKE_EXPORT_WORKERS")
      ->check(CLI::Range(1, 256));
  s->add_option("--export-jobs-per-datastore", serve.export_jobs_per_datastore,
                "Export jobs running at once per datastore; the rest wait QUEUED (HealthLake: 1)")
      ->envname("FHIRLAKE_EXPORT_JOBS_PER_DATASTORE")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  s->add_option("--export-file-bytes", serve.export_file_bytes,
                "Close an export file at the first batch boundary past this many bytes")
      ->envname("FHIRLAKE_EXPORT_FILE_BYTES")
      ->check(CLI::Range(size_t{1}, size_t{1} << 40))
      ->capture_default_str();
  s->add_option("--export-batch-rows", serve.export_batch_rows, "Rows per export read transaction")
      ->envname("FHIRLAKE_EXPORT_BATCH_ROWS")
      ->check(CLI::Range(size_t{1}, size_t{1} << 24))
      ->capture_default_str();
  s->add_option("--export-batch-bytes", serve.export_batch_bytes, "Bytes per export read transaction")
      ->envname("FHIRLAKE_EXPORT_BATCH_BYTES")
      ->check(CLI::Range(size_t{1}, size_t{1} << 32))
      ->capture_default_str();
  s->add_option("--export-task-rows", serve.export_task_rows,
                "Split a resource type into parallel tasks of about this many rows")
      ->envname("FHIRLAKE_EXPORT_TASK_ROWS")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 40))
      ->capture_default_str();
  s->add_option("--export-server-bucket", serve.export_server_bucket,
                "Bucket (on the local output directory, or on --s3-endpoint) that holds the files of Bulk Data IG "
                "(GET) exports, served by this server")
      ->capture_default_str();
  s->add_option("--export-file-hours", serve.export_file_hours,
                "Hours after a Bulk Data IG export ends during which its files can be downloaded")
      ->check(CLI::Range(1, 24 * 365))
      ->capture_default_str();
  s->add_option("--export-poll-seconds", serve.export_poll_seconds,
                "Retry-After of a Bulk Data IG status poll while the job runs; a client polling sooner than half "
                "of it gets 429 (0: no limit)")
      ->check(CLI::Range(0, 3600))
      ->capture_default_str();
  s->add_option("--export-manifest-page-files", serve.export_manifest_page_files,
                "Files per manifest page of a Bulk Data IG export kicked off with allowPartialManifests=true (the "
                "pages are linked with `link`; a page is shown while the job runs once it is full)")
      ->check(CLI::Range(1, 1000000))
      ->capture_default_str();
  s->add_option("--preload-dir", serve.preload_dir,
                "Folder of FHIR files that CreateFHIRDatastore with PreloadDataConfig SYNTHEA loads (auto: the "
                "repository's unpacked 100-patient sample, data/synthea-r4-100, when present; empty: not offered)")
      ->capture_default_str();
  s->add_option("--export-queue-limit", serve.export_queue_limit,
                "Export jobs that may wait (SUBMITTED + QUEUED) per datastore; further kick-offs get 429")
      ->envname("FHIRLAKE_EXPORT_QUEUE_LIMIT")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  s->add_option("--export-min-free-bytes", serve.export_min_free_bytes,
                "Local output: refuse kick-offs (507) when less than this is free on its file system (0: no check)")
      ->envname("FHIRLAKE_EXPORT_MIN_FREE_BYTES")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 50))
      ->capture_default_str();
  s->add_flag("!--export-no-referenced", serve.export_include_referenced,
              "Patient/Group exports: do not add the Practitioners, Organizations, ... that exported resources "
              "reference")
      ->envname("FHIRLAKE_EXPORT_NO_REFERENCED");
  s->add_option("--s3-endpoint", serve.s3_endpoint,
                "S3-compatible endpoint for export output (e.g. http://127.0.0.1:7480); default: local directory")
      ->envname("FHIRLAKE_S3_ENDPOINT");
  s->add_option("--s3-region", serve.s3_region, "S3 signing region")
      ->envname("FHIRLAKE_S3_REGION")
      ->capture_default_str();
  s->add_flag("--s3-virtual-hosted", serve.s3_virtual_hosted, "Address buckets as bucket.host (default: host/bucket)")
      ->envname("FHIRLAKE_S3_VIRTUAL_HOSTED");
  s->add_option("--s3-roles", serve.s3_roles_file,
                "JSON file mapping DataAccessRoleArn to S3 credentials and allowed buckets (docs/EXPORT.md)")
      ->envname("FHIRLAKE_S3_ROLES");
  s->add_option("--s3-part-bytes", serve.s3_part_bytes, "Multipart upload part size (>= 5 MiB)")
      ->envname("FHIRLAKE_S3_PART_BYTES")
      ->capture_default_str();
  s->add_option("--s3-max-attempts", serve.s3_max_attempts, "Attempts per S3 request (retries with backoff)")
      ->envname("FHIRLAKE_S3_MAX_ATTEMPTS")
      ->check(CLI::Range(1, 100))
      ->capture_default_str();
  s->add_option("--test-export-file-lifetime-ms", serve.test_export_file_lifetime_ms,
                "TEST ONLY: Bulk Data IG export files expire this long after their job ended (instead of "
                "--export-file-hours), and expired files are swept that often")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 40));
  s->add_option("--test-export-sweep-ms", serve.test_export_sweep_ms,
                "TEST ONLY: sweep expired and deleted Bulk Data IG export files this often (default: every minute)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 40));
  s->add_option("--test-export-batch-delay-ms", serve.export_batch_delay_ms,
                "TEST ONLY: sleep this long after every export batch, so tests can act on a running job")
      ->envname("FHIRLAKE_TEST_EXPORT_BATCH_DELAY_MS")
      ->check(CLI::Range(0, 60000));

  fhirlake::app::LoadOptions load;
  auto* l = cli.add_subcommand("load", "Bulk-load ndjson, Bundle and resource JSON files (or folders of them)");
  l->add_option("--data-dir", load.data_dir, "Data directory (the default datastore is created if missing)")
      ->envname("FHIRLAKE_DATA_DIR")
      ->required();
  l->add_option("--datastore", load.datastore_id, "Datastore id (default: the default datastore)");
  l->add_option("--batch-size", load.batch_size, "Resources per write transaction")->capture_default_str();
  l->add_flag("!--no-progress", load.progress, "Do not print a progress line on the terminal");
  l->add_option("--search-index", load.search_index,
                "How the search index's lookup B-trees follow the load: 'rebuild' drops them and rebuilds them "
                "sorted at the end, 'incremental' inserts row by row, 'auto' rebuilds when the input is at least a "
                "quarter of the database's size")
      ->check(CLI::IsMember({"auto", "rebuild", "incremental"}))
      ->capture_default_str();
  l->add_option("paths", load.paths, "Files or folders (.ndjson, .jsonl, .json)")->required();

  fhirlake::app::GenerateOptions generate;
  auto* g = cli.add_subcommand("generate", "Write test data: N patients cloned from the Synthea sample, as ndjson");
  g->add_option("--patients", generate.patients, "Patients to generate")
      ->required()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 40));
  g->add_option("--out", generate.out_dir, "Output folder (created; must be empty): {Type}.ndjson")->required();
  g->add_option("--seed", generate.seed, "Seed of the patient order and of every generated id")->capture_default_str();
  g->add_option("--source", generate.source_dir, "Folder of Synthea Bundles (default: <repo>/data/synthea-r4-100)");
  g->add_flag("--bundles", generate.bundles, "Write each patient as a transaction Bundle, bundles/patient-<k>.json");

  fhirlake::app::ReindexOptions reindex;
  auto* ri = cli.add_subcommand("reindex", "Rebuild the search index of a datastore from its current resources");
  ri->add_option("--data-dir", reindex.data_dir, "Data directory")->envname("FHIRLAKE_DATA_DIR")->required();
  ri->add_option("--datastore", reindex.datastore_id, "Datastore id (default: every datastore)");

  CLI11_PARSE(cli, argc, argv);
  spdlog::set_level(spdlog::level::from_str(log_level));
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%eZ level=%l %v", spdlog::pattern_time_type::utc);
  if (auto st = fhirlake::failpoint::Init(); !st.ok()) {
    std::fprintf(stderr, "fhirlake: %s\n", st.message().c_str());
    return 2;
  }
  if (fhirlake::failpoint::Enabled())
    spdlog::warn("event=failpoints_armed spec=\"{}\"", std::getenv("FHIRLAKE_FAILPOINTS"));
  if (s->parsed()) return fhirlake::app::RunServe(serve);
  if (l->parsed()) return fhirlake::app::RunLoad(load);
  if (g->parsed()) return fhirlake::app::RunGenerate(generate);
  if (ri->parsed()) return fhirlake::app::RunReindex(reindex);
  return 2;
}
