// The SQLite implementation of ResourceStore and DatastoreCatalog: one WAL database per datastore under
// {data_dir}/datastores/{id}/fhir.db, a small pool of connections for concurrent readers, and one writer
// at a time (an in-process mutex in front of BEGIN IMMEDIATE; busy_timeout covers other processes).
#include <dirent.h>
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>

#include "common/ids.h"
#include "fhir/r4.h"
#include "store/resource_store.h"
#include "store/sqlite_db.h"
#include "store/sqlite_rows.h"
#include "store/sqlite_schema.h"
#include "store/sqlite_search.h"
#include "store/versioned_transaction.h"

namespace fhirlake::store {
namespace {

constexpr size_t kMaxPooledConnections = 8;

// Lists in one TEXT column: types comma-separated; _tag/_security/patient items (which may hold commas) one per line.
std::string JoinWith(const std::vector<std::string>& items, char sep) {
  std::string out;
  for (const auto& t : items) {
    if (!out.empty()) out.push_back(sep);
    out += t;
  }
  return out;
}

std::vector<std::string> SplitOn(std::string_view s, char sep) {
  std::vector<std::string> out;
  while (!s.empty()) {
    size_t at = s.find(sep);
    out.emplace_back(s.substr(0, at));
    if (at == std::string_view::npos) break;
    s.remove_prefix(at + 1);
  }
  return out;
}

std::string JoinTypes(const std::vector<std::string>& types) { return JoinWith(types, ','); }
std::vector<std::string> SplitTypes(std::string_view s) { return SplitOn(s, ','); }
std::string JoinLines(const std::vector<std::string>& items) { return JoinWith(items, '\n'); }
std::vector<std::string> SplitLines(std::string_view s) { return SplitOn(s, '\n'); }

class SqliteStore;

// Hands out connections; a lease returns its connection to the pool.
class ConnectionPool {
 public:
  ConnectionPool(std::string path, int busy_timeout_ms) : path_(std::move(path)), busy_timeout_ms_(busy_timeout_ms) {}

  class Lease {
   public:
    Lease(ConnectionPool* pool, std::unique_ptr<SqliteConnection> c) : pool_(pool), conn_(std::move(c)) {}
    Lease(Lease&&) = default;
    ~Lease() {
      if (conn_) pool_->Release(std::move(conn_));
    }
    SqliteConnection& operator*() { return *conn_; }
    SqliteConnection* operator->() { return conn_.get(); }

   private:
    ConnectionPool* pool_;
    std::unique_ptr<SqliteConnection> conn_;
  };

  Result<Lease> Acquire() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (closed_) return Status::NotFound("the datastore was deleted");
      if (!idle_.empty()) {
        auto c = std::move(idle_.back());
        idle_.pop_back();
        return Lease(this, std::move(c));
      }
    }
    ASSIGN_OR_RETURN(auto conn, Open());
    return Lease(this, std::move(conn));
  }

  // A new connection, not pooled.
  Result<std::unique_ptr<SqliteConnection>> Open() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (closed_) return Status::NotFound("the datastore was deleted");
    }
    ASSIGN_OR_RETURN(auto conn, SqliteConnection::Open(path_, busy_timeout_ms_));
    RETURN_IF_ERROR(
        conn->Exec("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=OFF;"
                   " PRAGMA temp_store=MEMORY; PRAGMA cache_size=-4096;"));
    RETURN_IF_ERROR(RegisterSearchFunctions(*conn));
    return conn;
  }

 private:
  void Release(std::unique_ptr<SqliteConnection> c) {
    // A lease given back inside a transaction (an error path, or an exception unwinding) must not hand a frozen
    // snapshot or a held write lock to the next user.
    if (!sqlite3_get_autocommit(c->raw()) && !c->Exec("ROLLBACK").ok()) return;
    std::lock_guard<std::mutex> lock(mu_);
    if (!closed_ && idle_.size() < kMaxPooledConnections) idle_.push_back(std::move(c));
  }

 public:
  // The datastore was dropped: idle connections close now, leased ones when they come back, and no new one opens
  // (so the deleted files' space is given back once the last user is done).
  void Close() {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    idle_.clear();
  }

 private:
  std::string path_;
  int busy_timeout_ms_;
  std::mutex mu_;
  std::vector<std::unique_ptr<SqliteConnection>> idle_;  // GUARDED_BY(mu_)
  bool closed_ = false;                                  // GUARDED_BY(mu_)
};

// Every row's first column, as strings.
Result<std::vector<std::string>> FirstColumn(SqliteStmt& q) {
  std::vector<std::string> out;
  while (true) {
    ASSIGN_OR_RETURN(bool row, q.Step());
    if (!row) break;
    out.push_back(q.Str(0));
  }
  return out;
}

// The SQL LIMIT of a page: one row more than asked for (it tells the caller a next page exists); -1 (no limit)
// for ResourceStore::kAllRows.
int64_t PageSqlLimit(size_t limit) { return limit >= ResourceStore::kAllRows ? -1 : static_cast<int64_t>(limit) + 1; }

constexpr const char* kSelectCurrent =
    "SELECT rid, type, id, version, seq, last_updated, deleted, json, op FROM resources WHERE type=?1 AND id=?2";

Result<StoredResource> ReadCurrent(SqliteConnection& c, std::string_view type, std::string_view id) {
  ASSIGN_OR_RETURN(auto q, c.Prepare(kSelectCurrent));
  q->Bind(1, type).Bind(2, id);
  ASSIGN_OR_RETURN(bool row, q->Step());
  if (!row) return Status::NotFound("Resource " + std::string(type) + "/" + std::string(id) + " is not known");
  return ReadResourceRow(*q);
}

// The SQLite side of a write transaction: rows and indexes only; the versioning rules are VersionedTransaction's.
class SqliteTransaction final : public StorageTransaction {
 public:
  // `conn` is the store's writer connection, used only while `lock` (the write lock) is held.
  SqliteTransaction(std::unique_lock<std::mutex> lock, SqliteConnection* conn) : lock_(std::move(lock)), conn_(conn) {}

  ~SqliteTransaction() override {
    // Not committed: roll back. If that fails the connection is left in a transaction, which Writer() rolls back
    // before the next use, so nothing half-written can ever be committed.
    if (open_) (void)conn_->Exec("ROLLBACK");
  }

  Status Begin(const Clock& clock) {
    RETURN_IF_ERROR(conn_->Exec("BEGIN IMMEDIATE"));
    open_ = true;
    ASSIGN_OR_RETURN(auto q, conn_->Prepare("SELECT name, value FROM counters"));
    int64_t seq = 0, last = 0;
    while (true) {
      ASSIGN_OR_RETURN(bool row, q->Step());
      if (!row) break;
      if (q->Text(0) == "seq") seq = q->Int(1);
      if (q->Text(0) == "last_updated") last = q->Int(1);
    }
    q.reset();
    seq_ = seq + 1;
    last_updated_ = std::max(clock.NowMillis(), last);
    ASSIGN_OR_RETURN(auto u, conn_->Prepare("UPDATE counters SET value = CASE name WHEN 'seq' THEN ?1 ELSE ?2 END"));
    u->Bind(1, seq_).Bind(2, last_updated_);
    return u->Run();
  }

  int64_t seq() const override { return seq_; }
  EpochMillis last_updated() const override { return last_updated_; }

  Result<StoredResource> ReadCurrent(std::string_view type, std::string_view id) override {
    return store::ReadCurrent(*conn_, type, id);
  }

  Result<int64_t> WriteCurrent(const StoredResource& row, WriteOp op) override {
    if (row.rid == 0) {
      ASSIGN_OR_RETURN(auto ins, conn_->Prepare("INSERT INTO resources(type, id, version, seq, last_updated, deleted, "
                                                "json, op) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"));
      ins->Bind(1, row.type).Bind(2, row.id).Bind(3, row.version).Bind(4, row.seq).Bind(5, row.last_updated);
      ins->Bind(6, row.deleted ? 1 : 0);
      if (row.deleted) {
        ins->BindNull(7);
      } else {
        ins->BindBlob(7, row.json);
      }
      ins->Bind(8, static_cast<int64_t>(op));
      RETURN_IF_ERROR(ins->Run());
      return conn_->LastInsertRowid();
    }
    ASSIGN_OR_RETURN(auto u, conn_->Prepare("UPDATE resources SET version=?1, seq=?2, last_updated=?3, deleted=?4, "
                                            "json=?5, op=?6 WHERE rid=?7"));
    u->Bind(1, row.version).Bind(2, row.seq).Bind(3, row.last_updated).Bind(4, row.deleted ? 1 : 0);
    if (row.deleted) {
      u->BindNull(5);
    } else {
      u->BindBlob(5, row.json);
    }
    u->Bind(6, static_cast<int64_t>(op)).Bind(7, row.rid);
    RETURN_IF_ERROR(u->Run());
    return row.rid;
  }

  Result<std::vector<std::string>> FindByIdentifier(std::string_view type, std::string_view system,
                                                    std::string_view value) override {
    ASSIGN_OR_RETURN(auto q, conn_->Prepare("SELECT DISTINCT r.id FROM identifier i JOIN resources r ON r.rid=i.rid "
                                            "WHERE i.type=?1 AND i.value=?2 AND (?3 = '' OR i.system=?3) AND "
                                            "r.deleted=0 ORDER BY r.id"));
    q->Bind(1, type).Bind(2, value).Bind(3, system);
    return FirstColumn(*q);
  }

  Status Commit() override {
    RETURN_IF_ERROR(conn_->Exec("COMMIT"));
    open_ = false;
    return Status::Ok();
  }

  Status ArchiveCurrent(int64_t rid) override {
    ASSIGN_OR_RETURN(auto q, conn_->Prepare("INSERT INTO history(rid, version, seq, last_updated, deleted, json, op) "
                                            "SELECT rid, version, seq, last_updated, deleted, json, op FROM resources "
                                            "WHERE rid=?1"));
    q->Bind(1, rid);
    return q->Run();
  }

  // Ends the current compartment membership of `rid` at this transaction's sequence number (exports with an
  // earlier snapshot still see it) and drops its reference and identifier rows.
  Status EndIndexes(int64_t rid, bool keep_references) override {
    ASSIGN_OR_RETURN(auto c, conn_->Prepare("UPDATE compartment SET until_seq=?2 WHERE rid=?1 AND until_seq IS NULL"));
    c->Bind(1, rid).Bind(2, seq_);
    RETURN_IF_ERROR(c->Run());
    if (!keep_references) {
      ASSIGN_OR_RETURN(auto x, conn_->Prepare("DELETE FROM ext_ref WHERE rid=?1"));
      x->Bind(1, rid);
      RETURN_IF_ERROR(x->Run());
    }
    ASSIGN_OR_RETURN(auto i, conn_->Prepare("DELETE FROM identifier WHERE rid=?1"));
    i->Bind(1, rid);
    RETURN_IF_ERROR(i->Run());
    return DropSearchRows(*conn_, rid);
  }

  Result<SearchResult> Search(const search::SearchQuery& query) override { return RunSearch(*conn_, query, ""); }

  Status WriteIndexes(const fhir::ParsedResource& parsed, std::string_view id, int64_t rid,
                      const search::IndexRows& index) override {
    RETURN_IF_ERROR(WriteSearchRows(*conn_, rid, index));
    {
      ASSIGN_OR_RETURN(auto c, conn_->Prepare("INSERT OR REPLACE INTO compartment(patient_id, rid, since_seq, "
                                              "until_seq) VALUES (?1, ?2, ?3, NULL)"));
      if (parsed.type == "Patient") {
        c->Bind(1, id).Bind(2, rid).Bind(3, seq_);
        RETURN_IF_ERROR(c->Run());
      }
      for (const auto& p : parsed.compartment_patients) {
        if (parsed.type == "Patient" && p == id) continue;
        c->Bind(1, p).Bind(2, rid).Bind(3, seq_);
        RETURN_IF_ERROR(c->Run());
      }
    }
    {
      ASSIGN_OR_RETURN(auto x, conn_->Prepare("INSERT OR IGNORE INTO ext_ref(rid, target_type, target_id) VALUES "
                                              "(?1, ?2, ?3)"));
      for (const auto& ref : parsed.references) {
        if (fhir::IsPatientCompartmentType(ref.type)) continue;
        x->Bind(1, rid).Bind(2, ref.type).Bind(3, ref.id);
        RETURN_IF_ERROR(x->Run());
      }
    }
    if (!parsed.identifiers.empty()) {
      ASSIGN_OR_RETURN(auto i, conn_->Prepare("INSERT INTO identifier(type, system, value, rid) VALUES "
                                              "(?1, ?2, ?3, ?4)"));
      for (const auto& [system, value] : parsed.identifiers) {
        i->Bind(1, parsed.type).Bind(2, system).Bind(3, value).Bind(4, rid);
        RETURN_IF_ERROR(i->Run());
      }
    }
    return Status::Ok();
  }

