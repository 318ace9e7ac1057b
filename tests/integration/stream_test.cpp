// ReplicationStream against a real source (ClusterPairTest's source, with
// logical_decoding_work_mem = 64kB so that large transactions are streamed): the changes
// made are exactly the changes delivered; aborted streamed transactions and rolled-back
// savepoints deliver nothing; the slot is confirmed only as far as confirm() said.
#include "pgferry/replication/stream/stream.hpp"

#include <fmt/format.h>

#include <filesystem>
#include <map>
#include <thread>

#include "support/harness.hpp"

namespace repl = pgferry::replication;
namespace pg = pgferry::replication::pgoutput;
using namespace pgferry::testing;

namespace {

std::string value_text(const pg::ColumnValue& column) {
  switch (column.kind) {
    case pg::ColumnKind::null:
      return "NULL";
    case pg::ColumnKind::unchanged_toast:
      return "<toast>";
    case pg::ColumnKind::text:
    case pg::ColumnKind::binary:
      return std::string(column.data);
  }
  return "?";
}

std::string row_text(pg::TupleView tuple) {
  std::string out;
  for (const auto& column : tuple) {
    if (!out.empty()) out += ",";
    out += value_text(column);
  }
  return out;
}

// Keeps one line per change of committed transactions.
class LineSink : public repl::ChangeSink {
 public:
  void begin_transaction(const repl::TransactionBegin& begin) override {
    streamed_ += begin.streamed ? 1 : 0;
  }
  void relation(const repl::Relation&) override {}
  void insert(const repl::Relation& relation, const pg::Insert& insert) override {
    lines.push_back(fmt::format("I {} {}", relation.relname, row_text(insert.new_tuple)));
  }
  void update(const repl::Relation& relation, const pg::Update& update) override {
    lines.push_back(fmt::format("U {} {}{}", relation.relname, row_text(update.new_tuple),
                                update.old_kind ? " old " + row_text(update.old_tuple) : ""));
  }
  void delete_rows(const repl::Relation& relation, const pg::Delete& del) override {
    lines.push_back(fmt::format("D {} {}", relation.relname, row_text(del.old_tuple)));
  }
  void truncate(std::span<const repl::Relation* const> relations, std::uint8_t) override {
    for (const auto* relation : relations) lines.push_back("T " + relation->relname);
  }
  void commit_transaction(const repl::TransactionCommit& commit) override {
    last_commit_end = commit.end_lsn;
    ++commits;
  }
  void idle(repl::Lsn wal_end) override { idle_at = std::max(idle_at, wal_end); }

  std::vector<std::string> lines;
  repl::Lsn last_commit_end;
  repl::Lsn idle_at;
  int commits = 0;
  int streamed_ = 0;
};

class Stream : public ClusterPairTest {
 protected:
  static void SetUpTestSuite() {
    ClusterPairTest::SetUpTestSuite();
    auto conn = connect(source());
    conn.exec("ALTER SYSTEM SET logical_decoding_work_mem = '64kB'");
    conn.exec("SELECT pg_reload_conf()");
  }

  // Creates table, publication and slot (named after the test) on the source.
  void SetUp() override {
    name_ = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    for (auto& c : name_) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    conn_ = connect(source());
    conn_.exec(fmt::format("CREATE TABLE {} (id bigint PRIMARY KEY, a int, b text)", name_));
    conn_.exec(fmt::format("CREATE PUBLICATION {0} FOR TABLE {0}", name_));
    conn_.exec(fmt::format("SELECT pg_create_logical_replication_slot('{}', 'pgoutput')", name_));
    spool_dir_ = std::filesystem::temp_directory_path() / ("pgferry-test-spool-" + name_);
  }

  void TearDown() override {
    conn_.exec(fmt::format(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = "
        "'{}' AND NOT active",
        name_));
    std::filesystem::remove_all(spool_dir_);
  }

  repl::StreamOptions options() const {
    repl::StreamOptions o;
    o.slot = name_;
    o.publications = {name_};
    o.spool_dir = spool_dir_;
    o.status_interval = std::chrono::milliseconds(200);
    return o;
  }

  repl::Lsn current_lsn() const {
    return *repl::Lsn::parse(query_value(conn_, "SELECT pg_current_wal_lsn()"));
  }

