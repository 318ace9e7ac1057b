// The parallel initial copy against real servers: the target must equal the exported
// snapshot's state while the source keeps changing; a large table is split into block
// ranges; an interrupted copy (stopped, or a worker's connection killed) resumes without
// re-copying what finished, and a copy resumed under a new snapshot restarts only the
// tables it had not finished.
#include <fmt/format.h>

#include <atomic>
#include <map>
#include <thread>

#include "pgferry/replication/copy/initial_copy.hpp"
#include "pgferry/replication/core/table_scope.hpp"
#include "support/harness.hpp"

namespace repl = pgferry::replication;
using namespace pgferry::testing;

namespace {

// Tables of one scenario, all in schema `schema` on both sides. `big` is large enough to
// be split at a 1 MB threshold; `widened` has an int column that is bigint on the target
// (text-format path); `parts` is partitioned (its leaves are copied).
std::string schema_sql(const std::string& schema, bool target) {
  return fmt::format(
      "CREATE SCHEMA {0};"
      "CREATE TABLE {0}.big (id bigint PRIMARY KEY, v text NOT NULL, n int);"
      "CREATE TABLE {0}.small (id int PRIMARY KEY, label text, payload bytea, at timestamptz);"
      "CREATE TABLE {0}.widened (id int PRIMARY KEY, amount {1});"
      "CREATE TABLE {0}.parts (id int, region text, PRIMARY KEY (id, region)) "
      "  PARTITION BY LIST (region);"
      "CREATE TABLE {0}.parts_eu PARTITION OF {0}.parts FOR VALUES IN ('eu');"
      "CREATE TABLE {0}.parts_us PARTITION OF {0}.parts FOR VALUES IN ('us');",
      schema, target ? "bigint" : "integer");
}

std::string data_sql(const std::string& schema) {
  return fmt::format(
      "INSERT INTO {0}.big SELECT g, repeat(md5(g::text), 3), g % 97 "
      "  FROM generate_series(1, 60000) g;"
      "INSERT INTO {0}.small SELECT g, 'label ' || g, decode(md5(g::text), 'hex'), "
      "  '2024-01-01'::timestamptz + g * interval '1 minute' FROM generate_series(1, 500) g;"
      "INSERT INTO {0}.small VALUES (0, NULL, NULL, NULL);"
      "INSERT INTO {0}.widened SELECT g, g * 1000 FROM generate_series(1, 1000) g;"
      "INSERT INTO {0}.parts SELECT g, CASE WHEN g % 3 = 0 THEN 'us' ELSE 'eu' END "
      "  FROM generate_series(1, 3000) g;"
      "ANALYZE {0}.big;",
      schema);
}

const std::map<std::string, std::string> kOrderBy = {
    {"big", "id"}, {"small", "id"}, {"widened", "id"}, {"parts_eu", "id"}, {"parts_us", "id"}};

class Copy : public ClusterPairTest {
 protected:
  void SetUp() override {
    schema_ = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    for (auto& c : schema_) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    schema_ = "c_" + schema_;
    connect(source()).exec(schema_sql(schema_, false) + data_sql(schema_));
    connect(target()).exec(schema_sql(schema_, true));
    tables_ =
        repl::list_tables(connect(source()), repl::TableScope::from_patterns({schema_ + ".*"}, {}));
  }

  // Holds a REPEATABLE READ transaction that exported its snapshot.
  struct HeldSnapshot {
    repl::Connection conn;
    std::string name;
  };
  HeldSnapshot hold_snapshot() {
    HeldSnapshot held{connect(source()), ""};
    held.conn.exec("BEGIN ISOLATION LEVEL REPEATABLE READ");
    held.name = query_value(held.conn, "SELECT pg_export_snapshot()");
    return held;
  }

  std::map<std::string, std::string> fingerprints(const repl::Connection& conn) {
    std::map<std::string, std::string> out;
    for (const auto& [table, order] : kOrderBy) {
      out[table] = table_fingerprint(conn, schema_ + "." + table, order);
    }
    return out;
  }

