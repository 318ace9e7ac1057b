// Cutover benchmark: the write gap clients see during `pgferry cutover` / `pgferry rollback`
// under a fixed-rate load through PgBouncer (transaction pooling), next to pgferry's own
// window and each step's share, and a scripted hand cutover measured in the same run.
//
//   pgferry  N cutovers and N rollbacks, the agent (`pgferry run`) following the direction.
//   hand     N switches each way with PostgreSQL's own subscriptions, as a careful script
//            does it: PAUSE, bump a marker row on the old primary and wait until the
//            subscription applied it, setval, create the way-back slot, rewrite [databases],
//            RELOAD, RESUME; then (outside the window) the way-back subscription.
// Load: --clients threads, each starting a transaction (an update of its previous row and an
// insert) every clients/--rate seconds on a fixed schedule; a transaction's latency counts
// from its scheduled start, so time spent queued behind a fence is included (as pgbench -R
// does). Per switch: the longest latency of transactions scheduled while the command ran.
//
// Usage: pgferry_cutover_bench [--runs N] [--rate TPS] [--clients N] [--methods pgferry,hand]
#include <fmt/format.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <chrono>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench_support.hpp"
#include "pgferry/replication/core/pg.hpp"
#include "pgferry/tools/local_cluster.hpp"
#include "pgferry/tools/local_pgbouncer.hpp"

namespace repl = pgferry::replication;
using pgferry::tools::LocalCluster;
using pgferry::tools::LocalPgBouncer;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

namespace {

using pgferry::bench::median;
using pgferry::bench::split;

constexpr const char* kSchema =
    "CREATE TABLE ledger (id bigserial PRIMARY KEY, client int NOT NULL, seq int NOT NULL, "
    "value int NOT NULL DEFAULT 0, UNIQUE (client, seq))";

struct Options {
  int runs = 10;
  int rate = 400;
  int clients = 8;
  std::vector<std::string> methods = {"pgferry", "hand"};
};

struct Sample {
  Clock::time_point scheduled;
  std::chrono::microseconds latency;
};

// Fixed-rate clients through PgBouncer.
class FixedRateLoad {
 public:
  FixedRateLoad(std::string conninfo, int clients, int rate)
      : conninfo_(std::move(conninfo)),
        clients_(clients),
        interval_(std::chrono::microseconds(1'000'000LL * clients / rate)) {}
  ~FixedRateLoad() { stop(); }
  void start() {
    for (int c = 0; c < clients_; ++c) threads_.emplace_back([this, c] { loop(c); });
  }
  void stop() {
    stop_ = true;
    for (auto& t : threads_) t.join();
    threads_.clear();
  }
  // Longest latency of transactions scheduled in [from, to]; errors in that span.
  std::pair<std::chrono::microseconds, int> worst(Clock::time_point from, Clock::time_point to) {
    std::lock_guard lock(mutex_);
    std::chrono::microseconds longest{0};
    for (const auto& s : samples_) {
      if (s.scheduled >= from && s.scheduled <= to) longest = std::max(longest, s.latency);
    }
    int errors = 0;
    for (auto at : errors_) errors += at >= from && at <= to;
    return {longest, errors};
  }
  std::size_t errors() {
    std::lock_guard lock(mutex_);
    return errors_.size();
  }

 private:
  void loop(int client) {
    repl::Connection conn;
    int seq = 0;
    auto next = Clock::now() + interval_ * client / clients_;
    while (!stop_) {
      std::this_thread::sleep_until(next);
      auto scheduled = next;
      next += interval_;
      try {
        if (!conn.is_open()) conn = repl::Connection::open(conninfo_, repl::Side::none);
        conn.exec(fmt::format(
            "WITH p AS (UPDATE ledger SET value = value + 1 WHERE client = {0} AND seq = {1}) "
            "INSERT INTO ledger (client, seq) VALUES ({0}, {2})",
            client, seq, seq + 1));
        ++seq;
        auto latency =
            std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - scheduled);
        std::lock_guard lock(mutex_);
        samples_.push_back({scheduled, latency});
      } catch (const std::exception& e) {
        conn.close();
        seq += 1000;
        std::lock_guard lock(mutex_);
        errors_.push_back(Clock::now());
        if (errors_.size() < 5) std::cerr << "client error: " << e.what() << "\n";
      }
    }
  }

