// Adversarial end-to-end apply: workloads where the order of changes inside one target
// transaction (group) matters, applied by `pgferry run --until` in one go from a backlog, so
// that many small source transactions land in the same group, with coalesced updates and
// batched inserts. Every table is compared source vs target afterwards.
//
// Each test has its own database on both clusters (and its own slot), and the main workload
// lives in a schema so that it can be run several times side by side (SIGKILL test).
#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "support/harness.hpp"

namespace repl = pgferry::replication;
using namespace pgferry::testing;

namespace {

// Tables of the main workload, created in schema `s` on source and target alike.
std::string schema_sql(std::string_view s) {
  return fmt::format(R"sql(
    CREATE SCHEMA {0};
    SET search_path TO {0};
    CREATE TABLE kv (id int PRIMARY KEY, a text, b text, n int);
    CREATE TABLE docs (id int PRIMARY KEY, small int, big text);
    ALTER TABLE docs ALTER COLUMN big SET STORAGE EXTERNAL;
    CREATE TABLE trunc (id int PRIMARY KEY, v text);
    CREATE TABLE parent (id int PRIMARY KEY, name text);
    CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent (id), note text);
    CREATE TABLE fullrow (a int, b text, c text);
    ALTER TABLE fullrow REPLICA IDENTITY FULL;
    CREATE TABLE fullpk (id int PRIMARY KEY, v text, big text);
    ALTER TABLE fullpk REPLICA IDENTITY FULL;
    ALTER TABLE fullpk ALTER COLUMN big SET STORAGE EXTERNAL;
    CREATE TABLE comp (a int, b text, v text, PRIMARY KEY (a, b));
    CREATE TABLE many (id int PRIMARY KEY, n int, pad text);
    CREATE TABLE ledger (id int PRIMARY KEY, account int REFERENCES parent (id), amount int);
    RESET search_path;
  )sql",
                     s);
}

const std::vector<std::string> kTables = {"kv",      "docs",   "trunc", "parent", "child",
                                          "fullrow", "fullpk", "comp",  "many",   "ledger"};

// A >2 kB text that does not compress: md5 hex of 100 different seeds.
constexpr const char* kBig =
    "(SELECT string_agg(md5(i::text || '{}'), '') FROM generate_series(1, 100) i)";