  // Writes to every table of the scenario until stopped: inserts, updates (which move
  // rows to new blocks) and deletes.
  std::thread start_writer(std::atomic<bool>& stop, std::atomic<long>& writes) {
    return std::thread([this, &stop, &writes] {
      auto conn = connect(source());
      long i = 0;
      while (!stop.load()) {
        ++i;
        conn.exec(fmt::format(
            "BEGIN;"
            "INSERT INTO {0}.big VALUES ({1}, 'new', 1);"
            "UPDATE {0}.big SET v = v || 'x', n = n + 1 WHERE id = {2};"
            "DELETE FROM {0}.big WHERE id = {3};"
            "UPDATE {0}.small SET label = 'changed' WHERE id = {4};"
            "UPDATE {0}.widened SET amount = amount + 1 WHERE id = {4};"
            "INSERT INTO {0}.parts VALUES ({1}, 'us');"
            "COMMIT",
            schema_, 1000000 + i, (i * 7919) % 60000 + 1, (i * 104729) % 60000 + 1, i % 500 + 1));
        writes.store(i);
      }
    });
  }

  repl::CopyOptions options(const std::string& name) {
    repl::CopyOptions o;
    o.name = name;
    o.jobs = 3;
    o.split_bytes = 1 << 20;
    return o;
  }

  std::string schema_;
  std::vector<repl::TableInfo> tables_;
};

const repl::TableCopyResult* result_for(const repl::CopyReport& report, const std::string& t) {
  for (const auto& r : report.tables) {
    if (r.table == t) return &r;
  }
  return nullptr;
}

}  // namespace

TEST_F(Copy, ParallelCopyEqualsSnapshotDespiteConcurrentWrites) {
  auto held = hold_snapshot();
  auto at_snapshot = fingerprints(held.conn);

  std::atomic<bool> stop{false};
  std::atomic<long> writes{0};
  auto writer = start_writer(stop, writes);
  ASSERT_TRUE(wait_until([&] { return writes.load() >= 20; }));

  std::atomic<int> callbacks{0};
  auto opts = options("par");
  opts.progress = [&](const repl::CopyProgress& p) {
    ++callbacks;
    EXPECT_LE(p.ranges_done, p.ranges_total);
    EXPECT_LE(p.table_ranges_done, p.table_ranges_total);
  };
  auto report =
      repl::copy_tables(source().conninfo(), target().conninfo(), held.name, tables_, opts);
  // Keep writing a little after the copy, then stop.
  long after = writes.load();
  ASSERT_TRUE(wait_until([&] { return writes.load() > after + 5; }));
  stop = true;
  writer.join();

  EXPECT_TRUE(report.complete);
  EXPECT_EQ(report.ranges_skipped, 0);
  EXPECT_EQ(callbacks.load(), report.ranges_copied);
  auto* big = result_for(report, schema_ + ".big");
  ASSERT_NE(big, nullptr);
  EXPECT_GT(big->ranges, 2) << "the big table was not split";
  EXPECT_TRUE(big->binary);
  auto* widened = result_for(report, schema_ + ".widened");
  ASSERT_NE(widened, nullptr);
  EXPECT_FALSE(widened->binary) << "int -> bigint must use text format";
  EXPECT_EQ(result_for(report, schema_ + ".parts"), nullptr) << "parents carry no rows";
  ASSERT_NE(result_for(report, schema_ + ".parts_eu"), nullptr);

  auto target_conn = connect(target());
  EXPECT_EQ(fingerprints(target_conn), at_snapshot);
  // The source did move on, so equality with the snapshot is not a coincidence.
  auto now = fingerprints(connect(source()));
  EXPECT_NE(now["big"], at_snapshot["big"]);
  EXPECT_NE(now["parts_us"], at_snapshot["parts_us"]);
  EXPECT_EQ(report.rows,
            std::stol(query_value(target_conn, fmt::format("SELECT (SELECT count(*) FROM {0}.big)"
                                                           " + (SELECT count(*) FROM {0}.small)"
                                                           " + (SELECT count(*) FROM {0}.widened)"
                                                           " + (SELECT count(*) FROM {0}.parts)",
                                                           schema_))));

  // A second run with everything finished copies nothing.
  auto again = repl::copy_tables(source().conninfo(), target().conninfo(), held.name, tables_,
                                 options("par"));
  EXPECT_TRUE(again.complete);
  EXPECT_EQ(again.ranges_copied, 0);
  EXPECT_EQ(again.ranges_skipped, report.ranges_copied);
  for (const auto& t : again.tables) EXPECT_EQ(t.status, repl::TableCopyStatus::skipped);
}

