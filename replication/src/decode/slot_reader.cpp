// Reading and decoding a slot's change stream without applying it (slot_reader.hpp).
#include "pgferry/replication/decode/slot_reader.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <fstream>
#include <variant>

#include "pgferry/replication/core/error.hpp"
#include "pgferry/replication/decode/decoder.hpp"
#include "pgferry/replication/stream/replication_connection.hpp"

namespace pgferry::replication {

namespace pg = pgoutput;

void SlotReader::run(const DecodedMessageHandler& handler) {
  const auto& options = options_;
  std::ofstream capture;
  if (!options.capture.empty()) {
    capture.open(options.capture, std::ios::binary | std::ios::trunc);
    if (!capture) {
      throw ConfigError(fmt::format("--capture {}: cannot create the file", options.capture));
    }
  }

  auto conn = ReplicationConnection::open(options.conninfo);
  auto identity = conn.identify_system();
  if (options.create_slot) {
    SlotOptions slot_options;
    slot_options.temporary = options.temporary;
    slot_options.two_phase = options.two_phase;
    auto created = conn.create_logical_slot(options.slot, slot_options);
    spdlog::info("created slot={} consistent_point={}", created.name, created.consistent_point);
  }

  StartOptions start_options;
  start_options.protocol_version =
      options.protocol_version > 0 ? options.protocol_version : conn.max_protocol_version();
  start_options.publications = {options.publication};
  start_options.streaming = options.streaming && start_options.protocol_version >= 2;
  start_options.parallel_streaming = options.parallel;
  start_options.binary = options.binary;
  start_options.messages = options.messages;
  start_options.two_phase = options.two_phase;
  Decoder decoder(start_options.protocol_version,
                  {options.parallel && start_options.protocol_version >= 4});
  conn.start_replication(options.slot, options.start, start_options);

  long read = 0;
  bool in_transaction = false;
  Lsn received = options.start;
  Lsn confirmed;
  auto flush = [&] { return options.confirm ? confirmed : Lsn{}; };
  auto last_status = std::chrono::steady_clock::now();
  bool done = false;
  while (!done && !stop_requested_.load(std::memory_order_relaxed)) {
    auto message = conn.read(std::chrono::milliseconds(500));
    if (message) {
      if (std::holds_alternative<StreamEnded>(*message)) break;
      if (auto* data = std::get_if<XLogData>(&*message)) {
        received = std::max(received, data->wal_start);
        if (capture.is_open()) {
          std::uint64_t wal_start = __builtin_bswap64(data->wal_start.value());
          std::uint32_t length =
              __builtin_bswap32(static_cast<std::uint32_t>(data->payload.size()));
          capture.write(reinterpret_cast<const char*>(&wal_start), 8);
          capture.write(reinterpret_cast<const char*>(&length), 4);
          capture.write(reinterpret_cast<const char*>(data->payload.data()),
                        static_cast<std::streamsize>(data->payload.size()));
          if (!capture) throw Error(fmt::format("--capture {}: write failed", options.capture));
        }
        auto decoded = decoder.decode(data->payload);
        if (std::holds_alternative<pg::Begin>(decoded) ||
            std::holds_alternative<pg::BeginPrepare>(decoded)) {
          in_transaction = true;
        } else if (auto* commit = std::get_if<pg::Commit>(&decoded)) {
          in_transaction = false;
          confirmed = commit->end_lsn;
        } else if (std::holds_alternative<pg::Prepare>(decoded) ||
                   std::holds_alternative<pg::CommitPrepared>(decoded) ||
                   std::holds_alternative<pg::RollbackPrepared>(decoded)) {
          in_transaction = false;
        } else if (auto* stream_commit = std::get_if<pg::StreamCommit>(&decoded)) {
          confirmed = stream_commit->end_lsn;
        }
        handler(data->wal_start, decoded);
        if (options.limit > 0 && ++read >= options.limit) done = true;
      } else if (auto* keepalive = std::get_if<Keepalive>(&*message)) {
        received = std::max(received, keepalive->wal_end);
        if (options.until_caught_up && !in_transaction && !decoder.in_stream_block() &&
            keepalive->wal_end >= identity.xlogpos) {
          done = true;
        }
        if (keepalive->reply_requested) {
          conn.send_status(received, flush(), flush());
          last_status = std::chrono::steady_clock::now();
        }
      }
    }
    if (std::chrono::steady_clock::now() - last_status > std::chrono::seconds(10)) {
      conn.send_status(received, flush(), flush());
      last_status = std::chrono::steady_clock::now();
    }
  }
  if (options.confirm) conn.send_status(received, confirmed, confirmed);
  conn.end_copy();
  if (capture.is_open()) {
    capture.close();
    if (!capture) throw Error(fmt::format("--capture {}: write failed", options.capture));
  }
}

}  // namespace pgferry::replication