// The main workload: one source transaction per element.
std::vector<std::string> workload(std::string_view s) {
  auto big = [](std::string_view seed) { return fmt::format(fmt::runtime(kBig), seed); };
  std::vector<std::string> w = {
      // Base rows (60 rows: the COPY path).
      "INSERT INTO kv SELECT g, 'a' || g, 'b' || g, 0 FROM generate_series(1, 60) g",
      "INSERT INTO many SELECT g, 0, md5(g::text) FROM generate_series(1, 400) g",
      fmt::format("INSERT INTO docs SELECT g, 0, {} FROM generate_series(1, 5) g", big("d")),
      "INSERT INTO parent VALUES (1, 'p1'), (2, 'p2')",
      "INSERT INTO child VALUES (1, 1, 'c1')",
      "INSERT INTO fullrow VALUES (1, 'x', 'y'), (1, 'x', 'y'), (2, NULL, 'z'), (3, 'w', 'w')",
      fmt::format("INSERT INTO fullpk VALUES (1, 'v1', {}), (2, 'v2', {})", big("f1"), big("f2")),
      "INSERT INTO comp VALUES (1, 'x', 'v1'), (2, 'y', 'v2'), (3, 'z', 'v3')",
      "INSERT INTO trunc VALUES (1, 't1'), (2, 't2')",

      // Insert K, update K, update K again.
      "INSERT INTO kv VALUES (100, 'x', 'y', 1)",
      "UPDATE kv SET a = 'x2' WHERE id = 100",
      "UPDATE kv SET b = 'y2', n = 3 WHERE id = 100",
      // Update K, delete K, re-insert K with other values, update it.
      "UPDATE kv SET a = 'gone soon' WHERE id = 10",
      "DELETE FROM kv WHERE id = 10",
      "INSERT INTO kv VALUES (10, 'reborn', NULL, 10)",
      "UPDATE kv SET n = 11 WHERE id = 10",
      // Delete K then insert K.
      "DELETE FROM kv WHERE id = 20",
      "INSERT INTO kv VALUES (20, 'twenty again', 'b', 20)",
      // Coalesced update of K, key change K -> K', insert K, update K'.
      "UPDATE kv SET n = 30 WHERE id = 30",
      "UPDATE kv SET id = 130 WHERE id = 30",
      "INSERT INTO kv VALUES (30, 'new thirty', 'b', 0)",
      "UPDATE kv SET a = 'moved' WHERE id = 130",
      "UPDATE kv SET a = 'thirty updated' WHERE id = 30",
      // Swap two keys through a temporary key.
      "UPDATE kv SET n = 40 WHERE id IN (40, 41)",
      "UPDATE kv SET id = 1000 WHERE id = 40",
      "UPDATE kv SET id = 40 WHERE id = 41",
      "UPDATE kv SET id = 41 WHERE id = 1000",
      "UPDATE kv SET n = n + 100 WHERE id IN (40, 41)",
      // Different column subsets of the same row in consecutive transactions.
      "UPDATE kv SET a = 'A50' WHERE id = 50",
      "UPDATE kv SET b = 'B50' WHERE id = 50",
      "UPDATE kv SET n = 50 WHERE id = 50",
      // A column to NULL and back; two columns to NULL.
      "UPDATE kv SET a = NULL WHERE id = 51",
      "UPDATE kv SET a = 'back' WHERE id = 51",
      "UPDATE kv SET b = NULL, n = NULL WHERE id = 52",
      // Insert and update in one transaction; insert while updates are being coalesced, update
      // the batched insert, delete it, insert it again.
      "BEGIN; INSERT INTO kv VALUES (200, 'one txn', 'b', 0); UPDATE kv SET a = 'same txn' "
      "WHERE id = 200; COMMIT",
      "UPDATE kv SET n = -1 WHERE id = 2",
      "INSERT INTO kv VALUES (300, 'batched insert', 'b', 0)",
      "UPDATE kv SET a = 'batched update' WHERE id = 300",
      "DELETE FROM kv WHERE id = 300",
      "INSERT INTO kv VALUES (300, 'final', 'final', 300)",
      "UPDATE kv SET n = -2 WHERE id = 3",
      "INSERT INTO kv SELECT g, 'run', 'run', g FROM generate_series(400, 440) g",
      "UPDATE kv SET b = 'after run' WHERE id BETWEEN 410 AND 415",

      // A rolled back subtransaction inside a transaction: only the rest is applied.
      "BEGIN; UPDATE kv SET a = 'kept' WHERE id = 5; SAVEPOINT s; UPDATE kv SET a = 'undone' "
      "WHERE id = 5; DELETE FROM kv WHERE id = 6; INSERT INTO kv VALUES (600, 'undone', '', 0); "
      "ROLLBACK TO SAVEPOINT s; UPDATE kv SET b = 'kept too' WHERE id = 5; COMMIT",
      // Unchanged TOAST column across several updates, interleaved with coalesced updates.
      "UPDATE docs SET small = small + 1 WHERE id = 1",
      "UPDATE kv SET n = n + 1 WHERE id = 1",
      "UPDATE docs SET small = small + 1 WHERE id = 1",
      "UPDATE kv SET n = n + 1 WHERE id = 1",
      "UPDATE docs SET small = small + 1 WHERE id = 1",
      "UPDATE docs SET big = 'short now' WHERE id = 2",
      "UPDATE docs SET small = 7 WHERE id = 2",
      "UPDATE docs SET id = 103 WHERE id = 3",
      "UPDATE docs SET small = 9 WHERE id = 103",
      fmt::format("UPDATE docs SET big = {}, small = 4 WHERE id = 4", big("new4")),
      "UPDATE docs SET small = 44 WHERE id = 4",
      "DELETE FROM docs WHERE id = 5",
      fmt::format("INSERT INTO docs VALUES (5, 55, {})", big("re5")),
      "UPDATE docs SET small = 555 WHERE id = 5",

      // UPDATE, TRUNCATE, INSERT of the same keys.
      "UPDATE trunc SET v = 'changed' WHERE id = 1",
      "TRUNCATE trunc",
      "INSERT INTO trunc VALUES (1, 'after'), (3, 'three')",
      "UPDATE trunc SET v = 'after2' WHERE id = 1",

      // Parent/child with a foreign key on the target too.
      "INSERT INTO parent VALUES (10, 'p10')",
      "INSERT INTO child VALUES (10, 10, 'c10')",
      "DELETE FROM child WHERE id = 10",
      "DELETE FROM parent WHERE id = 10",
      // One transaction over two tables: B's update needs A's insert.
      "BEGIN; INSERT INTO parent VALUES (11, 'p11'); UPDATE child SET parent_id = 11 WHERE id = "
      "1; DELETE FROM parent WHERE id = 1; COMMIT",
      "BEGIN; INSERT INTO parent VALUES (12, 'p12'); INSERT INTO ledger VALUES (1, 12, 5); "
      "COMMIT",
      "UPDATE ledger SET amount = 6 WHERE id = 1",
      "BEGIN; INSERT INTO parent VALUES (13, 'p13'); UPDATE ledger SET account = 13 WHERE id = 1; "
      "DELETE FROM parent WHERE id = 12; COMMIT",
      "UPDATE ledger SET amount = 7 WHERE id = 1",

      // REPLICA IDENTITY FULL, no key (duplicate rows) and with a key (TOAST unchanged).
      "UPDATE fullrow SET c = 'y2' WHERE ctid = (SELECT min(ctid) FROM fullrow WHERE a = 1)",
      "UPDATE fullrow SET b = NULL WHERE a = 3",
      "UPDATE fullrow SET b = 'notnull' WHERE a = 2",
      "UPDATE fullrow SET b = 'w again' WHERE a = 3",
      "DELETE FROM fullrow WHERE a = 1 AND c = 'y'",
      "INSERT INTO fullrow VALUES (1, 'x', 'y')",
      "UPDATE fullpk SET v = 'v1b' WHERE id = 1",
      "UPDATE fullpk SET v = 'v1c' WHERE id = 1",
      "UPDATE fullpk SET id = 5 WHERE id = 2",
      "UPDATE fullpk SET v = NULL WHERE id = 5",

      // Composite primary key whose key changes.
      "UPDATE comp SET v = 'v1b' WHERE a = 1 AND b = 'x'",
      "UPDATE comp SET b = 'x2' WHERE a = 1 AND b = 'x'",
      "INSERT INTO comp VALUES (1, 'x', 'again')",
      "UPDATE comp SET v = 'upd' WHERE a = 1 AND b = 'x2'",
      "UPDATE comp SET a = 3, b = 'y' WHERE a = 2 AND b = 'y'",
      "UPDATE comp SET a = 2, b = 'z' WHERE a = 3 AND b = 'z'",
      "UPDATE comp SET v = 'last' WHERE (a, b) IN ((3, 'y'), (2, 'z'))",

      // Many rows in one statement, then deletes of half of them, then more updates.
      "UPDATE many SET n = n + 1",
      "DELETE FROM many WHERE id % 2 = 0",
      "UPDATE many SET n = n + 1 WHERE id % 3 = 0",
      "INSERT INTO many SELECT g, -g, 'back' FROM generate_series(2, 40, 2) g",
      "UPDATE many SET pad = NULL WHERE id <= 20",
  };
  for (auto& statement : w) statement = fmt::format("SET search_path TO {}; {}", s, statement);
  return w;
}

}  // namespace

