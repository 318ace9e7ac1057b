// Setting up a replication pair, and taking it down again: `pgferry init` creates what is
// missing, idempotently — the publication, the logical slot (pgoutput) with an exported
// snapshot, the progress record on the target at the slot's consistent point — and copies
// the data from the slot's snapshot with parallel workers; `pgferry cleanup` drops them.
//
// NOTES
// - Order matters: the publication exists before the slot, so that pgoutput finds it for
//   every change the slot will decode. The preflight (check/preflight.hpp) runs first and
//   a fatal finding stops init (InitOutcome::refused, nothing created), except what init
//   itself fixes (a missing publication or pgferry schema; missing target tables with
//   `schema`).
// - The slot is created on a replication connection (CREATE_REPLICATION_SLOT ... SNAPSHOT
//   'export') that stays open, untouched, until the copy ends: the exported snapshot lives
//   as long as that connection runs no other command. Every copy worker imports it.
// - The progress record is written only once the copy is complete. Its existence means
//   "initialized": `run` refuses to start without it (so it never applies onto half a
//   copy, and never consumes the slot an unfinished init may still need), and a re-run of
//   a finished init changes nothing.
// - What "resume" covers:
//     * within one run, a lost worker connection (or a source/target hiccup that leaves
//       the replication connection alive) retries the copy with the same snapshot:
//       finished ranges are not copied again (InitOptions::copy_attempts in all);
//     * after the process died (SIGKILL, crash, the replication connection lost), the
//       snapshot is gone. A re-run drops the old, never-consumed slot, creates a new one
//       with a new snapshot, and keeps a finished table only when the old slot proves no
//       change reached it between the two consistent points; every other table is
//       emptied and copied again under the new snapshot. Nothing is lost or applied
//       twice; what is re-copied is the price (see initial_copy_resume.hpp).
// - `schema`: the pre-data half of the source's schema is restored for the tables missing
//   on the target before the copy, the post-data half (indexes, constraints) after it
//   (initial_copy_schema.hpp). The post-data intent is recorded in the copy origin before
//   the pre-data restore, so a re-run after a crash still restores it.
// - `no_data` keeps its first behaviour: publication FOR ALL TABLES, slot and progress
//   record only; no preflight and no copy (run `pgferry check --allow-nonempty` first).
// - Stopping: the library owns no signal handler. request_stop() (an atomic flag, safe
//   from a signal handler) makes the copy workers abandon their current range and run()
//   return InitOutcome::stopped; a re-run resumes. Requested before the copy, init stops
//   before it creates the slot; after the copy, it finishes (the progress record and the
//   post-data half are short and make the run complete).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "pgferry/replication/check/preflight.hpp"
#include "pgferry/replication/copy/initial_copy.hpp"
#include "pgferry/replication/core/lsn.hpp"
#include "pgferry/replication/core/table_scope.hpp"

namespace pgferry::replication {

struct InitOptions {
  std::string source_conninfo;  // normal (non-replication) conninfo of the source
  std::string target_conninfo;
  std::string name = "pgferry";  // slot, progress and copy records
  std::string publication;       // empty: the name
  bool no_data = false;          // publication FOR ALL TABLES, slot, progress record only
  bool schema = false;           // restore the missing tables' schema with pg_dump/psql
  int jobs = 4;                  // parallel copy workers, 1..64
  // --table / --exclude-table patterns (table_scope.hpp); both empty: every table, and
  // the publication is FOR ALL TABLES.
  std::vector<std::string> tables;
  std::vector<std::string> excluded_tables;
  // Tables larger than this are copied in block ranges; 0: about four ranges per job
  // over the whole copy, between 16 MB and 1 GB a range.
  std::int64_t split_bytes = 0;
  std::string pg_bindir;                     // pg_dump and psql for `schema`
  std::string maintenance_work_mem = "1GB";  // post-data session; "0" or "": the server's
  int copy_attempts = 3;                     // copy attempts within one run
  // Target triggers and foreign-key actions that would fire again are warnings in the
  // preflight, not fatal (check/preflight.hpp).
  bool allow_target_triggers = false;
};

// Told what init does, for a progress display. Every method has an empty default.
class InitObserver {
 public:
  virtual ~InitObserver() = default;
  // A copy attempt starts: the tables in scope (as listed by list_tables()) and those
  // (schema.name) finished by an earlier run, which this attempt does not copy.
  virtual void copy_started(const std::vector<TableInfo>& /*tables*/,
                            const std::vector<std::string>& /*finished*/) {}
  // After every finished range; from the copy's worker threads, calls serialized.
  virtual void copy_progress(const CopyProgress& /*progress*/) {}
  // The attempt ended: copied everything, was stopped, or failed (then another attempt
  // may follow).
  virtual void copy_ended() {}
};

enum class InitOutcome {
  initialized,          // copied (or, with no_data, set up): the progress record exists
  already_initialized,  // the progress record existed: nothing copied
  refused,              // a fatal preflight finding: nothing created (see InitResult::check)
  stopped,              // request_stop() during the copy: a re-run resumes
};

struct InitSchemaResult {
  std::size_t pre_data_tables = 0;  // tables created by the pre-data restore (0: all existed)
  bool post_data_restored = false;  // indexes and constraints restored by this run
};

struct InitResult {
  InitOutcome outcome = InitOutcome::initialized;
  std::string name;
  std::string publication;
  bool publication_created = false;
  bool publication_altered = false;  // tables in scope added to an existing publication
  bool slot_created = false;
  bool progress_created = false;
  Lsn consistent_point;  // the slot's (with no_data: its creation or confirmed position)
  Lsn applied_lsn;       // the progress record's
  CheckReport check;     // the preflight (not run with no_data)
  std::optional<InitSchemaResult> schema;  // with InitOptions::schema
  // Resume: finished tables kept from an earlier snapshot, and those copied again (why).
  std::vector<std::string> kept;
  std::vector<std::string> recopied;
  std::string recopy_reason;
  CopyReport copy;  // this run's copy (empty unless the copy ran)
  std::chrono::duration<double> elapsed{0};
};

class Init {
 public:
  explicit Init(InitOptions options, InitObserver* observer = nullptr);
  Init(const Init&) = delete;
  Init& operator=(const Init&) = delete;

  // Runs init; blocks. Throws ConfigError on bad options or a foreign slot of that name,
  // CheckFailed when the state cannot be continued safely, the copy's errors after the
  // last attempt.
  InitResult run();
  // Thread- and async-signal-safe.
  void request_stop() noexcept { stop_requested_.store(true, std::memory_order_relaxed); }

 private:
  InitResult run_no_data();
  InitResult run_with_data();

  InitOptions options_;
  InitObserver* observer_;
  std::atomic<bool> stop_requested_{false};
};

// What cleanup dropped; each is dropped only if it exists.
struct CleanupResult {
  bool slot_dropped = false;
  bool publication_dropped = false;
  bool progress_dropped = false;
};

// Drops the slot `name`, the publication and the progress and copy records of `name`.
// Safe to re-run. Throws Error when the slot is in use (by `pgferry run`).
CleanupResult cleanup(const Connection& source, const Connection& target, std::string_view name,
                      std::string_view publication);

}  // namespace pgferry::replication
