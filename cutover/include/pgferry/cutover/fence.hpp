// Write fences for the cutover: what holds application writes while the stream drains to the
// fence and traffic moves. PgBouncer PAUSE/RESUME on its admin console, a read-only database
// plus terminated sessions for setups without a pooler, or nothing (the operator already
// stopped writes).
//
// NOTES
// - PgBouncer's `PAUSE db` (admin.c, admin_cmd_pause) marks the database paused and answers
//   only once every server connection of its pools is released, i.e. once the transactions in
//   flight ended. A transaction held open would hold the fence forever: the PAUSE is sent
//   asynchronously and waited for with a deadline. On expiry the connection that sent it is
//   closed first (a RESUME while that admin client still waits for its answer is what leaves
//   PgBouncer's admin client hanging), then `RESUME db` is sent from a fresh connection, and
//   SHOW DATABASES must show the database unpaused. With terminate_blockers, the backends
//   that hold the PAUSE (client sessions inside a transaction on the fenced server) are
//   terminated at the deadline and the PAUSE gets a short grace to complete.
// - The read-only fence sets default_transaction_read_only for new sessions with ALTER
//   DATABASE and terminates every other client session of that database except pgferry's own
//   (application_name pgferry*), so no session keeps writing with the old setting. It is
//   in place only once those backends are gone (a backend signalled while committing may
//   still commit): pg_terminate_backend(pid, timeout) waits on PostgreSQL 14+, older ones
//   are polled in pg_stat_activity; still there at the deadline, the fence fails.
// - Each fence can be undone from another process (the guard) from its FenceSpec alone.
#pragma once

#include <chrono>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "pgferry/replication/core/pg.hpp"

namespace pgferry::cutover {

using Clock = std::chrono::steady_clock;

enum class FenceKind { pgbouncer, read_only, none };
std::string_view to_string(FenceKind kind);
// Throws ConfigError for anything but pgbouncer, read-only, none.
FenceKind parse_fence_kind(std::string_view text);

// Everything needed to engage or lift a fence, also from another process.
struct FenceSpec {
  FenceKind kind = FenceKind::none;
  std::string pgbouncer_conninfo;  // admin console (pgbouncer fence)
  std::string pgbouncer_database;  // the [databases] alias to PAUSE
  std::string server_conninfo;     // the server that takes writes now (read-only fence)
  bool terminate_blockers = false;

  nlohmann::json to_json() const;
  static FenceSpec from_json(const nlohmann::json& json);
};

// The PgBouncer admin console. Connects without startup options (the console refuses them).
class PgBouncerAdmin {
 public:
  explicit PgBouncerAdmin(std::string conninfo);
  // Sends `PAUSE db` and waits until PgBouncer answers or `deadline`. True when paused; on
  // expiry the connection is closed (the pending PAUSE dies with it) and false is returned
  // with the database still paused: call resume().
  bool pause(std::string_view database, Clock::time_point deadline);
  // `RESUME db` from a fresh connection; true when it was paused. Never throws for "not
  // paused".
  bool resume(std::string_view database);
  void reload();
  // SHOW DATABASES: whether `database` is listed paused; throws ConfigError when unknown.
  bool paused(std::string_view database);

 private:
  replication::Connection open() const;
  std::string conninfo_;
  replication::Connection pending_;  // the connection that sent PAUSE
};

class WriteFence {
 public:
  explicit WriteFence(FenceSpec spec) : spec_(std::move(spec)) {}
  // Engages the fence by `deadline`; on failure leaves writes flowing and throws
  // CutoverAborted with the reason.
  void engage(Clock::time_point deadline);
  // Lifts it (idempotent). For the read-only fence `server_conninfo` names the database
  // cleared.
  void release();
  bool engaged() const { return engaged_; }
  const FenceSpec& spec() const { return spec_; }

 private:
  FenceSpec spec_;
  bool engaged_ = false;
};

// Lifts a fence described by `spec` whatever state it is in (the guard and abort paths).
void lift_fence(const FenceSpec& spec);

}  // namespace pgferry::cutover
