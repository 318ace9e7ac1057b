// `pgferry demo`: the whole journey on two throwaway local clusters. It drives the real
// subcommands as child processes (the same paths an operator uses), narrates each step
// with its timing, and proves at the end that the target equals the source.
//
// Journey: start source and target → application schema on the source (pgbench tables plus
// a serial table) copied to the target with pg_dump --schema-only → `pgferry check` →
// `pgferry init` → initial data → `pgferry run` in the background → a pgbench load while
// `pgferry lag` is sampled → load stops, lag drains to zero → `pgferry sequences sync` →
// every table compared → agent stopped with SIGTERM → clusters removed.
#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <thread>

#include "cli.hpp"
#include "pgferry/lagmon/render.hpp"
#include "pgferry/lagmon/sample.hpp"
#include "pgferry/replication/core/error.hpp"
#include "pgferry/replication/core/pg.hpp"
#include "pgferry/tools/local_cluster.hpp"

namespace pgferry::tools {

namespace {

namespace repl = pgferry::replication;
using Clock = std::chrono::steady_clock;

struct DemoOptions {
  int load_seconds = 10;
  int scale = 1;
  int clients = 2;
  bool keep = false;
  std::string target_bindir;
};

std::string self_path() {
  return std::filesystem::read_symlink("/proc/self/exe").string();
}

class Narrator {
 public:
  void step(const std::string& title) {
    finish();
    ++number_;
    std::cout << fmt::format("\n[{}] {}\n", number_, title) << std::flush;
    started_ = Clock::now();
    open_ = true;
  }
  void say(const std::string& line) { std::cout << "    " << line << "\n" << std::flush; }
  void finish() {
    if (!open_) return;
    std::cout << fmt::format("    done in {:.2f}s\n",
                             std::chrono::duration<double>(Clock::now() - started_).count())
              << std::flush;
    open_ = false;
  }

