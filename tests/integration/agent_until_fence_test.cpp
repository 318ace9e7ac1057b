// `run --until X` is a contract: a fence for the name before X (an aborted cutover's, never
// consumed) must not end the agent before X.
#include <fmt/format.h>

#include "pgferry/replication/agent/agent.hpp"
#include "support/harness.hpp"

namespace repl = pgferry::replication;
using namespace pgferry::testing;
using namespace std::chrono_literals;

class AgentUntilFenceTest : public ClusterPairTest {};

TEST_F(AgentUntilFenceTest, UntilReachedDespiteOldFence) {
  const char* kName = "until_fence";
  const char* schema = "CREATE TABLE items (id int PRIMARY KEY, v text)";
  auto o = init_agent_pair(source(), target(), kName, schema);
  auto src = connect(source());
  src.exec("INSERT INTO items SELECT g, 'v' FROM generate_series(1, 10) g");
  // An aborted cutover's fence, never consumed by an agent.
  src.exec(fmt::format("SELECT pg_logical_emit_message(true, 'pgferry', '{}')",
                       repl::fence_message_content("aborted-cut", kName)));
  src.exec("INSERT INTO items SELECT g, 'v' FROM generate_series(11, 20) g");
  o.until = repl::Lsn::from_string(query_value(src, "SELECT pg_current_wal_lsn()::text"), "until");
  auto r = repl::Agent(o).run();
  auto count = query_value(connect(target()), "SELECT count(*) FROM items");
  EXPECT_EQ(r.outcome, repl::AgentOutcome::reached_until);
  EXPECT_EQ(count, "20");
}
