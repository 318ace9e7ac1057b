// pgferry: the command-line entry point. Parses the common options, dispatches to the
// subcommand picked, and turns the exception that ended it into the contract's exit code:
// 0 ok · 1 error · 2 usage · 3 check failed · 4 source unreachable · 5 target unreachable ·
// 6 timed out · 7 aborted and rolled back.
#include <spdlog/spdlog.h>

#include <atomic>
#include <csignal>
#include <cstdlib>
#include <iostream>

#include "cli.hpp"
#include "pgferry/replication/core/conninfo.hpp"
#include "pgferry/replication/core/error.hpp"
#include "pgferry/replication/core/log.hpp"

namespace pgferry::tools {

namespace {

namespace repl = pgferry::replication;

constexpr CommandSpec kCommands[] = {
    {"check", add_check_command},
    {"init", add_init_command},
    {"run", add_run_command},
    {"lag", add_lag_command},
    {"sequences", add_sequences_command},
    {"verify", add_verify_command},
    {"cutover", add_cutover_command},
    {"rollback", add_rollback_command},
    {"cleanup", add_cleanup_command},
    {"demo", add_demo_command},
    {"decode", add_decode_command},
};

std::string required_conninfo(const std::string& value, const char* option, const char* env) {
  if (value.empty()) {
    throw repl::ConfigError(fmt::format("{} is required (or set {})", option, env));
  }
  repl::validate_conninfo(value, option);
  return value;
}

}  // namespace

std::string CommonOptions::source_conninfo() const {
  return required_conninfo(source, "--source", "PGFERRY_SOURCE");
}

std::string CommonOptions::target_conninfo() const {
  return required_conninfo(target, "--target", "PGFERRY_TARGET");
}

void add_table_scope_options(CLI::App* command, std::vector<std::string>& tables,
                             std::vector<std::string>& excluded_tables) {
  command
      ->add_option("--table", tables,
                   "only tables matching PATTERN (schema.table, * and ? wildcards; repeatable)")
      ->type_name("PATTERN");
  command
      ->add_option("--exclude-table", excluded_tables,
                   "leave out tables matching PATTERN (repeatable; wins over --table)")
      ->type_name("PATTERN");
}

namespace {

std::atomic<void*> g_stop_target{nullptr};
std::atomic<void (*)(void*)> g_stop_call{nullptr};
volatile std::sig_atomic_t g_stop_signal = 0;

extern "C" void on_stop_signal(int signal) {
  g_stop_signal = signal;
  auto* call = g_stop_call.load();
  if (void* target = g_stop_target.load(); target != nullptr && call != nullptr) call(target);
}

}  // namespace

StopOnSignal::StopOnSignal(void* target, void (*stop)(void*)) {
  g_stop_signal = 0;
  g_stop_call.store(stop);
  g_stop_target.store(target);
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
}

StopOnSignal::~StopOnSignal() {
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
  g_stop_target.store(nullptr);
}

int StopOnSignal::received() {
  return static_cast<int>(g_stop_signal);
}

static_assert(std::atomic<void*>::is_always_lock_free);

int main(int argc, char** argv) {
  CLI::App app{
      "pgferry: move a live PostgreSQL database to another server with logical "
      "replication, and switch traffic over in a fraction of a second.",
      "pgferry"};
  app.set_version_flag("--version", std::string("pgferry ") + PGFERRY_VERSION);
  app.require_subcommand(1);
  app.fallthrough();

  CommonOptions common;
  app.add_option("--source", common.source, "source server: libpq conninfo or URI")
      ->envname("PGFERRY_SOURCE");
  app.add_option("--target", common.target, "target server: libpq conninfo or URI")
      ->envname("PGFERRY_TARGET");
  app.add_option("--name", common.name,
                 "names the replication slot and the progress record (default pgferry)");
  app.add_option("--publication", common.publication, "publication name (default: --name)");
  app.add_flag("--json", common.json, "print a JSON document instead of text");
  app.add_option("--log-format", common.log_format, "text or json")
      ->check(CLI::IsMember({"text", "json"}));
  app.add_option("--log-level", common.log_level, "trace, debug, info, warn, error or off");

  CommandAction action;
  for (const auto& command : kCommands) command.add(app, common, action);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? 0 : static_cast<int>(repl::ExitCode::usage);
  }

  try {
    repl::setup_logging(common.log_format == "json" ? repl::LogFormat::json : repl::LogFormat::text,
                        common.log_level);
    return action ? action() : static_cast<int>(repl::ExitCode::usage);
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return static_cast<int>(repl::exit_code_for(e));
  }
}

}  // namespace pgferry::tools

int main(int argc, char** argv) {
  return pgferry::tools::main(argc, argv);
}
