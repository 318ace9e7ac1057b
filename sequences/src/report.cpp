// Text and JSON renderings of sequence diffs and syncs.
#include "pgferry/sequences/report.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <vector>

namespace pgferry::sequences {

namespace {

using nlohmann::json;

constexpr std::array kStatuses = {SequenceStatus::in_sync, SequenceStatus::below_margin,
                                  SequenceStatus::behind, SequenceStatus::missing,
                                  SequenceStatus::incompatible};

json next_json(std::optional<std::int64_t> next) {
  return next ? json(*next) : json(nullptr);
}

json state_json(const SequenceDefinition& definition, SequenceState state) {
  return {{"last_value", state.last_value},
          {"is_called", state.is_called},
          {"next_value", next_json(next_value(definition, state))}};
}

std::string next_text(const SequenceDefinition& definition, SequenceState state) {
  auto next = next_value(definition, state);
  return next ? std::to_string(*next) : "exhausted";
}

std::string summary_text(const DiffReport& report) {
  std::string text = fmt::format("{} sequence{}", report.sequences.size(),
                                 report.sequences.size() == 1 ? "" : "s");
  for (auto status : kStatuses) {
    if (auto n = report.count(status)) text += fmt::format(", {} {}", n, to_string(status));
  }
  return text;
}

// Columns padded to their widest cell.
std::string table(const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::size_t> widths;
  for (const auto& row : rows) {
    widths.resize(std::max(widths.size(), row.size()));
    for (std::size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());
  }
  std::string out;
  for (const auto& row : rows) {
    std::string line;
    for (std::size_t i = 0; i < row.size(); ++i) {
      line += i + 1 == row.size() ? row[i] : fmt::format("{:<{}}  ", row[i], widths[i]);
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out += line + "\n";
  }
  return out;
}

}  // namespace

json to_json(const DiffReport& report) {
  json summary = {{"total", report.sequences.size()}};
  for (auto status : kStatuses) summary[std::string(to_string(status))] = report.count(status);
  json sequences = json::array();
  for (const auto& diff : report.sequences) {
    const auto& s = diff.source;
    json item = {{"schema", s.schema},
                 {"name", s.name},
                 {"kind", to_string(s.kind)},
                 {"owned_by", s.owned_by.empty() ? json(nullptr) : json(s.owned_by)},
                 {"data_type", s.definition.data_type},
                 {"increment", s.definition.increment},
                 {"min_value", s.definition.min_value},
                 {"max_value", s.definition.max_value},
                 {"cycle", s.definition.cycle},
                 {"source", state_json(s.definition, s.state)},
                 {"target", diff.target ? state_json(diff.target->definition, diff.target->state)
                                        : json(nullptr)},
                 {"status", to_string(diff.plan.status)},
                 {"setval", diff.plan.setval ? json{{"value", diff.plan.setval->value},
                                                    {"is_called", diff.plan.setval->is_called}}
                                             : json(nullptr)},
                 {"note", diff.plan.note}};
    sequences.push_back(std::move(item));
  }
  return {{"ok", report.ok()},
          {"margin", report.margin},
          {"summary", std::move(summary)},
          {"sequences", std::move(sequences)}};
}

json to_json(const SyncReport& report) {
  json document = to_json(report.diff);
  json changed = json::array();
  for (const auto& change : report.changed) {
    changed.push_back({{"schema", change.schema},
                       {"name", change.name},
                       {"status", to_string(change.status)},
                       {"before",
                        {{"last_value", change.before.last_value},
                         {"is_called", change.before.is_called},
                         {"next_value", next_json(change.next_before)}}},
                       {"after",
                        {{"last_value", change.after.value},
                         {"is_called", change.after.is_called},
                         {"next_value", next_json(change.next_after)}}},
                       {"note", change.note}});
  }
  // After a sync that did not throw, every target sequence is safe.
  document["ok"] = true;
  document["changed"] = std::move(changed);
  document["unchanged"] = report.diff.sequences.size() - report.changed.size();
  document["elapsed_ms"] = static_cast<double>(report.elapsed.count()) / 1000.0;
  return document;
}

std::string render_text(const DiffReport& report) {
  std::vector<std::vector<std::string>> rows = {
      {"SEQUENCE", "KIND", "OWNED BY", "SOURCE NEXT", "TARGET NEXT", "STATUS", "SYNC WOULD SET"}};
  std::vector<std::string> notes;
  for (const auto& diff : report.sequences) {
    const auto& s = diff.source;
    std::string action = "-";
    if (diff.plan.setval) {
      action = fmt::format("setval({}, {})", diff.plan.setval->value,
                           diff.plan.setval->is_called ? "true" : "false");
    }
    rows.push_back({s.display_name(), std::string(to_string(s.kind)),
                    s.owned_by.empty() ? "-" : s.owned_by, next_text(s.definition, s.state),
                    diff.target ? next_text(diff.target->definition, diff.target->state) : "-",
                    std::string(to_string(diff.plan.status)), action});
    if (!diff.plan.note.empty()) notes.push_back(diff.plan.note);
  }
  std::string out = table(rows);
  for (const auto& note : notes) out += "note: " + note + "\n";
  out += summary_text(report) + (report.ok() ? ": ok\n" : ": the target is not safe\n");
  return out;
}

std::string render_text(const SyncReport& report) {
  if (report.changed.empty()) {
    return fmt::format("{}: nothing to change ({:.1f} ms)\n", summary_text(report.diff),
                       static_cast<double>(report.elapsed.count()) / 1000.0);
  }
  std::vector<std::vector<std::string>> rows = {
      {"SEQUENCE", "WAS", "NEXT BEFORE", "NEXT AFTER", "SET"}};
  std::vector<std::string> notes;
  for (const auto& change : report.changed) {
    rows.push_back({change.schema + "." + change.name, std::string(to_string(change.status)),
                    change.next_before ? std::to_string(*change.next_before) : "exhausted",
                    change.next_after ? std::to_string(*change.next_after) : "exhausted",
                    fmt::format("setval({}, {})", change.after.value,
                                change.after.is_called ? "true" : "false")});
    if (!change.note.empty()) notes.push_back(change.note);
  }
  std::string out = table(rows);
  for (const auto& note : notes) out += "note: " + note + "\n";
  out += fmt::format("{} changed, {} unchanged in {:.1f} ms\n", report.changed.size(),
                     report.diff.sequences.size() - report.changed.size(),
                     static_cast<double>(report.elapsed.count()) / 1000.0);
  return out;
}

}  // namespace pgferry::sequences
