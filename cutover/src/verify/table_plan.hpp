// What verify knows about one table before it reads rows (columns, primary key, whether the
// target can be compared at all), and the SQL it sends for that table: chunk hashes, row
// listings, midpoints for splitting, rows fetched by key.
//
// NOTES
// - Every statement is built once per table shape from quoted identifiers; values (range
//   bounds, key lists) always travel as text parameters cast to the key column's type
//   without its typmod, so that a bound never gets rounded or truncated by the cast.
// - A key range is half-open, [lo, hi); a missing bound is open, so the first and the last
//   chunk of a table also cover target keys outside the source's key range.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "pgferry/replication/core/pg.hpp"
#include "pgferry/replication/core/table_scope.hpp"

namespace pgferry::cutover::verify_detail {

// How a column enters the row text (see row_text()).
enum class ColumnForm {
  plain,   // a type whose text is never empty and never holds \x1f: the text itself
  sized,   // text, varchar, char: byte length, ':', the text
  hashed,  // anything else (jsonb, arrays, enums, domains, ...): the hash of its text
};

struct ColumnInfo {
  std::string name;  // unquoted
  std::string type;  // format_type without typmod
  ColumnForm form = ColumnForm::hashed;
};

// The form for a type oid.
ColumnForm column_form(std::string_view type_oid);

struct TablePlan {
  std::string schema;
  std::string name;
  std::vector<ColumnInfo> columns;  // the source's, in the source's order
  std::vector<ColumnInfo> key;      // primary key columns in key order; empty: none
  bool integer_key = false;         // one smallint/integer/bigint key column
  double estimated_rows = -1;
  std::int64_t blocks = 0;
  std::vector<std::string> problems;  // non-empty: the table cannot be compared

  std::string qualified() const { return replication::qualified_name(schema, name); }
  std::string display_name() const { return schema + "." + name; }
};

// The source's tables in scope that carry rows (ordinary, logged; leaf partitions), with
// their columns and keys, and what stops comparing each on the target.
std::vector<TablePlan> plan_tables(const replication::Connection& source,
                                   const replication::Connection& target,
                                   const replication::TableScope& scope);

enum class HashFunction { hashtextextended, md5 };
const char* to_string(HashFunction hash);

// Picks hashtextextended when both servers hash a set of probe strings identically (same
// byte order, same algorithm), md5 otherwise.
HashFunction choose_hash(const replication::Connection& source,
                         const replication::Connection& target);

using KeyValues = std::vector<std::string>;  // text of each key column
struct KeyRange {
  std::optional<KeyValues> lo;  // inclusive
  std::optional<KeyValues> hi;  // exclusive
};

// Text parameters of one statement.
using Params = std::vector<std::string>;

class TableSql {
 public:
  TableSql(const TablePlan& plan, HashFunction hash);

  // SELECT count(*), sum(row hash)[, position] for the range. On the source the position
  // is pg_current_wal_lsn() after the scan; on the target (with a progress name) the
  // applied_lsn of that row in the same snapshot as the scan. Columns: count, sum, lsn.
  std::string chunk_hash(const KeyRange& range, replication::Side side,
                         const std::string& progress_name, Params& params) const;
  // Key texts and the row hash of every row in the range (any order). Columns: key...,
  // hash.
  std::string list_rows(const KeyRange& range, Params& params) const;
  // The key at position `offset` (0-based) in key order within the range.
  std::string key_at(const KeyRange& range, std::int64_t offset, Params& params) const;
  // Key texts, row hash and one hash per column (NULL for a NULL value) of the rows with
  // the given keys. Columns: key..., row hash, column hashes...
  std::string rows_by_key(const std::vector<KeyValues>& keys, Params& params) const;
  // min and max of the integer key (NULLs when empty).
  std::string integer_key_bounds() const;
  // Up to `limit` keys: random ones (TABLESAMPLE SYSTEM at `percent`) or the last by key.
  std::string random_keys(double percent, std::int64_t limit) const;
  std::string last_keys(std::int64_t limit) const;

  const TablePlan& plan() const { return *plan_; }
  std::size_t key_size() const { return plan_->key.size(); }

 private:
  std::string hash_of(const std::string& text_expression) const;
  std::string range_predicate(const KeyRange& range, Params& params) const;
  std::string key_tuple() const;
  std::string key_texts() const;
  std::string bound_tuple(const KeyValues& values, Params& params) const;

  const TablePlan* plan_;
  HashFunction hash_;
  std::string table_;
  std::string row_hash_;
  std::string key_order_;
};

}  // namespace pgferry::cutover::verify_detail
