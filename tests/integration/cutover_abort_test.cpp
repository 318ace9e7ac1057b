// Cutover abort paths, each under a write load through PgBouncer: the agent stopped (the
// fence is never applied), a transaction held open through PgBouncer past --fence-timeout,
// a failing --switch-command, and kill -9 of the cutover while writes are fenced and its
// --switch-command runs (its guard restores the PgBouncer config, runs the command back
// towards the source and lifts the fence; a re-run then finishes the cutover).
// Each time: exit 7 naming the step, PgBouncer serves again, writes still go to the source,
// nothing acknowledged is lost, and the agent goes on replicating forward.
#include <sys/wait.h>

#include <fstream>
#include <sstream>

#include "support/cutover_fixture.hpp"

using namespace pgferry::testing;
using namespace std::chrono_literals;

class CutoverAbort : public CutoverFixture {
 protected:
  // After an abort: PgBouncer serves the source, the load goes on, nothing is lost, the new
  // direction's slot is gone, and the agent keeps the target current.
  void expect_unchanged(WriteLoad& load) {
    EXPECT_FALSE(pgbouncer_paused());
    EXPECT_EQ(through_pgbouncer("SELECT current_setting('cluster_name')"), "source");
    ASSERT_TRUE(load.wait_for_more(100));
    load.stop();
    EXPECT_EQ(load.errors(), std::vector<std::string>{});
    EXPECT_EQ(load.check_on(connect(*source_)), std::vector<std::string>{});
    EXPECT_EQ(query_value(connect(*target_),
                          "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'ferry'"),
              "0");
    EXPECT_TRUE(wait_until(
        [&] {
          return table_fingerprint(connect(*source_), "ledger", "id") ==
                 table_fingerprint(connect(*target_), "ledger", "id");
        },
        60s))
        << agent_->log_text();
    EXPECT_EQ(query_value(connect(*target_),
                          "SELECT state FROM pgferry.cutover_history ORDER BY started_at DESC "
                          "LIMIT 1"),
              "aborted");
  }
};

TEST_F(CutoverAbort, AgentStoppedAbortsAtTheMarkWithinBudget) {
  ASSERT_TRUE(agent_streaming(*source_));
  WriteLoad load(bouncer_->client_conninfo(), 4);
  load.start();
  ASSERT_TRUE(load.wait_for_more(100));
  ::kill(agent_->pid(), SIGSTOP);
  auto result = run_pgferry(switch_args("cutover", {"--drain-timeout", "2"}));
  ::kill(agent_->pid(), SIGCONT);
  EXPECT_EQ(result.exit_code, 7) << result.output;
  // The fence is never reached: the cutover aborts at the mark, or already at prepare when
  // the stopped agent holds a target transaction open (the new slot waits for it).
  auto failed_step = report_of(result).value("failed_step", "");
  EXPECT_TRUE(failed_step == "mark" || failed_step == "prepare") << result.output;
  expect_unchanged(load);
}

TEST_F(CutoverAbort, TransactionHeldOpenPastFenceTimeout) {
  ASSERT_TRUE(agent_streaming(*source_));
  WriteLoad load(bouncer_->client_conninfo(), 4);
  load.start();
  ASSERT_TRUE(load.wait_for_more(100));
  auto holder = pgferry::replication::Connection::open(bouncer_->client_conninfo(),
                                                       pgferry::replication::Side::none);
  holder.exec("BEGIN; SELECT count(*) FROM ledger");
  auto result = run_pgferry(switch_args("cutover", {"--fence-timeout", "1"}));
  EXPECT_EQ(result.exit_code, 7) << result.output;
  EXPECT_EQ(report_of(result).value("failed_step", ""), "fence") << result.output;
  holder.exec("COMMIT");
  expect_unchanged(load);
}

