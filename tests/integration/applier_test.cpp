// The applier alone, against a real target cluster: Relations and pgoutput structs built by
// hand (text values, as the walsender sends them) fed to an Applier, then the target's rows
// checked. No source cluster: what the stream delivers is simulated exactly.
#include "pgferry/replication/apply/applier.hpp"

#include <fmt/format.h>

#include <thread>

#include "pgferry/replication/apply/progress.hpp"
#include "support/harness.hpp"

namespace repl = pgferry::replication;
namespace pgo = pgferry::replication::pgoutput;
using namespace pgferry::testing;
using repl::Lsn;

namespace {

pgo::ColumnValue T(std::string_view text) {
  return {pgo::ColumnKind::text, text};
}
const pgo::ColumnValue N{pgo::ColumnKind::null, {}};
const pgo::ColumnValue U{pgo::ColumnKind::unchanged_toast, {}};
using Tuple = std::vector<pgo::ColumnValue>;

std::uint64_t next_version = 1000;

repl::Relation make_relation(std::uint32_t id, std::string schema, std::string name,
                             std::vector<std::pair<std::string, bool>> columns,
                             char replica_identity = 'd') {
  repl::Relation relation;
  relation.id = repl::RelationId{id};
  relation.nspname = std::move(schema);
  relation.relname = std::move(name);
  relation.replica_identity = replica_identity;
  for (auto& [column, key] : columns) relation.columns.push_back({column, repl::Oid{25}, -1, key});
  relation.version = next_version++;
  return relation;
}

// The same relation with the source column types `oids` (make_relation says text).
repl::Relation with_types(repl::Relation relation, const std::vector<std::uint32_t>& oids) {
  for (std::size_t i = 0; i < oids.size(); ++i) relation.columns[i].type_oid = repl::Oid{oids[i]};
  return relation;
}

// Plays the role of the transaction assembler: one source transaction per call, commit
// records 0x100 bytes apart.
class Source {
 public:
  explicit Source(repl::Applier& applier, Lsn start = Lsn{0x1000000})
      : applier_(&applier), lsn_(start) {}
  Lsn next_commit() const { return lsn_ + 0x100; }

  // Runs `body` inside begin/commit of a transaction whose commit record is at `commit_lsn`
  // (default: the next one). Returns the end_lsn.
  Lsn transaction(const std::function<void()>& body, std::optional<Lsn> commit_lsn = {}) {
    Lsn commit = commit_lsn.value_or(next_commit());
    if (commit > lsn_) lsn_ = commit;
    repl::TransactionBegin begin{repl::Xid{++xid_}, commit, repl::PgTimestamp{}, false};
    begin.commit_time = repl::from_pg_timestamp(700'000'000'000'000 + xid_);
    applier_->begin_transaction(begin);
    body();
    Lsn end = commit + 0x28;
    applier_->commit_transaction({begin.xid, commit, end, begin.commit_time});
    return end;
  }
  void insert(const repl::Relation& relation, const Tuple& tuple) {
    applier_->insert(relation, {std::nullopt, relation.id, tuple});
  }
  void update(const repl::Relation& relation, char old_kind, const Tuple& old_tuple,
              const Tuple& new_tuple) {
    applier_->update(relation, {std::nullopt, relation.id, old_kind, old_tuple, new_tuple});
  }
  void remove(const repl::Relation& relation, char old_kind, const Tuple& old_tuple) {
    applier_->delete_rows(relation, {std::nullopt, relation.id, old_kind, old_tuple});
  }

 private:
  repl::Applier* applier_;
  Lsn lsn_;
  std::uint32_t xid_ = 700;
};

}  // namespace

class ApplierTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { target_ = start_cluster(); }
  static void TearDownTestSuite() { target_.reset(); }

  void SetUp() override {
    sql_ = std::make_unique<repl::Connection>(connect(*target_));
    name_ = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    repl::ProgressStore(*sql_).initialize(name_, Lsn{0x1000000});
  }

  std::unique_ptr<repl::Applier> applier(repl::ApplierOptions options = {}) {
    options.name = name_;
    return std::make_unique<repl::Applier>(connect(*target_, "postgres", repl::Side::target),
                                           options);
  }
  std::string value(std::string_view query) { return query_value(*sql_, query); }
  Lsn progress() { return *repl::ProgressStore(*sql_).read(name_); }
  void expect_duplicate_key_named(const repl::Relation& relation);

  static std::unique_ptr<pgferry::tools::LocalCluster> target_;
  std::unique_ptr<repl::Connection> sql_;
  std::string name_;
};

std::unique_ptr<pgferry::tools::LocalCluster> ApplierTest::target_;

TEST_F(ApplierTest, ProgressRecordIsIdempotentAndDroppable) {
  repl::ProgressStore store(*sql_);
  EXPECT_FALSE(store.initialize(name_, Lsn{0x5000000}));  // exists: left alone
  EXPECT_EQ(store.read(name_), Lsn{0x1000000});
  EXPECT_FALSE(store.read("no-such-name").has_value());
  EXPECT_TRUE(store.initialize("other", Lsn{7}));
  EXPECT_TRUE(store.drop("other"));
  EXPECT_FALSE(store.drop("other"));
  EXPECT_EQ(store.read(name_), Lsn{0x1000000});
}

