// `pgferry cleanup`: drop the slot, the publication and the progress record. Each is dropped
// only if it exists, so the command is safe to re-run (and to run after a failed init).
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <iostream>
#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "pgferry/replication/apply/progress.hpp"
#include "pgferry/replication/copy/initial_copy.hpp"
#include "pgferry/replication/core/error.hpp"
#include "pgferry/replication/core/pg.hpp"

namespace pgferry::tools {

namespace {

namespace repl = pgferry::replication;

int run_cleanup(const CommonOptions& common) {
  auto source = repl::Connection::open(common.source_conninfo(), repl::Side::source);
  auto target = repl::Connection::open(common.target_conninfo(), repl::Side::target);
  std::string publication = common.publication_name();

  bool slot_dropped = false;
  auto slot = source.exec("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                          {common.name}, "looking up the replication slot");
  if (slot.rows() == 1) {
    if (!slot.is_null(0, 0)) {
      throw repl::Error(fmt::format(
          "replication slot \"{}\" is in use by process {}: stop `pgferry run` first, then run "
          "cleanup again",
          common.name, slot.get(0, 0)));
    }
    source.exec("SELECT pg_drop_replication_slot($1)", {common.name},
                fmt::format("dropping replication slot \"{}\"", common.name));
    slot_dropped = true;
  }
  bool publication_dropped =
      source.exec("SELECT count(*) FROM pg_publication WHERE pubname = $1", {publication})
          .scalar() != "0";
  source.exec(fmt::format("DROP PUBLICATION IF EXISTS {}", repl::quote_ident(publication)),
              fmt::format("dropping publication \"{}\"", publication));
  repl::drop_copy_progress(target, common.name);  // init's copy record, if any
  bool progress_dropped = repl::ProgressStore(target).drop(common.name);

  spdlog::info("cleanup slot={} publication={} dropped: slot={} publication={} progress={}",
               common.name, publication, slot_dropped, publication_dropped, progress_dropped);
  if (common.json) {
    std::cout << nlohmann::json{{"ok", true},
                                {"slot", common.name},
                                {"publication", publication},
                                {"dropped",
                                 {{"slot", slot_dropped},
                                  {"publication", publication_dropped},
                                  {"progress", progress_dropped}}}}
                     .dump(2)
              << "\n";
  } else {
    auto state = [](bool dropped) { return dropped ? "dropped" : "absent"; };
    std::cout << fmt::format("slot {}: {}\npublication {}: {}\nprogress record {}: {}\n",
                             common.name, state(slot_dropped), publication,
                             state(publication_dropped), common.name, state(progress_dropped));
  }
  return static_cast<int>(repl::ExitCode::ok);
}

}  // namespace

void add_cleanup_command(CLI::App& app, CommonOptions& common, CommandAction& action) {
  auto* cmd = app.add_subcommand("cleanup",
                                 "drop the slot, publication and progress record (safe to re-run)");
  cmd->callback([&action, &common] { action = [&common] { return run_cleanup(common); }; });
}

}  // namespace pgferry::tools
