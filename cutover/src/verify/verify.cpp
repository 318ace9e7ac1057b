// verify(): the chunk planner (one thread, its own source connection), the chunk workers
// (--jobs threads, each with a source and a target connection), narrowing a differing
// chunk down to keys, and the live-mode re-checks.
//
// NOTES
// - The planner walks ahead of the workers: integer keys are cut arithmetically from
//   min/max and the row estimate (no scan); other keys by walking the primary key index
//   `chunk_rows` entries at a time, while the workers already hash the chunks found.
// - The first pass sends a chunk's source and target queries at once (both servers work
//   at the same time). Live mode re-reads a differing chunk in order: source first (its
//   position P), then wait until the target's progress row passed P, then the target.
// - Narrowing halves a range at its median key while either side has more than
//   kListRows rows, and then lists (key, row hash) on each side. The candidate keys are
//   then looked up by key on both sides (rows_by_key: row hash and per-column hashes),
//   which also settles a key that the two sides' collations put in different chunks. In
//   live mode that look-up is repeated up to recheck_rounds times and only keys that
//   differ in every round are reported; in one-pass mode only the first max_keys
//   candidates of a table are looked up (to name columns), the rest are counted as listed.
// - A table without a primary key is hashed whole; a difference cannot be narrowed.
#include "pgferry/cutover/verify.hpp"

#include <fmt/format.h>
#include <libpq-fe.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "pgferry/replication/apply/progress.hpp"
#include "pgferry/replication/core/error.hpp"
#include "pgferry/replication/core/lsn.hpp"
#include "verify/table_plan.hpp"

namespace pgferry::cutover {

namespace repl = pgferry::replication;
using namespace verify_detail;

const char* to_string(DifferenceKind kind) {
  switch (kind) {
    case DifferenceKind::missing_on_target:
      return "missing on target";
    case DifferenceKind::extra_on_target:
      return "extra on target";
    case DifferenceKind::different:
      return "different";
  }
  return "?";
}

bool VerifyReport::equal() const {
  return std::all_of(tables.begin(), tables.end(), [](const auto& t) { return t.equal(); });
}

std::int64_t VerifyReport::differing_tables() const {
  return std::count_if(tables.begin(), tables.end(), [](const auto& t) { return !t.equal(); });
}

namespace {

using Clock = std::chrono::steady_clock;

constexpr std::int64_t kListRows = 20000;  // list rows below this; halve above it
constexpr std::size_t kKeyBatch = 2000;    // keys per rows_by_key statement
constexpr auto kProgressInterval = std::chrono::milliseconds(200);
constexpr auto kCatchupPoll = std::chrono::milliseconds(50);

repl::Connection open_session(const std::string& conninfo, repl::Side side) {
  auto conn = repl::Connection::open(conninfo, side);
  // On top of the formats every pgferry session pins: the settings other types' text
  // output depends on. No parallel workers: --jobs says how many backends work per side.
  conn.exec(
      "SET TimeZone = 'UTC'; SET bytea_output = 'hex'; SET lc_monetary = 'C'; "
      "SET max_parallel_workers_per_gather = 0",
      "pinning the verify session settings");
  return conn;
}

void send(const repl::Connection& conn, const std::string& sql, const Params& params) {
  std::vector<const char*> values;
  values.reserve(params.size());
  for (const auto& param : params) values.push_back(param.c_str());
  if (!PQsendQueryParams(conn.native(), sql.c_str(), static_cast<int>(values.size()), nullptr,
                         values.data(), nullptr, nullptr, 0)) {
    repl::throw_pg_error(conn.native(), nullptr, conn.side(), "sending a verify query");
  }
}

repl::Result receive(const repl::Connection& conn, std::string_view context) {
  PGresult* last = nullptr;
  PGresult* error = nullptr;
  while (PGresult* result = PQgetResult(conn.native())) {
    auto status = PQresultStatus(result);
    if (!error && (status == PGRES_FATAL_ERROR || status == PGRES_NONFATAL_ERROR)) {
      error = result;
      continue;
    }
    if (last) PQclear(last);
    last = result;
  }
  if (error) {
    if (last) PQclear(last);
    return conn.check(error, context);
  }
  return conn.check(last, context);
}

repl::Result query(const repl::Connection& conn, const std::string& sql, const Params& params,
                   std::string_view context) {
  send(conn, sql, params);
  return receive(conn, context);
}

std::string encode_key(const KeyValues& key) {
  std::string out;
  for (const auto& part : key) {
    out += std::to_string(part.size());
    out += ':';
    out += part;
  }
  return out;
}

// One row as fetched by key: row hash and per-column hashes (nullopt: NULL).
struct FetchedRow {
  KeyValues key;
  std::string row_hash;
  std::vector<std::optional<std::string>> columns;
};

std::unordered_map<std::string, FetchedRow> fetched_rows(const repl::Result& result,
                                                         std::size_t key_size) {
  std::unordered_map<std::string, FetchedRow> rows;
  for (int r = 0; r < result.rows(); ++r) {
    FetchedRow row;
    for (std::size_t k = 0; k < key_size; ++k)
      row.key.emplace_back(result.get(r, static_cast<int>(k)));
    row.row_hash = std::string(result.get(r, static_cast<int>(key_size)));
    for (int c = static_cast<int>(key_size) + 1; c < result.columns(); ++c) {
      auto value = result.optional(r, c);
      row.columns.push_back(value ? std::optional<std::string>(*value) : std::nullopt);
    }
    auto encoded = encode_key(row.key);
    rows.emplace(std::move(encoded), std::move(row));
  }
  return rows;
}

struct ChunkHash {
  std::int64_t source_rows = 0;
  std::string source_sum;
  std::int64_t target_rows = 0;
  std::string target_sum;
  repl::Lsn position;  // source: pg_current_wal_lsn() after the scan
  repl::Lsn applied;   // target: applied_lsn in the scan's snapshot (invalid without)

