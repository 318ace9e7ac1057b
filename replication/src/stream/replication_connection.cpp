// Replication connection: commands and the CopyBoth loop.
//
// Streaming replication messages (src/backend/replication/walsender.c, and the client side
// in src/backend/replication/logical/worker.c, LogicalRepApplyLoop):
//   XLogData        'w' | wal_start u64 | wal_end u64 | send_time i64 | payload
//   keepalive       'k' | wal_end u64 | send_time i64 | reply_requested u8
//   status update   'r' | write u64 | flush u64 | apply u64 | client_time i64 | reply u8
#include "pgferry/replication/stream/replication_connection.hpp"

#include <fmt/format.h>
#include <poll.h>

#include <cerrno>
#include <cstring>

#include "pgferry/replication/decode/byte_reader.hpp"

namespace pgferry::replication {

namespace {

// A string literal of the replication command grammar (repl_scanner.l): single quotes,
// a quote doubled; no escape-string syntax there.
std::string replication_literal(std::string_view value) {
  std::string out = "'";
  for (char c : value) {
    if (c == '\'') out += '\'';
    out += c;
  }
  out += '\'';
  return out;
}

Lsn parse_lsn_field(std::string_view text, std::string_view what) {
  auto lsn = Lsn::parse(text);
  if (!lsn) throw ProtocolError(fmt::format("replication: bad {} \"{}\"", what, text), 0, 0);
  return *lsn;
}

std::int64_t now_pg_timestamp() {
  return to_pg_timestamp(std::chrono::time_point_cast<std::chrono::microseconds>(PgClock::now()));
}

void put_u64(char* out, std::uint64_t value) {
  value = __builtin_bswap64(value);
  std::memcpy(out, &value, sizeof value);
}

}  // namespace

void ReplicationConnection::CopyBufferDeleter::operator()(char* buffer) const {
  PQfreemem(buffer);
}

ReplicationConnection ReplicationConnection::open(std::string_view conninfo) {
  return ReplicationConnection(
      Connection::open(conninfo, Side::source, {{"replication", "database"}}));
}

int ReplicationConnection::max_protocol_version(int server_version) {
  if (server_version >= 160000) return 4;
  if (server_version >= 150000) return 3;
  if (server_version >= 140000) return 2;
  return 1;
}

SystemIdentity ReplicationConnection::identify_system() {
  auto result = conn_.exec("IDENTIFY_SYSTEM", "identifying the source system");
  if (result.rows() != 1 || result.columns() < 4) {
    throw ProtocolError(fmt::format("replication: IDENTIFY_SYSTEM returned {} rows of {} columns",
                                    result.rows(), result.columns()),
                        0, 0);
  }
  SystemIdentity identity;
  identity.system_id = std::string(result.get(0, 0));
  identity.timeline = std::stoi(std::string(result.get(0, 1)));
  identity.xlogpos = parse_lsn_field(result.get(0, 2), "xlogpos");
  identity.dbname = std::string(result.get(0, 3));
  return identity;
}

CreatedSlot ReplicationConnection::create_logical_slot(std::string_view name,
                                                       const SlotOptions& options) {
  bool modern = conn_.server_version() >= 150000;
  if (options.two_phase && !modern) {
    throw ConfigError(
        fmt::format("slot \"{}\": two-phase decoding needs PostgreSQL 15 or later", name));
  }
  std::string sql = fmt::format("CREATE_REPLICATION_SLOT {}{} LOGICAL pgoutput", quote_ident(name),
                                options.temporary ? " TEMPORARY" : "");
  if (modern) {
    const char* snapshot = options.snapshot == SnapshotAction::export_snapshot ? "export"
                           : options.snapshot == SnapshotAction::use_snapshot  ? "use"
                                                                               : "nothing";
    sql += fmt::format(" (SNAPSHOT '{}'{})", snapshot, options.two_phase ? ", TWO_PHASE" : "");
  } else {
    sql += options.snapshot == SnapshotAction::export_snapshot ? " EXPORT_SNAPSHOT"
           : options.snapshot == SnapshotAction::use_snapshot  ? " USE_SNAPSHOT"
                                                               : " NOEXPORT_SNAPSHOT";
  }
  auto result = conn_.exec(sql, fmt::format("creating replication slot \"{}\"", name));
  if (result.rows() != 1 || result.columns() < 3) {
    throw ProtocolError(
        fmt::format("replication: CREATE_REPLICATION_SLOT returned {} rows of {} columns",
                    result.rows(), result.columns()),
        0, 0);
  }
  CreatedSlot slot;
  slot.name = std::string(result.get(0, 0));
  slot.consistent_point = parse_lsn_field(result.get(0, 1), "consistent_point");
  if (auto snapshot = result.optional(0, 2)) slot.snapshot_name = std::string(*snapshot);
  return slot;
}

void ReplicationConnection::drop_slot(std::string_view name, bool wait) {
  conn_.exec(fmt::format("DROP_REPLICATION_SLOT {}{}", quote_ident(name), wait ? " WAIT" : ""),
             fmt::format("dropping replication slot \"{}\"", name));
}

std::string publication_names_literal(const std::vector<std::string>& publications) {
  std::string names;
  for (const auto& publication : publications) {
    if (!names.empty()) names += ',';
    names += quote_ident(publication);
  }
  return replication_literal(names);
}

std::string ReplicationConnection::start_replication_command(std::string_view slot, Lsn start_lsn,
                                                             const StartOptions& options) {
  if (options.publications.empty()) {
    throw ConfigError(
        fmt::format("slot \"{}\": at least one publication is needed to stream", slot));
  }
  if (options.protocol_version < 1 || options.protocol_version > 4) {
    throw ConfigError(fmt::format("pgoutput protocol version {} is not supported (use 1 to 4)",
                                  options.protocol_version));
  }
  std::string sql =
      fmt::format("START_REPLICATION SLOT {} LOGICAL {} (proto_version '{}', publication_names {}",
                  quote_ident(slot), start_lsn, options.protocol_version,
                  publication_names_literal(options.publications));
  if (options.streaming && options.protocol_version >= 2) {
    bool parallel = options.parallel_streaming && options.protocol_version >= 4;
    sql += fmt::format(", streaming '{}'", parallel ? "parallel" : "on");
  }
  if (options.binary) sql += ", binary 'true'";
  if (options.messages) sql += ", messages 'true'";
  if (options.two_phase) {
    if (options.protocol_version < 3) {
      throw ConfigError(
          fmt::format("slot \"{}\": two-phase needs protocol v3 (PostgreSQL 15+)", slot));
    }
    sql += ", two_phase 'on'";
  }
  sql += ")";
  return sql;
}

void ReplicationConnection::start_replication(std::string_view slot, Lsn start_lsn,
                                              const StartOptions& options) {
  int max_version = max_protocol_version();
  if (options.protocol_version > max_version) {
    throw ConfigError(fmt::format(
        "pgoutput protocol v{} is not supported by the source (server version {}, highest v{})",
        options.protocol_version, conn_.server_version(), max_version));
  }
  std::string sql = start_replication_command(slot, start_lsn, options);
  auto result = conn_.check(PQexec(conn_.native(), sql.c_str()),
                            fmt::format("starting replication from slot \"{}\"", slot));
  if (result.status() != PGRES_COPY_BOTH) {
    throw ProtocolError(fmt::format("replication: START_REPLICATION answered {} instead of COPY",
                                    PQresStatus(result.status())),
                        0, 0);
  }
  streaming_ = true;
}

std::optional<ReplicationMessage> ReplicationConnection::read(std::chrono::milliseconds timeout) {
  PGconn* conn = conn_.native();
  auto deadline = std::chrono::steady_clock::now() + timeout;
  copy_buffer_.reset();
  while (true) {
    char* raw = nullptr;
    int length = PQgetCopyData(conn, &raw, 1);
    if (length > 0) {
      copy_buffer_.reset(raw);
      std::span<const std::byte> message(reinterpret_cast<const std::byte*>(raw),
                                         static_cast<std::size_t>(length));
      ByteReader in(message, "replication");
      char type = in.read_char("message type");
      in.set_message_type(type);
      if (type == 'w') {
        XLogData data;
        data.wal_start = Lsn{in.read_u64("wal_start")};
        data.wal_end = Lsn{in.read_u64("wal_end")};
        data.send_time = from_pg_timestamp(in.read_i64("send_time"));
        data.payload = in.read_bytes(in.remaining(), "payload");
        return data;
      }
      if (type == 'k') {
        Keepalive keepalive;
        keepalive.wal_end = Lsn{in.read_u64("wal_end")};
        keepalive.send_time = from_pg_timestamp(in.read_i64("send_time"));
        std::uint8_t reply = in.read_u8("reply_requested");
        if (reply > 1) in.fail(fmt::format("bad reply_requested byte {}", reply));
        keepalive.reply_requested = reply == 1;
        in.expect_end();
        return keepalive;
      }
      in.fail_at(0, "unknown replication message type");
    }
    if (length == -1) {
      finish_copy();
      return StreamEnded{};
    }
    if (length < -1) throw_pg_error(conn, nullptr, Side::source, "reading the replication stream");

    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    pollfd fd{PQsocket(conn), POLLIN, 0};
    int ready = ::poll(&fd, 1, static_cast<int>(std::max<std::int64_t>(0, left.count())));
    if (ready < 0) {
      if (errno == EINTR) continue;
      throw ConnectionError(fmt::format("source ({}): poll on the replication socket failed: {}",
                                        conn_.redacted_conninfo(), std::strerror(errno)),
                            "08006", Side::source);
    }
    if (ready == 0) return std::nullopt;
    if (PQconsumeInput(conn) == 0) {
      throw_pg_error(conn, nullptr, Side::source, "reading the replication stream");
    }
  }
}

void ReplicationConnection::send_status(Lsn write, Lsn flush, Lsn apply, bool reply_requested) {
  char message[1 + 8 * 4 + 1];
  message[0] = 'r';
  put_u64(message + 1, write.value());
  put_u64(message + 9, flush.value());
  put_u64(message + 17, apply.value());
  put_u64(message + 25, static_cast<std::uint64_t>(now_pg_timestamp()));
  message[33] = reply_requested ? 1 : 0;
  PGconn* conn = conn_.native();
  if (PQputCopyData(conn, message, sizeof message) != 1 || PQflush(conn) != 0) {
    throw_pg_error(conn, nullptr, Side::source, "sending a standby status update");
  }
}

void ReplicationConnection::end_copy(std::chrono::milliseconds timeout) {
  if (!streaming_) return;
  PGconn* conn = conn_.native();
  if (PQputCopyEnd(conn, nullptr) != 1 || PQflush(conn) != 0) {
    throw_pg_error(conn, nullptr, Side::source, "ending the replication stream");
  }
  // Drain what the server still sends until it answers with its own CopyDone.
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (streaming_) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      throw TimedOut(fmt::format("source ({}): the server did not end the replication stream",
                                 conn_.redacted_conninfo()));
    }
    auto message = read(left);
    if (message && std::holds_alternative<StreamEnded>(*message)) break;
  }
}

void ReplicationConnection::finish_copy() {
  PGconn* conn = conn_.native();
  streaming_ = false;
  while (PGresult* raw = PQgetResult(conn)) {
    ExecStatusType status = PQresultStatus(raw);
    if (status == PGRES_COPY_IN || status == PGRES_COPY_BOTH) {
      // The server ended its half first: answer with our CopyDone.
      PQclear(raw);
      if (PQputCopyEnd(conn, nullptr) != 1 || PQflush(conn) != 0) {
        throw_pg_error(conn, nullptr, Side::source, "ending the replication stream");
      }
      continue;
    }
    conn_.check(raw, "ending the replication stream");
  }
}

}  // namespace pgferry::replication
