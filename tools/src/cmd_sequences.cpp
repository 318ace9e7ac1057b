// `pgferry sequences`: diff or sync sequence values from source to target
#include "cli.hpp"

namespace pgferry::tools {

void add_sequences_command(CLI::App& app, CommonOptions& /*common*/, CommandAction& action) {
  auto* cmd = app.add_subcommand("sequences", "diff or sync sequence values from source to target");
  cmd->callback([&action] { action = [] { return not_built_yet("sequences"); }; });
}

}  // namespace pgferry::tools
