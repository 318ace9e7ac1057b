// Running --switch-command: /bin/sh -c CMD in its own process group, with the new primary
// in the environment, killed (the whole group) when it runs past its deadline.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace pgferry::cutover {

// Returns the exit status (128+signal when killed by one); throws CutoverAborted when it
// runs past `deadline` (the group is killed first). `started` is told the process group id
// (the guard kills the group when the cutover dies while it runs).
int run_switch_command(const std::string& command,
                       const std::vector<std::pair<std::string, std::string>>& env,
                       std::chrono::steady_clock::time_point deadline,
                       const std::function<void(pid_t)>& started = nullptr);

}  // namespace pgferry::cutover
