// End to end: `pgferry init --no-data`, a workload on the source (many types, an update that
// leaves a TOASTed column unchanged, key changes, deletes, truncate, a large transaction
// streamed in progress with logical_decoding_work_mem=64kB, one such transaction aborted),
// `pgferry run --until <source WAL position>`, then every table compared source vs target.
// Then: resume from the progress record for a second workload, re-runs that find nothing to
// do, and `pgferry cleanup` (twice).
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "support/harness.hpp"

namespace repl = pgferry::replication;
using namespace pgferry::testing;

namespace {

const char* kSchema = R"sql(
  CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
  CREATE TABLE kinds (
    id bigint PRIMARY KEY, i int, n numeric, t text, raw bytea, doc jsonb, ints int[],
    texts text[], m mood, at timestamptz, u uuid, f float8, b boolean, d date);
  CREATE TABLE docs (id int PRIMARY KEY, title text, body text);
  ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
  CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance numeric);
  CREATE TABLE logs (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, line text);
  CREATE TABLE bulk (id int PRIMARY KEY, payload text, n int);
  CREATE SCHEMA "Odd Schema";
  CREATE TABLE "Odd Schema"."Mixed""Name" ("Key" int PRIMARY KEY, "select" text);
  CREATE TABLE fullrow (a int, b text);
  ALTER TABLE fullrow REPLICA IDENTITY FULL;
)sql";

const std::vector<std::pair<std::string, std::string>> kTables = {
    {"kinds", "id"},     {"docs", "id"}, {"accounts", "id"},
    {"logs", "id"},      {"bulk", "id"}, {"\"Odd Schema\".\"Mixed\"\"Name\"", "\"Key\""},
    {"fullrow", "a, b"},
};

}  // namespace

class RunReplication : public ClusterPairTest {
 protected:
  std::vector<std::string> common_args() {
    return {"--source", source().conninfo(), "--target", target().conninfo(), "--name", "e2e_slot"};
  }
  CommandResult pgferry(std::vector<std::string> args) {
    auto all = common_args();
    all.insert(all.end(), args.begin(), args.end());
    return run_pgferry(all);
  }
  void expect_tables_equal(const repl::Connection& src, const repl::Connection& dst) {
    for (const auto& [table, order] : kTables) {
      EXPECT_EQ(table_fingerprint(src, table, order), table_fingerprint(dst, table, order))
          << table;
    }
  }
};

