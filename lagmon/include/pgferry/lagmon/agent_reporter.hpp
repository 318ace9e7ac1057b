// AgentReporter: what `pgferry run --metrics-listen ADDR` shows on /metrics and /status,
// fed by the agent (replication/agent/agent.hpp) as an observer.
//
// NOTES
// - It lives across the agent's sessions; each session reports its applier's counters from
//   zero, so the reporter adds the deltas since its last update, and the Prometheus counters
//   stay monotonic across reconnects.
// - update() runs after every poll: atomics, and once a second a small JSON document.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
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
  void update(const replication::AgentProgress& progress) override;
  void finished(const replication::AgentResult& result) override;

  // An error that did not interrupt streaming (e.g. a failed periodic sequence sync).
  void count_error() { metrics_.errors.inc(); }

 private:
  using Clock = std::chrono::steady_clock;
  void publish(const char* state, replication::Lsn applied, replication::Lsn received,
               replication::Lsn wal_end);

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
  Clock::time_point started_ = Clock::now();
  Clock::time_point last_status_{};
};

}  // namespace pgferry::lagmon
