// `pgferry init`'s live progress display of the copy, and the human formatting of bytes,
// counts and durations it shares with init's text output.
#pragma once

#include <memory>
#include <string>

#include "pgferry/replication/copy/init.hpp"

namespace pgferry::tools {

// "1.5 MB", "12 B": powers of 1024 with PostgreSQL's unit names.
std::string human_bytes(double bytes);
// "12.3k", "4.56M".
std::string human_count(double n);
// "42s", "3m07s", "1h05m"; "?" when negative or absurd.
std::string human_duration(double seconds);

// The display as init's observer: rows and bytes of finished ranges plus the COPYs in
// flight on the target (polled), redrawn in place on stderr when `terminal`, a log line
// every 10 s otherwise; nothing unless `enabled`. Best effort: it never fails the copy.
std::unique_ptr<replication::InitObserver> make_init_progress_display(std::string target_conninfo,
                                                                      bool terminal, bool enabled);

}  // namespace pgferry::tools
