// Applier: decoded source transactions → the target, through libpq pipeline mode and COPY.
//
// NOTES
// - Pipeline. The connection stays in pipeline mode. Each command sent is recorded in
//   `pending_` (what it was, which source transaction, relation and key) so that its result,
//   read later, can be checked and any failure named. Results are read opportunistically and
//   whenever the backlog passes its bounds (after a flush request, since the server holds its
//   output until a Sync or Flush). A Sync is sent only when a target transaction commits, when
//   a COPY needs the pipeline empty, and for idle progress writes.
// - COPY is not allowed in pipeline mode: once a run of inserts is long enough to be worth
//   it (copy_min_rows), the pipeline is synced, pipeline mode left and COPY started inside
//   the still open target transaction; every further row of the run is encoded straight into
//   COPY text and sent in 64 kB pieces as it arrives, so the target inserts while the source
//   still decodes and sends (the COPY ends, and pipeline mode resumes, at the first change
//   that is not an insert into the same relation, at copy_max_bytes, or at the group's
//   commit). During a COPY the connection is non-blocking: a target busy for a moment
//   leaves up to kCopyQueue bytes in libpq's buffer instead of stopping the stream at once.
//   Shorter runs go as pipelined prepared INSERTs. The first rows of a run are kept
//   in one arena (values NUL-terminated for libpq), so buffering a row costs no allocation
//   once the arena has grown; each row's key text is kept to name it in an error.
// - Grouping. A target transaction (BEGIN ... progress UPDATE, COMMIT) holds whole source
//   transactions only, so the target only ever shows states the source had at a commit, and
//   the progress row always describes exactly what is committed beside it. COMMIT is sent only
//   once every earlier result was read and checked (a zero-row UPDATE is no server error), so
//   a group costs two round trips, whatever the number of rows and source transactions in it.
// - Coalesced updates. An UPDATE that keeps its key and carries every column, on a table
//   with no triggers, no rules, no foreign keys to or from it, no unique index but the
//   primary key and no array columns ("batchable"), is not sent: the group keeps the last
//   new tuple per key, and sends one `UPDATE t SET ... FROM unnest($1::type[], ...)` per
//   table before COMMIT (or earlier, before any change that is not an insert into another
//   batchable table). While updates are batched, inserts into batchable tables join the
//   batch (one INSERT ... SELECT FROM unnest per table, sent before the table's updates)
//   instead of a COPY, which would leave pipeline mode and wait for every batch sent; a
//   batch goes out at 256 kB so that the target applies it while the next is received.
//   The row ends as the source left it at the group's last commit; nothing can observe the
//   order of changes across such tables inside one target transaction. The statement must
//   update exactly one row per key; it returns the keys it updated so that a missing one
//   can be named.
// - Exactly once. A source transaction whose commit record lies before the applied position
//   is skipped whole (decided at Begin from final_lsn, checked again at Commit with end_lsn).
// - Updates SET only the columns the new tuple carries as values ('u', unchanged TOAST, is
//   never written) and find the row by the replica identity: the old key ('K'), the new
//   tuple's key columns (no old tuple), or for REPLICA IDENTITY FULL ('O') the target's
//   primary key when the source sends all of its columns, else every old column compared
//   through its text form, one row only (by ctid), as the server's apply worker does.
// - synchronous_commit=off: a COMMIT returns before the target flushed it, so each commit is
//   followed by a query of the target's WAL insert and flush positions, and durable_lsn()
//   only moves past a group once the target flushed the WAL that holds it.
#include "pgferry/replication/apply/applier.hpp"

#include <fmt/format.h>
#include <poll.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <deque>
#include <functional>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "pgferry/replication/apply/copy_encoding.hpp"
#include "pgferry/replication/apply/progress.hpp"
#include "pgferry/replication/apply/target_triggers.hpp"
#include "pgferry/replication/core/table_scope.hpp"

namespace pgferry::replication {

namespace {

using Clock = std::chrono::steady_clock;
using pgoutput::ColumnKind;
using pgoutput::ColumnValue;
using pgoutput::TupleView;

enum class Op : std::uint8_t {
  begin,
  prepare,
  insert,
  update,
  batch_insert,
  batch_update,
  delete_,
  truncate,
  progress,
  commit,
  wal_position,
  query,
  sync,
};

std::string_view op_name(Op op) {
  switch (op) {
    case Op::begin:
      return "BEGIN";
    case Op::prepare:
      return "preparing a statement";
    case Op::insert:
      return "INSERT";
    case Op::update:
      return "UPDATE";
    case Op::batch_update:
      return "UPDATE (coalesced)";
    case Op::batch_insert:
      return "INSERT (batched)";
    case Op::delete_:
      return "DELETE";
    case Op::truncate:
      return "TRUNCATE";
    case Op::progress:
      return "updating the progress record";
    case Op::commit:
      return "COMMIT";
    case Op::wal_position:
      return "reading the target WAL position";
    case Op::query:
      return "reading the target catalog";
    case Op::sync:
      return "pipeline sync";
  }
  return "?";
}

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
  // No triggers, no foreign keys to or from it, no unique index but the primary key, no
  // array columns: its key-preserving updates may be coalesced and applied later in the
  // group (see NOTES).
  bool batchable = false;
};

struct Pending {
  Op op;
  std::uint32_t bytes;
  Lsn commit_lsn;
  const TargetTable* table;
  std::uint32_t key_offset;
  std::uint32_t key_length;
  std::uint32_t rows = 1;  // rows the command must affect (insert, update, delete)
};

struct Statement {
  std::string name;
  int params = 0;
};

// How an UPDATE or DELETE finds its row.
enum class Match : char { key = 'k', primary_key = 'p', full = 'f' };

constexpr std::size_t kMaxKeyText = 200;
// COPY data goes to the target in pieces of about this size, as rows arrive.
constexpr std::size_t kCopyChunk = 64u << 10;
// During a COPY the target connection is non-blocking, so that a target busy for a moment
// does not stop the stream at once: up to this much COPY data waits in libpq's buffer.
constexpr std::size_t kCopyQueue = 16u << 20;
// Batched changes are sent from this size on (or copy_max_bytes if lower): small enough
// that the target applies one batch while the next one is received.
constexpr std::size_t kBatchBytes = 256u << 10;

}  // namespace

struct Applier::Impl {
  Impl(Connection target, ApplierOptions opts);

  // --- pipeline ----------------------------------------------------------------------------
  void push(Op op, std::size_t bytes, const TargetTable* table = nullptr, std::string_view key = {},
            std::uint32_t rows = 1);
  void after_send();
  void send_prepared(const Statement& statement, Op op, const TargetTable* table,
                     std::string_view key, std::uint32_t rows = 1);
  void send_query(std::string_view sql, Op op, std::initializer_list<Param> params = {},
                  const TargetTable* table = nullptr);
  Result read_next();
  void read_available();
  void request_flush();
  void drain_to(std::size_t max_bytes, std::size_t max_commands);
  void sync_and_drain();
  Result pipeline_query(std::string_view sql, std::initializer_list<Param> params);
  [[noreturn]] void fail(const Pending& pending, const Result& result);
  std::string describe(const Pending& pending) const;

  // --- catalog and statements --------------------------------------------------------------
  const TargetTable& table_for(const Relation& relation);
  // Without the replica role: CheckFailed if user triggers or foreign-key actions of the
  // table would fire again for replicated changes (see target_triggers.hpp).
  void refuse_if_firing(const TargetTable& table);
  const Statement& statement(std::string_view sql_key, int params,
                             const std::function<std::string()>& build_sql);

  // --- groups ------------------------------------------------------------------------------
  void open_group();
  void commit_group();
  void write_progress(Lsn lsn, std::optional<PgTimestamp> commit_time, Op op);
  void refresh_durable(Lsn target_insert, Lsn target_flush);

  // --- rows --------------------------------------------------------------------------------
  void buffer_insert(const Relation& relation, const pgoutput::Insert& insert);
  void flush_insert_run();
  // Appends one row to copy_buffer_ in the run's format; false (nothing appended) when a
  // value does not go in binary.
  bool append_copy_row(const TargetTable& table, bool binary, TupleView tuple);
  void start_copy();
  void send_copy_buffer();
  void flush_copy_data();
  void end_copy();
  [[noreturn]] void fail_copy(const PGresult* result, std::string_view doing);
  // Appends "(col, ...)=(" for `columns` to key_scratch_.
  void append_key_names(const TargetTable& table, const std::vector<int>& columns);
  // key_scratch_ = "(key columns)=(values)" of row `row` of the insert run ("" without a key).
  void format_run_key(const TargetTable& table, std::size_t row);
  void apply_update(const Relation& relation, const pgoutput::Update& update);
  bool batch_update(const TargetTable& table, const pgoutput::Update& update);
  void flush_batches();
  void check_batch_result(const Pending& pending, const Result& result);
  void apply_delete(const Relation& relation, const pgoutput::Delete& del);
  void apply_empty_row_update(const TargetTable& table);
  Match choose_match(const TargetTable& table, char old_kind, TupleView old_tuple) const;
  std::vector<int> match_columns(const TargetTable& table, Match match, char old_kind) const;
  void check_tuple(const Relation& relation, TupleView tuple, std::string_view what) const;

  // Scratch parameter list: values copied NUL-terminated, then pointed at.
  void clear_params() {
    param_arena_.clear();
    param_offsets_.clear();
  }
  void add_param(const ColumnValue& value);
  void finish_params();
  // Appends "(a, b)=(1, x)" for `columns` of `tuple` to key_scratch_.
  void format_key(const TargetTable& table, const std::vector<int>& columns, TupleView tuple);

  void check_usable() const {
    if (broken_)
      throw Error("the applier stopped after an error; restart it from the progress record");
  }

  Connection conn_;
  PGconn* pg_;
  ApplierOptions options_;
  std::string replica_role_grant_;  // what allows the replica role (for error messages)
  bool async_commit_ = false;

  Lsn resume_lsn_;
  Lsn applied_lsn_;  // end of the last source transaction accepted (committed or in the group)
  std::atomic<std::uint64_t> durable_lsn_{0};
  bool broken_ = false;

  // Source transaction.
  bool in_source_txn_ = false;
  bool skipping_ = false;
  TransactionBegin current_;

