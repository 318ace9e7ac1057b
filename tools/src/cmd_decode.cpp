// `pgferry decode`: print the decoded change stream of a slot, one message a line, as text
// or JSON. For operators (what is the source sending?) and for writing fixtures (the
// hidden --capture FILE saves every XLogData payload as it came off the wire).
//
// NOTES
// - The slot is not advanced unless --confirm is given: looking at a production slot must
//   not consume it. Status updates still go out (with no flush position) so that the
//   walsender does not time us out.
// - --until-caught-up stops at the first keepalive at or past the WAL position the server
//   reported when we connected, outside any transaction: "print what is there and exit".
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <csignal>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "pgferry/replication/decode/decoder.hpp"
#include "pgferry/replication/decode/relation.hpp"
#include "pgferry/replication/stream/replication_connection.hpp"

namespace pgferry::tools {

namespace {

namespace repl = pgferry::replication;
namespace pg = pgferry::replication::pgoutput;
using nlohmann::json;

volatile std::sig_atomic_t g_stop = 0;
extern "C" void on_decode_stop_signal(int) {
  g_stop = 1;
}

struct DecodeOptions {
  std::string slot;
  bool create_slot = false;
  bool temporary = false;
  std::string start;
  long limit = 0;
  int protocol_version = 0;  // 0: highest the server supports
  bool no_streaming = false;
  bool parallel = false;
  bool binary = false;
  bool messages = false;
  bool two_phase = false;
  bool until_caught_up = false;
  bool confirm = false;
  std::string capture;
};

template <typename... Fs>
struct Overloaded : Fs... {
  using Fs::operator()...;
};
template <typename... Fs>
Overloaded(Fs...) -> Overloaded<Fs...>;

std::string hex(std::string_view bytes) {
  std::string out = "\\x";
  for (unsigned char c : bytes) out += fmt::format("{:02x}", c);
  return out;
}

// Renders messages; remembers relations so that changes print table and column names.
class Printer {
 public:
  explicit Printer(bool as_json) : json_(as_json) {}

