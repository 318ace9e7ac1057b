// Harness implementation.
#include "support/harness.hpp"

#include <fmt/format.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace pgferry::testing {

namespace {

std::vector<std::string> pgferry_argv(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {PGFERRY_BINARY};
  argv.insert(argv.end(), args.begin(), args.end());
  return argv;
}

}  // namespace

std::unique_ptr<LocalCluster> ClusterPairTest::source_;
std::unique_ptr<LocalCluster> ClusterPairTest::target_;

std::unique_ptr<LocalCluster> start_cluster(tools::ClusterOptions options) {
  return std::make_unique<LocalCluster>(std::move(options));
}

std::unique_ptr<tools::LocalPgBouncer> start_pgbouncer(const LocalCluster& server,
                                                       tools::PgBouncerOptions options) {
  return std::make_unique<tools::LocalPgBouncer>(server, std::move(options));
}

void ClusterPairTest::SetUpTestSuite() {
  source_ = start_cluster();
  target_ = start_cluster();
}

void ClusterPairTest::TearDownTestSuite() {
  source_.reset();
  target_.reset();
}

replication::Connection connect(const LocalCluster& cluster, std::string_view dbname,
                                replication::Side side) {
  return replication::Connection::open(cluster.conninfo(dbname), side);
}

std::string query_value(const replication::Connection& conn, std::string_view sql) {
  return conn.exec(sql).scalar();
}

std::vector<std::string> PgferryPair::args(const std::vector<std::string>& command) const {
  std::vector<std::string> all = {"--source",      source_conninfo, "--target",
                                  target_conninfo, "--name",        name};
  all.insert(all.end(), command.begin(), command.end());
  return all;
}

replication::AgentOptions init_agent_pair(const LocalCluster& source, const LocalCluster& target,
                                          const std::string& name, std::string_view schema) {
  connect(source).exec(schema);
  connect(target).exec(schema);
  PgferryPair pair{source.conninfo(), target.conninfo(), name};
  auto init = pair.run({"init", "--no-data"});
  if (init.exit_code != 0) {
    throw std::runtime_error(
        fmt::format("pgferry init failed ({}): {}", init.exit_code, init.output));
  }
  replication::AgentOptions options;
  options.source_conninfo = source.conninfo();
  options.target_conninfo = target.conninfo();
  options.name = name;
  return options;
}

bool wait_until(const std::function<bool()>& condition, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    if (condition()) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

CommandResult run_pgferry(const std::vector<std::string>& args) {
  char path[] = "/tmp/pgferry-cmd-XXXXXX";
  int fd = ::mkstemp(path);
  ::close(fd);
  CommandResult result;
  result.exit_code = tools::run_process(pgferry_argv(args), path);
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  result.output = text.str();
  ::unlink(path);
  return result;
}

nlohmann::json json_document(const CommandResult& result) {
  auto start = result.output.rfind("{\n", 0) == 0 ? 0 : result.output.find("\n{\n");
  if (start == std::string::npos) return {};
  try {
    return nlohmann::json::parse(result.output.substr(start));
  } catch (const nlohmann::json::exception&) {
    return {};
  }
}

std::set<std::string> verify_differences(const nlohmann::json& report) {
  std::set<std::string> out;
  for (const auto& table : report["tables"]) {
    for (const auto& d : table["differences"]) {
      out.insert(fmt::format("{}.{} {} {} {}", table["schema"].get<std::string>(),
                             table["name"].get<std::string>(), d["kind"].get<std::string>(),
                             d["key"].dump(), d["columns"].dump()));
    }
  }
  return out;
}

pid_t spawn_pgferry(const std::vector<std::string>& args, const std::string& log) {
  return tools::spawn_process(pgferry_argv(args), log);
}

int run_pgferry_with_sigkills(const std::vector<std::string>& args, const std::string& log,
                              int rounds, const std::function<long long()>& applied,
                              std::mt19937& random, std::chrono::milliseconds max_delay,
                              const std::function<void()>& after_round) {
  int killed_mid_stream = 0;
  long long before = applied();
  for (int round = 0; round < rounds; ++round) {
    pid_t child = spawn_pgferry(args, log);
    int status = 0;
    bool exited = false;
    wait_until(
        [&] {
          if (::waitpid(child, &status, WNOHANG) == child) exited = true;
          return exited || applied() > before;
        },
        std::chrono::seconds(120));
    if (!exited) {
      std::this_thread::sleep_for(std::chrono::milliseconds(
          std::uniform_int_distribution<long long>(0, max_delay.count())(random)));
      ::kill(child, SIGKILL);
      ::waitpid(child, &status, 0);
      if (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) ++killed_mid_stream;
    }
    before = applied();
    if (after_round) after_round();
  }
  return killed_mid_stream;
}

PgferryProcess::PgferryProcess(const std::vector<std::string>& args, std::string log)
    : tools::ChildProcess(pgferry_argv(args), log), log_(std::move(log)) {}

std::string PgferryProcess::log_text() const {
  std::ifstream in(log_);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

int terminate_backends(const replication::Connection& conn, std::string_view where) {
  return std::stoi(
      query_value(conn, fmt::format("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                    "WHERE pid <> pg_backend_pid() AND ({})",
                                    where)));
}

std::string table_fingerprint(const replication::Connection& conn, std::string_view table,
                              std::string_view order_by) {
  return conn
      .exec(fmt::format("SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, '|' ORDER BY "
                        "{})), '') FROM {} t",
                        order_by, table))
      .scalar();
}

}  // namespace pgferry::testing
