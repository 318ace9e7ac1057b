// The target side of each source relation version, read from the target's catalog once per
// version: quoted column names, types, how each value goes in binary COPY, the replica
// identity key and primary key as source columns, and whether the table is "batchable".
//
// NOTES
// - Columns are matched by name: a source column the target lacks stops the applier with
//   the ALTER TABLE that fixes it. A target column the source does not send keeps its
//   default.
// - Binary COPY only where the target column has the type the source sends (its text output
//   is what the encoder parses); binary_copy turns false for good at the first value the
//   encoder does not take.
// - Batchable: no triggers, no rules, no foreign keys to or from it, no unique index but the
//   primary key, no array, composite or non-comma-delimited column types (batches travel as
//   one text array per column). Such a table's key-preserving updates and deletes by key may
//   be coalesced and applied later in the group (update_batches.hpp). Under the replica role
//   (session_replication_role = replica) foreign-key checks and actions and ordinary
//   triggers do not run, so only triggers that fire there (ENABLE ALWAYS / REPLICA) count,
//   and foreign keys do not: nothing on the target observes the order across tables.
// - Without the replica role (the target role may not set session_replication_role), a
//   table whose user triggers or foreign-key actions would fire again for replicated
//   changes is refused when first mapped, unless allow_target_triggers (refuse_firing()).
// - Its queries go through the pipeline (the connection never leaves pipeline mode for
//   them), so none may be sent while a COPY is open: the caller ends the COPY first when
//   mapped() says a query is coming.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "pgferry/replication/apply/copy_encoding.hpp"
#include "pgferry/replication/core/lsn.hpp"
#include "pgferry/replication/decode/relation.hpp"

namespace pgferry::replication::apply {

class Pipeline;

// The target side of one source relation version.
struct TargetTable {
  RelationId id;
  std::uint64_t version = 0;
  std::string qualified;             // "schema"."name"
  std::string display;               // schema.name, for messages
  std::vector<std::string> columns;  // quoted target column name, per source column
  std::vector<std::string> types;    // target type (format_type), per source column
  std::vector<BinaryType> binary;    // how a value goes in binary COPY, per source column
  // Every column can go in binary COPY (until a value does not parse: then text for good).
  mutable bool binary_copy = false;
  std::vector<int> key;          // source columns flagged as replica identity key
  std::vector<int> primary_key;  // target primary key as source columns; empty if unusable
  // What finds a row in a set-based batch (update_batches.hpp): the replica identity key, or
  // under REPLICA IDENTITY FULL the primary key (empty without one: not batched by key).
  std::vector<int> row_key;
  // See NOTES.
  bool batchable = false;
};

// Appends "(col, ...)=(" for `columns` of `table` to `out`: how a row's key is named.
inline void append_key_names(std::string& out, const TargetTable& table,
                             const std::vector<int>& columns) {
  out += '(';
  for (std::size_t i = 0; i < columns.size(); ++i) {
    if (i) out += ", ";
    out += table.columns[static_cast<std::size_t>(columns[i])];
  }
  out += ")=(";
}

class TargetTables {
 public:
  explicit TargetTables(Pipeline& pipeline) : pipeline_(pipeline) {}

  // The target table of this relation version, read from the catalog if new (a query
  // through the pipeline, with `commit_lsn` to name in an error).
  const TargetTable& table_for(const Relation& relation, Lsn commit_lsn) {
    auto it = tables_.find(relation.id);
    if (it != tables_.end() && it->second.version == relation.version) return it->second;
    return map(relation, commit_lsn);
  }
  // Without the replica role: table_for() throws CheckFailed for a table whose user
  // triggers or foreign-key actions would fire again for replicated changes
  // (target_triggers.hpp); `grant` is what would allow the replica role, for the fix.
  void refuse_firing(std::string grant) {
    refuse_firing_ = true;
    replica_role_grant_ = std::move(grant);
  }
  // The session runs with session_replication_role = replica (see NOTES: batchable).
  void under_replica_role() { replica_role_ = true; }
  // False when table_for() would query the catalog.
  bool mapped(const Relation& relation) const {
    auto it = tables_.find(relation.id);
    return it != tables_.end() && it->second.version == relation.version;
  }

 private:
  const TargetTable& map(const Relation& relation, Lsn commit_lsn);
  void refuse_if_firing(const TargetTable& table, Lsn commit_lsn);

  Pipeline& pipeline_;
  std::unordered_map<RelationId, TargetTable> tables_;
  bool refuse_firing_ = false;
  bool replica_role_ = false;
  std::string replica_role_grant_;
};

}  // namespace pgferry::replication::apply
