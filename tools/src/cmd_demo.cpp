// `pgferry demo`: a live major-version upgrade on throwaway local servers. A PostgreSQL 15
// source and a PostgreSQL 18 target (`--target-bindir`; two 15 servers with
// `--same-version`), a PgBouncer in front of the source, a small application schema and a
// write load through PgBouncer that never stops. The demo drives the real subcommands as
// child processes (the commands an operator types, shown with `$`), explains each step in a
// line or two, and proves at the end that no acknowledged write was lost or failed.
//
// Journey: servers and PgBouncer → schema and data → the load starts → `check` (a table
// without a primary key, fixed) → `init --schema` (PostgreSQL 18's pg_dump) → `run` in the
// background → `lag` drains → `verify` → `cutover` with the PgBouncer fence → proof on the
// target → `rollback` → proof on the source → everything stopped and removed.
//
// NOTES
// - Ctrl-C (SIGINT, also SIGTERM and SIGHUP) only sets a flag; every wait of the demo checks
//   it and unwinds, so the destructors stop the load, the child command that runs, the agent,
//   PgBouncer and both servers, and remove their directories. A second Ctrl-C stops the
//   servers at once (LocalCluster's signal handler) and leaves.
// - The load is WriteLoad (pgferry/tools/write_load.hpp), the cutover tests' load: each
//   transaction inserts a ledger row and updates the client's previous one, and the ledger's
//   trigger writes an event (a partitioned table) and moves an order along (an update that
//   leaves its TOASTed note unchanged). Every acknowledged commit and every error is kept,
//   and each ledger row records the server it was first written on (cluster_name), which is
//   what the proof counts.
#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>
#include <thread>

#include "cli.hpp"
#include "pgferry/replication/core/error.hpp"
#include "pgferry/replication/core/pg.hpp"
#include "pgferry/tools/local_cluster.hpp"
#include "pgferry/tools/local_pgbouncer.hpp"
#include "pgferry/tools/write_load.hpp"

namespace pgferry::tools {

namespace {

namespace fs = std::filesystem;
namespace repl = pgferry::replication;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

struct DemoOptions {
  std::string target_bindir;
  bool same_version = false;
  int clients = 4;
  bool keep = false;
};

// The application: customers and orders (an enum, jsonb, an identity key, a note stored out
// of line), the ledger the load writes (a sequence-backed key; WriteLoad's table), events
// (partitioned by time, identity key) filled by the ledger's trigger, and page_views, which
// has no primary key (check finds it).
constexpr const char* kAppSchema = R"sql(
CREATE TYPE order_status AS ENUM ('new', 'paid', 'shipped', 'delivered');
CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL,
                        profile jsonb NOT NULL DEFAULT '{}');
CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                     customer_id int NOT NULL REFERENCES customers,
                     status order_status NOT NULL DEFAULT 'new', items jsonb NOT NULL,
                     note text, updated_at timestamptz NOT NULL DEFAULT now());
ALTER TABLE orders ALTER COLUMN note SET STORAGE EXTERNAL;
CREATE TABLE events (id bigint GENERATED ALWAYS AS IDENTITY, at timestamptz NOT NULL DEFAULT now(),
                     kind text NOT NULL, payload jsonb, PRIMARY KEY (id, at))
  PARTITION BY RANGE (at);
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE events_current PARTITION OF events DEFAULT;
CREATE TABLE page_views (path text NOT NULL, viewed_at timestamptz NOT NULL DEFAULT now(), ms int);
CREATE FUNCTION ledger_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO events (kind, payload)
  VALUES ('ledger', jsonb_build_object('client', NEW.client, 'seq', NEW.seq, 'on', NEW.origin));
  UPDATE orders SET status = (enum_range(NULL::order_status))[NEW.seq % 4 + 1], updated_at = now()
  WHERE id = (NEW.client * 7919 + NEW.seq) % 500 + 1;
  RETURN NULL;
END $$;
CREATE TRIGGER ledger_event AFTER INSERT ON ledger FOR EACH ROW EXECUTE FUNCTION ledger_event();
)sql";

