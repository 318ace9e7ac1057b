// Initial copy: planning (ranges, formats, the progress record) on one target connection,
// then N worker threads piping COPY data from their snapshot-bound source session into
// their own target session, one target transaction per range.
#include "pgferry/replication/copy/initial_copy.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <exception>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

namespace pgferry::replication {

std::string_view to_string(TableCopyStatus status) {
  switch (status) {
    case TableCopyStatus::copied:
      return "copied";
    case TableCopyStatus::restarted:
      return "restarted";
    case TableCopyStatus::skipped:
      return "skipped";
    case TableCopyStatus::pending:
      return "pending";
  }
  return "";
}

namespace {

constexpr const char* kApplicationName = "pgferry-copy";

// The source sends one CopyData message per row; the target gets them gathered into
// messages of about this size (COPY data is a byte stream, row boundaries need not match
// message boundaries): one send and one message for the target backend to read per batch
// instead of per row.
constexpr std::size_t kCopyBatchBytes = 64 * 1024;

std::int64_t to_int(std::string_view text) {
  std::int64_t value = 0;
  std::from_chars(text.data(), text.data() + text.size(), value);
  return value;
}

// One block range of one table; end = nullopt means "to the end of the table".
struct Range {
  std::int64_t start = 0;
  std::optional<std::int64_t> end;
  std::string snapshot;
  bool finished = false;
};

struct TablePlan {
  const TableInfo* info = nullptr;
  std::string display;
  std::string column_list;  // "a", "b" quoted, comma-separated
  bool binary = true;
  // A table copied in one range may be emptied and loaded with COPY FREEZE in the same
  // transaction: no truncate triggers and no foreign key pointing at it on the target.
  bool freezable = false;
  std::vector<Range> ranges;
  TableCopyResult result;
  int ranges_done = 0;
};

struct WorkItem {
  std::size_t table = 0;
  std::size_t range = 0;
};

// Thrown inside a worker when it should stop (a stop request or another worker failed).
struct Abandoned {};

void ensure_progress_table(const Connection& target) {
  target.exec(
      "CREATE SCHEMA IF NOT EXISTS pgferry; "
      "CREATE TABLE IF NOT EXISTS pgferry.copy_progress ("
      "  name text NOT NULL,"
      "  table_name text NOT NULL,"
      "  range_start bigint NOT NULL,"
      "  range_end bigint,"
      "  snapshot text NOT NULL,"
      "  rows bigint,"
      "  bytes bigint,"
      "  finished_at timestamptz,"
      "  PRIMARY KEY (name, table_name, range_start))",
      "creating pgferry.copy_progress on the target");
}

// Columns to copy (the source's, generated ones excluded), and whether binary COPY can
// carry them: identical types on both sides, each with binary send/receive functions.
void plan_columns(const Connection& source, const Connection& target, TablePlan& plan) {
  const TableInfo& table = *plan.info;
  Result src = source.exec(
      "SELECT a.attname, format_type(a.atttypid, a.atttypmod), "
      "       t.typsend <> 0 AND t.typreceive <> 0 "
      "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
      "WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped "
      "AND a.attgenerated = '' ORDER BY a.attnum",
      {std::to_string(table.oid.value)}, "reading a source table's columns");
  // One row per column; one row of NULLs for a table without columns; none if missing.
  Result tgt = target.exec(
      "SELECT a.attname, format_type(a.atttypid, a.atttypmod), "
      "       t.typsend <> 0 AND t.typreceive <> 0 "
      "FROM (SELECT to_regclass($1)::oid AS oid) r "
      "LEFT JOIN (pg_attribute a JOIN pg_type t ON t.oid = a.atttypid) "
      "       ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped "
      "WHERE r.oid IS NOT NULL",
      {table.qualified_name()}, "reading a target table's columns");
  if (tgt.rows() == 0) {
    throw CheckFailed(
        fmt::format("table {} does not exist on the target: create the schema "
                    "there first (pgferry check lists what is missing)",
                    plan.display));
  }
  std::map<std::string, std::pair<std::string, bool>, std::less<>> target_columns;
  for (int i = 0; i < tgt.rows(); ++i) {
    if (tgt.is_null(i, 0)) continue;
    target_columns[std::string(tgt.get(i, 0))] = {std::string(tgt.get(i, 1)), tgt.get(i, 2) == "t"};
  }
  plan.binary = true;
  plan.column_list.clear();
  for (int i = 0; i < src.rows(); ++i) {
    std::string_view name = src.get(i, 0);
    auto it = target_columns.find(name);
    if (it == target_columns.end()) {
      throw CheckFailed(
          fmt::format("column {}.{} does not exist on the target: add it there "
                      "(pgferry check lists what is missing)",
                      plan.display, name));
    }
    bool same_type = it->second.first == src.get(i, 1);
    bool sendable = src.get(i, 2) == "t" && it->second.second;
    if (!same_type || !sendable) plan.binary = false;
    if (!plan.column_list.empty()) plan.column_list += ", ";
    plan.column_list += quote_ident(name);
  }
  if (plan.column_list.empty() && !target_columns.empty()) {
    // COPY names no columns then, so it would expect the target's: nothing to name.
    throw CheckFailed(fmt::format(
        "table {} has no columns on the source but {} on the target: the initial copy cannot "
        "carry its rows; drop the target's extra columns or --exclude-table {}",
        plan.display, target_columns.size(), plan.display));
  }
}

// Whether TRUNCATE (needed for COPY FREEZE) is harmless on the target table: it fires no
// truncate trigger (TRIGGER_TYPE_TRUNCATE, 1 << 5) and no foreign key refers to it.
bool freezable(const Connection& target, const TableInfo& table) {
  return target
             .exec(
                 "SELECT coalesce((SELECT NOT EXISTS (SELECT 1 FROM pg_trigger "
                 "WHERE tgrelid = c.oid AND (tgtype & 32) <> 0) AND NOT EXISTS (SELECT 1 "
                 "FROM pg_constraint WHERE confrelid = c.oid AND contype = 'f') "
                 "FROM pg_class c WHERE c.oid = to_regclass($1) AND c.relkind = 'r'), false)",
                 {table.qualified_name()}, "checking whether a target table can be frozen")
             .scalar() == "t";
}

std::vector<Range> split(const TableInfo& table, std::int64_t split_bytes, bool tid_ranges,
                         const std::string& snapshot) {
  std::int64_t pieces = split_bytes > 0 ? (table.bytes + split_bytes - 1) / split_bytes : 1;
  if (!tid_ranges || pieces <= 1 || table.blocks < 2) {
    return {Range{0, std::nullopt, snapshot, false}};
  }
  pieces = std::min<std::int64_t>({pieces, table.blocks, 4096});
  std::int64_t step = (table.blocks + pieces - 1) / pieces;
  std::vector<Range> ranges;
  for (std::int64_t start = 0; start < table.blocks; start += step) {
    ranges.push_back(Range{start, start + step, snapshot, false});
  }
  ranges.back().end = std::nullopt;  // open-ended: blocks added since planning
  return ranges;
}

class Copier {
 public:
  Copier(std::string_view source_conninfo, std::string_view target_conninfo,
         std::string_view snapshot, const std::vector<TableInfo>& tables,
         const CopyOptions& options)
      : source_conninfo_(source_conninfo),
        target_conninfo_(target_conninfo),
        snapshot_(snapshot),
        tables_(tables),
        options_(options) {}

