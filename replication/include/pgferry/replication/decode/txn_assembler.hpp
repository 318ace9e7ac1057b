// TransactionAssembler: turns the decoded pgoutput stream into the ChangeSink's call
// sequence (change_sink.hpp): committed transactions only, in source commit order, each
// change with its resolved Relation.
//
// NOTES
// - Non-streamed transactions reach us only after the server decoded their commit, so
//   they pass straight through: Begin → begin_transaction, changes, Commit →
//   commit_transaction. Nothing is buffered.
// - Streamed (in-progress) transactions arrive in Stream Start/Stop blocks, possibly
//   interleaved with other transactions, and may still abort: their raw change messages
//   go to a zstd spool (spool.hpp) and are decoded again and replayed at Stream Commit.
//   When one streams alone, the sink may apply it as it streams instead (begin_streamed in
//   change_sink.hpp); the spool keeps it all the same, for a subtransaction abort.
//   Relation messages inside a block belong to that transaction too (pgoutput tracks the
//   schema it sent per streamed transaction), so they are spooled and replayed as well.
// - Two-phase messages are refused: the stream is never started with two_phase, so one
//   arriving means a misconfigured slot, and applying a PREPARE as a commit would be wrong.
// - A change for a relation id never described, or whose tuple has a different number of
//   columns than its Relation, is a ProtocolError.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <vector>

#include "pgferry/replication/core/error.hpp"
#include "pgferry/replication/decode/change_sink.hpp"
#include "pgferry/replication/decode/decoder.hpp"
#include "pgferry/replication/decode/relation.hpp"
#include "pgferry/replication/decode/spool.hpp"

namespace pgferry::replication {

class TransactionAssembler {
 public:
  TransactionAssembler(ChangeSink& sink, std::filesystem::path spool_dir, int protocol_version,
                       DecoderOptions decoder_options = {});

  // One XLogData payload: decode and dispatch.
  void on_message(std::span<const std::byte> message);
  // A keepalive (or any sign that the server has nothing pending up to `wal_end`).
  void on_keepalive(Lsn wal_end);

  // Forgets all session state (open transaction, stream block, spools) for a new
  // replication session; the relation cache is kept (the server sends Relations again).
  void reset();

  // Inside a non-streamed transaction (between Begin and Commit).
  bool in_transaction() const { return open_.has_value(); }
  // Uncompressed bytes of the open streamed transactions held in the spool.
  std::uint64_t spooled_bytes() const { return spool_.spooled_bytes(); }
  // Compressed bytes of the same on disk.
  std::uint64_t spool_file_bytes() const { return spool_.file_bytes(); }
  std::size_t open_streamed_transactions() const { return spool_.open_count(); }
  // Totals since construction.
  std::uint64_t transactions() const { return transactions_; }
  std::uint64_t streamed_transactions() const { return streamed_transactions_; }
  // Of those, applied as they streamed (not replayed from the spool).
  std::uint64_t eager_transactions() const { return eager_transactions_; }
  std::uint64_t changes() const { return changes_; }

  const RelationCache& relations() const { return relations_; }
  const Decoder& decoder() const { return decoder_; }

 private:
  // Hands one change (decoded live or from a spool) to `sink`.
  void dispatch_change(ChangeSink& sink, RelationCache& relations, const pgoutput::Message& message,
                       char type);
  void replay_streamed(const pgoutput::StreamCommit& commit);
  void commit_eager(const pgoutput::StreamCommit& commit);
  // Ends the streamed transaction being applied as it streams, if any (it is replayed).
  void end_eager();
  // A lock timeout of the streamed transaction's sink: ends it (true); other errors: false.
  bool eager_lock_wait(const SqlError& error);
  const Relation& resolve(const RelationCache& relations, RelationId id, char type) const;
  void check_tuple(const Relation& relation, pgoutput::TupleView tuple, char type) const;

  struct OpenTransaction {
    Xid xid;
    Lsn final_lsn;
  };

  ChangeSink& sink_;
  Decoder decoder_;
  Decoder replay_decoder_;
  RelationCache relations_;
  Spool spool_;
  std::optional<OpenTransaction> open_;
  // The streamed transaction the sink applies as it streams (begin_streamed), if any, and
  // the relations its blocks describe (pgoutput sends them per streamed transaction).
  ChangeSink* eager_ = nullptr;
  Xid eager_xid_;
  RelationCache eager_relations_;
  std::vector<std::vector<std::byte>> eager_relation_bytes_;  // its Relation messages
  std::uint64_t eager_transactions_ = 0;
  std::vector<const Relation*> truncate_relations_;
  std::uint64_t transactions_ = 0;
  std::uint64_t streamed_transactions_ = 0;
  std::uint64_t changes_ = 0;
};

}  // namespace pgferry::replication
