// Schema versions:
//   1  resources (current versions and tombstones), history, compartment, ext_ref, identifier, counters, meta
//   2  + export_jobs, export_tasks, export_files, export_job_patients, export_scope (the bulk export engine)
//   3  compartment rows carry the commit-sequence range they are valid for (exports read membership as of
//      their snapshot); resources/history record how each version was written (op: 0 PUT, 1 POST)
//   4  export_jobs.owner: the principal that started the job
//   5  the search index: sp_string, sp_token, sp_reference, sp_date, sp_number, sp_quantity, sp_uri, sp_composite
//      (rows of the current versions, filled by the store's reindex when meta.search_index_hash differs)
//   6  the search tables keyed by (rid, param, value...) so that rows arrive in key order, with their (param, value)
//      lookup indexes (store/sqlite_search.cc) built apart: a bulk load or reindex drops and rebuilds them in one
//      sorted pass instead of inserting random keys row by row; the v5 rows are rebuilt by the reindex
//   7  export_jobs.files_deleted_at: when a Bulk Data IG job's server-held files were deleted (DELETE or expiry);
//      export_jobs.until_ms, tag_filter, security_filter, patient_filter: the job's _until, _tag, _security,
//      patient (newline-separated);
//      export_polls: when each client last got a status answer (the IG view's poll rate limit, kept in the store so
//      that every node sees it)
//   8  export_jobs.type_filter, elements, notes: the job's _typeFilter queries, _elements and the parameters ignored
//      under handling=lenient (newline-separated); export_tasks.deleted: a task that lists deletions (the IG's
//      `deleted` files of an export with _since)
//   9  export_downloads: the leases of running downloads of server-held files (their deletion waits for them)
//  10  export_jobs.client_token, client_request: the control plane's idempotency token of a StartFHIRExportJob and
//      the request it came with (a unique index: one job per token)
#include "store/sqlite_schema.h"

#include <functional>
#include <string>

namespace fhirlake::store {
namespace {

constexpr const char* kSchemaV1 = R"sql(
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO counters VALUES ('seq', 0), ('last_updated', 0);
CREATE TABLE resources(
  rid INTEGER PRIMARY KEY,
  type TEXT NOT NULL,
  id TEXT NOT NULL,
  version INTEGER NOT NULL,
  seq INTEGER NOT NULL,
  last_updated INTEGER NOT NULL,
  deleted INTEGER NOT NULL DEFAULT 0,
  json BLOB,
  UNIQUE(type, id)
);
CREATE INDEX resources_type_rid ON resources(type);
CREATE INDEX resources_type_lu ON resources(type, last_updated, id);
CREATE TABLE history(
  rid INTEGER NOT NULL,
  version INTEGER NOT NULL,
  seq INTEGER NOT NULL,
  last_updated INTEGER NOT NULL,
  deleted INTEGER NOT NULL,
  json BLOB,
  UNIQUE(rid, version)
);
CREATE TABLE compartment(patient_id TEXT NOT NULL, rid INTEGER NOT NULL, PRIMARY KEY(patient_id, rid)) WITHOUT ROWID;
CREATE INDEX compartment_rid ON compartment(rid);
CREATE TABLE ext_ref(rid INTEGER NOT NULL, target_type TEXT NOT NULL, target_id TEXT NOT NULL,
  PRIMARY KEY(rid, target_type, target_id)) WITHOUT ROWID;
CREATE TABLE identifier(type TEXT NOT NULL, system TEXT NOT NULL, value TEXT NOT NULL, rid INTEGER NOT NULL);
CREATE INDEX identifier_lookup ON identifier(type, value, system);
CREATE INDEX identifier_rid ON identifier(rid);
)sql";

constexpr const char* kMigrationV2 = R"sql(
CREATE TABLE export_jobs(
  job_id TEXT PRIMARY KEY,
  queue_order INTEGER NOT NULL,
  job_name TEXT NOT NULL,
  status TEXT NOT NULL,
  view TEXT NOT NULL,
  level TEXT NOT NULL,
  group_id TEXT NOT NULL,
  types TEXT NOT NULL,
  since INTEGER,
  output_format TEXT NOT NULL,
  s3_uri TEXT NOT NULL,
  kms_key_id TEXT NOT NULL,
  role_arn TEXT NOT NULL,
  request_url TEXT NOT NULL,
  submit_time INTEGER NOT NULL,
  start_time INTEGER,
  end_time INTEGER,
  snapshot_seq INTEGER,
  snapshot_time INTEGER,
  message TEXT NOT NULL,
  include_referenced INTEGER NOT NULL
);
CREATE INDEX export_jobs_status ON export_jobs(status, queue_order);
CREATE TABLE export_tasks(
  job_id TEXT NOT NULL,
  task_no INTEGER NOT NULL,
  type TEXT NOT NULL,
  scope INTEGER NOT NULL,
  min_rid INTEGER NOT NULL,
  max_rid INTEGER NOT NULL,
  after_rid INTEGER NOT NULL,
  planned_rows INTEGER NOT NULL,
  done INTEGER NOT NULL,
  PRIMARY KEY(job_id, task_no)
);
CREATE TABLE export_files(
  job_id TEXT NOT NULL,
  kind TEXT NOT NULL,
  type TEXT NOT NULL,
  file_no INTEGER NOT NULL,
  key TEXT NOT NULL,
  count INTEGER NOT NULL,
  bytes INTEGER NOT NULL,
  task_no INTEGER NOT NULL,
  PRIMARY KEY(job_id, kind, type, file_no)
);
CREATE TABLE export_job_patients(job_id TEXT NOT NULL, patient_id TEXT NOT NULL,
  PRIMARY KEY(job_id, patient_id)) WITHOUT ROWID;
CREATE TABLE export_scope(job_id TEXT NOT NULL, type TEXT NOT NULL, rid INTEGER NOT NULL,
  PRIMARY KEY(job_id, type, rid)) WITHOUT ROWID;
)sql";

