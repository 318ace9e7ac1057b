// Harness implementation.
#include "support/harness.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

namespace pgferry::testing {

std::unique_ptr<LocalCluster> ClusterPairTest::source_;
std::unique_ptr<LocalCluster> ClusterPairTest::target_;

std::unique_ptr<LocalCluster> start_cluster(tools::ClusterOptions options) {
  return std::make_unique<LocalCluster>(std::move(options));
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
  std::vector<std::string> argv = {PGFERRY_BINARY};
  argv.insert(argv.end(), args.begin(), args.end());
  CommandResult result;
  result.exit_code = tools::run_process(argv, path);
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  result.output = text.str();
  ::unlink(path);
  return result;
}

pid_t spawn_pgferry(const std::vector<std::string>& args, const std::string& log) {
  pid_t pid = ::fork();
  if (pid == 0) {
    int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      ::dup2(fd, STDOUT_FILENO);
      ::dup2(fd, STDERR_FILENO);
    }
    std::string binary = PGFERRY_BINARY;
    std::vector<std::string> copies = args;
    std::vector<char*> argv = {binary.data()};
    for (auto& arg : copies) argv.push_back(arg.data());
    argv.push_back(nullptr);
    ::execv(binary.c_str(), argv.data());
    ::_exit(127);
  }
  return pid;
}

PgferryProcess::PgferryProcess(const std::vector<std::string>& args, std::string log)
    : log_(std::move(log)) {
  pid_ = spawn_pgferry(args, log_);
}

PgferryProcess::~PgferryProcess() {
  stop();
}

bool PgferryProcess::exited() {
  if (pid_ <= 0) return true;
  int status = 0;
  if (::waitpid(pid_, &status, WNOHANG) != pid_) return false;
  exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  pid_ = 0;
  return true;
}

int PgferryProcess::stop() {
  if (pid_ <= 0) return exit_code_;
  ::kill(pid_, SIGTERM);
  if (!wait_until([this] { return exited(); }, std::chrono::seconds(60))) {
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = 0;
    exit_code_ = 128 + SIGKILL;
  }
  return exit_code_;
}

std::string PgferryProcess::log_text() const {
  std::ifstream in(log_);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
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
