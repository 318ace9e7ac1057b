// Cross-version cutover and rollback under load: a PostgreSQL 15 source, a PostgreSQL 18
// target, a PgBouncer (transaction pooling) in front, four clients committing numbered
// inserts and updates through it without a pause from start to end. `pgferry cutover` moves
// them to 18 (the agent, the same `pgferry run` process, then replicates 18 → 15: the
// reverse replication across majors), `pgferry rollback` moves them back to 15. After each:
// no client saw an error, every acknowledged commit is on the new primary exactly once, the
// commits started after the switch were first written there, and the agent keeps the old
// primary current. The 18 binaries come from tools/build-postgres.sh (see
// tests/support/crossversion.hpp).
#include <chrono>

#include "support/crossversion.hpp"
#include "support/cutover_fixture.hpp"

using namespace pgferry::testing;
using Clock = std::chrono::steady_clock;

class CutoverCrossVersion : public CutoverFixture {
 protected:
  CutoverCrossVersion() {
    source_bindir_ = bindir_for_major(15);
    target_bindir_ = bindir_for_major(18);
  }
  // "PostgreSQL <major>" of the server PgBouncer sends the application to.
  std::string major_behind_pgbouncer() {
    return "PostgreSQL " +
           std::to_string(std::stoi(through_pgbouncer("SHOW server_version_num")) / 10000);
  }
};

TEST_F(CutoverCrossVersion, Upgrade15To18AndBackUnderLoad) {
  ASSERT_EQ(query_value(connect(*source_), "SHOW server_version_num").substr(0, 2), "15");
  ASSERT_EQ(query_value(connect(*target_), "SHOW server_version_num").substr(0, 2), "18");
  ASSERT_TRUE(agent_streaming(*source_)) << agent_->log_text();
  EXPECT_EQ(major_behind_pgbouncer(), "PostgreSQL 15");
  WriteLoad load(bouncer_->client_conninfo(), 4);
  load.start();
  ASSERT_TRUE(load.wait_for_more(200));

  // 15 -> 18.
  auto cutover = run_pgferry(switch_args("cutover"));
  auto after_cutover = Clock::now();
  ASSERT_EQ(cutover.exit_code, 0) << cutover.output << agent_->log_text();
  auto report = report_of(cutover);
  EXPECT_TRUE(report.value("ok", false)) << cutover.output;
  EXPECT_TRUE(report["window_ms"].is_number()) << cutover.output;
  ASSERT_TRUE(load.wait_for_more(200));
  EXPECT_EQ(major_behind_pgbouncer(), "PostgreSQL 18");
  EXPECT_EQ(load.errors(), std::vector<std::string>{});
  auto on_18 = connect(*target_);
  EXPECT_EQ(load.check_on(on_18), std::vector<std::string>{});
  EXPECT_EQ(wrong_origin(load, on_18, after_cutover, "target"), std::vector<std::string>{});
  EXPECT_NE(query_value(on_18, "SELECT count(*) FROM ledger WHERE origin = 'target'"), "0");
  // The agent replicates 18 -> 15 now.
  ASSERT_TRUE(agent_streaming(*target_)) << agent_->log_text();

  // 18 -> 15, the load still running.
  auto rollback = run_pgferry(switch_args("rollback"));
  auto after_rollback = Clock::now();
  ASSERT_EQ(rollback.exit_code, 0) << rollback.output << agent_->log_text();
  EXPECT_TRUE(report_of(rollback).value("ok", false)) << rollback.output;
  ASSERT_TRUE(load.wait_for_more(200));
  EXPECT_EQ(major_behind_pgbouncer(), "PostgreSQL 15");
  load.stop();

  EXPECT_EQ(load.errors(), std::vector<std::string>{});
  auto on_15 = connect(*source_);
  EXPECT_EQ(load.check_on(on_15), std::vector<std::string>{});
  EXPECT_EQ(wrong_origin(load, on_15, after_rollback, "source"), std::vector<std::string>{});
  // What was written on 18 came back to 15, and 18 follows 15 again.
  EXPECT_NE(query_value(on_15, "SELECT count(*) FROM ledger WHERE origin = 'target'"), "0");
  ASSERT_TRUE(agent_streaming(*source_)) << agent_->log_text();
  ASSERT_TRUE(ledger_caught_up(*source_, *target_)) << agent_->log_text();
  EXPECT_EQ(load.check_on(on_18), std::vector<std::string>{});
  EXPECT_EQ(query_value(on_18,
                        "SELECT string_agg(operation || ':' || state, ',' ORDER BY "
                        "started_at) FROM pgferry.cutover_history"),
            "cutover:completed,rollback:completed");
}
