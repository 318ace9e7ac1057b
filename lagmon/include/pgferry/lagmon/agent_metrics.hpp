// The agent's metrics and status: what `pgferry run --metrics-listen ADDR` serves.
// AgentReporter (agent_reporter.hpp) updates these between polls; the HTTP thread renders them.
#pragma once

#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>

#include "pgferry/lagmon/http_server.hpp"
#include "pgferry/lagmon/metrics.hpp"

namespace pgferry::lagmon {

struct AgentMetrics {
  explicit AgentMetrics(MetricsRegistry& registry);

  Gauge& up;           // 1 while streaming, 0 while reconnecting
  Gauge& lag_bytes;    // source WAL end (last keepalive) − applied position
  Gauge& applied_lsn;  // as a number (Prometheus has no LSN type)
  Gauge& received_lsn;
  Gauge& source_wal_end_lsn;
  Counter& transactions;  // source transactions applied
  Counter& rows_inserted;
  Counter& rows_updated;
  Counter& rows_deleted;
  Counter& truncates;
  Counter& bytes_received;  // pgoutput payload bytes
  Gauge& spool_bytes;       // streamed transactions waiting for their commit, on disk
  Counter& streamed_live;   // streamed transactions applied as they streamed
  Counter& streamed_spool;  // streamed transactions replayed from the spool at commit
  Counter& reconnects;
  Counter& errors;
  Gauge& conflicts_at_lsn;        // retryable conflicts in a row at the applied position
  Histogram& batch_transactions;  // source transactions per target transaction
  Histogram& batch_rows;          // rows per target transaction
};

// The /status document, replaced whole by the run loop; read by the HTTP thread. Readiness
// is the status document's `ready` field: true only while a session streams.
class StatusBoard {
 public:
  void set(nlohmann::json status) {
    std::lock_guard lock(mutex_);
    status_ = std::move(status);
  }
  nlohmann::json get() const {
    std::lock_guard lock(mutex_);
    return status_;
  }

 private:
  mutable std::mutex mutex_;
  nlohmann::json status_ = nlohmann::json::object();
};

// Serves GET /metrics (Prometheus text), GET /status (JSON, 200 while the process runs: the
// liveness probe) and GET /ready (200 while a session streams, else 503; both with a JSON
// body: ready, state and, when not ready, the reason) on `listen`.
std::unique_ptr<HttpServer> serve_agent_endpoints(const std::string& listen,
                                                  const MetricsRegistry& registry,
                                                  const StatusBoard& status);

}  // namespace pgferry::lagmon
