// `pgferry init`: create what is missing, idempotently — the publication, the logical slot
// (pgoutput) with an exported snapshot, the progress record on the target at the slot's
// consistent point — and copy the data from the slot's snapshot with parallel workers.
//
// NOTES
// - Order matters: the publication exists before the slot, so that pgoutput finds it for
//   every change the slot will decode. The preflight (`pgferry check`) runs first and a
//   fatal finding stops init with exit 3, except what init itself fixes (a missing
//   publication or pgferry schema; missing target tables with --schema).
// - The slot is created on a replication connection (CREATE_REPLICATION_SLOT ... SNAPSHOT
//   'export') that stays open, untouched, until the copy ends: the exported snapshot lives
//   as long as that connection runs no other command. Every copy worker imports it.
// - The progress record is written only once the copy is complete. Its existence means
//   "initialized": `run` refuses to start without it (so it never applies onto half a
//   copy, and never consumes the slot an unfinished init may still need), and a re-run of
//   a finished init changes nothing.
// - What "resume" covers:
//     * within one invocation, a lost worker connection (or a source/target hiccup that
//       leaves the replication connection alive) retries the copy with the same
//       snapshot: finished ranges are not copied again;
//     * after the process died (SIGKILL, crash, the replication connection lost), the
//       snapshot is gone. A re-run drops the old, never-consumed slot, creates a new one
//       with a new snapshot, and keeps a finished table only when the old slot proves no
//       change reached it between the two consistent points; every other table is
//       emptied and copied again under the new snapshot. Nothing is lost or applied
//       twice; what is re-copied is the price (see initial_copy_resume.hpp).
// - --no-data keeps its first behaviour: publication FOR ALL TABLES, slot and progress
//   record only; no preflight and no copy (run `pgferry check --allow-nonempty` first).
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <stop_token>
#include <thread>

#include "cli.hpp"
#include "pgferry/replication/apply/progress.hpp"
#include "pgferry/replication/check/preflight.hpp"
#include "pgferry/replication/copy/initial_copy.hpp"
#include "pgferry/replication/copy/initial_copy_resume.hpp"
#include "pgferry/replication/copy/initial_copy_schema.hpp"
#include "pgferry/replication/core/error.hpp"
#include "pgferry/replication/core/pg.hpp"
#include "pgferry/replication/core/table_scope.hpp"
#include "pgferry/replication/stream/replication_connection.hpp"

