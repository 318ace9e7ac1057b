// Integration-test harness: real PostgreSQL clusters (LocalCluster) and small helpers to
// run SQL, wait for a condition and run the pgferry binary.
#pragma once

#include <gtest/gtest.h>
#include <sys/types.h>

#include <chrono>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "pgferry/replication/agent/agent.hpp"
#include "pgferry/replication/core/pg.hpp"
#include "pgferry/tools/local_cluster.hpp"
#include "pgferry/tools/local_pgbouncer.hpp"

namespace pgferry::testing {

using tools::LocalCluster;

// Starts a cluster for a test (temp dir pgferry-test-*, free port, wal_level=logical).
std::unique_ptr<LocalCluster> start_cluster(tools::ClusterOptions options = {});

// Starts a PgBouncer (transaction pooling, admin user `pgbouncer`) in front of `server`.
std::unique_ptr<tools::LocalPgBouncer> start_pgbouncer(const LocalCluster& server,
                                                       tools::PgBouncerOptions options = {});

// A fixture with a source and a target cluster, started once per test suite.
class ClusterPairTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite();
  static void TearDownTestSuite();
  static LocalCluster& source() { return *source_; }
  static LocalCluster& target() { return *target_; }

  static std::unique_ptr<LocalCluster> source_;
  static std::unique_ptr<LocalCluster> target_;
};

replication::Connection connect(const LocalCluster& cluster, std::string_view dbname = "postgres",
                                replication::Side side = replication::Side::none);

// The single value of a query (throws if not exactly one row and column).
std::string query_value(const replication::Connection& conn, std::string_view sql);

// Polls `condition` every 20 ms until it holds; returns false after `timeout`.
bool wait_until(const std::function<bool()>& condition,
                std::chrono::milliseconds timeout = std::chrono::seconds(30));

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};
// Runs the pgferry binary built with the tests, with `args`, and waits for it.
CommandResult run_pgferry(const std::vector<std::string>& args);

// The JSON document a `--json` command printed (its output may start with log lines: the
// document is taken from the first line that opens an object); null when there is none.
nlohmann::json json_document(const CommandResult& result);

// "schema.table kind {key} [columns]" for every difference of a `verify --json` document.
std::set<std::string> verify_differences(const nlohmann::json& report);

// Starts the pgferry binary with `args` in the background, stdout and stderr appended to
// `log`. Returns the child's pid (wait for it with waitpid).
pid_t spawn_pgferry(const std::vector<std::string>& args, const std::string& log);

// Exactly-once drills: starts `pgferry args` (output appended to `log`) `rounds` times; each
// time, once `applied()` grows (or the process exits by itself), waits a random 0 ..
// `max_delay` and kills it with SIGKILL; `after_round` runs after each. Returns how many
// kills hit a running process.
int run_pgferry_with_sigkills(const std::vector<std::string>& args, const std::string& log,
                              int rounds, const std::function<long long()>& applied,
                              std::mt19937& random, std::chrono::milliseconds max_delay,
                              const std::function<void()>& after_round = {});

// A pgferry child process (stopped with SIGTERM, then SIGKILL, when it goes away) whose
// output goes to `log`.
class PgferryProcess : public tools::ChildProcess {
 public:
  PgferryProcess(const std::vector<std::string>& args, std::string log);
  const std::string& log() const { return log_; }
  std::string log_text() const;

 private:
  std::string log_;
};

// pgferry for one source/target pair: --source, --target and --name come before the
// command's own arguments.
struct PgferryPair {
  std::string source_conninfo;
  std::string target_conninfo;
  std::string name;
  std::vector<std::string> args(const std::vector<std::string>& command) const;
  CommandResult run(const std::vector<std::string>& command) const {
    return run_pgferry(args(command));
  }
};

// The Agent tests' set-up: runs `schema` on both clusters and `pgferry init --no-data` for
// `name` (throws with init's output when it fails); returns Agent options for that pair.
replication::AgentOptions init_agent_pair(const LocalCluster& source, const LocalCluster& target,
                                          const std::string& name, std::string_view schema);

// pg_terminate_backend of every session `where` selects in pg_stat_activity (other than the
// caller's own); returns how many were terminated.
int terminate_backends(const replication::Connection& conn, std::string_view where);

// A text fingerprint of a table's rows (ordered by `order_by`), to compare source and target.
std::string table_fingerprint(const replication::Connection& conn, std::string_view table,
                              std::string_view order_by);

}  // namespace pgferry::testing
