// A fixture for cutover tests: a source and a target cluster (cluster_name 'source' and
// 'target', which the ledger's origin column records), a PgBouncer in transaction pooling in
// front of the source, the ledger table on both, `pgferry init --no-data`, and the agent
// (`pgferry run`) in the background.
#pragma once

#include <fmt/format.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <chrono>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "support/harness.hpp"
#include "support/write_load.hpp"

namespace pgferry::testing {

// The whole text of `path` ("" when it cannot be read).
inline std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// The pid of the child of `parent` whose command line holds `word` (0 when none).
inline pid_t child_with(pid_t parent, const std::string& word) {
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    auto name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string stat = read_file(entry.path() / "stat");
    auto close = stat.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(stat.substr(close + 2));
    std::string state;
    pid_t ppid = 0;
    rest >> state >> ppid;
    if (ppid != parent) continue;
    std::string cmdline = read_file(entry.path() / "cmdline");
    if (cmdline.find(word) != std::string::npos) return std::stoi(name);
  }
  return 0;
}

// Acknowledged commits of `load` that started after `after` and were first written on a server
// other than `origin` (the ledger's origin column: the cluster_name).
inline std::vector<std::string> wrong_origin(const WriteLoad& load,
                                             const replication::Connection& conn,
                                             std::chrono::steady_clock::time_point after,
                                             const std::string& origin) {
  std::vector<std::string> problems;
  auto rows = conn.exec("SELECT client, seq, origin FROM ledger");
  std::map<std::pair<int, int>, std::string> origins;
  for (int row = 0; row < rows.rows(); ++row) {
    origins[{std::stoi(std::string(rows.get(row, 0))), std::stoi(std::string(rows.get(row, 1)))}] =
        std::string(rows.get(row, 2));
  }
  for (const auto& commit : load.acked()) {
    if (commit.started <= after) continue;
    auto it = origins.find({commit.client, commit.seq});
    if (it != origins.end() && it->second != origin) {
      problems.push_back(
          fmt::format("client {} seq {} written on {}", commit.client, commit.seq, it->second));
    }
  }
  return problems;
}

// Waits until the ledger on `b` equals the one on `a` (the agent caught up).
inline bool ledger_caught_up(const LocalCluster& a, const LocalCluster& b) {
  return wait_until(
      [&] {
        return table_fingerprint(connect(a), "ledger", "id") ==
               table_fingerprint(connect(b), "ledger", "id");
      },
      std::chrono::seconds(60));
}

class CutoverFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    tools::ClusterOptions source_options;
    source_options.settings = {{"cluster_name", "'source'"}};
    source_options.bindir = source_bindir_;
    tools::ClusterOptions target_options;
    target_options.settings = {{"cluster_name", "'target'"}};
    target_options.bindir = target_bindir_;
    source_ = start_cluster(source_options);
    target_ = start_cluster(target_options);
    bouncer_ = start_pgbouncer(*source_);
    connect(*source_).exec(kLedgerSchema);
    connect(*target_).exec(kLedgerSchema);
    auto init = run_pgferry(with_common({"init", "--no-data"}));
    ASSERT_EQ(init.exit_code, 0) << init.output;
    start_agent();
  }
  void TearDown() override {
    agent_.reset();
    bouncer_.reset();
    source_.reset();
    target_.reset();
  }

  std::vector<std::string> with_common(std::vector<std::string> args) const {
    std::vector<std::string> all = {
        "--source", source_->conninfo(), "--target", target_->conninfo(), "--name", "ferry"};
    all.insert(all.end(), args.begin(), args.end());
    return all;
  }
  void start_agent() {
    std::string log = fmt::format("/tmp/pgferry-cutover-agent-{}-{}.log", ::getpid(), ++agents_);
    agent_ =
        std::make_unique<PgferryProcess>(with_common({"run", "--status-interval-ms", "200"}), log);
  }
  // The cutover or rollback command with the PgBouncer fence and config switch.
  std::vector<std::string> switch_args(const char* command, std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {command,
                                     "--json",
                                     "--pgbouncer",
                                     bouncer_->admin_conninfo(),
                                     "--pgbouncer-config",
                                     bouncer_->config_file().string(),
                                     "--pgbouncer-database",
                                     bouncer_->database(),
                                     "--timeout",
                                     "30"};
    args.insert(args.end(), extra.begin(), extra.end());
    return with_common(args);
  }
  // Waits until the agent streams (its slot active on `side`).
  bool agent_streaming(const LocalCluster& side) {
    return wait_until(
        [&] {
          return query_value(connect(side),
                             "SELECT count(*) FROM pg_replication_slots WHERE "
                             "slot_name = 'ferry' AND active") == "1";
        },
        std::chrono::seconds(60));
  }
  static nlohmann::json report_of(const CommandResult& result) { return json_document(result); }
  bool pgbouncer_paused() {
    auto admin = replication::Connection::open(bouncer_->admin_conninfo(), replication::Side::none,
                                               {{"options", ""}});
    auto result = admin.exec("SHOW DATABASES");
    int name = result.column_index("name"), paused = result.column_index("paused");
    for (int row = 0; row < result.rows(); ++row) {
      if (result.get(row, name) == bouncer_->database()) return result.get(row, paused) != "0";
    }
    return false;
  }
  // kill -9 of a cutover started with spawn_pgferry (output in `log`) and of its guard, the
  // guard first so that it lifts nothing.
  void kill_with_guard(pid_t cutover, const std::string& log) {
    pid_t guard = child_with(cutover, "cutover-guard");
    if (guard <= 0) ::kill(cutover, SIGKILL);  // nothing left running when it fails
    ASSERT_GT(guard, 0) << read_file(log);
    ::kill(guard, SIGKILL);
    ::kill(cutover, SIGKILL);
    int status = 0;
    ::waitpid(cutover, &status, 0);
  }
  std::string through_pgbouncer(const std::string& sql) {
    auto conn = replication::Connection::open(bouncer_->client_conninfo(), replication::Side::none);
    return conn.exec(sql).scalar();
  }

  // The servers' binaries (empty: the system's); a cross-version test sets them in its
  // constructor.
  std::string source_bindir_;
  std::string target_bindir_;
  std::unique_ptr<LocalCluster> source_;
  std::unique_ptr<LocalCluster> target_;
  std::unique_ptr<tools::LocalPgBouncer> bouncer_;
  std::unique_ptr<PgferryProcess> agent_;
  int agents_ = 0;
};

}  // namespace pgferry::testing
