// `pgferry lag`: how far the target is behind the source, in bytes — one sample, or
// --watch (lagmon::LagWatch) redrawn in place on a terminal, a line a sample otherwise.
#include <unistd.h>

#include <iostream>

#include "cli.hpp"
#include "pgferry/lagmon/render.hpp"
#include "pgferry/lagmon/sample.hpp"

namespace pgferry::tools {

namespace {

struct LagOptions {
  double watch_seconds = 0;  // 0: one sample
  long count = 0;            // with --watch: stop after this many samples (0: until SIGINT)
};

int lag_command(const CommonOptions& common, const LagOptions& options) {
  lagmon::LagSampler sampler(common.source_conninfo(), common.target_conninfo(), common.name);
  if (options.watch_seconds <= 0) {
    auto sample = sampler.sample();
    if (common.json) {
      std::cout << lagmon::render_json(sample, std::nullopt).dump() << std::endl;
    } else {
      std::cout << lagmon::render_text(sample, std::nullopt);
    }
    return 0;
  }

  lagmon::LagWatch watch(sampler, std::chrono::duration<double>(options.watch_seconds),
                         options.count);
  StopOnSignal stop_on_signal(watch);
  bool terminal = ::isatty(STDOUT_FILENO) && !common.json;
  watch.run([&](const lagmon::LagSample& sample, const std::optional<lagmon::LagTrend>& trend) {
    if (common.json) {
      std::cout << lagmon::render_json(sample, trend).dump() << std::endl;
    } else if (terminal) {
      // Redraw in place: home the cursor and clear the screen.
      std::cout << "\x1b[H\x1b[2J"
                << "pgferry lag — " << common.name << " (every " << options.watch_seconds
                << "s, Ctrl-C to stop)\n\n"
                << lagmon::render_text(sample, trend) << std::flush;
    } else {
      std::cout << lagmon::render_line(sample, trend) << std::endl;
    }
  });
  return 0;
}

}  // namespace

void add_lag_command(CLI::App& app, CommonOptions& common, CommandAction& action) {
  auto options = std::make_shared<LagOptions>();
  auto* cmd = app.add_subcommand("lag", "show how far the target is behind the source, in bytes");
  cmd->add_option("--watch", options->watch_seconds,
                  "sample every SECS seconds (default 2) until interrupted")
      ->expected(0, 1)
      ->default_str("2");
  cmd->add_option("--count", options->count, "with --watch: stop after N samples");
  cmd->callback([&common, &action, options] {
    action = [&common, options] { return lag_command(common, *options); };
  });
}

}  // namespace pgferry::tools
