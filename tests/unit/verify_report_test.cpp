// The verify report's renderings: keys named as `col=value` (composite in parentheses), the
// table line per table, the differing keys under it (capped, with the rest counted), and the
// JSON document's fields and equal flags.
#include "pgferry/cutover/verify_report.hpp"

#include <gtest/gtest.h>

#include "pgferry/cutover/verify.hpp"

namespace cut = pgferry::cutover;

namespace {

cut::VerifyReport sample_report() {
  cut::VerifyReport report;
  report.mode = cut::VerifyMode::live;
  report.hash = "hashtextextended";
  report.seconds = 1.5;
  cut::TableVerifyReport equal;
  equal.schema = "public";
  equal.name = "accounts";
  equal.key_columns = {"id"};
  equal.source_rows = equal.target_rows = 1000;
  equal.chunks = 1;
  report.tables.push_back(equal);

  cut::TableVerifyReport differs;
  differs.schema = "Odd Schema";
  differs.name = "Mixed\"Name";
  differs.key_columns = {"region", "n"};
  differs.source_rows = 10;
  differs.target_rows = 10;
  differs.chunks = 2;
  differs.differing_chunks = 1;
  differs.missing = 1;
  differs.different = 4;
  differs.differences.push_back(
      {cut::DifferenceKind::missing_on_target, {"north", "3"}, {}, false});
  differs.differences.push_back(
      {cut::DifferenceKind::different, {"south", "20"}, {"v", "w"}, true});
  report.tables.push_back(differs);
  return report;
}

}  // namespace

TEST(VerifyReport, KeysAreNamedByColumn) {
  EXPECT_EQ(cut::format_key({"id"}, {"42"}), "id=42");
  EXPECT_EQ(cut::format_key({"region", "n"}, {"north", "3"}), "(region=north, n=3)");
}

TEST(VerifyReport, EqualOnlyWhenNoDifferenceAndNoProblem) {
  auto report = sample_report();
  EXPECT_FALSE(report.equal());
  EXPECT_EQ(report.differing_tables(), 1);
  EXPECT_TRUE(report.tables[0].equal());
  report.tables[0].problems.push_back("table missing on the target");
  EXPECT_FALSE(report.tables[0].equal());
  EXPECT_EQ(report.differing_tables(), 2);
}

TEST(VerifyReport, TextNamesTheKeysAndCountsTheRest) {
  auto text = cut::render_text(sample_report(), 1);
  EXPECT_NE(text.find("public.accounts"), std::string::npos) << text;
  EXPECT_NE(text.find("equal"), std::string::npos) << text;
  EXPECT_NE(text.find("DIFFERS: 1 missing on target, 4 different"), std::string::npos) << text;
  EXPECT_NE(text.find("missing on target  (region=north, n=3)"), std::string::npos) << text;
  // One key shown: the second is among the 4 more.
  EXPECT_EQ(text.find("south"), std::string::npos) << text;
  EXPECT_NE(text.find("... and 4 more"), std::string::npos) << text;
  EXPECT_NE(text.find("mode live"), std::string::npos) << text;
}

TEST(VerifyReport, JsonCarriesEveryField) {
  auto json = cut::to_json(sample_report());
  EXPECT_EQ(json["equal"], false);
  EXPECT_EQ(json["mode"], "live");
  EXPECT_EQ(json["differing_tables"], 1);
  const auto& table = json["tables"][1];
  EXPECT_EQ(table["schema"], "Odd Schema");
  EXPECT_EQ(table["name"], "Mixed\"Name");
  EXPECT_EQ(table["missing"], 1);
  EXPECT_EQ(table["different"], 4);
  EXPECT_EQ(table["differences_truncated"], true);
  EXPECT_EQ(table["differences"][1]["kind"], "different");
  EXPECT_EQ(table["differences"][1]["key"]["region"], "south");
  EXPECT_EQ(table["differences"][1]["key"]["n"], "20");
  EXPECT_EQ(table["differences"][1]["columns"], nlohmann::json::array({"v", "w"}));
  EXPECT_EQ(table["differences"][1]["changing"], true);
  EXPECT_EQ(json["tables"][0]["equal"], true);
}