 private:
  int number_ = 0;
  bool open_ = false;
  Clock::time_point started_;
};

// Runs `pgferry args...`, echoing its output indented; throws when it fails.
void pgferry(Narrator& narrator, const std::vector<std::string>& args, const std::string& what) {
  std::vector<std::string> argv = {self_path()};
  argv.insert(argv.end(), args.begin(), args.end());
  std::string shown = "pgferry";
  for (const auto& arg : args)
    shown += " " + (arg.find(' ') == std::string::npos ? arg : "'" + arg + "'");
  narrator.say("$ " + shown);
  auto log =
      std::filesystem::temp_directory_path() / fmt::format("pgferry-demo-{}.log", ::getpid());
  int status = run_process(argv, log);
  std::ifstream in(log);
  for (std::string line; std::getline(in, line);) narrator.say("  " + line);
  std::filesystem::remove(log);
  if (status != 0) {
    throw repl::Error(fmt::format("demo step \"{}\" failed: pgferry {} exited with {}", what,
                                  args.empty() ? "" : args[0], status));
  }
}

std::vector<std::string> pgbench(const LocalCluster& cluster, std::vector<std::string> extra) {
  std::vector<std::string> argv = {
      "pgbench", "-h",      cluster.socket_dir().string(), "-p", std::to_string(cluster.port()),
      "-U",      "postgres"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  argv.push_back("postgres");
  return argv;
}

int demo_command(const DemoOptions& options) {
  Narrator narrator;
  std::cout << "pgferry demo: move a live database to another server, on two throwaway local "
               "clusters.\n";

  narrator.step("Start a source and a target cluster");
  ClusterOptions source_options;
  source_options.prefix = "pgferry-demo-";
  // Small enough that a large transaction is streamed in progress, as in production.
  source_options.settings = {{"logical_decoding_work_mem", "'1MB'"}};
  ClusterOptions target_options = source_options;
  target_options.bindir = options.target_bindir;
  LocalCluster source(source_options);
  LocalCluster target(target_options);
  narrator.say(fmt::format("source: PostgreSQL {} on port {} ({})", source.major_version(),
                           source.port(), source.dir().string()));
  narrator.say(fmt::format("target: PostgreSQL {} on port {} ({})", target.major_version(),
                           target.port(), target.dir().string()));
  std::string source_conninfo = source.conninfo();
  std::string target_conninfo = target.conninfo();

  narrator.step("Create the application schema on the source and copy it to the target");
  if (source.run_tool(pgbench(source, {"-i", "-I", "dtp", "-s", std::to_string(options.scale)}),
                      source.dir() / "pgbench.log") != 0) {
    throw repl::Error("pgbench -i failed on the source; see " +
                      (source.dir() / "pgbench.log").string());
  }
  auto src = repl::Connection::open(source_conninfo, repl::Side::source);
  src.exec(
      "ALTER TABLE pgbench_history ADD COLUMN id bigserial PRIMARY KEY;"
      "CREATE TABLE orders(id serial PRIMARY KEY, customer text NOT NULL, total numeric(12,2),"
      "                    placed_at timestamptz NOT NULL DEFAULT now(), note text)");
  auto schema = source.dir() / "schema.sql";
  if (source.run_tool(
          {"pg_dump", "-h", source.socket_dir().string(), "-p", std::to_string(source.port()), "-U",
           "postgres", "--schema-only", "-f", schema.string(), "postgres"},
          source.dir() / "pg_dump.log") != 0 ||
      target.run_tool(
          {"psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", target.socket_dir().string(), "-p",
           std::to_string(target.port()), "-U", "postgres", "-f", schema.string(), "postgres"},
          target.dir() / "psql.log") != 0) {
    throw repl::Error("copying the schema with pg_dump --schema-only failed");
  }
  narrator.say("pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history, orders");

  narrator.step("Preflight: pgferry check");
  pgferry(narrator, {"check", "--source", source_conninfo, "--target", target_conninfo}, "check");

  narrator.step("Set up replication: pgferry init (publication, slot, progress record)");
  pgferry(narrator, {"init", "--no-data", "--source", source_conninfo, "--target", target_conninfo},
          "init");

  narrator.step("Load the initial data on the source");
  if (source.run_tool(pgbench(source, {"-i", "-I", "g", "-s", std::to_string(options.scale)}),
                      source.dir() / "pgbench.log") != 0) {
    throw repl::Error("pgbench data generation failed");
  }
  src.exec(
      "INSERT INTO orders(customer, total, note) SELECT 'customer ' || g, g * 1.25, "
      "CASE WHEN g % 10 = 0 THEN repeat('long note ', 500) END FROM generate_series(1, 5000) g");
  narrator.say(fmt::format("{} accounts, 5000 orders",
                           src.exec("SELECT count(*) FROM pgbench_accounts").scalar()));

  narrator.step("Start the agent: pgferry run (streams and applies, exactly once)");
  auto agent_log = source.dir() / "agent.log";
  ChildProcess agent({self_path(), "run", "--source", source_conninfo, "--target", target_conninfo,
                      "--log-level", "info"},
                     agent_log);
  narrator.say("agent log: " + agent_log.string());

  narrator.step(fmt::format("Application load for {}s (pgbench, {} clients) while watching the lag",
                            options.load_seconds, options.clients));
  ChildProcess load(pgbench(source, {"-n", "-c", std::to_string(options.clients), "-T",
                                     std::to_string(options.load_seconds)}),
                    source.dir() / "pgbench-load.log");
  lagmon::LagSampler sampler(source_conninfo, target_conninfo, "pgferry");
  std::optional<lagmon::LagSample> previous;
  while (!load.exited()) {
    if (agent.exited()) throw repl::Error("the agent stopped; see " + agent_log.string());
    auto sample = sampler.sample();
    std::optional<lagmon::LagTrend> trend;
    if (previous) trend = lagmon::trend(*previous, sample);
    narrator.say(lagmon::render_line(sample, trend));
    previous = sample;
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }

  narrator.step("Load stopped: wait for the lag to reach zero");
  auto drain_start = Clock::now();
  while (true) {
    if (agent.exited()) throw repl::Error("the agent stopped; see " + agent_log.string());
    auto sample = sampler.sample();
    if (sample.lag_bytes().value_or(1) == 0) {
      narrator.say(lagmon::render_line(sample, std::nullopt));
      break;
    }
    if (Clock::now() - drain_start > std::chrono::minutes(5)) {
      throw repl::TimedOut("the lag did not reach zero within 5 minutes");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }

  narrator.step("Sequences: pgferry sequences sync (logical replication does not carry them)");
  pgferry(narrator, {"sequences", "sync", "--source", source_conninfo, "--target", target_conninfo},
          "sequences sync");

  narrator.step("Verify: every table on the target equals the source");
  auto tgt = repl::Connection::open(target_conninfo, repl::Side::target);
  bool equal = true;
  for (const char* table :
       {"pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history", "orders"}) {
    auto sql = fmt::format(
        "SELECT count(*) || ' rows, md5 ' || coalesce(md5(string_agg(t::text, '|' ORDER BY "
        "t::text)), '-') FROM {} t",
        table);
    auto on_source = src.exec(sql).scalar();
    auto on_target = tgt.exec(sql).scalar();
    equal = equal && on_source == on_target;
    narrator.say(
        fmt::format("{:<18} {} {}", table, on_target,
                    on_source == on_target ? "= source" : "DIFFERS from source " + on_source));
  }
  if (!equal) throw repl::Error("the target differs from the source");

  narrator.step("Stop the agent (SIGTERM: clean shutdown)");
  int agent_exit = agent.stop(std::chrono::seconds(30));
  narrator.say(fmt::format("agent exited with {}", agent_exit));
  narrator.finish();
  std::cout << "\nThe target equals the source. (Clusters are removed now"
            << (options.keep ? "; --keep: kept" : "") << ".)\n";
  if (options.keep) ::setenv("PGFERRY_KEEP_CLUSTERS", "1", 1);
  return agent_exit == 0 ? 0 : 1;
}

}  // namespace

void add_demo_command(CLI::App& app, CommonOptions& /*common*/, CommandAction& action) {
  auto options = std::make_shared<DemoOptions>();
  auto* cmd = app.add_subcommand("demo", "run the whole journey on two throwaway local clusters");
  cmd->add_option("--seconds", options->load_seconds,
                  "length of the application load (default 10)");
  cmd->add_option("--scale", options->scale, "pgbench scale of the sample data (default 1)");
  cmd->add_option("--clients", options->clients, "pgbench clients of the load (default 2)");
  cmd->add_option("--target-bindir", options->target_bindir,
                  "PostgreSQL binaries for the target (another major version)");
  cmd->add_flag("--keep", options->keep, "keep the clusters' directories afterwards");
  cmd->callback([&action, options] {
    action = [options] {
      stop_all_on_signal();
      return demo_command(*options);
    };
  });
}

}  // namespace pgferry::tools
