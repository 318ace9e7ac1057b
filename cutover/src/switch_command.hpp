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

// The start time of process `pid` (/proc/PID/stat, clock ticks since boot); 0 when there is
// no such process. With the pid it names one process: a pid can be reused, the pair not.
unsigned long long process_start_time(pid_t pid);

// Kills process group `pgid` (SIGKILL) unless its leader's pid now names another process
// (started at another time than `leader_start`): a group id is not reused while the group
// has members, but the pid of a leader that exited with its group is. Returns whether it
// signalled.
bool kill_process_group(pid_t pgid, unsigned long long leader_start);

}  // namespace pgferry::cutover