constexpr const char* kMigrationV3 = R"sql(
CREATE TABLE compartment_v3(patient_id TEXT NOT NULL, rid INTEGER NOT NULL, since_seq INTEGER NOT NULL,
  until_seq INTEGER, PRIMARY KEY(patient_id, rid, since_seq)) WITHOUT ROWID;
INSERT INTO compartment_v3(patient_id, rid, since_seq, until_seq)
  SELECT c.patient_id, c.rid, 0, CASE WHEN r.deleted THEN r.seq ELSE NULL END
  FROM compartment c JOIN resources r ON r.rid = c.rid;
DROP TABLE compartment;
ALTER TABLE compartment_v3 RENAME TO compartment;
CREATE INDEX compartment_rid ON compartment(rid);
)sql";

constexpr const char* kMigrationV4 = R"sql(
ALTER TABLE export_jobs ADD COLUMN owner TEXT NOT NULL DEFAULT 'anonymous';
)sql";

// Each table is keyed (param, value..., rid) for lookups in rid order, with (rid, param) for probes and deletes.
constexpr const char* kMigrationV5 = R"sql(
CREATE TABLE sp_string(param INTEGER NOT NULL, norm TEXT NOT NULL, rid INTEGER NOT NULL, exact TEXT NOT NULL,
  PRIMARY KEY(param, norm, rid, exact)) WITHOUT ROWID;
CREATE INDEX sp_string_rid ON sp_string(rid, param);
CREATE TABLE sp_token(param INTEGER NOT NULL, code TEXT NOT NULL, rid INTEGER NOT NULL, kind INTEGER NOT NULL,
  system TEXT NOT NULL, PRIMARY KEY(param, code, rid, kind, system)) WITHOUT ROWID;
CREATE INDEX sp_token_rid ON sp_token(rid, param);
CREATE TABLE sp_reference(param INTEGER NOT NULL, id TEXT NOT NULL, type TEXT NOT NULL, rid INTEGER NOT NULL,
  PRIMARY KEY(param, id, type, rid)) WITHOUT ROWID;
CREATE INDEX sp_reference_rid ON sp_reference(rid, param);
CREATE TABLE sp_date(param INTEGER NOT NULL, lo INTEGER NOT NULL, hi INTEGER NOT NULL, rid INTEGER NOT NULL,
  PRIMARY KEY(param, lo, hi, rid)) WITHOUT ROWID;
CREATE INDEX sp_date_rid ON sp_date(rid, param);
CREATE TABLE sp_number(param INTEGER NOT NULL, value REAL NOT NULL, lo REAL NOT NULL, hi REAL NOT NULL,
  rid INTEGER NOT NULL, PRIMARY KEY(param, value, rid, lo, hi)) WITHOUT ROWID;
