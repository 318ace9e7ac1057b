// synchronous_commit=off: the fence's group commits on the target and the source connection
// drops before the agent returns; the next session reads the progress row (at the fence) and
// may return `fenced` only once that row is flushed on the target. The target is crashed
// (kill -9) right after the agent returned: the progress row must still be at the fence.
// (The fence's group now commits with synchronous_commit on, so the agent usually returns
// before the connection is cut; either way `fenced` must mean durable.)
#include <fmt/format.h>

#include <atomic>
#include <exception>
#include <thread>

#include "pgferry/replication/agent/agent.hpp"
#include "support/harness.hpp"

namespace repl = pgferry::replication;
using namespace pgferry::testing;
using namespace std::chrono_literals;

class AgentFenceAsyncInDoubt : public ClusterPairTest {};

TEST_F(AgentFenceAsyncInDoubt, FencedReturnedOnlyWhenDurable) {
  const char* kName = "fence_doubt";
  const char* schema = "CREATE TABLE items (id int PRIMARY KEY, v text)";
  auto o = init_agent_pair(source(), target(), kName, schema);
  {
    auto t = connect(target());
    t.exec("ALTER SYSTEM SET wal_writer_delay = '10s'");
    t.exec("ALTER SYSTEM SET wal_writer_flush_after = '1GB'");
    t.exec("SELECT pg_reload_conf()");
  }
  auto src = connect(source());
  o.status_interval = 200ms;
  o.applier.synchronous_commit = "off";
  repl::Agent agent(o);
  repl::AgentResult result;
  std::exception_ptr error;
  std::atomic<bool> returned{false};
  std::thread runner([&] {
    try {
      result = agent.run();
    } catch (...) {
      error = std::current_exception();
    }
    returned = true;
  });
  struct Join {
    repl::Agent& agent;
    std::thread& runner;
    ~Join() {
      if (!runner.joinable()) return;
      agent.request_stop();
      runner.join();
    }
  } join{agent, runner};
  auto progress = [&] {
    return query_value(connect(target()), fmt::format("SELECT applied_lsn::text FROM "
                                                      "pgferry.progress WHERE name = '{}'",
                                                      kName));
  };
  src.exec("INSERT INTO items VALUES (1, 'x')");
  ASSERT_TRUE(wait_until(
      [&] { return query_value(connect(target()), "SELECT count(*) FROM items") == "1"; }, 60s));
  std::this_thread::sleep_for(11s);  // let the wal writer flush what is there
  auto fence_lsn =
      query_value(src, fmt::format("SELECT pg_logical_emit_message(true, 'pgferry', '{}')::text",
                                   repl::fence_message_content("cut-d", kName)));
  // The fence's commit is visible on the target: cut the source connection now.
  bool visible = wait_until(
      [&] {
        return query_value(
                   connect(target()),
                   fmt::format(
                       "SELECT applied_lsn > '{}'::pg_lsn FROM pgferry.progress WHERE name = '{}'",
                       fence_lsn, kName)) == "t";
      },
      5s);
  ASSERT_TRUE(visible);
  bool early = returned.load();
  src.exec(fmt::format(
      "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = '{}'",
      kName));
  ASSERT_TRUE(wait_until([&] { return returned.load(); }, 8s));
  runner.join();
  if (error) std::rethrow_exception(error);
  auto seen = progress();
  fmt::print("returned early={} outcome={} fence end={} progress visible={}\n", early,
             static_cast<int>(result.outcome),
             result.fence ? result.fence->end_lsn.to_string() : "-", seen);
  target().kill9();
  target().start();
  auto after = progress();
  fmt::print("progress after target crash={}\n", after);
  ASSERT_EQ(result.outcome, repl::AgentOutcome::fenced);
  EXPECT_EQ(after, result.fence->end_lsn.to_string())
      << "the agent returned `fenced` but the fence's transaction was not durable";
}
