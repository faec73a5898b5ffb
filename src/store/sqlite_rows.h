// The one reading of a resource row (internal to the SQLite store): the columns every resource query selects, in
// this order, and the StoredResource they make.
#pragma once

#include "store/resource_store.h"
#include "store/sqlite_db.h"

namespace fhirlake::store {

// The resource columns of the `resources` table aliased `r`, as ReadResourceRow reads them.
inline constexpr const char* kResourceRowColumns =
    "r.rid, r.type, r.id, r.version, r.seq, r.last_updated, r.deleted, r.json, r.op";

// Columns: rid, type, id, version, seq, last_updated, deleted, json, op.
inline StoredResource ReadResourceRow(const SqliteStmt& q) {
  StoredResource r;
  r.rid = q.Int(0);
  r.type = q.Str(1);
  r.id = q.Str(2);
  r.version = q.Int(3);
  r.seq = q.Int(4);
  r.last_updated = q.Int(5);
  r.deleted = q.Int(6) != 0;
  r.json = q.Str(7);
  r.created_by_post = q.Int(8) == static_cast<int>(WriteOp::kPost);
  return r;
}

}  // namespace fhirlake::store
