// Retry or stop: the one place that decides whether an error that ended an agent session is
// transient (reconnect and resume from the progress record, after a backoff with jitter) or
// needs a human (stop, exit 1, with a message naming the object and the fix).
//
// NOTES
// - Retry: connection loss and the server going away (08xxx, 57P01 admin shutdown, which is
//   also what pg_terminate_backend sends, 57P02 crash shutdown, 57P03 starting up or in
//   recovery, 57P05 idle session timeout; a PgError without SQLSTATE is libpq's own failure,
//   e.g. "server closed the connection unexpectedly" in pipeline mode), a cancelled statement
//   (57014), concurrency failures (40001 serialization, 40P01 deadlock, 55P03 lock timeout), too
//   many connections (53300) and the slot held by another process (55006: the walsender of a
//   previous run may outlive it for a moment). A retry replays from the progress record, so nothing
//   is applied twice.
// - The concurrency failures and the cancelled statement are marked `conflict`: the same
//   transaction can meet the same lock, trigger or timeout on every replay (a session on the
//   target that never lets go, a lock_timeout or statement_timeout default of the target role),
//   so the agent counts them at one source position and stops after --max-retries-same-lsn,
//   with the fix given here, instead of looping for days.
// - Stop: anything the same input would hit again: a missing table, column, slot or
//   publication, a type mismatch or bad value (22xxx), a constraint the target has and the
//   source has not (23xxx), a permission error (42501), a read-only target (25006), a
//   spool directory that cannot take a streamed transaction (full, read-only), a protocol error,
//   bad options, and any error this table does not know (a retry loop that hides a bug is worse
//   than a stop with its message).
// - Backoff: the delay doubles from `first` to `max`; each wait is drawn uniformly from
//   [delay/2, delay] ("equal jitter") so that several agents restarted by the same outage
//   do not reconnect in step.
#pragma once

#include <chrono>
#include <cstdint>
#include <exception>
#include <random>
#include <string>

namespace pgferry::replication {

struct ErrorVerdict {
  bool retry = false;
  std::string reason;  // short, for the log: "connection lost", "deadlock", "missing table"
  std::string fix;     // what a human does next (empty if unknown); with retry, for when the
                       // same error keeps coming back (a conflict)
  // A retryable conflict on the target (serialization failure, deadlock, lock or statement
  // timeout): it clears when the other party lets go, but one that recurs at the same source
  // position may never clear; the agent counts those and stops after a bound.
  bool conflict = false;
};

// Classifies the error that ended a session (see the NOTES for the table).
ErrorVerdict classify_error(const std::exception& error);

// The error's text with the verdict's fix appended ("...; fix: ...").
std::string with_fix(const std::exception& error, const ErrorVerdict& verdict);

class Backoff {
 public:
  Backoff(std::chrono::milliseconds first, std::chrono::milliseconds max,
          std::uint64_t seed = std::random_device{}());
  // The next wait (jittered), then doubles the delay up to max.
  std::chrono::milliseconds next();
  // Back to `first` (after a session that made progress).
  void reset() { delay_ = first_; }
  std::chrono::milliseconds delay() const { return delay_; }

 private:
  std::chrono::milliseconds first_;
  std::chrono::milliseconds max_;
  std::chrono::milliseconds delay_;
  std::mt19937_64 random_;
};

}  // namespace pgferry::replication
