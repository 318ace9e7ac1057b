// LocalPgBouncer implementation: writes pgbouncer.ini and userlist.txt into a temp dir, runs
// pgbouncer in the foreground (as `postgres` under runuser when we are root) and waits until
// it accepts connections on its port.
#include "pgferry/tools/local_pgbouncer.hpp"

#include <fmt/format.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "pgferry/tools/local_cluster.hpp"

namespace pgferry::tools {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

bool port_accepts(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  ::close(fd);
  return ok;
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

LocalPgBouncer::LocalPgBouncer(const LocalCluster& server, PgBouncerOptions options)
    : options_(std::move(options)) {
  binary_ = options_.binary;
  if (binary_.empty()) {
    const char* env = std::getenv("PGFERRY_PGBOUNCER");
    binary_ = env && *env ? env : "/usr/sbin/pgbouncer";
  }
  if (::access(binary_.c_str(), X_OK) != 0) {
    throw std::runtime_error(fmt::format(
        "no pgbouncer at {}: install the pgbouncer package (tools/install-deps.sh) or set "
        "PGFERRY_PGBOUNCER",
        binary_));
  }
  const char* tmp = std::getenv("TMPDIR");
  std::string pattern =
      (fs::path(tmp && *tmp ? tmp : "/tmp") / "pgferry-pgbouncer-XXXXXX").string();
  if (!::mkdtemp(pattern.data())) {
    throw std::runtime_error(fmt::format("mkdtemp {}: {}", pattern, std::strerror(errno)));
  }
  dir_ = pattern;
  if (::geteuid() == 0) {
    if (passwd* pw = ::getpwnam("postgres")) {
      if (::chown(dir_.c_str(), pw->pw_uid, pw->pw_gid) != 0) {
        throw std::runtime_error(fmt::format("chown {}: {}", dir_.string(), std::strerror(errno)));
      }
    }
  }
  ::chmod(dir_.c_str(), 0755);
  port_ = free_port();
  write_config(server);
  start();
}

LocalPgBouncer::~LocalPgBouncer() {
  try {
    stop();
  } catch (...) {
  }
  std::error_code ec;
  if (!std::getenv("PGFERRY_KEEP_CLUSTERS")) fs::remove_all(dir_, ec);
}

void LocalPgBouncer::write_config(const LocalCluster& server) {
  {
    std::ofstream users(dir_ / "userlist.txt", std::ios::trunc);
    users << "\"postgres\" \"\"\n\"" << options_.admin_user << "\" \"\"\n";
  }
  std::ofstream ini(config_file(), std::ios::trunc);
  ini << "; written by pgferry's LocalPgBouncer\n"
      << "[databases]\n"
      << fmt::format("{} = host={} port={} dbname={}\n", options_.database,
                     server.socket_dir().string(), server.port(), options_.server_dbname)
      << "\n[pgbouncer]\n"
      << "listen_addr = 127.0.0.1\n"
      << fmt::format("listen_port = {}\n", port_)
      << fmt::format("unix_socket_dir = {}\n", dir_.string()) << "auth_type = trust\n"
      << fmt::format("auth_file = {}\n", (dir_ / "userlist.txt").string())
      << fmt::format("admin_users = {}\n", options_.admin_user)
      << fmt::format("pool_mode = {}\n", options_.pool_mode)
      << fmt::format("default_pool_size = {}\n", options_.default_pool_size)
      << fmt::format("max_client_conn = {}\n", options_.max_client_conn)
      << fmt::format("logfile = {}\n", log_file().string())
      << fmt::format("pidfile = {}\n", (dir_ / "pgbouncer.pid").string())
      << "ignore_startup_parameters = extra_float_digits,options\n"
      << "server_check_delay = 0\n";
  ini.close();
  if (::geteuid() == 0) {
    if (passwd* pw = ::getpwnam("postgres")) {
      for (const char* name : {"userlist.txt", "pgbouncer.ini"}) {
        (void)::chown((dir_ / name).c_str(), pw->pw_uid, pw->pw_gid);
      }
    }
  }
}

bool LocalPgBouncer::running() const {
  return pid_ > 0 && process_alive(pid_);
}

void LocalPgBouncer::start() {
  if (running()) return;
  fs::remove(dir_ / "pgbouncer.pid");
  launcher_pid_ = spawn_process({binary_, config_file().string()}, dir_ / "stdout.log", true);
  auto deadline = std::chrono::steady_clock::now() + 30s;
  while (true) {
    std::ifstream pidfile(dir_ / "pgbouncer.pid");
    pid_t pid = 0;
    if (pidfile >> pid; pid > 0 && port_accepts(port_)) {
      pid_ = pid;
      return;
    }
    int status = 0;
    if (::waitpid(launcher_pid_, &status, WNOHANG) == launcher_pid_) {
      launcher_pid_ = 0;
      throw std::runtime_error(fmt::format("pgbouncer exited at start: {}{}",
                                           read_text(dir_ / "stdout.log"), read_text(log_file())));
    }
    if (std::chrono::steady_clock::now() > deadline) {
      throw std::runtime_error(fmt::format("pgbouncer did not listen on port {} within 30 s: {}",
                                           port_, read_text(log_file())));
    }
    std::this_thread::sleep_for(10ms);
  }
}

void LocalPgBouncer::stop() {
  if (pid_ > 0) {
    ::kill(pid_, SIGTERM);  // immediate shutdown
    for (int i = 0; i < 300 && process_alive(pid_); ++i) std::this_thread::sleep_for(10ms);
    if (process_alive(pid_)) ::kill(pid_, SIGKILL);
    for (int i = 0; i < 300 && process_alive(pid_); ++i) std::this_thread::sleep_for(10ms);
    pid_ = 0;
  }
  if (launcher_pid_ > 0) {
    int status = 0;
    for (int i = 0; i < 300; ++i) {
      if (::waitpid(launcher_pid_, &status, WNOHANG) != 0) break;
      std::this_thread::sleep_for(10ms);
    }
    if (::waitpid(launcher_pid_, &status, WNOHANG) == 0) {
      ::kill(launcher_pid_, SIGKILL);
      ::waitpid(launcher_pid_, &status, 0);
    }
    launcher_pid_ = 0;
  }
}

std::string LocalPgBouncer::client_conninfo() const {
  return fmt::format("host=127.0.0.1 port={} user=postgres dbname={} application_name=app", port_,
                     options_.database);
}

std::string LocalPgBouncer::admin_conninfo() const {
  return fmt::format("host=127.0.0.1 port={} user={} dbname=pgbouncer", port_, options_.admin_user);
}

}  // namespace pgferry::tools
