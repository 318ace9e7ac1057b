// `pgferry init` with data, against real servers: a copy under a concurrent pgbench load
// followed by `run --until` ends equal; --schema builds the target from nothing; a table
// without a primary key is refused (exit 3, named); an init killed with SIGKILL during the
// copy is resumed by a re-run, keeps the finished table nobody wrote to and copies the
// written one again, and ends equal; a re-run after success changes nothing.
//
// Each test uses its own database on both clusters and its own --name.
#include <fmt/format.h>
#include <signal.h>
#include <sys/wait.h>

#include <atomic>
#include <nlohmann/json.hpp>
#include <thread>

#include "support/harness.hpp"

namespace repl = pgferry::replication;
using namespace pgferry::testing;

namespace {

// The JSON document in a command's output (logs go to stderr, mixed in; the document is
// the last top-level object).
nlohmann::json json_of(const std::string& output) {
  auto start = output.rfind("\n{");
  start = start == std::string::npos ? output.find('{') : start + 1;
  return nlohmann::json::parse(output.substr(start));
}

class Init : public ClusterPairTest {
 protected:
  void SetUp() override {
    db_ = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    for (auto& c : db_) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    db_ = "i_" + db_;
    connect(source()).exec(fmt::format("CREATE DATABASE {}", db_));
    connect(target()).exec(fmt::format("CREATE DATABASE {}", db_));
  }
  void TearDown() override {
    // The slot holds the source's WAL: drop it whatever happened.
    auto src = connect(source(), db_);
    src.exec(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
        "WHERE database = current_database() AND NOT active");
  }

  std::vector<std::string> args(std::vector<std::string> extra) const {
    std::vector<std::string> all = {
        "--source", source().conninfo(db_), "--target", target().conninfo(db_), "--name", db_};
    all.insert(all.end(), extra.begin(), extra.end());
    return all;
  }
  CommandResult pgferry(std::vector<std::string> extra) const { return run_pgferry(args(extra)); }

  std::vector<std::string> pgbench_args(std::vector<std::string> extra) const {
    std::vector<std::string> all = {
        "pgbench", "-h",      source().socket_dir().string(), "-p", std::to_string(source().port()),
        "-U",      "postgres"};
    all.insert(all.end(), extra.begin(), extra.end());
    all.push_back(db_);
    return all;
  }

  void expect_equal(const std::vector<std::pair<std::string, std::string>>& tables) const {
    auto src = connect(source(), db_);
    auto dst = connect(target(), db_);
    for (const auto& [table, order] : tables) {
      EXPECT_EQ(table_fingerprint(src, table, order), table_fingerprint(dst, table, order))
          << table;
    }
  }

  // run --until the source's current WAL position.
  void run_until_now() const {
    auto lsn = query_value(connect(source(), db_), "SELECT pg_current_wal_lsn()");
    auto run = pgferry({"run", "--until", lsn});
    ASSERT_EQ(run.exit_code, 0) << run.output;
  }