TEST_F(RunReplication, InitWorkloadRunUntilCompareCleanup) {
  auto src = connect(source());
  auto dst = connect(target());
  src.exec("ALTER SYSTEM SET logical_decoding_work_mem = '64kB'");
  src.exec("SELECT pg_reload_conf()");
  src.exec(kSchema);
  dst.exec(kSchema);

  auto init = pgferry({"init", "--no-data"});
  ASSERT_EQ(init.exit_code, 0) << init.output;
  auto again = pgferry({"init", "--no-data", "--json"});
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_NE(again.output.find("\"slot\": false"), std::string::npos) << again.output;
  // The full init runs the preflight first: fullrow has no primary key, so it refuses.
  EXPECT_EQ(pgferry({"init"}).exit_code, 3);

  src.exec(R"sql(
    INSERT INTO kinds
    SELECT g, g * 7 - 3, CASE WHEN g % 5 = 0 THEN 'NaN'::numeric ELSE g / 7.0 END,
           CASE g % 4 WHEN 0 THEN E'tab\there' WHEN 1 THEN E'new\nline\r\nand \\backslash'
                      WHEN 2 THEN 'quote '' and " and 🐢 żółw' ELSE NULL END,
           decode(md5(g::text), 'hex'), jsonb_build_object('g', g, 's', E'a\tb', 'n', NULL),
           ARRAY[g, NULL, -g], ARRAY['x y', E'q"\\', NULL], (ARRAY['sad','ok','happy'])[g % 3 + 1]::mood,
           '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 minute 1.5 second',
           md5(g::text)::uuid, CASE WHEN g % 7 = 0 THEN 'Infinity'::float8 ELSE g / 3.0 END,
           g % 2 = 0, DATE '2000-02-29' + g
    FROM generate_series(1, 300) g;
    INSERT INTO kinds (id) VALUES (1000);
    INSERT INTO docs SELECT g, 'title ' || g, repeat(md5(g::text), 300) FROM generate_series(1, 20) g;
    INSERT INTO accounts SELECT g, 'owner' || g, 100 FROM generate_series(1, 50) g;
    INSERT INTO "Odd Schema"."Mixed""Name" VALUES (1, 'one'), (2, 'two');
    INSERT INTO fullrow VALUES (1, 'x'), (1, 'x'), (2, NULL);
  )sql");
  for (int i = 0; i < 30; ++i) {
    src.exec(
        fmt::format("BEGIN; UPDATE accounts SET balance = balance - {0} WHERE id = {1}; "
                    "UPDATE accounts SET balance = balance + {0} WHERE id = {2}; "
                    "INSERT INTO logs (line) VALUES ('moved {0}'); COMMIT",
                    i, i % 50 + 1, (i * 7) % 50 + 1));
  }
  src.exec(R"sql(
    UPDATE docs SET title = 'renamed ' || id WHERE id <= 10;      -- body: unchanged TOAST
    UPDATE docs SET id = id + 100 WHERE id > 15;                   -- key change
    DELETE FROM docs WHERE id = 3;
    UPDATE kinds SET t = NULL, doc = '{"changed": true}' WHERE id % 10 = 1;
    DELETE FROM kinds WHERE id % 10 = 2;
    UPDATE "Odd Schema"."Mixed""Name" SET "Key" = 3, "select" = 'three' WHERE "Key" = 2;
    UPDATE fullrow SET b = 'y' WHERE a = 1 AND ctid = (SELECT min(ctid) FROM fullrow WHERE a = 1);
    DELETE FROM fullrow WHERE a = 2;
    TRUNCATE logs RESTART IDENTITY;
    INSERT INTO logs (line) VALUES ('after truncate');
  )sql");
  // Large transactions: streamed to us in progress (64kB work mem); the aborted one must
  // leave no trace.
  src.exec(R"sql(
    BEGIN;
    INSERT INTO bulk SELECT g, repeat(md5(g::text), 4), 0 FROM generate_series(1, 20000) g;
    UPDATE bulk SET n = n + 1 WHERE id % 3 = 0;
    DELETE FROM bulk WHERE id % 11 = 0;
    COMMIT;
    BEGIN;
    INSERT INTO bulk SELECT g, 'aborted', 0 FROM generate_series(100001, 110000) g;
    UPDATE bulk SET n = -1;
    ROLLBACK;
  )sql");
  std::string until = query_value(src, "SELECT pg_current_wal_lsn()::text");
  auto run = pgferry({"run", "--until", until, "--json"});
  ASSERT_EQ(run.exit_code, 0) << run.output;
  // Every committed insert, none of the aborted transaction's.
  EXPECT_NE(run.output.find("\"inserted\": 20407"), std::string::npos) << run.output;
  // The large ones streamed alone: applied as they streamed.
  auto summary = nlohmann::json::parse(run.output.substr(run.output.find("\n{") + 1));
  EXPECT_GE(summary["streamed"].get<int>(), 1) << run.output;
  EXPECT_EQ(summary["streamed_applied_live"], summary["streamed"]) << run.output;
  expect_tables_equal(src, dst);
  EXPECT_EQ(query_value(dst, "SELECT count(*) FROM bulk WHERE payload = 'aborted' OR n < 0"), "0");
  EXPECT_GE(query_value(dst, "SELECT applied_lsn >= '" + until +
                                 "'::pg_lsn FROM pgferry.progress WHERE name = 'e2e_slot'"),
            "t");
  // The slot was confirmed up to what the target committed, not beyond.
  EXPECT_EQ(query_value(src,
                        "SELECT confirmed_flush_lsn <= (SELECT pg_current_wal_lsn()) FROM "
                        "pg_replication_slots WHERE slot_name = 'e2e_slot'"),
            "t");

  // Nothing new: returns at once.
  auto idle = pgferry({"run", "--until", until});
  EXPECT_EQ(idle.exit_code, 0) << idle.output;

  // A second workload, resumed from the progress record.
  src.exec(R"sql(
    UPDATE bulk SET n = n + 10 WHERE id < 500;
    INSERT INTO kinds (id, t) VALUES (2000, 'second round');
    DELETE FROM accounts WHERE id > 40;
  )sql");
  std::string until2 = query_value(src, "SELECT pg_current_wal_lsn()::text");
  auto run2 = pgferry({"run", "--until", until2});
  ASSERT_EQ(run2.exit_code, 0) << run2.output;
  expect_tables_equal(src, dst);

  auto cleanup = pgferry({"cleanup"});
  EXPECT_EQ(cleanup.exit_code, 0) << cleanup.output;
  EXPECT_EQ(query_value(src,
                        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = "
                        "'e2e_slot'"),
            "0");
  EXPECT_EQ(query_value(src, "SELECT count(*) FROM pg_publication WHERE pubname = 'e2e_slot'"),
            "0");
  EXPECT_EQ(query_value(dst, "SELECT to_regclass('pgferry.progress') IS NULL"), "t");
  auto cleanup_again = pgferry({"cleanup"});
  EXPECT_EQ(cleanup_again.exit_code, 0) << cleanup_again.output;
}

