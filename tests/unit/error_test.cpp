// Exit codes of the CLI contract, from the exception that ended a command.
#include "pgferry/replication/core/error.hpp"

#include <gtest/gtest.h>

namespace repl = pgferry::replication;
using repl::ExitCode;

TEST(Error, ExitCodes) {
  using repl::Side;
  EXPECT_EQ(repl::exit_code_for(repl::ConnectionError("x", "08006", Side::source)),
            ExitCode::source_unreachable);
  EXPECT_EQ(repl::exit_code_for(repl::ConnectionError("x", "08006", Side::target)),
            ExitCode::target_unreachable);
  EXPECT_EQ(repl::exit_code_for(repl::SqlError("x", "42P01", Side::target)), ExitCode::error);
  EXPECT_EQ(repl::exit_code_for(repl::ConfigError("x")), ExitCode::usage);
  EXPECT_EQ(repl::exit_code_for(repl::CheckFailed("x")), ExitCode::check_failed);
  EXPECT_EQ(repl::exit_code_for(repl::TimedOut("x")), ExitCode::timed_out);
  EXPECT_EQ(repl::exit_code_for(repl::CutoverAborted("x")), ExitCode::aborted);
  EXPECT_EQ(repl::exit_code_for(std::runtime_error("x")), ExitCode::error);
  EXPECT_EQ(repl::exit_code_for(repl::ProtocolError("x", 3, 'I')), ExitCode::error);
}
