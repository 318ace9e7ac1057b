// End-to-end drain benchmark: in one run, on one pair of local clusters, write a backlog
// while nothing consumes it, then time draining that same backlog with
//   floor      pg_recvlogical of pgoutput to /dev/null (what the walsender alone costs),
//   native     CREATE SUBSCRIPTION (PostgreSQL's own apply worker; --streaming),
//   native_bs  the same WITH (binary = true, streaming = on): native at its best,
//   pgferry    pgferry run --until <end of backlog>,
//   baseline   the same with pgferry from --baseline-binary (another build, e.g. main), for a
//              before/after in the same run,
// each from its own slot created before the backlog was written. The target is checked
// equal to the source after each native and after pgferry. Prints seconds, ratios against
// native and against the faster native configuration, and pgferry's peak RSS; medians over
// --runs.
//
// Workloads: bulk (inserts, 1000 per transaction), oltp (pgbench), bigtxn (one large
// insert), toast (UPDATE t SET a = a + 1 on rows whose big text column is stored out of
// line: sent as unchanged TOAST), mixed (transactions that update some rows and delete
// others).
//
// Usage: pgferry_drain_bench [--workload bulk|oltp|bigtxn|toast|mixed|all] [--runs N]
//                            [--rows N] [--methods floor,native,native_bs,pgferry]
//                            [--streaming on|off] [--baseline-binary PATH]
// Connections use the Unix socket for every method.
#include <fmt/format.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>
#include <iostream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "bench_support.hpp"
#include "pgferry/replication/core/pg.hpp"
#include "pgferry/tools/local_cluster.hpp"

namespace repl = pgferry::replication;
using pgferry::tools::LocalCluster;

