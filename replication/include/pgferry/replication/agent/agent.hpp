// Agent: the loop around the hot path that makes `pgferry run` a long-running agent.
// Streams the slot from the target's progress record, applies every transaction exactly
// once, confirms to the source only what the target committed, survives restarts of either
// server, and stops at a given LSN, at a cutover fence (apply/fence.hpp) or on request.
// `run`, the cutover, the demo and the tests drive this same class.
//
// Metrics, /status and the periodic sequence sync attach from above through AgentObserver,
// so that this library depends on neither lagmon nor sequences.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "pgferry/replication/apply/applier.hpp"
#include "pgferry/replication/apply/fence.hpp"
#include "pgferry/replication/core/lsn.hpp"

namespace pgferry::replication {

struct AgentOptions {
  std::string source_conninfo;  // normal (non-replication) conninfo of the source
  std::string target_conninfo;
  std::string name = "pgferry";  // slot and progress record
  std::string publication;       // empty: the name
  // Group bounds, synchronous_commit, lock timeout, ...; name, fence_name, stop_at_fence and
  // streamed_conninfo are set by the agent from the options here.
  ApplierOptions applier;
  // How often the applied position is reported to the source.
  std::chrono::milliseconds status_interval{1000};
  // At idle (nothing of ours in the stream, e.g. only another database writes): ask the
  // walsender for a keepalive after this much quiet, and move the progress row to its
  // position at most this often, so that the applied position follows within about twice
  // this. Overrides applier.idle_progress_interval.
  std::chrono::milliseconds idle_interval{100};
  // At the head of the stream, an open group is committed once everything received is
  // applied and the group is this old (0: at once), or nothing arrived for this long.
  std::chrono::milliseconds head_commit{5};
  // pgoutput protocol version; nullopt: the highest the source speaks.
  std::optional<int> protocol_version;
  // Stream large in-progress transactions (else the source sends them at commit).
  bool streaming = true;
  // Apply a streamed transaction only at its commit, from the spool (else as it streams, on
  // a second target connection, when no other one streams).
  bool spool_streamed = false;
  // Stop once everything committed on the source at or before it is applied.
  std::optional<Lsn> until;
  // Stop at a fence for this name: its transaction committed, nothing after it applied.
  // Not with `until`: its contract is everything up to that position (a fence before it,
  // e.g. of an aborted cutover, must not end it early).
  bool stop_at_fence = true;
  // Give up after this long without a successful reconnect.
  std::chrono::seconds reconnect_timeout{600};
  // Stop (exit 1) after this many conflicts in a row (classify_error's `conflict`: lock or
  // statement timeout, deadlock, serialization failure) with the applied position unmoved;
  // 0: retry them forever. From the third on, each is logged as an error with its fix.
  unsigned max_retries_same_lsn = 30;
  // Where streamed transactions are spooled; empty: <temp>/pgferry-spool-<name>.
  std::filesystem::path spool_dir;
};

enum class AgentOutcome { reached_until, fenced, stopped };

struct AgentResult {
  AgentOutcome outcome = AgentOutcome::stopped;
  Lsn resumed_from;                 // the progress record when the last session started
  Lsn applied;                      // durable on the target (and confirmed to the source)
  ApplierCounters counters;         // of the last session
  std::uint64_t streamed = 0;       // streamed transactions committed, last session
  std::uint64_t streamed_live = 0;  // of those, applied as they streamed
  std::optional<Fence> fence;       // with outcome fenced
};

// What an observer sees after every poll of a session (counters are the session's totals).
struct AgentProgress {
  ApplierCounters counters;
  Lsn durable;                       // committed on the target, confirmed to the source
  Lsn received;                      // highest source WAL position received
  Lsn server_wal_end;                // the source's WAL end as of its last keepalive
  std::uint64_t spooled_bytes = 0;   // streamed transactions waiting for their commit
  std::uint64_t received_bytes = 0;  // pgoutput payload bytes
  std::uint64_t streamed = 0;        // streamed transactions committed
  std::uint64_t streamed_live = 0;   // of those, applied as they streamed
};

// The agent is about to retry after an error (told after session_lost).
struct AgentRetry {
  std::string error;
  std::string reason;             // classify_error's short reason
  std::string fix;                // what clears it, when it keeps coming back
  Lsn applied;                    // the position the next session resumes from
  unsigned conflicts_at_lsn = 0;  // conflicts in a row at `applied` (0: not a conflict)
  unsigned max_conflicts = 0;     // the bound that stops the agent (0: none)
  std::chrono::milliseconds wait{0};
};

// Called on the agent's thread; keep update() cheap (it runs after every poll, every 20 to
// 100 ms). An exception from an observer ends run().
class AgentObserver {
 public:
  virtual ~AgentObserver() = default;
  // Both connections are up and streaming.
  virtual void session_started() {}
  // A connection was lost; the agent reconnects after a backoff.
  virtual void session_lost(const std::string& /*error*/) {}
  virtual void retrying(const AgentRetry& /*retry*/) {}
  virtual void update(const AgentProgress& /*progress*/) {}
  // run() returns `result`.
  virtual void finished(const AgentResult& /*result*/) {}
};

// Hands every call on to several observers, in order.
class AgentObservers final : public AgentObserver {
 public:
  explicit AgentObservers(std::vector<AgentObserver*> observers)
      : observers_(std::move(observers)) {}
  void session_started() override;
  void session_lost(const std::string& error) override;
  void retrying(const AgentRetry& retry) override;
  void update(const AgentProgress& progress) override;
  void finished(const AgentResult& result) override;

 private:
  std::vector<AgentObserver*> observers_;
};

class Agent {
 public:
  // Checks the options (ConfigError); does not connect yet.
  explicit Agent(AgentOptions options, AgentObserver* observer = nullptr);
  Agent(const Agent&) = delete;
  Agent& operator=(const Agent&) = delete;

  // Blocks until the outcome; retries what classify_error() (core/retry.hpp) calls
  // retryable, with exponential backoff and jitter (giving up after reconnect_timeout without
  // a session); any other error ends it (thrown, a SqlError with its fix in the message).
  AgentResult run();
  // Thread- and async-signal-safe: run() commits the open group if no source transaction is
  // half-way, sends a final status update and returns `stopped`.
  void request_stop() noexcept { stop_.store(true); }
  bool stop_requested() const noexcept { return stop_.load(); }

 private:
  struct Session;
  AgentOutcome run_session(Session& session, bool& connected);
  ApplierOptions applier_options() const;
  void check_source(Lsn progress) const;

  AgentOptions options_;
  AgentObserver* observer_;
  AgentObserver none_;
  std::atomic<bool> stop_{false};
};

static_assert(std::atomic<bool>::is_always_lock_free, "request_stop must be signal-safe");

}  // namespace pgferry::replication