  // Polls until every transaction committed before `lsn` has been delivered.
  void drain(repl::ReplicationStream& stream, LineSink& sink, repl::Lsn lsn) {
    ASSERT_TRUE(wait_until([&] {
      stream.poll(std::chrono::milliseconds(50));
      return sink.last_commit_end >= lsn || sink.idle_at >= lsn;
    })) << "stream did not reach "
        << lsn.to_string();
  }

  std::string name_;
  repl::Connection conn_;
  std::filesystem::path spool_dir_;
};

}  // namespace

TEST_F(Stream, ChangesDecodeToExactlyWhatWasDone) {
  conn_.exec(fmt::format("ALTER TABLE {} ADD COLUMN big text", name_));
  conn_.exec(fmt::format("ALTER TABLE {} ALTER COLUMN big SET STORAGE EXTERNAL", name_));
  LineSink sink;
  repl::ReplicationStream stream(source().conninfo(), options(), sink);
  stream.start();
  EXPECT_EQ(stream.protocol_version(), 3);  // PostgreSQL 15
  auto t = name_;
  conn_.exec(fmt::format("INSERT INTO {} VALUES (1, 10, 'one', NULL), (2, NULL, NULL, NULL)", t));
  conn_.exec(fmt::format("UPDATE {} SET a = 11 WHERE id = 1", t));
  conn_.exec(fmt::format("UPDATE {} SET id = 3 WHERE id = 2", t));
  conn_.exec(fmt::format("UPDATE {} SET big = repeat('x', 5000) WHERE id = 1", t));
  conn_.exec(fmt::format("UPDATE {} SET a = 12 WHERE id = 1", t));  // big unchanged: 'u'
  conn_.exec(fmt::format("DELETE FROM {} WHERE id = 3", t));
  conn_.exec(fmt::format("TRUNCATE {}", t));
  drain(stream, sink, current_lsn());
  std::string big(5000, 'x');
  EXPECT_EQ(sink.lines, (std::vector<std::string>{
                            "I " + t + " 1,10,one,NULL",
                            "I " + t + " 2,NULL,NULL,NULL",
                            "U " + t + " 1,11,one,NULL",
                            "U " + t + " 3,NULL,NULL,NULL old 2,NULL,NULL,NULL",
                            "U " + t + " 1,11,one," + big,
                            "U " + t + " 1,12,one,<toast>",
                            "D " + t + " 3,NULL,NULL,NULL",
                            "T " + t,
                        }));
  EXPECT_EQ(sink.streamed_, 0);
  stream.stop();
}

TEST_F(Stream, StreamedTransactionsDeliverOnlySurvivingRows) {
  LineSink sink;
  repl::ReplicationStream stream(source().conninfo(), options(), sink);
  stream.start();
  auto t = name_;
  // Aborted after being streamed: nothing.
  conn_.exec(fmt::format(
      "BEGIN; INSERT INTO {} SELECT g, g, repeat('a', 300) FROM generate_series(5000, 5999) g; "
      "ROLLBACK;",
      t));
  // Streamed with a rolled-back savepoint: 1000 rows before it and one after survive.
  conn_.exec(fmt::format(
      "BEGIN;"
      "INSERT INTO {0} SELECT g, g, repeat('s', 300) FROM generate_series(1, 1000) g;"
      "SAVEPOINT sp;"
      "INSERT INTO {0} SELECT g, g, repeat('r', 300) FROM generate_series(2001, 3000) g;"
      "ROLLBACK TO SAVEPOINT sp;"
      "SAVEPOINT kept; INSERT INTO {0} VALUES (4000, 0, 'kept'); RELEASE SAVEPOINT kept;"
      "INSERT INTO {0} VALUES (4001, 0, 'after');"
      "COMMIT;",
      t));
  repl::Lsn end = current_lsn();
  // While streaming, the spool holds bytes; it is empty once the commit replayed.
  drain(stream, sink, end);
  EXPECT_EQ(sink.streamed_, 1) << "the transaction was not streamed";
  ASSERT_EQ(sink.lines.size(), 1002u);
  for (int i = 0; i < 1000; ++i) {
    ASSERT_EQ(sink.lines[i], fmt::format("I {} {},{},{}", t, i + 1, i + 1, std::string(300, 's')));
  }
  EXPECT_EQ(sink.lines[1000], "I " + t + " 4000,0,kept");
  EXPECT_EQ(sink.lines[1001], "I " + t + " 4001,0,after");
  EXPECT_EQ(stream.spooled_bytes(), 0u);
  EXPECT_EQ(stream.assembler()->open_streamed_transactions(), 0u);
  stream.stop();
  // The source agrees on what survived.
  EXPECT_EQ(query_value(conn_, fmt::format("SELECT count(*) FROM {}", t)), "1002");
}

