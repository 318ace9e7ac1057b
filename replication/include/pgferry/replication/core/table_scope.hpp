// Which source tables pgferry moves: `--table PATTERN` / `--exclude-table PATTERN` filters
// (psql-like patterns) applied to the source catalog, and the tables that pass with their
// size estimates.
//
// NOTES
// - Patterns follow psql's \d patterns: `schema.table`, `*` any run of characters, `?` one
//   character, unquoted letters fold to lower case, "double quotes" keep case and make `*`,
//   `?` and `.` literal. An unqualified pattern matches the name in any schema.
// - With no --table every table matches; --exclude-table always wins over --table.
// - System schemas (pg_catalog, information_schema, pg_toast, pg_temp_*) and pgferry's own
//   schema `pgferry` are never in scope, whatever the patterns say.
// - Partitions: pgferry replicates leaf partitions as themselves (the publication is
//   created with publish_via_partition_root = false), because the target must then have
//   the same partition layout, and a leaf's changes and its initial copy then go to the
//   same table without re-routing. A partitioned table is listed (kind partitioned, no
//   data of its own) so that checks can name it; a leaf is in scope when it, or any of its
//   ancestors, matches the patterns, so `--table measurements` brings every partition of
//   measurements along; an exclusion of an ancestor excludes the leaf likewise.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "pgferry/replication/core/ids.hpp"
#include "pgferry/replication/core/pg.hpp"

namespace pgferry::replication {

// One parsed pattern. An empty schema pattern means "any schema".
class TablePattern {
 public:
  // Throws ConfigError naming the pattern for an empty pattern, an unterminated quote or
  // more than one unquoted dot.
  static TablePattern parse(std::string_view pattern);

  bool matches(std::string_view schema, std::string_view name) const;
  const std::string& text() const { return text_; }

 private:
  struct Part {
    std::string glob;  // '*' and '?' are wildcards, '\\' escapes the next char
    bool any = true;   // true when the part was not given (schema of an unqualified pattern)
  };
  static bool glob_matches(std::string_view glob, std::string_view text);

  std::string text_;
  Part schema_;
  Part name_;
};

struct TableScope {
  std::vector<TablePattern> include;  // empty: everything
  std::vector<TablePattern> exclude;

  // Parses the option values; throws ConfigError for a bad pattern.
  static TableScope from_patterns(const std::vector<std::string>& include,
                                  const std::vector<std::string>& exclude);

  // Whether a table with this schema and name passes the patterns (the system-schema and
  // ancestor rules are applied by list_tables()).
  bool matches(std::string_view schema, std::string_view name) const;
};

// True for schemas never in scope: pg_catalog, information_schema, pg_toast*, pg_temp_*,
// and pgferry.
bool is_excluded_schema(std::string_view schema);

enum class TableKind { ordinary, partitioned };

struct TableInfo {
  Oid oid;
  std::string schema;
  std::string name;
  TableKind kind = TableKind::ordinary;
  bool is_partition = false;  // a partition of a partitioned table (leaf or not)
  bool unlogged = false;      // logical decoding does not see unlogged tables
  // pg_class.reltuples (-1 when never vacuumed or analyzed); an estimate only.
  double estimated_rows = -1;
  // Size of the main fork in bytes and in blocks (block_size of the server).
  std::int64_t bytes = 0;
  std::int64_t blocks = 0;

  // "schema"."name", quoted for SQL.
  std::string qualified_name() const;
  // schema.name unquoted, for messages and progress records.
  std::string display_name() const;
  // Whether the initial copy and the publication carry this table's rows: a permanent
  // table that holds rows itself (not a partitioned parent).
  bool carries_rows() const { return kind == TableKind::ordinary && !unlogged; }
};

// A text[] literal ({"a","b"}) for passing a list of names or oids as one parameter,
// e.g. `WHERE c.oid = ANY($1::oid[])`.
std::string sql_array_literal(const std::vector<std::string>& values);

// The source's ordinary and partitioned tables (unlogged ones included, flagged) in scope,
// ordered by schema and name.
std::vector<TableInfo> list_tables(const Connection& source, const TableScope& scope);

}  // namespace pgferry::replication
