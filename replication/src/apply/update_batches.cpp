// Set-based batches of updates, deletes and inserts (see update_batches.hpp).
#include "update_batches.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <numeric>

namespace pgferry::replication::apply {

namespace {

using pgoutput::ColumnKind;
using pgoutput::TupleView;

// Batched changes are sent from this size on (or copy_max_bytes if lower): small enough
// that the target applies one batch while the next one is received.
constexpr std::size_t kBatchBytes = 256u << 10;

// Appends `value` as a double-quoted array element (array_in syntax).
void append_array_element(std::string& out, std::string_view value) {
  out += '"';
  std::size_t start = 0;
  for (std::size_t i = 0; i < value.size(); ++i) {
    if (value[i] != '"' && value[i] != '\\') continue;
    out.append(value.data() + start, i - start);
    out += '\\';
    out += value[i];
    start = i + 1;
  }
  out.append(value.data() + start, value.size() - start);
  out += '"';
}

const std::string& column_name(const TargetTable& table, int column) {
  return table.columns[static_cast<std::size_t>(column)];
}
const std::string& column_type(const TargetTable& table, int column) {
  return table.types[static_cast<std::size_t>(column)];
}

// "unnest($1::t1[], ...) AS v(c0, ...)" over `columns` (parameters in that order).
std::string unnest_source(const TargetTable& table, std::span<const int> columns) {
  std::string sql = "unnest(";
  for (std::size_t c = 0; c < columns.size(); ++c) {
    sql += fmt::format("{}${}::{}[]", c ? ", " : "", c + 1, column_type(table, columns[c]));
  }
  sql += ") AS v(";
  for (std::size_t c = 0; c < columns.size(); ++c) sql += fmt::format("{}c{}", c ? ", " : "", c);
  sql += ')';
  return sql;
}

// " WHERE t.k = v.c0 AND ... RETURNING t.k::text, ...": the first `keys` of `columns` find
// the row, and the keys touched name a missing one (see check()).
std::string match_and_return(const TargetTable& table, std::span<const int> columns,
                             std::size_t keys) {
  std::string sql = " WHERE ";
  for (std::size_t c = 0; c < keys; ++c) {
    sql += fmt::format("{}t.{} = v.c{}", c ? " AND " : "", column_name(table, columns[c]), c);
  }
  sql += " RETURNING ";
  for (std::size_t c = 0; c < keys; ++c) {
    sql += fmt::format("{}t.{}::text", c ? ", " : "", column_name(table, columns[c]));
  }
  return sql;
}

}  // namespace

std::size_t UpdateBatches::Cells::add_entry(std::size_t width, Lsn commit_lsn,
                                            const std::string* key) {
  cells.resize(cells.size() + width, kNotCarried);
  lengths.resize(lengths.size() + width);
  commit_lsns.push_back(commit_lsn);
  keys.push_back(key);
  return commit_lsns.size() - 1;
}

void UpdateBatches::Cells::set(std::size_t cell, const pgoutput::ColumnValue& value) {
  if (value.kind == ColumnKind::unchanged_toast) return;
  if (value.kind == ColumnKind::null) {
    cells[cell] = kNull;
    return;
  }
  cells[cell] = static_cast<std::int64_t>(arena.size());
  lengths[cell] = static_cast<std::uint32_t>(value.data.size());
  arena.append(value.data);
}

bool UpdateBatches::full() const {
  return bytes_ >= std::min(options_.copy_max_bytes, kBatchBytes);
}

bool UpdateBatches::key_of(const TargetTable& table, TupleView tuple) {
  key_text_.clear();
  for (int column : table.row_key) {
    const auto& value = tuple[static_cast<std::size_t>(column)];
    if (value.kind != ColumnKind::text) return false;
    key_text_.append(value.data);
    key_text_ += '\0';
  }
  return !table.row_key.empty();
}

std::optional<std::size_t> UpdateBatches::add_update(const TargetTable& table,
                                                     const pgoutput::Update& update,
                                                     Lsn commit_lsn) {
  // Only an update that keeps its key and has a usable key: its row ends with the newest
  // value of each column carried, whatever came between.
  if (!table.batchable || update.old_kind != 0 || table.row_key != table.key) return std::nullopt;
  const TupleView tuple = update.new_tuple;
  if (!key_of(table, tuple)) return std::nullopt;
  if (table.key.size() == table.columns.size()) return std::nullopt;  // nothing to SET

  auto& batch = batch_for(table);
  const std::size_t width = batch.columns.size();
  auto [it, added] = batch.updated.try_emplace(key_text_, batch.updates.entries());
  std::size_t entry = it->second;
  if (added) {
    batch.updates.add_entry(width, commit_lsn, &it->first);
  } else {
    batch.updates.commit_lsns[entry] = commit_lsn;
  }
  std::size_t before = batch.updates.arena.size();
  for (std::size_t c = 0; c < width; ++c) {
    batch.updates.set(entry * width + c, tuple[static_cast<std::size_t>(batch.columns[c])]);
  }
  std::size_t bytes = batch.updates.arena.size() - before;
  ++rows_;
  bytes_ += bytes;
  ApplyCounters::add(counters_.rows_updated, 1);
  return bytes;
}

UpdateBatches::Added UpdateBatches::add_delete(const TargetTable& table,
                                               const pgoutput::Delete& del, Lsn commit_lsn,
                                               std::size_t& bytes) {
  // The old key ('K'), or the primary key in the old row ('O', REPLICA IDENTITY FULL).
  if (!table.batchable || !key_of(table, del.old_tuple)) return Added::no;
  auto found = batches_.find(table.id);
  if (found != batches_.end()) {
    auto& batch = found->second;
    // Deletes go before inserts: an inserted key must be deleted after them.
    if (batch.inserted.count(key_text_) || batch.deleted.count(key_text_)) {
      return Added::send_first;
    }
    // The row goes: its batched update need not be sent.
    if (auto updated = batch.updated.find(key_text_); updated != batch.updated.end()) {
      batch.updates.keys[updated->second] = nullptr;
      batch.updated.erase(updated);
    }
  }
  auto& batch = batch_for(table);
  const std::size_t width = table.row_key.size();
  auto it = batch.deleted.emplace(key_text_, batch.deletes.entries()).first;
  std::size_t entry = batch.deletes.add_entry(width, commit_lsn, &it->first);
  std::size_t before = batch.deletes.arena.size();
  for (std::size_t c = 0; c < width; ++c) {
    batch.deletes.set(entry * width + c, del.old_tuple[static_cast<std::size_t>(table.row_key[c])]);
  }
  bytes = batch.deletes.arena.size() - before;
  ++rows_;
  bytes_ += bytes;
  ApplyCounters::add(counters_.rows_deleted, 1);
  return Added::yes;
}

UpdateBatches::Batch& UpdateBatches::batch_for(const TargetTable& table) {
  auto& batch = batches_[table.id];
  if (batch.table == nullptr) {
    batch.table = &table;
    batch.columns = table.row_key;
    for (std::size_t i = 0; i < table.columns.size(); ++i) {
      if (std::find(table.row_key.begin(), table.row_key.end(), static_cast<int>(i)) ==
          table.row_key.end()) {
        batch.columns.push_back(static_cast<int>(i));
      }
    }
  }
  return batch;
}

std::size_t UpdateBatches::add_insert(const TargetTable& table, TupleView tuple, Lsn commit_lsn) {
  for (std::size_t i = 0; i < tuple.size(); ++i) {
    if (tuple[i].kind != ColumnKind::null && tuple[i].kind != ColumnKind::text) {
      throw ProtocolError(
          fmt::format("INSERT into {} has an unchanged-TOAST or binary column", table.display), 0,
          'I');
    }
  }
  auto& batch = batch_for(table);
  // Its key, so that a delete of it goes after the inserts (see add_delete()).
  if (key_of(table, tuple)) batch.inserted.insert(key_text_);
  const std::size_t width = tuple.size();
  std::size_t entry = batch.inserts.add_entry(width, commit_lsn, nullptr);
  std::size_t before = batch.inserts.arena.size();
  for (std::size_t i = 0; i < width; ++i) batch.inserts.set(entry * width + i, tuple[i]);
  std::size_t bytes = batch.inserts.arena.size() - before;
  ++rows_;
  bytes_ += bytes;
  ApplyCounters::add(counters_.rows_inserted, 1);
  return bytes;
}

void UpdateBatches::append_array(const Cells& cells, std::size_t width, std::size_t column,
                                 std::span<const std::size_t> entries) {
  // One text array per column, cast by the statement to the column's type.
  std::string& out = pipeline_.params().begin_value();
  out += '{';
  bool first = true;
  for (std::size_t e : entries) {
    if (!first) out += ',';
    first = false;
    auto offset = cells.cells[e * width + column];
    if (offset < 0) {
      out += "NULL";
    } else {
      append_array_element(
          out, std::string_view(cells.arena)
                   .substr(static_cast<std::size_t>(offset), cells.lengths[e * width + column]));
    }
  }
  out += '}';
  pipeline_.params().end_value();
}

void UpdateBatches::send_checked(const Statement& statement, Op op, const TargetTable& table,
                                 const Cells& cells, std::span<const std::size_t> entries) {
  Sent sent;
  if (!spare_.empty()) {
    sent = std::move(spare_.back());
    spare_.pop_back();
  }
  sent.keys.clear();
  sent.ends.clear();
  sent.commit_lsns.clear();
  for (std::size_t e : entries) {
    sent.keys.append(*cells.keys[e]);
    sent.ends.push_back(static_cast<std::uint32_t>(sent.keys.size()));
    sent.commit_lsns.push_back(cells.commit_lsns[e]);
  }
  inflight_.push_back(std::move(sent));
  pipeline_.send_prepared(
      statement,
      {op, Lsn::invalid(), &table, {}, static_cast<std::uint32_t>(entries.size()), this});
}

void UpdateBatches::send_deletes(Batch& batch) {
  const TargetTable& table = *batch.table;
  const std::size_t entries = batch.deletes.entries();
  if (entries == 0) return;
  const std::span<const int> key(table.row_key);
  statement_key_ = fmt::format("BD/{}/{}", table.id.value, table.version);
  Statement statement = pipeline_.statement(statement_key_, static_cast<int>(key.size()), [&] {
    return fmt::format("DELETE FROM {} AS t USING {}{}", table.qualified, unnest_source(table, key),
                       match_and_return(table, key, key.size()));
  });
  entries_.resize(entries);
  std::iota(entries_.begin(), entries_.end(), std::size_t{0});
  Params& params = pipeline_.params();
  params.clear();
  for (std::size_t c = 0; c < key.size(); ++c) append_array(batch.deletes, key.size(), c, entries_);
  params.finish();
  send_checked(statement, Op::batch_delete, table, batch.deletes, entries_);
}

void UpdateBatches::send_inserts(Batch& batch) {
  const TargetTable& table = *batch.table;
  const std::size_t entries = batch.inserts.entries();
  if (entries == 0) return;
  const std::size_t columns = table.columns.size();
  statement_key_ = fmt::format("BI/{}/{}", table.id.value, table.version);
  Statement statement = pipeline_.statement(statement_key_, static_cast<int>(columns), [&] {
    std::string sql = fmt::format("INSERT INTO {} (", table.qualified);
    for (std::size_t c = 0; c < columns; ++c) {
      sql += fmt::format("{}{}", c ? ", " : "", table.columns[c]);
    }
    sql += ") OVERRIDING SYSTEM VALUE SELECT * FROM unnest(";
    for (std::size_t c = 0; c < columns; ++c) {
      sql += fmt::format("{}${}::{}[]", c ? ", " : "", c + 1, table.types[c]);
    }
    sql += ')';
    return sql;
  });
  entries_.resize(entries);
  std::iota(entries_.begin(), entries_.end(), std::size_t{0});
  Params& params = pipeline_.params();
  params.clear();
  for (std::size_t c = 0; c < columns; ++c) append_array(batch.inserts, columns, c, entries_);
  params.finish();
  pipeline_.send_prepared(statement, {Op::batch_insert,
                                      batch.inserts.commit_lsns.back(),
                                      &table,
                                      {},
                                      static_cast<std::uint32_t>(entries)});
}

void UpdateBatches::send_updates(Batch& batch) {
  const TargetTable& table = *batch.table;
  const std::size_t width = batch.columns.size();
  const std::size_t keys = table.row_key.size();
  // One statement per set of columns carried: entries grouped by which non-key columns they
  // carry ('1') or leave as they are on the target ('0').
  std::map<std::string, std::vector<std::size_t>> shapes;
  std::string shape;
  for (std::size_t e = 0; e < batch.updates.entries(); ++e) {
    if (batch.updates.keys[e] == nullptr) continue;  // deleted later in the batch
    shape.clear();
    for (std::size_t c = keys; c < width; ++c) {
      shape += batch.updates.cells[e * width + c] == kNotCarried ? '0' : '1';
    }
    shapes[shape].push_back(e);
  }
  std::vector<int> columns;
  for (const auto& [carried, entries] : shapes) {
    // Parameters: the key columns, then the carried ones.
    columns.assign(batch.columns.begin(), batch.columns.begin() + static_cast<long>(keys));
    std::vector<std::size_t> cell_of(keys);
    std::iota(cell_of.begin(), cell_of.end(), std::size_t{0});
    for (std::size_t c = keys; c < width; ++c) {
      if (carried[c - keys] == '0') continue;
      columns.push_back(batch.columns[c]);
      cell_of.push_back(c);
    }
    statement_key_ = fmt::format("BU/{}/{}/{}", table.id.value, table.version, carried);
    Statement statement =
        pipeline_.statement(statement_key_, static_cast<int>(columns.size()), [&] {
          std::string sql = fmt::format("UPDATE {} AS t SET ", table.qualified);
          for (std::size_t c = keys; c < columns.size(); ++c) {
            sql += fmt::format("{}{} = v.c{}", c > keys ? ", " : "", column_name(table, columns[c]),
                               c);
          }
          // Every non-key column left as it is: the row is still updated (as each source
          // update was), its key set to itself.
          if (columns.size() == keys)
            sql += fmt::format("{0} = t.{0}", column_name(table, columns[0]));
          return sql + " FROM " + unnest_source(table, columns) +
                 match_and_return(table, columns, keys);
        });
    Params& params = pipeline_.params();
    params.clear();
    for (std::size_t cell : cell_of) append_array(batch.updates, width, cell, entries);
    params.finish();
    send_checked(statement, Op::batch_update, table, batch.updates, entries);
  }
}

void UpdateBatches::send() {
  if (rows_ == 0) return;
  for (auto& [relation, batch] : batches_) {
    send_deletes(batch);
    send_inserts(batch);
    send_updates(batch);
  }
  batches_.clear();
  rows_ = 0;
  bytes_ = 0;
}

void UpdateBatches::check(const Pending& pending, const Result& result) {
  Sent sent = std::move(inflight_.front());
  inflight_.pop_front();
  long affected = result.affected_rows();
  if (affected == static_cast<long>(pending.rows)) {
    spare_.push_back(std::move(sent));
    return;
  }
  pipeline_.set_broken();
  // Name a key the target lacks: one the statement did not return.
  std::unordered_set<std::string> touched;
  for (int row = 0; row < result.rows(); ++row) {
    std::string key;
    for (int column = 0; column < result.columns(); ++column) {
      key.append(result.get(row, column));
      key += '\0';
    }
    touched.insert(std::move(key));
  }
  std::string detail;
  for (std::size_t entry = 0, start = 0; entry < sent.ends.size(); start = sent.ends[entry++]) {
    std::string key = sent.keys.substr(start, sent.ends[entry] - start);
    if (touched.count(key)) continue;
    std::string shown = key;
    std::replace(shown.begin(), shown.end(), '\0', ',');
    if (!shown.empty()) shown.pop_back();
    std::string columns;
    for (std::size_t i = 0; i < pending.table->row_key.size(); ++i) {
      if (i) columns += ", ";
      columns += column_name(*pending.table, pending.table->row_key[i]);
    }
    detail = fmt::format(", e.g. key ({})=({}) of source transaction commit_lsn={}", columns,
                         shown.substr(0, kMaxKeyText), sent.commit_lsns[entry]);
    break;
  }
  throw Error(fmt::format(
      "target: {} affected {} rows instead of {}{}: the target no longer holds rows the source "
      "changed (a write on the target, or a table copied without its rows); repair the rows or "
      "re-copy the table, then restart",
      pipeline_.describe(pending), affected, pending.rows, detail));
}

}  // namespace pgferry::replication::apply
