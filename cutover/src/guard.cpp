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

extern char** environ;

namespace pgferry::cutover {

using namespace std::chrono_literals;

int run_guard() {
  std::optional<FenceSpec> fence;
  std::optional<nlohmann::json> config;
  bool switched = false;
  bool released = false;
  bool done = false;
  std::string line;
  while (std::getline(std::cin, line)) {
    if (line.empty()) continue;
    try {
      auto message = nlohmann::json::parse(line);
      if (message.contains("fence")) {
        fence = FenceSpec::from_json(message["fence"]);
        released = false;
      }
      if (message.contains("config")) config = message["config"];
      if (message.contains("switched")) switched = true;
      if (message.contains("released")) released = true;
      if (message.contains("done")) done = true;
    } catch (const std::exception& e) {
      spdlog::error("cutover-guard: unreadable message: {}", e.what());
    }
  }
  if (done || !fence || released) return 0;

  spdlog::warn("cutover-guard: the cutover ended while writes were fenced: lifting the fence");
  auto deadline = Clock::now() + 60s;
  bool config_restored = !config || switched;
  while (true) {
    try {
      if (!config_restored) {
        restore_pgbouncer_config((*config)["path"].get<std::string>(),
                                 (*config)["original"].get<std::string>());
        PgBouncerAdmin((*config)["admin"].get<std::string>()).reload();
        config_restored = true;
        spdlog::warn("cutover-guard: PgBouncer config restored and reloaded");
      }
      lift_fence(*fence);
      spdlog::warn("cutover-guard: fence lifted ({})", to_string(fence->kind));
      return 0;
    } catch (const std::exception& e) {
      if (Clock::now() > deadline) {
        spdlog::error("cutover-guard: could not lift the fence: {}", e.what());
        return 1;
      }
      spdlog::warn("cutover-guard: retrying: {}", e.what());
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