  std::string db_;
};

const std::vector<std::pair<std::string, std::string>> kPgbenchTables = {
    {"pgbench_accounts", "aid"},
    {"pgbench_branches", "bid"},
    {"pgbench_tellers", "tid"},
    {"pgbench_history", "id"}};

TEST_F(Init, CopyUnderPgbenchLoadThenRunUntilEqualAndRerunChangesNothing) {
  ASSERT_EQ(
      source().run_tool(pgbench_args({"-i", "-q", "-s", "4"}), source().dir() / "init-pgbench.log"),
      0);
  connect(source(), db_).exec("ALTER TABLE pgbench_history ADD COLUMN id bigserial PRIMARY KEY");
  // The same tables, empty, with their keys, on the target.
  ASSERT_EQ(target().run_tool(
                {"pgbench", "-i", "-I", "dtp", "-s", "4", "-h", target().socket_dir().string(),
                 "-p", std::to_string(target().port()), "-U", "postgres", db_},
                target().dir() / "init-pgbench.log"),
            0);
  connect(target(), db_).exec("ALTER TABLE pgbench_history ADD COLUMN id bigserial PRIMARY KEY");

  // pgbench writes all through the copy (and a little before and after).
  std::atomic<int> bench_status{-1};
  std::thread load([&] {
    bench_status = source().run_tool(pgbench_args({"-n", "-c", "4", "-j", "2", "-T", "8"}),
                                     source().dir() / "init-load.log");
  });
  std::this_thread::sleep_for(std::chrono::seconds(1));
  auto init = pgferry({"init", "--jobs", "4", "--split-mb", "8", "--json"});
  load.join();
  ASSERT_EQ(init.exit_code, 0) << init.output;
  ASSERT_EQ(bench_status.load(), 0);
  auto doc = json_of(init.output);
  EXPECT_EQ(doc["created"]["slot"], true);
  EXPECT_EQ(doc["copy"]["tables"].size(), 4u);
  EXPECT_GT(doc["copy"]["ranges_copied"].get<int>(), 4) << "pgbench_accounts was not split";
  EXPECT_GT(std::stoll(query_value(connect(source(), db_), "SELECT count(*) FROM pgbench_history")),
            0);

  run_until_now();
  expect_equal(kPgbenchTables);

  // A re-run after success changes nothing: no slot re-created, no row copied.
  auto slot_before = query_value(connect(source(), db_),
                                 "SELECT confirmed_flush_lsn FROM pg_replication_slots "
                                 "WHERE slot_name = '" +
                                     db_ + "'");
  auto again = pgferry({"init", "--json"});
  ASSERT_EQ(again.exit_code, 0) << again.output;
  auto again_doc = json_of(again.output);
  EXPECT_EQ(again_doc["data"], "already initialized");
  EXPECT_EQ(again_doc["created"]["slot"], false);
  EXPECT_EQ(query_value(connect(source(), db_),
                        "SELECT confirmed_flush_lsn FROM pg_replication_slots "
                        "WHERE slot_name = '" +
                            db_ + "'"),
            slot_before);
  expect_equal(kPgbenchTables);
}

TEST_F(Init, SchemaFromEmptyTarget) {
  connect(source(), db_).exec(R"sql(
    CREATE SCHEMA shop;
    CREATE TYPE shop.status AS ENUM ('new', 'paid', 'shipped');
    CREATE TABLE shop.customers (id serial PRIMARY KEY, email text UNIQUE NOT NULL);
    CREATE TABLE shop.orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                              customer int NOT NULL REFERENCES shop.customers(id),
                              status shop.status NOT NULL DEFAULT 'new', total numeric(12,2));
    CREATE INDEX orders_customer ON shop.orders (customer);
    CREATE TABLE events (id int, region text, at timestamptz, PRIMARY KEY (id, region))
      PARTITION BY LIST (region);
    CREATE TABLE events_eu PARTITION OF events FOR VALUES IN ('eu');
    CREATE TABLE events_us PARTITION OF events FOR VALUES IN ('us');
    INSERT INTO shop.customers (email) SELECT 'c' || g || '@example.com'
      FROM generate_series(1, 2000) g;
    INSERT INTO shop.orders (customer, status, total)
      SELECT 1 + g % 2000, (ARRAY['new','paid','shipped'])[1 + g % 3]::shop.status, g / 100.0
      FROM generate_series(1, 20000) g;
    INSERT INTO events SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END,
      '2025-01-01'::timestamptz + g * interval '1 minute' FROM generate_series(1, 5000) g;
  )sql");

  // Without --schema the empty target is refused: the tables are missing.
  auto refused = pgferry({"init"});
  EXPECT_EQ(refused.exit_code, 3) << refused.output;
  EXPECT_NE(refused.output.find("shop.orders"), std::string::npos) << refused.output;

  auto init = pgferry({"init", "--schema", "--jobs", "2", "--json"});
  ASSERT_EQ(init.exit_code, 0) << init.output;
  auto doc = json_of(init.output);
  EXPECT_EQ(doc["schema"]["post_data"], "restored") << init.output;

  auto dst = connect(target(), db_);
  // Indexes and constraints came with post-data; the pgferry schema was not dumped.
  EXPECT_EQ(query_value(dst, "SELECT count(*) FROM pg_indexes WHERE schemaname = 'shop'"), "4");
  EXPECT_EQ(query_value(dst,
                        "SELECT count(*) FROM pg_constraint WHERE conrelid = "
                        "'shop.orders'::regclass AND contype = 'f'"),
            "1");
  EXPECT_EQ(query_value(dst, "SELECT count(*) FROM pg_publication"), "0");

  connect(source(), db_).exec(R"sql(
    INSERT INTO shop.customers (email) VALUES ('late@example.com');
    UPDATE shop.orders SET status = 'shipped' WHERE id % 10 = 0;
    DELETE FROM events WHERE id % 7 = 0;
  )sql");
  run_until_now();
  expect_equal(
      {{"shop.customers", "id"}, {"shop.orders", "id"}, {"events_eu", "id"}, {"events_us", "id"}});

  // A second init --schema is a no-op (tables exist, post-data done).
  auto again = pgferry({"init", "--schema"});
  EXPECT_EQ(again.exit_code, 0) << again.output;
}