  void print(repl::Lsn lsn, const pg::Message& message) {
    json doc;
    doc["lsn"] = lsn.to_string();
    std::string text = std::visit(
        Overloaded{
            [&](const pg::Begin& m) {
              doc["type"] = "begin";
              doc["xid"] = m.xid.value;
              doc["final_lsn"] = m.final_lsn.to_string();
              doc["commit_time"] = repl::to_pg_timestamp(m.commit_time);
              return fmt::format("BEGIN xid={} final_lsn={}", m.xid.value, m.final_lsn);
            },
            [&](const pg::Commit& m) {
              doc["type"] = "commit";
              doc["commit_lsn"] = m.commit_lsn.to_string();
              doc["end_lsn"] = m.end_lsn.to_string();
              doc["commit_time"] = repl::to_pg_timestamp(m.commit_time);
              return fmt::format("COMMIT commit_lsn={} end_lsn={}", m.commit_lsn, m.end_lsn);
            },
            [&](const pg::Origin& m) {
              doc["type"] = "origin";
              doc["origin_lsn"] = m.commit_lsn.to_string();
              doc["name"] = m.name;
              return fmt::format("ORIGIN {} lsn={}", m.name, m.commit_lsn);
            },
            [&](const pg::RelationMessage& m) {
              const auto& relation = relations_.update(m);
              set_xid(doc, m.xid);
              doc["type"] = "relation";
              doc["relation_id"] = m.id.value;
              doc["relation"] = relation.qualified_name();
              doc["replica_identity"] = std::string(1, m.replica_identity);
              json columns = json::array();
              std::string names;
              for (const auto& column : m.columns) {
                columns.push_back({{"name", column.name},
                                   {"type_oid", column.type_oid.value},
                                   {"type_modifier", column.type_modifier},
                                   {"key", column.is_key()}});
                names += fmt::format(" {}{}", column.name, column.is_key() ? "*" : "");
              }
              doc["columns"] = columns;
              return fmt::format("RELATION{} {} id={} identity={}{}", xid_text(m.xid),
                                 relation.qualified_name(), m.id.value, m.replica_identity, names);
            },
            [&](const pg::TypeMessage& m) {
              set_xid(doc, m.xid);
              doc["type"] = "type";
              doc["type_oid"] = m.id.value;
              doc["name"] = fmt::format("{}.{}", m.nspname, m.name);
              return fmt::format("TYPE{} {}.{} oid={}", xid_text(m.xid), m.nspname, m.name,
                                 m.id.value);
            },
            [&](const pg::Insert& m) {
              set_xid(doc, m.xid);
              doc["type"] = "insert";
              return change_text("INSERT", m.xid, m.relation, doc, {}, 0, m.new_tuple);
            },
            [&](const pg::Update& m) {
              set_xid(doc, m.xid);
              doc["type"] = "update";
              return change_text("UPDATE", m.xid, m.relation, doc, m.old_tuple, m.old_kind,
                                 m.new_tuple);
            },
            [&](const pg::Delete& m) {
              set_xid(doc, m.xid);
              doc["type"] = "delete";
              return change_text("DELETE", m.xid, m.relation, doc, m.old_tuple, m.old_kind, {});
            },
            [&](const pg::Truncate& m) {
              set_xid(doc, m.xid);
              doc["type"] = "truncate";
              doc["cascade"] = (m.flags & pg::Truncate::kCascade) != 0;
              doc["restart_identity"] = (m.flags & pg::Truncate::kRestartIdentity) != 0;
              json names = json::array();
              std::string listed;
              for (auto id : m.relations) {
                names.push_back(relation_name(id));
                listed += " " + relation_name(id);
              }
              doc["relations"] = names;
              return fmt::format("TRUNCATE{}{} flags={}", xid_text(m.xid), listed, m.flags);
            },
            [&](const pg::LogicalMessage& m) {
              set_xid(doc, m.xid);
              std::string_view content(reinterpret_cast<const char*>(m.content.data()),
                                       m.content.size());
              doc["type"] = "message";
              doc["transactional"] = m.transactional;
              doc["message_lsn"] = m.lsn.to_string();
              doc["prefix"] = m.prefix;
              doc["content"] = content;
              return fmt::format("MESSAGE{} prefix={} transactional={} content={}", xid_text(m.xid),
                                 m.prefix, m.transactional, content);
            },
            [&](const pg::StreamStart& m) {
              doc["type"] = "stream_start";
              doc["xid"] = m.xid.value;
              doc["first_segment"] = m.first_segment;
              return fmt::format("STREAM START xid={} first={}", m.xid.value, m.first_segment);
            },
            [&](const pg::StreamStop&) {
              doc["type"] = "stream_stop";
              return std::string("STREAM STOP");
            },
            [&](const pg::StreamCommit& m) {
              doc["type"] = "stream_commit";
              doc["xid"] = m.xid.value;
              doc["commit_lsn"] = m.commit_lsn.to_string();
              doc["end_lsn"] = m.end_lsn.to_string();
              doc["commit_time"] = repl::to_pg_timestamp(m.commit_time);
              return fmt::format("STREAM COMMIT xid={} commit_lsn={} end_lsn={}", m.xid.value,
                                 m.commit_lsn, m.end_lsn);
            },
            [&](const pg::StreamAbort& m) {
              doc["type"] = "stream_abort";
              doc["xid"] = m.xid.value;
              doc["subxid"] = m.subxid.value;
              if (m.abort_lsn) doc["abort_lsn"] = m.abort_lsn->to_string();
              return fmt::format("STREAM ABORT xid={} subxid={}", m.xid.value, m.subxid.value);
            },
            [&](const pg::BeginPrepare& m) {
              doc["type"] = "begin_prepare";
              doc["xid"] = m.xid.value;
              doc["gid"] = m.gid;
              doc["prepare_lsn"] = m.prepare_lsn.to_string();
              doc["end_lsn"] = m.end_lsn.to_string();
              return fmt::format("BEGIN PREPARE xid={} gid={} prepare_lsn={}", m.xid.value, m.gid,
                                 m.prepare_lsn);
            },
            [&](const pg::Prepare& m) {
              doc["type"] = m.streamed ? "stream_prepare" : "prepare";
              doc["xid"] = m.xid.value;
              doc["gid"] = m.gid;
              doc["prepare_lsn"] = m.prepare_lsn.to_string();
              doc["end_lsn"] = m.end_lsn.to_string();
              return fmt::format("{} xid={} gid={} prepare_lsn={} end_lsn={}",
                                 m.streamed ? "STREAM PREPARE" : "PREPARE", m.xid.value, m.gid,
                                 m.prepare_lsn, m.end_lsn);
            },
            [&](const pg::CommitPrepared& m) {
              doc["type"] = "commit_prepared";
              doc["xid"] = m.xid.value;
              doc["gid"] = m.gid;
              doc["commit_lsn"] = m.commit_lsn.to_string();
              doc["end_lsn"] = m.end_lsn.to_string();
              return fmt::format("COMMIT PREPARED xid={} gid={} end_lsn={}", m.xid.value, m.gid,
                                 m.end_lsn);
            },
            [&](const pg::RollbackPrepared& m) {
              doc["type"] = "rollback_prepared";
              doc["xid"] = m.xid.value;
              doc["gid"] = m.gid;
              doc["rollback_end_lsn"] = m.rollback_end_lsn.to_string();
              return fmt::format("ROLLBACK PREPARED xid={} gid={}", m.xid.value, m.gid);
            },
        },
        message);
    if (json_) {
      std::cout << doc.dump(-1, ' ', false, json::error_handler_t::replace) << '\n';
    } else {
      std::cout << lsn.to_string() << ' ' << text << '\n';
    }
  }

