// The pgoutput decoder over bytes captured from PostgreSQL 15 (v1-v3) and 18 (v4, streaming
// parallel) (tests/fixtures/pgoutput): every message type and tuple kind decodes to the
// workload's values (workload.sql); every truncation and corruption throws ProtocolError.
#include "pgferry/replication/decode/decoder.hpp"

#include <gtest/gtest.h>

#include <map>
#include <set>

#include "fixtures/fixture_reader.hpp"
#include "support/pgoutput_encoder.hpp"

namespace repl = pgferry::replication;
namespace pg = pgferry::replication::pgoutput;
using pgferry::fixtures::CapturedMessage;
using pgferry::fixtures::read_capture;
using namespace pgferry::testing;

namespace {

std::vector<CapturedMessage> fixture(const std::string& name) {
  return read_capture(std::string(PGFERRY_FIXTURES_DIR) + "/pgoutput/" + name + ".bin");
}

std::string text(const pg::ColumnValue& column) {
  return std::string(column.data);
}

std::uint64_t be64(std::string_view bytes) {
  std::uint64_t value = 0;
  for (unsigned char c : bytes) value = (value << 8) | c;
  return value;
}

}  // namespace

TEST(Decoder, V1FixtureDecodesToTheWorkload) {
  auto messages = fixture("v1");
  repl::Decoder decoder(1);
  std::optional<repl::Lsn> final_lsn;
  int commits = 0;
  std::vector<std::string> inserted_ids;
  bool saw_toast = false, saw_key_update = false, saw_full_update = false, saw_full_delete = false,
       saw_type = false, saw_origin = false, saw_truncate = false;
  std::set<std::string> logical;
  std::map<std::uint32_t, std::string> relations;
  for (const auto& captured : messages) {
    auto message = decoder.decode(captured.bytes());
    if (auto* begin = std::get_if<pg::Begin>(&message)) {
      ASSERT_FALSE(final_lsn) << "nested Begin";
      final_lsn = begin->final_lsn;
      EXPECT_NE(begin->xid.value, 0u);
    } else if (auto* commit = std::get_if<pg::Commit>(&message)) {
      ASSERT_TRUE(final_lsn);
      EXPECT_EQ(commit->commit_lsn, *final_lsn);
      EXPECT_GT(commit->end_lsn, commit->commit_lsn);
      final_lsn.reset();
      ++commits;
    } else if (auto* relation = std::get_if<pg::RelationMessage>(&message)) {
      EXPECT_FALSE(relation->xid);
      relations[relation->id.value] = std::string(relation->relname);
      if (relation->relname == "t") {
        EXPECT_EQ(relation->nspname, "public");
        EXPECT_EQ(relation->replica_identity, 'd');
        ASSERT_EQ(relation->columns.size(), 4u);
        EXPECT_EQ(relation->columns[0].name, "id");
        EXPECT_TRUE(relation->columns[0].is_key());
        EXPECT_EQ(relation->columns[0].type_oid.value, 20u);    // int8
        EXPECT_EQ(relation->columns[1].type_oid.value, 23u);    // int4
        EXPECT_EQ(relation->columns[2].type_oid.value, 25u);    // text
        EXPECT_EQ(relation->columns[3].type_oid.value, 1184u);  // timestamptz
        EXPECT_FALSE(relation->columns[1].is_key());
      }
      if (relation->relname == "full_t") {
        EXPECT_EQ(relation->replica_identity, 'f');
      }
    } else if (auto* insert = std::get_if<pg::Insert>(&message)) {
      ASSERT_TRUE(final_lsn) << "insert outside a transaction";
      if (relations[insert->relation.value] == "t") {
        ASSERT_EQ(insert->new_tuple.size(), 4u);
        EXPECT_EQ(insert->new_tuple[0].kind, pg::ColumnKind::text);
        inserted_ids.push_back(text(insert->new_tuple[0]));
        if (text(insert->new_tuple[0]) == "1") {
          EXPECT_EQ(text(insert->new_tuple[1]), "10");
          EXPECT_EQ(text(insert->new_tuple[2]), "one");
          EXPECT_EQ(text(insert->new_tuple[3]), "2024-01-02 03:04:05+00");
        }
        if (text(insert->new_tuple[0]) == "2") {
          EXPECT_EQ(insert->new_tuple[1].kind, pg::ColumnKind::null);
        }
      }
    } else if (auto* update = std::get_if<pg::Update>(&message)) {
      const auto& rel = relations[update->relation.value];
      if (rel == "toasty") {
        ASSERT_EQ(update->new_tuple.size(), 3u);
        EXPECT_EQ(update->new_tuple[1].kind, pg::ColumnKind::unchanged_toast);
        EXPECT_EQ(text(update->new_tuple[2]), "2");
        saw_toast = true;
      } else if (rel == "t" && update->old_kind == 'K') {
        EXPECT_EQ(text(update->old_tuple[0]), "2");
        EXPECT_EQ(update->old_tuple[1].kind, pg::ColumnKind::null);  // non-key: not sent
        EXPECT_EQ(text(update->new_tuple[0]), "3");
        saw_key_update = true;
      } else if (rel == "t") {
        EXPECT_EQ(update->old_kind, 0);
        EXPECT_TRUE(update->old_tuple.empty());
        EXPECT_EQ(text(update->new_tuple[1]), "11");
      } else if (rel == "full_t") {
        EXPECT_EQ(update->old_kind, 'O');
        EXPECT_EQ(text(update->old_tuple[1]), "a");
        EXPECT_EQ(text(update->new_tuple[1]), "b");
        saw_full_update = true;
      }
    } else if (auto* del = std::get_if<pg::Delete>(&message)) {
      const auto& rel = relations[del->relation.value];
      if (rel == "t") {
        EXPECT_EQ(del->old_kind, 'K');
        EXPECT_EQ(text(del->old_tuple[0]), "3");
      } else if (rel == "full_t") {
        EXPECT_EQ(del->old_kind, 'O');
        EXPECT_EQ(text(del->old_tuple[1]), "b");
        saw_full_delete = true;
      }
    } else if (auto* type = std::get_if<pg::TypeMessage>(&message)) {
      EXPECT_EQ(type->nspname, "public");
      EXPECT_EQ(type->name, "mood");
      saw_type = true;
    } else if (auto* origin = std::get_if<pg::Origin>(&message)) {
      EXPECT_EQ(origin->name, "fx_origin");
      EXPECT_EQ(origin->commit_lsn, repl::Lsn(0xABCDEF));
      saw_origin = true;
    } else if (auto* truncate = std::get_if<pg::Truncate>(&message)) {
      EXPECT_EQ(truncate->flags, pg::Truncate::kCascade | pg::Truncate::kRestartIdentity);
      ASSERT_EQ(truncate->relations.size(), 2u);
      EXPECT_EQ(relations[truncate->relations[0].value], "t");
      EXPECT_EQ(relations[truncate->relations[1].value], "full_t");
      saw_truncate = true;
    } else if (auto* logical_message = std::get_if<pg::LogicalMessage>(&message)) {
      EXPECT_EQ(logical_message->prefix, "fx");
      std::string content(reinterpret_cast<const char*>(logical_message->content.data()),
                          logical_message->content.size());
      EXPECT_EQ(logical_message->transactional, content == "transactional");
      EXPECT_EQ(logical_message->transactional, final_lsn.has_value());
      logical.insert(content);
    } else {
      ADD_FAILURE() << "unexpected message type in a v1 stream: " << captured.type();
    }
  }
  EXPECT_FALSE(final_lsn);
  EXPECT_TRUE(saw_toast && saw_key_update && saw_full_update && saw_full_delete && saw_type &&
              saw_origin && saw_truncate);
  EXPECT_EQ(logical, (std::set<std::string>{"transactional", "immediate"}));
  // 2 + toasty + full_t + typed + origin row + (300 + 1 savepoint survivors) + the two
  // prepared (v1 decodes them at COMMIT PREPARED) + 300 streamed-prepared rows.
  int t_rows = static_cast<int>(inserted_ids.size());
  EXPECT_EQ(t_rows, 2 + 1 + 301 + 1 + 300);
  EXPECT_EQ(std::count(inserted_ids.begin(), inserted_ids.end(), "1000"), 0);  // rolled back
  EXPECT_EQ(std::count(inserted_ids.begin(), inserted_ids.end(), "2000"), 0);  // aborted
  EXPECT_EQ(std::count(inserted_ids.begin(), inserted_ids.end(), "51"), 0);    // rollback prepared
  EXPECT_GE(commits, 15);
}

