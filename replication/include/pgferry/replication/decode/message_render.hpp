// A decoded pgoutput message as a readable line and as a JSON document, for `pgferry
// decode` (what is the source sending?) and for anyone looking at a stream by hand.
//
// NOTES
// - The renderer keeps its own relation cache, filled by the Relation messages it renders,
//   so that changes name their table and columns; a change of a relation it has not seen
//   names it `<relation N>` and its columns `$1, $2...`.
// - Binary column values print as \x hex; unchanged TOAST values as such, never as a value.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "pgferry/replication/core/lsn.hpp"
#include "pgferry/replication/decode/pgoutput.hpp"
#include "pgferry/replication/decode/relation.hpp"

namespace pgferry::replication {

struct RenderedMessage {
  std::string text;     // e.g. `INSERT xid=1 public.t new: id='1'` (without the LSN)
  nlohmann::json json;  // {"lsn": ..., "type": "insert", ...}
};

class MessageRenderer {
 public:
  // `lsn`: the XLogData's WAL start of the message.
  RenderedMessage render(Lsn lsn, const pgoutput::Message& message);

 private:
  std::string relation_name(RelationId id) const;
  std::string tuple_text(const Relation* relation, pgoutput::TupleView tuple,
                         nlohmann::json& out) const;
  std::string change_text(const char* verb, std::optional<Xid> xid, RelationId id,
                          nlohmann::json& doc, pgoutput::TupleView old_tuple, char old_kind,
                          pgoutput::TupleView new_tuple) const;

  RelationCache relations_;
};

}  // namespace pgferry::replication
