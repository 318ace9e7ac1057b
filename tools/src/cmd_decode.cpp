// `pgferry decode`: print the decoded change stream of a slot (text or JSON lines)
#include "cli.hpp"

namespace pgferry::tools {

void add_decode_command(CLI::App& app, CommonOptions& /*common*/, CommandAction& action) {
  auto* cmd = app.add_subcommand("decode", "print the decoded change stream of a slot (text or JSON lines)");
  cmd->callback([&action] { action = [] { return not_built_yet("decode"); }; });
}

}  // namespace pgferry::tools
