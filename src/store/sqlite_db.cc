// SQLite connection and statement helpers.
#include "store/sqlite_db.h"

namespace fhirlake::store {

Status SqliteError(sqlite3* db, std::string_view what) {
  int code = sqlite3_extended_errcode(db);
  std::string msg = std::string(what) + ": " + sqlite3_errmsg(db);
  if ((code & 0xff) == SQLITE_BUSY || (code & 0xff) == SQLITE_LOCKED) return Status::Unavailable(msg);
  if ((code & 0xff) == SQLITE_FULL) return Status::Unavailable(msg + " (the disk is full)");
  return Status::Internal(msg);
}

Result<bool> SqliteStmt::Step() {
  if (!bind_error_.ok()) return bind_error_;
  int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  return SqliteError(db_, "SQLite step failed");
}

Status SqliteStmt::Run() {
  while (true) {
    auto row = Step();
    if (!row.ok() || !*row) {
      sqlite3_reset(stmt_);  // ready to be bound and run again
      return row.status();
    }
  }
}

Result<std::unique_ptr<SqliteConnection>> SqliteConnection::Open(const std::string& path, int busy_timeout_ms) {
  sqlite3* db = nullptr;
  int rc =
      sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    std::string msg = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return Status::Unavailable("cannot open database " + path + ": " + msg);
  }
  sqlite3_busy_timeout(db, busy_timeout_ms);
  sqlite3_extended_result_codes(db, 1);
  return std::unique_ptr<SqliteConnection>(new SqliteConnection(db));
}

SqliteConnection::~SqliteConnection() {
  for (auto& [sql, stmt] : cache_) sqlite3_finalize(stmt);
  sqlite3_close(db_);
}

Result<std::unique_ptr<SqliteStmt>> SqliteConnection::Prepare(std::string_view sql) {
  auto it = cache_.find(sql);
  if (it == cache_.end()) {
    sqlite3_stmt* stmt = nullptr;
    int rc =
        sqlite3_prepare_v3(db_, sql.data(), static_cast<int>(sql.size()), SQLITE_PREPARE_PERSISTENT, &stmt, nullptr);
    if (rc != SQLITE_OK) return SqliteError(db_, "SQLite prepare failed for [" + std::string(sql) + "]");
    it = cache_.emplace(std::string(sql), stmt).first;
  }
  return std::make_unique<SqliteStmt>(it->second, db_);
}

Result<std::unique_ptr<SqliteStmt>> SqliteConnection::PrepareUncached(std::string_view sql) {
  sqlite3_stmt* stmt = nullptr;
  int rc = sqlite3_prepare_v2(db_, sql.data(), static_cast<int>(sql.size()), &stmt, nullptr);
  if (rc != SQLITE_OK) {
    sqlite3_finalize(stmt);
    return SqliteError(db_, "SQLite prepare failed for [" + std::string(sql) + "]");
  }
  return std::make_unique<SqliteStmt>(stmt, db_, /*owned=*/true);
}

Status SqliteConnection::Exec(std::string_view sql) {
  char* err = nullptr;
  std::string s(sql);
  int rc = sqlite3_exec(db_, s.c_str(), nullptr, nullptr, &err);
  if (rc != SQLITE_OK) {
    std::string msg = err ? err : "unknown error";
    sqlite3_free(err);
    Status st = SqliteError(db_, "SQLite exec failed");
    return Status(st.code(), msg + " [" + s.substr(0, 80) + "]");
  }
  return Status::Ok();
}

}  // namespace fhirlake::store