// Streamed transactions applied as they stream, and what must make them fall back to the
// spool: small transactions committing in between (and rows the streamed one then changes),
// a second streamed transaction committing first, a subtransaction abort.
TEST_F(RunReplication, StreamedTransactionsAmongOthers) {
  auto src = connect(source(), "postgres", repl::Side::source);
  auto dst = connect(target(), "postgres", repl::Side::target);
  const char* schema =
      "CREATE TABLE live_big (id int PRIMARY KEY, payload text, n int);"
      "CREATE TABLE live_small (id int PRIMARY KEY, n int);";
  src.exec(schema);
  dst.exec(schema);
  src.exec("ALTER SYSTEM SET logical_decoding_work_mem = '64kB'");
  src.exec("SELECT pg_reload_conf()");
  auto args = common_args();
  for (auto& arg : args) {
    if (arg == "e2e_slot") arg = "live_slot";
  }
  auto with = [&](std::vector<std::string> more) {
    auto all = args;
    all.insert(all.end(), more.begin(), more.end());
    return run_pgferry(all);
  };
  auto init = with({"init", "--no-data"});
  ASSERT_EQ(init.exit_code, 0) << init.output;

  auto x = connect(source());
  auto y = connect(source());
  auto small = connect(source());
  // X streams alone at first (applied live), small transactions commit in between, X then
  // updates rows they wrote.
  x.exec("BEGIN");
  x.exec(
      "INSERT INTO live_big SELECT g, repeat(md5(g::text), 4), 0 FROM generate_series(1, "
      "4000) g");
  small.exec("INSERT INTO live_small SELECT g, 0 FROM generate_series(1, 50) g");
  x.exec(
      "INSERT INTO live_big SELECT g, repeat(md5(g::text), 4), 0 FROM generate_series(4001, "
      "8000) g");
  small.exec("UPDATE live_small SET n = n + 1 WHERE id <= 25");
  x.exec("UPDATE live_small SET n = n + 100 WHERE id % 2 = 0");
  x.exec("UPDATE live_big SET n = 1 WHERE id % 3 = 0");
  // Y streams too and commits before X.
  y.exec("BEGIN");
  y.exec(
      "INSERT INTO live_big SELECT g, repeat(md5(g::text), 4), 2 FROM generate_series(10001, "
      "14000) g");
  y.exec("COMMIT");
  x.exec("DELETE FROM live_big WHERE id % 7 = 0");
  x.exec("COMMIT");

  // Z streams alone but a subtransaction of it aborts: replayed from the spool.
  x.exec("BEGIN");
  x.exec(
      "INSERT INTO live_big SELECT g, repeat(md5(g::text), 4), 3 FROM generate_series(20001, "
      "24000) g");
  x.exec("SAVEPOINT s");
  x.exec("INSERT INTO live_big SELECT g, 'undone', 3 FROM generate_series(30001, 34000) g");
  x.exec("UPDATE live_big SET payload = 'undone' WHERE id <= 100");
  x.exec("ROLLBACK TO SAVEPOINT s");
  small.exec("UPDATE live_small SET n = n + 1000 WHERE id = 50");
  x.exec("UPDATE live_big SET n = 4 WHERE id BETWEEN 20001 AND 20100");
  x.exec("COMMIT");

  // W streams alone, with small commits in between, and commits.
  x.exec("BEGIN");
  x.exec("UPDATE live_big SET n = n + 5 WHERE id <= 6000");
  small.exec("INSERT INTO live_small VALUES (51, 51)");
  x.exec("UPDATE live_small SET n = -1 WHERE id = 51");
  x.exec("COMMIT");

  std::string until = query_value(src, "SELECT pg_current_wal_lsn()::text");
  auto run = with({"run", "--until", until, "--json"});
  ASSERT_EQ(run.exit_code, 0) << run.output;
  for (const char* table : {"live_big", "live_small"}) {
    EXPECT_EQ(table_fingerprint(src, table, "id"), table_fingerprint(dst, table, "id")) << table;
  }
  EXPECT_EQ(query_value(dst, "SELECT count(*) FROM live_big WHERE payload = 'undone'"), "0");
  // X and W live; Y was not alone, Z fell back at its subtransaction abort.
  auto summary = nlohmann::json::parse(run.output.substr(run.output.find("\n{") + 1));
  EXPECT_EQ(summary["streamed"], 4) << run.output;
  EXPECT_EQ(summary["streamed_applied_live"], 2) << run.output;
  EXPECT_EQ(with({"cleanup"}).exit_code, 0);
  src.exec("ALTER SYSTEM RESET logical_decoding_work_mem");
  src.exec("SELECT pg_reload_conf()");
}

