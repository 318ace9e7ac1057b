// Chaos: under a continuous write load on the source (a fresh session per transaction, so the
// load survives restarts), the agent is killed with SIGKILL at random moments 10 times (and
// started again, as systemd or Kubernetes would), its walsender and its apply sessions are
// terminated 3 times each, and the target and the source are restarted with -m fast and with
// -m immediate. The agent never exits by itself; after the load stops and it catches up,
// every row of every table is equal on both sides. Prints the faults, the recovery times
// (from the fault to the target applying past the source's WAL position at the fault) and
// the rows compared.
#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <iostream>
#include <random>
#include <thread>

#include "pgferry/replication/core/lsn.hpp"
#include "support/harness.hpp"

namespace repl = pgferry::replication;
using namespace pgferry::testing;
using Clock = std::chrono::steady_clock;

class AgentChaos : public ClusterPairTest {};

namespace {

constexpr const char* kSchema =
    "CREATE TABLE chaos_a (id bigint PRIMARY KEY, v text, t timestamptz);"
    "CREATE TABLE chaos_b (id int PRIMARY KEY, n bigint NOT NULL);"
    "CREATE TABLE chaos_c (id bigint PRIMARY KEY, payload text);";

std::string try_value(LocalCluster& cluster, std::string_view sql) {
  try {
    return query_value(connect(cluster), sql);
  } catch (const std::exception&) {
    return {};
  }
}

}  // namespace

