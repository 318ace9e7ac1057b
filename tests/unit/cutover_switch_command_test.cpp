// --switch-command's process handling: the exit status and the environment reach the caller
// and the command; a process's start time tells a reused pid from the same process, so the
// guard kills a switch command's group only while its leader is that process.
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>

#include "../../cutover/src/switch_command.hpp"

namespace cut = pgferry::cutover;
using namespace std::chrono_literals;

namespace {

// `sleep 30` as the leader of its own process group, as run_switch_command starts it.
pid_t spawn_group_leader() {
  std::string shell = "/bin/sh", flag = "-c", text = "exec sleep 30";
  char* argv[] = {shell.data(), flag.data(), text.data(), nullptr};
  posix_spawnattr_t attributes;
  posix_spawnattr_init(&attributes);
  posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETPGROUP);
  posix_spawnattr_setpgroup(&attributes, 0);
  pid_t pid = 0;
  EXPECT_EQ(posix_spawn(&pid, argv[0], nullptr, &attributes, argv, nullptr), 0);
  posix_spawnattr_destroy(&attributes);
  return pid;
}

}  // namespace

TEST(SwitchCommand, ExitStatusAndEnvironment) {
  auto deadline = std::chrono::steady_clock::now() + 10s;
  EXPECT_EQ(cut::run_switch_command("exit 3", {}, deadline), 3);
  EXPECT_EQ(cut::run_switch_command("test \"$PGFERRY_NEW_PORT\" = 6543",
                                    {{"PGFERRY_NEW_PORT", "6543"}}, deadline),
            0);
  pid_t seen = 0;
  EXPECT_EQ(cut::run_switch_command("true", {}, deadline, [&](pid_t pid) { seen = pid; }), 0);
  EXPECT_GT(seen, 0);
}

TEST(SwitchCommand, StartTimeNamesOneProcess) {
  EXPECT_GT(cut::process_start_time(::getpid()), 0u);
  EXPECT_EQ(cut::process_start_time(::getpid()), cut::process_start_time(::getpid()));
  EXPECT_EQ(cut::process_start_time(0x3fffffff), 0u);  // above any pid_max
}

TEST(SwitchCommand, KillsTheGroupOnlyWhileItsLeaderIsTheSameProcess) {
  pid_t leader = spawn_group_leader();
  ASSERT_GT(leader, 0);
  auto start = cut::process_start_time(leader);
  ASSERT_GT(start, 0u);
  // Another start time: the pid would be another process's; it is left alone.
  EXPECT_FALSE(cut::kill_process_group(leader, start + 1));
  EXPECT_EQ(::kill(leader, 0), 0);
  EXPECT_TRUE(cut::kill_process_group(leader, start));
  int status = 0;
  ASSERT_EQ(::waitpid(leader, &status, 0), leader);
  ASSERT_TRUE(WIFSIGNALED(status));
  EXPECT_EQ(WTERMSIG(status), SIGKILL);
}
