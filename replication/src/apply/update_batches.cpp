// Coalesced update batches (see update_batches.hpp).
#include "update_batches.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <unordered_set>

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

}  // namespace

bool UpdateBatches::full() const {
  return bytes_ >= std::min(options_.copy_max_bytes, kBatchBytes);
}

std::optional<std::size_t> UpdateBatches::add_update(const TargetTable& table,
                                                     const pgoutput::Update& update,
                                                     Lsn commit_lsn) {
  // Only an update that keeps its key, carries every column and has a usable key: its row
  // ends as its last new tuple, whatever came between.
  if (!table.batchable || update.old_kind != 0) return std::nullopt;
  const TupleView tuple = update.new_tuple;
  for (std::size_t i = 0; i < tuple.size(); ++i) {
    if (tuple[i].kind == ColumnKind::unchanged_toast) return std::nullopt;
  }
  key_text_.clear();
  for (int column : table.key) {
    const auto& value = tuple[static_cast<std::size_t>(column)];
    if (value.kind != ColumnKind::text) return std::nullopt;
    key_text_.append(value.data);
    key_text_ += '\0';
  }
  if (table.key.size() == table.columns.size()) return std::nullopt;  // nothing to SET

  auto& batch = batch_for(table);
  const std::size_t width = batch.columns.size();
  auto [it, added] = batch.index.try_emplace(key_text_, batch.commit_lsns.size());
  std::size_t entry = it->second;
  if (added) {
    batch.cells.resize(batch.cells.size() + width);
    batch.lengths.resize(batch.lengths.size() + width);
    batch.commit_lsns.push_back(commit_lsn);
    batch.keys.push_back(&it->first);
  } else {
    batch.commit_lsns[entry] = commit_lsn;
  }
  std::size_t before = batch.arena.size();
  for (std::size_t c = 0; c < width; ++c) {
    const auto& value = tuple[static_cast<std::size_t>(batch.columns[c])];
    if (value.kind == ColumnKind::null) {
      batch.cells[entry * width + c] = -1;
    } else {
      batch.cells[entry * width + c] = static_cast<std::int64_t>(batch.arena.size());
      batch.lengths[entry * width + c] = static_cast<std::uint32_t>(value.data.size());
      batch.arena.append(value.data);
    }
  }
  std::size_t bytes = batch.arena.size() - before;
  ++rows_;
  bytes_ += bytes;
  ApplyCounters::add(counters_.rows_updated, 1);
  return bytes;
}

