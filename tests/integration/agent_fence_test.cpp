// The Agent stops exactly at a cutover fence for its name (apply/fence.hpp): run() returns
// `fenced` with the fence's id, the progress row has reached the message's LSN, and rows the
// source committed after the fence are not applied (the next run applies them, once).
// Fences for another name and non-transactional messages with the prefix are ignored; a
// fence inside a large transaction that streams (applied live on the second connection)
// stops the agent the same way.
#include <fmt/format.h>

#include <atomic>
#include <exception>
#include <functional>
#include <thread>

#include "pgferry/replication/agent/agent.hpp"
#include "support/harness.hpp"

namespace repl = pgferry::replication;
using namespace pgferry::testing;
using namespace std::chrono_literals;

class AgentFence : public ClusterPairTest {
 protected:
  static constexpr const char* kName = "fence_lib";

  repl::AgentOptions options() {
    repl::AgentOptions o;
    o.source_conninfo = source().conninfo();
    o.target_conninfo = target().conninfo();
    o.name = kName;
    o.status_interval = 200ms;
    return o;
  }
  static std::string emit(bool transactional, std::string_view id, std::string_view name) {
    return fmt::format("SELECT pg_logical_emit_message({}, 'pgferry', '{}')::text",
                       transactional ? "true" : "false", repl::fence_message_content(id, name));
  }
  static std::string insert_sql(int from, int to) {
    return fmt::format("INSERT INTO items SELECT g, 'v' || g FROM generate_series({}, {}) g", from,
                       to);
  }
  std::string target_count() {
    return query_value(connect(target()), "SELECT count(*) FROM items");
  }
  std::string progress() {
    return query_value(connect(target()), fmt::format("SELECT applied_lsn::text FROM "
                                                      "pgferry.progress WHERE name = '{}'",
                                                      kName));
  }

  // Runs an agent in a thread until it returns; `during` runs meanwhile on this thread.
  repl::AgentResult run_agent(const std::function<void(repl::Agent&)>& during) {
    return run_agent(options(), during);
  }
  repl::AgentResult run_agent(const repl::AgentOptions& agent_options,
                              const std::function<void(repl::Agent&)>& during) {
    repl::Agent agent(agent_options);
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
    try {
      during(agent);
    } catch (...) {
      agent.request_stop();
      runner.join();
      throw;
    }
    if (!wait_until([&] { return returned.load(); }, 120s)) agent.request_stop();
    runner.join();
    if (error) std::rethrow_exception(error);
    return result;
  }
};