 private:
  std::unique_lock<std::mutex> lock_;
  SqliteConnection* conn_;
  bool open_ = false;
  int64_t seq_ = 0;
  EpochMillis last_updated_ = 0;
};

class SqliteStore final : public ResourceStore, public JobStore {
 public:
  SqliteStore(DatastoreInfo info, const StoreOptions& options, const Clock& clock)
      : info_(std::move(info)),
        pool_(info_.path, options.busy_timeout_ms),
        writer_cache_kib_(std::max<int64_t>(1, options.writer_cache_bytes >> 10)),
        scope_chunk_rows_(options.scope_chunk_rows),
        clock_(clock) {}

  // Opens (creating when `create`) the database and reads the datastore identity from it.
  Status Open(bool create) {
    if (create) {
      // The page size must be set before the database becomes a WAL database (it cannot change afterwards), so
      // the first connection to a new file sets it before any pooled connection switches to WAL.
      ASSIGN_OR_RETURN(auto first, SqliteConnection::Open(info_.path, 1000));
      RETURN_IF_ERROR(first->Exec("PRAGMA page_size=65536; PRAGMA journal_mode=WAL;"));
    }
    ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    RETURN_IF_ERROR(EnsureSchema(*conn, info_.path));
    if (create) {
      // One transaction: a datastore has its whole identity, config and status, or none of them.
      RETURN_IF_ERROR(conn->Exec("BEGIN IMMEDIATE"));
      ASSIGN_OR_RETURN(auto ins, conn->Prepare("INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)"));
      ins->Bind(1, "datastore_id").Bind(2, info_.id);
      RETURN_IF_ERROR(ins->Run());
      ins->Bind(1, "datastore_name").Bind(2, info_.name);
      RETURN_IF_ERROR(ins->Run());
      ins->Bind(1, "created_at").Bind(2, std::to_string(info_.created_at));
      RETURN_IF_ERROR(ins->Run());
      ins->Bind(1, "datastore_config").Bind(2, info_.config);
      RETURN_IF_ERROR(ins->Run());
      ins->Bind(1, "datastore_status").Bind(2, status_);
      RETURN_IF_ERROR(ins->Run());
      ins.reset();
      RETURN_IF_ERROR(conn->Exec("COMMIT"));
    }
    ASSIGN_OR_RETURN(auto q, conn->Prepare("SELECT key, value FROM meta"));
    while (true) {
      ASSIGN_OR_RETURN(bool row, q->Step());
      if (!row) break;
      if (q->Text(0) == "datastore_id") info_.id = q->Str(1);
      if (q->Text(0) == "datastore_name") info_.name = q->Str(1);
      if (q->Text(0) == "created_at") info_.created_at = std::strtoll(q->Str(1).c_str(), nullptr, 10);
      if (q->Text(0) == "datastore_config") info_.config = q->Str(1);
      if (q->Text(0) == "datastore_status") status_ = q->Str(1);
    }
    q.reset();
    if (info_.id.empty()) {
      // A crash while creating the datastore (after the schema, before its identity): the folder name is the id.
      std::string dir_id = std::filesystem::path(info_.path).parent_path().filename().string();
      if (IsHexId(dir_id)) {
        ASSIGN_OR_RETURN(auto ins, conn->Prepare("INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)"));
        ins->Bind(1, "datastore_id").Bind(2, dir_id);
        RETURN_IF_ERROR(ins->Run());
        info_.id = dir_id;
      }
    }
    if (!IsHexId(info_.id)) return Status::Invalid(info_.path + " does not record a valid datastore id");
    return ReindexUnderLock(/*force=*/false).status();
  }

  const DatastoreInfo& info() const override { return info_; }

  std::string status() const override {
    std::lock_guard<std::mutex> lock(status_mu_);
    return status_;
  }

  Status SetStatus(const std::string& status) override {
    RETURN_IF_ERROR(WithWrite([&](SqliteConnection& c) -> Status {
      ASSIGN_OR_RETURN(auto q, c.Prepare("INSERT OR REPLACE INTO meta(key, value) VALUES ('datastore_status', ?1)"));
      q->Bind(1, status);
      return q->Run();
    }));
    std::lock_guard<std::mutex> lock(status_mu_);
    status_ = status;
    return Status::Ok();
  }

  // After its datastore was dropped: closes its connections (the writer's once the current write ends).
  void Close() {
    {
      std::lock_guard<std::mutex> lock(write_mu_);
      writer_.reset();
    }
    pool_.Close();
  }

  // Before Open(create=true): the status a new datastore starts in.
  void SetInitialStatus(std::string status) { status_ = std::move(status); }

  Result<std::unique_ptr<StoreTransaction>> BeginWrite() override {
    std::unique_lock<std::mutex> lock(write_mu_);
    ASSIGN_OR_RETURN(SqliteConnection * conn, Writer());
    auto txn = std::make_unique<SqliteTransaction>(std::move(lock), conn);
    RETURN_IF_ERROR(txn->Begin(clock_));
    return NewVersionedTransaction(std::move(txn));
  }

  Result<StoredResource> Read(std::string_view type, std::string_view id) override {
    ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    return ReadCurrent(*conn, type, id);
  }

  Result<StoredResource> ReadVersion(std::string_view type, std::string_view id, int64_t version) override {
    ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    RETURN_IF_ERROR(conn->Exec("BEGIN"));  // one snapshot for both reads (ended by the lease)
    ASSIGN_OR_RETURN(StoredResource current, ReadCurrent(*conn, type, id));
    if (current.version == version) return current;
    ASSIGN_OR_RETURN(auto q, conn->Prepare("SELECT version, seq, last_updated, deleted, json, op FROM history "
                                           "WHERE rid=?1 AND version=?2"));
    q->Bind(1, current.rid).Bind(2, version);
    ASSIGN_OR_RETURN(bool row, q->Step());
    if (!row) {
      return Status::NotFound("Version " + std::to_string(version) + " of " + std::string(type) + "/" +
                              std::string(id) + " is not known");
    }
    return HistoryRow(current, *q);
  }

  Result<ResourcePage> History(std::string_view type, std::string_view id, const PageRequest& page) override {
    ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    RETURN_IF_ERROR(conn->Exec("BEGIN"));  // current row, history and count from one snapshot (ended by the lease)
    ASSIGN_OR_RETURN(StoredResource current, ReadCurrent(*conn, type, id));
    ResourcePage out;
    {
      ASSIGN_OR_RETURN(auto n, conn->Prepare("SELECT count(*) FROM history WHERE rid=?1"));
      n->Bind(1, current.rid);
      ASSIGN_OR_RETURN(bool row, n->Step());
      out.total = (row ? n->Int(0) : 0) + 1;
    }
    // Every version in `history` is older than the current one.
    const bool with_current = !page.after || current.version < *page.after;
    int64_t limit = PageSqlLimit(page.limit);
    if (with_current) {
      out.rows.push_back(current);
      if (limit > 0) --limit;
    }
    ASSIGN_OR_RETURN(auto q, conn->Prepare("SELECT version, seq, last_updated, deleted, json, op FROM history "
                                           "WHERE rid=?1 AND version<?2 ORDER BY version DESC LIMIT ?3"));
    q->Bind(1, current.rid).Bind(2, page.after.value_or(INT64_MAX)).Bind(3, limit);
    while (true) {
      ASSIGN_OR_RETURN(bool row, q->Step());
      if (!row) break;
      out.rows.push_back(HistoryRow(current, *q));
    }
    return out;
  }

  Result<ResourcePage> HistoryAll(std::string_view type, const HistoryPageRequest& page) override {
    ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    RETURN_IF_ERROR(conn->Exec("BEGIN"));  // the page and the count from one snapshot (ended by the lease)
    constexpr const char* kVersions =
        " FROM (SELECT r.rid, r.type, r.id, r.version, r.seq, r.last_updated, r.deleted, r.json, r.op FROM resources r "
        "WHERE (?1='' OR r.type=?1) UNION ALL SELECT h.rid, r.type, r.id, h.version, h.seq, h.last_updated, "
        "h.deleted, h.json, h.op FROM history h JOIN resources r ON r.rid=h.rid WHERE (?1='' OR r.type=?1)) v "
        "WHERE v.last_updated>=?2";
    ResourcePage out;
    out.total = -1;
    if (!page.after) {
      ASSIGN_OR_RETURN(auto n, conn->Prepare(std::string("SELECT count(*)") + kVersions));
      n->Bind(1, type).Bind(2, page.since.value_or(INT64_MIN));
      ASSIGN_OR_RETURN(bool row, n->Step());
      out.total = row ? n->Int(0) : 0;
    }
    ASSIGN_OR_RETURN(auto q, conn->Prepare(std::string("SELECT v.rid, v.type, v.id, v.version, v.seq, v.last_updated, "
                                                       "v.deleted, v.json, v.op") +
                                           kVersions +
                                           " AND (v.seq<?3 OR (v.seq=?3 AND v.rid<?4)) ORDER BY v.seq DESC, v.rid DESC "
                                           "LIMIT ?5"));
    q->Bind(1, type).Bind(2, page.since.value_or(INT64_MIN));
    q->Bind(3, page.after ? page.after->first : INT64_MAX).Bind(4, page.after ? page.after->second : INT64_MAX);
    q->Bind(5, PageSqlLimit(page.limit));
    while (true) {
      ASSIGN_OR_RETURN(bool row, q->Step());
      if (!row) break;
      StoredResource r = ReadResourceRow(*q);
      if (r.deleted) r.json.clear();
      out.rows.push_back(std::move(r));
    }
    return out;
  }

  Result<std::vector<StoredResource>> ReferencedBy(const std::vector<int64_t>& rids, size_t limit) override {
    ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    std::vector<StoredResource> out;
    if (rids.empty()) return out;
    std::string list;
    for (int64_t rid : rids) list += (list.empty() ? "" : ",") + std::to_string(rid);
    // ext_ref holds the references to resources outside the Patient compartment (Organization, Practitioner, ...).
    ASSIGN_OR_RETURN(auto q, conn->PrepareUncached(
                                 "SELECT r.rid, r.type, r.id, r.version, r.seq, r.last_updated, r.deleted, r.json, "
                                 "r.op FROM resources r WHERE r.deleted=0 AND r.rid IN (SELECT t.rid FROM ext_ref x "
                                 "JOIN resources t ON t.type=x.target_type AND t.id=x.target_id WHERE x.rid IN (" +
                                 list + ")) AND r.rid NOT IN (" + list + ") ORDER BY r.rid LIMIT ?1"));
    q->Bind(1, static_cast<int64_t>(limit));
    while (true) {
      ASSIGN_OR_RETURN(bool row, q->Step());
      if (!row) break;
      out.push_back(ReadResourceRow(*q));
    }
    return out;
  }

  Result<std::vector<std::string>> CompartmentsOf(std::string_view type, std::string_view id) override {
    ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    ASSIGN_OR_RETURN(StoredResource current, ReadCurrent(*conn, type, id));
    ASSIGN_OR_RETURN(auto q, conn->Prepare("SELECT patient_id FROM compartment WHERE rid=?1 AND until_seq IS NULL "
                                           "ORDER BY patient_id"));
    q->Bind(1, current.rid);
    return FirstColumn(*q);
  }

