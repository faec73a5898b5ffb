// The SQLite schema of a datastore database, its version, and the migrations between versions.
// docs/STORAGE.md describes the same tables for people.
#pragma once

#include "common/status.h"
#include "store/sqlite_db.h"

namespace fhirlake::store {

inline constexpr int kSchemaVersion = 12;

// Creates the schema of exactly `version` in an empty database (tests use it to build old databases).
Status CreateSchema(SqliteConnection& db, int version);
// Brings a database to kSchemaVersion: creates it when empty, migrates an older one, and refuses a newer or
// unrecognised one with a message that says what to do.
Status EnsureSchema(SqliteConnection& db, const std::string& path);

}  // namespace fhirlake::store
