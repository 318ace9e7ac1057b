// The error hierarchy. Exceptions end an operation; expected misses are return values.
//
//   Error
//   ├── ProtocolError        bytes from the walsender that do not parse (offset, message type)
//   ├── PgError              the server said no (SQLSTATE, which side)
//   │   ├── ConnectionError  cannot connect / connection lost: retryable
//   │   └── SqlError         a statement failed
//   ├── ConfigError          bad user input: conninfo, options, LSN strings
//   ├── SpoolError           the spool directory cannot take a streamed transaction (full,
//   │                        read-only, not a directory): stops, names the directory
//   ├── CheckFailed          preflight found fatal problems
//   ├── TimedOut             a wait ran past its deadline
//   └── CutoverAborted       cutover stopped and unfenced the source
//
// SQLSTATE maps to a type in one place: throw_pg_error() in pg.cpp.
#pragma once

#include <cstddef>
#include <stdexcept>
#include <string>
#include <string_view>

namespace pgferry::replication {

// Which server an error comes from; it decides the exit code (4 source, 5 target).
enum class Side { none, source, target };
std::string_view to_string(Side side);

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class ProtocolError : public Error {
 public:
  ProtocolError(std::string what, std::size_t offset, char message_type)
      : Error(std::move(what)), offset_(offset), message_type_(message_type) {}
  std::size_t offset() const { return offset_; }
  char message_type() const { return message_type_; }

 private:
  std::size_t offset_;
  char message_type_;
};

class PgError : public Error {
 public:
  PgError(std::string what, std::string sqlstate, Side side)
      : Error(std::move(what)), sqlstate_(std::move(sqlstate)), side_(side) {}
  const std::string& sqlstate() const { return sqlstate_; }
  Side side() const { return side_; }

 private:
  std::string sqlstate_;
  Side side_;
};

class ConnectionError : public PgError {
 public:
  using PgError::PgError;
};

class SqlError : public PgError {
 public:
  using PgError::PgError;
};

class ConfigError : public Error {
 public:
  using Error::Error;
};

// The spool directory (decode/spool.hpp) cannot be written: no space, read-only, not a
// directory. Nothing past the applied position has been confirmed, so stopping loses nothing.
class SpoolError : public Error {
 public:
  using Error::Error;
};

class CheckFailed : public Error {
 public:
  using Error::Error;
};

class TimedOut : public Error {
 public:
  using Error::Error;
};

class CutoverAborted : public Error {
 public:
  using Error::Error;
};

// The process exit codes of the CLI contract.
enum class ExitCode : int {
  ok = 0,
  error = 1,
  usage = 2,
  check_failed = 3,
  source_unreachable = 4,
  target_unreachable = 5,
  timed_out = 6,
  aborted = 7,
};

// The exit code for an exception that ended a command.
ExitCode exit_code_for(const std::exception& e);

}  // namespace pgferry::replication