  // Target transaction (group).
  bool group_open_ = false;
  Clock::time_point group_started_;
  std::size_t group_bytes_ = 0;
  std::size_t group_rows_ = 0;
  Lsn group_end_lsn_;
  PgTimestamp group_commit_time_;
  std::uint64_t group_transactions_ = 0;
  Clock::time_point last_idle_write_{};
  // The newest keepalive position not yet recorded because of the idle rate limit; tick()
  // records it once the interval has passed (the walsender may send no further keepalive).
  Lsn pending_idle_;

  // synchronous_commit=off: (target WAL position of a commit, source end_lsn it covers).
  std::deque<std::pair<Lsn, Lsn>> unflushed_;
  Lsn last_commit_end_;

  // Pipeline.
  std::deque<Pending> pending_;
  std::size_t pending_bytes_ = 0;
  std::size_t sent_since_read_ = 0;
  std::string key_arena_;
  std::string key_scratch_;

  std::unordered_map<RelationId, TargetTable> tables_;
  std::unordered_map<std::string, Statement> statements_;
  std::string statement_key_;
  std::uint64_t next_statement_ = 0;

  // The current run of inserts. Its first rows are buffered (values); once it is
  // copy_min_rows long a COPY starts and every further row is encoded straight into
  // copy_buffer_ and streamed to the target while the stream delivers the next ones.
  struct InsertRun {
    const TargetTable* table = nullptr;
    RelationId relation;
    std::uint64_t version = 0;
    std::size_t rows = 0;
    std::size_t columns = 0;
    bool copying = false;
    bool binary = false;                                    // the COPY is FORMAT binary
    std::size_t copy_bytes = 0;                             // COPY data of this run so far
    std::string values;                                     // NUL-terminated values
    std::vector<std::int64_t> cells;                        // offset into values; -1 is NULL
    std::vector<std::pair<std::size_t, Lsn>> transactions;  // (first row, commit lsn)
    std::string keys;                                       // key text of each row, for errors
    std::vector<std::uint32_t> key_ends;                    // end of each row's key in keys
    bool empty() const { return rows == 0; }
    void clear() {
      table = nullptr;
      rows = 0;
      copying = false;
      binary = false;
      copy_bytes = 0;
      values.clear();
      cells.clear();
      transactions.clear();
      keys.clear();
      key_ends.clear();
    }
    Lsn commit_lsn_of(std::size_t row) const {
      Lsn lsn;
      for (const auto& [first, commit] : transactions) {
        if (first > row) break;
        lsn = commit;
      }
      return lsn;
    }
    std::string_view key_of(std::size_t row) const {
      if (row >= key_ends.size()) return {};
      std::size_t begin = row == 0 ? 0 : key_ends[row - 1];
      return std::string_view(keys).substr(begin, key_ends[row] - begin);
    }
  } run_;
  std::string copy_buffer_;
  // COPY data handed to libpq (non-blocking during a COPY) that the socket did not take yet,
  // over-estimated: reset only once libpq reports everything sent.
  std::size_t copy_unflushed_ = 0;

  // Coalesced updates of batchable tables in the open group: per relation, the last new
  // tuple of each key. Sent as one UPDATE ... FROM unnest(arrays) per relation.
  struct UpdateBatch {
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
  UpdateBatch& batch_for(const TargetTable& table);
  void batch_insert(const TargetTable& table, TupleView tuple);
  std::unordered_map<RelationId, UpdateBatch> batches_;
  std::size_t batched_rows_ = 0;
  std::size_t batched_bytes_ = 0;
  // Sent batches whose results are not read yet: (key text per entry, commit lsn per entry).
  std::deque<std::vector<std::pair<std::string, Lsn>>> inflight_batches_;
  std::string key_text_;

  std::string param_arena_;
  std::vector<std::int64_t> param_offsets_;
  std::vector<const char*> param_values_;

  // The applier of a streamed transaction applied as it streams (begin_streamed); kept for
  // the next one after a commit, dropped (rolling back) on an abort.
  std::unique_ptr<Applier> streamed_;
  ApplierCounters streamed_folded_{};  // its counters already added to counters_
  std::atomic<std::uint64_t> streamed_durable_{0};
  bool lock_timeout_set_ = false;
  // SET (or with nullopt RESET) lock_timeout, at the session level, if not so already.
  void set_lock_timeout(std::optional<std::chrono::seconds> timeout);
  // Adds what the streamed applier committed since the last call to the counters and the
  // durable position.
  void fold_streamed();

  struct Counters {
    std::atomic<std::uint64_t> rows_inserted{0}, rows_updated{0}, rows_deleted{0},
        relations_truncated{0}, transactions_applied{0}, transactions_skipped{0},
        groups_committed{0}, copy_batches{0}, binary_copy_batches{0}, statements_sent{0};
  } counters_;
};

// ----------------------------------------------------------------------------------------------
// Set-up

Applier::Impl::Impl(Connection target, ApplierOptions opts)
    : conn_(std::move(target)), pg_(conn_.native()), options_(std::move(opts)) {
  static constexpr std::string_view kSyncModes[] = {"on", "remote_apply", "remote_write", "local",
                                                    "off"};
  if (std::find(std::begin(kSyncModes), std::end(kSyncModes), options_.synchronous_commit) ==
      std::end(kSyncModes)) {
    throw ConfigError(fmt::format(
        "--synchronous-commit: unknown value \"{}\"; use on, remote_apply, remote_write, local "
        "or off",
        options_.synchronous_commit));
  }
  if (options_.name.empty()) throw ConfigError("--name must not be empty");
  async_commit_ = options_.synchronous_commit == "off";
  options_.pipeline_max_commands = std::max<std::size_t>(options_.pipeline_max_commands, 2);
  options_.copy_min_rows = std::max<std::size_t>(options_.copy_min_rows, 1);

  conn_.exec(fmt::format("SET synchronous_commit = {}", quote_literal(options_.synchronous_commit)),
             "setting synchronous_commit");
  auto access = conn_.set_replica_role();
  replica_role_grant_ = access.grant_statement();
  if (access.allowed) {
    spdlog::debug("apply session_replication_role=replica");
  } else if (options_.take_lock) {
    spdlog::warn(
        "apply session_replication_role=origin: the target role may not set it, so target "
        "triggers and foreign-key actions fire for replicated changes{}",
        options_.allow_target_triggers ? " (accepted: --allow-target-triggers)"
                                       : "; a table with them is refused");
  }
  // One applier per name: a second one would apply every change twice.
  if (options_.take_lock) {
    conn_.exec(fmt::format("SET lock_timeout = '{}s'", options_.lock_timeout.count()));
    try {
      conn_.exec("SELECT pg_advisory_lock(hashtext('pgferry'), hashtext($1))", {options_.name},
                 "locking the progress record");
    } catch (const SqlError& e) {
      if (e.sqlstate() != "55P03") throw;
      throw Error(fmt::format(
          "another pgferry run is applying \"{}\" on the target (advisory lock held for {}s); "
          "stop it first, or use a different --name",
          options_.name, options_.lock_timeout.count()));
    }
    conn_.exec("RESET lock_timeout");
  } else {
    // The streamed applier: a lock it waits for this long is taken to be the first
    // applier's (see begin_streamed); the caller then replays the transaction instead.
    conn_.exec(fmt::format("SET lock_timeout = '{}s'", options_.lock_timeout.count()));
  }

  auto applied = ProgressStore(conn_).read(options_.name);
  if (!applied) {
    throw Error(fmt::format(
        "the target has no progress record \"{}\" in pgferry.progress: run `pgferry init` (with "
        "the same --name) first",
        options_.name));
  }
  resume_lsn_ = *applied;
  applied_lsn_ = *applied;
  // The streamed applier reports only what its own commits made durable: the row it read
  // may be the first applier's commit with synchronous_commit off, not flushed yet.
  durable_lsn_ = options_.take_lock ? applied->value() : 0;
  last_commit_end_ = *applied;

  if (PQenterPipelineMode(pg_) != 1) {
    throw_pg_error(pg_, nullptr, Side::target, "entering pipeline mode");
  }
}

// ----------------------------------------------------------------------------------------------
// Pipeline

void Applier::Impl::push(Op op, std::size_t bytes, const TargetTable* table, std::string_view key,
                         std::uint32_t rows) {
  auto offset = static_cast<std::uint32_t>(key_arena_.size());
  key_arena_.append(key);
  pending_.push_back({op, static_cast<std::uint32_t>(bytes + 32), current_.final_lsn, table, offset,
                      static_cast<std::uint32_t>(key.size()), rows});
  pending_bytes_ += bytes + 32;
  sent_since_read_ += bytes + 32;
  counters_.statements_sent.fetch_add(1, std::memory_order_relaxed);
}

void Applier::Impl::after_send() {
  if (pending_bytes_ > options_.pipeline_max_bytes ||
      pending_.size() > options_.pipeline_max_commands) {
    drain_to(options_.pipeline_max_bytes / 2, options_.pipeline_max_commands / 2);
  } else if (sent_since_read_ > (64u << 10)) {
    read_available();
  }
}

void Applier::Impl::send_prepared(const Statement& statement, Op op, const TargetTable* table,
                                  std::string_view key, std::uint32_t rows) {
  std::size_t bytes = param_arena_.size();
  if (PQsendQueryPrepared(pg_, statement.name.c_str(), statement.params, param_values_.data(),
                          nullptr, nullptr, 0) != 1) {
    broken_ = true;
    throw_pg_error(pg_, nullptr, Side::target, fmt::format("sending {}", op_name(op)));
  }
  push(op, bytes, table, key, rows);
  after_send();
}

void Applier::Impl::send_query(std::string_view sql, Op op, std::initializer_list<Param> params,
                               const TargetTable* table) {
  clear_params();
  for (const auto& param : params) {
    if (!param) {
      param_offsets_.push_back(-1);
    } else {
      param_offsets_.push_back(static_cast<std::int64_t>(param_arena_.size()));
      param_arena_.append(*param);
      param_arena_.push_back('\0');
    }
  }
  finish_params();
  std::string text(sql);
  if (PQsendQueryParams(pg_, text.c_str(), static_cast<int>(param_values_.size()), nullptr,
                        param_values_.data(), nullptr, nullptr, 0) != 1) {
    broken_ = true;
    throw_pg_error(pg_, nullptr, Side::target, fmt::format("sending {}", op_name(op)));
  }
  push(op, text.size() + param_arena_.size(), table);
  after_send();
}

std::string Applier::Impl::describe(const Pending& pending) const {
  std::string text = std::string(op_name(pending.op));
  if (pending.table) text += fmt::format(" rel={}", pending.table->display);
  if (pending.key_length > 0) {
    text += fmt::format(
        " key {}", std::string_view(key_arena_).substr(pending.key_offset, pending.key_length));
  }
  if (pending.commit_lsn.is_valid()) {
    text += fmt::format(" in source transaction commit_lsn={}", pending.commit_lsn);
  }
  return text;
}

void Applier::Impl::fail(const Pending& pending, const Result& result) {
  broken_ = true;
  throw_pg_error(pg_, result.native(), Side::target, fmt::format("applying {}", describe(pending)));
}

Result Applier::Impl::read_next() {
  if (pending_.empty()) throw Error("applier: reading a result with nothing pending");
  Pending pending = pending_.front();
  PGresult* raw = PQgetResult(pg_);
  if (!raw) {
    broken_ = true;
    if (PQstatus(pg_) == CONNECTION_BAD) {
      throw_pg_error(pg_, nullptr, Side::target,
                     fmt::format("reading the result of {}", describe(pending)));
    }
    throw Error(fmt::format("target: no result for {} (pipeline out of step)", describe(pending)));
  }
  Result result(raw);
  pending_.pop_front();
  pending_bytes_ -= pending.bytes;
  if (pending_.empty()) key_arena_.clear();

  if (pending.op == Op::sync) {
    if (result.status() != PGRES_PIPELINE_SYNC) fail(pending, result);
    return result;
  }
  // Each command's results end with a NULL.
  if (PGresult* extra = PQgetResult(pg_)) {
    PQclear(extra);
    broken_ = true;
    throw Error(fmt::format("target: more than one result for {}", describe(pending)));
  }
  auto status = result.status();
  if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) fail(pending, result);

