// `pgferry decode`: print the decoded change stream of a slot, one message a line, as text
// or JSON (replication::SlotReader reads it, MessageRenderer renders it). For operators
// (what is the source sending?) and for writing fixtures (the hidden --capture FILE saves
// every XLogData payload as it came off the wire). The slot is not advanced unless
// --confirm is given.
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "pgferry/replication/decode/message_render.hpp"
#include "pgferry/replication/decode/slot_reader.hpp"

namespace pgferry::tools {

namespace {

namespace repl = pgferry::replication;

struct DecodeOptions {
  repl::SlotReaderOptions reader;
  std::string start;
  bool no_streaming = false;
};

int decode_command(const CommonOptions& common, DecodeOptions options) {
  options.reader.conninfo = common.source_conninfo();
  if (options.reader.slot.empty()) options.reader.slot = common.name;
  options.reader.publication = common.publication_name();
  if (!options.start.empty())
    options.reader.start = repl::Lsn::from_string(options.start, "--start");
  options.reader.streaming = !options.no_streaming;

  repl::SlotReader reader(options.reader);
  StopOnSignal stop_on_signal(reader);
  repl::MessageRenderer renderer;
  reader.run([&](repl::Lsn lsn, const repl::pgoutput::Message& message) {
    auto rendered = renderer.render(lsn, message);
    if (common.json) {
      std::cout << rendered.json.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)
                << '\n';
    } else {
      std::cout << lsn.to_string() << ' ' << rendered.text << '\n';
    }
  });
  std::cout.flush();
  return 0;
}

}  // namespace

void add_decode_command(CLI::App& app, CommonOptions& common, CommandAction& action) {
  auto* cmd = app.add_subcommand("decode",
                                 "print the decoded change stream of a slot (text or JSON lines)");
  auto options = std::make_shared<DecodeOptions>();
  cmd->add_option("--slot", options->reader.slot, "replication slot (default: --name)");
  cmd->add_flag("--create-slot", options->reader.create_slot, "create the slot first");
  cmd->add_flag("--temporary", options->reader.temporary,
                "with --create-slot: a temporary slot, dropped when we disconnect");
  cmd->add_option("--start", options->start, "start LSN (default: the slot's confirmed position)");
  cmd->add_option("--limit", options->reader.limit, "stop after printing N messages");
  cmd->add_option("--proto", options->reader.protocol_version,
                  "pgoutput protocol version 1-4 (default: the highest the server supports)")
      ->check(CLI::Range(1, 4));
  cmd->add_flag("--no-streaming", options->no_streaming,
                "do not stream in-progress transactions (v2+)");
  cmd->add_flag("--parallel", options->reader.parallel, "ask for streaming 'parallel' (v4)");
  cmd->add_flag("--binary", options->reader.binary, "column values in binary format");
  cmd->add_flag("--messages", options->reader.messages,
                "include pg_logical_emit_message() messages");
  cmd->add_flag("--two-phase", options->reader.two_phase, "decode prepared transactions (v3+)");
  cmd->add_flag("--until-caught-up", options->reader.until_caught_up,
                "exit once the WAL position current at start has been decoded");
  cmd->add_flag("--confirm", options->reader.confirm,
                "advance the slot past what was printed (default: leave it where it is)");
  cmd->add_option("--capture", options->reader.capture,
                  "save every XLogData payload to FILE (fixture format, see "
                  "tests/fixtures/pgoutput/README.md)")
      ->group("");
  // --json is one of the common options.
  cmd->callback([&action, &common, options] {
    action = [&common, options] { return decode_command(common, *options); };
  });
}

}  // namespace pgferry::tools