namespace pgferry::tools {

namespace {

namespace repl = pgferry::replication;
using namespace std::chrono_literals;

// WAL past which a resume does not decode the old slot to find what changed, and copies
// every finished table again instead.
constexpr std::int64_t kResumeScanLimitBytes = std::int64_t{4} << 30;
constexpr int kCopyAttempts = 3;

struct InitOptions {
  bool no_data = false;
  bool schema = false;
  int jobs = 4;
  std::vector<std::string> tables;
  std::vector<std::string> excluded_tables;
  int split_mb = 0;  // 0: from the total size and --jobs
  std::string pg_bindir;
  std::string maintenance_work_mem = "1GB";  // post-data session; "0": the server's
  std::string progress = "auto";             // auto | tty | log | none
  bool allow_target_triggers = false;
};

struct InitReport {
  bool publication_created = false;
  bool slot_created = false;
  bool progress_created = false;
  repl::Lsn slot_lsn;
  repl::Lsn applied_lsn;
};

volatile std::sig_atomic_t g_init_stop_signal = 0;
void on_init_stop_signal(int signal) {
  g_init_stop_signal = signal;
}

// ---------------------------------------------------------------------------------------
// init --no-data (unchanged behaviour)

int run_init_no_data(const CommonOptions& common) {
  auto source = repl::Connection::open(common.source_conninfo(), repl::Side::source);
  auto target = repl::Connection::open(common.target_conninfo(), repl::Side::target);
  std::string publication = common.publication_name();
  InitReport report;

  if (source.exec("SELECT count(*) FROM pg_publication WHERE pubname = $1", {publication})
          .scalar() == "0") {
    source.exec(
        fmt::format("CREATE PUBLICATION {} FOR ALL TABLES", repl::quote_ident(publication)),
        fmt::format("creating publication \"{}\" (FOR ALL TABLES needs superuser)", publication));
    report.publication_created = true;
  }

  auto slot = source.exec(
      "SELECT plugin, database = current_database(), confirmed_flush_lsn::text "
      "FROM pg_replication_slots WHERE slot_name = $1",
      {common.name}, "looking up the replication slot");
  if (slot.rows() == 0) {
    auto created = source.exec(
        "SELECT lsn::text FROM pg_create_logical_replication_slot($1, "
        "'pgoutput')",
        {common.name}, fmt::format("creating replication slot \"{}\"", common.name));
    report.slot_created = true;
    report.slot_lsn = repl::Lsn::from_string(created.get(0, 0), "slot lsn");
  } else {
    if (slot.get(0, 0) != "pgoutput" || slot.get(0, 1) != "t") {
      throw repl::ConfigError(fmt::format(
          "replication slot \"{}\" exists but is not a pgoutput slot of this database: choose "
          "another --name, or drop it (pgferry cleanup) if it is a leftover",
          common.name));
    }
    report.slot_lsn = repl::Lsn::from_string(slot.get(0, 2), "slot confirmed_flush_lsn");
  }

  repl::ProgressStore store(target);
  report.progress_created = store.initialize(common.name, report.slot_lsn);
  report.applied_lsn = *store.read(common.name);

  spdlog::info(
      "init slot={} publication={} lsn={} applied={} created: publication={} slot={} "
      "progress={}",
      common.name, publication, report.slot_lsn, report.applied_lsn, report.publication_created,
      report.slot_created, report.progress_created);
  if (common.json) {
    nlohmann::json doc = {
        {"ok", true},
        {"slot", common.name},
        {"publication", publication},
        {"slot_lsn", report.slot_lsn.to_string()},
        {"applied_lsn", report.applied_lsn.to_string()},
        {"created",
         {{"publication", report.publication_created},
          {"slot", report.slot_created},
          {"progress", report.progress_created}}},
        {"data", "skipped (--no-data)"},
    };
    std::cout << doc.dump(2) << "\n";
  } else {
    auto state = [](bool created) { return created ? "created" : "exists"; };
    std::cout << fmt::format("publication {}: {}\n", publication, state(report.publication_created))
              << fmt::format("slot {}: {} (consistent point {})\n", common.name,
                             state(report.slot_created), report.slot_lsn)
              << fmt::format("progress record {}: {} (applied {})\n", common.name,
                             state(report.progress_created), report.applied_lsn)
              << "data: not copied (--no-data)\n";
  }
  return static_cast<int>(repl::ExitCode::ok);
}

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

// Live progress of the copy: rows and bytes of finished ranges (from copy_tables'
// callback) plus those of the COPYs in flight (pg_stat_progress_copy on the target),
// redrawn in place on a terminal, a log line every 10 s otherwise.
class ProgressDisplay {
 public:
  ProgressDisplay(std::string target_conninfo, const std::vector<repl::TableInfo>& tables,
                  bool terminal, bool enabled)
      : target_conninfo_(std::move(target_conninfo)), terminal_(terminal), enabled_(enabled) {
    for (const auto& table : tables) {
      if (!table.carries_rows()) continue;
      auto& state = tables_[table.display_name()];
      state.estimated_rows = table.estimated_rows > 0 ? table.estimated_rows : 0;
    }
    started_ = std::chrono::steady_clock::now();
    if (enabled_) thread_ = std::jthread([this](std::stop_token stop) { loop(stop); });
  }
  ~ProgressDisplay() { finish(); }
  ProgressDisplay(const ProgressDisplay&) = delete;
  ProgressDisplay& operator=(const ProgressDisplay&) = delete;

  // Tables the copy will not touch this run (finished earlier).
  void mark_skipped(const std::string& table) {
    std::lock_guard lock(mutex_);
    auto it = tables_.find(table);
    if (it != tables_.end()) it->second.skipped = true;
  }

