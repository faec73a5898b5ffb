// Server start-up and shutdown. Signals are blocked in every thread and taken by one waiting thread, so
// shutdown runs in ordinary code: stop accepting, finish in-flight requests, stop the export workers at a
// batch boundary, close the stores.
#include "app/serve_command.h"

#include <signal.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include "api/api_context.h"
#include "api/control_plane.h"
#include "api/routes.h"
#include "auth/authorizer.h"
#include "bulk/export_engine.h"
#include "fhir/operation_outcome.h"
#include "http/server.h"
#include "ingest/import_engine.h"
#include "sink/object_sink.h"
#include "sink/s3_sink.h"
#include "store/resource_store.h"

namespace fhirlake::app {

namespace {

// The export output: the local bucket directory under the data dir, or S3 when an endpoint is configured.
Result<std::unique_ptr<sink::ObjectSink>> MakeSink(const ServeOptions& options) {
  if (options.s3_endpoint.empty()) {
    return sink::NewLocalDirSink((std::filesystem::path(options.data_dir) / "s3").string());
  }
  sink::S3Options s3;
  s3.endpoint = options.s3_endpoint;
  s3.region = options.s3_region;
  s3.virtual_hosted = options.s3_virtual_hosted;
  s3.part_bytes = options.s3_part_bytes;
  s3.max_attempts = options.s3_max_attempts;
  if (!options.s3_roles_file.empty()) {
    ASSIGN_OR_RETURN(s3.roles, sink::LoadS3Roles(options.s3_roles_file));
  }
  return sink::NewS3Sink(std::move(s3));
}

// The sample PreloadDataConfig SYNTHEA loads: "auto" is the unpacked data/synthea-r4-100 next to the folder of the
// binary (the repository's layout: build/fhirlake), used only when scripts/sample-data.sh finished unpacking it.
std::string ResolvePreloadDir(const std::string& option) {
  if (option != "auto") return option;
  std::error_code ec;
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return "";
  for (const auto& dir :
       {exe.parent_path().parent_path() / "data" / "synthea-r4-100", exe.parent_path() / "data" / "synthea-r4-100"}) {
    if (std::filesystem::exists(dir / ".complete", ec)) return dir.string();
  }
  return "";
}

}  // namespace

int RunServe(const ServeOptions& options) {
  std::string host = options.listen;
  uint16_t port = 8080;
  if (size_t colon = options.listen.rfind(':'); colon != std::string::npos) {
    host = options.listen.substr(0, colon);
    try {
      int p = std::stoi(options.listen.substr(colon + 1));
      if (p < 0 || p > 65535) throw std::out_of_range("port");
      port = static_cast<uint16_t>(p);
    } catch (const std::exception&) {
      std::fprintf(stderr, "fhirlake serve: --listen '%s' is not HOST:PORT\n", options.listen.c_str());
      return 2;
    }
  }

  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  std::unique_ptr<auth::Authorizer> authorizer;
  if (!options.auth_config.empty()) {
    auto loaded = auth::Authorizer::Load(options.auth_config, Clock::System(), options.data_dir);
    if (!loaded.ok()) {
      std::fprintf(stderr, "fhirlake serve: %s\n", loaded.status().message().c_str());
      return 2;
    }
    authorizer = std::move(loaded).value();
  }
  std::unique_ptr<auth::AuditLog> audit;
  if (!options.audit_log.empty()) {
    if (!authorizer) {
      std::fprintf(stderr, "fhirlake serve: --audit-log records authorization decisions: give --auth-config too\n");
      return 2;
    }
    auto opened = auth::AuditLog::Open(options.audit_log);
    if (!opened.ok()) {
      std::fprintf(stderr, "fhirlake serve: %s\n", opened.status().message().c_str());
      return 2;
    }
    audit = std::move(opened).value();
    authorizer->SetAuditLog(audit.get());
  }
  const bool loopback =
      host == "127.0.0.1" || host == "localhost" || host == "::1" || host == "[::1]" || host.starts_with("127.");
  if (authorizer && !loopback && !options.allow_insecure_none) {
    authorizer->RefuseNone("the non-loopback listener " + host + " does not allow (--allow-insecure-none)");
  }
  const bool none_somewhere = !authorizer || authorizer->config()->AllowsNone();
  if (none_somewhere && !loopback && !options.allow_insecure_none) {
    std::fprintf(stderr,
                 "fhirlake serve: mode none (no authentication) on the non-loopback address %s would let anyone who "
                 "can reach it read and change everything; give --auth-config (docs/SECURITY.md), listen on "
                 "127.0.0.1, or pass --allow-insecure-none\n",
                 host.c_str());
    return 2;
  }

  store::StoreOptions so;
  so.data_dir = options.data_dir;
  so.writer_cache_bytes = options.sqlite_writer_cache_bytes;
  auto catalog = store::OpenSqliteCatalog(so);
  if (!catalog.ok()) {
    spdlog::error("event=start_failed reason=\"{}\"", catalog.status().ToString());
    std::fprintf(stderr, "fhirlake serve: %s\n", catalog.status().ToString().c_str());
    return 2;
  }

  auto sink = MakeSink(options);
  if (!sink.ok()) {
    std::fprintf(stderr, "fhirlake serve: %s\n", sink.status().ToString().c_str());
    return 2;
  }
  bulk::EngineOptions eo;
  eo.workers = options.export_workers;
  eo.jobs_per_datastore = options.export_jobs_per_datastore;
  eo.file_bytes = options.export_file_bytes;
  eo.batch_rows = options.export_batch_rows;
  eo.batch_bytes = options.export_batch_bytes;
  eo.batch_delay_ms = options.export_batch_delay_ms;
  eo.include_referenced = options.export_include_referenced;
  eo.task_rows = options.export_task_rows;
  eo.queue_limit = options.export_queue_limit;
  eo.min_free_bytes = options.export_min_free_bytes;
  eo.server_file_lifetime_ms = options.test_export_file_lifetime_ms > 0
                                   ? options.test_export_file_lifetime_ms
                                   : int64_t{options.export_file_hours} * 3600 * 1000;
  if (options.test_export_file_lifetime_ms > 0) {
    eo.sweep_interval_ms = std::clamp<int64_t>(options.test_export_file_lifetime_ms / 2, 50, 60000);
  }
  if (options.test_export_sweep_ms > 0) eo.sweep_interval_ms = std::max<int64_t>(50, options.test_export_sweep_ms);
  if (options.s3_endpoint.empty()) eo.local_output_dir = (std::filesystem::path(options.data_dir) / "s3").string();
  eo.journal_dir = (std::filesystem::path(options.data_dir) / "journal").string();
  {
    // Never shown to clients: the data directory as given and as resolved.
    std::error_code ec;
    eo.redact_paths.push_back(std::filesystem::absolute(options.data_dir, ec).lexically_normal().string());
    auto canonical = std::filesystem::weakly_canonical(options.data_dir, ec);
    if (!ec) eo.redact_paths.push_back(canonical.string());
    eo.redact_paths.push_back(options.data_dir);
    std::sort(eo.redact_paths.begin(), eo.redact_paths.end(),
              [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
    while (!eo.redact_paths.empty() && eo.redact_paths.back().size() < 2) eo.redact_paths.pop_back();
  }
  bulk::ExportEngine engine(catalog->get(), sink->get(), eo, Clock::System());
  Status started = engine.Start();
  if (!started.ok()) {
    std::fprintf(stderr, "fhirlake serve: export engine: %s\n", started.ToString().c_str());
    return 2;
  }

  ingest::ImportOptions io;
  io.work_dir = (std::filesystem::path(options.data_dir) / "import-staging").string();
  io.redact_paths = eo.redact_paths;
  ingest::ImportEngine imports(catalog->get(), sink->get(), io);
  imports.Start();

  api::ApiContext ctx;
  ctx.catalog = catalog->get();
  ctx.exports = &engine;
  ctx.imports = &imports;
  ctx.sink = sink->get();
  if (auto b = bulk::ParseS3Uri("s3://" + options.export_server_bucket); !b.ok() || !b->prefix.empty()) {
    std::fprintf(stderr, "fhirlake serve: --export-server-bucket '%s' is not a bucket name%s%s\n",
                 options.export_server_bucket.c_str(), b.ok() ? "" : ": ", b.ok() ? "" : b.status().message().c_str());
    return 2;
  }
  ctx.server_export_bucket = options.export_server_bucket;
  ctx.export_file_lifetime_ms = options.test_export_file_lifetime_ms > 0
                                    ? options.test_export_file_lifetime_ms
                                    : int64_t{options.export_file_hours} * 3600 * 1000;
  ctx.export_poll_seconds = options.export_poll_seconds;
  ctx.export_manifest_page_files = options.export_manifest_page_files;
  ctx.preload_dir = ResolvePreloadDir(options.preload_dir);
  ctx.version = FHIRLAKE_VERSION;

  http::ServerOptions hso;
  hso.host = host;
  hso.port = port;
  hso.threads = options.http_threads;
  hso.max_body_bytes = options.max_body_bytes;
  hso.workers = options.http_workers;
  hso.queue_limit = options.http_queue_limit;
  hso.max_connections = options.http_max_connections;
  hso.header_timeout_seconds = options.http_header_timeout_seconds;
  hso.body_budget_bytes = options.http_body_budget_bytes;
  hso.tls_cert_file = options.tls_cert;
  hso.tls_key_file = options.tls_key;
  const std::string scheme = options.tls_cert.empty() ? "http://" : "https://";
  hso.error_responder = [](int status, const std::string& message) {
    std::string_view code = status == 413   ? "too-costly"
                            : status == 503 ? "transient"
                            : status == 501 ? "not-supported"
                            : status >= 500 ? "exception"
                                            : "invalid";
    return http::Response::Json(status, fhir::OperationOutcome("error", code, message));
  };
  if (port != 0) ctx.public_base_url = scheme + host + ":" + std::to_string(port);
  if (!options.public_url.empty()) ctx.public_base_url = options.public_url;
  while (!ctx.public_base_url.empty() && ctx.public_base_url.back() == '/') ctx.public_base_url.pop_back();
  if (authorizer) {
    auth::Authorizer* a = authorizer.get();
    ctx.smart_enabled = !a->config()->smart_clients.empty() || !a->config()->issuers.empty();
    ctx.aws_region = a->config()->region;
    a->SetDatastoreTags([catalog = ctx.catalog](std::string_view ds) -> Result<std::map<std::string, std::string>> {
      store::ResourceStore* s = catalog->Find(ds);
      if (s == nullptr) return std::map<std::string, std::string>();
      return s->Tags();
    });
    ctx.aws_account_id = a->config()->account_id;
    // A datastore the configuration does not name authenticates as its IdentityProviderConfiguration says.
    // A datastore's config is fixed when it is created: its modes are worked out once per datastore id.
    struct ModesCache {
      std::mutex mu;
      std::map<std::string, std::vector<std::string>, std::less<>> by_id;  // GUARDED_BY(mu)
    };
    a->SetDatastoreModes([catalog = ctx.catalog,
                          cache = std::make_shared<ModesCache>()](std::string_view ds) -> std::vector<std::string> {
      {
        std::lock_guard<std::mutex> lock(cache->mu);
        if (auto it = cache->by_id.find(ds); it != cache->by_id.end()) return it->second;
      }
      store::ResourceStore* s = catalog->Find(ds);
      if (s == nullptr) return {};
      std::vector<std::string> modes = api::AuthModesOfDatastore(*s);
      std::lock_guard<std::mutex> lock(cache->mu);
      cache->by_id.emplace(std::string(ds), modes);
      return modes;
    });
    ctx.requires_access_token = [a](std::string_view ds) { return a->RequiresCredentials(ds); };
    // Public (no action): how to authenticate, and where to get a token.
    ctx.register_auth_routes = [a](http::Router& router) { auth::RegisterAuthRoutes(router, a); };
  }
  auto router = api::BuildRouter(ctx);
  if (authorizer) {
    router->SetAuthorizer(
        [a = authorizer.get()](const http::Request& req, http::RequestContext* rc) { return a->Authorize(req, rc); });
    http::CorsPolicy cors;
    cors.preflight = [a = authorizer.get()](const http::Request& req) { return a->Preflight(req); };
    cors.decorate = [a = authorizer.get()](const http::Request& req, http::Response* r) { a->DecorateCors(req, r); };
    router->SetCors(std::move(cors));
  }
  hso.runs_inline = [&router](const http::Request& r) { return router->IsInline(r); };
  http::Server server(hso, [&router](const http::Request& r) { return router->Dispatch(r); });
  // Bind first: with --listen HOST:0 the port is known only then, and the base URL must be complete before the
  // first request can be accepted (handlers read ctx without a lock; it is immutable once serving starts).
  Status st = server.Listen();
  if (st.ok()) {
    if (ctx.public_base_url.empty()) ctx.public_base_url = scheme + host + ":" + std::to_string(server.port());
    if (authorizer) authorizer->SetPublicBase(ctx.public_base_url);
    st = server.Start();
  }
  if (!st.ok()) {
    std::fprintf(stderr, "fhirlake serve: %s\n", st.ToString().c_str());
    return 2;
  }

  for (const auto& start : ctx.on_serving) start();
  std::printf("fhirlake %s listening on %s%s:%u\n", FHIRLAKE_VERSION, scheme.c_str(), host.c_str(), server.port());
  for (auto* s : ctx.catalog->All()) {
    std::printf("datastore %s (%s) at %s\n", s->info().id.c_str(), s->info().name.c_str(),
                ctx.FhirBase(s->info().id).c_str());
  }
  std::fflush(stdout);
  spdlog::info("event=listening url={}{}:{} data_dir={}", scheme, host, server.port(), options.data_dir);

  std::thread signal_waiter([&] {
    int sig = 0;
    while (sigwait(&signals, &sig) == 0 && sig == SIGHUP) {
      // The auth configuration is re-read; a file that does not parse leaves the previous one in force.
      if (!authorizer) continue;
      Status st = authorizer->Reload();
      if (st.ok()) {
        spdlog::info("event=auth_config_reloaded file={}", options.auth_config);
      } else {
        spdlog::error("event=auth_config_reload_failed reason=\"{}\"", st.message());
      }
    }
    spdlog::info("event=shutdown signal={}", sig);
    server.Stop();
  });
  server.Wait();
  imports.Stop();
  engine.Stop();
  spdlog::info("event=stopped");
  signal_waiter.join();
  return 0;
}

}  // namespace fhirlake::app
