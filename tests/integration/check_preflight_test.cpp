// `pgferry check` against real servers: each check has a case that must fail it, a clean
// pair passes, and the CLI exits 3 naming a table without a primary key in both text and
// JSON output. Every scenario gets its own database on both clusters, so findings from
// one cannot leak into another.
#include <fmt/format.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "pgferry/replication/check/preflight.hpp"
#include "pgferry/replication/core/conninfo.hpp"
#include "support/harness.hpp"

namespace repl = pgferry::replication;
using namespace pgferry::testing;

namespace {

class Check : public ClusterPairTest {
 protected:
  // A fresh database of this name on both clusters, with the given schema on each.
  void make_databases(const std::string& db, const std::string& source_sql,
                      const std::string& target_sql) {
    db_ = db;
    for (auto* cluster : {&source(), &target()}) {
      auto admin = connect(*cluster);
      admin.exec(fmt::format("DROP DATABASE IF EXISTS {} WITH (FORCE)", db));
      admin.exec(fmt::format("CREATE DATABASE {}", db));
    }
    if (!source_sql.empty()) connect(source(), db).exec(source_sql);
    if (!target_sql.empty()) connect(target(), db).exec(target_sql);
  }

  repl::CheckReport check(const repl::TableScope& scope = {}, repl::CheckOptions options = {},
                          const std::string& source_user = "",
                          const std::string& target_user = "") {
    auto source_conninfo = source().conninfo(db_);
    auto target_conninfo = target().conninfo(db_);
    if (!source_user.empty()) {
      source_conninfo = repl::conninfo_with(source_conninfo, {{"user", source_user}});
    }
    if (!target_user.empty()) {
      target_conninfo = repl::conninfo_with(target_conninfo, {{"user", target_user}});
    }
    auto src = repl::Connection::open(source_conninfo, repl::Side::source);
    auto tgt = repl::Connection::open(target_conninfo, repl::Side::target);
    return repl::run_checks(src, tgt, scope, options);
  }

  static const repl::Finding* find(const repl::CheckReport& report, std::string_view code,
                                   std::string_view object) {
    for (const auto& f : report.findings) {
      if (f.code == code && f.object == object) return &f;
    }
    return nullptr;
  }

  static std::string dump(const repl::CheckReport& report) { return repl::render_text(report); }

  std::string db_;
};

constexpr const char* kCleanSchema =
    "CREATE TABLE public.accounts (id bigint PRIMARY KEY, owner text NOT NULL, "
    "  balance numeric(12,2));"
    "CREATE TABLE public.events (id bigserial PRIMARY KEY, account bigint, "
    "  at timestamptz DEFAULT now());";

}  // namespace

TEST_F(Check, CleanPairPassesWithExitZero) {
  make_databases("chk_clean",
                 std::string(kCleanSchema) + "INSERT INTO accounts VALUES (1, 'a', 10);",
                 kCleanSchema);
  auto report = check();
  EXPECT_TRUE(report.ok()) << dump(report);
  EXPECT_EQ(report.tables_in_scope, 2u);
  EXPECT_EQ(report.count(repl::Severity::fatal), 0u);
  // The sequence behind bigserial is listed as info, and DDL always gets a note.
  ASSERT_NE(find(report, "sequence", "public.events_id_seq"), nullptr) << dump(report);
  EXPECT_EQ(find(report, "sequence", "public.events_id_seq")->severity, repl::Severity::info);
  EXPECT_NE(find(report, "ddl", "database"), nullptr);

  auto cli = run_pgferry({"check", "--source", source().conninfo("chk_clean"), "--target",
                          target().conninfo("chk_clean")});
  EXPECT_EQ(cli.exit_code, 0) << cli.output;
  EXPECT_NE(cli.output.find("OK"), std::string::npos) << cli.output;
}

