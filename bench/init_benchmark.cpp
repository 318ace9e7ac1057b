// Initial-copy benchmark: in one run, on one pair of local clusters, time bringing an empty
// target up to a pgbench database of --scale (scale 100 ≈ 1.5 GB) with
//   native   CREATE SUBSCRIPTION ... WITH (copy_data = true) into a database that has the
//            schema (tables with their primary keys, as a schema restore leaves them),
//            timed until every pg_subscription_rel state is 'r' or 's';
//   pgferry  pgferry init --schema --jobs N into an empty database (tables, copy, then
//            indexes and constraints), timed until the process exits;
//   pgferry-precreated  pgferry init --jobs N into a database prepared like native's.
// Each target is checked equal to the source (row count and a hash sum per table). Prints
// seconds and the ratio against native; medians over --runs, the order rotated per run.
//
// Usage: pgferry_init_bench [--scale N] [--runs N] [--jobs N]
//                           [--methods native,pgferry,pgferry-precreated]
#include <fmt/format.h>
#include <sys/wait.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
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
using pgferry::bench::seconds_since;
using pgferry::bench::table_digest;

struct Options {
  int scale = 100;
  int runs = 1;
  int jobs = 4;
  std::vector<std::string> methods = {"native", "pgferry", "pgferry-precreated"};
  // PostgreSQL bin directories of the two clusters (empty: the default one), so that a run
  // can time an upgrade pair such as 15 -> 18 (tools/build-postgres.sh 18 prints one).
  std::string source_bindir;
  std::string target_bindir;
};

const std::vector<std::string> kTables = {"pgbench_accounts", "pgbench_branches", "pgbench_tellers",
                                          "pgbench_history"};

// pgbench's tables with their primary keys and no rows (what a schema restore gives).
void create_schema(LocalCluster& cluster, const std::string& dbname) {
  int status = cluster.run_tool({"pgbench", "-i", "-I", "dtp", "-h", cluster.socket_dir().string(),
                                 "-p", std::to_string(cluster.port()), "-U", "postgres", dbname},
                                cluster.dir() / "pgbench-schema.log");
  if (status != 0) throw std::runtime_error("pgbench -i -I dtp failed");
  repl::Connection::open(cluster.conninfo(dbname), repl::Side::none)
      .exec("ALTER TABLE pgbench_history ADD COLUMN id bigserial PRIMARY KEY");
}

