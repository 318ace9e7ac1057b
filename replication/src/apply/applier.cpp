// Applier: decoded source transactions → the target. This file is the ChangeSink itself: it
// decides, per change, which part applies it and what each part must send first; the parts
// do the sending.
//
// NOTES
// - Parts, each in its own file, using the pipeline and never this file:
//     pipeline.hpp        the connection in pipeline mode: pending results, flush, sync,
//                         prepared statements, result checks
//     target_tables.hpp   the target side of each source relation version
//     insert_runs.hpp     runs of inserts: COPY text/binary or prepared INSERTs
//     update_batches.hpp  coalesced updates, deletes by key (and inserts meanwhile) sent
//                         set-based per table
//     keyed_changes.hpp   other updates and deletes, one statement each by replica identity
//     group_progress.hpp  grouping, the progress row, applied and durable positions, idle
//     streamed_apply.hpp  the second connection that applies a streamed transaction live
// - Order between parts. An open COPY takes no other statement, and what is held back must
//   reach the target before anything that could observe it: the insert run is sent before
//   any other change of its relation, before any statement (catalog query, batch, truncate,
//   COMMIT) while it copies, and before the batches; the batches before any change that is
//   not an insert, key-preserving update or delete by key of a batchable table (while
//   changes are batched, such inserts join the batch instead of a COPY), before a delete
//   of a key the batch inserted, and before COMMIT.
// - Exactly once. A source transaction whose commit record lies before the applied position
//   is skipped whole (decided at Begin from final_lsn, checked again at Commit with end_lsn).
// - A streamed transaction applied live: this applier commits its open group before each of
//   its blocks and before its commit, so neither connection ever waits for the other's
//   locks; while it is open this session has a lock_timeout, so that a wait caused by a
//   trigger, foreign key or unique index the source does not have ends with an error naming
//   the way out instead of hanging. Its commit raises this applier's applied position at
//   once, so that a pending idle position below it is never written.
// - Stopped at a fence (stop_at_fence), nothing the source committed after it reaches the
//   target: a streamed transaction applied live that commits after the fence is rolled back
//   on the second connection (which asks its first applier at its commit), not committed.
// - Durable means flushed on the target. The fence's group commits with synchronous_commit
//   on whatever the session's setting, so the fence is durable once COMMIT returns; and the
//   progress row read at start (maybe an earlier session's commit with synchronous_commit
//   off, not flushed yet) is flushed first when the target's WAL is not all flushed, before
//   the stream may confirm it. Both cost a WAL flush at a fence or at start, nothing per row.
// - An UPDATE or DELETE that matches no row, and any error from the target, break the
//   applier: every later call throws until it is rebuilt (and resumes from the progress row).
// - Plans. The native apply worker finds each row by one probe of the replica identity
//   index (execReplication.c, RelationFindReplTupleByIndex) and plans nothing. The batched
//   statements join the batch (unnest of its arrays) to the table on the primary key; left to
//   itself the planner picks, from the array's size, a hash join over a scan of the whole
//   table or a merge join that walks the primary key index from its first entry (a batch of
//   10,000 deletes at the end of a 300,000-row table: 164 ms, against 43 ms probing each
//   key), and plans every execution afresh, because a custom plan for a small batch always
//   looks cheaper than the generic one (which guesses 10 elements per array): at the
//   head of the stream, groups of a few rows paid a planning per statement. So the session
//   disables hash and merge joins (every statement the applier sends is a lookup by key, or
//   a catalog query of a few rows) and keeps generic plans: a nested loop over the batch
//   with an index scan per key, planned once per prepared statement.
#include "pgferry/replication/apply/applier.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <iterator>
#include <optional>
#include <string_view>
#include <utility>

#include "group_progress.hpp"
#include "insert_runs.hpp"
#include "keyed_changes.hpp"
#include "pgferry/replication/apply/progress.hpp"
#include "pipeline.hpp"
#include "streamed_apply.hpp"
#include "target_tables.hpp"
#include "update_batches.hpp"

