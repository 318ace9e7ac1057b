// The follower (see follower.hpp).
#include "pgferry/cutover/follower.hpp"

#include <spdlog/spdlog.h>

#include <thread>

#include "pgferry/cutover/cutover.hpp"
#include "pgferry/replication/core/error.hpp"

namespace pgferry::cutover {

namespace repl = pgferry::replication;
using namespace std::chrono_literals;

namespace {
constexpr int kUnsettledWarnPolls = 500;  // at the default 20 ms poll: 10 s
}  // namespace

Follower::Follower(FollowOptions options, ObserverFor observer_for)
    : options_(std::move(options)), observer_for_(std::move(observer_for)) {}

void Follower::request_stop() noexcept {
  stop_.store(true);
  if (auto* agent = agent_.load()) agent->request_stop();
}

// Waits while cutover `id` is deciding (its row `running` with its process alive, or
// `switching`, settled or not). Returns its state once decided, nullopt when the history has
// no such cutover or a stop was requested.
std::optional<std::string> Follower::wait_for_outcome(const std::string& id) {
  const auto& target = options_.agent.target_conninfo;
  repl::Connection conn;
  int unsettled_polls = 0;
  while (!stop_) {
    try {
      if (!conn.is_open()) conn = repl::Connection::open(target, repl::Side::target);
      auto state = cutover_state(conn, id);
      if (!state) return std::nullopt;
      // (Between the cutover's death and its guard taking the lock the row is briefly
      // unsettled too: warn only once that lasts.)
      if (*state == "unsettled" && ++unsettled_polls == kUnsettledWarnPolls) {
        // Traffic may point either way: neither direction may run until it is decided.
        spdlog::error(
            "follow name={} cutover {} died while switching traffic and its guard could not "
            "settle it: waiting; re-run that cutover or rollback to settle it",
            options_.agent.name, id);
      }
      if (*state != "running" && *state != "switching" && *state != "unsettled") return state;
    } catch (const repl::ConnectionError& e) {
      conn.close();
      spdlog::warn("follow name={} waiting for cutover {}: {}", options_.agent.name, id, e.what());
    }
    std::this_thread::sleep_for(options_.outcome_poll);
  }
  return std::nullopt;
}

repl::AgentResult Follower::run() {
  const auto& source = options_.agent.source_conninfo;
  const auto& target = options_.agent.target_conninfo;
  while (true) {
    Direction direction = Direction::forward;
    std::optional<std::string> unsettled;
    for (auto backoff = 200ms;; backoff = std::min<std::chrono::milliseconds>(backoff * 2, 10s)) {
      try {
        auto conn = repl::Connection::open(target, repl::Side::target);
        unsettled = switching_cutover(conn, options_.agent.name);
        direction = current_direction(conn, options_.agent.name);
        if (!unsettled) prepare_direction(source, target, options_.agent.name);
        break;
      } catch (const repl::ConnectionError& e) {
        spdlog::warn("follow name={} cannot read the direction, retrying in {} ms: {}",
                     options_.agent.name, backoff.count(), e.what());
        for (auto wake = Clock::now() + backoff; Clock::now() < wake && !stop_;) {
          std::this_thread::sleep_for(20ms);
        }
        if (stop_) return {};
      }
    }
    if (unsettled) {
      // Started (or restarted) while a switch is undecided: its slots must stay unread.
      spdlog::info("follow name={} cutover {} is switching traffic: waiting for its outcome",
                   options_.agent.name, *unsettled);
      if (!wait_for_outcome(*unsettled) && stop_) return {};
      continue;
    }
    auto agent_options = options_.agent;
    if (direction == Direction::reverse)
      std::swap(agent_options.source_conninfo, agent_options.target_conninfo);
    spdlog::info("follow name={} direction={}", options_.agent.name,
                 direction == Direction::forward ? "forward (source to target)"
                                                 : "reverse (target to source)");
    repl::Agent agent(agent_options, observer_for_ ? observer_for_(agent_options) : nullptr);
    agent_.store(&agent);
    if (stop_) agent.request_stop();
    repl::AgentResult result;
    try {
      result = agent.run();
    } catch (...) {
      agent_.store(nullptr);
      throw;
    }
    agent_.store(nullptr);
    if (result.outcome != repl::AgentOutcome::fenced || !result.fence) return result;

    const std::string id = result.fence->id;
    spdlog::info("follow name={} fenced by cutover {} at {}: waiting for its outcome",
                 options_.agent.name, id, result.fence->end_lsn);
    auto outcome = wait_for_outcome(id);
    if (stop_) return result;
    if (!outcome) {
      spdlog::info("follow name={} fence {} is no cutover's: stopping there", options_.agent.name,
                   id);
      return result;
    }
    spdlog::info("follow name={} cutover {} {}", options_.agent.name, id, *outcome);
  }
}

}  // namespace pgferry::cutover