 private:
  static void set_xid(json& doc, std::optional<repl::Xid> xid) {
    if (xid) doc["xid"] = xid->value;
  }
  static std::string xid_text(std::optional<repl::Xid> xid) {
    return xid ? fmt::format(" xid={}", xid->value) : "";
  }

  std::string relation_name(repl::RelationId id) const {
    const auto* relation = relations_.find(id);
    return relation ? relation->qualified_name() : fmt::format("<relation {}>", id.value);
  }

  std::string tuple_text(const repl::Relation* relation, pg::TupleView tuple, json& out) const {
    out = json::object();
    std::string text;
    for (std::size_t i = 0; i < tuple.size(); ++i) {
      std::string name = relation && i < relation->columns.size() ? relation->columns[i].name
                                                                  : fmt::format("${}", i + 1);
      const auto& column = tuple[i];
      switch (column.kind) {
        case pg::ColumnKind::null:
          out[name] = nullptr;
          text += fmt::format(" {}=NULL", name);
          break;
        case pg::ColumnKind::unchanged_toast:
          out[name] = {{"unchanged_toast", true}};
          text += fmt::format(" {}=<unchanged toast>", name);
          break;
        case pg::ColumnKind::text:
          out[name] = column.data;
          text += fmt::format(" {}='{}'", name, column.data);
          break;
        case pg::ColumnKind::binary:
          out[name] = {{"binary", hex(column.data)}};
          text += fmt::format(" {}={}", name, hex(column.data));
          break;
      }
    }
    return text;
  }

  std::string change_text(const char* verb, std::optional<repl::Xid> xid, repl::RelationId id,
                          json& doc, pg::TupleView old_tuple, char old_kind,
                          pg::TupleView new_tuple) const {
    const auto* relation = relations_.find(id);
    doc["relation"] = relation_name(id);
    std::string text = fmt::format("{}{} {}", verb, xid_text(xid), relation_name(id));
    if (old_kind != 0) {
      json old;
      text += fmt::format(" old({}):", old_kind == 'K' ? "key" : "row");
      text += tuple_text(relation, old_tuple, old);
      doc[old_kind == 'K' ? "old_key" : "old"] = old;
    }
    if (verb[0] != 'D') {
      json fresh;
      text += " new:";
      text += tuple_text(relation, new_tuple, fresh);
      doc["new"] = fresh;
    }
    return text;
  }