TEST_F(Check, TableWithoutPrimaryKeyRefusedInTextAndJson) {
  make_databases("chk_nopk",
                 std::string(kCleanSchema) + "CREATE TABLE public.log_lines (line text);",
                 std::string(kCleanSchema) + "CREATE TABLE public.log_lines (line text);");
  std::vector<std::string> args = {"check", "--source", source().conninfo("chk_nopk"), "--target",
                                   target().conninfo("chk_nopk")};
  auto text = run_pgferry(args);
  EXPECT_EQ(text.exit_code, 3) << text.output;
  EXPECT_NE(text.output.find("public.log_lines"), std::string::npos) << text.output;
  EXPECT_NE(text.output.find("ADD PRIMARY KEY"), std::string::npos) << text.output;
  EXPECT_NE(text.output.find("--exclude-table"), std::string::npos) << text.output;

  args.push_back("--json");
  auto json = run_pgferry(args);
  EXPECT_EQ(json.exit_code, 3) << json.output;
  auto document = nlohmann::json::parse(json.output.substr(json.output.find('{')));
  EXPECT_EQ(document["ok"], false);
  auto& findings = document["findings"];
  auto it = std::find_if(findings.begin(), findings.end(), [](const nlohmann::json& f) {
    return f["code"] == "no_primary_key" && f["object"] == "public.log_lines";
  });
  ASSERT_NE(it, findings.end()) << json.output;
  EXPECT_EQ((*it)["severity"], "fatal");
  EXPECT_NE((*it)["fix"].get<std::string>().find("ADD PRIMARY KEY"), std::string::npos);

  // Excluding the table makes the check pass.
  args.pop_back();
  args.insert(args.end(), {"--exclude-table", "log_lines"});
  auto excluded = run_pgferry(args);
  EXPECT_EQ(excluded.exit_code, 0) << excluded.output;
}

TEST_F(Check, ReplicaIdentityNothingAndFull) {
  std::string schema =
      "CREATE TABLE nothing_upd (id int PRIMARY KEY, v int);"
      "CREATE TABLE nothing_ro (id int PRIMARY KEY, v int);"
      "CREATE TABLE full_pk (id int PRIMARY KEY, v int);"
      "CREATE TABLE full_nopk (v int);";
  make_databases("chk_identity",
                 schema +
                     "ALTER TABLE nothing_upd REPLICA IDENTITY NOTHING;"
                     "ALTER TABLE nothing_ro REPLICA IDENTITY NOTHING;"
                     "ALTER TABLE full_pk REPLICA IDENTITY FULL;"
                     "ALTER TABLE full_nopk REPLICA IDENTITY FULL;"
                     "INSERT INTO nothing_upd VALUES (1, 1); UPDATE nothing_upd SET v = 2;",
                 schema);
  // The statistics collector reports the update asynchronously.
  auto src = connect(source(), "chk_identity");
  ASSERT_TRUE(wait_until([&] {
    src.exec("SELECT pg_stat_clear_snapshot()");
    return query_value(src,
                       "SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = "
                       "'nothing_upd'") != "0";
  }));
  auto report = check();
  auto* upd = find(report, "replica_identity_nothing", "public.nothing_upd");
  ASSERT_NE(upd, nullptr) << dump(report);
  EXPECT_EQ(upd->severity, repl::Severity::fatal);
  auto* ro = find(report, "replica_identity_nothing", "public.nothing_ro");
  ASSERT_NE(ro, nullptr) << dump(report);
  EXPECT_EQ(ro->severity, repl::Severity::warning);
  auto* full = find(report, "replica_identity_full", "public.full_pk");
  ASSERT_NE(full, nullptr) << dump(report);
  EXPECT_EQ(full->severity, repl::Severity::info);
  auto* nopk = find(report, "no_primary_key", "public.full_nopk");
  ASSERT_NE(nopk, nullptr) << dump(report);
  EXPECT_EQ(nopk->severity, repl::Severity::fatal);
}

TEST_F(Check, SchemaDifferences) {
  make_databases("chk_schema",
                 "CREATE TABLE only_on_source (id int PRIMARY KEY);"
                 "CREATE TABLE t (id int PRIMARY KEY, gone text, narrow bigint, widened integer, "
                 "  name varchar(20), price numeric(10,2));",
                 "CREATE TABLE t (id int PRIMARY KEY, narrow integer, widened bigint, name text, "
                 "  price numeric(8,2), required text NOT NULL, optional text);");
  auto report = check();
  EXPECT_FALSE(report.ok());
  auto expect = [&](std::string_view code, std::string_view object, repl::Severity severity) {
    auto* f = find(report, code, object);
    ASSERT_NE(f, nullptr) << code << " " << object << "\n" << dump(report);
    EXPECT_EQ(f->severity, severity) << code << " " << object;
    EXPECT_FALSE(f->fix.empty());
  };
  expect("target_table_missing", "public.only_on_source", repl::Severity::fatal);
  expect("target_column_missing", "public.t.gone", repl::Severity::fatal);
  expect("type_mismatch", "public.t.narrow", repl::Severity::fatal);
  expect("type_mismatch", "public.t.price", repl::Severity::fatal);
  expect("type_widened", "public.t.widened", repl::Severity::info);
  expect("type_widened", "public.t.name", repl::Severity::info);
  expect("target_extra_column", "public.t.required", repl::Severity::fatal);
  expect("target_extra_column", "public.t.optional", repl::Severity::info);
  EXPECT_NE(find(report, "type_mismatch", "public.t.narrow")->fix.find("TYPE bigint"),
            std::string::npos);
}

