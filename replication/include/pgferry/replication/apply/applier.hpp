// Applier: the ChangeSink that writes decoded source transactions to the target, exactly
// once, without a round trip per row or per source transaction.
//
//  - libpq pipeline mode: every change is a prepared statement (one per relation version,
//    operation and column set) sent without waiting; results are read as they come back and
//    the backlog of unread results is bounded in bytes and commands.
//  - A run of inserts into one relation (possibly across source transactions) is sent as one
//    COPY ... FROM STDIN in text format once it reaches `copy_min_rows`.
//  - Consecutive source transactions are grouped into one target transaction, bounded by bytes,
//    rows and time; the progress row (pgferry.progress, see progress.hpp) is updated in the
//    same target transaction with the group's last commit end_lsn.
//  - Key-preserving full-row updates of plain tables (no triggers, foreign keys or extra
//    unique indexes) are coalesced per key within the group and sent as one set-based
//    UPDATE per table.
//  - The session runs with session_replication_role = replica when the role may set it, as
//    PostgreSQL's own apply worker does; otherwise a table with user triggers or foreign-key
//    actions is refused unless allow_target_triggers.
//  - On start the progress row is read; a transaction that ends at or before it is skipped.
//  - An UPDATE or DELETE that matches no row, and any error from the target, stops the applier
//    with an error naming the source commit LSN, the relation and the key.
//
// An Applier owns its target connection. After it threw, it is broken: destroy it (the open
// target transaction dies with the connection) and build a new one, which resumes from the
// progress row.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "pgferry/replication/apply/fence.hpp"
#include "pgferry/replication/core/lsn.hpp"
#include "pgferry/replication/core/pg.hpp"
#include "pgferry/replication/decode/change_sink.hpp"

namespace pgferry::replication {

struct ApplierOptions {
  // Names the progress record.
  std::string name = "pgferry";
  // Group bounds: a target transaction is committed at the first source commit after any
  // bound is reached (a source transaction is never split).
  // Large bounds suit a backlog: each commit costs round trips while the stream waits. At
  // the head of the stream `pgferry run` commits as soon as the source goes quiet.
  std::size_t group_max_bytes = 64u << 20;
  std::size_t group_max_rows = 500'000;
  std::chrono::milliseconds group_max_delay{1000};
  // Pipeline backlog bounds: sent commands whose results are not read yet.
  std::size_t pipeline_max_bytes = 1u << 20;
  std::size_t pipeline_max_commands = 4'000;
  // A run of inserts into one relation goes as COPY from this many rows on (COPY leaves the
  // pipeline, which costs a round trip), and is cut into several COPYs at this many bytes.
  std::size_t copy_min_rows = 16;
  std::size_t copy_max_bytes = 8u << 20;
  // synchronous_commit of the target session: on, remote_apply, remote_write, local or off.
  // With off the durable position lags behind the target's WAL flush (see durable_lsn()).
  std::string synchronous_commit = "on";
  // idle(): write the idle position to the progress row at most this often.
  std::chrono::milliseconds idle_progress_interval{1000};
  // How long to wait for another applier of the same name to let go of the target.
  std::chrono::seconds lock_timeout{30};
  // Apply a streamed transaction that streams alone as it arrives (begin_streamed), on a
  // second target connection opened with this conninfo. Empty: streamed transactions are
  // replayed from the spool at their commit.
  std::string streamed_conninfo;
  // False only for that second applier, which works under the first one's advisory lock.
  bool take_lock = true;
  // The target session runs with session_replication_role = replica when its role may set
  // it (Connection::set_replica_role), so user triggers and foreign-key actions do not
  // fire for replicated changes. When it may not, a table with such triggers or actions
  // (apply/target_triggers.hpp) is refused with CheckFailed, unless this is set.
  bool allow_target_triggers = false;
  // A fence for this name (fence.hpp) commits the group at its transaction's commit at
  // once; empty: fences are ignored.
  std::string fence_name;
  // Once that fence is committed, apply nothing more: later transactions and keepalives are
  // ignored (nothing past the fence reaches the target or the progress row), the caller
  // stops, and the next applier resumes right after the fence.
  bool stop_at_fence = false;
};

struct ApplierCounters {
  std::uint64_t rows_inserted = 0;
  std::uint64_t rows_updated = 0;
  std::uint64_t rows_deleted = 0;
  std::uint64_t relations_truncated = 0;
  std::uint64_t transactions_applied = 0;
  std::uint64_t transactions_skipped = 0;
  std::uint64_t groups_committed = 0;  // target transactions
  std::uint64_t copy_batches = 0;
  std::uint64_t binary_copy_batches = 0;  // of copy_batches, in FORMAT binary
  std::uint64_t statements_sent = 0;
};

class Applier final : public ChangeSink {
 public:
  // Takes an open target connection; checks options (ConfigError), takes the per-name
  // advisory lock, reads the progress record (Error if missing: run `pgferry init` first).
  Applier(Connection target, ApplierOptions options);
  ~Applier() override;
  Applier(const Applier&) = delete;
  Applier& operator=(const Applier&) = delete;

  void begin_transaction(const TransactionBegin& begin) override;
  void relation(const Relation& relation) override;
  void insert(const Relation& relation, const pgoutput::Insert& insert) override;
  void update(const Relation& relation, const pgoutput::Update& update) override;
  void delete_rows(const Relation& relation, const pgoutput::Delete& del) override;
  void truncate(std::span<const Relation* const> relations, std::uint8_t flags) override;
  void message(const pgoutput::LogicalMessage& message) override;
  void commit_transaction(const TransactionCommit& commit) override;
  void idle(Lsn wal_end) override;
  // A streamed transaction applied as it streams (see change_sink.hpp), by a second applier
  // on its own connection (options.streamed_conninfo) that commits it, with the progress
  // row, at its Stream Commit. This applier commits its open group before each of its
  // blocks and before its commit, so neither connection ever waits for the other's locks:
  // what commits before the streamed transaction on the source never touches a row it
  // changed (the source would have blocked), and is committed here first.
  ChangeSink* begin_streamed(const TransactionBegin& begin) override;
  void streamed_segment() override;
  void streamed_committed() override;
  void abort_streamed() override;

  // Commits the open target transaction now, if one is open and no source transaction is
  // half-way through. Call before a clean shutdown.
  void flush();
  // Commits the open target transaction if its time bound has passed; call when the stream
  // had nothing to deliver for a while.
  void tick();

  // The applied position read from the progress record at start.
  Lsn resume_lsn() const;
  // The end_lsn of the last source transaction committed (durably, with synchronous_commit
  // on) on the target, by this applier or its streamed one: what the stream may confirm.
  Lsn durable_lsn() const;
  // True between begin_transaction and commit_transaction.
  bool in_source_transaction() const;
  // True while a target transaction is open (changes applied but not committed).
  bool group_open() const;
  // Safe to call from another thread. A streamed transaction's changes count once it
  // committed (after the next flush() or tick()).
  ApplierCounters counters() const;
  // The fence (options.fence_name) whose transaction this applier committed (or was
  // committing when it threw), if any; it is on the target once durable_lsn() or, after an
  // error, the progress row reaches its end_lsn.
  const std::optional<Fence>& fence() const { return fence_; }

 private:
  // With stop_at_fence, after the fence: everything is ignored.
  bool halted() const;

  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::optional<Fence> noted_fence_;  // in the open source transaction
  std::optional<Fence> fence_;        // committed
};

}  // namespace pgferry::replication
