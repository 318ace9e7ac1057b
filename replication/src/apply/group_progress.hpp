// Grouping and progress: which source transactions share a target transaction, the
// progress row written in it, the applied and durable positions, and idle progress writes.
//
// NOTES
// - A target transaction (BEGIN ... progress UPDATE, COMMIT) holds whole source
//   transactions only, so the target only ever shows states the source had at a commit, and
//   the progress row always describes exactly what is committed beside it. It commits at
//   the first source commit after a bound (bytes, rows, time) is reached (bounds_reached()).
// - COMMIT is sent only once every earlier result was read and checked (a zero-row UPDATE is
//   no server error, and a COMMIT already in the pipeline would make it permanent), so a
//   group costs two round trips, whatever the number of rows and source transactions in it.
//   The caller sends whatever it holds back (insert run, update batches) before commit().
// - The applied position: the end of the last source transaction accepted (committed or in
//   the open group), or of an idle stretch recorded; a transaction ending before it is on
//   the target already. The durable position: what is committed (and, with
//   synchronous_commit=off, flushed) on the target, what the stream may confirm.
// - synchronous_commit=off: a COMMIT returns before the target flushed it, so each commit is
//   followed by a query of the target's WAL insert and flush positions, and the durable
//   position only moves past a group once the target flushed the WAL that holds it. A
//   group committed with `durable` (a fence) sets synchronous_commit on for its COMMIT:
//   durable once it returns, and with it every group before.
// - Idle: with nothing of ours pending, the walsender's position is written to the progress
//   row (so that lag reaches zero), at most every idle_progress_interval; a position held
//   back by that rate limit is written later by idle_due() / idle(), unless something
//   applied meanwhile already covers it (the progress row never moves back).
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <string_view>
#include <utility>

#include "pgferry/replication/apply/applier.hpp"
#include "pgferry/replication/decode/change_sink.hpp"
#include "pipeline.hpp"

namespace pgferry::replication::apply {

class GroupProgress final : public ResultCheck {
 public:
  using Clock = std::chrono::steady_clock;

  // `applied`: the progress row read at start. `durable`: whether it is known to be durable
  // (not for the streamed applier, which may read the first one's unflushed commit).
  GroupProgress(Pipeline& pipeline, const ApplierOptions& options, ApplyCounters& counters,
                Lsn applied, bool durable);

  Lsn resume_lsn() const { return resume_lsn_; }
  Lsn applied_lsn() const { return applied_lsn_; }
  Lsn durable_lsn() const { return Lsn{durable_lsn_.load()}; }
  bool open() const { return open_; }

  // BEGIN, for the source transaction `commit_lsn`.
  void open_group(Lsn commit_lsn);
  // One row of the open group, `bytes` long.
  void add_row(std::size_t bytes) {
    ++rows_;
    bytes_ += bytes;
  }
  // A source transaction of the open group committed.
  void accept(const TransactionCommit& commit);
  // A bound of the open group is reached: commit at this source commit.
  bool bounds_reached() const {
    return rows_ >= options_.group_max_rows || bytes_ >= options_.group_max_bytes || delay_passed();
  }
  bool delay_passed() const { return Clock::now() - started_ >= options_.group_max_delay; }
  // Writes the progress row and commits the group (`commit_lsn`: the last source
  // transaction, to name in an error). `durable`: with synchronous_commit on whatever the
  // session's setting, so the group (and all before it) is durable once this returns.
  void commit(Lsn commit_lsn, bool durable = false);
  // Rolls the open group back (nothing of it reaches the target or the progress row).
  void roll_back(Lsn commit_lsn);
  // Everything up to `lsn` is applied elsewhere (by the streamed applier, committed).
  void include_applied(Lsn lsn);
  // synchronous_commit=off: moves the durable position to what the target has flushed.
  void refresh_flushed();
  // With no source transaction and no group open: records `wal_end` (see NOTES).
  void idle(Lsn wal_end);
  // `wal_end` arrived while a group is open: idle_due() returns it once the group is
  // committed and the idle interval has passed (unless the group covers it).
  void defer_idle(Lsn wal_end) { pending_idle_ = std::max(pending_idle_, wal_end); }
  // A position idle() held back that is due now.
  std::optional<Lsn> idle_due() const {
    if (!pending_idle_.is_valid() ||
        Clock::now() - last_idle_write_ < options_.idle_progress_interval) {
      return std::nullopt;
    }
    return pending_idle_;
  }

  // The progress row must still exist.
  void check(const Pending& pending, const Result& result) override;

 private:
  // Sends `sql` (no parameters), prepared on its first use: BEGIN and COMMIT, sent per group,
  // are parsed once per session, as the progress row's UPDATE is.
  void send_fixed(std::string_view sql, const Command& command);
  void write_progress(Lsn lsn, std::optional<PgTimestamp> commit_time, Lsn commit_lsn);
  void refresh_durable(Lsn target_insert, Lsn target_flush);
  void refresh_durable(const Result& position);
  // Syncs what was sent (a COMMIT, or an idle progress write outside a transaction) and
  // moves the durable position to `end` once the target has it (see NOTES).
  void sync_durable(Lsn end, Lsn commit_lsn);

  Pipeline& pipeline_;
  const ApplierOptions& options_;
  ApplyCounters& counters_;
  bool async_commit_;

  Lsn resume_lsn_;
  Lsn applied_lsn_;
  std::atomic<std::uint64_t> durable_lsn_{0};

  bool open_ = false;
  Clock::time_point started_;
  std::size_t bytes_ = 0;
  std::size_t rows_ = 0;
  Lsn end_lsn_;
  PgTimestamp commit_time_;
  std::uint64_t transactions_ = 0;

  Clock::time_point last_idle_write_{};
  // The newest keepalive position not yet recorded because of the idle rate limit or an open
  // group; tick() records it once the interval has passed and the group is committed (the
  // walsender may send no further keepalive).
  Lsn pending_idle_;
  // synchronous_commit=off: (target WAL position of a commit, source end_lsn it covers).
  std::deque<std::pair<Lsn, Lsn>> unflushed_;
  Lsn last_commit_end_;
};

}  // namespace pgferry::replication::apply
