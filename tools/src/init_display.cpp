// `pgferry init`'s live progress display (init_display.hpp).
#include "init_display.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <map>
#include <mutex>
#include <optional>
#include <stop_token>
#include <thread>
#include <vector>

#include "pgferry/replication/copy/initial_copy.hpp"
#include "pgferry/replication/core/pg.hpp"

namespace pgferry::tools {

namespace repl = pgferry::replication;
using namespace std::chrono_literals;

std::string human_bytes(double bytes) {
  const char* units[] = {"B", "kB", "MB", "GB", "TB"};
  int unit = 0;
  while (bytes >= 1024 && unit < 4) {
    bytes /= 1024;
    ++unit;
  }
  return unit == 0 ? fmt::format("{:.0f} {}", bytes, units[unit])
                   : fmt::format("{:.1f} {}", bytes, units[unit]);
}

std::string human_count(double n) {
  if (n >= 1e9) return fmt::format("{:.2f}G", n / 1e9);
  if (n >= 1e6) return fmt::format("{:.2f}M", n / 1e6);
  if (n >= 1e4) return fmt::format("{:.1f}k", n / 1e3);
  return fmt::format("{:.0f}", n);
}

std::string human_duration(double seconds) {
  if (seconds < 0 || seconds > 1e7) return "?";
  auto s = static_cast<long>(seconds + 0.5);
  if (s >= 3600) return fmt::format("{}h{:02}m", s / 3600, (s % 3600) / 60);
  if (s >= 60) return fmt::format("{}m{:02}s", s / 60, s % 60);
  return fmt::format("{}s", s);
}

namespace {

// Live progress of the copy: rows and bytes of finished ranges plus those of the COPYs in
// flight. One copy attempt at a time: copy_started() begins afresh.
class ProgressDisplay : public repl::InitObserver {
 public:
  ProgressDisplay(std::string target_conninfo, bool terminal, bool enabled)
      : target_conninfo_(std::move(target_conninfo)), terminal_(terminal), enabled_(enabled) {}
  ~ProgressDisplay() override { finish(); }
  ProgressDisplay(const ProgressDisplay&) = delete;
  ProgressDisplay& operator=(const ProgressDisplay&) = delete;

  void copy_started(const std::vector<repl::TableInfo>& tables,
                    const std::vector<std::string>& finished) override {
    finish();
    {
      std::lock_guard lock(mutex_);
      tables_.clear();
      for (const auto& table : tables) {
        if (!table.carries_rows()) continue;
        auto& state = tables_[table.display_name()];
        state.estimated_rows = table.estimated_rows > 0 ? table.estimated_rows : 0;
      }
      // Tables the copy will not touch this run (finished earlier).
      for (const auto& table : finished) {
        auto it = tables_.find(table);
        if (it != tables_.end()) it->second.skipped = true;
      }
      started_ = std::chrono::steady_clock::now();
      drawn_lines_ = 0;
    }
    if (enabled_) thread_ = std::jthread([this](std::stop_token stop) { loop(stop); });
  }

  void copy_progress(const repl::CopyProgress& progress) override {
    std::lock_guard lock(mutex_);
    auto& state = tables_[progress.table];
    state.done_rows = progress.table_rows;
    state.done_bytes = progress.table_bytes;
    state.done = progress.table_done;
    state.ranges_done = progress.table_ranges_done;
    state.ranges_total = progress.table_ranges_total;
    if (progress.table_done) state.live_rows = state.live_bytes = 0;  // counted in done_*
    if (!terminal_ && enabled_ && progress.table_done) {
      spdlog::info("init copy table={} done rows={} bytes={}", progress.table, progress.table_rows,
                   progress.table_bytes);
    }
  }

  void copy_ended() override { finish(); }

 private:
  struct TableState {
    double estimated_rows = 0;
    std::int64_t done_rows = 0;
    std::int64_t done_bytes = 0;
    std::int64_t live_rows = 0;  // COPYs in flight
    std::int64_t live_bytes = 0;
    int ranges_done = 0;
    int ranges_total = 0;
    bool done = false;
    bool skipped = false;
  };

  void finish() {
    if (thread_.joinable()) {
      thread_.request_stop();
      wake_.notify_all();
      thread_.join();
      if (terminal_) draw(true);
    }
  }

  void loop(std::stop_token stop) {
    std::optional<repl::Connection> target;
    auto last_log = std::chrono::steady_clock::now();
    while (!stop.stop_requested()) {
      try {
        if (!target) {
          target = repl::Connection::open(target_conninfo_, repl::Side::target,
                                          {{"application_name", "pgferry-init-progress"}});
        }
        poll_live(*target);
      } catch (const std::exception&) {
        target.reset();  // the display is best effort; the copy reports real errors
      }
      if (terminal_) {
        draw(false);
      } else if (std::chrono::steady_clock::now() - last_log >= 10s) {
        last_log = std::chrono::steady_clock::now();
        std::lock_guard lock(mutex_);
        auto total = totals();
        spdlog::info("init copy rows={} bytes={} rate={}/s eta={} tables_done={}/{}", total.rows,
                     total.bytes, human_bytes(total.byte_rate), human_duration(total.eta),
                     total.tables_done, total.tables);
      }
      std::unique_lock lock(wake_mutex_);
      wake_.wait_for(lock, terminal_ ? 500ms : 1s, [&] { return stop.stop_requested(); });
    }
  }