TEST(Decoder, V2BinaryFixtureStreamsWithXidsAndBinaryValues) {
  auto messages = fixture("v2_binary");
  repl::Decoder decoder(2);
  int blocks = 0, binary_inserts = 0, aborts = 0, sub_aborts = 0, commits = 0;
  std::optional<repl::Xid> block_xid;
  std::set<std::uint32_t> streamed_xids;
  for (const auto& captured : messages) {
    auto message = decoder.decode(captured.bytes());
    if (auto* start = std::get_if<pg::StreamStart>(&message)) {
      EXPECT_TRUE(decoder.in_stream_block());
      EXPECT_EQ(start->first_segment, !streamed_xids.contains(start->xid.value));
      streamed_xids.insert(start->xid.value);
      block_xid = start->xid;
      ++blocks;
    } else if (std::holds_alternative<pg::StreamStop>(message)) {
      EXPECT_FALSE(decoder.in_stream_block());
      block_xid.reset();
    } else if (auto* insert = std::get_if<pg::Insert>(&message)) {
      EXPECT_EQ(insert->xid.has_value(), block_xid.has_value());
      for (const auto& column : insert->new_tuple) {
        EXPECT_TRUE(column.kind == pg::ColumnKind::binary || column.kind == pg::ColumnKind::null);
      }
      if (insert->new_tuple.size() == 4 && insert->new_tuple[0].kind == pg::ColumnKind::binary) {
        ASSERT_EQ(insert->new_tuple[0].data.size(), 8u);  // int8send
        std::uint64_t id = be64(insert->new_tuple[0].data);
        if (id == 1) {
          EXPECT_EQ(be64(insert->new_tuple[1].data), 10u);
        }
        ++binary_inserts;
      }
    } else if (auto* relation = std::get_if<pg::RelationMessage>(&message)) {
      EXPECT_EQ(relation->xid.has_value(), block_xid.has_value());
      // It carries the xid of the (sub)transaction whose change needed it, not always the
      // top-level one.
    } else if (auto* abort = std::get_if<pg::StreamAbort>(&message)) {
      EXPECT_FALSE(abort->abort_lsn);
      if (abort->xid == abort->subxid) {
        ++aborts;
      } else {
        ++sub_aborts;
      }
    } else if (auto* commit = std::get_if<pg::StreamCommit>(&message)) {
      EXPECT_TRUE(streamed_xids.contains(commit->xid.value));
      EXPECT_GT(commit->end_lsn, commit->commit_lsn);
      ++commits;
    }
  }
  EXPECT_GE(blocks, 4);
  EXPECT_EQ(aborts, 1);
  EXPECT_EQ(sub_aborts, 1);
  EXPECT_EQ(commits, 2);  // the savepoint transaction and the streamed prepared one
  EXPECT_GT(binary_inserts, 600);
}

