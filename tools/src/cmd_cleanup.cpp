// `pgferry cleanup`: drop the slot, publication and progress record
#include "cli.hpp"

namespace pgferry::tools {

void add_cleanup_command(CLI::App& app, CommonOptions& /*common*/, CommandAction& action) {
  auto* cmd = app.add_subcommand("cleanup", "drop the slot, publication and progress record");
  cmd->callback([&action] { action = [] { return not_built_yet("cleanup"); }; });
}

}  // namespace pgferry::tools
