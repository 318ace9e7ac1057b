// Lag sampling: where the source is, where the target has applied to, and what the slot
// holds back — one round trip to each side per sample.
//
// NOTES
// Lag in bytes is source position − applied position, where the source position is
// pg_current_wal_lsn() and the applied position is the end LSN of the last source commit
// stored in the target's progress record (written in the same transaction as the changes,
// see replication/progress). At idle the agent advances the applied position from the
// walsender's keepalives, so the lag reaches zero (less than one WAL page) instead of
// growing with WAL written by other databases or by checkpoints.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "pgferry/replication/core/lsn.hpp"
#include "pgferry/replication/core/pg.hpp"

namespace pgferry::lagmon {

using replication::Lsn;
using Clock = std::chrono::system_clock;

// What the agent is doing, as far as the two servers tell.
enum class AgentState {
  streaming,        // the slot is active: an agent is connected
  stopped,          // slot exists, nobody connected
  no_slot,          // the slot does not exist on the source
  not_initialized,  // no progress record on the target
};
std::string_view to_string(AgentState state);

struct LagSample {
  Clock::time_point taken_at;
  Lsn source_lsn;                          // pg_current_wal_lsn() on the source
  std::optional<Lsn> applied_lsn;          // progress record on the target
  std::optional<Lsn> confirmed_flush_lsn;  // slot
  std::optional<Lsn> restart_lsn;          // slot
  bool slot_exists = false;
  bool slot_active = false;
  std::optional<int> active_pid;
  std::string wal_status;                             // slot's wal_status (reserved, extended, ...)
  std::optional<Clock::time_point> last_commit_time;  // source commit time of the last applied
  std::optional<Clock::time_point>
      progress_updated_at;  // when the record last moved (target clock)
  std::chrono::microseconds source_rtt{0};
  std::chrono::microseconds target_rtt{0};

  AgentState state() const;
  // source_lsn − applied_lsn, never negative (the two are read a moment apart).
  std::optional<std::uint64_t> lag_bytes() const;
  // source_lsn − restart_lsn: WAL the slot keeps the source from recycling.
  std::optional<std::uint64_t> retained_bytes() const;
};

// Catch-up rate and ETA from two consecutive samples.
struct LagTrend {
  double applied_bytes_per_second = 0;      // how fast the applied position moves
  double lag_change_per_second = 0;         // negative while catching up
  std::optional<std::chrono::seconds> eta;  // to zero lag, when catching up
};
LagTrend trend(const LagSample& previous, const LagSample& current);

class LagSampler {
 public:
  // `name` is the agent's name: the progress record's key and the slot name.
  LagSampler(std::string source_conninfo, std::string target_conninfo, std::string name);
  // Throws ConnectionError (with the side) when a server cannot be reached.
  LagSample sample();

 private:
  void sample_source(LagSample& sample);
  void sample_target(LagSample& sample);

  std::string source_conninfo_;
  std::string target_conninfo_;
  std::string name_;
  replication::Connection source_;
  replication::Connection target_;
};

// `pgferry lag --watch`: a sample every interval, each with its trend against the previous
// one. A sample that fails with ConnectionError (a server restarting) is logged and the
// watch goes on; the next sample has no trend.
class LagWatch {
 public:
  using Handler = std::function<void(const LagSample&, const std::optional<LagTrend>&)>;
  // `count`: stop after this many samples (0: until request_stop()).
  LagWatch(LagSampler& sampler, std::chrono::duration<double> interval, long count = 0)
      : sampler_(&sampler), interval_(interval), count_(count) {}
  void run(const Handler& on_sample);
  // Thread- and async-signal-safe.
  void request_stop() noexcept { stop_requested_.store(true, std::memory_order_relaxed); }

 private:
  LagSampler* sampler_;
  std::chrono::duration<double> interval_;
  long count_;
  std::atomic<bool> stop_requested_{false};
};

// Parses a PostgreSQL timestamptz text in ISO style ("2026-11-21 06:14:45.123456+00").
std::optional<Clock::time_point> parse_timestamptz(std::string_view text);

}  // namespace pgferry::lagmon
