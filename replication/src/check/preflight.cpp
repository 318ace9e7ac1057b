// Preflight checks: catalog queries on both sides, turned into findings with a fix each.
#include "pgferry/replication/check/preflight.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <charconv>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include "pgferry/replication/apply/target_triggers.hpp"

namespace pgferry::replication {

std::string_view to_string(Severity severity) {
  switch (severity) {
    case Severity::fatal:
      return "fatal";
    case Severity::warning:
      return "warning";
    case Severity::info:
      return "info";
  }
  return "";
}

std::size_t CheckReport::count(Severity severity) const {
  return static_cast<std::size_t>(std::count_if(
      findings.begin(), findings.end(), [&](const Finding& f) { return f.severity == severity; }));
}

namespace {

long long to_int(std::string_view text) {
  long long value = 0;
  std::from_chars(text.data(), text.data() + text.size(), value);
  return value;
}

bool to_bool(std::string_view text) {
  return text == "t";
}

// "character varying(20)" → {"character varying", {20}}; "numeric(10,2)" → {"numeric",
// {10, 2}}; "integer" → {"integer", {}}. Only the shapes is_safe_widening() needs.
struct ParsedType {
  std::string base;
  std::vector<long long> mods;
};

std::optional<ParsedType> parse_type(std::string_view text) {
  ParsedType type;
  auto open = text.find('(');
  if (open == std::string_view::npos) {
    type.base = std::string(text);
    return type;
  }
  if (text.back() != ')') return std::nullopt;  // e.g. "timestamp(3) without time zone"
  type.base = std::string(text.substr(0, open));
  std::string_view inner = text.substr(open + 1, text.size() - open - 2);
  while (!inner.empty()) {
    auto comma = inner.find(',');
    std::string_view part = inner.substr(0, comma);
    long long value = 0;
    auto [end, ec] = std::from_chars(part.data(), part.data() + part.size(), value);
    if (ec != std::errc{} || end != part.data() + part.size()) return std::nullopt;
    type.mods.push_back(value);
    if (comma == std::string_view::npos) break;
    inner.remove_prefix(comma + 1);
  }
  return type;
}

}  // namespace

bool is_safe_widening(std::string_view from, std::string_view to) {
  if (from == to) return true;
  auto source = parse_type(from);
  auto target = parse_type(to);
  if (!source || !target) return false;
  const std::string& f = source->base;
  const std::string& t = target->base;
  auto is_unbounded = [](const ParsedType& type) { return type.mods.empty(); };

  static const std::vector<std::string> kIntegers = {"smallint", "integer", "bigint"};
  auto rank = [&](const std::string& name) {
    auto it = std::find(kIntegers.begin(), kIntegers.end(), name);
    return it == kIntegers.end() ? -1 : static_cast<int>(it - kIntegers.begin());
  };
  if (rank(f) >= 0) {
    if (rank(t) >= 0) return rank(t) >= rank(f);
    // numeric(p,0) with enough digits would do too; keep it to the unbounded numeric.
    return t == "numeric" && is_unbounded(*target);
  }
  if (f == "real") return t == "double precision";
  if (f == "character varying") {
    if (t == "text") return true;
    if (t != "character varying") return false;
    if (is_unbounded(*target)) return true;
    return !is_unbounded(*source) && target->mods[0] >= source->mods[0];
  }
  if (f == "text") return t == "character varying" && is_unbounded(*target);
  if (f == "numeric") {
    if (t != "numeric") return false;
    if (is_unbounded(*target)) return true;
    if (is_unbounded(*source) || source->mods.size() != 2 || target->mods.size() != 2) {
      return false;
    }
    // Same scale, at least as many digits: every value fits unchanged.
    return target->mods[1] == source->mods[1] && target->mods[0] >= source->mods[0];
  }
  return false;
}

namespace {

struct Column {
  std::string name;
  std::string type;
  bool not_null = false;
  bool has_default = false;  // a default, an identity or a generated expression
  bool generated = false;
};

struct TargetTable {
  std::uint32_t oid = 0;
  bool can_select = false, can_insert = false, can_update = false, can_delete = false,
       can_truncate = false;
  bool has_primary_key = false;
  bool has_foreign_keys = false;
  std::vector<Column> columns;
};

class Checker {
 public:
  Checker(const Connection& source, const Connection& target, const TableScope& scope,
          const CheckOptions& options)
      : source_(source), target_(target), scope_(scope), options_(options) {}

  CheckReport run() {
    tables_ = list_tables(source_, scope_);
    for (const auto& table : tables_) {
      if (!table.unlogged) ++report_.tables_in_scope;
    }
    check_source_server();
    check_source_role();
    check_source_tables();
    check_target_database();
    check_target_tables();
    check_not_carried();
    check_extensions();
    check_extension_versions();
    check_server_versions();
    check_reverse_replication_settings();
    std::stable_sort(report_.findings.begin(), report_.findings.end(),
                     [](const Finding& a, const Finding& b) { return a.severity < b.severity; });
    return std::move(report_);
  }

