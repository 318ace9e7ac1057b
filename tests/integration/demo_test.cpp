// `pgferry demo --same-version` (two PostgreSQL 15 servers): the whole journey ends with exit 0,
// both switches proven from the load's record, and nothing left behind; SIGINT in the middle
// of it (to the demo's whole process group, as Ctrl-C on a terminal sends it) stops
// everything, exits 130 and leaves nothing behind either. (The upgrade to 18 is
// demo_15_18_crossversion_test.)
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iterator>

#include "support/demo_journey.hpp"

using namespace pgferry::testing;

TEST(Demo, SameVersionJourney) {
  expect_demo_journey({"--same-version"}, "15.");
}

TEST(Demo, CtrlCStopsAndRemovesEverything) {
  DemoTmpDir tmp;
  std::string log = fmt::format("/tmp/pgferry-demo-test-{}.log", ::getpid());
  std::remove(log.c_str());
  // setsid: the demo leads its own process group, as a shell's foreground job does.
  pid_t pid =
      pgferry::tools::spawn_process({"setsid", PGFERRY_BINARY, "demo", "--same-version"}, log);
  auto text = [&]() -> std::string {
    std::ifstream in(log);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  };
  // In the middle: the agent runs, the load writes through PgBouncer.
  bool reached = wait_until([&] { return text().find("[8] Watch the lag") != std::string::npos; },
                            std::chrono::seconds(180));
  if (!reached) ::kill(pid, SIGKILL);
  ASSERT_TRUE(reached) << text();
  ASSERT_EQ(::kill(-pid, SIGINT), 0);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << text();
  EXPECT_EQ(WEXITSTATUS(status), 130) << text();
  EXPECT_NE(text().find("interrupted (Interrupt)"), std::string::npos) << text();
  // The servers and PgBouncer are gone with their directories.
  EXPECT_EQ(tmp.left(), std::vector<std::string>{}) << text();
  std::remove(log.c_str());
}
