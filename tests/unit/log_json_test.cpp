// The JSON log format: one object a line with time (UTC), level, msg and the key=value
// fields of the message's event part.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>

#include "pgferry/replication/core/log.hpp"

namespace repl = pgferry::replication;

TEST(LogJson, FieldsOfTheEventPart) {
  auto fields = repl::log_fields(
      "run slot=agent lsn=0/1516510 retry reason=\"administrator shutdown\" in_ms=148: target "
      "while applying INSERT rel=public.t key=(1)");
  std::vector<std::pair<std::string, std::string>> expected = {{"slot", "agent"},
                                                               {"lsn", "0/1516510"},
                                                               {"reason", "administrator shutdown"},
                                                               {"in_ms", "148"}};
  EXPECT_EQ(fields, expected);
  EXPECT_TRUE(repl::log_fields("no fields here").empty());
  EXPECT_EQ(repl::log_fields("a=1 a=2 b=x:y").size(), 2u);
  EXPECT_EQ(repl::log_fields("b=x:y")[0].second, "x:y");
  EXPECT_EQ(repl::log_fields("k=\"unterminated")[0].second, "unterminated");
}

TEST(LogJson, OneObjectPerLine) {
  // The logger writes to stderr: point fd 2 at a file for the test.
  std::string path = "/tmp/pgferry-log-json-" + std::to_string(::getpid());
  int file = ::open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY, 0600);
  ASSERT_GE(file, 0);
  int saved = ::dup(2);
  ::dup2(file, 2);
  repl::setup_logging(repl::LogFormat::json, "info");
  spdlog::info("run slot={} lsn={} stopping reason=\"{}\": line one\nline \"two\"", "a", "0/1",
               "missing table");
  spdlog::debug("not at info");
  spdlog::default_logger()->flush();
  ::dup2(saved, 2);
  ::close(saved);
  ::close(file);
  std::ifstream in(path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ::unlink(path.c_str());
  ASSERT_EQ(std::count(text.begin(), text.end(), '\n'), 1) << text;
  auto line = nlohmann::json::parse(text);
  EXPECT_EQ(line["level"], "info");
  EXPECT_EQ(line["msg"],
            "run slot=a lsn=0/1 stopping reason=\"missing table\": line one\nline \"two\"");
  EXPECT_EQ(line["fields"]["slot"], "a");
  EXPECT_EQ(line["fields"]["lsn"], "0/1");
  EXPECT_EQ(line["fields"]["reason"], "missing table");
  std::string time = line["time"];
  EXPECT_EQ(time.size(), std::string("2026-01-01T00:00:00.000Z").size()) << time;
  EXPECT_EQ(time.back(), 'Z');
}
