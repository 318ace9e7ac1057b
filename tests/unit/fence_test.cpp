// Fence messages: what the cutover writes is what the agent reads, for its own name only;
// any other message (another prefix, another name, non-transactional, not JSON) is no fence.
#include "pgferry/replication/apply/fence.hpp"

#include <gtest/gtest.h>

#include <cstddef>
#include <string>

namespace repl = pgferry::replication;

namespace {

repl::pgoutput::LogicalMessage message(bool transactional, std::string_view prefix,
                                       const std::string& content) {
  repl::pgoutput::LogicalMessage m;
  m.transactional = transactional;
  m.lsn = repl::Lsn{0x1000};
  m.prefix = prefix;
  m.content = {reinterpret_cast<const std::byte*>(content.data()), content.size()};
  return m;
}

}  // namespace

TEST(Fence, ContentRoundTripsForItsNameOnly) {
  std::string content = repl::fence_message_content("cut \"1\"", "agent");
  EXPECT_EQ(repl::fence_id_for(message(true, "pgferry", content), "agent"), "cut \"1\"");
  EXPECT_EQ(repl::fence_id_for(message(true, "pgferry", content), "other"), std::nullopt);
  EXPECT_EQ(repl::fence_id_for(message(false, "pgferry", content), "agent"), std::nullopt);
  EXPECT_EQ(repl::fence_id_for(message(true, "pgferry2", content), "agent"), std::nullopt);
}

TEST(Fence, OtherContentIsNoFence) {
  for (std::string content : {"", "not json", "[]", "{\"fence\":1,\"name\":\"agent\"}",
                              "{\"name\":\"agent\"}", "{\"fence\":\"x\"}", "{\"fence\":\"x\""}) {
    EXPECT_EQ(repl::fence_id_for(message(true, "pgferry", content), "agent"), std::nullopt)
        << content;
  }
  EXPECT_EQ(
      repl::fence_id_for(message(true, "pgferry", "{\"fence\":\"x\",\"name\":\"agent\"}"), "agent"),
      "x");
}
