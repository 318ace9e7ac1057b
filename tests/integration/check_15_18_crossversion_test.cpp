// `pgferry check` across major versions: 15 -> 18 (an upgrade: info naming it; an extension
// the 18 build lacks is fatal; a target that cannot be a rollback's source, with
// wal_level=replica and no free slot or WAL sender, gets a warning each) and 18 -> 15 (a
// target older than the source is a warning naming both versions; an extension version
// the older target cannot install is a warning). The 17/18 binaries come from
// tools/build-postgres.sh (see tests/support/crossversion.hpp).
#include <fmt/format.h>

#include "pgferry/replication/check/preflight.hpp"
#include "support/crossversion.hpp"
#include "support/harness.hpp"

namespace repl = pgferry::replication;
using namespace pgferry::testing;

namespace {

const repl::Finding* find(const repl::CheckReport& report, std::string_view code) {
  for (const auto& f : report.findings) {
    if (f.code == code) return &f;
  }
  return nullptr;
}

repl::CheckReport check(const LocalCluster& source, const LocalCluster& target) {
  auto src = repl::Connection::open(source.conninfo(), repl::Side::source);
  auto tgt = repl::Connection::open(target.conninfo(), repl::Side::target);
  return repl::run_checks(src, tgt, {});
}

const char* kSchema = "CREATE TABLE accounts (id bigint PRIMARY KEY, balance numeric);";

}  // namespace

TEST(CheckCrossVersion, UpgradeAndReverseFindings) {
  pgferry::tools::ClusterOptions replica;
  replica.settings = {
      {"wal_level", "replica"}, {"max_replication_slots", "1"}, {"max_wal_senders", "0"}};
  auto pg15 = start_cluster_of_major(15);
  auto pg18 = start_cluster_of_major(18);
  auto pg18_replica = start_cluster_of_major(18, replica);

  // 15 -> 18: an extension built for 15 (contrib's isn) that the 18 build lacks; the 18
  // target with wal_level=replica and its one slot taken.
  connect(*pg15).exec(std::string(kSchema) + "CREATE EXTENSION isn;");
  connect(*pg18_replica).exec(kSchema);
  connect(*pg18_replica).exec("SELECT pg_create_physical_replication_slot('taken')");
  auto upgrade = check(*pg15, *pg18_replica);
  std::string text = repl::render_text(upgrade);
  const auto* unavailable = find(upgrade, "extension_unavailable");
  ASSERT_NE(unavailable, nullptr) << text;
  EXPECT_EQ(unavailable->object, "extension isn");
  EXPECT_EQ(unavailable->severity, repl::Severity::fatal);
  const auto* major = find(upgrade, "major_upgrade");
  ASSERT_NE(major, nullptr) << text;
  EXPECT_EQ(major->severity, repl::Severity::info);
  EXPECT_NE(major->reason.find("to 18."), std::string::npos) << major->reason;
  EXPECT_EQ(find(upgrade, "target_older_than_source"), nullptr) << text;
  for (const char* code :
       {"target_wal_level", "target_max_replication_slots", "target_max_wal_senders"}) {
    const auto* f = find(upgrade, code);
    ASSERT_NE(f, nullptr) << code << "\n" << text;
    EXPECT_EQ(f->severity, repl::Severity::warning) << code;
    EXPECT_NE(f->fix.find("on the target"), std::string::npos) << f->fix;
  }
  // A target ready for the reverse replication gets none of those.
  connect(*pg18).exec(kSchema);
  auto ready = check(*pg15, *pg18);
  EXPECT_EQ(find(ready, "target_wal_level"), nullptr) << repl::render_text(ready);
  EXPECT_EQ(find(ready, "target_max_replication_slots"), nullptr) << repl::render_text(ready);

  // 18 -> 15: the reverse direction. pg_stat_statements on 18 is a version 15's contrib
  // cannot install.
  connect(*pg18).exec("CREATE EXTENSION pg_stat_statements");
  auto src18 = connect(*pg18);
  std::string version18 = query_value(src18, "SHOW server_version");
  std::string ext_version = query_value(
      src18, "SELECT extversion FROM pg_extension WHERE extname = 'pg_stat_statements'");
  auto reverse = check(*pg18, *pg15);
  text = repl::render_text(reverse);
  const auto* older = find(reverse, "target_older_than_source");
  ASSERT_NE(older, nullptr) << text;
  EXPECT_EQ(older->severity, repl::Severity::warning);
  EXPECT_NE(older->reason.find("PostgreSQL 15."), std::string::npos) << older->reason;
  EXPECT_NE(older->reason.find("source's 18."), std::string::npos) << older->reason;
  const auto* version = find(reverse, "extension_version_unavailable");
  ASSERT_NE(version, nullptr) << text;
  EXPECT_EQ(version->object, "extension pg_stat_statements");
  EXPECT_NE(version->reason.find(ext_version), std::string::npos) << version->reason;
  EXPECT_TRUE(reverse.ok()) << text;  // warnings only: the operator decides

  // The CLI prints them with their fix.
  auto cli = run_pgferry({"--source", pg18->conninfo(), "--target", pg15->conninfo(), "check"});
  EXPECT_NE(cli.output.find("the target runs PostgreSQL 15."), std::string::npos) << cli.output;
}