TEST_F(Init, TableWithoutPrimaryKeyIsRefused) {
  connect(source(), db_)
      .exec("CREATE TABLE keyed (id int PRIMARY KEY); CREATE TABLE loose_rows (a int, b text);");
  connect(target(), db_)
      .exec("CREATE TABLE keyed (id int PRIMARY KEY); CREATE TABLE loose_rows (a int, b text);");
  auto text = pgferry({"init"});
  EXPECT_EQ(text.exit_code, 3) << text.output;
  EXPECT_NE(text.output.find("public.loose_rows"), std::string::npos) << text.output;
  EXPECT_NE(text.output.find("no primary key"), std::string::npos) << text.output;
  auto json = pgferry({"init", "--json"});
  EXPECT_EQ(json.exit_code, 3) << json.output;
  auto doc = json_of(json.output);
  EXPECT_EQ(doc["ok"], false);
  bool named = false;
  for (const auto& f : doc["check"]["findings"]) {
    named |= f["code"] == "no_primary_key" && f["object"] == "public.loose_rows";
  }
  EXPECT_TRUE(named) << json.output;
  // Nothing was created.
  EXPECT_EQ(
      query_value(connect(source(), db_),
                  "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '" + db_ + "'"),
      "0");
  // Excluding it lets init through.
  EXPECT_EQ(pgferry({"init", "--exclude-table", "loose_rows"}).exit_code, 0);
}

TEST_F(Init, KilledDuringCopyResumesKeepsUnchangedTableAndEndsEqual) {
  const std::string schema =
      "CREATE TABLE cold (id int PRIMARY KEY, v text);"
      "CREATE TABLE warm (id int PRIMARY KEY, v text);"
      "CREATE TABLE hot (id int PRIMARY KEY, v text);";
  connect(target(), db_).exec(schema);
  auto src = connect(source(), db_);
  // Sizes order the copy (largest first, one job): cold, then warm, then hot.
  src.exec(schema +
           "INSERT INTO cold SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 300000) g;"
           "INSERT INTO warm SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 200000) g;"
           "INSERT INTO hot SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 150000) g;"
           "ANALYZE cold, warm, hot;");

  std::string log = (source().dir() / ("init-kill-" + db_ + ".log")).string();
  pid_t child = spawn_pgferry(args({"init", "--jobs", "1", "--split-mb", "2"}), log);
  auto dst = connect(target(), db_);
  auto finished = [&](const std::string& table) {
    return query_value(dst, fmt::format("SELECT count(*) > 0 AND bool_and(finished_at IS NOT "
                                        "NULL) FROM pgferry.copy_progress WHERE name = '{}' "
                                        "AND table_name = 'public.{}'",
                                        db_, table)) == "t";
  };
  bool cold_done = wait_until([&] {
    return query_value(dst, "SELECT to_regclass('pgferry.copy_progress') IS NOT NULL") == "t" &&
           finished("cold");
  });
  ::kill(child, SIGKILL);
  int status = 0;
  ::waitpid(child, &status, 0);
  ASSERT_TRUE(cold_done) << "cold was never finished";
  ASSERT_TRUE(WIFSIGNALED(status)) << "init ended before it was killed";
  bool warm_done = finished("warm");
  EXPECT_FALSE(finished("hot")) << "killed too late to interrupt the copy";
  // Not initialized: no progress record, so `run` cannot start on half a copy.
  EXPECT_EQ(query_value(dst, "SELECT to_regclass('pgferry.progress') IS NULL"), "t");

  // Changes between the first snapshot and the resume: warm and hot only.
  src.exec(
      "UPDATE warm SET v = 'changed' WHERE id % 1000 = 0;"
      "INSERT INTO hot VALUES (150001, 'new');"
      "DELETE FROM hot WHERE id % 5000 = 0;");

  auto resumed = pgferry({"init", "--jobs", "2", "--split-mb", "2", "--json"});
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  auto doc = json_of(resumed.output);
  auto kept = doc["resume"]["kept"];
  auto recopied = doc["resume"]["recopied"];
  EXPECT_NE(std::find(kept.begin(), kept.end(), "public.cold"), kept.end()) << resumed.output;
  if (warm_done) {
    EXPECT_NE(std::find(recopied.begin(), recopied.end(), "public.warm"), recopied.end())
        << resumed.output;
  }
  for (const auto& t : doc["copy"]["tables"]) {
    if (t["table"] == "public.cold") {
      EXPECT_EQ(t["status"], "skipped");
    }
  }

  src.exec("UPDATE cold SET v = 'after' WHERE id < 10; UPDATE hot SET v = 'after' WHERE id < 10");
  run_until_now();
  expect_equal({{"cold", "id"}, {"warm", "id"}, {"hot", "id"}});
}

}  // namespace
