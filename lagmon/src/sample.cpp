// Lag sampling queries.
#include "pgferry/lagmon/sample.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <climits>
#include <thread>

#include "pgferry/replication/apply/copy_encoding.hpp"
#include "pgferry/replication/core/error.hpp"
#include "pgferry/replication/core/ids.hpp"

namespace pgferry::lagmon {

namespace repl = pgferry::replication;

std::string_view to_string(AgentState state) {
  switch (state) {
    case AgentState::streaming:
      return "streaming";
    case AgentState::stopped:
      return "stopped";
    case AgentState::no_slot:
      return "no slot";
    case AgentState::not_initialized:
      return "not initialized";
  }
  return "unknown";
}

AgentState LagSample::state() const {
  if (!applied_lsn) return AgentState::not_initialized;
  if (!slot_exists) return AgentState::no_slot;
  return slot_active ? AgentState::streaming : AgentState::stopped;
}

std::optional<std::uint64_t> LagSample::lag_bytes() const {
  if (!applied_lsn) return std::nullopt;
  auto diff = source_lsn - *applied_lsn;
  return diff > 0 ? static_cast<std::uint64_t>(diff) : 0;
}

std::optional<std::uint64_t> LagSample::retained_bytes() const {
  if (!restart_lsn) return std::nullopt;
  auto diff = source_lsn - *restart_lsn;
  return diff > 0 ? static_cast<std::uint64_t>(diff) : 0;
}

LagTrend trend(const LagSample& previous, const LagSample& current) {
  LagTrend result;
  double seconds = std::chrono::duration<double>(current.taken_at - previous.taken_at).count();
  if (seconds <= 0 || !previous.applied_lsn || !current.applied_lsn) return result;
  result.applied_bytes_per_second =
      static_cast<double>(*current.applied_lsn - *previous.applied_lsn) / seconds;
  auto lag_now = static_cast<double>(current.lag_bytes().value_or(0));
  auto lag_before = static_cast<double>(previous.lag_bytes().value_or(0));
  result.lag_change_per_second = (lag_now - lag_before) / seconds;
  if (lag_now == 0) {
    result.eta = std::chrono::seconds(0);
  } else if (result.lag_change_per_second < 0) {
    result.eta = std::chrono::seconds(
        static_cast<std::int64_t>(lag_now / -result.lag_change_per_second + 0.5));
  }
  return result;
}

std::optional<Clock::time_point> parse_timestamptz(std::string_view text) {
  // DateStyle ISO, which every pgferry session sets.
  auto micros = repl::parse_timestamp_micros(text, true);
  if (!micros || *micros == INT64_MAX || *micros == INT64_MIN) return std::nullopt;
  return Clock::time_point(repl::from_pg_timestamp(*micros));
}

LagSampler::LagSampler(std::string source_conninfo, std::string target_conninfo, std::string name)
    : source_conninfo_(std::move(source_conninfo)),
      target_conninfo_(std::move(target_conninfo)),
      name_(std::move(name)) {}

namespace {

std::optional<Lsn> optional_lsn(const repl::Result& result, int row, int column) {
  auto text = result.optional(row, column);
  if (!text) return std::nullopt;
  return Lsn::parse(*text);
}

template <typename Fn>
std::chrono::microseconds timed(Fn&& fn) {
  auto start = std::chrono::steady_clock::now();
  fn();
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() -
                                                               start);
}

// Opens `conn` if needed; a failed query on a lost connection drops it so the next sample
// reconnects.
void ensure_open(repl::Connection& conn, const std::string& conninfo, repl::Side side) {
  if (conn.is_open()) return;
  conn = repl::Connection::open(conninfo, side, {{"application_name", "pgferry lag"}});
  conn.exec("SET DateStyle = ISO; SET TimeZone = 'UTC'");
}

}  // namespace

void LagSampler::sample_source(LagSample& sample) {
  ensure_open(source_, source_conninfo_, repl::Side::source);
  repl::Result result;
  try {
    sample.source_rtt = timed([&] {
      result = source_.exec(
          "SELECT pg_current_wal_lsn(), s.confirmed_flush_lsn, s.restart_lsn, s.active, "
          "s.active_pid, s.wal_status, s.slot_name IS NOT NULL "
          "FROM (SELECT 1) AS one LEFT JOIN pg_replication_slots AS s ON s.slot_name = $1",
          {name_}, "sampling the source's WAL position and slot");
    });
  } catch (const repl::ConnectionError&) {
    source_.close();
    throw;
  }
  sample.source_lsn = optional_lsn(result, 0, 0).value_or(Lsn{});
  sample.confirmed_flush_lsn = optional_lsn(result, 0, 1);
  sample.restart_lsn = optional_lsn(result, 0, 2);
  sample.slot_active = result.get(0, 3) == "t";
  if (auto pid = result.optional(0, 4)) sample.active_pid = std::stoi(std::string(*pid));
  sample.wal_status = std::string(result.get(0, 5));
  sample.slot_exists = result.get(0, 6) == "t";
}

void LagSampler::sample_target(LagSample& sample) {
  ensure_open(target_, target_conninfo_, repl::Side::target);
  repl::Result result;
  try {
    sample.target_rtt = timed([&] {
      result = target_.exec(
          "SELECT applied_lsn, source_commit_time, updated_at FROM pgferry.progress "
          "WHERE name = $1",
          {name_}, "reading the progress record");
    });
  } catch (const repl::ConnectionError&) {
    target_.close();
    throw;
  } catch (const repl::SqlError& e) {
    // No pgferry schema or progress table yet: not initialized, an expected miss.
    if (e.sqlstate() == "42P01" || e.sqlstate() == "3F000") return;
    throw;
  }
  if (result.columns() < 3 || result.rows() == 0) return;
  sample.applied_lsn = optional_lsn(result, 0, 0);
  if (auto t = result.optional(0, 1)) sample.last_commit_time = parse_timestamptz(*t);
  if (auto t = result.optional(0, 2)) sample.progress_updated_at = parse_timestamptz(*t);
}

LagSample LagSampler::sample() {
  LagSample sample;
  // Target first: the source position read second is never older than the applied one,
  // so lag is not under-reported.
  sample_target(sample);
  sample_source(sample);
  sample.taken_at = Clock::now();
  return sample;
}

void LagWatch::run(const Handler& on_sample) {
  auto stopped = [this] { return stop_requested_.load(std::memory_order_relaxed); };
  std::optional<LagSample> previous;
  for (long n = 0; !stopped() && (count_ == 0 || n < count_); ++n) {
    auto started = std::chrono::steady_clock::now();
    try {
      auto sample = sampler_->sample();
      std::optional<LagTrend> lag_trend;
      if (previous) lag_trend = trend(*previous, sample);
      on_sample(sample, lag_trend);
      previous = sample;
    } catch (const replication::ConnectionError& e) {
      // Keep watching through a restart of either server; say what is wrong.
      spdlog::warn("{}", e.what());
      previous.reset();
    }
    auto next =
        started + std::chrono::duration_cast<std::chrono::steady_clock::duration>(interval_);
    while (!stopped() && std::chrono::steady_clock::now() < next) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
}

}  // namespace pgferry::lagmon
