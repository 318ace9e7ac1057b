// Replication stream: connection + decoder/assembler + status updates.
#include "pgferry/replication/stream.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "pgferry/replication/conninfo.hpp"

namespace pgferry::replication {

ReplicationStream::ReplicationStream(std::string conninfo, StreamOptions options, ChangeSink& sink)
    : conninfo_(std::move(conninfo)), options_(std::move(options)), sink_(sink) {
  validate_conninfo(conninfo_, "--source");
  if (options_.slot.empty()) throw ConfigError("a replication slot name is needed to stream");
  if (options_.publications.empty()) {
    throw ConfigError(
        fmt::format("slot \"{}\": at least one publication is needed to stream", options_.slot));
  }
  if (options_.protocol_version && (*options_.protocol_version < Decoder::kMinProtocolVersion ||
                                    *options_.protocol_version > Decoder::kMaxProtocolVersion)) {
    throw ConfigError(fmt::format("pgoutput protocol version {} is not supported (use 1 to 4)",
                                  *options_.protocol_version));
  }
  if (options_.status_interval.count() <= 0) {
    throw ConfigError("the status interval must be positive");
  }
  if (options_.spool_dir.empty()) {
    options_.spool_dir =
        std::filesystem::temp_directory_path() / fmt::format("pgferry-spool-{}", options_.slot);
  }
  confirmed_lsn_ = options_.start_lsn;
}

ReplicationStream::~ReplicationStream() = default;

void ReplicationStream::start() {
  connection_.reset();
  assembler_.reset();
  ended_ = false;
  connection_.emplace(ReplicationConnection::open(conninfo_));
  int server_max = connection_->max_protocol_version();
  protocol_version_ = options_.protocol_version.value_or(server_max);

  StartOptions start;
  start.protocol_version = protocol_version_;
  start.publications = options_.publications;
  start.streaming = options_.streaming && protocol_version_ >= 2;
  start.binary = options_.binary;
  start.messages = options_.messages;
  assembler_.emplace(sink_, options_.spool_dir, protocol_version_);
  connection_->start_replication(options_.slot, options_.start_lsn, start);
  received_lsn_ = std::max(received_lsn_, options_.start_lsn);
  last_status_ = std::chrono::steady_clock::now();
  spdlog::info("streaming slot={} lsn={} proto={} streaming={} source={}", options_.slot,
               options_.start_lsn, protocol_version_, start.streaming,
               connection_->redacted_conninfo());
}

void ReplicationStream::handle(const ReplicationMessage& message) {
  std::visit(
      [&](const auto& m) {
        using T = std::decay_t<decltype(m)>;
        if constexpr (std::is_same_v<T, XLogData>) {
          received_lsn_ = std::max({received_lsn_, m.wal_start, m.wal_end});
          if (!m.payload.empty()) assembler_->on_message(m.payload);
        } else if constexpr (std::is_same_v<T, Keepalive>) {
          received_lsn_ = std::max(received_lsn_, m.wal_end);
          server_wal_end_ = std::max(server_wal_end_, m.wal_end);
          assembler_->on_keepalive(m.wal_end);
          if (m.reply_requested) send_status();
        } else {
          ended_ = true;
        }
      },
      message);
}

bool ReplicationStream::poll(std::chrono::milliseconds timeout) {
  if (!connection_) throw Error("replication stream: poll() before start()");
  if (ended_) return false;
  auto first = connection_->read(std::min(timeout, options_.status_interval));
  if (first) {
    handle(*first);
    // Drain what has already arrived without waiting.
    while (!ended_) {
      auto next = connection_->read(std::chrono::milliseconds(0));
      if (!next) break;
      handle(*next);
      send_status_if_due();
    }
  }
  if (!ended_) send_status_if_due();
  return !ended_;
}

void ReplicationStream::confirm(Lsn durable) {
  confirmed_lsn_ = std::max(confirmed_lsn_, durable);
}

void ReplicationStream::send_status(bool reply_requested) {
  if (!connection_ || !connection_->streaming()) return;
  connection_->send_status(std::max(received_lsn_, confirmed_lsn_), confirmed_lsn_, confirmed_lsn_,
                           reply_requested);
  last_status_ = std::chrono::steady_clock::now();
}

void ReplicationStream::send_status_if_due() {
  if (std::chrono::steady_clock::now() - last_status_ >= options_.status_interval) send_status();
}

void ReplicationStream::stop() {
  if (!connection_) return;
  if (connection_->streaming()) {
    send_status();
    connection_->end_copy();
  }
  connection_.reset();
  ended_ = true;
}

}  // namespace pgferry::replication