constexpr const char* kAppData = R"sql(
INSERT INTO customers (name, profile)
SELECT 'customer ' || g, jsonb_build_object('tier', (ARRAY['free','pro','team'])[g % 3 + 1], 'since', 2020 + g % 6)
FROM generate_series(1, 200) g;
INSERT INTO orders (customer_id, items, note)
SELECT g % 200 + 1, jsonb_build_array(jsonb_build_object('sku', 'A' || g, 'qty', g % 5 + 1)),
       CASE WHEN g % 10 = 0 THEN (SELECT string_agg(md5(g::text || i), '') FROM generate_series(1, 150) i) END
FROM generate_series(1, 500) g;
INSERT INTO events (at, kind, payload)
SELECT timestamptz '2025-01-01' + g * interval '1 hour', 'import', jsonb_build_object('n', g)
FROM generate_series(1, 2000) g;
INSERT INTO page_views (path, ms) SELECT '/page/' || g % 40, g % 300 FROM generate_series(1, 1000) g;
)sql";

constexpr const char* kFixPageViews =
    "ALTER TABLE page_views ADD COLUMN id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY";

// ---- Ctrl-C ----------------------------------------------------------------------------

volatile std::sig_atomic_t g_interrupt = 0;

extern "C" void on_demo_signal(int signo) {
  if (g_interrupt != 0) {  // the second one: stop the servers now and leave
    stop_all_on_signal();
    ::raise(signo);
    return;
  }
  g_interrupt = signo;
}

struct Interrupted {
  int signo;
};

void checkpoint() {
  if (g_interrupt != 0) throw Interrupted{static_cast<int>(g_interrupt)};
}

void pause_for(std::chrono::milliseconds duration) {
  auto until = Clock::now() + duration;
  while (Clock::now() < until) {
    checkpoint();
    std::this_thread::sleep_for(std::min<Clock::duration>(20ms, until - Clock::now()));
  }
}

// ---- output ----------------------------------------------------------------------------

class Narrator {
 public:
  void step(const std::string& title, const std::string& explanation) {
    finish();
    checkpoint();
    ++number_;
    std::cout << fmt::format("\n[{}] {}\n", number_, title);
    if (!explanation.empty()) say(explanation);
    std::cout << std::flush;
    started_ = Clock::now();
    open_ = true;
  }
  void say(const std::string& line) { std::cout << "    " << line << "\n" << std::flush; }
  void finish() {
    if (!open_) return;
    say(fmt::format("({:.1f}s)", std::chrono::duration<double>(Clock::now() - started_).count()));
    open_ = false;
  }

 private:
  int number_ = 0;
  bool open_ = false;
  Clock::time_point started_;
};