class ApplyAdversarial : public ClusterPairTest {
 protected:
  static void SetUpTestSuite() {
    ClusterPairTest::SetUpTestSuite();
    auto src = connect(source());
    src.exec("ALTER SYSTEM SET logical_decoding_work_mem = '64kB'");
    src.exec("SELECT pg_reload_conf()");
  }
  // A fresh database `db` on both clusters.
  static void create_database(const std::string& db) {
    for (auto* cluster : {&source(), &target()}) {
      auto conn = connect(*cluster);
      conn.exec(fmt::format("DROP DATABASE IF EXISTS {} WITH (FORCE)", db));
      conn.exec(fmt::format("CREATE DATABASE {}", db));
    }
  }
  static std::vector<std::string> common(const std::string& db) {
    return {"--source", source().conninfo(db), "--target", target().conninfo(db), "--name", db};
  }
  static CommandResult pgferry(const std::string& db, std::vector<std::string> args) {
    auto all = common(db);
    all.insert(all.end(), args.begin(), args.end());
    return run_pgferry(all);
  }
  // Runs each statement as its own source transaction.
  static void run_workload(const repl::Connection& src, const std::vector<std::string>& w) {
    for (const auto& statement : w) src.exec(statement);
  }
  static void expect_schema_equal(const repl::Connection& src, const repl::Connection& dst,
                                  std::string_view s) {
    for (const auto& table : kTables) {
      std::string name = fmt::format("{}.{}", s, table);
      EXPECT_EQ(table_fingerprint(src, name, "t::text"), table_fingerprint(dst, name, "t::text"))
          << name << "\nsource: " << dump(src, name) << "\ntarget: " << dump(dst, name);
    }
  }
  // The rows of a small table, for failure messages (long values cut).
  static std::string dump(const repl::Connection& conn, const std::string& table) {
    return conn
        .exec(fmt::format("SELECT coalesce(string_agg(left(t::text, 80), ' | ' ORDER BY "
                          "t::text), '') FROM (SELECT * FROM {} LIMIT 60) t",
                          table))
        .scalar();
  }
  static std::string current_lsn(const repl::Connection& src) {
    return query_value(src, "SELECT pg_current_wal_lsn()::text");
  }
  // init --no-data, workload in schema `s`, run --until with `run_args`, compare.
  void workload_round_trip(const std::string& db, std::vector<std::string> run_args) {
    create_database(db);
    auto src = connect(source(), db);
    auto dst = connect(target(), db);
    src.exec(schema_sql("w"));
    dst.exec(schema_sql("w"));
    auto init = pgferry(db, {"init", "--no-data"});
    ASSERT_EQ(init.exit_code, 0) << init.output;
    // A large transaction (streamed in progress at 64kB of decoding memory) that begins
    // before the workload and commits after it, touching rows the workload changed.
    auto big = connect(source(), db);
    big.exec("BEGIN");
    big.exec(
        "INSERT INTO w.many SELECT g, g, repeat('x', 100) FROM generate_series(10000, 14000) g");
    run_workload(src, workload("w"));
    big.exec("UPDATE w.kv SET a = a || ' +big' WHERE id BETWEEN 1 AND 60");
    big.exec("UPDATE w.many SET n = -n WHERE id BETWEEN 10000 AND 10100");
    big.exec("DELETE FROM w.kv WHERE id = 59");
    big.exec("COMMIT");
    src.exec(
        "SET search_path TO w; UPDATE kv SET n = 599 WHERE id = 58; INSERT INTO kv VALUES (59, "
        "'after big', '', 0)");
    std::string until = current_lsn(src);
    std::vector<std::string> args = {"run", "--until", until, "--json"};
    args.insert(args.end(), run_args.begin(), run_args.end());
    auto run = pgferry(db, args);
    ASSERT_EQ(run.exit_code, 0) << run.output;
    // How many target transactions the source transactions went into (informational).
    auto at = run.output.find("\"groups\"");
    std::cout << db << ": " << run.output.substr(at == std::string::npos ? 0 : at, 20) << "\n";
    expect_schema_equal(src, dst, "w");
    // Idempotent: nothing more to do, nothing changes.
    auto again = pgferry(db, {"run", "--until", until});
    EXPECT_EQ(again.exit_code, 0) << again.output;
    expect_schema_equal(src, dst, "w");
    pgferry(db, {"cleanup"});
  }
};

