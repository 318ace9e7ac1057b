// An apply role on the target that is neither a superuser nor granted
// `SET ON PARAMETER session_replication_role`: target triggers and foreign-key actions
// would fire again for replicated changes. `pgferry check` exits 3 naming each such table
// and the GRANT that fixes it; with --allow-target-triggers it passes (warnings); `run`
// refuses such a table up front (exit 3, naming the GRANT) unless given the same option.
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "pgferry/replication/core/conninfo.hpp"
#include "support/harness.hpp"

namespace repl = pgferry::replication;
using namespace pgferry::testing;

namespace {

const char* kSchema = R"sql(
  CREATE TABLE parent (id int PRIMARY KEY, name text);
  CREATE TABLE child (id int PRIMARY KEY,
    parent_id int REFERENCES parent (id) ON DELETE CASCADE, note text);
  CREATE TABLE plain_child (id int PRIMARY KEY, parent_id int REFERENCES parent (id));
  CREATE TABLE audited (id int PRIMARY KEY, v text);
  CREATE TABLE audit (id bigserial PRIMARY KEY, item int);
  CREATE FUNCTION audit_it() RETURNS trigger LANGUAGE plpgsql AS $$
  BEGIN INSERT INTO audit (item) VALUES (NEW.id); RETURN NULL; END $$;
)sql";

// On the target only: an ordinary trigger, and one that would fire only as a replica.
const char* kTargetTriggers = R"sql(
  CREATE TRIGGER audited_audit AFTER INSERT ON audited
    FOR EACH ROW EXECUTE FUNCTION audit_it();
  CREATE TRIGGER plain_replica AFTER INSERT ON plain_child
    FOR EACH ROW EXECUTE FUNCTION audit_it();
  ALTER TABLE plain_child ENABLE REPLICA TRIGGER plain_replica;
)sql";

constexpr const char* kGrant = "GRANT SET ON PARAMETER session_replication_role TO \"rr_plain\";";

}  // namespace

class CheckTargetTriggers : public ClusterPairTest {};

TEST_F(CheckTargetTriggers, RoleWithoutTheGrantIsRefusedUnlessAccepted) {
  auto src = connect(source());
  auto admin = connect(target());
  src.exec(kSchema);
  admin.exec(kSchema);
  admin.exec(kTargetTriggers);
  admin.exec(
      "CREATE ROLE rr_plain LOGIN;"
      "GRANT CREATE ON DATABASE postgres TO rr_plain;"
      "GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA public "
      "TO rr_plain; GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO rr_plain;");
  std::string target_conninfo = repl::conninfo_with(target().conninfo(), {{"user", "rr_plain"}});
  {
    auto plain = repl::Connection::open(target_conninfo, repl::Side::target);
    EXPECT_FALSE(plain.set_replica_role().allowed);
    EXPECT_FALSE(plain.replica_role());
    // Found up front, and nothing left changed by the attempt.
    EXPECT_EQ(query_value(plain, "SHOW session_replication_role"), "origin");
    EXPECT_EQ(plain.set_replica_role().grant_statement(), kGrant);
  }
  PgferryPair pgferry{source().conninfo(), target_conninfo, "plain"};

  auto check = pgferry.run({"check", "--json"});
  EXPECT_EQ(check.exit_code, 3) << check.output;
  auto report = nlohmann::json::parse(check.output);
  std::map<std::string, std::string> fatal_triggers;  // object -> reason
  for (const auto& f : report["findings"]) {
    if (f["code"] == "target_triggers") {
      EXPECT_EQ(f["severity"], "fatal") << f.dump();
      EXPECT_NE(f["fix"].get<std::string>().find(kGrant), std::string::npos) << f.dump();
      EXPECT_NE(f["fix"].get<std::string>().find("--allow-target-triggers"), std::string::npos);
      fatal_triggers[f["object"]] = f["reason"];
    }
  }
  ASSERT_EQ(fatal_triggers.size(), 2u) << check.output;
  EXPECT_NE(fatal_triggers["public.parent"].find("child_parent_id_fkey on child (ON DELETE "
                                                 "CASCADE)"),
            std::string::npos)
      << fatal_triggers["public.parent"];
  EXPECT_NE(fatal_triggers["public.audited"].find("audited_audit"), std::string::npos)
      << fatal_triggers["public.audited"];
  bool replica_warning = false;
  for (const auto& f : report["findings"]) {
    if (f["code"] == "target_replica_triggers" && f["object"] == "public.plain_child") {
      replica_warning = f["severity"] == "warning";
    }
  }
  EXPECT_TRUE(replica_warning) << check.output;
  // The text report names them too.
  auto text = pgferry.run({"check"});
  EXPECT_EQ(text.exit_code, 3);
  EXPECT_NE(text.output.find("public.parent"), std::string::npos) << text.output;
  EXPECT_NE(text.output.find("public.audited"), std::string::npos) << text.output;
  EXPECT_NE(text.output.find("session_replication_role"), std::string::npos) << text.output;

  auto accepted = pgferry.run({"check", "--allow-target-triggers"});
  EXPECT_EQ(accepted.exit_code, 0) << accepted.output;
  // init runs the same preflight.
  auto init = pgferry.run({"init", "--json"});
  EXPECT_EQ(init.exit_code, 3) << init.output;
  EXPECT_NE(
      init.output.find("GRANT SET ON PARAMETER session_replication_role TO \\\"rr_plain\\\";"),
      std::string::npos)
      << init.output;

  // run: refused before anything of such a table is applied.
  ASSERT_EQ(pgferry.run({"init", "--no-data"}).exit_code, 0);
  src.exec("INSERT INTO audited VALUES (1, 'one')");
  std::string until = query_value(src, "SELECT pg_current_wal_lsn()::text");
  auto refused = pgferry.run({"run", "--until", until});
  EXPECT_EQ(refused.exit_code, 3) << refused.output;
  EXPECT_NE(refused.output.find("public.audited"), std::string::npos) << refused.output;
  EXPECT_NE(refused.output.find(kGrant), std::string::npos) << refused.output;
  EXPECT_EQ(query_value(admin, "SELECT count(*) FROM audited"), "0");
  // Accepted: the trigger fires on the target as well (the operator asked for it).
  auto run = pgferry.run({"run", "--until", until, "--allow-target-triggers"});
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_EQ(query_value(admin, "SELECT count(*) FROM audited"), "1");
  EXPECT_EQ(query_value(admin, "SELECT count(*) FROM audit"), "1");
  EXPECT_EQ(pgferry.run({"cleanup"}).exit_code, 0);
}