namespace {

// A sink that takes streamed transactions as they stream (into `live`).
class LiveSink : public LineSink {
 public:
  repl::ChangeSink* begin_streamed(const repl::TransactionBegin& begin) override {
    live = LineSink{};
    live.begin_transaction(begin);
    ++offered;
    return &live;
  }
  void streamed_segment() override { ++segments; }
  void abort_streamed() override {
    ++aborted;
    live = LineSink{};
  }
  LineSink live;
  int offered = 0;
  int segments = 0;
  int aborted = 0;
};

}  // namespace

TEST_F(Stream, StreamedTransactionIsDeliveredAsItStreams) {
  LiveSink sink;
  repl::ReplicationStream stream(source().conninfo(), options(), sink);
  stream.start();
  auto t = name_;
  auto x = connect(source());
  x.exec("BEGIN");
  x.exec(fmt::format("INSERT INTO {} SELECT g, g, repeat('a', 300) FROM generate_series(1, 2000) g",
                     t));
  // Not committed yet, and rows of it are there already (all but what the walsender still
  // holds under logical_decoding_work_mem).
  ASSERT_TRUE(wait_until([&] {
    stream.poll(std::chrono::milliseconds(50));
    return sink.live.lines.size() >= 1000;
  })) << sink.live.lines.size();
  EXPECT_EQ(sink.commits, 0);
  EXPECT_EQ(sink.live.commits, 0);
  x.exec(fmt::format("UPDATE {} SET a = -a WHERE id <= 10", t));
  x.exec("COMMIT");
  drain(stream, sink, current_lsn());
  ASSERT_TRUE(wait_until([&] {
    stream.poll(std::chrono::milliseconds(50));
    return sink.live.commits == 1;
  }));
  EXPECT_EQ(sink.live.lines.size(), 2010u);
  EXPECT_EQ(sink.live.lines.back(), fmt::format("U {} 10,-10,{}", t, std::string(300, 'a')));
  EXPECT_EQ(sink.lines.size(), 0u);  // nothing replayed to the first sink
  EXPECT_EQ(stream.assembler()->eager_transactions(), 1u);
  EXPECT_GE(sink.segments, 1);  // at least before its commit

  // A subtransaction abort: dropped live, replayed at commit with what survived.
  x.exec("BEGIN");
  x.exec(fmt::format("INSERT INTO {} SELECT g, g, 'b' FROM generate_series(3001, 4000) g", t));
  x.exec("SAVEPOINT s");
  x.exec(fmt::format("INSERT INTO {} SELECT g, g, 'undone' FROM generate_series(5001, 6000) g", t));
  x.exec("ROLLBACK TO SAVEPOINT s");
  x.exec("COMMIT");
  // A rollback: dropped live, nothing anywhere.
  x.exec("BEGIN");
  x.exec(fmt::format("INSERT INTO {} SELECT g, g, 'gone' FROM generate_series(7001, 8000) g", t));
  x.exec("ROLLBACK");
  x.exec(fmt::format("INSERT INTO {} VALUES (9000, 0, 'last')", t));
  drain(stream, sink, current_lsn());
  EXPECT_EQ(sink.offered, 3);
  EXPECT_EQ(sink.aborted, 2);
  ASSERT_EQ(sink.lines.size(), 1001u);
  EXPECT_EQ(sink.lines.front(), fmt::format("I {} 3001,3001,b", t));
  EXPECT_EQ(sink.lines.back(), fmt::format("I {} 9000,0,last", t));
  EXPECT_EQ(stream.assembler()->eager_transactions(), 1u);
  EXPECT_EQ(stream.assembler()->streamed_transactions(), 2u);
  stream.stop();
}

