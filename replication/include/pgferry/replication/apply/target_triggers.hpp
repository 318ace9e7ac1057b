// What fires on the target for a replicated change when the apply session cannot run with
// session_replication_role = replica: user triggers and foreign-key actions. PostgreSQL's
// own subscriber applies as a replica, so that neither runs again for changes whose
// effects the source already sends (a cascaded delete, an audit row). The preflight
// reports these per table, and the applier refuses such a table, unless the operator
// accepts it (--allow-target-triggers).
//
// NOTES
// - Under the origin role (the default) triggers declared ENABLE (tgenabled 'O') and
//   ENABLE ALWAYS ('A') fire; ENABLE REPLICA ('R') ones do not. Under the replica role,
//   'R' and 'A' fire, as on PostgreSQL's subscriber. ALWAYS triggers fire either way and
//   were declared for that: not reported. REPLICA ones are listed apart (they would not
//   fire here, unlike under the subscriber).
// - Foreign keys are internal triggers (RI_FKey_*), which are 'O': under the replica role
//   neither their checks nor their actions run. Without it, an action (CASCADE, SET NULL,
//   SET DEFAULT) on the referenced table repeats what the source already sent.
#pragma once

#include <string>
#include <string_view>

namespace pgferry::replication {

// Parameter $1: text[] of qualified table names ("schema"."name"). One row per table that
// exists: (ordinality in $1, origin triggers, replica triggers, foreign-key actions), each
// a readable list, "" when none. Runs on any PostgreSQL from 11 on.
extern const std::string_view kTargetFiringSql;

struct TargetFiring {
  std::string triggers;          // ENABLE (origin) user triggers: fire without the replica role
  std::string replica_triggers;  // ENABLE REPLICA: fire only under the replica role
  std::string fk_actions;        // foreign keys referencing the table, with their actions

  bool fires_again() const { return !triggers.empty() || !fk_actions.empty(); }
  // "user triggers a, b and foreign-key actions fk on t (ON DELETE CASCADE)".
  std::string describe() const;
};

// The fix, for a role that may not set the replica role: what an administrator runs, or
// the option that accepts it. `grant` is ReplicaRoleAccess::grant_statement().
std::string target_firing_fix(std::string_view grant);

}  // namespace pgferry::replication
