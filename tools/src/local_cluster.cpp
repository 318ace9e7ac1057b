// LocalCluster implementation. Processes are spawned with posix_spawn; when we are root,
// commands that touch the data directory run under `runuser -u postgres --`.
#include "pgferry/tools/local_cluster.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>
#include <stdexcept>
#include <thread>

extern char** environ;

namespace pgferry::tools {

namespace fs = std::filesystem;

namespace {

constexpr const char* kServerUser = "postgres";

// Registry of running postmasters for the signal handler: plain atomics, no allocation.
constexpr std::size_t kMaxClusters = 64;
std::array<std::atomic<pid_t>, kMaxClusters> g_postmasters{};

void register_postmaster(pid_t pid) {
  for (auto& slot : g_postmasters) {
    pid_t empty = 0;
    if (slot.compare_exchange_strong(empty, pid)) return;
  }
}

void unregister_postmaster(pid_t pid) {
  for (auto& slot : g_postmasters) {
    pid_t expected = pid;
    if (slot.compare_exchange_strong(expected, 0)) return;
  }
}

extern "C" void stop_clusters_and_reraise(int signo) {
  for (auto& slot : g_postmasters) {
    pid_t pid = slot.exchange(0);
    if (pid > 0) ::kill(pid, SIGQUIT);  // SIGQUIT: immediate shutdown
  }
  ::signal(signo, SIG_DFL);
  ::raise(signo);
}

bool running_as_root() {
  return ::geteuid() == 0;
}

std::string default_bindir() {
  if (const char* env = std::getenv("PGFERRY_PG_BINDIR"); env && *env) return env;
  std::string out = capture_process({"pg_config", "--bindir"});
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

}  // namespace

pid_t spawn_process(const std::vector<std::string>& argv, const fs::path& output,
                    bool as_server_user) {
  std::vector<std::string> full;
  if (as_server_user && running_as_root()) {
    full = {"runuser", "-u", kServerUser, "--"};
  }
  full.insert(full.end(), argv.begin(), argv.end());
  std::vector<char*> args;
  for (auto& arg : full) args.push_back(arg.data());
  args.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  if (!output.empty()) {
    posix_spawn_file_actions_addopen(&actions, 1, output.c_str(), O_WRONLY | O_CREAT | O_APPEND,
                                     0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
  }
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  pid_t pid = 0;
  int rc = posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) {
    throw std::runtime_error(fmt::format("cannot run {}: {}", full[0], std::strerror(rc)));
  }
  return pid;
}

int run_process(const std::vector<std::string>& argv, const fs::path& output, bool as_server_user) {
  pid_t pid = spawn_process(argv, output, as_server_user);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

bool ChildProcess::exited() {
  if (pid_ <= 0) return true;
  int status = 0;
  if (::waitpid(pid_, &status, WNOHANG) != pid_) return false;
  exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  pid_ = 0;
  return true;
}

int ChildProcess::stop(std::chrono::milliseconds grace) {
  if (pid_ <= 0) return exit_code_;
  ::kill(pid_, SIGTERM);
  auto deadline = std::chrono::steady_clock::now() + grace;
  while (!exited() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (pid_ > 0) {
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = 0;
    exit_code_ = 128 + SIGKILL;
  }
  return exit_code_;
}

std::string capture_process(const std::vector<std::string>& argv, bool as_server_user) {
  char path[] = "/tmp/pgferry-capture-XXXXXX";
  int fd = ::mkstemp(path);
  if (fd < 0) throw std::runtime_error("mkstemp failed");
  ::close(fd);
  int status = run_process(argv, path, as_server_user);
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  ::unlink(path);
  if (status != 0) {
    throw std::runtime_error(
        fmt::format("{} exited with status {}: {}", argv.at(0), status, text.str()));
  }
  return text.str();
}

bool process_alive(pid_t pid) {
  if (pid <= 0 || ::kill(pid, 0) != 0) return false;
  std::ifstream stat(fmt::format("/proc/{}/stat", pid));
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  auto paren = text.rfind(')');
  return paren == std::string::npos || paren + 2 >= text.size() || text[paren + 2] != 'Z';
}

int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw std::runtime_error("socket() failed");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    throw std::runtime_error("bind() failed");
  }
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

void stop_all_on_signal() {
  for (int signo : {SIGINT, SIGTERM, SIGHUP, SIGABRT, SIGSEGV}) {
    ::signal(signo, stop_clusters_and_reraise);
  }
}

LocalCluster::LocalCluster(ClusterOptions options) : options_(std::move(options)) {
  bindir_ = options_.bindir.empty() ? default_bindir() : options_.bindir;
  const char* tmp = std::getenv("TMPDIR");
  std::string pattern =
      (fs::path(tmp && *tmp ? tmp : "/tmp") / (options_.prefix + "XXXXXX")).string();
  if (!::mkdtemp(pattern.data())) {
    throw std::runtime_error(fmt::format("mkdtemp {}: {}", pattern, std::strerror(errno)));
  }
  dir_ = pattern;
  // Who made it: tools/stop-stray-clusters.sh leaves a cluster alone while its owner lives
  // (another test run on the same machine), and removes it once the owner is gone.
  std::ofstream(dir_ / "owner.pid") << ::getpid() << "\n";
  if (running_as_root()) {
    passwd* pw = ::getpwnam(kServerUser);
    if (!pw) {
      throw std::runtime_error(
          "running as root, but there is no 'postgres' user to run the server as; install the "
          "postgresql package (tools/install-deps.sh)");
    }
    if (::chown(dir_.c_str(), pw->pw_uid, pw->pw_gid) != 0) {
      throw std::runtime_error(fmt::format("chown {}: {}", dir_.string(), std::strerror(errno)));
    }
  }
  ::chmod(dir_.c_str(), 0700);

  fs::path initdb_log = dir_ / "initdb.log";
  int status = run_process({bindir_ + "/initdb", "-D", data_dir().string(), "-U", "postgres",
                            "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"},
                           initdb_log, true);
  if (status != 0) {
    std::ifstream in(initdb_log);
    std::stringstream text;
    text << in.rdbuf();
    fs::remove_all(dir_);
    throw std::runtime_error(fmt::format("initdb failed ({}): {}", status, text.str()));
  }
  for (int attempt = 0;; ++attempt) {
    port_ = free_port();
    write_settings();
    try {
      start();
      break;
    } catch (const std::exception&) {
      if (attempt >= 4) {
        fs::remove_all(dir_);
        throw;
      }
    }
  }
}

LocalCluster::~LocalCluster() {
  try {
    if (postmaster_pid_ > 0) stop("immediate");
  } catch (...) {
  }
  std::error_code ec;
  if (!std::getenv("PGFERRY_KEEP_CLUSTERS")) fs::remove_all(dir_, ec);
}

void LocalCluster::write_settings() {
  std::vector<std::pair<std::string, std::string>> settings = {
      {"port", std::to_string(port_)},
      {"listen_addresses", "'127.0.0.1'"},
      {"unix_socket_directories", fmt::format("'{}'", dir_.string())},
      {"wal_level", "logical"},
      {"max_replication_slots", "20"},
      {"max_wal_senders", "20"},
      {"max_connections", "100"},
      {"shared_buffers", "128MB"},
      {"logging_collector", "off"},
      {"log_min_messages", "warning"},
  };
  if (!options_.durable) {
    settings.insert(settings.end(), {{"fsync", "off"}, {"full_page_writes", "off"}});
  }
  settings.insert(settings.end(), options_.settings.begin(), options_.settings.end());
  // postgresql.auto.conf is read last, so these win over postgresql.conf; rewriting it
  // keeps a port change on retry from piling up lines.
  std::ofstream conf(data_dir() / "postgresql.auto.conf", std::ios::trunc);
  conf << "# written by pgferry's LocalCluster\n";
  for (const auto& [key, value] : settings) conf << key << " = " << value << "\n";
}

pid_t LocalCluster::read_postmaster_pid() const {
  std::ifstream pidfile(data_dir() / "postmaster.pid");
  pid_t pid = 0;
  pidfile >> pid;
  return pid;
}

void LocalCluster::start() {
  // A postmaster that died behind our back (killed by a test) is no longer ours to stop.
  if (postmaster_pid_ > 0) unregister_postmaster(postmaster_pid_);
  postmaster_pid_ = 0;
  int status = 1;
  // After kill9() the old backends may hold the shared memory for a moment: retry.
  for (int attempt = 0; attempt < 20; ++attempt) {
    status = run_process({bindir_ + "/pg_ctl", "-D", data_dir().string(), "-l", log_file().string(),
                          "-w", "-t", "60", "start"},
                         dir_ / "pg_ctl.log", true);
    if (status == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  if (status != 0) {
    std::ifstream in(log_file());
    std::stringstream text;
    text << in.rdbuf();
    throw std::runtime_error(fmt::format("pg_ctl start failed on port {}: {}", port_, text.str()));
  }
  postmaster_pid_ = read_postmaster_pid();
  register_postmaster(postmaster_pid_);
}

void LocalCluster::stop(std::string_view mode) {
  if (postmaster_pid_ <= 0) return;
  run_process({bindir_ + "/pg_ctl", "-D", data_dir().string(), "-m", std::string(mode), "-w", "-t",
               "60", "stop"},
              dir_ / "pg_ctl.log", true);
  unregister_postmaster(postmaster_pid_);
  postmaster_pid_ = 0;
}

void LocalCluster::kill9() {
  if (postmaster_pid_ <= 0) return;
  ::kill(postmaster_pid_, SIGKILL);
  unregister_postmaster(postmaster_pid_);
  // Wait until the postmaster is gone (it is not our child: poll).
  for (int i = 0; i < 500 && process_alive(postmaster_pid_); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  postmaster_pid_ = 0;
}

int LocalCluster::run_tool(const std::vector<std::string>& args, const fs::path& output) const {
  std::vector<std::string> argv = args;
  argv.at(0) = bindir_ + "/" + argv[0];
  return run_process(argv, output, true);
}

int LocalCluster::major_version() const {
  std::string out = capture_process({bindir_ + "/postgres", "--version"});
  // "postgres (PostgreSQL) 15.18 (Debian ...)"
  auto pos = out.find(") ");
  return pos == std::string::npos ? 0 : std::atoi(out.c_str() + pos + 2);
}

std::string LocalCluster::conninfo(std::string_view dbname) const {
  return fmt::format("host={} port={} user=postgres dbname={}", dir_.string(), port_, dbname);
}

std::string LocalCluster::tcp_conninfo(std::string_view dbname) const {
  return fmt::format("host=127.0.0.1 port={} user=postgres dbname={}", port_, dbname);
}

}  // namespace pgferry::tools
