// `pgferry run [--until LSN]`: the agent (replication/agent/agent.hpp), run by
// cutover::Follower in the direction the cutover history says (source to target, or back
// after a cutover), with /metrics and /status (lagmon::AgentReporter) and the periodic
// sequence sync (sequences::PeriodicSequenceSync, per direction) attached; SIGINT/SIGTERM
// ask it to stop (it commits or rolls back the open target transaction, sends a final status
// update and exits 0); SIGHUP re-reads the log level from --log-level-file, or without one
// toggles between --log-level and debug (applied at the agent's next poll).
#include <spdlog/spdlog.h>

#include <atomic>
#include <csignal>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>

#include "cli.hpp"
#include "pgferry/cutover/follower.hpp"
#include "pgferry/lagmon/agent_reporter.hpp"
#include "pgferry/replication/agent/agent.hpp"
#include "pgferry/replication/core/error.hpp"
#include "pgferry/replication/core/log.hpp"
#include "pgferry/sequences/periodic_sync.hpp"

namespace pgferry::tools {

namespace {

namespace repl = pgferry::replication;

struct RunOptions {
  std::string until;
  std::size_t group_max_bytes = repl::ApplierOptions{}.group_max_bytes;
  std::size_t group_max_rows = repl::ApplierOptions{}.group_max_rows;
  int group_max_delay_ms = static_cast<int>(repl::ApplierOptions{}.group_max_delay.count());
  std::size_t pipeline_max_bytes = repl::ApplierOptions{}.pipeline_max_bytes;
  std::size_t copy_min_rows = repl::ApplierOptions{}.copy_min_rows;
  std::string synchronous_commit = "on";
  int status_interval_ms = 1000;
  int idle_interval_ms = 100;
  int head_commit_ms = 5;
  int protocol_version = 0;
  bool no_streaming = false;
  bool spool_streamed = false;
  int lock_timeout_s = static_cast<int>(repl::ApplierOptions{}.lock_timeout.count());
  bool allow_target_triggers = false;
  int reconnect_timeout_s = 600;
  unsigned max_retries_same_lsn = repl::AgentOptions{}.max_retries_same_lsn;
  std::string spool_dir;       // empty: <temp>/pgferry-spool-<name>
  std::string metrics_listen;  // empty: no HTTP endpoint
  int sync_sequences_s = 0;    // 0: the agent does not sync sequences
  std::string log_level_file;  // empty: SIGHUP toggles debug
};

std::atomic<bool> g_reload_log_level{false};

extern "C" void on_run_reload_signal(int /*signal*/) {
  g_reload_log_level.store(true);
}

// Applies a SIGHUP on the agent's thread (a signal handler may not touch the logger).
class LogLevelReload final : public repl::AgentObserver {
 public:
  LogLevelReload(std::string configured, std::string file)
      : configured_(std::move(configured)), file_(std::move(file)), current_(configured_) {
    if (!file_.empty()) apply(repl::read_log_level_file(file_));
  }
  void update(const repl::AgentProgress& /*progress*/) override { poll(); }
  void session_lost(const std::string& /*error*/) override { poll(); }

