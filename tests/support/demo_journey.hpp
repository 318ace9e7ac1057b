// `pgferry demo` run as a user runs it, for the demo tests: in a fresh TMPDIR (so that what it
// leaves behind can be seen), its output checked for each step and for the proof.
#pragma once

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>
#include <string>
#include <vector>

#include "support/harness.hpp"

namespace pgferry::testing {

// A fresh directory that the demo's children get as TMPDIR (readable by the postgres user, who
// runs the servers), and whether anything is left in it.
class DemoTmpDir {
 public:
  DemoTmpDir() {
    char pattern[] = "/tmp/pgferry-test-demo-XXXXXX";
    path_ = ::mkdtemp(pattern);
    std::filesystem::permissions(path_, std::filesystem::perms::all);
    if (const char* old = std::getenv("TMPDIR")) old_ = old;
    ::setenv("TMPDIR", path_.c_str(), 1);
  }
  ~DemoTmpDir() {
    if (old_.empty()) {
      ::unsetenv("TMPDIR");
    } else {
      ::setenv("TMPDIR", old_.c_str(), 1);
    }
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  // The entries left in the directory.
  std::vector<std::string> left() const {
    std::vector<std::string> names;
    for (const auto& entry : std::filesystem::directory_iterator(path_)) {
      names.push_back(entry.path().filename().string());
    }
    return names;
  }

 private:
  std::string path_;
  std::string old_;
};

inline std::size_t count_of(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

// Runs `pgferry demo options...` to the end: exit 0, each step's command ran, both switches
// were proven (no failed transaction, no acknowledged commit missing or doubled), PgBouncer
// sent the load to `target_version` after the cutover, and nothing is left in TMPDIR.
inline void expect_demo_journey(const std::vector<std::string>& options,
                                const std::string& target_version) {
  DemoTmpDir tmp;
  std::vector<std::string> args = {"demo"};
  args.insert(args.end(), options.begin(), options.end());
  auto demo = run_pgferry(args);
  ASSERT_EQ(demo.exit_code, 0) << demo.output;
  for (const char* step : {"$ pgferry check --json", "no primary key", "$ pgferry init --schema",
                           "$ pgferry run &", "$ pgferry lag", "6 tables, 0 differ",
                           "$ pgferry cutover", "$ pgferry rollback", "agent exited with 0"}) {
    EXPECT_NE(demo.output.find(step), std::string::npos) << step << "\n" << demo.output;
  }
  EXPECT_EQ(count_of(demo.output, ": done\n"), 2u) << demo.output;  // cutover and rollback
  EXPECT_EQ(count_of(demo.output,
                     "failed transactions: 0; acknowledged commits missing or "
                     "doubled on the"),
            2u)
      << demo.output;
  EXPECT_NE(demo.output.find("through PgBouncer: target, PostgreSQL " + target_version),
            std::string::npos)
      << demo.output;
  EXPECT_NE(demo.output.find("through PgBouncer: source, PostgreSQL 15."), std::string::npos)
      << demo.output;
  EXPECT_EQ(tmp.left(), std::vector<std::string>{});
}

}  // namespace pgferry::testing
