// A cutover that dies (SIGKILL) around its point of no return, the commit of the history
// row's `switched` state, with --pgbouncer-config and --switch-command both switching:
// - just before that commit: its guard switches back (config restored, the command run
//   towards the source with PGFERRY_ABORT=1) and lifts the fence; a re-run marks it aborted;
// - just after it, before the guard heard of it: the guard only lifts the fence (traffic
//   stays on the target) and a re-run finishes the cutover;
// - just before it with a switch command that cannot run back: the guard finishes the switch
//   instead (marks the row `switched`), so writes on the target travel back to the source;
// - the cutover and its guard both killed while switching (the row says `switching`): the
//   agent waits and PgBouncer stays paused until a re-run, which decides from where writes
//   went since the fence: nowhere → it switches back, marks the dead run aborted and cuts
//   over; on the target → it finishes the switch; on both sides → it stops and says so,
//   with the fence lifted, until --settle chooses (which is refused without such a row);
// - the new primary took writes before the guard acted: the guard finishes the switch;
// - the switch command writes on the new primary, then hangs past its budget: the cutover's
//   own abort reads the new slot, leaves traffic there (row `switching`, exit 1, not 7) and
//   a re-run finishes the switch;
// - the target dies just before the `switched` UPDATE: traffic stays on it, exit 5; with
//   the target back, a re-run settles the `switching` row (no writes anywhere: back) and
//   cuts over. (PGFERRY_CUTOVER_FAULT_AT runs a command at a named point.)
// - the cutover dies where its closing never reaches the target (a proxy keeps its session,
//   and with it the cutover's lock): the guard ends that session and switches back.
// (PGFERRY_CUTOVER_CRASH_AT makes the cutover kill itself at a named point.)
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <thread>

#include "support/cutover_fixture.hpp"

using namespace pgferry::testing;
using namespace std::chrono_literals;

// A TCP proxy to a server that, like a network that lost the closing of a connection, keeps
// the server's side open when the client goes away (the server keeps that session, and its
// locks, until TCP gives up: hours by default).
class HalfOpenProxy {
 public:
  explicit HalfOpenProxy(int server_port) : server_port_(server_port) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listen_fd_ < 0) throw std::runtime_error("half-open proxy: no socket");
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof address;
    if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&address), length) != 0 ||
        ::listen(listen_fd_, 16) != 0 ||
        ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
      ::close(listen_fd_);
      throw std::runtime_error("half-open proxy: cannot listen");
    }
    port_ = ntohs(address.sin_port);
    thread_ = std::thread([this] { run(); });
  }
  ~HalfOpenProxy() {
    stop_ = true;
    thread_.join();
    ::close(listen_fd_);
    for (auto& pair : pairs_) {
      if (pair.client >= 0) ::close(pair.client);
      if (pair.server >= 0) ::close(pair.server);
    }
  }
  int port() const { return port_; }

 private:
  struct Pair {
    int client;
    int server;
  };
  // Copies what `from` has to `to` (blocking: the test's traffic is small); false at its end.
  static bool forward(int from, int to) {
    char buffer[16384];
    ssize_t n = ::read(from, buffer, sizeof buffer);
    if (n <= 0) return false;
    for (ssize_t done = 0; to >= 0 && done < n;) {
      // MSG_NOSIGNAL: a peer gone meanwhile must not SIGPIPE the test.
      ssize_t written = ::send(to, buffer + done, static_cast<std::size_t>(n - done), MSG_NOSIGNAL);
      if (written <= 0) break;
      done += written;
    }
    return true;
  }
  void accept_one() {
    int client = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (client < 0) return;
    int server = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    address.sin_port = htons(static_cast<std::uint16_t>(server_port_));
    if (server < 0 ||
        ::connect(server, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
      ::close(client);
      if (server >= 0) ::close(server);
      return;
    }
    pairs_.push_back({client, server});
  }
  void run() {
    while (!stop_) {
      std::vector<pollfd> fds = {{listen_fd_, POLLIN, 0}};
      for (const auto& pair : pairs_) {
        fds.push_back({pair.client, static_cast<short>(pair.client >= 0 ? POLLIN : 0), 0});
        fds.push_back({pair.server, static_cast<short>(pair.server >= 0 ? POLLIN : 0), 0});
      }
      if (::poll(fds.data(), fds.size(), 100) <= 0) continue;
      std::size_t count = pairs_.size();
      for (std::size_t i = 0; i < count; ++i) {
        auto& pair = pairs_[i];
        if (pair.client >= 0 && fds[1 + 2 * i].revents != 0 && !forward(pair.client, pair.server)) {
          // The client went away: its closing never reaches the server.
          ::close(pair.client);
          pair.client = -1;
        }
        if (pair.server >= 0 && fds[2 + 2 * i].revents != 0 && !forward(pair.server, pair.client)) {
          ::close(pair.server);
          pair.server = -1;
          if (pair.client >= 0) ::close(pair.client);
          pair.client = -1;
        }
      }
      if (fds[0].revents & POLLIN) accept_one();
    }
  }

  int server_port_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::vector<Pair> pairs_;
  std::thread thread_;
};

