// Which writes a logical slot holds, read without consuming them: after a cutover died while
// switching traffic, the two directions' slots tell where writes went since the fence.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

#include "pgferry/replication/core/lsn.hpp"
#include "pgferry/replication/core/pg.hpp"

namespace pgferry::cutover {

// The transactions with data changes (insert, update, delete, truncate) of `publication`
// that slot `name` on `conn` holds and that commit after `after`; nullopt when there is no
// such slot. Waits up to 5 s for a walsender to let go of it.
std::optional<long long> writes_after(const replication::Connection& conn, std::string_view name,
                                      const std::string& publication, replication::Lsn after);

// The same on a connection of its own to `conninfo`, bounded by `deadline` (connect_timeout,
// TCP keepalives, statement_timeout); nullopt when the count cannot be had in time or there
// is no slot, which callers must read as "there may be writes".
std::optional<long long> writes_within(const std::string& conninfo, std::string_view name,
                                       const std::string& publication, replication::Lsn after,
                                       std::chrono::steady_clock::time_point deadline);

}  // namespace pgferry::cutover