// The whole workload in as few target transactions as possible (one group while the backlog
// drains).
TEST_F(ApplyAdversarial, OrderedWorkloadInOneGroup) {
  workload_round_trip("adv_group", {"--group-max-delay-ms", "60000"});
}

// Every insert run goes as COPY, inside the same groups.
TEST_F(ApplyAdversarial, OrderedWorkloadWithCopyForEveryRun) {
  workload_round_trip("adv_copy", {"--group-max-delay-ms", "60000", "--copy-min-rows", "1"});
}

TEST_F(ApplyAdversarial, OrderedWorkloadWithSynchronousCommitOff) {
  workload_round_trip("adv_async", {"--synchronous-commit", "off"});
}

// The workload twice (two schemas) plus a backlog of small transactions, applied by a
// `pgferry run --until` that is SIGKILLed in the middle, then restarted to the end: equal,
// nothing doubled.
TEST_F(ApplyAdversarial, WorkloadTwiceThroughSigkill) {
  const std::string db = "adv_kill";
  create_database(db);
  auto src = connect(source(), db);
  auto dst = connect(target(), db);
  for (auto s : {"w1", "w2"}) {
    src.exec(schema_sql(s));
    dst.exec(schema_sql(s));
  }
  src.exec("CREATE TABLE filler (id int PRIMARY KEY, n int)");
  dst.exec("CREATE TABLE filler (id int PRIMARY KEY, n int)");
  auto init = pgferry(db, {"init", "--no-data"});
  ASSERT_EQ(init.exit_code, 0) << init.output;

  run_workload(src, workload("w1"));
  src.exec(R"sql(
    DO $$
    BEGIN
      FOR i IN 1..4000 LOOP
        INSERT INTO public.filler VALUES (i, 0);
        UPDATE public.filler SET n = n + 1 WHERE id = i / 2 + 1;
        COMMIT;
      END LOOP;
    END $$;
  )sql");
  run_workload(src, workload("w2"));
  std::string until = current_lsn(src);

  auto args = common(db);
  args.insert(args.end(), {"run", "--until", until, "--group-max-rows", "200"});
  std::string log = fmt::format("/tmp/pgferry-apply-adversarial-{}.log", ::getpid());
  std::remove(log.c_str());
  SCOPED_TRACE("log " + log);
  auto applied = [&] { return std::stoll(query_value(dst, "SELECT count(*) FROM public.filler")); };
  int killed = 0;
  for (int round = 0; round < 3; ++round) {
    long long before = applied();
    PgferryProcess run(args, log);
    wait_until([&] { return run.exited() || applied() > before; }, std::chrono::seconds(60));
    if (!run.exited()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20 * round));
      ::kill(run.pid(), SIGKILL);
      if (run.stop() == 128 + SIGKILL) ++killed;
    }
  }
  EXPECT_GE(killed, 1) << "pgferry run finished before any SIGKILL";
  auto finish = run_pgferry(args);
  ASSERT_EQ(finish.exit_code, 0) << finish.output;
  for (auto s : {"w1", "w2"}) expect_schema_equal(src, dst, s);
  EXPECT_EQ(table_fingerprint(src, "public.filler", "id"),
            table_fingerprint(dst, "public.filler", "id"));
  pgferry(db, {"cleanup"});
}