TEST(Decoder, V3FixtureHasTwoPhaseMessages) {
  auto messages = fixture("v3");
  repl::Decoder decoder(3);
  std::map<std::string, std::vector<char>> by_gid;
  for (const auto& captured : messages) {
    auto message = decoder.decode(captured.bytes());
    if (auto* begin = std::get_if<pg::BeginPrepare>(&message)) {
      by_gid[std::string(begin->gid)].push_back('b');
      EXPECT_GT(begin->end_lsn, begin->prepare_lsn);
    } else if (auto* prepare = std::get_if<pg::Prepare>(&message)) {
      by_gid[std::string(prepare->gid)].push_back(prepare->streamed ? 'p' : 'P');
    } else if (auto* commit = std::get_if<pg::CommitPrepared>(&message)) {
      by_gid[std::string(commit->gid)].push_back('K');
    } else if (auto* rollback = std::get_if<pg::RollbackPrepared>(&message)) {
      by_gid[std::string(rollback->gid)].push_back('r');
      EXPECT_GT(rollback->rollback_end_lsn, rollback->prepare_end_lsn);
    }
  }
  EXPECT_EQ(by_gid["fx_commit"], (std::vector<char>{'b', 'P', 'K'}));
  EXPECT_EQ(by_gid["fx_rollback"], (std::vector<char>{'b', 'P', 'r'}));
  EXPECT_EQ(by_gid["fx_stream"], (std::vector<char>{'p', 'K'}));
}

