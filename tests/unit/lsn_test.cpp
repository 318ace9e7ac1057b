// Lsn: parsing and printing like pg_lsn, arithmetic in bytes.
#include "pgferry/replication/core/lsn.hpp"

#include <gtest/gtest.h>

#include "pgferry/replication/core/error.hpp"

namespace repl = pgferry::replication;
using repl::Lsn;

TEST(Lsn, ParsesAndPrintsLikePgLsn) {
  auto lsn = Lsn::parse("16/B374D848");
  ASSERT_TRUE(lsn);
  EXPECT_EQ(lsn->value(), (std::uint64_t{0x16} << 32) | 0xB374D848);
  EXPECT_EQ(lsn->to_string(), "16/B374D848");
  EXPECT_EQ(fmt::format("{}", Lsn{0}), "0/0");
  EXPECT_EQ(fmt::format("{}", Lsn{~std::uint64_t{0}}), "FFFFFFFF/FFFFFFFF");
  EXPECT_EQ(Lsn::parse("0/1a")->value(), 0x1au);
}

TEST(Lsn, RoundTrips) {
  for (std::uint64_t v : {std::uint64_t{0}, std::uint64_t{1}, std::uint64_t{0x100000000},
                          std::uint64_t{0xDEADBEEFCAFEBABE}}) {
    EXPECT_EQ(Lsn::parse(Lsn{v}.to_string())->value(), v);
  }
}

TEST(Lsn, RejectsMalformed) {
  for (const char* bad : {"", "/", "0/", "/0", "16", "16B374D848", "G/0", "0/G", "1/2/3",
                          "123456789/0", "0/123456789", " 1/2", "1/2 ", "-1/2", "+1/2", "0x1/2"}) {
    EXPECT_FALSE(Lsn::parse(bad)) << bad;
  }
  EXPECT_THROW(Lsn::from_string("nope", "--until"), repl::ConfigError);
  try {
    Lsn::from_string("nope", "--until");
  } catch (const repl::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("--until"), std::string::npos);
  }
}

TEST(Lsn, DifferenceIsBytes) {
  Lsn a{1000}, b{400};
  EXPECT_EQ(a - b, 600);
  EXPECT_EQ(b - a, -600);
  EXPECT_EQ((b + 600), a);
  EXPECT_LT(b, a);
  EXPECT_FALSE(Lsn::invalid().is_valid());
  // Across the 4 GiB boundary of the low half.
  EXPECT_EQ(*Lsn::parse("1/0") - *Lsn::parse("0/FFFFFFFF"), 1);
}
