// `pgferry rollback`: switch traffic back to the source through reverse replication
#include "cli.hpp"

namespace pgferry::tools {

void add_rollback_command(CLI::App& app, CommonOptions& /*common*/, CommandAction& action) {
  auto* cmd = app.add_subcommand("rollback",
                                 "switch traffic back to the source through reverse replication");
  cmd->callback([&action] { action = [] { return not_built_yet("rollback"); }; });
}

}  // namespace pgferry::tools
