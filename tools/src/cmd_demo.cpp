// `pgferry demo`: run the whole journey on two throwaway local clusters
#include "cli.hpp"

namespace pgferry::tools {

void add_demo_command(CLI::App& app, CommonOptions& /*common*/, CommandAction& action) {
  auto* cmd = app.add_subcommand("demo", "run the whole journey on two throwaway local clusters");
  cmd->callback([&action] { action = [] { return not_built_yet("demo"); }; });
}

}  // namespace pgferry::tools