namespace pgferry::replication {

namespace {

using pgoutput::ColumnKind;
using pgoutput::TupleView;

struct Session {
  Lsn applied;                     // the progress record
  std::string replica_role_grant;  // what allows the replica role (for error messages)
};

// The progress row read at start counts as durable (the stream confirms it to the source), but
// an earlier session with synchronous_commit off may have committed it without the target
// flushing it yet: when the target's WAL is not all flushed, the row is rewritten unchanged in
// a synchronous commit, which flushes everything before it (a transaction that writes no WAL
// of its own commits without a flush, whatever synchronous_commit says).
void flush_progress_row(Connection& conn, const std::string& name) {
  auto flushed = conn.exec("SELECT pg_current_wal_flush_lsn() >= pg_current_wal_insert_lsn()",
                           "reading the target's WAL positions");
  if (flushed.get(0, 0) == std::string_view("t")) return;
  Transaction flush(conn);
  conn.exec("SET LOCAL synchronous_commit = on");
  conn.exec("UPDATE pgferry.progress SET applied_lsn = applied_lsn WHERE name = $1", {name},
            "flushing the progress record");
  flush.commit();
  spdlog::debug("apply flushed the target's WAL before resuming from the progress row");
}

// Checks the options, sets the session up (the replica role where the role may set it),
// takes the per-name lock and reads the progress record.
Session open_session(Connection& conn, ApplierOptions& options) {
  static constexpr std::string_view kSyncModes[] = {"on", "remote_apply", "remote_write", "local",
                                                    "off"};
  if (std::find(std::begin(kSyncModes), std::end(kSyncModes), options.synchronous_commit) ==
      std::end(kSyncModes)) {
    throw ConfigError(fmt::format(
        "--synchronous-commit: unknown value \"{}\"; use on, remote_apply, remote_write, local "
        "or off",
        options.synchronous_commit));
  }
  if (options.name.empty()) throw ConfigError("--name must not be empty");
  options.pipeline_max_commands = std::max<std::size_t>(options.pipeline_max_commands, 2);
  options.copy_min_rows = std::max<std::size_t>(options.copy_min_rows, 1);

  conn.exec(fmt::format("SET synchronous_commit = {}", quote_literal(options.synchronous_commit)),
            "setting synchronous_commit");
  // Plans like the native apply worker finds rows: an index probe per key, planned once (see
  // NOTES: plans).
  conn.exec(
      "SELECT set_config('enable_hashjoin', 'off', false), "
      "set_config('enable_mergejoin', 'off', false), "
      "set_config('plan_cache_mode', 'force_generic_plan', false)",
      "setting the planner options of the apply session");
  auto access = conn.set_replica_role();
  if (access.allowed) {
    spdlog::debug("apply session_replication_role=replica");
  } else if (options.take_lock) {
    spdlog::warn(
        "apply session_replication_role=origin: the target role may not set it, so target "
        "triggers and foreign-key actions fire for replicated changes{}",
        options.allow_target_triggers ? " (accepted: --allow-target-triggers)"
                                      : "; a table with them is refused");
  }
  // One applier per name: a second one would apply every change twice.
  if (options.take_lock) {
    conn.exec(fmt::format("SET lock_timeout = '{}s'", options.lock_timeout.count()));
    try {
      conn.exec("SELECT pg_advisory_lock(hashtext('pgferry'), hashtext($1))", {options.name},
                "locking the progress record");
    } catch (const SqlError& e) {
      if (e.sqlstate() != "55P03") throw;
      throw Error(fmt::format(
          "another pgferry run is applying \"{}\" on the target (advisory lock held for {}s); "
          "stop it first, or use a different --name",
          options.name, options.lock_timeout.count()));
    }
    conn.exec("RESET lock_timeout");
  } else {
    // The streamed applier: a lock it waits for this long is taken to be the first
    // applier's (see begin_streamed); the caller then replays the transaction instead.
    conn.exec(fmt::format("SET lock_timeout = '{}s'", options.lock_timeout.count()));
  }

  auto applied = ProgressStore(conn).read(options.name);
  if (!applied) {
    throw Error(fmt::format(
        "the target has no progress record \"{}\" in pgferry.progress: run `pgferry init` (with "
        "the same --name) first",
        options.name));
  }
  if (options.take_lock) flush_progress_row(conn, options.name);
  return {*applied, access.grant_statement()};
}

// Every value is text (or NULL, or unchanged TOAST), one per column of the relation.
void check_tuple(const Relation& relation, TupleView tuple, std::string_view what) {
  if (tuple.size() != relation.columns.size()) {
    throw ProtocolError(
        fmt::format("{} for {} carries {} columns, its Relation message {}", what,
                    relation.qualified_name(), tuple.size(), relation.columns.size()),
        0, 'R');
  }
  for (std::size_t i = 0; i < tuple.size(); ++i) {
    if (tuple[i].kind == ColumnKind::binary) {
      throw Error(fmt::format(
          "{} for {} carries column \"{}\" in binary format; the applier takes text only: start "
          "the stream without the binary option",
          what, relation.qualified_name(), relation.columns[i].name));
    }
  }
}

}  // namespace

struct Applier::Impl {
  Impl(Connection target, ApplierOptions options)
      : conn_(std::move(target)),
        options_(std::move(options)),
        session_(open_session(conn_, options_)),
        pipeline_(conn_.native(), options_, counters_),
        tables_(pipeline_),
        // The streamed applier reports only what its own commits made durable: the row it
        // read may be the first applier's commit with synchronous_commit off, not flushed yet.
        progress_(pipeline_, options_, counters_, session_.applied, options_.take_lock),
        inserts_(pipeline_, options_, counters_),
        batches_(pipeline_, options_, counters_),
        keyed_(pipeline_, counters_),
        streamed_(options_) {
    if (conn_.replica_role()) tables_.under_replica_role();
    if (!conn_.replica_role() && !options_.allow_target_triggers) {
      tables_.refuse_firing(session_.replica_role_grant);
    }
    pipeline_.enter();
  }

