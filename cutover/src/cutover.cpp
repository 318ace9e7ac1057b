// The cutover state machine (see cutover.hpp for the design notes).
#include "pgferry/cutover/cutover.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <signal.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "pgferry/cutover/guard.hpp"
#include "pgferry/cutover/pgbouncer_config.hpp"
#include "pgferry/cutover/verify.hpp"
#include "pgferry/lagmon/sample.hpp"
#include "pgferry/replication/apply/progress.hpp"
#include "pgferry/replication/core/conninfo.hpp"
#include "pgferry/replication/core/error.hpp"
#include "pgferry/replication/core/table_scope.hpp"
#include "pgferry/sequences/sequences.hpp"
#include "sessions.hpp"
#include "slot_writes.hpp"
#include "switch_command.hpp"

namespace pgferry::cutover {

namespace repl = pgferry::replication;
using namespace std::chrono_literals;
using std::chrono::duration_cast;
using std::chrono::microseconds;
using std::chrono::milliseconds;

std::string_view to_string(Operation operation) {
  return operation == Operation::cutover ? "cutover" : "rollback";
}

namespace {

// The quick verification inside the window: tables up to this many rows (pg_class
// estimate) are counted on both sides; larger ones with a primary key are sampled by key.
constexpr std::int64_t kCountedRows = 200'000;
constexpr std::int64_t kSampledKeys = 1000;

constexpr std::string_view kHistoryDdl =
    "CREATE SCHEMA IF NOT EXISTS pgferry; "
    "CREATE TABLE IF NOT EXISTS pgferry.cutover_history ("
    "  id text PRIMARY KEY,"
    "  name text NOT NULL,"
    "  operation text NOT NULL,"
    "  state text NOT NULL,"
    "  started_at timestamptz NOT NULL DEFAULT now(),"
    "  finished_at timestamptz,"
    "  fence_lsn pg_lsn,"
    "  new_slot_lsn pg_lsn,"
    "  window_ms double precision,"
    "  reason text,"
    "  report jsonb); "
    // What a re-run needs to lift a fence that the run and its guard left on (no secrets).
    "ALTER TABLE pgferry.cutover_history ADD COLUMN IF NOT EXISTS fence text, "
    "  ADD COLUMN IF NOT EXISTS pgbouncer_database text";

std::string lock_key(std::string_view name) {
  return fmt::format("pgferry.cutover.{}", name);
}

// Tests only: PGFERRY_CUTOVER_CRASH_AT=<point> kills this process there (SIGKILL), to
// check what the guard and a re-run make of a cutover that died at that exact point; and
// PGFERRY_CUTOVER_FAULT_AT=<point> runs the shell command PGFERRY_CUTOVER_FAULT there (and
// waits for it), e.g. to kill a server at that exact point.
void crash_point(std::string_view point) {
  const char* at = std::getenv("PGFERRY_CUTOVER_CRASH_AT");
  if (at && point == at) ::raise(SIGKILL);
  const char* fault_at = std::getenv("PGFERRY_CUTOVER_FAULT_AT");
  const char* fault = std::getenv("PGFERRY_CUTOVER_FAULT");
  if (fault_at && fault && point == fault_at) {
    int status = std::system(fault);
    spdlog::warn("test fault at {}: `{}` exited with status {}", point, fault, status);
  }
}

// ": backend pid N (application, client) since T; ..." of the session that holds the
// advisory lock `key` (pg_advisory_lock(hashtext(key)): classid and objid are the high and
// low halves of the int8 key), for the error that says another run holds it; empty when it
// cannot be read.
std::string describe_lock_holder(repl::Connection& conn, const std::string& key) {
  try {
    auto holder = conn.exec(
        "SELECT a.pid, coalesce(nullif(a.application_name, ''), 'no application name'), "
        "coalesce(host(a.client_addr), 'local socket'), a.backend_start::text "
        "FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
        "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtext($1)::bigint",
        {key}, "reading who holds the cutover's lock");
    if (holder.rows() != 1) return {};
    return fmt::format(
        ": backend pid {0} ({1}, from {2}) since {3}; a cutover's guard holds it while it "
        "recovers that cutover (wait for it); if it is a dead run's (a connection the server "
        "has not seen close), end it with SELECT pg_terminate_backend({0}) and re-run",
        holder.get(0, 0), holder.get(0, 1), holder.get(0, 2), holder.get(0, 3));
  } catch (const std::exception& e) {
    spdlog::debug("reading who holds the cutover's lock: {}", e.what());
    return {};
  }
}

std::string new_cutover_id() {
  std::random_device device;
  auto now = std::chrono::system_clock::now().time_since_epoch();
  return fmt::format("{:x}-{:08x}", duration_cast<milliseconds>(now).count(), device());
}

// The elements of a one-dimensional array of numbers in text form: "{1,2,3}".
std::vector<std::string> split_array(std::string_view text) {
  std::vector<std::string> out;
  if (text.size() < 2) return out;
  text = text.substr(1, text.size() - 2);
  while (!text.empty()) {
    auto comma = text.find(',');
    out.emplace_back(text.substr(0, comma));
    if (comma == std::string_view::npos) break;
    text.remove_prefix(comma + 1);
  }
  return out;
}

double ms(microseconds us) {
  return static_cast<double>(us.count()) / 1000.0;
}

milliseconds remaining(Clock::time_point deadline) {
  return std::max(1ms, duration_cast<milliseconds>(deadline - Clock::now()));
}

void set_statement_timeout(const repl::Connection& conn, Clock::time_point deadline) {
  conn.exec(fmt::format("SET statement_timeout = {}", remaining(deadline).count()));
}

bool history_exists(const repl::Connection& conn) {
  return conn.exec("SELECT to_regclass('pgferry.cutover_history') IS NOT NULL").scalar() == "t";
}

struct HistoryRow {
  std::string id;
  std::string operation;
  std::string state;
  std::optional<Lsn> new_slot_lsn;
  std::optional<Lsn> fence_lsn;
  std::optional<std::string> fence;  // rows written before the column existed: none
  std::string pgbouncer_database;
  bool fence_maybe_on = false;  // no window recorded: the fence was never lifted by this run
};

std::optional<HistoryRow> latest_history(const repl::Connection& conn, std::string_view name,
                                         bool completed_only) {
  if (!history_exists(conn)) return std::nullopt;
  auto result = conn.exec(
      fmt::format("SELECT id, operation, state, new_slot_lsn::text, fence, pgbouncer_database, "
                  "window_ms IS NULL, fence_lsn::text FROM pgferry.cutover_history "
                  "WHERE name = $1 {} ORDER BY started_at DESC, id DESC LIMIT 1",
                  completed_only ? "AND state IN ('completed', 'switched')" : ""),
      {name}, "reading pgferry.cutover_history");
  if (result.rows() == 0) return std::nullopt;
  HistoryRow row{std::string(result.get(0, 0)),
                 std::string(result.get(0, 1)),
                 std::string(result.get(0, 2)),
                 std::nullopt,
                 std::nullopt,
                 std::nullopt,
                 "",
                 result.get(0, 6) == "t"};
  if (auto lsn = result.optional(0, 3)) row.new_slot_lsn = Lsn::parse(*lsn);
  if (auto lsn = result.optional(0, 7)) row.fence_lsn = Lsn::parse(*lsn);
  if (auto fence = result.optional(0, 4)) row.fence = std::string(*fence);
  if (auto database = result.optional(0, 5)) row.pgbouncer_database = std::string(*database);
  return row;
}

// The tables the old direction replicates (never the pgferry schema), "schema"."name".
std::vector<std::string> published_tables(const repl::Connection& conn,
                                          const std::string& publication) {
  auto result = conn.exec(
      "SELECT format('%I.%I', schemaname, tablename) FROM pg_publication_tables "
      "WHERE pubname = $1 AND schemaname <> 'pgferry' ORDER BY 1",
      {publication}, "listing the published tables");
  std::vector<std::string> tables;
  for (int row = 0; row < result.rows(); ++row) tables.emplace_back(result.get(row, 0));
  return tables;
}

// The shape of a published table on one side: its columns by name with their types
// (format_type, so typmods count) and its primary-key columns in key order.
struct TableShape {
  std::map<std::string, std::string> columns;
  std::vector<std::string> key;
};

// One query per side for all `tables` ("schema"."name" as format('%I.%I') gives them);
// a table missing on that side is missing from the map.
std::map<std::string, TableShape> table_shapes(const repl::Connection& conn,
                                               const std::vector<std::string>& tables) {
  auto result = conn.exec(
      "SELECT t.name, a.attname, format_type(a.atttypid, a.atttypmod), "
      "  array_position(i.indkey::int2[], a.attnum) "
      "FROM unnest($1::text[]) AS t(name) "
      "JOIN pg_attribute a ON a.attrelid = to_regclass(t.name) AND a.attnum > 0 "
      "  AND NOT a.attisdropped "
      "LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary "
      "ORDER BY 1, array_position(i.indkey::int2[], a.attnum), a.attnum",
      {repl::sql_array_literal(tables)}, "reading the columns of the published tables");
  std::map<std::string, TableShape> shapes;
  for (int row = 0; row < result.rows(); ++row) {
    auto& shape = shapes[std::string(result.get(row, 0))];
    shape.columns.emplace(result.get(row, 1), result.get(row, 2));
    if (!result.is_null(row, 3)) shape.key.emplace_back(result.get(row, 1));
  }
  return shapes;
}

// Every difference between the two sides' shapes of `tables`, each naming the table, the
// column and the fix.
std::vector<std::string> schema_differences(const std::vector<std::string>& tables,
                                            const std::map<std::string, TableShape>& source,
                                            const std::map<std::string, TableShape>& target) {
  std::vector<std::string> problems;
  auto key_text = [](const TableShape& shape) {
    return shape.key.empty() ? std::string("none")
                             : fmt::format("({})", fmt::join(shape.key, ", "));
  };
  for (const auto& table : tables) {
    auto from = source.find(table);
    auto to = target.find(table);
    if (from == source.end()) continue;  // dropped since it was listed; replication says so
    if (to == target.end()) {
      problems.push_back(fmt::format("{} is missing on the target: create it there", table));
      continue;
    }
    for (const auto& [column, type] : from->second.columns) {
      auto other = to->second.columns.find(column);
      if (other == to->second.columns.end()) {
        problems.push_back(
            fmt::format("{}.{} ({}) is missing on the target: ALTER TABLE {} ADD COLUMN there",
                        table, column, type, table));
      } else if (other->second != type) {
        problems.push_back(
            fmt::format("{}.{} is {} on the source but {} on the target: ALTER TABLE {} ALTER "
                        "COLUMN ... TYPE on one side so that they match",
                        table, column, type, other->second, table));
      }
    }
    for (const auto& [column, type] : to->second.columns) {
      if (!from->second.columns.contains(column)) {
        problems.push_back(fmt::format(
            "{}.{} ({}) exists only on the target: the way back could not replicate it; add "
            "it on the source or drop it on the target",
            table, column, type));
      }
    }
    if (from->second.key != to->second.key) {
      problems.push_back(fmt::format(
          "{} has primary key {} on the source but {} on the target: make them the same", table,
          key_text(from->second), key_text(to->second)));
    }
  }
  return problems;
}

// Writes the progress record of `name` at `lsn` unless it is already past it.
void write_progress(const repl::Connection& conn, std::string_view name, Lsn lsn) {
  repl::ProgressStore(conn).ensure_table();
  conn.exec(
      "INSERT INTO pgferry.progress (name, applied_lsn) VALUES ($1, $2::pg_lsn) "
      "ON CONFLICT (name) DO UPDATE SET applied_lsn = greatest(pgferry.progress.applied_lsn, "
      "excluded.applied_lsn), updated_at = now()",
      {name, lsn.to_string()}, "writing the progress record of the new direction");
}

// Drops slot `name`. While a walsender uses it: waits, and ends that walsender after
// `terminate_after`; without it, leaves an active slot alone and returns false.
bool drop_slot(const repl::Connection& conn, std::string_view name,
               std::optional<milliseconds> terminate_after) {
  auto deadline = Clock::now() + terminate_after.value_or(0ms);
  while (true) {
    auto slot =
        conn.exec("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", {name});
    if (slot.rows() == 0) return false;
    if (slot.is_null(0, 0)) {
      try {
        conn.exec("SELECT pg_drop_replication_slot($1)", {name}, "dropping a slot");
        return true;
      } catch (const repl::SqlError& e) {
        if (e.sqlstate() == "42704") return false;  // dropped by someone else in between
        if (e.sqlstate() != "55006") throw;         // became active again in between: retry
      }
    } else if (!terminate_after) {
      return false;
    } else if (Clock::now() >= deadline) {
      conn.exec("SELECT pg_terminate_backend($1::int)", {slot.get(0, 0)});
    }
    std::this_thread::sleep_for(20ms);
  }
}

// The environment of --switch-command pointing at `conninfo`.
std::vector<std::pair<std::string, std::string>> switch_env(const std::string& conninfo,
                                                            std::string_view operation,
                                                            const std::string& id, bool aborting) {
  std::string host = repl::conninfo_value(conninfo, "host");
  std::string port = repl::conninfo_value(conninfo, "port");
  return {{"PGFERRY_NEW_HOST", host},
          {"PGFERRY_NEW_PORT", port.empty() ? "5432" : port},
          {"PGFERRY_NEW_DBNAME", repl::conninfo_value(conninfo, "dbname")},
          {"PGFERRY_OPERATION", std::string(operation)},
          {"PGFERRY_CUTOVER_ID", id},
          {"PGFERRY_ABORT", aborting ? "1" : "0"}};
}

struct Side {
  std::string conninfo;
  repl::Side side;
};

class Cutover {
 public:
  explicit Cutover(const CutoverOptions& options) : options_(options) {
    bool forward = options.operation == Operation::cutover;
    from_ = forward ? Side{options.source_conninfo, repl::Side::source}
                    : Side{options.target_conninfo, repl::Side::target};
    to_ = forward ? Side{options.target_conninfo, repl::Side::target}
                  : Side{options.source_conninfo, repl::Side::source};
    report_.id = new_cutover_id();
    report_.operation = options.operation;
    report_.name = options.name;
    report_.fence = std::string(to_string(options.fence));
    report_.new_primary = repl::redact_conninfo(to_.conninfo);
    pgbouncer_database_ = options.pgbouncer_database;
    if (pgbouncer_database_.empty()) {
      pgbouncer_database_ = repl::conninfo_value(options.source_conninfo, "dbname");
    }
    validate();
  }

