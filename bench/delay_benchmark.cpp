// Head-of-stream delay benchmark: under a pgbench load at fixed rates, the time from a
// transaction's commit on the source to its commit on the target, for `pgferry run` and a
// native subscription, in the same run on the same clusters; and pg_recvlogical (the
// walsender floor) at the same rates, to tell whether the consumer or the machine is the
// limit. With --idle-lag: how far the applied position trails while another database on the
// source writes and ours is idle, and what following it costs the walsender.
//
// NOTES
// - What is measured: both clusters run with track_commit_timestamp = on. Every pgbench
//   tpcb-like transaction inserts one pgbench_history row (keyed by a bigserial id); the
//   delay of that transaction is pg_xact_commit_timestamp(xmin) of its row on the target
//   minus the same on the source. Both timestamps are taken by the server when it writes the
//   commit record (before that record is flushed), on one machine and one clock: the delay
//   covers the walsender decoding and sending it, the consumer receiving and applying it and
//   the target transaction up to its commit record. pgferry commits several source
//   transactions in one target transaction: they all get that transaction's commit time,
//   which is when they become visible on the target. Not so for the native subscription: its
//   apply worker gives its commits the source's commit timestamp (replication origin), so
//   its rows are timed by a target-only column `applied_at DEFAULT clock_timestamp()`, the
//   insert on the target, which it commits right after: a lower bound of its delay, which
//   favours native by the time of a commit.
// - Each (rate, method) is a phase of its own: the consumer starts from a fresh slot at the
//   head of the stream, the load runs for --duration seconds, then the benchmark waits until
//   the target has every transaction of the phase (the catch-up time: near zero when the
//   consumer kept up) and stops the consumer. Only one consumer runs at a time, so none
//   takes CPU from another; the method order rotates from rate to rate.
// - "max": before the phases, pgbench runs unthrottled with no consumer; its rate is what the
//   source alone sustains on this machine, and the "max" phases run at that rate (-R). When
//   the floor (pg_recvlogical to /dev/null: only the walsender's decoding and sending) cannot
//   keep up either, or the machine's CPU is used up, the machine is the limit, not the
//   consumer. "unthrottled" runs pgbench without -R (what `pgferry demo` does).
// - CPU: the walsender's and the consumer's (pgferry with its target sessions, the native
//   apply worker, or pg_recvlogical) from /proc/<pid>/stat, and the whole machine's from
//   /proc/stat, over the load; as a share of one core, and of all cores for the machine.
// - --idle-lag: pgferry replicates an idle database while pgbench writes another database of
//   the same source at --busy-rate. For each --idle-intervals value (`pgferry run
//   --idle-interval-ms`), the lag `pgferry lag` would read (source WAL position minus the
//   progress row, sampled every 50 ms) while the other database writes, in bytes and in
//   time at that WAL rate; and the walsender's CPU per minute at full idle and while the
//   other database writes, plus the target commits the progress row costs.
//
// - --baseline-binary PATH (method "baseline", and a row of --idle-lag): the same with
//   pgferry from another build, e.g. main, for a before/after in the same run.
//
// Usage: pgferry_delay_bench [--rates 200,1000,max] [--duration 60] [--clients 4]
//                            [--methods pgferry,native,floor] [--scale 10] [--durable]
//                            [--source-bindir DIR] [--target-bindir DIR]
//        pgferry_delay_bench --idle-lag [--idle-intervals 100,1000] [--idle-seconds 60]
//                            [--busy-rate 1000]
#include <fmt/format.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "bench_support.hpp"
#include "pgferry/replication/core/lsn.hpp"
#include "pgferry/replication/core/pg.hpp"
#include "pgferry/tools/local_cluster.hpp"

namespace repl = pgferry::replication;
using pgferry::tools::ChildProcess;
using pgferry::tools::LocalCluster;
using repl::Lsn;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

