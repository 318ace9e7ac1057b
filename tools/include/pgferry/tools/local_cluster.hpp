// LocalCluster: a throwaway PostgreSQL cluster for tests, benchmarks and `pgferry demo`.
// initdb in a fresh temp dir on a free port, started as the `postgres` user when we run
// as root (the server refuses root), stopped and removed by the destructor. Every live
// cluster is also registered so that a fatal signal stops it (see stop_all_on_signal()).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

namespace pgferry::tools {

struct ClusterOptions {
  // Names the temp dir: <TMPDIR>/<prefix>XXXXXX.
  std::string prefix = "pgferry-test-";
  // Extra postgresql.conf settings, appended after the defaults (so they win).
  std::vector<std::pair<std::string, std::string>> settings;
  // fsync=off and friends: fast, and safe as long as the machine does not crash.
  bool durable = false;
  // Directory with initdb/pg_ctl/postgres; default: $PGFERRY_PG_BINDIR or `pg_config --bindir`.
  std::string bindir;
};

class LocalCluster {
 public:
  explicit LocalCluster(ClusterOptions options = {});
  LocalCluster(const LocalCluster&) = delete;
  LocalCluster& operator=(const LocalCluster&) = delete;
  ~LocalCluster();

  // host=<socket dir> port=<port> user=postgres dbname=<dbname>
  std::string conninfo(std::string_view dbname = "postgres") const;
  // The same over TCP on 127.0.0.1.
  std::string tcp_conninfo(std::string_view dbname = "postgres") const;
  int port() const { return port_; }
  const std::filesystem::path& dir() const { return dir_; }
  std::filesystem::path data_dir() const { return dir_ / "data"; }
  std::filesystem::path socket_dir() const { return dir_; }
  std::filesystem::path log_file() const { return dir_ / "server.log"; }
  const std::string& bindir() const { return bindir_; }
  // Major version of the server binaries, e.g. 15.
  int major_version() const;

  void start();
  // mode: "fast", "immediate" or "smart".
  void stop(std::string_view mode = "fast");
  void restart() {
    stop();
    start();
  }
  // SIGKILL to the postmaster; its children notice and exit. start() recovers.
  void kill9();
  bool running() const { return postmaster_pid_ > 0; }
  pid_t postmaster_pid() const { return postmaster_pid_; }

  // Runs a server binary (psql, pg_dump, pgbench, ...) from bindir as the cluster's OS user.
  // Returns the exit status; output goes to `output` (appended) when given.
  int run_tool(const std::vector<std::string>& args,
               const std::filesystem::path& output = {}) const;

 private:
  void write_settings();
  pid_t read_postmaster_pid() const;

  ClusterOptions options_;
  std::string bindir_;
  std::filesystem::path dir_;
  int port_ = 0;
  pid_t postmaster_pid_ = 0;
};

// Starts argv (argv[0] looked up in PATH) without waiting, stdin from /dev/null, stdout and
// stderr appended to `output` (or inherited when empty); as the `postgres` user when we are
// root and `as_server_user` is set. Returns the child's pid; reap it with waitpid/wait4.
pid_t spawn_process(const std::vector<std::string>& argv, const std::filesystem::path& output = {},
                    bool as_server_user = false);

// A background child process that is stopped (SIGTERM, then SIGKILL after `grace`) when
// this goes away.
class ChildProcess {
 public:
  ChildProcess(const std::vector<std::string>& argv, const std::filesystem::path& output)
      : pid_(spawn_process(argv, output)) {}
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  ~ChildProcess() { stop(); }
  // True once the process exited; then exit_code() is its status (128+signal if killed).
  bool exited();
  // SIGTERM, wait up to `grace`, then SIGKILL; returns the exit code.
  int stop(std::chrono::milliseconds grace = std::chrono::seconds(60));
  int exit_code() const { return exit_code_; }
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_;
  int exit_code_ = -1;
};

// Runs argv (argv[0] looked up in PATH), as the `postgres` user when we are root and
// `as_server_user` is set; stdout and stderr appended to `output` (or inherited when empty).
// Returns the exit status, or 128+signal.
int run_process(const std::vector<std::string>& argv, const std::filesystem::path& output = {},
                bool as_server_user = false);
// Like run_process but returns stdout; throws if the command fails.
std::string capture_process(const std::vector<std::string>& argv, bool as_server_user = false);

// True while `pid` exists and is not a zombie (the postmaster is not our child, and the
// init of a container may be slow to reap it).
bool process_alive(pid_t pid);

// A TCP port on 127.0.0.1 that nothing listens on right now.
int free_port();

// Installs handlers for SIGINT, SIGTERM, SIGHUP, SIGABRT, SIGSEGV that stop every
// registered cluster (immediate shutdown) and then re-raise the signal.
void stop_all_on_signal();

}  // namespace pgferry::tools
