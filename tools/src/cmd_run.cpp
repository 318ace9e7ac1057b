// `pgferry run [--until LSN]`: stream the slot from the target's progress record, apply every
// transaction to the target exactly once, and confirm to the source only what the target
// has committed.
//
// NOTES
// - The loop: poll the stream (which drives the Applier through the assembler), let the
//   applier commit a group whose time bound passed, or at once when the stream delivered
//   nothing for kQuietCommit (the group bounds are large, for a backlog; at the head of the
//   stream this keeps the apply delay short), confirm the applier's durable position.
// - --until LSN: done once the durable position reaches LSN. When the last transaction ended
//   before LSN, only the walsender's keepalive tells that nothing else is coming (the
//   Applier records its wal_end at idle); a status update with reply_requested asks for one.
//   The agent asks the same whenever the stream has been quiet for 500 ms, so that the
//   applied position (and the lag) follows WAL that carries nothing for us.
// - A ConnectionError from either side tears down both the stream and the applier (the open
//   target transaction dies with its connection) and starts over from the progress record,
//   with exponential backoff. Anything else ends the command.
// - SIGINT/SIGTERM: commit the open group if no source transaction is half-way, send a final
//   status update, exit 0.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <csignal>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>

#include "cli.hpp"
#include "pgferry/lagmon/agent_metrics.hpp"
#include "pgferry/replication/apply/applier.hpp"
#include "pgferry/replication/core/error.hpp"
#include "pgferry/replication/core/pg.hpp"
#include "pgferry/replication/stream/stream.hpp"
#include "pgferry/sequences/sequences.hpp"

namespace pgferry::tools {

namespace {

namespace repl = pgferry::replication;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

volatile std::sig_atomic_t g_stop_signal = 0;

// A group is committed once the stream delivered nothing for this long.
constexpr auto kQuietCommit = 20ms;

void on_run_stop_signal(int signal) {
  g_stop_signal = signal;
}

struct RunOptions {
  std::string until;
  std::size_t group_max_bytes = repl::ApplierOptions{}.group_max_bytes;
  std::size_t group_max_rows = repl::ApplierOptions{}.group_max_rows;
  int group_max_delay_ms = static_cast<int>(repl::ApplierOptions{}.group_max_delay.count());
  std::size_t pipeline_max_bytes = repl::ApplierOptions{}.pipeline_max_bytes;
  std::size_t copy_min_rows = repl::ApplierOptions{}.copy_min_rows;
  std::string synchronous_commit = "on";
  int status_interval_ms = 1000;
  int protocol_version = 0;
  bool no_streaming = false;
  bool spool_streamed = false;
  bool allow_target_triggers = false;
  int lock_timeout_s = static_cast<int>(repl::ApplierOptions{}.lock_timeout.count());
  int reconnect_timeout_s = 600;
  std::string metrics_listen;  // empty: no HTTP endpoint
  int sync_sequences_s = 0;    // 0: the agent does not sync sequences
};

// What the agent shows on /metrics and /status, and its periodic sequence sync. Lives
// across reconnects; each session reports its applier's counters as deltas so that the
// Prometheus counters stay monotonic.
class AgentReport {
 public:
  AgentReport(const CommonOptions& common, const RunOptions& options)
      : common_(common), options_(options), metrics_(registry_) {
    if (!options.metrics_listen.empty()) {
      server_ = lagmon::serve_agent_endpoints(options.metrics_listen, registry_, status_);
      spdlog::info("run slot={} serving /metrics and /status on http://{}", common.name,
                   server_->address());
    }
    publish("starting", {}, {}, {});
  }

  void session_started() {
    last_ = {};
    last_streamed_ = 0;
    last_live_ = 0;
    last_bytes_ = 0;
    metrics_.up.set(1);
  }
  void session_lost(const std::string& error) {
    metrics_.up.set(0);
    metrics_.errors.inc();
    metrics_.reconnects.inc();
    last_error_ = error;
    publish("reconnecting", {}, {}, {});
  }

