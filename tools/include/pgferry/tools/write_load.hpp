// WriteLoad: a write load through PgBouncer for `pgferry demo` and the cutover tests: client
// threads, each committing numbered transactions (an insert of its next row and an update of
// its previous one) and recording every commit the server acknowledged and every error, so
// the demo and the tests can check afterwards that each acknowledged commit is on a server
// exactly once.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "pgferry/replication/core/pg.hpp"

namespace pgferry::tools {

// CREATE TABLE ledger: id bigserial, client, seq, value, origin (the cluster_name of the
// server the row was first written on).
extern const char* kLedgerSchema;

struct AckedCommit {
  int client = 0;
  int seq = 0;
  std::int64_t id = 0;  // the id the insert returned
  std::chrono::steady_clock::time_point started;
  std::chrono::steady_clock::time_point acked;
};

class WriteLoad {
 public:
  // `conninfo`: PgBouncer's client conninfo. `pause` between transactions per client.
  WriteLoad(std::string conninfo, int clients,
            std::chrono::microseconds pause = std::chrono::milliseconds(2));
  WriteLoad(const WriteLoad&) = delete;
  WriteLoad& operator=(const WriteLoad&) = delete;
  ~WriteLoad();

  void start();
  void stop();
  // Copies of what was acknowledged so far, and the errors clients saw (with their text).
  std::vector<AckedCommit> acked() const;
  std::vector<std::string> errors() const;
  std::size_t acked_count() const { return acked_count_.load(); }
  // Waits until `n` more commits are acknowledged than now (false after `timeout`).
  bool wait_for_more(std::size_t n, std::chrono::milliseconds timeout = std::chrono::seconds(30));
  // The longest time a single transaction took, start to acknowledgement.
  std::chrono::microseconds max_latency() const;

  // Checks every acknowledged commit on `conn`: its row exists once with the id it got, and
  // its update (by the next acknowledged commit of the client) is there. Returns a list of
  // problems (empty when all is well).
  std::vector<std::string> check_on(const replication::Connection& conn) const;

 private:
  void client_loop(int client);

  std::string conninfo_;
  int clients_;
  std::chrono::microseconds pause_;
  std::atomic<bool> stop_{false};
  std::vector<std::thread> threads_;
  mutable std::mutex mutex_;
  std::vector<AckedCommit> acked_;
  std::vector<std::string> errors_;
  std::atomic<std::size_t> acked_count_{0};
};

}  // namespace pgferry::tools
