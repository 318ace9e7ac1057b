// Write fences: PgBouncer PAUSE/RESUME with a deadline, the read-only database fence, none.
#include "pgferry/cutover/fence.hpp"

#include <fmt/format.h>
#include <poll.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cctype>
#include <thread>

#include "pgferry/replication/core/conninfo.hpp"
#include "pgferry/replication/core/error.hpp"

namespace pgferry::cutover {

namespace repl = pgferry::replication;
using namespace std::chrono_literals;

namespace {

// PgBouncer's console takes a bare word; refuse anything that would need quoting.
std::string console_word(std::string_view database) {
  bool ok = !database.empty() && std::all_of(database.begin(), database.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.';
  });
  if (!ok) {
    throw repl::ConfigError(fmt::format(
        "--pgbouncer-database '{}': PgBouncer's console takes letters, digits, _ - . only; name "
        "the [databases] entry that way",
        database));
  }
  return std::string(database);
}

// Client sessions of the current database other than pgferry's own (and ours).
constexpr std::string_view kOtherSessions =
    "datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client "
    "backend' AND coalesce(application_name, '') NOT LIKE 'pgferry%'";

// Ends the sessions that hold a PgBouncer PAUSE: those inside a transaction.
int terminate_blockers(const std::string& server_conninfo) {
  auto conn = repl::Connection::open(server_conninfo, repl::Side::source);
  auto result = conn.exec(fmt::format("SELECT count(pg_terminate_backend(pid)) FROM "
                                      "pg_stat_activity WHERE {} AND xact_start IS NOT NULL",
                                      kOtherSessions),
                          "terminating the sessions that hold the PAUSE");
  return std::stoi(result.scalar());
}

// Terminates every other client session of the database and waits, until `deadline`, for
// their backends to be gone: pg_terminate_backend() only signals, and a backend that was
// committing when signalled may still commit a write after it returned. All are signalled
// at once and then polled together (pg_terminate_backend(pid, timeout) would wait for each
// in turn, each with the whole remaining time).
void end_sessions(const repl::Connection& conn, Clock::time_point deadline) {
  auto ended = conn.exec(
      fmt::format("SELECT coalesce(array_agg(pid), '{{}}')::text FROM ("
                  "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity WHERE {}) s",
                  kOtherSessions),
      "terminating the application sessions");
  std::string pids(ended.get(0, 0));
  if (pids == "{}") return;
  while (true) {
    auto left = conn.exec("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])",
                          {pids}, "waiting for the terminated sessions to end");
    if (left.scalar() == "0") return;
    if (Clock::now() >= deadline) {
      throw repl::CutoverAborted(
          fmt::format("{} terminated sessions were still running at the end of --fence-timeout: a "
                      "backend that has not exited may still commit a write",
                      left.scalar()));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

}  // namespace

std::string_view to_string(FenceKind kind) {
  switch (kind) {
    case FenceKind::pgbouncer:
      return "pgbouncer";
    case FenceKind::read_only:
      return "read-only";
    case FenceKind::none:
      return "none";
  }
  return "none";
}

FenceKind parse_fence_kind(std::string_view text) {
  if (text == "pgbouncer") return FenceKind::pgbouncer;
  if (text == "read-only") return FenceKind::read_only;
  if (text == "none") return FenceKind::none;
  throw repl::ConfigError(fmt::format("--fence '{}': use pgbouncer, read-only or none", text));
}

nlohmann::json FenceSpec::to_json() const {
  return {{"kind", std::string(to_string(kind))},
          {"pgbouncer_conninfo", pgbouncer_conninfo},
          {"pgbouncer_database", pgbouncer_database},
          {"server_conninfo", server_conninfo},
          {"terminate_blockers", terminate_blockers}};
}

FenceSpec FenceSpec::from_json(const nlohmann::json& json) {
  FenceSpec spec;
  spec.kind = parse_fence_kind(json.at("kind").get<std::string>());
  spec.pgbouncer_conninfo = json.value("pgbouncer_conninfo", "");
  spec.pgbouncer_database = json.value("pgbouncer_database", "");
  spec.server_conninfo = json.value("server_conninfo", "");
  spec.terminate_blockers = json.value("terminate_blockers", false);
  return spec;
}

PgBouncerAdmin::PgBouncerAdmin(std::string conninfo) : conninfo_(std::move(conninfo)) {}

repl::Connection PgBouncerAdmin::open() const {
  // The console refuses startup options; connect_timeout bounds a dead PgBouncer.
  std::vector<std::pair<std::string, std::string>> extra = {{"options", ""}};
  if (repl::conninfo_value(conninfo_, "connect_timeout").empty()) {
    extra.emplace_back("connect_timeout", "5");
  }
  return repl::Connection::open(conninfo_, repl::Side::none, extra);
}

bool PgBouncerAdmin::pause(std::string_view database, Clock::time_point deadline) {
  std::string word = console_word(database);
  pending_ = open();
  PGconn* conn = pending_.native();
  if (PQsendQuery(conn, fmt::format("PAUSE {}", word).c_str()) != 1) {
    repl::throw_pg_error(conn, nullptr, repl::Side::none, "sending PAUSE to PgBouncer");
  }
  while (true) {
    if (PQconsumeInput(conn) != 1) {
      repl::throw_pg_error(conn, nullptr, repl::Side::none, "waiting for PgBouncer's PAUSE");
    }
    if (!PQisBusy(conn)) {
      PGresult* result = PQgetResult(conn);
      bool ok = PQresultStatus(result) == PGRES_COMMAND_OK;
      std::string message = ok ? "" : PQresultErrorMessage(result);
      PQclear(result);
      while (PGresult* extra = PQgetResult(conn)) PQclear(extra);
      pending_.close();
      if (!ok) {
        throw repl::SqlError(fmt::format("PgBouncer PAUSE {}: {}", word, message), "",
                             repl::Side::none);
      }
      return true;
    }
    auto now = Clock::now();
    if (now >= deadline) {
      // Close first: the pending PAUSE dies with its client; resume() follows on a new one.
      pending_.close();
      return false;
    }
    pollfd fd{PQsocket(conn), POLLIN, 0};
    auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now).count();
    ::poll(&fd, 1, static_cast<int>(std::clamp<long long>(wait, 1, 1000)));
  }
}

bool PgBouncerAdmin::resume(std::string_view database) {
  std::string word = console_word(database);
  auto conn = open();
  PGresult* result = PQexec(conn.native(), fmt::format("RESUME {}", word).c_str());
  bool ok = PQresultStatus(result) == PGRES_COMMAND_OK;
  std::string message = ok ? "" : PQresultErrorMessage(result);
  PQclear(result);
  if (!ok && message.find("not paused") == std::string::npos) {
    throw repl::SqlError(fmt::format("PgBouncer RESUME {}: {}", word, message), "",
                         repl::Side::none);
  }
  return ok;
}

void PgBouncerAdmin::reload() {
  auto conn = open();
  conn.exec("RELOAD", "RELOAD on PgBouncer");
}

bool PgBouncerAdmin::paused(std::string_view database) {
  auto conn = open();
  auto result = conn.exec("SHOW DATABASES", "SHOW DATABASES on PgBouncer");
  int name = result.column_index("name");
  int paused = result.column_index("paused");
  for (int row = 0; row < result.rows(); ++row) {
    if (result.get(row, name) == database) return result.get(row, paused) != "0";
  }
  throw repl::ConfigError(fmt::format(
      "PgBouncer has no database '{}' in [databases]: name it with --pgbouncer-database",
      database));
}

void WriteFence::engage(Clock::time_point deadline) {
  switch (spec_.kind) {
    case FenceKind::none:
      engaged_ = true;
      return;
    case FenceKind::pgbouncer: {
      PgBouncerAdmin admin(spec_.pgbouncer_conninfo);
      engaged_ = true;  // from the moment PAUSE is sent, something may be paused
      if (admin.pause(spec_.pgbouncer_database, deadline)) return;
      int terminated = 0;
      if (spec_.terminate_blockers && !spec_.server_conninfo.empty()) {
        // PAUSE is still in force (only its admin client went away): end the transactions
        // holding it and give the pool a moment to become idle.
        terminated = terminate_blockers(spec_.server_conninfo);
        spdlog::warn("cutover step=fence terminated={} sessions holding the PAUSE", terminated);
        if (admin.pause(spec_.pgbouncer_database, Clock::now() + 1s)) return;
      }
      release();
      throw repl::CutoverAborted(fmt::format(
          "PgBouncer did not pause database '{}' within --fence-timeout: a transaction stayed "
          "open through PgBouncer{}; writes were resumed",
          spec_.pgbouncer_database,
          spec_.terminate_blockers ? fmt::format(" ({} sessions terminated)", terminated)
                                   : " (--terminate-blockers ends such sessions)"));
    }
    case FenceKind::read_only: {
      auto conn = repl::Connection::open(spec_.server_conninfo, repl::Side::source);
      auto remaining =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      conn.exec(
          fmt::format("SET statement_timeout = {}", std::max<long long>(1, remaining.count())));
      engaged_ = true;
      conn.exec(
          "DO $$BEGIN EXECUTE format('ALTER DATABASE %I SET default_transaction_read_only = "
          "on', current_database()); END$$",
          "setting the database read-only (needs ownership of the database)");
      end_sessions(conn, deadline);
      return;
    }
  }
}

void WriteFence::release() {
  if (!engaged_) return;
  lift_fence(spec_);
  engaged_ = false;
}

void lift_fence(const FenceSpec& spec) {
  switch (spec.kind) {
    case FenceKind::none:
      return;
    case FenceKind::pgbouncer: {
      PgBouncerAdmin admin(spec.pgbouncer_conninfo);
      admin.resume(spec.pgbouncer_database);
      // A RESUME racing a PAUSE that was still being processed: check, and once more.
      if (admin.paused(spec.pgbouncer_database)) admin.resume(spec.pgbouncer_database);
      return;
    }
    case FenceKind::read_only: {
      auto conn = repl::Connection::open(spec.server_conninfo, repl::Side::source);
      // A new session starts read-only under the fence itself.
      conn.exec("SET default_transaction_read_only = off");
      conn.exec(
          "DO $$BEGIN EXECUTE format('ALTER DATABASE %I RESET default_transaction_read_only', "
          "current_database()); END$$",
          "clearing the read-only fence");
      return;
    }
  }
}

}  // namespace pgferry::cutover