  void poll_live(const repl::Connection& target) {
    auto copies = repl::copies_in_flight(target);
    std::lock_guard lock(mutex_);
    for (auto& [name, state] : tables_) state.live_rows = state.live_bytes = 0;
    for (const auto& copy : copies) {
      auto it = tables_.find(copy.table);
      if (it == tables_.end() || it->second.done) continue;
      it->second.live_rows = copy.rows;
      it->second.live_bytes = copy.bytes;
    }
  }

  struct Totals {
    std::int64_t rows = 0;
    std::int64_t bytes = 0;
    double estimated_rows = 0;
    double byte_rate = 0;
    double row_rate = 0;
    double eta = -1;
    int tables = 0;
    int tables_done = 0;
  };

  Totals totals() const {
    Totals t;
    double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
    for (const auto& [name, s] : tables_) {
      ++t.tables;
      if (s.skipped || s.done) ++t.tables_done;
      if (s.skipped) continue;
      t.rows += s.done_rows + s.live_rows;
      t.bytes += s.done_bytes + s.live_bytes;
      t.estimated_rows += s.done ? static_cast<double>(s.done_rows) : s.estimated_rows;
    }
    if (elapsed > 0.5) {
      t.byte_rate = static_cast<double>(t.bytes) / elapsed;
      t.row_rate = static_cast<double>(t.rows) / elapsed;
    }
    if (t.row_rate > 0 && t.estimated_rows > 0) {
      t.eta = std::max(0.0, (t.estimated_rows - static_cast<double>(t.rows)) / t.row_rate);
    }
    return t;
  }

  void draw(bool final) {
    std::lock_guard lock(mutex_);
    std::vector<std::string> lines;
    double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
    // The tables being copied (largest first), at most 8, then the total.
    std::vector<std::pair<std::string, const TableState*>> active;
    for (const auto& [name, s] : tables_) {
      if (!s.done && !s.skipped && (s.live_rows > 0 || s.ranges_done > 0)) {
        active.emplace_back(name, &s);
      }
    }
    std::sort(active.begin(), active.end(), [](const auto& a, const auto& b) {
      return a.second->estimated_rows > b.second->estimated_rows;
    });
    if (active.size() > 8) active.resize(8);
    if (!final) {
      for (const auto& [name, s] : active) {
        double rows = static_cast<double>(s->done_rows + s->live_rows);
        std::string pct =
            s->estimated_rows > 0
                ? fmt::format("{:5.1f}%", std::min(100.0, 100 * rows / s->estimated_rows))
                : std::string("     ?");
        lines.push_back(
            fmt::format("  {:<40.40} {} {:>9} rows {:>10}", name, pct, human_count(rows),
                        human_bytes(static_cast<double>(s->done_bytes + s->live_bytes))));
      }
    }
    auto t = totals();
    double pct = t.estimated_rows > 0
                     ? std::min(100.0, 100 * static_cast<double>(t.rows) / t.estimated_rows)
                     : 0;
    lines.push_back(
        fmt::format("{} {}/{} tables  {:5.1f}%  {} rows  {}  {}/s  {} rows/s  elapsed {}  ETA {}",
                    final ? "copied" : "copying", t.tables_done, t.tables, pct, human_count(t.rows),
                    human_bytes(t.bytes), human_bytes(t.byte_rate), human_count(t.row_rate),
                    human_duration(elapsed), final ? "-" : human_duration(t.eta)));
    std::string out;
    if (drawn_lines_ > 0) out += fmt::format("\x1b[{}F", drawn_lines_);
    for (const auto& line : lines) out += "\x1b[2K" + line + "\n";
    for (int i = static_cast<int>(lines.size()); i < drawn_lines_; ++i) out += "\x1b[2K\n";
    int printed = std::max<int>(drawn_lines_, static_cast<int>(lines.size()));
    std::fputs(out.c_str(), stderr);
    std::fflush(stderr);
    drawn_lines_ = final ? 0 : printed;
  }

  std::string target_conninfo_;
  bool terminal_;
  bool enabled_;
  std::map<std::string, TableState> tables_;
  std::chrono::steady_clock::time_point started_;
  std::mutex mutex_;
  std::mutex wake_mutex_;
  std::condition_variable_any wake_;
  int drawn_lines_ = 0;
  std::jthread thread_;
};

}  // namespace

std::unique_ptr<replication::InitObserver> make_init_progress_display(std::string target_conninfo,
                                                                      bool terminal, bool enabled) {
  return std::make_unique<ProgressDisplay>(std::move(target_conninfo), terminal, enabled);
}

}  // namespace pgferry::tools
