// `pgferry check`: preflight: list every reason replication would fail (exit 3 if fatal)
#include "cli.hpp"

namespace pgferry::tools {

void add_check_command(CLI::App& app, CommonOptions& /*common*/, CommandAction& action) {
  auto* cmd = app.add_subcommand("check", "preflight: list every reason replication would fail (exit 3 if fatal)");
  cmd->callback([&action] { action = [] { return not_built_yet("check"); }; });
}

}  // namespace pgferry::tools
