// libpq connection strings (keyword/value or URI): validation that never echoes the
// string back, redaction for logs and errors, and derivation of related strings
// (e.g. the same server with replication=database).
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pgferry::replication {

// Throws ConfigError naming `what` (e.g. "--source") if libpq cannot parse the string.
// The message never contains the string itself, which may hold a password.
void validate_conninfo(std::string_view conninfo, std::string_view what);

// The string as keyword/value pairs with every secret (password, sslpassword) replaced by
// "********". Never throws; a string libpq cannot parse becomes "<malformed conninfo>".
std::string redact_conninfo(std::string_view conninfo);

// `conninfo` with the given keywords set (replacing any present), as a keyword/value string.
// Throws ConfigError if `conninfo` does not parse.
std::string conninfo_with(std::string_view conninfo,
                          const std::vector<std::pair<std::string, std::string>>& overrides);

// The value of one keyword in the string ("" when absent or unparseable).
std::string conninfo_value(std::string_view conninfo, std::string_view keyword);

// Quotes a value for a keyword/value string: 'it''s' style, backslashes escaped.
std::string quote_conninfo_value(std::string_view value);

}  // namespace pgferry::replication