// Key-preserving updates of several rows of a table with a `box` column are coalesced into
// one UPDATE ... FROM unnest($n::box[]); box arrays separate their elements with ';', not ','.
TEST_F(ApplyAdversarial, CoalescedUpdatesOfATableWithABoxColumn) {
  const std::string db = "adv_box";
  create_database(db);
  auto src = connect(source(), db);
  auto dst = connect(target(), db);
  const char* schema = "CREATE TABLE shapes (id int PRIMARY KEY, bx box, note text)";
  src.exec(schema);
  dst.exec(schema);
  auto init = pgferry(db, {"init", "--no-data"});
  ASSERT_EQ(init.exit_code, 0) << init.output;
  src.exec("INSERT INTO shapes VALUES (1, '((0,0),(1,1))', 'one'), (2, '((2,2),(3,3))', 'two')");
  src.exec("UPDATE shapes SET note = note || '!'");
  src.exec("UPDATE shapes SET bx = '((5,5),(6,6))' WHERE id = 1");
  // Inserts while updates are batched join the batch: the same array form.
  src.exec("INSERT INTO shapes VALUES (3, '((7,7),(8,8))', 'three'), (4, NULL, 'four')");
  src.exec("UPDATE shapes SET note = 'last' WHERE id = 2");
  auto run = pgferry(db, {"run", "--until", current_lsn(src), "--group-max-delay-ms", "60000"});
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_EQ(table_fingerprint(src, "shapes", "id"), table_fingerprint(dst, "shapes", "id"))
      << "source: " << dump(src, "shapes") << "\ntarget: " << dump(dst, "shapes");
  pgferry(db, {"cleanup"});
}

