// Cross-version scenario implementation (see crossversion.hpp).
#include "support/crossversion.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <regex>
#include <stdexcept>

#include "support/harness.hpp"

namespace pgferry::testing {

namespace {

namespace fs = std::filesystem;

// Tables with a primary key only: the full init refuses others (its preflight).
const char* kSchema = R"sql(
  CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
  CREATE TABLE kinds (
    id bigint PRIMARY KEY, i int, n numeric, t text, raw bytea, doc jsonb, ints int[],
    texts text[], m mood, at timestamptz, u uuid, f float8, b boolean, d date,
    span interval, r int4range);
  CREATE TABLE docs (id int PRIMARY KEY, title text, body text);
  ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
  CREATE TABLE logs (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, line text);
  CREATE TABLE bulk (id int PRIMARY KEY, payload text, n int);
  CREATE SCHEMA "Odd Schema";
  CREATE TABLE "Odd Schema"."Mixed""Name" ("Key" int PRIMARY KEY, "select" text);
  CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL, moves int NOT NULL);
  CREATE TABLE transfers (id bigint PRIMARY KEY, src int, dst int, amount int, note text);
)sql";

const std::vector<std::pair<std::string, std::string>> kTables = {
    {"kinds", "id"},
    {"docs", "id"},
    {"logs", "id"},
    {"bulk", "id"},
    {"accounts", "id"},
    {"transfers", "id"},
    {"\"Odd Schema\".\"Mixed\"\"Name\"", "\"Key\""},
};

// Rows that exist before `init`: the initial copy carries them across.
const char* kSeed = R"sql(
  INSERT INTO kinds
  SELECT g, g * 7 - 3, CASE WHEN g % 5 = 0 THEN 'NaN'::numeric ELSE g / 7.0 END,
         CASE g % 4 WHEN 0 THEN E'tab\there' WHEN 1 THEN E'new\nline\r\nand \\backslash'
                    WHEN 2 THEN 'quote '' and " and 🐢 żółw' ELSE NULL END,
         decode(md5(g::text), 'hex'), jsonb_build_object('g', g, 's', E'a\tb', 'n', NULL),
         ARRAY[g, NULL, -g], ARRAY['x y', E'q"\\', NULL], (ARRAY['sad','ok','happy'])[g % 3 + 1]::mood,
         '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 minute 1.5 second',
         md5(g::text)::uuid, CASE WHEN g % 7 = 0 THEN 'Infinity'::float8 ELSE g / 3.0 END,
         g % 2 = 0, DATE '2000-02-29' + g, g * interval '1 day 2 hours', int4range(g, g + 10)
  FROM generate_series(1, 100) g;
  INSERT INTO docs SELECT g, 'title ' || g, repeat(md5(g::text), 300) FROM generate_series(1, 20) g;
  INSERT INTO accounts SELECT g, 1000000, 0 FROM generate_series(1, 100) g;
  INSERT INTO "Odd Schema"."Mixed""Name" VALUES (1, 'one'), (2, 'two');
)sql";

// After `init`: every change kind, streamed transactions included.
const char* kWorkload = R"sql(
  INSERT INTO kinds
  SELECT g, -g, g * 1.25, 'later ' || g, '\x00ff'::bytea, jsonb_build_object('a', jsonb_build_array(g, 'x')),
         ARRAY[g], ARRAY['z'], 'ok', 'infinity', gen_random_uuid(), -0.5, NULL, 'infinity',
         interval '-3 days', 'empty'
  FROM generate_series(101, 300) g;
  INSERT INTO kinds (id) VALUES (1000);
  UPDATE docs SET title = 'renamed ' || id WHERE id <= 10;      -- body: unchanged TOAST
  UPDATE docs SET id = id + 100 WHERE id > 15;                   -- key change
  DELETE FROM docs WHERE id = 3;
  UPDATE kinds SET t = NULL, doc = '{"changed": true}' WHERE id % 10 = 1;
  UPDATE kinds SET id = id + 5000 WHERE id % 10 = 3;             -- key change
  DELETE FROM kinds WHERE id % 10 = 2;
  UPDATE "Odd Schema"."Mixed""Name" SET "Key" = 3, "select" = 'three' WHERE "Key" = 2;
  INSERT INTO logs (line) SELECT 'line ' || g FROM generate_series(1, 50) g;
  TRUNCATE logs RESTART IDENTITY;
  INSERT INTO logs (line) VALUES ('after truncate');
  -- Streamed in progress (64kB work mem), with a savepoint rolled back inside: a Stream
  -- Abort for the subtransaction, then a Stream Commit.
  BEGIN;
  INSERT INTO bulk SELECT g, repeat(md5(g::text), 4), 0 FROM generate_series(1, 20000) g;
  SAVEPOINT sp;
  INSERT INTO bulk SELECT g, 'rolled back', 0 FROM generate_series(50001, 53000) g;
  ROLLBACK TO SAVEPOINT sp;
  UPDATE bulk SET n = n + 1 WHERE id % 3 = 0;
  DELETE FROM bulk WHERE id % 11 = 0;
  COMMIT;
  -- Streamed, then aborted: a Stream Abort of the top-level transaction; no trace.
  BEGIN;
  INSERT INTO bulk SELECT g, repeat('a', 100), -1 FROM generate_series(100001, 110000) g;
  ROLLBACK;
  UPDATE docs SET body = body || 'tail' WHERE id = 1;           -- a TOASTed value changed
)sql";

