// pgoutput decoder. Each read_X below mirrors logicalrep_write_X in the server's
// src/backend/replication/logical/proto.c (and its callers in pgoutput.c), and documents
// the wire layout it reads. Integers are big-endian; "string" is NUL-terminated;
// LSNs are uint64; timestamps are int64 microseconds since 2000-01-01 UTC.
//
// NOTES
// - Protocol versions: v1 (PG 10+) plain transactions; v2 (PG 14) adds streaming of
//   in-progress transactions (Stream Start/Stop/Commit/Abort, xid on changes inside a
//   stream block); v3 (PG 15) adds two-phase commit messages; v4 (PG 16) adds parallel
//   streaming, which appends abort_lsn/abort_time to Stream Abort. A message that the
//   negotiated version cannot send is a protocol error: it means a misconfiguration or a
//   misread, and either way going on would be guessing.
// - The stream-block state lives here, not in the assembler, because it changes how the
//   bytes of the next messages are laid out (the leading xid).
// - Flags fields the server defines as "must be zero" are checked like the server's own
//   readers do (logicalrep_read_commit and friends).
#include "pgferry/replication/decode/decoder.hpp"

#include <fmt/format.h>

#include <cstring>

namespace pgferry::replication {

namespace pg = pgoutput;

namespace {

Lsn read_lsn(ByteReader& in, const char* field) {
  return Lsn{in.read_u64(field)};
}

PgTimestamp read_timestamp(ByteReader& in, const char* field) {
  return from_pg_timestamp(in.read_i64(field));
}

Xid read_xid(ByteReader& in, const char* field) {
  return Xid{in.read_u32(field)};
}

void expect_zero_flags(ByteReader& in, std::uint8_t flags) {
  if (flags != 0) in.fail(fmt::format("unrecognized flags {} (the server sends 0)", flags));
}

}  // namespace

Decoder::Decoder(int protocol_version, DecoderOptions options)
    : protocol_version_(protocol_version), options_(options) {
  if (protocol_version < kMinProtocolVersion || protocol_version > kMaxProtocolVersion) {
    throw ConfigError(fmt::format("pgoutput protocol version {} is not supported (use 1 to 4)",
                                  protocol_version));
  }
  old_tuple_.reserve(64);
  new_tuple_.reserve(64);
  columns_.reserve(64);
}

pg::Message Decoder::decode(std::span<const std::byte> message) {
  ByteReader in(message);
  return decode_message(in, stream_xid_.has_value());
}

pg::Message Decoder::decode_streamed_change(std::span<const std::byte> message) {
  ByteReader in(message);
  if (!in.at_end()) {
    switch (static_cast<pg::MessageType>(static_cast<char>(message[0]))) {
      case pg::MessageType::relation:
      case pg::MessageType::type:
      case pg::MessageType::insert:
      case pg::MessageType::update:
      case pg::MessageType::delete_:
      case pg::MessageType::truncate:
      case pg::MessageType::message:
        return decode_message(in, true);
      default:
        break;
    }
  }
  in.set_message_type(in.at_end() ? 0 : static_cast<char>(message[0]));
  in.fail("not a change message (a spooled stream may only hold changes)");
}

pg::Message Decoder::decode_message(ByteReader& in, bool streamed) {
  char type = in.read_char("message type");
  in.set_message_type(type);
  // No default: a MessageType added to pgoutput.hpp must be handled here (-Wswitch), and
  // an unknown byte falls through to the error below.
  switch (static_cast<pg::MessageType>(type)) {
    case pg::MessageType::begin:
      return read_begin(in);
    case pg::MessageType::commit:
      return read_commit(in);
    case pg::MessageType::origin:
      return read_origin(in);
    case pg::MessageType::relation:
      return read_relation(in, streamed);
    case pg::MessageType::type:
      return read_type(in, streamed);
    case pg::MessageType::insert:
      return read_insert(in, streamed);
    case pg::MessageType::update:
      return read_update(in, streamed);
    case pg::MessageType::delete_:
      return read_delete(in, streamed);
    case pg::MessageType::truncate:
      return read_truncate(in, streamed);
    case pg::MessageType::message:
      return read_message(in, streamed);
    case pg::MessageType::begin_prepare:
      return read_begin_prepare(in);
    case pg::MessageType::prepare:
      return read_prepare(in, false);
    case pg::MessageType::commit_prepared:
      return read_commit_prepared(in);
    case pg::MessageType::rollback_prepared:
      return read_rollback_prepared(in);
    case pg::MessageType::stream_start:
      return read_stream_start(in);
    case pg::MessageType::stream_stop:
      return read_stream_stop(in);
    case pg::MessageType::stream_commit:
      return read_stream_commit(in);
    case pg::MessageType::stream_abort:
      return read_stream_abort(in);
    case pg::MessageType::stream_prepare:
      return read_prepare(in, true);
  }
  in.fail_at(0, "unknown message type");
}

void Decoder::require_version(const ByteReader& in, int version, const char* feature) const {
  if (protocol_version_ < version) {
    in.fail_at(0, fmt::format("{} needs protocol v{}, but v{} was negotiated", feature, version,
                              protocol_version_));
  }
}

void Decoder::require_outside_stream(const ByteReader& in) const {
  if (stream_xid_) {
    in.fail_at(0, fmt::format("not allowed inside the stream block of xid {}", stream_xid_->value));
  }
}

std::optional<Xid> Decoder::read_stream_xid(ByteReader& in, bool streamed) {
  if (!streamed) return std::nullopt;
  return read_xid(in, "xid");
}

// Begin (logicalrep_write_begin):
//   'B' | final_lsn u64 | commit_time i64 | xid u32
pg::Begin Decoder::read_begin(ByteReader& in) {
  require_outside_stream(in);
  pg::Begin begin;
  begin.final_lsn = read_lsn(in, "final_lsn");
  begin.commit_time = read_timestamp(in, "commit_time");
  begin.xid = read_xid(in, "xid");
  in.expect_end();
  return begin;
}

// Commit (logicalrep_write_commit):
//   'C' | flags u8 (0) | commit_lsn u64 | end_lsn u64 | commit_time i64
pg::Commit Decoder::read_commit(ByteReader& in) {
  require_outside_stream(in);
  pg::Commit commit;
  commit.flags = in.read_u8("flags");
  expect_zero_flags(in, commit.flags);
  commit.commit_lsn = read_lsn(in, "commit_lsn");
  commit.end_lsn = read_lsn(in, "end_lsn");
  commit.commit_time = read_timestamp(in, "commit_time");
  in.expect_end();
  return commit;
}

// Origin (logicalrep_write_origin): sent after Begin, or after Stream Start (no xid there).
//   'O' | origin_lsn u64 | name string
pg::Origin Decoder::read_origin(ByteReader& in) {
  pg::Origin origin;
  origin.commit_lsn = read_lsn(in, "origin_lsn");
  origin.name = in.read_cstring("origin name");
  in.expect_end();
  return origin;
}

// Relation (logicalrep_write_rel):
//   'R' | [xid u32 in a stream block] | relid u32 | nspname string ("" = pg_catalog)
//   | relname string | replident u8 ('d','n','f','i') | natts u16
//   | natts × ( flags u8 (1 = key) | name string | type_oid u32 | typmod i32 )
pg::RelationMessage Decoder::read_relation(ByteReader& in, bool streamed) {
  pg::RelationMessage relation;
  relation.xid = read_stream_xid(in, streamed);
  relation.id = RelationId{in.read_u32("relation id")};
  relation.nspname = in.read_cstring("namespace name");
  relation.relname = in.read_cstring("relation name");
  relation.replica_identity = in.read_char("replica identity");
  switch (relation.replica_identity) {
    case 'd':
    case 'n':
    case 'f':
    case 'i':
      break;
    default:
      in.fail_at(in.offset() - 1,
                 fmt::format("bad replica identity byte 0x{:02x}",
                             static_cast<unsigned char>(relation.replica_identity)));
  }
  std::uint16_t natts = in.read_u16("column count");
  // Each column takes at least 10 bytes: refuse a count the message cannot hold before
  // growing the scratch vector for it.
  if (static_cast<std::size_t>(natts) * 10 > in.remaining()) {
    in.fail(fmt::format("column count {} exceeds the message", natts));
  }
  columns_.clear();
  for (std::uint16_t i = 0; i < natts; ++i) {
    pg::RelationColumn column;
    column.flags = in.read_u8("column flags");
    column.name = in.read_cstring("column name");
    column.type_oid = Oid{in.read_u32("column type oid")};
    column.type_modifier = in.read_i32("column type modifier");
    columns_.push_back(column);
  }
  relation.columns = columns_;
  in.expect_end();
  return relation;
}

// Type (logicalrep_write_typ):
//   'Y' | [xid u32 in a stream block] | type_oid u32 | nspname string | typname string
pg::TypeMessage Decoder::read_type(ByteReader& in, bool streamed) {
  pg::TypeMessage type;
  type.xid = read_stream_xid(in, streamed);
  type.id = Oid{in.read_u32("type oid")};
  type.nspname = in.read_cstring("namespace name");
  type.name = in.read_cstring("type name");
  in.expect_end();
  return type;
}

// TupleData (logicalrep_write_tuple):
//   natts u16 | natts × ( kind u8 | [len u32 | bytes, for 't' and 'b'] )
//   kind: 'n' NULL, 'u' unchanged TOAST (no value sent), 't' text, 'b' binary.
pg::TupleView Decoder::read_tuple(ByteReader& in, std::vector<pg::ColumnValue>& scratch) {
  std::uint16_t natts = in.read_u16("tuple column count");
  if (natts > in.remaining()) {
    in.fail(fmt::format("tuple column count {} exceeds the message", natts));
  }
  scratch.resize(natts);
  // Fast path: one bounds check per field on raw pointers. At the first column that
  // does not fit (or has a bad kind) it hands over to the checked loop below, which
  // throws the precise error.
  std::uint16_t i = 0;
  {
    const std::byte* base = in.data().data();
    const std::size_t size = in.data().size();
    std::size_t pos = in.offset();
    for (; i < natts; ++i) {
      if (pos >= size) break;
      char kind = static_cast<char>(base[pos]);
      pg::ColumnValue& column = scratch[i];
      if (kind == 't' || kind == 'b') {
        if (size - pos < 5) break;
        std::uint32_t length;
        std::memcpy(&length, base + pos + 1, 4);
        length = __builtin_bswap32(length);
        if (size - pos - 5 < length) break;
        column.kind = static_cast<pg::ColumnKind>(kind);
        column.data = {reinterpret_cast<const char*>(base + pos + 5), length};
        pos += 5 + std::size_t{length};
      } else if (kind == 'n' || kind == 'u') {
        column.kind = static_cast<pg::ColumnKind>(kind);
        column.data = {};
        pos += 1;
      } else {
        break;
      }
    }
    in.seek(pos);
  }
  for (; i < natts; ++i) {
    pg::ColumnValue& column = scratch[i];
    std::size_t kind_offset = in.offset();
    char kind = in.read_char("column kind");
    switch (static_cast<pg::ColumnKind>(kind)) {
      case pg::ColumnKind::null:
      case pg::ColumnKind::unchanged_toast:
        column.kind = static_cast<pg::ColumnKind>(kind);
        column.data = {};
        continue;
      case pg::ColumnKind::text:
      case pg::ColumnKind::binary: {
        column.kind = static_cast<pg::ColumnKind>(kind);
        std::uint32_t length = in.read_u32("column length");
        column.data = in.read_chars(length, "column value");
        continue;
      }
    }
    in.fail_at(kind_offset, fmt::format("bad kind byte 0x{:02x} for column {}",
                                        static_cast<unsigned char>(kind), i + 1));
  }
  return {scratch.data(), scratch.size()};
}

// Insert (logicalrep_write_insert):
//   'I' | [xid u32 in a stream block] | relid u32 | 'N' | TupleData
pg::Insert Decoder::read_insert(ByteReader& in, bool streamed) {
  pg::Insert insert;
  insert.xid = read_stream_xid(in, streamed);
  insert.relation = RelationId{in.read_u32("relation id")};
  char marker = in.read_char("new tuple marker");
  if (marker != 'N') in.fail_at(in.offset() - 1, "expected 'N' before the new tuple");
  insert.new_tuple = read_tuple(in, new_tuple_);
  in.expect_end();
  return insert;
}

// Update (logicalrep_write_update):
//   'U' | [xid u32 in a stream block] | relid u32
//   | [ 'K' TupleData (old key, the key changed) | 'O' TupleData (old row, REPLICA IDENTITY
//   FULL) ] | 'N' | TupleData
pg::Update Decoder::read_update(ByteReader& in, bool streamed) {
  pg::Update update;
  update.xid = read_stream_xid(in, streamed);
  update.relation = RelationId{in.read_u32("relation id")};
  char marker = in.read_char("tuple marker");
  if (marker == 'K' || marker == 'O') {
    update.old_kind = marker;
    update.old_tuple = read_tuple(in, old_tuple_);
    marker = in.read_char("new tuple marker");
  }
  if (marker != 'N') in.fail_at(in.offset() - 1, "expected 'K', 'O' or 'N' tuple marker");
  update.new_tuple = read_tuple(in, new_tuple_);
  in.expect_end();
  return update;
}

// Delete (logicalrep_write_delete):
//   'D' | [xid u32 in a stream block] | relid u32 | 'K' or 'O' | TupleData
pg::Delete Decoder::read_delete(ByteReader& in, bool streamed) {
  pg::Delete del;
  del.xid = read_stream_xid(in, streamed);
  del.relation = RelationId{in.read_u32("relation id")};
  char marker = in.read_char("old tuple marker");
  if (marker != 'K' && marker != 'O') {
    in.fail_at(in.offset() - 1, "expected 'K' or 'O' before the old tuple");
  }
  del.old_kind = marker;
  del.old_tuple = read_tuple(in, old_tuple_);
  in.expect_end();
  return del;
}

// Truncate (logicalrep_write_truncate):
//   'T' | [xid u32 in a stream block] | nrelids u32 | flags u8 (1 CASCADE, 2 RESTART
//   IDENTITY) | nrelids × relid u32
pg::Truncate Decoder::read_truncate(ByteReader& in, bool streamed) {
  pg::Truncate truncate;
  truncate.xid = read_stream_xid(in, streamed);
  std::uint32_t count = in.read_u32("relation count");
  truncate.flags = in.read_u8("flags");
  if ((truncate.flags & ~(pg::Truncate::kCascade | pg::Truncate::kRestartIdentity)) != 0) {
    in.fail_at(in.offset() - 1, fmt::format("unrecognized truncate flags {}", truncate.flags));
  }
  if (static_cast<std::uint64_t>(count) * 4 != in.remaining()) {
    in.fail(
        fmt::format("relation count {} does not match the {} bytes left", count, in.remaining()));
  }
  relation_ids_.clear();
  for (std::uint32_t i = 0; i < count; ++i) {
    relation_ids_.push_back(RelationId{in.read_u32("relation id")});
  }
  truncate.relations = relation_ids_;
  in.expect_end();
  return truncate;
}

// Message (logicalrep_write_message), from pg_logical_emit_message():
//   'M' | [xid u32 in a stream block] | flags u8 (1 = transactional) | lsn u64
//   | prefix string | length u32 | content bytes
pg::LogicalMessage Decoder::read_message(ByteReader& in, bool streamed) {
  pg::LogicalMessage message;
  message.xid = read_stream_xid(in, streamed);
  std::uint8_t flags = in.read_u8("flags");
  if ((flags & ~1u) != 0) {
    in.fail_at(in.offset() - 1, fmt::format("unrecognized message flags {}", flags));
  }
  message.transactional = (flags & 1u) != 0;
  message.lsn = read_lsn(in, "lsn");
  message.prefix = in.read_cstring("prefix");
  std::uint32_t length = in.read_u32("content length");
  message.content = in.read_bytes(length, "content");
  in.expect_end();
  return message;
}

// Stream Start (logicalrep_write_stream_start), v2+:
//   'S' | xid u32 | first_segment u8 (0 or 1)
pg::StreamStart Decoder::read_stream_start(ByteReader& in) {
  require_version(in, 2, "Stream Start");
  require_outside_stream(in);
  pg::StreamStart start;
  start.xid = read_xid(in, "xid");
  std::uint8_t first = in.read_u8("first_segment");
  if (first > 1) in.fail_at(in.offset() - 1, fmt::format("bad first_segment byte {}", first));
  start.first_segment = first == 1;
  in.expect_end();
  stream_xid_ = start.xid;
  return start;
}

// Stream Stop (logicalrep_write_stream_stop), v2+:
//   'E'
pg::StreamStop Decoder::read_stream_stop(ByteReader& in) {
  require_version(in, 2, "Stream Stop");
  if (!stream_xid_) in.fail_at(0, "Stream Stop outside a stream block");
  in.expect_end();
  stream_xid_.reset();
  return {};
}

// Stream Commit (logicalrep_write_stream_commit), v2+, outside a stream block:
//   'c' | xid u32 | flags u8 (0) | commit_lsn u64 | end_lsn u64 | commit_time i64
pg::StreamCommit Decoder::read_stream_commit(ByteReader& in) {
  require_version(in, 2, "Stream Commit");
  require_outside_stream(in);
  pg::StreamCommit commit;
  commit.xid = read_xid(in, "xid");
  commit.flags = in.read_u8("flags");
  expect_zero_flags(in, commit.flags);
  commit.commit_lsn = read_lsn(in, "commit_lsn");
  commit.end_lsn = read_lsn(in, "end_lsn");
  commit.commit_time = read_timestamp(in, "commit_time");
  in.expect_end();
  return commit;
}

// Stream Abort (logicalrep_write_stream_abort), v2+, outside a stream block:
//   'A' | xid u32 | subxid u32 (== xid: the whole transaction)
//   | [v4 with streaming 'parallel': abort_lsn u64 | abort_time i64]
pg::StreamAbort Decoder::read_stream_abort(ByteReader& in) {
  require_version(in, 2, "Stream Abort");
  require_outside_stream(in);
  pg::StreamAbort abort;
  abort.xid = read_xid(in, "xid");
  abort.subxid = read_xid(in, "subxid");
  if (protocol_version_ >= 4 && options_.parallel_streaming) {
    abort.abort_lsn = read_lsn(in, "abort_lsn");
    abort.abort_time = read_timestamp(in, "abort_time");
  }
  in.expect_end();
  return abort;
}

// Begin Prepare (logicalrep_write_begin_prepare), v3+:
//   'b' | prepare_lsn u64 | end_lsn u64 | prepare_time i64 | xid u32 | gid string
pg::BeginPrepare Decoder::read_begin_prepare(ByteReader& in) {
  require_version(in, 3, "Begin Prepare");
  require_outside_stream(in);
  pg::BeginPrepare begin;
  begin.prepare_lsn = read_lsn(in, "prepare_lsn");
  begin.end_lsn = read_lsn(in, "end_lsn");
  begin.prepare_time = read_timestamp(in, "prepare_time");
  begin.xid = read_xid(in, "xid");
  begin.gid = in.read_cstring("gid");
  in.expect_end();
  return begin;
}

// Prepare and Stream Prepare (logicalrep_write_prepare_common), v3+:
//   'P' or 'p' | flags u8 (0) | prepare_lsn u64 | end_lsn u64 | prepare_time i64 | xid u32
//   | gid string
pg::Prepare Decoder::read_prepare(ByteReader& in, bool streamed) {
  require_version(in, 3, streamed ? "Stream Prepare" : "Prepare");
  require_outside_stream(in);
  pg::Prepare prepare;
  prepare.streamed = streamed;
  prepare.flags = in.read_u8("flags");
  expect_zero_flags(in, prepare.flags);
  prepare.prepare_lsn = read_lsn(in, "prepare_lsn");
  prepare.end_lsn = read_lsn(in, "end_lsn");
  prepare.prepare_time = read_timestamp(in, "prepare_time");
  prepare.xid = read_xid(in, "xid");
  prepare.gid = in.read_cstring("gid");
  in.expect_end();
  return prepare;
}

// Commit Prepared (logicalrep_write_commit_prepared), v3+:
//   'K' | flags u8 (0) | commit_lsn u64 | end_lsn u64 | commit_time i64 | xid u32 | gid string
pg::CommitPrepared Decoder::read_commit_prepared(ByteReader& in) {
  require_version(in, 3, "Commit Prepared");
  require_outside_stream(in);
  pg::CommitPrepared commit;
  commit.flags = in.read_u8("flags");
  expect_zero_flags(in, commit.flags);
  commit.commit_lsn = read_lsn(in, "commit_lsn");
  commit.end_lsn = read_lsn(in, "end_lsn");
  commit.commit_time = read_timestamp(in, "commit_time");
  commit.xid = read_xid(in, "xid");
  commit.gid = in.read_cstring("gid");
  in.expect_end();
  return commit;
}

// Rollback Prepared (logicalrep_write_rollback_prepared), v3+:
//   'r' | flags u8 (0) | prepare_end_lsn u64 | rollback_end_lsn u64 | prepare_time i64
//   | rollback_time i64 | xid u32 | gid string
pg::RollbackPrepared Decoder::read_rollback_prepared(ByteReader& in) {
  require_version(in, 3, "Rollback Prepared");
  require_outside_stream(in);
  pg::RollbackPrepared rollback;
  rollback.flags = in.read_u8("flags");
  expect_zero_flags(in, rollback.flags);
  rollback.prepare_end_lsn = read_lsn(in, "prepare_end_lsn");
  rollback.rollback_end_lsn = read_lsn(in, "rollback_end_lsn");
  rollback.prepare_time = read_timestamp(in, "prepare_time");
  rollback.rollback_time = read_timestamp(in, "rollback_time");
  rollback.xid = read_xid(in, "xid");
  rollback.gid = in.read_cstring("gid");
  in.expect_end();
  return rollback;
}

}  // namespace pgferry::replication
