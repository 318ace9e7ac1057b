// Transaction assembler: pass-through for plain transactions, spool-and-replay for
// streamed ones.
#include "pgferry/replication/decode/txn_assembler.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "pgferry/replication/core/error.hpp"

namespace pgferry::replication {

namespace pg = pgoutput;

namespace {

template <typename... Fs>
struct Overloaded : Fs... {
  using Fs::operator()...;
};
template <typename... Fs>
Overloaded(Fs...) -> Overloaded<Fs...>;

[[noreturn]] void protocol_error(char type, const std::string& what) {
  throw ProtocolError(fmt::format("pgoutput {} message: {}", pgoutput_message_name(type), what), 0,
                      type);
}

std::optional<Xid> change_xid(const pg::Message& message) {
  return std::visit(Overloaded{
                        [](const pg::RelationMessage& m) { return m.xid; },
                        [](const pg::TypeMessage& m) { return m.xid; },
                        [](const pg::Insert& m) { return m.xid; },
                        [](const pg::Update& m) { return m.xid; },
                        [](const pg::Delete& m) { return m.xid; },
                        [](const pg::Truncate& m) { return m.xid; },
                        [](const pg::LogicalMessage& m) { return m.xid; },
                        [](const auto&) { return std::optional<Xid>{}; },
                    },
                    message);
}

}  // namespace

TransactionAssembler::TransactionAssembler(ChangeSink& sink, std::filesystem::path spool_dir,
                                           int protocol_version, DecoderOptions decoder_options)
    : sink_(sink),
      decoder_(protocol_version, decoder_options),
      replay_decoder_(protocol_version, decoder_options),
      spool_(std::move(spool_dir)) {}

void TransactionAssembler::reset() {
  decoder_.reset();
  spool_.clear();
  open_.reset();
  end_eager();
}

void TransactionAssembler::end_eager() {
  if (eager_ == nullptr) return;
  eager_ = nullptr;
  sink_.abort_streamed();
}

void TransactionAssembler::on_keepalive(Lsn wal_end) {
  if (!open_) sink_.idle(wal_end);
}

const Relation& TransactionAssembler::resolve(const RelationCache& relations, RelationId id,
                                              char type) const {
  const Relation* relation = relations.find(id);
  if (relation == nullptr) {
    protocol_error(type,
                   fmt::format("unknown relation id {} (no Relation message before it)", id.value));
  }
  return *relation;
}

void TransactionAssembler::check_tuple(const Relation& relation, pg::TupleView tuple,
                                       char type) const {
  if (tuple.size() != relation.columns.size()) {
    protocol_error(type, fmt::format("tuple of {} columns for {} which has {}", tuple.size(),
                                     relation.qualified_name(), relation.columns.size()));
  }
}

void TransactionAssembler::on_message(std::span<const std::byte> bytes) {
  pg::Message message = decoder_.decode(bytes);
  char type = static_cast<char>(bytes[0]);

  // Inside a stream block every change goes to the spool of the block's transaction.
  if (auto stream_xid = decoder_.stream_xid();
      stream_xid && !std::holds_alternative<pg::StreamStart>(message)) {
    if (std::holds_alternative<pg::Origin>(message)) return;
    auto subxid = change_xid(message);
    if (!subxid) protocol_error(type, "unexpected inside a stream block");
    TransactionSpool* spool = spool_.find(*stream_xid);
    if (spool == nullptr) {
      protocol_error(type, fmt::format("no open streamed transaction {}", stream_xid->value));
    }
    spool->append(*subxid, bytes);
    if (eager_ != nullptr && *stream_xid == eager_xid_) {
      if (std::holds_alternative<pg::RelationMessage>(message)) {
        eager_relation_bytes_.emplace_back(bytes.begin(), bytes.end());
      }
      try {
        dispatch_change(*eager_, eager_relations_, message, type);
      } catch (const SqlError& e) {
        if (!eager_lock_wait(e)) throw;
      }
    }
    return;
  }

  std::visit(
      Overloaded{
          [&](const pg::Begin& begin) {
            if (open_) {
              protocol_error(type, fmt::format("Begin of xid {} while xid {} is open",
                                               begin.xid.value, open_->xid.value));
            }
            open_ = OpenTransaction{begin.xid, begin.final_lsn};
            sink_.begin_transaction({begin.xid, begin.final_lsn, begin.commit_time, false});
          },
          [&](const pg::Commit& commit) {
            if (!open_) protocol_error(type, "Commit without a Begin");
            // worker.c apply_handle_commit makes the same check.
            if (commit.commit_lsn != open_->final_lsn) {
              protocol_error(type, fmt::format("commit LSN {} differs from Begin's final LSN {}",
                                               commit.commit_lsn, open_->final_lsn));
            }
            Xid xid = open_->xid;
            open_.reset();
            ++transactions_;
            sink_.commit_transaction({xid, commit.commit_lsn, commit.end_lsn, commit.commit_time});
          },
          [&](const pg::Origin&) {},
          [&](const pg::TypeMessage&) {},
          [&](const pg::StreamStart& start) {
            if (start.first_segment) {
              spool_.open(start.xid);
              // The only one streaming: the sink may apply it as it streams.
              if (eager_ == nullptr && spool_.open_count() == 1) {
                eager_ = sink_.begin_streamed({start.xid, Lsn{}, PgTimestamp{}, true});
                eager_xid_ = start.xid;
                eager_relations_.clear();
                eager_relation_bytes_.clear();
              }
            } else if (spool_.find(start.xid) == nullptr) {
              protocol_error(type, fmt::format("a later segment of xid {} without its first one",
                                               start.xid.value));
            } else if (eager_ != nullptr && start.xid == eager_xid_) {
              sink_.streamed_segment();
            }
          },
          [&](const pg::StreamStop&) {},
          [&](const pg::StreamCommit& commit) {
            if (open_) protocol_error(type, "inside an open transaction");
            if (eager_ != nullptr && commit.xid == eager_xid_) {
              commit_eager(commit);
            } else {
              replay_streamed(commit);
            }
          },
          [&](const pg::StreamAbort& abort) {
            // A subtransaction's abort too: the spool replays what survives it.
            if (abort.xid == eager_xid_) end_eager();
            if (abort.subxid == abort.xid) {
              spool_.remove(abort.xid);
            } else if (TransactionSpool* spool = spool_.find(abort.xid)) {
              spool->abort_subtransaction(abort.subxid);
            }
          },
          [&](const pg::BeginPrepare&) {
            protocol_error(type,
                           "two-phase transactions are not supported; start the stream "
                           "without two_phase");
          },
          [&](const pg::Prepare&) {
            protocol_error(type,
                           "two-phase transactions are not supported; start the stream "
                           "without two_phase");
          },
          [&](const pg::CommitPrepared&) {
            protocol_error(type,
                           "two-phase transactions are not supported; start the stream "
                           "without two_phase");
          },
          [&](const pg::RollbackPrepared&) {
            protocol_error(type,
                           "two-phase transactions are not supported; start the stream "
                           "without two_phase");
          },
          [&](const pg::LogicalMessage& logical) {
            if (logical.transactional && !open_) {
              protocol_error(type, "a transactional message outside a transaction");
            }
            sink_.message(logical);
          },
          [&](const auto&) {
            if (!open_) protocol_error(type, "a change outside a transaction");
            dispatch_change(sink_, relations_, message, type);
          },
      },
      message);
}

void TransactionAssembler::dispatch_change(ChangeSink& sink, RelationCache& relations,
                                           const pg::Message& message, char type) {
  std::visit(
      Overloaded{
          [&](const pg::RelationMessage& relation) { sink.relation(relations.update(relation)); },
          [&](const pg::TypeMessage&) {},
          [&](const pg::Insert& insert) {
            const Relation& relation = resolve(relations, insert.relation, type);
            check_tuple(relation, insert.new_tuple, type);
            ++changes_;
            sink.insert(relation, insert);
          },
          [&](const pg::Update& update) {
            const Relation& relation = resolve(relations, update.relation, type);
            if (update.old_kind != 0) check_tuple(relation, update.old_tuple, type);
            check_tuple(relation, update.new_tuple, type);
            ++changes_;
            sink.update(relation, update);
          },
          [&](const pg::Delete& del) {
            const Relation& relation = resolve(relations, del.relation, type);
            check_tuple(relation, del.old_tuple, type);
            ++changes_;
            sink.delete_rows(relation, del);
          },
          [&](const pg::Truncate& truncate) {
            truncate_relations_.clear();
            for (RelationId id : truncate.relations) {
              truncate_relations_.push_back(&resolve(relations, id, type));
            }
            ++changes_;
            sink.truncate(truncate_relations_, truncate.flags);
          },
          [&](const pg::LogicalMessage& logical) { sink.message(logical); },
          [&](const auto&) { protocol_error(type, "not a change message"); },
      },
      message);
}

void TransactionAssembler::replay_streamed(const pg::StreamCommit& commit) {
  TransactionSpool* spool = spool_.find(commit.xid);
  if (spool == nullptr) {
    protocol_error(
        'c', fmt::format("Stream Commit of xid {} which was never streamed", commit.xid.value));
  }
  sink_.begin_transaction({commit.xid, commit.commit_lsn, commit.commit_time, true});
  spool->replay([&](std::span<const std::byte> bytes) {
    pg::Message change = replay_decoder_.decode_streamed_change(bytes);
    dispatch_change(sink_, relations_, change, static_cast<char>(bytes[0]));
  });
  ++transactions_;
  ++streamed_transactions_;
  // Copy what commit_transaction needs: the views of `commit` stay valid (they point
  // into the live message), but the spool goes away.
  TransactionCommit done{commit.xid, commit.commit_lsn, commit.end_lsn, commit.commit_time};
  spool_.remove(commit.xid);
  sink_.commit_transaction(done);
}

}  // namespace pgferry::replication

