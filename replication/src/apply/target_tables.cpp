// The target side of each source relation version (see target_tables.hpp).
#include "target_tables.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <charconv>
#include <string_view>

#include "pgferry/replication/apply/target_triggers.hpp"
#include "pgferry/replication/core/table_scope.hpp"
#include "pipeline.hpp"

namespace pgferry::replication::apply {

const TargetTable& TargetTables::map(const Relation& relation, Lsn commit_lsn) {
  TargetTable table;
  table.id = relation.id;
  table.version = relation.version;
  table.qualified = relation.qualified_name();
  std::string schema = relation.nspname.empty() ? "pg_catalog" : relation.nspname;
  table.display = fmt::format("{}.{}", schema, relation.relname);

  auto result = pipeline_.query(
      "SELECT r.oid IS NOT NULL, a.attname, format_type(a.atttypid, a.atttypmod), "
      "coalesce(a.attnum = ANY (i.indkey), false), a.atttypid "
      "FROM (SELECT to_regclass($1)::oid AS oid) r "
      "LEFT JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped "
      "LEFT JOIN pg_index i ON i.indrelid = r.oid AND i.indisprimary",
      {table.qualified}, commit_lsn);
  if (result.rows() == 0 || result.get(0, 0) != "t") {
    pipeline_.set_broken();
    throw Error(fmt::format(
        "the target has no table {}, which the source publishes (source transaction "
        "commit_lsn={}): create it on the target (pgferry init --schema copies the schema), or "
        "remove it from the publication",
        table.display, commit_lsn));
  }
  if (refuse_firing_) refuse_if_firing(table, commit_lsn);
  std::unordered_map<std::string_view, int> target_columns;
  std::vector<std::string_view> target_primary_key;
  for (int row = 0; row < result.rows(); ++row) {
    if (result.is_null(row, 1)) continue;
    target_columns.emplace(result.get(row, 1), row);
    if (result.get(row, 3) == "t") target_primary_key.push_back(result.get(row, 1));
  }
  for (std::size_t i = 0; i < relation.columns.size(); ++i) {
    const auto& column = relation.columns[i];
    auto found = target_columns.find(column.name);
    if (found == target_columns.end()) {
      pipeline_.set_broken();
      throw Error(fmt::format(
          "the target table {} has no column \"{}\" ({}.{}), which the source sends (source "
          "transaction commit_lsn={}): add the column on the target (ALTER TABLE {} ADD COLUMN "
          "{} <type as on the source>), then restart",
          table.display, column.name, table.display, column.name, commit_lsn, table.qualified,
          quote_ident(column.name)));
    }
    table.columns.push_back(quote_ident(column.name));
    table.types.emplace_back(result.get(found->second, 2));
    std::uint32_t type_oid = 0;
    auto oid_text = result.get(found->second, 4);
    std::from_chars(oid_text.data(), oid_text.data() + oid_text.size(), type_oid);
    // Binary only when the source sends the same type: its text output is what the
    // encoder parses.
    table.binary.push_back(type_oid == column.type_oid.value ? binary_type_for(type_oid)
                                                             : BinaryType::none);
    if (column.is_key) table.key.push_back(static_cast<int>(i));
  }
  table.binary_copy = std::none_of(table.binary.begin(), table.binary.end(),
                                   [](BinaryType t) { return t == BinaryType::none; });
  for (auto name : target_primary_key) {
    auto source = std::find_if(relation.columns.begin(), relation.columns.end(),
                               [&](const auto& column) { return column.name == name; });
    if (source == relation.columns.end()) {
      table.primary_key.clear();
      break;
    }
    table.primary_key.push_back(static_cast<int>(source - relation.columns.begin()));
  }
  table.row_key = relation.replica_identity == 'f' ? table.primary_key : table.key;
  if (!table.key.empty()) {
    // $2: under the replica role, where only ENABLE ALWAYS / REPLICA triggers fire and
    // foreign keys are neither checked nor acted on.
    auto plain = pipeline_.query(
        "SELECT NOT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = r.oid AND CASE WHEN $2 THEN "
        "tgenabled IN ('A', 'R') ELSE NOT tgisinternal END) "
        "AND ($2 OR NOT EXISTS (SELECT FROM pg_constraint WHERE contype = 'f' AND (conrelid = "
        "r.oid OR confrelid = r.oid))) "
        "AND NOT EXISTS (SELECT FROM pg_index WHERE indrelid = r.oid AND (indisunique OR "
        "indisexclusion) AND NOT indisprimary) "
        "AND NOT EXISTS (SELECT FROM pg_rules WHERE schemaname = n.nspname AND tablename = "
        "c.relname) "
        // Batches travel as one text array per column: a type whose array elements are not
        // comma-separated (box uses ';') or a composite (unnest would expand its fields)
        // cannot, directly or through a domain.
        "AND NOT EXISTS (SELECT FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
        "LEFT JOIN pg_type b ON b.oid = t.typbasetype WHERE a.attrelid = r.oid AND a.attnum > 0 "
        "AND NOT a.attisdropped AND (t.typdelim <> ',' OR t.typtype = 'c' OR b.typdelim <> ',' "
        "OR b.typtype = 'c')) "
        "FROM (SELECT to_regclass($1)::oid AS oid) r JOIN pg_class c ON c.oid = r.oid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace",
        {table.qualified, replica_role_ ? "true" : "false"}, commit_lsn);
    table.batchable = plain.rows() == 1 && plain.get(0, 0) == "t";
    for (const auto& type : table.types) {
      if (type.ends_with("]")) table.batchable = false;
    }
    // A batch trusts "rows affected == entries": only a target primary key on exactly the
    // row key makes each entry touch one row (with a missing key and a duplicated one the
    // counts would agree while the rows do not).
    auto sorted = [](std::vector<int> columns) {
      std::sort(columns.begin(), columns.end());
      return columns;
    };
    if (table.primary_key.empty() || sorted(table.primary_key) != sorted(table.row_key)) {
      table.batchable = false;
    }
  }
  spdlog::debug("target table {} mapped: {} columns, rel={} version={} batchable={}", table.display,
                table.columns.size(), relation.id.value, relation.version, table.batchable);
  auto& slot = tables_[relation.id];
  slot = std::move(table);
  return slot;
}

void TargetTables::refuse_if_firing(const TargetTable& table, Lsn commit_lsn) {
  auto result =
      pipeline_.query(kTargetFiringSql, {sql_array_literal({table.qualified})}, commit_lsn);
  if (result.rows() == 0) return;
  TargetFiring firing{std::string(result.get(0, 1)), std::string(result.get(0, 2)),
                      std::string(result.get(0, 3))};
  if (!firing.fires_again()) return;
  pipeline_.set_broken();
  throw CheckFailed(fmt::format(
      "target table {} has {}, which would fire again for the changes replicated from the "
      "source (the source sends their effects too), because the target role may not set "
      "session_replication_role = replica; fix: {}",
      table.display, firing.describe(), target_firing_fix(replica_role_grant_)));
}

}  // namespace pgferry::replication::apply
