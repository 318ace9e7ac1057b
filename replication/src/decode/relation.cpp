// Relation cache.
#include "pgferry/replication/decode/relation.hpp"

#include "pgferry/replication/core/pg.hpp"

namespace pgferry::replication {

std::string Relation::qualified_name() const {
  return replication::qualified_name(nspname.empty() ? "pg_catalog" : nspname, relname);
}

const Relation& RelationCache::update(const pgoutput::RelationMessage& message) {
  Relation relation;
  relation.id = message.id;
  relation.nspname = message.nspname;
  relation.relname = message.relname;
  relation.replica_identity = message.replica_identity;
  relation.columns.reserve(message.columns.size());
  for (const auto& column : message.columns) {
    relation.columns.push_back(
        {std::string(column.name), column.type_oid, column.type_modifier, column.is_key()});
  }
  relation.version = next_version_++;
  auto& slot = relations_[message.id];
  slot = std::move(relation);
  return slot;
}

const Relation* RelationCache::find(RelationId id) const {
  auto it = relations_.find(id);
  return it == relations_.end() ? nullptr : &it->second;
}

}  // namespace pgferry::replication
