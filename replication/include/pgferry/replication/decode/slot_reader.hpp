// Reading a slot's change stream and decoding it, without applying it anywhere: what
// `pgferry decode` prints, and how fixtures are captured from a real server.
//
// NOTES
// - The slot is not advanced unless `confirm` is set: looking at a production slot must
//   not consume it. Status updates still go out (with no flush position) so that the
//   walsender does not time us out.
// - `until_caught_up` stops at the first keepalive at or past the WAL position the server
//   reported when we connected, outside any transaction: "read what is there and stop".
// - `capture` saves every XLogData payload as it came off the wire, in the fixture format
//   of tests/fixtures/pgoutput/README.md (big-endian WAL start, length, payload).
#pragma once

#include <atomic>
#include <functional>
#include <string>

#include "pgferry/replication/core/lsn.hpp"
#include "pgferry/replication/decode/pgoutput.hpp"

namespace pgferry::replication {

struct SlotReaderOptions {
  std::string conninfo;  // the source (made a replication connection)
  std::string slot;
  std::string publication;
  bool create_slot = false;  // create the slot first
  bool temporary = false;    // with create_slot: dropped when we disconnect
  Lsn start;                 // 0/0: the slot's confirmed position
  long limit = 0;            // stop after this many messages (0: no limit)
  int protocol_version = 0;  // 0: highest the server supports
  bool streaming = true;     // stream in-progress transactions (v2+)
  bool parallel = false;     // streaming 'parallel' (v4)
  bool binary = false;
  bool messages = false;  // pg_logical_emit_message() messages
  bool two_phase = false;
  bool until_caught_up = false;
  bool confirm = false;  // advance the slot past what was read
  std::string capture;   // file for the raw payloads; empty: none
};

// Called with each decoded message and the WAL start of its XLogData; the message is a
// view valid during the call only.
using DecodedMessageHandler = std::function<void(Lsn, const pgoutput::Message&)>;

class SlotReader {
 public:
  explicit SlotReader(SlotReaderOptions options) : options_(std::move(options)) {}

  // Reads until the limit, caught up, the end of the stream or request_stop(). Throws
  // ConfigError when the capture file cannot be created, Error when writing it fails.
  void run(const DecodedMessageHandler& handler);
  // Thread- and async-signal-safe.
  void request_stop() noexcept { stop_requested_.store(true, std::memory_order_relaxed); }

 private:
  SlotReaderOptions options_;
  std::atomic<bool> stop_requested_{false};
};

}  // namespace pgferry::replication
