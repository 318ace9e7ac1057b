// Updates and deletes sent one by one as pipelined prepared statements that find their row
// by the replica identity (every change the update batches do not take).
//
// NOTES
// - Updates SET only the columns the new tuple carries as values ('u', unchanged TOAST, is
//   never written) and find the row by the replica identity: the old key ('K'), the new
//   tuple's key columns (no old tuple), or for REPLICA IDENTITY FULL ('O') the target's
//   primary key when the source sends all of its columns, else every old column compared
//   through its text form, one row only (by ctid), as the server's apply worker does.
// - One statement per relation version, operation, match and column shape (which columns
//   are NULL or unchanged): NULLs in SET are parameters, NULLs in WHERE become IS NULL. The
//   key that finds a prepared one is built in a reused string, without formatting.
// - A table without columns (CREATE TABLE t ()) under REPLICA IDENTITY FULL: a delete
//   removes one row, an update replaces one row by an equal one, as the server's apply
//   worker does; either must find a row.
// - Each statement must affect exactly one row (checked by the pipeline); the key text sent
//   with it names the row if not.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "pgferry/replication/decode/pgoutput.hpp"
#include "pgferry/replication/decode/relation.hpp"
#include "pipeline.hpp"
#include "target_tables.hpp"

namespace pgferry::replication::apply {

class KeyedChanges {
 public:
  KeyedChanges(Pipeline& pipeline, ApplyCounters& counters)
      : pipeline_(pipeline), counters_(counters) {}

  // Sends the update (of the source transaction `commit_lsn`); returns its bytes.
  std::size_t update(const Relation& relation, const TargetTable& table,
                     const pgoutput::Update& update, Lsn commit_lsn);
  // Sends the delete; returns its bytes.
  std::size_t delete_row(const TargetTable& table, const pgoutput::Delete& del, Lsn commit_lsn);

 private:
  // How an UPDATE or DELETE finds its row.
  enum class Match : char { key = 'k', primary_key = 'p', full = 'f' };
  static Match choose_match(const TargetTable& table, char old_kind, pgoutput::TupleView old_tuple);
  // The columns that find the row (`what`: "UPDATE of", "DELETE from", to name a miss);
  // valid until the next call.
  const std::vector<int>& match_columns(const TargetTable& table, Match match,
                                        std::string_view what);
  static void append_where(std::string& sql, const TargetTable& table, Match match,
                           const std::vector<int>& columns, pgoutput::TupleView tuple,
                           int first_param);
  std::size_t update_empty_row(const TargetTable& table, Lsn commit_lsn);
  // key_text_ = "(a, b)=(1, x)" for `columns` of `tuple`.
  void format_key(const TargetTable& table, const std::vector<int>& columns,
                  pgoutput::TupleView tuple);

  Pipeline& pipeline_;
  ApplyCounters& counters_;
  std::string key_text_;
  // Scratch reused from row to row, so that finding a prepared statement allocates nothing.
  std::string statement_key_;
  std::vector<int> all_columns_;
  std::vector<int> set_;
};

}  // namespace pgferry::replication::apply