 private:
  void poll() {
    if (!g_reload_log_level.exchange(false)) return;
    try {
      if (!file_.empty()) {
        apply(repl::read_log_level_file(file_));
      } else {
        apply(current_ == "debug" ? configured_ : std::string("debug"));
      }
    } catch (const repl::ConfigError& e) {
      spdlog::error("SIGHUP: log level kept at {}: {}", current_, e.what());
    }
  }
  void apply(const std::string& level) {
    repl::set_log_level(level);
    current_ = level;
    spdlog::warn("log level={}{}", level, file_.empty() ? "" : " from " + file_);
  }
  std::string configured_;
  std::string file_;
  std::string current_;
};

repl::AgentOptions agent_options(const CommonOptions& common, const RunOptions& options) {
  repl::AgentOptions agent;
  agent.source_conninfo = common.source_conninfo();
  agent.target_conninfo = common.target_conninfo();
  agent.name = common.name;
  agent.publication = common.publication_name();
  agent.applier.group_max_bytes = options.group_max_bytes;
  agent.applier.group_max_rows = options.group_max_rows;
  agent.applier.group_max_delay = std::chrono::milliseconds(options.group_max_delay_ms);
  agent.applier.pipeline_max_bytes = options.pipeline_max_bytes;
  agent.applier.copy_min_rows = options.copy_min_rows;
  agent.applier.synchronous_commit = options.synchronous_commit;
  agent.applier.lock_timeout = std::chrono::seconds(options.lock_timeout_s);
  agent.applier.allow_target_triggers = options.allow_target_triggers;
  agent.status_interval = std::chrono::milliseconds(options.status_interval_ms);
  agent.idle_interval = std::chrono::milliseconds(options.idle_interval_ms);
  agent.head_commit = std::chrono::milliseconds(options.head_commit_ms);
  if (options.protocol_version > 0) agent.protocol_version = options.protocol_version;
  agent.streaming = !options.no_streaming;
  agent.spool_streamed = options.spool_streamed;
  if (!options.until.empty()) agent.until = repl::Lsn::from_string(options.until, "--until");
  agent.reconnect_timeout = std::chrono::seconds(options.reconnect_timeout_s);
  agent.max_retries_same_lsn = options.max_retries_same_lsn;
  agent.spool_dir = options.spool_dir;
  return agent;
}

const char* outcome_name(repl::AgentOutcome outcome) {
  switch (outcome) {
    case repl::AgentOutcome::reached_until:
      return "until";
    case repl::AgentOutcome::fenced:
      return "fenced";
    case repl::AgentOutcome::stopped:
      return "stopped";
  }
  return "?";
}

int run_run(const CommonOptions& common, const RunOptions& options) {
  auto agent_opts = agent_options(common, options);  // usage errors first
  lagmon::AgentReporter reporter(common.name, common.publication_name(), options.metrics_listen);
  LogLevelReload reload(common.log_level, options.log_level_file);
  // Per direction (the follower swaps source and target after a cutover): the sequence sync
  // goes the way the agent replicates.
  std::unique_ptr<sequences::PeriodicSequenceSync> sequence_sync;
  std::unique_ptr<repl::AgentObservers> observers;
  auto observer_for = [&](const repl::AgentOptions& direction) -> repl::AgentObserver* {
    sequence_sync = std::make_unique<sequences::PeriodicSequenceSync>(
        direction.source_conninfo, direction.target_conninfo, common.name,
        std::chrono::seconds(options.sync_sequences_s),
        [&reporter](const std::exception&) { reporter.count_error(); });
    observers = std::make_unique<repl::AgentObservers>(
        std::vector<repl::AgentObserver*>{&reporter, sequence_sync.get(), &reload});
    return observers.get();
  };
  cutover::FollowOptions follow;
  follow.agent = std::move(agent_opts);
  cutover::Follower agent(std::move(follow), observer_for);

  repl::AgentResult result;
  {
    StopOnSignal stop_on_signal(agent);
    std::signal(SIGHUP, on_run_reload_signal);
    struct RestoreSighup {
      ~RestoreSighup() { std::signal(SIGHUP, SIG_DFL); }
    } restore_sighup;
    result = agent.run();
  }

  if (common.json) {
    const auto& c = result.counters;
    nlohmann::json out{{"ok", true},
                       {"slot", common.name},
                       {"outcome", outcome_name(result.outcome)},
                       {"resumed_from", result.resumed_from.to_string()},
                       {"applied_lsn", result.applied.to_string()},
                       {"transactions", c.transactions_applied},
                       {"skipped", c.transactions_skipped},
                       {"inserted", c.rows_inserted},
                       {"updated", c.rows_updated},
                       {"deleted", c.rows_deleted},
                       {"groups", c.groups_committed},
                       {"streamed", result.streamed},
                       {"streamed_applied_live", result.streamed_live}};
    if (result.fence) {
      out["fence"] = {{"id", result.fence->id},
                      {"lsn", result.fence->message_lsn.to_string()},
                      {"end_lsn", result.fence->end_lsn.to_string()}};
    }
    std::cout << out.dump(2) << "\n";
  }
  return static_cast<int>(repl::ExitCode::ok);
}

}  // namespace

void add_run_command(CLI::App& app, CommonOptions& common, CommandAction& action) {
  auto* cmd =
      app.add_subcommand("run", "stream changes from the slot and apply them to the target");
  auto options = std::make_shared<RunOptions>();
  cmd->add_option("--until", options->until,
                  "exit 0 once every transaction committed at or before this LSN is applied");
  cmd->add_option("--group-max-bytes", options->group_max_bytes,
                  "commit the target transaction after this many bytes of changes");
  cmd->add_option("--group-max-rows", options->group_max_rows,
                  "commit the target transaction after this many rows");
  cmd->add_option("--group-max-delay-ms", options->group_max_delay_ms,
                  "commit the target transaction after this many milliseconds");
  cmd->add_option("--pipeline-max-bytes", options->pipeline_max_bytes,
                  "bytes of statements sent to the target before their results are read");
  cmd->add_option("--copy-min-rows", options->copy_min_rows,
                  "send a run of inserts into one table as COPY from this many rows");
  cmd->add_option("--synchronous-commit", options->synchronous_commit,
                  "synchronous_commit of the target session (on, remote_apply, remote_write, "
                  "local, off)")
      ->check(CLI::IsMember({"on", "remote_apply", "remote_write", "local", "off"}));
  cmd->add_option("--status-interval-ms", options->status_interval_ms,
                  "how often the applied position is reported to the source")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--idle-interval-ms", options->idle_interval_ms,
                  "at idle (e.g. only another database writes), ask the source for its WAL "
                  "position after this much quiet and record it as applied at most this often")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--head-commit-ms", options->head_commit_ms,
                  "at the head of the stream, commit a group of transactions once everything "
                  "received is applied and the group is this old (0: at once): lower gives "
                  "less delay, higher fewer target commits")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--protocol-version", options->protocol_version,
                  "pgoutput protocol version (default: the highest the source speaks)")
      ->check(CLI::Range(1, 4));
  cmd->add_flag("--no-streaming", options->no_streaming,
                "do not stream large in-progress transactions (they are sent at commit)");
  cmd->add_flag("--spool-streamed", options->spool_streamed,
                "apply a streamed transaction only at its commit, from the spool (default: as "
                "it streams, on a second target connection, when no other one streams)");
  cmd->add_flag("--allow-target-triggers", options->allow_target_triggers,
                "accept that target triggers and foreign-key actions fire for replicated changes "
                "when the target role may not set session_replication_role (see README)");
  cmd->add_option("--lock-timeout", options->lock_timeout_s,
                  "seconds to wait for another run of the same --name to let go of the target, "
                  "and for a row lock while a streamed transaction is applied as it streams")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--reconnect-timeout", options->reconnect_timeout_s,
                  "give up after this many seconds without a successful reconnect")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--max-retries-same-lsn", options->max_retries_same_lsn,
                  "stop (exit 1) after this many lock or statement timeouts, deadlocks or "
                  "serialization failures in a row with the same error (0: retry forever)")
      ->capture_default_str();
  cmd->add_option("--spool-dir", options->spool_dir,
                  "directory for the spool of large streamed transactions (files in DIR/NAME; "
                  "default: $TMPDIR/pgferry-spool-NAME); needs room for the largest one, "
                  "compressed")
      ->type_name("DIR");
  cmd->add_option("--metrics-listen", options->metrics_listen,
                  "serve /metrics (Prometheus), /status (JSON) and /ready (200 while streaming, "
                  "else 503) on HOST:PORT, e.g. "
                  "127.0.0.1:9187 (\":PORT\" binds localhost)");
  cmd->add_option("--sync-sequences", options->sync_sequences_s,
                  "sync target sequences from the source every SECS seconds (0: never)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--log-level-file", options->log_level_file,
                  "read the log level from FILE at start and again on SIGHUP (without it, "
                  "SIGHUP toggles between --log-level and debug)")
      ->type_name("FILE");
  cmd->callback([&action, &common, options] {
    action = [&common, options] { return run_run(common, *options); };
  });
}

}  // namespace pgferry::tools
