// AgentReporter: what `pgferry run --metrics-listen ADDR` shows on /metrics and /status,
// fed by the agent (replication/agent/agent.hpp) as an observer.
//
// NOTES
// - It lives across the agent's sessions; each session reports its applier's counters from
//   zero, so the reporter adds the deltas since its last update, and the Prometheus counters
//   stay monotonic across reconnects.
// - update() runs after every poll: atomics, and once a second a small JSON document.
// - Ready (GET /ready answers 200) from session_started() until the session is lost or the
//   agent finishes; before the first session, while reconnecting and after the end it answers
//   503 with the state and the reason (the last error). /status always answers 200.
// - Conflicts that recur at one position (AgentRetry::conflicts_at_lsn) are shown in /status
//   (`repeated_failure`: count, bound, lsn, reason, error, fix) and as
//   pgferry_conflicts_at_lsn until the applied position moves.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "pgferry/lagmon/agent_metrics.hpp"
#include "pgferry/replication/agent/agent.hpp"

namespace pgferry::lagmon {

class AgentReporter final : public replication::AgentObserver {
 public:
  // `listen` empty: no HTTP endpoint (the metrics are still kept).
  AgentReporter(std::string name, std::string publication, const std::string& listen);

  void session_started() override;
  void session_lost(const std::string& error) override;
  void retrying(const replication::AgentRetry& retry) override;
  void update(const replication::AgentProgress& progress) override;
  void finished(const replication::AgentResult& result) override;

  // An error that did not interrupt streaming (e.g. a failed periodic sequence sync).
  void count_error() { metrics_.errors.inc(); }
  // The HTTP endpoint's port (0 without one).
  unsigned short port() const;

 private:
  using Clock = std::chrono::steady_clock;
  void publish(const char* state, replication::Lsn applied, replication::Lsn received,
               replication::Lsn wal_end);
  nlohmann::json repeated_failure() const;

  std::string name_;
  std::string publication_;
  MetricsRegistry registry_;
  AgentMetrics metrics_;
  StatusBoard status_;
  std::unique_ptr<HttpServer> server_;
  replication::ApplierCounters last_{};
  std::uint64_t last_streamed_ = 0;  // this session's totals, already counted
  std::uint64_t last_live_ = 0;
  std::uint64_t last_bytes_ = 0;
  std::string last_error_;
  bool ready_ = false;
  std::string not_ready_reason_ = "no session yet";
  std::optional<replication::AgentRetry> conflict_;  // a conflict that recurs at one position
  Clock::time_point started_ = Clock::now();
  Clock::time_point last_status_{};
};

}  // namespace pgferry::lagmon
