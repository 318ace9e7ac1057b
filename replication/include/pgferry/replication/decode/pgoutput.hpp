// pgoutput logical replication messages, as decoded views.
//
// Every view (string_view, span, TupleView) points into the CopyData buffer the message
// was decoded from, or into the decoder's scratch storage, and is valid until the next
// call to Decoder::decode(). Whatever must outlive that (the relation cache, the spool)
// copies explicitly.
//
// Wire layout: see the comments in decoder.cpp, next to the code that reads each message;
// the server side is src/backend/replication/logical/proto.c.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <variant>

#include "pgferry/replication/core/ids.hpp"
#include "pgferry/replication/core/lsn.hpp"

namespace pgferry::replication::pgoutput {

// The first byte of each message (proto.c's LOGICAL_REP_MSG_*).
enum class MessageType : char {
  begin = 'B',
  commit = 'C',
  origin = 'O',
  relation = 'R',
  type = 'Y',
  insert = 'I',
  update = 'U',
  delete_ = 'D',
  truncate = 'T',
  message = 'M',
  begin_prepare = 'b',
  prepare = 'P',
  commit_prepared = 'K',
  rollback_prepared = 'r',
  stream_start = 'S',
  stream_stop = 'E',
  stream_commit = 'c',
  stream_abort = 'A',
  stream_prepare = 'p',
};

// One column of a TupleData ('n' null, 'u' unchanged TOAST, 't' text, 'b' binary).
enum class ColumnKind : char {
  null = 'n',
  unchanged_toast = 'u',
  text = 't',
  binary = 'b',
};

struct ColumnValue {
  ColumnKind kind = ColumnKind::null;
  std::string_view data;  // empty unless text or binary
};

using TupleView = std::span<const ColumnValue>;

struct Begin {
  Lsn final_lsn;  // LSN of the commit record
  PgTimestamp commit_time;
  Xid xid;
};

struct Commit {
  std::uint8_t flags = 0;
  Lsn commit_lsn;  // LSN of the commit record
  Lsn end_lsn;     // end of the commit record: the position to confirm
  PgTimestamp commit_time;
};

struct Origin {
  Lsn commit_lsn;
  std::string_view name;
};

struct RelationColumn {
  std::uint8_t flags = 0;  // 1: part of the replica identity key
  std::string_view name;
  Oid type_oid;
  std::int32_t type_modifier = -1;
  bool is_key() const { return (flags & 1) != 0; }
};

struct RelationMessage {
  std::optional<Xid> xid;  // present inside a streamed block
  RelationId id;
  std::string_view nspname;  // "" means pg_catalog on the wire; the decoder keeps it as sent
  std::string_view relname;
  char replica_identity = 'd';  // d default, n nothing, f full, i index
  std::span<const RelationColumn> columns;
};

struct TypeMessage {
  std::optional<Xid> xid;
  Oid id;
  std::string_view nspname;
  std::string_view name;
};

struct Insert {
  std::optional<Xid> xid;
  RelationId relation;
  TupleView new_tuple;
};

struct Update {
  std::optional<Xid> xid;
  RelationId relation;
  // 'K': old_tuple holds the old replica identity key (the key changed);
  // 'O': old_tuple holds the whole old row (REPLICA IDENTITY FULL);
  // 0: no old tuple (the key did not change; use new_tuple's key columns).
  char old_kind = 0;
  TupleView old_tuple;
  TupleView new_tuple;
};

struct Delete {
  std::optional<Xid> xid;
  RelationId relation;
  char old_kind = 'K';  // 'K' key columns only, 'O' whole old row
  TupleView old_tuple;
};

struct Truncate {
  static constexpr std::uint8_t kCascade = 1;
  static constexpr std::uint8_t kRestartIdentity = 2;
  std::optional<Xid> xid;
  std::uint8_t flags = 0;
  std::span<const RelationId> relations;
};

struct LogicalMessage {
  std::optional<Xid> xid;
  bool transactional = false;
  Lsn lsn;
  std::string_view prefix;
  std::span<const std::byte> content;
};

struct StreamStart {
  Xid xid;
  bool first_segment = false;
};

struct StreamStop {};

struct StreamCommit {
  Xid xid;
  std::uint8_t flags = 0;
  Lsn commit_lsn;
  Lsn end_lsn;
  PgTimestamp commit_time;
};

struct StreamAbort {
  Xid xid;
  Xid subxid;  // == xid when the whole transaction aborted
  // Protocol v4 with parallel streaming only.
  std::optional<Lsn> abort_lsn;
  std::optional<PgTimestamp> abort_time;
};

struct BeginPrepare {
  Lsn prepare_lsn;
  Lsn end_lsn;
  PgTimestamp prepare_time;
  Xid xid;
  std::string_view gid;
};

// Prepare and Stream Prepare share a layout.
struct Prepare {
  bool streamed = false;
  std::uint8_t flags = 0;
  Lsn prepare_lsn;
  Lsn end_lsn;
  PgTimestamp prepare_time;
  Xid xid;
  std::string_view gid;
};

struct CommitPrepared {
  std::uint8_t flags = 0;
  Lsn commit_lsn;
  Lsn end_lsn;
  PgTimestamp commit_time;
  Xid xid;
  std::string_view gid;
};

struct RollbackPrepared {
  std::uint8_t flags = 0;
  Lsn prepare_end_lsn;
  Lsn rollback_end_lsn;
  PgTimestamp prepare_time;
  PgTimestamp rollback_time;
  Xid xid;
  std::string_view gid;
};

using Message =
    std::variant<Begin, Commit, Origin, RelationMessage, TypeMessage, Insert, Update, Delete,
                 Truncate, LogicalMessage, StreamStart, StreamStop, StreamCommit, StreamAbort,
                 BeginPrepare, Prepare, CommitPrepared, RollbackPrepared>;

}  // namespace pgferry::replication::pgoutput