TEST_F(AgentChaos, EveryTableEqualAfterFaults) {
  connect(source()).exec(kSchema);
  connect(target()).exec(kSchema);
  connect(source()).exec(
      "CREATE SEQUENCE chaos_seq; INSERT INTO chaos_b SELECT g, 0 FROM generate_series(1, 100) g");
  connect(target()).exec("INSERT INTO chaos_b SELECT g, 0 FROM generate_series(1, 100) g");
  PgferryPair ferry{source().conninfo(), target().conninfo(), "chaos"};
  ASSERT_EQ(ferry.run({"init", "--no-data"}).exit_code, 0);
  auto run_args = ferry.args({"run", "--status-interval-ms", "200"});
  std::string log_base = fmt::format("/tmp/pgferry-chaos-{}", ::getpid());
  int agent_runs = 0;
  auto start_agent = [&] {
    return std::make_unique<PgferryProcess>(run_args,
                                            fmt::format("{}-{}.log", log_base, agent_runs++));
  };
  auto agent = start_agent();

  std::atomic<bool> load_running{true};
  std::atomic<long> committed{0}, failed{0};
  std::thread load([&] {
    std::mt19937 random(7);
    while (load_running.load()) {
      try {
        auto conn = connect(source());
        int b = static_cast<int>(random() % 100) + 1;
        conn.exec(fmt::format(
            "BEGIN;"
            "INSERT INTO chaos_a SELECT nextval('chaos_seq'), md5(random()::text), now() "
            "FROM generate_series(1, {});"
            "UPDATE chaos_b SET n = n + 1 WHERE id = {};"
            "INSERT INTO chaos_c VALUES (nextval('chaos_seq'), repeat('x', {}));"
            "DELETE FROM chaos_c WHERE id IN (SELECT id FROM chaos_c ORDER BY id LIMIT 1 "
            "OFFSET 20);"
            "UPDATE chaos_a SET v = 'u' WHERE id = (SELECT max(id) - 3 FROM chaos_a);"
            "COMMIT",
            1 + random() % 5, b, random() % 2000));
        committed.fetch_add(1);
      } catch (const std::exception&) {
        failed.fetch_add(1);
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
    }
  });
  struct StopLoad {
    std::atomic<bool>& running;
    std::thread& thread;
    ~StopLoad() {
      running.store(false);
      if (thread.joinable()) thread.join();
    }
  } stop_load{load_running, load};

  // The faults, in a shuffled order.
  std::vector<std::string> faults;
  for (int i = 0; i < 10; ++i) faults.push_back("kill -9 agent");
  for (int i = 0; i < 3; ++i) faults.push_back("terminate walsender");
  for (int i = 0; i < 3; ++i) faults.push_back("terminate apply sessions");
  for (const char* f : {"restart target -m fast", "restart target -m immediate",
                        "restart source -m fast", "restart source -m immediate"}) {
    faults.push_back(f);
  }
  std::mt19937 random(2026);
  std::shuffle(faults.begin(), faults.end(), random);

  auto applied = [&] {
    std::string text =
        try_value(target(), "SELECT applied_lsn::text FROM pgferry.progress WHERE name = 'chaos'");
    return text.empty() ? repl::Lsn() : repl::Lsn::from_string(text, "applied_lsn");
  };
  std::vector<double> recovery_seconds;
  for (const auto& fault : faults) {
    // Let it run a random moment under load first.
    std::this_thread::sleep_for(std::chrono::milliseconds(200 + random() % 1800));
    ASSERT_FALSE(agent->exited()) << "the agent exited by itself before \"" << fault
                                  << "\": " << agent->log_text();
    auto at = Clock::now();
    if (fault == "kill -9 agent") {
      ::kill(agent->pid(), SIGKILL);
      ASSERT_TRUE(wait_until([&] { return agent->exited(); }));
      agent = start_agent();
    } else if (fault == "terminate walsender") {
      ASSERT_TRUE(wait_until([&] {
        return try_value(source(),
                         "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                         "WHERE backend_type = 'walsender'") > "0";
      }));
    } else if (fault == "terminate apply sessions") {
      ASSERT_TRUE(wait_until([&] {
        return try_value(target(),
                         "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE "
                         "pid <> pg_backend_pid() AND application_name = 'pgferry' AND "
                         "backend_type = 'client backend'") > "0";
      }));
    } else {
      auto& cluster = fault.find("target") != std::string::npos ? target() : source();
      cluster.stop(fault.ends_with("immediate") ? "immediate" : "fast");
      cluster.start();
    }
    std::string wal = try_value(source(), "SELECT pg_current_wal_lsn()::text");
    ASSERT_FALSE(wal.empty());
    repl::Lsn mark = repl::Lsn::from_string(wal, "pg_current_wal_lsn");
    ASSERT_TRUE(
        wait_until([&] { return agent->exited() || applied() >= mark; }, std::chrono::seconds(180)))
        << "no recovery after \"" << fault << "\": " << agent->log_text();
    ASSERT_FALSE(agent->exited()) << "the agent exited by itself after \"" << fault
                                  << "\": " << agent->log_text();
    recovery_seconds.push_back(std::chrono::duration<double>(Clock::now() - at).count());
    std::cout << fmt::format("fault \"{}\": recovered in {:.2f}s\n", fault,
                             recovery_seconds.back());
  }

  load_running.store(false);
  load.join();
  std::string end = try_value(source(), "SELECT pg_current_wal_lsn()::text");
  repl::Lsn end_lsn = repl::Lsn::from_string(end, "pg_current_wal_lsn");
  ASSERT_TRUE(wait_until([&] { return applied() >= end_lsn; }, std::chrono::seconds(180)))
      << agent->log_text();
  ASSERT_FALSE(agent->exited()) << agent->log_text();
  EXPECT_EQ(agent->stop(), 0) << agent->log_text();

  long rows = 0;
  auto src = connect(source());
  auto dst = connect(target());
  for (const char* table : {"chaos_a", "chaos_b", "chaos_c"}) {
    EXPECT_EQ(table_fingerprint(src, table, "id"), table_fingerprint(dst, table, "id")) << table;
    rows += std::stol(query_value(src, fmt::format("SELECT count(*) FROM {}", table)));
  }
  std::sort(recovery_seconds.begin(), recovery_seconds.end());
  double median = recovery_seconds[recovery_seconds.size() / 2];
  std::cout << fmt::format(
      "chaos: faults={} agent_starts={} load_transactions={} load_failures={} recovery "
      "median={:.2f}s worst={:.2f}s rows_compared={}\n",
      faults.size(), agent_runs, committed.load(), failed.load(), median, recovery_seconds.back(),
      rows);
  EXPECT_GT(committed.load(), 100);
  for (int i = 0; i < agent_runs; ++i) ::unlink(fmt::format("{}-{}.log", log_base, i).c_str());
}
