// Text and JSON renderings of a verify report.
#include "pgferry/cutover/verify_report.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>

namespace pgferry::cutover {

namespace {

const char* json_kind(DifferenceKind kind) {
  switch (kind) {
    case DifferenceKind::missing_on_target:
      return "missing_on_target";
    case DifferenceKind::extra_on_target:
      return "extra_on_target";
    case DifferenceKind::different:
      return "different";
  }
  return "?";
}

std::string summary(const TableVerifyReport& table) {
  if (table.equal()) return "equal";
  std::vector<std::string> parts;
  if (table.missing) parts.push_back(fmt::format("{} missing on target", table.missing));
  if (table.extra) parts.push_back(fmt::format("{} extra on target", table.extra));
  if (table.different) parts.push_back(fmt::format("{} different", table.different));
  if (!table.problems.empty() && parts.empty()) parts.push_back(table.problems.front());
  return "DIFFERS: " + fmt::format("{}", fmt::join(parts, ", "));
}

}  // namespace

std::string format_key(const std::vector<std::string>& key_columns,
                       const std::vector<std::string>& key) {
  std::vector<std::string> parts;
  for (std::size_t i = 0; i < key.size(); ++i) {
    parts.push_back(fmt::format("{}={}", i < key_columns.size() ? key_columns[i] : "?", key[i]));
  }
  auto joined = fmt::format("{}", fmt::join(parts, ", "));
  return parts.size() == 1 ? joined : "(" + joined + ")";
}

nlohmann::json to_json(const VerifyReport& report) {
  nlohmann::json tables = nlohmann::json::array();
  for (const auto& table : report.tables) {
    nlohmann::json differences = nlohmann::json::array();
    for (const auto& difference : table.differences) {
      nlohmann::json key = nlohmann::json::object();
      for (std::size_t i = 0; i < difference.key.size() && i < table.key_columns.size(); ++i) {
        key[table.key_columns[i]] = difference.key[i];
      }
      differences.push_back({{"kind", json_kind(difference.kind)},
                             {"key", key},
                             {"columns", difference.columns},
                             {"changing", difference.changing}});
    }
    tables.push_back(
        {{"schema", table.schema},
         {"name", table.name},
         {"key", table.key_columns},
         {"equal", table.equal()},
         {"source_rows", table.source_rows},
         {"target_rows", table.target_rows},
         {"chunks", table.chunks},
         {"differing_chunks", table.differing_chunks},
         {"rechecked_chunks", table.rechecked_chunks},
         {"missing", table.missing},
         {"extra", table.extra},
         {"different", table.different},
         {"seconds", table.seconds},
         {"problems", table.problems},
         {"differences", differences},
         {"differences_truncated",
          static_cast<std::int64_t>(table.differences.size()) < table.differing_keys()}});
  }
  return {{"equal", report.equal()},   {"mode", report.mode == VerifyMode::live ? "live" : "once"},
          {"hash", report.hash},       {"sample", report.sample},
          {"seconds", report.seconds}, {"differing_tables", report.differing_tables()},
          {"tables", tables}};
}

std::string render_text(const VerifyReport& report, std::size_t keys_per_table) {
  std::size_t width = 5;
  for (const auto& table : report.tables) width = std::max(width, table.display_name().size());
  std::string out =
      fmt::format("{:<{}}  {:>12}  {:>7}  {:>8}  {}\n", "table", width,
                  report.sample > 0 ? "keys checked" : "rows", "chunks", "seconds", "result");
  for (const auto& table : report.tables) {
    out += fmt::format("{:<{}}  {:>12}  {:>7}  {:>8.2f}  {}\n", table.display_name(), width,
                       table.source_rows, table.chunks, table.seconds, summary(table));
  }
  for (const auto& table : report.tables) {
    if (table.equal()) continue;
    out += fmt::format("\n{}:\n", table.display_name());
    for (const auto& problem : table.problems) out += fmt::format("  {}\n", problem);
    std::size_t shown = 0;
    for (const auto& difference : table.differences) {
      if (shown == keys_per_table) break;
      ++shown;
      std::string columns;
      if (!difference.columns.empty()) {
        columns = fmt::format(" (columns: {})", fmt::join(difference.columns, ", "));
      }
      out += fmt::format("  {:<18} {}{}{}\n", to_string(difference.kind),
                         format_key(table.key_columns, difference.key), columns,
                         difference.changing ? " [changing on the source]" : "");
    }
    auto rest = table.differing_keys() - static_cast<std::int64_t>(shown);
    if (rest > 0) out += fmt::format("  ... and {} more (--json lists up to --max-keys)\n", rest);
  }
  out += fmt::format("\n{} tables, {} differ; mode {}{}, hash {}, {:.2f}s\n", report.tables.size(),
                     report.differing_tables(), report.mode == VerifyMode::live ? "live" : "once",
                     report.sample > 0 ? fmt::format(", sample {}", report.sample) : "",
                     report.hash, report.seconds);
  return out;
}

}  // namespace pgferry::cutover