// A streamed transaction applied as it streams waits for a row lock (held here by another
// session on the target): after --lock-timeout it is dropped and replayed at its commit,
// and the result is the same.
TEST_F(RunReplication, StreamedTransactionThatWaitsForALockIsReplayedInstead) {
  auto src = connect(source(), "postgres", repl::Side::source);
  auto dst = connect(target(), "postgres", repl::Side::target);
  const char* schema = "CREATE TABLE locked (id int PRIMARY KEY, payload text, n int);";
  src.exec(schema);
  dst.exec(schema);
  src.exec("INSERT INTO locked VALUES (5, 'five', 0)");
  dst.exec("INSERT INTO locked VALUES (5, 'five', 0)");
  src.exec("ALTER SYSTEM SET logical_decoding_work_mem = '64kB'");
  src.exec("SELECT pg_reload_conf()");
  std::vector<std::string> args = {"--source", source().conninfo(), "--target", target().conninfo(),
                                   "--name",   "lock_slot"};
  auto with = [&](std::vector<std::string> more) {
    auto all = args;
    all.insert(all.end(), more.begin(), more.end());
    return all;
  };
  auto init = run_pgferry(with({"init", "--no-data"}));
  ASSERT_EQ(init.exit_code, 0) << init.output;
  src.exec(
      "BEGIN;"
      "UPDATE locked SET n = 1 WHERE id = 5;"
      "INSERT INTO locked SELECT g, repeat(md5(g::text), 4), 0 FROM generate_series(10, "
      "4000) g;"
      "COMMIT");
  std::string until = query_value(src, "SELECT pg_current_wal_lsn()::text");

  auto holder = connect(target());
  holder.exec("BEGIN; SELECT * FROM locked WHERE id = 5 FOR UPDATE");
  std::string log = fmt::format("/tmp/pgferry-lock-wait-{}.log", ::getpid());
  std::remove(log.c_str());
  PgferryProcess run(with({"run", "--until", until, "--json", "--lock-timeout", "1"}), log);
  // Release the row only once the live apply gave up on it.
  ASSERT_TRUE(wait_until([&] {
    return run.log_text().find("waited for a lock") != std::string::npos;
  })) << run.log_text();
  holder.exec("COMMIT");
  ASSERT_TRUE(wait_until([&] { return run.exited(); })) << run.log_text();
  ASSERT_EQ(run.exit_code(), 0) << run.log_text();
  EXPECT_EQ(table_fingerprint(src, "locked", "id"), table_fingerprint(dst, "locked", "id"));
  auto output = run.log_text();
  auto summary = nlohmann::json::parse(output.substr(output.find("\n{") + 1));
  EXPECT_EQ(summary["streamed"], 1) << output;
  EXPECT_EQ(summary["streamed_applied_live"], 0) << output;
  EXPECT_EQ(run_pgferry(with({"cleanup"})).exit_code, 0);
  src.exec("ALTER SYSTEM RESET logical_decoding_work_mem");
  src.exec("SELECT pg_reload_conf()");
}

TEST_F(RunReplication, RunWithoutInitIsAClearError) {
  auto result = run_pgferry({"--source", source().conninfo(), "--target", target().conninfo(),
                             "--name", "never_initialized", "run", "--until", "0/1"});
  EXPECT_EQ(result.exit_code, 1) << result.output;
  EXPECT_NE(result.output.find("pgferry init"), std::string::npos) << result.output;
  EXPECT_EQ(pgferry({"run", "--until", "not-an-lsn"}).exit_code, 2);
}
