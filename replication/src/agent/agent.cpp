// Agent: sessions of stream + applier, reconnects with backoff, and the stop conditions
// (until, fence, request).
//
// NOTES
// - The loop: poll the stream (which drives the Applier through the assembler), let the
//   applier commit a group whose time bound passed, or at once when the stream delivered
//   nothing for kQuietCommit (the group bounds are large, for a backlog; at the head of the
//   stream this keeps the apply delay short), confirm the applier's durable position, and
//   hand the observer a snapshot (plain values, no call per row).
// - until: done once the durable position reaches it. When the last transaction ended
//   before it, only the walsender's keepalive tells that nothing else is coming (the
//   Applier records its wal_end at idle); a status update with reply_requested asks for one.
//   The agent asks the same whenever the stream has been quiet for 500 ms, so that the
//   applied position (and the lag) follows WAL that carries nothing for us.
// - Fence: the applier commits the fence's transaction at once and, with stop_at_fence,
//   applies nothing after it (what the same poll delivered past it is ignored, never
//   committed, a streamed transaction applied live is rolled back, and the progress row
//   stays at the fence); that commit is durable when it returns (synchronous_commit on for
//   it), and the session confirms it to the source and returns. The next run resumes right
//   after it. A connection lost between that commit and the agent seeing it (the source
//   gone in the same poll) would make the next session resume past the fence without
//   seeing it: the agent keeps the fence and, when the progress row it resumes from (which
//   the applier flushes at start) has reached the fence's end, returns `fenced` at once (the
//   slot is then confirmed by the next run).
// - A ConnectionError from either side tears down both the stream and the applier (the open
//   target transaction dies with its connection) and starts over from the progress record,
//   with exponential backoff (200 ms doubling to 30 s). Anything else ends run().
// - request_stop(): commit the open group if no source transaction is half-way, send a final
//   status update, return `stopped`. It only sets an atomic, so a signal handler may call it.
#include "pgferry/replication/agent/agent.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <thread>

#include "pgferry/replication/core/conninfo.hpp"
#include "pgferry/replication/core/error.hpp"
#include "pgferry/replication/core/pg.hpp"
#include "pgferry/replication/stream/stream.hpp"

namespace pgferry::replication {

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// A group is committed once the stream delivered nothing for this long.
constexpr auto kQuietCommit = 20ms;
// With nothing received for this long, ask the walsender for a keepalive.
constexpr auto kKeepalivePing = 500ms;
constexpr auto kLogInterval = 10s;
constexpr auto kFirstBackoff = 200ms;
constexpr auto kMaxBackoff = 30s;

const char* outcome_text(AgentOutcome outcome) {
  switch (outcome) {
    case AgentOutcome::reached_until:
      return "reached --until";
    case AgentOutcome::fenced:
      return "stopped at the fence";
    case AgentOutcome::stopped:
      return "stopped";
  }
  return "?";
}

}  // namespace

void AgentObservers::session_started() {
  for (auto* o : observers_) o->session_started();
}
void AgentObservers::session_lost(const std::string& error) {
  for (auto* o : observers_) o->session_lost(error);
}
void AgentObservers::update(const AgentProgress& progress) {
  for (auto* o : observers_) o->update(progress);
}
void AgentObservers::finished(const AgentResult& result) {
  for (auto* o : observers_) o->finished(result);
}

struct Agent::Session {
  AgentResult result;
  // A fence an earlier session's applier committed: if the session ended (lost connection)
  // before it saw the commit durable, the next one resumes past it and never sees it again,
  // so it checks the progress row against it instead.
  std::optional<Fence> committed_fence;
};

