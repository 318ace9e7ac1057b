// `pgferry init`: create what is missing, idempotently — the publication (FOR ALL TABLES),
// the logical slot (pgoutput) and the progress record on the target, initialized to the
// slot's consistent point — and copy the data from the slot's snapshot (not built yet: only
// --no-data works in this version).
//
// Order matters: the publication exists before the slot, so that pgoutput finds it for every
// change the slot will decode.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "pgferry/replication/error.hpp"
#include "pgferry/replication/pg.hpp"
#include "pgferry/replication/progress.hpp"

namespace pgferry::tools {

namespace {

namespace repl = pgferry::replication;

struct InitOptions {
  bool no_data = false;
};

struct InitReport {
  bool publication_created = false;
  bool slot_created = false;
  bool progress_created = false;
  repl::Lsn slot_lsn;
  repl::Lsn applied_lsn;
};

int run_init(const CommonOptions& common, const InitOptions& options) {
  if (!options.no_data) return not_built_yet("init (copying the data)");
  auto source = repl::Connection::open(common.source_conninfo(), repl::Side::source);
  auto target = repl::Connection::open(common.target_conninfo(), repl::Side::target);
  std::string publication = common.publication_name();
  InitReport report;

  if (source.exec("SELECT count(*) FROM pg_publication WHERE pubname = $1", {publication})
          .scalar() == "0") {
    source.exec(
        fmt::format("CREATE PUBLICATION {} FOR ALL TABLES", repl::quote_ident(publication)),
        fmt::format("creating publication \"{}\" (FOR ALL TABLES needs superuser)", publication));
    report.publication_created = true;
  }

  auto slot = source.exec(
      "SELECT plugin, database = current_database(), confirmed_flush_lsn::text "
      "FROM pg_replication_slots WHERE slot_name = $1",
      {common.name}, "looking up the replication slot");
  if (slot.rows() == 0) {
    auto created = source.exec(
        "SELECT lsn::text FROM pg_create_logical_replication_slot($1, "
        "'pgoutput')",
        {common.name}, fmt::format("creating replication slot \"{}\"", common.name));
    report.slot_created = true;
    report.slot_lsn = repl::Lsn::from_string(created.get(0, 0), "slot lsn");
  } else {
    if (slot.get(0, 0) != "pgoutput" || slot.get(0, 1) != "t") {
      throw repl::ConfigError(fmt::format(
          "replication slot \"{}\" exists but is not a pgoutput slot of this database: choose "
          "another --name, or drop it (pgferry cleanup) if it is a leftover",
          common.name));
    }
    report.slot_lsn = repl::Lsn::from_string(slot.get(0, 2), "slot confirmed_flush_lsn");
  }

  repl::ProgressStore store(target);
  report.progress_created = store.initialize(common.name, report.slot_lsn);
  report.applied_lsn = *store.read(common.name);

  spdlog::info(
      "init slot={} publication={} lsn={} applied={} created: publication={} slot={} "
      "progress={}",
      common.name, publication, report.slot_lsn, report.applied_lsn, report.publication_created,
      report.slot_created, report.progress_created);
  if (common.json) {
    nlohmann::json doc = {
        {"ok", true},
        {"slot", common.name},
        {"publication", publication},
        {"slot_lsn", report.slot_lsn.to_string()},
        {"applied_lsn", report.applied_lsn.to_string()},
        {"created",
         {{"publication", report.publication_created},
          {"slot", report.slot_created},
          {"progress", report.progress_created}}},
        {"data", "skipped (--no-data)"},
    };
    std::cout << doc.dump(2) << "\n";
  } else {
    auto state = [](bool created) { return created ? "created" : "exists"; };
    std::cout << fmt::format("publication {}: {}\n", publication, state(report.publication_created))
              << fmt::format("slot {}: {} (consistent point {})\n", common.name,
                             state(report.slot_created), report.slot_lsn)
              << fmt::format("progress record {}: {} (applied {})\n", common.name,
                             state(report.progress_created), report.applied_lsn)
              << "data: not copied (--no-data)\n";
  }
  return static_cast<int>(repl::ExitCode::ok);
}

}  // namespace

void add_init_command(CLI::App& app, CommonOptions& common, CommandAction& action) {
  auto* cmd = app.add_subcommand(
      "init", "create publication, slot and progress record; copy the data (safe to re-run)");
  auto options = std::make_shared<InitOptions>();
  cmd->add_flag("--no-data", options->no_data,
                "create publication, slot and progress record only; copy no rows");
  cmd->callback([&action, &common, options] {
    action = [&common, options] { return run_init(common, *options); };
  });
}

}  // namespace pgferry::tools
