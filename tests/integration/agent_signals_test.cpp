// `pgferry run` and its signals: SIGHUP re-reads the log level from --log-level-file (debug
// lines appear only after it), an unreadable level file keeps the level, SIGINT commits,
// confirms to the slot what the target holds and exits 0, and SIGTERM while the target is
// down (the agent retrying) exits 0 too.
#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <fstream>

#include "support/harness.hpp"

namespace repl = pgferry::replication;
using namespace pgferry::testing;

class AgentSignals : public ClusterPairTest {};

TEST_F(AgentSignals, SighupReloadsTheLogLevelAndSigintExitsZero) {
  const char* schema = "CREATE TABLE signal_items (id int PRIMARY KEY, v text)";
  connect(source()).exec(schema);
  connect(target()).exec(schema);
  PgferryPair ferry{source().conninfo(), target().conninfo(), "signals"};
  ASSERT_EQ(ferry.run({"init", "--no-data"}).exit_code, 0);

  std::string level_file = fmt::format("/tmp/pgferry-signals-level-{}", ::getpid());
  auto write_level = [&](const std::string& level) { std::ofstream(level_file) << level << "\n"; };
  write_level("info");
  PgferryProcess agent(ferry.args({"run", "--log-level-file", level_file}),
                       fmt::format("/tmp/pgferry-signals-{}.log", ::getpid()));
  SCOPED_TRACE("log " + agent.log());
  auto target_count = [&] {
    return query_value(connect(target()), "SELECT count(*) FROM signal_items");
  };
  auto src = connect(source());

  src.exec("INSERT INTO signal_items VALUES (1, 'a')");
  ASSERT_TRUE(wait_until([&] { return target_count() == "1"; }));
  EXPECT_EQ(agent.log_text().find("committed group"), std::string::npos) << agent.log_text();

  write_level("debug");
  ::kill(agent.pid(), SIGHUP);
  ASSERT_TRUE(wait_until([&] {
    return agent.log_text().find("log level=debug from") != std::string::npos;
  })) << agent.log_text();
  src.exec("INSERT INTO signal_items VALUES (2, 'b')");
  ASSERT_TRUE(wait_until([&] { return target_count() == "2"; }));
  ASSERT_TRUE(wait_until([&] {
    return agent.log_text().find("committed group") != std::string::npos;
  })) << agent.log_text();

  // A bad level is reported and the level kept; the agent keeps running.
  write_level("loud");
  ::kill(agent.pid(), SIGHUP);
  ASSERT_TRUE(wait_until([&] {
    return agent.log_text().find("log level kept at debug") != std::string::npos;
  })) << agent.log_text();
  ASSERT_FALSE(agent.exited());

  src.exec("INSERT INTO signal_items VALUES (3, 'c')");
  ASSERT_TRUE(wait_until([&] { return target_count() == "3"; }));
  ::kill(agent.pid(), SIGINT);
  ASSERT_TRUE(wait_until([&] { return agent.exited(); }, std::chrono::seconds(60)));
  EXPECT_EQ(agent.exit_code(), 0) << agent.log_text();
  // The final status update confirmed exactly what the target holds.
  std::string applied = query_value(
      connect(target()), "SELECT applied_lsn::text FROM pgferry.progress WHERE name = 'signals'");
  EXPECT_EQ(query_value(src,
                        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE "
                        "slot_name = 'signals'"),
            applied);
  ::unlink(level_file.c_str());

  // SIGTERM while the target is down (the agent retrying) also exits 0.
  PgferryProcess again(ferry.args({"run"}), agent.log() + ".2");
  src.exec("INSERT INTO signal_items VALUES (4, 'd')");
  ASSERT_TRUE(wait_until([&] { return target_count() == "4"; }));
  target().stop("fast");
  bool retrying =
      wait_until([&] { return again.log_text().find("retry reason=") != std::string::npos; });
  ::kill(again.pid(), SIGTERM);
  bool exited = wait_until([&] { return again.exited(); }, std::chrono::seconds(60));
  target().start();
  ASSERT_TRUE(retrying) << again.log_text();
  ASSERT_TRUE(exited) << again.log_text();
  EXPECT_EQ(again.exit_code(), 0) << again.log_text();
  EXPECT_EQ(target_count(), "4");
}