  void on_progress(const repl::CopyProgress& progress) {
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

  void finish() {
    if (thread_.joinable()) {
      thread_.request_stop();
      wake_.notify_all();
      thread_.join();
      if (terminal_) draw(true);
    }
  }

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
    auto rows = target.exec(
        "SELECT n.nspname || '.' || c.relname, sum(p.tuples_processed), "
        "sum(p.bytes_processed) FROM pg_stat_progress_copy p "
        "JOIN pg_class c ON c.oid = p.relid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE p.datid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND p.command = 'COPY FROM' GROUP BY 1");
    std::lock_guard lock(mutex_);
    for (auto& [name, state] : tables_) state.live_rows = state.live_bytes = 0;
    for (int i = 0; i < rows.rows(); ++i) {
      auto it = tables_.find(std::string(rows.get(i, 0)));
      if (it == tables_.end() || it->second.done) continue;
      it->second.live_rows = std::stoll(std::string(rows.get(i, 1)));
      it->second.live_bytes = std::stoll(std::string(rows.get(i, 2)));
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
// init (with data)

struct SlotState {
  std::string plugin;
  bool same_database = false;
  repl::Lsn confirmed_flush;
  bool active = false;
};

std::optional<SlotState> read_slot(const repl::Connection& source, const std::string& name) {
  auto r = source.exec(
      "SELECT plugin, database = current_database(), coalesce(confirmed_flush_lsn::text, "
      "'0/0'), active FROM pg_replication_slots WHERE slot_name = $1",
      {name}, "looking up the replication slot");
  if (r.rows() == 0) return std::nullopt;
  return SlotState{std::string(r.get(0, 0)), r.get(0, 1) == "t",
                   repl::Lsn::from_string(r.get(0, 2), "slot confirmed_flush_lsn"),
                   r.get(0, 3) == "t"};
}

struct PublicationResult {
  bool created = false;
  bool altered = false;
};

// FOR ALL TABLES without patterns, else FOR TABLE with the tables in scope that carry rows
// (leaf partitions themselves, publish_via_partition_root = false).
PublicationResult ensure_publication(const repl::Connection& source, const std::string& name,
                                     bool patterns, const std::vector<repl::TableInfo>& tables) {
  PublicationResult result;
  std::vector<std::string> listed;
  for (const auto& table : tables) {
    if (table.carries_rows()) listed.push_back(table.qualified_name());
  }
  auto existing = source.exec("SELECT puballtables FROM pg_publication WHERE pubname = $1", {name},
                              "looking up the publication");
  if (existing.rows() == 0) {
    std::string what;
    if (!patterns) {
      what = "FOR ALL TABLES";
    } else {
      if (listed.empty()) {
        throw repl::CheckFailed(
            "no table matches the --table / --exclude-table patterns: nothing to replicate");
      }
      what = "FOR TABLE " + fmt::format("{}", fmt::join(listed, ", "));
    }
    source.exec(fmt::format("CREATE PUBLICATION {} {} WITH (publish_via_partition_root = false)",
                            repl::quote_ident(name), what),
                fmt::format("creating publication \"{}\" ({})", name,
                            patterns ? "FOR TABLE needs ownership of the tables"
                                     : "FOR ALL TABLES needs superuser"));
    result.created = true;
    return result;
  }
  if (existing.get(0, 0) == "t") return result;  // every table, whatever the scope
  std::vector<std::string> missing;
  std::vector<std::string> schemas, names;
  for (const auto& table : tables) {
    if (!table.carries_rows()) continue;
    schemas.push_back(table.schema);
    names.push_back(table.name);
  }
  auto r = source.exec(
      "SELECT s.ord FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS s(nsp, rel, ord) "
      "WHERE NOT EXISTS (SELECT 1 FROM pg_publication_tables p WHERE p.pubname = $1 "
      "AND p.schemaname = s.nsp AND p.tablename = s.rel) ORDER BY s.ord",
      {name, repl::sql_array_literal(schemas), repl::sql_array_literal(names)},
      "comparing the publication's tables with the scope");
  for (int i = 0; i < r.rows(); ++i)
    missing.push_back(listed.at(std::stoul(std::string(r.get(i, 0))) - 1));
  if (!missing.empty()) {
    source.exec(
        fmt::format("ALTER PUBLICATION {} ADD TABLE {}", repl::quote_ident(name),
                    fmt::join(missing, ", ")),
        fmt::format("adding {} tables in scope to publication \"{}\"", missing.size(), name));
    result.altered = true;
  }
  return result;
}

// The slot, its snapshot and what a resume keeps.
struct PreparedCopy {
  repl::ReplicationConnection replication;
  repl::CreatedSlot slot;
  std::vector<std::string> kept;      // finished under an earlier snapshot, proven unchanged
  std::vector<std::string> recopied;  // finished earlier, emptied to be copied again
  std::string recopy_reason;
};

// Drops the old slot if any and creates the new one with an exported snapshot, then
// decides which tables finished under the old snapshot stay (initial_copy_resume.hpp).
PreparedCopy prepare_slot(const repl::Connection& source, const repl::Connection& target,
                          const std::string& source_conninfo, const std::string& name,
                          const std::string& publication, bool publication_altered,
                          const std::vector<repl::TableInfo>& tables,
                          const std::string& post_data_pending) {
  auto slot = read_slot(source, name);
  if (slot && (slot->plugin != "pgoutput" || !slot->same_database)) {
    throw repl::ConfigError(fmt::format(
        "replication slot \"{}\" exists but is not a pgoutput slot of this database: choose "
        "another --name, or drop it (pgferry cleanup) if it is a leftover",
        name));
  }
  if (slot && slot->active) {
    throw repl::ConfigError(fmt::format(
        "replication slot \"{}\" is in use by another session: stop it (another pgferry init "
        "or run with the same --name) and re-run init",
        name));
  }
  auto origin = repl::read_copy_origin(target, name);
  auto finished = repl::finished_copies(target, name);
  std::map<std::string, const repl::TableInfo*> by_name;
  for (const auto& table : tables) {
    if (table.carries_rows()) by_name[table.display_name()] = &table;
  }

  std::string why_not;
  bool any_finished = false;
  for (const auto& [table, snapshot] : finished) any_finished |= by_name.count(table) > 0;
  if (any_finished) {
    if (!slot) {
      why_not = "the old slot is gone";
    } else if (!origin || origin->consistent_point != slot->confirmed_flush) {
      why_not = "the old slot does not match the recorded copy origin";
    } else if (publication_altered) {
      why_not = "the publication's table list changed";
    } else {
      for (const auto& [table, snapshot] : finished) {
        if (by_name.count(table) && snapshot != origin->snapshot) {
          why_not = fmt::format("table {} was copied under another snapshot", table);
          break;
        }
      }
    }
    if (why_not.empty()) {
      auto distance = std::stoll(std::string(
          source
              .exec("SELECT pg_current_wal_lsn() - $1::pg_lsn", {slot->confirmed_flush.to_string()})
              .scalar()));
      if (distance > kResumeScanLimitBytes) {
        why_not = fmt::format("{} of WAL were written since the first snapshot",
                              human_bytes(static_cast<double>(distance)));
      }
    }
  }
  bool scan = any_finished && why_not.empty();
  std::string scan_slot = fmt::format("{}_resume_{}", name.substr(0, 40), ::getpid());
  if (slot) {
    if (scan) {
      try {
        source.exec("SELECT pg_copy_logical_replication_slot($1, $2, true)", {name, scan_slot},
                    "keeping the old slot's position in a temporary slot");
      } catch (const repl::SqlError& e) {
        scan = false;
        why_not = fmt::format("the old slot could not be copied ({})", e.what());
      }
    }
    source.exec("SELECT pg_drop_replication_slot($1)", {name},
                fmt::format("dropping the unconsumed slot \"{}\" of an interrupted init", name));
    spdlog::info("init slot={} dropped the slot of an interrupted init (lsn={})", name,
                 slot->confirmed_flush);
  }

  auto replication = repl::ReplicationConnection::open(source_conninfo);
  repl::SlotOptions slot_options;
  slot_options.snapshot = repl::SnapshotAction::export_snapshot;
  auto created = replication.create_logical_slot(name, slot_options);
  if (!created.snapshot_name) {
    throw repl::ProtocolError("CREATE_REPLICATION_SLOT returned no snapshot name", 0, 0);
  }
  spdlog::info("init slot={} created lsn={} snapshot={}", name, created.consistent_point,
               *created.snapshot_name);

  PreparedCopy prepared{std::move(replication), created, {}, {}, why_not};
  std::set<std::uint32_t> changed;
  if (scan) {
    changed = repl::changed_relations(source, scan_slot, publication, created.consistent_point);
    source.exec("SELECT pg_drop_replication_slot($1)", {scan_slot});
  }
  std::vector<const repl::TableInfo*> recopy;
  for (const auto& [table, snapshot] : finished) {
    auto it = by_name.find(table);
    if (it == by_name.end()) continue;  // out of scope now: left alone
    if (scan && !changed.count(it->second->oid.value)) {
      prepared.kept.push_back(table);
    } else {
      recopy.push_back(it->second);
      prepared.recopied.push_back(table);
    }
  }
  if (scan && !prepared.recopied.empty()) {
    prepared.recopy_reason = "changed on the source since the first snapshot";
  }
  repl::CopyOrigin new_origin{created.consistent_point, *created.snapshot_name, post_data_pending};
  repl::rebase_copy(target, name, new_origin, prepared.kept, recopy);
  if (!prepared.kept.empty() || !prepared.recopied.empty()) {
    spdlog::info("init resume: kept {} finished tables, copying {} again{}", prepared.kept.size(),
                 prepared.recopied.size(),
                 prepared.recopy_reason.empty() ? "" : " (" + prepared.recopy_reason + ")");
  }
  return prepared;
}

// Whether the replication connection (and so the exported snapshot) is still alive,
// without sending anything on it (a command would release the snapshot).
bool replication_alive(repl::ReplicationConnection& replication) {
  PGconn* conn = replication.connection().native();
  return conn != nullptr && PQconsumeInput(conn) == 1 && PQstatus(conn) == CONNECTION_OK;
}

std::vector<repl::TableInfo> missing_on_target(const repl::Connection& target,
                                               const std::vector<repl::TableInfo>& tables) {
  std::vector<std::string> names;
  for (const auto& table : tables) names.push_back(table.qualified_name());
  auto r = target.exec(
      "SELECT s.ord FROM unnest($1::text[]) WITH ORDINALITY AS s(name, ord) "
      "WHERE to_regclass(s.name) IS NULL ORDER BY s.ord",
      {repl::sql_array_literal(names)}, "looking for the tables missing on the target");
  std::vector<repl::TableInfo> missing;
  for (int i = 0; i < r.rows(); ++i)
    missing.push_back(tables.at(std::stoul(std::string(r.get(i, 0))) - 1));
  return missing;
}

repl::SchemaCopyOptions schema_options(const InitOptions& options, const std::string& pending) {
  repl::SchemaCopyOptions schema;
  schema.bindir = options.pg_bindir;
  schema.maintenance_work_mem =
      options.maintenance_work_mem == "0" ? std::string() : options.maintenance_work_mem;
  if (pending != "*") {
    std::size_t start = 0;
    while (start < pending.size()) {
      auto end = pending.find('\n', start);
      if (end == std::string::npos) end = pending.size();
      if (end > start) schema.tables.push_back(pending.substr(start, end - start));
      start = end + 1;
    }
  }
  return schema;
}

// --split-mb, or by default about four ranges per job over the whole copy, so that the
// largest table does not leave workers idle: between 16 MB and 1 GB a range.
std::int64_t split_bytes(const InitOptions& options, const std::vector<repl::TableInfo>& tables) {
  if (options.split_mb > 0) return std::int64_t{options.split_mb} << 20;
  std::int64_t total = 0;
  for (const auto& table : tables) {
    if (table.carries_rows()) total += table.bytes;
  }
  return std::clamp<std::int64_t>(total / (options.jobs * 4), std::int64_t{16} << 20,
                                  std::int64_t{1} << 30);
}

int refuse(const CommonOptions& common, const repl::CheckReport& report) {
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

int run_init(const CommonOptions& common, const InitOptions& options) {
  if (options.no_data) {
    if (options.schema || !options.tables.empty() || !options.excluded_tables.empty()) {
      throw repl::ConfigError(
          "--no-data creates the publication FOR ALL TABLES, slot and progress record only: it "
          "takes no --schema, --table or --exclude-table");
    }
    return run_init_no_data(common);
  }
  if (options.jobs < 1 || options.jobs > 64) {
    throw repl::ConfigError(fmt::format("--jobs must be between 1 and 64 (got {})", options.jobs));
  }
  auto scope = repl::TableScope::from_patterns(options.tables, options.excluded_tables);
  bool patterns = !options.tables.empty() || !options.excluded_tables.empty();
  std::string source_conninfo = common.source_conninfo();
  std::string target_conninfo = common.target_conninfo();
  std::string publication = common.publication_name();
  auto started = std::chrono::steady_clock::now();

  auto source = repl::Connection::open(source_conninfo, repl::Side::source);
  auto target = repl::Connection::open(target_conninfo, repl::Side::target);
  repl::ProgressStore store(target);
  auto applied = store.read(common.name);

  // 1. Preflight: refuse on what init cannot fix.
  repl::CheckOptions check_options;
  check_options.name = common.name;
  check_options.publication = publication;
  check_options.target_data =
      applied ? repl::TargetData::may_have_rows : repl::TargetData::must_be_empty;
  check_options.allow_target_triggers = options.allow_target_triggers;
  auto check = repl::run_checks(source, target, scope, check_options);
  std::erase_if(check.findings, [&](const repl::Finding& f) {
    return options.schema && f.code == "target_table_missing";
  });
  if (!check.ok()) return refuse(common, check);
  for (const auto& f : check.findings) {
    if (f.severity == repl::Severity::warning) {
      spdlog::warn("init check {} object={}: {}", f.code, f.object, f.reason);
    }
  }

  auto tables = repl::list_tables(source, scope);
  nlohmann::ordered_json doc = {{"ok", true}, {"slot", common.name}, {"publication", publication}};
  auto publication_result = ensure_publication(source, publication, patterns, tables);
  doc["created"] = {{"publication", publication_result.created}};
  if (publication_result.altered) doc["publication_altered"] = true;

  // 2. Already initialized (a re-run after success, or after --no-data): only what is left.
  if (applied) {
    auto slot = read_slot(source, common.name);
    if (!slot) {
      throw repl::CheckFailed(fmt::format(
          "the progress record \"{}\" exists on the target but the slot is gone from the "
          "source: changes since were lost; start over with pgferry cleanup and pgferry init",
          common.name));
    }
    auto origin = repl::read_copy_origin(target, common.name);
    bool post_data = options.schema && origin && !origin->post_data_pending.empty();
    if (post_data) {
      repl::copy_schema_section(source_conninfo, target_conninfo, repl::SchemaSection::post_data,
                                schema_options(options, origin->post_data_pending));
      origin->post_data_pending.clear();
      repl::write_copy_origin(target, common.name, *origin);
    }
    doc["created"]["slot"] = false;
    doc["created"]["progress"] = false;
    doc["applied_lsn"] = applied->to_string();
    doc["data"] = "already initialized";
    if (post_data) doc["schema"] = {{"post_data", "restored"}};
    if (common.json) {
      std::cout << doc.dump(2) << "\n";
    } else {
      std::cout << fmt::format(
          "init {}: already initialized (progress record at {}); nothing to copy{}\n", common.name,
          *applied, post_data ? "; post-data schema restored" : "");
    }
    return 0;
  }

  // 3. --schema, first half: the tables missing on the target (all of them or none, in
  // the usual case; only those that are missing otherwise).
  std::string post_data_pending;
  if (auto origin = repl::read_copy_origin(target, common.name)) {
    post_data_pending = origin->post_data_pending;
  }
  nlohmann::ordered_json schema_doc = nlohmann::ordered_json::object();
  if (options.schema) {
    auto missing = missing_on_target(target, tables);
    if (!missing.empty()) {
      repl::SchemaCopyOptions schema;
      schema.bindir = options.pg_bindir;
      if (patterns || missing.size() != tables.size()) {
        std::set<std::string> schemas;
        for (const auto& table : missing) {
          schema.tables.push_back(table.qualified_name());
          schemas.insert(table.schema);
        }
        schema.schemas.assign(schemas.begin(), schemas.end());
        post_data_pending.clear();
        for (const auto& t : schema.tables) post_data_pending += t + "\n";
      } else {
        post_data_pending = "*";
      }
      // Record the intent first: if init dies after the restore, a re-run still knows the
      // post-data half is due.
      repl::write_copy_origin(target, common.name,
                              repl::CopyOrigin{repl::Lsn{}, "", post_data_pending});
      repl::copy_schema_section(source_conninfo, target_conninfo, repl::SchemaSection::pre_data,
                                schema);
      schema_doc["pre_data"] = fmt::format("restored ({} tables)", missing.size());
    } else {
      schema_doc["pre_data"] = "tables exist";
    }
  }

  // 4. The slot with its snapshot, and the copy; retried with the same snapshot while the
  // replication connection lives, else with a new slot (prepare_slot decides what stays).
  g_init_stop_signal = 0;
  std::signal(SIGINT, on_init_stop_signal);
  std::signal(SIGTERM, on_init_stop_signal);
  bool terminal =
      options.progress == "tty" || (options.progress == "auto" && ::isatty(STDERR_FILENO) == 1);
  std::optional<PreparedCopy> prepared;
  repl::CopyReport copy;
  std::vector<std::string> kept_all, recopied_all;
  std::string recopy_reason;
  for (int attempt = 1;; ++attempt) {
    if (!prepared || !replication_alive(prepared->replication)) {
      prepared.reset();
      prepared = prepare_slot(source, target, source_conninfo, common.name, publication,
                              publication_result.altered, tables, post_data_pending);
      kept_all.insert(kept_all.end(), prepared->kept.begin(), prepared->kept.end());
      recopied_all.insert(recopied_all.end(), prepared->recopied.begin(), prepared->recopied.end());
      if (!prepared->recopy_reason.empty()) recopy_reason = prepared->recopy_reason;
    }
    std::stop_source stop;
    ProgressDisplay display(target_conninfo, tables, terminal, options.progress != "none");
    for (const auto& table : repl::finished_copies(target, common.name)) {
      display.mark_skipped(table.first);
    }
    repl::CopyOptions copy_options;
    copy_options.name = common.name;
    copy_options.jobs = options.jobs;
    copy_options.split_bytes = split_bytes(options, tables);
    copy_options.stop = stop.get_token();
    copy_options.progress = [&display](const repl::CopyProgress& p) { display.on_progress(p); };
    std::jthread watcher([&stop](std::stop_token own) {
      while (!own.stop_requested() && g_init_stop_signal == 0) std::this_thread::sleep_for(50ms);
      if (g_init_stop_signal != 0) stop.request_stop();
    });
    try {
      copy = repl::copy_tables(source_conninfo, target_conninfo, *prepared->slot.snapshot_name,
                               tables, copy_options);
      watcher.request_stop();
      display.finish();
      spdlog::info("init copy rows={} bytes={} ranges={} skipped={} seconds={:.1f}", copy.rows,
                   copy.bytes, copy.ranges_copied, copy.ranges_skipped,
                   static_cast<double>(copy.elapsed.count()) / 1000.0);
      break;
    } catch (const repl::ConnectionError& e) {
      watcher.request_stop();
      display.finish();
      if (attempt >= kCopyAttempts || g_init_stop_signal != 0) throw;
      spdlog::warn("init copy attempt {} failed: {}; resuming", attempt, e.what());
      std::this_thread::sleep_for(std::chrono::seconds(attempt));
      // A lost source or target session: reconnect the control connections too.
      source = repl::Connection::open(source_conninfo, repl::Side::source);
      target = repl::Connection::open(target_conninfo, repl::Side::target);
      store = repl::ProgressStore(target);
    }
  }
  if (!copy.complete) {
    int ranges = 0;
    for (const auto& t : copy.tables) ranges += t.ranges;
    std::cerr << fmt::format(
        "init: interrupted (signal {}); {} of {} ranges done. Re-run init to resume.\n",
        static_cast<int>(g_init_stop_signal), copy.ranges_copied + copy.ranges_skipped, ranges);
    return static_cast<int>(repl::ExitCode::error);
  }

  // 5. Initialized: the progress record at the slot's consistent point, then the
  // snapshot may go.
  repl::Lsn consistent_point = prepared->slot.consistent_point;
  bool progress_created = store.initialize(common.name, consistent_point);
  prepared.reset();

  // 6. --schema, second half: indexes and constraints on the loaded tables.
  if (options.schema && !post_data_pending.empty()) {
    repl::copy_schema_section(source_conninfo, target_conninfo, repl::SchemaSection::post_data,
                              schema_options(options, post_data_pending));
    auto origin = repl::read_copy_origin(target, common.name);
    if (origin) {
      origin->post_data_pending.clear();
      repl::write_copy_origin(target, common.name, *origin);
    }
    schema_doc["post_data"] = "restored";
  }

  double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  doc["created"]["slot"] = true;
  doc["created"]["progress"] = progress_created;
  doc["consistent_point"] = consistent_point.to_string();
  doc["applied_lsn"] = consistent_point.to_string();
  if (options.schema) doc["schema"] = schema_doc;
  doc["resume"] = {{"kept", kept_all}, {"recopied", recopied_all}, {"reason", recopy_reason}};
  nlohmann::ordered_json table_docs = nlohmann::ordered_json::array();
  for (const auto& t : copy.tables) {
    table_docs.push_back({{"table", t.table},
                          {"status", repl::to_string(t.status)},
                          {"rows", t.rows},
                          {"bytes", t.bytes},
                          {"ranges", t.ranges},
                          {"format", t.binary ? "binary" : "text"}});
  }
  doc["copy"] = {{"jobs", options.jobs},
                 {"rows", copy.rows},
                 {"bytes", copy.bytes},
                 {"ranges_copied", copy.ranges_copied},
                 {"ranges_skipped", copy.ranges_skipped},
                 {"triggers_disabled", copy.triggers_disabled},
                 {"copy_seconds", static_cast<double>(copy.elapsed.count()) / 1000.0},
                 {"tables", table_docs}};
  doc["seconds"] = seconds;
  spdlog::info("init slot={} publication={} lsn={} rows={} bytes={} seconds={:.1f}", common.name,
               publication, consistent_point, copy.rows, copy.bytes, seconds);
  if (common.json) {
    std::cout << doc.dump(2) << "\n";
  } else {
    std::cout << fmt::format("publication {}: {}\n", publication,
                             publication_result.created ? "created" : "exists")
              << fmt::format("slot {}: created (consistent point {})\n", common.name,
                             consistent_point);
    std::size_t copied = 0, skipped = 0;
    for (const auto& t : copy.tables) {
      (t.status == repl::TableCopyStatus::skipped ? skipped : copied)++;
    }
    std::cout << fmt::format(
        "data: {} tables copied ({} rows, {}), {} kept from an earlier "
        "run, in {:.1f}s ({}/s) with {} jobs\n",
        copied, copy.rows, human_bytes(static_cast<double>(copy.bytes)), skipped, seconds,
        human_bytes(seconds > 0 ? static_cast<double>(copy.bytes) / seconds : 0), options.jobs);
    if (!recopied_all.empty()) {
      std::cout << fmt::format("resume: {} finished tables copied again ({})\n",
                               recopied_all.size(), recopy_reason);
    }
    if (options.schema) {
      std::cout << fmt::format("schema: pre-data {}, post-data {}\n",
                               schema_doc.value("pre_data", std::string("-")),
                               schema_doc.value("post_data", std::string("none due")));
    }
    std::cout << fmt::format("progress record {}: {} (applied {}); next: pgferry run\n",
                             common.name, progress_created ? "created" : "exists",
                             consistent_point);
  }
  return 0;
}

}  // namespace

void add_init_command(CLI::App& app, CommonOptions& common, CommandAction& action) {
  auto* cmd = app.add_subcommand(
      "init", "create publication, slot and progress record; copy the data (safe to re-run)");
  auto options = std::make_shared<InitOptions>();
  cmd->add_flag("--no-data", options->no_data,
                "create publication, slot and progress record only; copy no rows");
  cmd->add_flag("--schema", options->schema,
                "create the missing tables on the target with pg_dump/psql (indexes and "
                "constraints after the copy)");
  cmd->add_option("--jobs,-j", options->jobs, "parallel copy workers")->capture_default_str();
  add_table_scope_options(cmd, options->tables, options->excluded_tables);
  cmd->add_option("--split-mb", options->split_mb,
                  "copy tables larger than this in block ranges of about this size (default: "
                  "about four ranges per job over the whole copy)");
  cmd->add_option("--pg-bindir", options->pg_bindir,
                  "directory of pg_dump and psql for --schema (default: pg_config --bindir)");
  cmd->add_option("--maintenance-work-mem", options->maintenance_work_mem,
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
  cmd->add_flag("--allow-target-triggers", options->allow_target_triggers,
                "accept that target triggers and foreign-key actions fire for replicated changes "
                "when the target role may not set session_replication_role (see README)");
  cmd->callback([&action, &common, options] {
    action = [&common, options] { return run_init(common, *options); };
  });
}

}  // namespace pgferry::tools