CREATE INDEX sp_number_rid ON sp_number(rid, param);
CREATE TABLE sp_quantity(param INTEGER NOT NULL, value REAL NOT NULL, code TEXT NOT NULL, system TEXT NOT NULL,
  unit TEXT NOT NULL, lo REAL NOT NULL, hi REAL NOT NULL, rid INTEGER NOT NULL,
  PRIMARY KEY(param, value, rid, code, system, unit, lo, hi)) WITHOUT ROWID;
CREATE INDEX sp_quantity_rid ON sp_quantity(rid, param);
CREATE TABLE sp_uri(param INTEGER NOT NULL, value TEXT NOT NULL, rid INTEGER NOT NULL,
  PRIMARY KEY(param, value, rid)) WITHOUT ROWID;
CREATE INDEX sp_uri_rid ON sp_uri(rid, param);
CREATE TABLE sp_composite(param INTEGER NOT NULL, grp INTEGER NOT NULL, comp INTEGER NOT NULL, s1 TEXT NOT NULL,
  s2 TEXT NOT NULL, s3 TEXT NOT NULL, i1 INTEGER NOT NULL, i2 INTEGER NOT NULL, n0 REAL NOT NULL, n1 REAL NOT NULL,
  n2 REAL NOT NULL, rid INTEGER NOT NULL);
CREATE INDEX sp_composite_k ON sp_composite(param, comp, s2);
CREATE INDEX sp_composite_rid ON sp_composite(rid, param);
)sql";

// The lookup indexes (param, value...) are not here: store/sqlite_search.cc creates them (EnsureSearchLookups).
constexpr const char* kMigrationV6 = R"sql(
DROP TABLE sp_string;
DROP TABLE sp_token;
DROP TABLE sp_reference;
DROP TABLE sp_date;
DROP TABLE sp_number;
DROP TABLE sp_quantity;
DROP TABLE sp_uri;
DELETE FROM sp_composite;
CREATE TABLE sp_string(rid INTEGER NOT NULL, param INTEGER NOT NULL, norm TEXT NOT NULL, exact TEXT NOT NULL,
  PRIMARY KEY(rid, param, norm, exact)) WITHOUT ROWID;
CREATE TABLE sp_token(rid INTEGER NOT NULL, param INTEGER NOT NULL, code TEXT NOT NULL, kind INTEGER NOT NULL,
  system TEXT NOT NULL, PRIMARY KEY(rid, param, code, kind, system)) WITHOUT ROWID;
CREATE TABLE sp_reference(rid INTEGER NOT NULL, param INTEGER NOT NULL, id TEXT NOT NULL, type TEXT NOT NULL,
  PRIMARY KEY(rid, param, id, type)) WITHOUT ROWID;
CREATE TABLE sp_date(rid INTEGER NOT NULL, param INTEGER NOT NULL, lo INTEGER NOT NULL, hi INTEGER NOT NULL,
  PRIMARY KEY(rid, param, lo, hi)) WITHOUT ROWID;
CREATE TABLE sp_number(rid INTEGER NOT NULL, param INTEGER NOT NULL, value REAL NOT NULL, lo REAL NOT NULL,
  hi REAL NOT NULL, PRIMARY KEY(rid, param, value, lo, hi)) WITHOUT ROWID;
CREATE TABLE sp_quantity(rid INTEGER NOT NULL, param INTEGER NOT NULL, value REAL NOT NULL, code TEXT NOT NULL,
  system TEXT NOT NULL, unit TEXT NOT NULL, lo REAL NOT NULL, hi REAL NOT NULL,
  PRIMARY KEY(rid, param, value, code, system, unit, lo, hi)) WITHOUT ROWID;
CREATE TABLE sp_uri(rid INTEGER NOT NULL, param INTEGER NOT NULL, value TEXT NOT NULL,
  PRIMARY KEY(rid, param, value)) WITHOUT ROWID;
DROP INDEX sp_composite_k;
DELETE FROM meta WHERE key='search_index_hash';
)sql";

constexpr const char* kMigrationV7 = R"sql(
ALTER TABLE export_jobs ADD COLUMN files_deleted_at INTEGER;
ALTER TABLE export_jobs ADD COLUMN until_ms INTEGER;
ALTER TABLE export_jobs ADD COLUMN tag_filter TEXT NOT NULL DEFAULT '';
ALTER TABLE export_jobs ADD COLUMN security_filter TEXT NOT NULL DEFAULT '';
ALTER TABLE export_jobs ADD COLUMN patient_filter TEXT NOT NULL DEFAULT '';
CREATE TABLE export_polls(job_id TEXT NOT NULL, client TEXT NOT NULL, last_ms INTEGER NOT NULL,
  PRIMARY KEY(job_id, client)) WITHOUT ROWID;
)sql";