std::string self_path() {
  return fs::read_symlink("/proc/self/exe").string();
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// The demo's temp dir, removed when it goes (unless --keep). It becomes TMPDIR, so the servers,
// PgBouncer, the logs and what the commands keep there (the agent's spool) all live in it.
class DemoDir {
 public:
  DemoDir() {
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern = (fs::path(tmp && *tmp ? tmp : "/tmp") / "pgferry-demo-XXXXXX").string();
    if (!::mkdtemp(pattern.data())) throw repl::Error("mkdtemp " + pattern + " failed");
    path_ = pattern;
    // The servers run as `postgres` when we are root: it must reach its directories inside.
    fs::permissions(path_, fs::perms::owner_all | fs::perms::group_exec | fs::perms::others_exec);
  }
  ~DemoDir() {
    std::error_code ec;
    if (!std::getenv("PGFERRY_KEEP_CLUSTERS")) fs::remove_all(path_, ec);
  }
  DemoDir(const DemoDir&) = delete;
  DemoDir& operator=(const DemoDir&) = delete;
  fs::path operator/(const std::string& name) const { return path_ / name; }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// ---- the pgferry commands --------------------------------------------------------------

class Commands {
 public:
  Commands(Narrator& narrator, const DemoDir& dir, std::vector<std::string> common)
      : narrator_(narrator), dir_(dir), common_(std::move(common)) {}

  std::vector<std::string> argv(const std::vector<std::string>& args) const {
    std::vector<std::string> all = {self_path()};
    all.insert(all.end(), args.begin(), args.end());
    all.insert(all.end(), common_.begin(), common_.end());
    return all;
  }

  // Runs `pgferry args...` (the common connection options appended, not shown), shows its
  // output indented (only the lines `keep` accepts, when given) and returns its exit code.
  int run(const std::vector<std::string>& args, const std::string& shown_args,
          const std::function<bool(const std::string&)>& keep = {}) {
    narrator_.say("$ pgferry " + shown_args);
    auto log = dir_ / fmt::format("step-{}.log", ++steps_);
    int status = wait_for(argv(args), log);
    std::ifstream in(log);
    for (std::string line; std::getline(in, line);) {
      if (!keep || keep(line)) narrator_.say("  " + line);
    }
    return status;
  }

  void expect(int status, int wanted, const std::string& what) const {
    if (status != wanted) {
      throw repl::Error(fmt::format("demo: {} exited with {} (expected {})", what, status, wanted));
    }
  }

  struct JsonRun {
    int status;
    nlohmann::json document;
  };
  // Runs `pgferry args... --json` and parses the document it printed (log lines may precede
  // it); its output is not shown.
  JsonRun run_json(std::vector<std::string> args, const std::string& shown_args) {
    narrator_.say("$ pgferry " + shown_args);
    args.push_back("--json");
    auto log = dir_ / fmt::format("step-{}.log", ++steps_);
    int status = wait_for(argv(args), log);
    std::string text = read_text(log);
    auto start = text.rfind("{\n", 0) == 0 ? 0 : text.find("\n{\n");
    nlohmann::json document;
    if (start != std::string::npos) {
      document = nlohmann::json::parse(text.substr(start), nullptr, false);
    }
    if (!document.is_object()) {
      throw repl::Error(
          fmt::format("demo: pgferry {} printed no JSON document:\n{}", shown_args, text));
    }
    return {status, std::move(document)};
  }

  // Waits for a child, passing a Ctrl-C on to it.
  static int wait_for(const std::vector<std::string>& argv, const fs::path& log) {
    ChildProcess child(argv, log);
    while (!child.exited()) {
      if (g_interrupt != 0) {
        child.stop(15s);
        checkpoint();
      }
      std::this_thread::sleep_for(10ms);
    }
    return child.exit_code();
  }

 private:
  Narrator& narrator_;
  const DemoDir& dir_;
  std::vector<std::string> common_;
  int steps_ = 0;
};

// The fatal findings and warnings of `check --json` (and the major-version note), each with
// its fix; the tables missing on the target (init --schema creates them) in one line.
void show_check(Narrator& narrator, const nlohmann::json& report) {
  std::vector<std::string> missing;
  for (const auto& finding : report["findings"]) {
    auto code = finding["code"].get<std::string>();
    auto object = finding["object"].get<std::string>();
    if (code == "target_table_missing") {
      missing.push_back(object);
      continue;
    }
    if (finding["severity"] == "info" && code != "major_upgrade") continue;
    narrator.say(fmt::format("  {:<7} {}: {}", finding["severity"].get<std::string>(), object,
                             finding["reason"].get<std::string>()));
    narrator.say(fmt::format("          fix: {}", finding["fix"].get<std::string>()));
  }
  if (!missing.empty()) {
    std::string names;
    for (const auto& name : missing) names += (names.empty() ? "" : ", ") + name;
    narrator.say(fmt::format("  fatal   {} tables do not exist on the target yet ({})",
                             missing.size(), names));
    narrator.say("          fix: pgferry init --schema creates them");
  }
}

// ---- the proof -------------------------------------------------------------------------

// What the load did on `server` since `since`: commits acknowledged, errors, and whether
// every acknowledged commit is on the server exactly once.
void prove(Narrator& narrator, const WriteLoad& load, const LocalCluster& server,
           const std::string& server_name, Clock::time_point since, std::size_t errors_before) {
  auto acked = load.acked();
  std::size_t after = 0;
  for (const auto& commit : acked) after += commit.started > since ? 1 : 0;
  auto conn = repl::Connection::open(server.conninfo(), repl::Side::none);
  auto written_here =
      conn.exec(fmt::format("SELECT count(*) FROM ledger WHERE origin = '{}'", server_name));
  auto problems = load.check_on(conn);
  auto errors = load.errors();
  narrator.say(fmt::format(
      "the load kept going: {} transactions acknowledged since the switch; {} ledger rows were "
      "written on the {} in all",
      after, written_here.scalar(), server_name));
  narrator.say(fmt::format(
      "failed transactions: {}; acknowledged commits missing or doubled on the {}: {} of {}",
      errors.size() - errors_before, server_name, problems.size(), acked.size()));
  for (std::size_t i = errors_before; i < errors.size() && i < errors_before + 5; ++i) {
    narrator.say("  error: " + errors[i]);
  }
  for (std::size_t i = 0; i < problems.size() && i < 5; ++i) narrator.say("  " + problems[i]);
  if (errors.size() != errors_before || !problems.empty() || after == 0) {
    throw repl::Error("demo: the proof failed (see above)");
  }
}

// Polls `pgferry lag` until the target is within the last few transactions of the source.
void watch_lag(Narrator& narrator, Commands& commands, const DemoDir& dir) {
  static const std::regex lag_re(R"(lag_bytes=(\d+))");
  narrator.say("$ pgferry lag --watch 0.5");
  auto log = dir / "lag.log";
  ChildProcess watch(commands.argv({"lag", "--watch", "0.5"}), log);
  std::size_t shown = 0;
  int small = 0;
  auto deadline = Clock::now() + 3min;
  while (true) {
    pause_for(100ms);
    std::ifstream in(log);
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    bool done = false;
    for (; shown < lines.size(); ++shown) {
      std::smatch match;
      if (!std::regex_search(lines[shown], match, lag_re)) continue;
      narrator.say("  " + lines[shown]);
      auto lag = std::stoull(match[1]);
      small = lag < 64 * 1024 ? small + 1 : 0;
      if (lag == 0 || small >= 4) done = true;
    }
    if (done) break;
    if (watch.exited()) throw repl::Error("demo: pgferry lag stopped: " + read_text(log));
    if (Clock::now() > deadline) throw repl::TimedOut("demo: the lag did not drain in 3 minutes");
  }
  watch.stop(10s);
}

std::string one_value(const std::string& conninfo, const std::string& sql) {
  return repl::Connection::open(conninfo, repl::Side::none).exec(sql).scalar();
}

std::string server_version(const LocalCluster& cluster) {
  return one_value(cluster.conninfo(), "SHOW server_version");
}

// ---- the journey -----------------------------------------------------------------------

int journey(const DemoOptions& options) {
  Narrator narrator;
  DemoDir dir;
  ::setenv("TMPDIR", dir.path().c_str(), 1);
  std::cout << "pgferry demo: upgrade a live PostgreSQL database to a new major version behind "
               "PgBouncer,\nwith a write load that never stops. Ctrl-C stops it and removes "
               "everything.\n";

  narrator.step("Start the servers",
                "A source and a target PostgreSQL, and a PgBouncer that the application uses.");
  ClusterOptions source_options;
  source_options.prefix = "pgferry-demo-";
  source_options.settings = {{"cluster_name", "'source'"}};
  ClusterOptions target_options = source_options;
  target_options.settings = {{"cluster_name", "'target'"}};
  target_options.bindir = options.same_version ? "" : options.target_bindir;
  LocalCluster source(source_options);
  checkpoint();
  LocalCluster target(target_options);
  checkpoint();
  LocalPgBouncer bouncer(source);
  narrator.say(
      fmt::format("source: PostgreSQL {} on port {}", server_version(source), source.port()));
  narrator.say(
      fmt::format("target: PostgreSQL {} on port {}", server_version(target), target.port()));
  narrator.say(fmt::format("PgBouncer on port {}: database {} -> the source (transaction pooling)",
                           bouncer.port(), bouncer.database()));

  narrator.step("Create the application on the source",
                "Tables with an enum, jsonb, an identity key, a partitioned table, a note stored "
                "out of line (TOAST), a sequence-backed ledger with a trigger; some data.");
  {
    auto src = repl::Connection::open(source.conninfo(), repl::Side::source);
    src.exec(kLedgerSchema);
    src.exec(kAppSchema);
    src.exec(kAppData);
  }
  narrator.say(
      "customers, orders, ledger (trigger: events, orders), events (events_2025, "
      "events_current), page_views");

  narrator.step("Start the application's load through PgBouncer (it never stops)",
                fmt::format("{} clients, each transaction adds a ledger row and updates the "
                            "previous one; every commit and every error is recorded.",
                            options.clients));
  WriteLoad load(bouncer.client_conninfo(), options.clients, 5ms);
  load.start();
  pause_for(1s);
  narrator.say(fmt::format("{} transactions acknowledged so far", load.acked_count()));

  std::vector<std::string> common = {"--source",        source.conninfo(), "--target",
                                     target.conninfo(), "--log-level",     "warn"};
  Commands pgferry(narrator, dir, common);
  narrator.say("(each command below also gets --source '" + source.conninfo() + "' --target '" +
               target.conninfo() + "' --log-level warn)");

  narrator.step("Preflight: pgferry check",
                "Every reason replication would fail or lose data, with the fix (exit 3 when "
                "one is fatal). Summarized from its --json document:");
  auto check = pgferry.run_json({"check"}, "check --json");
  pgferry.expect(check.status, 3, "pgferry check");
  show_check(narrator, check.document);

  narrator.step("Fix it: give page_views a primary key",
                "Without a key its updates and deletes could not be replicated.");
  narrator.say(std::string("source=# ") + kFixPageViews + ";");
  repl::Connection::open(source.conninfo(), repl::Side::source).exec(kFixPageViews);

  std::string target_bindir = target.bindir();
  narrator.step(
      "Set up and copy: pgferry init --schema",
      "The schema with the target's pg_dump, a publication, a slot, and a consistent copy of "
      "every table from the slot's snapshot, while the load runs.");
  int status = pgferry.run({"init", "--schema", "--pg-bindir", target_bindir, "--jobs", "2"},
                           "init --schema --pg-bindir " + target_bindir + " --jobs 2");
  pgferry.expect(status, 0, "pgferry init");

  narrator.step("Start the agent: pgferry run",
                "It streams every change since the snapshot and applies it exactly once; it "
                "also follows the cutover and replicates back.");
  auto agent_log = dir / "agent.log";
  narrator.say("$ pgferry run &     (log: " + agent_log.string() + ")");
  ChildProcess agent(pgferry.argv({"run", "--status-interval-ms", "200"}), agent_log);

  narrator.step("Watch the lag drain: pgferry lag",
                "Bytes of WAL the target is behind; the load never stops, so caught up means "
                "within the last few transactions.");
  watch_lag(narrator, pgferry, dir);
  if (agent.exited()) throw repl::Error("demo: the agent stopped: " + read_text(agent_log));

  narrator.step("Verify: pgferry verify",
                "Compares every table by key ranges on both servers; differences that are only "
                "lag are re-checked once the target has caught up.");
  status = pgferry.run({"verify"}, "verify");
  pgferry.expect(status, 0, "pgferry verify");

  std::vector<std::string> switch_options = {"--pgbouncer",
                                             bouncer.admin_conninfo(),
                                             "--pgbouncer-config",
                                             bouncer.config_file().string(),
                                             "--pgbouncer-database",
                                             bouncer.database(),
                                             "--timeout",
                                             "30"};
  std::string switch_shown =
      fmt::format("--pgbouncer '{}' --pgbouncer-config {} --pgbouncer-database {}",
                  bouncer.admin_conninfo(), bouncer.config_file().string(), bouncer.database());
  auto switch_args = [&](const char* command) {
    std::vector<std::string> args = {command};
    args.insert(args.end(), switch_options.begin(), switch_options.end());
    return args;
  };

  // A switch under the load, then the proof on the new primary from the load's own record.
  auto switch_and_prove = [&](const char* command, const std::string& title,
                              const std::string& explanation, const std::string& proof_title,
                              const std::string& proof_explanation, const LocalCluster& primary,
                              const std::string& primary_name) {
    narrator.step(title, explanation);
    std::size_t errors_before = load.errors().size();
    int exit_code = pgferry.run(switch_args(command), std::string(command) + " " + switch_shown);
    auto switched = Clock::now();
    pgferry.expect(exit_code, 0, std::string("pgferry ") + command);
    narrator.step(proof_title, proof_explanation);
    pause_for(3s);
    narrator.say("through PgBouncer: " +
                 one_value(bouncer.client_conninfo(),
                           "SELECT current_setting('cluster_name') || ', "
                           "PostgreSQL ' || current_setting('server_version')"));
    prove(narrator, load, primary, primary_name, switched, errors_before);
  };
  switch_and_prove("cutover", "Cut over: pgferry cutover",
                   "PAUSE in PgBouncer holds new transactions, the agent applies up to a fence, "
                   "sequences move ahead, PgBouncer is pointed at the target, RESUME.",
                   "Proof: the application now writes to the target",
                   "Counted on the target from the load's own record of acknowledged commits.",
                   target, "target");
  switch_and_prove("rollback", "Roll back: pgferry rollback",
                   "The same switch the other way: the agent has been replicating the target's "
                   "writes back to the source since the cutover.",
                   "Proof: the application writes to the source again", "", source, "source");

  narrator.step("Stop and clean up",
                "The load, the agent, PgBouncer and both servers stop; their directories go.");
  load.stop();
  narrator.say(fmt::format("load: {} transactions acknowledged, {} failed", load.acked_count(),
                           load.errors().size()));
  int agent_exit = agent.stop(30s);
  narrator.say(fmt::format("agent exited with {}", agent_exit));
  if (options.keep) {
    ::setenv("PGFERRY_KEEP_CLUSTERS", "1", 1);
    narrator.say("--keep: everything stays in " + dir.path().string());
  }
  narrator.finish();
  return agent_exit == 0 ? 0 : 1;
}

int demo_command(DemoOptions options) {
  if (!options.same_version && options.target_bindir.empty()) {
    const char* cache = std::getenv("PGFERRY_PG_CACHE");
    fs::path prefix = fs::path(cache && *cache ? cache : "/var/cache/pgferry") / "postgresql-18";
    if (!fs::exists(prefix / ".pgferry-stamp")) {
      throw repl::ConfigError(fmt::format(
          "pgferry demo upgrades to PostgreSQL 18, which is not built in {}: run "
          "tools/demo.sh (it builds it first), or tools/build-postgres.sh 18, or pass "
          "--target-bindir DIR, or --same-version for two servers of the system's version",
          prefix.string()));
    }
    options.target_bindir = (prefix / "bin").string();
  }
  g_interrupt = 0;
  for (int signo : {SIGINT, SIGTERM, SIGHUP}) ::signal(signo, on_demo_signal);
  auto interrupted = [](int signo) {
    std::cout << fmt::format(
                     "\ninterrupted ({}): the load, the agent, PgBouncer and the servers "
                     "are stopped and their directories removed.\n",
                     ::strsignal(signo))
              << std::flush;
    return 128 + signo;
  };
  try {
    return journey(options);
  } catch (const Interrupted& interruption) {
    return interrupted(interruption.signo);
  } catch (const std::exception&) {
    // A child that got the terminal's Ctrl-C too (initdb, pg_ctl) failed first.
    if (g_interrupt != 0) return interrupted(static_cast<int>(g_interrupt));
    throw;
  }
}

}  // namespace

void add_demo_command(CLI::App& app, CommonOptions& /*common*/, CommandAction& action) {
  auto options = std::make_shared<DemoOptions>();
  auto* cmd = app.add_subcommand(
      "demo",
      "upgrade a live PostgreSQL 15 database to 18 behind PgBouncer on throwaway local servers: "
      "check, init, run, lag, verify, cutover, rollback");
  cmd->add_option("--target-bindir", options->target_bindir,
                  "PostgreSQL 18 binaries for the target (default: the build of "
                  "tools/build-postgres.sh 18)")
      ->type_name("DIR");
  cmd->add_flag("--same-version", options->same_version,
                "two servers of the system's PostgreSQL instead of an upgrade");
  cmd->add_option("--clients", options->clients, "clients of the write load (default 4)")
      ->check(CLI::Range(1, 32));
  cmd->add_flag("--keep", options->keep, "keep the servers' directories afterwards");
  cmd->callback([&action, options] { action = [options] { return demo_command(*options); }; });
}

}  // namespace pgferry::tools
