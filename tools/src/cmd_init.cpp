// `pgferry init`: create publication, slot and progress record; copy the data
#include "cli.hpp"

namespace pgferry::tools {

void add_init_command(CLI::App& app, CommonOptions& /*common*/, CommandAction& action) {
  auto* cmd = app.add_subcommand("init", "create publication, slot and progress record; copy the data");
  cmd->callback([&action] { action = [] { return not_built_yet("init"); }; });
}

}  // namespace pgferry::tools