constexpr const char* kMigrationV8 = R"sql(
ALTER TABLE export_jobs ADD COLUMN type_filter TEXT NOT NULL DEFAULT '';
ALTER TABLE export_jobs ADD COLUMN elements TEXT NOT NULL DEFAULT '';
ALTER TABLE export_jobs ADD COLUMN notes TEXT NOT NULL DEFAULT '';
ALTER TABLE export_tasks ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
)sql";

constexpr const char* kMigrationV9 = R"sql(
CREATE TABLE export_downloads(job_id TEXT NOT NULL, token TEXT NOT NULL, expires_ms INTEGER NOT NULL,
  PRIMARY KEY(job_id, token)) WITHOUT ROWID;
)sql";

constexpr const char* kMigrationV10 = R"sql(
ALTER TABLE export_jobs ADD COLUMN client_token TEXT NOT NULL DEFAULT '';
ALTER TABLE export_jobs ADD COLUMN client_request TEXT NOT NULL DEFAULT '';
CREATE UNIQUE INDEX export_jobs_client_token ON export_jobs(client_token) WHERE client_token <> '';
)sql";

// The Bulk Data IG's STU3 options (allowPartialManifests, organizeOutputBy, includeAssociatedData), split blocks of
// organized files, and the Provenance targets that includeAssociatedData matches against what a job exported.
constexpr const char* kMigrationV11 = R"sql(
ALTER TABLE export_jobs ADD COLUMN partial_manifests INTEGER NOT NULL DEFAULT 0;
ALTER TABLE export_jobs ADD COLUMN organize_by TEXT NOT NULL DEFAULT '';
ALTER TABLE export_jobs ADD COLUMN associated TEXT NOT NULL DEFAULT '';
ALTER TABLE export_tasks ADD COLUMN mode TEXT NOT NULL DEFAULT '';
ALTER TABLE export_files ADD COLUMN continues_in TEXT NOT NULL DEFAULT '';
CREATE TABLE export_assoc(job_id TEXT NOT NULL, target_type TEXT NOT NULL, target_id TEXT NOT NULL,
  prov_rid INTEGER NOT NULL, recorded INTEGER NOT NULL,
  PRIMARY KEY(job_id, target_type, target_id, prov_rid)) WITHOUT ROWID;
)sql";

// Import jobs (the control plane's StartFHIRImportJob).
constexpr const char* kMigrationV12 = R"sql(
CREATE TABLE import_jobs(
  job_id TEXT PRIMARY KEY,
  queue_order INTEGER NOT NULL,
  job_name TEXT NOT NULL,
  status TEXT NOT NULL,
  input_s3_uri TEXT NOT NULL,
  output_s3_uri TEXT NOT NULL,
  kms_key_id TEXT NOT NULL,
  role_arn TEXT NOT NULL,
  owner TEXT NOT NULL,
  submit_time INTEGER NOT NULL,
  end_time INTEGER,
  base_seq INTEGER,
  message TEXT NOT NULL,
  client_token TEXT NOT NULL,
  client_request TEXT NOT NULL
);
CREATE UNIQUE INDEX import_jobs_client_token ON import_jobs(client_token) WHERE client_token <> '';
)sql";

Status SetVersion(SqliteConnection& db, int version) {
  return db.Exec("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', '" + std::to_string(version) +
                 "')");
}

Result<bool> HasColumn(SqliteConnection& db, const std::string& table, const std::string& column) {
  ASSIGN_OR_RETURN(auto q, db.Prepare("SELECT count(*) FROM pragma_table_info(?1) WHERE name=?2"));
  q->Bind(1, table).Bind(2, column);
  ASSIGN_OR_RETURN(bool row, q->Step());
  return row && q->Int(0) > 0;
}

// v3 adds `op` to resources and history (skipped where a development build of v2 already had it).
Status AddOpColumns(SqliteConnection& db) {
  for (const char* table : {"resources", "history"}) {
    ASSIGN_OR_RETURN(bool has, HasColumn(db, table, "op"));
    if (!has)
      RETURN_IF_ERROR(db.Exec(std::string("ALTER TABLE ") + table + " ADD COLUMN op INTEGER NOT NULL DEFAULT 0"));
  }
  return Status::Ok();
}

