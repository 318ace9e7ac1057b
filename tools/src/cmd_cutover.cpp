// `pgferry cutover`: fence writes, drain, sync sequences, switch traffic, unfence
#include "cli.hpp"

namespace pgferry::tools {

void add_cutover_command(CLI::App& app, CommonOptions& /*common*/, CommandAction& action) {
  auto* cmd =
      app.add_subcommand("cutover", "fence writes, drain, sync sequences, switch traffic, unfence");
  cmd->callback([&action] { action = [] { return not_built_yet("cutover"); }; });
}

}  // namespace pgferry::tools
