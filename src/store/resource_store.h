// The storage interface of one datastore: resources with versions, history and tombstones, the Patient
// compartment and reference indexes filled at ingest, and commit sequence snapshots for export; its export jobs
// are behind jobs() (store/job_store.h). SQLite implements it (sqlite_store.cc); PostgreSQL will implement the same.
//
// Threading: every method may be called from any thread. Reads run concurrently; write transactions
// are serialised (one StoreTransaction at a time per datastore; BeginWrite blocks until it can start).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "common/time.h"
#include "fhir/resource_parser.h"
#include "search/index_rows.h"
#include "search/query.h"
#include "store/job_store.h"

namespace fhirlake::store {

struct DatastoreInfo {
  std::string id;  // 32 lowercase hex characters
  std::string name;
  EpochMillis created_at = 0;
  std::string path;  // the database file
  // What the control plane's CreateFHIRDatastore recorded (a JSON object, kept as given; "{}" for a datastore made
  // otherwise). Fixed at creation.
  std::string config = "{}";
};

// A datastore's life (HealthLake's DatastoreStatus): CREATING (being made, e.g. preloaded), ACTIVE, DELETING.
// DELETED datastores are no longer stores; the catalog keeps what describes them (DatastoreCatalog::Deleted).
namespace datastore_status {
inline constexpr const char* kCreating = "CREATING";
inline constexpr const char* kActive = "ACTIVE";
inline constexpr const char* kDeleting = "DELETING";
}  // namespace datastore_status

struct StoredResource {
  int64_t rid = 0;  // the store's internal row key of the logical resource (stable across versions)
  std::string type;
  std::string id;
  int64_t version = 0;
  int64_t seq = 0;  // commit sequence of this version
  EpochMillis last_updated = 0;
  bool deleted = false;
  bool created_by_post = false;  // this version was written by a create (POST) rather than an update (PUT)
  bool created = false;          // set by Put: there was no current version before (new, or after a delete)
  std::string json;              // the stored bytes; empty for a tombstone
};

// How a version was written, for history entries' request.method.
enum class WriteOp { kPut = 0, kPost = 1 };

// One page of a search: the matches (current, not deleted, in the query's sort order), the resources _include and
// _revinclude add (each once, none that is also a match), the total when asked for, and the cursor of the next page
// (empty on the last page).
struct SearchResult {
  std::vector<StoredResource> matches;
  std::vector<StoredResource> included;
  std::optional<int64_t> total;
  std::string next_page;
};

// One write transaction. Destroying it without Commit() rolls everything back.
class StoreTransaction {
 public:
  virtual ~StoreTransaction() = default;
  // The commit sequence number and lastUpdated instant every write of this transaction gets.
  virtual int64_t seq() const = 0;
  virtual EpochMillis last_updated() const = 0;
  // Current version (tombstones included) or kNotFound.
  virtual Result<StoredResource> Read(std::string_view type, std::string_view id) = 0;
  // Creates or updates `type/id` with the parsed content: version = previous + 1 (1 when new, or after a
  // tombstone the version continues). `if_match`: the expected current version (412 otherwise). `index`: the
  // search index rows of the content (search::IndexExtractor over it), extracted by a caller that can do it outside
  // the write lock; nullptr: Put extracts them from the stored bytes.
  virtual Result<StoredResource> Put(const fhir::ParsedResource& parsed, std::string_view id,
                                     std::optional<int64_t> if_match, WriteOp op = WriteOp::kPut,
                                     const search::IndexRows* index = nullptr) = 0;
  // Writes a tombstone. Deleting a missing or already deleted resource is not an error (FHIR: 200/204);
  // returns the tombstone, or kNotFound when the resource never existed.
  virtual Result<StoredResource> Delete(std::string_view type, std::string_view id,
                                        std::optional<int64_t> if_match) = 0;
  // Ids of current (not deleted) resources of `type` having identifier system|value (system may be empty
  // to match any system).
  virtual Result<std::vector<std::string>> FindByIdentifier(std::string_view type, std::string_view system,
                                                            std::string_view value) = 0;
  // A search inside this transaction (it sees this transaction's writes): conditional create, update and delete
  // decide on what it returns under the write lock.
  virtual Result<SearchResult> Search(const search::SearchQuery& query) = 0;
  virtual Status Commit() = 0;
};

struct ScanRequest {
  std::string type;
  ScanScope scope = ScanScope::kAll;
  std::string job_id;                // for kJobScope
  int64_t after_rid = 0;             // exclusive lower bound (keyset paging)
  int64_t max_rid = INT64_MAX;       // inclusive upper bound (task key range)
  std::optional<EpochMillis> since;  // only versions with lastUpdated >= since
  std::optional<EpochMillis> until;  // only versions with lastUpdated <= until (the version as of the snapshot)
  Snapshot snapshot;
  size_t max_rows = 1000;
  size_t max_bytes = 4 << 20;
  // Non-empty: only rows also listed under this key of the scope table (a job's _typeFilter matches,
  // FilterScopeKey).
  std::string filter_key;
  // The deletions instead of the resources: rows whose version as of the snapshot is a tombstone written at or
  // after `since` (required), handed over with empty json. With kAnyCompartment / kJobScope, a tombstone is in
  // scope when the version it deleted was in a compartment in scope (kJobScope: of the job's patients).
  bool tombstones = false;
};

struct ScanRow {
  int64_t rid;
  std::string_view id;           // the resource id; valid during the callback
  std::string_view json;         // the bytes of the version current at the snapshot; valid during the callback
  std::string_view type;         // ScanCompartment only: the row's resource type
  EpochMillis last_updated = 0;  // of that version (not set for tombstones)
};

// organizeOutputBy=Patient: the resources in one Patient's compartment as of a snapshot (other Patients and Groups
// left out), in rid order after `after_rid`.
struct CompartmentScanRequest {
  std::string patient_id;
  Snapshot snapshot;
  int64_t after_rid = 0;
  std::optional<EpochMillis> since;
  std::optional<EpochMillis> until;
  std::vector<std::string> types;  // empty: every type
  // Rows of these types only when listed under `filter_key` of the scope table (the job's _typeFilter matches).
  std::vector<std::string> filtered_types;
  std::string filter_key;
  size_t max_rows = 1000;
  size_t max_bytes = 4 << 20;
};

// includeAssociatedData: a Provenance (`prov_rid`, `recorded` its Provenance.recorded) that targets type/id.
struct Association {
  std::string target_type;
  std::string target_id;
  int64_t prov_rid = 0;
  EpochMillis recorded = 0;
};

struct TypeRange {
  int64_t rows = 0;
  int64_t min_rid = 0;
  int64_t max_rid = 0;
};

class ResourceStore {
 public:
  virtual ~ResourceStore() = default;
  virtual const DatastoreInfo& info() const = 0;
  // CREATING, ACTIVE or DELETING (datastore_status); a datastore made before the control plane existed is ACTIVE.
  virtual std::string status() const = 0;
  // Records the status (durable when it returns Ok).
  virtual Status SetStatus(const std::string& status) = 0;
  // The datastore's tags (the control plane's TagResource; IAM's aws:ResourceTag), kept in the store.
  virtual Result<std::map<std::string, std::string>> Tags() = 0;
  // Replaces them (durable when it returns Ok).
  virtual Status SetTags(const std::map<std::string, std::string>& tags) = 0;

