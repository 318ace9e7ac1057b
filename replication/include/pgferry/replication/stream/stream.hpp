// ReplicationStream: the source side of `pgferry run`. Streams a logical slot over a
// replication connection, decodes and assembles transactions into a ChangeSink, and
// reports progress back to the source.
//
// NOTES
// - The flush/apply position reported to the source only ever advances to what the
//   consumer declared durable with confirm(), never past it: the slot must keep every
//   transaction the target has not committed. The write position is what was received.
// - A status update goes out every `status_interval`, when the server asks for one
//   (keepalive with reply_requested), on send_status(), and at stop().
// - A receiver thread owns the replication connection once streaming: it reads the socket
//   into a queue bounded in bytes, answers keepalives and sends status updates, so the
//   walsender never waits while the consumer is busy writing to the target (the two
//   servers work at the same time). poll() runs on the caller's thread: it takes what is
//   queued and decodes and dispatches it to the sink there; the sink is never called from
//   the receiver thread. An error of the receiver (lost connection, garbage on the wire)
//   is rethrown by poll() after everything received before it was dispatched.
// - While the stream is busy the receiver waits `read_coalesce` between reads, so that the
//   walsender's many small writes cost one wakeup, not one each.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "pgferry/replication/core/lsn.hpp"
#include "pgferry/replication/decode/change_sink.hpp"
#include "pgferry/replication/decode/txn_assembler.hpp"
#include "pgferry/replication/stream/replication_connection.hpp"

namespace pgferry::replication {

struct StreamOptions {
  std::string slot;
  std::vector<std::string> publications;
  // Where to resume: the consumer's durable position (invalid: the slot's confirmed one).
  Lsn start_lsn;
  // pgoutput protocol version; nullopt: the highest the server supports.
  std::optional<int> protocol_version;
  // Stream in-progress transactions (protocol v2+; ignored on v1).
  bool streaming = true;
  // On protocol v4 (PostgreSQL 16+ sources) stream with streaming 'parallel', so that a
  // Stream Abort carries the abort LSN and time (pgoutput sends them only then; nothing
  // else changes on the source side).
  bool parallel_streaming = true;
  bool binary = false;
  // Logical messages (pg_logical_emit_message), from a PostgreSQL 14 source on.
  bool messages = false;
  std::chrono::milliseconds status_interval{10'000};
  // While the stream is busy, wait this long between reads so that the walsender's many
  // small writes are read in one wakeup (0: read as soon as anything arrived).
  std::chrono::microseconds read_coalesce{300};
  // Received messages not yet dispatched; the receiver stops reading above this.
  std::size_t receive_buffer_bytes = 32u << 20;
  // Spool directory for streamed transactions; empty: <temp>/pgferry-spool-<slot>.
  std::filesystem::path spool_dir;
};

class ReplicationStream {
 public:
  // Does not connect yet (start() does). Throws ConfigError for bad options.
  ReplicationStream(std::string conninfo, StreamOptions options, ChangeSink& sink);
  ReplicationStream(const ReplicationStream&) = delete;
  ReplicationStream& operator=(const ReplicationStream&) = delete;
  ~ReplicationStream();

  // Connects, negotiates the protocol version and starts streaming from the slot.
  void start();
  // Waits up to `timeout` for data and dispatches all that was received. Returns false once
  // the server ended the stream; rethrows the receiver's error.
  bool poll(std::chrono::milliseconds timeout);
  // Whether the receiver holds messages the next poll() will take. False right after a
  // poll: the consumer has everything that arrived (at the head of the stream, or ahead of
  // the walsender).
  bool has_queued() const;
  // Everything before `durable` is committed on the target: it may be reported as
  // flushed. Lower values than an earlier call are ignored.
  void confirm(Lsn durable);
  // Sends a status update now (from the receiver thread, at once).
  void send_status(bool reply_requested = false);
  // Ends the COPY (CopyDone) after a final status update, and closes the connection.
  void stop();

  bool started() const { return connection_.has_value(); }
  // The highest WAL position dispatched (XLogData or keepalive).
  Lsn received_lsn() const { return received_lsn_; }
  // pgoutput payload bytes dispatched since start().
  std::uint64_t received_bytes() const { return received_bytes_; }
  // The server's WAL end as of its last keepalive.
  Lsn server_wal_end() const { return server_wal_end_; }
  // What was last confirmed by the consumer (and is reported as flushed).
  Lsn confirmed_lsn() const { return confirmed_lsn_; }
  int protocol_version() const { return protocol_version_; }
  std::uint64_t spooled_bytes() const { return assembler_ ? assembler_->spooled_bytes() : 0; }
  const TransactionAssembler* assembler() const { return assembler_ ? &*assembler_ : nullptr; }
  const StreamOptions& options() const { return options_; }

 private:
  class Receiver;
  void handle(const ReplicationMessage& message);
  void stop_receiver() noexcept;

  std::string conninfo_;
  StreamOptions options_;
  ChangeSink& sink_;
  std::optional<ReplicationConnection> connection_;
  std::optional<TransactionAssembler> assembler_;
  std::unique_ptr<Receiver> receiver_;
  int protocol_version_ = 0;
  Lsn received_lsn_;
  Lsn server_wal_end_;
  Lsn confirmed_lsn_;
  std::uint64_t received_bytes_ = 0;
  bool ended_ = false;
};

}  // namespace pgferry::replication
