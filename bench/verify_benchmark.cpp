// Verify benchmark: in one run, on one pair of local clusters holding the same pgbench
// database of --scale (the target filled by `pgferry init --schema`), time
//   scan     both sides reading every table as COPY (SELECT * FROM t) TO STDOUT, drained
//            by the client, one connection per side, the two sides at the same time: what
//            any comparison that reads every row's text on both sides costs at least;
//   devnull  the same as COPY ... TO '/dev/null' on the server: its share alone (stricter);
//   verify   `pgferry verify --once --jobs N` (each N of --jobs), which must exit 0;
//   narrow   the same after deleting, changing and adding one pgbench_accounts row on the
//            target, which must exit 3 naming exactly those three keys.
// Prints medians over --runs and verify / scan.
//
// Usage: pgferry_verify_bench [--scale N] [--runs N] [--jobs 2,4] [--chunk-rows N]
#include <fmt/format.h>
#include <libpq-fe.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
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
using pgferry::bench::seconds_since;

struct Options {
  int scale = 100;
  int runs = 3;
  std::vector<int> jobs = {2, 4};
  std::int64_t chunk_rows = 100000;
};

const std::vector<std::string> kTables = {"pgbench_accounts", "pgbench_branches", "pgbench_tellers",
                                          "pgbench_history"};

