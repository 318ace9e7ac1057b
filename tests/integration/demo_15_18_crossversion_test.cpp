// `pgferry demo` as the README runs it: PostgreSQL 15 upgraded to 18 behind PgBouncer (the 18
// binaries from tools/build-postgres.sh, see tests/support/crossversion.hpp): exit 0, check,
// init --schema, run, lag, verify, cutover and rollback all ran, both switches proven from the
// load's record, PgBouncer sent the load to 18 and back to 15, nothing left behind.
#include "support/crossversion.hpp"
#include "support/demo_journey.hpp"

using namespace pgferry::testing;

TEST(DemoCrossVersion, Upgrade15To18) {
  expect_demo_journey({"--target-bindir", bindir_for_major(18)}, "18.");
}