TEST_F(Copy, StoppedCopyResumesWithoutRecopying) {
  auto held = hold_snapshot();
  auto at_snapshot = fingerprints(held.conn);
  std::atomic<bool> stop{false};
  std::atomic<long> writes{0};
  auto writer = start_writer(stop, writes);

  std::stop_source stopper;
  auto opts = options("stopped");
  opts.jobs = 2;
  opts.stop = stopper.get_token();
  opts.progress = [&](const repl::CopyProgress& p) {
    if (p.ranges_done >= 3) stopper.request_stop();
  };
  auto first =
      repl::copy_tables(source().conninfo(), target().conninfo(), held.name, tables_, opts);
  EXPECT_FALSE(first.complete);
  EXPECT_GE(first.ranges_copied, 3);

  auto target_conn = connect(target());
  auto finished_sql =
      "SELECT string_agg(table_name || ':' || range_start || ':' || finished_at, ',' ORDER BY "
      "table_name, range_start) FROM pgferry.copy_progress WHERE name = 'stopped' AND "
      "finished_at IS NOT NULL";
  std::string finished_before = query_value(target_conn, finished_sql);
  int total = std::stoi(query_value(
      target_conn, "SELECT count(*) FROM pgferry.copy_progress WHERE name = 'stopped'"));
  ASSERT_LT(first.ranges_copied, total) << "the copy was not stopped midway";

  auto second = repl::copy_tables(source().conninfo(), target().conninfo(), held.name, tables_,
                                  options("stopped"));
  stop = true;
  writer.join();
  EXPECT_TRUE(second.complete);
  EXPECT_EQ(second.ranges_skipped, first.ranges_copied);
  EXPECT_EQ(second.ranges_copied, total - first.ranges_copied);
  EXPECT_EQ(fingerprints(target_conn), at_snapshot);
  // The ranges finished by the first run were not written again: same finish times.
  std::string finished_after = query_value(target_conn, finished_sql);
  for (std::size_t start = 0, end; start < finished_before.size(); start = end + 1) {
    end = finished_before.find(',', start);
    if (end == std::string::npos) end = finished_before.size();
    std::string entry = finished_before.substr(start, end - start);
    EXPECT_NE(finished_after.find(entry), std::string::npos) << entry << " was re-copied";
  }
}

TEST_F(Copy, KilledWorkerConnectionFailsThenResumes) {
  auto held = hold_snapshot();
  auto at_snapshot = fingerprints(held.conn);

  auto killer = connect(target());
  std::atomic<int> killed{0};
  auto opts = options("killed");
  opts.progress = [&](const repl::CopyProgress& p) {
    if (killed.load() > 0 || p.ranges_done < 2) return;
    // Terminate another worker's target session while it is inside a COPY.
    auto n = query_value(killer,
                         "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                         "WHERE application_name = 'pgferry-copy' AND pid <> pg_backend_pid() "
                         "AND state = 'active' AND query LIKE 'COPY%'");
    killed += std::stoi(n);
  };
  bool threw = false;
  try {
    repl::copy_tables(source().conninfo(), target().conninfo(), held.name, tables_, opts);
  } catch (const repl::PgError& e) {
    threw = true;
    EXPECT_EQ(e.side(), repl::Side::target) << e.what();
  }
  ASSERT_GT(killed.load(), 0) << "no worker was caught inside a COPY";
  EXPECT_TRUE(threw);

  auto target_conn = connect(target());
  int finished = std::stoi(query_value(
      target_conn,
      "SELECT count(*) FROM pgferry.copy_progress WHERE name = 'killed' AND finished_at IS "
      "NOT NULL"));
  auto resumed = repl::copy_tables(source().conninfo(), target().conninfo(), held.name, tables_,
                                   options("killed"));
  EXPECT_TRUE(resumed.complete);
  EXPECT_EQ(resumed.ranges_skipped, finished);
  EXPECT_GT(finished, 0);
  EXPECT_EQ(fingerprints(target_conn), at_snapshot);
}

