// The cutover's checks: the published tables' schemas compared before any fence (a column
// only on one side, a different type, a different primary key abort at preconditions,
// naming the table and column), and the quick verification inside the window, which counts
// the rows of small tables and samples the keys of large ones (a table whose pg_class
// estimate is past 200k rows): a row missing on the target among the sampled keys aborts at
// the sequences step. Also the step budgets derived from --timeout, and the refusal to start
// while another session holds the cutover's lock (naming that session).
#include "support/cutover_fixture.hpp"

using namespace pgferry::testing;

class CutoverChecks : public CutoverFixture {
 protected:
  // Makes the ledger look large to the cutover (its pg_class estimate) without autovacuum
  // correcting it.
  void ledger_looks_large() {
    auto source = connect(*source_);
    source.exec("ALTER TABLE ledger SET (autovacuum_enabled = false)");
    source.exec("UPDATE pg_class SET reltuples = 1e6 WHERE oid = 'ledger'::regclass");
  }
  void add_ledger_rows(int rows) {
    connect(*source_).exec(fmt::format(
        "INSERT INTO ledger (client, seq) SELECT 1, g FROM generate_series(1, {}) g", rows));
    ASSERT_TRUE(wait_until(
        [&] {
          return query_value(connect(*target_), "SELECT count(*) FROM ledger") ==
                 std::to_string(rows);
        },
        std::chrono::seconds(60)))
        << agent_->log_text();
  }
  static const nlohmann::json& step_of(const nlohmann::json& report, const std::string& name) {
    for (const auto& step : report["steps"]) {
      if (step["step"] == name) return step;
    }
    static const nlohmann::json none;
    return none;
  }
};

TEST_F(CutoverChecks, SchemaDifferencesAbortBeforeTheFence) {
  ASSERT_TRUE(agent_streaming(*source_));
  auto target = connect(*target_);
  target.exec("ALTER TABLE ledger ADD COLUMN note text");
  target.exec("ALTER TABLE ledger ALTER COLUMN value TYPE bigint");
  auto result = run_pgferry(switch_args("cutover"));
  EXPECT_EQ(result.exit_code, 7) << result.output;
  auto report = report_of(result);
  EXPECT_EQ(report.value("failed_step", ""), "preconditions") << result.output;
  auto reason = report.value("reason", "");
  EXPECT_NE(reason.find("ledger.note (text) exists only on the target"), std::string::npos)
      << reason;
  EXPECT_NE(reason.find("ledger.value is integer on the source but bigint on the target"),
            std::string::npos)
      << reason;
  // Never fenced: no fence step ran, no window.
  EXPECT_TRUE(step_of(report, "fence").is_null()) << result.output;
  EXPECT_TRUE(report["window_ms"].is_null()) << result.output;
  EXPECT_FALSE(pgbouncer_paused());
  EXPECT_EQ(through_pgbouncer("SELECT current_setting('cluster_name')"), "source");
}

TEST_F(CutoverChecks, PrimaryKeyDifferenceAbortsBeforeTheFence) {
  ASSERT_TRUE(agent_streaming(*source_));
  auto target = connect(*target_);
  target.exec("ALTER TABLE ledger DROP CONSTRAINT ledger_pkey");
  target.exec("ALTER TABLE ledger ADD PRIMARY KEY (id, client)");
  auto result = run_pgferry(switch_args("cutover"));
  EXPECT_EQ(result.exit_code, 7) << result.output;
  auto report = report_of(result);
  EXPECT_EQ(report.value("failed_step", ""), "preconditions") << result.output;
  EXPECT_NE(report.value("reason", "")
                .find("has primary key (id) on the source but (id, client) on the target"),
            std::string::npos)
      << result.output;
  EXPECT_FALSE(pgbouncer_paused());
}

TEST_F(CutoverChecks, LargeTablesAreSampledAndBudgetsFollowTheTimeout) {
  ASSERT_TRUE(agent_streaming(*source_));
  add_ledger_rows(3000);
  ledger_looks_large();
  auto result = run_pgferry(switch_args("cutover"));  // --timeout 30
  ASSERT_EQ(result.exit_code, 0) << result.output << agent_->log_text();
  auto report = report_of(result);
  EXPECT_EQ(report["tables_verified"], 0) << result.output;
  EXPECT_EQ(report["tables_sampled"], 1) << result.output;
  // The last 1000 keys and up to 1000 random ones, each checked once.
  EXPECT_GE(report["keys_sampled"].get<int>(), 1000) << result.output;
  EXPECT_NE(step_of(report, "sequences")
                .value("detail", "")
                .find(fmt::format("; 0 tables counted, 1 large tables sampled ({} keys) in ",
                                  report["keys_sampled"].get<int>())),
            std::string::npos)
      << result.output;
  // Shares of --timeout 30: preconditions 1/2, prepare..switch 1/6, unfence 1/12.
  EXPECT_EQ(step_of(report, "preconditions")["budget_ms"], 15000);
  EXPECT_EQ(step_of(report, "prepare")["budget_ms"], 5000);
  EXPECT_EQ(step_of(report, "switch")["budget_ms"], 5000);
  EXPECT_EQ(step_of(report, "unfence")["budget_ms"], 2500);
}

TEST_F(CutoverChecks, LargeTableRowMissingOnTheTargetAborts) {
  ASSERT_TRUE(agent_streaming(*source_));
  add_ledger_rows(3000);
  ledger_looks_large();
  // One of the last keys is gone on the target: the row counts never look at a large table.
  connect(*target_).exec("DELETE FROM ledger WHERE id = (SELECT max(id) - 5 FROM ledger)");
  auto result = run_pgferry(switch_args("cutover"));
  EXPECT_EQ(result.exit_code, 7) << result.output;
  auto report = report_of(result);
  EXPECT_EQ(report.value("failed_step", ""), "sequences") << result.output;
  EXPECT_NE(report.value("reason", "").find("verify: public.ledger differs"), std::string::npos)
      << result.output;
  EXPECT_NE(report.value("reason", "").find("missing"), std::string::npos) << result.output;
  EXPECT_FALSE(pgbouncer_paused());
  EXPECT_EQ(through_pgbouncer("SELECT current_setting('cluster_name')"), "source");
}

TEST_F(CutoverChecks, LockHeldByAnotherSessionNamesIt) {
  ASSERT_TRUE(agent_streaming(*source_));
  // A session that holds the cutover's lock (as a run whose closing the server never saw):
  // the cutover refuses to start and names that session and the way to end it.
  auto holder = connect(*target_);
  holder.exec("SELECT pg_advisory_lock(hashtext('pgferry.cutover.ferry'))");
  auto pid = query_value(holder, "SELECT pg_backend_pid()");
  auto result = run_pgferry(switch_args("cutover"));
  EXPECT_NE(result.exit_code, 0) << result.output;
  EXPECT_NE(result.output.find("another cutover or rollback of 'ferry' is running"),
            std::string::npos)
      << result.output;
  EXPECT_NE(result.output.find(fmt::format("backend pid {} (", pid)), std::string::npos)
      << result.output;
  EXPECT_NE(result.output.find(fmt::format("SELECT pg_terminate_backend({})", pid)),
            std::string::npos)
      << result.output;
  EXPECT_FALSE(pgbouncer_paused());
}