class CutoverCrash : public CutoverFixture {
 protected:
  void TearDown() override {
    ::unsetenv("PGFERRY_CUTOVER_CRASH_AT");
    ::unsetenv("PGFERRY_CUTOVER_FAULT_AT");
    ::unsetenv("PGFERRY_CUTOVER_FAULT");
    std::remove(marker_.c_str());
    CutoverFixture::TearDown();
  }
  // Records each call as "<PGFERRY_ABORT> <PGFERRY_NEW_PORT>" and succeeds.
  std::string recording_command() const {
    return fmt::format("echo \"$PGFERRY_ABORT $PGFERRY_NEW_PORT\" >> {}", marker_);
  }
  std::string history_state(const std::string& id) {
    return query_value(
        connect(*target_),
        fmt::format("SELECT state FROM pgferry.cutover_history WHERE id = '{}'", id));
  }
  // Kills a cutover and its guard while its --switch-command hangs (config rewritten, row
  // `switching`, PgBouncer paused) after 50 rows went through PgBouncer.
  void kill_both_while_switching() {
    auto original = read_file(bouncer_->config_file().string());
    ASSERT_EQ(through_pgbouncer("WITH i AS (INSERT INTO ledger (client, seq) SELECT 7, g FROM "
                                "generate_series(1, 50) g RETURNING 1) SELECT count(*) FROM i"),
              "50");
    std::string log = fmt::format("/tmp/pgferry-cutover-kill-both-{}.log", ::getpid());
    pid_t cutover = spawn_pgferry(switch_args("cutover", {"--switch-command", "sleep 20"}), log);
    ASSERT_TRUE(wait_until(
        [&] {
          return read_file(bouncer_->config_file().string()) != original && pgbouncer_paused();
        },
        30s))
        << read_file(log);
    ASSERT_NO_FATAL_FAILURE(kill_with_guard(cutover, log));
    ASSERT_EQ(history_state(first_run_id()), "switching");
  }
  // Inserts `rows` ledger rows of `client` straight into `side` (not through PgBouncer), with
  // ids far from the sequences'.
  static void write_directly(const LocalCluster& side, int client, int rows) {
    connect(side).exec(
        fmt::format("INSERT INTO ledger (id, client, seq) SELECT 1000000 * {0} + g, {0}, g FROM "
                    "generate_series(1, {1}) g",
                    client, rows));
  }
  // Waits until the source holds `rows` ledger rows of `client` (replicated back).
  bool reaches_source(int client, const std::string& rows) {
    return wait_until(
        [&] {
          return query_value(
                     connect(*source_),
                     fmt::format("SELECT count(*) FROM ledger WHERE client = {}", client)) == rows;
        },
        60s);
  }
  std::string first_run_id() {
    return query_value(connect(*target_),
                       "SELECT id FROM pgferry.cutover_history ORDER BY started_at LIMIT 1");
  }

