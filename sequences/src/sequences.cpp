// Sequence discovery, diff and sync against real servers (the arithmetic is in
// target_value.cpp).
#include "pgferry/sequences/sequences.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <map>
#include <utility>

#include "pgferry/replication/core/error.hpp"

namespace pgferry::sequences {

namespace repl = pgferry::replication;

namespace {

// Every sequence with its definition and what owns it. deptype 'a' is the OWNED BY link of a
// serial column, 'i' the internal link of an identity column (both point at the column).
constexpr std::string_view kDiscoverSql = R"sql(
SELECT n.nspname, c.relname, pg_catalog.format_type(s.seqtypid, NULL), s.seqincrement,
       s.seqmin, s.seqmax, s.seqstart, s.seqcycle, d.deptype, dn.nspname, dc.relname, a.attname,
       CASE WHEN pg_catalog.has_sequence_privilege(c.oid, 'SELECT,USAGE')
            THEN pg_catalog.pg_sequence_last_value(c.oid) END
FROM pg_catalog.pg_sequence s
JOIN pg_catalog.pg_class c ON c.oid = s.seqrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN LATERAL (
  SELECT d.deptype, d.refobjid, d.refobjsubid
  FROM pg_catalog.pg_depend d
  WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = c.oid
    AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
    AND d.deptype IN ('a', 'i') AND d.refobjsubid > 0
  ORDER BY d.deptype DESC
  LIMIT 1) d ON true
LEFT JOIN pg_catalog.pg_class dc ON dc.oid = d.refobjid
LEFT JOIN pg_catalog.pg_namespace dn ON dn.oid = dc.relnamespace
LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
WHERE c.relkind = 'S' AND c.relpersistence <> 't'
ORDER BY n.nspname, c.relname
)sql";

// Sequences read per UNION ALL statement. Planning cost grows faster than the branch count
// (500 branches: 0.5 ms each, 50: 0.2 ms each on PostgreSQL 15).
constexpr std::size_t kValuesBatch = 50;

std::int64_t parse_int64(std::string_view text, std::string_view what) {
  std::int64_t value = 0;
  auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc{} || end != text.data() + text.size()) {
    throw repl::Error(fmt::format("unexpected {} \"{}\" from the server", what, text));
  }
  return value;
}

// An identifier as SQL needs it: bare when it would read back the same (lower-case letters,
// digits, underscores, not starting with a digit), else double-quoted. Reserved words are
// not detected; sequence names rarely are one.
std::string identifier_for_sql(std::string_view identifier) {
  bool bare = !identifier.empty() && !(identifier[0] >= '0' && identifier[0] <= '9');
  for (char c : identifier) {
    bare = bare && ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_');
  }
  return bare ? std::string(identifier) : repl::quote_ident(identifier);
}

bool glob_matches(std::string_view glob, std::string_view text) {
  // Iterative wildcard match with backtracking to the last '*'.
  std::size_t g = 0, t = 0, star = std::string_view::npos, mark = 0;
  while (t < text.size()) {
    if (g < glob.size() && (glob[g] == '?' || glob[g] == text[t])) {
      ++g;
      ++t;
    } else if (g < glob.size() && glob[g] == '*') {
      star = g++;
      mark = t;
    } else if (star != std::string_view::npos) {
      g = star + 1;
      t = ++mark;
    } else {
      return false;
    }
  }
  while (g < glob.size() && glob[g] == '*') ++g;
  return g == glob.size();
}

// Reads (last_value, is_called) from the sequences themselves, for those at `indexes`.
void read_states(const Connection& conn, std::vector<SequenceInfo>& sequences,
                 const std::vector<std::size_t>& indexes) {
  for (std::size_t first = 0; first < indexes.size(); first += kValuesBatch) {
    std::size_t last = std::min(indexes.size(), first + kValuesBatch);
    std::string sql;
    for (std::size_t i = first; i < last; ++i) {
      if (i > first) sql += "\nUNION ALL ";
      sql += fmt::format("SELECT {}, last_value, is_called FROM {}", indexes[i],
                         sequences[indexes[i]].qualified_name());
    }
    auto result = conn.exec(sql, "reading sequence values");
    if (static_cast<std::size_t>(result.rows()) != last - first) {
      throw repl::Error("reading sequence values: unexpected row count");
    }
    for (int row = 0; row < result.rows(); ++row) {
      auto index = static_cast<std::size_t>(parse_int64(result.get(row, 0), "row index"));
      if (index >= sequences.size()) throw repl::Error("reading sequence values: bad row index");
      sequences[index].state.last_value = parse_int64(result.get(row, 1), "last_value");
      sequences[index].state.is_called = result.get(row, 2) == "t";
    }
  }
}