// The exactly-once backlog: one transaction per transfer, and one large streamed one.
const char* kBacklog = R"sql(
  DO $$
  DECLARE a int; b int; amount int;
  BEGIN
    FOR i IN 1..4000 LOOP
      a := (i::bigint * 7919) % 100 + 1;
      b := (i::bigint * 104729) % 100 + 1;
      amount := i % 97 + 1;
      UPDATE accounts SET balance = balance - amount, moves = moves + 1 WHERE id = a;
      UPDATE accounts SET balance = balance + amount, moves = moves + 1 WHERE id = b;
      INSERT INTO transfers VALUES (i, a, b, amount, E'tab\t' || i);
      IF i = 2000 THEN
        INSERT INTO bulk SELECT 200000 + g, repeat('y', 200), 7 FROM generate_series(1, 8000) g;
        UPDATE bulk SET payload = payload || '!' WHERE n = 7;
      END IF;
      COMMIT;
    END LOOP;
  END $$;
)sql";

int server_major(const replication::Connection& conn) {
  return std::stoi(query_value(conn, "SHOW server_version_num")) / 10000;
}

}  // namespace

std::string bindir_for_major(int major) {
  std::string variable = fmt::format("PGFERRY_PG{}_BINDIR", major);
  const char* value = std::getenv(variable.c_str());
  if (value == nullptr || *value == '\0') {
    if (major == 15) {  // the system's PostgreSQL
      std::string out = tools::capture_process({"pg_config", "--bindir"});
      while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
      return out;
    }
    throw std::runtime_error(fmt::format(
        "{} is not set: the cross-version tests need PostgreSQL {}'s binaries. Build them with "
        "`tools/build-postgres.sh {}` and export {}=<the directory it prints> (tools/test.sh "
        "does both)",
        variable, major, major, variable));
  }
  fs::path postgres = fs::path(value) / "postgres";
  if (!fs::exists(postgres)) {
    throw std::runtime_error(
        fmt::format("{}={} has no postgres binary: rebuild it with "
                    "`tools/build-postgres.sh {}`",
                    variable, value, major));
  }
  return value;
}

std::unique_ptr<LocalCluster> start_cluster_of_major(int major, tools::ClusterOptions options) {
  options.bindir = bindir_for_major(major);
  return start_cluster(std::move(options));
}

