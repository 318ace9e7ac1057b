// `pgferry init --schema`: the source's table definitions restored on the target with
// PostgreSQL's own client tools, pg_dump and psql, in two halves around the data copy.
//
// NOTES
// - pre-data (types, tables, sequences, defaults) is restored before the copy and
//   post-data (indexes, primary keys, constraints, triggers) after it, as pg_restore does:
//   loading tables without their indexes is several times faster.
// - Each half is restored by `psql --single-transaction -v ON_ERROR_STOP=1`, so it is all
//   there or not at all, and a re-run can decide from the catalog what is left.
// - Never dumped: the pgferry schema (-N pgferry), publications and subscriptions (the
//   target must not publish the source's publications), and with table patterns anything
//   but the tables in scope (each passed as -t "schema"."name"); their schemas are created
//   on the target first, other dependencies (types, functions) must exist there.
// - Passwords never appear on a command line: the conninfo is passed without its password
//   and the password, if any, in PGPASSWORD of the child's environment.
// - The tools come from --pg-bindir, else $PGFERRY_PG_BINDIR, else `pg_config --bindir`,
//   else $PATH. pg_dump must be at least as new as the source server.
// - The post-data session raises maintenance_work_mem (PGOPTIONS, that session only; the
//   server's configuration is never changed), as one does for pg_restore: an index build
//   whose keys fit in memory sorts them in one pass instead of through temporary files.
#pragma once

#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace pgferry::replication {

enum class SchemaSection { pre_data, post_data };

struct SchemaCopyOptions {
  std::string bindir;  // empty: found as described above
  // Empty: every table of the database (except schema pgferry); else these tables only,
  // each "schema"."name" as quoted by qualified_name().
  std::vector<std::string> tables;
  // pre-data with `tables`: schemas to create on the target first (unquoted names).
  std::vector<std::string> schemas;
  // post-data: maintenance_work_mem of the restoring session, e.g. "1GB" (a number with
  // an optional kB/MB/GB unit); empty keeps the server's setting.
  std::string maintenance_work_mem = "1GB";
};

// Whether `value` is a size setting this module passes on: digits with an optional kB, MB
// or GB unit.
bool is_size_setting(std::string_view value);

// pg_dump output with each `SET name = value;` line whose setting is not in `known` (the
// target's pg_settings) commented out: a newer pg_dump sets session parameters an older
// server lacks (17+: transaction_timeout), which would fail the whole restore.
std::string comment_out_unknown_settings(std::string_view sql, const std::set<std::string>& known);

// Dumps `section` from the source and restores it on the target. Throws ConfigError when
// the tools cannot be found, SqlError (side target) with psql's message when the restore
// fails, SqlError (side source) when pg_dump fails.
void copy_schema_section(std::string_view source_conninfo, std::string_view target_conninfo,
                         SchemaSection section, const SchemaCopyOptions& options);

}  // namespace pgferry::replication