  CutoverReport run();

 private:
  void validate() const;
  template <typename Body>
  void step(const char* name, milliseconds budget, Body&& body);
  bool recover_and_check_direction();
  void recover_traffic(const HistoryRow& dead);
  // Only lifts a dead run's fence (recover_traffic of a row whose switch is committed).
  void lift_dead_fence(HistoryRow dead) {
    dead.state = "switched";
    recover_traffic(dead);
  }
  void settle_switching(const HistoryRow& dead);
  bool finish_undone(const HistoryRow& dead, std::string_view reason);
  void finish_switched(const HistoryRow& dead, std::string_view reason);
  // Step budgets: fence and mark have --fence-timeout and --drain-timeout; the others are
  // shares of --timeout (at its default 60 s: preconditions 30 s; prepare, sequences,
  // reverse and switch 10 s; unfence 5 s). Every step also ends at the overall --timeout.
  milliseconds switch_budget() const { return std::max(1ms, options_.timeout / 6); }
  milliseconds unfence_budget() const { return std::max(1ms, options_.timeout / 12); }
  void preconditions(Clock::time_point deadline);
  std::optional<bool> switch_committed_after_all(Clock::time_point deadline);
  void engage_fence(Clock::time_point deadline);
  void mark_and_drain(Clock::time_point deadline);
  void sequences_and_verify(Clock::time_point deadline);
  void sample_large_tables(const std::vector<std::string>& patterns, Clock::time_point deadline);
  void prepare_new_direction(Clock::time_point deadline);
  void new_direction(Clock::time_point deadline);
  void switch_traffic(Clock::time_point deadline);
  void lift(Clock::time_point deadline);
  void after_commit();
  void abort(const std::string& step, const std::string& reason);
  void history_update(std::string_view state, const std::string& reason);
  void hand_over_to_guard();
  // Tells the guard where the history is and which session holds the lock (see guard.hpp).
  void send_history_to_guard();
  // The history session, named for what a re-run that finds the lock taken says (see
  // describe_lock_holder).
  repl::Connection open_history_session() const {
    return repl::Connection::open(
        options_.target_conninfo, repl::Side::target,
        {{"application_name",
          fmt::format("pgferry {} {}", to_string(options_.operation), report_.id)}});
  }
  // The backend of history_conn_'s session, once read.
  std::optional<Session> history_session_;
  std::vector<std::pair<std::string, std::string>> switch_env(const Side& side,
                                                              bool aborting) const;

