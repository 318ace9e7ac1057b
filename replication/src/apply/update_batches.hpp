// Set-based batches: key-preserving updates (any set of columns), deletes by key, and the
// inserts meanwhile, of batchable tables, kept per key within the group and sent as one
// statement per table and shape.
//
// NOTES
// - An UPDATE that keeps its key, on a batchable table (see target_tables.hpp: no triggers,
//   no rules, no foreign keys to or from it, no unique index but the primary key, no array
//   columns), is not sent: the group keeps, per key, the newest value of every column the
//   updates carried (unchanged TOAST, 'u', is not carried: the target keeps its value), and
//   sends one `UPDATE t SET <carried columns> FROM unnest($1::type[], ...)` per table and set
//   of carried columns before COMMIT (or earlier, before any change that is not an insert,
//   key-preserving update or delete by key of a batchable table: the applier decides when,
//   and sends its insert run first). A key updated twice with different column sets ends
//   with the union, newest values winning: the row the source left at the group's last
//   commit, as if each update had run.
// - A DELETE whose old key (or, under REPLICA IDENTITY FULL, the primary key in its old row)
//   is all values joins the batch: one `DELETE FROM t USING unnest(...)` per table. Per table
//   the statements go deletes, then inserts, then updates; so that this order is the
//   source's for every key, a delete drops the key's batched update (the row goes anyway),
//   and a delete of a key inserted or deleted in the batch is sent after the batch
//   (send_first): delete then re-insert is batched, insert then delete is not.
// - While changes are batched, inserts into batchable tables join the batch (one INSERT ...
//   SELECT FROM unnest per table) instead of a COPY, which would leave pipeline mode and
//   wait for every batch sent; a batch goes out at 256 kB (full()) so that the target
//   applies it while the next is received.
// - Nothing can observe the order of changes across such tables inside one target
//   transaction. Each update and delete statement must touch exactly one row per key; it
//   returns the keys it touched so that a missing one can be named (this part checks its own
//   results: a ResultCheck, once per batch).
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <unordered_set>
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
  // What add_delete() did.
  enum class Added : std::uint8_t {
    no,          // not batchable: send it as it is (after the batch)
    yes,         // batched; `bytes` set
    send_first,  // its key was inserted or deleted in the batch: send the batch, then call again
  };
  Added add_delete(const TargetTable& table, const pgoutput::Delete& del, Lsn commit_lsn,
                   std::size_t& bytes);
  // Batches an insert into the batchable `table`; returns the bytes it adds to the group.
  std::size_t add_insert(const TargetTable& table, pgoutput::TupleView tuple, Lsn commit_lsn);
  // Sends every batch (no COPY may be open).
  void send();

  void check(const Pending& pending, const Result& result) override;

 private:
  // Cells of a batch: per entry and column, the offset of its value in `arena`.
  static constexpr std::int64_t kNull = -1;
  static constexpr std::int64_t kNotCarried = -2;  // unchanged TOAST: the target keeps it

  // Values of one kind of change, `width` cells per entry.
  struct Cells {
    std::string arena;
    std::vector<std::int64_t> cells;       // offset in arena, kNull or kNotCarried
    std::vector<std::uint32_t> lengths;    // per cell
    std::vector<Lsn> commit_lsns;          // per entry: the last change's transaction
    std::vector<const std::string*> keys;  // per entry: its key (nullptr: dropped)
    std::size_t entries() const { return commit_lsns.size(); }
    // Adds an entry of `width` cells, all kNotCarried.
    std::size_t add_entry(std::size_t width, Lsn commit_lsn, const std::string* key);
    void set(std::size_t cell, const pgoutput::ColumnValue& value);
  };
  // Per relation: the newest values of each updated key, the deleted keys, the inserts.
  struct Batch {
    const TargetTable* table = nullptr;
    std::vector<int> columns;                              // row key columns, then the others
    std::unordered_map<std::string, std::size_t> updated;  // key values → entry of `updates`
    Cells updates;                                         // columns.size() cells per entry
    std::unordered_map<std::string, std::size_t> deleted;  // key values → entry of `deletes`
    Cells deletes;                                         // row key cells per entry
    std::unordered_set<std::string> inserted;              // key values of `inserts`
    Cells inserts;                                         // every column, source order
  };
  Batch& batch_for(const TargetTable& table);
  // key_text_ = the values of `table`'s row key in `tuple`, each NUL-terminated; false when
  // one is not a value.
  bool key_of(const TargetTable& table, pgoutput::TupleView tuple);
  // Appends column `column` of `entries` as one text array parameter.
  void append_array(const Cells& cells, std::size_t width, std::size_t column,
                    std::span<const std::size_t> entries);
  // Sends `statement` with params() for `entries` of `cells`, its result checked by check().
  void send_checked(const Statement& statement, Op op, const TargetTable& table, const Cells& cells,
                    std::span<const std::size_t> entries);
  void send_deletes(Batch& batch);
  void send_inserts(Batch& batch);
  void send_updates(Batch& batch);

  Pipeline& pipeline_;
  const ApplierOptions& options_;
  ApplyCounters& counters_;

  std::unordered_map<RelationId, Batch> batches_;
  std::size_t rows_ = 0;
  std::size_t bytes_ = 0;
  // A sent statement whose result is not read yet: the key text of each entry (key_of()'s,
  // one after the other, entry i ending at ends[i]) and its commit lsn, to name a missing
  // key. Recycled through `spare_`, so that sending costs no allocation per row.
  struct Sent {
    std::string keys;
    std::vector<std::uint32_t> ends;
    std::vector<Lsn> commit_lsns;
  };
  std::deque<Sent> inflight_;
  std::vector<Sent> spare_;
  std::string key_text_;
  std::string statement_key_;
  std::vector<std::size_t> entries_;
};

}  // namespace pgferry::replication::apply