  void check_usable() const {
    if (pipeline_.broken()) {
      throw Error("the applier stopped after an error; restart it from the progress record");
    }
  }
  // Sends the insert run and the batches (see NOTES).
  void flush_batches() {
    inserts_.flush();
    batches_.send();
  }
  // `durable`: with synchronous_commit on, whatever the session's setting (a fence).
  void commit_group(bool durable = false) {
    flush_batches();
    progress_.commit(current_.final_lsn, durable);
  }
  // The streamed applier, when its first applier halted at a fence its transaction commits
  // after: nothing of it reaches the target, and no group is left for tick() to commit.
  void roll_back_group() {
    if (!progress_.open()) return;
    flush_batches();
    progress_.roll_back(current_.final_lsn);
  }
  void insert(const Relation& relation, const pgoutput::Insert& insert);
  void update(const Relation& relation, const pgoutput::Update& update);
  void delete_row(const Relation& relation, const pgoutput::Delete& del);
  // SET (or with nullopt RESET) lock_timeout, at the session level, if not so already.
  void set_lock_timeout(std::optional<std::chrono::seconds> timeout);
  // Adds what the streamed applier committed since the last call to the counters and the
  // positions.
  void fold_streamed();

  Connection conn_;
  ApplierOptions options_;
  Session session_;
  apply::ApplyCounters counters_;
  apply::Pipeline pipeline_;
  apply::TargetTables tables_;
  apply::GroupProgress progress_;
  apply::InsertRuns inserts_;
  apply::UpdateBatches batches_;
  apply::KeyedChanges keyed_;
  apply::StreamedApply streamed_;

  // The streamed applier's first applier (nullptr in the first one).
  const Applier* owner_ = nullptr;

