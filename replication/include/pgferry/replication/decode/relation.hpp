// Relation: an owned copy of a pgoutput Relation message, kept in the relation cache and
// replaced whenever the source sends a new definition (after DDL, or on a new session).
#pragma once

#include <string>
#include <unordered_map>
#include <vector>

#include "pgferry/replication/core/ids.hpp"
#include "pgferry/replication/decode/pgoutput.hpp"

namespace pgferry::replication {

struct RelationColumnInfo {
  std::string name;
  Oid type_oid;
  std::int32_t type_modifier = -1;
  bool is_key = false;
};

struct Relation {
  RelationId id;
  std::string nspname;
  std::string relname;
  char replica_identity = 'd';
  std::vector<RelationColumnInfo> columns;
  // Bumped on every replacement, so that consumers can drop what they prepared for the old
  // definition (prepared statements, column maps).
  std::uint64_t version = 0;

  // "schema"."name", quoted for SQL.
  std::string qualified_name() const;
};

class RelationCache {
 public:
  // Copies the message into the cache, replacing any previous definition of the same id.
  const Relation& update(const pgoutput::RelationMessage& message);
  // nullptr if unknown (a protocol error for the caller: changes follow their Relation).
  const Relation* find(RelationId id) const;
  void clear() { relations_.clear(); }
  std::size_t size() const { return relations_.size(); }

 private:
  std::unordered_map<RelationId, Relation> relations_;
  std::uint64_t next_version_ = 1;
};

}  // namespace pgferry::replication
