// A cutover that dies (SIGKILL) around its point of no return, the commit of the history
// row's `switched` state, with --pgbouncer-config and --switch-command both switching:
// - just before that commit: its guard switches back (config restored, the command run
//   towards the source with PGFERRY_ABORT=1) and lifts the fence; a re-run marks it aborted;
// - just after it, before the guard heard of it: the guard only lifts the fence (traffic
//   stays on the target) and a re-run finishes the cutover;
// - the cutover and its guard both killed while fenced: PgBouncer stays paused until a
//   re-run, which resumes it, marks the dead run aborted and cuts over.
// (PGFERRY_CUTOVER_CRASH_AT makes the cutover kill itself at a named point.)
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>

#include "support/cutover_fixture.hpp"

using namespace pgferry::testing;
using namespace std::chrono_literals;

class CutoverCrash : public CutoverFixture {
 protected:
  void TearDown() override {
    ::unsetenv("PGFERRY_CUTOVER_CRASH_AT");
    std::remove(marker_.c_str());
    CutoverFixture::TearDown();
  }
  // Records each call as "<PGFERRY_ABORT> <PGFERRY_NEW_PORT>" and succeeds.
  std::string recording_command() const {
    return fmt::format("echo \"$PGFERRY_ABORT $PGFERRY_NEW_PORT\" >> {}", marker_);
  }
  std::string history_state(const std::string& id) {
    return query_value(
        connect(*target_),
        fmt::format("SELECT state FROM pgferry.cutover_history WHERE id = '{}'", id));
  }
  std::string first_run_id() {
    return query_value(connect(*target_),
                       "SELECT id FROM pgferry.cutover_history ORDER BY started_at LIMIT 1");
  }

  std::string marker_ = fmt::format("/tmp/pgferry-crash-switch-{}.txt", ::getpid());
};

TEST_F(CutoverCrash, DiesBeforeTheSwitchCommitsGuardSwitchesBack) {
  ASSERT_TRUE(agent_streaming(*source_));
  auto original = read_file(bouncer_->config_file().string());
  ::setenv("PGFERRY_CUTOVER_CRASH_AT", "before-switched", 1);
  auto result = run_pgferry(switch_args("cutover", {"--switch-command", recording_command()}));
  ::unsetenv("PGFERRY_CUTOVER_CRASH_AT");
  EXPECT_NE(result.exit_code, 0) << result.output;
  EXPECT_EQ(report_of(result), nlohmann::json()) << result.output;  // died, no report
  // The guard: the command back towards the source, the config restored, the fence lifted.
  EXPECT_TRUE(wait_until(
      [&] {
        return read_file(marker_) == fmt::format("0 {}\n1 {}\n", target_->port(), source_->port());
      },
      30s))
      << read_file(marker_) << result.output;
  EXPECT_TRUE(
      wait_until([&] { return read_file(bouncer_->config_file().string()) == original; }, 30s));
  EXPECT_TRUE(wait_until([&] { return !pgbouncer_paused(); }, 30s));
  EXPECT_EQ(through_pgbouncer("SELECT current_setting('cluster_name')"), "source");
  auto id = first_run_id();
  EXPECT_EQ(history_state(id), "running");

  // A re-run marks it aborted and cuts over.
  ASSERT_TRUE(agent_streaming(*source_)) << agent_->log_text();
  auto rerun = run_pgferry(switch_args("cutover"));
  ASSERT_EQ(rerun.exit_code, 0) << rerun.output << agent_->log_text();
  EXPECT_EQ(history_state(id), "aborted");
  EXPECT_EQ(through_pgbouncer("SELECT current_setting('cluster_name')"), "target");
}

TEST_F(CutoverCrash, DiesAfterTheSwitchCommitsGuardKeepsTheSwitch) {
  ASSERT_TRUE(agent_streaming(*source_));
  auto original = read_file(bouncer_->config_file().string());
  ::setenv("PGFERRY_CUTOVER_CRASH_AT", "after-switched", 1);
  auto result = run_pgferry(switch_args("cutover", {"--switch-command", recording_command()}));
  ::unsetenv("PGFERRY_CUTOVER_CRASH_AT");
  EXPECT_NE(result.exit_code, 0) << result.output;
  auto id = first_run_id();
  EXPECT_EQ(history_state(id), "switched");
  // The guard lifts the fence and leaves traffic on the target: no call back, the config
  // still points at the target.
  EXPECT_TRUE(wait_until([&] { return !pgbouncer_paused(); }, 30s));
  EXPECT_EQ(through_pgbouncer("SELECT current_setting('cluster_name')"), "target");
  EXPECT_NE(read_file(bouncer_->config_file().string()), original);
  EXPECT_EQ(read_file(marker_), fmt::format("0 {}\n", target_->port()));

  // A re-run finishes it: nothing left to cut over.
  auto rerun = run_pgferry(switch_args("cutover"));
  ASSERT_EQ(rerun.exit_code, 0) << rerun.output;
  EXPECT_NE(rerun.output.find("had switched traffic: finished it"), std::string::npos)
      << rerun.output;
  EXPECT_EQ(history_state(id), "completed");
  EXPECT_EQ(read_file(marker_), fmt::format("0 {}\n", target_->port()));
  EXPECT_EQ(through_pgbouncer("SELECT current_setting('cluster_name')"), "target");
}

TEST_F(CutoverCrash, CutoverAndGuardKilledWhileFencedRerunLiftsTheFence) {
  ASSERT_TRUE(agent_streaming(*source_));
  auto original = read_file(bouncer_->config_file().string());
  ASSERT_EQ(through_pgbouncer("WITH i AS (INSERT INTO ledger (client, seq) SELECT 7, g FROM "
                              "generate_series(1, 50) g RETURNING 1) SELECT count(*) FROM i"),
            "50");
  std::string log = fmt::format("/tmp/pgferry-cutover-kill-both-{}.log", ::getpid());
  // The switch command hangs: the cutover sits fenced with the config rewritten.
  pid_t cutover = spawn_pgferry(switch_args("cutover", {"--switch-command", "sleep 20"}), log);
  ASSERT_TRUE(wait_until(
      [&] { return read_file(bouncer_->config_file().string()) != original && pgbouncer_paused(); },
      30s))
      << read_file(log);
  ASSERT_NO_FATAL_FAILURE(kill_with_guard(cutover, log));
  auto id = first_run_id();
  // Nobody lifts the fence now.
  std::this_thread::sleep_for(1s);
  EXPECT_TRUE(pgbouncer_paused());
  EXPECT_EQ(history_state(id), "running");

  // The re-run puts the entry back, resumes PgBouncer, marks the dead run aborted, cuts over.
  ASSERT_TRUE(agent_streaming(*source_)) << agent_->log_text();
  auto rerun = run_pgferry(switch_args("cutover"));
  ASSERT_EQ(rerun.exit_code, 0) << rerun.output << agent_->log_text();
  EXPECT_NE(rerun.output.find("left PgBouncer"), std::string::npos) << rerun.output;
  EXPECT_EQ(history_state(id), "aborted");
  EXPECT_FALSE(pgbouncer_paused());
  EXPECT_EQ(through_pgbouncer("SELECT current_setting('cluster_name')"), "target");
  // Everything written before the fence arrived once.
  EXPECT_EQ(query_value(connect(*target_), "SELECT count(*) FROM ledger WHERE client = 7"), "50");
}
