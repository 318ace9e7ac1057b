// Renderings of a sequence diff or sync: a human table and a JSON document (the `--json`
// contract of `pgferry sequences`, also embedded in the cutover report).
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "pgferry/sequences/sequences.hpp"

namespace pgferry::sequences {

// {"ok", "margin", "summary": {"total", "in_sync", ...}, "sequences": [{"schema", "name",
// "kind", "owned_by", "data_type", "increment", "min_value", "max_value", "cycle",
// "source": {"last_value", "is_called", "next_value"}, "target": {...} | null, "status",
// "setval": {"value", "is_called"} | null, "note"}]}. next_value is null when exhausted.
nlohmann::json to_json(const DiffReport& report);
// The diff document of what was found before, plus "changed": [{"schema", "name", "status",
// "before": {"last_value", "is_called", "next_value"}, "after": {...}, "note"}],
// "unchanged" and "elapsed_ms".
nlohmann::json to_json(const SyncReport& report);

std::string render_text(const DiffReport& report);
std::string render_text(const SyncReport& report);

}  // namespace pgferry::sequences
