// The copy-origin record and the "which finished tables changed since" query used when an
// interrupted init resumes under a new slot (see initial_copy_resume.hpp).
#include "pgferry/replication/copy/initial_copy_resume.hpp"

#include <fmt/format.h>

#include <charconv>

namespace pgferry::replication {

namespace {

bool table_exists(const Connection& target, std::string_view table) {
  return target.exec("SELECT to_regclass($1) IS NOT NULL", {table}).scalar() == "t";
}

}  // namespace

std::optional<CopyOrigin> read_copy_origin(const Connection& target, std::string_view name) {
  if (!table_exists(target, "pgferry.copy_origin")) return std::nullopt;
  Result r = target.exec(
      "SELECT consistent_point::text, snapshot, post_data_pending FROM pgferry.copy_origin "
      "WHERE name = $1",
      {name}, "reading pgferry.copy_origin");
  if (r.rows() == 0) return std::nullopt;
  CopyOrigin origin;
  origin.consistent_point = Lsn::from_string(r.get(0, 0), "copy_origin.consistent_point");
  origin.snapshot = std::string(r.get(0, 1));
  origin.post_data_pending = std::string(r.get(0, 2));
  return origin;
}

void write_copy_origin(const Connection& target, std::string_view name, const CopyOrigin& origin) {
  if (!table_exists(target, "pgferry.copy_origin")) {
    target.exec(
        "CREATE SCHEMA IF NOT EXISTS pgferry; "
        "CREATE TABLE IF NOT EXISTS pgferry.copy_origin ("
        "  name text PRIMARY KEY,"
        "  consistent_point pg_lsn NOT NULL,"
        "  snapshot text NOT NULL,"
        "  post_data_pending text NOT NULL DEFAULT '',"
        "  updated_at timestamptz NOT NULL DEFAULT now())",
        "creating pgferry.copy_origin on the target");
  }
  target.exec(
      "INSERT INTO pgferry.copy_origin (name, consistent_point, snapshot, post_data_pending) "
      "VALUES ($1, $2::pg_lsn, $3, $4) ON CONFLICT (name) DO UPDATE SET "
      "consistent_point = excluded.consistent_point, snapshot = excluded.snapshot, "
      "post_data_pending = excluded.post_data_pending, updated_at = now()",
      {name, origin.consistent_point.to_string(), origin.snapshot, origin.post_data_pending},
      "recording the initial copy's origin");
}

std::vector<std::pair<std::string, std::string>> finished_copies(const Connection& target,
                                                                 std::string_view name) {
  std::vector<std::pair<std::string, std::string>> tables;
  if (!table_exists(target, "pgferry.copy_progress")) return tables;
  Result r = target.exec(
      "SELECT table_name, CASE WHEN count(DISTINCT snapshot) = 1 THEN min(snapshot) ELSE '' "
      "END FROM pgferry.copy_progress WHERE name = $1 GROUP BY table_name "
      "HAVING bool_and(finished_at IS NOT NULL) ORDER BY table_name",
      {name}, "reading the finished tables of the initial copy");
  for (int i = 0; i < r.rows(); ++i) {
    tables.emplace_back(std::string(r.get(i, 0)), std::string(r.get(i, 1)));
  }
  return tables;
}

void rebase_copy(const Connection& target, std::string_view name, const CopyOrigin& origin,
                 const std::vector<std::string>& keep,
                 const std::vector<const TableInfo*>& recopy) {
  Transaction txn(target);
  write_copy_origin(target, name, origin);
  if (table_exists(target, "pgferry.copy_progress")) {
    if (!keep.empty()) {
      target.exec(
          "UPDATE pgferry.copy_progress SET snapshot = $2 WHERE name = $1 "
          "AND table_name = ANY($3::text[])",
          {name, origin.snapshot, sql_array_literal(keep)},
          "re-labelling tables kept from an earlier snapshot");
    }
    if (!recopy.empty()) {
      std::vector<std::string> names;
      for (const auto* table : recopy) names.push_back(table->display_name());
      target.exec(
          "DELETE FROM pgferry.copy_progress WHERE name = $1 AND table_name = ANY($2::text[])",
          {name, sql_array_literal(names)}, "forgetting tables to copy again");
    }
  }
  for (const auto* table : recopy) {
    target.exec(fmt::format("TRUNCATE ONLY {}", table->qualified_name()),
                fmt::format("emptying {} to copy it again", table->display_name()));
  }
  txn.commit();
}

std::set<std::uint32_t> changed_relations(const Connection& source, std::string_view slot,
                                          std::string_view publication, Lsn upto) {
  // Relation message, protocol v1 without streaming: 'R', int32 relation oid, ...
  // (src/backend/replication/logical/proto.c, logicalrep_write_rel).
  Result r = source.exec(
      "SELECT DISTINCT ('x' || encode(substring(data FROM 2 FOR 4), 'hex'))::bit(32)::bigint "
      "FROM pg_logical_slot_peek_binary_changes($1, $2::pg_lsn, NULL, "
      "'proto_version', '1', 'publication_names', $3) WHERE get_byte(data, 0) = 82",
      {slot, upto.to_string(), quote_ident(publication)},
      fmt::format("decoding slot \"{}\" up to {} to find the tables changed meanwhile", slot,
                  upto));
  std::set<std::uint32_t> oids;
  for (int i = 0; i < r.rows(); ++i) {
    auto text = r.get(i, 0);
    std::uint32_t oid = 0;
    std::from_chars(text.data(), text.data() + text.size(), oid);
    oids.insert(oid);
  }
  return oids;
}

}  // namespace pgferry::replication
