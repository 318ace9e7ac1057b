// The follower: runs the agent of a name in whichever direction is current, across cutovers
// and rollbacks. `pgferry run` drives it, so the process that replicated source → target
// before a cutover is the one that replicates target → source after it (and back again after
// a rollback), without anybody starting it.
//
// NOTES
// - Direction comes from pgferry.cutover_history on the original target (current_direction).
//   Before each agent starts, prepare_direction() makes sure the progress record of that
//   direction exists at the new slot's position.
// - When the agent stops at a fence, the follower waits for that cutover's outcome in the
//   history: completed or switched → the other direction; aborted, or the cutover process
//   gone (its row `running` but its lock free) → the same direction again, from the progress
//   row, which is at the fence's end (the fence is not seen twice). While the row says
//   `switching` (traffic may be half switched) it keeps waiting, even with the cutover and
//   its guard gone, until a re-run settles it: neither slot is read meanwhile, so the re-run
//   can see where writes went. The same holds when it starts (or restarts) while the latest
//   row of its name says `switching`. A fence that no cutover
//   recorded (someone emitted it by hand) ends run() with the agent's `fenced` result.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <optional>
#include <string>

#include "pgferry/replication/agent/agent.hpp"

namespace pgferry::cutover {

struct FollowOptions {
  // The agent's options with the ORIGINAL source and target; the follower swaps them while
  // the direction is reverse.
  replication::AgentOptions agent;
  // Poll interval while a cutover that fenced this agent is deciding.
  std::chrono::milliseconds outcome_poll{20};
};

// The observer for the agent about to start with `options` (its direction's source and
// target), e.g. to sync sequences the right way round.
using ObserverFor = std::function<replication::AgentObserver*(const replication::AgentOptions&)>;

class Follower {
 public:
  Follower(FollowOptions options, ObserverFor observer_for = {});
  // Runs until the agent stops on request or reaches `until`; returns that agent's result.
  replication::AgentResult run();
  // Thread- and async-signal-safe.
  void request_stop() noexcept;

 private:
  FollowOptions options_;
  std::optional<std::string> wait_for_outcome(const std::string& id);

  ObserverFor observer_for_;
  std::atomic<bool> stop_{false};
  std::atomic<replication::Agent*> agent_{nullptr};
};

}  // namespace pgferry::cutover
