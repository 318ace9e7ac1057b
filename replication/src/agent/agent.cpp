// Agent: sessions of stream + applier, reconnects with backoff, and the stop conditions
// (until, fence, request).
//
// NOTES
// - The loop: poll the stream (which drives the Applier through the assembler), let the
//   applier commit a group whose time bound passed, or at once when nothing more has arrived
//   (see head of the stream), confirm the applier's durable position, and hand the observer
//   a snapshot (plain values, no call per row).
// - Head of the stream: the group bounds are large, for a backlog. At the head a group is
//   committed once the applier has applied everything the receiver had queued and the group
//   is head_commit (--head-commit-ms, 5 ms by default) old, or the stream delivered nothing
//   for head_commit. Until issue 17 it waited for 20 ms without anything received, which a
//   steady load of a few hundred transactions a second never gives (only a keepalive in
//   between committed it): at 1000 tps the groups ran to their 1 s bound. Committing at once
//   whenever the queue is empty (--head-commit-ms 0) costs a group (BEGIN, progress row,
//   COMMIT: round trips) per transaction at the head; before the apply session's prepared
//   statements and generic plans, 5 ms groups fell behind less at 1000 tps (pgferry_delay_bench, a
//   busy 2-core machine: p99 1.5 s against 3.3 s; native kept up, so the apply cost per transaction
//   is still the limit there). Behind, the queue is not empty when the applier looks and the group
//   grows to its bounds. A keepalive between two transactions does not commit the open group
//   (Applier::idle keeps its position for after the commit): the walsender sends one
//   whenever it waits for WAL, and committing there made groups of 1.2 transactions on
//   average at 1000 tps (15,661 groups for 18,751 transactions), not 5 ms ones.
//   Transactions that arrive on average head_commit or more apart (a weighted mean of the
//   gaps between those applied) are committed at once: waiting would group none of them and
//   only add the delay (at 200 tps the 5 ms rule made the median delay 3.7 ms, against 0.7
//   for native).
// - until: done once the durable position reaches it. When the last transaction ended
//   before it, only the walsender's keepalive tells that nothing else is coming (the
//   Applier records its wal_end at idle); a status update with reply_requested asks for one.
// - Idle beside a busy database: WAL of another database carries nothing for us, so the
//   applied position (and the lag) follows it only through keepalives. The walsender sends
//   one by itself whenever it asks for more WAL while our reported write position is behind
//   its own (walsender.c, WalSndWaitForWal), i.e. about once per WAL page it reads while
//   another database writes; the agent asks for one (reply_requested) whenever the stream
//   has been quiet for idle_interval (100 ms), for the WAL the walsender read without
//   waiting. The applier writes the keepalive's position to the progress row at most every
//   idle_interval too. That rate limit, 1 s until issue 17 (and the ping after 500 ms), is
//   what made `pgferry lag` read up to a second of the other database's WAL. Costs: at full
//   idle a status update and a keepalive per idle_interval on the walsender; while another
//   database writes, a progress-row commit per idle_interval on the target (both measured
//   by `pgferry_delay_bench --idle-lag`).
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
// - Retry or stop is decided by classify_error() (core/retry.hpp). A retryable error from
//   either side (connection lost, pg_terminate_backend, a server restart, deadlock,
//   serialization failure, lock timeout, the slot still held by a previous run's walsender)
//   tears down both the stream and the applier (the open target transaction rolls back with
//   its connection) and starts over from the progress record, after an exponential backoff
//   with jitter (200 ms doubling to 30 s; back to 200 ms after a session that made progress
//   or lasted a minute), logged with the reason. Retrying gives up only when no session
//   could start for reconnect_timeout. Anything else ends run() with the error and its fix.
// - A conflict (classify_error's `conflict`: lock or statement timeout, deadlock,
//   serialization failure) can be deterministic: the same transaction meets the same lock or
//   timeout on every replay. Conflicts are counted in a row while each is the same error
//   (its text names the statement, table, key and source transaction) or comes at the same
//   applied position (other retryable errors neither count nor reset): from the third on
//   each retry is an `error` line with the count, the bound and the fix, observers see every
//   retry (AgentRetry: /status, a gauge), and at max_retries_same_lsn run() stops with the
//   error and its fix rather than loop for days (0: no bound).
// - Before each session the source's state is checked with a normal connection: the slot
//   exists and is not active (else: its pid and application_name), the publication exists,
//   the source is not a standby, and the progress record is consistent with the slot:
//   . progress >= confirmed_flush_lsn is the normal case (after a crash of the agent or of
//     the source the slot may restart from an older position; what is already applied is
//     skipped, by the walsender or by the applier);
//   . progress < confirmed_flush_lsn means the source was told the target holds changes it
//     does not (a target restored from a backup): the slot cannot send them again, so the
//     agent stops and says to copy again, rather than resume with a hole;
//   . progress > the source's WAL end means the source is not the server the target followed
//     (restored or replaced): stop, or every new transaction up to there would be skipped.
// - request_stop(): commit the open group if no source transaction is half-way, send a final
//   status update, return `stopped`. A retryable error after the request (a server went away
//   while stopping) also returns `stopped`: the open target transaction rolled back with its
//   connection, and the next run resumes from the progress record. It only sets an atomic, so a
//   signal handler may call it.
#include "pgferry/replication/agent/agent.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <optional>
#include <thread>