std::map<std::string, double> run_once(const Options& options, int run_index) {
  pgferry::tools::ClusterOptions cluster_options;
  cluster_options.prefix = "pgferry-bench-";
  cluster_options.bindir = options.source_bindir;
  LocalCluster source(cluster_options);
  cluster_options.bindir = options.target_bindir;
  LocalCluster target(cluster_options);

  auto load_start = std::chrono::steady_clock::now();
  pgferry::bench::load_pgbench(source, options.scale);
  auto src = repl::Connection::open(source.conninfo(), repl::Side::source);
  src.exec("CHECKPOINT");
  std::cerr << fmt::format(
      "  run {}: pgbench scale {} loaded in {:.1f}s, database {}\n", run_index + 1, options.scale,
      seconds_since(load_start),
      src.exec("SELECT pg_size_pretty(pg_database_size(current_database()))").scalar());
  src.exec("CREATE PUBLICATION bench_native FOR ALL TABLES");

  auto tgt_admin = repl::Connection::open(target.conninfo(), repl::Side::target);
  for (const auto& method : options.methods) {
    std::string db = "t_" + method;
    std::replace(db.begin(), db.end(), '-', '_');
    tgt_admin.exec(fmt::format("CREATE DATABASE {}", db));
    if (method != "pgferry") create_schema(target, db);
  }

  std::map<std::string, double> seconds;
  std::vector<std::string> order = options.methods;
  std::rotate(order.begin(), order.begin() + (run_index % static_cast<int>(order.size())),
              order.end());
  // Outside the clusters' directories, which go away with them.
  std::string log = "/tmp/pgferry_init_bench.log";
  for (const auto& method : order) {
    std::string db = "t_" + method;
    std::replace(db.begin(), db.end(), '-', '_');
    auto tgt = repl::Connection::open(target.conninfo(db), repl::Side::target);
    auto start = std::chrono::steady_clock::now();
    if (method == "native") {
      tgt.exec(
          fmt::format("CREATE SUBSCRIPTION bench_sub CONNECTION '{}' PUBLICATION bench_native WITH "
                      "(copy_data = true)",
                      source.conninfo()));
      while (tgt.exec("SELECT count(*) FROM pg_subscription_rel WHERE srsubstate IN ('r', 's')")
                 .scalar() != std::to_string(kTables.size())) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
      seconds[method] = seconds_since(start);
      tgt.exec("ALTER SUBSCRIPTION bench_sub DISABLE");
      tgt.exec("ALTER SUBSCRIPTION bench_sub SET (slot_name = NONE)");
      tgt.exec("DROP SUBSCRIPTION bench_sub");
      src.exec("SELECT pg_drop_replication_slot('bench_sub')");
    } else {
      std::vector<std::string> argv = {PGFERRY_BINARY, "init",
                                       "--source",     source.conninfo(),
                                       "--target",     target.conninfo(db),
                                       "--name",       "bench_init",
                                       "--jobs",       std::to_string(options.jobs),
                                       "--progress",   "log"};
      if (method == "pgferry") argv.push_back("--schema");
      int code = pgferry::tools::run_process(argv, log);
      seconds[method] = seconds_since(start);
      if (code != 0) {
        throw std::runtime_error(fmt::format("pgferry init failed ({}), see {}", code, log));
      }
      // Drop the slot and publication between methods, as native's are.
      int cleaned =
          pgferry::tools::run_process({PGFERRY_BINARY, "cleanup", "--source", source.conninfo(),
                                       "--target", target.conninfo(db), "--name", "bench_init"},
                                      log);
      if (cleaned != 0) throw std::runtime_error("pgferry cleanup failed, see " + log);
    }
    for (const auto& table : kTables) {
      if (table_digest(src, table) != table_digest(tgt, table)) {
        throw std::runtime_error(
            fmt::format("{}: table {} differs from the source", method, table));
      }
    }
    std::cerr << fmt::format("  run {}: {} {:.2f}s\n", run_index + 1, method, seconds[method]);
  }
  return seconds;
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  CLI::App app("pgferry init against a native subscription's initial sync, in the same run");
  app.add_option("--scale", options.scale, "pgbench scale")->capture_default_str();
  app.add_option("--runs", options.runs, "runs (medians are printed)")->capture_default_str();
  app.add_option("--jobs", options.jobs, "pgferry init --jobs")->capture_default_str();
  app.add_option("--methods", options.methods, "native, pgferry, pgferry-precreated")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--source-bindir", options.source_bindir,
                 "the source cluster's PostgreSQL bin directory (default: pg_config --bindir)");
  app.add_option("--target-bindir", options.target_bindir,
                 "the target cluster's PostgreSQL bin directory (default: pg_config --bindir)");
  CLI11_PARSE(app, argc, argv);
  pgferry::tools::stop_all_on_signal();
  try {
    std::map<std::string, std::vector<double>> times;
    for (int run = 0; run < options.runs; ++run) {
      for (const auto& [method, s] : run_once(options, run)) times[method].push_back(s);
    }
    double native = times.count("native") ? median(times["native"]) : 0;
    fmt::print("{:<20} {:>10} {:>10}  {}\n", "method (scale " + std::to_string(options.scale) + ")",
               "median s", "vs native", "runs (s)");
    for (const auto& method : options.methods) {
      double m = median(times[method]);
      std::string runs;
      for (double t : times[method]) runs += fmt::format("{:.2f} ", t);
      fmt::print("{:<20} {:>10.2f} {:>10}  {}\n", method, m,
                 native > 0 ? fmt::format("{:.2f}x", m / native) : std::string("-"), runs);
    }
  } catch (const std::exception& e) {
    std::cerr << "init benchmark failed: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
