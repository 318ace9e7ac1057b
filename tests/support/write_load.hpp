// The write load the cutover tests run through PgBouncer lives in tools/ (the demo runs it
// too): pgferry/tools/write_load.hpp.
#pragma once

#include "pgferry/tools/write_load.hpp"

namespace pgferry::testing {

using tools::AckedCommit;
using tools::kLedgerSchema;
using tools::WriteLoad;

}  // namespace pgferry::testing
