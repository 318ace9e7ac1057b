// Sequence sync: logical replication does not carry sequence values, so after cutover a
// target sequence behind the source hands out a value that already exists and the first
// insert fails with a duplicate key. This finds every sequence in scope on the source
// (serial and identity columns, free-standing sequences), compares it with the target and
// moves the target forward: `pgferry sequences diff|sync`, `run --sync-sequences` and the
// cutover's final sync all call diff_sequences() / sync_sequences().
//
// NOTES
// - Values come with the catalog query from pg_sequence_last_value() (what pg_sequences
//   shows), about 25 µs a sequence. It is NULL for a sequence not called since its last
//   setval(.., false) (or created), whose last_value only the sequence itself knows: those
//   few are read with SELECT last_value, is_called FROM seq, batched with UNION ALL. This is
//   on the cutover's critical path (the final sync is inside the write window), hence no
//   round trip per sequence.
// - sync runs on the target in one transaction and sets every sequence with one statement.
//   setval() itself is not transactional (a rollback does not undo it), so everything that
//   can fail (missing or incompatible sequences) is checked before the first setval: either
//   every sequence is set or none is.
// - Sequences present only on the target are not in scope and not reported.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "pgferry/replication/core/pg.hpp"
#include "pgferry/sequences/target_value.hpp"

namespace pgferry::sequences {

using replication::Connection;

// What a sequence serves, from pg_depend: a serial column (OWNED BY, deptype 'a'), an
// identity column (deptype 'i'), or nothing the catalog knows of (a default or the
// application calls it).
enum class SequenceKind { serial, identity, standalone };
std::string_view to_string(SequenceKind kind);

struct SequenceInfo {
  std::string schema;
  std::string name;
  SequenceKind kind = SequenceKind::standalone;
  std::string owned_by;  // schema.table.column for serial and identity, else ""
  SequenceDefinition definition;
  SequenceState state;

  // "schema"."name", quoted for SQL.
  std::string qualified_name() const;
  // schema.name unquoted, for tables and logs.
  std::string display_name() const;
  // schema.name with each part double-quoted only where SQL needs it (upper case, spaces,
  // ...): what error messages use, so that their fix commands can be pasted into psql.
  std::string sql_name() const;
};

struct SyncOptions {
  // How many increments (of the source sequence) past the source's next value to set the
  // target: room for nextval() calls that reach the source after it was read. >= 0.
  std::int64_t margin = 0;
  // Schema name patterns: `*` any run of characters, `?` one character, case-sensitive.
  // Empty include: every schema. Exclude wins. The pgferry schema and the system schemas
  // are never in scope.
  std::vector<std::string> include_schemas;
  std::vector<std::string> exclude_schemas;
};

// Every sequence in scope on `conn` with its definition and current state, ordered by schema
// and name.
std::vector<SequenceInfo> discover_sequences(const Connection& conn, const SyncOptions& options);

// Whether `schema` passes the options' patterns (and is not a system or pgferry schema).
bool schema_in_scope(std::string_view schema, const SyncOptions& options);

struct SequenceDiff {
  SequenceInfo source;
  std::optional<SequenceInfo> target;  // nullopt: missing on the target
  TargetPlan plan;
};

struct DiffReport {
  std::vector<SequenceDiff> sequences;
  std::int64_t margin = 0;

  std::size_t count(SequenceStatus status) const;
  // True when no target sequence is behind, missing or incompatible.
  bool ok() const;
};

struct SequenceChange {
  std::string schema;
  std::string name;
  SequenceStatus status = SequenceStatus::behind;  // why it was moved
  SequenceState before;
  Setval after;
  std::optional<std::int64_t> next_before;  // nullopt: exhausted
  std::optional<std::int64_t> next_after;
  std::string note;
};

struct SyncReport {
  DiffReport diff;  // what was found before the change
  std::vector<SequenceChange> changed;
  std::chrono::microseconds elapsed{0};
};

// Compares every source sequence in scope with the target. Reads only.
DiffReport diff_sequences(const Connection& source, const Connection& target,
                          const SyncOptions& options = {});

// Sets every target sequence so that its next value is past everything the source handed
// out (plus the margin); never moves one backwards (cycling sequences are copied exactly);
// a second run changes nothing. Throws CheckFailed, listing each sequence with its fix and
// changing nothing, when any is missing on the target or incompatible; ConfigError for a
// negative margin.
SyncReport sync_sequences(const Connection& source, const Connection& target,
                          SyncOptions options = {});

}  // namespace pgferry::sequences
