// A database session named by its backend, for ending a dead process's session that the
// server still has (a connection whose closing never reached it, as a half-open TCP
// connection, keeps the session and its advisory locks until TCP gives up: hours by default).
#pragma once

#include <optional>
#include <string>

#include "pgferry/replication/core/pg.hpp"

namespace pgferry::cutover {

// A backend's pid and start time: together they never name a reused pid.
struct Session {
  long pid = 0;
  std::string start;  // backend_start, as text
};

// The session of `conn`.
Session read_session(replication::Connection& conn);

// Ends `session` through `conn` if the server still has it: true when it was ended, false when
// there is no such session, nullopt when that could not be done (logged).
std::optional<bool> end_session(replication::Connection& conn, const Session& session);

}  // namespace pgferry::cutover
