// The SQLite side of FHIR search (internal to the store): the index tables (schema v5, docs/STORAGE.md), writing
// and dropping a resource's rows, rebuilding them all (reindex), and running a search::SearchQuery as SQL.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "common/status.h"
#include "search/index_rows.h"
#include "search/query.h"
#include "store/resource_store.h"
#include "store/sqlite_db.h"

namespace fhirlake::store {

// Writes the rows of the current version of `rid` (inside the caller's write transaction).
Status WriteSearchRows(SqliteConnection& conn, int64_t rid, const search::IndexRows& rows);
// Drops every index row of `rid` (the version they came from is no longer current).
Status DropSearchRows(SqliteConnection& conn, int64_t rid);

// Rebuilds every index row from the current versions when the store's recorded registry hash differs from
// search::RegistryHash() (a new store, an upgrade, or `force`), in write transactions of bounded size, logging
// progress through `progress` (rows done, rows total). Returns the number of resources indexed (0: nothing to do).
Result<int64_t> ReindexIfNeeded(SqliteConnection& conn, bool force,
                                const std::function<void(int64_t, int64_t)>& progress);

// Runs `query` in one read transaction on `conn` (the caller's lease). `compartment_patient`: restrict to that
// Patient's compartment (compartment search).
Result<SearchResult> RunSearch(SqliteConnection& conn, const search::SearchQuery& query,
                               std::string_view compartment_patient);

}  // namespace fhirlake::store