  Result<StoredResource> ReadAsOf(std::string_view type, std::string_view id, int64_t seq) override {
    ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    RETURN_IF_ERROR(conn->Exec("BEGIN"));  // current row and history from one snapshot (ended by the lease)
    ASSIGN_OR_RETURN(StoredResource current, ReadCurrent(*conn, type, id));
    if (current.seq <= seq) return current;
    ASSIGN_OR_RETURN(auto q, conn->Prepare("SELECT version, seq, last_updated, deleted, json, op FROM history "
                                           "WHERE rid=?1 AND seq<=?2 ORDER BY version DESC LIMIT 1"));
    q->Bind(1, current.rid).Bind(2, seq);
    ASSIGN_OR_RETURN(bool row, q->Step());
    if (!row) {
      return Status::NotFound("Resource " + std::string(type) + "/" + std::string(id) + " did not exist at sequence " +
                              std::to_string(seq));
    }
    return HistoryRow(current, *q);
  }

  Result<int64_t> CountCurrent() override {
    ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    ASSIGN_OR_RETURN(auto q, conn->Prepare("SELECT count(*) FROM resources WHERE deleted=0"));
    ASSIGN_OR_RETURN(bool row, q->Step());
    return row ? q->Int(0) : 0;
  }

  Result<ResourcePage> ReadCompartment(std::string_view patient_id, std::string_view type,
                                       const PageRequest& page) override {
    ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    RETURN_IF_ERROR(conn->Exec("BEGIN"));  // the page and the count from one snapshot (ended by the lease)
    constexpr const char* kMembers =
        " FROM compartment c JOIN resources r ON r.rid=c.rid WHERE c.until_seq IS NULL AND c.patient_id=?1 AND "
        "r.deleted=0 AND (?2='' OR r.type=?2)";
    ResourcePage out;
    {
      ASSIGN_OR_RETURN(auto n, conn->Prepare(std::string("SELECT count(*)") + kMembers));
      n->Bind(1, patient_id).Bind(2, type);
      ASSIGN_OR_RETURN(bool row, n->Step());
      out.total = row ? n->Int(0) : 0;
    }
    // The range on c.rid continues the (patient_id, rid) primary key scan where the previous page ended.
    ASSIGN_OR_RETURN(auto q, conn->Prepare(std::string("SELECT r.rid, r.type, r.id, r.version, r.seq, r.last_updated, "
                                                       "r.deleted, r.json, r.op") +
                                           kMembers + " AND c.rid>?3 ORDER BY c.rid LIMIT ?4"));
    q->Bind(1, patient_id).Bind(2, type).Bind(3, page.after.value_or(0)).Bind(4, PageSqlLimit(page.limit));
    while (true) {
      ASSIGN_OR_RETURN(bool row, q->Step());
      if (!row) break;
      out.rows.push_back(ReadResourceRow(*q));
    }
    return out;
  }

  Result<SearchResult> Search(const search::SearchQuery& query, std::string_view compartment_patient) override {
    ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    RETURN_IF_ERROR(conn->Exec("BEGIN"));  // the page, its includes and the total from one snapshot
    return RunSearch(*conn, query, compartment_patient);
  }

  Result<int64_t> Reindex() override { return ReindexUnderLock(/*force=*/true); }

  // Rebuilds the search index when the registry changed (or `force`), holding the write lock so no write of this
  // process interleaves; other processes wait on SQLite's lock for each bounded batch.
  Result<int64_t> ReindexUnderLock(bool force) {
    std::unique_lock<std::mutex> lock(write_mu_);
    ASSIGN_OR_RETURN(SqliteConnection * conn, Writer());
    std::string id = info_.id;
    ASSIGN_OR_RETURN(int64_t n, ReindexIfNeeded(*conn, force, [id](int64_t done, int64_t total) {
                       spdlog::info("datastore {}: search index rebuilt for {} of {} resources", id, done, total);
                     }));
    RETURN_IF_ERROR(EnsureLookupsLocked(*conn));
    return n;
  }

  // Builds the search lookup indexes a bulk load or the reindex dropped (also those of a load that stopped).
  Status EnsureLookupsLocked(SqliteConnection& conn) {
    std::string id = info_.id;
    return EnsureSearchLookups(conn,
                               [id](std::string_view name, int64_t rows, double seconds) {
                                 spdlog::info("datastore {}: search lookup index {} built over {} rows in {:.1f} s", id,
                                              name, rows, seconds);
                               })
        .status();
  }

  Result<bool> BeginBulkLoad(BulkIndexing mode, int64_t incoming_bytes) override {
    bool defer = mode == BulkIndexing::kDeferred;
    if (mode == BulkIndexing::kAuto) {
      std::error_code ec;
      auto size = std::filesystem::file_size(info_.path, ec);
      // Rebuilding costs a sort of every row; inserting costs random page writes per new row. Rebuild when the
      // load brings at least a quarter as many bytes as the database already holds.
      defer = ec || incoming_bytes >= static_cast<int64_t>(size / 4);
    }
    if (!defer) return false;
    std::unique_lock<std::mutex> lock(write_mu_);
    ASSIGN_OR_RETURN(SqliteConnection * conn, Writer());
    RETURN_IF_ERROR(DropSearchLookups(*conn));
    return true;
  }

  Status EndBulkLoad() override {
    std::unique_lock<std::mutex> lock(write_mu_);
    ASSIGN_OR_RETURN(SqliteConnection * conn, Writer());
    return EnsureLookupsLocked(*conn);
  }

  Result<Snapshot> TakeSnapshot() override {
    // Under the write lock no write is half-way, so every commit up to `seq` has lastUpdated <= time, and
    // raising the counter's last_updated to `time` makes every later write carry lastUpdated >= time.
    ASSIGN_OR_RETURN(auto txn, BeginWrite());
    Snapshot snap{txn->seq() - 1, txn->last_updated()};
    // BeginWrite consumed a sequence number for nothing; that is harmless (sequence numbers only need to grow).
    RETURN_IF_ERROR(txn->Commit());
    return snap;
  }

  Result<Snapshot> TakeSnapshotWithFilters(const std::string& job_id, const std::vector<TypeFilter>& filters) override {
    const std::string key = FilterScopeKey(job_id);
    RETURN_IF_ERROR(WithWrite([&](SqliteConnection& c) { return DeleteJobRows(c, key, {"export_scope"}); }));
    if (filters.empty()) return TakeSnapshot();
    ASSIGN_OR_RETURN(auto reader, pool_.Acquire());
    Snapshot snap;
    {
      ASSIGN_OR_RETURN(auto txn, BeginWrite());
      snap = Snapshot{txn->seq() - 1, txn->last_updated()};
      // The reader's view begins now, while this transaction holds the only write lock and has committed nothing: it
      // sees exactly the commits up to snap.seq. Its first read fixes the view (WAL mode).
      RETURN_IF_ERROR(reader->Exec("BEGIN"));
      ASSIGN_OR_RETURN(auto probe, reader->Prepare("SELECT value FROM counters WHERE name='seq'"));
      ASSIGN_OR_RETURN(bool row, probe->Step());
      if (!row) return Status::Internal("the store's commit counter is missing");
      probe.reset();
      RETURN_IF_ERROR(txn->Commit());
    }
    // The matches go into the scope table in bounded write transactions while the reader keeps its view (WAL lets a
    // writer commit beside an open reader), so memory stays bounded however many resources match.
    constexpr size_t kChunk = 20000;
    std::vector<int64_t> pending;
    std::string pending_type;
    auto flush = [&]() -> Status {
      if (pending.empty()) return Status::Ok();
      RETURN_IF_ERROR(WithWrite([&](SqliteConnection& c) -> Status {
        ASSIGN_OR_RETURN(auto ins,
                         c.Prepare("INSERT OR IGNORE INTO export_scope(job_id, type, rid) VALUES (?1, ?2, ?3)"));
        for (int64_t rid : pending) {
          ins->Bind(1, key).Bind(2, pending_type).Bind(3, rid);
          RETURN_IF_ERROR(ins->Run());
        }
        return Status::Ok();
      }));
      pending.clear();
      return Status::Ok();
    };
    for (const TypeFilter& f : filters) {
      RETURN_IF_ERROR(flush());
      pending_type = f.type;
      for (const search::SearchQuery& q : f.queries) {
        RETURN_IF_ERROR(ForEachMatchingRid(*reader, q, [&](int64_t rid) -> Status {
          pending.push_back(rid);
          return pending.size() >= kChunk ? flush() : Status::Ok();
        }));
      }
    }
    RETURN_IF_ERROR(flush());
    RETURN_IF_ERROR(reader->Exec("COMMIT"));
    return snap;
  }

  Result<TypeRange> RangeOf(const std::string& type, ScanScope scope, const std::string& job_id) override {
    ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    std::string sql;
    switch (scope) {
      case ScanScope::kAll:
        sql = "SELECT count(*), min(rid), max(rid) FROM resources WHERE type=?1";
        break;
      case ScanScope::kAnyCompartment:
        sql =
            "SELECT count(*), min(rid), max(rid) FROM resources r WHERE type=?1 AND "
            "EXISTS (SELECT 1 FROM compartment c WHERE c.rid=r.rid)";
        break;
      case ScanScope::kJobScope:
        sql = "SELECT count(*), min(rid), max(rid) FROM export_scope WHERE job_id=?2 AND type=?1";
        break;
    }
    ASSIGN_OR_RETURN(auto q, conn->Prepare(sql));
    q->Bind(1, type);
    if (scope == ScanScope::kJobScope) q->Bind(2, job_id);
    ASSIGN_OR_RETURN(bool row, q->Step());
    TypeRange r;
    if (row) {
      r.rows = q->Int(0);
      r.min_rid = q->Int(1);
      r.max_rid = q->Int(2);
    }
    return r;
  }

  Result<ScanProgress> Scan(const ScanRequest& req, const std::function<Status(const ScanRow&)>& on_row) override {
    ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    if (req.tombstones) return ScanTombstones(*conn, req, on_row);
    std::string sql;
    const bool since = req.since.has_value();
    const EpochMillis until = req.until.value_or(INT64_MAX);
    switch (req.scope) {
      case ScanScope::kAll:
        sql = "SELECT rid, seq, deleted, last_updated, json, id FROM resources r WHERE type=?1 AND rid>?2 AND rid<=?3";
        break;
      case ScanScope::kAnyCompartment:
        sql =
            "SELECT rid, seq, deleted, last_updated, json, id FROM resources r WHERE type=?1 AND rid>?2 AND rid<=?3 "
            "AND EXISTS (SELECT 1 FROM compartment c WHERE c.rid=r.rid AND c.since_seq<=?7 AND "
            "(c.until_seq IS NULL OR c.until_seq>?7))";
        break;
      case ScanScope::kJobScope:
        sql =
            "SELECT r.rid, r.seq, r.deleted, r.last_updated, r.json, r.id FROM export_scope s JOIN resources r "
            "ON r.rid=s.rid WHERE s.job_id=?6 AND s.type=?1 AND s.rid>?2 AND s.rid<=?3";
        break;
    }
    if (since) sql += " AND r.last_updated>=?4";
    if (!req.filter_key.empty()) {
      sql += " AND EXISTS (SELECT 1 FROM export_scope f WHERE f.job_id=?8 AND f.type=?1 AND f.rid=r.rid)";
    }
    sql += req.scope == ScanScope::kJobScope ? " ORDER BY s.rid LIMIT ?5" : " ORDER BY rid LIMIT ?5";
    ASSIGN_OR_RETURN(auto q, conn->Prepare(sql));
    q->Bind(1, req.type).Bind(2, req.after_rid).Bind(3, req.max_rid).Bind(5, static_cast<int64_t>(req.max_rows));
    if (since) q->Bind(4, *req.since);
    if (req.scope == ScanScope::kJobScope) q->Bind(6, req.job_id);
    if (req.scope == ScanScope::kAnyCompartment) q->Bind(7, req.snapshot.seq);
    if (!req.filter_key.empty()) q->Bind(8, req.filter_key);
    return ReadAsOf(*conn, std::move(q), req.snapshot, req.since, until, req.after_rid, req.max_rows, req.max_bytes,
                    /*with_type=*/false, on_row);
  }