  bool json_;
  repl::RelationCache relations_;
};

int decode_command(const CommonOptions& common, const DecodeOptions& options) {
  std::string conninfo = common.source_conninfo();
  std::string slot = options.slot.empty() ? common.name : options.slot;
  repl::Lsn start;
  if (!options.start.empty()) start = repl::Lsn::from_string(options.start, "--start");

  std::ofstream capture;
  if (!options.capture.empty()) {
    capture.open(options.capture, std::ios::binary | std::ios::trunc);
    if (!capture) {
      throw repl::ConfigError(fmt::format("--capture {}: cannot create the file", options.capture));
    }
  }

  auto conn = repl::ReplicationConnection::open(conninfo);
  auto identity = conn.identify_system();
  if (options.create_slot) {
    repl::SlotOptions slot_options;
    slot_options.temporary = options.temporary;
    slot_options.two_phase = options.two_phase;
    auto created = conn.create_logical_slot(slot, slot_options);
    spdlog::info("created slot={} consistent_point={}", created.name, created.consistent_point);
  }

  repl::StartOptions start_options;
  start_options.protocol_version =
      options.protocol_version > 0 ? options.protocol_version : conn.max_protocol_version();
  start_options.publications = {common.publication_name()};
  start_options.streaming = !options.no_streaming && start_options.protocol_version >= 2;
  start_options.parallel_streaming = options.parallel;
  start_options.binary = options.binary;
  start_options.messages = options.messages;
  start_options.two_phase = options.two_phase;
  repl::Decoder decoder(start_options.protocol_version,
                        {options.parallel && start_options.protocol_version >= 4});
  conn.start_replication(slot, start, start_options);

  std::signal(SIGINT, on_decode_stop_signal);
  std::signal(SIGTERM, on_decode_stop_signal);

  Printer printer(common.json);
  long printed = 0;
  bool in_transaction = false;
  repl::Lsn received = start;
  repl::Lsn confirmed;
  auto last_status = std::chrono::steady_clock::now();
  bool done = false;
  while (!done && !g_stop) {
    auto message = conn.read(std::chrono::milliseconds(500));
    if (message) {
      if (std::holds_alternative<repl::StreamEnded>(*message)) break;
      if (auto* data = std::get_if<repl::XLogData>(&*message)) {
        received = std::max(received, data->wal_start);
        if (capture.is_open()) {
          std::uint64_t wal_start = __builtin_bswap64(data->wal_start.value());
          std::uint32_t length =
              __builtin_bswap32(static_cast<std::uint32_t>(data->payload.size()));
          capture.write(reinterpret_cast<const char*>(&wal_start), 8);
          capture.write(reinterpret_cast<const char*>(&length), 4);
          capture.write(reinterpret_cast<const char*>(data->payload.data()),
                        static_cast<std::streamsize>(data->payload.size()));
          if (!capture)
            throw repl::Error(fmt::format("--capture {}: write failed", options.capture));
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
        printer.print(data->wal_start, decoded);
        if (options.limit > 0 && ++printed >= options.limit) done = true;
      } else if (auto* keepalive = std::get_if<repl::Keepalive>(&*message)) {
        received = std::max(received, keepalive->wal_end);
        if (options.until_caught_up && !in_transaction && !decoder.in_stream_block() &&
            keepalive->wal_end >= identity.xlogpos) {
          done = true;
        }
        if (keepalive->reply_requested) {
          conn.send_status(received, options.confirm ? confirmed : repl::Lsn{},
                           options.confirm ? confirmed : repl::Lsn{});
          last_status = std::chrono::steady_clock::now();
        }
      }
    }
    if (std::chrono::steady_clock::now() - last_status > std::chrono::seconds(10)) {
      conn.send_status(received, options.confirm ? confirmed : repl::Lsn{},
                       options.confirm ? confirmed : repl::Lsn{});
      last_status = std::chrono::steady_clock::now();
    }
  }
  std::cout.flush();
  if (options.confirm) conn.send_status(received, confirmed, confirmed);
  conn.end_copy();
  if (capture.is_open()) {
    capture.close();
    if (!capture) throw repl::Error(fmt::format("--capture {}: write failed", options.capture));
  }
  return 0;
}

}  // namespace

void add_decode_command(CLI::App& app, CommonOptions& common, CommandAction& action) {
  auto* cmd = app.add_subcommand("decode",
                                 "print the decoded change stream of a slot (text or JSON lines)");
  auto options = std::make_shared<DecodeOptions>();
  cmd->add_option("--slot", options->slot, "replication slot (default: --name)");
  cmd->add_flag("--create-slot", options->create_slot, "create the slot first");
  cmd->add_flag("--temporary", options->temporary,
                "with --create-slot: a temporary slot, dropped when we disconnect");
  cmd->add_option("--start", options->start, "start LSN (default: the slot's confirmed position)");
  cmd->add_option("--limit", options->limit, "stop after printing N messages");
  cmd->add_option("--proto", options->protocol_version,
                  "pgoutput protocol version 1-4 (default: the highest the server supports)")
      ->check(CLI::Range(1, 4));
  cmd->add_flag("--no-streaming", options->no_streaming,
                "do not stream in-progress transactions (v2+)");
  cmd->add_flag("--parallel", options->parallel, "ask for streaming 'parallel' (v4)");
  cmd->add_flag("--binary", options->binary, "column values in binary format");
  cmd->add_flag("--messages", options->messages, "include pg_logical_emit_message() messages");
  cmd->add_flag("--two-phase", options->two_phase, "decode prepared transactions (v3+)");
  cmd->add_flag("--until-caught-up", options->until_caught_up,
                "exit once the WAL position current at start has been decoded");
  cmd->add_flag("--confirm", options->confirm,
                "advance the slot past what was printed (default: leave it where it is)");
  cmd->add_option("--capture", options->capture,
                  "save every XLogData payload to FILE (fixture format, see "
                  "tests/fixtures/pgoutput/README.md)")
      ->group("");
  // --json is one of the common options.
  cmd->callback([&action, &common, options] {
    action = [&common, options] { return decode_command(common, *options); };
  });
}

}  // namespace pgferry::tools
