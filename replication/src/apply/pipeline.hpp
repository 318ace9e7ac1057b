// The applier's target connection in libpq pipeline mode: what every part of the applier
// sends through. Commands go out without waiting; each is recorded so that its result, read
// later, is checked and any failure named; prepared statements are cached here.
//
// NOTES
// - The connection stays in pipeline mode. Each command sent is recorded in `pending_` (what
//   it was, which source transaction, relation and key) so that its result, read later, can
//   be checked and any failure named. Results are read opportunistically and whenever the
//   backlog passes its bounds (after a flush request, since the server holds its output
//   until a Sync or Flush). A Sync is sent only when a target transaction commits, when a
//   COPY needs the pipeline empty (leave() / enter() around it), and for idle progress writes.
// - A single-row command (insert, update, delete) must affect exactly one row, a batched
//   insert its row count: checked here, inline, on every result. A command whose result needs
//   more (a coalesced update batch names a key it missed, the progress row must still exist)
//   carries a ResultCheck of the part that sent it, called once per such command, never per
//   row. The pipeline knows nothing else of the parts that use it.
// - Statements are prepared once per key (relation version, operation, column shape) and
//   kept; statement() is a template, so that finding a cached one builds no SQL and no
//   std::function per row.
// - The key text of each pending command lives in one arena, cleared whenever the backlog
//   is empty, so that recording a command costs no allocation once the arena has grown.
// - After any failure the pipeline is broken (broken()): the applier refuses further calls.
#pragma once

#include <libpq-fe.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <initializer_list>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "pgferry/replication/apply/applier.hpp"
#include "pgferry/replication/core/error.hpp"
#include "pgferry/replication/core/lsn.hpp"
#include "pgferry/replication/core/pg.hpp"
#include "pgferry/replication/decode/pgoutput.hpp"

namespace pgferry::replication::apply {

struct TargetTable;

enum class Op : std::uint8_t {
  begin,
  prepare,
  insert,
  update,
  batch_insert,
  batch_update,
  batch_delete,
  delete_,
  truncate,
  progress,
  commit,
  wal_position,
  query,
  sync,
};

std::string_view op_name(Op op);

// Key text shown in messages is cut at this length.
inline constexpr std::size_t kMaxKeyText = 200;

class ResultCheck;

// A command sent and not read yet.
struct Pending {
  Op op;
  std::uint32_t bytes;
  Lsn commit_lsn;
  const TargetTable* table;
  std::uint32_t key_offset;
  std::uint32_t key_length;
  std::uint32_t rows;  // rows the command must affect (insert, update, delete, batches)
  ResultCheck* check;
};

// What a command is: to check its result and to name it in an error.
struct Command {
  Op op;
  Lsn commit_lsn;  // of the source transaction it belongs to; invalid: none
  const TargetTable* table = nullptr;
  std::string_view key = {};  // "(columns)=(values)" of its row, if one
  std::uint32_t rows = 1;
  ResultCheck* check = nullptr;
};

// A part's check of a command's result beyond its status and row count; throws.
class ResultCheck {
 public:
  virtual void check(const Pending& pending, const Result& result) = 0;

 protected:
  ~ResultCheck() = default;
};

struct Statement {
  std::string name;
  int params = 0;
};

// Counters of the applier, shared by its parts; readable from another thread.
struct ApplyCounters {
  std::atomic<std::uint64_t> rows_inserted{0}, rows_updated{0}, rows_deleted{0},
      relations_truncated{0}, transactions_applied{0}, transactions_skipped{0}, groups_committed{0},
      copy_batches{0}, binary_copy_batches{0}, statements_sent{0};

  static void add(std::atomic<std::uint64_t>& counter, std::uint64_t delta) {
    counter.fetch_add(delta, std::memory_order_relaxed);
  }
  ApplierCounters snapshot() const;
  // Adds the difference between two snapshots of another applier.
  void add_difference(const ApplierCounters& now, const ApplierCounters& was);
};

// A parameter list in text format: values copied NUL-terminated into one arena, then
// pointed at (finish()). Reused from statement to statement.
class Params {
 public:
  void clear() {
    arena_.clear();
    offsets_.clear();
  }
  void add(const pgoutput::ColumnValue& value) {
    if (value.kind == pgoutput::ColumnKind::null) {
      offsets_.push_back(-1);
      return;
    }
    offsets_.push_back(static_cast<std::int64_t>(arena_.size()));
    arena_.append(value.data);
    arena_.push_back('\0');
  }
  void add(Param value) {
    if (!value) {
      offsets_.push_back(-1);
      return;
    }
    offsets_.push_back(static_cast<std::int64_t>(arena_.size()));
    arena_.append(*value);
    arena_.push_back('\0');
  }
  // A value the caller appends to the returned arena; end_value() terminates it.
  std::string& begin_value() {
    offsets_.push_back(static_cast<std::int64_t>(arena_.size()));
    return arena_;
  }
  void end_value() { arena_.push_back('\0'); }
  void finish() {
    values_.clear();
    for (auto offset : offsets_) values_.push_back(offset < 0 ? nullptr : arena_.data() + offset);
  }
  int count() const { return static_cast<int>(offsets_.size()); }
  std::size_t bytes() const { return arena_.size(); }
  const char* const* values() const { return values_.data(); }