  CopyReport run() {
    auto started = std::chrono::steady_clock::now();
    if (options_.jobs < 1) {
      throw ConfigError(fmt::format("--jobs must be at least 1 (got {})", options_.jobs));
    }
    if (snapshot_.empty()) throw ConfigError("the initial copy needs a snapshot name");
    plan();

    int workers = std::max(1, std::min<int>(options_.jobs, static_cast<int>(work_.size())));
    std::vector<std::thread> threads;
    auto guard = hold_off_autovacuum();
    if (!work_.empty()) {
      spdlog::info("initial copy: {} tables, {} ranges to copy, {} skipped, jobs={}", plans_.size(),
                   work_.size(), report_.ranges_skipped, workers);
      for (int i = 0; i < workers; ++i) threads.emplace_back([this] { worker(); });
      for (auto& thread : threads) thread.join();
    }
    if (guard) {
      // Let go now, not when the server gets round to ending the closed session: the
      // post-data index builds come next.
      try {
        guard->exec("COMMIT");
      } catch (const PgError&) {
        // the session is gone, and its locks with it
      }
    }
    if (first_error_) std::rethrow_exception(first_error_);

    report_.complete = true;
    for (auto& plan : plans_) {
      if (plan.ranges_done == static_cast<int>(plan.ranges.size())) {
        if (plan.result.status == TableCopyStatus::pending) {
          plan.result.status = TableCopyStatus::copied;
        }
      } else {
        plan.result.status = TableCopyStatus::pending;
        report_.complete = false;
      }
      report_.tables.push_back(plan.result);
    }
    report_.elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(
        std::chrono::steady_clock::now() - started);
    return std::move(report_);
  }