// Captured from PostgreSQL 18 (capture.sh v4): protocol 4 with streaming 'parallel' and
// two-phase. Every message kind of the protocol appears; both Stream Aborts (a rolled-back
// savepoint and a whole transaction aborted while it streamed) carry the abort LSN and time.
TEST(Decoder, V4FixtureFromPostgres18HasEveryMessageKind) {
  auto messages = fixture("v4");
  repl::Decoder decoder(4, {.parallel_streaming = true});
  std::set<std::size_t> kinds;
  std::map<std::string, std::vector<char>> by_gid;
  std::map<std::uint32_t, std::string> relations;
  std::set<std::uint32_t> streamed_xids;
  int sub_aborts = 0, aborts = 0, stream_commits = 0;
  bool saw_toast = false, saw_key_update = false, saw_full_update = false;
  std::optional<repl::Lsn> last_lsn;
  for (const auto& captured : messages) {
    auto message = decoder.decode(captured.bytes());
    kinds.insert(message.index());
    if (auto* start = std::get_if<pg::StreamStart>(&message)) {
      EXPECT_EQ(start->first_segment, !streamed_xids.contains(start->xid.value));
      streamed_xids.insert(start->xid.value);
    } else if (auto* relation = std::get_if<pg::RelationMessage>(&message)) {
      relations[relation->id.value] = std::string(relation->relname);
    } else if (auto* update = std::get_if<pg::Update>(&message)) {
      const auto& rel = relations[update->relation.value];
      if (rel == "toasty") {
        EXPECT_EQ(update->new_tuple[1].kind, pg::ColumnKind::unchanged_toast);
        saw_toast = true;
      } else if (rel == "t" && update->old_kind == 'K') {
        EXPECT_EQ(text(update->old_tuple[0]), "2");
        EXPECT_EQ(text(update->new_tuple[0]), "3");
        saw_key_update = true;
      } else if (rel == "full_t") {
        EXPECT_EQ(update->old_kind, 'O');
        saw_full_update = true;
      }
    } else if (auto* abort = std::get_if<pg::StreamAbort>(&message)) {
      EXPECT_TRUE(streamed_xids.contains(abort->xid.value));
      ASSERT_TRUE(abort->abort_lsn) << "parallel streaming: Stream Abort has its LSN";
      ASSERT_TRUE(abort->abort_time);
      EXPECT_TRUE(abort->abort_lsn->is_valid());
      // A real timestamp: after 2024-01-01 (microseconds since 2000-01-01).
      EXPECT_GT(repl::to_pg_timestamp(*abort->abort_time), 757'382'400'000'000LL);
      if (abort->xid == abort->subxid) {
        ++aborts;
      } else {
        ++sub_aborts;
      }
    } else if (auto* commit = std::get_if<pg::StreamCommit>(&message)) {
      EXPECT_TRUE(streamed_xids.contains(commit->xid.value));
      EXPECT_GT(commit->end_lsn, commit->commit_lsn);
      ++stream_commits;
    } else if (auto* begin = std::get_if<pg::BeginPrepare>(&message)) {
      by_gid[std::string(begin->gid)].push_back('b');
    } else if (auto* prepare = std::get_if<pg::Prepare>(&message)) {
      by_gid[std::string(prepare->gid)].push_back(prepare->streamed ? 'p' : 'P');
    } else if (auto* commit_prepared = std::get_if<pg::CommitPrepared>(&message)) {
      by_gid[std::string(commit_prepared->gid)].push_back('K');
    } else if (auto* rollback = std::get_if<pg::RollbackPrepared>(&message)) {
      by_gid[std::string(rollback->gid)].push_back('r');
    } else if (auto* commit_plain = std::get_if<pg::Commit>(&message)) {
      if (last_lsn) {
        EXPECT_GT(commit_plain->end_lsn, *last_lsn);
      }
      last_lsn = commit_plain->end_lsn;
    }
  }
  EXPECT_FALSE(decoder.in_stream_block());
  EXPECT_EQ(kinds.size(), std::variant_size_v<pg::Message>) << "a message kind is missing";
  EXPECT_TRUE(saw_toast && saw_key_update && saw_full_update);
  EXPECT_EQ(sub_aborts, 1);
  EXPECT_EQ(aborts, 1);
  EXPECT_EQ(stream_commits, 1);  // the savepoint transaction (the prepared one: Stream Prepare)
  EXPECT_EQ(by_gid["fx_commit"], (std::vector<char>{'b', 'P', 'K'}));
  EXPECT_EQ(by_gid["fx_rollback"], (std::vector<char>{'b', 'P', 'r'}));
  EXPECT_EQ(by_gid["fx_stream"], (std::vector<char>{'p', 'K'}));
  // Without the parallel option the same bytes are refused at the first Stream Abort: the
  // fields are there but unannounced.
  repl::Decoder plain(4);
  bool refused = false;
  for (const auto& captured : messages) {
    try {
      plain.decode(captured.bytes());
    } catch (const repl::ProtocolError&) {
      EXPECT_EQ(captured.type(), 'A');
      refused = true;
      break;
    }
  }
  EXPECT_TRUE(refused);
}