  std::string conninfo_;
  int clients_;
  std::chrono::microseconds interval_;
  std::atomic<bool> stop_{false};
  std::vector<std::thread> threads_;
  std::mutex mutex_;
  std::vector<Sample> samples_;
  std::vector<Clock::time_point> errors_;
};

struct Run {
  std::string method;
  std::string direction;
  double window_ms = 0;      // fence to unfence, by the tool or the script
  double client_max_ms = 0;  // longest client latency while it ran
  int client_errors = 0;
  std::map<std::string, double> steps_ms;  // pgferry's steps
};

std::string capture(const std::vector<std::string>& argv, int& status) {
  char path[] = "/tmp/pgferry-bench-XXXXXX";
  int fd = ::mkstemp(path);
  ::close(fd);
  status = pgferry::tools::run_process(argv, path);
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  ::unlink(path);
  return text.str();
}

nlohmann::json json_of(const std::string& output) {
  auto start = output.find("{\n");
  return start == std::string::npos ? nlohmann::json()
                                    : nlohmann::json::parse(output.substr(start));
}

struct Pair {
  std::unique_ptr<LocalCluster> source;
  std::unique_ptr<LocalCluster> target;
  std::unique_ptr<LocalPgBouncer> bouncer;
  Pair() {
    source = std::make_unique<LocalCluster>();
    target = std::make_unique<LocalCluster>();
    pgferry::tools::PgBouncerOptions options;
    options.default_pool_size = 10;
    bouncer = std::make_unique<LocalPgBouncer>(*source, options);
    for (auto* c : {source.get(), target.get()}) {
      repl::Connection::open(c->conninfo(), repl::Side::none).exec(kSchema);
    }
  }
};

void wait_for(const std::function<bool()>& condition, std::chrono::seconds timeout,
              const char* what) {
  auto deadline = Clock::now() + timeout;
  while (!condition()) {
    if (Clock::now() > deadline) throw std::runtime_error(fmt::format("timed out: {}", what));
    std::this_thread::sleep_for(10ms);
  }
}

std::vector<Run> bench_pgferry(const Options& options) {
  Pair pair;
  std::vector<std::string> common = {
      PGFERRY_BINARY, "--source", pair.source->conninfo(), "--target", pair.target->conninfo(),
      "--name",       "ferry"};
  auto with = [&](std::vector<std::string> args) {
    auto all = common;
    all.insert(all.end(), args.begin(), args.end());
    return all;
  };
  int status = 0;
  auto init = capture(with({"init", "--no-data"}), status);
  if (status != 0) throw std::runtime_error("init failed: " + init);
  pgferry::tools::ChildProcess agent(with({"run", "--status-interval-ms", "200"}),
                                     "/tmp/pgferry-cutover-bench-agent.log");
  FixedRateLoad load(pair.bouncer->client_conninfo(), options.clients, options.rate);
  load.start();
  std::this_thread::sleep_for(2s);
  std::vector<Run> runs;
  for (int i = 0; i < options.runs * 2; ++i) {
    const char* command = i % 2 == 0 ? "cutover" : "rollback";
    std::this_thread::sleep_for(1500ms);  // the agent streams and catches up
    auto start = Clock::now();
    auto output = capture(with({command, "--json", "--pgbouncer", pair.bouncer->admin_conninfo(),
                                "--pgbouncer-config", pair.bouncer->config_file().string(),
                                "--pgbouncer-database", pair.bouncer->database()}),
                          status);
    auto end = Clock::now();
    std::this_thread::sleep_for(300ms);  // transactions scheduled inside have finished
    auto report = json_of(output);
    if (status != 0 || !report.value("ok", false)) {
      std::cerr << command << " failed (" << status << "): " << output << "\n";
      continue;
    }
    Run run{"pgferry", command, report["window_ms"].get<double>(), 0, 0, {}};
    std::string sequences_detail;
    for (const auto& step : report["steps"]) {
      run.steps_ms[step["step"].get<std::string>()] = step["ms"].get<double>();
      if (step["step"] == "sequences" && step["detail"].is_string()) {
        sequences_detail = step["detail"].get<std::string>();
      }
    }
    auto [worst, errors] = load.worst(start, end);
    run.client_max_ms = static_cast<double>(worst.count()) / 1000;
    run.client_errors = errors;
    runs.push_back(run);
    std::cerr << fmt::format("pgferry {} window {:.1f} ms, client max {:.1f} ms ({})\n", command,
                             run.window_ms, run.client_max_ms, sequences_detail);
  }
  load.stop();
  agent.stop();
  return runs;
}

