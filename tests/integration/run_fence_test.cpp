// `pgferry run --json` as the cutover sees it: a fence for its --name makes it exit 0 with
// "outcome": "fenced" and the fence (id, message LSN, end LSN), the progress row at the
// fence's end, and rows committed after the fence left for the next run. A SIGTERM still
// ends a run that saw no fence with "outcome": "stopped".
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "pgferry/replication/apply/fence.hpp"
#include "support/harness.hpp"

namespace repl = pgferry::replication;
using namespace pgferry::testing;
using namespace std::chrono_literals;

namespace {

// The JSON document the command printed (stdout), among the log lines (stderr).
nlohmann::json printed_json(const std::string& output) {
  auto start = output.find("\n{");
  if (start == std::string::npos) start = output.rfind('{', 0) == 0 ? 0 : std::string::npos;
  if (start == std::string::npos) return nullptr;
  auto end = output.find("\n}", start);
  if (end == std::string::npos) return nullptr;
  return nlohmann::json::parse(output.substr(start, end + 2 - start), nullptr, false);
}

}  // namespace

class RunFence : public ClusterPairTest {};

TEST_F(RunFence, ExitsZeroWithTheFenceInJson) {
  const char* schema = "CREATE TABLE items (id int PRIMARY KEY, v text)";
  connect(source()).exec(schema);
  connect(target()).exec(schema);
  std::vector<std::string> common = {
      "--source", source().conninfo(), "--target", target().conninfo(), "--name", "cli_fence"};
  auto init_args = common;
  init_args.insert(init_args.end(), {"init", "--no-data"});
  ASSERT_EQ(run_pgferry(init_args).exit_code, 0);
  auto run_args = common;
  run_args.insert(run_args.end(), {"run", "--json", "--status-interval-ms", "200"});
  auto count = [&] { return query_value(connect(target()), "SELECT count(*) FROM items"); };
  auto src = connect(source());

  {
    PgferryProcess run(run_args, (target().dir() / "run-fence.log").string());
    src.exec("INSERT INTO items SELECT g, 'v' FROM generate_series(1, 50) g");
    ASSERT_TRUE(wait_until([&] { return count() == "50"; }, 60s)) << run.log_text();
    std::string fence_lsn =
        query_value(src, fmt::format("SELECT pg_logical_emit_message(true, 'pgferry', '{}')::text",
                                     repl::fence_message_content("cli-cut", "cli_fence")));
    src.exec("INSERT INTO items SELECT g, 'v' FROM generate_series(51, 60) g");
    ASSERT_TRUE(wait_until([&] { return run.exited(); }, 60s)) << run.log_text();
    EXPECT_EQ(run.exit_code(), 0) << run.log_text();
    auto out = printed_json(run.log_text());
    ASSERT_TRUE(out.is_object()) << run.log_text();
    EXPECT_EQ(out["ok"], true);
    EXPECT_EQ(out["outcome"], "fenced");
    EXPECT_EQ(out["fence"]["id"], "cli-cut");
    EXPECT_EQ(out["fence"]["lsn"], fence_lsn);
    EXPECT_EQ(out["applied_lsn"], out["fence"]["end_lsn"]);
    EXPECT_EQ(out["inserted"], 50);
    EXPECT_EQ(
        query_value(connect(target()),
                    "SELECT applied_lsn::text FROM pgferry.progress WHERE name = 'cli_fence'"),
        out["fence"]["end_lsn"].get<std::string>());
    EXPECT_EQ(count(), "50");
  }

  PgferryProcess run(run_args, (target().dir() / "run-stop.log").string());
  ASSERT_TRUE(wait_until([&] { return count() == "60"; }, 60s)) << run.log_text();
  EXPECT_EQ(run.stop(), 0) << run.log_text();
  auto out = printed_json(run.log_text());
  ASSERT_TRUE(out.is_object()) << run.log_text();
  EXPECT_EQ(out["outcome"], "stopped");
  EXPECT_FALSE(out.contains("fence"));
  EXPECT_EQ(out["inserted"], 10);
}
