// Strong id types of the catalog and the transaction system. Each wraps the server's
// integer so that an Oid cannot be passed where a transaction id is meant.
#pragma once

#include <chrono>
#include <compare>
#include <cstdint>
#include <functional>
#include <limits>

namespace pgferry::replication {

template <typename Tag, typename Int>
struct StrongId {
  Int value = 0;
  constexpr auto operator<=>(const StrongId&) const = default;
};

using Oid = StrongId<struct OidTag, std::uint32_t>;
using Xid = StrongId<struct XidTag, std::uint32_t>;
// pgoutput's relation id: the relation's OID on the source.
using RelationId = StrongId<struct RelationIdTag, std::uint32_t>;

// PostgreSQL timestamps count microseconds since 2000-01-01 00:00:00 UTC.
using PgClock = std::chrono::system_clock;
using PgTimestamp = std::chrono::time_point<PgClock, std::chrono::microseconds>;
inline constexpr std::chrono::seconds kPostgresEpochOffset{946'684'800};
// Saturating at the ends (PostgreSQL's +-infinity are INT64_MAX / INT64_MIN, and bytes off the
// wire may be anything): never a signed overflow.
constexpr PgTimestamp from_pg_timestamp(std::int64_t micros) {
  constexpr std::int64_t offset = std::chrono::microseconds{kPostgresEpochOffset}.count();
  if (micros > std::numeric_limits<std::int64_t>::max() - offset) return PgTimestamp::max();
  return PgTimestamp{std::chrono::microseconds{micros + offset}};
}
constexpr std::int64_t to_pg_timestamp(PgTimestamp t) {
  constexpr std::int64_t offset = std::chrono::microseconds{kPostgresEpochOffset}.count();
  std::int64_t micros = t.time_since_epoch().count();
  if (micros < std::numeric_limits<std::int64_t>::min() + offset) {
    return std::numeric_limits<std::int64_t>::min();
  }
  return micros - offset;
}

}  // namespace pgferry::replication

template <typename Tag, typename Int>
struct std::hash<pgferry::replication::StrongId<Tag, Int>> {
  std::size_t operator()(pgferry::replication::StrongId<Tag, Int> id) const noexcept {
    return std::hash<Int>{}(id.value);
  }
};
