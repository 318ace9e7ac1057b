// The catalog query and wording shared by the preflight and the applier for user triggers
// and foreign-key actions on the target (see target_triggers.hpp).
#include "pgferry/replication/apply/target_triggers.hpp"

#include <fmt/format.h>

namespace pgferry::replication {

const std::string_view kTargetFiringSql =
    "SELECT s.ord, "
    "  coalesce((SELECT string_agg(quote_ident(t.tgname), ', ' ORDER BY t.tgname) "
    "            FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal "
    "            AND t.tgenabled = 'O'), ''), "
    "  coalesce((SELECT string_agg(quote_ident(t.tgname), ', ' ORDER BY t.tgname) "
    "            FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal "
    "            AND t.tgenabled = 'R'), ''), "
    "  coalesce((SELECT string_agg(format('%I on %s (%s)', k.conname, k.conrelid::regclass, "
    "              concat_ws(', ', "
    "                CASE k.confdeltype WHEN 'c' THEN 'ON DELETE CASCADE' "
    "                  WHEN 'n' THEN 'ON DELETE SET NULL' WHEN 'd' THEN 'ON DELETE SET DEFAULT' "
    "                END, "
    "                CASE k.confupdtype WHEN 'c' THEN 'ON UPDATE CASCADE' "
    "                  WHEN 'n' THEN 'ON UPDATE SET NULL' WHEN 'd' THEN 'ON UPDATE SET DEFAULT' "
    "                END)), '; ' ORDER BY k.conname) "
    "            FROM pg_constraint k WHERE k.contype = 'f' AND k.confrelid = c.oid "
    "            AND (k.confdeltype IN ('c', 'n', 'd') OR k.confupdtype IN ('c', 'n', 'd'))), "
    "           '') "
    "FROM unnest($1::text[]) WITH ORDINALITY AS s(name, ord) "
    "JOIN pg_class c ON c.oid = to_regclass(s.name)";

std::string TargetFiring::describe() const {
  std::string text;
  if (!triggers.empty()) text = fmt::format("user triggers {}", triggers);
  if (!fk_actions.empty()) {
    if (!text.empty()) text += " and ";
    text += fmt::format("foreign-key actions {}", fk_actions);
  }
  return text;
}

std::string target_firing_fix(std::string_view grant) {
  return fmt::format(
      "as an administrator on the target: {} (then the apply sessions run with "
      "session_replication_role = replica, as PostgreSQL's subscriber does); or accept that "
      "they fire with --allow-target-triggers",
      grant);
}

}  // namespace pgferry::replication
