// Updates and deletes by replica identity (see keyed_changes.hpp).
#include "keyed_changes.hpp"

#include <fmt/format.h>

#include <charconv>

namespace pgferry::replication::apply {

namespace {

using pgoutput::ColumnKind;
using pgoutput::TupleView;

// One byte per column for the statement cache key: which columns a statement uses and how.
void append_shape(std::string& key, TupleView tuple, const std::vector<int>& columns) {
  for (int column : columns) key += static_cast<char>(tuple[static_cast<std::size_t>(column)].kind);
  key += '|';
}

void append_number(std::string& key, std::uint64_t number) {
  char digits[20];
  auto end = std::to_chars(digits, digits + sizeof digits, number).ptr;
  key.append(digits, end);
  key += '/';
}

// "<op>/<relation>/<version>/<match>/": the start of a statement cache key.
void start_key(std::string& key, char op, const TargetTable& table, char match) {
  key.clear();
  key += op;
  key += '/';
  append_number(key, table.id.value);
  append_number(key, table.version);
  key += match;
  key += '/';
}

}  // namespace

KeyedChanges::Match KeyedChanges::choose_match(const TargetTable& table, char old_kind,
                                               TupleView old_tuple) {
  if (old_kind != 'O') return Match::key;
  if (table.primary_key.empty()) return Match::full;
  for (int column : table.primary_key) {
    if (old_tuple[static_cast<std::size_t>(column)].kind != ColumnKind::text) return Match::full;
  }
  return Match::primary_key;
}

const std::vector<int>& KeyedChanges::match_columns(const TargetTable& table, Match match,
                                                    std::string_view what) {
  const std::vector<int>* found = &all_columns_;
  switch (match) {
    case Match::key:
      found = &table.key;
      break;
    case Match::primary_key:
      found = &table.primary_key;
      break;
    case Match::full:
      all_columns_.resize(table.columns.size());
      for (std::size_t i = 0; i < all_columns_.size(); ++i) all_columns_[i] = static_cast<int>(i);
      break;
  }
  const std::vector<int>& columns = *found;
  // REPLICA IDENTITY FULL of a table without columns matches any row (WHERE true): one
  // row goes, as the server's apply worker finds one (RelationFindReplTupleSeq).
  if (columns.empty() && match != Match::full) {
    pipeline_.set_broken();
    throw Error(fmt::format(
        "{} {} has no replica identity key to find the row by: give the source table a primary "
        "key or REPLICA IDENTITY FULL",
        what, table.display));
  }
  return columns;
}

// Appends the WHERE clause that finds the row; parameters from `first_param` on, one for
// each non-NULL, non-unchanged column of `tuple` among `columns`.
void KeyedChanges::append_where(std::string& sql, const TargetTable& table, Match match,
                                const std::vector<int>& columns, TupleView tuple, int first_param) {
  std::string condition;
  int param = first_param;
  for (std::size_t i = 0; i < columns.size(); ++i) {
    auto column = static_cast<std::size_t>(columns[i]);
    auto kind = tuple[column].kind;
    if (kind == ColumnKind::unchanged_toast) continue;
    if (!condition.empty()) condition += " AND ";
    if (kind == ColumnKind::null) {
      condition += fmt::format("{} IS NULL", table.columns[column]);
    } else if (match == Match::full) {
      // Through the text form: works for types without an equality operator (json, point).
      condition += fmt::format("{}::text = (${}::{})::text", table.columns[column], param++,
                               table.types[column]);
    } else {
      condition += fmt::format("{} = ${}::{}", table.columns[column], param++, table.types[column]);
    }
  }
  if (match == Match::full) {
    sql += fmt::format(" WHERE ctid = (SELECT ctid FROM {} WHERE {} LIMIT 1)", table.qualified,
                       condition.empty() ? "true" : condition);
  } else {
    sql += " WHERE " + condition;
  }
}

void KeyedChanges::format_key(const TargetTable& table, const std::vector<int>& columns,
                              TupleView tuple) {
  key_text_.clear();
  append_key_names(key_text_, table, columns);
  for (std::size_t i = 0; i < columns.size(); ++i) {
    if (i) key_text_ += ", ";
    const auto& value = tuple[static_cast<std::size_t>(columns[i])];
    if (value.kind == ColumnKind::null) {
      key_text_ += "NULL";
    } else if (value.data.size() > kMaxKeyText) {
      key_text_.append(value.data.substr(0, kMaxKeyText));
      key_text_ += "...";
    } else {
      key_text_.append(value.data);
    }
  }
  key_text_ += ')';
}

std::size_t KeyedChanges::update(const Relation& relation, const TargetTable& table,
                                 const pgoutput::Update& update, Lsn commit_lsn) {
  TupleView old_tuple = update.old_kind != 0 ? update.old_tuple : update.new_tuple;
  Match match = choose_match(table, update.old_kind, old_tuple);
  const std::vector<int>& where = match_columns(table, match, "UPDATE of");
  if (table.columns.empty()) return update_empty_row(table, commit_lsn);

  // SET: every column the new tuple carries as a value; without an old tuple the key did not
  // change, so key columns are left out (unless nothing else is left).
  std::vector<int>& set = set_;
  set.clear();
  for (std::size_t i = 0; i < update.new_tuple.size(); ++i) {
    if (update.new_tuple[i].kind == ColumnKind::unchanged_toast) continue;
    if (update.old_kind == 0 && relation.columns[i].is_key) continue;
    set.push_back(static_cast<int>(i));
  }
  if (set.empty()) set = table.key;

  // The SET columns as one byte each ('s' set, '-' not), then the WHERE shape.
  std::string& key = statement_key_;
  start_key(key, 'U', table, static_cast<char>(match));
  key += update.old_kind == 0 ? '0' : update.old_kind;
  key += '/';
  std::size_t columns_at = key.size();
  key.append(table.columns.size(), '-');
  for (int column : set) key[columns_at + static_cast<std::size_t>(column)] = 's';
  key += '|';
  append_shape(key, old_tuple, where);

  Params& params = pipeline_.params();
  params.clear();
  for (int column : set) params.add(update.new_tuple[static_cast<std::size_t>(column)]);
  int set_params = params.count();
  // NULLs in SET are parameters; NULLs in WHERE become IS NULL.
  for (int column : where) {
    const auto& value = old_tuple[static_cast<std::size_t>(column)];
    if (value.kind == ColumnKind::text) params.add(value);
  }
  params.finish();
  const auto& prepared = pipeline_.statement(key, params.count(), [&] {
    std::string sql = fmt::format("UPDATE {} SET ", table.qualified);
    for (std::size_t i = 0; i < set.size(); ++i) {
      if (i) sql += ", ";
      sql += fmt::format("{} = ${}", table.columns[static_cast<std::size_t>(set[i])], i + 1);
    }
    append_where(sql, table, match, where, old_tuple, set_params + 1);
    return sql;
  });
  format_key(table, match == Match::full ? table.key : where, old_tuple);
  pipeline_.send_prepared(prepared, {Op::update, commit_lsn, &table, key_text_});
  ApplyCounters::add(counters_.rows_updated, 1);
  return params.bytes();
}

std::size_t KeyedChanges::update_empty_row(const TargetTable& table, Lsn commit_lsn) {
  // An UPDATE of a table without columns changes nothing in its row, and SQL has no UPDATE
  // without a SET: one row is replaced by an equal one (the server's apply worker writes a
  // new version of the one row it finds). It must find one, as any update.
  start_key(statement_key_, 'E', table, '-');
  const auto& prepared = pipeline_.statement(statement_key_, 0, [&] {
    return fmt::format(
        "WITH found AS (DELETE FROM {0} WHERE ctid = (SELECT ctid FROM {0} LIMIT 1) "
        "RETURNING 1) INSERT INTO {0} SELECT FROM found",
        table.qualified);
  });
  Params& params = pipeline_.params();
  params.clear();
  params.finish();
  pipeline_.send_prepared(prepared, {Op::update, commit_lsn, &table});
  ApplyCounters::add(counters_.rows_updated, 1);
  return 0;
}

std::size_t KeyedChanges::delete_row(const TargetTable& table, const pgoutput::Delete& del,
                                     Lsn commit_lsn) {
  Match match = choose_match(table, del.old_kind, del.old_tuple);
  const std::vector<int>& where = match_columns(table, match, "DELETE from");
  std::string& key = statement_key_;
  start_key(key, 'D', table, static_cast<char>(match));
  append_shape(key, del.old_tuple, where);
  Params& params = pipeline_.params();
  params.clear();
  for (int column : where) {
    const auto& value = del.old_tuple[static_cast<std::size_t>(column)];
    if (value.kind == ColumnKind::text) params.add(value);
  }
  params.finish();
  const auto& prepared = pipeline_.statement(key, params.count(), [&] {
    std::string sql = fmt::format("DELETE FROM {}", table.qualified);
    append_where(sql, table, match, where, del.old_tuple, 1);
    return sql;
  });
  format_key(table, match == Match::full ? table.key : where, del.old_tuple);
  pipeline_.send_prepared(prepared, {Op::delete_, commit_lsn, &table, key_text_});
  ApplyCounters::add(counters_.rows_deleted, 1);
  return params.bytes();
}

}  // namespace pgferry::replication::apply
