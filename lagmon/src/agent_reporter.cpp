// The agent's /metrics and /status, updated from the agent's progress snapshots.
#include "pgferry/lagmon/agent_reporter.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <nlohmann/json.hpp>

namespace pgferry::lagmon {

namespace repl = pgferry::replication;
using namespace std::chrono_literals;

AgentReporter::AgentReporter(std::string name, std::string publication, const std::string& listen)
    : name_(std::move(name)), publication_(std::move(publication)), metrics_(registry_) {
  if (!listen.empty()) {
    server_ = serve_agent_endpoints(listen, registry_, status_);
    spdlog::info("run slot={} serving /metrics and /status on http://{}", name_,
                 server_->address());
  }
  publish("starting", {}, {}, {});
}

unsigned short AgentReporter::port() const {
  return server_ ? server_->port() : 0;
}

void AgentReporter::session_started() {
  last_ = {};
  last_streamed_ = 0;
  last_live_ = 0;
  last_bytes_ = 0;
  metrics_.up.set(1);
  ready_ = true;
  publish("streaming", {}, {}, {});
  last_status_ = {};  // the first update publishes the positions at once
}

void AgentReporter::session_lost(const std::string& error) {
  metrics_.up.set(0);
  metrics_.errors.inc();
  metrics_.reconnects.inc();
  last_error_ = error;
  ready_ = false;
  not_ready_reason_ = error;
  publish("reconnecting", {}, {}, {});
}

void AgentReporter::retrying(const repl::AgentRetry& retry) {
  if (retry.conflicts_at_lsn == 0) return;  // not a conflict: neither counts nor resets
  conflict_ = retry;
  metrics_.conflicts_at_lsn.set(retry.conflicts_at_lsn);
  publish("reconnecting", {}, {}, {});
}

void AgentReporter::update(const repl::AgentProgress& progress) {
  const auto& c = progress.counters;
  metrics_.transactions.inc(c.transactions_applied - last_.transactions_applied);
  metrics_.rows_inserted.inc(c.rows_inserted - last_.rows_inserted);
  metrics_.rows_updated.inc(c.rows_updated - last_.rows_updated);
  metrics_.rows_deleted.inc(c.rows_deleted - last_.rows_deleted);
  metrics_.truncates.inc(c.relations_truncated - last_.relations_truncated);
  if (auto groups = c.groups_committed - last_.groups_committed; groups > 0) {
    // Between two polls (100 ms) usually one group commits; with several, each is counted
    // at the mean size of those committed in the interval.
    double txns = static_cast<double>(c.transactions_applied - last_.transactions_applied);
    double rows =
        static_cast<double>(c.rows_inserted + c.rows_updated + c.rows_deleted -
                            last_.rows_inserted - last_.rows_updated - last_.rows_deleted);
    for (std::uint64_t i = 0; i < groups; ++i) {
      metrics_.batch_transactions.observe(txns / static_cast<double>(groups));
      metrics_.batch_rows.observe(rows / static_cast<double>(groups));
    }
  }
  last_ = c;
  auto durable = progress.durable;
  if (conflict_ && durable > conflict_->applied) {
    conflict_.reset();
    metrics_.conflicts_at_lsn.set(0);
    last_status_ = {};  // publish the change now
  }
  auto wal_end = std::max(progress.server_wal_end, progress.received);
  metrics_.applied_lsn.set(static_cast<double>(durable.value()));
  metrics_.received_lsn.set(static_cast<double>(progress.received.value()));
  metrics_.source_wal_end_lsn.set(static_cast<double>(wal_end.value()));
  metrics_.lag_bytes.set(static_cast<double>(std::max<std::int64_t>(0, wal_end - durable)));
  metrics_.spool_bytes.set(static_cast<double>(progress.spooled_bytes));
  metrics_.bytes_received.inc(progress.received_bytes - last_bytes_);
  last_bytes_ = progress.received_bytes;
  metrics_.streamed_live.inc(progress.streamed_live - last_live_);
  metrics_.streamed_spool.inc((progress.streamed - progress.streamed_live) -
                              (last_streamed_ - last_live_));
  last_streamed_ = progress.streamed;
  last_live_ = progress.streamed_live;
  auto now = Clock::now();
  if (now - last_status_ >= 1s) {
    publish("streaming", durable, progress.received, wal_end);
    last_status_ = now;
  }
}

void AgentReporter::finished(const repl::AgentResult& result) {
  ready_ = false;
  not_ready_reason_ = "the agent has finished";
  const char* state = "stopped";
  if (result.outcome == repl::AgentOutcome::reached_until) state = "done";
  if (result.outcome == repl::AgentOutcome::fenced) state = "fenced";
  publish(state, result.applied, {}, {});
}

void AgentReporter::publish(const char* state, repl::Lsn applied, repl::Lsn received,
                            repl::Lsn wal_end) {
  auto lsn = [](repl::Lsn l) {
    return l.is_valid() ? nlohmann::json(l.to_string()) : nlohmann::json(nullptr);
  };
  status_.set({
      {"state", state},
      {"slot", name_},
      {"publication", publication_},
      {"applied_lsn", lsn(applied)},
      {"received_lsn", lsn(received)},
      {"source_wal_end_lsn", lsn(wal_end)},
      {"lag_bytes", applied.is_valid() && wal_end.is_valid()
                        ? nlohmann::json(std::max<std::int64_t>(0, wal_end - applied))
                        : nlohmann::json(nullptr)},
      {"transactions_applied", metrics_.transactions.value()},
      {"rows_applied",
       {{"insert", metrics_.rows_inserted.value()},
        {"update", metrics_.rows_updated.value()},
        {"delete", metrics_.rows_deleted.value()}}},
      {"reconnects", metrics_.reconnects.value()},
      {"last_error", last_error_.empty() ? nlohmann::json(nullptr) : nlohmann::json(last_error_)},
      {"uptime_seconds", std::chrono::duration<double>(Clock::now() - started_).count()},
      {"ready", ready_},
      {"not_ready_reason", ready_ ? nlohmann::json(nullptr) : nlohmann::json(not_ready_reason_)},
      {"repeated_failure", repeated_failure()},
  });
}

nlohmann::json AgentReporter::repeated_failure() const {
  if (!conflict_) return nullptr;
  return {{"reason", conflict_->reason},     {"count", conflict_->conflicts_at_lsn},
          {"max", conflict_->max_conflicts}, {"lsn", conflict_->applied.to_string()},
          {"error", conflict_->error},       {"fix", conflict_->fix}};
}

}  // namespace pgferry::lagmon
