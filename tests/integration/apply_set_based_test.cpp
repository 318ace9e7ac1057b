// Set-based apply end to end: updates that leave a TOASTed column unchanged, a key updated
// with different column sets, and deletes, coalesced inside one target transaction next to
// inserts and key changes of the same keys. Each scenario is a backlog of small source
// transactions applied by `pgferry run --until` in one group; every table is then compared
// source vs target, and a second run must change nothing; a row gone from the target is
// named by its key.
#include <fmt/format.h>

#include <string>
#include <utility>
#include <vector>

#include "support/harness.hpp"

namespace repl = pgferry::replication;
using namespace pgferry::testing;

namespace {

// A >2 kB text that does not compress, stored out of line: md5 hex of 100 seeds.
std::string big(std::string_view seed) {
  return fmt::format("(SELECT string_agg(md5(i::text || '{}'), '') FROM generate_series(1, 100) i)",
                     seed);
}

struct Scenario {
  std::string schema;                                       // run on both sides
  std::vector<std::pair<std::string, std::string>> tables;  // (table, ORDER BY) to compare
  std::vector<std::string> setup;                           // source transactions before init
  std::vector<std::string> backlog;                         // one source transaction each
  std::vector<std::string> target_writes;  // on the target, after the setup is applied
  std::string fails_naming;  // not empty: the backlog's run must fail, its output naming this
};

// kv (id, a, n) with rows 1..`rows`.
Scenario kv_scenario(int rows) {
  Scenario s;
  s.schema = "CREATE TABLE kv (id int PRIMARY KEY, a text, n int)";
  s.tables = {{"kv", "id"}};
  s.setup = {
      fmt::format("INSERT INTO kv SELECT g, 'a' || g, g FROM generate_series(1, {}) g", rows)};
  return s;
}

}  // namespace

class ApplySetBased : public ClusterPairTest {
 protected:
  // Runs `scenario` in a fresh database `db` on both clusters and compares every table.
  void round_trip(const std::string& db, const Scenario& scenario) {
    for (auto* cluster : {&source(), &target()}) {
      auto conn = connect(*cluster);
      conn.exec(fmt::format("DROP DATABASE IF EXISTS {} WITH (FORCE)", db));
      conn.exec(fmt::format("CREATE DATABASE {}", db));
    }
    auto src = connect(source(), db);
    auto dst = connect(target(), db);
    src.exec(scenario.schema);
    dst.exec(scenario.schema);
    std::vector<std::string> common = {
        "--source", source().conninfo(db), "--target", target().conninfo(db), "--name", db};
    auto pgferry = [&](std::vector<std::string> args) {
      args.insert(args.begin(), common.begin(), common.end());
      return run_pgferry(args);
    };
    // The set-up rows reach the target through the stream too (init copies no data).
    auto init = pgferry({"init", "--no-data"});
    ASSERT_EQ(init.exit_code, 0) << init.output;
    for (const auto& statement : scenario.setup) src.exec(statement);
    std::string setup_end = query_value(src, "SELECT pg_current_wal_lsn()::text");
    auto first = pgferry({"run", "--until", setup_end});
    ASSERT_EQ(first.exit_code, 0) << first.output;
    for (const auto& statement : scenario.target_writes) dst.exec(statement);
    for (const auto& statement : scenario.backlog) src.exec(statement);
    std::string until = query_value(src, "SELECT pg_current_wal_lsn()::text");
    // The whole backlog in one target transaction.
    auto run = pgferry({"run", "--until", until, "--group-max-delay-ms", "60000", "--json"});
    if (!scenario.fails_naming.empty()) {
      EXPECT_NE(run.exit_code, 0) << run.output;
      EXPECT_NE(run.output.find(scenario.fails_naming), std::string::npos) << run.output;
      pgferry({"cleanup"});
      return;
    }
    ASSERT_EQ(run.exit_code, 0) << run.output;
    expect_equal(src, dst, scenario);
    auto again = pgferry({"run", "--until", until});
    EXPECT_EQ(again.exit_code, 0) << again.output;
    expect_equal(src, dst, scenario);
    pgferry({"cleanup"});
  }

  static void expect_equal(const repl::Connection& src, const repl::Connection& dst,
                           const Scenario& scenario) {
    for (const auto& [table, order_by] : scenario.tables) {
      EXPECT_EQ(table_fingerprint(src, table, order_by), table_fingerprint(dst, table, order_by))
          << table << "\nsource: " << dump(src, table) << "\ntarget: " << dump(dst, table);
    }
  }
  // The rows of a small table, for failure messages (long values cut).
  static std::string dump(const repl::Connection& conn, const std::string& table) {
    return query_value(conn, fmt::format("SELECT coalesce(string_agg(left(t::text, 60), ' | ' "
                                         "ORDER BY t::text), '') FROM (SELECT * FROM {} LIMIT "
                                         "60) t",
                                         table));
  }
};

