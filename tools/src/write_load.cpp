// WriteLoad implementation: one libpq connection per client thread (through PgBouncer, in
// transaction pooling), reconnecting after an error.
#include "pgferry/tools/write_load.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <map>

namespace pgferry::tools {

namespace repl = pgferry::replication;
using Clock = std::chrono::steady_clock;

const char* kLedgerSchema =
    "CREATE TABLE ledger (id bigserial PRIMARY KEY, client int NOT NULL, seq int NOT NULL, "
    "value int NOT NULL DEFAULT 0, origin text NOT NULL DEFAULT current_setting('cluster_name'), "
    "UNIQUE (client, seq))";

WriteLoad::WriteLoad(std::string conninfo, int clients, std::chrono::microseconds pause)
    : conninfo_(std::move(conninfo)), clients_(clients), pause_(pause) {}

WriteLoad::~WriteLoad() {
  stop();
}

void WriteLoad::start() {
  stop_ = false;
  for (int client = 0; client < clients_; ++client) {
    threads_.emplace_back([this, client] { client_loop(client); });
  }
}

void WriteLoad::stop() {
  stop_ = true;
  for (auto& thread : threads_) thread.join();
  threads_.clear();
}

void WriteLoad::client_loop(int client) {
  int seq = 0;
  // Resume numbering after a restart of the load (stop, start).
  {
    std::lock_guard lock(mutex_);
    for (const auto& commit : acked_) {
      if (commit.client == client) seq = std::max(seq, commit.seq);
    }
  }
  repl::Connection conn;
  while (!stop_) {
    try {
      if (!conn.is_open()) conn = repl::Connection::open(conninfo_, repl::Side::none);
      int next = seq + 1;
      auto started = Clock::now();
      // One statement, one transaction, one round trip.
      auto id = conn.exec(
          fmt::format("WITH previous AS (UPDATE ledger SET value = value + 1 WHERE client = {0} "
                      "AND seq = {1}) INSERT INTO ledger (client, seq) VALUES ({0}, {2}) "
                      "RETURNING id",
                      client, seq, next));
      AckedCommit commit{client, next, std::stoll(id.scalar()), started, Clock::now()};
      {
        std::lock_guard lock(mutex_);
        acked_.push_back(commit);
      }
      ++acked_count_;
      seq = next;
    } catch (const std::exception& e) {
      {
        std::lock_guard lock(mutex_);
        errors_.push_back(fmt::format("client {}: {}", client, e.what()));
      }
      conn.close();
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      // The outcome of that commit is unknown: the next transaction uses a fresh number.
      {
        std::lock_guard lock(mutex_);
        seq += 1000;
      }
    }
    if (pause_.count() > 0) std::this_thread::sleep_for(pause_);
  }
}

std::vector<AckedCommit> WriteLoad::acked() const {
  std::lock_guard lock(mutex_);
  return acked_;
}

std::vector<std::string> WriteLoad::errors() const {
  std::lock_guard lock(mutex_);
  return errors_;
}

bool WriteLoad::wait_for_more(std::size_t n, std::chrono::milliseconds timeout) {
  auto goal = acked_count_.load() + n;
  auto deadline = Clock::now() + timeout;
  while (acked_count_.load() < goal) {
    if (Clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

std::chrono::microseconds WriteLoad::max_latency() const {
  std::lock_guard lock(mutex_);
  std::chrono::microseconds longest{0};
  for (const auto& commit : acked_) {
    longest = std::max(longest, std::chrono::duration_cast<std::chrono::microseconds>(
                                    commit.acked - commit.started));
  }
  return longest;
}

std::vector<std::string> WriteLoad::check_on(const repl::Connection& conn) const {
  auto commits = acked();
  std::map<std::pair<int, int>, std::pair<std::int64_t, int>> rows;  // (client, seq) -> id, value
  auto result = conn.exec("SELECT client, seq, id, value FROM ledger");
  for (int row = 0; row < result.rows(); ++row) {
    auto key = std::make_pair(std::stoi(std::string(result.get(row, 0))),
                              std::stoi(std::string(result.get(row, 1))));
    rows[key] = {std::stoll(std::string(result.get(row, 2))),
                 std::stoi(std::string(result.get(row, 3)))};
  }
  // (client, seq) of acknowledged commits, to know whether a row's update was acknowledged.
  std::map<std::pair<int, int>, bool> acked_keys;
  for (const auto& commit : commits) acked_keys[{commit.client, commit.seq}] = true;
  std::vector<std::string> problems;
  for (const auto& commit : commits) {
    auto it = rows.find({commit.client, commit.seq});
    if (it == rows.end()) {
      problems.push_back(fmt::format("client {} seq {} (id {}) acknowledged but missing",
                                     commit.client, commit.seq, commit.id));
      continue;
    }
    if (it->second.first != commit.id) {
      problems.push_back(fmt::format("client {} seq {}: id {} acknowledged, {} found",
                                     commit.client, commit.seq, commit.id, it->second.first));
    }
    // Updated exactly once by the client's next acknowledged transaction, never twice.
    bool next_acked = acked_keys.count({commit.client, commit.seq + 1}) > 0;
    int value = it->second.second;
    if (value > 1 || (next_acked && value != 1)) {
      problems.push_back(fmt::format("client {} seq {}: value {} (next acknowledged: {})",
                                     commit.client, commit.seq, value, next_acked));
    }
  }
  return problems;
}

}  // namespace pgferry::tools