// Runs inside the caller's transaction.
Status ApplyMigration(SqliteConnection& db, int to_version) {
  const char* sql = to_version == 1    ? kSchemaV1
                    : to_version == 2  ? kMigrationV2
                    : to_version == 3  ? kMigrationV3
                    : to_version == 4  ? kMigrationV4
                    : to_version == 5  ? kMigrationV5
                    : to_version == 6  ? kMigrationV6
                    : to_version == 7  ? kMigrationV7
                    : to_version == 8  ? kMigrationV8
                    : to_version == 9  ? kMigrationV9
                    : to_version == 10 ? kMigrationV10
                    : to_version == 11 ? kMigrationV11
                                       : kMigrationV12;
  if (to_version == 3) RETURN_IF_ERROR(AddOpColumns(db));
  RETURN_IF_ERROR(db.Exec(sql));
  return SetVersion(db, to_version);
}

// Runs `fn` in one exclusive transaction: the schema version is read and every migration applied under the same
// lock, so two processes opening a store at once (serve and load) never both migrate it, and on an empty file only
// one creates the schema.
Status InExclusiveTransaction(SqliteConnection& db, const std::function<Status()>& fn) {
  RETURN_IF_ERROR(db.Exec("BEGIN EXCLUSIVE"));
  Status st = fn();
  if (st.ok()) st = db.Exec("COMMIT");
  if (!st.ok() && !sqlite3_get_autocommit(db.raw())) {
    if (Status rb = db.Exec("ROLLBACK"); !rb.ok()) {
      st = Status(st.code(), st.message() + " (rollback also failed: " + rb.message() + ")");
    }
  }
  return st;
}

Status EnsureSchemaLocked(SqliteConnection& db, const std::string& path);

}  // namespace

Status CreateSchema(SqliteConnection& db, int version) {
  return InExclusiveTransaction(db, [&]() -> Status {
    for (int v = 1; v <= version; ++v) RETURN_IF_ERROR(ApplyMigration(db, v));
    return Status::Ok();
  });
}

Status EnsureSchema(SqliteConnection& db, const std::string& path) {
  return InExclusiveTransaction(db, [&] { return EnsureSchemaLocked(db, path); });
}

namespace {

Status EnsureSchemaLocked(SqliteConnection& db, const std::string& path) {
  ASSIGN_OR_RETURN(auto tables, db.Prepare("SELECT count(*) FROM sqlite_master WHERE type='table'"));
  ASSIGN_OR_RETURN(bool has_row, tables->Step());
  int64_t table_count = has_row ? tables->Int(0) : 0;
  tables.reset();
  if (table_count == 0) {
    for (int v = 1; v <= kSchemaVersion; ++v) RETURN_IF_ERROR(ApplyMigration(db, v));
    return Status::Ok();
  }

  ASSIGN_OR_RETURN(auto has_meta, db.Prepare("SELECT count(*) FROM sqlite_master WHERE type='table' AND name='meta'"));
  ASSIGN_OR_RETURN(has_row, has_meta->Step());
  bool meta_exists = has_row && has_meta->Int(0) == 1;
  has_meta.reset();
  std::string found;
  if (meta_exists) {
    ASSIGN_OR_RETURN(auto q, db.Prepare("SELECT value FROM meta WHERE key='schema_version'"));
    ASSIGN_OR_RETURN(has_row, q->Step());
    if (has_row) found = q->Str(0);
  }
  int version = 0;
  bool numeric = !found.empty() && found.find_first_not_of("0123456789") == std::string::npos && found.size() < 6;
  if (numeric) version = std::stoi(found);
  if (!numeric || version < 1) {
    return Status::Invalid(path +
                           " is not a fhirlake datastore database (no schema_version); move it out of the "
                           "data directory or point --data-dir at another directory");
  }
  if (version > kSchemaVersion) {
    return Status::Invalid(path + " has schema version " + std::to_string(version) + ", newer than this fhirlake (" +
                           FHIRLAKE_VERSION + ") supports (" + std::to_string(kSchemaVersion) +
                           "); run a newer fhirlake, or restore a backup made for this version");
  }
  for (int v = version + 1; v <= kSchemaVersion; ++v) {
    Status st = ApplyMigration(db, v);
    if (!st.ok()) return st.WithContext("migrating " + path + " to schema version " + std::to_string(v));
  }
  return Status::Ok();
}

}  // namespace
}  // namespace fhirlake::store