// A primary key value stored out of line (TOAST): an update that does not touch the key
// sends the key as unchanged TOAST in the new tuple; the old key must be used.
TEST_F(ApplyAdversarial, UpdatesOfARowWhoseKeyIsToasted) {
  const std::string db = "adv_bigkey";
  create_database(db);
  auto src = connect(source(), db);
  auto dst = connect(target(), db);
  const char* schema = R"sql(
    CREATE TABLE bigkey (k text PRIMARY KEY, v int);
    ALTER TABLE bigkey ALTER COLUMN k SET STORAGE EXTERNAL;
  )sql";
  src.exec(schema);
  dst.exec(schema);
  auto init = pgferry(db, {"init", "--no-data"});
  ASSERT_EQ(init.exit_code, 0) << init.output;
  src.exec(
      "INSERT INTO bigkey SELECT (SELECT string_agg(md5(i::text || g), '') FROM "
      "generate_series(1, 70) i), g FROM generate_series(1, 3) g");
  src.exec("INSERT INTO bigkey VALUES ('short', 0)");
  src.exec("UPDATE bigkey SET v = v + 10");
  src.exec("UPDATE bigkey SET v = v + 10 WHERE v = 12");
  src.exec("DELETE FROM bigkey WHERE v = 13");
  auto run = pgferry(db, {"run", "--until", current_lsn(src), "--group-max-delay-ms", "60000"});
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_EQ(table_fingerprint(src, "bigkey", "k"), table_fingerprint(dst, "bigkey", "k"))
      << "source: " << dump(src, "bigkey") << "\ntarget: " << dump(dst, "bigkey");
  pgferry(db, {"cleanup"});
}

