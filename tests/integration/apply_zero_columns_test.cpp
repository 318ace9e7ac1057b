// Tables without columns (CREATE TABLE t ()) exist: the initial copy carries their rows
// (COPY with no column list), replicated inserts go as INSERT ... DEFAULT VALUES (also a
// run long enough for COPY), and under REPLICA IDENTITY FULL each replicated delete
// removes one row, as the server's apply worker does. Row counts end equal.
#include <fmt/format.h>

#include "support/harness.hpp"

namespace repl = pgferry::replication;
using namespace pgferry::testing;

namespace {

const char* kSchema = R"sql(
  CREATE TABLE nothing ();
  ALTER TABLE nothing REPLICA IDENTITY FULL;
  CREATE TABLE dropped (gone int);
  ALTER TABLE dropped DROP COLUMN gone;
  ALTER TABLE dropped REPLICA IDENTITY FULL;
)sql";

}  // namespace

class ApplyZeroColumns : public ClusterPairTest {};

TEST_F(ApplyZeroColumns, InsertsAndDeletesOfRowsWithoutColumns) {
  auto src = connect(source());
  auto dst = connect(target());
  src.exec(kSchema);
  dst.exec(kSchema);
  src.exec("INSERT INTO nothing SELECT FROM generate_series(1, 5)");
  src.exec("INSERT INTO dropped SELECT FROM generate_series(1, 3)");
  PgferryPair pgferry{source().conninfo(), target().conninfo(), "zero"};
  auto check = pgferry.run({"check"});
  EXPECT_EQ(check.exit_code, 0) << check.output;
  auto init = pgferry.run({"init"});
  ASSERT_EQ(init.exit_code, 0) << init.output;
  EXPECT_EQ(query_value(dst, "SELECT count(*) FROM nothing"), "5");
  EXPECT_EQ(query_value(dst, "SELECT count(*) FROM dropped"), "3");

  src.exec("INSERT INTO nothing DEFAULT VALUES");
  src.exec("INSERT INTO nothing SELECT FROM generate_series(1, 40)");  // a run past COPY size
  src.exec("INSERT INTO dropped SELECT FROM generate_series(1, 2)");
  for (int i = 0; i < 4; ++i) {
    src.exec("DELETE FROM nothing WHERE ctid = (SELECT min(ctid) FROM nothing)");
  }
  src.exec("DELETE FROM dropped WHERE ctid = (SELECT min(ctid) FROM dropped)");
  // Several in one statement: one replicated delete (and one target row) each.
  src.exec("DELETE FROM nothing WHERE ctid IN (SELECT ctid FROM nothing LIMIT 10)");
  std::string until = query_value(src, "SELECT pg_current_wal_lsn()::text");
  auto run = pgferry.run({"run", "--until", until, "--json"});
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_EQ(query_value(src, "SELECT count(*) FROM nothing"), "32");
  EXPECT_EQ(query_value(dst, "SELECT count(*) FROM nothing"), "32");
  EXPECT_EQ(query_value(src, "SELECT count(*) FROM dropped"), "4");
  EXPECT_EQ(query_value(dst, "SELECT count(*) FROM dropped"), "4");
  EXPECT_EQ(pgferry.run({"cleanup"}).exit_code, 0);
}