  std::string marker_ = fmt::format("/tmp/pgferry-crash-switch-{}.txt", ::getpid());
};

TEST_F(CutoverCrash, DiesBeforeTheSwitchCommitsGuardSwitchesBack) {
  ASSERT_TRUE(agent_streaming(*source_));
  auto original = read_file(bouncer_->config_file().string());
  ::setenv("PGFERRY_CUTOVER_CRASH_AT", "before-switched", 1);
  auto result = run_pgferry(switch_args("cutover", {"--switch-command", recording_command()}));
  ::unsetenv("PGFERRY_CUTOVER_CRASH_AT");
  EXPECT_NE(result.exit_code, 0) << result.output;
  EXPECT_EQ(report_of(result), nlohmann::json()) << result.output;  // died, no report
  // The guard: the command back towards the source, the config restored, the fence lifted.
  EXPECT_TRUE(wait_until(
      [&] {
        return read_file(marker_) == fmt::format("0 {}\n1 {}\n", target_->port(), source_->port());
      },
      30s))
      << read_file(marker_) << result.output;
  EXPECT_TRUE(
      wait_until([&] { return read_file(bouncer_->config_file().string()) == original; }, 30s));
  EXPECT_TRUE(wait_until([&] { return !pgbouncer_paused(); }, 30s));
  EXPECT_EQ(through_pgbouncer("SELECT current_setting('cluster_name')"), "source");
  auto id = first_run_id();
  EXPECT_EQ(history_state(id), "running");

  // A re-run marks it aborted and cuts over.
  ASSERT_TRUE(agent_streaming(*source_)) << agent_->log_text();
  auto rerun = run_pgferry(switch_args("cutover"));
  ASSERT_EQ(rerun.exit_code, 0) << rerun.output << agent_->log_text();
  EXPECT_EQ(history_state(id), "aborted");
  EXPECT_EQ(through_pgbouncer("SELECT current_setting('cluster_name')"), "target");
}

TEST_F(CutoverCrash, DiesAfterTheSwitchCommitsGuardKeepsTheSwitch) {
  ASSERT_TRUE(agent_streaming(*source_));
  auto original = read_file(bouncer_->config_file().string());
  ::setenv("PGFERRY_CUTOVER_CRASH_AT", "after-switched", 1);
  auto result = run_pgferry(switch_args("cutover", {"--switch-command", recording_command()}));
  ::unsetenv("PGFERRY_CUTOVER_CRASH_AT");
  EXPECT_NE(result.exit_code, 0) << result.output;
  auto id = first_run_id();
  EXPECT_EQ(history_state(id), "switched");
  // The guard lifts the fence and leaves traffic on the target: no call back, the config
  // still points at the target.
  EXPECT_TRUE(wait_until([&] { return !pgbouncer_paused(); }, 30s));
  EXPECT_EQ(through_pgbouncer("SELECT current_setting('cluster_name')"), "target");
  EXPECT_NE(read_file(bouncer_->config_file().string()), original);
  EXPECT_EQ(read_file(marker_), fmt::format("0 {}\n", target_->port()));

  // A re-run finishes it: nothing left to cut over.
  auto rerun = run_pgferry(switch_args("cutover"));
  ASSERT_EQ(rerun.exit_code, 0) << rerun.output;
  EXPECT_NE(rerun.output.find("had switched traffic: finished it"), std::string::npos)
      << rerun.output;
  EXPECT_EQ(history_state(id), "completed");
  EXPECT_EQ(read_file(marker_), fmt::format("0 {}\n", target_->port()));
  EXPECT_EQ(through_pgbouncer("SELECT current_setting('cluster_name')"), "target");
}

TEST_F(CutoverCrash, SettleWithoutAnUnsettledSwitchIsRefused) {
  ASSERT_TRUE(agent_streaming(*source_));
  auto result = run_pgferry(switch_args("cutover", {"--settle", "back"}));
  EXPECT_NE(result.exit_code, 0) << result.output;
  EXPECT_NE(result.output.find("--settle back: no cutover or rollback of 'ferry' died while "
                               "switching traffic"),
            std::string::npos)
      << result.output;
  EXPECT_EQ(query_value(connect(*target_), "SELECT count(*) FROM pgferry.cutover_history"), "0");
}

