// ReplicationConnection: a libpq connection in logical replication mode
// (replication=database) to the source: replication commands (IDENTIFY_SYSTEM,
// CREATE_REPLICATION_SLOT, DROP_REPLICATION_SLOT, START_REPLICATION) and the CopyBoth
// loop of the streaming replication protocol.
//
// NOTES
// - Reading is non-blocking: PQconsumeInput + PQgetCopyData(async) and poll() on the
//   socket with a timeout, so that the caller can send status updates on time even when
//   the source is quiet. Sending stays blocking: a status update is 34 bytes.
// - A received XLogData payload is a view into libpq's buffer, valid until the next read
//   unless the caller takes the buffer (take_buffer()).
// - The highest pgoutput protocol a server speaks follows from its version: v1 up to 13,
//   v2 on 14, v3 on 15, v4 on 16 and later (src/backend/replication/pgoutput/pgoutput.c,
//   LOGICALREP_PROTO_MAX_VERSION_NUM).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "pgferry/replication/core/ids.hpp"
#include "pgferry/replication/core/lsn.hpp"
#include "pgferry/replication/core/pg.hpp"

namespace pgferry::replication {

struct SystemIdentity {
  std::string system_id;
  int timeline = 0;
  Lsn xlogpos;
  std::string dbname;
};

enum class SnapshotAction {
  export_snapshot,    // export a snapshot for a concurrent COPY (SNAPSHOT 'export')
  noexport_snapshot,  // no snapshot (SNAPSHOT 'nothing')
  use_snapshot,       // use it in the current transaction (SNAPSHOT 'use')
};

struct SlotOptions {
  bool temporary = false;
  SnapshotAction snapshot = SnapshotAction::noexport_snapshot;
  // Decode prepared transactions at PREPARE time (PG 15+).
  bool two_phase = false;
};

struct CreatedSlot {
  std::string name;
  Lsn consistent_point;
  std::optional<std::string> snapshot_name;  // with export_snapshot only
};

struct StartOptions {
  int protocol_version = 1;
  std::vector<std::string> publications;
  // Stream in-progress transactions (v2+). With `parallel` on v4 the server is asked for
  // streaming 'parallel', which adds abort_lsn/abort_time to Stream Abort.
  bool streaming = false;
  bool parallel_streaming = false;
  bool binary = false;
  bool messages = false;
  bool two_phase = false;  // v3+
};

// XLogData ('w'): one pgoutput message.
struct XLogData {
  Lsn wal_start;
  Lsn wal_end;
  PgTimestamp send_time;
  std::span<const std::byte> payload;
};

// Primary keepalive ('k').
struct Keepalive {
  Lsn wal_end;
  PgTimestamp send_time;
  bool reply_requested = false;
};

// The server ended the COPY (after our CopyDone, or on its own, e.g. shutdown).
struct StreamEnded {};

using ReplicationMessage = std::variant<XLogData, Keepalive, StreamEnded>;

class ReplicationConnection {
 public:
  // Connects with replication=database. Throws ConfigError / ConnectionError (side source).
  static ReplicationConnection open(std::string_view conninfo);

  // The highest pgoutput protocol version this server speaks (1..4).
  static int max_protocol_version(int server_version);
  int max_protocol_version() const { return max_protocol_version(conn_.server_version()); }

  SystemIdentity identify_system();
  CreatedSlot create_logical_slot(std::string_view name, const SlotOptions& options = {});
  // With `wait`, waits for the slot to become inactive (DROP_REPLICATION_SLOT ... WAIT).
  void drop_slot(std::string_view name, bool wait = false);

  // The START_REPLICATION command text for the options (exposed for tests and logs).
  static std::string start_replication_command(std::string_view slot, Lsn start_lsn,
                                               const StartOptions& options);
  // Enters CopyBoth mode. `start_lsn` may be invalid (0/0): the slot's confirmed position.
  void start_replication(std::string_view slot, Lsn start_lsn, const StartOptions& options);
  bool streaming() const { return streaming_; }

  // Waits up to `timeout` for the next message; nullopt when none came in time.
  // Throws ConnectionError when the connection is lost, ProtocolError for bytes that do
  // not parse, and the server's error (SqlError/ConnectionError) if it ended the COPY
  // with one.
  std::optional<ReplicationMessage> read(std::chrono::milliseconds timeout);

  // Standby status update ('r'). Positions are "everything before this LSN".
  void send_status(Lsn write, Lsn flush, Lsn apply, bool reply_requested = false);

  // Sends CopyDone and reads until the server ends the COPY too (bounded by `timeout`).
  void end_copy(std::chrono::milliseconds timeout = std::chrono::seconds(10));

  struct CopyBufferDeleter {
    void operator()(char* buffer) const;
  };
  using CopyBuffer = std::unique_ptr<char, CopyBufferDeleter>;
  // Takes the buffer behind the last XLogData's payload, so that it outlives the next read().
  CopyBuffer take_buffer() { return std::move(copy_buffer_); }

  Connection& connection() { return conn_; }
  const std::string& redacted_conninfo() const { return conn_.redacted_conninfo(); }

 private:
  explicit ReplicationConnection(Connection conn) : conn_(std::move(conn)) {}
  void finish_copy();

  Connection conn_;
  CopyBuffer copy_buffer_;
  bool streaming_ = false;
};

// The publication_names option value: each name double-quoted as an identifier, joined by
// commas, then quoted as a string literal.
std::string publication_names_literal(const std::vector<std::string>& publications);

}  // namespace pgferry::replication
