// `pgferry verify`: prove that every table in scope holds the same rows on the target as on
// the source, in about the time a scan of both takes, and name every row that differs.
// The CLI, the cutover's quick verification and the demo call verify() below.
//
// NOTES
// - Each table is split into chunks by primary-key ranges (half-open [lo, hi)); each side
//   computes count(*) and the sum of a 64-bit hash of each row's text in that range, in
//   the database, so only two numbers per chunk travel. Chunks run on --jobs connection
//   pairs, the source and target queries of a chunk at the same time.
// - The row text is built over the source's columns in the source's order, selected by
//   name on both sides (a different column order on the target does not matter), with
//   concat(), which calls each type's output function directly: about 1.2x the cost of
//   COPY's text output, where ROW(...)::text costs 1.6x. It stays injective: a column of a
//   type whose text is never empty and never holds \x1f (numbers, dates and times, bool,
//   uuid, bytea, inet, ...) is its text; text, varchar and char are their byte length
//   (-1 for NULL), ':' and the text; any other type (jsonb, arrays, enums, domains, ...)
//   is the hash of its text, digits or nothing for NULL; each column ends in \x1f. The
//   sessions pin every setting a type's output depends on (datestyle, intervalstyle,
//   extra_float_digits, TimeZone=UTC, bytea_output=hex, lc_monetary=C), so floats print
//   exactly (PostgreSQL 12 and later) and timestamptz the same whatever the servers' zones.
// - A sum of row hashes does not depend on row order, and count(*) beside the sum catches
//   duplicates on a target that lacks the key constraint.
// - Hash: hashtextextended(text, 0). Its value depends on the server's byte order, so both
//   sides are probed with the same strings first; if any probe differs (or with
//   portable_hash), md5 is used instead (portable, about 3x slower).
// - A differing chunk is narrowed: halved while it is large, then each side lists (key,
//   row hash) and the keys are matched: missing on the target, extra on the target, or
//   different; the candidates are then looked up by key on both sides, with per-column
//   hashes to say which columns differ. The look-up by key also settles a key that the two
//   sides' collations put in different chunks.
// - Live mode: a chunk read on the source at WAL position P (pg_current_wal_lsn() after
//   the read) that differs is re-checked once the target's progress row has passed P;
//   its rows are re-read by key, up to `recheck_rounds` times, and only keys that differ in
//   every round are reported. With writes fenced (the cutover), one pass is exact.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "pgferry/replication/core/table_scope.hpp"

namespace pgferry::cutover {

enum class VerifyMode {
  automatic,  // live when the target has a progress row for the name, else once
  live,       // re-check differences after the target caught up (needs the progress row)
  once,       // one pass: exact when nothing writes to the source
};

struct VerifyOptions {
  std::string source_conninfo;
  std::string target_conninfo;
  std::string name = "pgferry";  // the progress row live mode follows
  replication::TableScope scope;
  int jobs = 4;                      // connection pairs checking chunks in parallel
  std::int64_t chunk_rows = 100000;  // rows per chunk (the key ranges' target size)
  std::int64_t sample = 0;           // > 0: only N random keys and the last N keys per table
  VerifyMode mode = VerifyMode::automatic;
  int recheck_rounds = 5;                     // live: re-reads of a differing key
  std::chrono::seconds catchup_timeout{120};  // live: wait for the target to pass P
  std::size_t max_keys = 1000;                // differing keys kept per table
  bool portable_hash = false;  // md5 even when both servers agree on hashtextextended
  std::optional<std::chrono::steady_clock::time_point> deadline;  // TimedOut past it
};

enum class DifferenceKind { missing_on_target, extra_on_target, different };
const char* to_string(DifferenceKind kind);

struct RowDifference {
  DifferenceKind kind;
  std::vector<std::string> key;      // text of each key column, in key order
  std::vector<std::string> columns;  // different: the columns that differ
  bool changing = false;             // live: the source row changed between the re-checks
};

struct TableVerifyReport {
  std::string schema;
  std::string name;
  std::vector<std::string> key_columns;  // empty: no primary key (whole-table hash)
  std::int64_t source_rows = 0;          // rows read (sample mode: keys sampled)
  std::int64_t target_rows = 0;
  std::int64_t chunks = 0;
  std::int64_t differing_chunks = 0;
  // Live: chunks that differed on the first read and were read again in order (source,
  // then the target past the source's position); lag shows up here, not as differences.
  std::int64_t rechecked_chunks = 0;
  std::int64_t missing = 0;  // counts of differing keys (all, not only those kept)
  std::int64_t extra = 0;
  std::int64_t different = 0;
  std::vector<RowDifference> differences;  // at most max_keys, in key order of discovery
  std::vector<std::string> problems;       // table-level: missing table/column, no key, lag
  double seconds = 0;

  std::string display_name() const { return schema + "." + name; }
  bool equal() const { return missing == 0 && extra == 0 && different == 0 && problems.empty(); }
  std::int64_t differing_keys() const { return missing + extra + different; }
};

struct VerifyReport {
  VerifyMode mode = VerifyMode::once;  // the mode used (never automatic)
  std::string hash;                    // "hashtextextended" or "md5"
  std::int64_t sample = 0;
  std::vector<TableVerifyReport> tables;
  double seconds = 0;

  bool equal() const;
  std::int64_t differing_tables() const;
};

struct VerifyProgress {
  std::size_t tables = 0;
  std::size_t tables_done = 0;
  std::int64_t chunks = 0;  // planned so far
  std::int64_t chunks_done = 0;
  std::int64_t rows_done = 0;  // source rows
  std::int64_t differing_keys = 0;
  double seconds = 0;
};

// Told about progress from the worker threads (serialized, at most every 200 ms, and once
// at the end).
class VerifyObserver {
 public:
  virtual ~VerifyObserver() = default;
  virtual void progress(const VerifyProgress& progress) = 0;
};

// Compares every table in scope. Throws ConnectionError when a side cannot be reached,
// ConfigError for bad options (live mode without a progress row), TimedOut past the
// deadline; a difference is never an exception.
VerifyReport verify(const VerifyOptions& options, VerifyObserver* observer = nullptr);

}  // namespace pgferry::cutover
