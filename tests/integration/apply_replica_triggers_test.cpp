// Triggers on the target declared ENABLE REPLICA and ENABLE ALWAYS fire for replicated
// changes, as under PostgreSQL's own subscriber (the apply session runs with
// session_replication_role = replica); an ordinary (ENABLE) trigger does not.
#include <fmt/format.h>

#include "support/harness.hpp"

namespace repl = pgferry::replication;
using namespace pgferry::testing;

namespace {

const char* kSchema = "CREATE TABLE items (id int PRIMARY KEY, v text);";

// Only on the target: one log table and trigger per firing mode.
const char* kTargetTriggers = R"sql(
  CREATE TABLE fired (mode text, op text, id int);
  CREATE FUNCTION log_fired() RETURNS trigger LANGUAGE plpgsql AS $$
  BEGIN
    INSERT INTO fired VALUES (TG_ARGV[0], TG_OP, CASE WHEN TG_OP = 'DELETE' THEN OLD.id
                                                      ELSE NEW.id END);
    RETURN NULL;
  END $$;
  CREATE TRIGGER t_replica AFTER INSERT OR UPDATE OR DELETE ON items
    FOR EACH ROW EXECUTE FUNCTION log_fired('replica');
  ALTER TABLE items ENABLE REPLICA TRIGGER t_replica;
  CREATE TRIGGER t_always AFTER INSERT OR UPDATE OR DELETE ON items
    FOR EACH ROW EXECUTE FUNCTION log_fired('always');
  ALTER TABLE items ENABLE ALWAYS TRIGGER t_always;
  CREATE TRIGGER t_origin AFTER INSERT OR UPDATE OR DELETE ON items
    FOR EACH ROW EXECUTE FUNCTION log_fired('origin');
)sql";

}  // namespace

class ApplyReplicaTriggers : public ClusterPairTest {};

TEST_F(ApplyReplicaTriggers, ReplicaAndAlwaysTriggersFireOrdinaryOnesDoNot) {
  auto src = connect(source());
  auto dst = connect(target());
  src.exec(kSchema);
  dst.exec(kSchema);
  dst.exec(kTargetTriggers);
  PgferryPair pgferry{source().conninfo(), target().conninfo(), "replica_triggers"};
  auto check = pgferry.run({"check", "--allow-nonempty"});
  EXPECT_EQ(check.exit_code, 0) << check.output;
  auto init = pgferry.run({"init", "--no-data"});
  ASSERT_EQ(init.exit_code, 0) << init.output;

  src.exec("INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 30) g");  // COPY
  src.exec("INSERT INTO items VALUES (31, 'one')");
  src.exec("UPDATE items SET v = 'changed' WHERE id <= 5");
  src.exec("DELETE FROM items WHERE id > 28");
  std::string until = query_value(src, "SELECT pg_current_wal_lsn()::text");
  auto run = pgferry.run({"run", "--until", until});
  ASSERT_EQ(run.exit_code, 0) << run.output;

  EXPECT_EQ(table_fingerprint(src, "items", "id"), table_fingerprint(dst, "items", "id"));
  // 31 inserts, 5 updates, 3 deletes: each fired once per mode that fires.
  for (const char* mode : {"replica", "always"}) {
    EXPECT_EQ(query_value(dst, fmt::format("SELECT count(*) FILTER (WHERE op = 'INSERT') || '/' "
                                           "|| count(*) FILTER (WHERE op = 'UPDATE') || '/' || "
                                           "count(*) FILTER (WHERE op = 'DELETE') FROM fired "
                                           "WHERE mode = '{}'",
                                           mode)),
              "31/5/3")
        << mode;
  }
  EXPECT_EQ(query_value(dst, "SELECT count(*) FROM fired WHERE mode = 'origin'"), "0");
  EXPECT_EQ(pgferry.run({"cleanup"}).exit_code, 0);
}