// A query sent without waiting for its result (libpq's asynchronous API), so that another
// server can work meanwhile. The connection is not usable until wait() or destruction.
class PendingQuery {
 public:
  PendingQuery(const Connection& conn, std::string_view sql, std::string_view context)
      : conn_(&conn), context_(context) {
    std::string text(sql);
    if (PQsendQuery(conn.native(), text.c_str()) == 0) {
      repl::throw_pg_error(conn.native(), nullptr, conn.side(), context);
    }
  }
  PendingQuery(const PendingQuery&) = delete;
  PendingQuery& operator=(const PendingQuery&) = delete;
  ~PendingQuery() {
    if (!collected_) drain();
  }

  // The (single) result; throws the typed error of a failed query.
  repl::Result wait() {
    PGresult* first = PQgetResult(conn_->native());
    drain();
    return conn_->check(first, context_);
  }

 private:
  void drain() {
    collected_ = true;
    while (PGresult* extra = PQgetResult(conn_->native())) PQclear(extra);
  }

  const Connection* conn_;
  std::string context_;
  bool collected_ = false;
};

std::vector<SequenceInfo> discovered(const Connection& conn, const repl::Result& result,
                                     const SyncOptions& options);

DiffReport build_report(std::vector<SequenceInfo> source, std::vector<SequenceInfo> target,
                        std::int64_t margin) {
  std::map<std::pair<std::string, std::string>, SequenceInfo*> on_target;
  for (auto& sequence : target) on_target[{sequence.schema, sequence.name}] = &sequence;

  DiffReport report;
  report.margin = margin;
  report.sequences.reserve(source.size());
  for (auto& sequence : source) {
    SequenceDiff diff;
    auto found = on_target.find({sequence.schema, sequence.name});
    if (found == on_target.end()) {
      diff.plan.status = SequenceStatus::missing;
      diff.plan.note = fmt::format(
          "sequence {} is missing on the target; fix: create it on the target (copy the schema, "
          "e.g. pg_dump --schema-only from the source), then sync again",
          sequence.sql_name());
    } else {
      diff.target = std::move(*found->second);
      diff.plan = plan_target(sequence.sql_name(), sequence.definition, sequence.state,
                              diff.target->definition, diff.target->state, margin);
    }
    diff.source = std::move(sequence);
    report.sequences.push_back(std::move(diff));
  }
  return report;
}

void check_margin(std::int64_t margin) {
  if (margin < 0) {
    throw repl::ConfigError(fmt::format("--margin must be 0 or more increments, got {}", margin));
  }
}

// SELECT setval(...) for every change, in one statement.
std::string setval_sql(const std::vector<const SequenceDiff*>& changes) {
  std::string sql = "SELECT pg_catalog.setval(v.seq, v.value, v.is_called) FROM (VALUES ";
  for (std::size_t i = 0; i < changes.size(); ++i) {
    const auto& diff = *changes[i];
    sql += fmt::format("{}({}::pg_catalog.regclass, {}::bigint, {})", i == 0 ? "" : ", ",
                       repl::quote_literal(diff.source.qualified_name()), diff.plan.setval->value,
                       diff.plan.setval->is_called ? "true" : "false");
  }
  sql += ") AS v(seq, value, is_called)";
  return sql;
}

}  // namespace

std::string_view to_string(SequenceKind kind) {
  switch (kind) {
    case SequenceKind::serial:
      return "serial";
    case SequenceKind::identity:
      return "identity";
    case SequenceKind::standalone:
      return "standalone";
  }
  return "unknown";
}

std::string SequenceInfo::qualified_name() const {
  return repl::qualified_name(schema, name);
}

std::string SequenceInfo::display_name() const {
  return schema + "." + name;
}

std::string SequenceInfo::sql_name() const {
  return identifier_for_sql(schema) + "." + identifier_for_sql(name);
}

bool schema_in_scope(std::string_view schema, const SyncOptions& options) {
  if (schema == "pgferry" || schema == "pg_catalog" || schema == "information_schema" ||
      schema.starts_with("pg_toast") || schema.starts_with("pg_temp_")) {
    return false;
  }
  for (const auto& pattern : options.exclude_schemas) {
    if (glob_matches(pattern, schema)) return false;
  }
  if (options.include_schemas.empty()) return true;
  return std::any_of(options.include_schemas.begin(), options.include_schemas.end(),
                     [&](const std::string& pattern) { return glob_matches(pattern, schema); });
}

std::vector<SequenceInfo> discover_sequences(const Connection& conn, const SyncOptions& options) {
  return discovered(conn, conn.exec(kDiscoverSql, "listing sequences"), options);
}

