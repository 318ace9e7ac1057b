// Human and JSON rendering of lag samples.
#include "pgferry/lagmon/render.hpp"

#include <fmt/chrono.h>
#include <fmt/format.h>

namespace pgferry::lagmon {

std::string human_bytes(std::uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  if (bytes < 1024) return fmt::format("{} B", bytes);
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024 && unit < 5) {
    value /= 1024;
    ++unit;
  }
  return fmt::format("{:.1f} {}", value, kUnits[unit]);
}

namespace {

std::string optional_lsn(const std::optional<Lsn>& lsn) {
  return lsn ? lsn->to_string() : std::string("-");
}

std::string eta_text(const std::optional<LagTrend>& trend, const LagSample& sample) {
  if (sample.lag_bytes().value_or(1) == 0) return "caught up";
  if (!trend) return "measuring";
  if (!trend->eta) return "not catching up";
  auto seconds = trend->eta->count();
  if (seconds < 60) return fmt::format("{}s", seconds);
  if (seconds < 3600) return fmt::format("{}m{:02}s", seconds / 60, seconds % 60);
  return fmt::format("{}h{:02}m", seconds / 3600, (seconds % 3600) / 60);
}

std::string lag_text(const LagSample& sample) {
  auto lag = sample.lag_bytes();
  return lag ? fmt::format("{} ({} bytes)", human_bytes(*lag), *lag) : std::string("unknown");
}

std::optional<double> seconds_since(const std::optional<Clock::time_point>& t,
                                    Clock::time_point now) {
  if (!t) return std::nullopt;
  return std::chrono::duration<double>(now - *t).count();
}

}  // namespace

std::string render_text(const LagSample& sample, const std::optional<LagTrend>& trend) {
  std::string out;
  auto add = [&out](std::string_view label, const std::string& value) {
    out += fmt::format("{:<22}{}\n", label, value);
  };
  add("state", std::string(to_string(sample.state())));
  add("lag", lag_text(sample));
  add("source WAL position", sample.source_lsn.to_string());
  add("applied position", optional_lsn(sample.applied_lsn));
  add("slot confirmed flush", optional_lsn(sample.confirmed_flush_lsn));
  auto retained = sample.retained_bytes();
  add("slot retains",
      retained ? fmt::format("{} ({} bytes){}", human_bytes(*retained), *retained,
                             sample.wal_status.empty() ? "" : ", wal " + sample.wal_status)
               : std::string("-"));
  if (trend) {
    add("catch-up rate",
        fmt::format(
            "{}/s applied, lag {}{}/s",
            human_bytes(static_cast<std::uint64_t>(std::max(0.0, trend->applied_bytes_per_second))),
            trend->lag_change_per_second <= 0 ? "-" : "+",
            human_bytes(static_cast<std::uint64_t>(std::abs(trend->lag_change_per_second)))));
  }
  add("ETA to zero", eta_text(trend, sample));
  if (auto age = seconds_since(sample.last_commit_time, sample.taken_at)) {
    add("last applied commit", fmt::format("{:.1f}s ago (source commit time)", *age));
  }
  return out;
}

std::string render_line(const LagSample& sample, const std::optional<LagTrend>& trend) {
  auto lag = sample.lag_bytes();
  return fmt::format("state={} lag_bytes={} source_lsn={} applied_lsn={} retained_bytes={} eta={}",
                     to_string(sample.state()), lag ? std::to_string(*lag) : "unknown",
                     sample.source_lsn, optional_lsn(sample.applied_lsn),
                     sample.retained_bytes() ? std::to_string(*sample.retained_bytes()) : "-",
                     eta_text(trend, sample));
}

nlohmann::json render_json(const LagSample& sample, const std::optional<LagTrend>& trend) {
  using nlohmann::json;
  auto lsn_or_null = [](const std::optional<Lsn>& lsn) -> json {
    return lsn ? json(lsn->to_string()) : json(nullptr);
  };
  auto time_text = [](Clock::time_point t) {
    return fmt::format("{:%Y-%m-%dT%H:%M:%S}Z",
                       std::chrono::time_point_cast<std::chrono::milliseconds>(t));
  };
  json out = {
      {"time", time_text(sample.taken_at)},
      {"state", to_string(sample.state())},
      {"source_lsn", sample.source_lsn.to_string()},
      {"applied_lsn", lsn_or_null(sample.applied_lsn)},
      {"lag_bytes", sample.lag_bytes() ? json(*sample.lag_bytes()) : json(nullptr)},
      {"slot",
       {{"exists", sample.slot_exists},
        {"active", sample.slot_active},
        {"confirmed_flush_lsn", lsn_or_null(sample.confirmed_flush_lsn)},
        {"restart_lsn", lsn_or_null(sample.restart_lsn)},
        {"retained_bytes",
         sample.retained_bytes() ? json(*sample.retained_bytes()) : json(nullptr)},
        {"wal_status", sample.wal_status.empty() ? json(nullptr) : json(sample.wal_status)}}},
      {"seconds_since_last_applied_commit",
       seconds_since(sample.last_commit_time, sample.taken_at)
           ? json(*seconds_since(sample.last_commit_time, sample.taken_at))
           : json(nullptr)},
      {"sample_ms",
       {{"source", sample.source_rtt.count() / 1000.0},
        {"target", sample.target_rtt.count() / 1000.0}}},
  };
  if (trend) {
    out["applied_bytes_per_second"] = trend->applied_bytes_per_second;
    out["lag_change_bytes_per_second"] = trend->lag_change_per_second;
    out["eta_seconds"] = trend->eta ? json(trend->eta->count()) : json(nullptr);
  }
  return out;
}

}  // namespace pgferry::lagmon