  if (pending.op == Op::batch_update) {
    check_batch_result(pending, result);
  } else if (pending.op == Op::batch_insert) {
    if (result.affected_rows() != static_cast<long>(pending.rows)) {
      broken_ = true;
      throw Error(fmt::format("target: {} wrote {} rows instead of {}", describe(pending),
                              result.affected_rows(), pending.rows));
    }
  } else if (pending.op == Op::insert || pending.op == Op::update || pending.op == Op::delete_) {
    long affected = result.affected_rows();
    if (affected != 1) {
      broken_ = true;
      throw Error(fmt::format(
          "target: {} affected {} rows instead of 1: the target no longer holds the row the "
          "source changed (a write on the target, or a table copied without its rows); repair "
          "the row or re-copy the table, then restart",
          describe(pending), affected));
    }
  } else if (pending.op == Op::progress && result.affected_rows() != 1) {
    broken_ = true;
    throw Error(fmt::format(
        "target: the progress record \"{}\" disappeared from pgferry.progress while applying; "
        "run `pgferry init --no-data` again and check who deletes it",
        options_.name));
  }
  return result;
}

void Applier::Impl::read_available() {
  sent_since_read_ = 0;
  if (PQflush(pg_) < 0 || PQconsumeInput(pg_) != 1) {
    broken_ = true;
    throw_pg_error(pg_, nullptr, Side::target, "reading pipelined results");
  }
  while (!pending_.empty() && pending_.front().op != Op::sync && PQisBusy(pg_) == 0) {
    read_next();
  }
}

void Applier::Impl::request_flush() {
  // The server holds its output until a Sync or a Flush: ask for it before waiting.
  if (pending_.back().op != Op::sync && PQsendFlushRequest(pg_) != 1) {
    broken_ = true;
    throw_pg_error(pg_, nullptr, Side::target, "sending a flush request");
  }
  if (PQflush(pg_) != 0) {
    broken_ = true;
    throw_pg_error(pg_, nullptr, Side::target, "flushing the pipeline");
  }
}

void Applier::Impl::drain_to(std::size_t max_bytes, std::size_t max_commands) {
  if (pending_.empty()) return;
  request_flush();
  while (!pending_.empty() && (pending_bytes_ > max_bytes || pending_.size() > max_commands)) {
    read_next();
  }
  sent_since_read_ = 0;
}

void Applier::Impl::sync_and_drain() {
  if (PQpipelineSync(pg_) != 1) {
    broken_ = true;
    throw_pg_error(pg_, nullptr, Side::target, "sending a pipeline sync");
  }
  push(Op::sync, 0);
  while (!pending_.empty()) read_next();
  sent_since_read_ = 0;
}

Result Applier::Impl::pipeline_query(std::string_view sql, std::initializer_list<Param> params) {
  send_query(sql, Op::query, params);
  request_flush();
  while (pending_.size() > 1) read_next();
  return read_next();
}

// ----------------------------------------------------------------------------------------------
// Catalog and statements

const TargetTable& Applier::Impl::table_for(const Relation& relation) {
  auto it = tables_.find(relation.id);
  if (it != tables_.end() && it->second.version == relation.version) return it->second;

  TargetTable table;
  table.id = relation.id;
  table.version = relation.version;
  table.qualified = relation.qualified_name();
  std::string schema = relation.nspname.empty() ? "pg_catalog" : relation.nspname;
  table.display = fmt::format("{}.{}", schema, relation.relname);

  auto result = pipeline_query(
      "SELECT r.oid IS NOT NULL, a.attname, format_type(a.atttypid, a.atttypmod), "
      "coalesce(a.attnum = ANY (i.indkey), false), a.atttypid "
      "FROM (SELECT to_regclass($1)::oid AS oid) r "
      "LEFT JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped "
      "LEFT JOIN pg_index i ON i.indrelid = r.oid AND i.indisprimary",
      {table.qualified});
  if (result.rows() == 0 || result.get(0, 0) != "t") {
    broken_ = true;
    throw Error(fmt::format(
        "the target has no table {}, which the source publishes (source transaction "
        "commit_lsn={}): create it on the target (pgferry init --schema copies the schema), or "
        "remove it from the publication",
        table.display, current_.final_lsn));
  }
  if (!conn_.replica_role() && !options_.allow_target_triggers) refuse_if_firing(table);
  std::unordered_map<std::string_view, int> target_columns;
  std::vector<std::string_view> target_primary_key;
  for (int row = 0; row < result.rows(); ++row) {
    if (result.is_null(row, 1)) continue;
    target_columns.emplace(result.get(row, 1), row);
    if (result.get(row, 3) == "t") target_primary_key.push_back(result.get(row, 1));
  }
  for (std::size_t i = 0; i < relation.columns.size(); ++i) {
    const auto& column = relation.columns[i];
    auto found = target_columns.find(column.name);
    if (found == target_columns.end()) {
      broken_ = true;
      throw Error(fmt::format(
          "the target table {} has no column \"{}\" ({}.{}), which the source sends (source "
          "transaction commit_lsn={}): add the "
          "column on the target (ALTER TABLE {} ADD COLUMN {} <type as on the source>), then "
          "restart",
          table.display, column.name, table.display, column.name, current_.final_lsn,
          table.qualified, quote_ident(column.name)));
    }
    table.columns.push_back(quote_ident(column.name));
    table.types.emplace_back(result.get(found->second, 2));
    std::uint32_t type_oid = 0;
    auto oid_text = result.get(found->second, 4);
    std::from_chars(oid_text.data(), oid_text.data() + oid_text.size(), type_oid);
    // Binary only when the source sends the same type: its text output is what the
    // encoder parses.
    table.binary.push_back(type_oid == column.type_oid.value ? binary_type_for(type_oid)
                                                             : BinaryType::none);
    if (column.is_key) table.key.push_back(static_cast<int>(i));
  }
  table.binary_copy = std::none_of(table.binary.begin(), table.binary.end(),
                                   [](BinaryType t) { return t == BinaryType::none; });
  for (auto name : target_primary_key) {
    auto source = std::find_if(relation.columns.begin(), relation.columns.end(),
                               [&](const auto& column) { return column.name == name; });
    if (source == relation.columns.end()) {
      table.primary_key.clear();
      break;
    }
    table.primary_key.push_back(static_cast<int>(source - relation.columns.begin()));
  }
  if (!table.key.empty()) {
    auto plain = pipeline_query(
        "SELECT NOT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = r.oid AND NOT tgisinternal) "
        "AND NOT EXISTS (SELECT FROM pg_constraint WHERE contype = 'f' AND (conrelid = r.oid OR "
        "confrelid = r.oid)) "
        "AND NOT EXISTS (SELECT FROM pg_index WHERE indrelid = r.oid AND (indisunique OR "
        "indisexclusion) AND NOT indisprimary) "
        "AND NOT EXISTS (SELECT FROM pg_rules WHERE schemaname = n.nspname AND tablename = "
        "c.relname) "
        // Batches travel as one text array per column: a type whose array elements are not
        // comma-separated (box uses ';') or a composite (unnest would expand its fields)
        // cannot, directly or through a domain.
        "AND NOT EXISTS (SELECT FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
        "LEFT JOIN pg_type b ON b.oid = t.typbasetype WHERE a.attrelid = r.oid AND a.attnum > 0 "
        "AND NOT a.attisdropped AND (t.typdelim <> ',' OR t.typtype = 'c' OR b.typdelim <> ',' "
        "OR b.typtype = 'c')) "
        "FROM (SELECT to_regclass($1)::oid AS oid) r JOIN pg_class c ON c.oid = r.oid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace",
        {table.qualified});
    table.batchable = plain.rows() == 1 && plain.get(0, 0) == "t";
    for (const auto& type : table.types) {
      if (type.ends_with("]")) table.batchable = false;
    }
  }
  spdlog::debug("target table {} mapped: {} columns, rel={} version={} batchable={}", table.display,
                table.columns.size(), relation.id.value, relation.version, table.batchable);
  auto& slot = tables_[relation.id];
  slot = std::move(table);
  return slot;
}

void Applier::Impl::refuse_if_firing(const TargetTable& table) {
  auto result = pipeline_query(kTargetFiringSql, {sql_array_literal({table.qualified})});
  if (result.rows() == 0) return;
  TargetFiring firing{std::string(result.get(0, 1)), std::string(result.get(0, 2)),
                      std::string(result.get(0, 3))};
  if (!firing.fires_again()) return;
  broken_ = true;
  throw CheckFailed(fmt::format(
      "target table {} has {}, which would fire again for the changes replicated from the "
      "source (the source sends their effects too), because the target role may not set "
      "session_replication_role = replica; fix: {}",
      table.display, firing.describe(), target_firing_fix(replica_role_grant_)));
}