// CPU seconds the cluster's server processes used so far: the postmaster's own and that
// of the backends it has reaped (a connection's backend is reaped once it closed). The
// machine may be shared: CPU seconds compare the work, not the share of the machine.
double server_cpu_seconds(const LocalCluster& cluster) {
  std::ifstream pid_file(cluster.data_dir() / "postmaster.pid");
  std::string pid;
  std::getline(pid_file, pid);
  std::ifstream stat_file("/proc/" + pid + "/stat");
  std::string stat((std::istreambuf_iterator<char>(stat_file)), std::istreambuf_iterator<char>());
  std::istringstream fields(stat.substr(stat.rfind(')') + 2));
  std::vector<std::string> values((std::istream_iterator<std::string>(fields)),
                                  std::istream_iterator<std::string>());
  // After the command name: field 3 is values[0]; utime, stime, cutime, cstime are 14-17.
  double ticks = 0;
  for (int field = 14; field <= 17; ++field) ticks += std::stod(values.at(field - 3));
  return ticks / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

// CPU seconds both servers spent on `work` (backends given a moment to be reaped).
template <typename Work>
double server_cpu(const LocalCluster& source, const LocalCluster& target, Work&& work) {
  double before = server_cpu_seconds(source) + server_cpu_seconds(target);
  work();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  return server_cpu_seconds(source) + server_cpu_seconds(target) - before;
}

// Reads every table of one side as COPY text and drops it; returns the bytes read.
std::int64_t drain_tables(const std::string& conninfo) {
  auto conn = repl::Connection::open(conninfo, repl::Side::none);
  std::int64_t bytes = 0;
  for (const auto& table : kTables) {
    conn.exec(fmt::format("COPY (SELECT * FROM {}) TO STDOUT", table));
    char* buffer = nullptr;
    int n = 0;
    while ((n = PQgetCopyData(conn.native(), &buffer, 0)) > 0) {
      bytes += n;
      PQfreemem(buffer);
    }
    if (n == -2) throw std::runtime_error("COPY TO STDOUT failed");
    conn.check(PQgetResult(conn.native()), "finishing COPY");
    while (PGresult* rest = PQgetResult(conn.native())) PQclear(rest);
  }
  return bytes;
}

double scan_both(const LocalCluster& source, const LocalCluster& target, std::int64_t& bytes) {
  auto start = std::chrono::steady_clock::now();
  std::int64_t source_bytes = 0;
  std::int64_t target_bytes = 0;
  std::thread other([&] { target_bytes = drain_tables(target.conninfo()); });
  source_bytes = drain_tables(source.conninfo());
  other.join();
  double seconds = seconds_since(start);
  if (source_bytes != target_bytes) {
    throw std::runtime_error(
        fmt::format("scan: {} bytes on the source, {} on the target", source_bytes, target_bytes));
  }
  bytes = source_bytes;
  return seconds;
}

// The server's share alone: every table written as COPY text to /dev/null by the server,
// one connection per side, both sides at the same time (no client, no socket).
double scan_devnull(const LocalCluster& source, const LocalCluster& target) {
  auto scan = [](const std::string& conninfo) {
    auto conn = repl::Connection::open(conninfo, repl::Side::none);
    for (const auto& table : kTables) {
      conn.exec(fmt::format("COPY (SELECT * FROM {}) TO '/dev/null'", table));
    }
  };
  auto start = std::chrono::steady_clock::now();
  std::thread other([&] { scan(target.conninfo()); });
  scan(source.conninfo());
  other.join();
  return seconds_since(start);
}

struct VerifyRun {
  double seconds = 0;
  int exit_code = -1;
  nlohmann::json report;
};

VerifyRun run_verify(const LocalCluster& source, const LocalCluster& target, int jobs,
                     std::int64_t chunk_rows) {
  std::string out = "/tmp/pgferry_verify_bench.json";
  auto start = std::chrono::steady_clock::now();
  VerifyRun run;
  // stdout only (the JSON); the log goes to stderr, which the benchmark shows.
  std::string command = fmt::format(
      "'{}' verify --once --json --jobs {} --chunk-rows {} --source '{}' --target '{}' > {}",
      PGFERRY_BINARY, jobs, chunk_rows, source.conninfo(), target.conninfo(), out);
  int status = std::system(command.c_str());
  run.seconds = seconds_since(start);
  run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream file(out);
  run.report = nlohmann::json::parse(file);
  return run;
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  CLI::App app("pgferry verify against both sides scanning the same tables, in the same run");
  app.add_option("--scale", options.scale, "pgbench scale")->capture_default_str();
  app.add_option("--runs", options.runs, "runs (medians are printed)")->capture_default_str();
  app.add_option("--jobs", options.jobs, "pgferry verify --jobs values")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--chunk-rows", options.chunk_rows, "pgferry verify --chunk-rows")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  pgferry::tools::stop_all_on_signal();
  try {
    pgferry::tools::ClusterOptions cluster_options;
    cluster_options.prefix = "pgferry-bench-";
    LocalCluster source(cluster_options);
    LocalCluster target(cluster_options);

    auto load_start = std::chrono::steady_clock::now();
    pgferry::bench::load_pgbench(source, options.scale);
    auto src = repl::Connection::open(source.conninfo(), repl::Side::source);
    std::cerr << fmt::format(
        "pgbench scale {} loaded in {:.1f}s, database {}\n", options.scale,
        seconds_since(load_start),
        src.exec("SELECT pg_size_pretty(pg_database_size(current_database()))").scalar());

    auto copy_start = std::chrono::steady_clock::now();
    std::string log = "/tmp/pgferry_verify_bench.log";
    int code = pgferry::tools::run_process(
        {PGFERRY_BINARY, "init", "--schema", "--jobs", "2", "--source", source.conninfo(),
         "--target", target.conninfo(), "--name", "bench_verify", "--progress", "log"},
        log);
    if (code != 0) throw std::runtime_error("pgferry init failed, see " + log);
    code = pgferry::tools::run_process({PGFERRY_BINARY, "cleanup", "--source", source.conninfo(),
                                        "--target", target.conninfo(), "--name", "bench_verify"},
                                       log);
    if (code != 0) throw std::runtime_error("pgferry cleanup failed, see " + log);
    auto tgt = repl::Connection::open(target.conninfo(), repl::Side::target);
    src.exec("VACUUM ANALYZE");
    tgt.exec("VACUUM ANALYZE");
    std::cerr << fmt::format("target filled by pgferry init in {:.1f}s\n",
                             seconds_since(copy_start));

    std::int64_t bytes = 0;
    scan_both(source, target, bytes);  // warm both caches
    std::vector<double> scans;
    std::vector<double> devnull_scans;
    std::map<int, std::vector<double>> verifies;
    std::map<std::string, std::vector<double>> cpu;  // server CPU seconds per method
    for (int run = 0; run < options.runs; ++run) {
      cpu["devnull"].push_back(server_cpu(
          source, target, [&] { devnull_scans.push_back(scan_devnull(source, target)); }));
      std::cerr << fmt::format("  run {}: server-side scan to /dev/null {:.2f}s, {:.2f} CPU s\n",
                               run + 1, devnull_scans.back(), cpu["devnull"].back());
      cpu["scan"].push_back(
          server_cpu(source, target, [&] { scans.push_back(scan_both(source, target, bytes)); }));
      std::cerr << fmt::format("  run {}: scan {:.2f}s ({} MB per side), {:.2f} CPU s\n", run + 1,
                               scans.back(), bytes >> 20, cpu["scan"].back());
      for (int jobs : options.jobs) {
        VerifyRun result;
        auto key = fmt::format("verify{}", jobs);
        cpu[key].push_back(server_cpu(source, target, [&] {
          result = run_verify(source, target, jobs, options.chunk_rows);
        }));
        if (result.exit_code != 0) {
          throw std::runtime_error(
              fmt::format("verify --jobs {} exited {} on equal databases", jobs, result.exit_code));
        }
        verifies[jobs].push_back(result.seconds);
        std::cerr << fmt::format("  run {}: verify --jobs {} {:.2f}s, {:.2f} CPU s (hash {})\n",
                                 run + 1, jobs, result.seconds, cpu[key].back(),
                                 result.report["hash"].get<std::string>());
      }
    }

    // Three differences in the largest table: verify must name exactly them.
    tgt.exec(
        "DELETE FROM pgbench_accounts WHERE aid = 4242; "
        "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 77777; "
        "INSERT INTO pgbench_accounts VALUES (2000000000, 1, 0, 'extra')");
    int narrow_jobs = options.jobs.back();
    auto narrowed = run_verify(source, target, narrow_jobs, options.chunk_rows);
    std::set<std::string> named;
    for (const auto& table : narrowed.report["tables"]) {
      for (const auto& d : table["differences"]) {
        named.insert(fmt::format("{} {}", d["kind"].get<std::string>(), d["key"].dump()));
      }
    }
    std::set<std::string> expected = {"missing_on_target {\"aid\":\"4242\"}",
                                      "different {\"aid\":\"77777\"}",
                                      "extra_on_target {\"aid\":\"2000000000\"}"};
    if (narrowed.exit_code != 3 || named != expected) {
      throw std::runtime_error(fmt::format("verify with 3 differences exited {} naming {}",
                                           narrowed.exit_code, narrowed.report.dump()));
    }

    double scan = median(scans);
    double devnull = median(devnull_scans);
    fmt::print("pgbench scale {} ({} MB of COPY text per side), {} runs\n", options.scale,
               bytes >> 20, options.runs);
    double devnull_cpu = median(cpu["devnull"]);
    fmt::print("{:<40} {:>9} {:>9} {:>12} {:>13} {:>13}\n", "method", "median s", "vs scan",
               "vs /dev/null", "server CPU s", "CPU vs /dev/null");
    auto line = [&](const std::string& name, double seconds, std::optional<double> cpu_seconds) {
      fmt::print("{:<40} {:>9.2f} {:>8.2f}x {:>11.2f}x {:>13} {:>13}\n", name, seconds,
                 seconds / scan, seconds / devnull,
                 cpu_seconds ? fmt::format("{:.2f}", *cpu_seconds) : "-",
                 cpu_seconds ? fmt::format("{:.2f}x", *cpu_seconds / devnull_cpu) : "-");
    };
    line("scan: COPY TO STDOUT drained, both sides", scan, median(cpu["scan"]));
    line("scan: server COPY TO '/dev/null', both", devnull, devnull_cpu);
    for (int jobs : options.jobs) {
      line(fmt::format("verify --once --jobs {}", jobs), median(verifies[jobs]),
           median(cpu[fmt::format("verify{}", jobs)]));
    }
    line(fmt::format("verify, 3 rows differ (--jobs {})", narrow_jobs), narrowed.seconds,
         std::nullopt);
  } catch (const std::exception& e) {
    std::cerr << "verify benchmark failed: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
