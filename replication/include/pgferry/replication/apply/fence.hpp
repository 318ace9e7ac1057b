// Cutover fences: the logical message that marks, in the source's WAL, the point where an
// agent of a given name stops (see ApplierOptions::fence_name and agent/agent.hpp).
//
// The side that takes writes emits, in a transaction of its own,
//   SELECT pg_logical_emit_message(true, 'pgferry', '{"fence":"<id>","name":"<agent name>"}')
// and waits for pgferry.progress.applied_lsn >= the LSN that call returned on the receiving
// side: the progress row reaches it exactly when the fence's transaction (and everything
// before it) is committed there.
//
// NOTES
// - Only transactional messages are fences: a non-transactional one is decoded the moment
//   it is written, outside any transaction, so no commit orders it against the changes.
// - A message with the prefix whose content is not such a JSON object is not a fence; it is
//   logged and ignored (another tool may share the prefix), never an error that would stop
//   replication.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "pgferry/replication/core/lsn.hpp"
#include "pgferry/replication/decode/pgoutput.hpp"

namespace pgferry::replication {

// The logical message prefix of fences.
inline constexpr std::string_view kFencePrefix = "pgferry";

struct Fence {
  std::string id;   // the cutover's id
  Lsn message_lsn;  // where the message is in the source's WAL
  Lsn end_lsn;      // end of the transaction that carries it (the progress row's value)
};

// The content of a fence message for the cutover `id` and the agent `name`.
std::string fence_message_content(std::string_view id, std::string_view name);

// The fence id, when `message` is a transactional fence message for `name`; nullopt for any
// other message (another prefix, another name, not a fence).
std::optional<std::string> fence_id_for(const pgoutput::LogicalMessage& message,
                                        std::string_view name);

}  // namespace pgferry::replication