namespace {

std::vector<SequenceInfo> discovered(const Connection& conn, const repl::Result& result,
                                     const SyncOptions& options) {
  std::vector<SequenceInfo> sequences;
  std::vector<std::size_t> read_from_sequence;
  for (int row = 0; row < result.rows(); ++row) {
    std::string_view schema = result.get(row, 0);
    if (!schema_in_scope(schema, options)) continue;
    SequenceInfo info;
    info.schema = schema;
    info.name = result.get(row, 1);
    info.definition.data_type = result.get(row, 2);
    info.definition.increment = parse_int64(result.get(row, 3), "seqincrement");
    info.definition.min_value = parse_int64(result.get(row, 4), "seqmin");
    info.definition.max_value = parse_int64(result.get(row, 5), "seqmax");
    info.definition.start_value = parse_int64(result.get(row, 6), "seqstart");
    info.definition.cycle = result.get(row, 7) == "t";
    if (auto last_value = result.optional(row, 12)) {
      info.state = {parse_int64(*last_value, "last_value"), true};
    } else {
      // Never called since its last setval(.., false) (or no privilege, which the direct read
      // then reports): only the sequence itself knows the value.
      read_from_sequence.push_back(sequences.size());
    }
    if (auto deptype = result.optional(row, 8)) {
      info.kind = *deptype == "i" ? SequenceKind::identity : SequenceKind::serial;
      info.owned_by =
          fmt::format("{}.{}.{}", result.get(row, 9), result.get(row, 10), result.get(row, 11));
    }
    sequences.push_back(std::move(info));
  }
  read_states(conn, sequences, read_from_sequence);
  return sequences;
}

// Source and target catalogs are read at the same time: the target's query is sent first and
// collected after the source's, so the two servers work in parallel.
std::pair<std::vector<SequenceInfo>, std::vector<SequenceInfo>> discover_both(
    const Connection& source, const Connection& target, const SyncOptions& options) {
  PendingQuery on_target(target, kDiscoverSql, "listing sequences");
  auto source_sequences = discover_sequences(source, options);
  auto target_result = on_target.wait();
  return {std::move(source_sequences), discovered(target, target_result, options)};
}

}  // namespace

std::size_t DiffReport::count(SequenceStatus status) const {
  return static_cast<std::size_t>(
      std::count_if(sequences.begin(), sequences.end(),
                    [&](const SequenceDiff& diff) { return diff.plan.status == status; }));
}

bool DiffReport::ok() const {
  return count(SequenceStatus::behind) == 0 && count(SequenceStatus::missing) == 0 &&
         count(SequenceStatus::incompatible) == 0;
}

DiffReport diff_sequences(const Connection& source, const Connection& target,
                          const SyncOptions& options) {
  check_margin(options.margin);
  auto [on_source, on_target] = discover_both(source, target, options);
  return build_report(std::move(on_source), std::move(on_target), options.margin);
}

SyncReport sync_sequences(const Connection& source, const Connection& target, SyncOptions options) {
  auto started = std::chrono::steady_clock::now();
  check_margin(options.margin);
  repl::Transaction transaction(target);
  auto [on_source, on_target] = discover_both(source, target, options);
  SyncReport report;
  report.diff = build_report(std::move(on_source), std::move(on_target), options.margin);

  std::string problems;
  std::vector<const SequenceDiff*> changes;
  for (const auto& diff : report.diff.sequences) {
    if (diff.plan.status == SequenceStatus::missing ||
        diff.plan.status == SequenceStatus::incompatible) {
      problems += "\n  " + diff.plan.note;
    } else if (diff.plan.setval) {
      changes.push_back(&diff);
    }
  }
  if (!problems.empty()) {
    throw repl::CheckFailed(fmt::format("cannot sync sequences, nothing was changed:{}", problems));
  }

  if (!changes.empty()) {
    auto result = target.exec(setval_sql(changes), "setting target sequences");
    if (static_cast<std::size_t>(result.rows()) != changes.size()) {
      throw repl::Error(
          fmt::format("setval returned {} rows for {} sequences", result.rows(), changes.size()));
    }
  }
  transaction.commit();

  for (const auto* diff : changes) {
    SequenceChange change;
    change.schema = diff->source.schema;
    change.name = diff->source.name;
    change.status = diff->plan.status;
    change.before = diff->target->state;
    change.after = *diff->plan.setval;
    change.next_before = next_value(diff->target->definition, diff->target->state);
    change.next_after = next_value(diff->target->definition,
                                   SequenceState{change.after.value, change.after.is_called});
    change.note = diff->plan.note;
    report.changed.push_back(std::move(change));
  }
  report.elapsed = std::chrono::duration_cast<std::chrono::microseconds>(
      std::chrono::steady_clock::now() - started);
  return report;
}

}  // namespace pgferry::sequences