 private:
  void add(Severity severity, std::string code, std::string object, std::string reason,
           std::string fix) {
    report_.findings.push_back(
        Finding{severity, std::move(code), std::move(object), std::move(reason), std::move(fix)});
  }

  // Tables whose rows are replicated (permanent, not partitioned parents) and all tables
  // that are permanent (parents included, for privilege and existence checks).
  std::vector<const TableInfo*> permanent_tables() const {
    std::vector<const TableInfo*> out;
    for (const auto& table : tables_) {
      if (!table.unlogged) out.push_back(&table);
    }
    return out;
  }

  std::string oid_array(const std::vector<const TableInfo*>& tables) const {
    std::vector<std::string> oids;
    for (const auto* table : tables) oids.push_back(std::to_string(table->oid.value));
    return sql_array_literal(oids);
  }

  void check_source_server() {
    Result r = source_.exec(
        "SELECT current_setting('wal_level'), "
        "       current_setting('max_replication_slots')::int, "
        "       (SELECT count(*) FROM pg_replication_slots), "
        "       (SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1), "
        "       current_setting('max_wal_senders')::int, "
        "       (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender')",
        {options_.name}, "reading the source's replication settings");
    std::string wal_level(r.get(0, 0));
    if (wal_level != "logical") {
      add(Severity::fatal, "wal_level", "wal_level",
          fmt::format("the source's wal_level is '{}'; logical decoding needs 'logical'",
                      wal_level),
          "ALTER SYSTEM SET wal_level = logical on the source, then restart it (on managed "
          "services: enable logical replication in the parameter group)");
    }
    long long slots = to_int(r.get(0, 1));
    long long used_slots = to_int(r.get(0, 2));
    bool slot_exists = to_int(r.get(0, 3)) > 0;
    if (!slot_exists && used_slots + 1 > slots) {
      add(Severity::fatal, "max_replication_slots", "max_replication_slots",
          fmt::format("no free replication slot on the source ({} of {} in use); pgferry "
                      "needs 1",
                      used_slots, slots),
          fmt::format("ALTER SYSTEM SET max_replication_slots = {} and restart the source, "
                      "or drop an unused slot with pg_drop_replication_slot()",
                      used_slots + 1));
    }
    if (slot_exists) {
      add(Severity::info, "slot_exists", options_.name,
          fmt::format("replication slot \"{}\" already exists on the source; init and run "
                      "resume from it",
                      options_.name),
          "none; `pgferry cleanup` drops it if you want to start over");
    }
    long long senders = to_int(r.get(0, 4));
    long long used_senders = to_int(r.get(0, 5));
    if (used_senders + 1 > senders) {
      add(Severity::fatal, "max_wal_senders", "max_wal_senders",
          fmt::format("no free WAL sender on the source ({} of {} in use); pgferry needs 1",
                      used_senders, senders),
          fmt::format("ALTER SYSTEM SET max_wal_senders = {} and restart the source",
                      used_senders + 1));
    }
  }

  void check_source_role() {
    Result r = source_.exec(
        "SELECT current_user, r.rolsuper, r.rolreplication, "
        "       EXISTS (SELECT 1 FROM pg_roles g WHERE g.rolname = 'rds_replication' "
        "               AND pg_has_role(current_user, g.oid, 'MEMBER')), "
        "       has_database_privilege(current_database(), 'CREATE'), "
        "       EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1) "
        "FROM pg_roles r WHERE r.rolname = current_user",
        {options_.publication}, "reading the source role's attributes");
    std::string role(r.get(0, 0));
    source_superuser_ = to_bool(r.get(0, 1));
    bool replication = source_superuser_ || to_bool(r.get(0, 2)) || to_bool(r.get(0, 3));
    if (!replication) {
      add(Severity::fatal, "source_replication_privilege", "role " + role,
          fmt::format("the source role \"{}\" may not start replication", role),
          fmt::format("ALTER ROLE {} REPLICATION on the source (managed services: GRANT "
                      "rds_replication TO {})",
                      quote_ident(role), quote_ident(role)));
    }
    publication_exists_ = to_bool(r.get(0, 5));
    if (!publication_exists_ && !source_superuser_ && !to_bool(r.get(0, 4))) {
      add(Severity::fatal, "source_create_privilege", "database",
          fmt::format("the source role \"{}\" may not create the publication \"{}\" (no "
                      "CREATE on the database)",
                      role, options_.publication),
          fmt::format("GRANT CREATE ON DATABASE <db> TO {} on the source, or create the "
                      "publication yourself: CREATE PUBLICATION {} FOR TABLE ...",
                      quote_ident(role), quote_ident(options_.publication)));
    }
    source_role_ = role;
  }