TEST_F(Copy, NewSnapshotRestartsOnlyUnfinishedTables) {
  std::map<std::string, std::string> at_first;
  std::vector<std::string> done_first;
  {
    auto held = hold_snapshot();
    at_first = fingerprints(held.conn);
    // Under the first snapshot: the small tables finish, the big one is stopped midway.
    std::vector<repl::TableInfo> small_ones;
    for (const auto& t : tables_) {
      if (t.name == "small" || t.name == "widened") small_ones.push_back(t);
    }
    auto done = repl::copy_tables(source().conninfo(), target().conninfo(), held.name, small_ones,
                                  options("newsnap"));
    ASSERT_TRUE(done.complete);
    for (const auto& t : done.tables) done_first.push_back(t.table);
    ASSERT_EQ(done_first.size(), 2u);

    std::stop_source stopper;
    std::atomic<int> ranges{0};
    auto opts = options("newsnap");
    opts.jobs = 1;
    opts.stop = stopper.get_token();
    opts.progress = [&](const repl::CopyProgress&) {
      if (++ranges >= 2) stopper.request_stop();
    };
    auto partial =
        repl::copy_tables(source().conninfo(), target().conninfo(), held.name, tables_, opts);
    ASSERT_FALSE(partial.complete);
    auto* big = result_for(partial, schema_ + ".big");
    ASSERT_NE(big, nullptr);
    ASSERT_EQ(big->status, repl::TableCopyStatus::pending);
  }  // the first snapshot is gone with its session

  // The source changes between the two snapshots.
  connect(source()).exec(
      fmt::format("UPDATE {0}.big SET n = -1 WHERE id <= 100;"
                  "UPDATE {0}.small SET label = 'second' WHERE id = 1;",
                  schema_));
  auto held = hold_snapshot();
  auto at_second = fingerprints(held.conn);
  auto second = repl::copy_tables(source().conninfo(), target().conninfo(), held.name, tables_,
                                  options("newsnap"));
  EXPECT_TRUE(second.complete);
  auto* big = result_for(second, schema_ + ".big");
  ASSERT_NE(big, nullptr);
  EXPECT_EQ(big->status, repl::TableCopyStatus::restarted);
  EXPECT_EQ(big->snapshot, held.name);
  auto target_conn = connect(target());
  auto now = fingerprints(target_conn);
  EXPECT_EQ(now["big"], at_second["big"]);
  EXPECT_NE(at_first["big"], at_second["big"]);
  for (const auto& t : done_first) {
    auto* r = result_for(second, t);
    ASSERT_NE(r, nullptr) << t;
    EXPECT_EQ(r->status, repl::TableCopyStatus::skipped) << t;
    EXPECT_NE(r->snapshot, held.name) << t;
  }
  for (const auto& [table, order] : kOrderBy) {
    auto* r = result_for(second, schema_ + "." + table);
    ASSERT_NE(r, nullptr) << table;
    // Each table equals the snapshot it was copied under.
    EXPECT_EQ(now[table], r->snapshot == held.name ? at_second[table] : at_first[table]) << table;
  }
}