namespace {

using pgferry::bench::seconds_since;
using pgferry::bench::split;

struct Options {
  std::vector<std::string> rates = {"200", "1000", "max"};
  int duration = 60;
  int clients = 4;
  int scale = 10;
  std::vector<std::string> methods = {"pgferry", "native", "floor"};
  // Method "baseline": pgferry from another build (e.g. main), on the same clusters.
  std::string baseline_binary;
  bool durable = false;
  std::string source_bindir;
  std::string target_bindir;
  bool idle_lag = false;
  std::vector<int> idle_intervals = {100, 1000};
  int idle_seconds = 60;
  int busy_rate = 1000;
};

// --- measuring ----------------------------------------------------------------------------

// CPU time a process (all its threads) used so far, in seconds (0 once it is gone).
double process_cpu_seconds(pid_t pid) {
  std::ifstream in(fmt::format("/proc/{}/stat", pid));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto close = text.rfind(')');  // the command name may hold spaces
  if (close == std::string::npos) return 0;
  std::istringstream fields(text.substr(close + 2));
  std::string field;
  double utime = 0, stime = 0;
  // state is field 3; utime and stime are fields 14 and 15.
  for (int i = 3; i <= 15 && fields >> field; ++i) {
    if (i == 14) utime = std::stod(field);
    if (i == 15) stime = std::stod(field);
  }
  return (utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

// The whole machine's busy and total CPU time so far (all cores), in seconds.
struct MachineCpu {
  double busy = 0;
  double total = 0;
  static MachineCpu now() {
    std::ifstream in("/proc/stat");
    std::string cpu;
    in >> cpu;
    std::vector<double> ticks;
    double value = 0;
    for (int i = 0; i < 8 && in >> value; ++i) ticks.push_back(value);
    double hz = static_cast<double>(::sysconf(_SC_CLK_TCK));
    MachineCpu m;
    for (double t : ticks) m.total += t / hz;
    m.busy = m.total - (ticks.size() > 4 ? (ticks[3] + ticks[4]) / hz : 0);  // idle, iowait
    return m;
  }
};

// CPU of a few processes and of the machine over an interval.
class CpuMeter {
 public:
  explicit CpuMeter(std::vector<pid_t> pids) : pids_(std::move(pids)) {
    for (pid_t pid : pids_) start_.push_back(process_cpu_seconds(pid));
    machine_ = MachineCpu::now();
    started_ = Clock::now();
  }
  // Share of one core each process used since the start.
  std::vector<double> process_shares() const {
    double wall = seconds_since(started_);
    std::vector<double> shares;
    for (std::size_t i = 0; i < pids_.size(); ++i) {
      shares.push_back((process_cpu_seconds(pids_[i]) - start_[i]) / wall);
    }
    return shares;
  }
  // Share of all cores the machine used since the start.
  double machine_share() const {
    auto now = MachineCpu::now();
    double total = now.total - machine_.total;
    return total > 0 ? (now.busy - machine_.busy) / total : 0;
  }

 private:
  std::vector<pid_t> pids_;
  std::vector<double> start_;
  MachineCpu machine_;
  Clock::time_point started_;
};

double percentile(std::vector<double> values, double q) {
  if (values.empty()) return NAN;
  std::sort(values.begin(), values.end());
  auto rank = static_cast<std::size_t>(std::ceil(q * static_cast<double>(values.size())));
  return values[std::clamp<std::size_t>(rank, 1, values.size()) - 1];
}

std::string text_of(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// pgbench's "tps = N" line.
double pgbench_tps(const std::filesystem::path& log) {
  auto text = text_of(log);
  auto at = text.rfind("tps = ");
  if (at == std::string::npos) throw std::runtime_error("no tps line in " + log.string());
  return std::stod(text.substr(at + 6));
}

void wait_for(const std::function<bool()>& condition, std::chrono::seconds timeout,
              const std::string& what) {
  auto deadline = Clock::now() + timeout;
  while (!condition()) {
    if (Clock::now() > deadline) throw std::runtime_error("timed out: " + what);
    std::this_thread::sleep_for(10ms);
  }
}

std::vector<std::string> pgbench(const LocalCluster& cluster, const std::string& dbname,
                                 std::vector<std::string> args) {
  std::vector<std::string> argv = {
      "pgbench", "-h",      cluster.socket_dir().string(), "-p", std::to_string(cluster.port()),
      "-U",      "postgres"};
  argv.insert(argv.end(), args.begin(), args.end());
  argv.push_back(dbname);
  return argv;
}

// pgbench -i, plus the primary key pgferry needs on pgbench_history.
void init_pgbench(LocalCluster& cluster, const std::string& dbname, int scale) {
  auto admin = repl::Connection::open(cluster.conninfo(), repl::Side::none);
  if (dbname != "postgres") admin.exec("CREATE DATABASE " + dbname);
  if (cluster.run_tool(pgbench(cluster, dbname, {"-i", "-q", "-s", std::to_string(scale)}),
                       cluster.dir() / "pgbench-init.log") != 0) {
    throw std::runtime_error("pgbench -i failed, see " +
                             (cluster.dir() / "pgbench-init.log").string());
  }
  repl::Connection::open(cluster.conninfo(dbname), repl::Side::none)
      .exec("ALTER TABLE pgbench_history ADD COLUMN id bigserial PRIMARY KEY");
}

// id -> commit time (µs since the epoch) of the pgbench_history rows in (from, to].
std::unordered_map<std::int64_t, std::int64_t> commit_times(
    const repl::Connection& conn, std::int64_t from, std::int64_t to,
    std::string_view time = "pg_xact_commit_timestamp(xmin)") {
  auto result =
      conn.exec(fmt::format("SELECT id, (extract(epoch FROM {}) * 1000000)::bigint "
                            "FROM pgbench_history WHERE id > {} AND id <= {}",
                            time, from, to));
  std::unordered_map<std::int64_t, std::int64_t> times;
  for (int r = 0; r < result.rows(); ++r) {
    times[std::stoll(std::string(result.get(r, 0)))] = std::stoll(std::string(result.get(r, 1)));
  }
  return times;
}

// --- head-of-stream delay -------------------------------------------------------------------

std::size_t history_rows(const repl::Connection& conn, std::int64_t from, std::int64_t to) {
  return std::stoull(
      conn.exec(fmt::format("SELECT count(*) FROM pgbench_history WHERE id > {} AND id <= {}", from,
                            to))
          .scalar());
}

struct Phase {
  std::string rate_label;
  std::string method;
  double offered_tps = 0;  // 0: unthrottled
  double achieved_tps = 0;
  std::size_t transactions = 0;
  std::vector<double> delays_ms;      // per source transaction (not for the floor)
  double walsender_behind_bytes = 0;  // WAL the walsender had not sent when the load ended
  double catchup_s = 0;               // load end -> the consumer had everything
  double machine_share = 0;
  double walsender_core = 0;
  double consumer_core = 0;
};

// A consumer of the source's changes for one phase.
class Consumer {
 public:
  virtual ~Consumer() = default;
  virtual std::string slot() const = 0;
  virtual pid_t consumer_pid() = 0;
  // The consumer has all `count` transactions of (from_id, to_id] / WAL up to `end`.
  virtual bool caught_up(std::int64_t from_id, std::int64_t to_id, std::size_t count, Lsn end) = 0;
  virtual std::optional<repl::Connection> target() { return std::nullopt; }
  // When a row reached the target (see the NOTES).
  virtual std::string_view target_time() const { return "pg_xact_commit_timestamp(xmin)"; }
  // Other processes that do the consumer's work (pgferry's target sessions).
  virtual std::vector<pid_t> helper_pids() { return {}; }
};

// A consumer that applies to a database of the target: caught up once the phase's rows are
// there.
class ApplyingConsumer : public Consumer {
 public:
  ApplyingConsumer(LocalCluster& target, std::string dbname)
      : target_(target),
        dbname_(std::move(dbname)),
        conn_(repl::Connection::open(target.conninfo(dbname_), repl::Side::target)) {}
  bool caught_up(std::int64_t from_id, std::int64_t to_id, std::size_t count,
                 Lsn /*end*/) override {
    return history_rows(conn_, from_id, to_id) == count;
  }
  std::optional<repl::Connection> target() override {
    return repl::Connection::open(target_.conninfo(dbname_), repl::Side::target);
  }

 protected:
  LocalCluster& target_;
  std::string dbname_;
  repl::Connection conn_;
};

class PgferryConsumer final : public ApplyingConsumer {
 public:
  PgferryConsumer(std::string binary, LocalCluster& source, LocalCluster& target)
      : ApplyingConsumer(target, "t_pgferry"),
        binary_(std::move(binary)),
        source_(source),
        log_(source.dir() / "pgferry.log") {
    run_checked({"init", "--no-data"});
    agent_.emplace(with({"run"}), log_);
  }
  ~PgferryConsumer() override {
    agent_.reset();
    try {
      run_checked({"cleanup"});
    } catch (const std::exception& e) {
      std::cerr << e.what() << "\n";
    }
  }
  std::string slot() const override { return "ferry"; }
  std::vector<pid_t> helper_pids() override {
    auto pids = conn_.exec(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND backend_type = "
        "'client backend' AND pid <> pg_backend_pid()");
    std::vector<pid_t> out;
    for (int r = 0; r < pids.rows(); ++r) out.push_back(std::stoi(std::string(pids.get(r, 0))));
    return out;
  }
  pid_t consumer_pid() override { return agent_->pid(); }

 private:
  std::vector<std::string> with(std::vector<std::string> args) const {
    std::vector<std::string> argv = {binary_};
    argv.insert(argv.end(), args.begin(), args.end());
    argv.insert(argv.end(), {"--source", source_.conninfo(), "--target", target_.conninfo(dbname_),
                             "--name", "ferry"});
    return argv;
  }
  void run_checked(std::vector<std::string> args) const {
    if (pgferry::tools::run_process(with(args), log_) != 0) {
      throw std::runtime_error(fmt::format("pgferry {} failed, see {}", args[0], log_.string()));
    }
  }
  std::string binary_;
  LocalCluster& source_;
  std::filesystem::path log_;
  std::optional<ChildProcess> agent_;
};

class NativeConsumer final : public ApplyingConsumer {
 public:
  NativeConsumer(LocalCluster& source, LocalCluster& target)
      : ApplyingConsumer(target, "t_native") {
    conn_.exec(fmt::format(
        "CREATE SUBSCRIPTION bench_sub CONNECTION '{}' PUBLICATION bench WITH (copy_data = false)",
        source.conninfo()));
  }
  ~NativeConsumer() override {
    try {
      conn_.exec("DROP SUBSCRIPTION bench_sub");
    } catch (const std::exception& e) {
      std::cerr << "dropping the subscription: " << e.what() << "\n";
    }
  }
  std::string slot() const override { return "bench_sub"; }
  std::string_view target_time() const override { return "applied_at"; }
  pid_t consumer_pid() override {
    auto pid = conn_.exec(
        "SELECT pid FROM pg_stat_subscription WHERE subname = 'bench_sub' AND relid IS NULL "
        "AND pid IS NOT NULL");
    return pid.rows() == 1 ? std::stoi(std::string(pid.get(0, 0))) : 0;
  }
};

// pg_recvlogical of pgoutput to /dev/null: the walsender alone.
class FloorConsumer final : public Consumer {
 public:
  explicit FloorConsumer(LocalCluster& source)
      : conn_(repl::Connection::open(source.conninfo(), repl::Side::source)) {
    conn_.exec("SELECT pg_create_logical_replication_slot('bench_floor', 'pgoutput')");
    auto argv = pgferry::bench::recvlogical_argv(source, "bench_floor", {"-s", "1"});
    argv[0] = source.bindir() + "/" + argv[0];
    recvlogical_.emplace(argv, source.dir() / "recvlogical.log");
  }
  ~FloorConsumer() override {
    recvlogical_.reset();
    try {
      wait_for(
          [&] {
            return conn_
                       .exec(
                           "SELECT 1 FROM pg_replication_slots WHERE slot_name = 'bench_floor' "
                           "AND active_pid IS NULL")
                       .rows() == 1;
          },
          30s, "pg_recvlogical to let go of its slot");
      conn_.exec("SELECT pg_drop_replication_slot('bench_floor')");
    } catch (const std::exception& e) {
      std::cerr << "dropping the floor's slot: " << e.what() << "\n";
    }
  }
  std::string slot() const override { return "bench_floor"; }
  pid_t consumer_pid() override { return recvlogical_->pid(); }
  bool caught_up(std::int64_t /*from_id*/, std::int64_t /*to_id*/, std::size_t /*count*/,
                 Lsn end) override {
    auto sent = conn_.exec(
        "SELECT r.sent_lsn::text FROM pg_stat_replication r JOIN pg_replication_slots s ON "
        "s.active_pid = r.pid WHERE s.slot_name = 'bench_floor'");
    return sent.rows() == 1 && !sent.is_null(0, 0) &&
           Lsn::from_string(sent.get(0, 0), "sent_lsn") >= end;
  }

 private:
  repl::Connection conn_;
  std::optional<ChildProcess> recvlogical_;
};

std::int64_t max_history_id(const repl::Connection& conn) {
  return std::stoll(conn.exec("SELECT coalesce(max(id), 0) FROM pgbench_history").scalar());
}

Phase run_phase(const Options& options, LocalCluster& source, LocalCluster& target,
                const std::string& label, double rate, const std::string& method) {
  auto src = repl::Connection::open(source.conninfo(), repl::Side::source);
  std::unique_ptr<Consumer> consumer;
  if (method == "pgferry") {
    consumer = std::make_unique<PgferryConsumer>(PGFERRY_BINARY, source, target);
  } else if (method == "baseline") {
    consumer = std::make_unique<PgferryConsumer>(options.baseline_binary, source, target);
  } else if (method == "native") {
    consumer = std::make_unique<NativeConsumer>(source, target);
  } else {
    consumer = std::make_unique<FloorConsumer>(source);
  }
  // Streaming: the slot is active and the consumer process is known.
  pid_t walsender = 0;
  wait_for(
      [&] {
        auto pid = src.exec(fmt::format(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = '{}' AND active_pid "
            "IS NOT NULL",
            consumer->slot()));
        if (pid.rows() == 1) walsender = std::stoi(std::string(pid.get(0, 0)));
        return walsender != 0 && consumer->consumer_pid() != 0;
      },
      60s, method + " to start streaming");
  std::this_thread::sleep_for(1s);

  Phase phase;
  phase.rate_label = label;
  phase.method = method;
  phase.offered_tps = rate;
  std::int64_t from_id = max_history_id(src);
  std::vector<pid_t> pids = {walsender, consumer->consumer_pid()};
  for (pid_t helper : consumer->helper_pids()) pids.push_back(helper);
  CpuMeter cpu(pids);
  std::vector<std::string> args = {"-n",
                                   "-b",
                                   "tpcb-like",
                                   "-c",
                                   std::to_string(options.clients),
                                   "-j",
                                   std::to_string(options.clients),
                                   "-T",
                                   std::to_string(options.duration)};
  if (rate > 0) args.insert(args.end(), {"-R", fmt::format("{:.0f}", rate)});
  auto log = source.dir() / fmt::format("pgbench-{}-{}.log", label, method);
  if (source.run_tool(pgbench(source, "postgres", args), log) != 0) {
    throw std::runtime_error("pgbench failed, see " + log.string());
  }
  auto load_end = Clock::now();
  auto shares = cpu.process_shares();
  phase.machine_share = cpu.machine_share();
  phase.walsender_core = shares[0];
  for (std::size_t i = 1; i < shares.size(); ++i) phase.consumer_core += shares[i];
  auto position = src.exec(fmt::format(
      "SELECT pg_current_wal_lsn()::text, coalesce(pg_current_wal_lsn() - r.sent_lsn, 0) FROM "
      "pg_stat_replication r WHERE r.pid = {}",
      walsender));
  if (position.rows() != 1) throw std::runtime_error(method + ": the walsender went away");
  Lsn end = Lsn::from_string(position.get(0, 0), "pg_current_wal_lsn");
  phase.walsender_behind_bytes = std::stod(std::string(position.get(0, 1)));
  std::int64_t to_id = max_history_id(src);
  phase.transactions = history_rows(src, from_id, to_id);
  phase.achieved_tps = pgbench_tps(log);
  wait_for([&] { return consumer->caught_up(from_id, to_id, phase.transactions, end); }, 600s,
           method + " to catch up");
  phase.catchup_s = seconds_since(load_end);

  if (auto tgt = consumer->target()) {
    auto on_source = commit_times(src, from_id, to_id);
    auto on_target = commit_times(*tgt, from_id, to_id, consumer->target_time());
    if (on_source.size() != on_target.size()) {
      throw std::runtime_error(fmt::format("{}: the target has {} of the phase's {} transactions",
                                           method, on_target.size(), on_source.size()));
    }
    for (const auto& [id, committed] : on_source) {
      auto applied = on_target.find(id);
      if (applied == on_target.end()) {
        throw std::runtime_error(
            fmt::format("{}: pgbench_history id {} is missing on the target", method, id));
      }
      phase.delays_ms.push_back(static_cast<double>(applied->second - committed) / 1000);
    }
  }
  consumer.reset();
  std::cerr << fmt::format(
      "  {} {}: {:.0f} tps, delay p50 {:.1f} ms p99 {:.1f} ms, catch-up {:.2f} s\n", label, method,
      phase.achieved_tps, percentile(phase.delays_ms, 0.5), percentile(phase.delays_ms, 0.99),
      phase.catchup_s);
  return phase;
}

void print_delay_table(const std::vector<Phase>& phases) {
  fmt::print("\n{:<12} {:<8} {:>7} {:>7} {:>8} {:>8} {:>8} {:>10} {:>10} {:>9} {:>8} {:>9} {:>9}\n",
             "rate", "method", "offered", "tps", "p50 ms", "p99 ms", "max ms", "p99/native",
             "wal behind", "catch-up", "machine", "walsender", "consumer");
  std::map<std::string, double> native_p99;
  for (const auto& p : phases) {
    if (p.method == "native") native_p99[p.rate_label] = percentile(p.delays_ms, 0.99);
  }
  for (const auto& p : phases) {
    bool has_delay = !p.delays_ms.empty();
    auto ms = [&](double q) {
      return has_delay ? fmt::format("{:.1f}", percentile(p.delays_ms, q)) : "-";
    };
    std::string ratio = "-";
    if (has_delay && native_p99.count(p.rate_label)) {
      ratio = fmt::format("{:.2f}", percentile(p.delays_ms, 0.99) / native_p99[p.rate_label]);
    }
    fmt::print(
        "{:<12} {:<8} {:>7} {:>7.0f} {:>8} {:>8} {:>8} {:>10} {:>8.0f}kB {:>8.2f}s {:>7.0f} % "
        "{:>7.0f} % {:>7.0f} %\n",
        p.rate_label, p.method, p.offered_tps > 0 ? fmt::format("{:.0f}", p.offered_tps) : "-",
        p.achieved_tps, ms(0.5), ms(0.99), ms(1.0), ratio, p.walsender_behind_bytes / 1024,
        p.catchup_s, 100 * p.machine_share, 100 * p.walsender_core, 100 * p.consumer_core);
  }
  fmt::print(
      "\ndelay: source commit record to target commit record of each pgbench transaction\n"
      "(track_commit_timestamp; native: to the row's insert on the target, as its commits carry\n"
      "the source's timestamp); p99/native: against native at the same rate.\n"
      "wal behind: WAL the walsender had not yet sent when the load ended; catch-up: load end\n"
      "until the target held every transaction (floor: until the walsender sent all WAL);\n"
      "machine: all cores busy; walsender, consumer: share of one core, over the load.\n");
}

int run_delay(const Options& options) {
  pgferry::tools::ClusterOptions cluster_options;
  cluster_options.prefix = "pgferry-bench-";
  cluster_options.durable = options.durable;
  cluster_options.settings = {{"track_commit_timestamp", "on"}};
  cluster_options.bindir = options.source_bindir;
  LocalCluster source(cluster_options);
  cluster_options.bindir = options.target_bindir;
  LocalCluster target(cluster_options);
  init_pgbench(source, "postgres", options.scale);
  for (const char* dbname : {"t_pgferry", "t_native"}) {
    init_pgbench(target, dbname, options.scale);
    repl::Connection::open(target.conninfo(dbname), repl::Side::target)
        .exec(
            "ALTER TABLE pgbench_history ADD COLUMN applied_at timestamptz "
            "DEFAULT clock_timestamp()");
  }
  repl::Connection::open(source.conninfo(), repl::Side::source)
      .exec("CREATE PUBLICATION bench FOR ALL TABLES");

  // The rate the source alone sustains (no consumer), for "max".
  double source_max = 0;
  if (std::find(options.rates.begin(), options.rates.end(), "max") != options.rates.end()) {
    auto log = source.dir() / "pgbench-calibrate.log";
    int seconds = std::clamp(options.duration / 2, 5, 30);
    if (source.run_tool(
            pgbench(source, "postgres",
                    {"-n", "-b", "tpcb-like", "-c", std::to_string(options.clients), "-j",
                     std::to_string(options.clients), "-T", std::to_string(seconds)}),
            log) != 0) {
      throw std::runtime_error("pgbench failed, see " + log.string());
    }
    source_max = pgbench_tps(log);
    std::cerr << fmt::format("source alone, unthrottled ({} clients, {} s): {:.0f} tps\n",
                             options.clients, seconds, source_max);
  }

  std::vector<Phase> phases;
  for (std::size_t r = 0; r < options.rates.size(); ++r) {
    const auto& label = options.rates[r];
    double rate = label == "max" ? source_max : label == "unthrottled" ? 0 : std::stod(label);
    auto order = options.methods;
    std::rotate(order.begin(), order.begin() + static_cast<long>(r % order.size()), order.end());
    for (const auto& method : order) {
      phases.push_back(run_phase(options, source, target, label, rate, method));
    }
  }
  fmt::print("load: pgbench tpcb-like, scale {}, {} clients, {} s per phase{}\n", options.scale,
             options.clients, options.duration,
             source_max > 0
                 ? fmt::format("; max = {:.0f} tps (the source alone, unthrottled)", source_max)
                 : "");
  print_delay_table(phases);
  return 0;
}

// --- idle beside a busy database ------------------------------------------------------------

struct IdleResult {
  std::string label;    // --idle-interval-ms, or "baseline"
  double wal_rate = 0;  // bytes/s the other database wrote
  std::vector<double> lag_bytes;
  double walsender_idle_cpu_s_per_min = 0;
  double walsender_busy_cpu_s_per_min = 0;
  double target_commits_per_s = 0;  // while the other database writes
};

double target_commits(const repl::Connection& target) {
  return std::stod(
      target.exec("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
          .scalar());
}

int run_idle_lag(const Options& options) {
  pgferry::tools::ClusterOptions cluster_options;
  cluster_options.prefix = "pgferry-bench-";
  cluster_options.durable = options.durable;
  cluster_options.bindir = options.source_bindir;
  LocalCluster source(cluster_options);
  cluster_options.bindir = options.target_bindir;
  LocalCluster target(cluster_options);
  const char* schema = "CREATE TABLE items (id int PRIMARY KEY, v text)";
  auto src = repl::Connection::open(source.conninfo(), repl::Side::source);
  auto tgt = repl::Connection::open(target.conninfo(), repl::Side::target);
  src.exec(schema);
  tgt.exec(schema);
  init_pgbench(source, "busy", 1);
  auto log = source.dir() / "pgferry.log";
  std::vector<std::string> sides = {"--source", source.conninfo(), "--target", target.conninfo()};
  auto pgferry_argv = [&](std::vector<std::string> args, std::string binary = PGFERRY_BINARY) {
    std::vector<std::string> argv = {std::move(binary)};
    argv.insert(argv.end(), args.begin(), args.end());
    argv.insert(argv.end(), sides.begin(), sides.end());
    return argv;
  };
  if (pgferry::tools::run_process(pgferry_argv({"init", "--no-data"}), log) != 0) {
    throw std::runtime_error("pgferry init failed, see " + log.string());
  }

  std::vector<IdleResult> results;
  // Each --idle-intervals value, and the baseline build (its own defaults) when given.
  std::vector<std::pair<std::string, std::vector<std::string>>> agents;
  for (int interval : options.idle_intervals) {
    agents.emplace_back(fmt::format("{}ms", interval),
                        pgferry_argv({"run", "--idle-interval-ms", std::to_string(interval)}));
  }
  if (!options.baseline_binary.empty()) {
    agents.emplace_back("baseline", pgferry_argv({"run"}, options.baseline_binary));
  }
  for (const auto& [label, argv] : agents) {
    IdleResult result;
    result.label = label;
    ChildProcess agent(argv, log);
    pid_t walsender = 0;
    wait_for(
        [&] {
          auto pid = src.exec(
              "SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'pgferry' AND "
              "active_pid IS NOT NULL");
          if (pid.rows() == 1) walsender = std::stoi(std::string(pid.get(0, 0)));
          return walsender != 0;
        },
        60s, "pgferry run to start streaming");
    std::this_thread::sleep_for(1s);
    auto per_minute = [&](double seconds) { return seconds * 60.0 / options.idle_seconds; };
    {
      // Nothing writes anywhere.
      double before = process_cpu_seconds(walsender);
      std::this_thread::sleep_for(std::chrono::seconds(options.idle_seconds));
      result.walsender_idle_cpu_s_per_min = per_minute(process_cpu_seconds(walsender) - before);
    }
    {
      // Another database writes; ours stays idle. Sampled as `pgferry lag` does: the source's
      // WAL position, then the progress row.
      double cpu_before = process_cpu_seconds(walsender);
      double commits_before = target_commits(tgt);
      Lsn wal_start = Lsn::from_string(src.exec("SELECT pg_current_wal_lsn()::text").scalar(),
                                       "pg_current_wal_lsn");
      auto load_argv =
          pgbench(source, "busy",
                  {"-n", "-b", "tpcb-like", "-c", "2", "-j", "2", "-R",
                   std::to_string(options.busy_rate), "-T", std::to_string(options.idle_seconds)});
      load_argv[0] = source.bindir() + "/pgbench";
      ChildProcess load(load_argv, source.dir() / "pgbench-busy.log");
      auto started = Clock::now();
      std::this_thread::sleep_for(1s);  // the lag of the first second is the agent catching on
      int samples = 0;
      while (!load.exited()) {
        ++samples;
        Lsn wal = Lsn::from_string(src.exec("SELECT pg_current_wal_lsn()::text").scalar(),
                                   "pg_current_wal_lsn");
        Lsn applied = Lsn::from_string(
            tgt.exec("SELECT applied_lsn::text FROM pgferry.progress WHERE name = 'pgferry'")
                .scalar(),
            "applied_lsn");
        result.lag_bytes.push_back(wal > applied ? static_cast<double>(wal - applied) : 0);
        std::this_thread::sleep_for(50ms);
      }
      double seconds = seconds_since(started);
      Lsn wal_end = Lsn::from_string(src.exec("SELECT pg_current_wal_lsn()::text").scalar(),
                                     "pg_current_wal_lsn");
      result.wal_rate = static_cast<double>(wal_end - wal_start) / seconds;
      result.walsender_busy_cpu_s_per_min =
          (process_cpu_seconds(walsender) - cpu_before) * 60.0 / seconds;
      // The statistics reach pg_stat_database within a second; the samples' own SELECTs
      // (one transaction each) are not the agent's.
      std::this_thread::sleep_for(1500ms);
      result.target_commits_per_s = (target_commits(tgt) - commits_before - samples - 1) / seconds;
    }
    agent.stop();
    std::cerr << fmt::format("  {}: lag p50 {:.0f} kB, max {:.0f} kB\n", label,
                             percentile(result.lag_bytes, 0.5) / 1024,
                             percentile(result.lag_bytes, 1.0) / 1024);
    results.push_back(std::move(result));
  }

  fmt::print(
      "idle database beside a busy one (pgbench tpcb-like -R {} on another database of the "
      "source), {} s per phase\n",
      options.busy_rate, options.idle_seconds);
  fmt::print("\n{:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>14} {:>14} {:>12}\n", "interval",
             "WAL kB/s", "lag p50", "lag p99", "lag max", "p50 ms", "p99 ms", "ws idle cpu",
             "ws busy cpu", "tgt commit/s");
  for (const auto& r : results) {
    auto kb = [&](double q) { return percentile(r.lag_bytes, q) / 1024; };
    auto ms = [&](double q) {
      return r.wal_rate > 0 ? 1000 * percentile(r.lag_bytes, q) / r.wal_rate : 0;
    };
    fmt::print(
        "{:>9} {:>9.0f} {:>7.0f}kB {:>7.0f}kB {:>7.0f}kB {:>9.0f} {:>9.0f} {:>10.3f}s/min "
        "{:>10.3f}s/min {:>12.1f}\n",
        r.label, r.wal_rate / 1024, kb(0.5), kb(0.99), kb(1.0), ms(0.5), ms(0.99),
        r.walsender_idle_cpu_s_per_min, r.walsender_busy_cpu_s_per_min, r.target_commits_per_s);
  }
  fmt::print(
      "\nlag: source WAL position minus the progress row (what `pgferry lag` reads), every 50 ms\n"
      "while the other database writes; in ms at that WAL rate. ws idle/busy cpu: the\n"
      "walsender's CPU per minute with nothing written / while the other database writes.\n"
      "tgt commit/s: target transactions (the progress row) while the other database writes.\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"pgferry head-of-stream delay benchmark"};
  Options options;
  std::string rates = "200,1000,max";
  std::string methods = "pgferry,native,floor";
  std::string intervals = "100,1000";
  app.add_option("--rates", rates,
                 "pgbench rates (tps), \"max\" (what the source alone sustains) or "
                 "\"unthrottled\"");
  app.add_option("--duration", options.duration, "seconds of load per rate and method");
  app.add_option("--clients", options.clients, "pgbench clients");
  app.add_option("--scale", options.scale, "pgbench scale");
  app.add_option("--methods", methods, "pgferry,native,floor (and baseline)");
  app.add_option("--baseline-binary", options.baseline_binary,
                 "method \"baseline\": pgferry from this binary (another build), beside this one");
  app.add_flag("--durable", options.durable, "clusters with fsync on");
  app.add_option("--source-bindir", options.source_bindir,
                 "the source cluster's PostgreSQL bin directory (default: pg_config --bindir)");
  app.add_option("--target-bindir", options.target_bindir,
                 "the target cluster's PostgreSQL bin directory (default: pg_config --bindir)");
  app.add_flag("--idle-lag", options.idle_lag,
               "measure the lag of an idle database beside a busy one instead");
  app.add_option("--idle-intervals", intervals, "pgferry run --idle-interval-ms values");
  app.add_option("--idle-seconds", options.idle_seconds, "seconds per idle and busy phase");
  app.add_option("--busy-rate", options.busy_rate, "pgbench rate of the other database");
  CLI11_PARSE(app, argc, argv);
  options.rates = split(rates);
  options.methods = split(methods);
  if (std::find(options.methods.begin(), options.methods.end(), "baseline") !=
          options.methods.end() &&
      options.baseline_binary.empty()) {
    std::cerr << "pgferry_delay_bench: method baseline needs --baseline-binary PATH\n";
    return 2;
  }
  options.idle_intervals.clear();
  for (const auto& i : split(intervals)) options.idle_intervals.push_back(std::stoi(i));
  pgferry::tools::stop_all_on_signal();
  try {
    return options.idle_lag ? run_idle_lag(options) : run_delay(options);
  } catch (const std::exception& e) {
    std::cerr << "pgferry_delay_bench: " << e.what() << "\n";
    return 1;
  }
}