 private:
  std::string arena_;
  std::vector<std::int64_t> offsets_;
  std::vector<const char*> values_;
};

class Pipeline {
 public:
  Pipeline(PGconn* conn, const ApplierOptions& options, ApplyCounters& counters)
      : conn_(conn), options_(options), counters_(counters) {}
  Pipeline(const Pipeline&) = delete;
  Pipeline& operator=(const Pipeline&) = delete;

  PGconn* native() const { return conn_; }
  // The scratch parameter list that send_prepared(statement, command) sends.
  Params& params() { return params_; }

  // Enters pipeline mode (at start, and after a COPY); leave() syncs, reads every result
  // and leaves it (for a COPY).
  void enter();
  void leave();

  // Sends `statement` with params() / with `values` (`bytes` of them).
  void send_prepared(const Statement& statement, const Command& command) {
    send_prepared(statement, params_.values(), params_.bytes(), command);
  }
  void send_prepared(const Statement& statement, const char* const* values, std::size_t bytes,
                     const Command& command) {
    if (PQsendQueryPrepared(conn_, statement.name.c_str(), statement.params, values, nullptr,
                            nullptr, 0) != 1) {
      fail_sending(command.op);
    }
    push(command, bytes);
    after_send();
  }
  // Sends a statement with its text (clobbers params()).
  void send_query(std::string_view sql, const Command& command,
                  std::initializer_list<Param> params = {});
  // The prepared statement of `key`, prepared (in the pipeline) from build_sql() if new.
  // The reference is valid until the next call.
  template <class BuildSql>
  const Statement& statement(std::string_view key, int params, BuildSql&& build_sql) {
    statement_key_.assign(key);
    auto it = statements_.find(statement_key_);
    if (it != statements_.end()) return it->second;
    return prepare(build_sql(), params);
  }

  // Reads and checks the oldest pending result (waits for it).
  Result read_next();
  // Reads what results have arrived, without waiting.
  void read_available();
  // Asks the server for its output (before waiting for a result).
  void request_flush();
  // Reads every pending result (after a flush request).
  void drain() {
    while (!pending_.empty()) read_next();
  }
  void sync_and_drain();
  // Sends a Sync and reads every result; returns that of the first command of `op` read.
  Result sync(Op op);
  // Sends one query and waits for its result (everything before it is read too).
  Result query(std::string_view sql, std::initializer_list<Param> params, Lsn commit_lsn);

  bool empty() const { return pending_.empty(); }
  std::string describe(const Pending& pending) const;

  bool broken() const { return broken_; }
  void set_broken() { broken_ = true; }
  // Marks the pipeline broken and throws the connection's error, saying what was done.
  [[noreturn]] void fail(std::string_view doing);

 private:
  void push(const Command& command, std::size_t bytes) {
    auto offset = static_cast<std::uint32_t>(key_arena_.size());
    key_arena_.append(command.key);
    auto weight = static_cast<std::uint32_t>(bytes + 32);
    pending_.push_back({command.op, weight, command.commit_lsn, command.table, offset,
                        static_cast<std::uint32_t>(command.key.size()), command.rows,
                        command.check});
    pending_bytes_ += weight;
    sent_since_read_ += weight;
    ApplyCounters::add(counters_.statements_sent, 1);
  }
  void after_send() {
    if (pending_bytes_ > options_.pipeline_max_bytes ||
        pending_.size() > options_.pipeline_max_commands) {
      drain_to(options_.pipeline_max_bytes / 2, options_.pipeline_max_commands / 2);
    } else if (sent_since_read_ > (64u << 10)) {
      read_available();
    }
  }
  void drain_to(std::size_t max_bytes, std::size_t max_commands);
  const Statement& prepare(const std::string& sql, int params);
  [[noreturn]] void fail_sending(Op op);
  [[noreturn]] void fail(const Pending& pending, const Result& result);
  [[noreturn]] void refuse_rows(const Pending& pending, long affected);

  PGconn* conn_;
  const ApplierOptions& options_;
  ApplyCounters& counters_;
  bool broken_ = false;

  std::deque<Pending> pending_;
  std::size_t pending_bytes_ = 0;
  std::size_t sent_since_read_ = 0;
  std::string key_arena_;
  Params params_;

  std::unordered_map<std::string, Statement> statements_;
  std::string statement_key_;
  std::uint64_t next_statement_ = 0;
};

}  // namespace pgferry::replication::apply
