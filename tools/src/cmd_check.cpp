// `pgferry check`: preflight. Lists every reason replication from --source to --target
// would fail or lose data, each with the object and the fix; exits 3 when any is fatal.
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "cli.hpp"
#include "pgferry/replication/check/preflight.hpp"
#include "pgferry/replication/core/pg.hpp"
#include "pgferry/replication/core/table_scope.hpp"

namespace pgferry::tools {

namespace {

namespace repl = pgferry::replication;

struct CheckCommandOptions {
  std::vector<std::string> tables;
  std::vector<std::string> excluded_tables;
  bool allow_nonempty = false;
  bool allow_target_triggers = false;
};

int run_check(const CommonOptions& common, const CheckCommandOptions& options) {
  // Parse everything the user typed before connecting anywhere.
  auto scope = repl::TableScope::from_patterns(options.tables, options.excluded_tables);
  std::string source_conninfo = common.source_conninfo();
  std::string target_conninfo = common.target_conninfo();

  auto source = repl::Connection::open(source_conninfo, repl::Side::source);
  auto target = repl::Connection::open(target_conninfo, repl::Side::target);

  repl::CheckOptions check_options;
  check_options.name = common.name;
  check_options.publication = common.publication_name();
  check_options.target_data =
      options.allow_nonempty ? repl::TargetData::may_have_rows : repl::TargetData::must_be_empty;
  check_options.allow_target_triggers = options.allow_target_triggers;
  auto report = repl::run_checks(source, target, scope, check_options);

  if (common.json) {
    auto document = repl::to_json(report);
    document["source"] = source.redacted_conninfo();
    document["target"] = target.redacted_conninfo();
    std::cout << document.dump(2) << "\n";
  } else {
    std::cout << repl::render_text(report);
  }
  return static_cast<int>(report.ok() ? repl::ExitCode::ok : repl::ExitCode::check_failed);
}

}  // namespace

void add_check_command(CLI::App& app, CommonOptions& common, CommandAction& action) {
  auto options = std::make_shared<CheckCommandOptions>();
  auto* cmd = app.add_subcommand(
      "check", "preflight: list every reason replication would fail (exit 3 if fatal)");
  add_table_scope_options(cmd, options->tables, options->excluded_tables);
  cmd->add_flag("--allow-nonempty", options->allow_nonempty,
                "a target table with rows is a warning, not fatal (for run alone or init "
                "--no-data)");
  cmd->add_flag("--allow-target-triggers", options->allow_target_triggers,
                "accept that target triggers and foreign-key actions fire for replicated changes "
                "when the target role may not set session_replication_role (see README)");
  cmd->callback([&action, &common, options] {
    action = [&common, options] { return run_check(common, *options); };
  });
}

}  // namespace pgferry::tools
