// `pgferry lag`: show how far the target is behind the source, in bytes
#include "cli.hpp"

namespace pgferry::tools {

void add_lag_command(CLI::App& app, CommonOptions& /*common*/, CommandAction& action) {
  auto* cmd = app.add_subcommand("lag", "show how far the target is behind the source, in bytes");
  cmd->callback([&action] { action = [] { return not_built_yet("lag"); }; });
}

}  // namespace pgferry::tools
