// The FHIR versioning rules, written once above every storage backend: version numbers (1, 2, ...; a write after a
// delete continues them), If-Match, tombstones, what moves to history, and the stored bytes with their meta
// (`RenderResource`). A backend implements only StorageTransaction — rows and indexes — so SQLite and PostgreSQL
// cannot disagree on any of these rules.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "common/time.h"
#include "fhir/resource_parser.h"
#include "store/resource_store.h"

namespace fhirlake::store {

// One write transaction of a storage backend. Destroying it without Commit() rolls everything back.
class StorageTransaction {
 public:
  virtual ~StorageTransaction() = default;
  // The commit sequence number and lastUpdated instant of every row this transaction writes.
  virtual int64_t seq() const = 0;
  virtual EpochMillis last_updated() const = 0;
  // The current row of type/id (tombstones included), or kNotFound.
  virtual Result<StoredResource> ReadCurrent(std::string_view type, std::string_view id) = 0;
  // Copies the current row of `rid` into history as it is.
  virtual Status ArchiveCurrent(int64_t rid) = 0;
  // Writes `row` as the current row: inserts when row.rid == 0 (returns the new rid), else replaces row.rid's.
  // row.seq/last_updated are this transaction's; row.json is empty for a tombstone.
  virtual Result<int64_t> WriteCurrent(const StoredResource& row, WriteOp op) = 0;
  // Ends the current compartment membership of `rid` at this transaction's seq and drops its identifier and search
  // index rows (and its reference rows unless `keep_references`).
  virtual Status EndIndexes(int64_t rid, bool keep_references) = 0;
  // Writes the compartment, reference, identifier and search index rows of the new current version of `rid`.
  virtual Status WriteIndexes(const fhir::ParsedResource& parsed, std::string_view id, int64_t rid,
                              const search::IndexRows& index) = 0;
  virtual Result<std::vector<std::string>> FindByIdentifier(std::string_view type, std::string_view system,
                                                            std::string_view value) = 0;
  virtual Result<SearchResult> Search(const search::SearchQuery& query) = 0;
  virtual Status Commit() = 0;
};

// A StoreTransaction that applies the versioning rules over `storage`.
std::unique_ptr<StoreTransaction> NewVersionedTransaction(std::unique_ptr<StorageTransaction> storage);

}  // namespace fhirlake::store
