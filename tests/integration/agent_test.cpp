// The Agent class driven directly (not through the CLI), after `pgferry init --no-data`:
// run() up to an LSN (until) on the caller's thread; then run() in a thread while the target
// goes down, rows are written on the source meanwhile and the target comes back (the agent
// reconnects, every row arrives once); request_stop() from another thread ends it with
// `stopped`, the progress row and the slot at what the target holds.
#include "pgferry/replication/agent/agent.hpp"

#include <fmt/format.h>

#include <atomic>
#include <exception>
#include <thread>

#include "support/harness.hpp"

namespace repl = pgferry::replication;
using namespace pgferry::testing;
using namespace std::chrono_literals;

namespace {

// Counts the agent's calls; read from the test thread.
class CountingObserver final : public repl::AgentObserver {
 public:
  void session_started() override { ++sessions; }
  void session_lost(const std::string&) override { ++lost; }
  void update(const repl::AgentProgress& progress) override {
    ++updates;
    durable.store(progress.durable.value());
  }
  void finished(const repl::AgentResult&) override { ++finished_calls; }

  std::atomic<int> sessions{0}, lost{0}, updates{0}, finished_calls{0};
  std::atomic<std::uint64_t> durable{0};
};

}  // namespace

class AgentTest : public ClusterPairTest {
 protected:
  repl::AgentOptions options() {
    repl::AgentOptions o;
    o.source_conninfo = source().conninfo();
    o.target_conninfo = target().conninfo();
    o.name = "agent_lib";
    o.status_interval = 200ms;
    return o;
  }
  void insert_rows(int from, int to) {
    connect(source()).exec(fmt::format(
        "INSERT INTO items SELECT g, 'v' || g FROM generate_series({}, {}) g", from, to));
  }
  std::string target_count() {
    try {
      return query_value(connect(target()), "SELECT count(*) FROM items");
    } catch (const repl::Error&) {
      return "down";
    }
  }
};

TEST_F(AgentTest, UntilReconnectAfterTargetRestartAndStop) {
  const char* schema = "CREATE TABLE items (id int PRIMARY KEY, v text)";
  connect(source()).exec(schema);
  connect(target()).exec(schema);
  auto init = run_pgferry({"--source", source().conninfo(), "--target", target().conninfo(),
                           "--name", "agent_lib", "init", "--no-data"});
  ASSERT_EQ(init.exit_code, 0) << init.output;

  // until, on this thread.
  insert_rows(1, 100);
  auto until = repl::Lsn::from_string(
      query_value(connect(source()), "SELECT pg_current_wal_lsn()::text"), "until");
  auto with_until = options();
  with_until.until = until;
  CountingObserver first;
  repl::AgentResult done = repl::Agent(with_until, &first).run();
  EXPECT_EQ(done.outcome, repl::AgentOutcome::reached_until);
  EXPECT_GE(done.applied, until);
  EXPECT_FALSE(done.fence.has_value());
  EXPECT_EQ(done.counters.rows_inserted, 100u);
  EXPECT_EQ(first.finished_calls.load(), 1);
  EXPECT_EQ(target_count(), "100");

  // A long-running agent in a thread.
  CountingObserver observer;
  repl::Agent agent(options(), &observer);
  repl::AgentResult result;
  std::exception_ptr error;
  std::thread runner([&] {
    try {
      result = agent.run();
    } catch (...) {
      error = std::current_exception();
    }
  });
  struct StopOnExit {
    repl::Agent& agent;
    std::thread& runner;
    ~StopOnExit() {
      agent.request_stop();
      if (runner.joinable()) runner.join();
    }
  } stop_on_exit{agent, runner};

  insert_rows(101, 200);
  ASSERT_TRUE(wait_until([&] { return target_count() == "200"; }, 60s));
  EXPECT_EQ(observer.sessions.load(), 1);

  // The target goes away; the source keeps taking writes; the target comes back.
  target().stop();
  insert_rows(201, 300);
  connect(source()).exec("UPDATE items SET v = 'changed' WHERE id % 10 = 0");
  ASSERT_TRUE(wait_until([&] { return observer.lost.load() >= 1; }, 60s));
  target().start();
  ASSERT_TRUE(wait_until([&] { return target_count() == "300"; }, 120s));
  insert_rows(301, 350);
  ASSERT_TRUE(wait_until([&] { return target_count() == "350"; }, 60s));
  EXPECT_GE(observer.sessions.load(), 2);

  agent.request_stop();
  runner.join();
  if (error) std::rethrow_exception(error);
  EXPECT_EQ(result.outcome, repl::AgentOutcome::stopped);
  EXPECT_EQ(observer.finished_calls.load(), 1);

  auto src = connect(source());
  auto dst = connect(target());
  EXPECT_EQ(table_fingerprint(src, "items", "id"), table_fingerprint(dst, "items", "id"));
  EXPECT_EQ(query_value(dst, "SELECT count(*) FILTER (WHERE v = 'changed') FROM items"), "30");
  // The progress row is what the agent reports as applied, and the slot is confirmed up to it
  // and no further.
  std::string applied =
      query_value(dst, "SELECT applied_lsn::text FROM pgferry.progress WHERE name = 'agent_lib'");
  EXPECT_EQ(applied, result.applied.to_string());
  EXPECT_GE(result.applied, until);
  EXPECT_EQ(query_value(src, "SELECT confirmed_flush_lsn <= '" + applied +
                                 "'::pg_lsn AND confirmed_flush_lsn > '" + until.to_string() +
                                 "'::pg_lsn FROM pg_replication_slots WHERE slot_name = "
                                 "'agent_lib'"),
            "t");
}
