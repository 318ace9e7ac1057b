// `pgferry init`: options, then replication::Init (copy/init.hpp), which does the work —
// preflight, publication, slot with its snapshot, the copy with its retries and resume,
// the schema halves, the progress record — with the live progress display
// (init_display.hpp) as its observer, then the output (text or --json).
// SIGINT/SIGTERM call Init::request_stop(): the copy workers abandon their ranges, init
// says how far it got and exits 1; a re-run resumes.
#include <fmt/format.h>
#include <unistd.h>

#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "init_display.hpp"
#include "pgferry/replication/check/preflight.hpp"
#include "pgferry/replication/copy/init.hpp"
#include "pgferry/replication/copy/initial_copy.hpp"
#include "pgferry/replication/copy/initial_copy_schema.hpp"
#include "pgferry/replication/core/error.hpp"

namespace pgferry::tools {

namespace {

namespace repl = pgferry::replication;

struct InitCommandOptions {
  repl::InitOptions init;
  int split_mb = 0;               // 0: from the total size and --jobs
  std::string progress = "auto";  // auto | tty | log | none
};

const char* created_or_exists(bool created) {
  return created ? "created" : "exists";
}

int print_refused(const CommonOptions& common, const repl::CheckReport& report) {
  if (common.json) {
    nlohmann::ordered_json doc = {{"ok", false}, {"check", repl::to_json(report)}};
    std::cout << doc.dump(2) << "\n";
  } else {
    std::cout << repl::render_text(report);
    std::cout << fmt::format(
        "init: refused: {} fatal finding(s) above; fix them (or leave the tables out with "
        "--exclude-table) and re-run\n",
        report.count(repl::Severity::fatal));
  }
  return static_cast<int>(repl::ExitCode::check_failed);
}

int print_stopped(const repl::InitResult& result) {
  int ranges = 0;
  for (const auto& t : result.copy.tables) ranges += t.ranges;
  std::cerr << fmt::format(
      "init: interrupted (signal {}); {} of {} ranges done. Re-run init to resume.\n",
      StopOnSignal::received(), result.copy.ranges_copied + result.copy.ranges_skipped, ranges);
  return static_cast<int>(repl::ExitCode::error);
}

void print_no_data(const CommonOptions& common, const repl::InitResult& result) {
  if (common.json) {
    nlohmann::json doc = {
        {"ok", true},
        {"slot", result.name},
        {"publication", result.publication},
        {"slot_lsn", result.consistent_point.to_string()},
        {"applied_lsn", result.applied_lsn.to_string()},
        {"created",
         {{"publication", result.publication_created},
          {"slot", result.slot_created},
          {"progress", result.progress_created}}},
        {"data", "skipped (--no-data)"},
    };
    std::cout << doc.dump(2) << "\n";
  } else {
    std::cout << fmt::format("publication {}: {}\n", result.publication,
                             created_or_exists(result.publication_created))
              << fmt::format("slot {}: {} (consistent point {})\n", result.name,
                             created_or_exists(result.slot_created), result.consistent_point)
              << fmt::format("progress record {}: {} (applied {})\n", result.name,
                             created_or_exists(result.progress_created), result.applied_lsn)
              << "data: not copied (--no-data)\n";
  }
}

void print_initialized(const CommonOptions& common, const InitCommandOptions& options,
                       const repl::InitResult& result) {
  bool already = result.outcome == repl::InitOutcome::already_initialized;
  const auto& copy = result.copy;
  double seconds = result.elapsed.count();
  nlohmann::ordered_json doc = {
      {"ok", true}, {"slot", result.name}, {"publication", result.publication}};
  doc["created"] = {{"publication", result.publication_created}};
  if (result.publication_altered) doc["publication_altered"] = true;
  doc["created"]["slot"] = result.slot_created;
  doc["created"]["progress"] = result.progress_created;
  nlohmann::ordered_json schema_doc = nlohmann::ordered_json::object();
  if (result.schema) {
    if (!already) {
      schema_doc["pre_data"] =
          result.schema->pre_data_tables > 0
              ? fmt::format("restored ({} tables)", result.schema->pre_data_tables)
              : std::string("tables exist");
    }
    if (result.schema->post_data_restored) schema_doc["post_data"] = "restored";
  }
  if (already) {
    doc["applied_lsn"] = result.applied_lsn.to_string();
    doc["data"] = "already initialized";
    if (result.schema) doc["schema"] = schema_doc;
  } else {
    doc["consistent_point"] = result.consistent_point.to_string();
    doc["applied_lsn"] = result.applied_lsn.to_string();
    if (result.schema) doc["schema"] = schema_doc;
    doc["resume"] = {
        {"kept", result.kept}, {"recopied", result.recopied}, {"reason", result.recopy_reason}};
    nlohmann::ordered_json table_docs = nlohmann::ordered_json::array();
    for (const auto& t : copy.tables) {
      table_docs.push_back({{"table", t.table},
                            {"status", repl::to_string(t.status)},
                            {"rows", t.rows},
                            {"bytes", t.bytes},
                            {"ranges", t.ranges},
                            {"format", t.binary ? "binary" : "text"}});
    }
    doc["copy"] = {{"jobs", options.init.jobs},
                   {"rows", copy.rows},
                   {"bytes", copy.bytes},
                   {"ranges_copied", copy.ranges_copied},
                   {"ranges_skipped", copy.ranges_skipped},
                   {"triggers_disabled", copy.triggers_disabled},
                   {"copy_seconds", static_cast<double>(copy.elapsed.count()) / 1000.0},
                   {"tables", table_docs}};
    doc["seconds"] = seconds;
  }
  if (common.json) {
    std::cout << doc.dump(2) << "\n";
    return;
  }
  if (already) {
    std::cout << fmt::format(
        "init {}: already initialized (progress record at {}); nothing to copy{}\n", result.name,
        result.applied_lsn,
        result.schema && result.schema->post_data_restored ? "; post-data schema restored" : "");
    return;
  }
  std::cout << fmt::format("publication {}: {}\n", result.publication,
                           created_or_exists(result.publication_created))
            << fmt::format("slot {}: created (consistent point {})\n", result.name,
                           result.consistent_point);
  std::size_t copied = 0, skipped = 0;
  for (const auto& t : copy.tables) {
    (t.status == repl::TableCopyStatus::skipped ? skipped : copied)++;
  }
  std::cout << fmt::format(
      "data: {} tables copied ({} rows, {}), {} kept from an earlier "
      "run, in {:.1f}s ({}/s) with {} jobs\n",
      copied, copy.rows, human_bytes(static_cast<double>(copy.bytes)), skipped, seconds,
      human_bytes(seconds > 0 ? static_cast<double>(copy.bytes) / seconds : 0), options.init.jobs);
  if (!result.recopied.empty()) {
    std::cout << fmt::format("resume: {} finished tables copied again ({})\n",
                             result.recopied.size(), result.recopy_reason);
  }
  if (result.schema) {
    std::cout << fmt::format("schema: pre-data {}, post-data {}\n",
                             schema_doc.value("pre_data", std::string("-")),
                             schema_doc.value("post_data", std::string("none due")));
  }
  std::cout << fmt::format("progress record {}: {} (applied {}); next: pgferry run\n", result.name,
                           created_or_exists(result.progress_created), result.consistent_point);
}

int init_command(const CommonOptions& common, InitCommandOptions options) {
  options.init.source_conninfo = common.source_conninfo();
  options.init.target_conninfo = common.target_conninfo();
  options.init.name = common.name;
  options.init.publication = common.publication_name();
  options.init.split_bytes = std::int64_t{options.split_mb} << 20;
  bool terminal =
      options.progress == "tty" || (options.progress == "auto" && ::isatty(STDERR_FILENO) == 1);
  auto display = make_init_progress_display(options.init.target_conninfo, terminal,
                                            options.progress != "none");
  repl::Init init(options.init, display.get());

  repl::InitResult result;
  {
    StopOnSignal stop_on_signal(init);
    result = init.run();
  }

  switch (result.outcome) {
    case repl::InitOutcome::refused:
      return print_refused(common, result.check);
    case repl::InitOutcome::stopped:
      return print_stopped(result);
    case repl::InitOutcome::initialized:
    case repl::InitOutcome::already_initialized:
      if (options.init.no_data) {
        print_no_data(common, result);
      } else {
        print_initialized(common, options, result);
      }
      return static_cast<int>(repl::ExitCode::ok);
  }
  return static_cast<int>(repl::ExitCode::error);
}

}  // namespace

void add_init_command(CLI::App& app, CommonOptions& common, CommandAction& action) {
  auto* cmd = app.add_subcommand(
      "init", "create publication, slot and progress record; copy the data (safe to re-run)");
  auto options = std::make_shared<InitCommandOptions>();
  auto& init = options->init;
  cmd->add_flag("--no-data", init.no_data,
                "create publication, slot and progress record only; copy no rows");
  cmd->add_flag("--schema", init.schema,
                "create the missing tables on the target with pg_dump/psql (indexes and "
                "constraints after the copy)");
  cmd->add_option("--jobs,-j", init.jobs, "parallel copy workers")->capture_default_str();
  add_table_scope_options(cmd, init.tables, init.excluded_tables);
  cmd->add_option("--split-mb", options->split_mb,
                  "copy tables larger than this in block ranges of about this size (default: "
                  "about four ranges per job over the whole copy)");
  cmd->add_option("--pg-bindir", init.pg_bindir,
                  "directory of pg_dump and psql for --schema (default: pg_config --bindir)");
  cmd->add_option("--maintenance-work-mem", init.maintenance_work_mem,
                  "maintenance_work_mem of the session that builds the indexes with --schema "
                  "(that session only; 0 keeps the server's setting)")
      ->check(
          [](const std::string& value) {
            return repl::is_size_setting(value)
                       ? std::string()
                       : "a size is a number with an optional unit kB, MB or GB (e.g. 1GB)";
          },
          "SIZE")
      ->capture_default_str();
  cmd->add_option("--progress", options->progress,
                  "progress display: auto (live on a terminal, log lines otherwise), tty, log, "
                  "none")
      ->check(CLI::IsMember({"auto", "tty", "log", "none"}))
      ->capture_default_str();
  cmd->add_flag("--allow-target-triggers", init.allow_target_triggers,
                "accept that target triggers and foreign-key actions fire for replicated changes "
                "when the target role may not set session_replication_role (see README)");
  cmd->callback([&action, &common, options] {
    action = [&common, options] { return init_command(common, *options); };
  });
}

}  // namespace pgferry::tools