  Result<ScanProgress> ScanCompartment(const CompartmentScanRequest& req,
                                       const std::function<Status(const ScanRow&)>& on_row) override {
    ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    std::string sql =
        "SELECT r.rid, r.seq, r.deleted, r.last_updated, r.json, r.id, r.type FROM compartment c JOIN resources r ON "
        "r.rid=c.rid WHERE c.patient_id=?1 AND c.rid>?2 AND c.since_seq<=?3 AND (c.until_seq IS NULL OR "
        "c.until_seq>?3) AND r.type NOT IN ('Patient', 'Group')";
    int next = 6;
    auto list = [&](const std::vector<std::string>& items) {
      std::string out;
      for (size_t i = 0; i < items.size(); ++i) out += (i ? ",?" : "?") + std::to_string(next++);
      return out;
    };
    if (req.since) sql += " AND r.last_updated>=?5";
    const int types_at = next;
    if (!req.types.empty()) sql += " AND r.type IN (" + list(req.types) + ")";
    const int filtered_at = next;
    if (!req.filtered_types.empty()) {
      const std::string filtered = list(req.filtered_types);  // numbers the types first: the key comes after them
      sql += " AND (r.type NOT IN (" + filtered + ") OR EXISTS (SELECT 1 FROM export_scope f WHERE f.job_id=?" +
             std::to_string(next) + " AND f.type=r.type AND f.rid=r.rid))";
      ++next;
    }
    sql += " ORDER BY c.rid LIMIT ?4";
    ASSIGN_OR_RETURN(auto q, conn->Prepare(sql));
    q->Bind(1, req.patient_id).Bind(2, req.after_rid).Bind(3, req.snapshot.seq);
    q->Bind(4, static_cast<int64_t>(req.max_rows));
    if (req.since) q->Bind(5, *req.since);
    for (size_t i = 0; i < req.types.size(); ++i) q->Bind(types_at + static_cast<int>(i), req.types[i]);
    for (size_t i = 0; i < req.filtered_types.size(); ++i) {
      q->Bind(filtered_at + static_cast<int>(i), req.filtered_types[i]);
    }
    if (!req.filtered_types.empty()) q->Bind(next - 1, req.filter_key);
    return ReadAsOf(*conn, std::move(q), req.snapshot, req.since, req.until.value_or(INT64_MAX), req.after_rid,
                    req.max_rows, req.max_bytes, /*with_type=*/true, on_row);
  }

  Status AddToScope(const std::string& key, const std::string& type, const std::vector<int64_t>& rids) override {
    if (rids.empty()) return Status::Ok();
    return WithWrite([&](SqliteConnection& c) -> Status {
      ASSIGN_OR_RETURN(auto ins,
                       c.Prepare("INSERT OR IGNORE INTO export_scope(job_id, type, rid) VALUES (?1, ?2, ?3)"));
      for (int64_t rid : rids) {
        ins->Bind(1, key).Bind(2, type).Bind(3, rid);
        RETURN_IF_ERROR(ins->Run());
      }
      return Status::Ok();
    });
  }

  Status AddAssociations(const std::string& job_id, const std::vector<Association>& rows) override {
    if (rows.empty()) return Status::Ok();
    return WithWrite([&](SqliteConnection& c) -> Status {
      ASSIGN_OR_RETURN(auto ins, c.Prepare("INSERT OR REPLACE INTO export_assoc(job_id, target_type, target_id, "
                                           "prov_rid, recorded) VALUES (?1, ?2, ?3, ?4, ?5)"));
      for (const Association& a : rows) {
        ins->Bind(1, job_id).Bind(2, a.target_type).Bind(3, a.target_id).Bind(4, a.prov_rid).Bind(5, a.recorded);
        RETURN_IF_ERROR(ins->Run());
      }
      return Status::Ok();
    });
  }

  Status SelectAssociated(const std::string& job_id, bool latest_only) override {
    return WithWrite([&](SqliteConnection& c) -> Status {
      RETURN_IF_ERROR(DeleteJobRows(c, AssociatedScopeKey(job_id), {"export_scope"}));
      // Targets that the job exported (by type and id, through the resources' primary key); with latest_only, only
      // the most recent Provenance of each (recorded, then the later row on a tie).
      std::string sql =
          "INSERT OR IGNORE INTO export_scope(job_id, type, rid) SELECT ?2, 'Provenance', a.prov_rid FROM export_assoc "
          "a "
          "JOIN resources r ON r.type=a.target_type AND r.id=a.target_id JOIN export_scope s ON s.job_id=?3 AND "
          "s.type=r.type AND s.rid=r.rid WHERE a.job_id=?1";
      if (latest_only) {
        sql +=
            " AND NOT EXISTS (SELECT 1 FROM export_assoc b WHERE b.job_id=a.job_id AND b.target_type=a.target_type "
            "AND b.target_id=a.target_id AND (b.recorded>a.recorded OR (b.recorded=a.recorded AND "
            "b.prov_rid>a.prov_rid)))";
      }
      ASSIGN_OR_RETURN(auto q, c.Prepare(sql));
      q->Bind(1, job_id).Bind(2, AssociatedScopeKey(job_id)).Bind(3, ExportedScopeKey(job_id));
      return q->Run();
    });
  }

  // The rows of `q` (columns rid, seq, deleted, last_updated, json, id[, type]; at most `max_rows`, in rid order) in
  // their version as of `snap`, skipping rows absent or deleted then or outside [since, until], read in one read
  // transaction and handed to `on_row` after it has ended.
  Result<ScanProgress> ReadAsOf(SqliteConnection& conn, std::unique_ptr<SqliteStmt> q, const Snapshot& snap,
                                std::optional<EpochMillis> since, EpochMillis until, int64_t after_rid, size_t max_rows,
                                size_t max_bytes, bool with_type, const std::function<Status(const ScanRow&)>& on_row) {
    // One read transaction for the batch (and its history lookups); the rows are copied into `buffer`.
    struct PendingRow {
      int64_t rid;
      EpochMillis last_updated;
      size_t offset, id_size, json_size, type_size;
    };
    std::vector<PendingRow> pending;
    std::string buffer;
    RETURN_IF_ERROR(conn.Exec("BEGIN"));
    ScanProgress progress{after_rid, false};
    size_t rows = 0, bytes = 0;
    Status st = [&]() -> Status {
      std::unique_ptr<SqliteStmt> h;
      while (true) {
        ASSIGN_OR_RETURN(bool row, q->Step());
        if (!row) {
          progress.exhausted = rows < max_rows;  // fewer rows than the LIMIT: nothing left in the range
          return Status::Ok();
        }
        ++rows;
        const int64_t rid = q->Int(0);
        progress.last_rid = rid;
        std::string old_json;
        std::string_view json;
        EpochMillis last_updated = q->Int(3);
        if (q->Int(1) <= snap.seq) {
          if (q->Int(2) != 0) continue;  // deleted as of the snapshot
          if (last_updated > until) continue;
          json = q->Text(4);
        } else {
          // Changed after the snapshot: the version as of the snapshot lives in history.
          if (!h) {
            ASSIGN_OR_RETURN(h, conn.Prepare("SELECT deleted, last_updated, json FROM history WHERE rid=?1 AND "
                                             "seq<=?2 ORDER BY version DESC LIMIT 1"));
          }
          h->Reset();
          h->Bind(1, rid).Bind(2, snap.seq);
          ASSIGN_OR_RETURN(bool hrow, h->Step());
          if (!hrow || h->Int(0) != 0) continue;  // created after, or deleted as of the snapshot
          last_updated = h->Int(1);
          if (since && last_updated < *since) continue;
          if (last_updated > until) continue;
          old_json = h->Str(2);
          json = old_json;
        }
        bytes += json.size();
        std::string_view id = q->Text(5);
        std::string_view type = with_type ? q->Text(6) : std::string_view();
        pending.push_back(PendingRow{rid, last_updated, buffer.size(), id.size(), json.size(), type.size()});
        buffer.append(id);
        buffer.append(json);
        buffer.append(type);
        if (bytes >= max_bytes) return Status::Ok();
      }
    }();
    q.reset();
    // End the read transaction before anyone sees a row: the consumer may be slow (an S3 part upload), and an open
    // reader would stop WAL checkpoints for that long. A failed COMMIT of a read transaction only means it could not
    // be ended cleanly; the lease's release rolls it back.
    Status ended = conn.Exec("COMMIT");
    RETURN_IF_ERROR(st);
    RETURN_IF_ERROR(ended);
    const std::string_view all(buffer);
    for (const PendingRow& r : pending) {
      const ScanRow row{r.rid, all.substr(r.offset, r.id_size), all.substr(r.offset + r.id_size, r.json_size),
                        all.substr(r.offset + r.id_size + r.json_size, r.type_size), r.last_updated};
      RETURN_IF_ERROR(on_row(row));
    }
    return progress;
  }

  // ScanRequest::tombstones: the rows changed since `since` (through the (type, last_updated) index, so an incremental
  // export reads only what changed), in rid order, whose version as of the snapshot is a tombstone written in
  // [since, until]; with a compartment scope, only those whose deleted version was in a compartment in scope (the
  // compartment rows that the deletion ended carry its seq as until_seq).
  Result<ScanProgress> ScanTombstones(SqliteConnection& conn, const ScanRequest& req,
                                      const std::function<Status(const ScanRow&)>& on_row) {
    if (!req.since) return Status::Invalid("a scan of deletions needs a _since");
    const EpochMillis until = req.until.value_or(INT64_MAX);
    ASSIGN_OR_RETURN(auto q, conn.Prepare("SELECT rid, seq, deleted, last_updated, id FROM resources r INDEXED BY "
                                          "resources_type_lu WHERE type=?1 AND last_updated>=?4 AND rid>?2 AND "
                                          "rid<=?3 AND (deleted=1 OR seq>?6) ORDER BY rid LIMIT ?5"));
    q->Bind(1, req.type).Bind(2, req.after_rid).Bind(3, req.max_rid).Bind(4, *req.since);
    q->Bind(5, static_cast<int64_t>(req.max_rows)).Bind(6, req.snapshot.seq);
    std::string in_scope_sql = "SELECT 1 FROM compartment c WHERE c.rid=?1 AND c.until_seq=?2";
    if (req.scope == ScanScope::kJobScope) {
      in_scope_sql += " AND c.patient_id IN (SELECT patient_id FROM export_job_patients WHERE job_id=?3)";
    }
    ASSIGN_OR_RETURN(auto in_scope, conn.Prepare(in_scope_sql + " LIMIT 1"));
    ASSIGN_OR_RETURN(auto hist, conn.Prepare("SELECT deleted, last_updated, seq FROM history WHERE rid=?1 AND seq<=?2 "
                                             "ORDER BY version DESC LIMIT 1"));
    std::vector<std::pair<int64_t, std::string>> found;
    RETURN_IF_ERROR(conn.Exec("BEGIN"));  // one view for the batch; ended below, before anyone sees a row
    ScanProgress progress{req.after_rid, false};
    size_t rows = 0;
    Status st = [&]() -> Status {
      while (true) {
        ASSIGN_OR_RETURN(bool row, q->Step());
        if (!row) {
          progress.exhausted = rows < req.max_rows;
          return Status::Ok();
        }
        ++rows;
        const int64_t rid = q->Int(0);
        progress.last_rid = rid;
        int64_t tomb_seq = q->Int(1);
        EpochMillis deleted_at = q->Int(3);
        if (tomb_seq > req.snapshot.seq) {
          // Changed after the snapshot: what it was then lives in history.
          hist->Reset();
          hist->Bind(1, rid).Bind(2, req.snapshot.seq);
          ASSIGN_OR_RETURN(bool h, hist->Step());
          if (!h || hist->Int(0) == 0) continue;  // created after, or live at the snapshot
          deleted_at = hist->Int(1);
          tomb_seq = hist->Int(2);
          if (deleted_at < *req.since) continue;
        } else if (q->Int(2) == 0) {
          continue;
        }
        if (deleted_at > until) continue;
        if (req.scope != ScanScope::kAll) {
          in_scope->Reset();
          in_scope->Bind(1, rid).Bind(2, tomb_seq);
          if (req.scope == ScanScope::kJobScope) in_scope->Bind(3, req.job_id);
          ASSIGN_OR_RETURN(bool in, in_scope->Step());
          if (!in) continue;
        }
        found.emplace_back(rid, q->Str(4));
      }
    }();
    q.reset();
    in_scope.reset();
    hist.reset();
    Status ended = conn.Exec("COMMIT");
    RETURN_IF_ERROR(st);
    RETURN_IF_ERROR(ended);
    for (const auto& [rid, id] : found) RETURN_IF_ERROR(on_row(ScanRow{rid, id, {}, {}, 0}));
    return progress;
  }

