// The applier's pipeline: sending, reading and checking results (see pipeline.hpp).
#include "pipeline.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "target_tables.hpp"

namespace pgferry::replication::apply {

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
    case Op::batch_delete:
      return "DELETE (batched)";
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

ApplierCounters ApplyCounters::snapshot() const {
  auto get = [](const std::atomic<std::uint64_t>& value) {
    return value.load(std::memory_order_relaxed);
  };
  return {get(rows_inserted),       get(rows_updated),         get(rows_deleted),
          get(relations_truncated), get(transactions_applied), get(transactions_skipped),
          get(groups_committed),    get(copy_batches),         get(binary_copy_batches),
          get(statements_sent)};
}

void ApplyCounters::add_difference(const ApplierCounters& now, const ApplierCounters& was) {
  add(rows_inserted, now.rows_inserted - was.rows_inserted);
  add(rows_updated, now.rows_updated - was.rows_updated);
  add(rows_deleted, now.rows_deleted - was.rows_deleted);
  add(relations_truncated, now.relations_truncated - was.relations_truncated);
  add(transactions_applied, now.transactions_applied - was.transactions_applied);
  add(groups_committed, now.groups_committed - was.groups_committed);
  add(copy_batches, now.copy_batches - was.copy_batches);
  add(binary_copy_batches, now.binary_copy_batches - was.binary_copy_batches);
  add(statements_sent, now.statements_sent - was.statements_sent);
}

void Pipeline::enter() {
  if (PQenterPipelineMode(conn_) != 1) fail("entering pipeline mode");
}

void Pipeline::leave() {
  sync_and_drain();
  if (PQexitPipelineMode(conn_) != 1) fail("leaving pipeline mode for COPY");
}

void Pipeline::fail(std::string_view doing) {
  broken_ = true;
  throw_pg_error(conn_, nullptr, Side::target, doing);
}

void Pipeline::fail_sending(Op op) {
  fail(fmt::format("sending {}", op_name(op)));
}

void Pipeline::send_query(std::string_view sql, const Command& command,
                          std::initializer_list<Param> params) {
  params_.clear();
  for (const auto& param : params) params_.add(param);
  params_.finish();
  std::string text(sql);
  if (PQsendQueryParams(conn_, text.c_str(), params_.count(), nullptr, params_.values(), nullptr,
                        nullptr, 0) != 1) {
    fail_sending(command.op);
  }
  push(command, text.size() + params_.bytes());
  after_send();
}

const Statement& Pipeline::prepare(const std::string& sql, int params) {
  Statement prepared{fmt::format("pgferry_{}", next_statement_++), params};
  if (PQsendPrepare(conn_, prepared.name.c_str(), sql.c_str(), params, nullptr) != 1) {
    fail("preparing a statement");
  }
  push({Op::prepare, Lsn::invalid()}, sql.size());
  spdlog::debug("prepared {}: {}", prepared.name, sql);
  return statements_.emplace(statement_key_, std::move(prepared)).first->second;
}

std::string Pipeline::describe(const Pending& pending) const {
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

void Pipeline::fail(const Pending& pending, const Result& result) {
  broken_ = true;
  throw_pg_error(conn_, result.native(), Side::target,
                 fmt::format("applying {}", describe(pending)));
}

void Pipeline::refuse_rows(const Pending& pending, long affected) {
  broken_ = true;
  if (pending.op == Op::batch_insert) {
    throw Error(fmt::format("target: {} wrote {} rows instead of {}", describe(pending), affected,
                            pending.rows));
  }
  throw Error(fmt::format(
      "target: {} affected {} rows instead of 1: the target no longer holds the row the "
      "source changed (a write on the target, or a table copied without its rows); repair "
      "the row or re-copy the table, then restart",
      describe(pending), affected));
}

Result Pipeline::read_next() {
  if (pending_.empty()) throw Error("applier: reading a result with nothing pending");
  Pending pending = pending_.front();
  PGresult* raw = PQgetResult(conn_);
  if (!raw) {
    broken_ = true;
    if (PQstatus(conn_) == CONNECTION_BAD) {
      throw_pg_error(conn_, nullptr, Side::target,
                     fmt::format("reading the result of {}", describe(pending)));
    }
    throw Error(fmt::format("target: no result for {} (pipeline out of step)", describe(pending)));
  }
  Result result(raw);
  pending_.pop_front();
  pending_bytes_ -= pending.bytes;
  // The key text stays until the checks below have named it.
  struct ClearKeys {
    Pipeline& pipeline;
    ~ClearKeys() {
      if (pipeline.pending_.empty()) pipeline.key_arena_.clear();
    }
  } clear_keys{*this};

  if (pending.op == Op::sync) {
    if (result.status() != PGRES_PIPELINE_SYNC) fail(pending, result);
    return result;
  }
  // Each command's results end with a NULL.
  if (PGresult* extra = PQgetResult(conn_)) {
    PQclear(extra);
    broken_ = true;
    throw Error(fmt::format("target: more than one result for {}", describe(pending)));
  }
  auto status = result.status();
  if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) fail(pending, result);

  if (pending.check) {
    pending.check->check(pending, result);
  } else if (pending.op == Op::insert || pending.op == Op::update || pending.op == Op::delete_) {
    if (result.affected_rows() != 1) refuse_rows(pending, result.affected_rows());
  } else if (pending.op == Op::batch_insert) {
    if (result.affected_rows() != static_cast<long>(pending.rows)) {
      refuse_rows(pending, result.affected_rows());
    }
  }
  return result;
}

void Pipeline::read_available() {
  sent_since_read_ = 0;
  if (PQflush(conn_) < 0 || PQconsumeInput(conn_) != 1) fail("reading pipelined results");
  while (!pending_.empty() && pending_.front().op != Op::sync && PQisBusy(conn_) == 0) {
    read_next();
  }
}

void Pipeline::request_flush() {
  // The server holds its output until a Sync or a Flush: ask for it before waiting.
  if (pending_.back().op != Op::sync && PQsendFlushRequest(conn_) != 1) {
    fail("sending a flush request");
  }
  if (PQflush(conn_) != 0) fail("flushing the pipeline");
}

void Pipeline::drain_to(std::size_t max_bytes, std::size_t max_commands) {
  if (pending_.empty()) return;
  request_flush();
  while (!pending_.empty() && (pending_bytes_ > max_bytes || pending_.size() > max_commands)) {
    read_next();
  }
  sent_since_read_ = 0;
}

void Pipeline::sync_and_drain() {
  if (PQpipelineSync(conn_) != 1) fail("sending a pipeline sync");
  push({Op::sync, Lsn::invalid()}, 0);
  while (!pending_.empty()) read_next();
  sent_since_read_ = 0;
}

Result Pipeline::sync(Op op) {
  if (PQpipelineSync(conn_) != 1) fail("sending a pipeline sync");
  push({Op::sync, Lsn::invalid()}, 0);
  Result kept;
  bool found = false;
  while (!pending_.empty()) {
    bool keep = !found && pending_.front().op == op;
    Result result = read_next();
    if (keep) {
      kept = std::move(result);
      found = true;
    }
  }
  sent_since_read_ = 0;
  return kept;
}

Result Pipeline::query(std::string_view sql, std::initializer_list<Param> params, Lsn commit_lsn) {
  send_query(sql, {Op::query, commit_lsn}, params);
  request_flush();
  while (pending_.size() > 1) read_next();
  return read_next();
}

}  // namespace pgferry::replication::apply
