// Cross-version scenarios (CTest label `crossversion`): a source and a target cluster of
// different PostgreSQL major versions, and the replication checks every direction must pass.
//
// NOTES
// - The server binaries of a major version come from $PGFERRY_PG<MAJOR>_BINDIR (tools/test.sh
//   sets PGFERRY_PG17_BINDIR and PGFERRY_PG18_BINDIR from tools/build-postgres.sh); 15 is the
//   system's (pg_config --bindir) unless PGFERRY_PG15_BINDIR is set. A missing variable fails
//   the test with the command that builds the binaries, never a silent pass.
// - One scenario, run by one test file per direction, so each direction is its own CTest test.
#pragma once

#include <memory>
#include <string>

#include "pgferry/tools/local_cluster.hpp"

namespace pgferry::testing {

// The bin directory for PostgreSQL `major`; throws std::runtime_error naming the variable
// and tools/build-postgres.sh when it is not configured or holds another version.
std::string bindir_for_major(int major);

// A started cluster of PostgreSQL `major` (its bindir from bindir_for_major(), so it throws
// the same message when that is not configured; the test then fails with it).
std::unique_ptr<tools::LocalCluster> start_cluster_of_major(int major,
                                                            tools::ClusterOptions options = {});

// The whole check, between a fresh `source_major` source and `target_major` target, driven
// through the pgferry binary:
// 1. seed rows, then `init` (with --schema and pg_dump of the newer version when the target is
//    the newer one: the upgrade; the schema created by hand when it is older: the reverse
//    replication a rollback uses, where the old server still has it);
// 2. a workload of many types, an update that leaves a TOASTed column unchanged, key changes,
//    deletes, truncate, a large transaction streamed in progress with a rolled-back savepoint,
//    and a streamed one that aborts; `run --until`; every table equal; on a 16+ source the
//    stream ran on protocol v4 with parallel streaming (abort LSN and time in Stream Abort);
//    then a large transaction aborted while a live `run` streams it (a top-level Stream
//    Abort; nothing of it stays on the target);
// 3. a backlog of transfers plus a streamed transaction, `run --until` killed with SIGKILL
//    three times while it applies and restarted; balances and tables equal (exactly once).
void run_crossversion_scenario(int source_major, int target_major);

// `pgferry verify` between a `source_major` source and a `target_major` target filled by
// `init --schema` and `run --until` (the same schema, rows and workload as above): with the
// automatic hash choice (hashtextextended, when the probe finds both servers agree) and with
// `--hash md5`, every table is equal (so the row text and its hash agree between the majors),
// and then four rows changed on the target are each named, with both hashes.
void run_verify_crossversion_scenario(int source_major, int target_major);

}  // namespace pgferry::testing
