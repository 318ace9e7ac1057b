// `pgferry cleanup`: drop the slot, the publication and the progress record
// (replication::cleanup in copy/init.hpp). Each is dropped only if it exists, so the
// command is safe to re-run (and to run after a failed init).
#include <fmt/format.h>

#include <iostream>
#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "pgferry/replication/copy/init.hpp"
#include "pgferry/replication/core/error.hpp"
#include "pgferry/replication/core/pg.hpp"

namespace pgferry::tools {

namespace {

namespace repl = pgferry::replication;

int run_cleanup(const CommonOptions& common) {
  auto source = repl::Connection::open(common.source_conninfo(), repl::Side::source);
  auto target = repl::Connection::open(common.target_conninfo(), repl::Side::target);
  std::string publication = common.publication_name();
  auto dropped = repl::cleanup(source, target, common.name, publication);

  if (common.json) {
    std::cout << nlohmann::json{{"ok", true},
                                {"slot", common.name},
                                {"publication", publication},
                                {"dropped",
                                 {{"slot", dropped.slot_dropped},
                                  {"publication", dropped.publication_dropped},
                                  {"progress", dropped.progress_dropped}}}}
                     .dump(2)
              << "\n";
  } else {
    auto state = [](bool was_dropped) { return was_dropped ? "dropped" : "absent"; };
    std::cout << fmt::format("slot {}: {}\npublication {}: {}\nprogress record {}: {}\n",
                             common.name, state(dropped.slot_dropped), publication,
                             state(dropped.publication_dropped), common.name,
                             state(dropped.progress_dropped));
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
