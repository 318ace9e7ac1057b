// The live streamed connection: a streamed transaction that streams alone is applied as it
// arrives, by a second applier on a second target connection (options.streamed_conninfo),
// which commits it, with the progress row, at its Stream Commit.
//
// NOTES
// - The second applier is a complete Applier of its own (the public class, never this
//   applier's state), opened on first use without taking the advisory lock (it works under
//   the first one's) and with group_max_rows 0 (it commits at its one transaction's commit);
//   it is kept for the next streamed transaction after a commit and dropped, which rolls its
//   transaction back, on an abort.
// - No second connection (connection limits): the caller replays the transaction from the
//   spool at its commit instead (open() returns nullptr).
// - What it commits is counted into the first applier's counters by fold(), and its durable
//   position is the highest it reported there (only its own flushed commits).
// - The first applier commits its open group before each of its blocks and before its
//   commit and sets a lock_timeout meanwhile: that ordering is the first applier's business.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

#include "pgferry/replication/apply/applier.hpp"
#include "pipeline.hpp"

namespace pgferry::replication::apply {

class StreamedApply {
 public:
  explicit StreamedApply(const ApplierOptions& options) : options_(options) {}

  // Streamed transactions may be applied as they stream.
  bool enabled() const { return !options_.streamed_conninfo.empty(); }
  // The second applier, opened if not yet; nullptr when there is no second connection.
  Applier* open(const TransactionBegin& begin);
  // The second applier, if open.
  Applier* applier() const { return applier_.get(); }
  // Adds what the second applier committed since the last call to `counters`.
  void fold(ApplyCounters& counters);
  // Drops the second applier (rolling back its open transaction).
  void close() { applier_.reset(); }
  Lsn durable_lsn() const { return Lsn{durable_lsn_.load()}; }

 private:
  const ApplierOptions& options_;
  std::unique_ptr<Applier> applier_;
  ApplierCounters folded_{};  // its counters already added
  std::atomic<std::uint64_t> durable_lsn_{0};
};

}  // namespace pgferry::replication::apply
