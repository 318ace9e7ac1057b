// A large transaction T streams and is applied live on the second target connection; a fence
// for this name commits on the source while T is open, then T commits. With stop_at_fence
// nothing committed after the fence may reach the target: the agent returns `fenced`, the
// target holds none of T's rows and the progress row stays at the fence's end (the streamed
// applier rolls T back instead of committing it). To make T's Stream Commit reach the agent
// in the same batch as the fence (the case under test), the target holds a lock that keeps
// the first applier waiting on an earlier transaction G until both were sent; the batches
// are the receiver's to cut, so the test asserts the outcome, which must hold either way.
#include <fmt/format.h>

#include <atomic>
#include <exception>
#include <thread>

#include "pgferry/replication/agent/agent.hpp"
#include "support/harness.hpp"

namespace repl = pgferry::replication;
using namespace pgferry::testing;
using namespace std::chrono_literals;

class AgentFenceStreamedAfter : public ClusterPairTest {};

TEST_F(AgentFenceStreamedAfter, LiveStreamedTxnCommittedAfterFenceIsNotApplied) {
  const char* kName = "fence_eager";
  const char* schema =
      "CREATE TABLE items (id int PRIMARY KEY, v text); CREATE TABLE gate (id int PRIMARY KEY)";
  auto o = init_agent_pair(source(), target(), kName, schema);
  auto src = connect(source());
  src.exec("ALTER SYSTEM SET logical_decoding_work_mem = '64kB'");
  src.exec("SELECT pg_reload_conf()");

  o.status_interval = 200ms;
  o.applier.synchronous_commit = "off";
  repl::Agent agent(o);
  repl::AgentResult result;
  std::exception_ptr error;
  std::thread runner([&] {
    try {
      result = agent.run();
    } catch (...) {
      error = std::current_exception();
    }
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
  auto dst = connect(target());
  src.exec("INSERT INTO items VALUES (1, 'x')");
  ASSERT_TRUE(
      wait_until([&] { return query_value(dst, "SELECT count(*) FROM items") == "1"; }, 60s));

  auto t = connect(source());
  t.exec("BEGIN");
  t.exec("INSERT INTO items SELECT g, 'big' FROM generate_series(1001, 6000) g");
  // T streams and is applied live on the second connection.
  ASSERT_TRUE(wait_until(
      [&] {
        return query_value(src, "SELECT stream_txns > 0 FROM pg_stat_replication_slots") == "t";
      },
      60s));
  // G waits on the target for the lock; meanwhile the fence F and T's commit are sent.
  auto lock = connect(target());
  lock.exec("BEGIN");
  lock.exec("LOCK TABLE gate IN ACCESS EXCLUSIVE MODE");
  src.exec("INSERT INTO gate VALUES (1)");
  auto fence_lsn =
      query_value(src, fmt::format("SELECT pg_logical_emit_message(true, 'pgferry', '{}')::text",
                                   repl::fence_message_content("cut-x", kName)));
  t.exec("COMMIT");  // T commits after the fence
  auto t_end = query_value(src, "SELECT pg_current_wal_lsn()::text");
  ASSERT_TRUE(wait_until(
      [&] {
        return query_value(src, fmt::format("SELECT bool_and(sent_lsn >= '{}') FROM "
                                            "pg_stat_replication",
                                            t_end)) == "t";
      },
      20s));
  std::this_thread::sleep_for(300ms);  // the receiver reads what was sent
  lock.exec("COMMIT");
  runner.join();
  if (error) std::rethrow_exception(error);
  src.exec("ALTER SYSTEM RESET logical_decoding_work_mem");
  src.exec("SELECT pg_reload_conf()");

  ASSERT_EQ(result.outcome, repl::AgentOutcome::fenced);
  ASSERT_TRUE(result.fence.has_value());
  fmt::print("fence lsn={} end={} applied={} streamed={} live={}\n", fence_lsn,
             result.fence->end_lsn, result.applied, result.streamed, result.streamed_live);
  // Whether T's Stream Commit reached the agent in the same batch as the fence depends on
  // how the receiver cut the stream into batches; the outcome asserted below must hold
  // either way (when it did not arrive, T's live transaction died with its connection).
  if (result.streamed_live == 0) {
    fmt::print("note: T's commit did not reach the agent before it returned at the fence\n");
  }
  EXPECT_EQ(result.applied, result.fence->end_lsn);
  EXPECT_EQ(query_value(dst, "SELECT count(*) FROM gate"), "1");
  EXPECT_EQ(query_value(dst, "SELECT count(*) FROM items WHERE v = 'big'"), "0")
      << "rows of a transaction committed after the fence are on the target";
  EXPECT_EQ(query_value(dst, fmt::format("SELECT applied_lsn::text FROM pgferry.progress WHERE "
                                         "name = '{}'",
                                         kName)),
            result.fence->end_lsn.to_string());
}
