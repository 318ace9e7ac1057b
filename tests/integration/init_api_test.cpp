// The Init library API driven directly, not through the CLI: an init of a small pair
// reports the tables it copied, the slot it created and its consistent point (equal to the
// slot's position on the source and the progress record on the target), the observer sees
// the copy, the target equals the source; a re-run changes nothing.
#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <set>

#include "pgferry/replication/apply/progress.hpp"
#include "pgferry/replication/copy/init.hpp"
#include "support/harness.hpp"

namespace repl = pgferry::replication;
using namespace pgferry::testing;

namespace {

class CountingObserver : public repl::InitObserver {
 public:
  void copy_started(const std::vector<repl::TableInfo>& tables,
                    const std::vector<std::string>& finished) override {
    ++started;
    tables_listed = tables.size();
    finished_before = finished.size();
  }
  void copy_progress(const repl::CopyProgress& progress) override {
    std::lock_guard lock(mutex);
    if (progress.table_done) tables_done.insert(progress.table);
    rows = progress.total_rows;
  }
  void copy_ended() override { ++ended; }

  std::atomic<int> started{0};
  std::atomic<int> ended{0};
  std::size_t tables_listed = 0;
  std::size_t finished_before = 0;
  std::mutex mutex;
  std::set<std::string> tables_done;
  std::int64_t rows = 0;
};

class InitApi : public ClusterPairTest {};

TEST_F(InitApi, InitsASmallPairThenRerunChangesNothing) {
  const std::string db = "init_api";
  connect(source()).exec("CREATE DATABASE " + db);
  connect(target()).exec("CREATE DATABASE " + db);
  const std::string schema =
      "CREATE TABLE accounts (id int PRIMARY KEY, owner text NOT NULL, balance numeric(12,2));"
      "CREATE TABLE notes (id bigint PRIMARY KEY, body text, at timestamptz);";
  connect(target(), db).exec(schema);
  auto src = connect(source(), db);
  src.exec(schema +
           "INSERT INTO accounts SELECT g, 'owner ' || g, g * 1.5 FROM generate_series(1, 5000) g;"
           "INSERT INTO notes SELECT g, repeat('n', g % 300), '2026-01-01'::timestamptz + g * "
           "interval '1 hour' FROM generate_series(1, 2000) g;");

  repl::InitOptions options;
  options.source_conninfo = source().conninfo(db);
  options.target_conninfo = target().conninfo(db);
  options.name = db;
  options.jobs = 2;
  CountingObserver observer;
  auto result = repl::Init(options, &observer).run();

  ASSERT_EQ(result.outcome, repl::InitOutcome::initialized);
  EXPECT_TRUE(result.check.ok());
  EXPECT_EQ(result.publication, db);
  EXPECT_TRUE(result.publication_created);
  EXPECT_TRUE(result.slot_created);
  EXPECT_TRUE(result.progress_created);
  ASSERT_TRUE(result.copy.complete);
  ASSERT_EQ(result.copy.tables.size(), 2u);
  std::set<std::string> copied;
  for (const auto& table : result.copy.tables) {
    EXPECT_EQ(table.status, repl::TableCopyStatus::copied) << table.table;
    copied.insert(table.table);
  }
  EXPECT_EQ(copied, (std::set<std::string>{"public.accounts", "public.notes"}));
  EXPECT_EQ(result.copy.rows, 7000);
  EXPECT_TRUE(result.kept.empty());
  EXPECT_TRUE(result.recopied.empty());

  // The consistent point is the new slot's position and the progress record's.
  EXPECT_NE(result.consistent_point, repl::Lsn{});
  EXPECT_EQ(result.applied_lsn, result.consistent_point);
  auto slot_lsn = query_value(src,
                              "SELECT confirmed_flush_lsn FROM pg_replication_slots "
                              "WHERE slot_name = '" +
                                  db + "'");
  EXPECT_EQ(slot_lsn, result.consistent_point.to_string());
  auto dst = connect(target(), db);
  EXPECT_EQ(repl::ProgressStore(dst).read(db), result.consistent_point);

  // The observer saw one attempt copy both tables.
  EXPECT_EQ(observer.started.load(), 1);
  EXPECT_EQ(observer.ended.load(), 1);
  EXPECT_EQ(observer.tables_listed, 2u);
  EXPECT_EQ(observer.finished_before, 0u);
  EXPECT_EQ(observer.tables_done, copied);
  EXPECT_EQ(observer.rows, 7000);

  auto accounts = table_fingerprint(src, "accounts", "id");
  auto notes = table_fingerprint(src, "notes", "id");
  EXPECT_EQ(table_fingerprint(dst, "accounts", "id"), accounts);
  EXPECT_EQ(table_fingerprint(dst, "notes", "id"), notes);

  // A re-run: already initialized, nothing created or copied, nothing moved.
  CountingObserver again_observer;
  auto again = repl::Init(options, &again_observer).run();
  EXPECT_EQ(again.outcome, repl::InitOutcome::already_initialized);
  EXPECT_FALSE(again.publication_created);
  EXPECT_FALSE(again.publication_altered);
  EXPECT_FALSE(again.slot_created);
  EXPECT_FALSE(again.progress_created);
  EXPECT_EQ(again.applied_lsn, result.consistent_point);
  EXPECT_EQ(again.copy.rows, 0);
  EXPECT_EQ(again_observer.started.load(), 0);
  EXPECT_EQ(query_value(src,
                        "SELECT confirmed_flush_lsn FROM pg_replication_slots "
                        "WHERE slot_name = '" +
                            db + "'"),
            slot_lsn);
  EXPECT_EQ(repl::ProgressStore(dst).read(db), result.consistent_point);
  EXPECT_EQ(table_fingerprint(dst, "accounts", "id"), accounts);
  EXPECT_EQ(table_fingerprint(dst, "notes", "id"), notes);

  // Tear down through the library too: a second cleanup finds nothing left.
  auto dropped = repl::cleanup(src, dst, db, db);
  EXPECT_TRUE(dropped.slot_dropped);
  EXPECT_TRUE(dropped.publication_dropped);
  EXPECT_TRUE(dropped.progress_dropped);
  auto again_dropped = repl::cleanup(src, dst, db, db);
  EXPECT_FALSE(again_dropped.slot_dropped || again_dropped.publication_dropped ||
               again_dropped.progress_dropped);
}

}  // namespace
