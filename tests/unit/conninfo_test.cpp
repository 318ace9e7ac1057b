// Conninfo validation and redaction: passwords never come back out.
#include "pgferry/replication/core/conninfo.hpp"

#include <gtest/gtest.h>

#include "pgferry/replication/core/error.hpp"

namespace repl = pgferry::replication;

TEST(Conninfo, RedactsPasswordInKeywordValueString) {
  auto out = repl::redact_conninfo("host=db1 port=5433 user=ferry password=s3cr3t dbname=app");
  EXPECT_EQ(out.find("s3cr3t"), std::string::npos);
  EXPECT_NE(out.find("password=********"), std::string::npos);
  EXPECT_NE(out.find("host=db1"), std::string::npos);
  EXPECT_NE(out.find("port=5433"), std::string::npos);
}

TEST(Conninfo, RedactsPasswordInUri) {
  auto out = repl::redact_conninfo("postgresql://ferry:hunter2@db1:5433/app?sslpassword=k3y");
  EXPECT_EQ(out.find("hunter2"), std::string::npos);
  EXPECT_EQ(out.find("k3y"), std::string::npos);
  EXPECT_NE(out.find("user=ferry"), std::string::npos);
  EXPECT_NE(out.find("dbname=app"), std::string::npos);
}

TEST(Conninfo, QuotedPasswordWithSpaces) {
  auto out = repl::redact_conninfo("host=x password='a b\\'c'");
  EXPECT_EQ(out.find("a b"), std::string::npos);
  EXPECT_EQ(out.find("'c"), std::string::npos);
}

TEST(Conninfo, MalformedIsConfigErrorWithoutEchoingSecrets) {
  for (const char* bad : {"host=x password=se cret", "host=x password='unclosedpw",
                          "nosuchkeyword=1 password=hidden", "postgresql://u:pw@h:notaport/db%"}) {
    try {
      repl::validate_conninfo(bad, "--source");
      ADD_FAILURE() << "accepted: " << bad;
    } catch (const repl::ConfigError& e) {
      std::string what = e.what();
      EXPECT_NE(what.find("--source"), std::string::npos) << what;
      EXPECT_EQ(what.find("cret"), std::string::npos) << what;
      EXPECT_EQ(what.find("hidden"), std::string::npos) << what;
      EXPECT_EQ(what.find("unclosedpw"), std::string::npos) << what;
    }
    EXPECT_EQ(repl::redact_conninfo(bad), "<malformed conninfo>");
  }
}

TEST(Conninfo, WithOverridesAndValue) {
  auto out = repl::conninfo_with("host=h dbname=app replication=false",
                                 {{"replication", "database"}, {"application_name", "a b"}});
  EXPECT_EQ(repl::conninfo_value(out, "replication"), "database");
  EXPECT_EQ(repl::conninfo_value(out, "application_name"), "a b");
  EXPECT_EQ(repl::conninfo_value(out, "dbname"), "app");
  EXPECT_EQ(repl::conninfo_value(out, "host"), "h");
  EXPECT_EQ(repl::conninfo_value("postgresql://u@h/db", "dbname"), "db");
  EXPECT_EQ(repl::conninfo_value("garbage='", "dbname"), "");
}
