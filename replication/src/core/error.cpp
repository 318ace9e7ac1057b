// Error helpers: side names and the mapping from an exception to the CLI's exit code.
#include "pgferry/replication/core/error.hpp"

namespace pgferry::replication {

std::string_view to_string(Side side) {
  switch (side) {
    case Side::none:
      return "";
    case Side::source:
      return "source";
    case Side::target:
      return "target";
  }
  return "";
}

ExitCode exit_code_for(const std::exception& e) {
  if (auto* conn = dynamic_cast<const ConnectionError*>(&e)) {
    switch (conn->side()) {
      case Side::source:
        return ExitCode::source_unreachable;
      case Side::target:
        return ExitCode::target_unreachable;
      case Side::none:
        return ExitCode::error;
    }
  }
  if (dynamic_cast<const ConfigError*>(&e)) return ExitCode::usage;
  if (dynamic_cast<const CheckFailed*>(&e)) return ExitCode::check_failed;
  if (dynamic_cast<const TimedOut*>(&e)) return ExitCode::timed_out;
  if (dynamic_cast<const CutoverAborted*>(&e)) return ExitCode::aborted;
  return ExitCode::error;
}

}  // namespace pgferry::replication