 private:
  Connection open_target(const char* application_name = kApplicationName) const {
    auto conn =
        Connection::open(target_conninfo_, Side::target, {{"application_name", application_name}});
    conn.exec(
        "SET synchronous_commit = off; SET statement_timeout = 0; "
        "SET client_min_messages = warning",
        "configuring the target session");
    return conn;
  }

  // A table loaded in ranges passes autovacuum's insert threshold as soon as its first
  // ranges commit: autovacuum would then vacuum it while it is being loaded (CPU and I/O
  // taken from the copy, for a table still growing), and the post-data index build would
  // wait deadlock_timeout before cancelling it. A session of ours holding SHARE UPDATE
  // EXCLUSIVE on such tables until the copy ends makes autovacuum skip them (it never
  // waits for a lock); the workers' ROW EXCLUSIVE does not conflict with it. Nothing on
  // the server changes, and the lock goes with the session. A table that cannot be
  // locked at once (a vacuum already running) is left alone.
  std::optional<Connection> hold_off_autovacuum() const {
    std::vector<std::string> tables;
    for (const auto& plan : plans_) {
      if (plan.ranges.size() > 1 && plan.ranges_done < static_cast<int>(plan.ranges.size())) {
        tables.push_back(plan.info->qualified_name());
      }
    }
    if (tables.empty()) return std::nullopt;
    auto guard = open_target("pgferry-copy-guard");
    guard.exec("SET idle_in_transaction_session_timeout = 0; BEGIN");
    for (const auto& table : tables) {
      guard.exec("SAVEPOINT pgferry_guard");
      try {
        guard.exec(fmt::format("LOCK TABLE ONLY {} IN SHARE UPDATE EXCLUSIVE MODE NOWAIT", table));
        guard.exec("RELEASE SAVEPOINT pgferry_guard");
      } catch (const SqlError& e) {
        spdlog::debug("initial copy: table={} not held from autovacuum: {}", table, e.what());
        guard.exec("ROLLBACK TO SAVEPOINT pgferry_guard");
      }
    }
    return guard;
  }

