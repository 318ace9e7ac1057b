// Rewriting one [databases] entry of a PgBouncer configuration file: the traffic switch of
// `--pgbouncer-config FILE`. The entry keeps every keyword but host, port and dbname, which
// come from the new primary's conninfo. The file is replaced atomically (write, fsync,
// rename) with its owner and mode kept.
#pragma once

#include <string>
#include <string_view>

namespace pgferry::cutover {

// Returns the file's text with the entry `database` of [databases] pointing at `conninfo`'s
// host, port and dbname. Throws ConfigError when there is no such entry.
std::string rewrite_database_entry(std::string_view config_text, std::string_view database,
                                   std::string_view conninfo);

// Reads `path` (throws ConfigError naming it when unreadable).
std::string read_pgbouncer_config(const std::string& path);
// Writes `text` to `path` atomically.
void write_pgbouncer_config(const std::string& path, const std::string& text);

}  // namespace pgferry::cutover