TEST_F(Check, NonEmptyTargetIsFatalUnlessAllowed) {
  make_databases("chk_nonempty", kCleanSchema,
                 std::string(kCleanSchema) + "INSERT INTO accounts VALUES (7, 'x', 1);");
  auto strict = check();
  auto* f = find(strict, "target_not_empty", "public.accounts");
  ASSERT_NE(f, nullptr) << dump(strict);
  EXPECT_EQ(f->severity, repl::Severity::fatal);
  EXPECT_EQ(find(strict, "target_not_empty", "public.events"), nullptr);

  repl::CheckOptions lenient;
  lenient.target_data = repl::TargetData::may_have_rows;
  auto relaxed = check({}, lenient);
  EXPECT_TRUE(relaxed.ok()) << dump(relaxed);
  ASSERT_NE(find(relaxed, "target_not_empty", "public.accounts"), nullptr);
  EXPECT_EQ(find(relaxed, "target_not_empty", "public.accounts")->severity,
            repl::Severity::warning);

  auto cli = run_pgferry({"check", "--source", source().conninfo("chk_nonempty"), "--target",
                          target().conninfo("chk_nonempty"), "--allow-nonempty"});
  EXPECT_EQ(cli.exit_code, 0) << cli.output;
}

TEST_F(Check, ThingsReplicationDoesNotCarry) {
  make_databases("chk_notcarried",
                 std::string(kCleanSchema) +
                     "CREATE UNLOGGED TABLE scratch (id int PRIMARY KEY);"
                     "CREATE MATERIALIZED VIEW totals AS SELECT count(*) FROM accounts;"
                     "SELECT lo_from_bytea(0, 'blob');",
                 std::string(kCleanSchema) + "CREATE UNLOGGED TABLE scratch (id int PRIMARY KEY);");
  auto report = check();
  EXPECT_TRUE(report.ok()) << dump(report);  // all warnings: the operator decides
  for (auto [code, object] : {std::pair{"unlogged_table", "public.scratch"},
                              std::pair{"materialized_view", "public.totals"},
                              std::pair{"large_objects", "pg_largeobject"}}) {
    auto* f = find(report, code, object);
    ASSERT_NE(f, nullptr) << code << "\n" << dump(report);
    EXPECT_EQ(f->severity, repl::Severity::warning) << code;
  }
  EXPECT_EQ(report.tables_in_scope, 2u);  // the unlogged table is not replicated
  // Excluding the matview by pattern drops its warning too.
  auto scoped = check(repl::TableScope::from_patterns({}, {"totals"}));
  EXPECT_EQ(find(scoped, "materialized_view", "public.totals"), nullptr);
}

TEST_F(Check, Extensions) {
  // Both clusters run the same binaries, so "not available on the target" is simulated by
  // registering an extension in the source's catalog that has no control file anywhere
  // (superuser with allow_system_table_mods). pg_trgm is created on the source only.
  make_databases("chk_ext",
                 std::string(kCleanSchema) +
                     "CREATE EXTENSION pg_trgm;"
                     "SET allow_system_table_mods = on;"
                     "INSERT INTO pg_extension (oid, extname, extowner, extnamespace, "
                     "  extrelocatable, extversion) "
                     "VALUES (987654, 'pgferry_fake_ext', 10, 2200, false, '1.0');",
                 kCleanSchema);
  auto report = check();
  auto* missing = find(report, "extension_unavailable", "extension pgferry_fake_ext");
  ASSERT_NE(missing, nullptr) << dump(report);
  EXPECT_EQ(missing->severity, repl::Severity::fatal);
  auto* not_created = find(report, "extension_not_created", "extension pg_trgm");
  ASSERT_NE(not_created, nullptr) << dump(report);
  EXPECT_EQ(not_created->severity, repl::Severity::warning);
  EXPECT_NE(not_created->fix.find("CREATE EXTENSION"), std::string::npos);
}