TEST_F(CutoverCrash, WayBackFailsGuardFinishesTheSwitch) {
  ASSERT_TRUE(agent_streaming(*source_));
  auto original = read_file(bouncer_->config_file().string());
  // Records each call and fails when asked to point back at the source.
  auto command = recording_command() + " && test \"$PGFERRY_ABORT\" = 0";
  ::setenv("PGFERRY_CUTOVER_CRASH_AT", "before-switched", 1);
  auto result = run_pgferry(switch_args("cutover", {"--switch-command", command}));
  ::unsetenv("PGFERRY_CUTOVER_CRASH_AT");
  EXPECT_NE(result.exit_code, 0) << result.output;
  auto id = first_run_id();
  // The guard: back (config restored, the command fails), then forward again, row `switched`.
  EXPECT_TRUE(wait_until([&] { return history_state(id) == "switched"; }, 30s))
      << read_file(marker_) << result.output;
  EXPECT_EQ(read_file(marker_),
            fmt::format("0 {0}\n1 {1}\n0 {0}\n", target_->port(), source_->port()));
  EXPECT_TRUE(wait_until([&] { return !pgbouncer_paused(); }, 30s));
  EXPECT_NE(read_file(bouncer_->config_file().string()), original);
  EXPECT_EQ(through_pgbouncer("SELECT current_setting('cluster_name')"), "target");
  // Writes on the new primary travel back: the follower runs the reverse direction.
  ASSERT_EQ(through_pgbouncer("WITH i AS (INSERT INTO ledger (client, seq) SELECT 9, g FROM "
                              "generate_series(1, 20) g RETURNING 1) SELECT count(*) FROM i"),
            "20");
  EXPECT_TRUE(reaches_source(9, "20")) << agent_->log_text();
  auto rerun = run_pgferry(switch_args("cutover"));
  ASSERT_EQ(rerun.exit_code, 0) << rerun.output;
  EXPECT_EQ(history_state(id), "completed");
}

TEST_F(CutoverCrash, CutoverAndGuardKilledWhileSwitchingRerunSwitchesBack) {
  ASSERT_TRUE(agent_streaming(*source_));
  ASSERT_NO_FATAL_FAILURE(kill_both_while_switching());
  auto id = first_run_id();
  // Nobody lifts the fence now, and the agent waits for the switch to be settled, also when
  // `pgferry run` is restarted.
  agent_.reset();
  start_agent();
  std::this_thread::sleep_for(2s);
  EXPECT_TRUE(pgbouncer_paused());
  EXPECT_NE(agent_->log_text().find("is switching traffic: waiting for its outcome"),
            std::string::npos)
      << agent_->log_text();
  EXPECT_EQ(query_value(connect(*source_),
                        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'ferry' "
                        "AND active"),
            "0");

  // No writes since the fence: the re-run puts the entry back, resumes PgBouncer, marks the
  // dead run aborted and cuts over.
  auto rerun = run_pgferry(switch_args("cutover"));
  ASSERT_EQ(rerun.exit_code, 0) << rerun.output << agent_->log_text();
  EXPECT_NE(rerun.output.find("left PgBouncer"), std::string::npos) << rerun.output;
  EXPECT_NE(rerun.output.find("died while switching traffic: switched back"), std::string::npos)
      << rerun.output;
  EXPECT_EQ(history_state(id), "aborted");
  EXPECT_FALSE(pgbouncer_paused());
  EXPECT_EQ(through_pgbouncer("SELECT current_setting('cluster_name')"), "target");
  // Everything written before the fence arrived once.
  EXPECT_EQ(query_value(connect(*target_), "SELECT count(*) FROM ledger WHERE client = 7"), "50");
}