  void check_source_tables() {
    auto tables = permanent_tables();
    if (tables.empty()) {
      add(Severity::warning, "no_tables", "scope",
          "no table on the source is in scope: nothing would be replicated",
          "check the --table / --exclude-table patterns and the database in --source");
      return;
    }
    Result r = source_.exec(
        "SELECT c.oid, c.relreplident, "
        "       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary), "
        "       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid "
        "               AND i.indisreplident), "
        "       coalesce(s.n_tup_upd + s.n_tup_del, 0), "
        "       has_table_privilege(c.oid, 'SELECT'), pg_has_role(c.relowner, 'USAGE'), "
        "       EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid "
        "               AND a.attnum > 0 AND NOT a.attisdropped) "
        "FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid "
        "WHERE c.oid = ANY($1::oid[])",
        {oid_array(tables)}, "reading the source tables' keys and privileges");
    std::map<std::uint32_t, int> row_of;
    for (int i = 0; i < r.rows(); ++i) {
      row_of[static_cast<std::uint32_t>(to_int(r.get(i, 0)))] = i;
    }
    for (const auto* table : tables) {
      auto it = row_of.find(table->oid.value);
      if (it == row_of.end()) continue;  // dropped since list_tables
      int i = it->second;
      std::string object = table->display_name();
      std::string name = table->qualified_name();
      if (!to_bool(r.get(i, 5))) {
        add(Severity::fatal, "source_select_privilege", object,
            fmt::format("the source role \"{}\" may not SELECT from the table, so the initial "
                        "copy cannot read it",
                        source_role_),
            fmt::format("GRANT SELECT ON {} TO {} on the source, or --exclude-table {}", name,
                        quote_ident(source_role_), object));
      }
      if (!publication_exists_ && !source_superuser_ && !to_bool(r.get(i, 6))) {
        add(Severity::fatal, "source_table_owner", object,
            fmt::format("the source role \"{}\" does not own the table, so it cannot add it to "
                        "the publication \"{}\"",
                        source_role_, options_.publication),
            fmt::format("run as the table's owner, or have the owner create the publication "
                        "first: CREATE PUBLICATION {} FOR TABLE {}",
                        quote_ident(options_.publication), name));
      }
      if (table->kind == TableKind::partitioned) continue;  // its leaves carry the rows
      char identity = r.get(i, 1).empty() ? 'd' : r.get(i, 1)[0];
      bool has_pk = to_bool(r.get(i, 2));
      bool has_identity_index = to_bool(r.get(i, 3));
      long long updates_deletes = to_int(r.get(i, 4));
      bool has_columns = to_bool(r.get(i, 7));
      if (!has_columns && identity == 'f') {
        // CREATE TABLE t (): its rows are all alike, so matching any one of them is exact.
        add(Severity::info, "no_columns", object,
            "a table without columns (REPLICA IDENTITY FULL): its rows are all alike, so a "
            "replicated DELETE removes any one of them, as PostgreSQL's subscriber does",
            "none");
      } else if (!has_columns && identity != 'n') {
        add(Severity::fatal, "no_primary_key", object,
            "a table without columns has no key: its DELETEs cannot be replicated",
            fmt::format("ALTER TABLE {} REPLICA IDENTITY FULL, or --exclude-table {}", name,
                        object));
      } else if (identity == 'n') {
        add(updates_deletes > 0 ? Severity::fatal : Severity::warning, "replica_identity_nothing",
            object,
            updates_deletes > 0
                ? fmt::format("REPLICA IDENTITY NOTHING, and the table has had {} updates or "
                              "deletes: once published, every UPDATE and DELETE on it fails on "
                              "the source",
                              updates_deletes)
                : "REPLICA IDENTITY NOTHING: once published, any UPDATE or DELETE on it fails "
                  "on the source",
            fmt::format("ALTER TABLE {} REPLICA IDENTITY DEFAULT (with a primary key), or "
                        "--exclude-table {}",
                        name, object));
      } else if (!has_pk && !(identity == 'i' && has_identity_index)) {
        add(Severity::fatal, "no_primary_key", object,
            identity == 'f'
                ? "no primary key (REPLICA IDENTITY FULL): rows cannot be matched exactly once "
                  "on the target"
                : "no primary key: its UPDATEs and DELETEs cannot be replicated",
            fmt::format("ALTER TABLE {} ADD PRIMARY KEY (...), or --exclude-table {}", name,
                        object));
      } else if (identity == 'f') {
        add(Severity::info, "replica_identity_full", object,
            "REPLICA IDENTITY FULL: every UPDATE and DELETE logs the whole old row (more WAL "
            "and lag)",
            fmt::format("ALTER TABLE {} REPLICA IDENTITY DEFAULT", name));
      } else if (identity == 'i') {
        add(Severity::info, "replica_identity_index", object,
            "no primary key; REPLICA IDENTITY USING INDEX identifies rows by a unique index",
            "none");
      }
    }
  }