// One hand switch from `from` to `to`, where subscription `sub` on `to` follows `from`.
Run hand_switch(Pair& pair, FixedRateLoad& load, LocalCluster& from, LocalCluster& to,
                const std::string& sub, const std::string& back_sub, const char* direction) {
  auto from_conn = repl::Connection::open(from.conninfo(), repl::Side::none);
  auto to_conn = repl::Connection::open(to.conninfo(), repl::Side::none);
  auto admin =
      repl::Connection::open(pair.bouncer->admin_conninfo(), repl::Side::none, {{"options", ""}});
  std::string path = pair.bouncer->config_file().string();
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  std::string config = text.str();
  auto line_start = config.find(pair.bouncer->database() + " = ");
  auto line_end = config.find('\n', line_start);

  auto start = Clock::now();
  admin.exec("PAUSE " + pair.bouncer->database());
  auto fenced = Clock::now();
  // The script's fence: a marker row through the subscription (commit order: once it is
  // applied, so is every transaction before it).
  auto marker = from_conn.exec("UPDATE hand_marker SET n = n + 1 RETURNING n").scalar();
  wait_for([&] { return to_conn.exec("SELECT n FROM hand_marker").scalar() == marker; }, 30s,
           "the subscription to apply the marker");
  auto last = from_conn.exec("SELECT last_value FROM ledger_id_seq").scalar();
  to_conn.exec(fmt::format("SELECT setval('ledger_id_seq', {} + 1000)", last));
  to_conn.exec(
      fmt::format("SELECT pg_create_logical_replication_slot('{}', 'pgoutput')", back_sub));
  std::string entry = fmt::format("{} = host={} port={} dbname=postgres", pair.bouncer->database(),
                                  to.socket_dir().string(), to.port());
  std::ofstream(path, std::ios::trunc)
      << config.substr(0, line_start) << entry << config.substr(line_end);
  admin.exec("RELOAD");
  admin.exec("RESUME " + pair.bouncer->database());
  auto unfenced = Clock::now();
  // Outside the window: the old direction ends, the way back starts at its slot.
  to_conn.exec(fmt::format("ALTER SUBSCRIPTION {} DISABLE", sub));
  to_conn.exec(fmt::format("ALTER SUBSCRIPTION {} SET (slot_name = NONE)", sub));
  to_conn.exec(fmt::format("DROP SUBSCRIPTION {}", sub));
  from_conn.exec(fmt::format("SELECT pg_drop_replication_slot('{}')", sub));
  from_conn.exec(fmt::format(
      "CREATE SUBSCRIPTION {} CONNECTION 'host={} port={} dbname=postgres user=postgres' "
      "PUBLICATION hand WITH (create_slot = false, slot_name = '{}', copy_data = false)",
      back_sub, to.socket_dir().string(), to.port(), back_sub));
  auto end = Clock::now();
  std::this_thread::sleep_for(300ms);
  auto [worst, errors] = load.worst(start, end);
  Run run{"hand",
          direction,
          std::chrono::duration<double, std::milli>(unfenced - fenced).count(),
          static_cast<double>(worst.count()) / 1000,
          errors,
          {}};
  std::cerr << fmt::format("hand {} window {:.1f} ms, client max {:.1f} ms\n", direction,
                           run.window_ms, run.client_max_ms);
  return run;
}