  // Each step is its own short write transaction: a Group of 100,000 patients must not hold the single writer lock
  // (and block every PUT) for the whole materialisation. Every step is idempotent (INSERT OR IGNORE, and the first
  // step clears what an interrupted earlier run left), so a crash at any point and a re-run give the same scope.
  Status MaterializeGroupScope(const std::string& job_id, const std::string& group_id,
                               const std::vector<std::string>& patient_ids, bool include_referenced,
                               const Snapshot& snapshot) override {
    RETURN_IF_ERROR(WithWrite([&](SqliteConnection& c) -> Status {
      RETURN_IF_ERROR(DeleteJobRows(c, job_id, {"export_scope", "export_job_patients"}));
      // The Group itself.
      ASSIGN_OR_RETURN(auto q, c.Prepare("INSERT OR IGNORE INTO export_scope(job_id, type, rid) SELECT ?1, type, rid "
                                         "FROM resources WHERE type='Group' AND id=?2"));
      q->Bind(1, job_id).Bind(2, group_id);
      return q->Run();
    }));
    const size_t chunk = static_cast<size_t>(std::max(1, scope_chunk_rows_));
    for (size_t begin = 0; begin < patient_ids.size(); begin += chunk) {
      const size_t end = std::min(patient_ids.size(), begin + chunk);
      RETURN_IF_ERROR(WithWrite([&](SqliteConnection& c) -> Status {
        ASSIGN_OR_RETURN(auto ins, c.Prepare("INSERT OR IGNORE INTO export_job_patients(job_id, patient_id) "
                                             "VALUES (?1, ?2)"));
        for (size_t k = begin; k < end; ++k) {
          ins->Bind(1, job_id).Bind(2, patient_ids[k]);
          RETURN_IF_ERROR(ins->Run());
        }
        // These members' Patient resources, and their compartments (as of the snapshot) without other Groups or
        // Patients.
        const char* kSteps[] = {
            "INSERT OR IGNORE INTO export_scope(job_id, type, rid) SELECT ?1, r.type, r.rid FROM export_job_patients m "
            "JOIN resources r ON r.type='Patient' AND r.id=m.patient_id WHERE m.job_id=?1 AND m.patient_id>=?2 AND "
            "m.patient_id<=?3",
            "INSERT OR IGNORE INTO export_scope(job_id, type, rid) SELECT ?1, r.type, r.rid FROM export_job_patients m "
            "JOIN compartment c ON c.patient_id=m.patient_id JOIN resources r ON r.rid=c.rid "
            "WHERE m.job_id=?1 AND m.patient_id>=?2 AND m.patient_id<=?3 AND r.type NOT IN ('Group', 'Patient') AND "
            "c.since_seq<=?4 AND (c.until_seq IS NULL OR c.until_seq>?4)",
        };
        for (const char* sql : kSteps) {
          ASSIGN_OR_RETURN(auto q, c.Prepare(sql));
          // patient_ids is sorted (GroupMembers sorts), so [first, last] of the chunk is exactly the chunk.
          q->Bind(1, job_id).Bind(2, patient_ids[begin]).Bind(3, patient_ids[end - 1]);
          if (std::string_view(sql).find("?4") != std::string_view::npos) q->Bind(4, snapshot.seq);
          RETURN_IF_ERROR(q->Run());
        }
        return Status::Ok();
      }));
    }
    if (!include_referenced) return Status::Ok();
    // One hop to the non-compartment resources that the scope references, by ranges of scope rids. The rows found
    // go to a staging key first: written straight into the job's scope, a later range would read them as sources
    // and go a second hop.
    const std::string staging = StagingKey(job_id);
    RETURN_IF_ERROR(WithWrite([&](SqliteConnection& c) { return DeleteJobRows(c, staging, {"export_scope"}); }));
    RETURN_IF_ERROR(ForRidChunks(
        "SELECT rid FROM export_scope WHERE job_id=?1 AND rid>?2 ORDER BY rid LIMIT 1 OFFSET ?3", job_id,
        [&](SqliteConnection& c, int64_t lo, int64_t hi) -> Status {
          ASSIGN_OR_RETURN(auto q, c.Prepare("INSERT OR IGNORE INTO export_scope(job_id, type, rid) SELECT ?4, r.type, "
                                             "r.rid FROM export_scope s JOIN ext_ref x ON x.rid=s.rid JOIN resources r "
                                             "ON r.type=x.target_type AND r.id=x.target_id WHERE s.job_id=?1 AND "
                                             "s.rid>?2 AND s.rid<=?3"));
          q->Bind(1, job_id).Bind(2, lo).Bind(3, hi).Bind(4, staging);
          return q->Run();
        }));
    return ForRidChunks(
        "SELECT rid FROM export_scope WHERE job_id=?1 AND rid>?2 ORDER BY rid LIMIT 1 OFFSET ?3", staging,
        [&](SqliteConnection& c, int64_t lo, int64_t hi) -> Status {
          ASSIGN_OR_RETURN(auto q,
                           c.Prepare("INSERT OR IGNORE INTO export_scope(job_id, type, rid) SELECT ?1, type, rid "
                                     "FROM export_scope WHERE job_id=?4 AND rid>?2 AND rid<=?3"));
          q->Bind(1, job_id).Bind(2, lo).Bind(3, hi).Bind(4, staging);
          RETURN_IF_ERROR(q->Run());
          ASSIGN_OR_RETURN(auto d, c.Prepare("DELETE FROM export_scope WHERE job_id=?1 AND rid>?2 AND rid<=?3"));
          d->Bind(1, staging).Bind(2, lo).Bind(3, hi);
          return d->Run();
        });
  }

  Status MaterializeReferencedScope(const std::string& job_id, const Snapshot& snapshot) override {
    RETURN_IF_ERROR(WithWrite([&](SqliteConnection& c) { return DeleteJobRows(c, job_id, {"export_scope"}); }));
    return ForRidChunks("SELECT rid FROM ext_ref WHERE rid>?2 ORDER BY rid LIMIT 1 OFFSET ?3", job_id,
                        [&](SqliteConnection& c, int64_t lo, int64_t hi) -> Status {
                          ASSIGN_OR_RETURN(
                              auto q, c.Prepare("INSERT OR IGNORE INTO export_scope(job_id, type, rid) "
                                                "SELECT ?1, r.type, r.rid FROM ext_ref x JOIN resources r "
                                                "ON r.type=x.target_type AND r.id=x.target_id "
                                                "WHERE x.rid>?2 AND x.rid<=?3 AND EXISTS (SELECT 1 FROM compartment c "
                                                "WHERE c.rid=x.rid AND c.since_seq<=?4 AND "
                                                "(c.until_seq IS NULL OR c.until_seq>?4))"));
                          q->Bind(1, job_id).Bind(2, lo).Bind(3, hi).Bind(4, snapshot.seq);
                          return q->Run();
                        });
  }

  Result<std::vector<std::string>> TypesInJobScope(const std::string& job_id) override {
    ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    ASSIGN_OR_RETURN(auto q, conn->Prepare("SELECT DISTINCT type FROM export_scope WHERE job_id=?1 ORDER BY type"));
    q->Bind(1, job_id);
    return FirstColumn(*q);
  }

  JobStore& jobs() override { return *this; }

  // Tags live in meta under "tags", one "key\tvalue" line each: the model's TagKey and TagValue patterns admit
  // neither tabs nor newlines (validated with PCRE2_DOLLAR_ENDONLY, so not even a final one).
  Result<std::map<std::string, std::string>> Tags() override {
    ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    ASSIGN_OR_RETURN(auto q, conn->Prepare("SELECT value FROM meta WHERE key='tags'"));
    ASSIGN_OR_RETURN(bool row, q->Step());
    std::map<std::string, std::string> out;
    if (!row) return out;
    for (const std::string& line : SplitLines(q->Text(0))) {
      const size_t tab = line.find('\t');
      if (tab != std::string::npos) out[line.substr(0, tab)] = line.substr(tab + 1);
    }
    return out;
  }

  Status SetTags(const std::map<std::string, std::string>& tags) override {
    std::vector<std::string> lines;
    for (const auto& [k, v] : tags) lines.push_back(k + "\t" + v);
    return WithWrite([&](SqliteConnection& c) -> Status {
      ASSIGN_OR_RETURN(auto ins, c.Prepare("INSERT OR REPLACE INTO meta(key, value) VALUES ('tags', ?1)"));
      ins->Bind(1, JoinLines(lines));
      return ins->Run();
    });
  }

  Status InsertJob(ExportJobRecord* job, int queue_limit) override {
    return WithWrite([&](SqliteConnection& c) -> Status {
      if (queue_limit > 0) {
        ASSIGN_OR_RETURN(int64_t waiting, CountWaiting(c));
        if (waiting >= queue_limit) {
          return Status::TooManyRequests("Datastore " + info_.id + " already has " + std::to_string(waiting) +
                                         " export jobs waiting to run (the limit is " + std::to_string(queue_limit) +
                                         "); retry when one has started");
        }
      }
      ASSIGN_OR_RETURN(auto q, c.Prepare("SELECT coalesce(max(queue_order), 0) + 1 FROM export_jobs"));
      ASSIGN_OR_RETURN(bool row, q->Step());
      job->queue_order = row ? q->Int(0) : 1;
      q.reset();
      ASSIGN_OR_RETURN(auto ins,
                       c.Prepare("INSERT INTO export_jobs(job_id, queue_order, job_name, status, view, level, "
                                 "group_id, types, since, output_format, s3_uri, kms_key_id, role_arn, "
                                 "request_url, submit_time, start_time, end_time, snapshot_seq, snapshot_time, "
                                 "message, include_referenced, owner, until_ms, tag_filter, security_filter, "
                                 "patient_filter, type_filter, elements, notes, client_token, client_request, "
                                 "partial_manifests, organize_by, associated) VALUES "
                                 "(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, "
                                 "?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31, ?32, ?33, ?34)"));
      BindJob(*ins, *job);
      return ins->Run();
    });
  }

  Result<ExportJobRecord> TransitionJob(std::string_view job_id, std::initializer_list<std::string_view> from,
                                        std::string_view to, const JobUpdate& update) override {
    ExportJobRecord out;
    RETURN_IF_ERROR(WithWrite([&](SqliteConnection& c) -> Status {
      std::string sql =
          "UPDATE export_jobs SET status=?1, start_time=coalesce(?3, start_time), end_time=coalesce(?4, end_time), "
          "snapshot_seq=coalesce(?5, snapshot_seq), snapshot_time=coalesce(?6, snapshot_time), "
          "message=coalesce(?7, message), files_deleted_at=coalesce(?8, files_deleted_at) WHERE job_id=?2 AND "
          "status IN (";
      for (size_t i = 0; i < from.size(); ++i) sql += (i ? ",?" : "?") + std::to_string(i + 9);
      sql += ")";
      ASSIGN_OR_RETURN(auto u, c.Prepare(sql));
      u->Bind(1, to).Bind(2, job_id).Bind(3, update.start_time).Bind(4, update.end_time);
      u->Bind(5, update.snapshot ? std::optional<int64_t>(update.snapshot->seq) : std::nullopt);
      u->Bind(6, update.snapshot ? std::optional<int64_t>(update.snapshot->time) : std::nullopt);
      if (update.message) {
        u->Bind(7, *update.message);
      } else {
        u->Bind(7, std::optional<int64_t>());
      }
      u->Bind(8, update.files_deleted_at);
      int k = 9;
      for (std::string_view f : from) u->Bind(k++, f);
      RETURN_IF_ERROR(u->Run());
      const bool changed = sqlite3_changes(c.raw()) == 1;
      ASSIGN_OR_RETURN(auto q, c.Prepare(std::string(kSelectJob) + " WHERE job_id=?1"));
      q->Bind(1, job_id);
      ASSIGN_OR_RETURN(bool row, q->Step());
      if (!row) return Status::NotFound("Export job " + std::string(job_id) + " is not known in datastore " + info_.id);
      out = ReadJob(*q);
      if (!changed) {
        return Status::Conflict("export job " + std::string(job_id) + " is " + out.status + ", not " +
                                JoinStatuses(from) + "; it cannot become " + std::string(to));
      }
      return Status::Ok();
    }));
    return out;
  }

