// The agent under a write load survives pg_terminate_backend of its apply session on the
// target and of its walsender on the source: each is retried (logged with its reason, the
// process never exits), nothing is lost or applied twice, and the tables end equal.
#include <fmt/format.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "support/harness.hpp"

namespace repl = pgferry::replication;
using namespace pgferry::testing;

class AgentTerminatedSessions : public ClusterPairTest {};

TEST_F(AgentTerminatedSessions, ApplyAndWalsenderTerminationsAreRetried) {
  const char* schema = "CREATE TABLE items (id int PRIMARY KEY, v text, n int)";
  connect(source()).exec(schema);
  connect(target()).exec(schema);
  PgferryPair ferry{source().conninfo(), target().conninfo(), "terminated"};
  ASSERT_EQ(ferry.run({"init", "--no-data"}).exit_code, 0);
  PgferryProcess agent(ferry.args({"run", "--status-interval-ms", "200"}),
                       fmt::format("/tmp/pgferry-terminated-{}.log", ::getpid()));
  SCOPED_TRACE("log " + agent.log());

  int next_id = 1;
  auto write_batch = [&] {
    auto src = connect(source());
    src.exec(fmt::format("INSERT INTO items SELECT g, 'v' || g, 0 FROM generate_series({}, {}) g",
                         next_id, next_id + 199));
    src.exec(fmt::format("UPDATE items SET n = n + 1 WHERE id % 7 = {}", next_id % 7));
    src.exec(fmt::format("DELETE FROM items WHERE id % 50 = {}", next_id % 50));
    next_id += 200;
  };
  auto caught_up = [&] {
    try {
      return table_fingerprint(connect(source()), "items", "id") ==
             table_fingerprint(connect(target()), "items", "id");
    } catch (const repl::Error&) {
      return false;
    }
  };

  write_batch();
  ASSERT_TRUE(wait_until(caught_up, std::chrono::seconds(60)));
  int apply_terminated = 0;
  int walsender_terminated = 0;
  for (int round = 0; round < 3; ++round) {
    write_batch();
    // The apply session(s): client backends named pgferry on the target.
    ASSERT_TRUE(wait_until(
        [&] {
          int n =
              terminate_backends(connect(target()),
                                 "application_name = 'pgferry' AND backend_type = 'client backend' "
                                 "AND datname IS NOT NULL");
          apply_terminated += n;
          return n > 0;
        },
        std::chrono::seconds(60)));
    write_batch();
    ASSERT_TRUE(wait_until(
        [&] {
          int n = terminate_backends(connect(source()), "backend_type = 'walsender'");
          walsender_terminated += n;
          return n > 0;
        },
        std::chrono::seconds(60)));
    write_batch();
    ASSERT_TRUE(wait_until(caught_up, std::chrono::seconds(120))) << "round " << round;
    ASSERT_FALSE(agent.exited()) << agent.log_text();
  }
  EXPECT_GE(apply_terminated, 3);
  EXPECT_GE(walsender_terminated, 3);
  EXPECT_EQ(query_value(connect(target()), "SELECT count(*) FROM items"),
            query_value(connect(source()), "SELECT count(*) FROM items"));
  EXPECT_EQ(agent.stop(), 0);
  std::string log = agent.log_text();
  EXPECT_NE(log.find("retry reason=\"administrator shutdown or pg_terminate_backend\""),
            std::string::npos)
      << log;
  EXPECT_EQ(log.find("stopping reason="), std::string::npos) << log;
}