  void check_target_database() {
    Result r = target_.exec(
        "SELECT current_user, r.rolsuper, has_database_privilege(current_database(), 'CREATE'), "
        "       to_regnamespace('pgferry') IS NOT NULL, "
        "       CASE WHEN to_regnamespace('pgferry') IS NULL THEN false "
        "            ELSE has_schema_privilege('pgferry', 'CREATE, USAGE') END, "
        "       to_regclass('pgferry.copy_progress') IS NOT NULL "
        "FROM pg_roles r WHERE r.rolname = current_user",
        "reading the target role's privileges");
    target_role_ = std::string(r.get(0, 0));
    target_superuser_ = to_bool(r.get(0, 1));
    replica_role_ = replica_role_access(target_);
    bool schema_exists = to_bool(r.get(0, 3));
    if (!target_superuser_) {
      if (!schema_exists && !to_bool(r.get(0, 2))) {
        add(Severity::fatal, "target_create_privilege", "database",
            fmt::format("the target role \"{}\" may not create the schema \"pgferry\" that "
                        "holds the progress record",
                        target_role_),
            fmt::format("GRANT CREATE ON DATABASE <db> TO {} on the target, or CREATE SCHEMA "
                        "pgferry AUTHORIZATION {}",
                        quote_ident(target_role_), quote_ident(target_role_)));
      } else if (schema_exists && !to_bool(r.get(0, 4))) {
        add(Severity::fatal, "target_schema_privilege", "schema pgferry",
            fmt::format("the target role \"{}\" may not use or create in the schema \"pgferry\"",
                        target_role_),
            fmt::format("GRANT USAGE, CREATE ON SCHEMA pgferry TO {} on the target",
                        quote_ident(target_role_)));
      }
    }
    if (to_bool(r.get(0, 5))) {
      Result copied =
          target_.exec("SELECT DISTINCT table_name FROM pgferry.copy_progress WHERE name = $1",
                       {options_.name}, "reading the initial copy's progress");
      for (int i = 0; i < copied.rows(); ++i) copied_.insert(std::string(copied.get(i, 0)));
    }
  }

  void check_target_tables() {
    auto tables = permanent_tables();
    if (tables.empty()) return;
    std::vector<std::string> schemas, names;
    for (const auto* table : tables) {
      schemas.push_back(table->schema);
      names.push_back(table->name);
    }
    Result r = target_.exec(
        "SELECT s.ord, c.oid, "
        "       has_table_privilege(c.oid, 'SELECT'), has_table_privilege(c.oid, 'INSERT'), "
        "       has_table_privilege(c.oid, 'UPDATE'), has_table_privilege(c.oid, 'DELETE'), "
        "       has_table_privilege(c.oid, 'TRUNCATE'), "
        "       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary), "
        "       EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conrelid = c.oid "
        "               AND k.contype = 'f') "
        "FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS s(nsp, rel, ord) "
        "JOIN pg_namespace n ON n.nspname = s.nsp "
        "JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = s.rel "
        "             AND c.relkind IN ('r', 'p')",
        {sql_array_literal(schemas), sql_array_literal(names)}, "finding the tables on the target");
    std::vector<std::optional<TargetTable>> found(tables.size());
    std::vector<std::string> target_oids;
    for (int i = 0; i < r.rows(); ++i) {
      auto index = static_cast<std::size_t>(to_int(r.get(i, 0)) - 1);
      TargetTable t;
      t.oid = static_cast<std::uint32_t>(to_int(r.get(i, 1)));
      t.can_select = to_bool(r.get(i, 2));
      t.can_insert = to_bool(r.get(i, 3));
      t.can_update = to_bool(r.get(i, 4));
      t.can_delete = to_bool(r.get(i, 5));
      t.can_truncate = to_bool(r.get(i, 6));
      t.has_primary_key = to_bool(r.get(i, 7));
      t.has_foreign_keys = to_bool(r.get(i, 8));
      target_oids.push_back(std::to_string(t.oid));
      found[index] = std::move(t);
    }

    auto source_columns = read_columns(source_, oid_array(tables), "source");
    auto target_columns = read_columns(target_, sql_array_literal(target_oids), "target");

    bool fk_warned = false;
    for (std::size_t k = 0; k < tables.size(); ++k) {
      const TableInfo& table = *tables[k];
      std::string object = table.display_name();
      std::string name = table.qualified_name();
      if (!found[k]) {
        add(Severity::fatal, "target_table_missing", object,
            "the table does not exist on the target",
            fmt::format("create the schema on the target first (pg_dump --schema-only "
                        "--table={} <source> | psql <target>), or --exclude-table {}",
                        name, object));
        continue;
      }
      const TargetTable& t = *found[k];
      std::vector<std::string> missing;
      if (!t.can_insert) missing.push_back("INSERT");
      if (!t.can_update) missing.push_back("UPDATE");
      if (!t.can_delete) missing.push_back("DELETE");
      if (!t.can_truncate) missing.push_back("TRUNCATE");
      if (!t.can_select) missing.push_back("SELECT");
      if (!missing.empty()) {
        std::string list = fmt::format("{}", fmt::join(missing, ", "));
        add(Severity::fatal, "target_table_privilege", object,
            fmt::format("the target role \"{}\" lacks {} on the table", target_role_, list),
            fmt::format("GRANT {} ON {} TO {} on the target", list, name,
                        quote_ident(target_role_)));
      }
      compare_columns(table, source_columns[table.oid.value], target_columns[t.oid]);
      if (table.kind == TableKind::partitioned) continue;
      if (!t.has_primary_key) {
        add(Severity::warning, "target_no_primary_key", object,
            "no primary key on the target: every replicated UPDATE and DELETE scans the table",
            fmt::format("ALTER TABLE {} ADD PRIMARY KEY (...) on the target", name));
      }
      if (t.has_foreign_keys && !replica_role_.allowed && !fk_warned) {
        fk_warned = true;
        add(Severity::warning, "target_foreign_keys", object,
            "foreign keys on the target, and the target role may not set "
            "session_replication_role: the parallel initial copy cannot defer them and may "
            "load a referencing row before its referenced row",
            fmt::format("as an administrator on the target: {} or drop the target's foreign "
                        "keys before init and re-create them after the copy",
                        replica_role_.grant_statement()));
      }
      if (t.can_select) check_target_empty(object, name);
    }
    check_target_firing(tables, found);
  }

