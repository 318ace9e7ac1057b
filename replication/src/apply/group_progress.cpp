// Grouping and progress (see group_progress.hpp).
#include "group_progress.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <iterator>
#include <string>

#include "pgferry/replication/apply/progress.hpp"

namespace pgferry::replication::apply {

namespace {
constexpr std::string_view kWalPositionSql =
    "SELECT pg_current_wal_insert_lsn()::text, pg_current_wal_flush_lsn()::text";
}  // namespace

GroupProgress::GroupProgress(Pipeline& pipeline, const ApplierOptions& options,
                             ApplyCounters& counters, Lsn applied, bool durable)
    : pipeline_(pipeline),
      options_(options),
      counters_(counters),
      async_commit_(options.synchronous_commit == "off"),
      resume_lsn_(applied),
      applied_lsn_(applied),
      durable_lsn_(durable ? applied.value() : 0),
      last_commit_end_(applied) {}

void GroupProgress::send_fixed(std::string_view sql, const Command& command) {
  // Keyed by the text itself: none of these is a statement key of another part.
  const Statement& statement = pipeline_.statement(sql, 0, [&] { return std::string(sql); });
  Params& params = pipeline_.params();
  params.clear();
  params.finish();
  pipeline_.send_prepared(statement, command);
}

void GroupProgress::open_group(Lsn commit_lsn) {
  send_fixed("BEGIN", {Op::begin, commit_lsn});
  open_ = true;
  started_ = Clock::now();
  bytes_ = 0;
  rows_ = 0;
  transactions_ = 0;
}

void GroupProgress::accept(const TransactionCommit& commit) {
  end_lsn_ = commit.end_lsn;
  commit_time_ = commit.commit_time;
  applied_lsn_ = std::max(applied_lsn_, commit.end_lsn);
  ++transactions_;
}

void GroupProgress::write_progress(Lsn lsn, std::optional<PgTimestamp> commit_time,
                                   Lsn commit_lsn) {
  const Statement& statement = pipeline_.statement(
      ProgressStore::kUpdateSql, 3, [] { return std::string(ProgressStore::kUpdateSql); });
  // Formatted straight into the parameter arena: nothing allocated per group.
  Params& params = pipeline_.params();
  params.clear();
  params.add(Param(options_.name));
  fmt::format_to(std::back_inserter(params.begin_value()), "{}", lsn);
  params.end_value();
  if (commit_time) {
    fmt::format_to(std::back_inserter(params.begin_value()), "{}", to_pg_timestamp(*commit_time));
    params.end_value();
  } else {
    params.add(Param(std::nullopt));
  }
  params.finish();
  pipeline_.send_prepared(statement, {Op::progress, commit_lsn, nullptr, {}, 1, this});
}

void GroupProgress::check(const Pending& /*pending*/, const Result& result) {
  if (result.affected_rows() == 1) return;
  pipeline_.set_broken();
  throw Error(fmt::format(
      "target: the progress record \"{}\" disappeared from pgferry.progress while applying; "
      "run `pgferry init --no-data` again and check who deletes it",
      options_.name));
}

void GroupProgress::refresh_durable(Lsn target_insert, Lsn target_flush) {
  if (target_insert.is_valid()) unflushed_.emplace_back(target_insert, last_commit_end_);
  while (!unflushed_.empty() && unflushed_.front().first <= target_flush) {
    durable_lsn_.store(std::max(durable_lsn_.load(), unflushed_.front().second.value()));
    unflushed_.pop_front();
  }
}

void GroupProgress::refresh_durable(const Result& position) {
  refresh_durable(Lsn::from_string(position.get(0, 0), "pg_current_wal_insert_lsn"),
                  Lsn::from_string(position.get(0, 1), "pg_current_wal_flush_lsn"));
}

void GroupProgress::sync_durable(Lsn end, Lsn commit_lsn) {
  if (async_commit_) pipeline_.send_query(kWalPositionSql, {Op::wal_position, commit_lsn});
  Result position = pipeline_.sync(Op::wal_position);
  last_commit_end_ = end;
  if (async_commit_) {
    refresh_durable(position);
  } else {
    durable_lsn_.store(end.value());
  }
}

void GroupProgress::commit(Lsn commit_lsn, bool durable) {
  write_progress(end_lsn_, commit_time_, commit_lsn);
  const bool flush_now = durable && async_commit_;
  if (flush_now) pipeline_.send_query("SET LOCAL synchronous_commit = on", {Op::query, commit_lsn});
  // Every result must be checked before COMMIT is sent (see NOTES).
  pipeline_.request_flush();
  pipeline_.drain();
  send_fixed("COMMIT", {Op::commit, commit_lsn});
  if (flush_now) {
    // Flushed with everything before it: what was waiting for the flush is durable too.
    pipeline_.sync(Op::commit);
    last_commit_end_ = end_lsn_;
    unflushed_.clear();
    durable_lsn_.store(std::max(durable_lsn_.load(), end_lsn_.value()));
  } else {
    sync_durable(end_lsn_, commit_lsn);
  }
  open_ = false;
  ApplyCounters::add(counters_.groups_committed, 1);
  spdlog::debug("committed group lsn={} transactions={} rows={} bytes={}", end_lsn_, transactions_,
                rows_, bytes_);
}

void GroupProgress::roll_back(Lsn commit_lsn) {
  pipeline_.send_query("ROLLBACK", {Op::query, commit_lsn});
  pipeline_.sync(Op::query);
  open_ = false;
  spdlog::debug("rolled back group transactions={} rows={} bytes={}", transactions_, rows_, bytes_);
}

void GroupProgress::include_applied(Lsn lsn) {
  // What it committed is applied: an idle position below it must never be written.
  applied_lsn_ = std::max(applied_lsn_, lsn);
  if (pending_idle_ <= applied_lsn_) pending_idle_ = Lsn::invalid();
}

void GroupProgress::refresh_flushed() {
  if (async_commit_ && !unflushed_.empty()) {
    auto result = pipeline_.query("SELECT pg_current_wal_flush_lsn()::text", {}, Lsn::invalid());
    refresh_durable(Lsn::invalid(), Lsn::from_string(result.get(0, 0), "pg_current_wal_flush_lsn"));
  }
}

void GroupProgress::idle(Lsn wal_end) {
  auto now = Clock::now();
  if (wal_end <= applied_lsn_) {
    if (pending_idle_ <= applied_lsn_) pending_idle_ = Lsn::invalid();
    return;
  }
  if (now - last_idle_write_ < options_.idle_progress_interval) {
    pending_idle_ = std::max(pending_idle_, wal_end);
    return;
  }
  pending_idle_ = Lsn::invalid();
  // Nothing of ours before wal_end is left: record it, so that lag reaches zero at idle.
  write_progress(wal_end, std::nullopt, Lsn::invalid());
  sync_durable(wal_end, Lsn::invalid());
  applied_lsn_ = wal_end;
  last_idle_write_ = now;
}

}  // namespace pgferry::replication::apply