Agent::Agent(AgentOptions options, AgentObserver* observer)
    : options_(std::move(options)), observer_(observer != nullptr ? observer : &none_) {
  // Checked here: a usage error must not be retried.
  validate_conninfo(options_.source_conninfo, "--source");
  validate_conninfo(options_.target_conninfo, "--target");
  if (options_.name.empty()) throw ConfigError("--name must not be empty");
  if (options_.publication.empty()) options_.publication = options_.name;
  if (options_.until) options_.stop_at_fence = false;
  if (options_.status_interval.count() <= 0) {
    throw ConfigError("--status-interval-ms must be positive");
  }
  if (options_.reconnect_timeout.count() <= 0) {
    throw ConfigError("--reconnect-timeout must be positive");
  }
}

ApplierOptions Agent::applier_options() const {
  ApplierOptions applier = options_.applier;
  applier.name = options_.name;
  applier.fence_name = options_.name;
  applier.stop_at_fence = options_.stop_at_fence;
  applier.streamed_conninfo.clear();
  if (options_.streaming && !options_.spool_streamed) {
    applier.streamed_conninfo = options_.target_conninfo;
  }
  if (options_.until) applier.idle_progress_interval = 100ms;
  return applier;
}

AgentResult Agent::run() {
  Session session;
  auto backoff = std::chrono::milliseconds(kFirstBackoff);
  auto failing_since = Clock::now();
  auto done = [&](AgentOutcome outcome) {
    session.result.outcome = outcome;
    if (outcome != AgentOutcome::fenced) session.result.fence.reset();
    spdlog::info("run slot={} lsn={} {}", options_.name, session.result.applied,
                 outcome_text(outcome));
    observer_->finished(session.result);
    return session.result;
  };
  while (true) {
    bool connected = false;
    try {
      return done(run_session(session, connected));
    } catch (const SqlError& e) {
      if (e.sqlstate() != "55P03" || options_.spool_streamed || !options_.streaming) throw;
      throw SqlError(
          fmt::format("{}; if the target has triggers, foreign keys or unique indexes that the "
                      "source does not have, a transaction applied while a large one streams "
                      "can wait for it: rerun with --spool-streamed",
                      e.what()),
          e.sqlstate(), Side::target);
    } catch (const ConnectionError& e) {
      if (stop_requested()) throw;
      observer_->session_lost(e.what());
      auto now = Clock::now();
      if (connected) {
        failing_since = now;
        backoff = kFirstBackoff;
      }
      if (now - failing_since >= options_.reconnect_timeout) {
        spdlog::error("run slot={} giving up after {}s of failed reconnects", options_.name,
                      options_.reconnect_timeout.count());
        throw;
      }
      spdlog::warn("run slot={} lsn={} connection lost, reconnecting in {}ms: {}", options_.name,
                   session.result.applied, backoff.count(), e.what());
      auto wake = Clock::now() + backoff;
      while (Clock::now() < wake && !stop_requested()) std::this_thread::sleep_for(20ms);
      if (stop_requested()) return done(AgentOutcome::stopped);
      backoff = std::min<std::chrono::milliseconds>(backoff * 2, kMaxBackoff);
    }
  }
}