const Statement& Applier::Impl::statement(std::string_view sql_key, int params,
                                          const std::function<std::string()>& build_sql) {
  statement_key_.assign(sql_key);
  auto it = statements_.find(statement_key_);
  if (it != statements_.end()) return it->second;
  Statement prepared{fmt::format("pgferry_{}", next_statement_++), params};
  std::string sql = build_sql();
  if (PQsendPrepare(pg_, prepared.name.c_str(), sql.c_str(), params, nullptr) != 1) {
    broken_ = true;
    throw_pg_error(pg_, nullptr, Side::target, "preparing a statement");
  }
  push(Op::prepare, sql.size());
  spdlog::debug("prepared {}: {}", prepared.name, sql);
  return statements_.emplace(statement_key_, std::move(prepared)).first->second;
}

// ----------------------------------------------------------------------------------------------
// Groups

void Applier::Impl::open_group() {
  send_query("BEGIN", Op::begin);
  group_open_ = true;
  group_started_ = Clock::now();
  group_bytes_ = 0;
  group_rows_ = 0;
  group_transactions_ = 0;
}

void Applier::Impl::write_progress(Lsn lsn, std::optional<PgTimestamp> commit_time, Op op) {
  std::string lsn_text = lsn.to_string();
  std::string micros;
  if (commit_time) micros = fmt::format("{}", to_pg_timestamp(*commit_time));
  send_query(ProgressStore::kUpdateSql, op,
             {options_.name, lsn_text, commit_time ? Param(micros) : Param(std::nullopt)});
}

void Applier::Impl::refresh_durable(Lsn target_insert, Lsn target_flush) {
  if (target_insert.is_valid()) unflushed_.emplace_back(target_insert, last_commit_end_);
  while (!unflushed_.empty() && unflushed_.front().first <= target_flush) {
    durable_lsn_.store(std::max(durable_lsn_.load(), unflushed_.front().second.value()));
    unflushed_.pop_front();
  }
}

void Applier::Impl::commit_group() {
  flush_batches();
  write_progress(group_end_lsn_, group_commit_time_, Op::progress);
  // Every result must be checked before COMMIT is sent: an UPDATE that matched no row is no
  // error to the server, and a COMMIT already in the pipeline would make it permanent.
  request_flush();
  while (!pending_.empty()) read_next();
  send_query("COMMIT", Op::commit);
  if (async_commit_) {
    send_query("SELECT pg_current_wal_insert_lsn()::text, pg_current_wal_flush_lsn()::text",
               Op::wal_position);
  }
  if (PQpipelineSync(pg_) != 1) {
    broken_ = true;
    throw_pg_error(pg_, nullptr, Side::target, "sending a pipeline sync");
  }
  push(Op::sync, 0);
  Result position;
  while (!pending_.empty()) {
    bool is_position = pending_.front().op == Op::wal_position;
    Result result = read_next();
    if (is_position) position = std::move(result);
  }
  sent_since_read_ = 0;
  group_open_ = false;
  last_commit_end_ = group_end_lsn_;
  if (async_commit_) {
    refresh_durable(Lsn::from_string(position.get(0, 0), "pg_current_wal_insert_lsn"),
                    Lsn::from_string(position.get(0, 1), "pg_current_wal_flush_lsn"));
  } else {
    durable_lsn_.store(group_end_lsn_.value());
  }
  counters_.groups_committed.fetch_add(1, std::memory_order_relaxed);
  spdlog::debug("committed group lsn={} transactions={} rows={} bytes={}", group_end_lsn_,
                group_transactions_, group_rows_, group_bytes_);
}

// ----------------------------------------------------------------------------------------------
// Rows

void Applier::Impl::check_tuple(const Relation& relation, TupleView tuple,
                                std::string_view what) const {
  if (tuple.size() != relation.columns.size()) {
    throw ProtocolError(
        fmt::format("{} for {} carries {} columns, its Relation message {}", what,
                    relation.qualified_name(), tuple.size(), relation.columns.size()),
        0, 'R');
  }
  for (std::size_t i = 0; i < tuple.size(); ++i) {
    if (tuple[i].kind == ColumnKind::binary) {
      throw Error(fmt::format(
          "{} for {} carries column \"{}\" in binary format; the applier takes text only: start "
          "the stream without the binary option",
          what, relation.qualified_name(), relation.columns[i].name));
    }
  }
}

void Applier::Impl::add_param(const ColumnValue& value) {
  if (value.kind == ColumnKind::null) {
    param_offsets_.push_back(-1);
    return;
  }
  param_offsets_.push_back(static_cast<std::int64_t>(param_arena_.size()));
  param_arena_.append(value.data);
  param_arena_.push_back('\0');
}

void Applier::Impl::finish_params() {
  param_values_.clear();
  for (auto offset : param_offsets_) {
    param_values_.push_back(offset < 0 ? nullptr : param_arena_.data() + offset);
  }
}

void Applier::Impl::append_key_names(const TargetTable& table, const std::vector<int>& columns) {
  key_scratch_ += '(';
  for (std::size_t i = 0; i < columns.size(); ++i) {
    if (i) key_scratch_ += ", ";
    key_scratch_ += table.columns[static_cast<std::size_t>(columns[i])];
  }
  key_scratch_ += ")=(";
}

void Applier::Impl::format_run_key(const TargetTable& table, std::size_t row) {
  key_scratch_.clear();
  if (table.key.empty()) return;
  append_key_names(table, table.key);
  key_scratch_ += run_.key_of(row);
  key_scratch_ += ')';
}

void Applier::Impl::format_key(const TargetTable& table, const std::vector<int>& columns,
                               TupleView tuple) {
  key_scratch_.clear();
  append_key_names(table, columns);
  for (std::size_t i = 0; i < columns.size(); ++i) {
    if (i) key_scratch_ += ", ";
    const auto& value = tuple[static_cast<std::size_t>(columns[i])];
    if (value.kind == ColumnKind::null) {
      key_scratch_ += "NULL";
    } else if (value.data.size() > kMaxKeyText) {
      key_scratch_.append(value.data.substr(0, kMaxKeyText));
      key_scratch_ += "...";
    } else {
      key_scratch_.append(value.data);
    }
  }
  key_scratch_ += ')';
}

void Applier::Impl::buffer_insert(const Relation& relation, const pgoutput::Insert& insert) {
  check_tuple(relation, insert.new_tuple, "INSERT");
  if (!run_.empty() && (run_.relation != relation.id || run_.version != relation.version)) {
    flush_insert_run();
  }
  const TargetTable& table = table_for(relation);
  // While updates are being batched, inserts into batchable tables join them (a COPY would
  // leave pipeline mode and wait for every batch sent).
  if (batched_rows_ > 0 && table.batchable) {
    if (!run_.empty() && run_.relation == relation.id) flush_insert_run();
    batch_insert(table, insert.new_tuple);
    return;
  }
  if (batched_rows_ > 0) flush_batches();
  if (run_.empty()) {
    run_.table = &table;
    run_.relation = relation.id;
    run_.version = relation.version;
    run_.columns = relation.columns.size();
  }
  for (std::size_t i = 0; i < insert.new_tuple.size(); ++i) {
    auto kind = insert.new_tuple[i].kind;
    if (kind != ColumnKind::null && kind != ColumnKind::text) {
      throw ProtocolError(
          fmt::format("INSERT into {} has an unchanged-TOAST or binary column \"{}\"",
                      table.display, relation.columns[i].name),
          0, 'I');
    }
  }
  std::size_t copy_before = copy_buffer_.size();
  if (run_.copying && !append_copy_row(table, run_.binary, insert.new_tuple)) {
    // A value the binary encoder does not take: this table goes as text from now on.
    copy_buffer_.resize(copy_before);
    table.binary_copy = false;
    flush_insert_run();
    buffer_insert(relation, insert);
    return;
  }
  if (run_.transactions.empty() || run_.transactions.back().second != current_.final_lsn) {
    run_.transactions.emplace_back(run_.rows, current_.final_lsn);
  }
  // The key text, for naming the row if the target refuses it.
  for (std::size_t i = 0; i < table.key.size(); ++i) {
    if (i) run_.keys += ", ";
    const auto& value = insert.new_tuple[static_cast<std::size_t>(table.key[i])];
    if (value.kind == ColumnKind::null) {
      run_.keys += "NULL";
    } else {
      run_.keys.append(value.data.substr(0, kMaxKeyText));
    }
  }
  run_.key_ends.push_back(static_cast<std::uint32_t>(run_.keys.size()));

  std::size_t bytes = 0;
  if (run_.copying) {
    bytes = copy_buffer_.size() - copy_before;
    run_.copy_bytes += bytes;
  } else {
    std::size_t before = run_.values.size();
    for (std::size_t i = 0; i < insert.new_tuple.size(); ++i) {
      const auto& value = insert.new_tuple[i];
      if (value.kind == ColumnKind::null) {
        run_.cells.push_back(-1);
      } else {
        run_.cells.push_back(static_cast<std::int64_t>(run_.values.size()));
        run_.values.append(value.data);
        run_.values.push_back('\0');
      }
    }
    bytes = run_.values.size() - before;
  }
  ++run_.rows;
  ++group_rows_;
  group_bytes_ += bytes;
  // A table without columns has no COPY column list to name (COPY would expect the
  // target's columns): its rows go as INSERT ... DEFAULT VALUES.
  if (!run_.copying && run_.rows >= options_.copy_min_rows && run_.columns > 0) start_copy();
  if (run_.copying && copy_buffer_.size() >= kCopyChunk) send_copy_buffer();
  if (run_.copy_bytes >= options_.copy_max_bytes) flush_insert_run();
}