  // Called after every poll: cheap (atomics and, once a second, a small JSON document).
  void update(const repl::Applier& applier, const repl::ReplicationStream& stream) {
    auto c = applier.counters();
    metrics_.transactions.inc(c.transactions_applied - last_.transactions_applied);
    metrics_.rows_inserted.inc(c.rows_inserted - last_.rows_inserted);
    metrics_.rows_updated.inc(c.rows_updated - last_.rows_updated);
    metrics_.rows_deleted.inc(c.rows_deleted - last_.rows_deleted);
    metrics_.truncates.inc(c.relations_truncated - last_.relations_truncated);
    if (auto groups = c.groups_committed - last_.groups_committed; groups > 0) {
      // Between two polls (100 ms) usually one group commits; with several, each is counted
      // at the mean size of those committed in the interval.
      double txns = static_cast<double>(c.transactions_applied - last_.transactions_applied);
      double rows =
          static_cast<double>(c.rows_inserted + c.rows_updated + c.rows_deleted -
                              last_.rows_inserted - last_.rows_updated - last_.rows_deleted);
      for (std::uint64_t i = 0; i < groups; ++i) {
        metrics_.batch_transactions.observe(txns / static_cast<double>(groups));
        metrics_.batch_rows.observe(rows / static_cast<double>(groups));
      }
    }
    last_ = c;
    auto durable = applier.durable_lsn();
    auto wal_end = std::max(stream.server_wal_end(), stream.received_lsn());
    metrics_.applied_lsn.set(static_cast<double>(durable.value()));
    metrics_.received_lsn.set(static_cast<double>(stream.received_lsn().value()));
    metrics_.source_wal_end_lsn.set(static_cast<double>(wal_end.value()));
    metrics_.lag_bytes.set(static_cast<double>(std::max<std::int64_t>(0, wal_end - durable)));
    metrics_.spool_bytes.set(static_cast<double>(stream.spooled_bytes()));
    metrics_.bytes_received.inc(stream.received_bytes() - last_bytes_);
    last_bytes_ = stream.received_bytes();
    if (const auto* assembler = stream.assembler()) {
      auto streamed = assembler->streamed_transactions();
      auto live = assembler->eager_transactions();
      metrics_.streamed_live.inc(live - last_live_);
      metrics_.streamed_spool.inc((streamed - live) - (last_streamed_ - last_live_));
      last_streamed_ = streamed;
      last_live_ = live;
    }
    auto now = Clock::now();
    if (now - last_status_ >= 1s) {
      publish("streaming", durable, stream.received_lsn(), wal_end);
      last_status_ = now;
    }
    maybe_sync_sequences(now);
  }

  void finished(const char* state, repl::Lsn durable) { publish(state, durable, {}, {}); }

 private:
  void publish(const char* state, repl::Lsn applied, repl::Lsn received, repl::Lsn wal_end) {
    auto lsn = [](repl::Lsn l) {
      return l.is_valid() ? nlohmann::json(l.to_string()) : nlohmann::json(nullptr);
    };
    status_.set({
        {"state", state},
        {"slot", common_.name},
        {"publication", common_.publication_name()},
        {"applied_lsn", lsn(applied)},
        {"received_lsn", lsn(received)},
        {"source_wal_end_lsn", lsn(wal_end)},
        {"lag_bytes", applied.is_valid() && wal_end.is_valid()
                          ? nlohmann::json(std::max<std::int64_t>(0, wal_end - applied))
                          : nlohmann::json(nullptr)},
        {"transactions_applied", metrics_.transactions.value()},
        {"rows_applied",
         {{"insert", metrics_.rows_inserted.value()},
          {"update", metrics_.rows_updated.value()},
          {"delete", metrics_.rows_deleted.value()}}},
        {"reconnects", metrics_.reconnects.value()},
        {"last_error", last_error_.empty() ? nlohmann::json(nullptr) : nlohmann::json(last_error_)},
        {"uptime_seconds", std::chrono::duration<double>(Clock::now() - started_).count()},
    });
  }

  // --sync-sequences: a failed sync is logged and counted, never stops replication.
  void maybe_sync_sequences(Clock::time_point now) {
    if (options_.sync_sequences_s <= 0 ||
        now - last_sequence_sync_ < std::chrono::seconds(options_.sync_sequences_s)) {
      return;
    }
    last_sequence_sync_ = now;
    try {
      auto source = repl::Connection::open(common_.source_conninfo(), repl::Side::source);
      auto target = repl::Connection::open(common_.target_conninfo(), repl::Side::target);
      auto report = sequences::sync_sequences(source, target, {});
      if (!report.changed.empty()) {
        spdlog::info("run slot={} sequences synced={}", common_.name, report.changed.size());
      }
    } catch (const std::exception& e) {
      metrics_.errors.inc();
      spdlog::warn("run slot={} sequence sync failed: {}", common_.name, e.what());
    }
  }

