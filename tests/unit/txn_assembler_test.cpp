// The transaction assembler: captured streams become the ChangeSink's call sequence
// (committed transactions only, in commit order, streamed ones replayed from the spool
// without their aborted subtransactions); ordering and error cases via the encoder.
#include "pgferry/replication/decode/txn_assembler.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <set>

#include "fixtures/fixture_reader.hpp"
#include "support/pgoutput_encoder.hpp"

namespace repl = pgferry::replication;
namespace pg = pgferry::replication::pgoutput;
using namespace pgferry::testing;

namespace {

std::uint64_t be64(std::string_view bytes) {
  std::uint64_t value = 0;
  for (unsigned char c : bytes) value = (value << 8) | c;
  return value;
}

std::string key_of(const pg::ColumnValue& column) {
  if (column.kind == pg::ColumnKind::binary) return std::to_string(be64(column.data));
  return std::string(column.data);
}

// Records the call sequence as short strings ("B", "I t 1", "C", ...).
class RecordingSink : public repl::ChangeSink {
 public:
  void begin_transaction(const repl::TransactionBegin& begin) override {
    EXPECT_FALSE(open_) << "begin inside a transaction";
    open_ = true;
    calls.push_back(begin.streamed ? "BS" : "B");
  }
  void relation(const repl::Relation& relation) override {
    calls.push_back("R " + relation.relname);
  }
  void insert(const repl::Relation& relation, const pg::Insert& insert) override {
    EXPECT_TRUE(open_);
    calls.push_back("I " + relation.relname + " " + key_of(insert.new_tuple[0]));
    if (relation.relname == "t") inserted.insert(key_of(insert.new_tuple[0]));
  }
  void update(const repl::Relation& relation, const pg::Update& update) override {
    EXPECT_TRUE(open_);
    calls.push_back("U " + relation.relname + " " + key_of(update.new_tuple[0]));
  }
  void delete_rows(const repl::Relation& relation, const pg::Delete& del) override {
    EXPECT_TRUE(open_);
    calls.push_back("D " + relation.relname + " " + key_of(del.old_tuple[0]));
  }
  void truncate(std::span<const repl::Relation* const> relations, std::uint8_t flags) override {
    std::string text = fmt::format("T{}", flags);
    for (const auto* relation : relations) text += " " + relation->relname;
    calls.push_back(text);
  }
  void message(const pg::LogicalMessage& message) override {
    calls.push_back(
        std::string("M ") +
        std::string(reinterpret_cast<const char*>(message.content.data()), message.content.size()));
  }
  void commit_transaction(const repl::TransactionCommit& commit) override {
    EXPECT_TRUE(open_);
    EXPECT_GT(commit.end_lsn, last_end_) << "commit order";
    last_end_ = commit.end_lsn;
    open_ = false;
    calls.push_back("C");
  }
  void idle(repl::Lsn wal_end) override { calls.push_back("idle " + wal_end.to_string()); }

  std::vector<std::string> calls;
  std::set<std::string> inserted;

 private:
  bool open_ = false;
  repl::Lsn last_end_;
};

class TempDir {
 public:
  TempDir() {
    char path[] = "/tmp/pgferry-assembler-test-XXXXXX";
    dir_ = ::mkdtemp(path);
  }
  ~TempDir() { std::filesystem::remove_all(dir_); }
  const std::filesystem::path& path() const { return dir_; }

 private:
  std::filesystem::path dir_;
};

void feed(repl::TransactionAssembler& assembler, const std::string& fixture) {
  for (const auto& captured : pgferry::fixtures::read_capture(std::string(PGFERRY_FIXTURES_DIR) +
                                                              "/pgoutput/" + fixture + ".bin")) {
    assembler.on_message(captured.bytes());
  }
}

std::set<std::string> expected_rows() {
  // workload.sql's rows of t that reach a commit, whatever the protocol.
  std::set<std::string> rows = {"1", "2", "4", "400", "50"};
  for (int i = 100; i < 400; ++i) rows.insert(std::to_string(i));
  for (int i = 3000; i < 3300; ++i) rows.insert(std::to_string(i));
  return rows;
}

}  // namespace

TEST(TransactionAssembler, V1PassesCommittedTransactionsThrough) {
  TempDir dir;
  RecordingSink sink;
  repl::TransactionAssembler assembler(sink, dir.path(), 1);
  feed(assembler, "v1");
  EXPECT_EQ(sink.inserted, expected_rows());
  EXPECT_FALSE(assembler.in_transaction());
  EXPECT_EQ(assembler.streamed_transactions(), 0u);
  // The first transaction, exactly.
  ASSERT_GE(sink.calls.size(), 5u);
  EXPECT_EQ(std::vector<std::string>(sink.calls.begin(), sink.calls.begin() + 5),
            (std::vector<std::string>{"B", "R t", "I t 1", "I t 2", "C"}));
  auto has = [&](const std::string& call) {
    return std::find(sink.calls.begin(), sink.calls.end(), call) != sink.calls.end();
  };
  EXPECT_TRUE(has("U t 3"));
  EXPECT_TRUE(has("D t 3"));
  EXPECT_TRUE(has("U toasty 1"));
  EXPECT_TRUE(has("D full_t 1"));
  EXPECT_TRUE(has("T3 t full_t"));
  EXPECT_TRUE(has("M transactional"));
  EXPECT_TRUE(has("M immediate"));
}