namespace pgferry::replication {

bool TransactionAssembler::eager_lock_wait(const SqlError& error) {
  if (error.sqlstate() != "55P03") return false;
  // The streamed transaction waited too long for a lock, most likely one the sink's other
  // connection holds: drop it (its target transaction rolls back) and replay it at commit.
  spdlog::warn(
      "streamed transaction xid={} waited for a lock while applied as it streams; it "
      "is applied at its commit instead: {}",
      eager_xid_.value, error.what());
  eager_ = nullptr;
  eager_relation_bytes_.clear();
  sink_.abort_streamed();
  return true;
}

void TransactionAssembler::commit_eager(const pg::StreamCommit& commit) {
  // Whatever committed before it on the source is committed on the target first.
  sink_.streamed_segment();
  ChangeSink* eager = eager_;
  eager_ = nullptr;
  TransactionCommit done{commit.xid, commit.commit_lsn, commit.end_lsn, commit.commit_time};
  try {
    eager->commit_transaction(done);
  } catch (const SqlError& e) {
    if (!eager_lock_wait(e)) throw;
    replay_streamed(commit);
    return;
  }
  ++transactions_;
  ++streamed_transactions_;
  ++eager_transactions_;
  spool_.remove(commit.xid);
  sink_.streamed_committed();
  // Once it committed, pgoutput counts the relations it described as sent for the
  // transactions that follow (pgoutput.c, cleanup_rel_sync_cache): they are ours now too.
  for (const auto& bytes : eager_relation_bytes_) {
    pg::Message relation = replay_decoder_.decode_streamed_change(bytes);
    dispatch_change(sink_, relations_, relation, 'R');
  }
  eager_relation_bytes_.clear();
}

}  // namespace pgferry::replication
