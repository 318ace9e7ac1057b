// A retryable error that never clears: a session on the target holds a lock on a replicated
// table and never lets go, and the target database has a lock_timeout default, so every replay
// of the same transaction ends in a lock timeout. The agent escalates (from the third in a row,
// an error line with the count, the bound and the fix; /status and /metrics show it) and at
// --max-retries-same-lsn stops with exit 1 naming the table, the position and the fix. Nothing
// was applied; once the lock is gone, the next run applies the transaction once.
#include <fmt/format.h>
#include <unistd.h>

#include <nlohmann/json.hpp>
#include <regex>

#include "support/harness.hpp"
#include "support/http_get.hpp"

using namespace pgferry::testing;
using namespace std::chrono_literals;

class AgentRepeatedConflict : public ClusterPairTest {};

TEST_F(AgentRepeatedConflict, StopsAfterTheBoundWithTheFix) {
  init_agent_pair(source(), target(), "conflict",
                  "CREATE TABLE items (id int PRIMARY KEY, v text)");
  PgferryPair pair{source().conninfo(), target().conninfo(), "conflict"};

  auto src = connect(source());
  src.exec("INSERT INTO items VALUES (1, 'a')");
  std::string until = query_value(src, "SELECT pg_current_wal_lsn()::text");

  // The holder: locked before the database default applies to new sessions.
  auto holder = connect(target());
  holder.exec("BEGIN");
  holder.exec("LOCK TABLE items IN ACCESS EXCLUSIVE MODE");
  connect(target()).exec("ALTER DATABASE postgres SET lock_timeout = '200ms'");

  auto port = static_cast<unsigned short>(pgferry::tools::free_port());
  PgferryProcess agent(pair.args({"run", "--max-retries-same-lsn", "5", "--metrics-listen",
                                  fmt::format("127.0.0.1:{}", port)}),
                       fmt::format("/tmp/pgferry-repeated-conflict-{}.log", ::getpid()));
  // /status shows the repeated failure while the agent still retries.
  nlohmann::json seen;
  EXPECT_TRUE(wait_until(
      [&] {
        try {
          auto status = nlohmann::json::parse(http_get(port, "/status").second);
          if (!status["repeated_failure"].is_null() && status["repeated_failure"]["count"] >= 2) {
            seen = status["repeated_failure"];
            return true;
          }
        } catch (const std::exception&) {
        }
        return agent.exited();
      },
      120s))
      << agent.log_text();
  ASSERT_TRUE(wait_until([&] { return agent.exited(); }, 180s)) << agent.log_text();
  std::string log = agent.log_text();
  EXPECT_EQ(agent.exit_code(), 1) << log;
  ASSERT_FALSE(seen.is_null()) << "no repeated_failure in /status before the stop: " << log;
  EXPECT_EQ(seen["reason"], "lock timeout") << seen;
  EXPECT_EQ(seen["max"], 5) << seen;
  EXPECT_NE(seen["fix"].get<std::string>().find("pg_blocking_pids"), std::string::npos) << seen;

  // Warnings first, then errors with the count and the fix, then the stop.
  EXPECT_NE(log.find("retry reason=\"lock timeout\""), std::string::npos) << log;
  EXPECT_NE(log.find("conflicts_at_lsn=3 max=5"), std::string::npos) << log;
  EXPECT_NE(log.find("conflicts_at_lsn=4 max=5"), std::string::npos) << log;
  EXPECT_EQ(log.find("conflicts_at_lsn=5"), std::string::npos) << log;
  auto stop = log.find("stopping reason=\"lock timeout repeats\"");
  ASSERT_NE(stop, std::string::npos) << log;
  // The entry runs to the next log line (the server's message has a LINE excerpt of its own).
  std::smatch next;
  std::string rest = log.substr(stop);
  std::string stop_line = std::regex_search(rest, next, std::regex("\n\\d{4}-\\d{2}-\\d{2} "))
                              ? rest.substr(0, next.position(0))
                              : rest;
  // The table: here in the server's excerpt of the statement that waited for the lock.
  EXPECT_NE(stop_line.find("\"public\".\"items\""), std::string::npos) << stop_line;
  EXPECT_NE(stop_line.find("5 times in a row at lsn="), std::string::npos) << stop_line;
  EXPECT_NE(stop_line.find("--max-retries-same-lsn 5"), std::string::npos) << stop_line;
  EXPECT_NE(stop_line.find("fix: a session on the target holds a lock"), std::string::npos)
      << stop_line;

  holder.exec("ROLLBACK");
  EXPECT_EQ(query_value(connect(target()), "SELECT count(*) FROM items"), "0");

  // The lock gone, the next run applies the transaction, once.
  connect(target()).exec("ALTER DATABASE postgres RESET lock_timeout");
  auto again = pair.run({"run", "--until", until});
  EXPECT_EQ(again.exit_code, 0) << again.output;
  EXPECT_EQ(table_fingerprint(src, "items", "id"),
            table_fingerprint(connect(target()), "items", "id"));
  pair.run({"cleanup"});
}