  // User triggers and foreign-key actions that would fire again for replicated changes,
  // when the target role may not set session_replication_role = replica.
  void check_target_firing(const std::vector<const TableInfo*>& tables,
                           const std::vector<std::optional<TargetTable>>& found) {
    if (replica_role_.allowed) return;
    std::vector<std::string> names;
    std::vector<const TableInfo*> present;
    for (std::size_t k = 0; k < tables.size(); ++k) {
      if (!found[k]) continue;
      names.push_back(tables[k]->qualified_name());
      present.push_back(tables[k]);
    }
    if (names.empty()) return;
    Result r = target_.exec(kTargetFiringSql, {sql_array_literal(names)},
                            "listing the target tables' triggers and foreign-key actions");
    std::string fix = target_firing_fix(replica_role_.grant_statement());
    for (int i = 0; i < r.rows(); ++i) {
      const TableInfo& table = *present[static_cast<std::size_t>(to_int(r.get(i, 0)) - 1)];
      TargetFiring firing{std::string(r.get(i, 1)), std::string(r.get(i, 2)),
                          std::string(r.get(i, 3))};
      if (firing.fires_again()) {
        add(options_.allow_target_triggers ? Severity::warning : Severity::fatal, "target_triggers",
            table.display_name(),
            fmt::format(
                "{} on the target would fire again for replicated changes (the source "
                "sends their effects too: duplicated rows, or a cascaded change that "
                "then finds its row gone and stops replication); the target role "
                "\"{}\" may not set session_replication_role = replica{}",
                firing.describe(), replica_role_.role,
                options_.allow_target_triggers ? " (accepted: --allow-target-triggers)" : ""),
            fix);
      }
      if (!firing.replica_triggers.empty()) {
        add(Severity::warning, "target_replica_triggers", table.display_name(),
            fmt::format("triggers {} are declared ENABLE REPLICA: they fire under PostgreSQL's "
                        "subscriber but not here, since the target role \"{}\" may not set "
                        "session_replication_role = replica",
                        firing.replica_triggers, replica_role_.role),
            fmt::format("as an administrator on the target: {}", replica_role_.grant_statement()));
      }
    }
  }

  void check_target_empty(const std::string& object, const std::string& name) {
    bool has_rows = to_bool(target_
                                .exec(fmt::format("SELECT EXISTS (SELECT 1 FROM ONLY {})", name),
                                      "checking whether a target table is empty")
                                .scalar());
    if (!has_rows) return;
    if (copied_.count(object)) {
      add(Severity::info, "initial_copy_in_progress", object,
          fmt::format("the table has rows from an earlier initial copy under the name \"{}\"; "
                      "init resumes it",
                      options_.name),
          "none");
    } else if (options_.target_data == TargetData::must_be_empty) {
      add(Severity::fatal, "target_not_empty", object,
          "the table already has rows on the target; the initial copy would collide with "
          "them",
          fmt::format("TRUNCATE {} on the target, or skip the copy (init --no-data) and "
                      "check with --allow-nonempty",
                      name));
    } else {
      add(Severity::warning, "target_not_empty", object,
          "the table already has rows on the target; they must equal the source's rows at "
          "the slot's snapshot or replication will diverge",
          "none if you loaded the data yourself from the slot's snapshot");
    }
  }

  using ColumnMap = std::map<std::uint32_t, std::vector<Column>>;

  static ColumnMap read_columns(const Connection& conn, const std::string& oids,
                                std::string_view side) {
    Result r = conn.exec(
        "SELECT a.attrelid, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, "
        "       a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '', "
        "       a.attgenerated <> '' "
        "FROM pg_attribute a WHERE a.attrelid = ANY($1::oid[]) AND a.attnum > 0 "
        "AND NOT a.attisdropped ORDER BY a.attrelid, a.attnum",
        {oids}, fmt::format("reading the {} tables' columns", side));
    ColumnMap columns;
    for (int i = 0; i < r.rows(); ++i) {
      columns[static_cast<std::uint32_t>(to_int(r.get(i, 0)))].push_back(
          Column{std::string(r.get(i, 1)), std::string(r.get(i, 2)), to_bool(r.get(i, 3)),
                 to_bool(r.get(i, 4)), to_bool(r.get(i, 5))});
    }
    return columns;
  }