  virtual Result<std::unique_ptr<StoreTransaction>> BeginWrite() = 0;
  virtual Result<StoredResource> Read(std::string_view type, std::string_view id) = 0;
  virtual Result<StoredResource> ReadVersion(std::string_view type, std::string_view id, int64_t version) = 0;
  // The version of `type/id` that was current at commit sequence `seq` (a tombstone when it was deleted then);
  // kNotFound when it did not exist yet.
  virtual Result<StoredResource> ReadAsOf(std::string_view type, std::string_view id, int64_t seq) = 0;
  // Keyset paging for History and ReadCompartment: a page starts after the sort key of the previous page's last
  // row (nullopt: at the first row) and holds at most `limit` + 1 rows, the extra one only telling the caller
  // that a next page exists. Each page is one read transaction; `total` counts the rows of the whole read in it.
  struct PageRequest {
    std::optional<int64_t> after;
    size_t limit = 100;
  };
  static constexpr size_t kAllRows = static_cast<size_t>(INT64_MAX) - 1;  // no limit (tests, tools)
  struct ResourcePage {
    std::vector<StoredResource> rows;
    int64_t total = 0;
  };
  // Versions newest first (tombstones included); the key is the version: a page has versions < `after`.
  // kNotFound when the resource never existed.
  virtual Result<ResourcePage> History(std::string_view type, std::string_view id, const PageRequest& page) = 0;
  // Every version at once (tests and tools; request handlers page).
  Result<std::vector<StoredResource>> History(std::string_view type, std::string_view id) {
    ASSIGN_OR_RETURN(ResourcePage page, History(type, id, PageRequest{std::nullopt, kAllRows}));
    return std::move(page.rows);
  }
  // Every version of every resource of `type` (empty: all types), newest first (by commit sequence, then row), with
  // lastUpdated >= `since` when given (tombstones included). Keyset paging: `after` is the (seq, rid) of the previous
  // page's last row; a page holds up to `limit` + 1 rows. `total` counts the whole read (computed when `after` is
  // not given; -1 otherwise, the caller carries it).
  struct HistoryPageRequest {
    std::optional<std::pair<int64_t, int64_t>> after;
    std::optional<EpochMillis> since;
    size_t limit = 100;
  };
  virtual Result<ResourcePage> HistoryAll(std::string_view type, const HistoryPageRequest& page) = 0;
  // Patient ids of the compartments the current version of a resource is in (tests and diagnostics).
  virtual Result<std::vector<std::string>> CompartmentsOf(std::string_view type, std::string_view id) = 0;
  virtual Result<int64_t> CountCurrent() = 0;
  // Current (not deleted) resources in patient `patient_id`'s compartment, the Patient itself included,
  // optionally of one type (empty: all), in storage order; the key is the rid: a page has rids > `after`.
  virtual Result<ResourcePage> ReadCompartment(std::string_view patient_id, std::string_view type,
                                               const PageRequest& page) = 0;
  // The current resources outside the Patient compartment types that the resources `rids` refer to (literal
  // references), other than those rows themselves, at most `limit` ($everything's referenced resources).
  virtual Result<std::vector<StoredResource>> ReferencedBy(const std::vector<int64_t>& rids, size_t limit) = 0;
  // The whole compartment at once (tests and tools; request handlers page).
  Result<std::vector<StoredResource>> ReadCompartment(std::string_view patient_id, std::string_view type) {
    ASSIGN_OR_RETURN(ResourcePage page, ReadCompartment(patient_id, type, PageRequest{std::nullopt, kAllRows}));
    return std::move(page.rows);
  }

