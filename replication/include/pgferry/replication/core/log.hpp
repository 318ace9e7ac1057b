// Logging set-up: spdlog to stderr, as human text or one JSON object a line.
// Fields are written "key=value" inside messages (slot=, lsn=, xid=, rel=, step=) so that
// both formats stay greppable.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pgferry::replication {

enum class LogFormat { text, json };

// Throws ConfigError for an unknown level (trace, debug, info, warn, error, critical, off).
void setup_logging(LogFormat format, std::string_view level);

// Sets the level of the running logger (after setup_logging); ConfigError for an unknown one.
void set_log_level(std::string_view level);

// The level written in `path` (its first word, e.g. "debug\n"), for `run --log-level-file`
// re-read on SIGHUP; ConfigError naming the file when it cannot be read or names no level.
std::string read_log_level_file(const std::filesystem::path& path);

// The key=value fields of a log message's event part (before the first ": "), in order;
// `key="quoted value"` is unquoted. The JSON log format writes them as "fields".
std::vector<std::pair<std::string, std::string>> log_fields(std::string_view message);

// Escapes a string for inclusion in a JSON string literal.
void append_json_escaped(std::string& out, std::string_view text);

}  // namespace pgferry::replication
