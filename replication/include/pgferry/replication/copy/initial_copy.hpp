// The initial copy: the source's tables as of one exported snapshot, copied onto the target
// by N parallel workers, resumable after an interruption.
//
// NOTES
// - Consistency: every worker opens its own source connection and runs
//   `BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '<name>'`,
//   so all of them read exactly the snapshot's state, however long the copy takes and
//   whatever the source's applications write meanwhile. The snapshot comes from the slot
//   (CREATE_REPLICATION_SLOT ... EXPORT_SNAPSHOT) in `pgferry init`, or from
//   pg_export_snapshot() of a held transaction in the tests; the exporting session must
//   stay open until copy_tables() returns.
// - Data path: `COPY (SELECT cols FROM ONLY t WHERE ...) TO STDOUT (FORMAT binary)` on
//   the source, its bytes passed on unparsed to `COPY t (cols) FROM STDIN (FORMAT binary)`
//   on the target (PQgetCopyData → PQputCopyData). The source sends one CopyData message
//   per row; they are regathered into 64 kB messages, so the target backend and the socket
//   handle a message per batch, not per row. Columns are matched by name. Text format is
//   used instead for a table whose column types differ between the sides (a safe widening,
//   see preflight) or that has a type without binary send/receive functions.
// - Splitting: a table larger than split_bytes is copied in ranges of heap blocks,
//   `ctid >= '(a,0)' AND ctid < '(b,0)'`, which PostgreSQL 14+ runs as a TID range scan
//   (reads only those blocks). The last range is open-ended, so rows in blocks added after
//   planning are never missed. Ranges are scheduled largest table first, so one big
//   table does not serialize the copy. Servers before 14 copy each table whole.
// - Resume: the plan and progress live on the target in pgferry.copy_progress, one row a
//   range. A range's COPY and the UPDATE that marks it finished commit in one target
//   transaction, so a range is either copied and marked or neither. Re-running with the
//   same snapshot copies only the unfinished ranges. Re-running with another snapshot
//   (the first one died with its session) keeps fully finished tables and restarts
//   partly copied ones from empty (TRUNCATE on the target) under the new snapshot; the
//   report names the snapshot each table was copied under, so the caller can make the
//   applier skip changes a table already contains.
// - A table copied in one range is emptied (TRUNCATE, inside a savepoint) in the same
//   transaction as its COPY, which then runs with FREEZE: rows frozen and pages
//   all-visible at once, so the post-data index builds and first reads do not dirty every
//   page again to set hint bits, and autovacuum has nothing to freeze later. Skipped when
//   TRUNCATE could do more than empty it (a truncate trigger, a foreign key referring to
//   the table) or the table is not empty any more. Ranges copied in parallel cannot be
//   frozen (FREEZE needs the table created or truncated in the COPY's own transaction).
// - While tables are loaded in ranges, one more target session holds SHARE UPDATE
//   EXCLUSIVE on them, so autovacuum skips them (each committed range would otherwise
//   invite a vacuum of a table still being loaded) and no DDL changes them mid-copy.
// - Target session: synchronous_commit=off (safe: a range and its mark are lost together
//   or kept together), statement_timeout=0, and session_replication_role=replica when
//   the role may set it (Connection::set_replica_role: superuser or a parameter grant),
//   so triggers and foreign keys do not fire during the copy, as in PostgreSQL's own
//   table synchronization.
// - A table without columns is copied with no column list (rows of zero fields); one
//   whose target has columns the source lacks cannot be (CheckFailed names it).
// - A table without a progress row must be empty on the target; otherwise copy_tables()
//   throws CheckFailed before copying anything.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

#include "pgferry/replication/core/pg.hpp"
#include "pgferry/replication/core/table_scope.hpp"

namespace pgferry::replication {

// Reported after every finished range (from a worker thread; calls are serialized).
struct CopyProgress {
  std::string table;  // schema.name
  std::int64_t table_rows = 0;
  std::int64_t table_bytes = 0;
  int table_ranges_done = 0;  // includes ranges finished by an earlier run
  int table_ranges_total = 0;
  bool table_done = false;
  std::int64_t total_rows = 0;   // this run
  std::int64_t total_bytes = 0;  // this run, COPY data bytes
  int ranges_done = 0;           // all tables, including earlier runs
  int ranges_total = 0;
};

struct CopyOptions {
  // Names the progress record (--name).
  std::string name = "pgferry";
  int jobs = 4;
  // Tables whose main fork is larger are copied in block ranges of about this size.
  std::int64_t split_bytes = std::int64_t{256} << 20;
  std::function<void(const CopyProgress&)> progress;
  // A stop request makes workers abandon their current range (rolled back) and return;
  // copy_tables() then returns with complete = false.
  std::stop_token stop;
};

enum class TableCopyStatus {
  copied,     // copied (or its remaining ranges copied) by this run
  restarted,  // partly copied under another snapshot: emptied and copied again
  skipped,    // finished by an earlier run
  pending,    // not finished: the run was stopped
};
std::string_view to_string(TableCopyStatus status);

struct TableCopyResult {
  std::string table;     // schema.name
  std::string snapshot;  // the snapshot its rows come from
  TableCopyStatus status = TableCopyStatus::pending;
  bool binary = true;  // COPY format used
  int ranges = 0;
  int ranges_copied = 0;  // by this run
  std::int64_t rows = 0;  // copied by this run
  std::int64_t bytes = 0;
};

struct CopyReport {
  bool complete = false;  // every table finished (this run or earlier)
  std::vector<TableCopyResult> tables;
  std::int64_t rows = 0;
  std::int64_t bytes = 0;
  int ranges_copied = 0;
  int ranges_skipped = 0;          // finished by an earlier run
  bool triggers_disabled = false;  // session_replication_role = replica was allowed
  std::chrono::milliseconds elapsed{0};
};

// Copies `tables` (as listed by list_tables(); partitioned parents and unlogged tables are
// ignored, leaves carry the rows) from the source as of `snapshot` onto the target.
// Throws the first worker's error (ConnectionError/SqlError with its side) after stopping
// the others; what finished stays recorded and a re-run resumes from it.
CopyReport copy_tables(std::string_view source_conninfo, std::string_view target_conninfo,
                       std::string_view snapshot, const std::vector<TableInfo>& tables,
                       const CopyOptions& options = {});

// Removes the copy record and copy origin of `name` (for cleanup); the tables' rows stay.
void drop_copy_progress(const Connection& target, std::string_view name);

// A COPY FROM running on the target now, summed per table: what a progress display adds
// to the finished ranges while a range is in flight.
struct CopyInFlight {
  std::string table;  // schema.name
  std::int64_t rows = 0;
  std::int64_t bytes = 0;
};
// The COPY FROM commands in the target's current database (pg_stat_progress_copy).
std::vector<CopyInFlight> copies_in_flight(const Connection& target);

}  // namespace pgferry::replication