  // FHIR search (search/query.h): one page of `query`, starting where query.page says. `compartment_patient`:
  // only resources in that Patient's compartment. kInvalid for a page cursor this search did not make.
  virtual Result<SearchResult> Search(const search::SearchQuery& query, std::string_view compartment_patient = "") = 0;
  // Rebuilds every search index row from the current versions (`fhirlake reindex`); returns the resources indexed.
  virtual Result<int64_t> Reindex() = 0;
  // Bulk loads (`fhirlake load`): with kDeferred, or kAuto when the load is large beside the store, the search
  // index's lookup B-trees are dropped until EndBulkLoad rebuilds them in one sorted pass (searches meanwhile are
  // correct but scan). Returns whether they were dropped. A load that stops before EndBulkLoad leaves them to the
  // next open of the store, which builds them.
  enum class BulkIndexing { kAuto, kDeferred, kImmediate };
  virtual Result<bool> BeginBulkLoad(BulkIndexing mode, int64_t incoming_bytes) = 0;
  virtual Status EndBulkLoad() = 0;

  // --- export reads ---
  virtual Result<Snapshot> TakeSnapshot() = 0;
  // An export's _typeFilter: a type and the searches (OR-ed) its exported resources must match.
  struct TypeFilter {
    std::string type;
    std::vector<search::SearchQuery> queries;
  };
  // Takes a snapshot and lists, under FilterScopeKey(job_id) of the scope table, the resources of each filter's type
  // that match one of its queries as of exactly that snapshot (the searches run in a read transaction begun before
  // the snapshot's commit, while no other write can happen). Replaces what an earlier run listed for the job.
  virtual Result<Snapshot> TakeSnapshotWithFilters(const std::string& job_id,
                                                   const std::vector<TypeFilter>& filters) = 0;
  virtual Result<TypeRange> RangeOf(const std::string& type, ScanScope scope, const std::string& job_id) = 0;
  // Reads up to max_rows / max_bytes rows with rid in (after_rid, max_rid], in rid order, each in its version
  // as of the snapshot (skipping rows absent or deleted then, or older than `since`), in one bounded read
  // transaction, and then, after that transaction has ended, hands them to `on_row` (the batch is copied out, so a
  // slow consumer such as an S3 upload never pins the database's WAL). `last_rid` is the last rid examined, so
  // paging continues after skipped rows.
  struct ScanProgress {
    int64_t last_rid = 0;
    bool exhausted = false;  // nothing left in the range after last_rid
  };
  virtual Result<ScanProgress> Scan(const ScanRequest& request,
                                    const std::function<Status(const ScanRow&)>& on_row) = 0;
  // Group exports and referenced resources: fills the job's scope table from compartment membership as of
  // `snapshot`, in many short write transactions of bounded size (a large Group never holds the write lock for
  // long). Idempotent: a crash half-way and a re-run give the same scope.
  virtual Status MaterializeGroupScope(const std::string& job_id, const std::string& group_id,
                                       const std::vector<std::string>& patient_ids, bool include_referenced,
                                       const Snapshot& snapshot) = 0;
  virtual Status MaterializeReferencedScope(const std::string& job_id, const Snapshot& snapshot) = 0;
  virtual Result<std::vector<std::string>> TypesInJobScope(const std::string& job_id) = 0;
  // Like Scan, for one Patient's compartment (organizeOutputBy); ScanRow::type is set.
  virtual Result<ScanProgress> ScanCompartment(const CompartmentScanRequest& request,
                                               const std::function<Status(const ScanRow&)>& on_row) = 0;
  // Lists `rids` (of `type`) under `key` of the scope table (idempotent).
  virtual Status AddToScope(const std::string& key, const std::string& type, const std::vector<int64_t>& rids) = 0;
  // includeAssociatedData: records Provenance targets for the job (idempotent), then lists under
  // AssociatedScopeKey(job_id) the Provenance whose targets are listed under ExportedScopeKey(job_id): all of them,
  // or with `latest_only` the most recent one of each exported target.
  virtual Status AddAssociations(const std::string& job_id, const std::vector<Association>& rows) = 0;
  virtual Status SelectAssociated(const std::string& job_id, bool latest_only) = 0;