  // Reads the record, decides each table's ranges and format, and records new plans.
  void plan() {
    auto source = Connection::open(source_conninfo_, Side::source);
    auto target = open_target();
    ensure_progress_table(target);

    std::map<std::string, std::vector<Range>> recorded;
    Result rows = target.exec(
        "SELECT table_name, range_start, range_end, snapshot, finished_at IS NOT NULL "
        "FROM pgferry.copy_progress WHERE name = $1 ORDER BY table_name, range_start",
        {options_.name}, "reading pgferry.copy_progress");
    for (int i = 0; i < rows.rows(); ++i) {
      Range range;
      range.start = to_int(rows.get(i, 1));
      if (!rows.is_null(i, 2)) range.end = to_int(rows.get(i, 2));
      range.snapshot = std::string(rows.get(i, 3));
      range.finished = rows.get(i, 4) == "t";
      recorded[std::string(rows.get(i, 0))].push_back(std::move(range));
    }

    bool tid_ranges = source.server_version() >= 140000;
    Transaction txn(target);
    for (const auto& table : tables_) {
      if (!table.carries_rows()) continue;
      TablePlan plan;
      plan.info = &table;
      plan.display = table.display_name();
      plan.result.table = plan.display;
      plan.result.snapshot = snapshot_;
      plan_columns(source, target, plan);
      plan.result.binary = plan.binary;
      plan.freezable = freezable(target, table);

      auto it = recorded.find(plan.display);
      bool all_finished =
          it != recorded.end() && std::all_of(it->second.begin(), it->second.end(),
                                              [](const Range& r) { return r.finished; });
      bool same_snapshot = it != recorded.end() &&
                           std::all_of(it->second.begin(), it->second.end(),
                                       [&](const Range& r) { return r.snapshot == snapshot_; });
      bool none_finished =
          it != recorded.end() && std::none_of(it->second.begin(), it->second.end(),
                                               [](const Range& r) { return r.finished; });
      if (it != recorded.end() && !same_snapshot && none_finished) {
        // Planned under another snapshot but nothing committed: plan afresh.
        target.exec("DELETE FROM pgferry.copy_progress WHERE name = $1 AND table_name = $2",
                    {options_.name, plan.display}, "resetting a table's copy plan");
        recorded.erase(it);
        it = recorded.end();
      }
      if (it != recorded.end() && (all_finished || same_snapshot)) {
        plan.ranges = it->second;
        if (all_finished) {
          plan.result.status = TableCopyStatus::skipped;
          plan.result.snapshot = it->second.front().snapshot;
        }
      } else {
        if (it != recorded.end()) {
          // Partly copied from a snapshot that is gone: its rows cannot be completed
          // consistently, so start the table over.
          spdlog::warn(
              "initial copy: table={} was partly copied under snapshot {}; "
              "restarting it under {}",
              plan.display, it->second.front().snapshot, snapshot_);
          target.exec("DELETE FROM pgferry.copy_progress WHERE name = $1 AND table_name = $2",
                      {options_.name, plan.display}, "resetting a table's copy record");
          target.exec(fmt::format("TRUNCATE ONLY {}", table.qualified_name()),
                      "emptying a partly copied target table");
          plan.result.status = TableCopyStatus::restarted;
        } else {
          bool has_rows = target
                              .exec(fmt::format("SELECT EXISTS (SELECT 1 FROM ONLY {})",
                                                table.qualified_name()),
                                    "checking that a target table is empty")
                              .scalar() == "t";
          if (has_rows) {
            throw CheckFailed(fmt::format(
                "target table {} already has rows and no initial-copy record under the name "
                "\"{}\": empty it (TRUNCATE {}) or skip the copy (init --no-data)",
                plan.display, options_.name, table.qualified_name()));
          }
        }
        plan.ranges = split(table, options_.split_bytes, tid_ranges, snapshot_);
        for (const auto& range : plan.ranges) {
          std::optional<std::string> end;
          if (range.end) end = std::to_string(*range.end);
          target.exec(
              "INSERT INTO pgferry.copy_progress (name, table_name, range_start, range_end, "
              "snapshot) VALUES ($1, $2, $3, $4, $5)",
              {options_.name, plan.display, std::to_string(range.start),
               end ? Param(*end) : Param(std::nullopt), snapshot_},
              "recording the copy plan");
        }
      }
      plan.result.ranges = static_cast<int>(plan.ranges.size());
      for (const auto& range : plan.ranges) {
        if (range.finished) ++plan.ranges_done;
      }
      report_.ranges_skipped += plan.ranges_done;
      plans_.push_back(std::move(plan));
    }
    txn.commit();

    // Largest tables first, their ranges in order; then the small ones fill the gaps.
    std::vector<std::size_t> order(plans_.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
      return plans_[a].info->bytes > plans_[b].info->bytes;
    });
    for (std::size_t t : order) {
      for (std::size_t r = 0; r < plans_[t].ranges.size(); ++r) {
        if (!plans_[t].ranges[r].finished) work_.push_back(WorkItem{t, r});
      }
    }
    ranges_total_ = 0;
    ranges_done_ = report_.ranges_skipped;
    for (const auto& p : plans_) ranges_total_ += static_cast<int>(p.ranges.size());
  }

  bool should_stop() const { return failed_.load() || options_.stop.stop_requested(); }

  std::optional<WorkItem> next_item() {
    std::lock_guard lock(mutex_);
    if (should_stop() || next_ >= work_.size()) return std::nullopt;
    return work_[next_++];
  }

  void worker() {
    try {
      auto source = Connection::open(source_conninfo_, Side::source,
                                     {{"application_name", kApplicationName}});
      source.exec(
          "SET statement_timeout = 0; SET idle_in_transaction_session_timeout = 0; "
          "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
          "opening the snapshot transaction");
      source.exec(fmt::format("SET TRANSACTION SNAPSHOT {}", quote_literal(snapshot_)),
                  fmt::format("importing snapshot {}", snapshot_));
      auto target = open_target();
      // Not allowed (preflight said so): triggers and foreign keys stay on.
      bool triggers_disabled = target.set_replica_role().allowed;
      {
        std::lock_guard lock(mutex_);
        report_.triggers_disabled = triggers_disabled;
      }
      std::string batch;
      batch.reserve(kCopyBatchBytes + 64 * 1024);
      while (auto item = next_item()) copy_range(source, target, *item, batch);
    } catch (const Abandoned&) {
      // stopped on request or because another worker failed
    } catch (...) {
      std::lock_guard lock(mutex_);
      if (!first_error_) first_error_ = std::current_exception();
      failed_.store(true);
    }
  }

