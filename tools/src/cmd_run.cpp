// `pgferry run`: stream changes from the slot and apply them to the target
#include "cli.hpp"

namespace pgferry::tools {

void add_run_command(CLI::App& app, CommonOptions& /*common*/, CommandAction& action) {
  auto* cmd = app.add_subcommand("run", "stream changes from the slot and apply them to the target");
  cmd->callback([&action] { action = [] { return not_built_yet("run"); }; });
}

}  // namespace pgferry::tools