TEST_F(CutoverAbort, FailingSwitchCommandRestoresTheConfig) {
  ASSERT_TRUE(agent_streaming(*source_));
  auto original = read_file(bouncer_->config_file().string());
  WriteLoad load(bouncer_->client_conninfo(), 4);
  load.start();
  ASSERT_TRUE(load.wait_for_more(100));
  auto marker = fmt::format("/tmp/pgferry-switch-{}.txt", ::getpid());
  auto result = run_pgferry(switch_args(
      "cutover",
      {"--switch-command",
       fmt::format("echo \"$PGFERRY_ABORT $PGFERRY_NEW_PORT\" >> {}; [ \"$PGFERRY_ABORT\" = 1 ]",
                   marker)}));
  EXPECT_EQ(result.exit_code, 7) << result.output;
  EXPECT_EQ(report_of(result).value("failed_step", ""), "switch") << result.output;
  EXPECT_EQ(read_file(bouncer_->config_file().string()), original);
  // Called towards the target, then again towards the source to undo.
  EXPECT_EQ(read_file(marker), fmt::format("0 {}\n1 {}\n", target_->port(), source_->port()));
  std::remove(marker.c_str());
  expect_unchanged(load);
}

TEST_F(CutoverAbort, KillNineWhileFencedThenRerun) {
  ASSERT_TRUE(agent_streaming(*source_));
  auto original = read_file(bouncer_->config_file().string());
  WriteLoad load(bouncer_->client_conninfo(), 4);
  load.start();
  ASSERT_TRUE(load.wait_for_more(100));
  std::string log = fmt::format("/tmp/pgferry-cutover-kill-{}.log", ::getpid());
  auto marker = fmt::format("/tmp/pgferry-switch-kill-{}.txt", ::getpid());
  // The switch command records its call and hangs towards the target: the cutover sits
  // fenced with the config rewritten while it runs.
  pid_t cutover = spawn_pgferry(
      switch_args("cutover", {"--switch-command",
                              fmt::format("echo \"$PGFERRY_ABORT $PGFERRY_NEW_PORT\" >> {}; "
                                          "[ \"$PGFERRY_ABORT\" = 1 ] || sleep 20",
                                          marker)}),
      log);
  ASSERT_TRUE(wait_until(
      [&] {
        return read_file(bouncer_->config_file().string()) != original && pgbouncer_paused() &&
               !read_file(marker).empty();
      },
      30s))
      << read_file(log);
  ::kill(cutover, SIGKILL);
  int status = 0;
  ::waitpid(cutover, &status, 0);
  // The guard puts the config back, runs the command towards the source (having killed the
  // hanging one) and lifts the fence.
  EXPECT_TRUE(wait_until([&] { return !pgbouncer_paused(); }, 10s)) << read_file(log);
  EXPECT_TRUE(
      wait_until([&] { return read_file(bouncer_->config_file().string()) == original; }, 10s));
  EXPECT_EQ(read_file(marker), fmt::format("0 {}\n1 {}\n", target_->port(), source_->port()));
  std::remove(marker.c_str());
  EXPECT_EQ(through_pgbouncer("SELECT current_setting('cluster_name')"), "source");
  ASSERT_TRUE(load.wait_for_more(100));

  // A re-run finds the dead cutover, cleans it up and cuts over.
  ASSERT_TRUE(agent_streaming(*source_)) << agent_->log_text();
  auto rerun = run_pgferry(switch_args("cutover"));
  ASSERT_EQ(rerun.exit_code, 0) << rerun.output << agent_->log_text();
  EXPECT_NE(rerun.output.find("found unfinished"), std::string::npos) << rerun.output;
  ASSERT_TRUE(load.wait_for_more(100));
  load.stop();
  EXPECT_EQ(load.errors(), std::vector<std::string>{});
  EXPECT_EQ(load.check_on(connect(*target_)), std::vector<std::string>{});
  EXPECT_EQ(through_pgbouncer("SELECT current_setting('cluster_name')"), "target");
}