void Applier::Impl::flush_insert_run() {
  if (run_.empty()) return;
  if (run_.copying) {
    end_copy();
  } else {
    const TargetTable& table = *run_.table;
    statement_key_.clear();
    std::string key = fmt::format("I/{}/{}", table.id.value, table.version);
    const auto& prepared = statement(key, static_cast<int>(run_.columns), [&] {
      // CREATE TABLE t (): every row is the same empty row, as the server's apply worker
      // inserts it (every target column gets its default).
      if (table.columns.empty())
        return fmt::format("INSERT INTO {} DEFAULT VALUES", table.qualified);
      std::string sql = fmt::format("INSERT INTO {} (", table.qualified);
      for (std::size_t i = 0; i < table.columns.size(); ++i) {
        if (i) sql += ", ";
        sql += table.columns[i];
      }
      sql += ") OVERRIDING SYSTEM VALUE VALUES (";
      for (std::size_t i = 0; i < table.columns.size(); ++i) {
        if (i) sql += ", ";
        sql += fmt::format("${}", i + 1);
      }
      sql += ')';
      return sql;
    });
    Statement insert_statement = prepared;  // the map may rehash while sending
    for (std::size_t row = 0; row < run_.rows; ++row) {
      param_values_.clear();
      std::size_t bytes = 0;
      for (std::size_t column = 0; column < run_.columns; ++column) {
        auto offset = run_.cells[row * run_.columns + column];
        const char* value = offset < 0 ? nullptr : run_.values.data() + offset;
        param_values_.push_back(value);
        if (value) bytes += std::char_traits<char>::length(value);
      }
      // Key text for messages: the source key columns.
      format_run_key(table, row);
      if (PQsendQueryPrepared(pg_, insert_statement.name.c_str(), insert_statement.params,
                              param_values_.data(), nullptr, nullptr, 0) != 1) {
        broken_ = true;
        throw_pg_error(pg_, nullptr, Side::target, "sending INSERT");
      }
      Lsn saved = current_.final_lsn;
      current_.final_lsn = run_.commit_lsn_of(row);
      push(Op::insert, bytes, &table, key_scratch_);
      current_.final_lsn = saved;
      after_send();
    }
  }
  counters_.rows_inserted.fetch_add(run_.rows, std::memory_order_relaxed);
  run_.clear();
}

void Applier::Impl::fail_copy(const PGresult* result, std::string_view doing) {
  broken_ = true;
  const TargetTable& table = *run_.table;
  std::string where =
      fmt::format("{} rel={} ({} rows, source commit_lsn={}..{})", doing, table.display, run_.rows,
                  run_.transactions.front().second, run_.transactions.back().second);
  // The server names the failing row as "COPY t, line N": name its transaction and key.
  if (result) {
    if (const char* context = PQresultErrorField(result, PG_DIAG_CONTEXT)) {
      std::string_view text(context);
      auto at = text.find(", line ");
      std::size_t line = 0;
      if (at != std::string_view::npos) {
        auto digits = text.substr(at + 7);
        std::from_chars(digits.data(), digits.data() + digits.size(), line);
      }
      if (line >= 1 && line <= run_.rows) {
        std::size_t row = line - 1;
        format_run_key(table, row);
        where =
            fmt::format("COPY rel={}{}{} in source transaction commit_lsn={}", table.display,
                        key_scratch_.empty() ? "" : " key ", key_scratch_, run_.commit_lsn_of(row));
      }
    }
  }
  throw_pg_error(pg_, result, Side::target, where);
}

bool Applier::Impl::append_copy_row(const TargetTable& table, bool binary, TupleView tuple) {
  if (binary) {
    std::size_t before = copy_buffer_.size();
    append_binary_tuple_start(copy_buffer_, static_cast<std::uint16_t>(tuple.size()));
    for (std::size_t i = 0; i < tuple.size(); ++i) {
      const auto& value = tuple[i];
      if (value.kind == ColumnKind::null) {
        append_binary_null(copy_buffer_);
      } else if (!append_binary_field(copy_buffer_, table.binary[i], value.data)) {
        copy_buffer_.resize(before);
        return false;
      }
    }
    return true;
  }
  for (std::size_t i = 0; i < tuple.size(); ++i) {
    if (i) copy_buffer_ += '\t';
    const auto& value = tuple[i];
    if (value.kind == ColumnKind::null) {
      copy_buffer_ += kCopyNull;
    } else {
      append_copy_text(copy_buffer_, value.data);
    }
  }
  copy_buffer_ += '\n';
  return true;
}

void Applier::Impl::start_copy() {
  const TargetTable& table = *run_.table;
  // The rows buffered so far, in binary if every value takes it.
  auto encode_buffered = [&](bool binary) {
    copy_buffer_.clear();
    if (binary) copy_buffer_.append(kCopyBinaryHeader);
    std::vector<ColumnValue> row(run_.columns);
    for (std::size_t r = 0; r < run_.rows; ++r) {
      for (std::size_t column = 0; column < run_.columns; ++column) {
        auto offset = run_.cells[r * run_.columns + column];
        row[column] = offset < 0 ? ColumnValue{ColumnKind::null, {}}
                                 : ColumnValue{ColumnKind::text,
                                               std::string_view(run_.values.data() + offset)};
      }
      if (!append_copy_row(table, binary, TupleView(row))) return false;
    }
    return true;
  };
  run_.binary = table.binary_copy;
  if (run_.binary && !encode_buffered(true)) {
    table.binary_copy = false;
    run_.binary = false;
  }
  if (!run_.binary) encode_buffered(false);
  run_.copy_bytes = copy_buffer_.size();
  run_.values.clear();
  run_.cells.clear();

  sync_and_drain();
  if (PQexitPipelineMode(pg_) != 1) {
    broken_ = true;
    throw_pg_error(pg_, nullptr, Side::target, "leaving pipeline mode for COPY");
  }
  std::string sql = fmt::format("COPY {} (", table.qualified);
  for (std::size_t i = 0; i < table.columns.size(); ++i) {
    if (i) sql += ", ";
    sql += table.columns[i];
  }
  sql += run_.binary ? ") FROM STDIN (FORMAT binary)" : ") FROM STDIN";
  Result started(PQexec(pg_, sql.c_str()));
  if (!started || started.status() != PGRES_COPY_IN) fail_copy(started.native(), "starting COPY");
  run_.copying = true;
  if (PQsetnonblocking(pg_, 1) != 0)
    fail_copy(nullptr, "making the target connection non-blocking");
  copy_unflushed_ = 0;
}

void Applier::Impl::send_copy_buffer() {
  if (copy_buffer_.empty()) return;
  while (true) {
    int queued = PQputCopyData(pg_, copy_buffer_.data(), static_cast<int>(copy_buffer_.size()));
    if (queued == 1) break;
    if (queued < 0) fail_copy(nullptr, "sending COPY data");
    flush_copy_data();  // 0: libpq's buffer is full
  }
  int left = PQflush(pg_);
  if (left < 0) fail_copy(nullptr, "sending COPY data");
  copy_unflushed_ = left == 0 ? 0 : copy_unflushed_ + copy_buffer_.size();
  copy_buffer_.clear();
  if (copy_unflushed_ > kCopyQueue) flush_copy_data();
}

void Applier::Impl::flush_copy_data() {
  while (true) {
    int left = PQflush(pg_);
    if (left == 0) break;
    if (left < 0) fail_copy(nullptr, "sending COPY data");
    pollfd fd{PQsocket(pg_), POLLOUT | POLLIN, 0};
    if (::poll(&fd, 1, 1000) < 0 && errno != EINTR) fail_copy(nullptr, "waiting for the target");
    // libpq reads what the server sent (an error) while it flushes.
  }
  copy_unflushed_ = 0;
}

void Applier::Impl::end_copy() {
  const TargetTable& table = *run_.table;
  if (run_.binary) append_binary_trailer(copy_buffer_);
  send_copy_buffer();
  flush_copy_data();
  if (PQsetnonblocking(pg_, 0) != 0) fail_copy(nullptr, "making the target connection blocking");
  if (PQputCopyEnd(pg_, nullptr) != 1) fail_copy(nullptr, "ending COPY");
  Result done(PQgetResult(pg_));
  while (PGresult* extra = PQgetResult(pg_)) PQclear(extra);
  if (!done || done.status() != PGRES_COMMAND_OK) fail_copy(done.native(), "COPY");
  if (done.affected_rows() != static_cast<long>(run_.rows)) {
    broken_ = true;
    throw Error(fmt::format("target: COPY into {} wrote {} rows instead of {}", table.display,
                            done.affected_rows(), run_.rows));
  }
  if (PQenterPipelineMode(pg_) != 1) {
    broken_ = true;
    throw_pg_error(pg_, nullptr, Side::target, "entering pipeline mode after COPY");
  }
  run_.copying = false;
  counters_.copy_batches.fetch_add(1, std::memory_order_relaxed);
  if (run_.binary) counters_.binary_copy_batches.fetch_add(1, std::memory_order_relaxed);
}

Match Applier::Impl::choose_match(const TargetTable& table, char old_kind,
                                  TupleView old_tuple) const {
  if (old_kind != 'O') return Match::key;
  if (table.primary_key.empty()) return Match::full;
  for (int column : table.primary_key) {
    if (old_tuple[static_cast<std::size_t>(column)].kind != ColumnKind::text) return Match::full;
  }
  return Match::primary_key;
}

std::vector<int> Applier::Impl::match_columns(const TargetTable& table, Match match,
                                              char /*old_kind*/) const {
  switch (match) {
    case Match::key:
      return table.key;
    case Match::primary_key:
      return table.primary_key;
    case Match::full: {
      std::vector<int> all(table.columns.size());
      for (std::size_t i = 0; i < all.size(); ++i) all[i] = static_cast<int>(i);
      return all;
    }
  }
  return {};
}

namespace {

// Appends the WHERE clause that finds the row; parameters from `first_param` on, one for
// each non-NULL, non-unchanged column of `tuple` among `columns`.
void append_where(std::string& sql, const TargetTable& table, Match match,
                  const std::vector<int>& columns, TupleView tuple, int first_param) {
  std::string condition;
  int param = first_param;
  for (std::size_t i = 0; i < columns.size(); ++i) {
    auto column = static_cast<std::size_t>(columns[i]);
    auto kind = tuple[column].kind;
    if (kind == ColumnKind::unchanged_toast) continue;
    if (!condition.empty()) condition += " AND ";
    if (kind == ColumnKind::null) {
      condition += fmt::format("{} IS NULL", table.columns[column]);
    } else if (match == Match::full) {
      // Through the text form: works for types without an equality operator (json, point).
      condition += fmt::format("{}::text = (${}::{})::text", table.columns[column], param++,
                               table.types[column]);
    } else {
      condition += fmt::format("{} = ${}::{}", table.columns[column], param++, table.types[column]);
    }
  }
  if (match == Match::full) {
    sql += fmt::format(" WHERE ctid = (SELECT ctid FROM {} WHERE {} LIMIT 1)", table.qualified,
                       condition.empty() ? "true" : condition);
  } else {
    sql += " WHERE " + condition;
  }
}

// One byte per column for the statement cache key: which columns a statement uses and how.
void append_shape(std::string& key, TupleView tuple, const std::vector<int>& columns) {
  for (int column : columns) key += static_cast<char>(tuple[static_cast<std::size_t>(column)].kind);
  key += '|';
}

}  // namespace

