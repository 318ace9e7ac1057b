// Renderings of a verify report: a table per table for people, and the JSON document of
// `pgferry verify --json` (also what the cutover report embeds).
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "pgferry/cutover/verify.hpp"

namespace pgferry::cutover {

// {"equal", "mode": "live"|"once", "hash", "sample", "seconds", "differing_tables",
//  "tables": [{"schema", "name", "key": [...], "equal", "source_rows", "target_rows",
//  "chunks", "differing_chunks", "rechecked_chunks", "missing", "extra", "different", "seconds",
//  "problems": [...], "differences": [{"kind": "missing_on_target"|"extra_on_target"|"different",
//  "key": {"col": "text", ...}, "columns": [...], "changing"}], "differences_truncated"}]}
nlohmann::json to_json(const VerifyReport& report);

// One line per table (rows, chunks, seconds, equal or the differing keys), then the keys
// of each differing table (at most `keys_per_table` lines each).
std::string render_text(const VerifyReport& report, std::size_t keys_per_table = 20);

// "id=5" or "(a=1, b=x)".
std::string format_key(const std::vector<std::string>& key_columns,
                       const std::vector<std::string>& key);

}  // namespace pgferry::cutover
