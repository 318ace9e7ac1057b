// Which writes a logical slot holds, read without consuming them: after a cutover died while
// switching traffic, the two directions' slots tell where writes went since the fence.
#pragma once

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

}  // namespace pgferry::cutover