  Result<int64_t> CountWaitingJobs() override {
    ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    return CountWaiting(*conn);
  }

  Result<std::vector<std::string>> JobsWithScratch() override {
    ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    ASSIGN_OR_RETURN(
        auto q, conn->Prepare("SELECT job_id FROM export_jobs WHERE status IN ('COMPLETED', 'COMPLETED_WITH_ERRORS', "
                              "'FAILED', 'CANCEL_COMPLETED', 'CANCEL_FAILED') AND (EXISTS (SELECT 1 FROM "
                              "export_scope s WHERE s.job_id IN (export_jobs.job_id, export_jobs.job_id || "
                              "'.filter', export_jobs.job_id || '.exported', export_jobs.job_id || '.associated')) OR "
                              "EXISTS (SELECT 1 FROM export_job_patients p WHERE p.job_id=export_jobs.job_id) OR "
                              "EXISTS (SELECT 1 FROM export_assoc a WHERE a.job_id=export_jobs.job_id)) ORDER BY "
                              "queue_order"));
    return FirstColumn(*q);
  }

  // --- import jobs ---
  static constexpr const char* kSelectImport =
      "SELECT job_id, queue_order, job_name, status, input_s3_uri, output_s3_uri, kms_key_id, role_arn, owner, "
      "submit_time, end_time, base_seq, message, client_token, client_request FROM import_jobs";

  static ImportJobRecord ReadImport(const SqliteStmt& q) {
    ImportJobRecord j;
    j.job_id = q.Str(0);
    j.queue_order = q.Int(1);
    j.job_name = q.Str(2);
    j.status = q.Str(3);
    j.input_s3_uri = q.Str(4);
    j.output_s3_uri = q.Str(5);
    j.kms_key_id = q.Str(6);
    j.data_access_role_arn = q.Str(7);
    j.owner = q.Str(8);
    j.submit_time = q.Int(9);
    j.end_time = q.OptInt(10);
    j.base_seq = q.OptInt(11);
    j.message = q.Str(12);
    j.client_token = q.Str(13);
    j.client_request = q.Str(14);
    return j;
  }

  Status InsertImportJob(ImportJobRecord* job) override {
    return WithWrite([&](SqliteConnection& c) -> Status {
      ASSIGN_OR_RETURN(auto q, c.Prepare("SELECT coalesce(max(queue_order), 0) + 1 FROM import_jobs"));
      ASSIGN_OR_RETURN(bool row, q->Step());
      job->queue_order = row ? q->Int(0) : 1;
      q.reset();
      ASSIGN_OR_RETURN(auto ins, c.Prepare("INSERT INTO import_jobs(job_id, queue_order, job_name, status, "
                                           "input_s3_uri, output_s3_uri, kms_key_id, role_arn, owner, submit_time, "
                                           "end_time, base_seq, message, client_token, client_request) VALUES (?1, "
                                           "?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"));
      ins->Bind(1, job->job_id).Bind(2, job->queue_order).Bind(3, job->job_name).Bind(4, job->status);
      ins->Bind(5, job->input_s3_uri).Bind(6, job->output_s3_uri).Bind(7, job->kms_key_id);
      ins->Bind(8, job->data_access_role_arn).Bind(9, job->owner).Bind(10, job->submit_time);
      ins->Bind(11, job->end_time).Bind(12, job->base_seq).Bind(13, job->message).Bind(14, job->client_token);
      ins->Bind(15, job->client_request);
      return ins->Run();
    });
  }

  Result<ImportJobRecord> GetImportJob(std::string_view job_id) override {
    ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    ASSIGN_OR_RETURN(auto q, conn->Prepare(std::string(kSelectImport) + " WHERE job_id=?1"));
    q->Bind(1, job_id);
    ASSIGN_OR_RETURN(bool row, q->Step());
    if (!row) return Status::NotFound("Import job " + std::string(job_id) + " is not known in datastore " + info_.id);
    return ReadImport(*q);
  }

  Result<std::vector<ImportJobRecord>> ImportJobs() override {
    ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    ASSIGN_OR_RETURN(auto q, conn->Prepare(std::string(kSelectImport) + " ORDER BY queue_order"));
    std::vector<ImportJobRecord> out;
    while (true) {
      ASSIGN_OR_RETURN(bool row, q->Step());
      if (!row) break;
      out.push_back(ReadImport(*q));
    }
    return out;
  }

  Result<std::optional<ImportJobRecord>> ImportJobByClientToken(const std::string& token) override {
    ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    ASSIGN_OR_RETURN(auto q,
                     conn->Prepare(std::string(kSelectImport) + " WHERE client_token=?1 AND client_token <> ''"));
    q->Bind(1, token);
    ASSIGN_OR_RETURN(bool row, q->Step());
    if (!row) return std::optional<ImportJobRecord>();
    return std::optional<ImportJobRecord>(ReadImport(*q));
  }

  Result<ImportJobRecord> TransitionImportJob(std::string_view job_id, std::initializer_list<std::string_view> from,
                                              std::string_view to, std::optional<std::string> message,
                                              std::optional<EpochMillis> end_time,
                                              std::optional<int64_t> base_seq) override {
    RETURN_IF_ERROR(WithWrite([&](SqliteConnection& c) -> Status {
      std::string sql =
          "UPDATE import_jobs SET status=?1, message=coalesce(?3, message), end_time=coalesce(?4, end_time), "
          "base_seq=coalesce(?5, base_seq) WHERE job_id=?2 AND status IN (";
      int n = 6;
      for (size_t i = 0; i < from.size(); ++i) sql += (i ? ",?" : "?") + std::to_string(n++);
      sql += ")";
      ASSIGN_OR_RETURN(auto u, c.Prepare(sql));
      u->Bind(1, to).Bind(2, job_id).Bind(4, end_time).Bind(5, base_seq);
      if (message) {
        u->Bind(3, *message);
      } else {
        u->BindNull(3);
      }
      n = 6;
      for (std::string_view f : from) u->Bind(n++, f);
      RETURN_IF_ERROR(u->Run());
      if (sqlite3_changes(c.raw()) == 1) return Status::Ok();
      ASSIGN_OR_RETURN(auto q, c.Prepare("SELECT status FROM import_jobs WHERE job_id=?1"));
      q->Bind(1, job_id);
      ASSIGN_OR_RETURN(bool row, q->Step());
      if (!row) return Status::NotFound("Import job " + std::string(job_id) + " is not known");
      return Status::Conflict("Import job " + std::string(job_id) + " is " + q->Str(0));
    }));
    return GetImportJob(job_id);
  }

  Result<ExportJobRecord> GetJob(std::string_view job_id) override {
    ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    ASSIGN_OR_RETURN(auto q, conn->Prepare(std::string(kSelectJob) + " WHERE job_id=?1"));
    q->Bind(1, job_id);
    ASSIGN_OR_RETURN(bool row, q->Step());
    if (!row) return Status::NotFound("Export job " + std::string(job_id) + " is not known in datastore " + info_.id);
    return ReadJob(*q);
  }

  Result<std::optional<ExportJobRecord>> JobByClientToken(const std::string& token) override {
    ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    ASSIGN_OR_RETURN(auto q, conn->Prepare(std::string(kSelectJob) + " WHERE client_token=?1 AND client_token <> ''"));
    q->Bind(1, token);
    ASSIGN_OR_RETURN(bool row, q->Step());
    if (!row) return std::optional<ExportJobRecord>();
    return std::optional<ExportJobRecord>(ReadJob(*q));
  }

  Result<std::vector<ExportJobRecord>> JobsWithStatus(const std::vector<std::string>& statuses) override {
    ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    std::vector<ExportJobRecord> out;
    if (statuses.empty()) return out;
    std::string sql = std::string(kSelectJob) + " WHERE status IN (";
    for (size_t i = 0; i < statuses.size(); ++i) sql += (i ? ",?" : "?") + std::to_string(i + 1);
    sql += ") ORDER BY queue_order";
    ASSIGN_OR_RETURN(auto q, conn->Prepare(sql));
    for (size_t i = 0; i < statuses.size(); ++i) q->Bind(static_cast<int>(i + 1), statuses[i]);
    while (true) {
      ASSIGN_OR_RETURN(bool row, q->Step());
      if (!row) break;
      out.push_back(ReadJob(*q));
    }
    return out;
  }

  Status ReplaceTasks(const std::string& job_id, const std::vector<ExportTaskRecord>& tasks) override {
    return WithWrite([&](SqliteConnection& c) -> Status {
      RETURN_IF_ERROR(DeleteJobRows(c, job_id, {"export_tasks"}));
      ASSIGN_OR_RETURN(
          auto ins, c.Prepare("INSERT INTO export_tasks(job_id, task_no, type, scope, min_rid, max_rid, "
                              "after_rid, planned_rows, done, deleted, mode) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, "
                              "?9, ?10, ?11)"));
      for (const auto& t : tasks) {
        ins->Bind(1, job_id).Bind(2, t.task_no).Bind(3, t.type).Bind(4, static_cast<int64_t>(t.scope));
        ins->Bind(5, t.min_rid).Bind(6, t.max_rid).Bind(7, t.after_rid).Bind(8, t.planned_rows);
        ins->Bind(9, t.done ? 1 : 0).Bind(10, t.deleted ? 1 : 0).Bind(11, t.mode);
        RETURN_IF_ERROR(ins->Run());
      }
      return Status::Ok();
    });
  }

  Result<std::vector<ExportTaskRecord>> Tasks(const std::string& job_id) override {
    ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    ASSIGN_OR_RETURN(auto q, conn->Prepare("SELECT task_no, type, scope, min_rid, max_rid, after_rid, planned_rows, "
                                           "done, deleted, mode FROM export_tasks WHERE job_id=?1 ORDER BY task_no"));
    q->Bind(1, job_id);
    std::vector<ExportTaskRecord> out;
    while (true) {
      ASSIGN_OR_RETURN(bool row, q->Step());
      if (!row) break;
      ExportTaskRecord t;
      t.job_id = job_id;
      t.task_no = static_cast<int>(q->Int(0));
      t.type = q->Str(1);
      t.scope = static_cast<ScanScope>(q->Int(2));
      t.min_rid = q->Int(3);
      t.max_rid = q->Int(4);
      t.after_rid = q->Int(5);
      t.planned_rows = q->Int(6);
      t.done = q->Int(7) != 0;
      t.deleted = q->Int(8) != 0;
      t.mode = q->Str(9);
      out.push_back(std::move(t));
    }
    return out;
  }

  Status CommitFiles(const std::vector<ExportFileRecord>& files, const std::string& job_id, int task_no,
                     int64_t task_after_rid, bool task_done) override {
    return WithWrite([&](SqliteConnection& c) -> Status {
      ASSIGN_OR_RETURN(auto ins, c.Prepare("INSERT INTO export_files(job_id, kind, type, file_no, key, count, bytes, "
                                           "task_no, continues_in) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"));
      for (const auto& f : files) {
        ins->Bind(1, f.job_id).Bind(2, f.kind).Bind(3, f.type).Bind(4, f.file_no).Bind(5, f.key).Bind(6, f.count);
        ins->Bind(7, f.bytes).Bind(8, f.task_no).Bind(9, f.continues_in);
        RETURN_IF_ERROR(ins->Run());
      }
      return UpdateTask(c, job_id, task_no, task_after_rid, task_done);
    });
  }

