// Decoder: pgoutput protocol messages (v1–v4) to typed views (pgoutput.hpp).
//
// One Decoder per replication session: it tracks whether it is inside a Stream Start /
// Stream Stop block, because change messages inside one carry the (sub)transaction id.
// Decoded views point into the message buffer or into the decoder's scratch storage and
// are valid until the next decode() call. Scratch vectors are reused, so after warm-up
// decoding allocates nothing per row.
//
// Every malformed input — an unknown first byte, a bad tuple kind, a length past the end,
// trailing bytes, a message not allowed by the negotiated protocol version or out of place
// (Stream Stop outside a stream block) — throws ProtocolError. Never a silent zero.
#pragma once

#include <cstddef>
#include <optional>
#include <span>
#include <vector>

#include "pgferry/replication/decode/byte_reader.hpp"
#include "pgferry/replication/decode/pgoutput.hpp"

namespace pgferry::replication {

struct DecoderOptions {
  // Protocol v4 with `streaming 'parallel'`: Stream Abort then carries abort_lsn and
  // abort_time (pgoutput writes them only in that mode; the message has no flag saying so).
  bool parallel_streaming = false;
};

class Decoder {
 public:
  static constexpr int kMinProtocolVersion = 1;
  static constexpr int kMaxProtocolVersion = 4;

  // Throws ConfigError for a version outside 1..4.
  explicit Decoder(int protocol_version, DecoderOptions options = {});

  pgoutput::Message decode(std::span<const std::byte> message);

  // Decodes a change message (Relation, Type, Insert, Update, Delete, Truncate, Message)
  // that was received inside a stream block, as when it was received: with its xid. Used
  // to replay a spooled transaction; does not touch the stream-block state.
  pgoutput::Message decode_streamed_change(std::span<const std::byte> message);

  int protocol_version() const { return protocol_version_; }
  bool in_stream_block() const { return stream_xid_.has_value(); }
  // The top-level xid of the open stream block.
  std::optional<Xid> stream_xid() const { return stream_xid_; }
  // Forgets the stream-block state (a new session starts outside any block).
  void reset() { stream_xid_.reset(); }

 private:
  pgoutput::Message decode_message(ByteReader& in, bool streamed);

  pgoutput::Begin read_begin(ByteReader& in);
  pgoutput::Commit read_commit(ByteReader& in);
  pgoutput::Origin read_origin(ByteReader& in);
  pgoutput::RelationMessage read_relation(ByteReader& in, bool streamed);
  pgoutput::TypeMessage read_type(ByteReader& in, bool streamed);
  pgoutput::Insert read_insert(ByteReader& in, bool streamed);
  pgoutput::Update read_update(ByteReader& in, bool streamed);
  pgoutput::Delete read_delete(ByteReader& in, bool streamed);
  pgoutput::Truncate read_truncate(ByteReader& in, bool streamed);
  pgoutput::LogicalMessage read_message(ByteReader& in, bool streamed);
  pgoutput::StreamStart read_stream_start(ByteReader& in);
  pgoutput::StreamStop read_stream_stop(ByteReader& in);
  pgoutput::StreamCommit read_stream_commit(ByteReader& in);
  pgoutput::StreamAbort read_stream_abort(ByteReader& in);
  pgoutput::BeginPrepare read_begin_prepare(ByteReader& in);
  pgoutput::Prepare read_prepare(ByteReader& in, bool streamed);
  pgoutput::CommitPrepared read_commit_prepared(ByteReader& in);
  pgoutput::RollbackPrepared read_rollback_prepared(ByteReader& in);

  pgoutput::TupleView read_tuple(ByteReader& in, std::vector<pgoutput::ColumnValue>& scratch);
  std::optional<Xid> read_stream_xid(ByteReader& in, bool streamed);
  void require_version(const ByteReader& in, int version, const char* feature) const;
  void require_outside_stream(const ByteReader& in) const;

  int protocol_version_;
  DecoderOptions options_;
  std::optional<Xid> stream_xid_;

  std::vector<pgoutput::ColumnValue> old_tuple_;
  std::vector<pgoutput::ColumnValue> new_tuple_;
  std::vector<pgoutput::RelationColumn> columns_;
  std::vector<RelationId> relation_ids_;
};

}  // namespace pgferry::replication