TEST_F(AgentFence, StopsAtItsFenceOnly) {
  const char* schema = "CREATE TABLE items (id int PRIMARY KEY, v text)";
  connect(source()).exec(schema);
  connect(target()).exec(schema);
  auto init = run_pgferry({"--source", source().conninfo(), "--target", target().conninfo(),
                           "--name", kName, "init", "--no-data"});
  ASSERT_EQ(init.exit_code, 0) << init.output;

  std::string fence_lsn;
  std::string progress_at_fence;
  std::string count_at_fence;
  auto result = run_agent([&](repl::Agent&) {
    auto src = connect(source());
    src.exec(insert_sql(1, 100));
    ASSERT_TRUE(wait_until([&] { return target_count() == "100"; }, 60s));
    // Not ours: another agent's fence, and a non-transactional message with our name.
    src.exec(emit(true, "other-cutover", "someone_else"));
    src.exec(emit(false, "not-transactional", kName));
    src.exec("SELECT pg_logical_emit_message(true, 'pgferry', 'not json')");
    src.exec(insert_sql(101, 150));
    ASSERT_TRUE(wait_until([&] { return target_count() == "150"; }, 60s));
    // Ours, with more rows right behind it (likely in the same poll).
    fence_lsn = query_value(src, emit(true, "cut-1", kName));
    src.exec(insert_sql(151, 200));
    src.exec("UPDATE items SET v = 'after' WHERE id <= 10");
  });
  progress_at_fence = progress();
  count_at_fence = target_count();

  ASSERT_EQ(result.outcome, repl::AgentOutcome::fenced);
  ASSERT_TRUE(result.fence.has_value());
  EXPECT_EQ(result.fence->id, "cut-1");
  EXPECT_EQ(result.fence->message_lsn.to_string(), fence_lsn);
  EXPECT_GT(result.fence->end_lsn, result.fence->message_lsn);
  EXPECT_EQ(result.applied, result.fence->end_lsn);
  auto src = connect(source());
  auto dst = connect(target());
  // The cutover's condition holds, and nothing after the fence is on the target.
  EXPECT_EQ(query_value(dst, fmt::format("SELECT '{}'::pg_lsn >= '{}'::pg_lsn", progress_at_fence,
                                         fence_lsn)),
            "t");
  EXPECT_EQ(progress_at_fence, result.fence->end_lsn.to_string());
  EXPECT_EQ(count_at_fence, "150");
  EXPECT_EQ(query_value(dst, "SELECT count(*) FROM items WHERE v = 'after'"), "0");
  // The slot is confirmed to the fence and no further.
  EXPECT_EQ(query_value(src, fmt::format("SELECT confirmed_flush_lsn <= '{}'::pg_lsn FROM "
                                         "pg_replication_slots WHERE slot_name = '{}'",
                                         progress_at_fence, kName)),
            "t");

  // The next run resumes right after the fence: the rows behind it arrive, once. A fence
  // inside a large transaction that streams (64kB decoding memory) stops it as well.
  src.exec("ALTER SYSTEM SET logical_decoding_work_mem = '64kB'");
  src.exec("SELECT pg_reload_conf()");
  std::string second_fence_lsn;
  auto second = run_agent([&](repl::Agent&) {
    ASSERT_TRUE(wait_until([&] { return target_count() == "200"; }, 60s));
    auto s = connect(source());
    s.exec("BEGIN");
    s.exec(insert_sql(1001, 6000));
    second_fence_lsn = query_value(s, emit(true, "cut-2", kName));
    s.exec(insert_sql(6001, 7000));
    s.exec("COMMIT");
    s.exec(insert_sql(7001, 7100));
  });
  src.exec("ALTER SYSTEM RESET logical_decoding_work_mem");
  src.exec("SELECT pg_reload_conf()");
  ASSERT_EQ(second.outcome, repl::AgentOutcome::fenced);
  ASSERT_TRUE(second.fence.has_value());
  EXPECT_EQ(second.fence->id, "cut-2");
  EXPECT_EQ(second.fence->message_lsn.to_string(), second_fence_lsn);
  EXPECT_EQ(second.streamed, 1u);
  EXPECT_EQ(second.streamed_live, 1u);  // applied as it streamed, on the second connection
  EXPECT_EQ(progress(), second.fence->end_lsn.to_string());
  // The whole fenced transaction is there, nothing after it.
  EXPECT_EQ(target_count(), "6200");
  EXPECT_EQ(query_value(dst, "SELECT count(*) FROM items WHERE id > 7000"), "0");
  EXPECT_EQ(query_value(dst, "SELECT count(*) FROM items WHERE v = 'after'"), "10");

  // With synchronous_commit off the fence's commit counts once the target flushed it (the
  // agent learns that at the next keepalive); the rows behind it stay behind.
  auto async = options();
  async.applier.synchronous_commit = "off";
  std::string third_fence_lsn;
  auto third = run_agent(async, [&](repl::Agent&) {
    ASSERT_TRUE(wait_until([&] { return target_count() == "6300"; }, 60s));
    auto s = connect(source());
    third_fence_lsn = query_value(s, emit(true, "cut-3", kName));
    s.exec(insert_sql(7101, 7200));
  });
  ASSERT_EQ(third.outcome, repl::AgentOutcome::fenced);
  ASSERT_TRUE(third.fence.has_value());
  EXPECT_EQ(third.fence->id, "cut-3");
  EXPECT_EQ(third.fence->message_lsn.to_string(), third_fence_lsn);
  EXPECT_EQ(progress(), third.fence->end_lsn.to_string());
  EXPECT_EQ(target_count(), "6300");

  // And a run up to the source's current position applies the rest.
  auto o = options();
  o.until = repl::Lsn::from_string(query_value(src, "SELECT pg_current_wal_lsn()::text"), "until");
  auto rest = repl::Agent(o).run();
  EXPECT_EQ(rest.outcome, repl::AgentOutcome::reached_until);
  EXPECT_EQ(table_fingerprint(src, "items", "id"), table_fingerprint(dst, "items", "id"));
}
