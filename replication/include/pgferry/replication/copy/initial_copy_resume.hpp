// Resuming an interrupted `pgferry init`: which tables copied under an earlier snapshot
// can be kept when the copy continues under a new slot and snapshot, and the record that
// says which slot position the finished tables are consistent with.
//
// NOTES
// - The problem. A slot's exported snapshot lives only as long as the replication
//   connection that created it. If init dies during the copy, the snapshot is gone; the
//   unfinished tables must be copied under a new snapshot S2 taken at a new slot's
//   consistent point L2, and `run` will stream from L2. A table finished under the old
//   snapshot S1 (consistent point L1 < L2) holds the source's state at L1: keeping it
//   as is would lose every change made to it between L1 and L2 (they are in neither the
//   copy nor the new slot's stream). Streaming from L1 instead would apply the changes
//   between L1 and L2 twice to tables copied under S2.
// - The scheme. On resume, with the old slot still there and provably unconsumed (its
//   confirmed_flush_lsn equals L1 recorded in pgferry.copy_origin on the target, and no
//   progress record exists, so no `run` ever applied from it):
//     1. copy the old slot into a TEMPORARY slot of our own session
//        (pg_copy_logical_replication_slot), which keeps the WAL from L1;
//     2. drop the old slot and create the new one (same name) with an exported snapshot:
//        S2 at L2;
//     3. decode the temporary slot from L1 up to L2 with pgoutput and the publication
//        (pg_logical_slot_peek_binary_changes; only the Relation messages are looked at,
//        on the server): pgoutput sends a Relation message before the first change of
//        each relation it publishes, so this is a superset of the tables changed in
//        (L1, L2];
//     4. a table finished under S1 and not changed in (L1, L2] holds exactly its state at
//        L2: keep it (its record is re-labelled with S2); every other finished table is
//        emptied and copied again under S2, as are unfinished ones.
//   Everything then is consistent with L2, so `run` streams from L2: nothing lost, nothing
//   applied twice.
// - When anything cannot be proven — the old slot is missing or was consumed, the record
//   and the slot disagree, a table was finished under a snapshot other than the recorded
//   one, the publication's table list changed, the temporary slot cannot be made, or the
//   WAL between L1 and the current position exceeds max_scan_bytes — every finished table
//   is copied again. Slower, never wrong.
// - A crash at any point of the scheme leaves a state the next run handles: before the
//   new slot exists the old record still matches the old slot or the slot is gone; after
//   it, the record (L1) and the slot (L2) disagree until the target transaction that
//   re-labels the kept tables and records L2 commits.
// - Cost: the peek decodes the WAL written between L1 and L2 once, on the source, and
//   materializes only one small row per change there (a tuplestore, spilling to disk past
//   work_mem); what reaches pgferry is the distinct relation ids.
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "pgferry/replication/core/lsn.hpp"
#include "pgferry/replication/core/pg.hpp"
#include "pgferry/replication/core/table_scope.hpp"

namespace pgferry::replication {

// pgferry.copy_origin on the target: one row per --name, written by init.
struct CopyOrigin {
  // The slot position and snapshot every finished table in pgferry.copy_progress is
  // consistent with.
  Lsn consistent_point;
  std::string snapshot;
  // `init --schema`: the post-data section (indexes, constraints) still to restore:
  // "" none, "*" the whole database's, else the qualified names of the tables, one a line.
  std::string post_data_pending;
};

std::optional<CopyOrigin> read_copy_origin(const Connection& target, std::string_view name);
// Creates the table if missing and upserts the row.
void write_copy_origin(const Connection& target, std::string_view name, const CopyOrigin& origin);

// Tables (schema.name) whose ranges are all finished in pgferry.copy_progress, with the
// snapshot each was copied under (the first range's when they differ: then "" is given,
// which matches no snapshot).
std::vector<std::pair<std::string, std::string>> finished_copies(const Connection& target,
                                                                 std::string_view name);

// In one target transaction: records `origin`; marks the tables in `keep` as consistent
// with origin.snapshot (schema.name as recorded); forgets the copy of every table in
// `recopy` and empties it on the target (TRUNCATE ONLY), so that copy_tables() copies it
// again.
void rebase_copy(const Connection& target, std::string_view name, const CopyOrigin& origin,
                 const std::vector<std::string>& keep, const std::vector<const TableInfo*>& recopy);

// Oids of the relations with a change published by `publication` in the logical slot
// `slot` between its confirmed position and `upto` (a superset: changes committed
// slightly after `upto` may be included). Does not move the slot. Runs on `source`, which
// must be an ordinary connection by a role allowed to use the slot.
std::set<std::uint32_t> changed_relations(const Connection& source, std::string_view slot,
                                          std::string_view publication, Lsn upto);

}  // namespace pgferry::replication
