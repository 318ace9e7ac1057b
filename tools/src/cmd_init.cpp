// `pgferry init`: options, the live progress display of the copy, and the output (text or
// --json) of replication::Init (copy/init.hpp), which does the work: preflight,
// publication, slot with its snapshot, the copy with its retries and resume, the schema
// halves, the progress record.
//
// NOTES
// - SIGINT/SIGTERM call Init::request_stop(): the copy workers abandon their ranges, init
//   says how far it got and exits 1; a re-run resumes.
// - The display adds to the finished ranges (the copy's progress callback) the COPYs in
//   flight on the target (copies_in_flight), redrawn in place on a terminal, a log line
//   every 10 s otherwise; it is best effort and never fails the copy.
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <stop_token>
#include <thread>

#include "cli.hpp"
#include "pgferry/replication/check/preflight.hpp"
#include "pgferry/replication/copy/init.hpp"
#include "pgferry/replication/copy/initial_copy.hpp"
#include "pgferry/replication/copy/initial_copy_schema.hpp"
#include "pgferry/replication/core/error.hpp"
#include "pgferry/replication/core/pg.hpp"

namespace pgferry::tools {

namespace {

namespace repl = pgferry::replication;
using namespace std::chrono_literals;

struct InitCommandOptions {
  repl::InitOptions init;
  int split_mb = 0;               // 0: from the total size and --jobs
  std::string progress = "auto";  // auto | tty | log | none
};

// ---------------------------------------------------------------------------------------
// Progress display

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

// ---------------------------------------------------------------------------------------
// Output

volatile std::sig_atomic_t g_init_stop_signal = 0;
repl::Init* g_running_init = nullptr;
extern "C" void on_init_stop_signal(int signal) {
  g_init_stop_signal = signal;
  if (g_running_init != nullptr) g_running_init->request_stop();
}

const char* created_or_exists(bool created) {
  return created ? "created" : "exists";
}

int print_refused(const CommonOptions& common, const repl::CheckReport& report) {
  if (common.json) {
    nlohmann::ordered_json doc = {{"ok", false}, {"check", repl::to_json(report)}};
    std::cout << doc.dump(2) << "\n";
  } else {
    std::cout << repl::render_text(report);
    std::cout << fmt::format(
        "init: refused: {} fatal finding(s) above; fix them (or leave the tables out with "
        "--exclude-table) and re-run\n",
        report.count(repl::Severity::fatal));
  }
  return static_cast<int>(repl::ExitCode::check_failed);
}

int print_stopped(const repl::InitResult& result) {
  int ranges = 0;
  for (const auto& t : result.copy.tables) ranges += t.ranges;
  std::cerr << fmt::format(
      "init: interrupted (signal {}); {} of {} ranges done. Re-run init to resume.\n",
      static_cast<int>(g_init_stop_signal), result.copy.ranges_copied + result.copy.ranges_skipped,
      ranges);
  return static_cast<int>(repl::ExitCode::error);
}

void print_no_data(const CommonOptions& common, const repl::InitResult& result) {
  if (common.json) {
    nlohmann::json doc = {
        {"ok", true},
        {"slot", result.name},
        {"publication", result.publication},
        {"slot_lsn", result.consistent_point.to_string()},
        {"applied_lsn", result.applied_lsn.to_string()},
        {"created",
         {{"publication", result.publication_created},
          {"slot", result.slot_created},
          {"progress", result.progress_created}}},
        {"data", "skipped (--no-data)"},
    };
    std::cout << doc.dump(2) << "\n";
  } else {
    std::cout << fmt::format("publication {}: {}\n", result.publication,
                             created_or_exists(result.publication_created))
              << fmt::format("slot {}: {} (consistent point {})\n", result.name,
                             created_or_exists(result.slot_created), result.consistent_point)
              << fmt::format("progress record {}: {} (applied {})\n", result.name,
                             created_or_exists(result.progress_created), result.applied_lsn)
              << "data: not copied (--no-data)\n";
  }
}

void print_initialized(const CommonOptions& common, const InitCommandOptions& options,
                       const repl::InitResult& result) {
  bool already = result.outcome == repl::InitOutcome::already_initialized;
  const auto& copy = result.copy;
  double seconds = result.elapsed.count();
  nlohmann::ordered_json doc = {
      {"ok", true}, {"slot", result.name}, {"publication", result.publication}};
  doc["created"] = {{"publication", result.publication_created}};
  if (result.publication_altered) doc["publication_altered"] = true;
  doc["created"]["slot"] = result.slot_created;
  doc["created"]["progress"] = result.progress_created;
  nlohmann::ordered_json schema_doc = nlohmann::ordered_json::object();
  if (result.schema) {
    if (!already) {
      schema_doc["pre_data"] =
          result.schema->pre_data_tables > 0
              ? fmt::format("restored ({} tables)", result.schema->pre_data_tables)
              : std::string("tables exist");
    }
    if (result.schema->post_data_restored) schema_doc["post_data"] = "restored";
  }
  if (already) {
    doc["applied_lsn"] = result.applied_lsn.to_string();
    doc["data"] = "already initialized";
    if (result.schema) doc["schema"] = schema_doc;
  } else {
    doc["consistent_point"] = result.consistent_point.to_string();
    doc["applied_lsn"] = result.applied_lsn.to_string();
    if (result.schema) doc["schema"] = schema_doc;
    doc["resume"] = {
        {"kept", result.kept}, {"recopied", result.recopied}, {"reason", result.recopy_reason}};
    nlohmann::ordered_json table_docs = nlohmann::ordered_json::array();
    for (const auto& t : copy.tables) {
      table_docs.push_back({{"table", t.table},
                            {"status", repl::to_string(t.status)},
                            {"rows", t.rows},
                            {"bytes", t.bytes},
                            {"ranges", t.ranges},
                            {"format", t.binary ? "binary" : "text"}});
    }
    doc["copy"] = {{"jobs", options.init.jobs},
                   {"rows", copy.rows},
                   {"bytes", copy.bytes},
                   {"ranges_copied", copy.ranges_copied},
                   {"ranges_skipped", copy.ranges_skipped},
                   {"triggers_disabled", copy.triggers_disabled},
                   {"copy_seconds", static_cast<double>(copy.elapsed.count()) / 1000.0},
                   {"tables", table_docs}};
    doc["seconds"] = seconds;
  }
  if (common.json) {
    std::cout << doc.dump(2) << "\n";
    return;
  }
  if (already) {
    std::cout << fmt::format(
        "init {}: already initialized (progress record at {}); nothing to copy{}\n", result.name,
        result.applied_lsn,
        result.schema && result.schema->post_data_restored ? "; post-data schema restored" : "");
    return;
  }
  std::cout << fmt::format("publication {}: {}\n", result.publication,
                           created_or_exists(result.publication_created))
            << fmt::format("slot {}: created (consistent point {})\n", result.name,
                           result.consistent_point);
  std::size_t copied = 0, skipped = 0;
  for (const auto& t : copy.tables) {
    (t.status == repl::TableCopyStatus::skipped ? skipped : copied)++;
  }
  std::cout << fmt::format(
      "data: {} tables copied ({} rows, {}), {} kept from an earlier "
      "run, in {:.1f}s ({}/s) with {} jobs\n",
      copied, copy.rows, human_bytes(static_cast<double>(copy.bytes)), skipped, seconds,
      human_bytes(seconds > 0 ? static_cast<double>(copy.bytes) / seconds : 0), options.init.jobs);
  if (!result.recopied.empty()) {
    std::cout << fmt::format("resume: {} finished tables copied again ({})\n",
                             result.recopied.size(), result.recopy_reason);
  }
  if (result.schema) {
    std::cout << fmt::format("schema: pre-data {}, post-data {}\n",
                             schema_doc.value("pre_data", std::string("-")),
                             schema_doc.value("post_data", std::string("none due")));
  }
  std::cout << fmt::format("progress record {}: {} (applied {}); next: pgferry run\n", result.name,
                           created_or_exists(result.progress_created), result.consistent_point);
}

int init_command(const CommonOptions& common, InitCommandOptions options) {
  options.init.source_conninfo = common.source_conninfo();
  options.init.target_conninfo = common.target_conninfo();
  options.init.name = common.name;
  options.init.publication = common.publication_name();
  options.init.split_bytes = std::int64_t{options.split_mb} << 20;
  bool terminal =
      options.progress == "tty" || (options.progress == "auto" && ::isatty(STDERR_FILENO) == 1);
  ProgressDisplay display(options.init.target_conninfo, terminal, options.progress != "none");
  repl::Init init(options.init, &display);

  g_init_stop_signal = 0;
  g_running_init = &init;
  std::signal(SIGINT, on_init_stop_signal);
  std::signal(SIGTERM, on_init_stop_signal);
  repl::InitResult result;
  try {
    result = init.run();
  } catch (...) {
    std::signal(SIGINT, SIG_DFL);
    std::signal(SIGTERM, SIG_DFL);
    g_running_init = nullptr;
    throw;
  }
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
  g_running_init = nullptr;

  switch (result.outcome) {
    case repl::InitOutcome::refused:
      return print_refused(common, result.check);
    case repl::InitOutcome::stopped:
      return print_stopped(result);
    case repl::InitOutcome::initialized:
    case repl::InitOutcome::already_initialized:
      if (options.init.no_data) {
        print_no_data(common, result);
      } else {
        print_initialized(common, options, result);
      }
      return static_cast<int>(repl::ExitCode::ok);
  }
  return static_cast<int>(repl::ExitCode::error);
}

}  // namespace

void add_init_command(CLI::App& app, CommonOptions& common, CommandAction& action) {
  auto* cmd = app.add_subcommand(
      "init", "create publication, slot and progress record; copy the data (safe to re-run)");
  auto options = std::make_shared<InitCommandOptions>();
  auto& init = options->init;
  cmd->add_flag("--no-data", init.no_data,
                "create publication, slot and progress record only; copy no rows");
  cmd->add_flag("--schema", init.schema,
                "create the missing tables on the target with pg_dump/psql (indexes and "
                "constraints after the copy)");
  cmd->add_option("--jobs,-j", init.jobs, "parallel copy workers")->capture_default_str();
  add_table_scope_options(cmd, init.tables, init.excluded_tables);
  cmd->add_option("--split-mb", options->split_mb,
                  "copy tables larger than this in block ranges of about this size (default: "
                  "about four ranges per job over the whole copy)");
  cmd->add_option("--pg-bindir", init.pg_bindir,
                  "directory of pg_dump and psql for --schema (default: pg_config --bindir)");
  cmd->add_option("--maintenance-work-mem", init.maintenance_work_mem,
                  "maintenance_work_mem of the session that builds the indexes with --schema "
                  "(that session only; 0 keeps the server's setting)")
      ->check(
          [](const std::string& value) {
            return repl::is_size_setting(value)
                       ? std::string()
                       : "a size is a number with an optional unit kB, MB or GB (e.g. 1GB)";
          },
          "SIZE")
      ->capture_default_str();
  cmd->add_option("--progress", options->progress,
                  "progress display: auto (live on a terminal, log lines otherwise), tty, log, "
                  "none")
      ->check(CLI::IsMember({"auto", "tty", "log", "none"}))
      ->capture_default_str();
  cmd->callback([&action, &common, options] {
    action = [&common, options] { return init_command(common, *options); };
  });
}

}  // namespace pgferry::tools
