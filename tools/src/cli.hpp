// The pgferry CLI: the options every subcommand shares and the registration hook each
// subcommand file implements. The subcommands are declared as a table in main.cpp; each
// lives in its own cmd_<name>.cpp and only parses options and calls into the libraries.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace pgferry::tools {

struct CommonOptions {
  std::string source;
  std::string target;
  std::string name = "pgferry";
  std::string publication;
  bool json = false;
  std::string log_format = "text";
  std::string log_level = "info";

  // The --source / --target string (or PGFERRY_SOURCE / PGFERRY_TARGET), validated.
  // Throws ConfigError naming the option when it is missing or malformed.
  std::string source_conninfo() const;
  std::string target_conninfo() const;
  std::string publication_name() const { return publication.empty() ? name : publication; }
};

// What runs once parsing picked a subcommand; returns the process exit code.
using CommandAction = std::function<int()>;

// One entry of the subcommand table.
struct CommandSpec {
  const char* name;
  void (*add)(CLI::App& app, CommonOptions& common, CommandAction& action);
};

// --table / --exclude-table (repeatable patterns), as check and init take them.
void add_table_scope_options(CLI::App* command, std::vector<std::string>& tables,
                             std::vector<std::string>& excluded_tables);

// While alive, SIGINT and SIGTERM call `stoppable.request_stop()` (every library class that
// has it only sets an atomic, so that is async-signal-safe); restores the default handlers
// when it goes. One at a time.
class StopOnSignal {
 public:
  template <typename T>
  explicit StopOnSignal(T& stoppable)
      : StopOnSignal(&stoppable, [](void* p) { static_cast<T*>(p)->request_stop(); }) {}
  ~StopOnSignal();
  StopOnSignal(const StopOnSignal&) = delete;
  StopOnSignal& operator=(const StopOnSignal&) = delete;
  // The signal that arrived while one was installed (0: none).
  static int received();

 private:
  StopOnSignal(void* target, void (*stop)(void*));
};

void add_check_command(CLI::App&, CommonOptions&, CommandAction&);
void add_init_command(CLI::App&, CommonOptions&, CommandAction&);
void add_run_command(CLI::App&, CommonOptions&, CommandAction&);
void add_lag_command(CLI::App&, CommonOptions&, CommandAction&);
void add_sequences_command(CLI::App&, CommonOptions&, CommandAction&);
void add_verify_command(CLI::App&, CommonOptions&, CommandAction&);
void add_cutover_command(CLI::App&, CommonOptions&, CommandAction&);
void add_rollback_command(CLI::App&, CommonOptions&, CommandAction&);
void add_cleanup_command(CLI::App&, CommonOptions&, CommandAction&);
void add_demo_command(CLI::App&, CommonOptions&, CommandAction&);
void add_decode_command(CLI::App&, CommonOptions&, CommandAction&);

}  // namespace pgferry::tools