  bool equal() const { return source_rows == target_rows && source_sum == target_sum; }
};

struct Task {
  std::size_t table = 0;
  KeyRange range;
  bool sample = false;
};

class TaskQueue {
 public:
  void push(Task task) {
    {
      std::lock_guard lock(mutex_);
      tasks_.push_back(std::move(task));
    }
    ready_.notify_one();
  }
  void close() {
    {
      std::lock_guard lock(mutex_);
      closed_ = true;
    }
    ready_.notify_all();
  }
  std::optional<Task> pop() {
    std::unique_lock lock(mutex_);
    ready_.wait(lock, [&] { return closed_ || !tasks_.empty(); });
    if (tasks_.empty()) return std::nullopt;
    Task task = std::move(tasks_.front());
    tasks_.pop_front();
    return task;
  }

 private:
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<Task> tasks_;
  bool closed_ = false;
};

struct TableState {
  TableState(TablePlan p, HashFunction hash) : plan(std::move(p)), sql(plan, hash) {}
  TablePlan plan;
  TableSql sql;

  std::mutex mutex;
  TableVerifyReport report;
  std::int64_t planned = 0;
  std::int64_t done = 0;
  bool planning_done = false;
  bool lag_noted = false;
  Clock::time_point first_start = Clock::time_point::max();
  Clock::time_point last_end = Clock::time_point::min();
};

struct Worker {
  repl::Connection source;
  repl::Connection target;
};

class Verifier {
 public:
  Verifier(const VerifyOptions& options, VerifyObserver* observer)
      : options_(options), observer_(observer) {}

  VerifyReport run();

 private:
  void plan_chunks(const repl::Connection& source);
  void plan_table(const repl::Connection& source, std::size_t index);
  void work(Worker& worker);
  void check_chunk(Worker& worker, TableState& table, const KeyRange& range);
  void check_sample(Worker& worker, TableState& table);
  ChunkHash hash_range(Worker& worker, TableState& table, const KeyRange& range, bool at_once);
  void narrow(Worker& worker, TableState& table, const KeyRange& range, std::int64_t rows,
              int depth);
  void settle(Worker& worker, TableState& table, std::vector<RowDifference> candidates);
  std::vector<RowDifference> compare_keys(Worker& worker, TableState& table,
                                          const std::vector<KeyValues>& keys, int rounds);
  bool wait_for_target(Worker& worker, TableState& table, repl::Lsn position);
  void note_applied(repl::Lsn applied);
  void record(TableState& table, std::vector<RowDifference> differences);
  void check_deadline() const;
  void fail(std::exception_ptr error);
  void report_progress(bool force);

