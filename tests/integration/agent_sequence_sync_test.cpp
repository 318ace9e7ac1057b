// The agent with sequences::PeriodicSequenceSync attached (`run --sync-sequences SECS`): while
// it streams, a target sequence moves past what the source handed out, without any write to
// the table; a sync that fails (the target sequence is missing) is reported, and replication
// goes on.
#include <atomic>
#include <exception>
#include <thread>

#include "pgferry/replication/agent/agent.hpp"
#include "pgferry/sequences/periodic_sync.hpp"
#include "support/harness.hpp"

namespace repl = pgferry::replication;
using namespace pgferry::testing;
using namespace std::chrono_literals;

class AgentSequenceSync : public ClusterPairTest {};

TEST_F(AgentSequenceSync, SyncsWhileStreaming) {
  const char* schema = "CREATE TABLE items (id bigserial PRIMARY KEY, v text)";
  connect(source()).exec(schema);
  connect(target()).exec(schema);
  auto init = run_pgferry({"--source", source().conninfo(), "--target", target().conninfo(),
                           "--name", "seq_agent", "init", "--no-data"});
  ASSERT_EQ(init.exit_code, 0) << init.output;

  std::atomic<int> failures{0};
  pgferry::sequences::PeriodicSequenceSync sync(source().conninfo(), target().conninfo(),
                                                "seq_agent", 1s,
                                                [&](const std::exception&) { ++failures; });
  repl::AgentOptions options;
  options.source_conninfo = source().conninfo();
  options.target_conninfo = target().conninfo();
  options.name = "seq_agent";
  repl::Agent agent(options, &sync);
  std::exception_ptr error;
  std::thread runner([&] {
    try {
      agent.run();
    } catch (...) {
      error = std::current_exception();
    }
  });

  auto src = connect(source());
  auto dst = connect(target());
  src.exec("INSERT INTO items (v) SELECT 'v' FROM generate_series(1, 10)");
  // Values handed out and never used in a row: only the sequence sync carries them.
  src.exec("SELECT nextval('items_id_seq') FROM generate_series(1, 90)");
  bool synced = wait_until(
      [&] {
        return query_value(dst, "SELECT last_value >= 100 FROM items_id_seq") == "t" &&
               query_value(dst, "SELECT count(*) FROM items") == "10";
      },
      30s);
  EXPECT_TRUE(synced);
  EXPECT_EQ(failures.load(), 0);

  // A target without the sequence: the sync fails and says so; rows still arrive.
  src.exec("CREATE SEQUENCE extra_seq");
  src.exec("SELECT nextval('extra_seq')");
  EXPECT_TRUE(wait_until([&] { return failures.load() >= 1; }, 30s));
  src.exec("INSERT INTO items (v) VALUES ('after')");
  EXPECT_TRUE(
      wait_until([&] { return query_value(dst, "SELECT count(*) FROM items") == "11"; }, 30s));

  agent.request_stop();
  runner.join();
  if (error) std::rethrow_exception(error);
}