TEST_F(ApplierTest, ManyTypesThroughPreparedInsertsAndCopy) {
  sql_->exec(
      "CREATE TYPE mood AS ENUM ('sad', 'happy');"
      "CREATE TABLE types_expected (id int PRIMARY KEY, b bigint, n numeric, t text, raw bytea, "
      "  doc jsonb, ints int[], texts text[], m mood, at timestamptz, u uuid, f float8);"
      "CREATE TABLE types_applied (LIKE types_expected INCLUDING ALL)");
  auto relation = make_relation(1, "public", "types_applied",
                                {{"id", true},
                                 {"b", false},
                                 {"n", false},
                                 {"t", false},
                                 {"raw", false},
                                 {"doc", false},
                                 {"ints", false},
                                 {"texts", false},
                                 {"m", false},
                                 {"at", false},
                                 {"u", false},
                                 {"f", false}});
  std::vector<std::string> texts = {
      "plain",     "it's \"quoted\"",          "line1\nline2\r\nline3",
      "tab\there", "back\\slash \\N \\. \\\\", "unicode: żółw 🐢 ü",
      "",
  };
  std::vector<Tuple> rows;
  std::vector<std::string> ids;
  for (int i = 0; i < 60; ++i) ids.push_back(std::to_string(i));
  for (int i = 0; i < 60; ++i) {
    const std::string& text = texts[static_cast<std::size_t>(i) % texts.size()];
    bool nulls = i % 5 == 4;
    rows.push_back({T(ids[static_cast<std::size_t>(i)]), nulls ? N : T("-9223372036854775808"),
                    i % 3 == 0 ? T("NaN") : T("12345678901234567890.000000000123"),
                    nulls ? N : T(text), T("\\x00ff5c0a09"),
                    T("{\"a\": [1, \"x\\ty\", null], \"k\\\"q\": \"\\u00fc\"}"), T("{1,2,NULL,-4}"),
                    T("{\"a b\",\"c\\\"d\",NULL,\"\\\\\"}"), i % 2 ? T("happy") : T("sad"),
                    T("2024-02-29 23:59:59.123456+00"), T("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
                    nulls ? N : T("-Infinity")});
  }
  for (const auto& row : rows) {
    std::vector<repl::Param> params;
    for (const auto& value : row) {
      params.push_back(value.kind == pgo::ColumnKind::null ? repl::Param{}
                                                           : repl::Param{value.data});
    }
    sql_->exec("INSERT INTO types_expected VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12)",
               std::span<const repl::Param>(params));
  }

  auto a = applier();
  Source source(*a);
  // 3 rows: below copy_min_rows, prepared INSERTs. Then 57 rows: one COPY.
  source.transaction([&] {
    for (int i = 0; i < 3; ++i) source.insert(relation, rows[static_cast<std::size_t>(i)]);
  });
  Lsn end = source.transaction([&] {
    for (int i = 3; i < 60; ++i) source.insert(relation, rows[static_cast<std::size_t>(i)]);
  });
  a->flush();
  EXPECT_EQ(a->durable_lsn(), end);
  EXPECT_EQ(progress(), end);
  auto counters = a->counters();
  EXPECT_EQ(counters.rows_inserted, 60u);
  EXPECT_EQ(counters.copy_batches, 1u);
  EXPECT_EQ(counters.transactions_applied, 2u);
  EXPECT_EQ(value("SELECT count(*) FROM types_applied"), "60");
  EXPECT_EQ(table_fingerprint(*sql_, "types_applied", "id"),
            table_fingerprint(*sql_, "types_expected", "id"));
  EXPECT_EQ(value("SELECT t FROM types_applied WHERE id = 11"), texts[4]);
  EXPECT_EQ(value("SELECT n::text FROM types_applied WHERE id = 3"), "NaN");
  EXPECT_EQ(value("SELECT source_commit_time IS NOT NULL FROM pgferry.progress WHERE name = '" +
                  name_ + "'"),
            "t");
}

TEST_F(ApplierTest, UpdatesKeyChangeAndUnchangedToast) {
  sql_->exec("CREATE TABLE docs (id int PRIMARY KEY, title text, body text, n int)");
  auto relation = make_relation(2, "public", "docs",
                                {{"id", true}, {"title", false}, {"body", false}, {"n", false}});
  std::string body(100'000, 'x');
  auto a = applier();
  Source source(*a);
  source.transaction([&] {
    source.insert(relation, {T("1"), T("first"), T(body), T("1")});
    source.insert(relation, {T("2"), T("second"), T("short"), N});
  });
  source.transaction([&] {
    // Unchanged TOAST body: must stay as it is, never be written.
    source.update(relation, 0, {}, {T("1"), T("renamed"), U, T("2")});
    // Key change: old key in the 'K' tuple.
    source.update(relation, 'K', {T("2"), N, N, N}, {T("20"), T("moved"), T("short"), T("7")});
    // Set a column to NULL.
    source.update(relation, 0, {}, {T("20"), N, T("short"), T("7")});
  });
  a->flush();
  EXPECT_EQ(value("SELECT title || ':' || n || ':' || length(body) || ':' || (body = repeat('x', "
                  "100000)) FROM docs WHERE id = 1"),
            "renamed:2:100000:true");
  EXPECT_EQ(value("SELECT count(*) FROM docs WHERE id = 2"), "0");
  EXPECT_EQ(value("SELECT coalesce(title, 'NULL') || ':' || n FROM docs WHERE id = 20"), "NULL:7");
  EXPECT_EQ(a->counters().rows_updated, 3u);
}

TEST_F(ApplierTest, QuotedMixedCaseNamesAndDifferentColumnOrder) {
  sql_->exec(
      "CREATE SCHEMA \"My Schema\";"
      "CREATE TABLE \"My Schema\".\"Mixed\"\"Case\" (\"Note\" text, extra int DEFAULT 42, "
      "\"Key Col\" int PRIMARY KEY, \"select\" text)");
  auto relation = make_relation(3, "My Schema", "Mixed\"Case",
                                {{"Key Col", true}, {"select", false}, {"Note", false}});
  auto a = applier();
  Source source(*a);
  source.transaction([&] {
    for (int i = 0; i < 20; ++i) {  // a COPY
      source.insert(relation, {T(i == 0 ? "100" : std::to_string(i)), T("s"), T("n")});
    }
  });
  // The strings above die with the loop: the applier must have copied what it buffered.
  source.transaction([&] {
    source.insert(relation, {T("200"), T("s2"), N});  // a prepared INSERT
    source.update(relation, 0, {}, {T("200"), T("s3"), T("note")});
    source.remove(relation, 'K', {T("100"), N, N});
  });
  a->flush();
  const char* table = "\"My Schema\".\"Mixed\"\"Case\"";
  EXPECT_EQ(value(fmt::format("SELECT count(*) FROM {}", table)), "20");
  EXPECT_EQ(value(fmt::format("SELECT \"select\" || \"Note\" || extra FROM {} WHERE \"Key Col\" = "
                              "200",
                              table)),
            "s3note42");
  EXPECT_EQ(value(fmt::format("SELECT count(*) FROM {} WHERE \"Key Col\" = 100", table)), "0");
}

TEST_F(ApplierTest, ReplicaIdentityFullWithAndWithoutPrimaryKey) {
  sql_->exec(
      "CREATE TABLE full_pk (id int PRIMARY KEY, v text);"
      "CREATE TABLE full_nopk (a int, doc json, p point);"
      "INSERT INTO full_pk VALUES (1, 'a'), (2, 'b');"
      "INSERT INTO full_nopk VALUES (1, '{\"x\": 1}', '(1,2)'), (1, '{\"x\": 1}', '(1,2)'), "
      "(2, NULL, '(0,0)')");
  auto with_pk = make_relation(4, "public", "full_pk", {{"id", true}, {"v", true}}, 'f');
  auto without_pk =
      make_relation(5, "public", "full_nopk", {{"a", true}, {"doc", true}, {"p", true}}, 'f');
  auto a = applier();
  Source source(*a);
  source.transaction([&] {
    source.update(with_pk, 'O', {T("1"), T("a")}, {T("1"), T("A")});
    source.remove(with_pk, 'O', {T("2"), T("b")});
    // Duplicate rows without a key: one row changes, as on the source.
    source.update(without_pk, 'O', {T("1"), T("{\"x\": 1}"), T("(1,2)")},
                  {T("1"), T("{\"x\": 2}"), T("(1,2)")});
    source.remove(without_pk, 'O', {T("2"), N, T("(0,0)")});
  });
  a->flush();
  EXPECT_EQ(value("SELECT string_agg(id || v, ',' ORDER BY id) FROM full_pk"), "1A");
  EXPECT_EQ(value("SELECT string_agg(doc::text, ',' ORDER BY doc::text) FROM full_nopk"),
            "{\"x\": 1},{\"x\": 2}");
}

TEST_F(ApplierTest, TableWithoutColumns) {
  sql_->exec(
      "CREATE TABLE no_cols (); INSERT INTO no_cols SELECT FROM generate_series(1, 3);"
      "CREATE TABLE no_cols_empty ()");
  auto relation = make_relation(30, "public", "no_cols", {}, 'f');
  auto empty = make_relation(31, "public", "no_cols_empty", {}, 'f');
  auto a = applier();
  Source source(*a);
  source.transaction([&] {
    for (int i = 0; i < 20; ++i) source.insert(relation, {});  // past copy_min_rows
    source.update(relation, 'O', {}, {});                      // replaces one row by an equal one
    source.remove(relation, 'O', {});
    source.remove(relation, 'O', {});
  });
  a->flush();
  EXPECT_EQ(value("SELECT count(*) FROM no_cols"), "21");
  EXPECT_EQ(a->counters().rows_inserted, 20u);
  EXPECT_EQ(a->counters().rows_updated, 1u);
  EXPECT_EQ(a->counters().rows_deleted, 2u);
  // An update must find its row, as any update.
  Lsn before = progress();
  try {
    source.transaction([&] { source.update(empty, 'O', {}, {}); });
    a->flush();
    FAIL() << "no error";
  } catch (const repl::Error& e) {
    EXPECT_NE(std::string(e.what()).find("public.no_cols_empty"), std::string::npos) << e.what();
  }
  EXPECT_EQ(progress(), before);
  EXPECT_EQ(value("SELECT count(*) FROM no_cols_empty"), "0");
}

TEST_F(ApplierTest, TruncateWithRestartIdentityAndCascade) {
  sql_->exec(
      "CREATE TABLE parent (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);"
      "CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent);"
      "INSERT INTO parent (v) VALUES ('a'), ('b');"
      "INSERT INTO child VALUES (1, 1)");
  auto parent = make_relation(6, "public", "parent", {{"id", true}, {"v", false}});
  auto a = applier();
  Source source(*a);
  source.transaction([&] {
    const repl::Relation* relations[] = {&parent};
    a->truncate(relations, pgo::Truncate::kCascade | pgo::Truncate::kRestartIdentity);
    // The source's identity value is written as is (GENERATED ALWAYS on the target too).
    source.insert(parent, {T("5"), T("after")});
  });
  a->flush();
  EXPECT_EQ(value("SELECT count(*) FROM child"), "0");
  EXPECT_EQ(value("SELECT string_agg(id || v, ',') FROM parent"), "5after");
  sql_->exec("INSERT INTO parent (v) VALUES ('next')");
  EXPECT_EQ(value("SELECT id FROM parent WHERE v = 'next'"), "1");  // identity restarted
}

TEST_F(ApplierTest, MissingColumnIsAClearError) {
  sql_->exec("CREATE TABLE narrow (id int PRIMARY KEY)");
  auto relation = make_relation(7, "public", "narrow", {{"id", true}, {"wide", false}});
  auto a = applier();
  Source source(*a);
  try {
    source.transaction([&] { source.insert(relation, {T("1"), T("x")}); });
    a->flush();
    FAIL() << "no error";
  } catch (const repl::Error& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("public.narrow.wide"), std::string::npos) << what;
    EXPECT_NE(what.find("ADD COLUMN"), std::string::npos) << what;
  }
  EXPECT_EQ(progress(), Lsn{0x1000000});
}

TEST_F(ApplierTest, UpdateOfMissingRowStopsWithCommitLsnRelationAndKey) {
  sql_->exec("CREATE TABLE conflict (id int PRIMARY KEY, v text)");
  auto relation = make_relation(8, "public", "conflict", {{"id", true}, {"v", false}});
  auto a = applier();
  Source source(*a);
  Lsn commit = source.next_commit();
  try {
    source.transaction([&] {
      source.insert(relation, {T("1"), T("kept?")});
      source.update(relation, 0, {}, {T("99"), T("nowhere")});
    });
    a->flush();
    FAIL() << "no error";
  } catch (const repl::Error& e) {
    std::string what = e.what();
    EXPECT_NE(what.find(commit.to_string()), std::string::npos) << what;
    EXPECT_NE(what.find("public.conflict"), std::string::npos) << what;
    EXPECT_NE(what.find("(\"id\")=(99)"), std::string::npos) << what;
  }
  EXPECT_THROW(a->flush(), repl::Error);  // broken: no half-applied continuation
  a.reset();
  // Nothing of the failed transaction is on the target, and progress did not move.
  EXPECT_EQ(value("SELECT count(*) FROM conflict"), "0");
  EXPECT_EQ(progress(), Lsn{0x1000000});
}

TEST_F(ApplierTest, CoalescedUpdatesEndAsTheLastTupleAndTriggersSeeEveryChange) {
  sql_->exec("CREATE TABLE acc (id int PRIMARY KEY, bal int, note text)");
  sql_->exec("CREATE TABLE hist (id int PRIMARY KEY, v text)");
  // A table with a trigger is never coalesced: the trigger sees every update, in order. (It
  // is declared ENABLE ALWAYS: the apply session runs as a replica, where ordinary
  // triggers do not fire.)
  sql_->exec("CREATE TABLE audited (id int PRIMARY KEY, v text)");
  sql_->exec("CREATE TABLE audit_log (n serial PRIMARY KEY, v text)");
  sql_->exec(
      "CREATE FUNCTION log_v() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO "
      "audit_log (v) VALUES (NEW.v); RETURN NEW; END $$");
  sql_->exec("CREATE TRIGGER log_v AFTER UPDATE ON audited FOR EACH ROW EXECUTE FUNCTION log_v()");
  sql_->exec("ALTER TABLE audited ENABLE ALWAYS TRIGGER log_v");
  auto acc = make_relation(20, "public", "acc", {{"id", true}, {"bal", false}, {"note", false}});
  auto hist = make_relation(21, "public", "hist", {{"id", true}, {"v", false}});
  auto audited = make_relation(22, "public", "audited", {{"id", true}, {"v", false}});
  auto a = applier();
  Source source(*a);
  source.transaction([&] {
    for (int id = 1; id <= 3; ++id) source.insert(acc, {T(std::to_string(id)), T("0"), T("n")});
    source.insert(audited, {T("1"), T("a")});
  });
  for (int i = 1; i <= 30; ++i) {
    source.transaction([&] {
      source.update(acc, 0, {}, {T("1"), T(std::to_string(i * 10)), T("t\"ab\\le\t{x,y}")});
      source.update(acc, 0, {}, {T("2"), T(std::to_string(i)), N});
      source.insert(hist, {T(std::to_string(i)), T("h")});
      if (i % 10 == 0) source.update(audited, 0, {}, {T("1"), T(std::to_string(i))});
    });
  }
  // Unchanged TOAST is coalesced too: the key ends with the union of the columns carried.
  Lsn last = source.transaction([&] {
    source.update(acc, 0, {}, {T("3"), T("7"), T("x")});
    source.update(acc, 0, {}, {T("3"), T("8"), U});
  });
  a->flush();
  EXPECT_EQ(value("SELECT string_agg(id || ':' || bal || ':' || coalesce(note, 'NULL'), ' ' "
                  "ORDER BY id) FROM acc"),
            "1:300:t\"ab\\le\t{x,y} 2:30:NULL 3:8:x");
  EXPECT_EQ(value("SELECT count(*) FROM hist"), "30");
  EXPECT_EQ(value("SELECT string_agg(v, ',' ORDER BY n) FROM audit_log"), "10,20,30");
  EXPECT_EQ(a->counters().rows_updated, 65u);
  EXPECT_EQ(progress(), last);
}

TEST_F(ApplierTest, CoalescedUpdatesOfOneHugeTransactionGoInBoundedBatches) {
  sql_->exec("CREATE TABLE counters (id int PRIMARY KEY, n int)");
  auto relation = make_relation(23, "public", "counters", {{"id", true}, {"n", false}});
  repl::ApplierOptions options;
  options.copy_max_bytes = 64;  // a batch is sent every few rows
  auto a = applier(options);
  Source source(*a);
  source.transaction([&] {
    for (int id = 1; id <= 5; ++id) source.insert(relation, {T(std::to_string(id)), T("0")});
  });
  source.transaction([&] {
    for (int i = 1; i <= 500; ++i) {
      source.update(relation, 0, {}, {T(std::to_string(i % 5 + 1)), T(std::to_string(i))});
    }
  });
  a->flush();
  EXPECT_EQ(value("SELECT string_agg(id || ':' || n, ' ' ORDER BY id) FROM counters"),
            "1:500 2:496 3:497 4:498 5:499");
  EXPECT_GT(a->counters().statements_sent, 20u);
}

// Updates that carry unchanged TOAST or different column sets, and deletes, of many keys in
// one group go set-based: a handful of statements, not one per row; and the rows end as the
// source left them.
TEST_F(ApplierTest, UpdatesWithUnchangedToastAndDeletesGoSetBased) {
  sql_->exec("CREATE TABLE toasted (id int PRIMARY KEY, small int, big text)");
  auto relation =
      make_relation(26, "public", "toasted", {{"id", true}, {"small", false}, {"big", false}});
  std::string body(5'000, 'b');
  auto a = applier();
  Source source(*a);
  source.transaction([&] {
    for (int id = 1; id <= 40; ++id)
      source.insert(relation, {T(std::to_string(id)), T("0"), T(body)});
  });
  a->flush();
  auto sent_before = a->counters().statements_sent;
  Lsn last;
  for (int id = 1; id <= 40; ++id) {
    last = source.transaction([&] {
      source.update(relation, 0, {}, {T(std::to_string(id)), T(std::to_string(id * 2)), U});
    });
  }
  last = source.transaction([&] {
    // Key 1: a new big value, then unchanged TOAST again; key 2 the other way round.
    source.update(relation, 0, {}, {T("1"), T("5"), T("new body")});
    source.update(relation, 0, {}, {T("1"), T("6"), U});
    source.update(relation, 0, {}, {T("2"), N, T("two")});
    // Updated above, now deleted: the update need not be sent, the delete must find the row.
    for (int id = 21; id <= 40; ++id) source.remove(relation, 'K', {T(std::to_string(id)), N, N});
  });
  a->flush();
  // One delete, two update shapes (their statements prepared once), progress and commit.
  EXPECT_LT(a->counters().statements_sent - sent_before, 15u);
  EXPECT_EQ(value("SELECT string_agg(id || ':' || coalesce(small::text, 'NULL') || ':' || "
                  "CASE WHEN big = repeat('b', 5000) THEN 'body' ELSE big END, ' ' ORDER BY id) "
                  "FROM toasted WHERE id <= 3"),
            "1:6:new body 2:NULL:two 3:6:body");
  EXPECT_EQ(value("SELECT count(*) || ':' || sum(small) FROM toasted"),
            "20:420");  // 6 + 2 * (3 + ... + 20)
  EXPECT_EQ(a->counters().rows_deleted, 20u);
  EXPECT_EQ(progress(), last);
}

TEST_F(ApplierTest, UpdateOfANewTableWhileACopyIsOpen) {
  sql_->exec("CREATE TABLE copied (id int PRIMARY KEY, v text)");
  sql_->exec("CREATE TABLE later (id int PRIMARY KEY, v text)");
  sql_->exec("INSERT INTO later VALUES (1, 'old')");
  auto copied = make_relation(24, "public", "copied", {{"id", true}, {"v", false}});
  auto later = make_relation(25, "public", "later", {{"id", true}, {"v", false}});
  auto a = applier();
  Source source(*a);
  source.transaction([&] {
    for (int id = 1; id <= 40; ++id) source.insert(copied, {T(std::to_string(id)), T("c")});
    source.update(later, 0, {}, {T("1"), T("new")});
    source.insert(copied, {T("41"), T("c")});
  });
  a->flush();
  EXPECT_EQ(value("SELECT count(*) FROM copied"), "41");
  EXPECT_EQ(value("SELECT v FROM later"), "new");
  EXPECT_GE(a->counters().copy_batches, 1u);
}

TEST_F(ApplierTest, BinaryCopyForCommonTypesFallsBackToTextForAValueItCannotEncode) {
  sql_->exec(
      "CREATE TABLE bin_expected (id bigint PRIMARY KEY, a int, s text, at timestamptz, d date, "
      "  u uuid, raw bytea, f float8, ok bool, doc jsonb, v varchar(20), c char(4));"
      "CREATE TABLE bin_applied (LIKE bin_expected INCLUDING ALL)");
  auto relation = with_types(make_relation(21, "public", "bin_applied",
                                           {{"id", true},
                                            {"a", false},
                                            {"s", false},
                                            {"at", false},
                                            {"d", false},
                                            {"u", false},
                                            {"raw", false},
                                            {"f", false},
                                            {"ok", false},
                                            {"doc", false},
                                            {"v", false},
                                            {"c", false}}),
                             {20, 23, 25, 1184, 1082, 2950, 17, 701, 16, 3802, 1043, 1042});
  std::vector<std::vector<std::string>> values;
  for (int i = 0; i < 80; ++i) {
    values.push_back({std::to_string(i * 1000003LL - 40'000'000), std::to_string(-i),
                      fmt::format("row {}\t\\ żółw", i),
                      fmt::format("{:04}-0{}-1{} 0{}:30:00.{:06}+05:30{}", 1990 + i, i % 9 + 1,
                                  i % 10, i % 10, i * 7, i % 7 == 0 ? " BC" : ""),
                      fmt::format("{:04}-12-31", 1 + i * 97),
                      "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
                      // Row 50 comes as bytea_output = escape would print it: binary COPY
                      // cannot take it, so the rest of the run goes as text.
                      i == 50 ? "abc\\000" : "\\x00ff5c0a09", fmt::format("{}.25e-3", i),
                      i % 2 ? "t" : "f", "{\"k\": [1, \"x\"]}", "varchar", "ab"});
  }
  for (const auto& row : values) {
    std::vector<repl::Param> params;
    for (const auto& value : row) params.push_back(repl::Param{value});
    sql_->exec("INSERT INTO bin_expected VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12)",
               std::span<const repl::Param>(params));
  }
  auto a = applier();
  Source source(*a);
  Lsn end = source.transaction([&] {
    for (std::size_t i = 0; i < values.size(); ++i) {
      Tuple tuple;
      for (const auto& value : values[i]) tuple.push_back(T(value));
      if (i % 9 == 3) tuple[2] = N;
      source.insert(relation, tuple);
    }
  });
  a->flush();
  EXPECT_EQ(a->durable_lsn(), end);
  sql_->exec("UPDATE bin_expected SET s = NULL WHERE (id + 40000000) / 1000003 % 9 = 3");
  EXPECT_EQ(table_fingerprint(*sql_, "bin_applied", "id"),
            table_fingerprint(*sql_, "bin_expected", "id"));
  auto counters = a->counters();
  EXPECT_EQ(counters.rows_inserted, 80u);
  EXPECT_EQ(counters.copy_batches, 2u);         // rows 0-49 binary, then 50-79 as text
  EXPECT_EQ(counters.binary_copy_batches, 1u);  // the first
}

// Inserts 0..39 into the table of `relation`, which holds 17 already, in two transactions
// that go as COPY: the error names key 17 and the second transaction's commit LSN.
void ApplierTest::expect_duplicate_key_named(const repl::Relation& relation) {
  auto a = applier();
  Source source(*a);
  std::vector<std::string> ids;
  for (int i = 0; i < 40; ++i) ids.push_back(std::to_string(i));
  source.transaction([&] {
    for (int i = 0; i < 10; ++i) source.insert(relation, {T(ids[static_cast<std::size_t>(i)])});
  });
  Lsn second = source.next_commit();
  try {
    source.transaction([&] {
      for (int i = 10; i < 40; ++i) source.insert(relation, {T(ids[static_cast<std::size_t>(i)])});
    });
    a->flush();
    FAIL() << "no error";
  } catch (const repl::SqlError& e) {
    std::string what = e.what();
    EXPECT_EQ(e.sqlstate(), "23505");
    EXPECT_NE(what.find("(\"id\")=(17)"), std::string::npos) << what;
    EXPECT_NE(what.find(second.to_string()), std::string::npos) << what;
  }
}

TEST_F(ApplierTest, DuplicateKeyInCopyNamesTheRowAndTransaction) {
  sql_->exec("CREATE TABLE dup (id int PRIMARY KEY); INSERT INTO dup VALUES (17)");
  expect_duplicate_key_named(make_relation(9, "public", "dup", {{"id", true}}));
}

TEST_F(ApplierTest, DuplicateKeyInBinaryCopyNamesTheRowAndTransaction) {
  sql_->exec("CREATE TABLE dup_bin (id int PRIMARY KEY); INSERT INTO dup_bin VALUES (17)");
  expect_duplicate_key_named(
      with_types(make_relation(10, "public", "dup_bin", {{"id", true}}), {23}));
}

TEST_F(ApplierTest, TransactionsAtOrBelowAppliedLsnAreSkipped) {
  sql_->exec("CREATE TABLE once (id int PRIMARY KEY, v int)");
  auto relation = make_relation(10, "public", "once", {{"id", true}, {"v", false}});
  Lsn old_commit{0x0F00000};  // before the progress record's 0/1000000
  Lsn end1, end2;
  {
    auto a = applier();
    EXPECT_EQ(a->resume_lsn(), Lsn{0x1000000});
    Source source(*a);
    source.transaction([&] { source.insert(relation, {T("0"), T("0")}); }, old_commit);
    end1 = source.transaction([&] { source.insert(relation, {T("1"), T("1")}); });
    end2 = source.transaction([&] { source.update(relation, 0, {}, {T("1"), T("2")}); });
    a->flush();
    EXPECT_EQ(a->counters().transactions_skipped, 1u);
    EXPECT_EQ(a->counters().transactions_applied, 2u);
  }
  EXPECT_EQ(progress(), end2);
  // A restart resends from an older confirmed position: everything is skipped.
  auto b = applier();
  EXPECT_EQ(b->resume_lsn(), end2);
  Source replay(*b);
  replay.transaction([&] { replay.insert(relation, {T("1"), T("1")}); }, Lsn{end1.value() - 0x28});
  replay.transaction(
      [&] {
        replay.update(relation, 0, {}, {T("1"), T("2")});
      },
      Lsn{end2.value() - 0x28});
  Lsn end3 = replay.transaction(
      [&] {
        replay.update(relation, 0, {}, {T("1"), T("3")});
      },
      end2 + 0x100);
  b->flush();
  EXPECT_EQ(b->counters().transactions_skipped, 2u);
  EXPECT_EQ(b->counters().transactions_applied, 1u);
  EXPECT_EQ(value("SELECT string_agg(id || '=' || v, ',') FROM once"), "1=3");
  EXPECT_EQ(progress(), end3);
}

TEST_F(ApplierTest, GroupsTransactionsAndWritesIdlePosition) {
  sql_->exec("CREATE TABLE grouped (id int PRIMARY KEY, v int)");
  auto relation = make_relation(11, "public", "grouped", {{"id", true}, {"v", false}});
  repl::ApplierOptions options;
  options.group_max_rows = 100;
  options.group_max_delay = std::chrono::hours(1);
  options.pipeline_max_commands = 16;  // forces reads while sending
  options.idle_progress_interval = std::chrono::milliseconds(0);
  auto a = applier(options);
  Source source(*a);
  std::vector<std::string> ids;
  for (int i = 0; i < 1000; ++i) ids.push_back(std::to_string(i));
  Lsn end;
  for (int i = 0; i < 1000; ++i) {
    end = source.transaction([&] {
      source.insert(relation, {T(ids[static_cast<std::size_t>(i)]), T("1")});
      source.update(relation, 0, {}, {T(ids[static_cast<std::size_t>(i)]), T("2")});
    });
  }
  // 2 rows a transaction, a group every 100 rows: 20 groups committed without flush().
  EXPECT_EQ(a->counters().groups_committed, 20u);
  EXPECT_EQ(a->durable_lsn(), end);
  EXPECT_EQ(value("SELECT count(*) || ':' || sum(v) FROM grouped"), "1000:2000");
  Lsn wal_end = end + 0x10000;
  a->idle(wal_end);
  EXPECT_EQ(progress(), wal_end);
  EXPECT_EQ(a->durable_lsn(), wal_end);
}

TEST_F(ApplierTest, AsynchronousCommitConfirmsOnlyFlushedWal) {
  sql_->exec("CREATE TABLE async_t (id int PRIMARY KEY)");
  auto relation = make_relation(12, "public", "async_t", {{"id", true}});
  repl::ApplierOptions options;
  options.synchronous_commit = "off";
  auto a = applier(options);
  Source source(*a);
  Lsn end = source.transaction([&] { source.insert(relation, {T("1")}); });
  a->flush();
  EXPECT_LE(a->durable_lsn(), end);
  sql_->exec("CHECKPOINT");  // flushes the target's WAL
  a->idle(end);
  EXPECT_EQ(a->durable_lsn(), end);
  EXPECT_EQ(value("SELECT count(*) FROM async_t"), "1");
}

// A streamed transaction applied live on the second connection while the first one has a
// COPY of other transactions' inserts open: dropping it, and committing it, must not disturb
// that COPY; only what committed on the source ends up on the target.
TEST_F(ApplierTest, LiveStreamedTransactionsBesideAnOpenCopy) {
  sql_->exec(
      "CREATE TABLE beside_live (id int PRIMARY KEY); CREATE TABLE beside_copy (id int PRIMARY "
      "KEY)");
  auto live_rel = with_types(make_relation(31, "public", "beside_live", {{"id", true}}), {23});
  auto copied_rel = with_types(make_relation(32, "public", "beside_copy", {{"id", true}}), {23});
  repl::ApplierOptions options;
  options.streamed_conninfo = target_->conninfo();
  auto a = applier(options);
  Source source(*a);
  std::vector<std::string> ids;
  for (int i = 0; i < 200; ++i) ids.push_back(std::to_string(i));
  auto insert_live = [&](repl::ChangeSink& sink, int from, int to) {
    for (int i = from; i < to; ++i) {
      Tuple tuple{T(ids[static_cast<std::size_t>(i)])};
      sink.insert(live_rel, {std::nullopt, live_rel.id, tuple});
    }
  };
  auto copy_rows = [&](int from, int to) {
    source.transaction([&] {
      for (int i = from; i < to; ++i)
        source.insert(copied_rel, {T(ids[static_cast<std::size_t>(i)])});
    });
  };

  // Dropped (the source rolled it back) while a COPY is open on the first connection.
  repl::ChangeSink* live = a->begin_streamed({repl::Xid{9001}, Lsn{}, repl::PgTimestamp{}, true});
  ASSERT_NE(live, nullptr);
  insert_live(*live, 0, 50);
  a->streamed_segment();
  copy_rows(0, 40);  // a run of 40: COPY, left open for more
  a->abort_streamed();
  copy_rows(40, 60);
  a->flush();

  // Committed while another COPY is open; tick() then folds it in.
  live = a->begin_streamed({repl::Xid{9002}, Lsn{}, repl::PgTimestamp{}, true});
  ASSERT_NE(live, nullptr);
  insert_live(*live, 100, 150);
  a->streamed_segment();
  Lsn commit = source.next_commit();
  a->streamed_segment();
  live->commit_transaction({repl::Xid{9002}, commit, commit + 0x28, repl::PgTimestamp{}});
  Lsn last = source.transaction(
      [&] {
        for (int i = 60; i < 100; ++i)
          source.insert(copied_rel, {T(ids[static_cast<std::size_t>(i)])});
      },
      commit + 0x100);
  a->tick();
  a->flush();

  EXPECT_EQ(value("SELECT count(*) || ':' || min(id) || ':' || max(id) FROM beside_copy"),
            "100:0:99");
  EXPECT_EQ(value("SELECT count(*) || ':' || min(id) || ':' || max(id) FROM beside_live"),
            "50:100:149");
  EXPECT_EQ(a->durable_lsn(), last);
  EXPECT_EQ(progress(), last);
  auto counters = a->counters();
  EXPECT_EQ(counters.rows_inserted, 150u);  // not the 50 rolled back
}

// A rate-limited idle position (from a keepalive that came while a live streamed transaction
// was open) must not be written after that transaction committed on the second connection:
// the progress record would go back, and a restart would apply it again.
TEST_F(ApplierTest, IdlePositionNeverMovesProgressBelowALiveStreamedCommit) {
  sql_->exec("CREATE TABLE live_t (id int PRIMARY KEY)");
  auto rel = with_types(make_relation(41, "public", "live_t", {{"id", true}}), {23});
  repl::ApplierOptions options;
  options.streamed_conninfo = target_->conninfo();
  options.idle_progress_interval = std::chrono::milliseconds(300);
  auto a = applier(options);
  Source source(*a);
  Lsn end1 = source.transaction([&] { source.insert(rel, {T("1")}); });
  a->flush();
  a->idle(end1 + 0x100);  // written now
  repl::ChangeSink* live = a->begin_streamed({repl::Xid{9001}, Lsn{}, repl::PgTimestamp{}, true});
  ASSERT_NE(live, nullptr);
  live->insert(rel, {std::nullopt, rel.id, Tuple{T("2")}});
  // A keepalive between the streamed transaction's blocks: too soon to write, kept pending.
  a->idle(end1 + 0x200);
  // Stream Commit (TransactionAssembler::commit_eager).
  a->streamed_segment();
  Lsn commit = end1 + 0x1000;
  Lsn end_t = commit + 0x28;
  live->commit_transaction({repl::Xid{9001}, commit, end_t, repl::PgTimestamp{}});
  a->flush();
  EXPECT_EQ(progress(), end_t);
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  a->tick();  // the run loop's tick after the poll
  EXPECT_EQ(value("SELECT count(*) FROM live_t"), "2");
  EXPECT_GE(progress(), end_t) << "progress record moved back below the committed streamed "
                                  "transaction: a restart from it applies it again";
  EXPECT_GE(a->durable_lsn(), end_t);
}

// With synchronous_commit off, the streamed applier must not report as durable the progress
// row it read when it opened: the first applier may have committed it without a flush yet.
TEST_F(ApplierTest, LiveStreamedCommitReportsOnlyFlushedPositionsWithAsyncCommit) {
  sql_->exec("CREATE TABLE async_live (id int PRIMARY KEY)");
  sql_->exec("ALTER SYSTEM SET wal_writer_delay = '10s'");
  sql_->exec("SELECT pg_reload_conf()");
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  sql_->exec("CHECKPOINT");
  auto rel = with_types(make_relation(42, "public", "async_live", {{"id", true}}), {23});
  repl::ApplierOptions options;
  options.synchronous_commit = "off";
  options.streamed_conninfo = target_->conninfo();
  auto a = applier(options);
  Source source(*a);
  Lsn end_g = source.transaction([&] { source.insert(rel, {T("1")}); });
  a->flush();
  std::string commit_wal = value("SELECT pg_current_wal_insert_lsn()::text");
  repl::ChangeSink* live = a->begin_streamed({repl::Xid{9002}, Lsn{}, repl::PgTimestamp{}, true});
  ASSERT_NE(live, nullptr);
  live->insert(rel, {std::nullopt, rel.id, Tuple{T("2")}});
  a->streamed_segment();
  Lsn commit = end_g + 0x1000;
  live->commit_transaction({repl::Xid{9002}, commit, commit + 0x28, repl::PgTimestamp{}});
  a->flush();
  Lsn durable = a->durable_lsn();
  std::string flushed =
      value(fmt::format("SELECT pg_current_wal_flush_lsn() >= '{}'::pg_lsn", commit_wal));
  if (flushed == "f") {
    EXPECT_LT(durable, end_g) << "durable_lsn() claims a position whose commit is not flushed";
  }
  sql_->exec("ALTER SYSTEM RESET wal_writer_delay");
  sql_->exec("SELECT pg_reload_conf()");
}

TEST_F(ApplierTest, BadOptionsAndMissingProgressAreClearErrors) {
  repl::ApplierOptions options;
  options.synchronous_commit = "sometimes";
  EXPECT_THROW(applier(options), repl::ConfigError);
  options = {};
  options.name = "never-initialized";
  try {
    repl::Applier a(connect(*target_), options);
    FAIL() << "no error";
  } catch (const repl::Error& e) {
    EXPECT_NE(std::string(e.what()).find("pgferry init"), std::string::npos) << e.what();
  }
}