#include "pgferry/replication/core/conninfo.hpp"
#include "pgferry/replication/core/error.hpp"
#include "pgferry/replication/core/pg.hpp"
#include "pgferry/replication/core/retry.hpp"
#include "pgferry/replication/stream/stream.hpp"

namespace pgferry::replication {

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// At the head of the stream a group is committed once it is this old and everything
// received is applied, or once the stream delivered nothing for this long.
constexpr auto kLogInterval = 10s;
constexpr auto kFirstBackoff = 200ms;
constexpr auto kMaxBackoff = 30s;
// A session that lasted this long resets the backoff even if it applied nothing.
constexpr auto kHealthySession = 60s;
// Conflicts in a row at one position from which each retry is logged as an error.
constexpr unsigned kConflictsLoggedAsError = 3;

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
void AgentObservers::retrying(const AgentRetry& retry) {
  for (auto* o : observers_) o->retrying(retry);
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
  // Of the current session, once connected: for the backoff reset.
  Clock::time_point connected_at;
  Lsn start_applied;
  // Conflicts in a row, each the same error (text: statement, table, key and source
  // transaction) as the one before or at the same applied position.
  unsigned conflicts = 0;
  std::string conflict_error;
  Lsn conflict_lsn;
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
  if (options_.idle_interval.count() <= 0) {
    throw ConfigError("--idle-interval-ms must be positive");
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
  // At idle the progress row follows the walsender's keepalives this often (see the NOTES).
  applier.idle_progress_interval = options_.idle_interval;
  if (options_.until) applier.idle_progress_interval = std::min(options_.idle_interval, 100ms);
  return applier;
}

AgentResult Agent::run() {
  Session session;
  Backoff backoff(kFirstBackoff, kMaxBackoff);
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
    } catch (const std::exception& e) {
      ErrorVerdict verdict = classify_error(e);
      if (!verdict.retry) {
        spdlog::error("run slot={} lsn={} stopping reason=\"{}\": {}", options_.name,
                      session.result.applied, verdict.reason, with_fix(e, verdict));
        if (verdict.fix.empty()) throw;
        if (auto* sql = dynamic_cast<const SqlError*>(&e)) {
          throw SqlError(with_fix(e, verdict), sql->sqlstate(), sql->side());
        }
        throw;
      }
      if (stop_requested()) {
        // Asked to stop while a server went away: the open target transaction is rolled back
        // with its connection and the progress record stays the truth; stopping is done.
        spdlog::warn("run slot={} lsn={} stopping on request after reason=\"{}\": {}",
                     options_.name, session.result.applied, verdict.reason, e.what());
        return done(AgentOutcome::stopped);
      }
      observer_->session_lost(e.what());
      AgentRetry retry{e.what(),    verdict.reason,
                       verdict.fix, session.result.applied,
                       0,           options_.max_retries_same_lsn,
                       {}};
      if (verdict.conflict) {
        // Not by the applied position alone: other transactions (or idle keepalives) may
        // move it on while one large transaction fails every time; not by the text alone: a
        // deadlock's names the pids involved.
        if (session.conflict_error != e.what() && session.conflict_lsn != session.result.applied) {
          session.conflicts = 0;
        }
        session.conflict_error = e.what();
        session.conflict_lsn = session.result.applied;
        retry.conflicts_at_lsn = ++session.conflicts;
      }
      if (verdict.conflict && options_.max_retries_same_lsn > 0 &&
          session.conflicts >= options_.max_retries_same_lsn) {
        auto message = fmt::format(
            "{} ({} times in a row at lsn={}, --max-retries-same-lsn {}); fix: {}", e.what(),
            session.conflicts, session.result.applied, options_.max_retries_same_lsn, verdict.fix);
        spdlog::error("run slot={} lsn={} stopping reason=\"{} repeats\": {}", options_.name,
                      session.result.applied, verdict.reason, message);
        const auto* pg = dynamic_cast<const PgError*>(&e);
        throw SqlError(message, pg != nullptr ? pg->sqlstate() : std::string(),
                       pg != nullptr ? pg->side() : Side::none);
      }
      auto now = Clock::now();
      if (connected) {
        failing_since = now;
        if (session.result.applied > session.start_applied ||
            now - session.connected_at >= kHealthySession) {
          backoff.reset();
        }
      }
      if (now - failing_since >= options_.reconnect_timeout) {
        spdlog::error("run slot={} giving up after {}s without a session reason=\"{}\": {}",
                      options_.name, options_.reconnect_timeout.count(), verdict.reason, e.what());
        throw;
      }
      auto wait = backoff.next();
      std::string hint;
      if (verdict.reason == "lock timeout" && options_.streaming && !options_.spool_streamed) {
        hint =
            " (if this repeats: the target has triggers, foreign keys or unique indexes that "
            "the source does not have, and a transaction applied while a large one streams "
            "waits for it; rerun with --spool-streamed)";
      }
      retry.wait = wait;
      observer_->retrying(retry);
      if (retry.conflicts_at_lsn >= kConflictsLoggedAsError) {
        // Likely deterministic: say so every time, with the way out, before the bound stops it.
        spdlog::error(
            "run slot={} lsn={} retry reason=\"{}\" in_ms={} conflicts_at_lsn={} max={}: {}; "
            "fix: {}",
            options_.name, session.result.applied, verdict.reason, wait.count(),
            retry.conflicts_at_lsn, options_.max_retries_same_lsn, e.what(), verdict.fix);
      } else {
        spdlog::warn("run slot={} lsn={} retry reason=\"{}\" in_ms={}: {}{}", options_.name,
                     session.result.applied, verdict.reason, wait.count(), e.what(), hint);
      }
      auto wake = Clock::now() + wait;
      while (Clock::now() < wake && !stop_requested()) std::this_thread::sleep_for(20ms);
      if (stop_requested()) return done(AgentOutcome::stopped);
    }
  }
}

