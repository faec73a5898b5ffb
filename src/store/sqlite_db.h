// Thin RAII wrappers over the SQLite C API used by the SQLite store: a connection with a cache of
// prepared statements, and a statement with typed bind/column helpers that turn SQLite errors into Status.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>

#include "common/status.h"

namespace fhirlake::store {

class SqliteStmt {
 public:
  // `owned`: the statement is this object's (finalized with it) rather than the connection's cache's.
  SqliteStmt(sqlite3_stmt* stmt, sqlite3* db, bool owned = false) : stmt_(stmt), db_(db), owned_(owned) {}
  ~SqliteStmt() {
    if (owned_) {
      sqlite3_finalize(stmt_);
      return;
    }
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }
  SqliteStmt(const SqliteStmt&) = delete;
  SqliteStmt& operator=(const SqliteStmt&) = delete;

  SqliteStmt& Bind(int i, int64_t v) {
    Check(sqlite3_bind_int64(stmt_, i, v));
    return *this;
  }
  SqliteStmt& Bind(int i, std::string_view v) {
    Check(sqlite3_bind_text(stmt_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT));
    return *this;
  }
  // Any other integer binds as an int64 (without this, an int would be ambiguous between int64_t and double).
  template <typename T>
  requires std::is_integral_v<T> SqliteStmt& Bind(int i, T v) { return Bind(i, static_cast<int64_t>(v)); }
  SqliteStmt& Bind(int i, double v) {
    Check(sqlite3_bind_double(stmt_, i, v));
    return *this;
  }
  SqliteStmt& BindBlob(int i, std::string_view v) {
    Check(sqlite3_bind_blob(stmt_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT));
    return *this;
  }
  SqliteStmt& BindStatic(int i, std::string_view v) {  // `v` must outlive the statement's execution
    Check(sqlite3_bind_text(stmt_, i, v.data(), static_cast<int>(v.size()), SQLITE_STATIC));
    return *this;
  }
  SqliteStmt& BindNull(int i) {
    Check(sqlite3_bind_null(stmt_, i));
    return *this;
  }
  SqliteStmt& Bind(int i, std::optional<int64_t> v) { return v ? Bind(i, *v) : BindNull(i); }

  // Returns true when a row is available, false when done.
  Result<bool> Step();
  // Runs to completion, ignoring rows, then resets (bindings stay) so the statement can run again.
  Status Run();
  void Reset() { sqlite3_reset(stmt_); }

  int64_t Int(int col) const { return sqlite3_column_int64(stmt_, col); }
  double Double(int col) const { return sqlite3_column_double(stmt_, col); }
  int Type(int col) const { return sqlite3_column_type(stmt_, col); }
  bool IsNull(int col) const { return sqlite3_column_type(stmt_, col) == SQLITE_NULL; }
  std::optional<int64_t> OptInt(int col) const { return IsNull(col) ? std::nullopt : std::optional<int64_t>(Int(col)); }
  std::string_view Text(int col) const {
    const void* p = sqlite3_column_blob(stmt_, col);
    int n = sqlite3_column_bytes(stmt_, col);
    return p ? std::string_view(static_cast<const char*>(p), static_cast<size_t>(n)) : std::string_view();
  }
  std::string Str(int col) const { return std::string(Text(col)); }

 private:
  void Check(int rc) {
    if (rc != SQLITE_OK && bind_error_.ok()) bind_error_ = Status::Internal(sqlite3_errmsg(db_));
  }
  sqlite3_stmt* stmt_;
  sqlite3* db_;
  bool owned_;
  Status bind_error_;
};

class SqliteConnection {
 public:
  static Result<std::unique_ptr<SqliteConnection>> Open(const std::string& path, int busy_timeout_ms);
  ~SqliteConnection();
  SqliteConnection(const SqliteConnection&) = delete;
  SqliteConnection& operator=(const SqliteConnection&) = delete;

  // A cached prepared statement; the returned object resets it on destruction. Not re-entrant for the
  // same SQL text (do not nest two uses of one statement).
  Result<std::unique_ptr<SqliteStmt>> Prepare(std::string_view sql);
  // Prepares a statement that is not cached (SQL built per request, such as a search): finalized with the result.
  Result<std::unique_ptr<SqliteStmt>> PrepareUncached(std::string_view sql);
  Status Exec(std::string_view sql);
  int64_t LastInsertRowid() const { return sqlite3_last_insert_rowid(db_); }
  sqlite3* raw() const { return db_; }

 private:
  explicit SqliteConnection(sqlite3* db) : db_(db) {}
  sqlite3* db_;
  std::map<std::string, sqlite3_stmt*, std::less<>> cache_;
};

Status SqliteError(sqlite3* db, std::string_view what);

}  // namespace fhirlake::store