  void compare_columns(const TableInfo& table, const std::vector<Column>& source,
                       const std::vector<Column>& target) {
    std::string name = table.qualified_name();
    for (const auto& column : source) {
      // Generated columns are computed on each side, never replicated.
      if (column.generated) continue;
      std::string object = table.display_name() + "." + column.name;
      auto it = std::find_if(target.begin(), target.end(),
                             [&](const Column& c) { return c.name == column.name; });
      if (it == target.end()) {
        add(Severity::fatal, "target_column_missing", object,
            fmt::format("the column ({}) does not exist on the target", column.type),
            fmt::format("ALTER TABLE {} ADD COLUMN {} {} on the target", name,
                        quote_ident(column.name), column.type));
      } else if (it->generated) {
        add(Severity::fatal, "target_column_generated", object,
            "the column is generated on the target but holds data on the source",
            fmt::format("make {}.{} an ordinary column on the target", name,
                        quote_ident(column.name)));
      } else if (it->type != column.type) {
        bool safe = is_safe_widening(column.type, it->type);
        add(safe ? Severity::info : Severity::fatal, safe ? "type_widened" : "type_mismatch",
            object,
            fmt::format("type {} on the source, {} on the target{}", column.type, it->type,
                        safe ? " (a safe widening; copied in text format)"
                             : ": values may not convert or may change"),
            safe ? "none"
                 : fmt::format("ALTER TABLE {} ALTER COLUMN {} TYPE {} on the target", name,
                               quote_ident(column.name), column.type));
      }
    }
    for (const auto& column : target) {
      bool on_source = std::any_of(source.begin(), source.end(),
                                   [&](const Column& c) { return c.name == column.name; });
      if (on_source) continue;
      std::string object = table.display_name() + "." + column.name;
      if (column.not_null && !column.has_default) {
        add(Severity::fatal, "target_extra_column", object,
            "a NOT NULL column without a default exists only on the target: every replicated "
            "INSERT would fail",
            fmt::format("ALTER TABLE {} ALTER COLUMN {} DROP NOT NULL (or SET DEFAULT ...) on "
                        "the target",
                        name, quote_ident(column.name)));
      } else {
        add(Severity::info, "target_extra_column", object,
            "the column exists only on the target; it gets its default", "none");
      }
    }
  }

  void check_not_carried() {
    for (const auto& table : tables_) {
      if (!table.unlogged) continue;
      add(Severity::warning, "unlogged_table", table.display_name(),
          "unlogged table: logical replication does not carry it, so it is neither copied nor "
          "streamed",
          fmt::format("ALTER TABLE {} SET LOGGED on the source, or copy it yourself during "
                      "cutover (pg_dump --data-only --table={})",
                      table.qualified_name(), table.qualified_name()));
    }
    long long large_objects = to_int(
        source_.exec("SELECT count(*) FROM pg_largeobject_metadata", "counting large objects")
            .scalar());
    if (large_objects > 0) {
      add(Severity::warning, "large_objects", "pg_largeobject",
          fmt::format("{} large objects on the source: logical replication does not carry "
                      "large objects",
                      large_objects),
          "copy them at cutover (pg_dump --large-objects --data-only), or move them into bytea "
          "columns");
    }
    Result r = source_.exec(
        "SELECT n.nspname, c.relname, c.relkind = 'm' "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('m', 'S') ORDER BY 1, 2",
        "listing materialized views and sequences");
    for (int i = 0; i < r.rows(); ++i) {
      std::string schema(r.get(i, 0));
      std::string name(r.get(i, 1));
      bool matview = to_bool(r.get(i, 2));
      if (is_excluded_schema(schema)) continue;
      std::string object = schema + "." + name;
      if (matview) {
        if (!scope_.matches(schema, name)) continue;
        add(Severity::warning, "materialized_view", object,
            "materialized view: logical replication does not carry it",
            fmt::format("REFRESH MATERIALIZED VIEW {} on the target before cutover",
                        qualified_name(schema, name)));
      } else {
        add(Severity::info, "sequence", object,
            "sequence: not carried by logical replication; synced separately",
            "pgferry sequences sync (cutover runs it)");
      }
    }
    add(Severity::info, "ddl", "database",
        "DDL (CREATE/ALTER/DROP) is not replicated: schema changes on the source during the "
        "migration stop replication of the affected tables",
        "freeze schema changes until cutover, or apply each one to the target first");
  }

