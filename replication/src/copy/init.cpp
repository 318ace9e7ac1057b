// `pgferry init` and `pgferry cleanup` as a library: the publication, slot and progress
// steps, the plan and the copy with its retries and resume, and the schema halves around
// it (the design is in init.hpp).
#include "pgferry/replication/copy/init.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <libpq-fe.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <set>
#include <stop_token>
#include <thread>

#include "pgferry/replication/apply/progress.hpp"
#include "pgferry/replication/copy/initial_copy_resume.hpp"
#include "pgferry/replication/copy/initial_copy_schema.hpp"
#include "pgferry/replication/core/error.hpp"
#include "pgferry/replication/core/pg.hpp"
#include "pgferry/replication/stream/replication_connection.hpp"

namespace pgferry::replication {

namespace {

using namespace std::chrono_literals;

// WAL past which a resume does not decode the old slot to find what changed, and copies
// every finished table again instead.
constexpr std::int64_t kResumeScanLimitBytes = std::int64_t{4} << 30;

struct SlotState {
  std::string plugin;
  bool same_database = false;
  Lsn confirmed_flush;
  bool active = false;
};

std::optional<SlotState> read_slot(const Connection& source, const std::string& name) {
  auto r = source.exec(
      "SELECT plugin, database = current_database(), coalesce(confirmed_flush_lsn::text, "
      "'0/0'), active FROM pg_replication_slots WHERE slot_name = $1",
      {name}, "looking up the replication slot");
  if (r.rows() == 0) return std::nullopt;
  return SlotState{std::string(r.get(0, 0)), r.get(0, 1) == "t",
                   Lsn::from_string(r.get(0, 2), "slot confirmed_flush_lsn"), r.get(0, 3) == "t"};
}

void require_pgoutput_slot_here(const SlotState& slot, const std::string& name) {
  if (slot.plugin != "pgoutput" || !slot.same_database) {
    throw ConfigError(fmt::format(
        "replication slot \"{}\" exists but is not a pgoutput slot of this database: choose "
        "another --name, or drop it (pgferry cleanup) if it is a leftover",
        name));
  }
}

struct PublicationResult {
  bool created = false;
  bool altered = false;
};

// FOR ALL TABLES without patterns, else FOR TABLE with the tables in scope that carry rows
// (leaf partitions themselves, publish_via_partition_root = false).
PublicationResult ensure_publication(const Connection& source, const std::string& name,
                                     bool patterns, const std::vector<TableInfo>& tables) {
  PublicationResult result;
  std::vector<std::string> listed;
  for (const auto& table : tables) {
    if (table.carries_rows()) listed.push_back(table.qualified_name());
  }
  auto existing = source.exec("SELECT puballtables FROM pg_publication WHERE pubname = $1", {name},
                              "looking up the publication");
  if (existing.rows() == 0) {
    std::string what;
    if (!patterns) {
      what = "FOR ALL TABLES";
    } else {
      if (listed.empty()) {
        throw CheckFailed(
            "no table matches the --table / --exclude-table patterns: nothing to replicate");
      }
      what = "FOR TABLE " + fmt::format("{}", fmt::join(listed, ", "));
    }
    source.exec(fmt::format("CREATE PUBLICATION {} {} WITH (publish_via_partition_root = false)",
                            quote_ident(name), what),
                fmt::format("creating publication \"{}\" ({})", name,
                            patterns ? "FOR TABLE needs ownership of the tables"
                                     : "FOR ALL TABLES needs superuser"));
    result.created = true;
    return result;
  }
  if (existing.get(0, 0) == "t") return result;  // every table, whatever the scope
  std::vector<std::string> missing;
  std::vector<std::string> schemas, names;
  for (const auto& table : tables) {
    if (!table.carries_rows()) continue;
    schemas.push_back(table.schema);
    names.push_back(table.name);
  }
  auto r = source.exec(
      "SELECT s.ord FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS s(nsp, rel, ord) "
      "WHERE NOT EXISTS (SELECT 1 FROM pg_publication_tables p WHERE p.pubname = $1 "
      "AND p.schemaname = s.nsp AND p.tablename = s.rel) ORDER BY s.ord",
      {name, sql_array_literal(schemas), sql_array_literal(names)},
      "comparing the publication's tables with the scope");
  for (int i = 0; i < r.rows(); ++i)
    missing.push_back(listed.at(std::stoul(std::string(r.get(i, 0))) - 1));
  if (!missing.empty()) {
    source.exec(
        fmt::format("ALTER PUBLICATION {} ADD TABLE {}", quote_ident(name),
                    fmt::join(missing, ", ")),
        fmt::format("adding {} tables in scope to publication \"{}\"", missing.size(), name));
    result.altered = true;
  }
  return result;
}

// The slot, its snapshot and what a resume keeps.
struct PreparedCopy {
  ReplicationConnection replication;
  CreatedSlot slot;
  std::vector<std::string> kept;      // finished under an earlier snapshot, proven unchanged
  std::vector<std::string> recopied;  // finished earlier, emptied to be copied again
  std::string recopy_reason;
};

// Drops the old slot if any and creates the new one with an exported snapshot, then
// decides which tables finished under the old snapshot stay (initial_copy_resume.hpp).
PreparedCopy prepare_slot(const Connection& source, const Connection& target,
                          const std::string& source_conninfo, const std::string& name,
                          const std::string& publication, bool publication_altered,
                          const std::vector<TableInfo>& tables,
                          const std::string& post_data_pending) {
  auto slot = read_slot(source, name);
  if (slot) require_pgoutput_slot_here(*slot, name);
  if (slot && slot->active) {
    throw ConfigError(fmt::format(
        "replication slot \"{}\" is in use by another session: stop it (another pgferry init "
        "or run with the same --name) and re-run init",
        name));
  }
  auto origin = read_copy_origin(target, name);
  auto finished = finished_copies(target, name);
  std::map<std::string, const TableInfo*> by_name;
  for (const auto& table : tables) {
    if (table.carries_rows()) by_name[table.display_name()] = &table;
  }

  std::string why_not;
  bool any_finished = false;
  for (const auto& [table, snapshot] : finished) any_finished |= by_name.count(table) > 0;
  if (any_finished) {
    if (!slot) {
      why_not = "the old slot is gone";
    } else if (!origin || origin->consistent_point != slot->confirmed_flush) {
      why_not = "the old slot does not match the recorded copy origin";
    } else if (publication_altered) {
      why_not = "the publication's table list changed";
    } else {
      for (const auto& [table, snapshot] : finished) {
        if (by_name.count(table) && snapshot != origin->snapshot) {
          why_not = fmt::format("table {} was copied under another snapshot", table);
          break;
        }
      }
    }
    if (why_not.empty()) {
      auto distance = std::stoll(std::string(
          source
              .exec("SELECT pg_current_wal_lsn() - $1::pg_lsn", {slot->confirmed_flush.to_string()})
              .scalar()));
      if (distance > kResumeScanLimitBytes) {
        why_not = fmt::format("{:.1f} GB of WAL were written since the first snapshot",
                              static_cast<double>(distance) / (1 << 30));
      }
    }
  }
  bool scan = any_finished && why_not.empty();
  std::string scan_slot = fmt::format("{}_resume_{}", name.substr(0, 40), ::getpid());
  if (slot) {
    if (scan) {
      try {
        source.exec("SELECT pg_copy_logical_replication_slot($1, $2, true)", {name, scan_slot},
                    "keeping the old slot's position in a temporary slot");
      } catch (const SqlError& e) {
        scan = false;
        why_not = fmt::format("the old slot could not be copied ({})", e.what());
      }
    }
    source.exec("SELECT pg_drop_replication_slot($1)", {name},
                fmt::format("dropping the unconsumed slot \"{}\" of an interrupted init", name));
    spdlog::info("init slot={} dropped the slot of an interrupted init (lsn={})", name,
                 slot->confirmed_flush);
  }

  auto replication = ReplicationConnection::open(source_conninfo);
  SlotOptions slot_options;
  slot_options.snapshot = SnapshotAction::export_snapshot;
  auto created = replication.create_logical_slot(name, slot_options);
  if (!created.snapshot_name) {
    throw ProtocolError("CREATE_REPLICATION_SLOT returned no snapshot name", 0, 0);
  }
  spdlog::info("init slot={} created lsn={} snapshot={}", name, created.consistent_point,
               *created.snapshot_name);

  PreparedCopy prepared{std::move(replication), created, {}, {}, why_not};
  std::set<std::uint32_t> changed;
  if (scan) {
    changed = changed_relations(source, scan_slot, publication, created.consistent_point);
    source.exec("SELECT pg_drop_replication_slot($1)", {scan_slot});
  }
  std::vector<const TableInfo*> recopy;
  for (const auto& [table, snapshot] : finished) {
    auto it = by_name.find(table);
    if (it == by_name.end()) continue;  // out of scope now: left alone
    if (scan && !changed.count(it->second->oid.value)) {
      prepared.kept.push_back(table);
    } else {
      recopy.push_back(it->second);
      prepared.recopied.push_back(table);
    }
  }
  if (scan && !prepared.recopied.empty()) {
    prepared.recopy_reason = "changed on the source since the first snapshot";
  }
  CopyOrigin new_origin{created.consistent_point, *created.snapshot_name, post_data_pending};
  rebase_copy(target, name, new_origin, prepared.kept, recopy);
  if (!prepared.kept.empty() || !prepared.recopied.empty()) {
    spdlog::info("init resume: kept {} finished tables, copying {} again{}", prepared.kept.size(),
                 prepared.recopied.size(),
                 prepared.recopy_reason.empty() ? "" : " (" + prepared.recopy_reason + ")");
  }
  return prepared;
}

// Whether the replication connection (and so the exported snapshot) is still alive,
// without sending anything on it (a command would release the snapshot).
bool replication_alive(ReplicationConnection& replication) {
  PGconn* conn = replication.connection().native();
  return conn != nullptr && PQconsumeInput(conn) == 1 && PQstatus(conn) == CONNECTION_OK;
}

std::vector<TableInfo> missing_on_target(const Connection& target,
                                         const std::vector<TableInfo>& tables) {
  std::vector<std::string> names;
  for (const auto& table : tables) names.push_back(table.qualified_name());
  auto r = target.exec(
      "SELECT s.ord FROM unnest($1::text[]) WITH ORDINALITY AS s(name, ord) "
      "WHERE to_regclass(s.name) IS NULL ORDER BY s.ord",
      {sql_array_literal(names)}, "looking for the tables missing on the target");
  std::vector<TableInfo> missing;
  for (int i = 0; i < r.rows(); ++i)
    missing.push_back(tables.at(std::stoul(std::string(r.get(i, 0))) - 1));
  return missing;
}

// The post-data restore of `pending` (CopyOrigin::post_data_pending).
SchemaCopyOptions post_data_options(const InitOptions& options, const std::string& pending) {
  SchemaCopyOptions schema;
  schema.bindir = options.pg_bindir;
  schema.maintenance_work_mem =
      options.maintenance_work_mem == "0" ? std::string() : options.maintenance_work_mem;
  if (pending != "*") {
    std::size_t start = 0;
    while (start < pending.size()) {
      auto end = pending.find('\n', start);
      if (end == std::string::npos) end = pending.size();
      if (end > start) schema.tables.push_back(pending.substr(start, end - start));
      start = end + 1;
    }
  }
  return schema;
}

// InitOptions::split_bytes, or by default about four ranges per job over the whole copy,
// so that the largest table does not leave workers idle: between 16 MB and 1 GB a range.
std::int64_t split_bytes(const InitOptions& options, const std::vector<TableInfo>& tables) {
  if (options.split_bytes > 0) return options.split_bytes;
  std::int64_t total = 0;
  for (const auto& table : tables) {
    if (table.carries_rows()) total += table.bytes;
  }
  return std::clamp<std::int64_t>(total / (options.jobs * 4), std::int64_t{16} << 20,
                                  std::int64_t{1} << 30);
}

}  // namespace

Init::Init(InitOptions options, InitObserver* observer)
    : options_(std::move(options)), observer_(observer) {
  if (options_.publication.empty()) options_.publication = options_.name;
}

InitResult Init::run() {
  if (options_.no_data) {
    if (options_.schema || !options_.tables.empty() || !options_.excluded_tables.empty()) {
      throw ConfigError(
          "--no-data creates the publication FOR ALL TABLES, slot and progress record only: it "
          "takes no --schema, --table or --exclude-table");
    }
    return run_no_data();
  }
  if (options_.jobs < 1 || options_.jobs > 64) {
    throw ConfigError(fmt::format("--jobs must be between 1 and 64 (got {})", options_.jobs));
  }
  return run_with_data();
}

InitResult Init::run_no_data() {
  const auto& name = options_.name;
  auto source = Connection::open(options_.source_conninfo, Side::source);
  auto target = Connection::open(options_.target_conninfo, Side::target);
  InitResult result;
  result.name = name;
  result.publication = options_.publication;

  if (source.exec("SELECT count(*) FROM pg_publication WHERE pubname = $1", {result.publication})
          .scalar() == "0") {
    source.exec(
        fmt::format("CREATE PUBLICATION {} FOR ALL TABLES", quote_ident(result.publication)),
        fmt::format("creating publication \"{}\" (FOR ALL TABLES needs superuser)",
                    result.publication));
    result.publication_created = true;
  }

  if (auto slot = read_slot(source, name)) {
    require_pgoutput_slot_here(*slot, name);
    result.consistent_point = slot->confirmed_flush;
  } else {
    auto created =
        source.exec("SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
                    {name}, fmt::format("creating replication slot \"{}\"", name));
    result.slot_created = true;
    result.consistent_point = Lsn::from_string(created.get(0, 0), "slot lsn");
  }

  ProgressStore store(target);
  result.progress_created = store.initialize(name, result.consistent_point);
  result.applied_lsn = *store.read(name);
  spdlog::info(
      "init slot={} publication={} lsn={} applied={} created: publication={} slot={} "
      "progress={}",
      name, result.publication, result.consistent_point, result.applied_lsn,
      result.publication_created, result.slot_created, result.progress_created);
  return result;
}

InitResult Init::run_with_data() {
  const auto& name = options_.name;
  const auto& publication = options_.publication;
  const auto& source_conninfo = options_.source_conninfo;
  const auto& target_conninfo = options_.target_conninfo;
  auto scope = TableScope::from_patterns(options_.tables, options_.excluded_tables);
  bool patterns = !options_.tables.empty() || !options_.excluded_tables.empty();
  auto started = std::chrono::steady_clock::now();
  InitResult result;
  result.name = name;
  result.publication = publication;

  auto source = Connection::open(source_conninfo, Side::source);
  auto target = Connection::open(target_conninfo, Side::target);
  ProgressStore store(target);
  auto applied = store.read(name);

  // 1. Preflight: refuse on what init cannot fix.
  CheckOptions check_options;
  check_options.name = name;
  check_options.publication = publication;
  check_options.target_data = applied ? TargetData::may_have_rows : TargetData::must_be_empty;
  check_options.allow_target_triggers = options_.allow_target_triggers;
  result.check = run_checks(source, target, scope, check_options);
  std::erase_if(result.check.findings, [&](const Finding& f) {
    return options_.schema && f.code == "target_table_missing";
  });
  if (!result.check.ok()) {
    result.outcome = InitOutcome::refused;
    return result;
  }
  for (const auto& f : result.check.findings) {
    if (f.severity == Severity::warning) {
      spdlog::warn("init check {} object={}: {}", f.code, f.object, f.reason);
    }
  }

  auto tables = list_tables(source, scope);
  auto publication_result = ensure_publication(source, publication, patterns, tables);
  result.publication_created = publication_result.created;
  result.publication_altered = publication_result.altered;

  // 2. Already initialized (a re-run after success, or after --no-data): only what is left.
  if (applied) {
    if (!read_slot(source, name)) {
      throw CheckFailed(fmt::format(
          "the progress record \"{}\" exists on the target but the slot is gone from the "
          "source: changes since were lost; start over with pgferry cleanup and pgferry init",
          name));
    }
    result.outcome = InitOutcome::already_initialized;
    result.applied_lsn = *applied;
    auto origin = read_copy_origin(target, name);
    if (options_.schema && origin && !origin->post_data_pending.empty()) {
      copy_schema_section(source_conninfo, target_conninfo, SchemaSection::post_data,
                          post_data_options(options_, origin->post_data_pending));
      origin->post_data_pending.clear();
      write_copy_origin(target, name, *origin);
      result.schema = InitSchemaResult{0, true};
    }
    result.elapsed = std::chrono::steady_clock::now() - started;
    return result;
  }

  // 3. Schema, first half: the tables missing on the target (all of them or none, in the
  // usual case; only those that are missing otherwise).
  std::string post_data_pending;
  if (auto origin = read_copy_origin(target, name)) post_data_pending = origin->post_data_pending;
  if (options_.schema) {
    result.schema.emplace();
    auto missing = missing_on_target(target, tables);
    if (!missing.empty()) {
      SchemaCopyOptions schema;
      schema.bindir = options_.pg_bindir;
      if (patterns || missing.size() != tables.size()) {
        std::set<std::string> schemas;
        for (const auto& table : missing) {
          schema.tables.push_back(table.qualified_name());
          schemas.insert(table.schema);
        }
        schema.schemas.assign(schemas.begin(), schemas.end());
        post_data_pending.clear();
        for (const auto& t : schema.tables) post_data_pending += t + "\n";
      } else {
        post_data_pending = "*";
      }
      // Record the intent first: if init dies after the restore, a re-run still knows the
      // post-data half is due.
      write_copy_origin(target, name, CopyOrigin{Lsn{}, "", post_data_pending});
      copy_schema_section(source_conninfo, target_conninfo, SchemaSection::pre_data, schema);
      result.schema->pre_data_tables = missing.size();
    }
  }

  // 4. The slot with its snapshot, and the copy; retried with the same snapshot while the
  // replication connection lives, else with a new slot (prepare_slot decides what stays).
  if (stop_requested_.load(std::memory_order_relaxed)) {
    result.outcome = InitOutcome::stopped;  // before any slot was made
    return result;
  }
  std::optional<PreparedCopy> prepared;
  for (int attempt = 1;; ++attempt) {
    if (!prepared || !replication_alive(prepared->replication)) {
      prepared.reset();
      prepared = prepare_slot(source, target, source_conninfo, name, publication,
                              publication_result.altered, tables, post_data_pending);
      result.kept.insert(result.kept.end(), prepared->kept.begin(), prepared->kept.end());
      result.recopied.insert(result.recopied.end(), prepared->recopied.begin(),
                             prepared->recopied.end());
      if (!prepared->recopy_reason.empty()) result.recopy_reason = prepared->recopy_reason;
    }
    std::stop_source stop;
    if (observer_) {
      std::vector<std::string> finished;
      for (auto& [table, snapshot] : finished_copies(target, name)) finished.push_back(table);
      observer_->copy_started(tables, finished);
    }
    CopyOptions copy_options;
    copy_options.name = name;
    copy_options.jobs = options_.jobs;
    copy_options.split_bytes = split_bytes(options_, tables);
    copy_options.stop = stop.get_token();
    if (observer_) {
      copy_options.progress = [this](const CopyProgress& p) { observer_->copy_progress(p); };
    }
    // request_stop() only sets a flag (safe in a signal handler); this turns it into the
    // copy's stop request.
    std::jthread watcher([this, &stop](std::stop_token own) {
      while (!own.stop_requested() && !stop_requested_.load(std::memory_order_relaxed)) {
        std::this_thread::sleep_for(50ms);
      }
      if (stop_requested_.load(std::memory_order_relaxed)) stop.request_stop();
    });
    // The observer hears the end of this attempt however it ends (a failure included).
    struct EndAttempt {
      InitObserver* observer;
      ~EndAttempt() {
        if (observer) observer->copy_ended();
      }
    };
    try {
      EndAttempt end_attempt{observer_};
      result.copy = copy_tables(source_conninfo, target_conninfo, *prepared->slot.snapshot_name,
                                tables, copy_options);
      watcher.request_stop();
      spdlog::info("init copy rows={} bytes={} ranges={} skipped={} seconds={:.1f}",
                   result.copy.rows, result.copy.bytes, result.copy.ranges_copied,
                   result.copy.ranges_skipped,
                   static_cast<double>(result.copy.elapsed.count()) / 1000.0);
      break;
    } catch (const ConnectionError& e) {
      watcher.request_stop();
      if (attempt >= options_.copy_attempts || stop_requested_.load(std::memory_order_relaxed)) {
        throw;
      }
      spdlog::warn("init copy attempt {} failed: {}; resuming", attempt, e.what());
      std::this_thread::sleep_for(std::chrono::seconds(attempt));
      // A lost source or target session: reconnect the control connections too.
      source = Connection::open(source_conninfo, Side::source);
      target = Connection::open(target_conninfo, Side::target);
      store = ProgressStore(target);
    }
  }
  if (!result.copy.complete) {
    result.outcome = InitOutcome::stopped;
    return result;
  }

  // 5. Initialized: the progress record at the slot's consistent point, then the
  // snapshot may go.
  result.slot_created = true;
  result.consistent_point = prepared->slot.consistent_point;
  result.applied_lsn = result.consistent_point;
  result.progress_created = store.initialize(name, result.consistent_point);
  prepared.reset();

  // 6. Schema, second half: indexes and constraints on the loaded tables.
  if (options_.schema && !post_data_pending.empty()) {
    copy_schema_section(source_conninfo, target_conninfo, SchemaSection::post_data,
                        post_data_options(options_, post_data_pending));
    if (auto origin = read_copy_origin(target, name)) {
      origin->post_data_pending.clear();
      write_copy_origin(target, name, *origin);
    }
    result.schema->post_data_restored = true;
  }

  result.elapsed = std::chrono::steady_clock::now() - started;
  spdlog::info("init slot={} publication={} lsn={} rows={} bytes={} seconds={:.1f}", name,
               publication, result.consistent_point, result.copy.rows, result.copy.bytes,
               result.elapsed.count());
  return result;
}

CleanupResult cleanup(const Connection& source, const Connection& target, std::string_view name,
                      std::string_view publication) {
  CleanupResult result;
  auto slot = source.exec("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                          {name}, "looking up the replication slot");
  if (slot.rows() == 1) {
    if (!slot.is_null(0, 0)) {
      throw Error(fmt::format(
          "replication slot \"{}\" is in use by process {}: stop `pgferry run` first, then run "
          "cleanup again",
          name, slot.get(0, 0)));
    }
    source.exec("SELECT pg_drop_replication_slot($1)", {name},
                fmt::format("dropping replication slot \"{}\"", name));
    result.slot_dropped = true;
  }
  result.publication_dropped =
      source.exec("SELECT count(*) FROM pg_publication WHERE pubname = $1", {publication})
          .scalar() != "0";
  source.exec(fmt::format("DROP PUBLICATION IF EXISTS {}", quote_ident(publication)),
              fmt::format("dropping publication \"{}\"", publication));
  drop_copy_progress(target, name);  // init's copy record, if any
  result.progress_dropped = ProgressStore(target).drop(name);
  spdlog::info("cleanup slot={} publication={} dropped: slot={} publication={} progress={}", name,
               publication, result.slot_dropped, result.publication_dropped,
               result.progress_dropped);
  return result;
}

}  // namespace pgferry::replication
