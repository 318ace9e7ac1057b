// Retry or stop: the SQLSTATE table of core/retry.hpp and the jittered backoff.
#include "pgferry/replication/core/retry.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <string_view>

#include "pgferry/replication/core/error.hpp"

namespace pgferry::replication {

namespace {

ErrorVerdict retry(std::string reason) {
  return {true, std::move(reason), {}, false};
}
// Retryable, but it may recur on every replay of the same transaction (see the NOTES).
ErrorVerdict conflict(std::string reason, std::string fix) {
  return {true, std::move(reason), std::move(fix), true};
}
ErrorVerdict stop(std::string reason, std::string fix) {
  return {false, std::move(reason), std::move(fix), false};
}

// Who holds the lock: the query to run on the target.
constexpr const char* kFindBlocker =
    "on the target, SELECT pid, state, xact_start, query FROM pg_stat_activity WHERE pid = ANY "
    "(SELECT unnest(pg_blocking_pids(pid)) FROM pg_stat_activity WHERE application_name LIKE "
    "'pgferry%') names the session in the way";

bool contains(std::string_view text, std::string_view part) {
  return text.find(part) != std::string_view::npos;
}

ErrorVerdict classify_sqlstate(const PgError& e) {
  std::string_view state = e.sqlstate();
  std::string_view what = e.what();
  if (state.starts_with("08")) return retry("connection lost");
  // No SQLSTATE: libpq's own failure, not the server's answer ("server closed the connection
  // unexpectedly" can arrive while libpq still calls the connection OK, in pipeline mode).
  if (state.empty()) return retry("connection lost (no SQLSTATE)");
  if (state == "57P01") return retry("administrator shutdown or pg_terminate_backend");
  if (state == "57P02") return retry("server crash shutdown");
  if (state == "57P03") return retry("server starting up or in recovery");
  if (state == "57P05") return retry("idle session timeout");
  if (state == "57014") {
    return conflict("statement cancelled",
                    "a statement_timeout of the target role or database (ALTER ROLE/DATABASE ... "
                    "SET statement_timeout) or someone cancelling the apply session stops the "
                    "transaction named above every time: reset the timeout for the pgferry role "
                    "(ALTER ROLE ... SET statement_timeout = 0), then restart");
  }
  if (state == "40001") {
    return conflict("serialization failure",
                    "the target transaction named above fails the same way on every replay: look "
                    "for target-side triggers or a default_transaction_isolation of the target "
                    "role that the source does not have, then restart");
  }
  if (state == "40P01") {
    return conflict("deadlock",
                    fmt::format("another session on the target keeps taking the rows or tables "
                                "named above in the opposite order; {}; end it, then restart",
                                kFindBlocker));
  }
  if (state == "55P03") {
    return conflict("lock timeout",
                    fmt::format("a session on the target holds a lock on the table named above "
                                "(or the target role or database has a lock_timeout default); "
                                "{}; end that session (pg_terminate_backend), or rerun with "
                                "--spool-streamed if the holder is a streamed transaction's own "
                                "apply, then restart",
                                kFindBlocker));
  }
  if (state == "53300") return retry("too many connections");
  if (state == "55006") return retry("replication slot in use by another process");

  if (state == "42P01") {
    return stop("missing table",
                "create the table on the target as it is on the source (`pgferry init "
                "--no-data` copies the schema), or remove it from the publication");
  }
  if (state == "42703") {
    return stop("missing column",
                "add the column to the target table with the source's type (schema changes "
                "are not replicated: apply the same DDL on the target), then restart");
  }
  if (state == "42704" && contains(what, "publication")) {
    return stop("missing publication",
                "the slot cannot decode changes without its publication: run `pgferry "
                "cleanup` and `pgferry init` again (the target is copied anew)");
  }
  if (state == "42704" && contains(what, "replication slot")) {
    return stop("missing replication slot",
                "the slot was dropped and the changes since are gone: run `pgferry cleanup` "
                "and `pgferry init` again (the target is copied anew)");
  }
  if (state == "42804" || state == "42846" || state.starts_with("22")) {
    return stop("type mismatch or bad value",
                "make the target column's type match the source's (ALTER TABLE ... ALTER "
                "COLUMN ... TYPE), then restart");
  }
  if (state == "23505") {
    return stop("unique violation",
                "the target holds a row or a unique index the source does not: remove the "
                "conflicting row or index on the target (writes to the target outside pgferry "
                "break the copy), then restart");
  }
  if (state.starts_with("23")) {
    return stop("constraint violation",
                "the target has a constraint (foreign key, NOT NULL, CHECK) the source does not "
                "enforce the same way: align it with the source, then restart");
  }
  if (state == "42501") {
    return stop("permission denied",
                "grant the role in the conninfo the privilege named above (the target role "
                "needs INSERT, UPDATE, DELETE, TRUNCATE on the replicated tables and the "
                "pgferry schema; the source role needs REPLICATION), then restart");
  }
  if (state == "25006") {
    return stop("read-only target",
                "the target is read-only (default_transaction_read_only, or a standby): make "
                "it writable, then restart");
  }
  if (state == "55000" && contains(what, "replication slot")) {
    return stop("replication slot invalidated",
                "the slot lost WAL it needs (max_slot_wal_keep_size): run `pgferry cleanup` and "
                "`pgferry init` again, and raise max_slot_wal_keep_size");
  }
  return stop(fmt::format("SQLSTATE {}", state), {});
}

// The server refused the login itself (libpq reports it as a failed connection, 08001):
// retrying cannot help, and would only hide a typo for --reconnect-timeout.
bool login_refused(std::string_view what) {
  return contains(what, "password authentication failed") ||
         contains(what, "no pg_hba.conf entry") ||
         (contains(what, "FATAL") && contains(what, "does not exist"));
}

}  // namespace

ErrorVerdict classify_error(const std::exception& error) {
  if (dynamic_cast<const ConnectionError*>(&error) && login_refused(error.what())) {
    return stop("login refused",
                "check the role, password (.pgpass / PGPASSFILE) and dbname of the connection "
                "string named above, and pg_hba.conf on that server, then restart");
  }
  // ConnectionError first: some carry no SQLSTATE of their own (the socket closed).
  if (auto* pg = dynamic_cast<const PgError*>(&error)) {
    ErrorVerdict verdict = classify_sqlstate(*pg);
    if (!verdict.retry && dynamic_cast<const ConnectionError*>(&error)) {
      return retry("connection lost");
    }
    return verdict;
  }
  if (dynamic_cast<const ConfigError*>(&error)) return stop("bad option", {});
  // Its message names the directory, the space needed and the fix.
  if (dynamic_cast<const SpoolError*>(&error)) return stop("spool directory unusable", {});
  if (dynamic_cast<const ProtocolError*>(&error)) {
    return stop("replication protocol error",
                "report it with the log; restarting resumes from the progress record");
  }
  return stop("error", {});
}

std::string with_fix(const std::exception& error, const ErrorVerdict& verdict) {
  if (verdict.fix.empty()) return error.what();
  return fmt::format("{}; fix: {}", error.what(), verdict.fix);
}

Backoff::Backoff(std::chrono::milliseconds first, std::chrono::milliseconds max, std::uint64_t seed)
    : first_(first), max_(std::max(first, max)), delay_(first), random_(seed) {}

std::chrono::milliseconds Backoff::next() {
  auto half = delay_.count() / 2;
  std::uniform_int_distribution<std::int64_t> jitter(0, delay_.count() - half);
  auto wait = std::chrono::milliseconds(half + jitter(random_));
  delay_ = std::min(delay_ * 2, max_);
  return wait;
}

}  // namespace pgferry::replication