// `UPDATE t SET small = small + 1` on rows whose big column is stored out of line sends it as
// unchanged TOAST: coalesced per key, the target keeps the big value; some rows change the
// big value in between, which the later unchanged updates must keep.
TEST_F(ApplySetBased, UpdatesWithUnchangedToastAreCoalescedAndCorrect) {
  Scenario s;
  s.schema =
      "CREATE TABLE docs (id int PRIMARY KEY, small int, note text, big text);"
      "ALTER TABLE docs ALTER COLUMN big SET STORAGE EXTERNAL";
  s.tables = {{"docs", "id"}};
  s.setup = {fmt::format("INSERT INTO docs SELECT g, 0, 'n' || g, {} FROM generate_series(1, 60) g",
                         big("base"))};
  for (int i = 0; i < 5; ++i) {
    s.backlog.push_back("UPDATE docs SET small = small + 1");
    s.backlog.push_back(fmt::format("UPDATE docs SET small = small + 1 WHERE id % 5 = {}", i));
  }
  s.backlog.push_back(fmt::format("UPDATE docs SET big = {} WHERE id % 7 = 0", big("new")));
  s.backlog.push_back("UPDATE docs SET small = small * 2, note = NULL WHERE id % 2 = 0");
  s.backlog.push_back("UPDATE docs SET big = 'short' WHERE id = 3");
  s.backlog.push_back("UPDATE docs SET small = -1 WHERE id <= 10");
  round_trip("setb_toast", s);
}

// One key updated in several transactions of the group, each carrying another set of
// columns (unchanged TOAST, NULLs, values): it ends with the union, the newest value winning.
TEST_F(ApplySetBased, KeyUpdatedTwiceWithDifferentColumnSets) {
  Scenario s;
  s.schema =
      "CREATE TABLE kv (id int PRIMARY KEY, a text, b text, big text);"
      "ALTER TABLE kv ALTER COLUMN big SET STORAGE EXTERNAL";
  s.tables = {{"kv", "id"}};
  s.setup = {
      fmt::format("INSERT INTO kv SELECT g, 'a' || g, 'b' || g, {} FROM "
                  "generate_series(1, 10) g",
                  big("kv"))};
  s.backlog = {
      // Key 1: unchanged TOAST, then a new big value, then unchanged again.
      "UPDATE kv SET a = 'a1 first' WHERE id = 1",
      fmt::format("UPDATE kv SET big = {}, b = NULL WHERE id = 1", big("one")),
      "UPDATE kv SET a = 'a1 last' WHERE id = 1",
      // Key 2: a value to NULL and back, big unchanged throughout.
      "UPDATE kv SET a = NULL WHERE id = 2",
      "UPDATE kv SET b = 'b2 new' WHERE id = 2",
      "UPDATE kv SET a = 'a2 back' WHERE id = 2",
      // Key 3: the big value to a short inline one, then other columns only.
      "UPDATE kv SET big = 'inline' WHERE id = 3",
      "UPDATE kv SET a = 'a3' WHERE id = 3",
      // Every key once more, then two in one transaction with different sets.
      "UPDATE kv SET b = b || '+'",
      "BEGIN; UPDATE kv SET a = 'x' WHERE id = 4; UPDATE kv SET big = 'y', a = a || 'z' WHERE "
      "id = 4; COMMIT",
  };
  round_trip("setb_union", s);
}

// Delete a key, insert it again (other values), update it; a delete and re-insert in one
// transaction; a key updated then deleted then re-inserted.
TEST_F(ApplySetBased, DeleteThenReinsertOfAKeyInOneGroup) {
  Scenario s = kv_scenario(40);
  s.backlog = {
      "DELETE FROM kv WHERE id = 1",
      "INSERT INTO kv VALUES (1, 'again', 100)",
      "UPDATE kv SET n = 101 WHERE id = 1",
      "BEGIN; DELETE FROM kv WHERE id = 2; INSERT INTO kv VALUES (2, 'same txn', 200); COMMIT",
      "UPDATE kv SET a = 'updated' WHERE id = 3",
      "DELETE FROM kv WHERE id = 3",
      "INSERT INTO kv VALUES (3, 'third life', 300)",
      "DELETE FROM kv WHERE id BETWEEN 10 AND 30",
      "INSERT INTO kv SELECT g, 'back', -g FROM generate_series(10, 20) g",
      "UPDATE kv SET n = n + 1 WHERE id BETWEEN 15 AND 35",
      "DELETE FROM kv WHERE id = 15",
  };
  round_trip("setb_reinsert", s);
}

