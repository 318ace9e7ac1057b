// The progress record: the source position the target has applied, stored on the target in
// table pgferry.progress, one row per replication (named by --name).
//
// The applier updates the row in the same target transaction as the changes it covers, so
// that after any crash the row says exactly what is on the target (exactly once). Creating
// the table needs only CREATE on the target database, never superuser (managed clouds).
#pragma once

#include <optional>
#include <string_view>

#include "pgferry/replication/core/ids.hpp"
#include "pgferry/replication/core/lsn.hpp"
#include "pgferry/replication/core/pg.hpp"

namespace pgferry::replication {

inline constexpr std::string_view kProgressSchema = "pgferry";
inline constexpr std::string_view kProgressTable = "pgferry.progress";

struct ProgressRecord {
  Lsn applied_lsn;
  std::optional<PgTimestamp> source_commit_time;
};

class ProgressStore {
 public:
  explicit ProgressStore(const Connection& target) : target_(&target) {}

  // Creates schema pgferry and table pgferry.progress if missing (idempotent).
  void ensure_table() const;
  // The applied position of `name`; nullopt when there is no such record (or no table).
  std::optional<Lsn> read(std::string_view name) const;
  std::optional<ProgressRecord> read_record(std::string_view name) const;
  // Creates the record at `lsn` unless it exists (then it is left alone: a re-run of init
  // must never move an applier backwards or forwards). Returns true when it was created.
  bool initialize(std::string_view name, Lsn lsn) const;
  // Removes the record; drops the table and the schema when no record is left (the schema
  // only if nothing else lives in it). Safe to re-run. Returns true when a record existed.
  bool drop(std::string_view name) const;

  // The statement the applier runs in each of its target transactions:
  // $1 name, $2 applied_lsn (never moved back), $3 source commit time in microseconds since
  // 2000-01-01 UTC (the server's own representation, exact; NULL keeps the previous one). Affects
  // one row.
  static constexpr std::string_view kUpdateSql =
      "UPDATE pgferry.progress SET applied_lsn = greatest(applied_lsn, $2::pg_lsn), "
      "source_commit_time = "
      "coalesce(timestamptz '2000-01-01 00:00:00+00' + $3::bigint * interval '1 microsecond', "
      "source_commit_time), updated_at = now() WHERE name = $1";

 private:
  bool table_exists() const;
  const Connection* target_;
};

}  // namespace pgferry::replication
