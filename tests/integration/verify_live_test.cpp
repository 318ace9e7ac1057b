// Live verify: while a load keeps updating and inserting rows on the source, the agent
// (`pgferry run`) is behind. A one-pass verify then reports differences (the lag); a live
// verify started before the agent is even running re-checks each differing chunk and key
// once the target's progress row passed the source position of its read, and reports
// nothing once the agent has caught up: lag is not a difference.
#include <fmt/format.h>

#include <atomic>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "support/harness.hpp"

namespace repl = pgferry::replication;
using namespace pgferry::testing;

class VerifyLive : public ClusterPairTest {
 protected:
  std::vector<std::string> with_sides(std::vector<std::string> args) {
    for (std::string arg :
         {std::string("--source"), source().conninfo(), std::string("--target"),
          target().conninfo(), std::string("--name"), std::string("live_verify")}) {
      args.push_back(std::move(arg));
    }
    return args;
  }
};

TEST_F(VerifyLive, LagIsNotReportedOnceTheAgentCatchesUp) {
  const char* schema =
      "CREATE TABLE items (id int PRIMARY KEY, n int, payload text);"
      "CREATE TABLE events (id bigint PRIMARY KEY, item int, note text);";
  auto src = connect(source());
  auto dst = connect(target());
  src.exec(schema);
  dst.exec(schema);
  src.exec("INSERT INTO items SELECT g, 0, md5(g::text) FROM generate_series(1, 20000) g");
  auto init = run_pgferry(with_sides({"init"}));
  ASSERT_EQ(init.exit_code, 0) << init.output;

  // The load: single-row updates of random items and inserted events, a few hundred
  // transactions a second, until the end of the test.
  std::atomic<bool> stop{false};
  std::atomic<long> transactions{0};
  std::string load_error;
  std::thread load([&] {
    try {
      auto conn = connect(source());
      std::mt19937 random(42);
      for (long i = 1; !stop; ++i) {
        conn.exec(fmt::format(
            "BEGIN; UPDATE items SET n = n + 1, payload = md5(random()::text) WHERE id = {}; "
            "INSERT INTO events VALUES ({}, {}, 'event {}'); COMMIT",
            random() % 20000 + 1, i, random() % 20000 + 1, i));
        ++transactions;
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
      }
    } catch (const std::exception& e) {
      load_error = e.what();
    }
  });
  ASSERT_TRUE(wait_until([&] { return transactions >= 200; }));

  // The agent is not running: the target lags, and a one-pass verify says so.
  auto once = run_pgferry(with_sides({"verify", "--once", "--json"}));
  EXPECT_EQ(once.exit_code, 3) << once.output;

  // A live verify (the default: the target has the progress row), started first; the
  // agent starts a moment later and catches up while the load goes on.
  std::string verify_log = (target().dir() / "verify.log").string();
  PgferryProcess verify(with_sides({"verify", "--json", "--chunk-rows", "2000", "--jobs", "2"}),
                        verify_log);
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  PgferryProcess agent(with_sides({"run"}), (target().dir() / "agent.log").string());
  ASSERT_TRUE(wait_until([&] { return verify.exited(); }, std::chrono::seconds(300)))
      << verify.log_text();
  EXPECT_FALSE(agent.exited()) << agent.log_text();
  EXPECT_EQ(verify.exit_code(), 0) << verify.log_text();
  auto report = nlohmann::json::parse(verify.log_text());
  EXPECT_EQ(report["mode"], "live");
  EXPECT_TRUE(report["equal"].get<bool>()) << report.dump(2);
  // The lag was seen, and re-checked away rather than reported.
  long rechecked = 0;
  for (const auto& table : report["tables"]) rechecked += table["rechecked_chunks"].get<long>();
  EXPECT_GT(rechecked, 0) << report.dump(2);

  // A real difference on the target is still reported while the load runs.
  dst.exec("UPDATE items SET payload = 'wrong' WHERE id = 0");  // no such row: no-op
  dst.exec("INSERT INTO items VALUES (-7, 0, 'only on the target')");
  auto real = run_pgferry(with_sides({"verify", "--json", "--table", "items"}));
  EXPECT_EQ(real.exit_code, 3) << real.output;
  auto real_report = nlohmann::json::parse(real.output);
  ASSERT_EQ(real_report["tables"][0]["differences"].size(), 1u) << real.output;
  EXPECT_EQ(real_report["tables"][0]["differences"][0]["kind"], "extra_on_target");
  EXPECT_EQ(real_report["tables"][0]["differences"][0]["key"]["id"], "-7");

  stop = true;
  load.join();
  EXPECT_EQ(load_error, "");
  EXPECT_EQ(agent.stop(), 0) << agent.log_text();
}
