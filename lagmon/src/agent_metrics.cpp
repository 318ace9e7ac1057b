// The agent's metric families.
#include "pgferry/lagmon/agent_metrics.hpp"

namespace pgferry::lagmon {

AgentMetrics::AgentMetrics(MetricsRegistry& r)
    : up(r.gauge("pgferry_up",
                 "1 while the agent streams from the source, 0 while it reconnects.")),
      lag_bytes(r.gauge("pgferry_lag_bytes",
                        "Bytes of source WAL (as of the walsender's last report) not yet applied "
                        "on the target.")),
      applied_lsn(r.gauge("pgferry_applied_lsn",
                          "End LSN of the last source commit applied on the target, as a number.")),
      received_lsn(r.gauge("pgferry_received_lsn", "Highest source WAL position received.")),
      source_wal_end_lsn(
          r.gauge("pgferry_source_wal_end_lsn", "The source's WAL end as of its last keepalive.")),
      transactions(r.counter("pgferry_transactions_applied_total",
                             "Source transactions applied on the target.")),
      rows_inserted(r.counter("pgferry_rows_applied_total", "Rows applied on the target.",
                              {{"op", "insert"}})),
      rows_updated(r.counter("pgferry_rows_applied_total", "Rows applied on the target.",
                             {{"op", "update"}})),
      rows_deleted(r.counter("pgferry_rows_applied_total", "Rows applied on the target.",
                             {{"op", "delete"}})),
      truncates(r.counter("pgferry_truncates_applied_total", "TRUNCATE statements applied.")),
      bytes_received(r.counter("pgferry_received_bytes_total",
                               "pgoutput payload bytes received from the source.")),
      spool_bytes(r.gauge("pgferry_spool_bytes",
                          "Bytes of streamed in-progress transactions spooled on disk.")),
      streamed_live(r.counter("pgferry_streamed_transactions_total",
                              "Large transactions the source streamed in progress, by how they "
                              "were applied: live (as they streamed) or spool (at their commit).",
                              {{"apply", "live"}})),
      streamed_spool(r.counter("pgferry_streamed_transactions_total",
                               "Large transactions the source streamed in progress, by how they "
                               "were applied: live (as they streamed) or spool (at their commit).",
                               {{"apply", "spool"}})),
      reconnects(r.counter("pgferry_reconnects_total",
                           "Reconnections after a lost source or target connection.")),
      errors(r.counter("pgferry_errors_total", "Errors that interrupted streaming or applying.")),
      conflicts_at_lsn(r.gauge("pgferry_conflicts_at_lsn",
                               "Lock or statement timeouts, deadlocks or serialization failures in "
                               "a row at the applied position (0 once it moves); the agent stops "
                               "at --max-retries-same-lsn.")),
      batch_transactions(r.histogram("pgferry_batch_transactions",
                                     "Source transactions grouped into one target transaction.",
                                     {1, 2, 5, 10, 20, 50, 100, 200, 500, 1000})),
      batch_rows(r.histogram("pgferry_batch_rows", "Rows applied in one target transaction.",
                             {1, 10, 100, 1000, 10'000, 100'000, 1'000'000})) {}

std::unique_ptr<HttpServer> serve_agent_endpoints(const std::string& listen,
                                                  const MetricsRegistry& registry,
                                                  const StatusBoard& status) {
  return std::make_unique<HttpServer>(
      listen, [&registry, &status](const std::string& path) -> std::optional<HttpResponse> {
        if (path == "/metrics") {
          return HttpResponse{200, "text/plain; version=0.0.4; charset=utf-8", registry.render()};
        }
        if (path == "/status") {
          return HttpResponse{200, "application/json", status.get().dump(2) + "\n"};
        }
        if (path == "/ready") {
          auto current = status.get();
          bool ready = current.value("ready", false);
          nlohmann::json body{{"ready", ready}, {"state", current.value("state", "starting")}};
          if (!ready) body["reason"] = current.value("not_ready_reason", "");
          return HttpResponse{ready ? 200 : 503, "application/json", body.dump() + "\n"};
        }
        return std::nullopt;
      });
}

}  // namespace pgferry::lagmon