// Every strict prefix of every captured message throws ProtocolError, decoded in the
// stream state the message was received in.
TEST(Decoder, EveryTruncationThrows) {
  for (auto [name, version] : {std::pair{"v1", 1}, {"v2_binary", 2}, {"v3", 3}, {"v4", 4}}) {
    repl::Decoder decoder(version, {.parallel_streaming = version == 4});
    for (const auto& captured : fixture(name)) {
      auto bytes = captured.bytes();
      for (std::size_t length = 0; length < bytes.size(); ++length) {
        repl::Decoder probe = decoder;
        EXPECT_THROW(probe.decode(bytes.first(length)), repl::ProtocolError)
            << name << " message '" << captured.type() << "' cut at " << length;
      }
      decoder.decode(bytes);
    }
  }
}

// A trailing byte, and every single-byte corruption of a message, either decodes or
// throws ProtocolError: never a crash, never another exception type.
TEST(Decoder, CorruptedBytesThrowProtocolErrorOrDecode) {
  repl::Decoder decoder(3);
  int thrown = 0;
  for (const auto& captured : fixture("v1")) {
    if (captured.payload.size() > 200) continue;  // keep it fast
    auto longer = captured.payload;
    longer.push_back(std::byte{0});
    {
      repl::Decoder probe = decoder;
      EXPECT_THROW(probe.decode(longer), repl::ProtocolError);
    }
    for (std::size_t i = 0; i < captured.payload.size(); ++i) {
      for (unsigned value : {0x00u, 0xFFu, 0x7Fu}) {
        auto corrupt = captured.payload;
        corrupt[i] = static_cast<std::byte>(value);
        repl::Decoder probe = decoder;
        try {
          probe.decode(corrupt);
        } catch (const repl::ProtocolError& e) {
          ++thrown;
          EXPECT_LE(e.offset(), corrupt.size());
        }
      }
    }
    decoder.decode(captured.bytes());
  }
  EXPECT_GT(thrown, 1000);
}

