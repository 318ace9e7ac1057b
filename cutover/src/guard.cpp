// The cutover guard (see guard.hpp): lifts the fence when the cutover process is gone.
#include "pgferry/cutover/guard.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <spawn.h>
#include <spdlog/spdlog.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <iostream>
#include <optional>
#include <stdexcept>
#include <thread>

#include "pgferry/cutover/fence.hpp"
#include "pgferry/cutover/pgbouncer_config.hpp"
#include "pgferry/replication/core/pg.hpp"
#include "sessions.hpp"
#include "slot_writes.hpp"
#include "switch_command.hpp"

extern char** environ;

namespace pgferry::cutover {

using namespace std::chrono_literals;

namespace {

namespace repl = pgferry::replication;

// What the guard learnt from the cutover's messages.
struct GuardState {
  std::optional<nlohmann::json> history;
  std::optional<FenceSpec> fence;
  std::optional<nlohmann::json> switching;
  pid_t switch_pgid = 0;
  unsigned long long switch_start = 0;
  bool committing = false;
  bool switched = false;
  bool released = false;
  bool done = false;

  void read(const nlohmann::json& message) {
    if (message.contains("history")) history = message["history"];
    if (message.contains("fence")) {
      fence = FenceSpec::from_json(message["fence"]);
      released = false;
    }
    if (message.contains("switching")) switching = message["switching"];
    if (message.contains("switch_pgid")) {
      switch_pgid = message["switch_pgid"].get<pid_t>();
      switch_start = message.value("switch_start", 0ULL);
    }
    if (message.contains("switch_exited")) switch_pgid = 0;
    if (message.contains("committing")) committing = true;
    if (message.contains("switched")) switched = true;
    if (message.contains("released")) released = true;
    if (message.contains("done")) done = true;
  }
};

// What the guard found in the history (see guard.hpp).
struct HistoryFinding {
  bool readable = false;  // the history answered by the deadline
  bool owner = false;     // we hold the cutover's lock: the decision is ours
  std::string state;      // the row's state (owner only)
};

// Takes the cutover's advisory lock on `conn` and reads its row. The lock is free only once
// the dead cutover's session has ended, so an UPDATE it had sent is decided by then (the
// guard ends that session itself if the server still has it after a second). Still taken at
// the deadline: another run (a re-run, which recovers this cutover itself) holds it.
HistoryFinding read_history(const nlohmann::json& history, repl::Connection& conn,
                            Clock::time_point deadline) {
  auto id = history.at("id").get<std::string>();
  bool ended_session = false;
  while (true) {
    try {
      // Named for what a re-run that finds the lock taken says.
      conn = repl::Connection::open(
          history.at("conninfo").get<std::string>(), repl::Side::target,
          {{"connect_timeout", "5"},
           {"application_name", fmt::format("pgferry cutover-guard {}", id)}});
      while (true) {
        auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
        long long wait_ms = std::max<long long>(1, wait.count());
        if (!ended_session) wait_ms = std::min<long long>(wait_ms, 1000);
        conn.exec(fmt::format("SET lock_timeout = {}", wait_ms));
        try {
          conn.exec("SELECT pg_advisory_lock(hashtext($1))",
                    {history.at("lock").get<std::string>()},
                    "waiting for the cutover's session to end");
          break;
        } catch (const repl::PgError& e) {
          if (e.sqlstate() != "55P03") throw;  // lock_not_available: lock_timeout expired
        }
        // The dead cutover's own session (see guard.hpp); retried while it cannot be ended.
        if (!ended_session && history.contains("session_pid")) {
          auto ended = end_session(conn, {history.at("session_pid").get<long>(),
                                          history.at("session_start").get<std::string>()});
          ended_session = ended.has_value();
          if (ended == true) continue;
        }
        if (Clock::now() >= deadline) return {true, false, ""};
      }
      auto row = conn.exec("SELECT state FROM pgferry.cutover_history WHERE id = $1", {id},
                           "reading the cutover's history row");
      return {true, true, row.rows() == 1 ? std::string(row.get(0, 0)) : std::string()};
    } catch (const std::exception& e) {
      if (Clock::now() > deadline) {
        spdlog::error("cutover-guard: cannot read the history: {}", e.what());
        return {};
      }
      spdlog::warn("cutover-guard: reading the history: retrying: {}", e.what());
      std::this_thread::sleep_for(200ms);
    }
  }
}

// Where the guard sends traffic before it lifts the fence.
enum class Plan {
  stay,               // nothing was switched, or the switch is committed
  back,               // undo the switch (the history cannot say more)
  back_else_forward,  // the row says `switching`: undo, and if that fails, finish it
};

// Points traffic at one side: the PgBouncer entry (`config_text`, retried for up to
// `budget`) and the switch command with `env` (once, as the cutover runs it, within its own
// `budget`), both by `deadline`. Returns whether both succeeded; every failure is logged.
bool point_traffic(const nlohmann::json& switching, const char* config_text, const char* env_key,
                   const char* towards, std::chrono::milliseconds budget,
                   Clock::time_point deadline) {
  bool ok = true;
  if (const auto& config = switching.value("config", nlohmann::json()); !config.is_null()) {
    auto config_deadline = std::min(deadline, Clock::now() + budget);
    while (true) {
      try {
        write_pgbouncer_config(config["path"].get<std::string>(),
                               config[config_text].get<std::string>());
        PgBouncerAdmin(config["admin"].get<std::string>()).reload();
        spdlog::warn("cutover-guard: PgBouncer config points at the {} (reloaded)", towards);
        break;
      } catch (const std::exception& e) {
        if (Clock::now() > config_deadline) {
          spdlog::error("cutover-guard: pointing PgBouncer at the {}: {}", towards, e.what());
          ok = false;
          break;
        }
        spdlog::warn("cutover-guard: pointing PgBouncer at the {}: retrying: {}", towards,
                     e.what());
        std::this_thread::sleep_for(200ms);
      }
    }
  }
  if (const auto& command = switching.value("command", nlohmann::json()); !command.is_null()) {
    std::vector<std::pair<std::string, std::string>> env;
    for (const auto& [key, value] : switching[env_key].items()) {
      env.emplace_back(key, value.get<std::string>());
    }
    try {
      int status = run_switch_command(command.get<std::string>(), env,
                                      std::min(deadline, Clock::now() + budget));
      if (status != 0) {
        spdlog::error("cutover-guard: --switch-command towards the {} exited with status {}",
                      towards, status);
        ok = false;
      } else {
        spdlog::warn("cutover-guard: --switch-command ran towards the {}", towards);
      }
    } catch (const std::exception& e) {
      spdlog::error("cutover-guard: --switch-command towards the {}: {}", towards, e.what());
      ok = false;
    }
  }
  return ok;
}

// Whether the new primary may have taken writes since the new direction's start: its slot
// read without consuming it, by `deadline`; unreadable counts as "may have" (the guard's
// host failing to reach it says nothing about the clients).
bool new_primary_may_have_writes(const nlohmann::json& switching, Clock::time_point deadline) {
  try {
    const auto& side = switching.at("new_side");
    auto writes = writes_within(
        side.at("conninfo").get<std::string>(), side.at("slot").get<std::string>(),
        side.at("publication").get<std::string>(),
        repl::Lsn::from_string(side.at("after").get<std::string>(), "new slot"), deadline);
    return writes.value_or(1) > 0;
  } catch (const std::exception& e) {
    spdlog::error("cutover-guard: which writes the new primary took: {}", e.what());
    return true;
  }
}

// The `switching` row settled, on the connection that holds the cutover's lock.
void settle(repl::Connection& conn, const nlohmann::json& history, std::string_view state) {
  try {
    conn.exec(
        "UPDATE pgferry.cutover_history SET state = $2, reason = $3 WHERE id = $1 AND state = "
        "'switching'",
        {history.at("id").get<std::string>(), state,
         state == "switched" ? "the guard finished the switch (the way back failed)"
                             : "the guard switched back"},
        "recording where the guard sent traffic");
    spdlog::warn("cutover-guard: history row marked {}", state);
  } catch (const std::exception& e) {
    // Left `switching`: a re-run decides from where writes went (both slots are kept).
    spdlog::error("cutover-guard: could not mark the history row {}: {}", state, e.what());
  }
}

}  // namespace

int run_guard() {
  GuardState state;
  std::string line;
  while (std::getline(std::cin, line)) {
    if (line.empty()) continue;
    try {
      state.read(nlohmann::json::parse(line));
    } catch (const std::exception& e) {
      spdlog::error("cutover-guard: unreadable message: {}", e.what());
    }
  }
  if (state.done || !state.fence || state.released) return 0;

  spdlog::warn("cutover-guard: the cutover ended while writes were fenced: lifting the fence");
  // The whole takes at most the cutover's --timeout (6 switch budgets), and lifting the fence
  // gets 5 s more whatever happened before.
  auto budget = std::chrono::milliseconds(
      state.switching ? state.switching->value("back_budget_ms", 10000) : 10000);
  auto deadline = Clock::now() + 6 * budget;
  repl::Connection lock_holder;  // holds the cutover's lock while we act
  bool switch_begun = state.switching && !state.switched;
  Plan plan = switch_begun ? Plan::back : Plan::stay;
  if (state.history) {
    auto found = read_history(*state.history, lock_holder, Clock::now() + 5s);
    if (found.readable && !found.owner) {
      spdlog::warn(
          "cutover-guard: another run of the cutover holds its lock: it recovers "
          "this cutover (switch back, fence)");
      return 0;
    }
    if (found.owner) {
      spdlog::warn("cutover-guard: cutover {} is {} in the history",
                   (*state.history)["id"].get<std::string>(), found.state);
      // `running`: nothing switched yet (undoing is harmless); `switching`: undone, or
      // finished when undoing fails, so that the row says where traffic went; `switched`,
      // `completed`: committed; `aborted`: the cutover's abort already switched back.
      if (!switch_begun || (found.state != "running" && found.state != "switching")) {
        plan = Plan::stay;
      } else if (found.state == "switching") {
        plan = Plan::back_else_forward;
      }
    } else if (switch_begun && state.committing) {
      // The switch had completed and its commit was under way: it may be committed, and
      // then a re-run finishes it; traffic stays where it is.
      spdlog::error(
          "cutover-guard: the history is unreachable and the switch had completed: traffic "
          "stays on the new primary");
      plan = Plan::stay;
    } else if (switch_begun) {
      spdlog::error("cutover-guard: the history is unreachable: switching back");
    }
  }
  if (plan != Plan::stay && state.switch_pgid > 0) {
    // The forward switch command still runs: it must not finish after the way back.
    if (kill_process_group(state.switch_pgid, state.switch_start)) {
      spdlog::warn("cutover-guard: killed the switch command's process group {}",
                   state.switch_pgid);
    }
  }
  if (plan != Plan::stay) {
    const auto& switching = *state.switching;
    // With the row `switching`, writes the new primary took (the switch command may have
    // sent clients there) must not be left behind: then the switch is finished instead.
    auto peek_deadline = [&] { return std::min(deadline, Clock::now() + budget); };
    bool new_wrote =
        plan == Plan::back_else_forward && new_primary_may_have_writes(switching, peek_deadline());
    bool back = !new_wrote &&
                point_traffic(switching, "original", "back_env", "old primary", budget, deadline);
    if (back && plan == Plan::back_else_forward &&
        new_primary_may_have_writes(switching, peek_deadline())) {
      spdlog::error("cutover-guard: the new primary took writes while traffic was pointed back");
      back = false;
    }
    if (plan == Plan::back_else_forward) {
      if (back) {
        settle(lock_holder, *state.history, "running");
      } else if (point_traffic(switching, "switched", "forward_env", "new primary", budget,
                               deadline)) {
        // Everything before the fence is on the new primary and its slot has recorded every
        // write since: finishing the switch loses nothing.
        settle(lock_holder, *state.history, "switched");
      } else {
        spdlog::error(
            "cutover-guard: traffic could not be pointed back, nor forward: the row stays "
            "`switching` and both slots are kept; a re-run of the cutover settles it from "
            "where writes went");
      }
    }
  }
  // Writes must not stay fenced past the budget, whatever happened above.
  deadline = std::max(deadline, Clock::now()) + 5s;
  while (true) {
    try {
      lift_fence(*state.fence);
      spdlog::warn("cutover-guard: fence lifted ({})", to_string(state.fence->kind));
      return 0;
    } catch (const std::exception& e) {
      if (Clock::now() > deadline) {
        spdlog::error("cutover-guard: could not lift the fence: {}", e.what());
        return 1;
      }
      spdlog::warn("cutover-guard: lifting the fence: retrying: {}", e.what());
      std::this_thread::sleep_for(200ms);
    }
  }
}

GuardLink::GuardLink(const std::vector<std::string>& argv) {
  if (argv.empty()) return;
  ::signal(SIGPIPE, SIG_IGN);
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    throw std::runtime_error(fmt::format("pipe for the cutover guard: {}", std::strerror(errno)));
  }
  std::vector<std::string> args = argv;
  std::vector<char*> raw;
  for (auto& arg : args) raw.push_back(arg.data());
  raw.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[0], 0);
  posix_spawnattr_t attributes;
  posix_spawnattr_init(&attributes);
  posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETSID);
  int rc = posix_spawn(&pid_, raw[0], &actions, &attributes, raw.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attributes);
  ::close(fds[0]);
  if (rc != 0) {
    ::close(fds[1]);
    pid_ = 0;
    throw std::runtime_error(
        fmt::format("cannot start the cutover guard {}: {}", argv[0], std::strerror(rc)));
  }
  fd_ = fds[1];
}

// Going away without finish() (an exception, or the fence still on) only closes the pipe:
// the guard then lifts whatever is still fenced.
GuardLink::~GuardLink() {
  if (fd_ >= 0) ::close(fd_);
}

void GuardLink::send(const nlohmann::json& message) {
  if (fd_ < 0) return;
  std::string line = message.dump() + "\n";
  std::size_t written = 0;
  while (written < line.size()) {
    ssize_t n = ::write(fd_, line.data() + written, line.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      spdlog::warn("cutover guard is gone: {}", std::strerror(errno));
      return;
    }
    written += static_cast<std::size_t>(n);
  }
}

void GuardLink::finish() {
  if (fd_ >= 0) {
    send({{"done", true}});
    ::close(fd_);
    fd_ = -1;
  }
  if (pid_ > 0) {
    int status = 0;
    for (int i = 0; i < 500; ++i) {
      if (::waitpid(pid_, &status, WNOHANG) != 0) {
        pid_ = 0;
        return;
      }
      std::this_thread::sleep_for(10ms);
    }
    spdlog::warn("cutover guard pid={} did not exit; leaving it", pid_);
    pid_ = 0;
  }
}

}  // namespace pgferry::cutover
