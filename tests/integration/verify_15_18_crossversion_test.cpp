// Cross-version: `pgferry verify` between PostgreSQL 15 and 18 (see
// tests/support/crossversion.hpp): equal tables of many types are equal with
// hashtextextended (which the two majors compute alike) and with md5, and rows changed on the
// target are named with either.
#include "support/crossversion.hpp"
#include "support/harness.hpp"

TEST(CrossVersion, Verify15To18) {
  pgferry::testing::run_verify_crossversion_scenario(15, 18);
}
