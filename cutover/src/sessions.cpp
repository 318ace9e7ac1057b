// Sessions named by their backend (see sessions.hpp).
#include "sessions.hpp"

#include <spdlog/spdlog.h>

#include <string_view>

namespace pgferry::cutover {

namespace repl = pgferry::replication;

Session read_session(repl::Connection& conn) {
  auto session = conn.exec(
      "SELECT pid, backend_start::text FROM pg_stat_activity WHERE pid = pg_backend_pid()",
      "reading the session's backend");
  return {std::stol(std::string(session.get(0, 0))), std::string(session.get(0, 1))};
}

std::optional<bool> end_session(repl::Connection& conn, const Session& session) {
  try {
    auto ended = conn.exec(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = $1::int "
        "AND backend_start = $2::timestamptz",
        {std::to_string(session.pid), session.start}, "ending a dead run's session");
    if (ended.rows() == 1 && ended.get(0, 0) == std::string_view("t")) {
      spdlog::warn("ended the session of backend pid {} (a dead run's, which held its lock)",
                   session.pid);
      return true;
    }
    return false;
  } catch (const std::exception& e) {
    spdlog::warn("ending the session of backend pid {}: {}", session.pid, e.what());
    return std::nullopt;
  }
}

}  // namespace pgferry::cutover
