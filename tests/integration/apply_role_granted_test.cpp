// An apply role on the target that is not a superuser but was granted
// `SET ON PARAMETER session_replication_role` (PostgreSQL 15+): the preflight passes, the
// initial copy and `run` use the replica role, and a schema with cascading foreign keys
// and an audit trigger ends equal to the source.
#include <fmt/format.h>

#include "pgferry/replication/core/conninfo.hpp"
#include "support/harness.hpp"

namespace repl = pgferry::replication;
using namespace pgferry::testing;

namespace {

const char* kSchema = R"sql(
  CREATE TABLE parent (id int PRIMARY KEY, name text);
  CREATE TABLE child (id int PRIMARY KEY,
    parent_id int REFERENCES parent (id) ON DELETE CASCADE ON UPDATE CASCADE, note text);
  CREATE TABLE orphanable (id int PRIMARY KEY,
    parent_id int REFERENCES parent (id) ON DELETE SET NULL ON UPDATE SET NULL, note text);
  CREATE TABLE audit (id bigserial PRIMARY KEY, parent int, op text);
  CREATE FUNCTION audit_parent() RETURNS trigger LANGUAGE plpgsql AS $$
  BEGIN
    INSERT INTO audit (parent, op) VALUES (CASE WHEN TG_OP = 'DELETE' THEN OLD.id
                                                ELSE NEW.id END, TG_OP);
    RETURN NULL;
  END $$;
  CREATE TRIGGER parent_audit AFTER INSERT OR UPDATE OR DELETE ON parent
    FOR EACH ROW EXECUTE FUNCTION audit_parent();
)sql";

const char* kTables[] = {"parent", "child", "orphanable", "audit"};

}  // namespace

class ApplyRoleGranted : public ClusterPairTest {};

TEST_F(ApplyRoleGranted, GrantedRoleAppliesAsAReplica) {
  auto src = connect(source());
  auto admin = connect(target());
  ASSERT_GE(admin.server_version(), 150000) << "parameter grants need PostgreSQL 15";
  src.exec(kSchema);
  admin.exec(kSchema);
  admin.exec(
      "CREATE ROLE rr_granted LOGIN;"
      "GRANT CREATE ON DATABASE postgres TO rr_granted;"
      "GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA public "
      "TO rr_granted;"
      "GRANT SET ON PARAMETER session_replication_role TO rr_granted;");
  std::string target_conninfo = repl::conninfo_with(target().conninfo(), {{"user", "rr_granted"}});
  {
    auto granted = repl::Connection::open(target_conninfo, repl::Side::target);
    auto access = repl::replica_role_access(granted);
    EXPECT_FALSE(access.superuser);
    EXPECT_TRUE(access.granted);
    EXPECT_TRUE(granted.set_replica_role().allowed);
    EXPECT_EQ(query_value(granted, "SHOW session_replication_role"), "replica");
  }

  src.exec(R"sql(
    INSERT INTO parent SELECT g, 'p' || g FROM generate_series(1, 30) g;
    INSERT INTO child SELECT g, (g % 30) + 1, 'c' || g FROM generate_series(1, 90) g;
    INSERT INTO orphanable SELECT g, (g % 30) + 1, 'o' || g FROM generate_series(1, 90) g;
  )sql");
  PgferryPair pgferry{source().conninfo(), target_conninfo, "granted"};
  auto check = pgferry.run({"check"});
  EXPECT_EQ(check.exit_code, 0) << check.output;
  auto init = pgferry.run({"init", "--json"});
  ASSERT_EQ(init.exit_code, 0) << init.output;
  EXPECT_NE(init.output.find("\"triggers_disabled\": true"), std::string::npos) << init.output;
  // The copy did not fire the target's trigger: the audit rows are the source's.
  EXPECT_EQ(table_fingerprint(src, "audit", "id"), table_fingerprint(admin, "audit", "id"));

  src.exec("DELETE FROM parent WHERE id <= 3");
  src.exec("UPDATE parent SET id = id + 100 WHERE id BETWEEN 4 AND 8");
  src.exec(
      "BEGIN; DELETE FROM parent WHERE id = 9; INSERT INTO parent VALUES (9, 'again'); "
      "INSERT INTO child VALUES (500, 9, 'new'); COMMIT");
  std::string until = query_value(src, "SELECT pg_current_wal_lsn()::text");
  auto run = pgferry.run({"run", "--until", until});
  ASSERT_EQ(run.exit_code, 0) << run.output;
  for (const char* table : kTables) {
    EXPECT_EQ(table_fingerprint(src, table, "id"), table_fingerprint(admin, table, "id")) << table;
  }
  EXPECT_EQ(pgferry.run({"cleanup"}).exit_code, 0);
}