  const CutoverOptions& options_;
  Side from_;
  Side to_;
  std::string pgbouncer_database_;
  CutoverReport report_;
  Clock::time_point started_;
  Clock::time_point overall_deadline_;
  repl::Connection from_conn_;
  repl::Connection to_conn_;
  repl::Connection history_conn_;  // the original target
  std::unique_ptr<GuardLink> guard_;
  std::unique_ptr<WriteFence> fence_;
  Clock::time_point fenced_at_;
  std::vector<std::string> tables_;
  std::set<std::string> keyed_tables_;  // those of tables_ with a primary key
  std::string step_detail_;             // what the running step reports when it succeeds
  bool history_written_ = false;
  bool slot_created_ = false;
  bool publication_replaced_ = false;
  std::string config_original_;
  bool config_written_ = false;
  bool command_ran_ = false;
  bool command_moved_ = false;  // it may have moved traffic (exit 0, killed, signalled)
  bool switched_ = false;
  bool recovered_ = false;           // this run recovered a dead one
  bool switch_unconfirmed_ = false;  // the `switched` UPDATE's outcome could not be read
};

void Cutover::validate() const {
  if (options_.fence == FenceKind::pgbouncer && options_.pgbouncer_conninfo.empty()) {
    throw repl::ConfigError(
        "--fence pgbouncer needs --pgbouncer CONNINFO (PgBouncer's admin console, e.g. "
        "'host=127.0.0.1 port=6432 user=pgbouncer dbname=pgbouncer')");
  }
  if (!options_.pgbouncer_config.empty() && options_.pgbouncer_conninfo.empty()) {
    throw repl::ConfigError("--pgbouncer-config needs --pgbouncer CONNINFO to RELOAD it");
  }
  if (!options_.pgbouncer_conninfo.empty()) {
    repl::validate_conninfo(options_.pgbouncer_conninfo, "--pgbouncer");
  }
  if (options_.timeout <= 0ms) throw repl::ConfigError("--timeout must be positive");
  if (options_.sequence_margin < 0) throw repl::ConfigError("--sequence-margin must be >= 0");
  if (!options_.pgbouncer_config.empty()) {
    // Fails early, before anything is touched, when the entry is missing.
    (void)rewrite_database_entry(read_pgbouncer_config(options_.pgbouncer_config),
                                 pgbouncer_database_, to_.conninfo);
  }
}

template <typename Body>
void Cutover::step(const char* name, milliseconds budget, Body&& body) {
  auto start = Clock::now();
  auto deadline = std::min(start + budget, overall_deadline_);
  StepReport entry{name, 0us, duration_cast<milliseconds>(deadline - start), "ok", ""};
  try {
    body(deadline);
  } catch (const std::exception& e) {
    entry.elapsed = duration_cast<microseconds>(Clock::now() - start);
    entry.status = "failed";
    entry.detail = e.what();
    step_detail_.clear();
    report_.steps.push_back(entry);
    spdlog::error("cutover id={} step={} ms={:.1f} failed: {}", report_.id, name, ms(entry.elapsed),
                  e.what());
    throw repl::CutoverAborted(fmt::format("step {}: {}", name, e.what()));
  }
  entry.elapsed = duration_cast<microseconds>(Clock::now() - start);
  entry.detail = std::exchange(step_detail_, "");
  bool over = Clock::now() > deadline;
  if (over) {
    entry.status = "failed";
    entry.detail = fmt::format("over its budget of {} ms", entry.budget.count());
  }
  report_.steps.push_back(entry);
  spdlog::info("cutover id={} step={} ms={:.1f} budget_ms={}{}{}", report_.id, name,
               ms(entry.elapsed), entry.budget.count(), over ? " over budget" : "",
               entry.detail.empty() ? "" : ": " + entry.detail);
  if (over) throw repl::CutoverAborted(fmt::format("step {}: {}", name, entry.detail));
}

CutoverReport Cutover::run() {
  started_ = Clock::now();
  overall_deadline_ = started_ + options_.timeout;
  from_conn_ = repl::Connection::open(from_.conninfo, from_.side);
  to_conn_ = repl::Connection::open(to_.conninfo, to_.side);
  history_conn_ = open_history_session();
  for (const auto* conn : {&from_conn_, &to_conn_, &history_conn_}) {
    conn->exec("SET client_min_messages = warning");
  }
  history_conn_.exec(kHistoryDdl, "creating pgferry.cutover_history");
  // One cutover or rollback of a name at a time; the follower reads a free lock next to a
  // `running` row as "that cutover died".
  // (`pgferry run` takes it for an instant to tell a dead cutover from a live one: a few
  // tries over half a second.)
  bool locked = false;
  for (int attempt = 0; attempt < 50 && !locked; ++attempt) {
    if (attempt > 0) std::this_thread::sleep_for(10ms);
    locked =
        history_conn_.exec("SELECT pg_try_advisory_lock(hashtext($1))", {lock_key(options_.name)})
            .scalar() == "t";
  }
  if (!locked) {
    throw repl::ConfigError(fmt::format(
        "another cutover or rollback of '{}' is running (it holds its lock on the target{})",
        options_.name, describe_lock_holder(history_conn_, lock_key(options_.name))));
  }

  if (!recover_and_check_direction()) {
    report_.ok = true;
    return report_;
  }
  history_conn_.exec(
      "INSERT INTO pgferry.cutover_history (id, name, operation, state, fence, "
      "pgbouncer_database) VALUES ($1, $2, $3, 'running', $4, $5)",
      {report_.id, options_.name, to_string(options_.operation), to_string(options_.fence),
       pgbouncer_database_},
      "recording the cutover");
  history_written_ = true;
  guard_ = std::make_unique<GuardLink>(options_.guard_argv);
  send_history_to_guard();

  std::string current_step = "preconditions";
  try {
    step("preconditions", options_.timeout / 2, [&](auto deadline) { preconditions(deadline); });
    current_step = "prepare";
    step("prepare", switch_budget(), [&](auto deadline) { prepare_new_direction(deadline); });
    current_step = "fence";
    step("fence", options_.fence_timeout + 1500ms, [&](auto deadline) { engage_fence(deadline); });
    current_step = "mark";
    step("mark", options_.drain_timeout, [&](auto deadline) { mark_and_drain(deadline); });
    current_step = "sequences";
    step("sequences", switch_budget(), [&](auto deadline) { sequences_and_verify(deadline); });
    current_step = "reverse";
    step("reverse", switch_budget(), [&](auto deadline) { new_direction(deadline); });
    current_step = "switch";
    step("switch", switch_budget(), [&](auto deadline) { switch_traffic(deadline); });
    current_step = "unfence";
    step("unfence", unfence_budget(), [&](auto deadline) { lift(deadline); });
  } catch (const std::exception& e) {
    if (!switched_) {
      abort(current_step, e.what());
      return report_;
    }
    // Past the commit point: traffic goes to the new primary. Writes must not wait for the
    // clean-up below: lift the fence now (a step over its budget after the switch did not);
    // if that fails too, the guard lifts it once the pipe closes.
    report_.notes.push_back(fmt::format("after the switch: {}", e.what()));
    spdlog::error("cutover id={} traffic switched but: {}", report_.id, e.what());
    if (!report_.window) {
      try {
        lift(Clock::now() + unfence_budget());
      } catch (const std::exception& lift_error) {
        report_.notes.push_back(fmt::format("after the switch: unfence: {}", lift_error.what()));
      }
    }
  }
  after_commit();
  return report_;
}

bool Cutover::recover_and_check_direction() {
  auto last = latest_history(history_conn_, options_.name, false);
  if (!options_.settle.empty() && (!last || last->state != "switching")) {
    throw repl::ConfigError(fmt::format(
        "--settle {}: no cutover or rollback of '{}' died while switching traffic (the latest "
        "is {}): run without --settle",
        options_.settle, options_.name,
        last ? fmt::format("{} {}, {}", last->operation, last->id, last->state) : "none"));
  }
  if (last && last->state == "switching") {
    // Died while switching traffic and its guard could not settle it.
    try {
      settle_switching(*last);
    } catch (const std::exception& e) {
      std::string fence_note = "its fence is lifted";
      try {
        lift_dead_fence(*last);
      } catch (const std::exception& lift_error) {
        fence_note = fmt::format("its fence could NOT be lifted ({})", lift_error.what());
      }
      throw repl::ConfigError(fmt::format(
          "earlier {} {} died while switching traffic and cannot be settled: {} ({}; its "
          "row stays `switching` and both slots are kept, so nothing replicates and no write "
          "is lost)",
          last->operation, last->id, e.what(), fence_note));
    }
    recovered_ = true;
  } else if (last) {
    // An aborted run whose unfence failed (its guard may have left it to this run, which
    // holds the lock): lift it again; lifting is idempotent.
    bool aborted_fenced = last->state == "aborted" && last->fence_maybe_on &&
                          last->fence.value_or("none") != "none" &&
                          !(last->fence == "pgbouncer" && options_.pgbouncer_conninfo.empty());
    if (last->state == "running" || last->state == "switched" || aborted_fenced) {
      recover_traffic(*last);
      recovered_ = true;
    }
    if (last->state == "running") {
      // A cutover that died before its switch (or whose guard switched back): its guard
      // lifted the fence; its new slot may remain on the side that does not send now.
      bool dropped = finish_undone(*last, "found unfinished by the next run");
      report_.notes.push_back(fmt::format("earlier {} {} found unfinished: marked aborted{}",
                                          last->operation, last->id,
                                          dropped ? ", its new slot dropped" : ""));
    } else if (last->state == "switched") {
      // Died after the switch: finish it (the guard lifted the fence).
      finish_switched(*last, "finished by the next run");
      report_.notes.push_back(fmt::format("earlier {} {} had switched traffic: finished it",
                                          last->operation, last->id));
    }
  }
  auto direction = current_direction(history_conn_, options_.name);
  bool wanted = options_.operation == Operation::cutover ? direction == Direction::forward
                                                         : direction == Direction::reverse;
  if (!wanted) {
    if (options_.operation == Operation::rollback &&
        !latest_history(history_conn_, options_.name, true)) {
      throw repl::ConfigError(fmt::format(
          "rollback: no completed cutover of '{}' to roll back (pgferry.cutover_history on the "
          "target)",
          options_.name));
    }
    report_.notes.push_back(
        fmt::format("nothing to do: the last completed operation of '{}' was "
                    "already a {}",
                    options_.name, to_string(options_.operation)));
    return false;
  }
  return true;
}

// A dead run undone: its new slot dropped on the side that does not send now, its row
// marked aborted. Returns whether a slot was dropped.
bool Cutover::finish_undone(const HistoryRow& dead, std::string_view reason) {
  auto direction = current_direction(history_conn_, options_.name);
  const std::string& idle_side =
      direction == Direction::forward ? options_.target_conninfo : options_.source_conninfo;
  auto conn = repl::Connection::open(idle_side, repl::Side::none);
  bool dropped = drop_slot(conn, options_.name, std::nullopt);
  history_conn_.exec(
      "UPDATE pgferry.cutover_history SET state = 'aborted', finished_at = now(), reason = $2 "
      "WHERE id = $1",
      {dead.id, reason});
  return dropped;
}

// A dead run whose switch is committed, finished: the old direction's slot dropped (it
// holds no WAL, nothing travels back), the new direction's progress record written on the
// old primary at the new slot's position, the row marked completed.
void Cutover::finish_switched(const HistoryRow& dead, std::string_view reason) {
  const std::string& old_primary =
      dead.operation == "cutover" ? options_.source_conninfo : options_.target_conninfo;
  auto conn = repl::Connection::open(old_primary, repl::Side::none);
  drop_slot(conn, options_.name, 5s);
  if (dead.new_slot_lsn) write_progress(conn, options_.name, *dead.new_slot_lsn);
  history_conn_.exec(
      "UPDATE pgferry.cutover_history SET state = 'completed', finished_at = now(), reason = "
      "$2 WHERE id = $1",
      {dead.id, reason});
}

// A run that died together with its guard (kill -9 of both) may have left writes fenced
// and, before its switch committed, traffic switched. We hold the lock, so it is over:
// traffic goes back where the history says it belongs, like its abort would have done (the
// config entry pointed at its old primary when it points elsewhere; --switch-command run
// towards it with PGFERRY_ABORT=1, whether or not the dead run got to run it: a command must
// take that call anyway), then its fence is lifted (RESUME and RESET are no-ops when not in
// force). A `switched` row keeps traffic where it is and only gets its fence lifted.
void Cutover::recover_traffic(const HistoryRow& dead) {
  bool was_cutover = dead.operation == "cutover";
  const std::string& old_primary =
      was_cutover ? options_.source_conninfo : options_.target_conninfo;
  std::string database =
      dead.pgbouncer_database.empty() ? pgbouncer_database_ : dead.pgbouncer_database;
  int command_status = 0;
  if (dead.state == "running") {
    if (!options_.pgbouncer_config.empty()) {
      auto current = read_pgbouncer_config(options_.pgbouncer_config);
      auto back = rewrite_database_entry(current, database, old_primary);
      if (back != current) {
        write_pgbouncer_config(options_.pgbouncer_config, back);
        PgBouncerAdmin(options_.pgbouncer_conninfo).reload();
        report_.notes.push_back(
            fmt::format("earlier {} {}: PgBouncer entry '{}' pointed back at the old primary",
                        dead.operation, dead.id, database));
      }
    }
    if (!options_.switch_command.empty()) {
      command_status = run_switch_command(
          options_.switch_command, cutover::switch_env(old_primary, dead.operation, dead.id, true),
          Clock::now() + switch_budget());
    }
  }
  FenceSpec spec;
  spec.kind = parse_fence_kind(dead.fence.value_or("none"));
  spec.pgbouncer_conninfo = options_.pgbouncer_conninfo;
  spec.pgbouncer_database = database;
  spec.server_conninfo = old_primary;
  if (spec.kind == FenceKind::pgbouncer && spec.pgbouncer_conninfo.empty()) {
    throw repl::ConfigError(fmt::format(
        "earlier {} {} found unfinished with the PgBouncer fence: give --pgbouncer so that "
        "this run can RESUME '{}'",
        dead.operation, dead.id, database));
  }
  if (spec.kind == FenceKind::pgbouncer &&
      PgBouncerAdmin(spec.pgbouncer_conninfo).paused(database)) {
    report_.notes.push_back(fmt::format("earlier {} {} left PgBouncer '{}' paused: resumed",
                                        dead.operation, dead.id, database));
  }
  lift_fence(spec);
  if (command_status != 0) {
    // The fence is lifted all the same, as the abort does; this run stops here.
    throw repl::ConfigError(fmt::format(
        "earlier {} {} found unfinished: --switch-command towards its old primary exited "
        "with status {}; fix the command (or point traffic there yourself) and re-run",
        dead.operation, dead.id, command_status));
  }
}

// A `switching` row whose run and guard are gone: traffic may point either way, and both
// slots are kept (the follower replicates neither way meanwhile), so the writes made since
// tell where it went: the old direction's slot holds those on the old primary after the
// fence, the new one those on the new primary after its start. Writes only on the new
// primary: the switch is finished (config entry and --switch-command towards it), which
// loses nothing; otherwise it is undone (recover_traffic points traffic back). Writes on
// both sides cannot be merged: the run stops, naming what to reconcile, unless --settle
// says which side wins (it may not contradict writes on one side only). Before the losing
// side's slot is dropped it is read again (late writes there would go with it); going
// forward, that happens while the old primary is still fenced, and the decision is
// committed (`switched`) before anything is dropped.
void Cutover::settle_switching(const HistoryRow& dead) {
  bool was_cutover = dead.operation == "cutover";
  const std::string& old_primary =
      was_cutover ? options_.source_conninfo : options_.target_conninfo;
  const std::string& new_primary =
      was_cutover ? options_.target_conninfo : options_.source_conninfo;
  auto old_conn = repl::Connection::open(old_primary, repl::Side::none);
  auto new_conn = repl::Connection::open(new_primary, repl::Side::none);
  auto writes = [&](bool on_old) {
    return on_old ? writes_after(old_conn, options_.name, options_.publication_name(),
                                 dead.fence_lsn.value_or(Lsn()))
                  : writes_after(new_conn, options_.name, options_.publication_name(),
                                 dead.new_slot_lsn.value_or(Lsn()));
  };
  auto count_text = [](std::optional<long long> count) {
    return count ? std::to_string(*count) : std::string("no slot, so unknown");
  };
  auto old_writes = writes(true);
  auto new_writes = writes(false);
  std::string where = fmt::format(
      "{} transactions on the old primary ({}) since the fence {}, {} on the new one ({}) since "
      "{}",
      count_text(old_writes), repl::redact_conninfo(old_primary), dead.fence_lsn.value_or(Lsn()),
      count_text(new_writes), repl::redact_conninfo(new_primary),
      dead.new_slot_lsn.value_or(Lsn()));
  bool old_wrote = old_writes.value_or(0) > 0;
  bool new_wrote = new_writes.value_or(0) > 0;
  bool forward = new_wrote;
  if (options_.settle.empty() && old_wrote && new_wrote) {
    throw repl::ConfigError(fmt::format(
        "writes went to both sides: {}. Re-run with --settle forward (the new primary's "
        "writes win) or --settle back (the old primary's win); the losing side's writes are "
        "not carried over: save them first, and after the re-run delete them there and "
        "apply them on the winning side",
        where));
  }
  if (!options_.settle.empty()) {
    forward = options_.settle == "forward";
    if (forward ? (old_wrote && !new_wrote) : (new_wrote && !old_wrote)) {
      throw repl::ConfigError(fmt::format(
          "--settle {} would throw away the writes of the only side that took any ({}): "
          "re-run without --settle",
          options_.settle, where));
    }
  }
  auto check_losing_side = [&] {
    if (!options_.settle.empty()) return;
    auto late = writes(forward);
    auto before = forward ? old_writes : new_writes;
    if (late.value_or(0) > before.value_or(0)) {
      throw repl::ConfigError(fmt::format(
          "while traffic was pointed at the {} primary, {} transactions reached the {} one; "
          "re-run with --settle forward or --settle back",
          forward ? "new" : "old", *late - before.value_or(0), forward ? "old" : "new"));
    }
  };
  if (forward) {
    if (!options_.pgbouncer_config.empty()) {
      auto current = read_pgbouncer_config(options_.pgbouncer_config);
      auto pointed = rewrite_database_entry(
          current, dead.pgbouncer_database.empty() ? pgbouncer_database_ : dead.pgbouncer_database,
          new_primary);
      if (pointed != current) {
        write_pgbouncer_config(options_.pgbouncer_config, pointed);
        PgBouncerAdmin(options_.pgbouncer_conninfo).reload();
      }
    }
    if (!options_.switch_command.empty()) {
      int status = run_switch_command(
          options_.switch_command, cutover::switch_env(new_primary, dead.operation, dead.id, false),
          Clock::now() + switch_budget());
      if (status != 0) {
        throw repl::ConfigError(fmt::format(
            "its switch must be finished ({}), but --switch-command towards the new primary "
            "exited with status {}: fix the command",
            where, status));
      }
    }
    check_losing_side();  // the old primary is still fenced
    history_conn_.exec(
        "UPDATE pgferry.cutover_history SET state = 'switched', reason = $2 WHERE id = $1",
        {dead.id, "switch finished by the next run"}, "recording the settled switch");
    finish_switched(dead, "switch finished by the next run");
    lift_dead_fence(dead);
  } else {
    HistoryRow undone = dead;
    undone.state = "running";
    recover_traffic(undone);  // points traffic back, lifts the fence
    check_losing_side();
    finish_undone(dead, "switch undone by the next run");
  }
  report_.notes.push_back(
      fmt::format("earlier {} {} died while switching traffic: {} ({}{})", dead.operation, dead.id,
                  forward ? "finished its switch" : "switched back", where,
                  options_.settle.empty() ? "" : "; --settle " + options_.settle));
}

void Cutover::preconditions(Clock::time_point deadline) {
  // The fence travels as a logical message, which pgoutput sends from PostgreSQL 14 on; both
  // sides, because a rollback fences the new primary the same way. (Older servers have no
  // fallback here: they reached end of life.)
  for (auto* side : {&from_conn_, &to_conn_}) {
    auto version = side->exec(
        "SELECT current_setting('server_version_num')::int < 140000, "
        "current_setting('server_version')");
    if (version.get(0, 0) == "t") {
      throw repl::CheckFailed(fmt::format(
          "the {} is PostgreSQL {}: its pgoutput cannot carry the cutover's fence message "
          "(logical messages need PostgreSQL 14 or newer); stop writes yourself, read "
          "pg_current_wal_lsn() on the source, let `pgferry run --until <that LSN>` apply up to "
          "it, then switch traffic by hand",
          side == &from_conn_ ? "old primary" : "new primary", version.get(0, 1)));
    }
  }
  // The agent of the current direction is connected and caught up, for a moment.
  // (After recovering a dead run, the follower takes a moment to start the agent again.)
  lagmon::LagSampler sampler(from_.conninfo, to_.conninfo, options_.name);
  auto restart_grace = std::min(deadline, Clock::now() + (recovered_ ? 10s : 0s));
  for (int i = 0; i < 3; ++i) {
    auto sample = sampler.sample();
    if (sample.state() != lagmon::AgentState::streaming && Clock::now() < restart_grace) {
      --i;
      std::this_thread::sleep_for(100ms);
      continue;
    }
    if (sample.state() != lagmon::AgentState::streaming) {
      throw repl::CheckFailed(
          fmt::format("the agent of '{}' is not streaming (state {}): start `pgferry run` first",
                      options_.name, lagmon::to_string(sample.state())));
    }
    auto lag = sample.lag_bytes().value_or(UINT64_MAX);
    if (lag > options_.max_lag) {
      throw repl::CheckFailed(
          fmt::format("lag {} bytes is above --max-lag {}", lag, options_.max_lag));
    }
    if (i < 2) std::this_thread::sleep_for(50ms);
    if (Clock::now() > deadline) return;
  }
  // No write transaction old enough to hold the fence.
  auto max_age =
      options_.max_transaction_age > 0ms ? options_.max_transaction_age : options_.fence_timeout;
  auto old = from_conn_.exec(
      "SELECT pid, round(extract(epoch FROM now() - xact_start))::text FROM pg_stat_activity "
      "WHERE datname = current_database() AND backend_xid IS NOT NULL AND pid <> "
      "pg_backend_pid() AND xact_start < now() - $1::int * interval '1 millisecond' "
      "ORDER BY xact_start LIMIT 1",
      {std::to_string(max_age.count())}, "looking for old write transactions");
  if (old.rows() > 0) {
    throw repl::CheckFailed(fmt::format(
        "write transaction of pid {} has been open for {} s, longer than the fence timeout: it "
        "would hold the fence (end it, or use --terminate-blockers)",
        old.get(0, 0), old.get(0, 1)));
  }
  // Sequences: pre-sync now, so that the one inside the window has little to do.
  sequences::SyncOptions sync;
  sync.margin = options_.sequence_margin;
  auto synced = sequences::sync_sequences(from_conn_, to_conn_, sync);
  if (!synced.changed.empty()) {
    report_.notes.push_back(fmt::format("pre-synced {} sequences", synced.changed.size()));
  }
  // The new primary can host the new direction's slot.
  auto settings = to_conn_.exec(
      "SELECT current_setting('wal_level'), "
      "(SELECT count(*) FROM pg_replication_slots) < "
      "current_setting('max_replication_slots')::int, "
      "(SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user), "
      "(SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1)",
      {options_.name}, "checking that the new primary can host a slot");
  if (settings.get(0, 0) != "logical") {
    throw repl::CheckFailed(fmt::format(
        "the new primary has wal_level={}: set wal_level = logical there (restart) so that "
        "the way back can be replicated",
        settings.get(0, 0)));
  }
  if (settings.get(0, 1) != "t" && settings.get(0, 3) == "0") {
    throw repl::CheckFailed(
        "the new primary has no free replication slot: raise "
        "max_replication_slots there");
  }
  if (settings.get(0, 2) != "t") {
    throw repl::CheckFailed(
        "the role on the new primary lacks REPLICATION: ALTER ROLE ... "
        "REPLICATION");
  }
  if (settings.get(0, 3) != "0") {
    if (!drop_slot(to_conn_, options_.name, std::nullopt)) {
      throw repl::CheckFailed(fmt::format(
          "slot '{}' on the new primary is in use: stop whatever streams from it", options_.name));
    }
    report_.notes.push_back("dropped a stale slot of the same name on the new primary");
  }
  tables_ = published_tables(from_conn_, options_.publication_name());
  // The published tables have the same columns, types and keys on both sides, or the way
  // back (and the apply after the fence) would fail once writes are fenced.
  auto source_shapes = table_shapes(from_conn_, tables_);
  auto problems = schema_differences(tables_, source_shapes, table_shapes(to_conn_, tables_));
  for (const auto& [table, shape] : source_shapes) {
    if (!shape.key.empty()) keyed_tables_.insert(table);
  }
  if (!problems.empty()) {
    throw repl::CheckFailed(fmt::format("the schemas differ: {}", fmt::join(problems, "; ")));
  }
  if (options_.fence == FenceKind::pgbouncer) {
    PgBouncerAdmin admin(options_.pgbouncer_conninfo);
    if (admin.paused(pgbouncer_database_)) {
      throw repl::CheckFailed(fmt::format(
          "PgBouncer database '{}' is already paused: another cutover runs, or RESUME it",
          pgbouncer_database_));
    }
  }
}

void Cutover::engage_fence(Clock::time_point deadline) {
  FenceSpec spec;
  spec.kind = options_.fence;
  spec.pgbouncer_conninfo = options_.pgbouncer_conninfo;
  spec.pgbouncer_database = pgbouncer_database_;
  spec.server_conninfo = from_.conninfo;
  spec.terminate_blockers = options_.terminate_blockers;
  fence_ = std::make_unique<WriteFence>(spec);
  guard_->send({{"fence", spec.to_json()}});
  fenced_at_ = Clock::now();
  fence_->engage(std::min(deadline, Clock::now() + options_.fence_timeout));
}

void Cutover::mark_and_drain(Clock::time_point deadline) {
  nlohmann::json message = {{"fence", report_.id}, {"name", options_.name}};
  set_statement_timeout(from_conn_, deadline);
  auto lsn = from_conn_.exec("SELECT pg_logical_emit_message(true, 'pgferry', $1)::text",
                             {message.dump()}, "writing the fence message");
  report_.fence_lsn = repl::Lsn::from_string(lsn.scalar(), "fence LSN");
  // Tight poll of the progress row: one indexed read every millisecond.
  auto wait_start = Clock::now();
  while (true) {
    ++report_.drain_polls;
    auto row = to_conn_.exec("SELECT applied_lsn::text FROM pgferry.progress WHERE name = $1",
                             {options_.name});
    if (row.rows() == 1) {
      if (auto applied = Lsn::parse(row.get(0, 0)); applied && *applied >= report_.fence_lsn) {
        report_.applied_lsn = *applied;
        report_.drain_wait = duration_cast<microseconds>(Clock::now() - wait_start);
        return;
      }
    }
    if (Clock::now() >= deadline) {
      throw repl::CutoverAborted(fmt::format(
          "the agent did not apply the fence {} within the budget: is `pgferry run` running "
          "for '{}'?",
          report_.fence_lsn, options_.name));
    }
    std::this_thread::sleep_for(1ms);
  }
}

void Cutover::sequences_and_verify(Clock::time_point deadline) {
  sequences::SyncOptions sync;
  sync.margin = options_.sequence_margin;
  auto started = Clock::now();
  auto synced = sequences::sync_sequences(from_conn_, to_conn_, sync);
  report_.sequences_set = synced.changed.size();
  auto synced_in = duration_cast<microseconds>(Clock::now() - started);
  if (!options_.verify) return;
  // Row counts of the small tables, both sides, while nothing writes.
  set_statement_timeout(from_conn_, deadline);
  set_statement_timeout(to_conn_, deadline);
  std::vector<std::string> large;  // as verify patterns: both parts quoted
  std::vector<std::string> small;
  auto estimates = from_conn_.exec(
      "SELECT c.reltuples::bigint > $2::bigint, format('\"%s\".\"%s\"', replace(n.nspname, "
      "'\"', '\"\"'), replace(c.relname, '\"', '\"\"')) FROM unnest($1::text[]) WITH ORDINALITY "
      "AS t(name, i) JOIN pg_class c ON c.oid = t.name::regclass JOIN pg_namespace n ON n.oid "
      "= c.relnamespace ORDER BY t.i",
      {repl::sql_array_literal(tables_), std::to_string(kCountedRows)},
      "verify: estimating the sizes of the published tables");
  for (int row = 0; row < estimates.rows(); ++row) {
    const auto& table = tables_[static_cast<std::size_t>(row)];
    if (estimates.get(row, 0) != "t") {
      small.push_back(table);
    } else if (keyed_tables_.contains(table)) {
      large.emplace_back(estimates.get(row, 1));
    } else {
      report_.notes.push_back(
          fmt::format("verify: {} is large and has no primary key: not checked", table));
    }
  }
  if (!small.empty()) {
    // One query a side counts them all; both sides count at the same time.
    std::vector<std::string> counts;
    for (const auto& table : small)
      counts.push_back(fmt::format("(SELECT count(*) FROM {})", table));
    auto query = fmt::format("SELECT ARRAY[{}]::text", fmt::join(counts, ", "));
    for (const auto* conn : {&from_conn_, &to_conn_}) {
      if (PQsendQuery(conn->native(), query.c_str()) != 1) {
        repl::throw_pg_error(conn->native(), nullptr, conn->side(), "verify: counting rows");
      }
    }
    // Read both answers before checking either, so neither connection stays busy.
    auto answer = [](const repl::Connection& conn) {
      PGresult* result = PQgetResult(conn.native());
      while (PGresult* rest = PQgetResult(conn.native())) PQclear(rest);
      return result;
    };
    repl::Result old_result(answer(from_conn_));
    repl::Result new_result(answer(to_conn_));
    for (const auto& [conn, result] :
         {std::pair{&from_conn_, &old_result}, std::pair{&to_conn_, &new_result}}) {
      if (!*result || result->status() != PGRES_TUPLES_OK) {
        repl::throw_pg_error(conn->native(), result->native(), conn->side(),
                             "verify: counting rows");
      }
    }
    auto old_rows = split_array(old_result.scalar());
    auto new_rows = split_array(new_result.scalar());
    if (old_rows.size() != small.size() || new_rows.size() != small.size()) {
      throw repl::CutoverAborted(fmt::format(
          "verify: counting {} tables gave {} counts on the old primary and {} on the new one",
          small.size(), old_rows.size(), new_rows.size()));
    }
    for (std::size_t i = 0; i < small.size(); ++i) {
      if (old_rows.at(i) != new_rows.at(i)) {
        throw repl::CutoverAborted(
            fmt::format("verify: {} has {} rows on the old primary and {} on the new one", small[i],
                        old_rows.at(i), new_rows.at(i)));
      }
      ++report_.tables_verified;
    }
  }
  from_conn_.exec("SET statement_timeout = 0");
  to_conn_.exec("SET statement_timeout = 0");
  if (!large.empty()) sample_large_tables(large, deadline);
  step_detail_ = fmt::format(
      "sequences {:.1f} ms; {} tables counted, {} large tables sampled ({} keys) in {:.1f} ms",
      ms(synced_in), report_.tables_verified, report_.tables_sampled, report_.keys_sampled,
      ms(duration_cast<microseconds>(Clock::now() - started) - synced_in));
}

// The large tables: `verify --once --sample` (random keys and the last keys of each side,
// compared row by row), on one connection pair, ending by the step's deadline. Exact, as
// nothing writes while fenced.
void Cutover::sample_large_tables(const std::vector<std::string>& patterns,
                                  Clock::time_point deadline) {
  VerifyOptions verify_options;
  verify_options.source_conninfo = from_.conninfo;
  verify_options.target_conninfo = to_.conninfo;
  verify_options.name = options_.name;
  verify_options.scope = repl::TableScope::from_patterns(patterns, {});
  verify_options.jobs = 1;
  verify_options.sample = kSampledKeys;
  verify_options.mode = VerifyMode::once;
  verify_options.max_keys = 3;
  verify_options.deadline = deadline;
  auto checked = verify(verify_options);
  for (const auto& table : checked.tables) {
    if (!table.equal()) {
      std::string first = table.differences.empty()
                              ? fmt::format("{}", fmt::join(table.problems, "; "))
                              : fmt::format("{} key ({})", to_string(table.differences[0].kind),
                                            fmt::join(table.differences[0].key, ", "));
      throw repl::CutoverAborted(fmt::format(
          "verify: {} differs between the old and the new primary in {} of {} sampled keys "
          "(first: {}); run `pgferry verify` for the list",
          table.display_name(), table.differing_keys(), table.source_rows, first));
    }
    ++report_.tables_sampled;
    report_.keys_sampled += static_cast<std::size_t>(table.source_rows);
  }
}

void Cutover::prepare_new_direction(Clock::time_point deadline) {
  set_statement_timeout(to_conn_, deadline);
  std::string publication = repl::quote_ident(options_.publication_name());
  std::string list =
      tables_.empty() ? "" : " FOR TABLE " + fmt::format("{}", fmt::join(tables_, ", "));
  repl::Transaction txn(to_conn_);
  to_conn_.exec(fmt::format("DROP PUBLICATION IF EXISTS {}", publication));
  to_conn_.exec(fmt::format("CREATE PUBLICATION {}{}", publication, list),
                "creating the publication of the new direction");
  txn.commit();
  publication_replaced_ = true;
  auto slot =
      to_conn_.exec("SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
                    {options_.name}, "creating the slot of the new direction");
  slot_created_ = true;
  report_.notes.push_back(fmt::format("new slot created at {}", slot.scalar()));
  to_conn_.exec("SET statement_timeout = 0");
}

void Cutover::new_direction(Clock::time_point /*deadline*/) {
  // The new primary's WAL position once the agent committed the fence: everything before it
  // came from the old primary (the agent's writes); the new direction starts here, so none
  // of it travels back (the slot skips transactions that commit before the start).
  report_.new_slot_lsn = repl::Lsn::from_string(
      to_conn_.exec("SELECT pg_current_wal_lsn()::text").scalar(), "new primary WAL position");
}

std::vector<std::pair<std::string, std::string>> Cutover::switch_env(const Side& side,
                                                                     bool aborting) const {
  return cutover::switch_env(side.conninfo, to_string(options_.operation), report_.id, aborting);
}

// The order below is what lets the guard and a re-run agree with the history on which side
// traffic belongs to when we die on the way (kill -9):
// 1. The guard hears {"switching"} (the config's original and switched texts, the command
//    and the environments that point it back and forward) before anything changes.
// 2. The row says `switching` (with the fence and the new slot's position), committed
//    before traffic moves: from here on a dead cutover's row tells that the switch may be
//    half done, and the follower keeps both directions stopped until it is settled.
// 3. The config is rewritten and RELOADed; the command runs (the guard learns its process
//    group, and when it ended).
// 4. The guard hears {"committing"}; the UPDATE to `switched` commits: the point of no
//    return. From its commit on nothing switches back: the guard, not yet told, finds the
//    row `switched` once it holds our advisory lock (our session, hence our UPDATE, is over
//    by then) and only unfences; a re-run finishes the cutover.
// 5. The guard hears {"switched"}: it no longer needs to ask the history.
// Dying between 2 and 4, the guard undoes the switch, or finishes it when undoing fails
// (guard.hpp); a re-run that finds the row still `switching` decides from where writes went
// (settle_switching).
void Cutover::switch_traffic(Clock::time_point deadline) {
  nlohmann::json back_env = nlohmann::json::object();
  for (const auto& [key, value] : switch_env(from_, true)) back_env[key] = value;
  nlohmann::json forward_env = nlohmann::json::object();
  for (const auto& [key, value] : switch_env(to_, false)) forward_env[key] = value;
  nlohmann::json config = nullptr;
  std::string config_switched;
  if (!options_.pgbouncer_config.empty()) {
    config_original_ = read_pgbouncer_config(options_.pgbouncer_config);
    config_switched = rewrite_database_entry(config_original_, pgbouncer_database_, to_.conninfo);
    config = {{"path", options_.pgbouncer_config},
              {"original", config_original_},
              {"switched", config_switched},
              {"admin", options_.pgbouncer_conninfo}};
  }
  guard_->send(
      {{"switching",
        {{"config", config},
         {"command", options_.switch_command.empty() ? nlohmann::json(nullptr)
                                                     : nlohmann::json(options_.switch_command)},
         {"back_env", back_env},
         {"forward_env", forward_env},
         {"new_side",
          {{"conninfo", to_.conninfo},
           {"slot", options_.name},
           {"publication", options_.publication_name()},
           {"after", report_.new_slot_lsn.to_string()}}},
         {"back_budget_ms", switch_budget().count()}}}});
  history_conn_.exec(
      "UPDATE pgferry.cutover_history SET state = 'switching', fence_lsn = $2::pg_lsn, "
      "new_slot_lsn = $3::pg_lsn WHERE id = $1",
      {report_.id, report_.fence_lsn.to_string(), report_.new_slot_lsn.to_string()},
      "recording that the switch begins");
  crash_point("after-switching");
  if (!options_.pgbouncer_config.empty()) {
    config_written_ = true;
    write_pgbouncer_config(options_.pgbouncer_config, config_switched);
    PgBouncerAdmin(options_.pgbouncer_conninfo).reload();
  }
  if (!options_.switch_command.empty()) {
    command_ran_ = true;
    // Killed past its budget or by a signal, it may have moved traffic; an exit status of
    // its own other than 0 says it did not.
    command_moved_ = true;
    int status = run_switch_command(
        options_.switch_command, switch_env(to_, false), deadline, [&](pid_t pid) {
          guard_->send({{"switch_pgid", pid}, {"switch_start", process_start_time(pid)}});
        });
    guard_->send({{"switch_exited", true}});
    command_moved_ = status == 0 || status > 128;
    if (status != 0) {
      throw repl::CutoverAborted(fmt::format("--switch-command exited with status {}", status));
    }
  }
  if (options_.pgbouncer_config.empty() && options_.switch_command.empty()) {
    report_.notes.push_back("no --pgbouncer-config or --switch-command: traffic not switched");
  }
  crash_point("before-switched");
  guard_->send({{"committing", true}});
  try {
    history_conn_.exec("UPDATE pgferry.cutover_history SET state = 'switched' WHERE id = $1",
                       {report_.id}, "recording the switch");
  } catch (const std::exception& e) {
    // The connection may have failed after the commit: the row decides, as for the guard.
    auto committed = switch_committed_after_all(deadline);
    if (committed == false) throw;  // the abort switches back
    if (committed) {
      report_.notes.push_back(fmt::format("recording the switch: {} (it had committed)", e.what()));
    } else {
      // Unknown (the history unreachable till the budget's end). Switching back could leave
      // writes on the old primary behind a committed `switched` row, which a re-run would
      // finish; kept switched, the row is `switched` or `switching` and a re-run settles
      // either from where writes went. So traffic stays, and the old slot is kept.
      switch_unconfirmed_ = true;
      report_.switch_unconfirmed = true;
      report_.notes.push_back(fmt::format(
          "recording the switch: {}; whether it committed cannot be read: traffic stays on the "
          "new primary, the old slot is kept; re-run the {} once the target answers, to settle "
          "its history",
          e.what(), to_string(options_.operation)));
    }
  }
  switched_ = true;
  crash_point("after-switched");
  guard_->send({{"switched", true}});
}

std::optional<bool> Cutover::switch_committed_after_all(Clock::time_point deadline) {
  // Our advisory lock is free once the failed session has ended, and with it the UPDATE,
  // committed or not; then the row says which. The new session keeps the lock for the rest.
  // The failed session is ended here if the server still has it (a connection whose failure
  // the server has not seen, or a statement that failed on a live session), which would
  // otherwise hold the lock against us.
  while (Clock::now() < deadline) {
    try {
      auto conn = open_history_session();
      if (history_session_) end_session(conn, *history_session_);
      auto remaining = duration_cast<milliseconds>(deadline - Clock::now());
      conn.exec(fmt::format("SET lock_timeout = {}", std::max<long long>(1, remaining.count())));
      conn.exec("SELECT pg_advisory_lock(hashtext($1))", {lock_key(options_.name)});
      conn.exec("RESET lock_timeout");
      auto state =
          conn.exec("SELECT state FROM pgferry.cutover_history WHERE id = $1", {report_.id});
      bool committed = state.rows() == 1 && state.get(0, 0) == "switched";
      history_conn_ = std::move(conn);
      send_history_to_guard();  // the session that holds the lock now
      return committed;
    } catch (const std::exception& e) {
      spdlog::warn("cutover id={} reading the switch's outcome: {}", report_.id, e.what());
      std::this_thread::sleep_for(50ms);
    }
  }
  return std::nullopt;
}

void Cutover::send_history_to_guard() {
  nlohmann::json history = {{"conninfo", options_.target_conninfo},
                            {"id", report_.id},
                            {"lock", lock_key(options_.name)}};
  try {
    history_session_ = read_session(history_conn_);
    history["session_pid"] = history_session_->pid;
    history["session_start"] = history_session_->start;
  } catch (const std::exception& e) {
    // The guard then waits for the session to end by itself, as before it knew it.
    history_session_.reset();
    spdlog::warn("cutover id={} reading the history session's backend: {}", report_.id, e.what());
  }
  guard_->send({{"history", history}});
}

void Cutover::lift(Clock::time_point /*deadline*/) {
  fence_->release();
  report_.window = duration_cast<microseconds>(Clock::now() - fenced_at_);
  guard_->send({{"released", true}});
}

void Cutover::after_commit() {
  if (switch_unconfirmed_) {
    // The history cannot be written either; the re-run finishes from the row it finds.
    report_.ok = true;
    if (guard_ && report_.window) {
      guard_->finish();
    } else if (guard_) {
      hand_over_to_guard();  // fence still on: the guard lifts it (and keeps the switch)
    }
    return;
  }
  try {
    // The old direction ends here: its slot holds no WAL any more, nothing travels back.
    drop_slot(from_conn_, options_.name, 5s);
    write_progress(from_conn_, options_.name, report_.new_slot_lsn);
  } catch (const std::exception& e) {
    report_.notes.push_back(fmt::format("after the switch: {} (a re-run finishes it)", e.what()));
    spdlog::warn("cutover id={} after the switch: {}", report_.id, e.what());
  }
  report_.ok = true;
  history_update(report_.window ? "completed" : "switched", "");
  if (guard_) {
    if (report_.window) {
      guard_->finish();
    } else {
      hand_over_to_guard();  // fence still on: the guard lifts it
    }
  }
  spdlog::info("cutover id={} {} done window_ms={:.1f} fence_lsn={}", report_.id,
               to_string(options_.operation), report_.window ? ms(*report_.window) : -1.0,
               report_.fence_lsn);
}

void Cutover::abort(const std::string& step, const std::string& reason) {
  report_.ok = false;
  report_.failed_step = step;
  report_.reason = reason;
  auto attempt = [&](const char* what, auto&& action) {
    try {
      action();
    } catch (const std::exception& e) {
      report_.notes.push_back(fmt::format("abort: {} failed: {}", what, e.what()));
      spdlog::error("cutover id={} abort: {} failed: {}", report_.id, what, e.what());
    }
  };
  // Writes the new primary took while the switch was half done (the command may have sent
  // clients there) would be lost with its slot: read it first, while the old primary is
  // still fenced; then (or unreadable) traffic is left where the switch put it, the row
  // stays `switching` with both slots, and a re-run settles it (finishing the switch when
  // only the new primary took writes), as when the way back fails.
  bool new_wrote = false;
  if (slot_created_ && (config_written_ || command_moved_)) {
    new_wrote = writes_within(to_.conninfo, options_.name, options_.publication_name(),
                              report_.new_slot_lsn, Clock::now() + switch_budget())
                    .value_or(1) > 0;
  }
  // Traffic is where it was: nothing moved, or it moved back. (A command that exited
  // non-zero by itself moved nothing, by its contract; a failure to run it back then leaves
  // traffic where it was.)
  bool way_back = !new_wrote;
  if (config_written_ && !new_wrote) {
    attempt("restoring the PgBouncer config", [&] {
      way_back = false;
      write_pgbouncer_config(options_.pgbouncer_config, config_original_);
      PgBouncerAdmin(options_.pgbouncer_conninfo).reload();
      way_back = true;
    });
  }
  if (command_ran_ && !new_wrote) {
    bool config_back = way_back;
    attempt("running --switch-command towards the old primary", [&] {
      way_back = false;
      int status = run_switch_command(options_.switch_command, switch_env(from_, true),
                                      Clock::now() + switch_budget());
      if (status != 0) throw repl::Error(fmt::format("exit status {}", status));
      way_back = config_back;
    });
    if (!command_moved_) way_back = config_back;
  }
  bool unsettled = !way_back;
  bool lifted = true;
  if (fence_) {
    attempt("lifting the fence", [&] {
      lifted = false;
      fence_->release();
      lifted = true;
    });
    if (lifted) report_.window = duration_cast<microseconds>(Clock::now() - fenced_at_);
  }
  if (unsettled) {
    report_.switch_unsettled = true;
    report_.notes.push_back(fmt::format(
        "{}: traffic is left where the switch put it, the history row stays `switching` and "
        "both slots are kept; re-run to settle it (it finishes the switch when only the new "
        "primary took writes)",
        new_wrote ? "the new primary took writes during the switch (or they cannot be read)"
                  : "the switch could not be undone"));
  } else {
    if (slot_created_) {
      attempt("dropping the new slot", [&] {
        to_conn_.exec("SET statement_timeout = 0");
        drop_slot(to_conn_, options_.name, 1s);
      });
    }
    (void)publication_replaced_;  // the new side's publication is unused until a slot uses it
    attempt("recording the abort", [&] { history_update("aborted", step + ": " + reason); });
  }
  if (guard_) {
    if (lifted) {
      guard_->send({{"released", true}});
      guard_->finish();
    } else {
      hand_over_to_guard();  // without "done": the guard retries the unfence
    }
  }
  spdlog::error("cutover id={} aborted at step {}: {}; {}", report_.id, step, reason,
                unsettled ? "traffic left where the switch put it, re-run to settle it"
                          : "writes go where they went before");
}

// Closes the pipe without "done" while we still live: the guard acts once it holds our
// lock, so we let go of it first (it would otherwise wait for our exit).
void Cutover::hand_over_to_guard() {
  try {
    history_conn_.exec("SELECT pg_advisory_unlock(hashtext($1))", {lock_key(options_.name)});
  } catch (const std::exception& e) {
    spdlog::warn("cutover id={} releasing the lock for the guard: {}", report_.id, e.what());
  }
  guard_.reset();
}

void Cutover::history_update(std::string_view state, const std::string& reason) {
  if (!history_written_) return;
  auto window = report_.window ? fmt::format("{}", ms(*report_.window)) : std::string();
  history_conn_.exec(
      "UPDATE pgferry.cutover_history SET state = $2, finished_at = now(), reason = "
      "nullif($3, ''), window_ms = nullif($4, '')::double precision, fence_lsn = "
      "nullif($5, '0/0')::pg_lsn, new_slot_lsn = nullif($6, '0/0')::pg_lsn, report = $7::jsonb "
      "WHERE id = $1",
      {report_.id, state, reason, window, report_.fence_lsn.to_string(),
       report_.new_slot_lsn.to_string(), report_.to_json().dump()},
      "recording the cutover in pgferry.cutover_history");
}

}  // namespace

CutoverReport run_cutover(const CutoverOptions& options) {
  Cutover cutover(options);
  return cutover.run();
}

Direction current_direction(const repl::Connection& original_target, std::string_view name) {
  auto last = latest_history(original_target, name, true);
  return last && last->operation == "cutover" ? Direction::reverse : Direction::forward;
}

std::optional<std::string> cutover_state(const repl::Connection& original_target,
                                         std::string_view id) {
  if (!history_exists(original_target)) return std::nullopt;
  auto result =
      original_target.exec("SELECT state, name FROM pgferry.cutover_history WHERE id = $1", {id});
  if (result.rows() == 0) return std::nullopt;
  std::string state(result.get(0, 0));
  if (state == "running" || state == "switching") {
    // Running only while its process (or its guard) holds the lock.
    auto key = lock_key(result.get(0, 1));
    if (original_target.exec("SELECT pg_try_advisory_lock(hashtext($1))", {key}).scalar() == "t") {
      original_target.exec("SELECT pg_advisory_unlock(hashtext($1))", {key});
      return std::string(state == "running" ? "dead" : "unsettled");
    }
  }
  return state;
}

std::optional<std::string> switching_cutover(const repl::Connection& original_target,
                                             std::string_view name) {
  auto last = latest_history(original_target, name, false);
  if (!last || last->state != "switching") return std::nullopt;
  return last->id;
}

void prepare_direction(const std::string& source_conninfo, const std::string& target_conninfo,
                       std::string_view name) {
  auto target = repl::Connection::open(target_conninfo, repl::Side::target);
  auto last = latest_history(target, name, true);
  if (!last || !last->new_slot_lsn) return;
  auto source = repl::Connection::open(source_conninfo, repl::Side::source);
  const auto& old_primary = last->operation == "cutover" ? source : target;
  write_progress(old_primary, name, *last->new_slot_lsn);
  // A cutover that died after its switch left the old direction's slot: drop it once no
  // cutover runs (the last row is this one) and nobody streams from it.
  auto any = latest_history(target, name, false);
  if (any && any->id == last->id) drop_slot(old_primary, name, std::nullopt);
}

nlohmann::json CutoverReport::to_json() const {
  nlohmann::json steps_json = nlohmann::json::array();
  for (const auto& s : steps) {
    steps_json.push_back(
        {{"step", s.name},
         {"ms", ms(s.elapsed)},
         {"budget_ms", s.budget.count()},
         {"status", s.status},
         {"detail", s.detail.empty() ? nlohmann::json(nullptr) : nlohmann::json(s.detail)}});
  }
  auto lsn = [](Lsn l) { return l.is_valid() ? nlohmann::json(l.to_string()) : nlohmann::json(); };
  return {{"ok", ok},
          {"id", id},
          {"operation", std::string(cutover::to_string(operation))},
          {"name", name},
          {"fence", fence},
          {"failed_step", failed_step.empty() ? nlohmann::json() : nlohmann::json(failed_step)},
          {"reason", reason.empty() ? nlohmann::json() : nlohmann::json(reason)},
          {"window_ms", window ? nlohmann::json(ms(*window)) : nlohmann::json()},
          {"fence_lsn", lsn(fence_lsn)},
          {"applied_lsn", lsn(applied_lsn)},
          {"new_slot_lsn", lsn(new_slot_lsn)},
          {"new_primary", ok && !steps.empty() ? nlohmann::json(new_primary) : nlohmann::json()},
          {"drain_wait_ms", ms(drain_wait)},
          {"drain_polls", drain_polls},
          {"sequences_set", sequences_set},
          {"tables_verified", tables_verified},
          {"tables_sampled", tables_sampled},
          {"keys_sampled", keys_sampled},
          {"steps", steps_json},
          {"switch_unconfirmed", switch_unconfirmed},
          {"switch_unsettled", switch_unsettled},
          {"notes", notes}};
}

std::string CutoverReport::render_text() const {
  std::string out;
  out += fmt::format("{} {} ({}): {}\n", cutover::to_string(operation), id, name,
                     ok ? "done" : fmt::format("ABORTED at step {}: {}", failed_step, reason));
  for (const auto& s : steps) {
    out += fmt::format("  {:<14} {:>9.1f} ms  (budget {} ms) {}{}\n", s.name, ms(s.elapsed),
                       s.budget.count(), s.status, s.detail.empty() ? "" : ": " + s.detail);
  }
  if (window) {
    out += fmt::format("  write window (fence {} to unfence): {:.1f} ms\n", fence, ms(*window));
  }
  if (fence_lsn.is_valid()) {
    out += fmt::format("  fence LSN {}, drained in {:.1f} ms ({} polls)\n", fence_lsn,
                       ms(drain_wait), drain_polls);
  }
  if (ok && new_slot_lsn.is_valid()) {
    out += fmt::format("  writes now go to {}; the way back starts at {}\n", new_primary,
                       new_slot_lsn);
  }
  if (sequences_set > 0 || tables_verified > 0 || tables_sampled > 0) {
    out += fmt::format("  sequences set {}, tables counted {}, large tables sampled {} ({} keys)\n",
                       sequences_set, tables_verified, tables_sampled, keys_sampled);
  }
  for (const auto& note : notes) out += fmt::format("  note: {}\n", note);
  return out;
}

}  // namespace pgferry::cutover
