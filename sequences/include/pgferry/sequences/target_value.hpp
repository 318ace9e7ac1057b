// The target value of one sequence: given what the source sequence has handed out and where
// the target sequence stands, the setval(seq, value, is_called) that makes the target's next
// nextval() hand out only values the source never did. Pure logic, no server.
//
// NOTES
// - A sequence is (last_value, is_called) plus its definition. Its *next value* is what the
//   next nextval() returns: last_value when is_called is false, else last_value + increment
//   (see nextval_internal() in src/backend/commands/sequence.c). Two states with the same
//   next value are the same for our purpose: (5, true) and (6, false) with increment 1.
// - "Past everything the source handed out" is compared in the direction of the increment:
//   for a descending sequence a smaller value is further along. The code works on
//   *positions* (value × sign of the increment), where further along is always larger, so
//   one code path serves both directions. Positions and next values are 128-bit: the next
//   value of a sequence at its bound is one step outside the 64-bit range of the bound.
// - Never backwards: a target whose next value is already at or past the wanted one is left
//   alone, even if it is far ahead.
// - Exhausted: a NO CYCLE sequence whose next value lies past its bound hands out nothing
//   more (nextval() fails). An exhausted source needs a target that also hands out nothing
//   the source did: the target's next value past the source's bound, or the target
//   exhausted as well.
// - Margin (in increments) moves the target further than strictly needed, for writes that
//   reach the source after the read. It is clamped to the target's bound (reported in the
//   note); the strict requirement never is: a target whose bound cannot hold the source's
//   next value is incompatible.
// - CYCLE sequences: after wrapping, the source may have handed out every value of its range,
//   so there is no value "past" all of them; whether a value is still free depends on what
//   the application deleted. The conservative answer is an exact copy: the target continues
//   from the very position the source would continue from, so it hands out exactly the
//   values the source would have, in the same order, and the application's own reasoning
//   about reuse stays true. Any other target position counts as behind (we cannot prove it
//   safe), the margin is not applied, and the copy may move the target numerically
//   backwards: on a ring, "backwards" has no meaning.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace pgferry::sequences {

__extension__ using Wide = __int128;

// The definition of a sequence, as in pg_sequence.
struct SequenceDefinition {
  std::string data_type = "bigint";  // smallint, integer or bigint
  std::int64_t increment = 1;
  std::int64_t min_value = 1;
  std::int64_t max_value = INT64_MAX;
  std::int64_t start_value = 1;
  bool cycle = false;
};

// The state of a sequence, as in SELECT last_value, is_called FROM seq.
struct SequenceState {
  std::int64_t last_value = 1;
  bool is_called = false;
};

// The arguments of setval(seq, value, is_called).
struct Setval {
  std::int64_t value = 0;
  bool is_called = true;
  bool operator==(const Setval&) const = default;
};

enum class SequenceStatus {
  in_sync,       // the target's next value is past everything the source handed out (and
                 // the margin): sync leaves it alone
  below_margin,  // not behind, but closer than the margin asked for: sync moves it
  behind,        // the target would hand out a value the source already handed out
  missing,       // no sequence of that name on the target
  incompatible,  // the definitions differ so that no setval can make the target safe
};
std::string_view to_string(SequenceStatus status);

// What to do with one target sequence.
struct TargetPlan {
  SequenceStatus status = SequenceStatus::in_sync;
  // The setval that makes the target safe; nullopt when it needs no change (or none helps).
  std::optional<Setval> setval;
  // Why it is incompatible (with the fix), or a remark (margin clamped, cycle copied).
  std::string note;
};

// The value nextval() would return next, or nullopt when the sequence is exhausted.
// Wraps for CYCLE sequences.
std::optional<std::int64_t> next_value(const SequenceDefinition& definition, SequenceState state);

// Why the target definition cannot follow the source (data type, increment sign, cycle
// option), with the fix; nullopt when compatible. `name` is the qualified name for messages.
std::optional<std::string> incompatibility(std::string_view name, const SequenceDefinition& source,
                                           const SequenceDefinition& target);

// The plan for one target sequence. `margin` is in increments (>= 0).
TargetPlan plan_target(std::string_view name, const SequenceDefinition& source_definition,
                       SequenceState source, const SequenceDefinition& target_definition,
                       SequenceState target, std::int64_t margin = 0);

}  // namespace pgferry::sequences
