// The progress record on the target.
#include "pgferry/replication/apply/progress.hpp"

#include <fmt/format.h>

namespace pgferry::replication {

namespace {

// Two sessions may race to create the table (init and run started together): CREATE ... IF
// NOT EXISTS is not atomic against that, so the loser's unique violation on the catalog is
// treated as "exists".
bool is_concurrent_create(const SqlError& e) {
  return e.sqlstate() == "23505" || e.sqlstate() == "42P07" || e.sqlstate() == "42P06";
}

}  // namespace

bool ProgressStore::table_exists() const {
  return target_->exec("SELECT to_regclass('pgferry.progress') IS NOT NULL").scalar() == "t";
}

void ProgressStore::ensure_table() const {
  if (table_exists()) return;
  try {
    target_->exec(
        "CREATE SCHEMA IF NOT EXISTS pgferry;"
        "CREATE TABLE IF NOT EXISTS pgferry.progress ("
        "  name text PRIMARY KEY,"
        "  applied_lsn pg_lsn NOT NULL,"
        "  source_commit_time timestamptz,"
        "  updated_at timestamptz NOT NULL DEFAULT now(),"
        "  created_at timestamptz NOT NULL DEFAULT now())",
        "creating the progress table pgferry.progress (needs CREATE on the target database)");
  } catch (const SqlError& e) {
    if (!is_concurrent_create(e)) throw;
  }
}

std::optional<Lsn> ProgressStore::read(std::string_view name) const {
  auto record = read_record(name);
  if (!record) return std::nullopt;
  return record->applied_lsn;
}

std::optional<ProgressRecord> ProgressStore::read_record(std::string_view name) const {
  if (!table_exists()) return std::nullopt;
  auto result = target_->exec(
      "SELECT applied_lsn::text, (extract(epoch FROM source_commit_time) * 1000000)::bigint "
      "FROM pgferry.progress WHERE name = $1",
      {name}, "reading the progress record");
  if (result.rows() == 0) return std::nullopt;
  ProgressRecord record;
  record.applied_lsn = Lsn::from_string(result.get(0, 0), "pgferry.progress.applied_lsn");
  if (auto micros = result.optional(0, 1)) {
    record.source_commit_time =
        PgTimestamp{std::chrono::microseconds{std::stoll(std::string(*micros))}};
  }
  return record;
}

bool ProgressStore::initialize(std::string_view name, Lsn lsn) const {
  ensure_table();
  std::string text = lsn.to_string();
  auto result = target_->exec(
      "INSERT INTO pgferry.progress (name, applied_lsn) VALUES ($1, $2::pg_lsn) "
      "ON CONFLICT (name) DO NOTHING",
      {name, text}, "initializing the progress record");
  return result.affected_rows() == 1;
}

bool ProgressStore::drop(std::string_view name) const {
  if (!table_exists()) return false;
  bool existed = target_
                     ->exec("DELETE FROM pgferry.progress WHERE name = $1", {name},
                            "dropping the progress record")
                     .affected_rows() > 0;
  if (target_->exec("SELECT count(*) FROM pgferry.progress").scalar() == "0") {
    target_->exec("DROP TABLE IF EXISTS pgferry.progress", "dropping pgferry.progress");
    try {
      target_->exec("DROP SCHEMA IF EXISTS pgferry", "dropping schema pgferry");
    } catch (const SqlError& e) {
      // 2BP01: something else lives in the schema; it is not ours to drop.
      if (e.sqlstate() != "2BP01") throw;
    }
  }
  return existed;
}

}  // namespace pgferry::replication
