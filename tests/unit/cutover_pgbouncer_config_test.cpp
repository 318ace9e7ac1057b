// The [databases] rewrite of the traffic switch: only the named entry changes, only its
// host, port and dbname; other keywords, comments, other sections and entries stay; quoted
// values; a missing entry is a ConfigError naming it. FenceSpec round-trips through JSON
// (the guard protocol).
#include <gtest/gtest.h>

#include "pgferry/cutover/fence.hpp"
#include "pgferry/cutover/pgbouncer_config.hpp"
#include "pgferry/replication/core/error.hpp"

namespace cut = pgferry::cutover;
namespace repl = pgferry::replication;

TEST(PgBouncerConfig, RewritesOnlyTheNamedEntry) {
  const std::string config =
      "; comment\n"
      "[databases]\n"
      "appdb = host=old.example port=5432 dbname=app user=web pool_size=20\n"
      "other = host=old.example port=5432 dbname=other\n"
      ";appdb = host=commented\n"
      "\n"
      "[pgbouncer]\n"
      "appdb = not a database entry\n"
      "listen_port = 6432\n";
  auto rewritten =
      cut::rewrite_database_entry(config, "appdb", "host=new.example port=5433 dbname=app2");
  EXPECT_EQ(rewritten,
            "; comment\n"
            "[databases]\n"
            "appdb = host=new.example port=5433 dbname=app2 user=web pool_size=20\n"
            "other = host=old.example port=5432 dbname=other\n"
            ";appdb = host=commented\n"
            "\n"
            "[pgbouncer]\n"
            "appdb = not a database entry\n"
            "listen_port = 6432\n");
}

TEST(PgBouncerConfig, AddsMissingKeywordsAndQuotesValues) {
  auto rewritten = cut::rewrite_database_entry("[Databases]\nappdb = dbname='my db' user=x",
                                               "appdb", "host='/tmp/sock dir' port=5 dbname='a b'");
  EXPECT_EQ(rewritten, "[Databases]\nappdb = dbname='a b' user=x host='/tmp/sock dir' port=5");
}

TEST(PgBouncerConfig, MissingEntryIsAConfigError) {
  try {
    cut::rewrite_database_entry("[databases]\nother = host=x\n", "appdb", "host=y");
    FAIL() << "no error";
  } catch (const repl::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("appdb"), std::string::npos) << e.what();
  }
}

TEST(FenceSpec, RoundTripsThroughJson) {
  cut::FenceSpec spec;
  spec.kind = cut::FenceKind::read_only;
  spec.pgbouncer_conninfo = "host=a";
  spec.pgbouncer_database = "db";
  spec.server_conninfo = "host=b";
  spec.terminate_blockers = true;
  auto back = cut::FenceSpec::from_json(spec.to_json());
  EXPECT_EQ(back.kind, spec.kind);
  EXPECT_EQ(back.pgbouncer_conninfo, spec.pgbouncer_conninfo);
  EXPECT_EQ(back.pgbouncer_database, spec.pgbouncer_database);
  EXPECT_EQ(back.server_conninfo, spec.server_conninfo);
  EXPECT_TRUE(back.terminate_blockers);
  EXPECT_THROW(cut::parse_fence_kind("pause"), repl::ConfigError);
}