// Coalesced updates and batched inserts send every column as a text array cast to the
// column's type: values that need quoting in an array, and types with odd text forms.
TEST_F(ApplyAdversarial, CoalescedUpdatesAndBatchedInsertsOfManyTypes) {
  const std::string db = "adv_types";
  create_database(db);
  auto src = connect(source(), db);
  auto dst = connect(target(), db);
  const char* schema = R"sql(
    CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
    CREATE TYPE pair AS (x int, label text);
    CREATE DOMAIN positive AS int CHECK (VALUE > 0);
    CREATE DOMAIN intlist AS int[];
    CREATE TABLE typed (
      id int PRIMARY KEY, t text, c char(5), qc "char", vc varchar(10), by bytea, j json,
      jb jsonb, n numeric, f float8, r real, ts timestamptz, tsn timestamp, iv interval,
      d date, tm time, tmz timetz, pt point, ls lseg, pa path, pg polygon, ci circle,
      ip inet, cid cidr, mac macaddr, bv bit varying(8), tv tsvector, tq tsquery, mo money,
      x xml, m mood, pos positive, il intlist, rg int4range, trg tstzrange,
      mr int4multirange, u uuid, b boolean);
  )sql";
  src.exec(schema);
  dst.exec(schema);
  auto init = pgferry(db, {"init", "--no-data"});
  ASSERT_EQ(init.exit_code, 0) << init.output;
  const char* row = R"sql(
    INSERT INTO typed SELECT g,
      (ARRAY[E'q"uote', E'back\\slash', '{brace}', 'com,ma', '  spaced  ', 'NULL', '',
             E'tab\there', E'new\nline', 'ünï 🐢'])[g % 10 + 1],
      'ab', 'z', 'v,"x', decode('00ff5c22' || lpad(to_hex(g), 2, '0'), 'hex'),
      '{"a": [1, "x,y"], "b": "q\"z"}', jsonb_build_object('k', g, 's', E'a\\b"c'),
      CASE WHEN g % 3 = 0 THEN 'NaN' ELSE g / 7.0 END,
      CASE g % 4 WHEN 0 THEN '-0' WHEN 1 THEN 'Infinity' ELSE g / 3.0 END, g / 9.0,
      '2024-02-29 12:34:56.789+05:30', '2024-02-29 12:34:56.789', '1 year 2 mons -3 days 04:05:06',
      '2000-02-29', '23:59:59.999', '10:00+03', point(g, -g), '[(0,0),(1,2)]', '((0,0),(1,1),(2,0))',
      '((0,0),(2,2),(2,0))', '<(1,1),5>', '192.168.0.1/24', '10.0.0.0/8', '08:00:2b:01:02:03',
      B'1011', to_tsvector('simple', 'quick, brown fox''s'), 'fox & !dog', 1234.56,
      '<a b="c,d">x &amp; y</a>', (ARRAY['sad','ok','happy'])[g % 3 + 1]::mood,
      g, ARRAY[g, NULL, -g], int4range(g, g + 10),
      tstzrange('2024-01-01', NULL), '{[1,3), [5,9)}', md5(g::text)::uuid, g % 2 = 0
    FROM generate_series(%s) g
  )sql";
  auto insert = [&](std::string_view range) {
    std::string sql = row;
    sql.replace(sql.find("%s"), 2, range);
    src.exec(sql);
  };
  insert("1, 10");
  src.exec("UPDATE typed SET b = NOT b");  // coalesced
  insert("11, 20");                        // joins the batch
  src.exec("UPDATE typed SET t = t || '!', pos = pos + 100 WHERE id % 2 = 0");
  src.exec("UPDATE typed SET n = NULL, j = NULL WHERE id % 5 = 0");
  auto run = pgferry(db, {"run", "--until", current_lsn(src), "--group-max-delay-ms", "60000"});
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_EQ(table_fingerprint(src, "typed", "id"), table_fingerprint(dst, "typed", "id"))
      << "source: " << dump(src, "typed") << "\ntarget: " << dump(dst, "typed");
  pgferry(db, {"cleanup"});
}

// A composite-typed column: `SELECT * FROM unnest(..., $n::pair[], ...)` expands the
// composite into its fields, so the batched statements see more (and shifted) columns.
class ApplyAdversarialComposite : public ApplyAdversarial,
                                  public ::testing::WithParamInterface<bool> {};

