// The cutover and the rollback: a state machine that fences writes, marks the fence in the
// stream, waits for the agent to apply up to it, syncs sequences, sets up replication in the
// other direction, switches traffic and unfences, each step within a budget. The report
// (per-step durations, the write window from fence to unfence) is returned, printed by the
// CLI and stored on the target in pgferry.cutover_history.
//
// NOTES
// - Directions. `cutover` moves writes from the source to the target, `rollback` from the
//   target back to the source; the names in the options stay those the user gave (`source`
//   is always the original source). The history table lives on the original target; its last
//   completed row says which direction is current (see current_direction()).
// - The commit point is the traffic switch. Before it, any failure or step over budget
//   aborts: the reverse slot is dropped, a rewritten PgBouncer config is restored and
//   reloaded, the switch command is run again towards the old side, the fence is lifted, the
//   history row says `aborted`, and the agent (stopped at the fence) goes on forward from
//   its progress row: its slot was never touched. After it, the fence is lifted at once (the
//   window ends) and the old direction's slot is dropped, so it holds no WAL and nothing
//   travels back; the progress record of the new direction is written on the old primary at
//   the new slot's position.
// - The new direction's slot is created just before the fence (creating a logical slot
//   waits for the transactions running on that server, which must not happen inside the
//   window). The new direction starts at the new primary's WAL position read once the agent
//   committed the fence: the agent's own writes all lie before it and are skipped (a slot
//   skips what commits before the requested start), so nothing travels back; the first
//   application write on the new primary comes after it.
// - Publications: the new sending side gets a publication FOR TABLE of the tables the old
//   one replicated, never FOR ALL TABLES, which would carry the pgferry schema (progress and
//   history) across.
// - A guard process (the pgferry binary re-run as `cutover-guard`, reading a pipe from us)
//   takes over when we die while fenced: before the `switched` row commits it switches
//   back as the abort does (config, --switch-command with PGFERRY_ABORT=1), after it only
//   lifts the fence (see guard.hpp and Cutover::switch_traffic for the ordering).
// - Re-running after a crash: traffic first goes where the last row says (a dead `running`
//   row: the config entry and --switch-command back to its old primary) and a fence left
//   on is lifted (cutover and guard both killed; the row records the fence kind and the
//   PgBouncer database). Then a `running` row is cleaned up (its reverse slot dropped) and
//   marked aborted, a `switched` one is finished (old slot dropped, progress written,
//   marked completed); then the command proceeds.
// - States of a history row: running → switching (committed before traffic moves) →
//   switched (the point of no return) → completed; running or switching → aborted. A dead
//   run's `switching` row that its guard could not settle is settled by the next run from
//   where writes went since the fence (both slots are kept until then; see
//   settle_switching): only on the new primary → the switch is finished; otherwise undone;
//   on both sides → the run stops and names what to reconcile, unless --settle chooses.
#pragma once

#include <chrono>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "pgferry/cutover/fence.hpp"
#include "pgferry/replication/core/lsn.hpp"
#include "pgferry/replication/core/pg.hpp"

namespace pgferry::cutover {

using replication::Lsn;

enum class Operation { cutover, rollback };
std::string_view to_string(Operation operation);

struct CutoverOptions {
  Operation operation = Operation::cutover;
  std::string source_conninfo;  // the original source
  std::string target_conninfo;  // the original target
  std::string name = "pgferry";
  std::string publication;  // empty: the name
  FenceKind fence = FenceKind::pgbouncer;
  std::string pgbouncer_conninfo;  // admin console
  std::string pgbouncer_config;    // [databases] entry rewritten and RELOADed; empty: not
  std::string pgbouncer_database;  // alias; empty: the dbname of the source conninfo
  std::uint64_t max_lag = 1 << 20;
  std::chrono::milliseconds timeout{60'000};
  std::chrono::milliseconds fence_timeout{5'000};
  std::chrono::milliseconds drain_timeout{10'000};
  std::chrono::milliseconds max_transaction_age{0};  // 0: the fence timeout
  bool terminate_blockers = false;
  std::string switch_command;
  std::int64_t sequence_margin = 0;
  // For a dead run's `switching` row with writes on both sides: "forward" or "back" wins;
  // empty: the run refuses to choose.
  std::string settle;
  // While fenced: row counts of the small published tables on both sides, a sample of keys
  // of the large ones (verify --once --sample).
  bool verify = true;
  // The guard: argv of a process that reads the guard protocol on stdin (see guard.hpp);
  // empty: no guard.
  std::vector<std::string> guard_argv;

  std::string publication_name() const { return publication.empty() ? name : publication; }
};

struct StepReport {
  std::string name;
  std::chrono::microseconds elapsed{0};
  std::chrono::milliseconds budget{0};
  std::string status;  // ok, failed, skipped
  std::string detail;
};

struct CutoverReport {
  std::string id;
  Operation operation = Operation::cutover;
  std::string name;
  bool ok = false;
  std::string failed_step;
  std::string reason;
  std::vector<StepReport> steps;
  std::optional<std::chrono::microseconds> window;  // fence engaged to lifted
  Lsn fence_lsn;                                    // the fence message on the old primary
  Lsn applied_lsn;                                  // the progress row when the wait ended
  Lsn new_slot_lsn;  // where the new direction starts on the new primary
  std::string fence;
  std::string new_primary;  // redacted conninfo
  std::chrono::microseconds drain_wait{0};
  int drain_polls = 0;
  std::size_t sequences_set = 0;
  std::size_t tables_verified = 0;  // small tables whose row counts matched
  std::size_t tables_sampled = 0;   // large tables whose sampled keys matched
  std::size_t keys_sampled = 0;
  std::vector<std::string> notes;  // recovered state, warnings
  // Traffic switched, but whether the `switched` row committed could not be read (the
  // target unreachable): the CLI exits 5 so that it is re-run once the target answers.
  bool switch_unconfirmed = false;
  // Aborted, but traffic is left where the switch put it (the new primary took writes, or
  // the way back failed): the history row stays `switching` until a re-run settles it. The
  // CLI exits 1, not 7: nothing was rolled back.
  bool switch_unsettled = false;

  nlohmann::json to_json() const;
  std::string render_text() const;
};

// Runs the cutover or rollback. Returns the report; ok=false means it aborted: writes go to
// the side they went to before, unfenced, and the CLI exits 7; or, with switch_unsettled,
// traffic stays where the switch put it and the CLI exits 1. Throws ConfigError for bad
// options and errors that happen before anything was touched.
CutoverReport run_cutover(const CutoverOptions& options);

// Which way the replication named `name` runs now, from the history on the original target.
enum class Direction { forward, reverse };
Direction current_direction(const replication::Connection& original_target, std::string_view name);

// The state of one cutover in the history table, when the row exists: running, switching,
// switched, completed, aborted; "dead" for a `running` row and "unsettled" for a `switching`
// one whose process and guard are gone (nobody holds its lock).
std::optional<std::string> cutover_state(const replication::Connection& original_target,
                                         std::string_view id);

// The id of the latest cutover or rollback of `name` when its row says `switching` (its
// outcome undecided: no direction may replicate).
std::optional<std::string> switching_cutover(const replication::Connection& original_target,
                                             std::string_view name);

// The progress record of the reverse direction on the original source, at the reverse slot's
// position recorded in the last completed cutover (idempotent; a no-op when the direction
// is forward). The follower calls it before it starts the reverse agent.
void prepare_direction(const std::string& source_conninfo, const std::string& target_conninfo,
                       std::string_view name);

}  // namespace pgferry::cutover
