// Proves the harness: two real clusters up with wal_level=logical, a logical slot can be
// created, server errors come back typed with SQLSTATE and side, and the CLI skeleton
// keeps its contract.
#include "support/harness.hpp"

#include <fmt/format.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>

#include "pgferry/replication/core/conninfo.hpp"

namespace repl = pgferry::replication;
using namespace pgferry::testing;

class Harness : public ClusterPairTest {};

TEST_F(Harness, BothServersUpWithLogicalWal) {
  for (auto* cluster : {&source(), &target()}) {
    auto conn = connect(*cluster);
    EXPECT_EQ(query_value(conn, "SHOW wal_level"), "logical");
    EXPECT_GE(conn.server_version(), 100000);
  }
  EXPECT_NE(source().port(), target().port());
}

TEST_F(Harness, LogicalSlotCreatable) {
  auto conn = connect(source());
  conn.exec("SELECT pg_create_logical_replication_slot('harness_slot', 'pgoutput')");
  EXPECT_EQ(query_value(conn,
                        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = "
                        "'harness_slot' AND plugin = 'pgoutput'"),
            "1");
  conn.exec("SELECT pg_drop_replication_slot('harness_slot')");
}

TEST_F(Harness, SqlErrorsAreTypedWithSqlstateAndSide) {
  auto conn = connect(target(), "postgres", repl::Side::target);
  try {
    conn.exec("SELECT * FROM no_such_table");
    FAIL() << "no error";
  } catch (const repl::SqlError& e) {
    EXPECT_EQ(e.sqlstate(), "42P01");
    EXPECT_EQ(e.side(), repl::Side::target);
    EXPECT_NE(std::string(e.what()).find("no_such_table"), std::string::npos);
  }
  EXPECT_EQ(query_value(conn, "SELECT 1"), "1");  // connection still usable
}

TEST_F(Harness, ParamsAndTransactionRollback) {
  auto conn = connect(source());
  conn.exec("CREATE TABLE harness_t(id int primary key, v text)");
  {
    repl::Transaction txn(conn);
    conn.exec("INSERT INTO harness_t VALUES ($1, $2)", {"1", std::nullopt});
  }  // rolled back
  EXPECT_EQ(query_value(conn, "SELECT count(*) FROM harness_t"), "0");
  {
    repl::Transaction txn(conn);
    conn.exec("INSERT INTO harness_t VALUES ($1, $2)", {"1", "it's"});
    txn.commit();
  }
  EXPECT_EQ(query_value(conn, "SELECT v FROM harness_t"), "it's");
  conn.exec("DROP TABLE harness_t");
}

TEST_F(Harness, UnreachableServerIsConnectionErrorWithoutPassword) {
  int port = pgferry::tools::free_port();
  try {
    repl::Connection::open(
        fmt::format("host=127.0.0.1 port={} user=x password=topsecret connect_timeout=2", port),
        repl::Side::source);
    FAIL() << "connected to nothing";
  } catch (const repl::ConnectionError& e) {
    EXPECT_EQ(e.side(), repl::Side::source);
    EXPECT_EQ(std::string(e.what()).find("topsecret"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(std::to_string(port)), std::string::npos) << e.what();
  }
}

TEST_F(Harness, RestartAndKill9Recover) {
  source().kill9();
  EXPECT_FALSE(source().running());
  source().start();
  EXPECT_EQ(query_value(connect(source()), "SELECT 1"), "1");
  source().restart();
  EXPECT_EQ(query_value(connect(source()), "SELECT 1"), "1");
}

TEST(Cli, HelpVersionAndContract) {
  auto help = run_pgferry({"--help"});
  EXPECT_EQ(help.exit_code, 0);
  for (const char* command :
       {"check", "init", "run", "lag", "sequences", "cutover", "rollback", "cleanup", "demo"}) {
    EXPECT_NE(help.output.find(command), std::string::npos) << command;
  }
  auto version = run_pgferry({"--version"});
  EXPECT_EQ(version.exit_code, 0);
  EXPECT_NE(version.output.find("pgferry"), std::string::npos);
  EXPECT_EQ(run_pgferry({}).exit_code, 2);
  EXPECT_EQ(run_pgferry({"no-such-command"}).exit_code, 2);
}

TEST(Cluster, StopsOnFatalSignal) {
  // A child process starts a cluster and is killed with SIGTERM: the handler must take the
  // postmaster down with it.
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    pgferry::tools::stop_all_on_signal();
    pgferry::tools::ClusterOptions options;
    options.prefix = "pgferry-test-sig-";
    auto* cluster = new pgferry::tools::LocalCluster(options);  // never destroyed on purpose
    std::FILE* f = std::fopen("/tmp/pgferry-test-sig.pid", "w");
    std::fprintf(f, "%d\n", cluster->postmaster_pid());
    std::fclose(f);
    ::pause();
    ::_exit(0);
  }
  pid_t postmaster = 0;
  ASSERT_TRUE(wait_until(
      [&] {
        std::FILE* f = std::fopen("/tmp/pgferry-test-sig.pid", "r");
        if (!f) return false;
        int pid = 0;
        bool ok = std::fscanf(f, "%d", &pid) == 1 && pid > 0;
        std::fclose(f);
        postmaster = pid;
        return ok;
      },
      std::chrono::seconds(60)));
  ASSERT_TRUE(pgferry::tools::process_alive(postmaster));
  ::kill(child, SIGTERM);
  int status = 0;
  ::waitpid(child, &status, 0);
  EXPECT_TRUE(WIFSIGNALED(status));
  EXPECT_TRUE(wait_until([&] { return !pgferry::tools::process_alive(postmaster); },
                         std::chrono::seconds(30)));
  std::remove("/tmp/pgferry-test-sig.pid");
  // The temp dir is left for the sweep in tools/test.sh (a signal handler cannot rm -rf).
}
