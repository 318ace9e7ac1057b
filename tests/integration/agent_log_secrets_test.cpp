// The agent's logs never carry a password: with a scram-authenticated role whose password is
// in the conninfo, `pgferry init` and `pgferry run --log-format json` through faults
// (terminated walsender and apply sessions, a target restart, a fatal stop) write JSON lines
// only, and none contains the password.
#include <fmt/format.h>
#include <unistd.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "support/harness.hpp"

namespace repl = pgferry::replication;
using namespace pgferry::testing;

class AgentLogSecrets : public ClusterPairTest {};

namespace {

constexpr const char* kPassword = "Wh1sp3r-9f4e-secret";

// A superuser `ferry_pw` that must log in with its password over TCP.
std::string password_conninfo(LocalCluster& cluster) {
  auto conn = connect(cluster);
  conn.exec(fmt::format("CREATE ROLE ferry_pw SUPERUSER LOGIN PASSWORD '{}'", kPassword));
  auto hba = cluster.data_dir() / "pg_hba.conf";
  std::stringstream old;
  old << std::ifstream(hba).rdbuf();
  std::ofstream(hba, std::ios::trunc) << "host all ferry_pw 127.0.0.1/32 scram-sha-256\n"
                                      << old.str();
  conn.exec("SELECT pg_reload_conf()");
  return fmt::format("host=127.0.0.1 port={} dbname=postgres user=ferry_pw password={}",
                     cluster.port(), kPassword);
}

}  // namespace

TEST_F(AgentLogSecrets, NoPasswordInAnyLogLine) {
  std::string source_conninfo = password_conninfo(source());
  std::string target_conninfo = password_conninfo(target());
  // The password is what lets it in: a wrong one is refused.
  EXPECT_THROW(repl::Connection::open(fmt::format("host=127.0.0.1 port={} dbname=postgres "
                                                  "user=ferry_pw password=wrong",
                                                  target().port()),
                                      repl::Side::target),
               repl::ConnectionError);

  const char* schema = "CREATE TABLE secret_items (id int PRIMARY KEY, v text)";
  connect(source()).exec(schema);
  connect(target()).exec(schema);
  std::vector<std::string> common = {"--log-format", "json",          "--source", source_conninfo,
                                     "--target",     target_conninfo, "--name",   "secrets"};
  std::string all_output;  // init's report (text on stdout) and every log line
  std::string agent_log;   // `run` writes only log lines: each must be JSON
  auto init_args = common;
  init_args.insert(init_args.end(), {"init", "--no-data"});
  auto init = run_pgferry(init_args);
  ASSERT_EQ(init.exit_code, 0) << init.output;
  all_output += init.output;

  auto run_args = common;
  run_args.insert(run_args.end(), {"run", "--status-interval-ms", "200"});
  std::string log_path = fmt::format("/tmp/pgferry-secrets-{}.log", ::getpid());
  {
    PgferryProcess agent(run_args, log_path);
    auto src = connect(source());
    int next = 1;
    auto write_and_wait = [&] {
      src.exec(fmt::format("INSERT INTO secret_items SELECT g, 'v' FROM generate_series({}, {}) g",
                           next, next + 99));
      next += 100;
      return wait_until(
          [&] {
            try {
              return query_value(connect(target()), "SELECT count(*) FROM secret_items") ==
                     std::to_string(next - 1);
            } catch (const repl::Error&) {
              return false;
            }
          },
          std::chrono::seconds(120));
    };
    ASSERT_TRUE(write_and_wait());
    ASSERT_GT(terminate_backends(connect(source()), "backend_type = 'walsender'"), 0);
    ASSERT_TRUE(write_and_wait());
    ASSERT_TRUE(wait_until(
        [&] { return terminate_backends(connect(target()), "usename = 'ferry_pw'") > 0; }));
    ASSERT_TRUE(write_and_wait());
    target().restart();
    ASSERT_TRUE(write_and_wait());
    ASSERT_FALSE(agent.exited());
    EXPECT_EQ(agent.stop(), 0);
    agent_log = agent.log_text();
    all_output += agent_log;
  }
  ::unlink(log_path.c_str());
  // A fatal stop prints its error too.
  connect(source()).exec("SELECT pg_drop_replication_slot('secrets')");
  auto fatal_args = common;
  fatal_args.push_back("run");
  auto fatal = run_pgferry(fatal_args);
  EXPECT_EQ(fatal.exit_code, 1) << fatal.output;
  all_output += fatal.output;

  std::istringstream all_lines(all_output);
  std::string line;
  while (std::getline(all_lines, line)) EXPECT_EQ(line.find(kPassword), std::string::npos) << line;
  std::istringstream lines(agent_log + fatal.output);
  int count = 0;
  bool saw_retry = false;
  while (std::getline(lines, line)) {
    if (line.empty()) continue;
    ++count;
    nlohmann::json event;
    ASSERT_NO_THROW(event = nlohmann::json::parse(line)) << line;
    EXPECT_TRUE(event.contains("time") && event.contains("level") && event.contains("msg") &&
                event.contains("fields"))
        << line;
    saw_retry = saw_retry || (event["fields"].contains("reason") && event["level"] == "warning");
  }
  EXPECT_GT(count, 5) << all_output;
  EXPECT_TRUE(saw_retry) << all_output;
  EXPECT_EQ(all_output.find(kPassword), std::string::npos);
}