UpdateBatches::Batch& UpdateBatches::batch_for(const TargetTable& table) {
  auto& batch = batches_[table.id];
  if (batch.table == nullptr) {
    batch.table = &table;
    batch.columns = table.key;
    for (std::size_t i = 0; i < table.columns.size(); ++i) {
      if (std::find(table.key.begin(), table.key.end(), static_cast<int>(i)) == table.key.end()) {
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
  std::size_t before = batch.insert_arena.size();
  for (std::size_t i = 0; i < tuple.size(); ++i) {
    if (tuple[i].kind == ColumnKind::null) {
      batch.insert_cells.push_back(-1);
      batch.insert_lengths.push_back(0);
    } else {
      batch.insert_cells.push_back(static_cast<std::int64_t>(batch.insert_arena.size()));
      batch.insert_lengths.push_back(static_cast<std::uint32_t>(tuple[i].data.size()));
      batch.insert_arena.append(tuple[i].data);
    }
  }
  ++batch.inserts;
  batch.last_insert_lsn = commit_lsn;
  std::size_t bytes = batch.insert_arena.size() - before;
  ++rows_;
  bytes_ += bytes;
  ApplyCounters::add(counters_.rows_inserted, 1);
  return bytes;
}

void UpdateBatches::append_array(const std::string& arena, const std::vector<std::int64_t>& cells,
                                 const std::vector<std::uint32_t>& lengths, std::size_t count,
                                 std::size_t width, std::size_t column) {
  // One text array per column, cast by the statement to the column's type.
  std::string& out = pipeline_.params().begin_value();
  out += '{';
  for (std::size_t e = 0; e < count; ++e) {
    if (e) out += ',';
    auto offset = cells[e * width + column];
    if (offset < 0) {
      out += "NULL";
    } else {
      append_array_element(out, std::string_view(arena).substr(static_cast<std::size_t>(offset),
                                                               lengths[e * width + column]));
    }
  }
  out += '}';
  pipeline_.params().end_value();
}

void UpdateBatches::send() {
  if (rows_ == 0) return;
  Params& params = pipeline_.params();
  for (auto& entry : batches_) {
    // A reference, not a structured binding: lambdas below capture it (clang 14 cannot
    // capture structured bindings).
    auto& batch = entry.second;
    const TargetTable& table = *batch.table;
    if (batch.inserts > 0) {
      const std::size_t columns = table.columns.size();
      const auto& prepared = pipeline_.statement(
          fmt::format("BI/{}/{}", table.id.value, table.version), static_cast<int>(columns), [&] {
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
      Statement insert_statement = prepared;
      params.clear();
      for (std::size_t c = 0; c < columns; ++c) {
        append_array(batch.insert_arena, batch.insert_cells, batch.insert_lengths, batch.inserts,
                     columns, c);
      }
      params.finish();
      pipeline_.send_prepared(insert_statement, {Op::batch_insert,
                                                 batch.last_insert_lsn,
                                                 &table,
                                                 {},
                                                 static_cast<std::uint32_t>(batch.inserts)});
    }
    const std::size_t width = batch.columns.size();
    const std::size_t entries = batch.commit_lsns.size();
    if (entries == 0) continue;
    // One text array per column; the statement casts each to the column's type.
    std::string key = fmt::format("B/{}/{}", table.id.value, table.version);
    const auto& prepared = pipeline_.statement(key, static_cast<int>(width), [&] {
      std::string sql = fmt::format("UPDATE {} AS t SET ", table.qualified);
      std::size_t keys = table.key.size();
      for (std::size_t c = keys; c < width; ++c) {
        if (c > keys) sql += ", ";
        sql +=
            fmt::format("{} = v.c{}", table.columns[static_cast<std::size_t>(batch.columns[c])], c);
      }
      sql += " FROM unnest(";
      for (std::size_t c = 0; c < width; ++c) {
        if (c) sql += ", ";
        sql += fmt::format("${}::{}[]", c + 1,
                           table.types[static_cast<std::size_t>(batch.columns[c])]);
      }
      sql += ") AS v(";
      for (std::size_t c = 0; c < width; ++c) sql += fmt::format("{}c{}", c ? ", " : "", c);
      sql += ") WHERE ";
      for (std::size_t c = 0; c < keys; ++c) {
        if (c) sql += " AND ";
        sql += fmt::format("t.{} = v.c{}",
                           table.columns[static_cast<std::size_t>(batch.columns[c])], c);
      }
      // The keys updated, to name a missing one (see check()).
      sql += " RETURNING ";
      for (std::size_t c = 0; c < keys; ++c) {
        if (c) sql += ", ";
        sql += fmt::format("t.{}::text", table.columns[static_cast<std::size_t>(batch.columns[c])]);
      }
      return sql;
    });
    Statement batch_statement = prepared;
    params.clear();
    for (std::size_t c = 0; c < width; ++c) {
      append_array(batch.arena, batch.cells, batch.lengths, entries, width, c);
    }
    params.finish();
    std::vector<std::pair<std::string, Lsn>> keys;
    keys.reserve(entries);
    for (std::size_t e = 0; e < entries; ++e) {
      keys.emplace_back(*batch.keys[e], batch.commit_lsns[e]);
    }
    inflight_.push_back(std::move(keys));
    pipeline_.send_prepared(
        batch_statement,
        {Op::batch_update, Lsn::invalid(), &table, {}, static_cast<std::uint32_t>(entries), this});
  }
  batches_.clear();
  rows_ = 0;
  bytes_ = 0;
}

void UpdateBatches::check(const Pending& pending, const Result& result) {
  auto keys = std::move(inflight_.front());
  inflight_.pop_front();
  long affected = result.affected_rows();
  if (affected == static_cast<long>(pending.rows)) return;
  pipeline_.set_broken();
  // Name a key the target lacks: one the statement did not return.
  std::unordered_set<std::string> updated;
  for (int row = 0; row < result.rows(); ++row) {
    std::string key;
    for (int column = 0; column < result.columns(); ++column) {
      key.append(result.get(row, column));
      key += '\0';
    }
    updated.insert(std::move(key));
  }
  std::string detail;
  for (const auto& [key, lsn] : keys) {
    if (updated.count(key)) continue;
    std::string shown = key;
    std::replace(shown.begin(), shown.end(), '\0', ',');
    if (!shown.empty()) shown.pop_back();
    std::string columns;
    for (std::size_t i = 0; i < pending.table->key.size(); ++i) {
      if (i) columns += ", ";
      columns += pending.table->columns[static_cast<std::size_t>(pending.table->key[i])];
    }
    detail = fmt::format(", e.g. key ({})=({}) of source transaction commit_lsn={}", columns,
                         shown.substr(0, kMaxKeyText), lsn);
    break;
  }
  throw Error(fmt::format(
      "target: {} affected {} rows instead of {}{}: the target no longer holds rows the source "
      "changed (a write on the target, or a table copied without its rows); repair the rows or "
      "re-copy the table, then restart",
      pipeline_.describe(pending), affected, pending.rows, detail));
}

}  // namespace pgferry::replication::apply