TEST_F(CutoverCrash, KilledWhileSwitchingWithWritesOnTheTargetRerunFinishesTheSwitch) {
  ASSERT_TRUE(agent_streaming(*source_));
  ASSERT_NO_FATAL_FAILURE(kill_both_while_switching());
  auto id = first_run_id();
  // Traffic that reached the new primary some other way (the switch command's half).
  write_directly(*target_, 8, 30);
  auto rerun = run_pgferry(switch_args("cutover"));
  ASSERT_EQ(rerun.exit_code, 0) << rerun.output << agent_->log_text();
  EXPECT_NE(rerun.output.find("died while switching traffic: finished its switch (0 "
                              "transactions on the old primary"),
            std::string::npos)
      << rerun.output;
  EXPECT_NE(rerun.output.find(", 1 on the new one"), std::string::npos) << rerun.output;
  EXPECT_EQ(history_state(id), "completed");
  EXPECT_FALSE(pgbouncer_paused());
  EXPECT_EQ(through_pgbouncer("SELECT current_setting('cluster_name')"), "target");
  // Nothing lost: those writes travel to the old primary, the fence's writes are on the target.
  EXPECT_TRUE(reaches_source(8, "30")) << agent_->log_text();
  EXPECT_EQ(query_value(connect(*target_), "SELECT count(*) FROM ledger WHERE client = 7"), "50");
}

TEST_F(CutoverCrash, KilledWhileSwitchingWithWritesOnBothSidesRerunStopsUntilSettled) {
  ASSERT_TRUE(agent_streaming(*source_));
  ASSERT_NO_FATAL_FAILURE(kill_both_while_switching());
  auto id = first_run_id();
  write_directly(*target_, 8, 30);
  write_directly(*source_, 6, 10);
  auto rerun = run_pgferry(switch_args("cutover"));
  EXPECT_NE(rerun.exit_code, 0) << rerun.output;
  EXPECT_NE(rerun.output.find("writes went to both sides: 1 transactions on the old primary"),
            std::string::npos)
      << rerun.output;
  EXPECT_NE(rerun.output.find("--settle forward"), std::string::npos) << rerun.output;
  // The fence is lifted all the same; both slots are kept and nothing replicates.
  EXPECT_FALSE(pgbouncer_paused());
  EXPECT_EQ(history_state(id), "switching");
  for (const auto* side : {source_.get(), target_.get()}) {
    EXPECT_EQ(query_value(connect(*side),
                          "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'ferry'"),
              "1");
  }
  EXPECT_EQ(query_value(connect(*target_), "SELECT count(*) FROM ledger WHERE client = 6"), "0");

  // --settle may not contradict one-sided evidence: checked on the way (not here: both sides
  // wrote). The operator chooses the new primary: the switch is finished, its writes travel back.
  auto settled = run_pgferry(switch_args("cutover", {"--settle", "forward"}));
  ASSERT_EQ(settled.exit_code, 0) << settled.output << agent_->log_text();
  EXPECT_NE(settled.output.find("finished its switch"), std::string::npos) << settled.output;
  EXPECT_EQ(history_state(id), "completed");
  EXPECT_EQ(through_pgbouncer("SELECT current_setting('cluster_name')"), "target");
  EXPECT_TRUE(reaches_source(8, "30")) << agent_->log_text();
}

