// LocalPgBouncer: a throwaway PgBouncer for tests, benchmarks and `pgferry demo`, in front of
// a LocalCluster: transaction pooling, trust authentication, an admin console user, one
// [databases] entry, in a fresh temp dir on a free port, run as the `postgres` user when we
// are root, stopped by the destructor (always).
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <string>

namespace pgferry::tools {

class LocalCluster;

struct PgBouncerOptions {
  // The [databases] alias clients connect to (and that PAUSE/RESUME name).
  std::string database = "appdb";
  // The database on the cluster the alias points at.
  std::string server_dbname = "postgres";
  // The admin console user (admin_users); it logs in to the virtual database `pgbouncer`.
  std::string admin_user = "pgbouncer";
  std::string pool_mode = "transaction";
  int default_pool_size = 20;
  int max_client_conn = 200;
  // The pgbouncer binary; default $PGFERRY_PGBOUNCER or /usr/sbin/pgbouncer.
  std::string binary;
};

class LocalPgBouncer {
 public:
  LocalPgBouncer(const LocalCluster& server, PgBouncerOptions options = {});
  LocalPgBouncer(const LocalPgBouncer&) = delete;
  LocalPgBouncer& operator=(const LocalPgBouncer&) = delete;
  ~LocalPgBouncer();

  // What an application uses: host=127.0.0.1 port=<port> user=postgres dbname=<alias>
  // application_name=app (not pgferry*, which the fences leave alone).
  std::string client_conninfo() const;
  // The admin console: host=127.0.0.1 port=<port> user=<admin> dbname=pgbouncer.
  std::string admin_conninfo() const;
  int port() const { return port_; }
  const std::string& database() const { return options_.database; }
  // The configuration file (pgferry cutover --pgbouncer-config rewrites its [databases]).
  std::filesystem::path config_file() const { return dir_ / "pgbouncer.ini"; }
  std::filesystem::path log_file() const { return dir_ / "pgbouncer.log"; }
  pid_t pid() const { return pid_; }
  bool running() const;

  void start();
  // SIGTERM (immediate shutdown), then SIGKILL after 3 s.
  void stop();

 private:
  void write_config(const LocalCluster& server);

  PgBouncerOptions options_;
  std::string binary_;
  std::filesystem::path dir_;
  int port_ = 0;
  pid_t launcher_pid_ = 0;  // runuser (or pgbouncer itself when not root)
  pid_t pid_ = 0;           // pgbouncer, from its pidfile
};

}  // namespace pgferry::tools
