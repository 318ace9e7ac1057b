// Cross-version: PostgreSQL 18 -> 15, the reverse replication a rollback runs on: protocol
// v4 from an 18 walsender, streamed transactions with parallel-streaming Stream Abort
// messages (abort LSN and time), exactly once across SIGKILLs (see
// tests/support/crossversion.hpp).
#include "support/crossversion.hpp"
#include "support/harness.hpp"

TEST(CrossVersion, Reverse18To15) {
  pgferry::testing::run_crossversion_scenario(18, 15);
}
