// Running --switch-command: /bin/sh -c CMD in its own process group, with the new primary
// in the environment, killed (the whole group) when it runs past its deadline.
#pragma once

#include <chrono>
#include <string>
#include <utility>
#include <vector>

namespace pgferry::cutover {

// Returns the exit status (128+signal when killed by one); throws CutoverAborted when it
// runs past `deadline` (the group is killed first).
int run_switch_command(const std::string& command,
                       const std::vector<std::pair<std::string, std::string>>& env,
                       std::chrono::steady_clock::time_point deadline);

}  // namespace pgferry::cutover
