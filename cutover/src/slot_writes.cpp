// Slot writes: see slot_writes.hpp.
#include "slot_writes.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <thread>

#include "pgferry/replication/core/error.hpp"
#include "pgferry/replication/core/pg.hpp"

namespace pgferry::cutover {

namespace repl = pgferry::replication;
using Lsn = repl::Lsn;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

std::optional<long long> writes_after(const repl::Connection& conn, std::string_view name,
                                      const std::string& publication, Lsn after) {
  auto deadline = Clock::now() + 5s;
  while (true) {
    try {
      auto slot = conn.exec("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1", {name});
      if (slot.rows() == 0) return std::nullopt;
      // pgoutput sends B, then the changes, then C, whose lsn is the commit's end.
      auto count = conn.exec(
          "SELECT count(*) FROM (SELECT bool_or(kind IN (73, 85, 68, 84)) AS data, "
          "  max(lsn) FILTER (WHERE kind = 67) AS commit_end "
          "  FROM (SELECT get_byte(data, 0) AS kind, lsn, "
          "          sum((get_byte(data, 0) = 66)::int) OVER (ORDER BY n) AS txn "
          "        FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL, 'proto_version', "
          "          '1', 'publication_names', $2) WITH ORDINALITY AS c(lsn, xid, data, n)) m "
          "  GROUP BY txn) t WHERE data AND commit_end > $3::pg_lsn",
          {name, repl::quote_ident(publication), after.to_string()},
          "reading which writes the slot holds");
      return std::stoll(std::string(count.scalar()));
    } catch (const repl::SqlError& e) {
      if (e.sqlstate() != "55006" || Clock::now() >= deadline) throw;  // object_in_use
      std::this_thread::sleep_for(50ms);
    }
  }
}

std::optional<long long> writes_within(const std::string& conninfo, std::string_view name,
                                       const std::string& publication, Lsn after,
                                       Clock::time_point deadline) {
  try {
    auto left = [&] {
      return std::max<long long>(
          1,
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count());
    };
    auto conn = repl::Connection::open(conninfo, repl::Side::none,
                                       {{"connect_timeout", std::to_string((left() + 999) / 1000)},
                                        {"keepalives_idle", "1"},
                                        {"keepalives_interval", "1"},
                                        {"keepalives_count", "3"}});
    conn.exec(fmt::format("SET statement_timeout = {}", left()));
    return writes_after(conn, name, publication, after);
  } catch (const std::exception& e) {
    spdlog::error("reading which writes slot {} holds: {}", name, e.what());
    return std::nullopt;
  }
}

}  // namespace pgferry::cutover
