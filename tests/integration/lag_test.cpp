// Lag in bytes that is right (issue 6): grows while the agent is stopped and equals the WAL
// written; drains to zero once the agent runs; reaches zero at idle; while another database
// on the source writes without a pause and ours is idle, the applied position passes source
// positions taken along the way (issue 17); /metrics is valid Prometheus text whose counters match
// the rows applied; /status is JSON.
#include <atomic>
#include <iostream>
#include <nlohmann/json.hpp>
#include <thread>

#include "pgferry/replication/core/lsn.hpp"
#include "support/harness.hpp"
#include "support/http_get.hpp"
#include "support/prometheus_text.hpp"

namespace repl = pgferry::replication;
using namespace pgferry::testing;
using repl::Lsn;

namespace {

// The body of a GET that must succeed.
std::string get_ok(int port, const std::string& path) {
  auto [status, body] = http_get(static_cast<unsigned short>(port), path);
  if (status != 200) throw std::runtime_error("HTTP " + path + " failed");
  return body;
}

}  // namespace

class Lag : public ClusterPairTest {
 protected:
  std::vector<std::string> sides() const {
    return {"--source", source().conninfo(), "--target", target().conninfo()};
  }
  nlohmann::json lag_json() {
    auto args = sides();
    args.insert(args.begin(), {"lag", "--json"});
    auto result = run_pgferry(args);
    EXPECT_EQ(result.exit_code, 0) << result.output;
    return nlohmann::json::parse(result.output);
  }
  std::uint64_t lag_bytes() { return lag_json()["lag_bytes"].get<std::uint64_t>(); }
};

