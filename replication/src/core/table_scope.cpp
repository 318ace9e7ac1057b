// Table scope: psql-like pattern parsing and matching, and the catalog query that lists the
// source tables in scope.
#include "pgferry/replication/core/table_scope.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <unordered_map>

namespace pgferry::replication {

TablePattern TablePattern::parse(std::string_view pattern) {
  TablePattern result;
  result.text_ = std::string(pattern);
  if (pattern.empty()) {
    throw ConfigError("empty table pattern: give schema.table or table (wildcards * and ?)");
  }
  std::vector<Part> parts(1);
  parts.back().any = false;
  bool quoted = false;
  for (std::size_t i = 0; i < pattern.size(); ++i) {
    char c = pattern[i];
    std::string& glob = parts.back().glob;
    if (quoted) {
      if (c == '"') {
        if (i + 1 < pattern.size() && pattern[i + 1] == '"') {
          glob += '"';
          ++i;
        } else {
          quoted = false;
        }
      } else {
        if (c == '*' || c == '?' || c == '\\') glob += '\\';
        glob += c;
      }
      continue;
    }
    if (c == '"') {
      quoted = true;
    } else if (c == '.') {
      if (parts.size() == 2) {
        throw ConfigError(fmt::format(
            "table pattern \"{}\" has more than one dot: give schema.table or table", pattern));
      }
      parts.push_back(Part{"", false});
    } else if (c == '\\') {
      glob += "\\\\";
    } else if (c >= 'A' && c <= 'Z') {
      glob += static_cast<char>(c - 'A' + 'a');  // unquoted names fold like SQL identifiers
    } else {
      glob += c;  // includes the wildcards * and ?
    }
  }
  if (quoted) {
    throw ConfigError(
        fmt::format("table pattern \"{}\" has an unterminated double quote: close "
                    "it, e.g. '\"MySchema\".\"MyTable\"'",
                    pattern));
  }
  if (parts.size() == 2) {
    result.schema_ = parts[0];
    result.name_ = parts[1];
    if (result.schema_.glob.empty() || result.name_.glob.empty()) {
      throw ConfigError(fmt::format(
          "table pattern \"{}\" has an empty schema or table part: give schema.table", pattern));
    }
  } else {
    result.name_ = parts[0];
    if (result.name_.glob.empty()) {
      throw ConfigError(fmt::format("table pattern \"{}\" names no table", pattern));
    }
  }
  return result;
}

bool TablePattern::glob_matches(std::string_view glob, std::string_view text) {
  // Iterative wildcard match with single-star backtracking: linear in practice.
  std::size_t g = 0, t = 0;
  std::size_t star = std::string_view::npos, star_text = 0;
  while (t < text.size()) {
    if (g < glob.size() && glob[g] == '*') {
      star = g++;
      star_text = t;
      continue;
    }
    if (g < glob.size()) {
      bool escaped = glob[g] == '\\' && g + 1 < glob.size();
      char want = escaped ? glob[g + 1] : glob[g];
      if ((!escaped && want == '?') || want == text[t]) {
        g += escaped ? 2 : 1;
        ++t;
        continue;
      }
    }
    if (star == std::string_view::npos) return false;
    g = star + 1;
    t = ++star_text;
  }
  while (g < glob.size() && glob[g] == '*') ++g;
  return g == glob.size();
}

bool TablePattern::matches(std::string_view schema, std::string_view name) const {
  if (!schema_.any && !glob_matches(schema_.glob, schema)) return false;
  return glob_matches(name_.glob, name);
}

TableScope TableScope::from_patterns(const std::vector<std::string>& include,
                                     const std::vector<std::string>& exclude) {
  TableScope scope;
  for (const auto& pattern : include) scope.include.push_back(TablePattern::parse(pattern));
  for (const auto& pattern : exclude) scope.exclude.push_back(TablePattern::parse(pattern));
  return scope;
}

bool TableScope::matches(std::string_view schema, std::string_view name) const {
  for (const auto& pattern : exclude) {
    if (pattern.matches(schema, name)) return false;
  }
  if (include.empty()) return true;
  return std::any_of(include.begin(), include.end(),
                     [&](const TablePattern& p) { return p.matches(schema, name); });
}

bool is_excluded_schema(std::string_view schema) {
  return schema == "pg_catalog" || schema == "information_schema" || schema == "pgferry" ||
         schema.starts_with("pg_toast") || schema.starts_with("pg_temp_");
}

std::string TableInfo::qualified_name() const {
  return replication::qualified_name(schema, name);
}

std::string TableInfo::display_name() const {
  return schema + "." + name;
}

std::string sql_array_literal(const std::vector<std::string>& values) {
  std::string out = "{";
  for (const auto& value : values) {
    if (out.size() > 1) out += ',';
    out += '"';
    for (char c : value) {
      if (c == '"' || c == '\\') out += '\\';
      out += c;
    }
    out += '"';
  }
  out += '}';
  return out;
}

namespace {

template <typename T>
T parse_number(std::string_view text) {
  T value{};
  std::from_chars(text.data(), text.data() + text.size(), value);
  return value;
}

}  // namespace

std::vector<TableInfo> list_tables(const Connection& source, const TableScope& scope) {
  // Every ordinary and partitioned table outside the system schemas, with its direct
  // partition parent (pg_inherits) so that the ancestor rule can be applied here.
  Result rows = source.exec(
      "SELECT c.oid, n.nspname, c.relname, c.relkind, c.relispartition, "
      "       c.relpersistence = 'u', c.reltuples::float8, "
      "       pg_relation_size(c.oid), "
      "       pg_relation_size(c.oid) / current_setting('block_size')::int8, "
      "       (SELECT i.inhparent FROM pg_inherits i WHERE i.inhrelid = c.oid "
      "          AND c.relispartition LIMIT 1) "
      "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
      "WHERE c.relkind IN ('r', 'p') AND c.relpersistence IN ('p', 'u') "
      "ORDER BY n.nspname, c.relname",
      "listing the source tables");

  struct Row {
    TableInfo info;
    std::uint32_t parent = 0;
  };
  std::vector<Row> all;
  std::unordered_map<std::uint32_t, std::size_t> by_oid;
  for (int r = 0; r < rows.rows(); ++r) {
    Row row;
    row.info.oid = Oid{parse_number<std::uint32_t>(rows.get(r, 0))};
    row.info.schema = std::string(rows.get(r, 1));
    row.info.name = std::string(rows.get(r, 2));
    row.info.kind = rows.get(r, 3) == "p" ? TableKind::partitioned : TableKind::ordinary;
    row.info.is_partition = rows.get(r, 4) == "t";
    row.info.unlogged = rows.get(r, 5) == "t";
    row.info.estimated_rows = parse_number<double>(rows.get(r, 6));
    row.info.bytes = parse_number<std::int64_t>(rows.get(r, 7));
    row.info.blocks = parse_number<std::int64_t>(rows.get(r, 8));
    if (!rows.is_null(r, 9)) row.parent = parse_number<std::uint32_t>(rows.get(r, 9));
    by_oid.emplace(row.info.oid.value, all.size());
    all.push_back(std::move(row));
  }

  // A table is excluded when it or an ancestor matches an exclusion; included when it or
  // an ancestor matches an inclusion (or there is none).
  auto ancestry = [&](const Row& row) {
    std::vector<const TableInfo*> chain{&row.info};
    std::uint32_t parent = row.parent;
    while (parent != 0 && chain.size() < 64) {
      auto it = by_oid.find(parent);
      if (it == by_oid.end()) break;
      chain.push_back(&all[it->second].info);
      parent = all[it->second].parent;
    }
    return chain;
  };

  std::vector<TableInfo> tables;
  for (const auto& row : all) {
    if (is_excluded_schema(row.info.schema)) continue;
    auto chain = ancestry(row);
    bool excluded = std::any_of(chain.begin(), chain.end(), [&](const TableInfo* t) {
      return std::any_of(scope.exclude.begin(), scope.exclude.end(),
                         [&](const TablePattern& p) { return p.matches(t->schema, t->name); });
    });
    if (excluded) continue;
    bool included =
        scope.include.empty() || std::any_of(chain.begin(), chain.end(), [&](const TableInfo* t) {
          return std::any_of(scope.include.begin(), scope.include.end(),
                             [&](const TablePattern& p) { return p.matches(t->schema, t->name); });
        });
    if (included) tables.push_back(row.info);
  }
  return tables;
}

}  // namespace pgferry::replication