  void check_extensions() {
    Result source_ext = source_.exec(
        "SELECT extname, extversion FROM pg_extension WHERE extname <> 'plpgsql' ORDER BY 1",
        "listing the source's extensions");
    Result target_ext = target_.exec(
        "SELECT name, default_version, coalesce(installed_version, '') "
        "FROM pg_available_extensions",
        "listing the target's available extensions");
    std::map<std::string, std::pair<std::string, std::string>> available;
    for (int i = 0; i < target_ext.rows(); ++i) {
      available[std::string(target_ext.get(i, 0))] = {std::string(target_ext.get(i, 1)),
                                                      std::string(target_ext.get(i, 2))};
    }
    for (int i = 0; i < source_ext.rows(); ++i) {
      std::string name(source_ext.get(i, 0));
      std::string version(source_ext.get(i, 1));
      std::string object = "extension " + name;
      auto it = available.find(name);
      if (it == available.end()) {
        add(Severity::fatal, "extension_unavailable", object,
            fmt::format("extension {} {} is installed on the source but not available on the "
                        "target server",
                        name, version),
            fmt::format("install the package that provides {} on the target server, then "
                        "CREATE EXTENSION {}",
                        name, quote_ident(name)));
      } else if (it->second.second.empty()) {
        add(Severity::warning, "extension_not_created", object,
            fmt::format("extension {} is installed on the source but not created in the "
                        "target database",
                        name),
            fmt::format("CREATE EXTENSION {} on the target", quote_ident(name)));
      } else if (it->second.second != version) {
        add(Severity::info, "extension_version", object,
            fmt::format("extension {} is version {} on the source and {} on the target", name,
                        version, it->second.second),
            "none if the objects your tables use exist in both versions");
      }
    }
  }

  // The version of an extension the source uses must be one the target's packages can
  // create, or the target's objects differ from the source's (check_extensions() covers an
  // extension missing altogether). Typical across major versions: a newer source (a
  // rollback's reverse replication) uses a version the older target's contrib lacks.
  void check_extension_versions() {
    Result source_ext = source_.exec(
        "SELECT extname, extversion FROM pg_extension WHERE extname <> 'plpgsql' ORDER BY 1",
        "listing the source's extensions");
    Result target_versions =
        target_.exec("SELECT name, version FROM pg_available_extension_versions",
                     "listing the extension versions the target can install");
    std::map<std::string, std::vector<std::string>> versions;
    for (int i = 0; i < target_versions.rows(); ++i) {
      versions[std::string(target_versions.get(i, 0))].emplace_back(target_versions.get(i, 1));
    }
    for (int i = 0; i < source_ext.rows(); ++i) {
      std::string name(source_ext.get(i, 0));
      std::string version(source_ext.get(i, 1));
      auto it = versions.find(name);
      if (it == versions.end()) continue;  // unavailable: reported by check_extensions()
      if (std::find(it->second.begin(), it->second.end(), version) != it->second.end()) continue;
      // "1.10" after "1.9": compare the dot-separated parts as numbers.
      auto parts = [](const std::string& v) {
        std::vector<long long> out;
        std::istringstream in(v);
        for (std::string part; std::getline(in, part, '.');) out.push_back(to_int(part));
        return out;
      };
      std::sort(it->second.begin(), it->second.end(),
                [&](const std::string& a, const std::string& b) { return parts(a) < parts(b); });
      add(Severity::warning, "extension_version_unavailable", "extension " + name,
          fmt::format("extension {} is version {} on the source, but the target server can only "
                      "install {}",
                      name, version, fmt::join(it->second, ", ")),
          fmt::format("install a package of {} that provides version {} on the target server, "
                      "or make sure the objects your tables use exist in the target's version",
                      name, version));
    }
  }

  // Major versions: replicating to an older server works (rollback's reverse replication does
  // it) but is not an upgrade; the operator should know it is happening.
  void check_server_versions() {
    int source_version = source_.server_version();
    int target_version = target_.server_version();
    auto major = [](int version) { return version / 10000; };
    auto text = [](int version) { return fmt::format("{}.{}", version / 10000, version % 10000); };
    if (major(target_version) < major(source_version)) {
      add(Severity::warning, "target_older_than_source", "server version",
          fmt::format("the target runs PostgreSQL {}, older than the source's {}: data types, "
                      "functions and syntax the source uses may not exist on the target, and "
                      "pg_dump {} output (init --schema) may not restore there",
                      text(target_version), text(source_version), major(source_version)),
          fmt::format("for an upgrade use a target of PostgreSQL {} or newer; replicating "
                      "back to the old server (rollback) is fine when its schema is the "
                      "source's",
                      major(source_version)));
    } else if (major(target_version) > major(source_version)) {
      add(Severity::info, "major_upgrade", "server version",
          fmt::format("PostgreSQL {} to {}: a major-version upgrade", text(source_version),
                      text(target_version)),
          fmt::format("for init --schema use PostgreSQL {}'s pg_dump and psql (--pg-bindir)",
                      major(target_version)));
    }
  }