void Applier::Impl::apply_update(const Relation& relation, const pgoutput::Update& update) {
  check_tuple(relation, update.new_tuple, "UPDATE");
  if (update.old_kind != 0) check_tuple(relation, update.old_tuple, "UPDATE (old tuple)");
  // The same relation's inserts come first; and an unmapped relation needs a catalog query,
  // which cannot go while a COPY is open.
  auto mapped = tables_.find(relation.id);
  if ((!run_.empty() && run_.relation == relation.id) ||
      (run_.copying && (mapped == tables_.end() || mapped->second.version != relation.version))) {
    flush_insert_run();
  }
  const TargetTable& table = table_for(relation);
  if (batch_update(table, update)) return;
  flush_batches();
  TupleView old_tuple = update.old_kind != 0 ? update.old_tuple : update.new_tuple;
  Match match = choose_match(table, update.old_kind, old_tuple);
  std::vector<int> where = match_columns(table, match, update.old_kind);
  // REPLICA IDENTITY FULL of a table without columns matches any row (WHERE true).
  if (where.empty() && match != Match::full) {
    broken_ = true;
    throw Error(fmt::format(
        "UPDATE of {} has no replica identity key to find the row by: give the source table a "
        "primary key or REPLICA IDENTITY FULL",
        table.display));
  }
  if (table.columns.empty()) {
    apply_empty_row_update(table);
    return;
  }

  // SET: every column the new tuple carries as a value; without an old tuple the key did not
  // change, so key columns are left out (unless nothing else is left).
  std::vector<int> set;
  for (std::size_t i = 0; i < update.new_tuple.size(); ++i) {
    if (update.new_tuple[i].kind == ColumnKind::unchanged_toast) continue;
    if (update.old_kind == 0 && relation.columns[i].is_key) continue;
    set.push_back(static_cast<int>(i));
  }
  if (set.empty()) set = table.key;

  statement_key_.clear();
  std::string key = fmt::format("U/{}/{}/{}/{}/", table.id.value, table.version,
                                static_cast<char>(match), update.old_kind);
  for (int column : set) key += fmt::format("{},", column);
  key += '|';
  append_shape(key, old_tuple, where);

  clear_params();
  for (int column : set) add_param(update.new_tuple[static_cast<std::size_t>(column)]);
  int set_params = static_cast<int>(param_offsets_.size());
  // NULLs in SET are parameters; NULLs in WHERE become IS NULL.
  for (int column : where) {
    const auto& value = old_tuple[static_cast<std::size_t>(column)];
    if (value.kind == ColumnKind::text) add_param(value);
  }
  finish_params();
  const auto& prepared = statement(key, static_cast<int>(param_offsets_.size()), [&] {
    std::string sql = fmt::format("UPDATE {} SET ", table.qualified);
    for (std::size_t i = 0; i < set.size(); ++i) {
      if (i) sql += ", ";
      sql += fmt::format("{} = ${}", table.columns[static_cast<std::size_t>(set[i])], i + 1);
    }
    append_where(sql, table, match, where, old_tuple, set_params + 1);
    return sql;
  });
  Statement update_statement = prepared;
  format_key(table, match == Match::full ? table.key : where, old_tuple);
  send_prepared(update_statement, Op::update, &table, key_scratch_);
  ++group_rows_;
  group_bytes_ += param_arena_.size();
  counters_.rows_updated.fetch_add(1, std::memory_order_relaxed);
}

namespace {

// Appends `value` as a double-quoted array element (array_in syntax).
void append_array_element(std::string& out, std::string_view value) {
  out += '"';
  std::size_t start = 0;
  for (std::size_t i = 0; i < value.size(); ++i) {
    if (value[i] != '"' && value[i] != '\\') continue;
    out.append(value.data() + start, i - start);
    out += '\\';
    out += value[i];
    start = i + 1;
  }
  out.append(value.data() + start, value.size() - start);
  out += '"';
}

}  // namespace

bool Applier::Impl::batch_update(const TargetTable& table, const pgoutput::Update& update) {
  // Only an update that keeps its key, carries every column and has a usable key: its row
  // ends as its last new tuple, whatever came between.
  if (!table.batchable || update.old_kind != 0) return false;
  const TupleView tuple = update.new_tuple;
  for (std::size_t i = 0; i < tuple.size(); ++i) {
    if (tuple[i].kind == ColumnKind::unchanged_toast) return false;
  }
  key_text_.clear();
  for (int column : table.key) {
    const auto& value = tuple[static_cast<std::size_t>(column)];
    if (value.kind != ColumnKind::text) return false;
    key_text_.append(value.data);
    key_text_ += '\0';
  }
  if (table.key.size() == table.columns.size()) return false;  // nothing to SET

  auto& batch = batch_for(table);
  const std::size_t width = batch.columns.size();
  auto [it, added] = batch.index.try_emplace(key_text_, batch.commit_lsns.size());
  std::size_t entry = it->second;
  if (added) {
    batch.cells.resize(batch.cells.size() + width);
    batch.lengths.resize(batch.lengths.size() + width);
    batch.commit_lsns.push_back(current_.final_lsn);
    batch.keys.push_back(&it->first);
  } else {
    batch.commit_lsns[entry] = current_.final_lsn;
  }
  std::size_t before = batch.arena.size();
  for (std::size_t c = 0; c < width; ++c) {
    const auto& value = tuple[static_cast<std::size_t>(batch.columns[c])];
    if (value.kind == ColumnKind::null) {
      batch.cells[entry * width + c] = -1;
    } else {
      batch.cells[entry * width + c] = static_cast<std::int64_t>(batch.arena.size());
      batch.lengths[entry * width + c] = static_cast<std::uint32_t>(value.data.size());
      batch.arena.append(value.data);
    }
  }
  ++batched_rows_;
  ++group_rows_;
  group_bytes_ += batch.arena.size() - before;
  batched_bytes_ += batch.arena.size() - before;
  counters_.rows_updated.fetch_add(1, std::memory_order_relaxed);
  // Bounded memory whatever the size of a source transaction: send what is batched (the
  // same key later goes into a new batch, applied after this one).
  if (batched_bytes_ >= std::min(options_.copy_max_bytes, kBatchBytes)) flush_batches();
  return true;
}

Applier::Impl::UpdateBatch& Applier::Impl::batch_for(const TargetTable& table) {
  auto& batch = batches_[table.id];
  if (batch.table == nullptr) {
    batch.table = &table;
    batch.columns = table.key;
    for (std::size_t i = 0; i < table.columns.size(); ++i) {
      if (std::find(table.key.begin(), table.key.end(), static_cast<int>(i)) == table.key.end()) {
        batch.columns.push_back(static_cast<int>(i));
      }
    }
  }
  return batch;
}

void Applier::Impl::batch_insert(const TargetTable& table, TupleView tuple) {
  for (std::size_t i = 0; i < tuple.size(); ++i) {
    if (tuple[i].kind != ColumnKind::null && tuple[i].kind != ColumnKind::text) {
      throw ProtocolError(
          fmt::format("INSERT into {} has an unchanged-TOAST or binary column", table.display), 0,
          'I');
    }
  }
  auto& batch = batch_for(table);
  std::size_t before = batch.insert_arena.size();
  for (std::size_t i = 0; i < tuple.size(); ++i) {
    if (tuple[i].kind == ColumnKind::null) {
      batch.insert_cells.push_back(-1);
      batch.insert_lengths.push_back(0);
    } else {
      batch.insert_cells.push_back(static_cast<std::int64_t>(batch.insert_arena.size()));
      batch.insert_lengths.push_back(static_cast<std::uint32_t>(tuple[i].data.size()));
      batch.insert_arena.append(tuple[i].data);
    }
  }
  ++batch.inserts;
  batch.last_insert_lsn = current_.final_lsn;
  ++batched_rows_;
  ++group_rows_;
  group_bytes_ += batch.insert_arena.size() - before;
  batched_bytes_ += batch.insert_arena.size() - before;
  counters_.rows_inserted.fetch_add(1, std::memory_order_relaxed);
  if (batched_bytes_ >= std::min(options_.copy_max_bytes, kBatchBytes)) flush_batches();
}

