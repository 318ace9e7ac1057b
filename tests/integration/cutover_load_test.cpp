// Cutover and rollback under a write load through PgBouncer (transaction pooling): four
// clients commit numbered inserts and updates and record every acknowledged commit. After the
// cutover every acknowledged commit is on the target exactly once (with the id it was given),
// later writes were first written on the target, the target's sequence continues without a
// collision (no client error), and the agent (`pgferry run`, still the same process) now
// replicates target → source. Then the rollback under the same load: the same checks on the
// source, and the agent replicates source → target again; a cutover again after that. A
// second cutover in a row finds nothing to do.
#include <chrono>

#include "support/cutover_fixture.hpp"

using namespace pgferry::testing;
using Clock = std::chrono::steady_clock;

class CutoverLoad : public CutoverFixture {};

TEST_F(CutoverLoad, CutoverThenRollbackLoseNothingAndDuplicateNothing) {
  ASSERT_TRUE(agent_streaming(*source_));
  WriteLoad load(bouncer_->client_conninfo(), 4);
  load.start();
  ASSERT_TRUE(load.wait_for_more(200));

  auto before_cutover = Clock::now();
  auto cutover = run_pgferry(switch_args("cutover"));
  auto after_cutover = Clock::now();
  ASSERT_EQ(cutover.exit_code, 0) << cutover.output << agent_->log_text();
  auto report = report_of(cutover);
  RecordProperty("cutover_report", report.dump());
  EXPECT_TRUE(report.value("ok", false)) << cutover.output;
  EXPECT_TRUE(report["window_ms"].is_number()) << cutover.output;
  // A second cutover finds nothing to do.
  auto again = run_pgferry(switch_args("cutover"));
  EXPECT_EQ(again.exit_code, 0) << again.output;
  EXPECT_NE(again.output.find("nothing to do"), std::string::npos) << again.output;
  ASSERT_TRUE(load.wait_for_more(200));
  load.stop();

  EXPECT_EQ(load.errors(), std::vector<std::string>{});
  auto target = connect(*target_);
  EXPECT_EQ(load.check_on(target), std::vector<std::string>{});
  EXPECT_EQ(wrong_origin(load, target, after_cutover, "target"), std::vector<std::string>{});
  // Before the cutover began, everything was written on the source.
  auto early = target.exec(fmt::format(
      "SELECT count(*) FROM ledger WHERE origin <> 'source' AND id <= (SELECT max(id) FROM "
      "ledger WHERE origin = 'source')"));
  EXPECT_EQ(early.scalar(), "0");
  // The old source's slot is gone; the agent now streams from the target to the source.
  EXPECT_EQ(query_value(connect(*source_),
                        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'ferry'"),
            "0");
  ASSERT_TRUE(agent_streaming(*target_)) << agent_->log_text();
  ASSERT_TRUE(ledger_caught_up(*target_, *source_)) << agent_->log_text();
  (void)before_cutover;

  // Rollback under the same load.
  load.start();
  ASSERT_TRUE(load.wait_for_more(200));
  auto rollback = run_pgferry(switch_args("rollback"));
  auto after_rollback = Clock::now();
  ASSERT_EQ(rollback.exit_code, 0) << rollback.output << agent_->log_text();
  ASSERT_TRUE(load.wait_for_more(200));
  load.stop();

  EXPECT_EQ(load.errors(), std::vector<std::string>{});
  auto source = connect(*source_);
  EXPECT_EQ(load.check_on(source), std::vector<std::string>{});
  EXPECT_EQ(wrong_origin(load, source, after_rollback, "source"), std::vector<std::string>{});
  EXPECT_EQ(query_value(connect(*target_),
                        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'ferry'"),
            "0");
  ASSERT_TRUE(agent_streaming(*source_)) << agent_->log_text();
  ASSERT_TRUE(ledger_caught_up(*source_, *target_)) << agent_->log_text();

  // And a cutover again after the rollback.
  load.start();
  ASSERT_TRUE(load.wait_for_more(100));
  auto second = run_pgferry(switch_args("cutover"));
  ASSERT_EQ(second.exit_code, 0) << second.output << agent_->log_text();
  ASSERT_TRUE(load.wait_for_more(100));
  load.stop();
  EXPECT_EQ(load.errors(), std::vector<std::string>{});
  EXPECT_EQ(load.check_on(connect(*target_)), std::vector<std::string>{});
  ASSERT_TRUE(agent_streaming(*target_)) << agent_->log_text();
  ASSERT_TRUE(ledger_caught_up(*target_, *source_)) << agent_->log_text();

  // The history on the target tells all three.
  EXPECT_EQ(query_value(target,
                        "SELECT string_agg(operation || ':' || state, ',' ORDER BY "
                        "started_at) FROM pgferry.cutover_history"),
            "cutover:completed,rollback:completed,cutover:completed");
}
