// libpq RAII and the single SQLSTATE → exception mapping.
#include "pgferry/replication/core/pg.hpp"

#include <fmt/format.h>

#include <cctype>
#include <charconv>
#include <cstdlib>

#include "pgferry/replication/core/conninfo.hpp"

namespace pgferry::replication {

std::string Result::scalar() const {
  if (rows() != 1 || columns() != 1) {
    throw Error(fmt::format("expected one value, got {} rows of {} columns", rows(), columns()));
  }
  return std::string(get(0, 0));
}

int Result::column_index(std::string_view name) const {
  std::string key(name);
  int index = PQfnumber(result_.get(), key.c_str());
  if (index < 0) throw Error(fmt::format("result has no column \"{}\"", name));
  return index;
}

long Result::affected_rows() const {
  const char* text = PQcmdTuples(result_.get());
  long value = 0;
  if (text && *text) std::from_chars(text, text + std::char_traits<char>::length(text), value);
  return value;
}

namespace {

std::string trimmed(const char* message) {
  std::string text = message ? message : "";
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.pop_back();
  return text;
}

bool is_connection_sqlstate(std::string_view sqlstate) {
  // 08xxx connection exceptions; 57P01 admin_shutdown, 57P02 crash_shutdown,
  // 57P03 cannot_connect_now, 57P05 idle_session_timeout.
  return sqlstate.starts_with("08") || sqlstate == "57P01" || sqlstate == "57P02" ||
         sqlstate == "57P03" || sqlstate == "57P05";
}

}  // namespace

void throw_pg_error(PGconn* conn, const PGresult* result, Side side, std::string_view context) {
  std::string sqlstate;
  std::string message;
  if (result) {
    if (const char* state = PQresultErrorField(result, PG_DIAG_SQLSTATE)) sqlstate = state;
    message = trimmed(PQresultErrorMessage(result));
  }
  if (message.empty()) message = trimmed(conn ? PQerrorMessage(conn) : "no connection");
  if (message.empty()) message = "unknown error";

  std::string where = context.empty() ? "" : fmt::format(" while {}", context);
  std::string state = sqlstate.empty() ? "" : fmt::format(" (SQLSTATE {})", sqlstate);
  std::string text = fmt::format("{}{}: {}{}", to_string(side), where, message, state);

  // No SQLSTATE: libpq's own error, not the server's (which always sends one): the connection
  // failed. libpq does not always say CONNECTION_BAD yet when it reports that: a command sent
  // as the server crashed failed with "server closed the connection unexpectedly" while the
  // status still read CONNECTION_OK.
  bool lost = !conn || PQstatus(conn) == CONNECTION_BAD || sqlstate.empty();
  if (lost || is_connection_sqlstate(sqlstate)) {
    throw ConnectionError(std::move(text), sqlstate.empty() ? "08006" : sqlstate, side);
  }
  throw SqlError(std::move(text), std::move(sqlstate), side);
}

Connection Connection::open(std::string_view conninfo, Side side,
                            const std::vector<std::pair<std::string, std::string>>& extra) {
  validate_conninfo(
      conninfo, side == Side::none ? "connection string" : fmt::format("--{}", to_string(side)));
  std::vector<std::pair<std::string, std::string>> overrides = extra;
  bool has_app_name = false;
  for (const auto& [key, value] : extra) has_app_name = has_app_name || key == "application_name";
  if (!has_app_name && conninfo_value(conninfo, "application_name").empty() &&
      !std::getenv("PGAPPNAME")) {
    overrides.emplace_back("application_name", "pgferry");
  }
  // Values travel as text between servers whose settings may differ (the walsender formats
  // them with its session's settings): pin the formats, as PostgreSQL's own subscriber does
  // (libpqwalreceiver). A user's own `options` are kept; ours come last and win.
  bool has_options = false;
  for (const auto& [key, value] : extra) has_options = has_options || key == "options";
  if (!has_options) {
    std::string options = conninfo_value(conninfo, "options");
    if (!options.empty()) options += ' ';
    options += kCanonicalFormatOptions;
    overrides.emplace_back("options", std::move(options));
  }
  std::string full = conninfo_with(conninfo, overrides);

  Connection connection;
  connection.side_ = side;
  connection.redacted_ = redact_conninfo(full);
  connection.conn_.reset(PQconnectdb(full.c_str()));
  if (!connection.conn_ || PQstatus(connection.conn_.get()) != CONNECTION_OK) {
    std::string message =
        trimmed(connection.conn_ ? PQerrorMessage(connection.conn_.get()) : "out of memory");
    throw ConnectionError(fmt::format("cannot connect to {} ({}): {}", to_string(side),
                                      connection.redacted_, message),
                          "08001", side);
  }
  return connection;
}

Result Connection::check(PGresult* raw, std::string_view context) const {
  Result result(raw);
  // No result (the command could not be sent): a lost connection, as any error without an
  // SQLSTATE (throw_pg_error).
  if (!raw) throw_pg_error(conn_.get(), nullptr, side_, context);
  switch (PQresultStatus(raw)) {
    case PGRES_COMMAND_OK:
    case PGRES_TUPLES_OK:
    case PGRES_COPY_IN:
    case PGRES_COPY_OUT:
    case PGRES_COPY_BOTH:
    case PGRES_SINGLE_TUPLE:
    case PGRES_PIPELINE_SYNC:
      return result;
    case PGRES_EMPTY_QUERY:
    case PGRES_BAD_RESPONSE:
    case PGRES_NONFATAL_ERROR:
    case PGRES_FATAL_ERROR:
    case PGRES_PIPELINE_ABORTED:
      break;
  }
  throw_pg_error(conn_.get(), raw, side_, context);
}

Result Connection::exec(std::string_view sql, std::string_view context) const {
  std::string text(sql);
  return check(PQexec(conn_.get(), text.c_str()), context);
}

Result Connection::exec(std::string_view sql, std::initializer_list<Param> params,
                        std::string_view context) const {
  return exec(sql, std::span<const Param>(params.begin(), params.size()), context);
}

Result Connection::exec(std::string_view sql, std::span<const Param> params,
                        std::string_view context) const {
  std::string text(sql);
  std::vector<std::string> storage;
  storage.reserve(params.size());
  std::vector<const char*> values;
  values.reserve(params.size());
  for (const auto& param : params) {
    if (!param) {
      values.push_back(nullptr);
    } else {
      storage.emplace_back(*param);
      values.push_back(storage.back().c_str());
    }
  }
  return check(PQexecParams(conn_.get(), text.c_str(), static_cast<int>(values.size()), nullptr,
                            values.data(), nullptr, nullptr, 0),
               context);
}

std::string ReplicaRoleAccess::grant_statement() const {
  if (server_version > 0 && server_version < 150000) {
    return fmt::format("ALTER ROLE {} SUPERUSER;", quote_ident(role));
  }
  return fmt::format("GRANT SET ON PARAMETER session_replication_role TO {};", quote_ident(role));
}

ReplicaRoleAccess replica_role_access(const Connection& conn) {
  ReplicaRoleAccess access;
  access.server_version = conn.server_version();
  // has_parameter_privilege() exists from PostgreSQL 15 on (so do parameter grants).
  std::string granted = access.server_version >= 150000
                            ? "has_parameter_privilege('session_replication_role', 'SET')"
                            : "false";
  Result r = conn.exec(fmt::format("SELECT current_user, r.rolsuper, {} FROM pg_roles r "
                                   "WHERE r.rolname = current_user",
                                   granted),
                       "reading whether the role may set session_replication_role");
  access.role = std::string(r.get(0, 0));
  access.superuser = r.get(0, 1) == "t";
  access.granted = r.get(0, 2) == "t";
  access.allowed = access.superuser || access.granted;
  if (!access.allowed && PQtransactionStatus(conn.native()) == PQTRANS_IDLE) {
    // A managed service may allow its admin role to set it without a catalog grant: try,
    // in a transaction that is rolled back (SET LOCAL), so nothing stays changed.
    try {
      conn.exec("BEGIN; SET LOCAL session_replication_role = replica; ROLLBACK");
      access.allowed = true;
    } catch (const SqlError&) {
      conn.exec("ROLLBACK");
    }
  }
  return access;
}

ReplicaRoleAccess Connection::set_replica_role() {
  auto access = replica_role_access(*this);
  if (access.allowed && !replica_role_) {
    exec("SET session_replication_role = replica", "setting session_replication_role");
    replica_role_ = true;
  }
  return access;
}

Transaction::Transaction(const Connection& conn, std::string_view begin_sql) : conn_(&conn) {
  conn_->exec(begin_sql, "beginning a transaction");
}

Transaction::~Transaction() {
  if (!open_ || !conn_->is_open()) return;
  // Best effort: a failed ROLLBACK leaves the connection to be discarded anyway.
  PQclear(PQexec(conn_->native(), "ROLLBACK"));
}

void Transaction::commit() {
  conn_->exec("COMMIT", "committing");
  open_ = false;
}

std::string quote_ident(std::string_view identifier) {
  // Always quoted: cheaper to reason about than the server's keyword list.
  std::string out = "\"";
  for (char c : identifier) {
    if (c == '"') out += '"';
    out += c;
  }
  out += '"';
  return out;
}

std::string quote_literal(std::string_view literal) {
  bool backslash = literal.find('\\') != std::string_view::npos;
  std::string out = backslash ? "E'" : "'";
  for (char c : literal) {
    if (c == '\'' || c == '\\') out += c;
    out += c;
  }
  out += '\'';
  return out;
}

std::string qualified_name(std::string_view schema, std::string_view name) {
  return quote_ident(schema) + "." + quote_ident(name);
}

}  // namespace pgferry::replication