TEST_F(Check, RolesWithoutPrivileges) {
  make_databases("chk_roles", kCleanSchema, kCleanSchema);
  for (auto* cluster : {&source(), &target()}) {
    auto admin = connect(*cluster);
    admin.exec("DROP ROLE IF EXISTS chk_weak; CREATE ROLE chk_weak LOGIN");
  }
  connect(target(), "chk_roles").exec("GRANT SELECT ON public.accounts TO chk_weak");
  auto report = check({}, {}, "chk_weak", "chk_weak");
  EXPECT_FALSE(report.ok());
  auto expect_fatal = [&](std::string_view code, std::string_view object) {
    auto* f = find(report, code, object);
    ASSERT_NE(f, nullptr) << code << " " << object << "\n" << dump(report);
    EXPECT_EQ(f->severity, repl::Severity::fatal);
  };
  expect_fatal("source_replication_privilege", "role chk_weak");
  expect_fatal("source_select_privilege", "public.accounts");
  expect_fatal("source_table_owner", "public.accounts");
  expect_fatal("source_create_privilege", "database");
  expect_fatal("target_table_privilege", "public.accounts");
  expect_fatal("target_create_privilege", "database");
  auto* grant = find(report, "target_table_privilege", "public.accounts");
  EXPECT_NE(grant->reason.find("INSERT, UPDATE, DELETE, TRUNCATE"), std::string::npos)
      << grant->reason;
  EXPECT_EQ(grant->reason.find("SELECT"), std::string::npos) << grant->reason;  // granted

  // With the grants in place (and REPLICATION on the source), the role checks pass.
  {
    auto src = connect(source(), "chk_roles");
    src.exec(
        "ALTER ROLE chk_weak REPLICATION; GRANT SELECT ON ALL TABLES IN SCHEMA public "
        "TO chk_weak; GRANT CREATE ON DATABASE chk_roles TO chk_weak;"
        "ALTER TABLE accounts OWNER TO chk_weak; ALTER TABLE events OWNER TO chk_weak");
    auto tgt = connect(target(), "chk_roles");
    tgt.exec(
        "GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA public "
        "TO chk_weak; GRANT CREATE ON DATABASE chk_roles TO chk_weak");
  }
  auto granted = check({}, {}, "chk_weak", "chk_weak");
  EXPECT_TRUE(granted.ok()) << dump(granted);
}

TEST_F(Check, UnreachableSourceExitsFour) {
  int port = pgferry::tools::free_port();
  auto cli = run_pgferry({"check", "--source",
                          fmt::format("host=127.0.0.1 port={} user=x password=hush "
                                      "connect_timeout=2",
                                      port),
                          "--target", target().conninfo()});
  EXPECT_EQ(cli.exit_code, 4) << cli.output;
  EXPECT_EQ(cli.output.find("hush"), std::string::npos) << cli.output;
}

TEST_F(Check, ScopePatternsAndPartitions) {
  std::string schema =
      "CREATE SCHEMA app; CREATE SCHEMA audit;"
      "CREATE TABLE app.users (id int PRIMARY KEY);"
      "CREATE TABLE audit.trail (line text);"  // no PK, but excluded
      "CREATE TABLE app.metrics (id int, at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);"
      "CREATE TABLE app.metrics_2024 PARTITION OF app.metrics "
      "  FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');"
      "CREATE TABLE app.metrics_2025 PARTITION OF app.metrics "
      "  FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');";
  make_databases("chk_scope", schema, schema);
  auto src = connect(source(), "chk_scope");
  auto tables = repl::list_tables(src, repl::TableScope::from_patterns({"metrics"}, {}));
  std::vector<std::string> names;
  for (const auto& t : tables) names.push_back(t.display_name());
  // The parent matched; its partitions come along.
  EXPECT_EQ(names,
            (std::vector<std::string>{"app.metrics", "app.metrics_2024", "app.metrics_2025"}));
  EXPECT_FALSE(tables[0].carries_rows());
  EXPECT_TRUE(tables[1].carries_rows());
  EXPECT_TRUE(tables[1].is_partition);

  auto without_2024 =
      repl::list_tables(src, repl::TableScope::from_patterns({"app.*"}, {"*_2024"}));
  names.clear();
  for (const auto& t : without_2024) names.push_back(t.display_name());
  EXPECT_EQ(names, (std::vector<std::string>{"app.metrics", "app.metrics_2025", "app.users"}));

  auto report = check(repl::TableScope::from_patterns({}, {"audit.*"}));
  EXPECT_TRUE(report.ok()) << dump(report);
  auto unscoped = check();
  EXPECT_NE(find(unscoped, "no_primary_key", "audit.trail"), nullptr) << dump(unscoped);
}