namespace {

using pgferry::bench::median;
using pgferry::bench::recvlogical_argv;
using pgferry::bench::seconds_since;
using pgferry::bench::split;
using pgferry::bench::table_digest;

struct Options {
  std::string workload = "all";
  int runs = 3;
  long rows = 0;  // 0: the workload's default size
  std::vector<std::string> methods = {"floor", "native", "native_bs", "pgferry"};
  bool streaming = false;
  std::string baseline_binary;  // method "baseline"
  // PostgreSQL bin directories of the two clusters (empty: the default one), so that a run
  // can time an upgrade pair such as 15 -> 18 (tools/build-postgres.sh 18 prints one).
  std::string source_bindir;
  std::string target_bindir;
};

struct Workload {
  std::string name;
  std::string schema_sql;                    // run on both sides
  std::string seed_sql;                      // rows on both sides before the backlog
  std::vector<std::string> tables;           // to compare and truncate
  std::function<void(LocalCluster&)> write;  // the backlog
};

void psql(const LocalCluster& cluster, const std::string& sql) {
  repl::Connection::open(cluster.conninfo(), repl::Side::none).exec(sql);
}

Workload make_workload(const std::string& name, long rows) {
  if (name == "bulk" || name == "bigtxn") {
    long n = rows > 0 ? rows : (name == "bulk" ? 1'000'000 : 2'000'000);
    long per_txn = name == "bulk" ? 1'000 : n;
    return {name,
            "CREATE TABLE t(id bigint PRIMARY KEY, a int, b text, c timestamptz)",
            "",
            {"t"},
            [n, per_txn](LocalCluster& source) {
              auto conn = repl::Connection::open(source.conninfo(), repl::Side::source);
              for (long first = 1; first <= n; first += per_txn) {
                long last = std::min(n, first + per_txn - 1);
                conn.exec(fmt::format(
                    "INSERT INTO t SELECT g, g % 1000, md5(g::text) || md5((g+1)::text), "
                    "'2026-01-01'::timestamptz + g * interval '1 second' "
                    "FROM generate_series({}, {}) g",
                    first, last));
              }
            }};
  }
  if (name == "oltp") {
    long transactions = rows > 0 ? rows : 10'000;
    return {name,
            "",  // pgbench -i creates it; the target gets the same schema below
            "",
            {"pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"},
            [transactions](LocalCluster& source) {
              int status =
                  source.run_tool({"pgbench", "-n", "-h", source.socket_dir().string(), "-p",
                                   std::to_string(source.port()), "-U", "postgres", "-c", "4", "-j",
                                   "2", "-t", std::to_string(transactions), "postgres"},
                                  source.dir() / "pgbench-run.log");
              if (status != 0) throw std::runtime_error("pgbench run failed");
            }};
  }
  if (name == "toast") {
    // Rows with a ~2.5 kB text that does not compress, stored out of line; the backlog
    // updates another column of every row twice, 500 rows per transaction.
    long n = rows > 0 ? rows : 100'000;
    return {name,
            "CREATE TABLE t(id bigint PRIMARY KEY, a int, big text);"
            "ALTER TABLE t ALTER COLUMN big SET STORAGE EXTERNAL",
            fmt::format("INSERT INTO t SELECT g, 0, (SELECT string_agg(md5(g::text || i), '') "
                        "FROM generate_series(1, 80) i) FROM generate_series(1, {}) g",
                        n),
            {"t"},
            [n](LocalCluster& source) {
              auto conn = repl::Connection::open(source.conninfo(), repl::Side::source);
              for (int pass = 0; pass < 2; ++pass) {
                for (long first = 1; first <= n; first += 500) {
                  conn.exec(fmt::format("UPDATE t SET a = a + 1 WHERE id BETWEEN {} AND {}", first,
                                        first + 499));
                }
              }
            }};
  }
  if (name == "mixed") {
    // Per transaction of 300 keys: two thirds updated (two columns), one third deleted.
    long n = rows > 0 ? rows : 300'000;
    return {name,
            "CREATE TABLE t(id bigint PRIMARY KEY, a int, b text, c timestamptz)",
            fmt::format("INSERT INTO t SELECT g, g % 1000, md5(g::text), '2026-01-01'::timestamptz "
                        "+ g * interval '1 second' FROM generate_series(1, {}) g",
                        n),
            {"t"},
            [n](LocalCluster& source) {
              auto conn = repl::Connection::open(source.conninfo(), repl::Side::source);
              for (long first = 1; first <= n; first += 300) {
                long last = first + 299;
                conn.exec(fmt::format(
                    "BEGIN; UPDATE t SET a = a + 1, b = md5(b) WHERE id BETWEEN {0} AND {1} AND "
                    "id % 3 <> 0; DELETE FROM t WHERE id BETWEEN {0} AND {1} AND id % 3 = 0; "
                    "COMMIT",
                    first, last));
              }
            }};
  }
  throw std::runtime_error("unknown workload " + name);
}

// Creates the workload's schema (and, for oltp, pgbench's deterministic initial data) in
// `dbname` of `cluster`, plus the marker table whose row says "the backlog is through".
void prepare_database(const Workload& workload, LocalCluster& cluster, const std::string& dbname) {
  if (dbname != "postgres") psql(cluster, fmt::format("CREATE DATABASE {}", dbname));
  auto conn = repl::Connection::open(cluster.conninfo(dbname), repl::Side::none);
  if (workload.name == "oltp") {
    int status =
        cluster.run_tool({"pgbench", "-i", "-s", "10", "-q", "-h", cluster.socket_dir().string(),
                          "-p", std::to_string(cluster.port()), "-U", "postgres", dbname},
                         cluster.dir() / "pgbench-init.log");
    if (status != 0) throw std::runtime_error("pgbench -i failed");
    conn.exec("ALTER TABLE pgbench_history ADD COLUMN id bigserial PRIMARY KEY");
  } else {
    conn.exec(workload.schema_sql);
    if (!workload.seed_sql.empty()) conn.exec(workload.seed_sql);
  }
  conn.exec("CREATE TABLE bench_marker(id int PRIMARY KEY)");
}

struct Spawned {
  int exit_code = -1;
  long max_rss_kib = 0;
  double cpu_seconds = 0;  // user + system
};

// Runs argv and waits, returning its exit code and peak RSS (wait4's rusage).
Spawned spawn_and_wait(const std::vector<std::string>& argv, const std::string& log) {
  pid_t pid = pgferry::tools::spawn_process(argv, log);
  int status = 0;
  rusage usage{};
  ::wait4(pid, &status, 0, &usage);
  auto seconds = [](const timeval& t) { return static_cast<double>(t.tv_sec) + t.tv_usec / 1e6; };
  return {WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), usage.ru_maxrss,
          seconds(usage.ru_utime) + seconds(usage.ru_stime)};
}

struct RunResult {
  std::map<std::string, double> seconds;
  long pgferry_rss_kib = 0;
  double pgferry_cpu_seconds = 0;
};

