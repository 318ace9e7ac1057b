// An audit trigger on both sides: the source's trigger writes the audit rows, which the
// stream carries like any other rows. The apply session runs with
// session_replication_role = replica, so the target's own copy of the trigger does not
// fire for replicated changes: the audit table ends equal to the source's, not doubled.
#include <fmt/format.h>

#include "support/harness.hpp"

namespace repl = pgferry::replication;
using namespace pgferry::testing;

namespace {

const char* kSchema = R"sql(
  CREATE TABLE accounts (id int PRIMARY KEY, balance int);
  CREATE TABLE audit (id bigserial PRIMARY KEY, account int, op text, balance int);
  CREATE FUNCTION audit_accounts() RETURNS trigger LANGUAGE plpgsql AS $$
  BEGIN
    IF TG_OP = 'DELETE' THEN
      INSERT INTO audit (account, op, balance) VALUES (OLD.id, TG_OP, OLD.balance);
      RETURN OLD;
    END IF;
    INSERT INTO audit (account, op, balance) VALUES (NEW.id, TG_OP, NEW.balance);
    RETURN NEW;
  END $$;
  CREATE TRIGGER accounts_audit AFTER INSERT OR UPDATE OR DELETE ON accounts
    FOR EACH ROW EXECUTE FUNCTION audit_accounts();
)sql";

}  // namespace

class ApplyAuditTrigger : public ClusterPairTest {};

TEST_F(ApplyAuditTrigger, TargetTriggerDoesNotDuplicateAuditRows) {
  auto src = connect(source());
  auto dst = connect(target());
  src.exec(kSchema);
  dst.exec(kSchema);
  PgferryPair pgferry{source().conninfo(), target().conninfo(), "audit"};
  auto init = pgferry.run({"init", "--no-data"});
  ASSERT_EQ(init.exit_code, 0) << init.output;

  src.exec("INSERT INTO accounts SELECT g, 100 FROM generate_series(1, 50) g");  // COPY path
  src.exec("INSERT INTO accounts VALUES (51, 7)");
  for (int i = 0; i < 20; ++i) {
    src.exec(fmt::format("UPDATE accounts SET balance = balance + {} WHERE id = {}", i, i + 1));
  }
  src.exec("DELETE FROM accounts WHERE id > 45");
  std::string until = query_value(src, "SELECT pg_current_wal_lsn()::text");
  auto run = pgferry.run({"run", "--until", until});
  ASSERT_EQ(run.exit_code, 0) << run.output;

  EXPECT_EQ(query_value(src, "SELECT count(*) FROM audit"), "77");
  EXPECT_EQ(table_fingerprint(src, "audit", "id"), table_fingerprint(dst, "audit", "id"));
  EXPECT_EQ(table_fingerprint(src, "accounts", "id"), table_fingerprint(dst, "accounts", "id"));
  EXPECT_EQ(pgferry.run({"cleanup"}).exit_code, 0);
}
