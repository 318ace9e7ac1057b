// RAII over libpq: a Connection owns a PGconn, a Result owns a PGresult. Every failure
// becomes a typed exception carrying the SQLSTATE and the side (source or target); the
// mapping from SQLSTATE to type lives in one place, throw_pg_error().
#pragma once

#include <libpq-fe.h>

#include <initializer_list>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "pgferry/replication/core/error.hpp"

namespace pgferry::replication {

class Result {
 public:
  Result() = default;
  explicit Result(PGresult* result) : result_(result) {}

  int rows() const { return result_ ? PQntuples(result_.get()) : 0; }
  int columns() const { return result_ ? PQnfields(result_.get()) : 0; }
  bool is_null(int row, int column) const { return PQgetisnull(result_.get(), row, column) != 0; }
  // The text of one field; "" when NULL (use optional() to tell the two apart).
  std::string_view get(int row, int column) const {
    return {PQgetvalue(result_.get(), row, column),
            static_cast<std::size_t>(PQgetlength(result_.get(), row, column))};
  }
  std::optional<std::string_view> optional(int row, int column) const {
    if (is_null(row, column)) return std::nullopt;
    return get(row, column);
  }
  // The single value of a one-row, one-column result (e.g. SELECT count(*)).
  std::string scalar() const;
  int column_index(std::string_view name) const;
  // Rows affected by INSERT/UPDATE/DELETE/COPY; 0 for other commands.
  long affected_rows() const;
  ExecStatusType status() const { return PQresultStatus(result_.get()); }
  PGresult* native() const { return result_.get(); }
  explicit operator bool() const { return result_ != nullptr; }

 private:
  struct Deleter {
    void operator()(PGresult* result) const { PQclear(result); }
  };
  std::unique_ptr<PGresult, Deleter> result_;
};

// A parameter in text format; nullopt is SQL NULL.
using Param = std::optional<std::string_view>;

// Session settings every pgferry connection uses so that values printed as text on one
// server read back the same on another: ISO dates, postgres-style intervals, floats with
// full precision.
inline constexpr std::string_view kCanonicalFormatOptions =
    "-c datestyle=ISO -c intervalstyle=postgres -c extra_float_digits=3";

// Whether the session's role may set session_replication_role: a superuser; on PostgreSQL
// 15+ a role granted SET ON PARAMETER session_replication_role; or a role the server lets
// set it otherwise (the admin roles of managed services, found by trying SET LOCAL in a
// transaction that is rolled back).
struct ReplicaRoleAccess {
  std::string role;  // current_user
  bool superuser = false;
  bool granted = false;  // has_parameter_privilege(..., 'SET'), PostgreSQL 15+
  bool allowed = false;
  int server_version = 0;
  // The statement an administrator runs to allow it (a superuser before PostgreSQL 15).
  std::string grant_statement() const;
};

class Connection {
 public:
  // Connects (blocking). `extra` keywords override those of `conninfo`, e.g.
  // {"replication", "database"}. Throws ConfigError for a malformed string and
  // ConnectionError (with the redacted string) when the server cannot be reached.
  static Connection open(std::string_view conninfo, Side side,
                         const std::vector<std::pair<std::string, std::string>>& extra = {});

  Connection() = default;

  // Simple-query protocol; several statements are allowed, the last result is returned.
  Result exec(std::string_view sql, std::string_view context = {}) const;
  // Extended protocol with text parameters.
  Result exec(std::string_view sql, std::initializer_list<Param> params,
              std::string_view context = {}) const;
  Result exec(std::string_view sql, std::span<const Param> params,
              std::string_view context = {}) const;

  // Makes this a session that applies replicated changes as PostgreSQL's own subscriber
  // does: session_replication_role = replica (user triggers, foreign-key checks and
  // actions do not fire; triggers declared ENABLE REPLICA or ENABLE ALWAYS do), when the
  // role may set it (see replica_role_access). Decided up front, never by failing later.
  // Idempotent; returns what was found (allowed: the session now runs as a replica).
  // Every other session setting is pinned in open().
  ReplicaRoleAccess set_replica_role();
  // Whether set_replica_role() put the session in the replica role.
  bool replica_role() const { return replica_role_; }

  // Throws the typed error for `result` unless its status is one of the successful ones.
  // Takes ownership of `result`.
  Result check(PGresult* result, std::string_view context = {}) const;

  PGconn* native() const { return conn_.get(); }
  Side side() const { return side_; }
  const std::string& redacted_conninfo() const { return redacted_; }
  int server_version() const { return PQserverVersion(conn_.get()); }
  bool is_open() const { return conn_ && PQstatus(conn_.get()) == CONNECTION_OK; }
  void close() { conn_.reset(); }

 private:
  struct Deleter {
    void operator()(PGconn* conn) const { PQfinish(conn); }
  };
  std::unique_ptr<PGconn, Deleter> conn_;
  Side side_ = Side::none;
  std::string redacted_;
  bool replica_role_ = false;
};

ReplicaRoleAccess replica_role_access(const Connection& conn);

// Throws ConnectionError or SqlError for a failed command. `result` may be null (then the
// connection's error message is used). Connection loss and SQLSTATE classes 08 and 57P0x
// are ConnectionError (retryable); everything else is SqlError.
[[noreturn]] void throw_pg_error(PGconn* conn, const PGresult* result, Side side,
                                 std::string_view context);

// A transaction that rolls back in its destructor unless commit() was called.
class Transaction {
 public:
  explicit Transaction(const Connection& conn, std::string_view begin_sql = "BEGIN");
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;
  ~Transaction();
  void commit();

 private:
  const Connection* conn_;
  bool open_ = true;
};

// Identifier quoting (always double-quoted) and literal quoting as quote_literal() does.
std::string quote_ident(std::string_view identifier);
std::string quote_literal(std::string_view literal);
// "schema"."name".
std::string qualified_name(std::string_view schema, std::string_view name);

}  // namespace pgferry::replication