// Rows inserted and deleted again inside the group: the delete must go after the insert.
TEST_F(ApplySetBased, InsertThenDeleteInOneGroup) {
  Scenario s = kv_scenario(10);
  s.backlog = {
      "UPDATE kv SET n = 0 WHERE id = 1",  // changes batched before the inserts
      "INSERT INTO kv VALUES (100, 'short-lived', 1)",
      "DELETE FROM kv WHERE id = 100",
      "BEGIN; INSERT INTO kv VALUES (101, 'one txn', 1); DELETE FROM kv WHERE id = 101; COMMIT",
      "INSERT INTO kv VALUES (102, 'updated then gone', 1)",
      "UPDATE kv SET a = 'x' WHERE id = 102",
      "DELETE FROM kv WHERE id = 102",
      "INSERT INTO kv VALUES (102, 'back again', 2)",
      "DELETE FROM kv WHERE id = 2",
      "INSERT INTO kv SELECT g, 'run', g FROM generate_series(200, 260) g",
      "DELETE FROM kv WHERE id BETWEEN 230 AND 240",
      "UPDATE kv SET n = -n WHERE id > 240",
  };
  round_trip("setb_insdel", s);
}

// A key change that moves a row onto a key deleted just before (in the batch), and a swap
// of keys through a deleted one.
TEST_F(ApplySetBased, KeyChangeOntoAJustDeletedKey) {
  Scenario s = kv_scenario(20);
  s.backlog = {
      "UPDATE kv SET n = 50 WHERE id = 5",
      "DELETE FROM kv WHERE id = 6",
      "UPDATE kv SET id = 6 WHERE id = 5",
      "UPDATE kv SET a = 'moved' WHERE id = 6",
      "DELETE FROM kv WHERE id = 7",
      "BEGIN; DELETE FROM kv WHERE id = 8; UPDATE kv SET id = 8 WHERE id = 9; COMMIT",
      "INSERT INTO kv VALUES (9, 'new nine', 9)",
      "DELETE FROM kv WHERE id = 10",
      "UPDATE kv SET id = 10, a = 'ten' WHERE id = 11",
      "DELETE FROM kv WHERE id = 10",
  };
  round_trip("setb_keymove", s);
}

// Deletes of REPLICA IDENTITY FULL tables: with a primary key (set-based by it, big column
// unchanged or not) and without one (duplicate rows: one row each).
TEST_F(ApplySetBased, DeletesOnReplicaIdentityFullTables) {
  Scenario s;
  s.schema =
      "CREATE TABLE fullpk (id int PRIMARY KEY, v text, big text);"
      "ALTER TABLE fullpk REPLICA IDENTITY FULL;"
      "ALTER TABLE fullpk ALTER COLUMN big SET STORAGE EXTERNAL;"
      "CREATE TABLE fullrow (a int, b text);"
      "ALTER TABLE fullrow REPLICA IDENTITY FULL";
  s.tables = {{"fullpk", "id"}, {"fullrow", "a, b"}};
  s.setup = {
      fmt::format("INSERT INTO fullpk SELECT g, 'v' || g, {} FROM generate_series(1, 30) g",
                  big("full")),
      "INSERT INTO fullrow SELECT g % 5, 'x' FROM generate_series(1, 20) g",
  };
  s.backlog = {
      "DELETE FROM fullpk WHERE id <= 5",
      "UPDATE fullpk SET v = 'kept' WHERE id = 6",
      "DELETE FROM fullpk WHERE id = 7",
      "INSERT INTO fullpk VALUES (7, 'again', 'small')",
      "DELETE FROM fullpk WHERE id = 7",
      "DELETE FROM fullpk WHERE id % 3 = 0",
      "DELETE FROM fullrow WHERE ctid = (SELECT min(ctid) FROM fullrow WHERE a = 1)",
      "DELETE FROM fullrow WHERE a = 2",
      "INSERT INTO fullrow VALUES (2, 'x'), (2, 'x')",
      "DELETE FROM fullrow WHERE ctid = (SELECT max(ctid) FROM fullrow WHERE a = 2)",
  };
  round_trip("setb_full", s);
}

