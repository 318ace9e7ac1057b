// `pgferry sequences diff|sync`: compare every sequence in scope on the source with the target
// (diff exits 3 when a target sequence is behind, missing or incompatible), or move the
// target sequences past everything the source handed out (sync; never backwards, idempotent).
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "cli.hpp"
#include "pgferry/replication/core/error.hpp"
#include "pgferry/replication/core/pg.hpp"
#include "pgferry/sequences/report.hpp"
#include "pgferry/sequences/sequences.hpp"

namespace pgferry::tools {

namespace {

namespace repl = pgferry::replication;
namespace seq = pgferry::sequences;

struct SequencesOptions {
  std::int64_t margin = 0;
  std::vector<std::string> include_schemas;
  std::vector<std::string> exclude_schemas;

  seq::SyncOptions sync_options() const {
    seq::SyncOptions options;
    options.margin = margin;
    options.include_schemas = include_schemas;
    options.exclude_schemas = exclude_schemas;
    return options;
  }
};

void add_scope_options(CLI::App& cmd, SequencesOptions& options) {
  cmd.add_option("--margin", options.margin,
                 "set target sequences this many increments past the source (default 0)")
      ->check(CLI::NonNegativeNumber);
  cmd.add_option("--include-schema", options.include_schemas,
                 "only schemas matching this pattern (* and ?; repeatable)")
      ->allow_extra_args(false);
  cmd.add_option("--exclude-schema", options.exclude_schemas,
                 "skip schemas matching this pattern (* and ?; repeatable)")
      ->allow_extra_args(false);
}

int run_diff(const CommonOptions& common, const SequencesOptions& options) {
  auto source = repl::Connection::open(common.source_conninfo(), repl::Side::source);
  auto target = repl::Connection::open(common.target_conninfo(), repl::Side::target);
  auto report = seq::diff_sequences(source, target, options.sync_options());
  if (common.json) {
    std::cout << seq::to_json(report).dump(2) << "\n";
  } else {
    std::cout << seq::render_text(report);
  }
  return static_cast<int>(report.ok() ? repl::ExitCode::ok : repl::ExitCode::check_failed);
}

int run_sync(const CommonOptions& common, const SequencesOptions& options) {
  auto source = repl::Connection::open(common.source_conninfo(), repl::Side::source);
  auto target = repl::Connection::open(common.target_conninfo(), repl::Side::target);
  try {
    auto report = seq::sync_sequences(source, target, options.sync_options());
    if (common.json) {
      std::cout << seq::to_json(report).dump(2) << "\n";
    } else {
      std::cout << seq::render_text(report);
    }
    return static_cast<int>(repl::ExitCode::ok);
  } catch (const repl::CheckFailed& e) {
    // Missing or incompatible target sequences: nothing was changed.
    if (!common.json) throw;
    std::cout << nlohmann::json{{"ok", false}, {"error", e.what()}}.dump(2) << "\n";
    return static_cast<int>(repl::ExitCode::check_failed);
  }
}

}  // namespace

void add_sequences_command(CLI::App& app, CommonOptions& common, CommandAction& action) {
  auto* cmd = app.add_subcommand("sequences", "diff or sync sequence values from source to target");
  cmd->require_subcommand(1);
  auto options = std::make_shared<SequencesOptions>();

  auto* diff = cmd->add_subcommand(
      "diff", "compare every sequence with the target; exit 3 when one is behind or missing");
  add_scope_options(*diff, *options);
  diff->callback([&action, &common, options] {
    action = [&common, options] { return run_diff(common, *options); };
  });

  auto* sync = cmd->add_subcommand(
      "sync", "move target sequences past everything the source handed out (never backwards)");
  add_scope_options(*sync, *options);
  sync->callback([&action, &common, options] {
    action = [&common, options] { return run_sync(common, *options); };
  });
}

}  // namespace pgferry::tools