void Applier::Impl::flush_batches() {
  flush_insert_run();
  if (batched_rows_ == 0) return;
  // One text array per column, cast by the statement to the column's type.
  auto append_array = [&](const std::string& arena, const std::vector<std::int64_t>& cells,
                          const std::vector<std::uint32_t>& lengths, std::size_t count,
                          std::size_t width, std::size_t column) {
    param_offsets_.push_back(static_cast<std::int64_t>(param_arena_.size()));
    param_arena_ += '{';
    for (std::size_t e = 0; e < count; ++e) {
      if (e) param_arena_ += ',';
      auto offset = cells[e * width + column];
      if (offset < 0) {
        param_arena_ += "NULL";
      } else {
        append_array_element(param_arena_,
                             std::string_view(arena).substr(static_cast<std::size_t>(offset),
                                                            lengths[e * width + column]));
      }
    }
    param_arena_ += '}';
    param_arena_ += '\0';
  };
  for (auto& entry : batches_) {
    // A reference, not a structured binding: lambdas below capture it (clang 14 cannot
    // capture structured bindings).
    auto& batch = entry.second;
    const TargetTable& table = *batch.table;
    if (batch.inserts > 0) {
      const std::size_t columns = table.columns.size();
      const auto& prepared = statement(
          fmt::format("BI/{}/{}", table.id.value, table.version), static_cast<int>(columns), [&] {
            std::string sql = fmt::format("INSERT INTO {} (", table.qualified);
            for (std::size_t c = 0; c < columns; ++c) {
              sql += fmt::format("{}{}", c ? ", " : "", table.columns[c]);
            }
            sql += ") OVERRIDING SYSTEM VALUE SELECT * FROM unnest(";
            for (std::size_t c = 0; c < columns; ++c) {
              sql += fmt::format("{}${}::{}[]", c ? ", " : "", c + 1, table.types[c]);
            }
            sql += ')';
            return sql;
          });
      Statement insert_statement = prepared;
      clear_params();
      for (std::size_t c = 0; c < columns; ++c) {
        append_array(batch.insert_arena, batch.insert_cells, batch.insert_lengths, batch.inserts,
                     columns, c);
      }
      finish_params();
      Lsn saved = current_.final_lsn;
      current_.final_lsn = batch.last_insert_lsn;
      send_prepared(insert_statement, Op::batch_insert, &table, {},
                    static_cast<std::uint32_t>(batch.inserts));
      current_.final_lsn = saved;
    }
    const std::size_t width = batch.columns.size();
    const std::size_t entries = batch.commit_lsns.size();
    if (entries == 0) continue;
    // One text array per column; the statement casts each to the column's type.
    std::string key = fmt::format("B/{}/{}", table.id.value, table.version);
    const auto& prepared = statement(key, static_cast<int>(width), [&] {
      std::string sql = fmt::format("UPDATE {} AS t SET ", table.qualified);
      std::size_t keys = table.key.size();
      for (std::size_t c = keys; c < width; ++c) {
        if (c > keys) sql += ", ";
        sql +=
            fmt::format("{} = v.c{}", table.columns[static_cast<std::size_t>(batch.columns[c])], c);
      }
      sql += " FROM unnest(";
      for (std::size_t c = 0; c < width; ++c) {
        if (c) sql += ", ";
        sql += fmt::format("${}::{}[]", c + 1,
                           table.types[static_cast<std::size_t>(batch.columns[c])]);
      }
      sql += ") AS v(";
      for (std::size_t c = 0; c < width; ++c) sql += fmt::format("{}c{}", c ? ", " : "", c);
      sql += ") WHERE ";
      for (std::size_t c = 0; c < keys; ++c) {
        if (c) sql += " AND ";
        sql += fmt::format("t.{} = v.c{}",
                           table.columns[static_cast<std::size_t>(batch.columns[c])], c);
      }
      // The keys updated, to name a missing one (see check_batch_result).
      sql += " RETURNING ";
      for (std::size_t c = 0; c < keys; ++c) {
        if (c) sql += ", ";
        sql += fmt::format("t.{}::text", table.columns[static_cast<std::size_t>(batch.columns[c])]);
      }
      return sql;
    });
    Statement batch_statement = prepared;
    clear_params();
    for (std::size_t c = 0; c < width; ++c) {
      append_array(batch.arena, batch.cells, batch.lengths, entries, width, c);
    }
    finish_params();
    std::vector<std::pair<std::string, Lsn>> keys;
    keys.reserve(entries);
    for (std::size_t e = 0; e < entries; ++e)
      keys.emplace_back(*batch.keys[e], batch.commit_lsns[e]);
    inflight_batches_.push_back(std::move(keys));
    Lsn saved = current_.final_lsn;
    current_.final_lsn = Lsn::invalid();
    send_prepared(batch_statement, Op::batch_update, &table, {},
                  static_cast<std::uint32_t>(entries));
    current_.final_lsn = saved;
  }
  batches_.clear();
  batched_rows_ = 0;
  batched_bytes_ = 0;
}

void Applier::Impl::check_batch_result(const Pending& pending, const Result& result) {
  auto keys = std::move(inflight_batches_.front());
  inflight_batches_.pop_front();
  long affected = result.affected_rows();
  if (affected == static_cast<long>(pending.rows)) return;
  broken_ = true;
  // Name a key the target lacks: one the statement did not return.
  std::unordered_set<std::string> updated;
  for (int row = 0; row < result.rows(); ++row) {
    std::string key;
    for (int column = 0; column < result.columns(); ++column) {
      key.append(result.get(row, column));
      key += '\0';
    }
    updated.insert(std::move(key));
  }
  std::string detail;
  for (const auto& [key, lsn] : keys) {
    if (updated.count(key)) continue;
    std::string shown = key;
    std::replace(shown.begin(), shown.end(), '\0', ',');
    if (!shown.empty()) shown.pop_back();
    std::string columns;
    for (std::size_t i = 0; i < pending.table->key.size(); ++i) {
      if (i) columns += ", ";
      columns += pending.table->columns[static_cast<std::size_t>(pending.table->key[i])];
    }
    detail = fmt::format(", e.g. key ({})=({}) of source transaction commit_lsn={}", columns,
                         shown.substr(0, kMaxKeyText), lsn);
    break;
  }
  throw Error(fmt::format(
      "target: {} affected {} rows instead of {}{}: the target no longer holds rows the source "
      "changed (a write on the target, or a table copied without its rows); repair the rows or "
      "re-copy the table, then restart",
      describe(pending), affected, pending.rows, detail));
}

void Applier::Impl::apply_empty_row_update(const TargetTable& table) {
  // An UPDATE of a table without columns changes nothing in its row, and SQL has no UPDATE
  // without a SET: one row is replaced by an equal one (the server's apply worker writes a
  // new version of the one row it finds). It must find one, as any update.
  const auto& prepared = statement(fmt::format("U0/{}/{}", table.id.value, table.version), 0, [&] {
    return fmt::format(
        "WITH found AS (DELETE FROM {0} WHERE ctid = (SELECT ctid FROM {0} LIMIT 1) "
        "RETURNING 1) INSERT INTO {0} SELECT FROM found",
        table.qualified);
  });
  Statement update_statement = prepared;
  clear_params();
  finish_params();
  send_prepared(update_statement, Op::update, &table, {});
  ++group_rows_;
  counters_.rows_updated.fetch_add(1, std::memory_order_relaxed);
}

void Applier::Impl::apply_delete(const Relation& relation, const pgoutput::Delete& del) {
  flush_batches();
  check_tuple(relation, del.old_tuple, "DELETE");
  const TargetTable& table = table_for(relation);
  Match match = choose_match(table, del.old_kind, del.old_tuple);
  std::vector<int> where = match_columns(table, match, del.old_kind);
  // REPLICA IDENTITY FULL of a table without columns matches any row (WHERE true): one
  // row goes, as the server's apply worker finds one (RelationFindReplTupleSeq).
  if (where.empty() && match != Match::full) {
    broken_ = true;
    throw Error(fmt::format(
        "DELETE from {} has no replica identity key to find the row by: give the source table "
        "a primary key or REPLICA IDENTITY FULL",
        table.display));
  }
  std::string key =
      fmt::format("D/{}/{}/{}/", table.id.value, table.version, static_cast<char>(match));
  append_shape(key, del.old_tuple, where);
  clear_params();
  for (int column : where) {
    const auto& value = del.old_tuple[static_cast<std::size_t>(column)];
    if (value.kind == ColumnKind::text) add_param(value);
  }
  finish_params();
  const auto& prepared = statement(key, static_cast<int>(param_offsets_.size()), [&] {
    std::string sql = fmt::format("DELETE FROM {}", table.qualified);
    append_where(sql, table, match, where, del.old_tuple, 1);
    return sql;
  });
  Statement delete_statement = prepared;
  format_key(table, match == Match::full ? table.key : where, del.old_tuple);
  send_prepared(delete_statement, Op::delete_, &table, key_scratch_);
  ++group_rows_;
  group_bytes_ += param_arena_.size();
  counters_.rows_deleted.fetch_add(1, std::memory_order_relaxed);
}

// ----------------------------------------------------------------------------------------------
// ChangeSink

Applier::Applier(Connection target, ApplierOptions options)
    : impl_(std::make_unique<Impl>(std::move(target), std::move(options))) {}

Applier::~Applier() = default;

void Applier::begin_transaction(const TransactionBegin& begin) {
  auto& s = *impl_;
  s.check_usable();
  if (s.in_source_txn_) {
    s.broken_ = true;
    throw Error(fmt::format("begin of xid={} while xid={} is still open", begin.xid.value,
                            s.current_.xid.value));
  }
  s.in_source_txn_ = true;
  s.current_ = begin;
  // Its commit record lies before what is applied: the whole transaction is on the target.
  // (Unknown while a streamed transaction is applied as it streams: the walsender streams
  // only transactions that commit after the position it was started from.)
  s.skipping_ = halted() || (begin.final_lsn.is_valid() && begin.final_lsn < s.applied_lsn_);
  if (s.skipping_) {
    spdlog::debug("skipping applied transaction xid={} lsn={}", begin.xid.value, begin.final_lsn);
    return;
  }
  if (!s.group_open_) s.open_group();
}

void Applier::relation(const Relation& relation) {
  auto& s = *impl_;
  s.check_usable();
  if (!s.run_.empty() && s.run_.relation == relation.id) s.flush_insert_run();
  if (s.batches_.count(relation.id)) s.flush_batches();
}

void Applier::insert(const Relation& relation, const pgoutput::Insert& insert) {
  auto& s = *impl_;
  s.check_usable();
  if (s.skipping_) return;
  s.buffer_insert(relation, insert);
}

void Applier::update(const Relation& relation, const pgoutput::Update& update) {
  auto& s = *impl_;
  s.check_usable();
  if (s.skipping_) return;
  s.apply_update(relation, update);
}

void Applier::delete_rows(const Relation& relation, const pgoutput::Delete& del) {
  auto& s = *impl_;
  s.check_usable();
  if (s.skipping_) return;
  s.apply_delete(relation, del);
}

void Applier::truncate(std::span<const Relation* const> relations, std::uint8_t flags) {
  auto& s = *impl_;
  s.check_usable();
  if (s.skipping_ || relations.empty()) return;
  s.flush_batches();
  std::string sql = "TRUNCATE ";
  const TargetTable* first = nullptr;
  for (std::size_t i = 0; i < relations.size(); ++i) {
    const TargetTable& table = s.table_for(*relations[i]);
    if (!first) first = &table;
    if (i) sql += ", ";
    sql += table.qualified;
  }
  if (flags & pgoutput::Truncate::kRestartIdentity) sql += " RESTART IDENTITY";
  if (flags & pgoutput::Truncate::kCascade) sql += " CASCADE";
  s.send_query(sql, Op::truncate, {}, first);
  s.counters_.relations_truncated.fetch_add(relations.size(), std::memory_order_relaxed);
}

