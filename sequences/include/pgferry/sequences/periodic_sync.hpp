// PeriodicSequenceSync: `pgferry run --sync-sequences SECS`, an agent observer
// (replication/agent/agent.hpp) that runs sync_sequences() every interval while the agent
// streams, so that a target sequence is never far behind even before the cutover's final
// sync.
//
// NOTES
// - A failed sync is logged and reported to `on_failure`, never an error that stops
//   replication: the next interval tries again.
// - It opens its own short-lived connections (not the agent's), from update(), which the
//   agent calls after each poll; the first sync is one interval after construction.
#pragma once

#include <chrono>
#include <exception>
#include <functional>
#include <string>

#include "pgferry/replication/agent/agent.hpp"

namespace pgferry::sequences {

class PeriodicSequenceSync final : public replication::AgentObserver {
 public:
  PeriodicSequenceSync(std::string source_conninfo, std::string target_conninfo, std::string name,
                       std::chrono::seconds interval,
                       std::function<void(const std::exception&)> on_failure = {});

  void update(const replication::AgentProgress& progress) override;

 private:
  using Clock = std::chrono::steady_clock;

  std::string source_conninfo_;
  std::string target_conninfo_;
  std::string name_;
  std::chrono::seconds interval_;
  std::function<void(const std::exception&)> on_failure_;
  Clock::time_point last_sync_ = Clock::now();
};

}  // namespace pgferry::sequences
