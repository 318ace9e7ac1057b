// `pgferry run` without --until as a long-running agent: it survives a restart of the target
// and of the source (reconnecting with backoff and resuming from the progress record), keeps
// applying, and on SIGTERM commits what it has, confirms it to the slot and exits 0.
#include <fmt/format.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "support/harness.hpp"

namespace repl = pgferry::replication;
using namespace pgferry::testing;

class RunReconnect : public ClusterPairTest {};

TEST_F(RunReconnect, SurvivesServerRestartsAndStopsCleanlyOnSigterm) {
  const char* schema = "CREATE TABLE items (id int PRIMARY KEY, v text)";
  connect(source()).exec(schema);
  connect(target()).exec(schema);
  std::vector<std::string> common = {
      "--source", source().conninfo(), "--target", target().conninfo(), "--name", "agent"};
  auto init_args = common;
  init_args.insert(init_args.end(), {"init", "--no-data"});
  ASSERT_EQ(run_pgferry(init_args).exit_code, 0);

  auto run_args = common;
  run_args.insert(run_args.end(), {"run", "--status-interval-ms", "200"});
  std::string log = fmt::format("/tmp/pgferry-reconnect-{}.log", ::getpid());
  pid_t child = spawn_pgferry(run_args, log);
  ASSERT_GT(child, 0);
  SCOPED_TRACE("log " + log);

  auto target_count = [&] {
    try {
      return query_value(connect(target()), "SELECT count(*) FROM items");
    } catch (const repl::Error&) {
      return std::string("down");
    }
  };
  auto insert_batch = [&](int from) {
    connect(source()).exec(fmt::format(
        "INSERT INTO items SELECT g, 'v' || g FROM generate_series({}, {}) g", from, from + 99));
  };

  insert_batch(1);
  ASSERT_TRUE(wait_until([&] { return target_count() == "100"; }, std::chrono::seconds(60)));

  target().restart();
  insert_batch(101);
  ASSERT_TRUE(wait_until([&] { return target_count() == "200"; }, std::chrono::seconds(120)));

  source().restart();
  insert_batch(201);
  ASSERT_TRUE(wait_until([&] { return target_count() == "300"; }, std::chrono::seconds(120)));
  connect(source()).exec("UPDATE items SET v = 'last' WHERE id = 300");
  ASSERT_TRUE(wait_until(
      [&] {
        return query_value(connect(target()), "SELECT v FROM items WHERE id = 300") == "last";
      },
      std::chrono::seconds(60)));

  int status = 0;
  EXPECT_EQ(::waitpid(child, &status, WNOHANG), 0) << "run exited early";
  ::kill(child, SIGTERM);
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;

  auto src = connect(source());
  auto dst = connect(target());
  EXPECT_EQ(table_fingerprint(src, "items", "id"), table_fingerprint(dst, "items", "id"));
  // The final status update confirmed what the target holds, and nothing beyond it.
  std::string applied =
      query_value(dst, "SELECT applied_lsn::text FROM pgferry.progress WHERE name = 'agent'");
  EXPECT_EQ(query_value(src, "SELECT confirmed_flush_lsn <= '" + applied +
                                 "'::pg_lsn AND confirmed_flush_lsn > '0/0' FROM "
                                 "pg_replication_slots WHERE slot_name = 'agent'"),
            "t");
}