void run_crossversion_scenario(int source_major, int target_major) {
  auto source = start_cluster_of_major(source_major);
  auto target = start_cluster_of_major(target_major);
  std::string target_bindir = target->bindir();
  auto src = connect(*source);
  auto dst = connect(*target);
  ASSERT_EQ(server_major(src), source_major) << source->bindir();
  ASSERT_EQ(server_major(dst), target_major) << target->bindir();
  SCOPED_TRACE(fmt::format("PostgreSQL {} -> {}", source_major, target_major));

  // A name of its own per pair of majors: the crossversion tests run in parallel, and the
  // default spool directory is named after it (<temp>/pgferry-spool-<name>).
  const std::string name = fmt::format("xv{}to{}", source_major, target_major);
  std::vector<std::string> common = {"--source",         source->conninfo(), "--target",
                                     target->conninfo(), "--name",           name};
  auto pgferry = [&](std::vector<std::string> args) {
    auto all = common;
    all.insert(all.end(), args.begin(), args.end());
    return run_pgferry(all);
  };
  auto expect_tables_equal = [&](std::string_view when) {
    for (const auto& [table, order] : kTables) {
      EXPECT_EQ(table_fingerprint(src, table, order), table_fingerprint(dst, table, order))
          << table << " " << when;
    }
  };

  src.exec("ALTER SYSTEM SET logical_decoding_work_mem = '64kB'");
  src.exec("SELECT pg_reload_conf()");
  src.exec(kSchema);
  src.exec(kSeed);

  // 1. init. The upgrade creates the target's tables from the source with --schema, using
  // pg_dump and psql of the target's (newer) version, as the README tells; the reverse
  // direction has its schema already.
  if (target_major > source_major) {
    auto check = pgferry({"check"});
    EXPECT_EQ(check.exit_code, 3) << check.output;  // the target has no tables yet
    auto init = pgferry({"init", "--schema", "--pg-bindir", target_bindir});
    ASSERT_EQ(init.exit_code, 0) << init.output;
  } else {
    dst.exec(kSchema);
    auto init = pgferry({"init"});
    ASSERT_EQ(init.exit_code, 0) << init.output;
  }
  auto check = pgferry({"check"});
  EXPECT_EQ(check.exit_code, 0) << check.output;
  expect_tables_equal("after init");

  // 2. The workload, streamed.
  src.exec(kWorkload);
  std::string until = query_value(src, "SELECT pg_current_wal_lsn()::text");
  std::string log =
      fmt::format("/tmp/pgferry-crossversion-{}-{}-{}.log", source_major, target_major, ::getpid());
  std::remove(log.c_str());
  auto run = pgferry({"run", "--until", until, "--json"});
  ASSERT_EQ(run.exit_code, 0) << run.output;
  // Logs and the JSON result share the output: find the streamed-transaction count.
  std::smatch streamed;
  ASSERT_TRUE(std::regex_search(run.output, streamed, std::regex(R"("streamed": (\d+))")))
      << run.output;
  EXPECT_GE(std::stoi(streamed[1]), 1) << "the large transaction was not streamed\n" << run.output;
  const std::string& run_log = run.output;
  if (source_major >= 16) {
    EXPECT_NE(run_log.find("proto=4 streaming=parallel"), std::string::npos) << run_log;
  } else {
    EXPECT_NE(run_log.find("proto=3 streaming=on"), std::string::npos) << run_log;
  }
  expect_tables_equal("after the workload");
  EXPECT_EQ(query_value(dst, "SELECT count(*) FROM bulk WHERE n = -1 OR id > 50000"), "0");
  EXPECT_EQ(query_value(dst, "SELECT count(*) FROM logs"), "1");  // truncate, then one row

  // The other commands against both majors: lag answers, sequences sync leaves none behind.
  auto lag = pgferry({"--json", "lag"});
  EXPECT_EQ(lag.exit_code, 0) << lag.output;
  EXPECT_NE(lag.output.find("lag_bytes"), std::string::npos) << lag.output;
  EXPECT_EQ(pgferry({"sequences", "diff"}).exit_code, 3);  // logs' identity is behind
  auto sync = pgferry({"sequences", "sync"});
  EXPECT_EQ(sync.exit_code, 0) << sync.output;
  auto diff = pgferry({"sequences", "diff"});
  EXPECT_EQ(diff.exit_code, 0) << diff.output;

  // 2b. A large transaction aborted while `run` streams it: a top-level Stream Abort (with
  // its abort LSN and time on a 16+ source), and on the target the live-applied part is
  // rolled back. (17+ would not stream it at all had it aborted before being decoded.)
  {
    auto stream_txns = [&] {
      return std::stoll(
          query_value(src, fmt::format("SELECT coalesce(sum(stream_txns), 0) FROM "
                                       "pg_stat_replication_slots WHERE slot_name = '{}'",
                                       name)));
    };
    long long streamed_before = stream_txns();
    auto all = common;
    all.insert(all.end(), {"run"});
    PgferryProcess live(all, log);
    auto open_txn = connect(*source);
    open_txn.exec("BEGIN");
    open_txn.exec(
        "INSERT INTO bulk SELECT g, repeat('live', 50), -2 FROM generate_series(300001, 310000) g");
    ASSERT_TRUE(
        wait_until([&] { return stream_txns() > streamed_before; }, std::chrono::seconds(60)))
        << "the open transaction was never streamed\n"
        << live.log_text();
    open_txn.exec("ROLLBACK");
    src.exec("INSERT INTO logs (line) VALUES ('after the live abort')");
    ASSERT_TRUE(wait_until(
        [&] {
          return query_value(
                     dst, "SELECT count(*) FROM logs WHERE line = 'after the live abort'") == "1";
        },
        std::chrono::seconds(60)))
        << live.log_text();
    EXPECT_EQ(live.stop(), 0) << live.log_text();
    EXPECT_EQ(query_value(dst, "SELECT count(*) FROM bulk WHERE n = -2"), "0");
    expect_tables_equal("after the live abort");
  }

  // 3. Exactly once across SIGKILLs.
  src.exec(kBacklog);
  until = query_value(src, "SELECT pg_current_wal_lsn()::text");
  std::vector<std::string> kill_args = common;
  kill_args.insert(kill_args.end(), {"run", "--until", until, "--group-max-delay-ms", "20",
                                     "--group-max-rows", "300"});
  unsigned seed = std::random_device{}();
  std::mt19937 random(seed);
  SCOPED_TRACE(fmt::format("seed {} log {}", seed, log));
  auto applied = [&] { return std::stoll(query_value(dst, "SELECT count(*) FROM transfers")); };
  int killed_mid_stream = run_pgferry_with_sigkills(
      kill_args, log, 3, applied, random, std::chrono::milliseconds(100), [&] {
        EXPECT_EQ(
            query_value(
                dst, fmt::format("SELECT count(*) FROM pgferry.progress WHERE name = '{}'", name)),
            "1");
      });
  EXPECT_GE(killed_mid_stream, 1);
  auto final_run = run_pgferry(kill_args);
  ASSERT_EQ(final_run.exit_code, 0) << final_run.output;
  expect_tables_equal("after the kills");
  EXPECT_EQ(query_value(dst, "SELECT sum(balance) FROM accounts"), "100000000");
  EXPECT_EQ(query_value(dst, "SELECT sum(moves) FROM accounts"), "8000");
  EXPECT_EQ(query_value(dst, "SELECT count(*) FROM transfers"), "4000");

  auto cleanup = pgferry({"cleanup"});
  EXPECT_EQ(cleanup.exit_code, 0) << cleanup.output;
}