TEST_F(Copy, NonEmptyTargetWithoutRecordIsRefused) {
  connect(target()).exec(fmt::format("INSERT INTO {}.small VALUES (42, 'already here')", schema_));
  auto held = hold_snapshot();
  try {
    repl::copy_tables(source().conninfo(), target().conninfo(), held.name, tables_,
                      options("nonempty"));
    FAIL() << "copied into a non-empty table";
  } catch (const repl::CheckFailed& e) {
    EXPECT_NE(std::string(e.what()).find(schema_ + ".small"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("TRUNCATE"), std::string::npos) << e.what();
  }
  // Nothing was copied or recorded.
  auto target_conn = connect(target());
  EXPECT_EQ(query_value(target_conn, fmt::format("SELECT count(*) FROM {}.big", schema_)), "0");
  EXPECT_EQ(query_value(target_conn,
                        "SELECT count(*) FROM pgferry.copy_progress WHERE name = "
                        "'nonempty'"),
            "0");
}

// A table copied in one range is emptied and loaded with COPY FREEZE in the same
// transaction (its rows frozen, its pages all-visible), unless TRUNCATE could do more than
// empty it: a truncate trigger, or a foreign key referring to it. Either way the rows are
// the snapshot's.
TEST_F(Copy, WholeTablesLoadFrozenUnlessTruncateCouldFireOrCascade) {
  auto target_conn = connect(target());
  target_conn.exec(
      fmt::format("CREATE EXTENSION IF NOT EXISTS pg_visibility;"
                  "CREATE FUNCTION {0}.refuse() RETURNS trigger LANGUAGE plpgsql AS "
                  "  $$BEGIN RAISE EXCEPTION 'truncate trigger fired'; END$$;"
                  "CREATE TRIGGER no_truncate BEFORE TRUNCATE ON {0}.small "
                  "  FOR EACH STATEMENT EXECUTE FUNCTION {0}.refuse();"
                  "ALTER TABLE {0}.small ENABLE ALWAYS TRIGGER no_truncate;"
                  "CREATE TABLE {0}.refs (id int REFERENCES {0}.widened (id));",
                  schema_));
  auto held = hold_snapshot();
  auto expected = fingerprints(held.conn);
  auto report = repl::copy_tables(source().conninfo(), target().conninfo(), held.name, tables_,
                                  options("frozen"));
  ASSERT_TRUE(report.complete);
  EXPECT_EQ(fingerprints(target_conn), expected);

  auto all_frozen = [&](const std::string& table) {
    return query_value(target_conn, fmt::format("SELECT coalesce(bool_and(all_frozen), false) "
                                                "FROM pg_visibility_map('{}.{}')",
                                                schema_, table));
  };
  EXPECT_EQ(all_frozen("parts_eu"), "t");
  EXPECT_EQ(all_frozen("parts_us"), "t");
  EXPECT_EQ(all_frozen("small"), "f");    // truncate trigger
  EXPECT_EQ(all_frozen("widened"), "f");  // referenced by a foreign key
  EXPECT_EQ(all_frozen("big"), "f");      // copied in ranges by parallel workers
  EXPECT_GT(result_for(report, schema_ + ".big")->ranges, 1);
}

// While a table is loaded in ranges, a session of the copy holds SHARE UPDATE EXCLUSIVE on
// it (autovacuum skips it), and lets go when the copy ends.
TEST_F(Copy, TablesLoadedInRangesAreHeldFromAutovacuumUntilTheCopyEnds) {
  auto watcher = connect(target());
  std::string held_sql = fmt::format(
      "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
      "WHERE a.application_name = 'pgferry-copy-guard' AND l.granted "
      "AND l.mode = 'ShareUpdateExclusiveLock' AND l.relation = '{}.big'::regclass",
      schema_);
  std::atomic<int> seen_held{0}, seen_free{0};
  auto opts = options("guard");
  opts.progress = [&](const repl::CopyProgress& p) {
    if (p.table != schema_ + ".big" || p.table_done) return;
    (query_value(watcher, held_sql) == "1" ? seen_held : seen_free)++;
  };
  auto held = hold_snapshot();
  auto report =
      repl::copy_tables(source().conninfo(), target().conninfo(), held.name, tables_, opts);
  ASSERT_TRUE(report.complete);
  EXPECT_GT(seen_held.load(), 0);
  EXPECT_EQ(seen_free.load(), 0);
  EXPECT_EQ(query_value(watcher, held_sql), "0");
}