  // A rollback replicates from the target back to the source: the target then needs what
  // any source needs. Not needed to start replication, so warnings, each with its fix.
  void check_reverse_replication_settings() {
    Result r = target_.exec(
        "SELECT current_setting('wal_level'), "
        "       current_setting('max_replication_slots')::int, "
        "       (SELECT count(*) FROM pg_replication_slots), "
        "       current_setting('max_wal_senders')::int, "
        "       (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender')",
        "reading the target's replication settings");
    std::string wal_level(r.get(0, 0));
    if (wal_level != "logical") {
      add(Severity::warning, "target_wal_level", "wal_level",
          fmt::format("the target's wal_level is '{}': the reverse replication that rollback "
                      "uses needs 'logical' there",
                      wal_level),
          "ALTER SYSTEM SET wal_level = logical on the target and restart it before the "
          "cutover");
    }
    // One more of `setting` (in use `used` of `limit`) is needed for the reverse replication.
    auto need_one_more = [&](const char* setting, const char* what, long long limit,
                             long long used) {
      if (used + 1 <= limit) return;
      add(Severity::warning, fmt::format("target_{}", setting), setting,
          fmt::format("no free {} on the target ({} of {} in use): the reverse replication "
                      "that rollback uses needs 1",
                      what, used, limit),
          fmt::format("ALTER SYSTEM SET {} = {} on the target and restart it before the cutover",
                      setting, used + 1));
    };
    need_one_more("max_replication_slots", "replication slot", to_int(r.get(0, 1)),
                  to_int(r.get(0, 2)));
    need_one_more("max_wal_senders", "WAL sender", to_int(r.get(0, 3)), to_int(r.get(0, 4)));
  }

  const Connection& source_;
  const Connection& target_;
  const TableScope& scope_;
  const CheckOptions& options_;
  std::vector<TableInfo> tables_;
  CheckReport report_;
  std::string source_role_, target_role_;
  bool source_superuser_ = false, target_superuser_ = false, publication_exists_ = false;
  ReplicaRoleAccess replica_role_;
  std::set<std::string> copied_;
};

// Word-wraps `text` to `width` columns (a word longer than the width gets its own line).
std::vector<std::string> wrap(const std::string& text, std::size_t width) {
  std::vector<std::string> lines;
  std::istringstream words(text);
  std::string word, line;
  while (words >> word) {
    if (!line.empty() && line.size() + 1 + word.size() > width) {
      lines.push_back(std::move(line));
      line.clear();
    }
    if (!line.empty()) line += ' ';
    line += word;
  }
  if (!line.empty() || lines.empty()) lines.push_back(std::move(line));
  return lines;
}

}  // namespace

CheckReport run_checks(const Connection& source, const Connection& target, const TableScope& scope,
                       const CheckOptions& options) {
  return Checker(source, target, scope, options).run();
}

std::string render_text(const CheckReport& report) {
  constexpr std::size_t kReasonWidth = 56;
  constexpr std::size_t kFixWidth = 56;
  std::size_t object_width = 6;
  for (const auto& f : report.findings) {
    object_width = std::max(object_width, std::min<std::size_t>(f.object.size(), 40));
  }
  std::string out;
  auto row = [&](std::string_view severity, std::string_view object, std::string_view reason,
                 std::string_view fix) {
    out += fmt::format("{:<8} {:<{}} {:<{}} {}", severity, object, object_width, reason,
                       kReasonWidth, fix);
    while (!out.empty() && out.back() == ' ') out.pop_back();
    out += '\n';
  };
  row("SEVERITY", "OBJECT", "REASON", "FIX");
  for (const auto& f : report.findings) {
    auto reason = wrap(f.reason, kReasonWidth);
    auto fix = wrap(f.fix, kFixWidth);
    auto object = wrap(f.object, object_width);
    std::size_t lines = std::max({reason.size(), fix.size(), object.size()});
    for (std::size_t i = 0; i < lines; ++i) {
      row(i == 0 ? to_string(f.severity) : "", i < object.size() ? object[i] : "",
          i < reason.size() ? reason[i] : "", i < fix.size() ? fix[i] : "");
    }
  }
  out += fmt::format(
      "\n{}: {} tables in scope; {} fatal, {} warnings, {} info\n",
      report.ok() ? "OK, replication can start" : "FAILED, fix the fatal findings first",
      report.tables_in_scope, report.count(Severity::fatal), report.count(Severity::warning),
      report.count(Severity::info));
  return out;
}

nlohmann::ordered_json to_json(const CheckReport& report) {
  nlohmann::ordered_json findings = nlohmann::ordered_json::array();
  for (const auto& f : report.findings) {
    findings.push_back(nlohmann::ordered_json{{"severity", std::string(to_string(f.severity))},
                                              {"code", f.code},
                                              {"object", f.object},
                                              {"reason", f.reason},
                                              {"fix", f.fix}});
  }
  return nlohmann::ordered_json{{"ok", report.ok()},
                                {"fatal", report.count(Severity::fatal)},
                                {"warnings", report.count(Severity::warning)},
                                {"info", report.count(Severity::info)},
                                {"tables_in_scope", report.tables_in_scope},
                                {"findings", std::move(findings)}};
}

}  // namespace pgferry::replication