  Result<std::vector<ExportFileRecord>> Files(const std::string& job_id) override {
    ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    ASSIGN_OR_RETURN(auto q,
                     conn->Prepare("SELECT kind, type, file_no, key, count, bytes, task_no, rowid, continues_in "
                                   "FROM export_files WHERE job_id=?1 ORDER BY kind DESC, type, file_no"));
    q->Bind(1, job_id);
    std::vector<ExportFileRecord> out;
    while (true) {
      ASSIGN_OR_RETURN(bool row, q->Step());
      if (!row) break;
      ExportFileRecord f;
      f.job_id = job_id;
      f.kind = q->Str(0);
      f.type = q->Str(1);
      f.file_no = static_cast<int>(q->Int(2));
      f.key = q->Str(3);
      f.count = q->Int(4);
      f.bytes = q->Int(5);
      f.task_no = static_cast<int>(q->Int(6));
      f.seq = q->Int(7);
      f.continues_in = q->Str(8);
      out.push_back(std::move(f));
    }
    return out;
  }

  Status DropFileRecords(const std::string& job_id) override {
    return WithWrite([&](SqliteConnection& c) -> Status {
      for (const char* sql : {"DELETE FROM export_files WHERE job_id=?1", "DELETE FROM export_polls WHERE job_id=?1",
                              "DELETE FROM export_downloads WHERE job_id=?1"}) {
        ASSIGN_OR_RETURN(auto d, c.Prepare(sql));
        d->Bind(1, job_id);
        RETURN_IF_ERROR(d->Run());
      }
      return Status::Ok();
    });
  }

  Result<std::optional<EpochMillis>> RecordPoll(const std::string& job_id, const std::string& client, EpochMillis now,
                                                int64_t min_interval_ms) override {
    std::optional<EpochMillis> earlier;
    RETURN_IF_ERROR(WithWrite([&](SqliteConnection& c) -> Status {
      ASSIGN_OR_RETURN(auto q, c.Prepare("SELECT last_ms FROM export_polls WHERE job_id=?1 AND client=?2"));
      q->Bind(1, job_id).Bind(2, client);
      ASSIGN_OR_RETURN(bool row, q->Step());
      const std::optional<EpochMillis> last = row ? std::optional<EpochMillis>(q->Int(0)) : std::nullopt;
      q.reset();
      if (last && now - *last < min_interval_ms && now >= *last) {
        earlier = last;
        return Status::Ok();
      }
      ASSIGN_OR_RETURN(auto u, c.Prepare("INSERT OR REPLACE INTO export_polls(job_id, client, last_ms) VALUES "
                                         "(?1, ?2, ?3)"));
      u->Bind(1, job_id).Bind(2, client).Bind(3, now);
      return u->Run();
    }));
    return earlier;
  }

  Status BeginDownload(const std::string& job_id, const std::string& token, EpochMillis expires) override {
    return WithWrite([&](SqliteConnection& c) -> Status {
      ASSIGN_OR_RETURN(auto u, c.Prepare("INSERT OR REPLACE INTO export_downloads(job_id, token, expires_ms) VALUES "
                                         "(?1, ?2, ?3)"));
      u->Bind(1, job_id).Bind(2, token).Bind(3, expires);
      return u->Run();
    });
  }

  Status EndDownload(const std::string& job_id, const std::string& token) override {
    return WithWrite([&](SqliteConnection& c) -> Status {
      ASSIGN_OR_RETURN(auto d, c.Prepare("DELETE FROM export_downloads WHERE job_id=?1 AND token=?2"));
      d->Bind(1, job_id).Bind(2, token);
      return d->Run();
    });
  }

  Result<int64_t> LiveDownloads(const std::string& job_id, EpochMillis now) override {
    ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    ASSIGN_OR_RETURN(auto q, conn->Prepare("SELECT count(*) FROM export_downloads WHERE job_id=?1 AND expires_ms>?2"));
    q->Bind(1, job_id).Bind(2, now);
    ASSIGN_OR_RETURN(bool row, q->Step());
    return row ? q->Int(0) : 0;
  }

  Result<std::vector<ExportJobRecord>> JobsWithFilesToRemove(std::string_view view, EpochMillis ended_before) override {
    ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
    ASSIGN_OR_RETURN(auto q, conn->Prepare(std::string(kSelectJob) +
                                           " WHERE view=?1 AND end_time IS NOT NULL AND ((files_deleted_at IS NULL AND "
                                           "end_time<=?2 AND status IN ('COMPLETED','COMPLETED_WITH_ERRORS')) OR "
                                           "(files_deleted_at IS NOT NULL AND EXISTS (SELECT 1 FROM export_files f "
                                           "WHERE f.job_id=export_jobs.job_id))) ORDER BY queue_order"));
    q->Bind(1, view).Bind(2, ended_before);
    std::vector<ExportJobRecord> out;
    while (true) {
      ASSIGN_OR_RETURN(bool row, q->Step());
      if (!row) break;
      out.push_back(ReadJob(*q));
    }
    return out;
  }

  Status DropJobScratch(const std::string& job_id) override {
    return WithWrite([&](SqliteConnection& c) -> Status {
      RETURN_IF_ERROR(DeleteJobRows(c, StagingKey(job_id), {"export_scope"}));
      RETURN_IF_ERROR(DeleteJobRows(c, FilterScopeKey(job_id), {"export_scope"}));
      RETURN_IF_ERROR(DeleteJobRows(c, ExportedScopeKey(job_id), {"export_scope"}));
      RETURN_IF_ERROR(DeleteJobRows(c, AssociatedScopeKey(job_id), {"export_scope"}));
      return DeleteJobRows(c, job_id, {"export_scope", "export_job_patients", "export_assoc"});
    });
  }

 private:
  static constexpr const char* kSelectJob =
      "SELECT job_id, queue_order, job_name, status, view, level, group_id, types, since, output_format, s3_uri, "
      "kms_key_id, role_arn, request_url, submit_time, start_time, end_time, snapshot_seq, snapshot_time, message, "
      "include_referenced, owner, files_deleted_at, until_ms, tag_filter, security_filter, patient_filter, "
      "type_filter, elements, notes, client_token, client_request, partial_manifests, organize_by, associated FROM "
      "export_jobs";

  // Where MaterializeGroupScope stages the referenced resources it finds (not a valid job id, so never a job's).
  static std::string StagingKey(const std::string& job_id) { return job_id + ".referenced"; }

  static std::string JoinStatuses(std::initializer_list<std::string_view> statuses) {
    std::string out;
    for (std::string_view st : statuses) {
      if (!out.empty()) out += " or ";
      out += st;
    }
    return out;
  }

  static Result<int64_t> CountWaiting(SqliteConnection& c) {
    ASSIGN_OR_RETURN(auto q, c.Prepare("SELECT count(*) FROM export_jobs WHERE status IN ('SUBMITTED', 'QUEUED')"));
    ASSIGN_OR_RETURN(bool row, q->Step());
    return row ? q->Int(0) : 0;
  }

  static void BindJob(SqliteStmt& q, const ExportJobRecord& j) {
    q.Bind(1, j.job_id).Bind(2, j.queue_order).Bind(3, j.job_name).Bind(4, j.status).Bind(5, j.view);
    q.Bind(6, j.level).Bind(7, j.group_id).Bind(8, JoinTypes(j.types)).Bind(9, j.since).Bind(10, j.output_format);
    q.Bind(11, j.s3_uri).Bind(12, j.kms_key_id).Bind(13, j.data_access_role_arn).Bind(14, j.request_url);
    q.Bind(15, j.submit_time).Bind(16, j.start_time).Bind(17, j.end_time);
    q.Bind(18, j.snapshot ? std::optional<int64_t>(j.snapshot->seq) : std::nullopt);
    q.Bind(19, j.snapshot ? std::optional<int64_t>(j.snapshot->time) : std::nullopt);
    q.Bind(20, j.message).Bind(21, j.include_referenced ? 1 : 0).Bind(22, j.owner);
    q.Bind(23, j.until).Bind(24, JoinLines(j.tags)).Bind(25, JoinLines(j.security)).Bind(26, JoinLines(j.patients));
    q.Bind(27, JoinLines(j.type_filters)).Bind(28, JoinLines(j.elements)).Bind(29, JoinLines(j.notes));
    q.Bind(30, j.client_token).Bind(31, j.client_request);
    q.Bind(32, j.partial_manifests ? 1 : 0).Bind(33, j.organize_by).Bind(34, j.associated);
  }

  static ExportJobRecord ReadJob(const SqliteStmt& q) {
    ExportJobRecord j;
    j.job_id = q.Str(0);
    j.queue_order = q.Int(1);
    j.job_name = q.Str(2);
    j.status = q.Str(3);
    j.view = q.Str(4);
    j.level = q.Str(5);
    j.group_id = q.Str(6);
    j.types = SplitTypes(q.Text(7));
    j.since = q.OptInt(8);
    j.output_format = q.Str(9);
    j.s3_uri = q.Str(10);
    j.kms_key_id = q.Str(11);
    j.data_access_role_arn = q.Str(12);
    j.request_url = q.Str(13);
    j.submit_time = q.Int(14);
    j.start_time = q.OptInt(15);
    j.end_time = q.OptInt(16);
    if (!q.IsNull(17)) j.snapshot = Snapshot{q.Int(17), q.Int(18)};
    j.message = q.Str(19);
    j.include_referenced = q.Int(20) != 0;
    j.owner = q.Str(21);
    j.files_deleted_at = q.OptInt(22);
    j.until = q.OptInt(23);
    j.tags = SplitLines(q.Text(24));
    j.security = SplitLines(q.Text(25));
    j.patients = SplitLines(q.Text(26));
    j.type_filters = SplitLines(q.Text(27));
    j.elements = SplitLines(q.Text(28));
    j.notes = SplitLines(q.Text(29));
    j.client_token = q.Str(30);
    j.client_request = q.Str(31);
    j.partial_manifests = q.Int(32) != 0;
    j.organize_by = q.Str(33);
    j.associated = q.Str(34);
    return j;
  }

  static Status UpdateTask(SqliteConnection& c, const std::string& job_id, int task_no, int64_t after_rid, bool done) {
    ASSIGN_OR_RETURN(auto u, c.Prepare("UPDATE export_tasks SET after_rid=?3, done=?4 WHERE job_id=?1 AND task_no=?2"));
    u->Bind(1, job_id).Bind(2, task_no).Bind(3, after_rid).Bind(4, done ? 1 : 0);
    return u->Run();
  }

  static Status DeleteJobRows(SqliteConnection& c, const std::string& job_id,
                              std::initializer_list<const char*> tables) {
    for (const char* table : tables) {
      ASSIGN_OR_RETURN(auto d, c.Prepare(std::string("DELETE FROM ") + table + " WHERE job_id=?1"));
      d->Bind(1, job_id);
      RETURN_IF_ERROR(d->Run());
    }
    return Status::Ok();
  }

  // Calls `fn(c, lo, hi)` in its own write transaction for consecutive rid ranges (lo, hi] covering every rid that
  // `boundary_sql` walks; each range holds about scope_chunk_rows rows. `boundary_sql` takes ?1 job id, ?2 the
  // previous boundary, ?3 the offset, and returns the next boundary rid (none: the last range is open-ended).
  Status ForRidChunks(const char* boundary_sql, const std::string& job_id,
                      const std::function<Status(SqliteConnection&, int64_t, int64_t)>& fn) {
    int64_t lo = 0;
    while (true) {
      int64_t hi = INT64_MAX;
      {
        ASSIGN_OR_RETURN(auto conn, pool_.Acquire());
        ASSIGN_OR_RETURN(auto q, conn->Prepare(boundary_sql));
        q->Bind(1, job_id).Bind(2, lo).Bind(3, static_cast<int64_t>(std::max(1, scope_chunk_rows_) - 1));
        ASSIGN_OR_RETURN(bool row, q->Step());
        if (row) hi = q->Int(0);
      }
      RETURN_IF_ERROR(WithWrite([&](SqliteConnection& c) { return fn(c, lo, hi); }));
      if (hi == INT64_MAX) return Status::Ok();
      lo = hi;
    }
  }