TEST(Decoder, MalformedMessagesNameTheProblem) {
  repl::Decoder decoder(2);
  auto expect_error = [&](std::vector<std::byte> bytes, const std::string& needle) {
    repl::Decoder probe = decoder;
    try {
      probe.decode(bytes);
      ADD_FAILURE() << "no error for " << needle;
    } catch (const repl::ProtocolError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error(PgoutputEncoder('Z').u32(1).bytes(), "unknown message type");
  expect_error(PgoutputEncoder('\0').bytes(), "unknown message type");
  expect_error({}, "truncated reading message type");
  // Bad tuple kind.
  expect_error(PgoutputEncoder('I').u32(1).u8('N').u16(1).u8('x').bytes(), "bad kind byte 0x78");
  // Column length past the end.
  expect_error(PgoutputEncoder('I').u32(1).u8('N').u16(1).u8('t').u32(1000).raw("ab").bytes(),
               "truncated reading column value");
  // Missing 'N'.
  expect_error(PgoutputEncoder('I').u32(1).u8('X').u16(0).bytes(), "expected 'N'");
  // Update with a bad old-tuple marker; delete without one.
  expect_error(PgoutputEncoder('U').u32(1).u8('Q').u16(0).bytes(), "tuple marker");
  expect_error(PgoutputEncoder('D').u32(1).u8('N').u16(0).bytes(), "expected 'K' or 'O'");
  // Truncate whose count does not match its bytes.
  expect_error(PgoutputEncoder('T').u32(3).u8(0).u32(1).bytes(), "relation count 3");
  expect_error(PgoutputEncoder('T').u32(1).u8(8).u32(1).bytes(), "unrecognized truncate flags");
  // Commit flags must be zero.
  expect_error(PgoutputEncoder('C').u8(1).u64(1).u64(2).u64(0).bytes(), "unrecognized flags");
  // A huge column count in a short Relation.
  expect_error(PgoutputEncoder('R').u32(1).cstring("s").cstring("t").u8('d').u16(60000).bytes(),
               "column count 60000 exceeds");
  expect_error(PgoutputEncoder('R').u32(1).cstring("s").cstring("t").u8('z').u16(0).bytes(),
               "bad replica identity");
  // Unterminated string.
  expect_error(PgoutputEncoder('O').u64(1).raw("name").bytes(), "unterminated string");
  // Out of place.
  expect_error(encode_stream_stop(), "Stream Stop outside a stream block");
}

TEST(Decoder, StreamStateAndVersionChecks) {
  repl::Decoder v1(1);
  EXPECT_THROW(v1.decode(encode_stream_start(5, true)), repl::ProtocolError);
  EXPECT_THROW(repl::Decoder(0), repl::ConfigError);
  EXPECT_THROW(repl::Decoder(5), repl::ConfigError);

  repl::Decoder v2(2);
  EXPECT_NO_THROW(v2.decode(encode_begin(1, 2)));
  // Two-phase messages need v3.
  EXPECT_THROW(v2.decode(PgoutputEncoder('b').u64(1).u64(2).u64(0).u32(3).cstring("g").bytes()),
               repl::ProtocolError);
  auto start = v2.decode(encode_stream_start(700, true));
  EXPECT_EQ(std::get<pg::StreamStart>(start).xid.value, 700u);
  ASSERT_EQ(v2.stream_xid(), repl::Xid{700});
  // Inside the block: a change carries its (sub)xid; Begin and nested Stream Start are refused.
  auto insert = v2.decode(encode_insert(701, 42, {"1", std::nullopt, kUnchangedToast}));
  const auto& decoded = std::get<pg::Insert>(insert);
  EXPECT_EQ(decoded.xid, repl::Xid{701});
  EXPECT_EQ(decoded.relation.value, 42u);
  ASSERT_EQ(decoded.new_tuple.size(), 3u);
  EXPECT_EQ(decoded.new_tuple[2].kind, pg::ColumnKind::unchanged_toast);
  EXPECT_THROW(v2.decode(encode_begin(1, 2)), repl::ProtocolError);
  EXPECT_THROW(v2.decode(encode_stream_start(701, true)), repl::ProtocolError);
  EXPECT_THROW(v2.decode(encode_stream_commit(700, 10, 20)), repl::ProtocolError);
  v2.decode(encode_stream_stop());
  EXPECT_FALSE(v2.in_stream_block());
  // Outside the block the same insert bytes mean relation id 701 followed by garbage.
  EXPECT_THROW(v2.decode(encode_insert(701, 42, {"1"})), repl::ProtocolError);
  // decode_streamed_change decodes the xid form, and only changes.
  auto replayed = v2.decode_streamed_change(encode_insert(701, 42, {"1"}));
  EXPECT_EQ(std::get<pg::Insert>(replayed).xid, repl::Xid{701});
  EXPECT_THROW(v2.decode_streamed_change(encode_stream_stop()), repl::ProtocolError);
  EXPECT_FALSE(v2.in_stream_block());
}

TEST(Decoder, V4StreamAbortCarriesAbortLsnWithParallelStreaming) {
  repl::Decoder parallel(4, {.parallel_streaming = true});
  auto message = parallel.decode(encode_stream_abort(10, 11, 0x1234, 5'000'000));
  const auto& abort = std::get<pg::StreamAbort>(message);
  EXPECT_EQ(abort.xid.value, 10u);
  EXPECT_EQ(abort.subxid.value, 11u);
  ASSERT_TRUE(abort.abort_lsn);
  EXPECT_EQ(*abort.abort_lsn, repl::Lsn(0x1234));
  ASSERT_TRUE(abort.abort_time);
  EXPECT_EQ(repl::to_pg_timestamp(*abort.abort_time), 5'000'000);
  // Without the fields the parallel decoder refuses the short form, and vice versa.
  EXPECT_THROW(parallel.decode(encode_stream_abort(10, 11)), repl::ProtocolError);
  repl::Decoder plain(4);
  EXPECT_FALSE(std::get<pg::StreamAbort>(plain.decode(encode_stream_abort(10, 10))).abort_lsn);
  EXPECT_THROW(plain.decode(encode_stream_abort(10, 11, 0x1234)), repl::ProtocolError);
  // v2 ignores the parallel option: the fields do not exist before v4.
  repl::Decoder v2(2, {.parallel_streaming = true});
  EXPECT_NO_THROW(v2.decode(encode_stream_abort(10, 11)));
}

TEST(Decoder, ScratchIsReusedAcrossRows) {
  auto messages = fixture("bench_insert");
  repl::Decoder decoder(3);
  const void* first_tuple = nullptr;
  for (const auto& captured : messages) {
    auto message = decoder.decode(captured.bytes());
    if (auto* insert = std::get_if<pg::Insert>(&message)) {
      if (!first_tuple) first_tuple = insert->new_tuple.data();
      EXPECT_EQ(insert->new_tuple.data(), first_tuple);  // same storage: no reallocation
      // Views point into the message bytes (zero-copy).
      const auto* begin = reinterpret_cast<const char*>(captured.payload.data());
      EXPECT_GE(insert->new_tuple[2].data.data(), begin);
      EXPECT_LE(insert->new_tuple[2].data.data() + insert->new_tuple[2].data.size(),
                begin + captured.payload.size());
    }
  }
  EXPECT_NE(first_tuple, nullptr);
}