  const CommonOptions& common_;
  const RunOptions& options_;
  lagmon::MetricsRegistry registry_;
  lagmon::AgentMetrics metrics_;
  lagmon::StatusBoard status_;
  std::unique_ptr<lagmon::HttpServer> server_;
  repl::ApplierCounters last_{};
  std::uint64_t last_streamed_ = 0;  // this session's assembler totals, already counted
  std::uint64_t last_live_ = 0;
  std::uint64_t last_bytes_ = 0;
  std::string last_error_;
  Clock::time_point started_ = Clock::now();
  Clock::time_point last_status_{};
  Clock::time_point last_sequence_sync_ = Clock::now();
};

enum class Outcome { reached_until, stopped };

struct Session {
  repl::Lsn resume;
  repl::Lsn durable;
  repl::ApplierCounters counters;
  std::uint64_t streamed = 0;       // streamed transactions committed
  std::uint64_t streamed_live = 0;  // of those, applied as they streamed
};

// One connected session: returns when --until is reached or a stop signal came; throws on
// errors (the caller retries ConnectionError).
Outcome run_session(const CommonOptions& common, const RunOptions& options,
                    std::optional<repl::Lsn> until, Session& session, bool& connected,
                    AgentReport& report) {
  repl::ApplierOptions applier_options;
  applier_options.name = common.name;
  applier_options.group_max_bytes = options.group_max_bytes;
  applier_options.group_max_rows = options.group_max_rows;
  applier_options.group_max_delay = std::chrono::milliseconds(options.group_max_delay_ms);
  applier_options.pipeline_max_bytes = options.pipeline_max_bytes;
  applier_options.copy_min_rows = options.copy_min_rows;
  applier_options.synchronous_commit = options.synchronous_commit;
  applier_options.lock_timeout = std::chrono::seconds(options.lock_timeout_s);
  applier_options.allow_target_triggers = options.allow_target_triggers;
  if (!options.no_streaming && !options.spool_streamed) {
    applier_options.streamed_conninfo = common.target_conninfo();
  }
  if (until) applier_options.idle_progress_interval = 100ms;

  repl::Applier applier(repl::Connection::open(common.target_conninfo(), repl::Side::target),
                        applier_options);
  session.resume = applier.resume_lsn();
  if (until && applier.durable_lsn() >= *until) {
    session.durable = applier.durable_lsn();
    return Outcome::reached_until;
  }

  repl::StreamOptions stream_options;
  stream_options.slot = common.name;
  stream_options.publications = {common.publication_name()};
  stream_options.start_lsn = applier.durable_lsn();
  stream_options.streaming = !options.no_streaming;
  stream_options.status_interval = std::chrono::milliseconds(options.status_interval_ms);
  if (options.protocol_version > 0) stream_options.protocol_version = options.protocol_version;
  repl::ReplicationStream stream(common.source_conninfo(), stream_options, applier);
  stream.start();
  connected = true;
  report.session_started();
  spdlog::info("run slot={} lsn={} until={} synchronous_commit={}", common.name,
               applier.durable_lsn(), until ? until->to_string() : "-", options.synchronous_commit);

  auto last_report = Clock::now();
  auto last_ping = Clock::now();
  repl::Lsn last_received = stream.received_lsn();
  auto finish = [&](Outcome outcome) {
    if (!applier.in_source_transaction()) applier.flush();
    stream.confirm(applier.durable_lsn());
    stream.stop();
    session.durable = applier.durable_lsn();
    session.counters = applier.counters();
    if (const auto* assembler = stream.assembler()) {
      session.streamed += assembler->streamed_transactions();
      session.streamed_live += assembler->eager_transactions();
    }
    return outcome;
  };

  while (true) {
    // Nothing more for a short while: the source is quiet, commit what is applied now
    // rather than at the group's time bound (which only paces a busy stream).
    repl::Lsn received_before = stream.received_lsn();
    bool alive = stream.poll(applier.group_open() ? kQuietCommit : 100ms);
    if (stream.received_lsn() == received_before) {
      applier.flush();
    } else {
      applier.tick();
    }
    stream.confirm(applier.durable_lsn());
    session.durable = applier.durable_lsn();
    report.update(applier, stream);

    if (until && applier.durable_lsn() >= *until) return finish(Outcome::reached_until);
    if (g_stop_signal != 0) {
      spdlog::info("run slot={} stopping on signal {}", common.name,
                   static_cast<int>(g_stop_signal));
      return finish(Outcome::stopped);
    }
    if (!alive) {
      throw repl::ConnectionError("source: the walsender ended the stream", "08006",
                                  repl::Side::source);
    }
    auto now = Clock::now();
    if (stream.received_lsn() == last_received && now - last_ping >= 500ms) {
      // Quiet: ask the walsender where it is; its keepalive lets the applier move to it.
      // Without asking, WAL that is none of ours (another database, a checkpoint) may get
      // no keepalive until the next record is written, and the lag would not read zero.
      stream.send_status(true);
      last_ping = now;
    }
    last_received = stream.received_lsn();
    if (now - last_report >= 10s) {
      auto c = applier.counters();
      spdlog::info(
          "run slot={} lsn={} received={} txns={} skipped={} inserted={} updated={} deleted={} "
          "groups={}",
          common.name, applier.durable_lsn(), stream.received_lsn(), c.transactions_applied,
          c.transactions_skipped, c.rows_inserted, c.rows_updated, c.rows_deleted,
          c.groups_committed);
      last_report = now;
    }
  }
}

int run_run(const CommonOptions& common, const RunOptions& options) {
  std::optional<repl::Lsn> until;
  if (!options.until.empty()) until = repl::Lsn::from_string(options.until, "--until");
  // Validate early: a usage error must not be retried.
  (void)common.source_conninfo();
  (void)common.target_conninfo();

  g_stop_signal = 0;
  std::signal(SIGINT, on_run_stop_signal);
  std::signal(SIGTERM, on_run_stop_signal);

  Session session;
  AgentReport report(common, options);
  auto backoff = 200ms;
  auto failing_since = Clock::now();
  while (true) {
    bool connected = false;
    try {
      Outcome outcome = run_session(common, options, until, session, connected, report);
      report.finished(outcome == Outcome::reached_until ? "done" : "stopped", session.durable);
      spdlog::info("run slot={} lsn={} {}", common.name, session.durable,
                   outcome == Outcome::reached_until ? "reached --until" : "stopped");
      if (common.json) {
        const auto& c = session.counters;
        std::cout << nlohmann::json{{"ok", true},
                                    {"slot", common.name},
                                    {"outcome",
                                     outcome == Outcome::reached_until ? "until" : "stopped"},
                                    {"resumed_from", session.resume.to_string()},
                                    {"applied_lsn", session.durable.to_string()},
                                    {"transactions", c.transactions_applied},
                                    {"skipped", c.transactions_skipped},
                                    {"inserted", c.rows_inserted},
                                    {"updated", c.rows_updated},
                                    {"deleted", c.rows_deleted},
                                    {"groups", c.groups_committed},
                                    {"streamed", session.streamed},
                                    {"streamed_applied_live", session.streamed_live}}
                         .dump(2)
                  << "\n";
      }
      return static_cast<int>(repl::ExitCode::ok);
    } catch (const repl::SqlError& e) {
      if (e.sqlstate() != "55P03" || options.spool_streamed || options.no_streaming) throw;
      throw repl::SqlError(
          fmt::format("{}; if the target has triggers, foreign keys or unique indexes that the "
                      "source does not have, a transaction applied while a large one streams "
                      "can wait for it: rerun with --spool-streamed",
                      e.what()),
          e.sqlstate(), repl::Side::target);
    } catch (const repl::ConnectionError& e) {
      if (g_stop_signal != 0) throw;
      report.session_lost(e.what());
      auto now = Clock::now();
      if (connected) {
        failing_since = now;
        backoff = 200ms;
      }
      if (now - failing_since >= std::chrono::seconds(options.reconnect_timeout_s)) {
        spdlog::error("run slot={} giving up after {}s of failed reconnects", common.name,
                      options.reconnect_timeout_s);
        throw;
      }
      spdlog::warn("run slot={} lsn={} connection lost, reconnecting in {}ms: {}", common.name,
                   session.durable, backoff.count(), e.what());
      auto wake = Clock::now() + backoff;
      while (Clock::now() < wake && g_stop_signal == 0) std::this_thread::sleep_for(20ms);
      if (g_stop_signal != 0) return static_cast<int>(repl::ExitCode::ok);
      backoff = std::min<std::chrono::milliseconds>(backoff * 2, 30s);
    }
  }
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
  cmd->add_option("--protocol-version", options->protocol_version,
                  "pgoutput protocol version (default: the highest the source speaks)")
      ->check(CLI::Range(1, 4));
  cmd->add_flag("--no-streaming", options->no_streaming,
                "do not stream large in-progress transactions (they are sent at commit)");
  cmd->add_flag("--spool-streamed", options->spool_streamed,
                "apply a streamed transaction only at its commit, from the spool (default: as "
                "it streams, on a second target connection, when no other one streams)");
  cmd->add_option("--lock-timeout", options->lock_timeout_s,
                  "seconds to wait for another run of the same --name to let go of the target, "
                  "and for a row lock while a streamed transaction is applied as it streams")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_flag("--allow-target-triggers", options->allow_target_triggers,
                "accept that target triggers and foreign-key actions fire for replicated changes "
                "when the target role may not set session_replication_role (see README)");
  cmd->add_option("--reconnect-timeout", options->reconnect_timeout_s,
                  "give up after this many seconds without a successful reconnect")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--metrics-listen", options->metrics_listen,
                  "serve /metrics (Prometheus) and /status (JSON) on HOST:PORT, e.g. "
                  "127.0.0.1:9187 (\":PORT\" binds localhost)");
  cmd->add_option("--sync-sequences", options->sync_sequences_s,
                  "sync target sequences from the source every SECS seconds (0: never)")
      ->check(CLI::NonNegativeNumber);
  cmd->callback([&action, &common, options] {
    action = [&common, options] { return run_run(common, *options); };
  });
}

}  // namespace pgferry::tools
