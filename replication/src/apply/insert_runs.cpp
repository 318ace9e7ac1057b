// Runs of inserts: COPY text/binary or prepared INSERTs (see insert_runs.hpp).
#include "insert_runs.hpp"

#include <fmt/format.h>
#include <poll.h>

#include <cerrno>
#include <charconv>

namespace pgferry::replication::apply {

namespace {

using pgoutput::ColumnKind;
using pgoutput::ColumnValue;
using pgoutput::TupleView;

// COPY data goes to the target in pieces of about this size, as rows arrive.
constexpr std::size_t kCopyChunk = 64u << 10;
// During a COPY the target connection is non-blocking, so that a target busy for a moment
// does not stop the stream at once: up to this much COPY data waits in libpq's buffer.
constexpr std::size_t kCopyQueue = 16u << 20;

}  // namespace

void InsertRuns::Run::clear() {
  table = nullptr;
  rows = 0;
  copying = false;
  binary = false;
  copy_bytes = 0;
  values.clear();
  cells.clear();
  transactions.clear();
  keys.clear();
  key_ends.clear();
}

Lsn InsertRuns::Run::commit_lsn_of(std::size_t row) const {
  Lsn lsn;
  for (const auto& [first, commit] : transactions) {
    if (first > row) break;
    lsn = commit;
  }
  return lsn;
}

std::string_view InsertRuns::Run::key_of(std::size_t row) const {
  if (row >= key_ends.size()) return {};
  std::size_t begin = row == 0 ? 0 : key_ends[row - 1];
  return std::string_view(keys).substr(begin, key_ends[row] - begin);
}

void InsertRuns::format_key(const TargetTable& table, std::size_t row) {
  key_scratch_.clear();
  if (table.key.empty()) return;
  append_key_names(key_scratch_, table, table.key);
  key_scratch_ += run_.key_of(row);
  key_scratch_ += ')';
}

std::size_t InsertRuns::add(const Relation& relation, const TargetTable& table, TupleView tuple,
                            Lsn commit_lsn) {
  if (empty()) {
    run_.table = &table;
    run_.relation = relation.id;
    run_.version = relation.version;
    run_.columns = relation.columns.size();
  }
  for (std::size_t i = 0; i < tuple.size(); ++i) {
    auto kind = tuple[i].kind;
    if (kind != ColumnKind::null && kind != ColumnKind::text) {
      throw ProtocolError(
          fmt::format("INSERT into {} has an unchanged-TOAST or binary column \"{}\"",
                      table.display, relation.columns[i].name),
          0, 'I');
    }
  }
  std::size_t copy_before = copy_buffer_.size();
  if (run_.copying && !append_copy_row(table, run_.binary, tuple)) {
    // A value the binary encoder does not take: this table goes as text from now on.
    copy_buffer_.resize(copy_before);
    table.binary_copy = false;
    flush();
    return add(relation, table, tuple, commit_lsn);
  }
  if (run_.transactions.empty() || run_.transactions.back().second != commit_lsn) {
    run_.transactions.emplace_back(run_.rows, commit_lsn);
  }
  // The key text, for naming the row if the target refuses it.
  for (std::size_t i = 0; i < table.key.size(); ++i) {
    if (i) run_.keys += ", ";
    const auto& value = tuple[static_cast<std::size_t>(table.key[i])];
    if (value.kind == ColumnKind::null) {
      run_.keys += "NULL";
    } else {
      run_.keys.append(value.data.substr(0, kMaxKeyText));
    }
  }
  run_.key_ends.push_back(static_cast<std::uint32_t>(run_.keys.size()));

  std::size_t bytes = 0;
  if (run_.copying) {
    bytes = copy_buffer_.size() - copy_before;
    run_.copy_bytes += bytes;
  } else {
    std::size_t before = run_.values.size();
    for (std::size_t i = 0; i < tuple.size(); ++i) {
      const auto& value = tuple[i];
      if (value.kind == ColumnKind::null) {
        run_.cells.push_back(-1);
      } else {
        run_.cells.push_back(static_cast<std::int64_t>(run_.values.size()));
        run_.values.append(value.data);
        run_.values.push_back('\0');
      }
    }
    bytes = run_.values.size() - before;
  }
  ++run_.rows;
  // A table without columns has no COPY column list to name (COPY would expect the
  // target's columns): its rows go as INSERT ... DEFAULT VALUES.
  if (!run_.copying && run_.rows >= options_.copy_min_rows && run_.columns > 0) start_copy();
  if (run_.copying && copy_buffer_.size() >= kCopyChunk) send_copy_buffer();
  if (run_.copy_bytes >= options_.copy_max_bytes) flush();
  return bytes;
}

void InsertRuns::flush() {
  if (empty()) return;
  if (run_.copying) {
    end_copy();
  } else {
    send_inserts();
  }
  ApplyCounters::add(counters_.rows_inserted, run_.rows);
  run_.clear();
}

void InsertRuns::send_inserts() {
  const TargetTable& table = *run_.table;
  std::string key = fmt::format("I/{}/{}", table.id.value, table.version);
  const auto& prepared = pipeline_.statement(key, static_cast<int>(run_.columns), [&] {
    // CREATE TABLE t (): every row is the same empty row, as the server's apply worker
    // inserts it (every target column gets its default).
    if (table.columns.empty()) return fmt::format("INSERT INTO {} DEFAULT VALUES", table.qualified);
    std::string sql = fmt::format("INSERT INTO {} (", table.qualified);
    for (std::size_t i = 0; i < table.columns.size(); ++i) {
      if (i) sql += ", ";
      sql += table.columns[i];
    }
    sql += ") OVERRIDING SYSTEM VALUE VALUES (";
    for (std::size_t i = 0; i < table.columns.size(); ++i) {
      if (i) sql += ", ";
      sql += fmt::format("${}", i + 1);
    }
    sql += ')';
    return sql;
  });
  Statement insert_statement = prepared;  // the cache may rehash while sending
  for (std::size_t row = 0; row < run_.rows; ++row) {
    values_.clear();
    std::size_t bytes = 0;
    for (std::size_t column = 0; column < run_.columns; ++column) {
      auto offset = run_.cells[row * run_.columns + column];
      const char* value = offset < 0 ? nullptr : run_.values.data() + offset;
      values_.push_back(value);
      if (value) bytes += std::char_traits<char>::length(value);
    }
    // Key text for messages: the source key columns.
    format_key(table, row);
    pipeline_.send_prepared(insert_statement, values_.data(), bytes,
                            {Op::insert, run_.commit_lsn_of(row), &table, key_scratch_});
  }
}

void InsertRuns::fail_copy(const PGresult* result, std::string_view doing) {
  pipeline_.set_broken();
  const TargetTable& table = *run_.table;
  std::string where =
      fmt::format("{} rel={} ({} rows, source commit_lsn={}..{})", doing, table.display, run_.rows,
                  run_.transactions.front().second, run_.transactions.back().second);
  // The server names the failing row as "COPY t, line N": name its transaction and key.
  if (result) {
    if (const char* context = PQresultErrorField(result, PG_DIAG_CONTEXT)) {
      std::string_view text(context);
      auto at = text.find(", line ");
      std::size_t line = 0;
      if (at != std::string_view::npos) {
        auto digits = text.substr(at + 7);
        std::from_chars(digits.data(), digits.data() + digits.size(), line);
      }
      if (line >= 1 && line <= run_.rows) {
        std::size_t row = line - 1;
        format_key(table, row);
        where =
            fmt::format("COPY rel={}{}{} in source transaction commit_lsn={}", table.display,
                        key_scratch_.empty() ? "" : " key ", key_scratch_, run_.commit_lsn_of(row));
      }
    }
  }
  throw_pg_error(pipeline_.native(), result, Side::target, where);
}

bool InsertRuns::append_copy_row(const TargetTable& table, bool binary, TupleView tuple) {
  if (binary) {
    std::size_t before = copy_buffer_.size();
    append_binary_tuple_start(copy_buffer_, static_cast<std::uint16_t>(tuple.size()));
    for (std::size_t i = 0; i < tuple.size(); ++i) {
      const auto& value = tuple[i];
      if (value.kind == ColumnKind::null) {
        append_binary_null(copy_buffer_);
      } else if (!append_binary_field(copy_buffer_, table.binary[i], value.data)) {
        copy_buffer_.resize(before);
        return false;
      }
    }
    return true;
  }
  for (std::size_t i = 0; i < tuple.size(); ++i) {
    if (i) copy_buffer_ += '\t';
    const auto& value = tuple[i];
    if (value.kind == ColumnKind::null) {
      copy_buffer_ += kCopyNull;
    } else {
      append_copy_text(copy_buffer_, value.data);
    }
  }
  copy_buffer_ += '\n';
  return true;
}

void InsertRuns::start_copy() {
  const TargetTable& table = *run_.table;
  // The rows buffered so far, in binary if every value takes it.
  auto encode_buffered = [&](bool binary) {
    copy_buffer_.clear();
    if (binary) copy_buffer_.append(kCopyBinaryHeader);
    std::vector<ColumnValue> row(run_.columns);
    for (std::size_t r = 0; r < run_.rows; ++r) {
      for (std::size_t column = 0; column < run_.columns; ++column) {
        auto offset = run_.cells[r * run_.columns + column];
        row[column] = offset < 0 ? ColumnValue{ColumnKind::null, {}}
                                 : ColumnValue{ColumnKind::text,
                                               std::string_view(run_.values.data() + offset)};
      }
      if (!append_copy_row(table, binary, TupleView(row))) return false;
    }
    return true;
  };
  run_.binary = table.binary_copy;
  if (run_.binary && !encode_buffered(true)) {
    table.binary_copy = false;
    run_.binary = false;
  }
  if (!run_.binary) encode_buffered(false);
  run_.copy_bytes = copy_buffer_.size();
  run_.values.clear();
  run_.cells.clear();

  pipeline_.leave();
  PGconn* conn = pipeline_.native();
  std::string sql = fmt::format("COPY {} (", table.qualified);
  for (std::size_t i = 0; i < table.columns.size(); ++i) {
    if (i) sql += ", ";
    sql += table.columns[i];
  }
  sql += run_.binary ? ") FROM STDIN (FORMAT binary)" : ") FROM STDIN";
  Result started(PQexec(conn, sql.c_str()));
  if (!started || started.status() != PGRES_COPY_IN) fail_copy(started.native(), "starting COPY");
  run_.copying = true;
  if (PQsetnonblocking(conn, 1) != 0) {
    fail_copy(nullptr, "making the target connection non-blocking");
  }
  copy_unflushed_ = 0;
}

void InsertRuns::send_copy_buffer() {
  if (copy_buffer_.empty()) return;
  PGconn* conn = pipeline_.native();
  while (true) {
    int queued = PQputCopyData(conn, copy_buffer_.data(), static_cast<int>(copy_buffer_.size()));
    if (queued == 1) break;
    if (queued < 0) fail_copy(nullptr, "sending COPY data");
    flush_copy_data();  // 0: libpq's buffer is full
  }
  int left = PQflush(conn);
  if (left < 0) fail_copy(nullptr, "sending COPY data");
  copy_unflushed_ = left == 0 ? 0 : copy_unflushed_ + copy_buffer_.size();
  copy_buffer_.clear();
  if (copy_unflushed_ > kCopyQueue) flush_copy_data();
}

void InsertRuns::flush_copy_data() {
  PGconn* conn = pipeline_.native();
  while (true) {
    int left = PQflush(conn);
    if (left == 0) break;
    if (left < 0) fail_copy(nullptr, "sending COPY data");
    pollfd fd{PQsocket(conn), POLLOUT | POLLIN, 0};
    if (::poll(&fd, 1, 1000) < 0 && errno != EINTR) fail_copy(nullptr, "waiting for the target");
    // libpq reads what the server sent (an error) while it flushes.
  }
  copy_unflushed_ = 0;
}

void InsertRuns::end_copy() {
  const TargetTable& table = *run_.table;
  PGconn* conn = pipeline_.native();
  if (run_.binary) append_binary_trailer(copy_buffer_);
  send_copy_buffer();
  flush_copy_data();
  if (PQsetnonblocking(conn, 0) != 0) fail_copy(nullptr, "making the target connection blocking");
  if (PQputCopyEnd(conn, nullptr) != 1) fail_copy(nullptr, "ending COPY");
  Result done(PQgetResult(conn));
  while (PGresult* extra = PQgetResult(conn)) PQclear(extra);
  if (!done || done.status() != PGRES_COMMAND_OK) fail_copy(done.native(), "COPY");
  if (done.affected_rows() != static_cast<long>(run_.rows)) {
    pipeline_.set_broken();
    throw Error(fmt::format("target: COPY into {} wrote {} rows instead of {}", table.display,
                            done.affected_rows(), run_.rows));
  }
  if (PQenterPipelineMode(conn) != 1) pipeline_.fail("entering pipeline mode after COPY");
  run_.copying = false;
  ApplyCounters::add(counters_.copy_batches, 1);
  if (run_.binary) ApplyCounters::add(counters_.binary_copy_batches, 1);
}

}  // namespace pgferry::replication::apply