TEST_F(CutoverCrash, NewPrimaryTookWritesGuardFinishesTheSwitch) {
  ASSERT_TRUE(agent_streaming(*source_));
  // Forward, the command also writes on the target (as a client it moved would).
  auto command = fmt::format(
      "{} && if [ \"$PGFERRY_ABORT\" = 0 ]; then \"$(pg_config --bindir)/psql\" -X -q -d "
      "'{}' -c 'INSERT INTO ledger (id, client, seq) SELECT 5000000 + count(*), 5, count(*) "
      "FROM ledger WHERE client = 5'; fi",
      recording_command(), target_->conninfo());
  ::setenv("PGFERRY_CUTOVER_CRASH_AT", "before-switched", 1);
  auto result = run_pgferry(switch_args("cutover", {"--switch-command", command}));
  ::unsetenv("PGFERRY_CUTOVER_CRASH_AT");
  EXPECT_NE(result.exit_code, 0) << result.output;
  auto id = first_run_id();
  // The guard sees the write on the new primary: it does not switch back, it finishes.
  EXPECT_TRUE(wait_until([&] { return history_state(id) == "switched"; }, 30s))
      << read_file(marker_) << result.output;
  EXPECT_EQ(read_file(marker_), fmt::format("0 {0}\n0 {0}\n", target_->port()));
  EXPECT_TRUE(wait_until([&] { return !pgbouncer_paused(); }, 30s));
  EXPECT_EQ(through_pgbouncer("SELECT current_setting('cluster_name')"), "target");
  EXPECT_TRUE(reaches_source(5, "2")) << agent_->log_text();
}

TEST_F(CutoverCrash, SwitchCommandOverBudgetAfterNewPrimaryTookWritesKeepsTheSwitch) {
  ASSERT_TRUE(agent_streaming(*source_));
  // Forward, the command writes on the target (as a client it moved would), then hangs past
  // the switch step's budget (a sixth of --timeout 30), so that the cutover kills it and aborts.
  auto command = fmt::format(
      "{} && if [ \"$PGFERRY_ABORT\" = 0 ]; then \"$(pg_config --bindir)/psql\" -X -q -d "
      "'{}' -c 'INSERT INTO ledger (id, client, seq) VALUES (5000001, 5, 1)' && sleep 30; fi",
      recording_command(), target_->conninfo());
  auto result = run_pgferry(switch_args("cutover", {"--switch-command", command}));
  // Aborted, but not rolled back: its own read of the new slot saw the write, so traffic is
  // left where the switch put it (the command killed past its budget counts as having moved
  // it) and the row stays `switching`; exit 1, not 7.
  EXPECT_EQ(result.exit_code, 1) << result.output;
  auto report = report_of(result);
  EXPECT_EQ(report.value("failed_step", ""), "switch") << result.output;
  EXPECT_TRUE(report.value("switch_unsettled", false)) << result.output;
  EXPECT_NE(result.output.find("the new primary took writes during the switch"), std::string::npos)
      << result.output;
  auto id = first_run_id();
  EXPECT_EQ(history_state(id), "switching");
  // Never run back towards the old primary; PgBouncer serves the new one, unfenced.
  EXPECT_EQ(read_file(marker_), fmt::format("0 {}\n", target_->port()));
  EXPECT_FALSE(pgbouncer_paused());
  EXPECT_EQ(through_pgbouncer("SELECT current_setting('cluster_name')"), "target");
  for (const auto* side : {source_.get(), target_.get()}) {
    EXPECT_EQ(query_value(connect(*side),
                          "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'ferry'"),
              "1");
  }

  // Only the new primary took writes: a re-run finishes the switch, and the write travels back.
  auto rerun = run_pgferry(switch_args("cutover"));
  ASSERT_EQ(rerun.exit_code, 0) << rerun.output << agent_->log_text();
  EXPECT_NE(rerun.output.find("finished its switch"), std::string::npos) << rerun.output;
  EXPECT_EQ(history_state(id), "completed");
  EXPECT_EQ(through_pgbouncer("SELECT current_setting('cluster_name')"), "target");
  EXPECT_TRUE(reaches_source(5, "1")) << agent_->log_text();
}