TEST_F(Stream, SlowConsumerWithATinyQueueGetsEverythingInOrder) {
  LineSink sink;
  auto o = options();
  o.receive_buffer_bytes = 4096;  // the receiver waits for the consumer all the time
  repl::ReplicationStream stream(source().conninfo(), o, sink);
  stream.start();
  for (int i = 0; i < 100; ++i) {
    conn_.exec(
        fmt::format("INSERT INTO {} SELECT g, {}, repeat('q', 100) FROM "
                    "generate_series({}, {}) g",
                    name_, i, i * 20, i * 20 + 19));
  }
  repl::Lsn end = current_lsn();
  ASSERT_TRUE(wait_until([&] {
    stream.poll(std::chrono::milliseconds(10));
    std::this_thread::sleep_for(std::chrono::milliseconds(5));  // a slow target
    return sink.last_commit_end >= end;
  }));
  ASSERT_EQ(sink.lines.size(), 2000u);
  for (int i = 0; i < 2000; ++i) {
    ASSERT_EQ(sink.lines[static_cast<std::size_t>(i)],
              fmt::format("I {} {},{},{}", name_, i, i / 20, std::string(100, 'q')));
  }
  EXPECT_EQ(sink.commits, 100);
  stream.confirm(sink.last_commit_end);
  stream.stop();
  EXPECT_EQ(query_value(conn_, fmt::format("SELECT confirmed_flush_lsn FROM pg_replication_slots "
                                           "WHERE slot_name = '{}'",
                                           name_)),
            sink.last_commit_end.to_string());
}

TEST_F(Stream, SlotIsConfirmedOnlyAsFarAsTheConsumerSaid) {
  LineSink sink;
  repl::ReplicationStream stream(source().conninfo(), options(), sink);
  stream.start();
  conn_.exec(fmt::format("INSERT INTO {} VALUES (1, 1, 'a')", name_));
  drain(stream, sink, current_lsn());
  repl::Lsn first = sink.last_commit_end;
  conn_.exec(fmt::format("INSERT INTO {} VALUES (2, 2, 'b')", name_));
  drain(stream, sink, current_lsn());
  ASSERT_GT(sink.last_commit_end, first);
  EXPECT_GE(stream.received_lsn(), first);
  // Only the first transaction is durable on the "target".
  stream.confirm(first);
  stream.confirm(repl::Lsn(1));  // lower: ignored
  EXPECT_EQ(stream.confirmed_lsn(), first);
  stream.stop();
  EXPECT_EQ(query_value(conn_, fmt::format("SELECT confirmed_flush_lsn FROM pg_replication_slots "
                                           "WHERE slot_name = '{}'",
                                           name_)),
            first.to_string());
  // A new session from the confirmed position replays the second transaction only.
  LineSink again;
  auto o = options();
  o.start_lsn = first;
  repl::ReplicationStream resumed(source().conninfo(), o, again);
  resumed.start();
  drain(resumed, again, sink.last_commit_end);
  EXPECT_EQ(again.lines, (std::vector<std::string>{"I " + name_ + " 2,2,b"}));
  resumed.stop();
}

TEST_F(Stream, DecodeCommandPrintsJsonLines) {
  conn_.exec(fmt::format("INSERT INTO {} VALUES (7, 70, 'seven')", name_));
  auto result = run_pgferry({"decode", "--source", source().conninfo(), "--slot", name_,
                             "--publication", name_, "--until-caught-up", "--json"});
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_NE(result.output.find(R"("new":{"a":"70","b":"seven","id":"7"})"), std::string::npos)
      << result.output;
  EXPECT_NE(result.output.find(R"("type":"commit")"), std::string::npos) << result.output;
  // Without --confirm the slot did not move: a second run prints the same insert.
  auto again = run_pgferry({"decode", "--source", source().conninfo(), "--slot", name_,
                            "--publication", name_, "--until-caught-up"});
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_NE(again.output.find("INSERT \"public\".\"" + name_ + "\""), std::string::npos)
      << again.output;
  EXPECT_NE(again.output.find("id='7'"), std::string::npos) << again.output;
  // Bad input: a clear error, usage exit code.
  auto bad = run_pgferry(
      {"decode", "--source", source().conninfo(), "--slot", name_, "--start", "nonsense"});
  EXPECT_EQ(bad.exit_code, 2) << bad.output;
  EXPECT_NE(bad.output.find("--start"), std::string::npos) << bad.output;
}