// One connected session: returns at until, at the fence or on request; throws on errors
// (run() retries ConnectionError).
AgentOutcome Agent::run_session(Session& session, bool& connected) {
  AgentResult& result = session.result;
  Applier applier(Connection::open(options_.target_conninfo, Side::target), applier_options());
  result.resumed_from = applier.resume_lsn();
  result.applied = applier.durable_lsn();
  if (options_.stop_at_fence && session.committed_fence &&
      applier.durable_lsn() >= session.committed_fence->end_lsn) {
    result.fence = session.committed_fence;
    return AgentOutcome::fenced;
  }
  const auto& until = options_.until;
  if (until && applier.durable_lsn() >= *until) return AgentOutcome::reached_until;

  StreamOptions stream_options;
  stream_options.slot = options_.name;
  stream_options.publications = {options_.publication};
  stream_options.start_lsn = applier.durable_lsn();
  stream_options.streaming = options_.streaming;
  stream_options.messages = true;  // fences
  stream_options.status_interval = options_.status_interval;
  stream_options.protocol_version = options_.protocol_version;
  ReplicationStream stream(options_.source_conninfo, stream_options, applier);
  stream.start();
  connected = true;
  observer_->session_started();
  spdlog::info("run slot={} lsn={} until={} synchronous_commit={}", options_.name,
               applier.durable_lsn(), until ? until->to_string() : "-",
               options_.applier.synchronous_commit);

  AgentProgress progress;
  auto snapshot = [&] {
    progress.counters = applier.counters();
    progress.durable = applier.durable_lsn();
    progress.received = stream.received_lsn();
    progress.server_wal_end = stream.server_wal_end();
    progress.spooled_bytes = stream.spooled_bytes();
    progress.received_bytes = stream.received_bytes();
    if (const auto* assembler = stream.assembler()) {
      progress.streamed = assembler->streamed_transactions();
      progress.streamed_live = assembler->eager_transactions();
    }
  };
  auto finish = [&](AgentOutcome outcome) {
    if (!applier.in_source_transaction()) applier.flush();
    stream.confirm(applier.durable_lsn());
    stream.stop();
    snapshot();
    result.applied = progress.durable;
    result.counters = progress.counters;
    result.streamed = progress.streamed;
    result.streamed_live = progress.streamed_live;
    return outcome;
  };

  auto last_log = Clock::now();
  auto last_ping = Clock::now();
  Lsn last_received = stream.received_lsn();
  while (true) {
    // Nothing more for a short while: the source is quiet, commit what is applied now
    // rather than at the group's time bound (which only paces a busy stream).
    Lsn received_before = stream.received_lsn();
    bool alive = false;
    try {
      alive = stream.poll(applier.group_open() ? kQuietCommit : 100ms);
      if (stream.received_lsn() == received_before) {
        applier.flush();
      } else {
        applier.tick();
      }
    } catch (const ConnectionError&) {
      if (applier.fence()) session.committed_fence = applier.fence();
      throw;
    }
    stream.confirm(applier.durable_lsn());
    result.applied = applier.durable_lsn();
    snapshot();
    observer_->update(progress);

    if (const auto& fence = applier.fence(); fence && options_.stop_at_fence) {
      session.committed_fence = fence;
      if (applier.durable_lsn() >= fence->end_lsn) {
        result.fence = fence;
        spdlog::info("run slot={} fence id={} lsn={} end_lsn={} applied", options_.name, fence->id,
                     fence->message_lsn, fence->end_lsn);
        return finish(AgentOutcome::fenced);
      }
    }
    if (until && applier.durable_lsn() >= *until) return finish(AgentOutcome::reached_until);
    if (stop_requested()) {
      spdlog::info("run slot={} stopping on request", options_.name);
      return finish(AgentOutcome::stopped);
    }
    if (!alive) {
      throw ConnectionError("source: the walsender ended the stream", "08006", Side::source);
    }
    auto now = Clock::now();
    if (stream.received_lsn() == last_received && now - last_ping >= kKeepalivePing) {
      // Quiet: ask the walsender where it is; its keepalive lets the applier move to it.
      // Without asking, WAL that is none of ours (another database, a checkpoint) may get
      // no keepalive until the next record is written, and the lag would not read zero.
      // (After a fence with synchronous_commit off, the same keepalive lets the applier
      // see the fence's commit flushed.)
      stream.send_status(true);
      last_ping = now;
    }
    last_received = stream.received_lsn();
    if (now - last_log >= kLogInterval) {
      const auto& c = progress.counters;
      spdlog::info(
          "run slot={} lsn={} received={} txns={} skipped={} inserted={} updated={} deleted={} "
          "groups={}",
          options_.name, progress.durable, progress.received, c.transactions_applied,
          c.transactions_skipped, c.rows_inserted, c.rows_updated, c.rows_deleted,
          c.groups_committed);
      last_log = now;
    }
  }
}

}  // namespace pgferry::replication
