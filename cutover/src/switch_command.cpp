// --switch-command: see switch_command.hpp.
#include "switch_command.hpp"

#include <fmt/format.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include "pgferry/replication/core/error.hpp"

extern char** environ;

namespace pgferry::cutover {

int run_switch_command(const std::string& command,
                       const std::vector<std::pair<std::string, std::string>>& env,
                       std::chrono::steady_clock::time_point deadline,
                       const std::function<void(pid_t)>& started) {
  std::vector<std::string> entries;
  for (char** e = environ; *e; ++e) {
    std::string_view entry(*e);
    bool overridden = false;
    for (const auto& [key, value] : env) {
      overridden = overridden || entry.substr(0, key.size() + 1) == key + "=";
    }
    if (!overridden) entries.emplace_back(entry);
  }
  for (const auto& [key, value] : env) entries.push_back(key + "=" + value);
  std::vector<char*> envp;
  for (auto& entry : entries) envp.push_back(entry.data());
  envp.push_back(nullptr);

  std::string shell = "/bin/sh", flag = "-c", text = command;
  char* argv[] = {shell.data(), flag.data(), text.data(), nullptr};
  posix_spawnattr_t attributes;
  posix_spawnattr_init(&attributes);
  posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETPGROUP);
  posix_spawnattr_setpgroup(&attributes, 0);
  pid_t pid = 0;
  int rc = posix_spawn(&pid, argv[0], nullptr, &attributes, argv, envp.data());
  posix_spawnattr_destroy(&attributes);
  if (rc != 0) {
    throw replication::CutoverAborted(
        fmt::format("--switch-command could not start: {}", std::strerror(rc)));
  }
  if (started) started(pid);
  while (true) {
    int status = 0;
    pid_t done = ::waitpid(pid, &status, WNOHANG);
    if (done == pid) {
      if (WIFEXITED(status)) return WEXITSTATUS(status);
      return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    }
    if (done < 0 && errno != EINTR) {
      throw replication::CutoverAborted(
          fmt::format("--switch-command: waitpid: {}", std::strerror(errno)));
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      ::kill(-pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      throw replication::CutoverAborted("--switch-command ran past its budget and was killed");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

unsigned long long process_start_time(pid_t pid) {
  std::ifstream file(fmt::format("/proc/{}/stat", pid));
  std::string stat((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  // pid (comm) state ppid ...: comm may hold spaces and parentheses, so count from the last
  // ')'; the start time is field 22, the 20th after it.
  auto close = stat.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream fields(stat.substr(close + 1));
  std::string field;
  for (int i = 0; i < 19 && fields >> field; ++i) {
  }
  unsigned long long start = 0;
  fields >> start;
  return start;
}

bool kill_process_group(pid_t pgid, unsigned long long leader_start) {
  auto now = process_start_time(pgid);
  if (now != 0 && now != leader_start) return false;  // the pid is another process's now
  return ::kill(-pgid, SIGKILL) == 0;
}

}  // namespace pgferry::cutover