TEST_P(ApplyAdversarialComposite, CoalescedChangesOfATableWithACompositeColumn) {
  const bool with_inserts = GetParam();
  const std::string db = with_inserts ? "adv_comp_ins" : "adv_comp_upd";
  create_database(db);
  auto src = connect(source(), db);
  auto dst = connect(target(), db);
  const char* schema = R"sql(
    CREATE TYPE pair AS (x int, label text);
    CREATE TABLE pairs (id int PRIMARY KEY, p pair, note text);
  )sql";
  src.exec(schema);
  dst.exec(schema);
  auto init = pgferry(db, {"init", "--no-data"});
  ASSERT_EQ(init.exit_code, 0) << init.output;
  src.exec("INSERT INTO pairs VALUES (1, ROW(1, 'one'), 'a'), (2, ROW(2, E'tw,\"o'), 'b')");
  src.exec("UPDATE pairs SET note = note || '!'");  // coalesced: one UPDATE ... FROM unnest
  // While updates are coalesced, inserts join the batch: INSERT ... SELECT * FROM unnest.
  if (with_inserts) src.exec("INSERT INTO pairs VALUES (3, ROW(3, 'three'), 'c')");
  src.exec("UPDATE pairs SET p = ROW(20, 'twenty') WHERE id = 2");
  auto run = pgferry(db, {"run", "--until", current_lsn(src), "--group-max-delay-ms", "60000"});
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_EQ(table_fingerprint(src, "pairs", "id"), table_fingerprint(dst, "pairs", "id"))
      << "source: " << dump(src, "pairs") << "\ntarget: " << dump(dst, "pairs");
  pgferry(db, {"cleanup"});
}

INSTANTIATE_TEST_SUITE_P(UpdatesOnlyOrWithInserts, ApplyAdversarialComposite, ::testing::Bool());

// The source database has its own output settings (a European DateStyle, fewer float digits):
// the walsender formats values with them, the target session parses them with its own.
TEST_F(ApplyAdversarial, SourceDatabaseWithOtherDateStyleAndFloatDigits) {
  const std::string db = "adv_style";
  create_database(db);
  {
    auto admin = connect(source());
    admin.exec(fmt::format("ALTER DATABASE {} SET DateStyle = 'SQL, DMY'", db));
    admin.exec(fmt::format("ALTER DATABASE {} SET extra_float_digits = 0", db));
    admin.exec(fmt::format("ALTER DATABASE {} SET IntervalStyle = 'sql_standard'", db));
  }
  auto src = connect(source(), db);
  auto dst = connect(target(), db);
  const char* schema =
      "CREATE TABLE dated (id int PRIMARY KEY, d date, ts timestamp, f float8, iv interval)";
  src.exec(schema);
  dst.exec(schema);
  auto init = pgferry(db, {"init", "--no-data"});
  ASSERT_EQ(init.exit_code, 0) << init.output;
  src.exec(
      "INSERT INTO dated VALUES (1, '2024-02-01', '2024-02-01 10:00:00', 0.1::float8 + 0.2, "
      "'-1 days -02:03:04'), (2, '2024-03-04', '2024-03-04 00:00:01.5', pi(), '1 day')");
  src.exec("UPDATE dated SET d = d + 1 WHERE id = 1");
  auto run = pgferry(db, {"run", "--until", current_lsn(src), "--group-max-delay-ms", "60000"});
  EXPECT_EQ(run.exit_code, 0) << run.output;
  // Compared in one format: the source session's DateStyle must not matter.
  auto canonical = [](const repl::Connection& conn) {
    return conn
        .exec(
            "SELECT string_agg(id || ' ' || to_char(d, 'YYYY-MM-DD') || ' ' || to_char(ts, "
            "'YYYY-MM-DD HH24:MI:SS.US') || ' ' || float8send(f)::text || ' ' || extract(epoch "
            "FROM "
            "iv), ' | ' ORDER BY id) "
            "FROM dated")
        .scalar();
  };
  EXPECT_EQ(canonical(src), canonical(dst));
  pgferry(db, {"cleanup"});
}
