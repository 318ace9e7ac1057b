// Logging set-up: spdlog to stderr, as human text or one JSON object a line.
// Fields are written "key=value" inside messages (slot=, lsn=, xid=, rel=, step=) so that
// both formats stay greppable.
#pragma once

#include <string_view>

namespace pgferry::replication {

enum class LogFormat { text, json };

// Throws ConfigError for an unknown level (trace, debug, info, warn, error, critical, off).
void setup_logging(LogFormat format, std::string_view level);

// Escapes a string for inclusion in a JSON string literal.
void append_json_escaped(std::string& out, std::string_view text);

}  // namespace pgferry::replication