TEST_F(CutoverCrash, TargetDiesAtTheSwitchCommitKeepsTheSwitchAndExitsFive) {
  ASSERT_TRUE(agent_streaming(*source_));
  ASSERT_EQ(through_pgbouncer("WITH i AS (INSERT INTO ledger (client, seq) SELECT 7, g FROM "
                              "generate_series(1, 50) g RETURNING 1) SELECT count(*) FROM i"),
            "50");
  // The target (its backends, then its postmaster) dies just before the `switched` UPDATE:
  // the UPDATE fails and nothing can read whether it committed.
  ::setenv("PGFERRY_CUTOVER_FAULT_AT", "before-switched", 1);
  ::setenv("PGFERRY_CUTOVER_FAULT",
           fmt::format("pkill -KILL -P {0}; kill -KILL {0}", target_->postmaster_pid()).c_str(), 1);
  auto result = run_pgferry(switch_args("cutover", {"--switch-command", recording_command()}));
  ::unsetenv("PGFERRY_CUTOVER_FAULT_AT");
  ::unsetenv("PGFERRY_CUTOVER_FAULT");
  EXPECT_EQ(result.exit_code, 5) << result.output;
  auto report = report_of(result);
  EXPECT_TRUE(report.value("switch_unconfirmed", false)) << result.output;
  EXPECT_NE(result.output.find("whether it committed cannot be read"), std::string::npos)
      << result.output;
  // Traffic stays on the new primary (never switched back), unfenced; the old slot is kept.
  EXPECT_EQ(read_file(marker_), fmt::format("0 {}\n", target_->port()));
  EXPECT_FALSE(pgbouncer_paused());
  EXPECT_EQ(query_value(connect(*source_),
                        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'ferry'"),
            "1");

  // The target back: its row says `switching` (the UPDATE never ran). No writes on either
  // side since the fence, so the re-run switches back, marks that run aborted and cuts over.
  target_->start();
  auto id = first_run_id();
  EXPECT_EQ(history_state(id), "switching");
  auto rerun = run_pgferry(switch_args("cutover", {"--switch-command", recording_command()}));
  ASSERT_EQ(rerun.exit_code, 0) << rerun.output << agent_->log_text();
  EXPECT_NE(rerun.output.find("died while switching traffic: switched back"), std::string::npos)
      << rerun.output;
  EXPECT_EQ(history_state(id), "aborted");
  EXPECT_EQ(through_pgbouncer("SELECT current_setting('cluster_name')"), "target");
  EXPECT_EQ(query_value(connect(*target_), "SELECT count(*) FROM ledger WHERE client = 7"), "50");
}

TEST_F(CutoverCrash, DeadCutoversSessionStillOnTheServerGuardEndsItAndSwitchesBack) {
  ASSERT_TRUE(agent_streaming(*source_));
  auto original = read_file(bouncer_->config_file().string());
  // The cutover reaches the target through a proxy that keeps a dead client's session open
  // on the server: after the cutover dies, its session still holds the cutover's lock. The
  // guard ends that session (it knows its pid and start) instead of taking it for a re-run's
  // and leaving the fence on.
  HalfOpenProxy proxy(target_->port());
  auto args = switch_args("cutover", {"--switch-command", recording_command()});
  auto target = std::find(args.begin(), args.end(), std::string("--target"));
  ASSERT_NE(target, args.end());
  *(target + 1) = fmt::format("host=127.0.0.1 port={} user=postgres dbname=postgres", proxy.port());
  ::setenv("PGFERRY_CUTOVER_CRASH_AT", "before-switched", 1);
  auto result = run_pgferry(args);
  ::unsetenv("PGFERRY_CUTOVER_CRASH_AT");
  EXPECT_NE(result.exit_code, 0) << result.output;
  EXPECT_TRUE(wait_until([&] { return !pgbouncer_paused(); }, 30s)) << result.output;
  EXPECT_TRUE(
      wait_until([&] { return read_file(bouncer_->config_file().string()) == original; }, 30s));
  EXPECT_EQ(read_file(marker_), fmt::format("0 {}\n1 {}\n", proxy.port(), source_->port()));
  EXPECT_EQ(through_pgbouncer("SELECT current_setting('cluster_name')"), "source");
  EXPECT_EQ(history_state(first_run_id()), "running");
  // Ended by the guard (pg_terminate_backend), not by the server noticing.
  EXPECT_NE(read_file(target_->log_file().string())
                .find("terminating connection due to administrator command"),
            std::string::npos);
}