TEST_F(Lag, GrowsWhileStoppedDrainsToZeroAndStaysZeroAtIdle) {
  const char* schema = "CREATE TABLE items (id int PRIMARY KEY, v text)";
  connect(source()).exec(schema);
  connect(target()).exec(schema);
  auto init = run_pgferry(
      {"init", "--no-data", "--source", source().conninfo(), "--target", target().conninfo()});
  ASSERT_EQ(init.exit_code, 0) << init.output;

  // Not initialized on another name: the sample says so rather than inventing a number.
  auto other = run_pgferry({"lag", "--json", "--name", "nobody", "--source", source().conninfo(),
                            "--target", target().conninfo()});
  ASSERT_EQ(other.exit_code, 0) << other.output;
  EXPECT_TRUE(nlohmann::json::parse(other.output)["lag_bytes"].is_null());
  EXPECT_EQ(nlohmann::json::parse(other.output)["state"], "not initialized");

  // Agent stopped: the lag is exactly source position − applied position, and grows by at
  // least the WAL the writes produced.
  auto before = lag_json();
  EXPECT_EQ(before["state"], "stopped");
  auto src = connect(source());
  Lsn wal_before = *Lsn::parse(query_value(src, "SELECT pg_current_wal_lsn()"));
  src.exec("INSERT INTO items SELECT g, repeat('x', 200) FROM generate_series(1, 5000) g");
  Lsn wal_after = *Lsn::parse(query_value(src, "SELECT pg_current_wal_lsn()"));
  auto after = lag_json();
  Lsn applied = *Lsn::parse(after["applied_lsn"].get<std::string>());
  Lsn source_lsn = *Lsn::parse(after["source_lsn"].get<std::string>());
  EXPECT_EQ(after["applied_lsn"], before["applied_lsn"]);  // nothing applies it
  EXPECT_EQ(after["lag_bytes"].get<std::int64_t>(), source_lsn - applied);
  EXPECT_GE(after["lag_bytes"].get<std::int64_t>() - before["lag_bytes"].get<std::int64_t>(),
            wal_after - wal_before);
  EXPECT_GE(after["slot"]["retained_bytes"].get<std::int64_t>(), wal_after - wal_before);

  // Agent running: the lag drains to zero and the counters match the rows applied.
  int port = pgferry::tools::free_port();
  auto args = sides();
  args.insert(args.begin(), {"run", "--metrics-listen", fmt::format("127.0.0.1:{}", port),
                             "--status-interval-ms", "200"});
  PgferryProcess agent(args, (target().dir() / "agent.log").string());
  ASSERT_TRUE(
      wait_until([&] { return !agent.exited() && lag_bytes() == 0; }, std::chrono::seconds(60)))
      << agent.log_text();
  EXPECT_EQ(lag_json()["state"], "streaming");
  EXPECT_EQ(table_fingerprint(src, "items", "id"),
            table_fingerprint(connect(target()), "items", "id"));

  ASSERT_TRUE(wait_until(
      [&] {
        auto samples = parse_prometheus_text(get_ok(port, "/metrics"));
        return prometheus_value(samples, "pgferry_rows_applied_total", {{"op", "insert"}}) == 5000;
      },
      std::chrono::seconds(10)));
  src.exec("UPDATE items SET v = 'y' WHERE id <= 10; DELETE FROM items WHERE id > 4990");
  auto committed = std::chrono::steady_clock::now();
  ASSERT_TRUE(wait_until([&] { return lag_bytes() == 0; }, std::chrono::seconds(60)));
  // Reported, not asserted (machines are noisy): how long the lag took to read zero.
  auto to_zero = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::steady_clock::now() - committed);
  RecordProperty("commit_to_zero_lag_ms", static_cast<int>(to_zero.count()));
  std::cout << "lag read zero " << to_zero.count() << " ms after the last commit\n";
  ASSERT_TRUE(wait_until(
      [&] {
        auto samples = parse_prometheus_text(get_ok(port, "/metrics"));
        return prometheus_value(samples, "pgferry_rows_applied_total", {{"op", "update"}}) == 10 &&
               prometheus_value(samples, "pgferry_rows_applied_total", {{"op", "delete"}}) == 10;
      },
      std::chrono::seconds(10)));
  auto samples = parse_prometheus_text(get_ok(port, "/metrics"));
  EXPECT_EQ(prometheus_value(samples, "pgferry_rows_applied_total", {{"op", "insert"}}), 5000);
  EXPECT_EQ(prometheus_value(samples, "pgferry_up"), 1);
  EXPECT_GE(prometheus_value(samples, "pgferry_transactions_applied_total"), 2);
  // 5000 rows of 200-byte values came through pgoutput.
  EXPECT_GE(prometheus_value(samples, "pgferry_received_bytes_total"), 5000 * 200);
  // The 5000-row transaction fit logical_decoding_work_mem (64MB): it was not streamed.
  EXPECT_EQ(prometheus_value(samples, "pgferry_streamed_transactions_total", {{"apply", "live"}}),
            0);
  // One that does not fit is streamed, and applied as it streams.
  src.exec("ALTER SYSTEM SET logical_decoding_work_mem = '64kB'");
  src.exec("SELECT pg_reload_conf()");
  src.exec("INSERT INTO items SELECT g, repeat('s', 200) FROM generate_series(10001, 13000) g");
  // The walsender decodes on its own time: the setting may only go back once it streamed
  // (reset earlier, it can decode the transaction under 64MB and send it whole).
  ASSERT_TRUE(wait_until(
      [&] {
        return query_value(src,
                           "SELECT coalesce(sum(stream_txns), 0) > 0 FROM "
                           "pg_stat_replication_slots") == "t";
      },
      std::chrono::seconds(30)));
  src.exec("ALTER SYSTEM RESET logical_decoding_work_mem");
  src.exec("SELECT pg_reload_conf()");
  ASSERT_TRUE(wait_until(
      [&] {
        auto now = parse_prometheus_text(get_ok(port, "/metrics"));
        return prometheus_value(now, "pgferry_rows_applied_total", {{"op", "insert"}}) == 8000;
      },
      std::chrono::seconds(30)));
  samples = parse_prometheus_text(get_ok(port, "/metrics"));
  EXPECT_EQ(prometheus_value(samples, "pgferry_streamed_transactions_total", {{"apply", "live"}}),
            1);
  EXPECT_EQ(prometheus_value(samples, "pgferry_streamed_transactions_total", {{"apply", "spool"}}),
            0);
  auto status = nlohmann::json::parse(get_ok(port, "/status"));
  EXPECT_EQ(status["slot"], "pgferry");
  EXPECT_TRUE(status["applied_lsn"].is_string());

  // Idle while another database on the same server is busy: its WAL is none of ours, the
  // agent moves its applied position on with the walsender's keepalives (asking for them
  // after --idle-interval-ms of quiet), and once that database is quiet the lag is zero again.
  src.exec("CREATE DATABASE other");
  auto other_db = connect(source(), "other");
  other_db.exec("CREATE TABLE noise (id bigserial PRIMARY KEY, v text)");
  std::string items_before = table_fingerprint(src, "items", "id");
  std::atomic<bool> stop_noise{false};
  std::atomic<int> noise_commits{0};
  std::thread noise([&] {
    auto conn = connect(source(), "other");
    // Bounded so that a failing test still ends; the checks below stop it much earlier.
    for (int i = 0; i < 20000 && !stop_noise; ++i) {
      conn.exec("INSERT INTO noise (v) SELECT repeat('n', 100) FROM generate_series(1, 200)");
      ++noise_commits;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  });
  // While the other database writes without a pause, the applied position passes each
  // source position taken along the way (the wait only bounds the test's runtime; how long
  // it took is reported, not asserted).
  for (int round = 0; round < 3; ++round) {
    Lsn position = *Lsn::parse(query_value(src, "SELECT pg_current_wal_lsn()"));
    int commits_at_position = noise_commits;
    auto taken = std::chrono::steady_clock::now();
    bool passed = wait_until(
        [&] { return *Lsn::parse(lag_json()["applied_lsn"].get<std::string>()) >= position; },
        std::chrono::seconds(30));
    auto follow_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                         std::chrono::steady_clock::now() - taken)
                         .count();
    EXPECT_TRUE(passed) << "round " << round << ": applied position did not pass "
                        << position.to_string() << " while another database wrote";
    // The other database was still writing meanwhile: the position moved on WAL of another
    // database, not on a quiet server.
    EXPECT_GT(noise_commits.load(), commits_at_position) << "round " << round;
    RecordProperty(fmt::format("idle_follow_ms_{}", round), static_cast<int>(follow_ms));
    std::cout << "applied position passed the source position " << follow_ms
              << " ms after it was taken, another database writing\n";
  }
  // Ours stayed idle.
  EXPECT_EQ(table_fingerprint(src, "items", "id"), items_before);
  stop_noise = true;
  noise.join();
  auto quiet = std::chrono::steady_clock::now();
  EXPECT_TRUE(wait_until([&] { return lag_bytes() == 0; }, std::chrono::seconds(30)))
      << lag_json().dump();
  std::cout << "lag read zero "
            << std::chrono::duration_cast<std::chrono::milliseconds>(
                   std::chrono::steady_clock::now() - quiet)
                   .count()
            << " ms after the other database went quiet\n";
  // And it stays zero at idle.
  std::this_thread::sleep_for(std::chrono::seconds(2));
  EXPECT_EQ(lag_bytes(), 0u) << lag_json().dump();

  EXPECT_EQ(agent.stop(), 0) << agent.log_text();
}

TEST_F(Lag, UnreachableSidesExitFourAndFive) {
  int port = pgferry::tools::free_port();
  std::string dead =
      fmt::format("host=127.0.0.1 port={} user=x password=sekret connect_timeout=2", port);
  auto no_source = run_pgferry({"lag", "--source", dead, "--target", target().conninfo()});
  EXPECT_EQ(no_source.exit_code, 4) << no_source.output;
  auto no_target = run_pgferry({"lag", "--source", source().conninfo(), "--target", dead});
  EXPECT_EQ(no_target.exit_code, 5) << no_target.output;
  EXPECT_EQ(no_target.output.find("sekret"), std::string::npos);
  EXPECT_NE(no_target.output.find("target"), std::string::npos);
}
