// Foreign keys with actions on the target: the source deletes parents and changes their
// keys, PostgreSQL cascades (CASCADE, SET NULL) to the children there, and the stream
// carries the children's changes too. The apply sessions run with
// session_replication_role = replica, so the target does not cascade a second time: the
// copy (`init`, which loads children and parents in parallel) and `run --until` finish, and
// every table equals the source's.
#include <fmt/format.h>

#include "support/harness.hpp"

namespace repl = pgferry::replication;
using namespace pgferry::testing;

namespace {

const char* kSchema = R"sql(
  CREATE TABLE parent (id int PRIMARY KEY, name text);
  CREATE TABLE child_cascade (id int PRIMARY KEY,
    parent_id int REFERENCES parent (id) ON DELETE CASCADE ON UPDATE CASCADE, note text);
  CREATE TABLE child_set_null (id int PRIMARY KEY,
    parent_id int REFERENCES parent (id) ON DELETE SET NULL ON UPDATE SET NULL, note text);
  CREATE TABLE grandchild (id int PRIMARY KEY,
    child_id int REFERENCES child_cascade (id) ON DELETE CASCADE, note text);
)sql";

const char* kTables[] = {"parent", "child_cascade", "child_set_null", "grandchild"};

}  // namespace

class ApplyCascade : public ClusterPairTest {};

TEST_F(ApplyCascade, CascadedDeletesAndKeyUpdatesAreAppliedOnce) {
  auto src = connect(source());
  auto dst = connect(target());
  src.exec(kSchema);
  dst.exec(kSchema);
  src.exec(R"sql(
    INSERT INTO parent SELECT g, 'p' || g FROM generate_series(1, 40) g;
    INSERT INTO child_cascade SELECT g, (g % 40) + 1, 'c' || g FROM generate_series(1, 200) g;
    INSERT INTO child_set_null SELECT g, (g % 40) + 1, 's' || g FROM generate_series(1, 200) g;
    INSERT INTO grandchild SELECT g, (g % 200) + 1, 'g' || g FROM generate_series(1, 400) g;
  )sql");
  PgferryPair pgferry{source().conninfo(), target().conninfo(), "cascade"};
  auto init = pgferry.run({"init", "--jobs", "4", "--json"});
  ASSERT_EQ(init.exit_code, 0) << init.output;
  EXPECT_NE(init.output.find("\"triggers_disabled\": true"), std::string::npos) << init.output;

  // Parent deletes and key updates, alone and mixed with other changes in one transaction,
  // one at a time and many at once.
  src.exec("DELETE FROM parent WHERE id = 1");
  src.exec("UPDATE parent SET id = 1001 WHERE id = 2");
  src.exec(
      "BEGIN; INSERT INTO parent VALUES (41, 'new'); "
      "INSERT INTO child_cascade VALUES (1000, 41, 'under new'); "
      "DELETE FROM parent WHERE id IN (3, 4, 5); UPDATE parent SET id = id + 2000 WHERE id "
      "BETWEEN 6 AND 12; UPDATE child_cascade SET note = 'touched' WHERE parent_id > 2000; "
      "COMMIT");
  src.exec("DELETE FROM parent WHERE id = 41");
  src.exec("DELETE FROM parent WHERE id BETWEEN 13 AND 20");
  std::string until = query_value(src, "SELECT pg_current_wal_lsn()::text");
  auto run = pgferry.run({"run", "--until", until});
  ASSERT_EQ(run.exit_code, 0) << run.output;
  for (const char* table : kTables) {
    EXPECT_EQ(table_fingerprint(src, table, "id"), table_fingerprint(dst, table, "id")) << table;
  }
  // The workload did cascade: children went, and some parent_ids are NULL now.
  EXPECT_EQ(query_value(dst, "SELECT count(*) > 0 FROM child_set_null WHERE parent_id IS NULL"),
            "t");
  EXPECT_EQ(query_value(dst, "SELECT count(*) < 200 FROM child_cascade"), "t");
  EXPECT_EQ(pgferry.run({"cleanup"}).exit_code, 0);
}
