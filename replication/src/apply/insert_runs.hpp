// Runs of inserts into one relation (possibly across source transactions): sent as COPY
// (binary where every value takes it, else text) once long enough, else as pipelined
// prepared INSERTs.
//
// NOTES
// - COPY is not allowed in pipeline mode: once a run of inserts is long enough to be worth
//   it (copy_min_rows), the pipeline is synced, pipeline mode left and COPY started inside
//   the still open target transaction; every further row of the run is encoded straight into
//   COPY data and sent in 64 kB pieces as it arrives, so the target inserts while the source
//   still decodes and sends (the COPY ends, and pipeline mode resumes, when the applier ends
//   the run: at the first change that is not an insert into the same relation, at the
//   group's commit; and here at copy_max_bytes). During a COPY the connection is
//   non-blocking: a target busy for a moment leaves up to kCopyQueue bytes in libpq's
//   buffer instead of stopping the stream at once.
// - Binary COPY when the table's every column takes it (TargetTable::binary_copy); the
//   first value the encoder refuses ends the run and sends the table as text from then on.
// - Shorter runs go as pipelined prepared INSERTs. The first rows of a run are kept in one
//   arena (values NUL-terminated for libpq), so buffering a row costs no allocation once the
//   arena has grown; each row's key text is kept to name it in an error (also for a COPY
//   row the server names by its line number).
// - While a COPY is open nothing else may be sent on the connection: the applier ends the
//   run before any other statement (copying() tells it one is open).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "pgferry/replication/apply/applier.hpp"
#include "pgferry/replication/decode/pgoutput.hpp"
#include "pgferry/replication/decode/relation.hpp"
#include "pipeline.hpp"
#include "target_tables.hpp"

namespace pgferry::replication::apply {

class InsertRuns {
 public:
  InsertRuns(Pipeline& pipeline, const ApplierOptions& options, ApplyCounters& counters)
      : pipeline_(pipeline), options_(options), counters_(counters) {}

  bool empty() const { return run_.rows == 0; }
  // A COPY is open: nothing else may be sent before flush().
  bool copying() const { return run_.copying; }
  // The run holds inserts into `relation` (of any version).
  bool holds(RelationId relation) const { return !empty() && run_.relation == relation; }
  // The run holds inserts into another relation or relation version.
  bool holds_other(const Relation& relation) const {
    return !empty() && (run_.relation != relation.id || run_.version != relation.version);
  }

  // Adds a row (text or NULL values, one per column of `relation`) inserted by the source
  // transaction `commit_lsn` into `table` to the run, which must be empty or of the same
  // relation version. Returns the bytes it adds to the group.
  std::size_t add(const Relation& relation, const TargetTable& table, pgoutput::TupleView tuple,
                  Lsn commit_lsn);
  // Sends the run: ends its COPY, or sends its buffered rows as prepared INSERTs.
  void flush();
  // Hands the target what COPY data the socket takes now (when the stream is quiet).
  void hand_over() {
    if (run_.copying && PQflush(pipeline_.native()) == 0) copy_unflushed_ = 0;
  }

 private:
  // Appends one row to copy_buffer_ in the run's format; false (nothing appended) when a
  // value does not go in binary.
  bool append_copy_row(const TargetTable& table, bool binary, pgoutput::TupleView tuple);
  void send_inserts();
  void start_copy();
  void send_copy_buffer();
  void flush_copy_data();
  void end_copy();
  [[noreturn]] void fail_copy(const PGresult* result, std::string_view doing);
  // key_scratch_ = "(key columns)=(values)" of row `row` ("" without a key).
  void format_key(const TargetTable& table, std::size_t row);

  Pipeline& pipeline_;
  const ApplierOptions& options_;
  ApplyCounters& counters_;

  // The current run. Its first rows are buffered (values); once it is copy_min_rows long a
  // COPY starts and every further row is encoded straight into copy_buffer_ and streamed to
  // the target while the stream delivers the next ones.
  struct Run {
    const TargetTable* table = nullptr;
    RelationId relation;
    std::uint64_t version = 0;
    std::size_t rows = 0;
    std::size_t columns = 0;
    bool copying = false;
    bool binary = false;                                    // the COPY is FORMAT binary
    std::size_t copy_bytes = 0;                             // COPY data of this run so far
    std::string values;                                     // NUL-terminated values
    std::vector<std::int64_t> cells;                        // offset into values; -1 is NULL
    std::vector<std::pair<std::size_t, Lsn>> transactions;  // (first row, commit lsn)
    std::string keys;                                       // key text of each row, for errors
    std::vector<std::uint32_t> key_ends;                    // end of each row's key in keys
    void clear();
    Lsn commit_lsn_of(std::size_t row) const;
    std::string_view key_of(std::size_t row) const;
  } run_;
  std::string copy_buffer_;
  // COPY data handed to libpq (non-blocking during a COPY) that the socket did not take yet,
  // over-estimated: reset only once libpq reports everything sent.
  std::size_t copy_unflushed_ = 0;
  std::vector<const char*> values_;  // one INSERT's parameters, pointing into run_.values
  std::string key_scratch_;
};

}  // namespace pgferry::replication::apply
