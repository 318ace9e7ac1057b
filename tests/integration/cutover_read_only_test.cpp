// The read-only fence, for setups without a pooler: the cutover sets the source database
// read-only, ends the application's sessions, drains, and switches with --switch-command;
// afterwards the read-only setting is gone. An abort (failing switch command) leaves the
// source writable and the target without a new slot. `--fence none` (writes already stopped)
// cuts over as well.
#include <signal.h>
#include <sys/wait.h>

#include <thread>

#include "pgferry/cutover/fence.hpp"
#include "support/cutover_fixture.hpp"

using namespace pgferry::testing;
namespace repl = pgferry::replication;

class CutoverReadOnly : public CutoverFixture {
 protected:
  std::vector<std::string> read_only_args(const char* command) {
    return with_common({"cutover", "--json", "--fence", "read-only", "--switch-command", command});
  }
  std::string database_settings() {
    return query_value(connect(*source_),
                       "SELECT count(*) FROM pg_db_role_setting s JOIN pg_database d ON d.oid = "
                       "s.setdatabase WHERE d.datname = current_database()");
  }
};

TEST_F(CutoverReadOnly, FencesWithReadOnlyAndSwitches) {
  ASSERT_TRUE(agent_streaming(*source_));
  // An application session connected straight to the source, not through a pooler.
  auto app =
      repl::Connection::open(source_->conninfo() + " application_name=app", repl::Side::none);
  app.exec("INSERT INTO ledger (client, seq) VALUES (99, 1)");
  auto result = run_pgferry(read_only_args("true"));
  ASSERT_EQ(result.exit_code, 0) << result.output << agent_->log_text();
  EXPECT_EQ(report_of(result).value("fence", ""), "read-only");
  EXPECT_THROW(app.exec("SELECT 1"), repl::PgError);  // its session was ended
  EXPECT_EQ(database_settings(), "0");
  EXPECT_EQ(query_value(connect(*target_), "SELECT count(*) FROM ledger WHERE client = 99"), "1");
}

TEST_F(CutoverReadOnly, AbortLeavesTheSourceWritable) {
  ASSERT_TRUE(agent_streaming(*source_));
  auto result = run_pgferry(read_only_args("exit 1"));
  EXPECT_EQ(result.exit_code, 7) << result.output;
  EXPECT_EQ(report_of(result).value("failed_step", ""), "switch") << result.output;
  EXPECT_EQ(database_settings(), "0");
  auto app =
      repl::Connection::open(source_->conninfo() + " application_name=app", repl::Side::none);
  EXPECT_NO_THROW(app.exec("INSERT INTO ledger (client, seq) VALUES (99, 2)"));
  EXPECT_EQ(query_value(connect(*target_),
                        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'ferry'"),
            "0");
}

TEST_F(CutoverReadOnly, FenceNoneWhenWritesAreAlreadyStopped) {
  ASSERT_TRUE(agent_streaming(*source_));
  connect(*source_).exec("INSERT INTO ledger (client, seq) VALUES (98, 1)");
  auto result = run_pgferry(
      with_common({"cutover", "--json", "--fence", "none", "--switch-command", "true"}));
  ASSERT_EQ(result.exit_code, 0) << result.output << agent_->log_text();
  EXPECT_EQ(report_of(result).value("fence", ""), "none");
  EXPECT_EQ(query_value(connect(*target_), "SELECT count(*) FROM ledger WHERE client = 98"), "1");
  ASSERT_TRUE(agent_streaming(*target_)) << agent_->log_text();
}

// The fence returns only once the sessions it terminated are gone: a backend signalled but
// still running could commit a write after the fence is reported in place.
TEST_F(CutoverReadOnly, TerminatedSessionsAreGoneOnceFenced) {
  std::vector<repl::Connection> apps;
  std::vector<std::string> pids;
  for (int i = 0; i < 8; ++i) {
    apps.push_back(
        repl::Connection::open(source_->conninfo() + " application_name=app", repl::Side::none));
    pids.emplace_back(apps.back().exec("SELECT pg_backend_pid()").scalar());
  }
  pgferry::cutover::FenceSpec spec;
  spec.kind = pgferry::cutover::FenceKind::read_only;
  spec.server_conninfo = source_->conninfo();
  pgferry::cutover::WriteFence fence(spec);
  fence.engage(pgferry::cutover::Clock::now() + std::chrono::seconds(5));
  // Straight after engage(), no wait: none of those backends is left.
  EXPECT_EQ(query_value(connect(*source_),
                        fmt::format("SELECT count(*) FROM pg_stat_activity WHERE pid IN ({})",
                                    fmt::join(pids, ", "))),
            "0");
  fence.release();
  EXPECT_EQ(database_settings(), "0");
}

// The cutover and its guard both killed while the source is read-only: the database stays
// read-only until a re-run, which resets it (from the fence kind the history row recorded,
// whatever this run's --fence) before anything else, and, with no writes since the fence,
// undoes the dead run's switch; here the re-run then aborts at its own
// switch, so only that recovery can have made the source writable again.
TEST_F(CutoverReadOnly, CutoverAndGuardKilledRerunResetsReadOnly) {
  ASSERT_TRUE(agent_streaming(*source_));
  std::string log = fmt::format("/tmp/pgferry-read-only-kill-both-{}.log", ::getpid());
  pid_t cutover = spawn_pgferry(read_only_args("sleep 20"), log);
  ASSERT_TRUE(wait_until([&] { return database_settings() == "1"; }, std::chrono::seconds(30)))
      << read_file(log);
  ASSERT_NO_FATAL_FAILURE(kill_with_guard(cutover, log));
  std::this_thread::sleep_for(std::chrono::seconds(1));
  EXPECT_EQ(database_settings(), "1");

  // (The agent waits for the switch to be settled: the re-run does that first.)
  auto rerun = run_pgferry(
      with_common({"cutover", "--json", "--fence", "none", "--switch-command",
                   "[ \"$PGFERRY_ABORT\" = 1 ]"}));  // back to the source: fine; forward: fails
  EXPECT_EQ(rerun.exit_code, 7) << rerun.output;
  EXPECT_EQ(report_of(rerun).value("failed_step", ""), "switch") << rerun.output;
  EXPECT_EQ(database_settings(), "0");
  EXPECT_EQ(query_value(connect(*target_),
                        "SELECT string_agg(state, ',' ORDER BY started_at) FROM "
                        "pgferry.cutover_history"),
            "aborted,aborted");
  auto app =
      repl::Connection::open(source_->conninfo() + " application_name=app", repl::Side::none);
  EXPECT_NO_THROW(app.exec("INSERT INTO ledger (client, seq) VALUES (99, 3)"));
}
