// The SQLite side of FHIR search (internal to the store): the index tables (schema v6, docs/STORAGE.md), writing
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

// Registers the SQL functions searches use (fl_token_text: `:text` on a token parameter); every connection that
// runs searches needs them.
Status RegisterSearchFunctions(SqliteConnection& conn);

// Writes the rows of the current version of `rid` (inside the caller's write transaction).
Status WriteSearchRows(SqliteConnection& conn, int64_t rid, const search::IndexRows& rows);
// Drops every index row of `rid` (the version they came from is no longer current).
Status DropSearchRows(SqliteConnection& conn, int64_t rid);

// Rebuilds every index row from the current versions when the store's recorded registry hash differs from
// search::RegistryHash() (a new store, an upgrade, or `force`), in write transactions of bounded size, logging
// progress through `progress` (rows done, rows total). Returns the number of resources indexed (0: nothing to do).
Result<int64_t> ReindexIfNeeded(SqliteConnection& conn, bool force,
                                const std::function<void(int64_t, int64_t)>& progress);

// Drops the (param, value...) lookup indexes of the search tables, so that a bulk load or the reindex appends rows
// in key order only; searches stay correct without them (they scan). Inside or outside a transaction.
Status DropSearchLookups(SqliteConnection& conn);
// Creates the lookup indexes that are missing (after DropSearchLookups, or a load that stopped before rebuilding
// them), each in one sorted pass, outside any transaction; `built` hears (index, rows, seconds) for each one made.
// Returns how many it made.
Result<int> EnsureSearchLookups(SqliteConnection& conn,
                                const std::function<void(std::string_view, int64_t, double)>& built);

// Runs `query` in one read transaction on `conn` (the caller's lease). `compartment_patient`: restrict to that
// Patient's compartment (compartment search).
Result<SearchResult> RunSearch(SqliteConnection& conn, const search::SearchQuery& query,
                               std::string_view compartment_patient);

// Calls `fn` with the rid of every resource matching `query`'s criteria (its types, current and not deleted), in rid
// order, inside the caller's read transaction on `conn`; paging, sorting and includes of the query do not apply.
Status ForEachMatchingRid(SqliteConnection& conn, const search::SearchQuery& query,
                          const std::function<Status(int64_t)>& fn);

}  // namespace fhirlake::store