RunResult run_once(const Options& options, const Workload& workload, int run_index) {
  pgferry::tools::ClusterOptions cluster_options;
  cluster_options.prefix = "pgferry-bench-";
  cluster_options.bindir = options.source_bindir;
  LocalCluster source(cluster_options);
  cluster_options.bindir = options.target_bindir;
  LocalCluster target(cluster_options);
  // Before PostgreSQL 16 the launcher starts no apply worker within
  // wal_retrieve_retry_interval (5 s) of the last one it started: the second native
  // subscription would wait for that, not drain.
  psql(target, "ALTER SYSTEM SET wal_retrieve_retry_interval = '50ms'");
  psql(target, "SELECT pg_reload_conf()");
  prepare_database(workload, source, "postgres");
  prepare_database(workload, target, "t_native");
  prepare_database(workload, target, "t_native_bs");
  prepare_database(workload, target, "t_pgferry");
  if (!options.baseline_binary.empty()) prepare_database(workload, target, "t_baseline");

  auto src = repl::Connection::open(source.conninfo(), repl::Side::source);
  src.exec("CREATE PUBLICATION bench FOR ALL TABLES");
  src.exec("SELECT pg_create_logical_replication_slot('bench_floor', 'pgoutput')");
  src.exec("SELECT pg_create_logical_replication_slot('bench_native', 'pgoutput')");
  src.exec("SELECT pg_create_logical_replication_slot('bench_native_bs', 'pgoutput')");
  std::string log = (source.dir() / "bench.log").string();
  // pgferry and the baseline: the binary, its target database and its name.
  auto binary = [&](const std::string& method) {
    return method == "baseline" ? options.baseline_binary : std::string(PGFERRY_BINARY);
  };
  for (const auto& method : options.methods) {
    if (method != "pgferry" && method != "baseline") continue;
    auto init = spawn_and_wait(
        {binary(method), "init", "--no-data", "--source", source.conninfo(), "--target",
         target.conninfo("t_" + method), "--name", "bench_" + method, "--publication", "bench"},
        log);
    if (init.exit_code != 0) {
      throw std::runtime_error(
          fmt::format("{} init failed ({}), see {}", method, init.exit_code, log));
    }
  }

  auto write_start = std::chrono::steady_clock::now();
  workload.write(source);
  src.exec("INSERT INTO bench_marker VALUES (1)");
  std::string end_lsn = src.exec("SELECT pg_current_wal_lsn()").scalar();
  std::cerr << fmt::format("  run {}: backlog written in {:.1f}s, {} of WAL to drain\n",
                           run_index + 1, seconds_since(write_start),
                           src.exec("SELECT pg_size_pretty(pg_current_wal_lsn() - "
                                    "confirmed_flush_lsn) FROM pg_replication_slots WHERE "
                                    "slot_name = 'bench_floor'")
                               .scalar());

  RunResult result;
  // Rotate the order between runs so that no method always goes first.
  std::vector<std::string> order = options.methods;
  std::rotate(order.begin(), order.begin() + (run_index % static_cast<int>(order.size())),
              order.end());
  for (const auto& method : order) {
    auto start = std::chrono::steady_clock::now();
    if (method == "floor") {
      int status =
          source.run_tool(recvlogical_argv(source, "bench_floor", {"--no-loop", "-E", end_lsn}),
                          source.dir() / "recvlogical.log");
      if (status != 0) throw std::runtime_error("pg_recvlogical failed");
    } else if (method == "native" || method == "native_bs") {
      bool best = method == "native_bs";
      auto tgt = repl::Connection::open(target.conninfo("t_" + method), repl::Side::target);
      tgt.exec(fmt::format(
          "CREATE SUBSCRIPTION bench_sub CONNECTION '{}' PUBLICATION bench WITH (create_slot = "
          "false, slot_name = 'bench_{}', copy_data = false, streaming = {}, binary = {})",
          source.conninfo(), method, best || options.streaming ? "on" : "off",
          best ? "true" : "false"));
      while (tgt.exec("SELECT count(*) FROM bench_marker").scalar() == "0") {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
    } else if (method == "pgferry" || method == "baseline") {
      auto run = spawn_and_wait({binary(method), "run", "--source", source.conninfo(), "--target",
                                 target.conninfo("t_" + method), "--name", "bench_" + method,
                                 "--publication", "bench", "--until", end_lsn},
                                log);
      if (run.exit_code != 0) {
        throw std::runtime_error(
            fmt::format("{} run failed ({}), see {}", method, run.exit_code, log));
      }
      if (method == "pgferry") {
        result.pgferry_rss_kib = run.max_rss_kib;
        result.pgferry_cpu_seconds = run.cpu_seconds;
      }
    }
    result.seconds[method] = seconds_since(start);
  }

  // The drained targets must equal the source.
  for (const auto& method : {"native", "native_bs", "pgferry", "baseline"}) {
    if (!result.seconds.count(method)) continue;
    auto tgt =
        repl::Connection::open(target.conninfo(std::string("t_") + method), repl::Side::target);
    for (const auto& table : workload.tables) {
      if (table_digest(src, table) != table_digest(tgt, table)) {
        throw std::runtime_error(
            fmt::format("{}: table {} differs from the source", method, table));
      }
    }
  }
  for (const auto& method : {"native", "native_bs"}) {
    if (!result.seconds.count(method)) continue;
    repl::Connection::open(target.conninfo(std::string("t_") + method), repl::Side::target)
        .exec("DROP SUBSCRIPTION bench_sub");
  }
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  CLI::App app("drain a backlog with the walsender floor, a native subscription and pgferry");
  app.add_option("--workload", options.workload,
                 "bulk, oltp, bigtxn, toast, mixed or all (comma-separated)")
      ->capture_default_str();
  app.add_option("--runs", options.runs, "runs (medians are printed)")->capture_default_str();
  app.add_option("--rows", options.rows, "workload size (0: its default)")->capture_default_str();
  app.add_option("--methods", options.methods, "floor, native, native_bs, pgferry, baseline")
      ->delimiter(',')
      ->capture_default_str();
  std::string streaming = "off";
  app.add_option("--streaming", streaming, "the native subscription's streaming")
      ->check(CLI::IsMember({"on", "off"}))
      ->capture_default_str();
  app.add_option("--source-bindir", options.source_bindir,
                 "the source cluster's PostgreSQL bin directory (default: pg_config --bindir)");
  app.add_option("--target-bindir", options.target_bindir,
                 "the target cluster's PostgreSQL bin directory (default: pg_config --bindir)");
  app.add_option("--baseline-binary", options.baseline_binary,
                 "method \"baseline\": pgferry from this binary (another build), beside this one");
  CLI11_PARSE(app, argc, argv);
  options.streaming = streaming == "on";
  bool with_baseline = std::find(options.methods.begin(), options.methods.end(), "baseline") !=
                       options.methods.end();
  if (with_baseline != !options.baseline_binary.empty()) {
    std::cerr << "method baseline and --baseline-binary go together: give both or neither\n";
    return 2;
  }
  pgferry::tools::stop_all_on_signal();
  std::vector<std::string> workloads =
      options.workload == "all"
          ? std::vector<std::string>{"bulk", "oltp", "bigtxn", "toast", "mixed"}
          : split(options.workload);
  try {
    fmt::print("{:<8} {:<9} {:>10} {:>10} {:>10}  {}\n", "workload", "method", "median s",
               "vs native", "vs best", "runs (s)");
    for (const auto& name : workloads) {
      auto workload = make_workload(name, options.rows);
      std::map<std::string, std::vector<double>> times;
      std::vector<long> rss;
      std::vector<double> cpu;
      std::cerr << fmt::format("workload {}:\n", name);
      for (int run = 0; run < options.runs; ++run) {
        auto result = run_once(options, workload, run);
        for (const auto& [method, seconds] : result.seconds) times[method].push_back(seconds);
        if (result.pgferry_rss_kib) rss.push_back(result.pgferry_rss_kib);
        if (result.pgferry_rss_kib) cpu.push_back(result.pgferry_cpu_seconds);
      }
      // "vs best": against the faster native configuration's median.
      double native = times.count("native") ? median(times["native"]) : 0;
      double best = 0;
      for (const auto& method : {"native", "native_bs"}) {
        if (!times.count(method)) continue;
        double m = median(times[method]);
        best = best > 0 ? std::min(best, m) : m;
      }
      auto ratio = [](double m, double base) {
        return base > 0 ? fmt::format("{:.2f}x", m / base) : std::string("-");
      };
      for (const auto& method : options.methods) {
        if (!times.count(method)) continue;
        double m = median(times[method]);
        std::string runs;
        for (double t : times[method]) runs += fmt::format("{:.2f} ", t);
        fmt::print("{:<8} {:<9} {:>10.2f} {:>10} {:>10}  {}\n", name, method, m, ratio(m, native),
                   ratio(m, best), runs);
      }
      if (!rss.empty()) {
        fmt::print("{:<8} pgferry peak RSS: {} MiB (max over runs), CPU {:.2f} s (median)\n", name,
                   *std::max_element(rss.begin(), rss.end()) / 1024, median(cpu));
      }
      std::fflush(stdout);
    }
  } catch (const std::exception& e) {
    std::cerr << "drain benchmark failed: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
