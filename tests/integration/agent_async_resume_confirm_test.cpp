// synchronous_commit=off: a row is committed on the target (visible, its WAL not flushed:
// wal_writer_delay 10s), the source connection drops, and the next session resumes from the
// progress row. The slot must not be confirmed past what the target has flushed: after a
// crash of the target (kill -9) the slot's confirmed position is at or before the progress
// row that survived, so no source transaction is lost.
#include <fmt/format.h>

#include <atomic>
#include <exception>
#include <thread>

#include "pgferry/replication/agent/agent.hpp"
#include "support/harness.hpp"

namespace repl = pgferry::replication;
using namespace pgferry::testing;
using namespace std::chrono_literals;

class AgentAsyncResumeConfirm : public ClusterPairTest {};

TEST_F(AgentAsyncResumeConfirm, SlotNotConfirmedPastUnflushedTarget) {
  const char* kName = "async_resume";
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
  auto run_agent = [&](auto during) {
    repl::Agent agent(o);
    std::exception_ptr error;
    std::thread runner([&] {
      try {
        agent.run();
      } catch (...) {
        error = std::current_exception();
      }
    });
    during();
    agent.request_stop();
    runner.join();
    if (error) std::rethrow_exception(error);
  };
  std::string lsn_after_a;
  run_agent([&] {
    src.exec("INSERT INTO items VALUES (1, 'x')");
    ASSERT_TRUE(wait_until(
        [&] { return query_value(connect(target()), "SELECT count(*) FROM items") == "1"; }, 60s));
    std::this_thread::sleep_for(11s);  // flushed
    src.exec("INSERT INTO items VALUES (2, 'a')");
    lsn_after_a = query_value(src, "SELECT pg_current_wal_lsn()::text");
    ASSERT_TRUE(wait_until(
        [&] { return query_value(connect(target()), "SELECT count(*) FROM items") == "2"; }, 5s));
    // The row is visible on the target, not flushed. Drop the source connection.
    src.exec(fmt::format(
        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = '{}'",
        kName));
    std::this_thread::sleep_for(1500ms);  // reconnect, resume, a status update or two
  });
  auto confirmed = query_value(
      src, fmt::format(
               "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = '{}'",
               kName));
  target().kill9();
  target().start();
  auto rows = query_value(connect(target()), "SELECT count(*) FROM items");
  auto progress = query_value(
      connect(target()),
      fmt::format("SELECT applied_lsn::text FROM pgferry.progress WHERE name = '{}'", kName));
  fmt::print("slot confirmed={} target rows after crash={} progress={}\n", confirmed, rows,
             progress);
  EXPECT_EQ(query_value(src, fmt::format("SELECT confirmed_flush_lsn <= '{}'::pg_lsn FROM "
                                         "pg_replication_slots WHERE slot_name = '{}'",
                                         progress, kName)),
            "t")
      << "the slot is confirmed past what the target kept: the rows between are lost";
}
