// `pgferry verify`: compare every table in scope on the source and the target by chunks of
// primary-key ranges and name the rows that differ; exit 0 when all is equal, 3 otherwise.
// Options only: the work is cutover::verify().
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "cli.hpp"
#include "pgferry/cutover/verify.hpp"
#include "pgferry/cutover/verify_report.hpp"
#include "pgferry/replication/core/error.hpp"

namespace pgferry::tools {

namespace {

namespace repl = pgferry::replication;
namespace cut = pgferry::cutover;

struct VerifyCliOptions {
  int jobs = 4;
  std::int64_t chunk_rows = 100000;
  std::int64_t sample = 0;
  bool live = false;
  bool once = false;
  int recheck = 5;
  int catchup_timeout = 120;
  std::size_t max_keys = 1000;
  bool progress = false;
  std::string hash = "auto";
  std::vector<std::string> tables;
  std::vector<std::string> excluded_tables;
};

// One line on stderr, rewritten in place.
class ProgressLine : public cut::VerifyObserver {
 public:
  void progress(const cut::VerifyProgress& p) override {
    std::fprintf(stderr,
                 "\rverify: %zu/%zu tables, %lld/%lld chunks, %lld rows, %lld differing, %.0fs ",
                 p.tables_done, p.tables, static_cast<long long>(p.chunks_done),
                 static_cast<long long>(p.chunks), static_cast<long long>(p.rows_done),
                 static_cast<long long>(p.differing_keys), p.seconds);
    std::fflush(stderr);
    shown_ = true;
  }
  ~ProgressLine() override {
    if (shown_) std::fputc('\n', stderr);
  }

 private:
  bool shown_ = false;
};

int run_verify(const CommonOptions& common, const VerifyCliOptions& cli) {
  if (cli.live && cli.once) throw repl::ConfigError("verify: give --live or --once, not both");
  cut::VerifyOptions options;
  options.source_conninfo = common.source_conninfo();
  options.target_conninfo = common.target_conninfo();
  options.name = common.name;
  options.scope = repl::TableScope::from_patterns(cli.tables, cli.excluded_tables);
  options.jobs = cli.jobs;
  options.chunk_rows = cli.chunk_rows;
  options.sample = cli.sample;
  options.mode = cli.live ? cut::VerifyMode::live
                          : (cli.once ? cut::VerifyMode::once : cut::VerifyMode::automatic);
  options.recheck_rounds = cli.recheck;
  options.catchup_timeout = std::chrono::seconds(cli.catchup_timeout);
  options.max_keys = cli.max_keys;
  options.portable_hash = cli.hash == "md5";

  cut::VerifyReport report;
  {
    ProgressLine line;
    bool show = cli.progress || ::isatty(STDERR_FILENO);
    report = cut::verify(options, show ? &line : nullptr);
  }
  if (common.json) {
    std::cout << cut::to_json(report).dump(2) << "\n";
  } else {
    std::cout << cut::render_text(report);
  }
  return static_cast<int>(report.equal() ? repl::ExitCode::ok : repl::ExitCode::check_failed);
}

}  // namespace

void add_verify_command(CLI::App& app, CommonOptions& common, CommandAction& action) {
  auto options = std::make_shared<VerifyCliOptions>();
  auto* cmd = app.add_subcommand(
      "verify",
      "compare every table on source and target by key ranges; exit 3 naming the "
      "rows that differ");
  cmd->add_option("--jobs", options->jobs, "chunks checked in parallel (default 4)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--chunk-rows", options->chunk_rows, "rows per key-range chunk (default 100000)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--sample", options->sample,
                  "check only N random keys and the last N keys per table")
      ->check(CLI::PositiveNumber);
  cmd->add_flag("--live", options->live,
                "re-check differences once the target passed the source position (default "
                "when the target has a progress row for --name)");
  cmd->add_flag("--once", options->once, "one pass, no re-checks (exact with writes stopped)");
  cmd->add_option("--recheck", options->recheck, "live: re-reads of a differing key (default 5)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--catchup-timeout", options->catchup_timeout,
                  "live: seconds to wait for the target to pass a source position (default 120)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--max-keys", options->max_keys,
                  "differing keys listed per table (default 1000; all are counted)");
  cmd->add_option("--hash", options->hash,
                  "auto (hashtextextended when both servers agree on it) or md5 (portable, "
                  "about 3x slower)")
      ->check(CLI::IsMember({"auto", "md5"}));
  cmd->add_flag("--progress", options->progress, "progress line on stderr (default: on a tty)");
  add_table_scope_options(cmd, options->tables, options->excluded_tables);
  cmd->callback([&action, &common, options] {
    action = [&common, options] { return run_verify(common, *options); };
  });
}

}  // namespace pgferry::tools
