// `pgferry lag --watch` (lagmon::LagWatch under the CLI): --count samples, one JSON line
// each; the first has no trend, every later one has its trend against the previous.
#include <nlohmann/json.hpp>
#include <sstream>

#include "support/harness.hpp"

using namespace pgferry::testing;

namespace {

class LagWatch : public ClusterPairTest {};

TEST_F(LagWatch, CountSamplesEachWithTrendAfterTheFirst) {
  auto init = run_pgferry(
      {"init", "--no-data", "--source", source().conninfo(), "--target", target().conninfo()});
  ASSERT_EQ(init.exit_code, 0) << init.output;

  auto watch = run_pgferry({"lag", "--watch", "0.1", "--count", "3", "--json", "--source",
                            source().conninfo(), "--target", target().conninfo()});
  ASSERT_EQ(watch.exit_code, 0) << watch.output;
  std::vector<nlohmann::json> samples;
  std::istringstream lines(watch.output);
  for (std::string line; std::getline(lines, line);) {
    if (!line.empty() && line.front() == '{') samples.push_back(nlohmann::json::parse(line));
  }
  ASSERT_EQ(samples.size(), 3u) << watch.output;
  EXPECT_FALSE(samples[0].contains("applied_bytes_per_second")) << watch.output;
  for (std::size_t i = 1; i < samples.size(); ++i) {
    EXPECT_TRUE(samples[i].contains("applied_bytes_per_second")) << watch.output;
    EXPECT_EQ(samples[i]["state"], "stopped");
  }

  auto cleanup =
      run_pgferry({"cleanup", "--source", source().conninfo(), "--target", target().conninfo()});
  EXPECT_EQ(cleanup.exit_code, 0) << cleanup.output;
}

}  // namespace