  // A table copied whole is emptied in the copy's own transaction (inside a savepoint, so
  // a refusal leaves the plain COPY possible): COPY FREEZE then writes its rows frozen and
  // its pages all-visible, so the index builds and the first reads after the copy do not
  // dirty every page again to set hint bits, and autovacuum need not freeze them later. On a
  // wal_level=minimal server the load also skips WAL. The table is locked and checked
  // empty first, so rows written there since planning are never truncated away.
  static bool empty_for_freeze(const Connection& target, const TablePlan& plan) {
    std::string table = plan.info->qualified_name();
    target.exec("SAVEPOINT pgferry_freeze");
    try {
      target.exec(fmt::format("LOCK TABLE ONLY {} IN ACCESS EXCLUSIVE MODE", table));
      if (target.exec(fmt::format("SELECT EXISTS (SELECT 1 FROM ONLY {})", table)).scalar() ==
          "t") {
        target.exec("ROLLBACK TO SAVEPOINT pgferry_freeze");
        return false;
      }
      target.exec(fmt::format("TRUNCATE ONLY {}", table));
      return true;
    } catch (const SqlError& e) {
      spdlog::debug("initial copy: table={} copied without FREEZE: {}", plan.display, e.what());
      target.exec("ROLLBACK TO SAVEPOINT pgferry_freeze");
      return false;
    }
  }

  // `batch` is the worker's buffer for gathering rows.
  void copy_range(const Connection& source, const Connection& target, const WorkItem& item,
                  std::string& batch) {
    TablePlan& plan = plans_[item.table];
    const Range& range = plan.ranges[item.range];
    std::string where;
    if (plan.ranges.size() > 1) {
      where = fmt::format(" WHERE ctid >= '({},0)'::tid", range.start);
      if (range.end) where += fmt::format(" AND ctid < '({},0)'::tid", *range.end);
    }
    std::string format = plan.binary ? "binary" : "text";
    std::string copy_out =
        fmt::format("COPY (SELECT {} FROM ONLY {}{}) TO STDOUT (FORMAT {})", plan.column_list,
                    plan.info->qualified_name(), where, format);
    // A table without columns (CREATE TABLE t ()): COPY with no column list, each row a
    // tuple of zero fields.
    std::string copy_in =
        fmt::format("COPY {}{} FROM STDIN (FORMAT {})", plan.info->qualified_name(),
                    plan.column_list.empty() ? "" : " (" + plan.column_list + ")", format);
    std::string context = fmt::format("copying {} blocks {}..{}", plan.display, range.start,
                                      range.end ? std::to_string(*range.end) : "end");

    Transaction txn(target);
    if (plan.freezable && plan.ranges.size() == 1 && empty_for_freeze(target, plan)) {
      copy_in.insert(copy_in.size() - 1, ", FREEZE");
    }
    target.check(PQexec(target.native(), copy_in.c_str()), context);
    source.check(PQexec(source.native(), copy_out.c_str()), context);

    std::int64_t bytes = 0;
    batch.clear();
    auto send_batch = [&] {
      if (PQputCopyData(target.native(), batch.data(), static_cast<int>(batch.size())) != 1) {
        throw_pg_error(target.native(), nullptr, Side::target, context);
      }
      batch.clear();
    };
    while (true) {
      char* buffer = nullptr;
      int length = PQgetCopyData(source.native(), &buffer, 0);
      if (length == -1) break;
      if (length < 0) {
        PQputCopyEnd(target.native(), "source failed");
        throw_pg_error(source.native(), nullptr, Side::source, context);
      }
      batch.append(buffer, static_cast<std::size_t>(length));
      PQfreemem(buffer);
      bytes += length;
      if (batch.size() >= kCopyBatchBytes) {
        send_batch();
        if (should_stop()) {
          // Leave both sessions to be discarded: the source is mid-COPY and the target's
          // transaction rolls back with the connection.
          PQputCopyEnd(target.native(), "initial copy stopped");
          throw Abandoned{};
        }
      }
    }
    if (!batch.empty()) send_batch();
    // The source's COPY result, then the end of the statement.
    source.check(PQgetResult(source.native()), context);
    while (PGresult* extra = PQgetResult(source.native())) PQclear(extra);

    if (PQputCopyEnd(target.native(), nullptr) != 1) {
      throw_pg_error(target.native(), nullptr, Side::target, context);
    }
    Result done = target.check(PQgetResult(target.native()), context);
    std::int64_t rows = done.affected_rows();
    while (PGresult* extra = PQgetResult(target.native())) PQclear(extra);

    target.exec(
        "UPDATE pgferry.copy_progress SET rows = $4, bytes = $5, finished_at = now() "
        "WHERE name = $1 AND table_name = $2 AND range_start = $3",
        {options_.name, plan.display, std::to_string(range.start), std::to_string(rows),
         std::to_string(bytes)},
        "recording a finished range");
    txn.commit();

    std::lock_guard lock(mutex_);
    plan.ranges[item.range].finished = true;
    ++plan.ranges_done;
    ++plan.result.ranges_copied;
    plan.result.rows += rows;
    plan.result.bytes += bytes;
    report_.rows += rows;
    report_.bytes += bytes;
    ++report_.ranges_copied;
    ++ranges_done_;
    bool table_done = plan.ranges_done == static_cast<int>(plan.ranges.size());
    if (table_done) {
      spdlog::info("initial copy: table={} done rows={} bytes={}", plan.display, plan.result.rows,
                   plan.result.bytes);
    }
    if (options_.progress) {
      CopyProgress progress;
      progress.table = plan.display;
      progress.table_rows = plan.result.rows;
      progress.table_bytes = plan.result.bytes;
      progress.table_ranges_done = plan.ranges_done;
      progress.table_ranges_total = static_cast<int>(plan.ranges.size());
      progress.table_done = table_done;
      progress.total_rows = report_.rows;
      progress.total_bytes = report_.bytes;
      progress.ranges_done = ranges_done_;
      progress.ranges_total = ranges_total_;
      options_.progress(progress);
    }
  }