TEST(TransactionAssembler, V2StreamedTransactionsReplayOnlyWhatCommitted) {
  TempDir dir;
  RecordingSink sink;
  repl::TransactionAssembler assembler(sink, dir.path(), 2);
  feed(assembler, "v2_binary");
  // Same rows as v1: the rolled-back savepoint (1000-1299) and the aborted streamed
  // transaction (2000-2299) never reach the sink.
  EXPECT_EQ(sink.inserted, expected_rows());
  EXPECT_EQ(assembler.streamed_transactions(), 2u);
  EXPECT_EQ(assembler.open_streamed_transactions(), 0u);
  EXPECT_EQ(assembler.spooled_bytes(), 0u);
  EXPECT_EQ(std::count(sink.calls.begin(), sink.calls.end(), "BS"), 2);
  // The spool directory is empty again.
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

TEST(TransactionAssembler, TwoPhaseIsRefused) {
  TempDir dir;
  RecordingSink sink;
  repl::TransactionAssembler assembler(sink, dir.path(), 3);
  try {
    feed(assembler, "v3");
    FAIL() << "two-phase accepted";
  } catch (const repl::ProtocolError& e) {
    EXPECT_NE(std::string(e.what()).find("two_phase"), std::string::npos) << e.what();
  }
}

TEST(TransactionAssembler, InterleavedStreamCommitsInCommitOrder) {
  TempDir dir;
  RecordingSink sink;
  repl::TransactionAssembler assembler(sink, dir.path(), 2);
  auto on = [&](const std::vector<std::byte>& bytes) { assembler.on_message(bytes); };
  // Streamed xid 500 starts first, a plain transaction commits while it is open, then 500.
  on(encode_stream_start(500, true));
  on(encode_relation(500, 1, "s", {"id"}));
  on(encode_insert(500, 1, {"a"}));
  on(encode_insert(501, 1, {"sub"}));
  on(encode_stream_stop());
  EXPECT_GT(assembler.spooled_bytes(), 0u);
  on(encode_begin(0x100, 600));
  on(encode_relation(std::nullopt, 2, "p", {"id"}));
  on(encode_insert(std::nullopt, 2, {"x"}));
  on(encode_commit(0x100, 0x110));
  on(encode_stream_abort(500, 501));
  on(encode_stream_start(500, false));
  on(encode_insert(500, 1, {"b"}));
  on(encode_stream_stop());
  on(encode_stream_commit(500, 0x200, 0x210));
  EXPECT_EQ(sink.calls, (std::vector<std::string>{"B", "R p", "I p x", "C", "BS", "R s", "I s a",
                                                  "I s b", "C"}));
  EXPECT_EQ(assembler.open_streamed_transactions(), 0u);
}

TEST(TransactionAssembler, KeepaliveIsIdleOnlyOutsideATransaction) {
  TempDir dir;
  RecordingSink sink;
  repl::TransactionAssembler assembler(sink, dir.path(), 2);
  assembler.on_keepalive(repl::Lsn(0x10));
  assembler.on_message(encode_begin(0x100, 600));
  assembler.on_keepalive(repl::Lsn(0x20));  // mid-transaction: not idle
  assembler.on_message(encode_commit(0x100, 0x110));
  assembler.on_keepalive(repl::Lsn(0x120));
  EXPECT_EQ(sink.calls, (std::vector<std::string>{"idle 0/10", "B", "C", "idle 0/120"}));
}

TEST(TransactionAssembler, ProtocolViolationsThrow) {
  TempDir dir;
  RecordingSink sink;
  repl::TransactionAssembler assembler(sink, dir.path(), 2);
  // A change for a relation never described.
  assembler.on_message(encode_begin(0x100, 600));
  EXPECT_THROW(assembler.on_message(encode_insert(std::nullopt, 99, {"x"})), repl::ProtocolError);
  // A tuple whose width does not match its Relation.
  assembler.on_message(encode_relation(std::nullopt, 3, "w", {"id", "v"}));
  EXPECT_THROW(assembler.on_message(encode_insert(std::nullopt, 3, {"x"})), repl::ProtocolError);
  // Commit LSN different from Begin's final LSN.
  EXPECT_THROW(assembler.on_message(encode_commit(0x999, 0x9a0)), repl::ProtocolError);

  repl::TransactionAssembler fresh(sink, dir.path(), 2);
  EXPECT_THROW(fresh.on_message(encode_commit(0x1, 0x2)), repl::ProtocolError);
  EXPECT_THROW(fresh.on_message(encode_stream_start(7, false)), repl::ProtocolError);
  repl::TransactionAssembler other(sink, dir.path(), 2);
  EXPECT_THROW(other.on_message(encode_stream_commit(8, 0x10, 0x20)), repl::ProtocolError);
}