  // Runs `fn` in one write transaction (the same single-writer lock as BeginWrite).
  Status WithWrite(const std::function<Status(SqliteConnection&)>& fn) {
    std::unique_lock<std::mutex> lock(write_mu_);
    ASSIGN_OR_RETURN(SqliteConnection * conn, Writer());
    RETURN_IF_ERROR(conn->Exec("BEGIN IMMEDIATE"));
    Status st = fn(*conn);
    if (st.ok()) st = conn->Exec("COMMIT");
    if (!st.ok()) {
      // The error that matters is `st`; a failed rollback leaves the connection in a transaction, which Writer()
      // rolls back before the next use.
      // A failed COMMIT (SQLITE_FULL) may already have rolled back; only a transaction still open needs it.
      if (!sqlite3_get_autocommit(conn->raw())) {
        if (Status rb = conn->Exec("ROLLBACK"); !rb.ok()) {
          st = Status(st.code(), st.message() + " (rollback also failed: " + rb.message() + ")");
        }
      }
    }
    return st;
  }

 private:
  static StoredResource HistoryRow(const StoredResource& current, const SqliteStmt& q) {
    StoredResource r;
    r.rid = current.rid;
    r.type = current.type;
    r.id = current.id;
    r.version = q.Int(0);
    r.seq = q.Int(1);
    r.last_updated = q.Int(2);
    r.deleted = q.Int(3) != 0;
    r.json = q.Str(4);
    r.created_by_post = q.Int(5) == static_cast<int>(WriteOp::kPost);
    return r;
  }

  // The one connection that writes (single writer), with its own page cache size (StoreOptions); readers use the
  // pool's connections with small caches (exports scan in storage order and gain nothing from a large one).
  Result<SqliteConnection*> Writer() {
    if (!writer_) {
      ASSIGN_OR_RETURN(writer_, pool_.Open());
      RETURN_IF_ERROR(writer_->Exec("PRAGMA cache_size=-" + std::to_string(writer_cache_kib_)));
    }
    if (!sqlite3_get_autocommit(writer_->raw())) RETURN_IF_ERROR(writer_->Exec("ROLLBACK"));
    return writer_.get();
  }

  DatastoreInfo info_;
  mutable std::mutex status_mu_;
  std::string status_ = datastore_status::kActive;  // GUARDED_BY(status_mu_)
  ConnectionPool pool_;
  int64_t writer_cache_kib_;
  int scope_chunk_rows_;
  std::unique_ptr<SqliteConnection> writer_;  // GUARDED_BY(write_mu_)
  const Clock& clock_;
  std::mutex write_mu_;
};

// Durably writes `content` to `path` (a temporary file, fsync, rename, fsync of the directory).
Status WriteFileDurably(const std::filesystem::path& path, const std::string& content) {
  const std::string tmp = path.string() + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Status::Unavailable("cannot create " + tmp + ": " + std::strerror(errno));
  size_t done = 0;
  while (done < content.size()) {
    ssize_t n = ::write(fd, content.data() + done, content.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const std::string why = std::strerror(errno);
      ::close(fd);
      return Status::Unavailable("cannot write " + tmp + ": " + why);
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) {
    const std::string why = std::strerror(errno);
    ::close(fd);
    return Status::Unavailable("cannot sync " + tmp + ": " + why);
  }
  if (::close(fd) != 0) return Status::Unavailable("cannot close " + tmp + ": " + std::strerror(errno));
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    return Status::Unavailable("cannot rename " + tmp + ": " + std::strerror(errno));
  }
  int dir = ::open(path.parent_path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir < 0) return Status::Unavailable("cannot open " + path.parent_path().string() + ": " + std::strerror(errno));
  const int rc = ::fsync(dir);
  ::close(dir);
  if (rc != 0) return Status::Unavailable("cannot sync " + path.parent_path().string() + ": " + std::strerror(errno));
  return Status::Ok();
}

class SqliteCatalog final : public DatastoreCatalog {
 public:
  SqliteCatalog(std::filesystem::path root, StoreOptions options) : root_(std::move(root)), options_(options) {}

  std::vector<ResourceStore*> All() override {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<ResourceStore*> out;
    for (auto& s : stores_) out.push_back(s.get());
    return out;
  }
  ResourceStore* Find(std::string_view id) override {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& s : stores_) {
      if (s->info().id == id) return s.get();
    }
    return nullptr;
  }
  ResourceStore* Default() override {
    std::lock_guard<std::mutex> lock(mu_);
    return stores_.empty() ? nullptr : stores_.front().get();
  }

  Result<ResourceStore*> Create(const std::string& name, const std::string& config,
                                const std::string& status) override {
    DatastoreInfo info;
    info.id = NewHexId();
    info.name = name;
    info.created_at = Clock::System().NowMillis();
    info.config = config;
    ASSIGN_OR_RETURN(auto store, MakeStore(info, status));
    std::lock_guard<std::mutex> lock(mu_);
    stores_.push_back(std::move(store));
    return stores_.back().get();
  }

  // Made under the catalog's directory lock when the catalog opens (the first datastore), else by Create.
  // Built whole under ".creating-{id}" and then renamed into place: a crash half-way leaves no datastore (the folder
  // is removed at the next open), never one without its config and status.
  Result<std::unique_ptr<SqliteStore>> MakeStore(DatastoreInfo info, const std::string& status) {
    std::error_code ec;
    const std::filesystem::path staging = root_ / (".creating-" + info.id);
    const std::filesystem::path dir = root_ / info.id;
    std::filesystem::remove_all(staging, ec);
    std::filesystem::create_directories(staging, ec);
    if (ec) return Status::Unavailable("cannot create " + staging.string() + ": " + ec.message());
    {
      DatastoreInfo staged = info;
      staged.path = (staging / "fhir.db").string();
      SqliteStore made(staged, options_, Clock::System());
      made.SetInitialStatus(status);
      RETURN_IF_ERROR(made.Open(/*create=*/true));
    }
    std::filesystem::rename(staging, dir, ec);
    if (ec) return Status::Unavailable("cannot move " + staging.string() + " into place: " + ec.message());
    info.path = (dir / "fhir.db").string();
    auto store = std::make_unique<SqliteStore>(info, options_, Clock::System());
    RETURN_IF_ERROR(store->Open(/*create=*/false));
    return store;
  }

  Status Drop(std::string_view id, const std::string& tombstone) override {
    std::unique_ptr<SqliteStore>* found = nullptr;
    std::string path;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& s : stores_) {
        if (s->info().id == id) found = &s;
      }
      if (found == nullptr) return Status::NotFound("Datastore " + std::string(id) + " does not exist");
      path = (*found)->info().path;
    }
    std::error_code ec;
    std::filesystem::create_directories(root_ / kDeletedDir, ec);
    if (ec) return Status::Unavailable("cannot create " + (root_ / kDeletedDir).string() + ": " + ec.message());
    RETURN_IF_ERROR(WriteFileDurably(root_ / kDeletedDir / (std::string(id) + ".json"), tombstone));
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto it = stores_.begin(); it != stores_.end(); ++it) {
        if ((*it)->info().id != id) continue;
        (*it)->Close();                        // its space is given back once running reads end
        graveyard_.push_back(std::move(*it));  // held pointers stay valid (their calls fail: NotFound)
        stores_.erase(it);
        break;
      }
    }
    // Out of sight first (one rename), then removed: a crash half-way leaves a folder the next open removes.
    const std::filesystem::path dir = std::filesystem::path(path).parent_path();
    const std::filesystem::path doomed = root_ / (".removing-" + std::string(id));
    std::filesystem::rename(dir, doomed, ec);
    if (ec) return Status::Unavailable("cannot move " + dir.string() + " aside: " + ec.message());
    std::filesystem::remove_all(doomed, ec);
    if (ec) return Status::Unavailable("cannot remove " + doomed.string() + ": " + ec.message());
    return Status::Ok();
  }

  Result<std::vector<std::string>> Deleted() override {
    std::vector<std::pair<std::filesystem::file_time_type, std::string>> found;
    std::error_code ec;
    const std::filesystem::path dir = root_ / kDeletedDir;
    if (!std::filesystem::exists(dir, ec)) return std::vector<std::string>();
    for (auto it = std::filesystem::directory_iterator(dir, ec); !ec && it != std::filesystem::directory_iterator();
         it.increment(ec)) {
      if (it->path().extension() != ".json") continue;
      std::ifstream in(it->path(), std::ios::binary);
      std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      if (!in.good() && !in.eof()) return Status::Unavailable("cannot read " + it->path().string());
      std::error_code e2;
      found.emplace_back(std::filesystem::last_write_time(it->path(), e2), std::move(text));
    }
    if (ec) return Status::Unavailable("cannot list " + dir.string() + ": " + ec.message());
    std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    std::vector<std::string> out;
    for (auto& [t, text] : found) out.push_back(std::move(text));
    return out;
  }

  static constexpr const char* kDeletedDir = ".deleted";
  std::filesystem::path root_;
  StoreOptions options_;
  std::mutex mu_;
  std::vector<std::unique_ptr<SqliteStore>> stores_;     // GUARDED_BY(mu_); by creation time, the first is the default
  std::vector<std::unique_ptr<SqliteStore>> graveyard_;  // GUARDED_BY(mu_); dropped, kept for pointers held
};

}  // namespace

Result<std::unique_ptr<DatastoreCatalog>> OpenSqliteCatalog(const StoreOptions& options) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path root = fs::path(options.data_dir) / "datastores";
  fs::create_directories(root, ec);
  if (ec) return Status::Unavailable("cannot create data directory " + root.string() + ": " + ec.message());
  // Two processes opening an empty data directory at once (serve and load) must not each create a default
  // datastore: the scan and the creation happen under an exclusive lock on a file in the directory, held until the
  // catalog is open (and released by close, also when this function returns early).
  const std::string lock_path = (root / ".catalog.lock").string();
  int lock_fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lock_fd < 0) return Status::Unavailable("cannot open " + lock_path + ": " + std::strerror(errno));
  struct LockGuard {
    int fd;
    ~LockGuard() { ::close(fd); }
  } lock_guard{lock_fd};
  while (::flock(lock_fd, LOCK_EX) != 0) {
    if (errno != EINTR) return Status::Unavailable("cannot lock " + lock_path + ": " + std::strerror(errno));
  }
  auto catalog = std::make_unique<SqliteCatalog>(root, options);
  std::vector<fs::path> dirs;
  for (auto it = fs::directory_iterator(root, ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
    std::error_code e2;
    const std::string name = it->path().filename().string();
    if (name.starts_with(".removing-") || name.starts_with(".creating-")) {
      fs::remove_all(it->path(), e2);  // a deletion or a creation that stopped half-way
      continue;
    }
    if (name.starts_with(".")) continue;
    if (fs::exists(root / SqliteCatalog::kDeletedDir / (name + ".json"), e2)) {
      fs::remove_all(it->path(), e2);  // dropped: its tombstone was written, its folder not yet removed
      continue;
    }
    if (it->is_directory(e2) && fs::exists(it->path() / "fhir.db", e2)) dirs.push_back(it->path());
  }
  if (ec) return Status::Unavailable("cannot list " + root.string() + ": " + ec.message());
  std::sort(dirs.begin(), dirs.end());
  for (const auto& dir : dirs) {
    DatastoreInfo info;
    info.path = (dir / "fhir.db").string();
    auto store = std::make_unique<SqliteStore>(info, options, Clock::System());
    RETURN_IF_ERROR(store->Open(/*create=*/false));
    catalog->stores_.push_back(std::move(store));
  }
  // The default datastore is made only in a data directory that never had one (not after the last was deleted).
  ASSIGN_OR_RETURN(auto deleted, catalog->Deleted());
  if (catalog->stores_.empty() && deleted.empty()) {
    DatastoreInfo info;
    info.id = NewHexId();
    info.name = options.default_datastore_name;
    info.created_at = Clock::System().NowMillis();
    ASSIGN_OR_RETURN(auto store, catalog->MakeStore(info, datastore_status::kActive));
    catalog->stores_.push_back(std::move(store));
  }
  std::stable_sort(catalog->stores_.begin(), catalog->stores_.end(),
                   [](const auto& a, const auto& b) { return a->info().created_at < b->info().created_at; });
  return std::unique_ptr<DatastoreCatalog>(std::move(catalog));
}

}  // namespace fhirlake::store