  std::string source_conninfo_;
  std::string target_conninfo_;
  std::string snapshot_;
  const std::vector<TableInfo>& tables_;
  const CopyOptions& options_;

  std::vector<TablePlan> plans_;
  std::vector<WorkItem> work_;
  std::mutex mutex_;
  std::size_t next_ = 0;
  std::atomic<bool> failed_{false};
  std::exception_ptr first_error_;
  CopyReport report_;
  int ranges_total_ = 0;
  int ranges_done_ = 0;
};

}  // namespace

CopyReport copy_tables(std::string_view source_conninfo, std::string_view target_conninfo,
                       std::string_view snapshot, const std::vector<TableInfo>& tables,
                       const CopyOptions& options) {
  return Copier(source_conninfo, target_conninfo, snapshot, tables, options).run();
}

void drop_copy_progress(const Connection& target, std::string_view name) {
  if (target.exec("SELECT to_regclass('pgferry.copy_progress') IS NOT NULL").scalar() == "t") {
    target.exec("DELETE FROM pgferry.copy_progress WHERE name = $1", {name},
                "dropping the initial copy's record");
  }
  if (target.exec("SELECT to_regclass('pgferry.copy_origin') IS NOT NULL").scalar() == "t") {
    target.exec("DELETE FROM pgferry.copy_origin WHERE name = $1", {name},
                "dropping the initial copy's origin");
  }
}

std::vector<CopyInFlight> copies_in_flight(const Connection& target) {
  auto rows = target.exec(
      "SELECT n.nspname || '.' || c.relname, sum(p.tuples_processed), "
      "sum(p.bytes_processed) FROM pg_stat_progress_copy p "
      "JOIN pg_class c ON c.oid = p.relid JOIN pg_namespace n ON n.oid = c.relnamespace "
      "WHERE p.datid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
      "AND p.command = 'COPY FROM' GROUP BY 1");
  std::vector<CopyInFlight> copies;
  for (int i = 0; i < rows.rows(); ++i) {
    copies.push_back({std::string(rows.get(i, 0)), std::stoll(std::string(rows.get(i, 1))),
                      std::stoll(std::string(rows.get(i, 2)))});
  }
  return copies;
}

}  // namespace pgferry::replication
