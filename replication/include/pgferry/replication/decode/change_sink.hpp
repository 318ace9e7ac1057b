// ChangeSink: what the transaction assembler hands on, and the applier consumes.
//
// The assembler guarantees, per call sequence:
//   begin_transaction, { relation | insert | update | delete_rows | truncate | message }*,
//   commit_transaction
// for committed transactions only, in source commit order; a streamed (in-progress)
// transaction is replayed from its spool at Stream Commit and never appears if it aborted.
//
// Streamed transactions applied as they stream (optional, begin_streamed): when a streamed
// transaction starts and no other is open, the assembler offers it to the sink. A sink that
// takes it returns a second sink that gets begin_transaction (final_lsn not known yet:
// invalid), its changes block by block as they arrive, and commit_transaction at Stream
// Commit. Meanwhile the first sink keeps getting the transactions that commit before it;
// streamed_segment() comes before each further block and before its commit, so the first
// sink can commit what it holds (nothing it applied may wait for the streamed one, or the
// other way round); streamed_committed() comes right after its commit. abort_streamed()
// ends it without a trace: the source aborted it, or a
// subtransaction of it aborted, in which case it is replayed from the spool at commit as
// usual (the spool always keeps it).
// Relation metadata is resolved through the relation cache before a change is handed on,
// so every change comes with the Relation that describes its tuple.
//
// The views in the pgoutput structs are valid only during the call.
#pragma once

#include <span>

#include "pgferry/replication/decode/pgoutput.hpp"
#include "pgferry/replication/decode/relation.hpp"

namespace pgferry::replication {

struct TransactionBegin {
  Xid xid;
  // LSN of the commit record (known up front for streamed ones replayed from the spool;
  // invalid for one applied as it streams).
  Lsn final_lsn;
  PgTimestamp commit_time;
  bool streamed = false;
};

struct TransactionCommit {
  Xid xid;
  Lsn commit_lsn;
  Lsn end_lsn;  // the position to store as applied and to confirm to the source
  PgTimestamp commit_time;
};

class ChangeSink {
 public:
  virtual ~ChangeSink() = default;

  virtual void begin_transaction(const TransactionBegin& begin) = 0;
  // A (new or changed) relation definition; comes before the first change that uses it.
  virtual void relation(const Relation& relation) = 0;
  virtual void insert(const Relation& relation, const pgoutput::Insert& insert) = 0;
  virtual void update(const Relation& relation, const pgoutput::Update& update) = 0;
  virtual void delete_rows(const Relation& relation, const pgoutput::Delete& del) = 0;
  virtual void truncate(std::span<const Relation* const> relations, std::uint8_t flags) = 0;
  virtual void message(const pgoutput::LogicalMessage& /*message*/) {}
  virtual void commit_transaction(const TransactionCommit& commit) = 0;

  // The walsender reports its WAL end with nothing pending for us (keepalive, or an
  // empty stretch of WAL): everything before `wal_end` that concerns us was delivered.
  // An idle sink may advance its confirmed position here (lag reaches zero at idle).
  virtual void idle(Lsn /*wal_end*/) {}

  // See the header comment; the default declines (streamed transactions are replayed).
  virtual ChangeSink* begin_streamed(const TransactionBegin& /*begin*/) { return nullptr; }
  virtual void streamed_segment() {}
  // After the second sink committed it.
  virtual void streamed_committed() {}
  virtual void abort_streamed() {}
};

}  // namespace pgferry::replication