  // Source transaction.
  bool in_source_txn_ = false;
  bool skipping_ = false;
  TransactionBegin current_;
  bool lock_timeout_set_ = false;
};

void Applier::Impl::insert(const Relation& relation, const pgoutput::Insert& insert) {
  check_tuple(relation, insert.new_tuple, "INSERT");
  if (inserts_.holds_other(relation)) inserts_.flush();
  const Lsn lsn = current_.final_lsn;
  const apply::TargetTable& table = tables_.table_for(relation, lsn);
  // While updates are being batched, inserts into batchable tables join them (a COPY would
  // leave pipeline mode and wait for every batch sent).
  if (batches_.active() && table.batchable) {
    if (inserts_.holds(relation.id)) inserts_.flush();
    progress_.add_row(batches_.add_insert(table, insert.new_tuple, lsn));
    if (batches_.full()) flush_batches();
    return;
  }
  if (batches_.active()) flush_batches();
  progress_.add_row(inserts_.add(relation, table, insert.new_tuple, lsn));
}

void Applier::Impl::update(const Relation& relation, const pgoutput::Update& update) {
  check_tuple(relation, update.new_tuple, "UPDATE");
  if (update.old_kind != 0) check_tuple(relation, update.old_tuple, "UPDATE (old tuple)");
  // The same relation's inserts come first; and an unmapped relation needs a catalog query,
  // which cannot go while a COPY is open.
  if (inserts_.holds(relation.id) || (inserts_.copying() && !tables_.mapped(relation))) {
    inserts_.flush();
  }
  const Lsn lsn = current_.final_lsn;
  const apply::TargetTable& table = tables_.table_for(relation, lsn);
  if (auto bytes = batches_.add_update(table, update, lsn)) {
    progress_.add_row(*bytes);
    // Bounded memory whatever the size of a source transaction: send what is batched (the
    // same key later goes into a new batch, applied after this one).
    if (batches_.full()) flush_batches();
    return;
  }
  flush_batches();
  progress_.add_row(keyed_.update(relation, table, update, lsn));
}

void Applier::Impl::delete_row(const Relation& relation, const pgoutput::Delete& del) {
  check_tuple(relation, del.old_tuple, "DELETE");
  // As for an update: the relation's inserts first, no catalog query while a COPY is open.
  if (inserts_.holds(relation.id) || (inserts_.copying() && !tables_.mapped(relation))) {
    inserts_.flush();
  }
  const Lsn lsn = current_.final_lsn;
  const apply::TargetTable& table = tables_.table_for(relation, lsn);
  std::size_t bytes = 0;
  auto added = batches_.add_delete(table, del, lsn, bytes);
  if (added == apply::UpdateBatches::Added::send_first) {
    // The key was inserted (or deleted) in the batch: the delete goes after it.
    flush_batches();
    added = batches_.add_delete(table, del, lsn, bytes);
  }
  if (added == apply::UpdateBatches::Added::yes) {
    progress_.add_row(bytes);
    if (batches_.full()) flush_batches();
    return;
  }
  flush_batches();
  progress_.add_row(keyed_.delete_row(table, del, lsn));
}

void Applier::Impl::set_lock_timeout(std::optional<std::chrono::seconds> timeout) {
  if (lock_timeout_set_ == timeout.has_value()) return;
  inserts_.flush();  // an open COPY takes no other statement
  pipeline_.query(timeout ? fmt::format("SET lock_timeout = '{}s'", timeout->count())
                          : std::string("RESET lock_timeout"),
                  {}, current_.final_lsn);
  lock_timeout_set_ = timeout.has_value();
}

void Applier::Impl::fold_streamed() {
  Applier* streamed = streamed_.applier();
  if (!streamed || streamed->in_source_transaction()) {
    if (!streamed && !in_source_txn_) set_lock_timeout(std::nullopt);
    return;
  }
  if (!in_source_txn_) set_lock_timeout(std::nullopt);
  streamed_.fold(counters_);
  progress_.include_applied(streamed->impl_->progress_.applied_lsn());
}

// ----------------------------------------------------------------------------------------------
// ChangeSink

Applier::Applier(Connection target, ApplierOptions options)
    : impl_(std::make_unique<Impl>(std::move(target), std::move(options))) {}

Applier::~Applier() = default;

void Applier::begin_transaction(const TransactionBegin& begin) {
  auto& s = *impl_;
  s.check_usable();
  if (s.in_source_txn_) {
    s.pipeline_.set_broken();
    throw Error(fmt::format("begin of xid={} while xid={} is still open", begin.xid.value,
                            s.current_.xid.value));
  }
  s.in_source_txn_ = true;
  s.current_ = begin;
  // Its commit record lies before what is applied: the whole transaction is on the target.
  // (Unknown while a streamed transaction is applied as it streams: the walsender streams
  // only transactions that commit after the position it was started from.)
  s.skipping_ =
      halted() || (begin.final_lsn.is_valid() && begin.final_lsn < s.progress_.applied_lsn());
  if (s.skipping_) {
    spdlog::debug("skipping applied transaction xid={} lsn={}", begin.xid.value, begin.final_lsn);
    return;
  }
  if (!s.progress_.open()) s.progress_.open_group(s.current_.final_lsn);
}

void Applier::relation(const Relation& relation) {
  auto& s = *impl_;
  s.check_usable();
  if (s.inserts_.holds(relation.id)) s.inserts_.flush();
  if (s.batches_.holds(relation.id)) s.flush_batches();
}

void Applier::insert(const Relation& relation, const pgoutput::Insert& insert) {
  auto& s = *impl_;
  s.check_usable();
  if (s.skipping_) return;
  s.insert(relation, insert);
}

void Applier::update(const Relation& relation, const pgoutput::Update& update) {
  auto& s = *impl_;
  s.check_usable();
  if (s.skipping_) return;
  s.update(relation, update);
}

void Applier::delete_rows(const Relation& relation, const pgoutput::Delete& del) {
  auto& s = *impl_;
  s.check_usable();
  if (s.skipping_) return;
  s.delete_row(relation, del);
}

void Applier::truncate(std::span<const Relation* const> relations, std::uint8_t flags) {
  auto& s = *impl_;
  s.check_usable();
  if (s.skipping_ || relations.empty()) return;
  s.flush_batches();
  std::string sql = "TRUNCATE ";
  const apply::TargetTable* first = nullptr;
  for (std::size_t i = 0; i < relations.size(); ++i) {
    const apply::TargetTable& table = s.tables_.table_for(*relations[i], s.current_.final_lsn);
    if (!first) first = &table;
    if (i) sql += ", ";
    sql += table.qualified;
  }
  if (flags & pgoutput::Truncate::kRestartIdentity) sql += " RESTART IDENTITY";
  if (flags & pgoutput::Truncate::kCascade) sql += " CASCADE";
  s.pipeline_.send_query(sql, {apply::Op::truncate, s.current_.final_lsn, first});
  apply::ApplyCounters::add(s.counters_.relations_truncated, relations.size());
}

void Applier::commit_transaction(const TransactionCommit& commit) {
  auto& s = *impl_;
  s.check_usable();
  if (!s.in_source_txn_) {
    s.pipeline_.set_broken();
    throw Error(fmt::format("commit of xid={} without a begin", commit.xid.value));
  }
  s.in_source_txn_ = false;
  auto fence = std::exchange(noted_fence_, std::nullopt);
  if (s.owner_ && s.owner_->halted()) {
    // Applied as it streamed, committed on the source after the fence the first applier
    // stopped at: roll it back.
    s.skipping_ = false;
    s.roll_back_group();
    spdlog::info("streamed transaction xid={} commit_lsn={} commits after the fence: rolled back",
                 commit.xid.value, commit.commit_lsn);
    return;
  }
  if (halted()) {
    s.skipping_ = false;
    return;
  }
  const Lsn applied = s.progress_.applied_lsn();
  if (!s.current_.final_lsn.is_valid() && commit.end_lsn <= applied) {
    // Applied as it streamed, but its commit lies within what the target has: the
    // walsender never streams such a transaction; refuse rather than apply it twice.
    s.pipeline_.set_broken();
    throw Error(fmt::format(
        "streamed transaction xid={} commit_lsn={} ends at {}, within the applied position {}: "
        "not applying it twice (run with --spool-streamed)",
        commit.xid.value, commit.commit_lsn, commit.end_lsn, applied));
  }
  if (s.skipping_) {
    s.skipping_ = false;
    if (commit.end_lsn > applied) {
      s.pipeline_.set_broken();
      throw Error(fmt::format(
          "transaction xid={} commit_lsn={} ends at {}, past the applied position {} although "
          "it began before it: the progress record does not match this stream",
          commit.xid.value, commit.commit_lsn, commit.end_lsn, applied));
    }
    apply::ApplyCounters::add(s.counters_.transactions_skipped, 1);
    return;
  }
  s.progress_.accept(commit);
  apply::ApplyCounters::add(s.counters_.transactions_applied, 1);
  bool fenced = fence.has_value();
  if (fenced) {
    // Noted before the commit: if it fails in doubt, the caller still knows which progress
    // row means the fence is on the target.
    fence->end_lsn = commit.end_lsn;
    fence_ = std::move(fence);
  }
  if (fenced || s.progress_.bounds_reached()) s.commit_group(fenced);
  if (fenced) {
    spdlog::info("fence id={} lsn={} committed end_lsn={}", fence_->id, fence_->message_lsn,
                 fence_->end_lsn);
  }
}

void Applier::message(const pgoutput::LogicalMessage& message) {
  auto& s = *impl_;
  if (s.options_.fence_name.empty() || !s.in_source_txn_ || s.skipping_) return;
  if (auto id = fence_id_for(message, s.options_.fence_name)) {
    noted_fence_ = Fence{std::move(*id), message.lsn, Lsn::invalid()};
  }
}

void Applier::idle(Lsn wal_end) {
  auto& s = *impl_;
  s.check_usable();
  if (s.in_source_txn_) return;
  s.fold_streamed();  // a streamed transaction committed since is applied, too
  if (s.progress_.open()) {
    // The group is left to the caller's rule (at the head of the stream the agent commits it
    // once it is head_commit old): the walsender sends a keepalive whenever it waits for WAL,
    // between almost every two transactions at the head, and committing here made groups of
    // one or two transactions at 1000 tps. The position is recorded after that commit.
    s.progress_.defer_idle(wal_end);
    return;
  }
  s.progress_.refresh_flushed();
  if (halted()) return;  // the progress row stays at the fence
  s.progress_.idle(wal_end);
}

void Applier::flush() {
  auto& s = *impl_;
  s.check_usable();
  if (s.progress_.open() && !s.in_source_txn_) s.commit_group();
  s.fold_streamed();
}

ChangeSink* Applier::begin_streamed(const TransactionBegin& begin) {
  auto& s = *impl_;
  s.check_usable();
  if (!s.streamed_.enabled() || s.in_source_txn_ || halted()) return nullptr;
  flush();
  Applier* streamed = s.streamed_.open(begin);
  if (!streamed) return nullptr;
  streamed->impl_->owner_ = this;
  auto& inner = streamed->impl_->progress_;
  inner.include_applied(s.progress_.applied_lsn());
  // Neither connection may wait for the other (see NOTES).
  s.set_lock_timeout(s.options_.lock_timeout);
  spdlog::debug("applying streamed transaction xid={} as it streams", begin.xid.value);
  streamed->begin_transaction(begin);
  return streamed;
}

void Applier::streamed_segment() {
  flush();
}

void Applier::streamed_committed() {
  auto& s = *impl_;
  s.check_usable();
  s.fold_streamed();
  // Taken once: a later streamed transaction must not report it again.
  if (Applier* streamed = s.streamed_.applier(); streamed && streamed->fence_) {
    fence_ = std::exchange(streamed->fence_, std::nullopt);
  }
}

void Applier::abort_streamed() {
  auto& s = *impl_;
  if (!s.streamed_.applier()) return;
  // Closing its connection rolls its transaction back; what it committed before counts.
  s.fold_streamed();
  s.streamed_.close();
  // It is replayed here at its commit, if it commits: wait for locks as always.
  s.set_lock_timeout(std::nullopt);
}

void Applier::tick() {
  auto& s = *impl_;
  s.check_usable();
  if (Applier* streamed = s.streamed_.applier()) streamed->tick();
  s.fold_streamed();
  s.inserts_.hand_over();
  if (s.progress_.open() && !s.in_source_txn_ && s.progress_.delay_passed()) s.commit_group();
  if (!s.in_source_txn_) {
    if (auto due = s.progress_.idle_due()) idle(*due);
  }
}

Lsn Applier::resume_lsn() const {
  return impl_->progress_.resume_lsn();
}
Lsn Applier::durable_lsn() const {
  return std::max(impl_->progress_.durable_lsn(), impl_->streamed_.durable_lsn());
}
bool Applier::in_source_transaction() const {
  return impl_->in_source_txn_;
}
bool Applier::group_open() const {
  return impl_->progress_.open();
}
bool Applier::halted() const {
  return fence_ && impl_->options_.stop_at_fence;
}

ApplierCounters Applier::counters() const {
  return impl_->counters_.snapshot();
}

}  // namespace pgferry::replication
