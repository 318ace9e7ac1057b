// Preflight: every reason replication from the source to the target would fail or lose
// data, found before anything is created, each with the object concerned and the fix.
// `pgferry check` prints the report; `pgferry init` refuses to start on a fatal finding.
//
// NOTES
// - All findings are collected; nothing stops at the first problem, so one run of
//   `pgferry check` gives the operator the whole list.
// - Severity: fatal = replication cannot start or would lose or corrupt data; warning =
//   something logical replication does not carry, which the operator must handle
//   (large objects, unlogged tables, materialized views); info = worth knowing (sequences
//   are synced by `pgferry sequences`, DDL is not replicated).
// - Types: a column whose type differs between the sides (compared by format_type, so
//   typmods count) is fatal unless the change is a known-safe widening (see
//   is_safe_widening()), which the initial copy carries in text format.
// - A non-empty target table is fatal by default (the initial copy would collide with or
//   duplicate its rows); TargetData::may_have_rows turns it into a warning for `run`
//   alone or `init --no-data`. Tables the initial copy has already (partly) copied under
//   this --name are expected to hold rows and are reported as info.
// - Triggers: the apply sessions (run, and the initial copy) use
//   session_replication_role = replica when the target role may set it, as PostgreSQL's
//   subscriber does. When it may not, each target table with user triggers (ENABLE) or
//   foreign keys with actions referencing it is fatal (they would fire again for changes
//   whose effects the source sends too), with the GRANT that allows the role, unless
//   allow_target_triggers; ENABLE REPLICA triggers, which then would not fire, are a
//   warning. See apply/target_triggers.hpp.
// - Extensions: installed on the source but not available on the target is fatal (an
//   operator must install the package on the target server); available but not yet
//   created is a warning; an older version on the target is info; a source version the
//   target's packages cannot install at all is a warning.
// - Across major versions: a target older than the source is a warning naming both (that is
//   a rollback's reverse replication, not an upgrade); a newer one is info (use its pg_dump).
//   What the target needs to be a source later (the reverse replication rollback uses:
//   wal_level = logical, a free slot and WAL sender) is a warning each, not fatal: forward
//   replication does not need it.
#pragma once

#include <cstddef>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "pgferry/replication/core/pg.hpp"
#include "pgferry/replication/core/table_scope.hpp"

namespace pgferry::replication {

enum class Severity { fatal, warning, info };
std::string_view to_string(Severity severity);

struct Finding {
  Severity severity = Severity::info;
  // A stable identifier a script can act on, e.g. "no_primary_key", "wal_level".
  std::string code;
  // What it is about: schema.table, schema.table.column, a setting, a role, "database".
  std::string object;
  std::string reason;
  std::string fix;
};

enum class TargetData {
  must_be_empty,  // before the initial copy (`init`)
  may_have_rows,  // `run` alone, `init --no-data`
};

struct CheckOptions {
  // Names the slot and the progress/copy records (--name).
  std::string name = "pgferry";
  // The publication `init` creates (--publication, default the name).
  std::string publication = "pgferry";
  TargetData target_data = TargetData::must_be_empty;
  // --allow-target-triggers: user triggers and foreign-key actions that would fire again on
  // the target (the role may not set session_replication_role) are warnings, not fatal.
  bool allow_target_triggers = false;
};

struct CheckReport {
  std::vector<Finding> findings;  // fatal first, then warnings, then info
  std::size_t tables_in_scope = 0;

  bool ok() const { return count(Severity::fatal) == 0; }
  std::size_t count(Severity severity) const;
};

// Runs every check with one connection to each side (ordinary, not replication,
// connections). Throws only when a side cannot be queried at all (PgError with its side).
CheckReport run_checks(const Connection& source, const Connection& target, const TableScope& scope,
                       const CheckOptions& options = {});

// Whether values of source type `from` can be stored in target type `to` without loss,
// both as printed by format_type(): smallint→integer→bigint→numeric, real→double
// precision, character varying(n)→character varying(m ≥ n)/character varying/text,
// text↔character varying, numeric(p,s)→numeric(p' ≥ p,s)/numeric. Identical types too.
bool is_safe_widening(std::string_view from, std::string_view to);

// A readable table: severity, object, reason, fix; and a summary line.
std::string render_text(const CheckReport& report);
// Keys in this order: {"ok": bool, "fatal": n, "warnings": n, "info": n, "tables_in_scope": n,
//  "findings": [{"severity", "code", "object", "reason", "fix"}...]}
nlohmann::ordered_json to_json(const CheckReport& report);

}  // namespace pgferry::replication
