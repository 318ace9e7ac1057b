// Coalesced update batches: key-preserving full-row updates of batchable tables, kept per
// key within the group and sent as one set-based UPDATE per table.
//
// NOTES
// - An UPDATE that keeps its key and carries every column, on a batchable table (see
//   target_tables.hpp: no triggers, no rules, no foreign keys to or from it, no unique index
//   but the primary key, no array columns), is not sent: the group keeps the last new tuple
//   per key, and sends one `UPDATE t SET ... FROM unnest($1::type[], ...)` per table before
//   COMMIT (or earlier, before any change that is not an insert into another batchable
//   table: the applier decides when, and sends its insert run first).
// - While updates are batched, inserts into batchable tables join the batch (one INSERT ...
//   SELECT FROM unnest per table, sent before the table's updates) instead of a COPY, which
//   would leave pipeline mode and wait for every batch sent; a batch goes out at 256 kB
//   (full()) so that the target applies it while the next is received.
// - The row ends as the source left it at the group's last commit; nothing can observe the
//   order of changes across such tables inside one target transaction. The statement must
//   update exactly one row per key; it returns the keys it updated so that a missing one
//   can be named (this part checks its own results: a ResultCheck, once per batch).
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "pgferry/replication/apply/applier.hpp"
#include "pgferry/replication/decode/pgoutput.hpp"
#include "pipeline.hpp"
#include "target_tables.hpp"

namespace pgferry::replication::apply {

class UpdateBatches final : public ResultCheck {
 public:
  UpdateBatches(Pipeline& pipeline, const ApplierOptions& options, ApplyCounters& counters)
      : pipeline_(pipeline), options_(options), counters_(counters) {}

  // Changes are batched (not sent yet).
  bool active() const { return rows_ > 0; }
  // Changes of `relation` are batched.
  bool holds(RelationId relation) const { return batches_.count(relation) != 0; }
  // Enough is batched to send it now.
  bool full() const;

  // Batches the update of the source transaction `commit_lsn` if it can be (see NOTES):
  // returns the bytes it adds to the group, or nullopt when it must be sent as it is.
  std::optional<std::size_t> add_update(const TargetTable& table, const pgoutput::Update& update,
                                        Lsn commit_lsn);
  // Batches an insert into the batchable `table`; returns the bytes it adds to the group.
  std::size_t add_insert(const TargetTable& table, pgoutput::TupleView tuple, Lsn commit_lsn);
  // Sends every batch (no COPY may be open).
  void send();

  void check(const Pending& pending, const Result& result) override;

 private:
  // Per relation: the last new tuple of each key, and the inserts meanwhile.
  struct Batch {
    const TargetTable* table = nullptr;
    std::vector<int> columns;                            // key columns, then the others
    std::unordered_map<std::string, std::size_t> index;  // key values → entry
    std::string arena;                                   // values
    std::vector<std::int64_t> cells;       // per entry and column: offset in arena; -1 NULL
    std::vector<std::uint32_t> lengths;    // per entry and column
    std::vector<Lsn> commit_lsns;          // per entry: the last change's transaction
    std::vector<const std::string*> keys;  // per entry: its index key
    // Inserts meanwhile (every column, source order), sent before the updates.
    std::string insert_arena;
    std::vector<std::int64_t> insert_cells;
    std::vector<std::uint32_t> insert_lengths;
    std::size_t inserts = 0;
    Lsn last_insert_lsn;
  };
  Batch& batch_for(const TargetTable& table);
  // Appends column `column` of `count` entries as one text array parameter.
  void append_array(const std::string& arena, const std::vector<std::int64_t>& cells,
                    const std::vector<std::uint32_t>& lengths, std::size_t count, std::size_t width,
                    std::size_t column);

  Pipeline& pipeline_;
  const ApplierOptions& options_;
  ApplyCounters& counters_;

  std::unordered_map<RelationId, Batch> batches_;
  std::size_t rows_ = 0;
  std::size_t bytes_ = 0;
  // Sent batches whose results are not read yet: (key text per entry, commit lsn per entry).
  std::deque<std::vector<std::pair<std::string, Lsn>>> inflight_;
  std::string key_text_;
};

}  // namespace pgferry::replication::apply