void run_verify_crossversion_scenario(int source_major, int target_major) {
  auto source = start_cluster_of_major(source_major);
  auto target = start_cluster_of_major(target_major);
  auto src = connect(*source);
  auto dst = connect(*target);
  ASSERT_EQ(server_major(src), source_major) << source->bindir();
  ASSERT_EQ(server_major(dst), target_major) << target->bindir();
  SCOPED_TRACE(fmt::format("verify, PostgreSQL {} -> {}", source_major, target_major));
  PgferryPair pair{source->conninfo(), target->conninfo(),
                   fmt::format("xvv{}to{}", source_major, target_major)};

  src.exec("ALTER SYSTEM SET logical_decoding_work_mem = '64kB'");
  src.exec("SELECT pg_reload_conf()");
  src.exec(kSchema);
  src.exec(kSeed);
  auto init = pair.run({"init", "--schema", "--pg-bindir", target->bindir()});
  ASSERT_EQ(init.exit_code, 0) << init.output;
  src.exec(kWorkload);
  auto until = query_value(src, "SELECT pg_current_wal_lsn()::text");
  auto run = pair.run({"run", "--until", until});
  ASSERT_EQ(run.exit_code, 0) << run.output;

  // Equal with either hash: the row text and hashtextextended agree between the majors
  // (the automatic choice must pick it on one machine: same byte order).
  for (const char* hash : {"auto", "md5"}) {
    auto result = pair.run({"verify", "--once", "--json", "--hash", hash});
    EXPECT_EQ(result.exit_code, 0) << hash << "\n" << result.output;
    auto report = json_document(result);
    ASSERT_TRUE(report.is_object()) << result.output;
    EXPECT_EQ(report["hash"], std::string(hash) == "md5" ? "md5" : "hashtextextended")
        << report.dump(2);
    EXPECT_TRUE(report["equal"].get<bool>()) << report.dump(2);
    EXPECT_EQ(report["tables"].size(), kTables.size()) << report.dump(2);
    long long rows = 0;
    for (const auto& table : report["tables"]) rows += table["source_rows"].get<long long>();
    EXPECT_GT(rows, 18000) << report.dump(2);  // the streamed bulk rows were compared too
    for (const auto& table : report["tables"]) {
      EXPECT_TRUE(table["equal"].get<bool>()) << hash << " " << table.dump(2);
      EXPECT_EQ(table["source_rows"], table["target_rows"]) << table.dump(2);
    }
  }

  // Four rows changed on the target only: each is named, with either hash.
  dst.exec(R"sql(
    UPDATE kinds SET t = 'changed on the target' WHERE id = 7;
    UPDATE kinds SET doc = doc || '{"x": 1}', r = int4range(1, 2) WHERE id = 9;
    DELETE FROM docs WHERE id = 4;
    INSERT INTO accounts VALUES (1000, 0, 0);
  )sql");
  const std::set<std::string> expected = {
      R"(public.kinds different {"id":"7"} ["t"])",
      R"(public.kinds different {"id":"9"} ["doc","r"])",
      R"(public.docs missing_on_target {"id":"4"} [])",
      R"(public.accounts extra_on_target {"id":"1000"} [])",
  };
  for (const char* hash : {"auto", "md5"}) {
    auto result = pair.run({"verify", "--once", "--json", "--hash", hash});
    EXPECT_EQ(result.exit_code, 3) << hash << "\n" << result.output;
    auto report = json_document(result);
    ASSERT_TRUE(report.is_object()) << result.output;
    EXPECT_EQ(verify_differences(report), expected) << hash << "\n" << report.dump(2);
  }

  auto cleanup = pair.run({"cleanup"});
  EXPECT_EQ(cleanup.exit_code, 0) << cleanup.output;
}

}  // namespace pgferry::testing