std::vector<Run> bench_hand(const Options& options) {
  Pair pair;
  for (auto* c : {pair.source.get(), pair.target.get()}) {
    repl::Connection::open(c->conninfo(), repl::Side::none)
        .exec(
            "CREATE TABLE hand_marker (id int PRIMARY KEY, n int NOT NULL); INSERT INTO "
            "hand_marker VALUES (1, 0); CREATE PUBLICATION hand FOR TABLE ledger, hand_marker");
  }
  repl::Connection::open(pair.target->conninfo(), repl::Side::none)
      .exec(fmt::format("CREATE SUBSCRIPTION to_target CONNECTION 'host={} port={} "
                        "dbname=postgres user=postgres' PUBLICATION hand WITH (copy_data = false)",
                        pair.source->socket_dir().string(), pair.source->port()));
  FixedRateLoad load(pair.bouncer->client_conninfo(), options.clients, options.rate);
  load.start();
  std::this_thread::sleep_for(2s);
  std::vector<Run> runs;
  for (int i = 0; i < options.runs; ++i) {
    std::this_thread::sleep_for(1500ms);
    runs.push_back(
        hand_switch(pair, load, *pair.source, *pair.target, "to_target", "to_source", "cutover"));
    std::this_thread::sleep_for(1500ms);
    runs.push_back(
        hand_switch(pair, load, *pair.target, *pair.source, "to_source", "to_target", "rollback"));
  }
  load.stop();
  return runs;
}

void print_table(const std::vector<Run>& runs) {
  std::map<std::string, std::vector<const Run*>> groups;
  for (const auto& run : runs) groups[run.method + " " + run.direction].push_back(&run);
  fmt::print("\n{:<18} {:>3} {:>13} {:>11} {:>15} {:>13} {:>7}\n", "method", "n", "window med ms",
             "window max", "client max med", "client max", "errors");
  for (const auto& [name, group] : groups) {
    std::vector<double> windows, clients;
    double window_max = 0, client_max = 0;
    int errors = 0;
    for (const auto* run : group) {
      windows.push_back(run->window_ms);
      clients.push_back(run->client_max_ms);
      window_max = std::max(window_max, run->window_ms);
      client_max = std::max(client_max, run->client_max_ms);
      errors += run->client_errors;
    }
    fmt::print("{:<18} {:>3} {:>13.1f} {:>11.1f} {:>15.1f} {:>13.1f} {:>7}\n", name, group.size(),
               median(windows), window_max, median(clients), client_max, errors);
  }
  // pgferry's steps: median ms and share of the window.
  std::map<std::string, std::vector<double>> steps;
  std::vector<double> windows;
  for (const auto& run : runs) {
    if (run.method != "pgferry") continue;
    windows.push_back(run.window_ms);
    for (const auto& [step, ms] : run.steps_ms) steps[step].push_back(ms);
  }
  if (windows.empty()) return;
  fmt::print("\npgferry steps (median ms; share of the median window {:.1f} ms)\n",
             median(windows));
  for (const char* step :
       {"preconditions", "prepare", "fence", "mark", "sequences", "reverse", "switch", "unfence"}) {
    if (!steps.count(step)) continue;
    double m = median(steps[step]);
    bool inside = std::string(step) != "preconditions" && std::string(step) != "prepare";
    fmt::print(
        "  {:<14} {:>9.1f} ms {}\n", step, m,
        inside ? fmt::format("{:>5.0f} %", 100 * m / median(windows)) : "(before the fence)");
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"pgferry cutover benchmark"};
  Options options;
  std::string methods = "pgferry,hand";
  app.add_option("--runs", options.runs, "cutovers (and as many rollbacks) per method");
  app.add_option("--rate", options.rate, "transactions per second, all clients together");
  app.add_option("--clients", options.clients, "client threads");
  app.add_option("--methods", methods, "pgferry,hand");
  CLI11_PARSE(app, argc, argv);
  options.methods = split(methods);
  pgferry::tools::stop_all_on_signal();
  std::vector<Run> runs;
  for (const auto& method : options.methods) {
    auto part = method == "pgferry" ? bench_pgferry(options) : bench_hand(options);
    runs.insert(runs.end(), part.begin(), part.end());
  }
  fmt::print("load: {} tps through PgBouncer (transaction pooling), {} clients\n", options.rate,
             options.clients);
  print_table(runs);
  return 0;
}