  const VerifyOptions& options_;
  VerifyObserver* observer_;
  bool live_ = false;
  std::string progress_name_;  // the name while live, empty otherwise
  HashFunction hash_ = HashFunction::hashtextextended;
  std::vector<std::unique_ptr<TableState>> tables_;
  TaskQueue queue_;
  Clock::time_point start_ = Clock::now();

  std::atomic<bool> stop_{false};
  std::mutex error_mutex_;
  std::exception_ptr error_;

  std::atomic<std::uint64_t> applied_{0};  // the highest applied position seen
  std::atomic<std::int64_t> chunks_planned_{0};
  std::atomic<std::int64_t> chunks_done_{0};
  std::atomic<std::int64_t> rows_done_{0};
  std::atomic<std::int64_t> differing_keys_{0};
  std::mutex progress_mutex_;
  Clock::time_point last_progress_{};
};

void Verifier::check_deadline() const {
  if (options_.deadline && Clock::now() > *options_.deadline) {
    throw repl::TimedOut("verify did not finish within its time budget");
  }
}

void Verifier::fail(std::exception_ptr error) {
  {
    std::lock_guard lock(error_mutex_);
    if (!error_) error_ = error;
  }
  stop_ = true;
  queue_.close();
}

void Verifier::note_applied(repl::Lsn applied) {
  auto value = applied.value();
  auto seen = applied_.load();
  while (value > seen && !applied_.compare_exchange_weak(seen, value)) {
  }
}

bool Verifier::wait_for_target(Worker& worker, TableState& table, repl::Lsn position) {
  if (!live_) return true;
  auto give_up = Clock::now() + options_.catchup_timeout;
  const std::string sql = "SELECT applied_lsn::text FROM pgferry.progress WHERE name = $1";
  while (applied_.load() < position.value()) {
    check_deadline();
    if (stop_) throw repl::Error("verify stopped");
    auto result = query(worker.target, sql, {progress_name_}, "reading the progress record");
    if (result.rows() == 1) {
      note_applied(repl::Lsn::from_string(result.get(0, 0), "pgferry.progress.applied_lsn"));
    }
    if (applied_.load() >= position.value()) break;
    if (Clock::now() > give_up) {
      std::lock_guard lock(table.mutex);
      if (!table.lag_noted) {
        table.lag_noted = true;
        table.report.problems.push_back(fmt::format(
            "the target's progress row \"{}\" did not reach source position {} within {}s "
            "(is the agent running?): differences may be lag",
            progress_name_, position, options_.catchup_timeout.count()));
      }
      return false;
    }
    std::this_thread::sleep_for(kCatchupPoll);
  }
  return true;
}

ChunkHash Verifier::hash_range(Worker& worker, TableState& table, const KeyRange& range,
                               bool at_once) {
  Params source_params;
  Params target_params;
  auto source_sql = table.sql.chunk_hash(range, repl::Side::source, {}, source_params);
  auto target_sql = table.sql.chunk_hash(range, repl::Side::target, progress_name_, target_params);
  auto context = fmt::format("hashing a chunk of {}", table.plan.display_name());
  ChunkHash hash;
  auto read_source = [&](const repl::Result& result) {
    hash.source_rows = std::stoll(std::string(result.get(0, 0)));
    hash.source_sum = std::string(result.get(0, 1));
    hash.position = repl::Lsn::from_string(result.get(0, 2), "pg_current_wal_lsn()");
  };
  auto read_target = [&](const repl::Result& result) {
    hash.target_rows = std::stoll(std::string(result.get(0, 0)));
    hash.target_sum = std::string(result.get(0, 1));
    if (!result.is_null(0, 2)) {
      hash.applied = repl::Lsn::from_string(result.get(0, 2), "pgferry.progress.applied_lsn");
      note_applied(hash.applied);
    }
  };
  if (at_once) {
    send(worker.source, source_sql, source_params);
    send(worker.target, target_sql, target_params);
    // Both results are read even when the first fails, so neither connection is left busy.
    std::exception_ptr failed;
    try {
      read_source(receive(worker.source, context));
    } catch (...) {
      failed = std::current_exception();
    }
    read_target(receive(worker.target, context));
    if (failed) std::rethrow_exception(failed);
  } else {
    read_source(query(worker.source, source_sql, source_params, context));
    wait_for_target(worker, table, hash.position);
    read_target(query(worker.target, target_sql, target_params, context));
  }
  return hash;
}

void Verifier::record(TableState& table, std::vector<RowDifference> differences) {
  std::lock_guard lock(table.mutex);
  for (auto& difference : differences) {
    switch (difference.kind) {
      case DifferenceKind::missing_on_target:
        ++table.report.missing;
        break;
      case DifferenceKind::extra_on_target:
        ++table.report.extra;
        break;
      case DifferenceKind::different:
        ++table.report.different;
        break;
    }
    ++differing_keys_;
    if (table.report.differences.size() < options_.max_keys) {
      table.report.differences.push_back(std::move(difference));
    }
  }
}

std::vector<RowDifference> Verifier::compare_keys(Worker& worker, TableState& table,
                                                  const std::vector<KeyValues>& keys, int rounds) {
  std::vector<KeyValues> pending = keys;
  std::unordered_map<std::string, std::string> first_source_hash;
  std::vector<RowDifference> differing;
  auto context = fmt::format("reading rows of {} by key", table.plan.display_name());
  for (int round = 0; round < rounds && !pending.empty(); ++round) {
    differing.clear();
    std::vector<KeyValues> still;
    for (std::size_t begin = 0; begin < pending.size(); begin += kKeyBatch) {
      check_deadline();
      std::vector<KeyValues> batch(pending.begin() + static_cast<std::ptrdiff_t>(begin),
                                   pending.begin() + static_cast<std::ptrdiff_t>(std::min(
                                                         pending.size(), begin + kKeyBatch)));
      Params source_params;
      Params target_params;
      auto source_sql = table.sql.rows_by_key(batch, source_params);
      auto target_sql = table.sql.rows_by_key(batch, target_params);
      repl::Result on_source;
      repl::Result on_target;
      if (live_) {
        on_source = query(worker.source, source_sql, source_params, context);
        auto position = repl::Lsn::from_string(
            query(worker.source, "SELECT pg_current_wal_lsn()::text", {}, context).scalar(),
            "pg_current_wal_lsn()");
        wait_for_target(worker, table, position);
        on_target = query(worker.target, target_sql, target_params, context);
      } else {
        send(worker.source, source_sql, source_params);
        send(worker.target, target_sql, target_params);
        std::exception_ptr failed;
        try {
          on_source = receive(worker.source, context);
        } catch (...) {
          failed = std::current_exception();
        }
        on_target = receive(worker.target, context);
        if (failed) std::rethrow_exception(failed);
      }
      auto source_rows = fetched_rows(on_source, table.sql.key_size());
      auto target_rows = fetched_rows(on_target, table.sql.key_size());
      for (const auto& key : batch) {
        auto encoded = encode_key(key);
        auto s = source_rows.find(encoded);
        auto t = target_rows.find(encoded);
        RowDifference difference;
        difference.key = key;
        std::string source_hash = s == source_rows.end() ? "" : s->second.row_hash;
        auto [first, inserted] = first_source_hash.emplace(encoded, source_hash);
        difference.changing = !inserted && first->second != source_hash;
        if (s == source_rows.end() && t == target_rows.end()) continue;
        if (t == target_rows.end()) {
          difference.kind = DifferenceKind::missing_on_target;
        } else if (s == source_rows.end()) {
          difference.kind = DifferenceKind::extra_on_target;
        } else if (s->second.row_hash == t->second.row_hash) {
          continue;
        } else {
          difference.kind = DifferenceKind::different;
          const auto& columns = table.plan.columns;
          for (std::size_t c = 0;
               c < columns.size() && c < s->second.columns.size() && c < t->second.columns.size();
               ++c) {
            if (s->second.columns[c] != t->second.columns[c]) {
              difference.columns.push_back(columns[c].name);
            }
          }
        }
        still.push_back(key);
        differing.push_back(std::move(difference));
      }
    }
    pending = std::move(still);
  }
  return differing;
}

void Verifier::settle(Worker& worker, TableState& table, std::vector<RowDifference> candidates) {
  if (candidates.empty()) return;
  if (live_) {
    std::vector<KeyValues> keys;
    for (const auto& candidate : candidates) keys.push_back(candidate.key);
    record(table, compare_keys(worker, table, keys, std::max(1, options_.recheck_rounds)));
    return;
  }
  // One pass: the first max_keys of the table are looked up to name the columns; the
  // rest are counted as the listing found them.
  std::size_t room = 0;
  {
    std::lock_guard lock(table.mutex);
    auto kept = table.report.differences.size();
    room = kept < options_.max_keys ? options_.max_keys - kept : 0;
  }
  room = std::min(room, candidates.size());
  std::vector<KeyValues> keys;
  for (std::size_t i = 0; i < room; ++i) keys.push_back(candidates[i].key);
  auto named = compare_keys(worker, table, keys, 1);
  candidates.erase(candidates.begin(), candidates.begin() + static_cast<std::ptrdiff_t>(room));
  named.insert(named.end(), std::make_move_iterator(candidates.begin()),
               std::make_move_iterator(candidates.end()));
  record(table, std::move(named));
}

void Verifier::narrow(Worker& worker, TableState& table, const KeyRange& range, std::int64_t rows,
                      int depth) {
  check_deadline();
  auto context = fmt::format("narrowing a chunk of {}", table.plan.display_name());
  if (rows > kListRows && depth < 40) {
    Params params;
    auto sql = table.sql.key_at(range, rows / 2, params);
    auto mid = query(worker.source, sql, params, context);
    if (mid.rows() == 0) {
      Params target_params;
      mid = query(worker.target, table.sql.key_at(range, rows / 2, target_params), target_params,
                  context);
    }
    if (mid.rows() == 1) {
      KeyValues middle;
      for (int c = 0; c < mid.columns(); ++c) middle.emplace_back(mid.get(0, c));
      if (!range.lo || *range.lo != middle) {
        for (KeyRange half : {KeyRange{range.lo, middle}, KeyRange{middle, range.hi}}) {
          auto hash = hash_range(worker, table, half, !live_);
          if (!hash.equal()) {
            narrow(worker, table, half, std::max(hash.source_rows, hash.target_rows), depth + 1);
          }
        }
        return;
      }
    }
  }

  // List (key, row hash) on both sides and match the keys.
  Params source_params;
  Params target_params;
  auto source_sql = table.sql.list_rows(range, source_params);
  auto target_sql = table.sql.list_rows(range, target_params);
  auto on_source = query(worker.source, source_sql, source_params, context);
  if (live_) {
    auto position = repl::Lsn::from_string(
        query(worker.source, "SELECT pg_current_wal_lsn()::text", {}, context).scalar(),
        "pg_current_wal_lsn()");
    wait_for_target(worker, table, position);
  }
  auto on_target = query(worker.target, target_sql, target_params, context);
  auto key_size = table.sql.key_size();
  std::unordered_map<std::string, std::pair<KeyValues, std::string>> source_rows;
  source_rows.reserve(static_cast<std::size_t>(on_source.rows()));
  for (int r = 0; r < on_source.rows(); ++r) {
    KeyValues key;
    for (std::size_t k = 0; k < key_size; ++k)
      key.emplace_back(on_source.get(r, static_cast<int>(k)));
    auto encoded = encode_key(key);
    source_rows.emplace(
        std::move(encoded),
        std::make_pair(std::move(key), std::string(on_source.get(r, static_cast<int>(key_size)))));
  }
  std::vector<RowDifference> candidates;
  for (int r = 0; r < on_target.rows(); ++r) {
    KeyValues key;
    for (std::size_t k = 0; k < key_size; ++k)
      key.emplace_back(on_target.get(r, static_cast<int>(k)));
    auto it = source_rows.find(encode_key(key));
    if (it == source_rows.end()) {
      candidates.push_back({DifferenceKind::extra_on_target, std::move(key), {}, false});
      continue;
    }
    if (it->second.second != on_target.get(r, static_cast<int>(key_size))) {
      candidates.push_back({DifferenceKind::different, std::move(key), {}, false});
    }
    source_rows.erase(it);
  }
  for (auto& [encoded, row] : source_rows) {
    candidates.push_back({DifferenceKind::missing_on_target, std::move(row.first), {}, false});
  }
  settle(worker, table, std::move(candidates));
}

void Verifier::check_chunk(Worker& worker, TableState& table, const KeyRange& range) {
  auto started = Clock::now();
  auto hash = hash_range(worker, table, range, true);
  {
    std::lock_guard lock(table.mutex);
    table.first_start = std::min(table.first_start, started);
    table.report.source_rows += hash.source_rows;
    table.report.target_rows += hash.target_rows;
  }
  rows_done_ += hash.source_rows;
  if (!hash.equal() && live_) {
    // Read again in order: the source, then the target once it has passed that position.
    hash = hash_range(worker, table, range, false);
    std::lock_guard lock(table.mutex);
    ++table.report.rechecked_chunks;
  }
  if (!hash.equal()) {
    {
      std::lock_guard lock(table.mutex);
      ++table.report.differing_chunks;
    }
    if (table.plan.key.empty()) {
      std::lock_guard lock(table.mutex);
      table.report.problems.push_back(fmt::format(
          "rows differ ({} on the source, {} on the target, row hashes differ); without a "
          "primary key they cannot be named",
          hash.source_rows, hash.target_rows));
    } else {
      narrow(worker, table, range, std::max(hash.source_rows, hash.target_rows), 0);
    }
  }
  std::lock_guard lock(table.mutex);
  table.last_end = std::max(table.last_end, Clock::now());
}

void Verifier::check_sample(Worker& worker, TableState& table) {
  auto started = Clock::now();
  auto context = fmt::format("sampling keys of {}", table.plan.display_name());
  const auto n = options_.sample;
  double estimate = table.plan.estimated_rows > 0 ? table.plan.estimated_rows
                                                  : static_cast<double>(table.plan.blocks) * 100;
  // Pages enough for about 3N rows, so that N random keys remain after the LIMIT.
  double percent = estimate > 0
                       ? std::clamp(100.0 * 3.0 * static_cast<double>(n) / estimate, 0.0001, 100.0)
                       : 100.0;
  std::vector<KeyValues> keys;
  std::unordered_map<std::string, bool> seen;
  auto collect = [&](const repl::Result& result) {
    for (int r = 0; r < result.rows(); ++r) {
      KeyValues key;
      for (int c = 0; c < result.columns(); ++c) key.emplace_back(result.get(r, c));
      if (seen.emplace(encode_key(key), true).second) keys.push_back(std::move(key));
    }
  };
  auto random = query(worker.source, table.sql.random_keys(percent, n), {}, context);
  if (random.rows() < n && percent < 100) {
    random = query(worker.source, table.sql.random_keys(100, n), {}, context);
  }
  collect(random);
  collect(query(worker.source, table.sql.last_keys(n), {}, context));
  // The target's last keys: rows beyond the source's end.
  collect(query(worker.target, table.sql.last_keys(n), {}, context));
  auto differing =
      compare_keys(worker, table, keys, live_ ? std::max(1, options_.recheck_rounds) : 1);
  rows_done_ += static_cast<std::int64_t>(keys.size());
  {
    std::lock_guard lock(table.mutex);
    table.first_start = std::min(table.first_start, started);
    table.report.source_rows += static_cast<std::int64_t>(keys.size());
    table.report.target_rows += static_cast<std::int64_t>(keys.size());
    if (!differing.empty()) ++table.report.differing_chunks;
  }
  record(table, std::move(differing));
  std::lock_guard lock(table.mutex);
  table.last_end = std::max(table.last_end, Clock::now());
}

void Verifier::plan_table(const repl::Connection& source, std::size_t index) {
  auto& table = *tables_[index];
  auto push = [&](KeyRange range, bool sample) {
    {
      std::lock_guard lock(table.mutex);
      ++table.planned;
    }
    ++chunks_planned_;
    queue_.push(Task{index, std::move(range), sample});
  };
  if (!table.plan.problems.empty()) return;
  if (table.plan.key.empty()) {
    // Whole-table hash (also in sample mode: without a key there is nothing to sample by).
    push({}, false);
    return;
  }
  if (options_.sample > 0) {
    push({}, true);
    return;
  }
  const auto chunk_rows = std::max<std::int64_t>(1, options_.chunk_rows);
  auto context = fmt::format("planning chunks of {}", table.plan.display_name());
  if (table.plan.integer_key) {
    auto bounds = query(source, table.sql.integer_key_bounds(), {}, context);
    if (bounds.is_null(0, 0)) {
      push({}, false);
      return;
    }
    auto min = static_cast<long double>(std::stoll(std::string(bounds.get(0, 0))));
    auto max = static_cast<long double>(std::stoll(std::string(bounds.get(0, 1))));
    long double span = max - min + 1;
    // Never analyzed: at most ~300 rows fit a page, so the chunks stay bounded by the
    // table's size even when its keys are sparse (random or time-based bigints).
    long double estimate = table.plan.estimated_rows > 0
                               ? table.plan.estimated_rows
                               : std::max<long double>(1, table.plan.blocks * 300.0L);
    estimate = std::min(estimate, span);
    auto chunks =
        std::max<long double>(1, std::ceil(estimate / static_cast<long double>(chunk_rows)));
    long double stride = std::ceil(span / chunks);
    std::optional<KeyValues> lo;
    for (long double boundary = min + stride; boundary <= max && !stop_; boundary += stride) {
      KeyValues hi{fmt::format("{}", static_cast<long long>(boundary))};
      push({lo, hi}, false);
      lo = hi;
    }
    push({lo, std::nullopt}, false);
    return;
  }
  // Walk the key index: the key chunk_rows past the chunk's start begins the next one.
  std::optional<KeyValues> lo;
  while (!stop_) {
    Params params;
    auto sql = table.sql.key_at({lo, std::nullopt}, chunk_rows, params);
    auto next = query(source, sql, params, context);
    if (next.rows() == 0) break;
    KeyValues hi;
    for (int c = 0; c < next.columns(); ++c) hi.emplace_back(next.get(0, c));
    push({lo, hi}, false);
    lo = std::move(hi);
  }
  push({lo, std::nullopt}, false);
}

void Verifier::plan_chunks(const repl::Connection& source) {
  for (std::size_t i = 0; i < tables_.size() && !stop_; ++i) {
    plan_table(source, i);
    std::lock_guard lock(tables_[i]->mutex);
    tables_[i]->planning_done = true;
  }
}

void Verifier::work(Worker& worker) {
  while (auto task = queue_.pop()) {
    if (stop_) break;
    check_deadline();
    auto& table = *tables_[task->table];
    if (task->sample) {
      check_sample(worker, table);
    } else {
      check_chunk(worker, table, task->range);
    }
    {
      std::lock_guard lock(table.mutex);
      ++table.done;
      ++table.report.chunks;
    }
    ++chunks_done_;
    report_progress(false);
  }
}

void Verifier::report_progress(bool force) {
  if (!observer_) return;
  std::lock_guard lock(progress_mutex_);
  auto now = Clock::now();
  if (!force && now - last_progress_ < kProgressInterval) return;
  last_progress_ = now;
  VerifyProgress progress;
  progress.tables = tables_.size();
  for (const auto& table : tables_) {
    std::lock_guard table_lock(table->mutex);
    if (table->planning_done && table->done == table->planned) ++progress.tables_done;
  }
  progress.chunks = chunks_planned_;
  progress.chunks_done = chunks_done_;
  progress.rows_done = rows_done_;
  progress.differing_keys = differing_keys_;
  progress.seconds = std::chrono::duration<double>(now - start_).count();
  observer_->progress(progress);
}

VerifyReport Verifier::run() {
  if (options_.jobs < 1) throw repl::ConfigError("verify: --jobs must be at least 1");
  if (options_.chunk_rows < 1) throw repl::ConfigError("verify: --chunk-rows must be at least 1");
  if (options_.sample < 0) throw repl::ConfigError("verify: --sample must not be negative");
  auto source = open_session(options_.source_conninfo, repl::Side::source);
  auto target = open_session(options_.target_conninfo, repl::Side::target);

  bool has_progress = repl::ProgressStore(target).read(options_.name).has_value();
  switch (options_.mode) {
    case VerifyMode::automatic:
      live_ = has_progress;
      break;
    case VerifyMode::live:
      if (!has_progress) {
        throw repl::ConfigError(fmt::format(
            "verify --live: the target has no progress row named \"{}\" (pgferry.progress); "
            "give the agent's --name, or verify --once",
            options_.name));
      }
      live_ = true;
      break;
    case VerifyMode::once:
      live_ = false;
      break;
  }
  if (live_) progress_name_ = options_.name;
  hash_ = options_.portable_hash ? HashFunction::md5 : choose_hash(source, target);
  spdlog::debug("verify: mode={} hash={} jobs={} chunk_rows={} sample={}", live_ ? "live" : "once",
                to_string(hash_), options_.jobs, options_.chunk_rows, options_.sample);

  for (auto& plan : plan_tables(source, target, options_.scope)) {
    auto state = std::make_unique<TableState>(std::move(plan), hash_);
    state->report.schema = state->plan.schema;
    state->report.name = state->plan.name;
    for (const auto& column : state->plan.key) state->report.key_columns.push_back(column.name);
    state->report.problems = state->plan.problems;
    tables_.push_back(std::move(state));
  }

  // Connections first, so that a side that refuses the extra sessions fails here.
  std::vector<std::unique_ptr<Worker>> workers;
  for (int i = 0; i < options_.jobs; ++i) {
    workers.push_back(std::make_unique<Worker>(
        Worker{open_session(options_.source_conninfo, repl::Side::source),
               open_session(options_.target_conninfo, repl::Side::target)}));
  }

  std::vector<std::thread> threads;
  threads.emplace_back([&] {
    try {
      plan_chunks(source);
      queue_.close();
    } catch (...) {
      fail(std::current_exception());
    }
  });
  for (auto& worker : workers) {
    threads.emplace_back([&, w = worker.get()] {
      try {
        work(*w);
      } catch (...) {
        fail(std::current_exception());
      }
    });
  }
  for (auto& thread : threads) thread.join();
  if (error_) std::rethrow_exception(error_);
  report_progress(true);

  VerifyReport report;
  report.mode = live_ ? VerifyMode::live : VerifyMode::once;
  report.hash = to_string(hash_);
  report.sample = options_.sample;
  for (auto& table : tables_) {
    auto& out = table->report;
    if (table->first_start != Clock::time_point::max()) {
      out.seconds = std::chrono::duration<double>(table->last_end - table->first_start).count();
    }
    std::sort(out.differences.begin(), out.differences.end(),
              [](const RowDifference& a, const RowDifference& b) { return a.key < b.key; });
    report.tables.push_back(std::move(out));
  }
  report.seconds = std::chrono::duration<double>(Clock::now() - start_).count();
  return report;
}

}  // namespace

VerifyReport verify(const VerifyOptions& options, VerifyObserver* observer) {
  Verifier verifier(options, observer);
  return verifier.run();
}

}  // namespace pgferry::cutover
