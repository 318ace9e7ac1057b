// Exactly once under SIGKILL: a long backlog on the source (tens of thousands of small
// transactions moving money between accounts, bulk inserts that go as COPY, deletes, and large
// transactions streamed in progress), then `pgferry run --until` started as a child process
// and killed with SIGKILL ten times at random moments while it applies, restarted each time,
// and finally run to the end. The target must equal the source: nothing lost, nothing doubled
// (a doubled transfer would break the balances, a lost one too).
#include <fmt/format.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <random>
#include <thread>

#include "support/harness.hpp"

namespace repl = pgferry::replication;
using namespace pgferry::testing;

namespace {

const char* kSchema = R"sql(
  CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL, moves int NOT NULL);
  CREATE TABLE transfers (id bigint PRIMARY KEY, src int, dst int, amount int, note text);
  CREATE TABLE bulk (id bigint PRIMARY KEY, batch int, payload text);
)sql";

}  // namespace

class ExactlyOnce : public ClusterPairTest {};

TEST_F(ExactlyOnce, SurvivesTenSigkillsWithoutLossOrDuplication) {
  auto src = connect(source());
  auto dst = connect(target());
  src.exec("ALTER SYSTEM SET logical_decoding_work_mem = '64kB'");
  src.exec("SELECT pg_reload_conf()");
  src.exec(kSchema);
  dst.exec(kSchema);
  src.exec("INSERT INTO accounts SELECT g, 1000000, 0 FROM generate_series(1, 100) g");
  // The accounts' starting rows predate the slot: copy them the way init's copy would.
  dst.exec("INSERT INTO accounts SELECT g, 1000000, 0 FROM generate_series(1, 100) g");

  std::vector<std::string> common = {
      "--source", source().conninfo(), "--target", target().conninfo(), "--name", "once"};
  auto init_args = common;
  init_args.insert(init_args.end(), {"init", "--no-data"});
  auto init = run_pgferry(init_args);
  ASSERT_EQ(init.exit_code, 0) << init.output;

  // The backlog: one transaction per transfer, a COPY-sized bulk insert every 2000, deletes,
  // and every 10000 a large transaction streamed in progress.
  src.exec(R"sql(
    DO $$
    DECLARE a int; b int; amount int;
    BEGIN
      FOR i IN 1..30000 LOOP
        a := (i::bigint * 7919) % 100 + 1;
        b := (i::bigint * 104729) % 100 + 1;
        amount := i % 97 + 1;
        UPDATE accounts SET balance = balance - amount, moves = moves + 1 WHERE id = a;
        UPDATE accounts SET balance = balance + amount, moves = moves + 1 WHERE id = b;
        INSERT INTO transfers VALUES (i, a, b, amount, E'tab\t' || i);
        IF i % 2000 = 0 THEN
          INSERT INTO bulk SELECT i * 1000 + g, i, md5(g::text) FROM generate_series(1, 200) g;
        END IF;
        IF i % 3000 = 0 THEN
          DELETE FROM transfers WHERE id BETWEEN i - 100 AND i - 50;
        END IF;
        IF i % 10000 = 0 THEN
          INSERT INTO bulk SELECT 100000000 + i * 10000 + g, -i, repeat('x', 200)
          FROM generate_series(1, 5000) g;
          UPDATE bulk SET payload = payload || '!' WHERE batch = -i;
        END IF;
        COMMIT;
      END LOOP;
    END $$;
  )sql");
  std::string until = query_value(src, "SELECT pg_current_wal_lsn()::text");

  auto run_args = common;
  run_args.insert(run_args.end(), {"run", "--until", until, "--group-max-delay-ms", "20",
                                   "--group-max-rows", "300"});
  std::string log = fmt::format("/tmp/pgferry-exactly-once-{}.log", ::getpid());
  std::remove(log.c_str());
  unsigned seed = std::random_device{}();
  std::mt19937 random(seed);
  SCOPED_TRACE(fmt::format("seed {} log {}", seed, log));

  auto applied = [&] { return std::stoll(query_value(dst, "SELECT count(*) FROM transfers")); };
  // Whatever was committed, the progress row says exactly where it ends.
  int killed_mid_stream = run_pgferry_with_sigkills(
      run_args, log, 10, applied, random, std::chrono::milliseconds(150), [&] {
        EXPECT_EQ(query_value(dst, "SELECT count(*) FROM pgferry.progress WHERE name = 'once'"),
                  "1");
      });
  EXPECT_GE(killed_mid_stream, 1);

  auto final_run = run_pgferry(run_args);
  ASSERT_EQ(final_run.exit_code, 0) << final_run.output;

  for (auto [table, order] :
       {std::pair{"accounts", "id"}, std::pair{"transfers", "id"}, std::pair{"bulk", "id"}}) {
    EXPECT_EQ(table_fingerprint(src, table, order), table_fingerprint(dst, table, order)) << table;
  }
  EXPECT_EQ(query_value(dst, "SELECT sum(balance) FROM accounts"), "100000000");
  EXPECT_EQ(query_value(dst, "SELECT sum(moves) FROM accounts"), "60000");
  std::cerr << fmt::format("exactly-once: {} of 10 kills hit a running applier (seed {})\n",
                           killed_mid_stream, seed);
}