void Applier::commit_transaction(const TransactionCommit& commit) {
  auto& s = *impl_;
  s.check_usable();
  if (!s.in_source_txn_) {
    s.broken_ = true;
    throw Error(fmt::format("commit of xid={} without a begin", commit.xid.value));
  }
  s.in_source_txn_ = false;
  auto fence = std::exchange(noted_fence_, std::nullopt);
  if (halted()) {
    s.skipping_ = false;
    return;
  }
  if (!s.current_.final_lsn.is_valid() && commit.end_lsn <= s.applied_lsn_) {
    // Applied as it streamed, but its commit lies within what the target has: the
    // walsender never streams such a transaction; refuse rather than apply it twice.
    s.broken_ = true;
    throw Error(fmt::format(
        "streamed transaction xid={} commit_lsn={} ends at {}, within the applied position {}: "
        "not applying it twice (run with --spool-streamed)",
        commit.xid.value, commit.commit_lsn, commit.end_lsn, s.applied_lsn_));
  }
  if (s.skipping_) {
    s.skipping_ = false;
    if (commit.end_lsn > s.applied_lsn_) {
      s.broken_ = true;
      throw Error(fmt::format(
          "transaction xid={} commit_lsn={} ends at {}, past the applied position {} although "
          "it began before it: the progress record does not match this stream",
          commit.xid.value, commit.commit_lsn, commit.end_lsn, s.applied_lsn_));
    }
    s.counters_.transactions_skipped.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  s.group_end_lsn_ = commit.end_lsn;
  s.group_commit_time_ = commit.commit_time;
  s.applied_lsn_ = std::max(s.applied_lsn_, commit.end_lsn);
  ++s.group_transactions_;
  s.counters_.transactions_applied.fetch_add(1, std::memory_order_relaxed);
  bool fenced = fence.has_value();
  if (fenced) {
    // Noted before the commit: if it fails in doubt, the caller still knows which progress
    // row means the fence is on the target.
    fence->end_lsn = commit.end_lsn;
    fence_ = std::move(fence);
  }
  if (fenced || s.group_rows_ >= s.options_.group_max_rows ||
      s.group_bytes_ >= s.options_.group_max_bytes ||
      Clock::now() - s.group_started_ >= s.options_.group_max_delay) {
    s.commit_group();
  }
  if (fenced) {
    spdlog::info("fence id={} lsn={} committed end_lsn={}", fence_->id, fence_->message_lsn,
                 fence_->end_lsn);
  }
}

void Applier::message(const pgoutput::LogicalMessage& message) {
  auto& s = *impl_;
  if (s.options_.fence_name.empty() || !s.in_source_txn_ || s.skipping_) return;
  if (auto id = fence_id_for(message, s.options_.fence_name)) {
    noted_fence_ = Fence{std::move(*id), message.lsn, Lsn::invalid()};
  }
}

void Applier::idle(Lsn wal_end) {
  auto& s = *impl_;
  s.check_usable();
  if (s.in_source_txn_) return;
  s.fold_streamed();  // a streamed transaction committed since is applied, too
  if (s.group_open_) s.commit_group();
  auto now = Clock::now();
  if (s.async_commit_ && !s.unflushed_.empty()) {
    auto result = s.pipeline_query("SELECT pg_current_wal_flush_lsn()::text", {});
    s.refresh_durable(Lsn::invalid(),
                      Lsn::from_string(result.get(0, 0), "pg_current_wal_flush_lsn"));
  }
  if (halted()) return;  // the progress row stays at the fence
  if (wal_end <= s.applied_lsn_) {
    if (s.pending_idle_ <= s.applied_lsn_) s.pending_idle_ = Lsn::invalid();
    return;
  }
  if (now - s.last_idle_write_ < s.options_.idle_progress_interval) {
    s.pending_idle_ = std::max(s.pending_idle_, wal_end);
    return;
  }
  s.pending_idle_ = Lsn::invalid();
  // Nothing of ours before wal_end is left: record it, so that lag reaches zero at idle.
  s.current_.final_lsn = Lsn::invalid();
  s.write_progress(wal_end, std::nullopt, Op::progress);
  if (s.async_commit_) {
    s.send_query("SELECT pg_current_wal_insert_lsn()::text, pg_current_wal_flush_lsn()::text",
                 Op::wal_position);
  }
  if (PQpipelineSync(s.pg_) != 1) {
    s.broken_ = true;
    throw_pg_error(s.pg_, nullptr, Side::target, "sending a pipeline sync");
  }
  s.push(Op::sync, 0);
  Result position;
  while (!s.pending_.empty()) {
    bool is_position = s.pending_.front().op == Op::wal_position;
    Result result = s.read_next();
    if (is_position) position = std::move(result);
  }
  s.applied_lsn_ = wal_end;
  s.last_commit_end_ = wal_end;
  s.last_idle_write_ = now;
  if (s.async_commit_) {
    s.refresh_durable(Lsn::from_string(position.get(0, 0), "pg_current_wal_insert_lsn"),
                      Lsn::from_string(position.get(0, 1), "pg_current_wal_flush_lsn"));
  } else {
    s.durable_lsn_.store(wal_end.value());
  }
}

void Applier::flush() {
  auto& s = *impl_;
  s.check_usable();
  if (s.group_open_ && !s.in_source_txn_) s.commit_group();
  s.fold_streamed();
}

ChangeSink* Applier::begin_streamed(const TransactionBegin& begin) {
  auto& s = *impl_;
  s.check_usable();
  if (s.options_.streamed_conninfo.empty() || s.in_source_txn_ || halted()) return nullptr;
  flush();
  if (!s.streamed_) {
    ApplierOptions options = s.options_;
    options.streamed_conninfo.clear();
    options.take_lock = false;
    options.group_max_rows = 0;  // commit at its (one) transaction's commit
    try {
      s.streamed_ = std::make_unique<Applier>(
          Connection::open(s.options_.streamed_conninfo, Side::target), options);
    } catch (const PgError& e) {
      // No second connection (connection limits): the spool replays it at its commit.
      spdlog::warn(
          "streamed transaction xid={} is applied at its commit: no second target "
          "connection: {}",
          begin.xid.value, e.what());
      return nullptr;
    }
    s.streamed_folded_ = {};
  }
  auto& streamed = *s.streamed_->impl_;
  streamed.applied_lsn_ = std::max(streamed.applied_lsn_, s.applied_lsn_);
  // Neither connection may wait for the other: nothing this one applies meanwhile touches a
  // row the streamed transaction changed, unless the target has a trigger, foreign key or
  // unique index the source does not have. Then a lock wait ends with an error naming the
  // way out instead of hanging.
  s.set_lock_timeout(s.options_.lock_timeout);
  spdlog::debug("applying streamed transaction xid={} as it streams", begin.xid.value);
  s.streamed_->begin_transaction(begin);
  return s.streamed_.get();
}

void Applier::streamed_segment() {
  flush();
}

void Applier::streamed_committed() {
  auto& s = *impl_;
  s.check_usable();
  s.fold_streamed();
  if (s.streamed_ && s.streamed_->fence_) fence_ = s.streamed_->fence_;
}

void Applier::abort_streamed() {
  auto& s = *impl_;
  if (!s.streamed_) return;
  // Closing its connection rolls its transaction back; what it committed before counts.
  s.fold_streamed();
  s.streamed_.reset();
  // It is replayed here at its commit, if it commits: wait for locks as always.
  s.set_lock_timeout(std::nullopt);
}

void Applier::Impl::set_lock_timeout(std::optional<std::chrono::seconds> timeout) {
  if (lock_timeout_set_ == timeout.has_value()) return;
  flush_insert_run();  // an open COPY takes no other statement
  pipeline_query(timeout ? fmt::format("SET lock_timeout = '{}s'", timeout->count())
                         : std::string("RESET lock_timeout"),
                 {});
  lock_timeout_set_ = timeout.has_value();
}

void Applier::Impl::fold_streamed() {
  if (!streamed_ || streamed_->in_source_transaction()) {
    if (!streamed_ && !in_source_txn_) set_lock_timeout(std::nullopt);
    return;
  }
  if (!in_source_txn_) set_lock_timeout(std::nullopt);
  auto now = streamed_->counters();
  auto& was = streamed_folded_;
  auto add = [](std::atomic<std::uint64_t>& to, std::uint64_t delta) {
    to.fetch_add(delta, std::memory_order_relaxed);
  };
  add(counters_.rows_inserted, now.rows_inserted - was.rows_inserted);
  add(counters_.rows_updated, now.rows_updated - was.rows_updated);
  add(counters_.rows_deleted, now.rows_deleted - was.rows_deleted);
  add(counters_.relations_truncated, now.relations_truncated - was.relations_truncated);
  add(counters_.transactions_applied, now.transactions_applied - was.transactions_applied);
  add(counters_.groups_committed, now.groups_committed - was.groups_committed);
  add(counters_.copy_batches, now.copy_batches - was.copy_batches);
  add(counters_.binary_copy_batches, now.binary_copy_batches - was.binary_copy_batches);
  add(counters_.statements_sent, now.statements_sent - was.statements_sent);
  was = now;
  streamed_durable_.store(std::max(streamed_durable_.load(), streamed_->durable_lsn().value()));
  // What it committed is applied: an idle position below it must never be written.
  applied_lsn_ = std::max(applied_lsn_, streamed_->impl_->applied_lsn_);
  if (pending_idle_ <= applied_lsn_) pending_idle_ = Lsn::invalid();
}

void Applier::tick() {
  auto& s = *impl_;
  s.check_usable();
  if (s.streamed_) s.streamed_->tick();
  s.fold_streamed();
  // Hand the target what COPY data the socket takes now.
  if (s.run_.copying && PQflush(s.pg_) == 0) s.copy_unflushed_ = 0;
  if (s.group_open_ && !s.in_source_txn_ &&
      Clock::now() - s.group_started_ >= s.options_.group_max_delay) {
    s.commit_group();
  }
  if (s.pending_idle_.is_valid() && !s.in_source_txn_ &&
      Clock::now() - s.last_idle_write_ >= s.options_.idle_progress_interval) {
    idle(s.pending_idle_);
  }
}

Lsn Applier::resume_lsn() const {
  return impl_->resume_lsn_;
}
Lsn Applier::durable_lsn() const {
  return Lsn{std::max(impl_->durable_lsn_.load(), impl_->streamed_durable_.load())};
}
bool Applier::in_source_transaction() const {
  return impl_->in_source_txn_;
}
bool Applier::group_open() const {
  return impl_->group_open_;
}
bool Applier::halted() const {
  return fence_ && impl_->options_.stop_at_fence;
}

ApplierCounters Applier::counters() const {
  const auto& c = impl_->counters_;
  auto get = [](const std::atomic<std::uint64_t>& value) {
    return value.load(std::memory_order_relaxed);
  };
  return {get(c.rows_inserted),       get(c.rows_updated),         get(c.rows_deleted),
          get(c.relations_truncated), get(c.transactions_applied), get(c.transactions_skipped),
          get(c.groups_committed),    get(c.copy_batches),         get(c.binary_copy_batches),
          get(c.statements_sent)};
}

}  // namespace pgferry::replication