  // The persisted export jobs of this datastore.
  virtual JobStore& jobs() = 0;
};

// The datastores of one data directory. Opening creates the default datastore on first start.
// Thread-safe: datastores are created and dropped while requests and export workers use others. A pointer this
// catalog handed out stays valid until the catalog is destroyed, also after its datastore was dropped.
class DatastoreCatalog {
 public:
  virtual ~DatastoreCatalog() = default;
  virtual std::vector<ResourceStore*> All() = 0;
  virtual ResourceStore* Find(std::string_view datastore_id) = 0;
  // The oldest datastore; nullptr when there is none.
  virtual ResourceStore* Default() = 0;
  // A new, empty datastore with `status` and the control plane's `config` (DatastoreInfo::config).
  virtual Result<ResourceStore*> Create(const std::string& name, const std::string& config,
                                        const std::string& status) = 0;
  // Removes a datastore and its data (its folder); `tombstone` (JSON: what describes it from now on) is kept
  // durably first, for Deleted(). kNotFound for an unknown id.
  virtual Status Drop(std::string_view datastore_id, const std::string& tombstone) = 0;
  // The tombstones of the dropped datastores, oldest first.
  virtual Result<std::vector<std::string>> Deleted() = 0;
};

struct StoreOptions {
  std::string data_dir;
  std::string default_datastore_name = "fhirlake-default";
  int busy_timeout_ms = 60000;
  // Write transactions of the scope materialisation (Group / referenced resources) cover this many patients or
  // reference rows each.
  int scope_chunk_rows = 500;
  // Page cache of the (single) writer connection: large for bulk loads (random index inserts), modest for a
  // server, whose RSS it bounds. Readers use 4 MiB each.
  int64_t writer_cache_bytes = 16 << 20;
};

Result<std::unique_ptr<DatastoreCatalog>> OpenSqliteCatalog(const StoreOptions& options);

}  // namespace fhirlake::store
