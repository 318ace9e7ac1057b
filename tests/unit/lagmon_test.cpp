// lagmon without a server: Prometheus exposition, lag arithmetic, trend/ETA, rendering,
// timestamp parsing, the HTTP endpoint, the agent's readiness (/ready) and repeated conflicts
// in /status and /metrics.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "pgferry/lagmon/agent_reporter.hpp"
#include "pgferry/lagmon/http_server.hpp"
#include "pgferry/lagmon/metrics.hpp"
#include "pgferry/lagmon/render.hpp"
#include "pgferry/lagmon/sample.hpp"
#include "pgferry/replication/core/error.hpp"
#include "support/http_get.hpp"
#include "support/prometheus_text.hpp"

namespace lagmon = pgferry::lagmon;
using pgferry::replication::Lsn;
using namespace pgferry::testing;

TEST(Metrics, RendersValidExpositionFormat) {
  lagmon::MetricsRegistry registry;
  registry.counter("pgferry_rows_applied_total", "Rows applied.", {{"op", "insert"}}).inc(5);
  registry.counter("pgferry_rows_applied_total", "Rows applied.", {{"op", "delete"}}).inc(2);
  registry.counter("pgferry_rows_applied_total", "Rows applied.", {{"op", "insert"}}).inc(1);
  registry.gauge("pgferry_lag_bytes", "Lag.\nSecond line \\ backslash").set(1234);
  registry.gauge("pgferry_weird", "Label escaping.", {{"v", "a\"b\\c\nd"}}).set(0.5);
  auto& histogram = registry.histogram("pgferry_batch_rows", "Rows a batch.", {10, 100, 1000});
  for (double v : {1.0, 10.0, 50.0, 5000.0}) histogram.observe(v);

  std::string text = registry.render();
  auto samples = parse_prometheus_text(text);
  EXPECT_EQ(prometheus_value(samples, "pgferry_rows_applied_total", {{"op", "insert"}}), 6);
  EXPECT_EQ(prometheus_value(samples, "pgferry_rows_applied_total", {{"op", "delete"}}), 2);
  EXPECT_EQ(prometheus_value(samples, "pgferry_lag_bytes"), 1234);
  EXPECT_EQ(prometheus_value(samples, "pgferry_batch_rows_bucket", {{"le", "10"}}), 2);
  EXPECT_EQ(prometheus_value(samples, "pgferry_batch_rows_bucket", {{"le", "100"}}), 3);
  EXPECT_EQ(prometheus_value(samples, "pgferry_batch_rows_bucket", {{"le", "+Inf"}}), 4);
  EXPECT_EQ(prometheus_value(samples, "pgferry_batch_rows_count"), 4);
  EXPECT_EQ(prometheus_value(samples, "pgferry_batch_rows_sum"), 5061);
  EXPECT_NE(text.find("# TYPE pgferry_rows_applied_total counter"), std::string::npos);
  EXPECT_NE(text.find("Lag.\\nSecond line \\\\ backslash"), std::string::npos);
  EXPECT_NE(text.find(R"(v="a\"b\\c\nd")"), std::string::npos);
  EXPECT_THROW(registry.counter("bad name", "x"), std::invalid_argument);
  EXPECT_THROW(registry.gauge("pgferry_rows_applied_total", "x"), std::invalid_argument);
}

TEST(Metrics, ParserRejectsBadText) {
  EXPECT_THROW(parse_prometheus_text("no_type 1\n"), std::runtime_error);
  EXPECT_THROW(parse_prometheus_text("# TYPE a counter\na{x=\"1} 2\n"), std::runtime_error);
  EXPECT_THROW(parse_prometheus_text("# TYPE a counter\na 1"), std::runtime_error);
}

TEST(Lag, BytesAndTrend) {
  lagmon::LagSample a;
  a.taken_at = lagmon::Clock::time_point{} + std::chrono::seconds(100);
  a.source_lsn = Lsn{10'000};
  a.applied_lsn = Lsn{4'000};
  a.slot_exists = true;
  a.restart_lsn = Lsn{3'000};
  EXPECT_EQ(a.lag_bytes(), 6'000u);
  EXPECT_EQ(a.retained_bytes(), 7'000u);
  EXPECT_EQ(a.state(), lagmon::AgentState::stopped);

  lagmon::LagSample b = a;
  b.taken_at += std::chrono::seconds(2);
  b.source_lsn = Lsn{11'000};
  b.applied_lsn = Lsn{9'000};
  auto t = lagmon::trend(a, b);
  EXPECT_DOUBLE_EQ(t.applied_bytes_per_second, 2'500);
  EXPECT_DOUBLE_EQ(t.lag_change_per_second, -2'000);
  ASSERT_TRUE(t.eta);
  EXPECT_EQ(t.eta->count(), 1);

  // Applied read a moment before the source: never a negative lag.
  lagmon::LagSample c = b;
  c.applied_lsn = Lsn{12'000};
  EXPECT_EQ(c.lag_bytes(), 0u);
  lagmon::LagSample d;
  EXPECT_FALSE(d.lag_bytes());
  EXPECT_EQ(d.state(), lagmon::AgentState::not_initialized);
}

TEST(Lag, RenderingAndHumanBytes) {
  EXPECT_EQ(lagmon::human_bytes(0), "0 B");
  EXPECT_EQ(lagmon::human_bytes(1023), "1023 B");
  EXPECT_EQ(lagmon::human_bytes(1536), "1.5 KiB");
  EXPECT_EQ(lagmon::human_bytes(5ull << 30), "5.0 GiB");
  lagmon::LagSample s;
  s.source_lsn = *Lsn::parse("0/3000000");
  s.applied_lsn = *Lsn::parse("0/2000000");
  s.slot_exists = s.slot_active = true;
  auto json = lagmon::render_json(s, std::nullopt);
  EXPECT_EQ(json["lag_bytes"], 0x1000000);
  EXPECT_EQ(json["state"], "streaming");
  EXPECT_EQ(json["applied_lsn"], "0/2000000");
  EXPECT_TRUE(json["slot"]["restart_lsn"].is_null());
  auto text = lagmon::render_text(s, std::nullopt);
  EXPECT_NE(text.find("16.0 MiB (16777216 bytes)"), std::string::npos) << text;
}

TEST(Lag, ParsesTimestamptz) {
  auto t = lagmon::parse_timestamptz("2026-11-21 06:14:45.5+00");
  ASSERT_TRUE(t);
  EXPECT_EQ(std::chrono::duration_cast<std::chrono::milliseconds>(t->time_since_epoch()).count(),
            1'795'241'685'500);
  auto shifted = lagmon::parse_timestamptz("2026-11-21 08:14:45.5+02");
  ASSERT_TRUE(shifted);
  EXPECT_EQ(*shifted, *t);
  EXPECT_FALSE(lagmon::parse_timestamptz("yesterday"));
}

TEST(HttpServer, ServesAndRejects) {
  lagmon::HttpServer server(
      "127.0.0.1:0", [](const std::string& path) -> std::optional<lagmon::HttpResponse> {
        if (path == "/metrics")
          return lagmon::HttpResponse{200, "text/plain", "# TYPE x gauge\nx 1\n"};
        return std::nullopt;
      });
  ASSERT_GT(server.port(), 0);
  auto [status, body] = http_get(server.port(), "/metrics");
  EXPECT_EQ(status, 200);
  EXPECT_EQ(body, "# TYPE x gauge\nx 1\n");
  EXPECT_EQ(http_get(server.port(), "/nope").first, 404);
  EXPECT_THROW(lagmon::HttpServer("nonsense", {}), pgferry::replication::ConfigError);
  EXPECT_THROW(lagmon::HttpServer("127.0.0.1:99999", {}), pgferry::replication::ConfigError);
}

TEST(AgentReporter, ReadyOnlyWhileASessionStreams) {
  namespace repl = pgferry::replication;
  lagmon::AgentReporter reporter("ready_test", "ready_test", "127.0.0.1:0");
  ASSERT_GT(reporter.port(), 0);
  auto ready = [&] {
    auto [status, body] = http_get(reporter.port(), "/ready");
    return std::make_pair(status, nlohmann::json::parse(body));
  };
  auto status_doc = [&] {
    auto [status, body] = http_get(reporter.port(), "/status");
    EXPECT_EQ(status, 200);  // liveness: always, while the process answers
    return nlohmann::json::parse(body);
  };
  auto gauge = [&](const std::string& name) {
    return prometheus_value(parse_prometheus_text(http_get(reporter.port(), "/metrics").second),
                            name);
  };

  auto [code, body] = ready();
  EXPECT_EQ(code, 503);
  EXPECT_EQ(body["ready"], false);
  EXPECT_EQ(body["state"], "starting");
  EXPECT_EQ(body["reason"], "no session yet");

  reporter.session_started();
  std::tie(code, body) = ready();
  EXPECT_EQ(code, 200) << body;
  EXPECT_EQ(body["state"], "streaming");
  EXPECT_EQ(status_doc()["ready"], true);

  reporter.session_lost("source: connection refused");
  std::tie(code, body) = ready();
  EXPECT_EQ(code, 503);
  EXPECT_EQ(body["state"], "reconnecting");
  EXPECT_EQ(body["reason"], "source: connection refused");

  // A conflict that recurs at one position shows in /status and /metrics ...
  repl::AgentRetry retry{
      "target: lock timeout",        "lock timeout", "end the session", Lsn(0x1000), 4, 30,
      std::chrono::milliseconds(800)};
  reporter.retrying(retry);
  auto doc = status_doc();
  EXPECT_EQ(doc["repeated_failure"]["count"], 4) << doc;
  EXPECT_EQ(doc["repeated_failure"]["max"], 30);
  EXPECT_EQ(doc["repeated_failure"]["lsn"], "0/1000");
  EXPECT_EQ(doc["repeated_failure"]["fix"], "end the session");
  EXPECT_EQ(gauge("pgferry_conflicts_at_lsn"), 4);
  // ... a retry that is not a conflict changes nothing ...
  reporter.retrying(repl::AgentRetry{"gone", "connection lost", "", Lsn(0x1000), 0, 30, {}});
  EXPECT_EQ(gauge("pgferry_conflicts_at_lsn"), 4);
  // ... and it clears once the applied position moves past it.
  reporter.session_started();
  repl::AgentProgress progress;
  progress.durable = Lsn(0x1000);
  reporter.update(progress);
  EXPECT_EQ(gauge("pgferry_conflicts_at_lsn"), 4);
  progress.durable = Lsn(0x2000);
  reporter.update(progress);
  EXPECT_EQ(gauge("pgferry_conflicts_at_lsn"), 0);
  EXPECT_TRUE(status_doc()["repeated_failure"].is_null());
  EXPECT_EQ(ready().first, 200);

  reporter.finished(repl::AgentResult{});
  std::tie(code, body) = ready();
  EXPECT_EQ(code, 503);
  EXPECT_EQ(body["state"], "stopped");
}