// Deletes of tables whose key is not the first column, and is composite.
TEST_F(ApplySetBased, DeletesByACompositeKeyThatIsNotTheFirstColumn) {
  Scenario s;
  s.schema =
      "CREATE TABLE comp (v text, n int, b text, a int, PRIMARY KEY (b, a));"
      "CREATE TABLE late (v text, id bigint PRIMARY KEY)";
  s.tables = {{"comp", "b, a"}, {"late", "id"}};
  s.setup = {
      "INSERT INTO comp SELECT 'v' || g, g, 'k' || (g % 4), g FROM generate_series(1, 40) g",
      "INSERT INTO late SELECT 'v' || g, g FROM generate_series(1, 40) g",
  };
  s.backlog = {
      "DELETE FROM comp WHERE a % 3 = 0",
      "UPDATE comp SET n = -n WHERE a % 3 = 1",
      "DELETE FROM comp WHERE a = 1 AND b = 'k1'",
      "INSERT INTO comp VALUES ('back', 1, 'k1', 1)",
      "UPDATE comp SET b = 'k9' WHERE a = 2",
      "DELETE FROM comp WHERE b = 'k9'",
      "DELETE FROM late WHERE id > 30",
      "INSERT INTO late VALUES ('again', 35)",
      "UPDATE late SET v = 'x' WHERE id < 5",
      "DELETE FROM late WHERE id = 4",
  };
  round_trip("setb_comp", s);
}

// Under the replica role foreign keys are neither checked nor acted on, so tables with them
// are batched too: parents and children deleted, re-inserted and re-pointed in one group (the
// source sends the cascaded deletes itself).
TEST_F(ApplySetBased, TablesWithForeignKeysUnderTheReplicaRole) {
  Scenario s;
  s.schema =
      "CREATE TABLE parent (id int PRIMARY KEY, name text);"
      "CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent ON DELETE "
      "CASCADE, note text)";
  s.tables = {{"parent", "id"}, {"child", "id"}};
  s.setup = {
      "INSERT INTO parent SELECT g, 'p' || g FROM generate_series(1, 10) g",
      "INSERT INTO child SELECT g, g % 10 + 1, 'c' || g FROM generate_series(1, 50) g",
  };
  s.backlog = {
      "DELETE FROM parent WHERE id = 1",
      "INSERT INTO parent VALUES (1, 'p1 again')",
      "INSERT INTO child VALUES (100, 1, 'new child of 1')",
      "UPDATE child SET parent_id = 1 WHERE id BETWEEN 2 AND 5",
      "DELETE FROM child WHERE id % 7 = 0",
      "UPDATE parent SET name = name || '!'",
      "BEGIN; INSERT INTO parent VALUES (11, 'p11'); UPDATE child SET parent_id = 11, note = "
      "NULL WHERE parent_id = 2; DELETE FROM parent WHERE id = 2; COMMIT",
  };
  round_trip("setb_fk", s);
}

// A row the source changes is gone from the target (a write there): the batch affects one
// row less than it carries, and the error names the missing key (composite, each part longer
// than a short string) and its source transaction, for a batched update and a batched delete.
namespace {
Scenario missing_row_scenario(std::string backlog) {
  Scenario s;
  s.schema = "CREATE TABLE longkeys (region text, k text, n int, PRIMARY KEY (region, k))";
  s.tables = {{"longkeys", "region, k"}};
  s.setup = {
      "INSERT INTO longkeys SELECT 'region-number-one', 'a-rather-long-key-' || g, g FROM "
      "generate_series(1, 20) g"};
  s.target_writes = {
      "DELETE FROM longkeys WHERE region = 'region-number-one' AND k = 'a-rather-long-key-7'"};
  s.backlog = {"UPDATE longkeys SET n = 0 WHERE k = 'a-rather-long-key-1'", std::move(backlog)};
  s.fails_naming =
      R"(key ("region", "k")=(region-number-one,a-rather-long-key-7) of source transaction )"
      "commit_lsn=";
  return s;
}
}  // namespace

TEST_F(ApplySetBased, BatchedUpdateOfARowGoneFromTheTargetNamesItsKey) {
  round_trip("setb_gone_update", missing_row_scenario("UPDATE longkeys SET n = n + 1"));
}

TEST_F(ApplySetBased, BatchedDeleteOfARowGoneFromTheTargetNamesItsKey) {
  round_trip("setb_gone_delete", missing_row_scenario("DELETE FROM longkeys WHERE n > 3"));
}
