// Readiness of `pgferry run --metrics-listen`: GET /ready answers 200 while a session streams
// and 503 (with the state and the reason) while the source is down; /status, the liveness
// probe, answers 200 all along. Once the source is back, ready again, and applying.
#include <fmt/format.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "support/harness.hpp"
#include "support/http_get.hpp"

using namespace pgferry::testing;
using namespace std::chrono_literals;

class AgentReadiness : public ClusterPairTest {};

TEST_F(AgentReadiness, ReadyFollowsTheSession) {
  init_agent_pair(source(), target(), "ready", "CREATE TABLE items (id int PRIMARY KEY)");
  PgferryPair pair{source().conninfo(), target().conninfo(), "ready"};

  auto port = static_cast<unsigned short>(pgferry::tools::free_port());
  PgferryProcess agent(pair.args({"run", "--metrics-listen", fmt::format("127.0.0.1:{}", port)}),
                       fmt::format("/tmp/pgferry-readiness-{}.log", ::getpid()));
  // The status code and body of a GET; 0 while nothing listens.
  auto get = [&](const std::string& path) -> std::pair<int, nlohmann::json> {
    try {
      auto [status, body] = http_get(port, path);
      return {status, nlohmann::json::parse(body)};
    } catch (const std::exception&) {
      return {0, nullptr};
    }
  };
  auto ready_is = [&](int code) { return get("/ready").first == code; };

  ASSERT_TRUE(wait_until([&] { return ready_is(200); }, 60s)) << agent.log_text();
  EXPECT_EQ(get("/ready").second["state"], "streaming");

  source().stop();
  ASSERT_TRUE(wait_until([&] { return ready_is(503); }, 60s)) << agent.log_text();
  auto [code, body] = get("/ready");
  EXPECT_EQ(code, 503);
  EXPECT_EQ(body["ready"], false) << body;
  EXPECT_EQ(body["state"], "reconnecting") << body;
  EXPECT_FALSE(body["reason"].get<std::string>().empty()) << body;
  // Liveness: the process answers; the agent keeps retrying.
  auto status = get("/status");
  EXPECT_EQ(status.first, 200);
  EXPECT_EQ(status.second["ready"], false);
  EXPECT_FALSE(agent.exited());

  source().start();
  ASSERT_TRUE(wait_until([&] { return ready_is(200); }, 120s)) << agent.log_text();
  connect(source()).exec("INSERT INTO items VALUES (1)");
  EXPECT_TRUE(wait_until(
      [&] { return query_value(connect(target()), "SELECT count(*) FROM items") == "1"; }, 60s))
      << agent.log_text();
  EXPECT_EQ(agent.stop(), 0) << agent.log_text();
  pair.run({"cleanup"});
}
