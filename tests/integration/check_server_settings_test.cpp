// `pgferry check` on a source that cannot do logical replication: wal_level=replica, no
// free replication slot, no WAL sender. Its own clusters, since these are server settings.
#include <fmt/format.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "pgferry/replication/check/preflight.hpp"
#include "support/harness.hpp"

namespace repl = pgferry::replication;
using namespace pgferry::testing;

TEST(CheckServerSettings, ReplicaWalLevelAndNoFreeSlotOrSender) {
  pgferry::tools::ClusterOptions options;
  options.settings = {
      {"wal_level", "replica"}, {"max_replication_slots", "1"}, {"max_wal_senders", "0"}};
  auto source = start_cluster(options);
  auto target = start_cluster();
  const char* schema = "CREATE TABLE t (id int PRIMARY KEY);";
  connect(*source).exec(schema);
  connect(*target).exec(schema);
  // The one slot is taken (a physical slot works at wal_level=replica).
  connect(*source).exec("SELECT pg_create_physical_replication_slot('someone_else')");

  auto src = connect(*source, "postgres", repl::Side::source);
  auto tgt = connect(*target, "postgres", repl::Side::target);
  auto report = repl::run_checks(src, tgt, {});
  std::string text = repl::render_text(report);
  EXPECT_FALSE(report.ok()) << text;
  for (const char* code : {"wal_level", "max_replication_slots", "max_wal_senders"}) {
    auto it = std::find_if(report.findings.begin(), report.findings.end(),
                           [&](const repl::Finding& f) { return f.code == code; });
    ASSERT_NE(it, report.findings.end()) << code << "\n" << text;
    EXPECT_EQ(it->severity, repl::Severity::fatal) << code;
    EXPECT_FALSE(it->fix.empty()) << code;
  }

  auto cli = run_pgferry(
      {"check", "--source", source->conninfo(), "--target", target->conninfo(), "--json"});
  EXPECT_EQ(cli.exit_code, 3) << cli.output;
  auto document = nlohmann::json::parse(cli.output.substr(cli.output.find('{')));
  EXPECT_EQ(document["ok"], false);
  EXPECT_GE(document["fatal"].get<int>(), 3);
  EXPECT_NE(cli.output.find("wal_level = logical"), std::string::npos) << cli.output;
}