// The slot, the publication and the source's position against the progress record (see
// the NOTES); throws what classify_error() turns into retry (slot in use) or stop.
void Agent::check_source(Lsn progress) const {
  auto source = Connection::open(options_.source_conninfo, Side::source);
  if (source.exec("SELECT pg_is_in_recovery()", "checking the source").scalar() == "t") {
    throw SqlError(fmt::format("source ({}): the server is in recovery (a standby, or promoted "
                               "elsewhere); fix: point --source at the primary",
                               source.redacted_conninfo()),
                   "55000", Side::source);
  }
  auto slot = source.exec(
      "SELECT s.confirmed_flush_lsn::text, s.active_pid::text, "
      "coalesce(a.application_name, ''), coalesce(host(a.client_addr), 'local'), "
      "pg_current_wal_lsn()::text, coalesce(s.wal_status, '') "
      "FROM pg_replication_slots s LEFT JOIN pg_stat_activity a ON a.pid = s.active_pid "
      "WHERE s.slot_name = $1",
      {Param(options_.name)}, "reading the replication slot");
  if (slot.rows() == 0) {
    throw SqlError(
        fmt::format("source: replication slot \"{}\" does not exist (dropped?)", options_.name),
        "42704", Side::source);
  }
  if (!slot.is_null(0, 1)) {
    throw SqlError(
        fmt::format("source: replication slot \"{}\" is in use by pid={} application_name=\"{}\" "
                    "client={}; fix: stop that process (another `pgferry run --name {}`?) or run "
                    "SELECT pg_terminate_backend({}) on the source",
                    options_.name, slot.get(0, 1), slot.get(0, 2), slot.get(0, 3), options_.name,
                    slot.get(0, 1)),
        "55006", Side::source);
  }
  if (slot.get(0, 5) == "lost") {
    throw SqlError(fmt::format("source: replication slot \"{}\" is invalidated (wal_status "
                               "lost: the WAL it needs was removed)",
                               options_.name),
                   "55000", Side::source);
  }
  if (source
          .exec("SELECT 1 FROM pg_publication WHERE pubname = $1", {Param(options_.publication)},
                "reading the publication")
          .rows() == 0) {
    throw SqlError(
        fmt::format("source: publication \"{}\" does not exist (dropped?)", options_.publication),
        "42704", Side::source);
  }
  Lsn confirmed =
      slot.is_null(0, 0) ? Lsn() : Lsn::from_string(slot.get(0, 0), "confirmed_flush_lsn");
  Lsn wal_end = Lsn::from_string(slot.get(0, 4), "pg_current_wal_lsn");
  if (progress > wal_end) {
    throw Error(fmt::format(
        "target: the progress record \"{}\" is at {}, past the source's WAL end {}: the source "
        "is not the server the target followed (restored from a backup or replaced); fix: run "
        "`pgferry cleanup` and `pgferry init` again to copy anew",
        options_.name, progress, wal_end));
  }
  if (confirmed.is_valid() && progress < confirmed) {
    throw Error(fmt::format(
        "target: the progress record \"{}\" is at {}, behind the slot's confirmed position {}: "
        "the target lacks changes the slot will not send again (a target restored from a "
        "backup?); fix: run `pgferry cleanup` and `pgferry init` again to copy anew",
        options_.name, progress, confirmed));
  }
  if (progress > confirmed) {
    spdlog::info(
        "run slot={} lsn={} confirmed_flush_lsn={} resuming past the slot's confirmed "
        "position; what is already applied is skipped",
        options_.name, progress, confirmed);
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

  check_source(applier.durable_lsn());

  StreamOptions stream_options;
  stream_options.slot = options_.name;
  stream_options.publications = {options_.publication};
  stream_options.start_lsn = applier.durable_lsn();
  stream_options.streaming = options_.streaming;
  stream_options.messages = true;  // fences
  stream_options.status_interval = options_.status_interval;
  stream_options.protocol_version = options_.protocol_version;
  stream_options.spool_dir = options_.spool_dir;
  ReplicationStream stream(options_.source_conninfo, stream_options, applier);
  stream.start();
  connected = true;
  session.connected_at = Clock::now();
  session.start_applied = applier.durable_lsn();
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
  // When the agent first saw the open group (for head_commit).
  Clock::time_point group_seen_open = Clock::time_point::max();
  // The head's source transactions: when the last one was applied, and the mean gap between
  // two (exponentially weighted, 1/8), to tell whether waiting head_commit would group any.
  std::uint64_t applied_before = applier.counters().transactions_applied;
  Clock::time_point last_arrival = Clock::now();
  Clock::duration arrival_gap = Clock::duration::max() / 2;
  while (true) {
    // Everything received is applied and the group is head_commit old, or nothing arrived:
    // commit now rather than at the group's time bound (see the NOTES: head of the stream).
    Lsn received_before = stream.received_lsn();
    bool alive = false;
    try {
      alive = stream.poll(applier.group_open() ? options_.head_commit : 100ms);
      bool delivered = stream.received_lsn() != received_before;
      if (delivered) applier.tick();
      auto now = Clock::now();
      if (!applier.group_open()) {
        group_seen_open = Clock::time_point::max();
      } else if (group_seen_open == Clock::time_point::max()) {
        group_seen_open = now;
      }
      if (std::uint64_t applied = applier.counters().transactions_applied;
          applied != applied_before) {
        auto gap = (now - last_arrival) / static_cast<long>(applied - applied_before);
        arrival_gap =
            arrival_gap >= Clock::duration::max() / 2 ? gap : arrival_gap + (gap - arrival_gap) / 8;
        applied_before = applied;
        last_arrival = now;
      }
      // Sparse transactions (on average head_commit or more apart) are committed at once:
      // waiting would add the delay and group nothing.
      bool sparse = arrival_gap >= options_.head_commit;
      if (!delivered || (!stream.has_queued() && group_seen_open != Clock::time_point::max() &&
                         (sparse || now - group_seen_open >= options_.head_commit))) {
        applier.flush();
      }
    } catch (...) {
      // Whatever ends the session (a retryable SQL error of the streamed connection too), a
      // fence already committed must stop the next session, which resumes past it.
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
    if (stream.received_lsn() == last_received && now - last_ping >= options_.idle_interval) {
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
