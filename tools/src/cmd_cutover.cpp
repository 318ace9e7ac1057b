// `pgferry cutover` and `pgferry rollback`: fence writes, drain to the fence, sync sequences,
// set up the way back, switch traffic, unfence; print the report (text or --json). Also the
// hidden `cutover-guard` subcommand, the guard process the cutover starts (see
// cutover/guard.hpp). Exit 0 when done, 7 when it aborted (writes flow where they did); 1
// when it aborted but left traffic where its switch put it (a re-run settles it), 5 when
// whether the switch committed could not be read.
#include <unistd.h>

#include <climits>
#include <iostream>
#include <memory>

#include "cli.hpp"
#include "pgferry/cutover/cutover.hpp"
#include "pgferry/cutover/guard.hpp"
#include "pgferry/replication/core/error.hpp"

namespace pgferry::tools {

namespace {

namespace repl = pgferry::replication;

struct SwitchOptions {
  std::string fence = "pgbouncer";
  std::string pgbouncer;
  std::string pgbouncer_config;
  std::string pgbouncer_database;
  std::uint64_t max_lag = 1 << 20;
  double timeout_s = 60;
  double fence_timeout_s = 5;
  double drain_timeout_s = 10;
  double max_transaction_age_s = 0;
  bool terminate_blockers = false;
  std::string switch_command;
  std::int64_t sequence_margin = 0;
  bool no_verify = false;
  std::string settle;
};

std::chrono::milliseconds seconds_option(double seconds) {
  return std::chrono::milliseconds(static_cast<long long>(seconds * 1000));
}

std::string self_executable() {
  char path[PATH_MAX];
  ssize_t n = ::readlink("/proc/self/exe", path, sizeof path - 1);
  if (n <= 0) return {};
  return std::string(path, static_cast<std::size_t>(n));
}

int run_switch(const CommonOptions& common, const SwitchOptions& options,
               cutover::Operation operation) {
  cutover::CutoverOptions cutover_options;
  cutover_options.operation = operation;
  cutover_options.source_conninfo = common.source_conninfo();
  cutover_options.target_conninfo = common.target_conninfo();
  cutover_options.name = common.name;
  cutover_options.publication = common.publication;
  cutover_options.fence = cutover::parse_fence_kind(options.fence);
  cutover_options.pgbouncer_conninfo = options.pgbouncer;
  cutover_options.pgbouncer_config = options.pgbouncer_config;
  cutover_options.pgbouncer_database = options.pgbouncer_database;
  cutover_options.max_lag = options.max_lag;
  cutover_options.timeout = seconds_option(options.timeout_s);
  cutover_options.fence_timeout = seconds_option(options.fence_timeout_s);
  cutover_options.drain_timeout = seconds_option(options.drain_timeout_s);
  cutover_options.max_transaction_age = seconds_option(options.max_transaction_age_s);
  cutover_options.terminate_blockers = options.terminate_blockers;
  cutover_options.switch_command = options.switch_command;
  cutover_options.sequence_margin = options.sequence_margin;
  cutover_options.verify = !options.no_verify;
  cutover_options.settle = options.settle;
  if (auto self = self_executable(); !self.empty()) {
    cutover_options.guard_argv = {self, "--log-format", common.log_format, "cutover-guard"};
  }
  auto report = cutover::run_cutover(cutover_options);
  if (common.json) {
    std::cout << report.to_json().dump(2) << "\n";
  } else {
    std::cout << report.render_text();
  }
  if (report.switch_unconfirmed) return static_cast<int>(repl::ExitCode::target_unreachable);
  // Aborted without rolling back (traffic left where the switch put it): not 7.
  if (report.switch_unsettled) return static_cast<int>(repl::ExitCode::error);
  return static_cast<int>(report.ok ? repl::ExitCode::ok : repl::ExitCode::aborted);
}

void add_switch_command(CLI::App& app, CommonOptions& common, CommandAction& action,
                        cutover::Operation operation) {
  bool forward = operation == cutover::Operation::cutover;
  auto* cmd = app.add_subcommand(
      forward ? "cutover" : "rollback",
      forward ? "fence writes, drain to the fence, sync sequences, set up the way back, switch "
                "traffic to the target, unfence"
              : "the cutover in reverse: switch traffic back to the source through the reverse "
                "replication");
  auto options = std::make_shared<SwitchOptions>();
  cmd->add_option("--fence", options->fence,
                  "how writes are held: pgbouncer (PAUSE on its admin console), read-only "
                  "(ALTER DATABASE ... default_transaction_read_only and end app sessions), none")
      ->check(CLI::IsMember({"pgbouncer", "read-only", "none"}))
      ->capture_default_str();
  cmd->add_option("--pgbouncer", options->pgbouncer,
                  "PgBouncer's admin console, e.g. 'host=127.0.0.1 port=6432 user=pgbouncer "
                  "dbname=pgbouncer'")
      ->type_name("CONNINFO");
  cmd->add_option("--pgbouncer-config", options->pgbouncer_config,
                  "rewrite the [databases] entry in FILE to the new primary and RELOAD")
      ->type_name("FILE");
  cmd->add_option("--pgbouncer-database", options->pgbouncer_database,
                  "the [databases] entry to PAUSE and re-point (default: dbname of --source)");
  cmd->add_option("--max-lag", options->max_lag,
                  "refuse to start while the agent is more than BYTES behind")
      ->type_name("BYTES")
      ->capture_default_str();
  cmd->add_option("--timeout", options->timeout_s,
                  "budget of the whole operation, seconds; the steps but fence and mark get "
                  "shares of it (preconditions 1/2; prepare, sequences, reverse, switch 1/6; "
                  "unfence 1/12)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--fence-timeout", options->fence_timeout_s,
                  "how long PAUSE may wait for transactions in flight, seconds")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--drain-timeout", options->drain_timeout_s,
                  "how long to wait for the agent to apply the fence, seconds")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--max-transaction-age", options->max_transaction_age_s,
                  "refuse to start while a write transaction is older than this, seconds "
                  "(default: --fence-timeout)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_flag("--terminate-blockers", options->terminate_blockers,
                "at --fence-timeout, end the sessions whose open transaction holds the PAUSE");
  cmd->add_option("--switch-command", options->switch_command,
                  "run CMD (sh -c) to switch traffic; PGFERRY_NEW_HOST, PGFERRY_NEW_PORT, "
                  "PGFERRY_NEW_DBNAME give the new primary; a non-zero exit aborts (it is then "
                  "run again with the old primary and PGFERRY_ABORT=1)")
      ->type_name("CMD");
  cmd->add_option("--sequence-margin", options->sequence_margin,
                  "set sequences this many increments past the old primary's")
      ->check(CLI::NonNegativeNumber);
  cmd->add_flag("--no-verify", options->no_verify,
                "skip the quick verification inside the window (row counts of the small "
                "published tables, sampled keys of the large ones)");
  cmd->add_option("--settle", options->settle,
                  "only for an earlier run that died while switching traffic and left writes on "
                  "both sides (the run says so): which side's writes win, forward (the new "
                  "primary) or back (the old one)")
      ->check(CLI::IsMember({"forward", "back"}));
  cmd->callback([&action, &common, options, operation] {
    action = [&common, options, operation] { return run_switch(common, *options, operation); };
  });
}

}  // namespace

void add_cutover_command(CLI::App& app, CommonOptions& common, CommandAction& action) {
  add_switch_command(app, common, action, cutover::Operation::cutover);
  // The guard process a cutover starts; hidden (empty group).
  auto* guard = app.add_subcommand("cutover-guard", "lift the fence if the cutover dies");
  guard->group("");
  guard->callback([&action] { action = [] { return cutover::run_guard(); }; });
}

void add_rollback_command(CLI::App& app, CommonOptions& common, CommandAction& action) {
  add_switch_command(app, common, action, cutover::Operation::rollback);
}

}  // namespace pgferry::tools
