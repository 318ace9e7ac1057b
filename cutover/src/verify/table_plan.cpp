// Table plans for verify: catalog reads on both sides, the hash choice, and the SQL text.
#include "verify/table_plan.hpp"

#include <fmt/format.h>

#include <map>
#include <set>
#include <utility>

namespace pgferry::cutover::verify_detail {

namespace repl = pgferry::replication;

namespace {

constexpr std::string_view kIntegerTypeOids[] = {"20", "21", "23"};  // int8, int2, int4

// Built-in types whose text output (with the session settings verify pins) is never empty
// and never contains the separator \x1f: bool, bytea (hex), int8, int2, int4, oid, float4,
// float8, money (lc_monetary C), macaddr8, cidr, macaddr, inet, date, time, timestamp,
// timestamptz, interval, timetz, bit, varbit, numeric, uuid, pg_lsn.
constexpr std::string_view kPlainTypeOids[] = {
    "16",  "17",   "20",   "21",   "23",   "26",   "700",  "701",  "790",  "774",  "650",  "829",
    "869", "1082", "1083", "1114", "1184", "1186", "1266", "1560", "1562", "1700", "2950", "3220"};
constexpr std::string_view kSizedTypeOids[] = {"25", "1042", "1043"};  // text, bpchar, varchar

}  // namespace

ColumnForm column_form(std::string_view type_oid) {
  auto in = [&](const auto& list) {
    return std::find(std::begin(list), std::end(list), type_oid) != std::end(list);
  };
  if (in(kPlainTypeOids)) return ColumnForm::plain;
  if (in(kSizedTypeOids)) return ColumnForm::sized;
  return ColumnForm::hashed;
}

std::vector<TablePlan> plan_tables(const repl::Connection& source, const repl::Connection& target,
                                   const repl::TableScope& scope) {
  std::vector<TablePlan> plans;
  std::vector<std::string> oids;
  for (const auto& table : repl::list_tables(source, scope)) {
    if (!table.carries_rows()) continue;
    TablePlan plan;
    plan.schema = table.schema;
    plan.name = table.name;
    plan.estimated_rows = table.estimated_rows;
    plan.blocks = table.blocks;
    plans.push_back(std::move(plan));
    oids.push_back(std::to_string(table.oid.value));
  }
  if (plans.empty()) return plans;
  std::map<std::string, std::size_t> by_oid;
  for (std::size_t i = 0; i < oids.size(); ++i) by_oid[oids[i]] = i;
  std::string oid_array = repl::sql_array_literal(oids);

  auto columns = source.exec(
      "SELECT attrelid::text, attname, format_type(atttypid, NULL), atttypid::text "
      "FROM pg_attribute "
      "WHERE attrelid = ANY($1::oid[]) AND attnum > 0 AND NOT attisdropped "
      "ORDER BY attrelid, attnum",
      {oid_array}, "listing the source columns");
  for (int r = 0; r < columns.rows(); ++r) {
    plans[by_oid.at(std::string(columns.get(r, 0)))].columns.push_back(
        {std::string(columns.get(r, 1)), std::string(columns.get(r, 2)),
         column_form(columns.get(r, 3))});
  }
  auto keys = source.exec(
      "SELECT i.indrelid::text, a.attname, format_type(a.atttypid, NULL), a.atttypid::text "
      "FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) "
      "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
      "WHERE i.indisprimary AND i.indrelid = ANY($1::oid[]) ORDER BY i.indrelid, k.ord",
      {oid_array}, "listing the source primary keys");
  std::map<std::size_t, std::vector<std::string>> key_type_oids;
  for (int r = 0; r < keys.rows(); ++r) {
    auto index = by_oid.at(std::string(keys.get(r, 0)));
    plans[index].key.push_back(
        {std::string(keys.get(r, 1)), std::string(keys.get(r, 2)), column_form(keys.get(r, 3))});
    key_type_oids[index].emplace_back(keys.get(r, 3));
  }
  for (auto& [index, types] : key_type_oids) {
    plans[index].integer_key =
        types.size() == 1 && std::find(std::begin(kIntegerTypeOids), std::end(kIntegerTypeOids),
                                       types[0]) != std::end(kIntegerTypeOids);
  }

  // The target's columns of the same tables, by name.
  std::vector<std::string> schemas;
  std::vector<std::string> names;
  for (const auto& plan : plans) {
    schemas.push_back(plan.schema);
    names.push_back(plan.name);
  }
  auto target_columns = target.exec(
      "SELECT n.nspname, c.relname, a.attname FROM pg_class c "
      "JOIN pg_namespace n ON n.oid = c.relnamespace "
      "LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
      "WHERE c.relkind IN ('r', 'p') AND (n.nspname, c.relname) IN "
      "(SELECT * FROM unnest($1::text[], $2::text[]))",
      {repl::sql_array_literal(schemas), repl::sql_array_literal(names)},
      "listing the target columns");
  std::map<std::pair<std::string, std::string>, std::set<std::string>> on_target;
  for (int r = 0; r < target_columns.rows(); ++r) {
    auto& set =
        on_target[{std::string(target_columns.get(r, 0)), std::string(target_columns.get(r, 1))}];
    if (!target_columns.is_null(r, 2)) set.emplace(target_columns.get(r, 2));
  }
  for (auto& plan : plans) {
    auto it = on_target.find({plan.schema, plan.name});
    if (it == on_target.end()) {
      plan.problems.push_back("table missing on the target");
      continue;
    }
    for (const auto& column : plan.columns) {
      if (!it->second.count(column.name)) {
        plan.problems.push_back(fmt::format("column \"{}\" missing on the target", column.name));
      }
    }
  }
  return plans;
}

const char* to_string(HashFunction hash) {
  switch (hash) {
    case HashFunction::hashtextextended:
      return "hashtextextended";
    case HashFunction::md5:
      return "md5";
  }
  return "?";
}

HashFunction choose_hash(const repl::Connection& source, const repl::Connection& target) {
  // Lengths around the 4- and 12-byte steps of hash_bytes_extended, odd alignments and
  // multibyte text: a byte-order or algorithm difference changes at least one of them.
  std::vector<std::string> probes;
  const std::string alphabet = "pgferry verifies every row 0123456789 abcdefghij";
  for (std::size_t length = 0; length <= alphabet.size(); ++length) {
    probes.push_back(alphabet.substr(0, length));
  }
  probes.push_back("\xc5\xbc\xc3\xb3\xc5\x82w \xf0\x9f\x90\xa2");
  std::string array = repl::sql_array_literal(probes);
  const char* sql =
      "SELECT string_agg(hashtextextended(p COLLATE \"C\", 0)::text, ',' ORDER BY o) "
      "FROM unnest($1::text[]) WITH ORDINALITY AS u(p, o)";
  try {
    auto on_source = source.exec(sql, {array}, "probing hashtextextended").scalar();
    auto on_target = target.exec(sql, {array}, "probing hashtextextended").scalar();
    if (on_source == on_target) return HashFunction::hashtextextended;
  } catch (const repl::SqlError&) {
    // A server without hashtextextended (before PostgreSQL 11): md5 is everywhere.
  }
  return HashFunction::md5;
}

TableSql::TableSql(const TablePlan& plan, HashFunction hash)
    : plan_(&plan), hash_(hash), table_(plan.qualified()) {
  // concat() calls each type's output function directly (about 1.2x the cost of COPY's
  // text output, where ROW(...)::text costs 1.6x) and skips NULLs; the forms keep the
  // text injective: a plain value is never empty, a sized one carries its length (-1:
  // NULL), a hashed one is digits or nothing; every column ends in \x1f.
  std::string row = "concat(";
  for (std::size_t i = 0; i < plan.columns.size(); ++i) {
    auto column = repl::quote_ident(plan.columns[i].name);
    switch (plan.columns[i].form) {
      case ColumnForm::plain:
        row += column;
        break;
      case ColumnForm::sized:
        row += fmt::format("coalesce(octet_length({0}), -1), ':', {0}", column);
        break;
      case ColumnForm::hashed:
        row += hash_of(column + "::text");
        break;
    }
    row += ", E'\\x1f'";
    if (i + 1 < plan.columns.size()) row += ", ";
  }
  row += ")";
  if (plan.columns.empty()) row = "''::text";
  row_hash_ = hash_of(row);
  for (std::size_t i = 0; i < plan.key.size(); ++i) {
    if (i) key_order_ += ", ";
    key_order_ += repl::quote_ident(plan.key[i].name);
  }
}

std::string TableSql::hash_of(const std::string& text_expression) const {
  switch (hash_) {
    case HashFunction::hashtextextended:
      return fmt::format("hashtextextended({} COLLATE \"C\", 0)", text_expression);
    case HashFunction::md5:
      return fmt::format("('x' || left(md5({}), 16))::bit(64)::int8", text_expression);
  }
  return {};
}

std::string TableSql::key_tuple() const {
  return plan_->key.size() == 1 ? key_order_ : "(" + key_order_ + ")";
}

std::string TableSql::key_texts() const {
  // Aliased, so that ORDER BY "k" means the column and not its text (an output column of
  // the same name would win, and sort 10 before 9).
  std::string out;
  for (std::size_t i = 0; i < plan_->key.size(); ++i) {
    out += fmt::format("{}::text AS pgferry_k{}, ", repl::quote_ident(plan_->key[i].name), i);
  }
  return out;
}

std::string TableSql::bound_tuple(const KeyValues& values, Params& params) const {
  std::string out;
  for (std::size_t i = 0; i < values.size(); ++i) {
    params.push_back(values[i]);
    if (i) out += ", ";
    out += fmt::format("${}::{}", params.size(), plan_->key[i].type);
  }
  return values.size() == 1 ? out : "(" + out + ")";
}

std::string TableSql::range_predicate(const KeyRange& range, Params& params) const {
  std::string out = "true";
  if (range.lo) out += fmt::format(" AND {} >= {}", key_tuple(), bound_tuple(*range.lo, params));
  if (range.hi) out += fmt::format(" AND {} < {}", key_tuple(), bound_tuple(*range.hi, params));
  return out;
}

std::string TableSql::chunk_hash(const KeyRange& range, repl::Side side,
                                 const std::string& progress_name, Params& params) const {
  std::string where = range_predicate(range, params);
  std::string position = "NULL::text";
  if (side == repl::Side::source) {
    // Evaluated once the aggregate is done: every commit the scan saw ends before it.
    position = "pg_current_wal_lsn()::text";
  } else if (!progress_name.empty()) {
    params.push_back(progress_name);
    position = fmt::format("(SELECT applied_lsn::text FROM pgferry.progress WHERE name = ${})",
                           params.size());
  }
  return fmt::format("SELECT count(*), coalesce(sum({}), 0)::text, {} FROM {} WHERE {}", row_hash_,
                     position, table_, where);
}

std::string TableSql::list_rows(const KeyRange& range, Params& params) const {
  std::string where = range_predicate(range, params);
  return fmt::format("SELECT {}{}::text FROM {} WHERE {}", key_texts(), row_hash_, table_, where);
}

std::string TableSql::key_at(const KeyRange& range, std::int64_t offset, Params& params) const {
  std::string where = range_predicate(range, params);
  std::string texts = key_texts();
  texts.resize(texts.size() - 2);
  return fmt::format("SELECT {} FROM {} WHERE {} ORDER BY {} OFFSET {} LIMIT 1", texts, table_,
                     where, key_order_, offset);
}

std::string TableSql::rows_by_key(const std::vector<KeyValues>& keys, Params& params) const {
  std::string columns;
  for (const auto& column : plan_->columns) {
    columns += ", " + hash_of(repl::quote_ident(column.name) + "::text") + "::text";
  }
  std::string match;
  if (plan_->key.size() == 1) {
    std::vector<std::string> values;
    for (const auto& key : keys) values.push_back(key[0]);
    params.push_back(repl::sql_array_literal(values));
    match = fmt::format("{} = ANY(${}::{}[])", key_order_, params.size(), plan_->key[0].type);
  } else {
    std::string arrays;
    for (std::size_t i = 0; i < plan_->key.size(); ++i) {
      std::vector<std::string> values;
      for (const auto& key : keys) values.push_back(key[i]);
      params.push_back(repl::sql_array_literal(values));
      if (i) arrays += ", ";
      arrays += fmt::format("${}::{}[]", params.size(), plan_->key[i].type);
    }
    match = fmt::format("{} IN (SELECT * FROM unnest({}))", key_tuple(), arrays);
  }
  return fmt::format("SELECT {}{}::text{} FROM {} WHERE {}", key_texts(), row_hash_, columns,
                     table_, match);
}

std::string TableSql::integer_key_bounds() const {
  return fmt::format("SELECT min({0})::text, max({0})::text FROM {1}", key_order_, table_);
}

std::string TableSql::random_keys(double percent, std::int64_t limit) const {
  std::string texts = key_texts();
  texts.resize(texts.size() - 2);
  return fmt::format("SELECT {} FROM {} TABLESAMPLE SYSTEM ({}) ORDER BY random() LIMIT {}", texts,
                     table_, percent, limit);
}

std::string TableSql::last_keys(std::int64_t limit) const {
  std::string texts = key_texts();
  texts.resize(texts.size() - 2);
  std::string order;
  for (const auto& column : plan_->key) {
    if (!order.empty()) order += ", ";
    order += repl::quote_ident(column.name) + " DESC";
  }
  return fmt::format("SELECT {} FROM {} ORDER BY {} LIMIT {}", texts, table_, order, limit);
}

}  // namespace pgferry::cutover::verify_detail
