// Cross-version: PostgreSQL 15 -> 18, the upgrade (see tests/support/crossversion.hpp for
// what is checked: init with --schema, every change kind, streamed transactions, exactly
// once across SIGKILLs).
#include "support/crossversion.hpp"
#include "support/harness.hpp"

TEST(CrossVersion, Upgrade15To18) {
  pgferry::testing::run_crossversion_scenario(15, 18);
}
