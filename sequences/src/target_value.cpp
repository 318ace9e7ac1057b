// The target value of one sequence (see target_value.hpp for the reasoning).
#include "pgferry/sequences/target_value.hpp"

#include <fmt/format.h>

namespace pgferry::sequences {

namespace {

// A sequence seen in the direction of its increment: positions grow as it hands out values.
struct Line {
  Wide sign;
  Wide step;  // |increment|
  Wide low;   // the position of the first value it can hand out
  Wide high;  // the position of the last value it can hand out

  explicit Line(const SequenceDefinition& d)
      : sign(d.increment < 0 ? -1 : 1),
        step(d.increment < 0 ? -Wide{d.increment} : Wide{d.increment}),
        low(d.increment < 0 ? -Wide{d.max_value} : Wide{d.min_value}),
        high(d.increment < 0 ? -Wide{d.min_value} : Wide{d.max_value}) {}

  Wide position(std::int64_t value) const { return sign * value; }
  // Only for positions inside [low, high], which map back into the 64-bit range.
  std::int64_t value(Wide position) const { return static_cast<std::int64_t>(sign * position); }
  bool holds(Wide position) const { return position >= low && position <= high; }
};

// The position of the next value; past `high` when exhausted (never for CYCLE).
Wide next_position(const Line& line, const SequenceDefinition& d, SequenceState state) {
  Wide next = line.position(state.last_value);
  if (!state.is_called) return next;
  next += line.step;
  if (next > line.high && d.cycle) next = line.low;  // nextval_internal(): wrap to the start
  return next;
}

// setval arguments that make the next value the one at `position` (inside the bounds).
Setval setval_for_next(const Line& line, Wide position) {
  if (position - line.step >= line.low) return {line.value(position - line.step), true};
  return {line.value(position), false};
}

std::string_view direction(std::int64_t increment) {
  return increment < 0 ? "down" : "up";
}

}  // namespace

std::string_view to_string(SequenceStatus status) {
  switch (status) {
    case SequenceStatus::in_sync:
      return "in_sync";
    case SequenceStatus::below_margin:
      return "below_margin";
    case SequenceStatus::behind:
      return "behind";
    case SequenceStatus::missing:
      return "missing";
    case SequenceStatus::incompatible:
      return "incompatible";
  }
  return "unknown";
}

std::optional<std::int64_t> next_value(const SequenceDefinition& definition, SequenceState state) {
  Line line(definition);
  Wide next = next_position(line, definition, state);
  if (!line.holds(next)) return std::nullopt;
  return line.value(next);
}

std::optional<std::string> incompatibility(std::string_view name, const SequenceDefinition& source,
                                           const SequenceDefinition& target) {
  if (source.data_type != target.data_type) {
    return fmt::format(
        "sequence {} is {} on the source but {} on the target; fix: ALTER SEQUENCE {} AS {} on "
        "the target",
        name, source.data_type, target.data_type, name, source.data_type);
  }
  if ((source.increment < 0) != (target.increment < 0)) {
    return fmt::format(
        "sequence {} counts {} on the source (INCREMENT BY {}) but {} on the target (INCREMENT "
        "BY {}); fix: ALTER SEQUENCE {} INCREMENT BY {} on the target",
        name, direction(source.increment), source.increment, direction(target.increment),
        target.increment, name, source.increment);
  }
  if (source.cycle != target.cycle) {
    return fmt::format(
        "sequence {} is {} on the source but {} on the target; fix: ALTER SEQUENCE {} {} on the "
        "target",
        name, source.cycle ? "CYCLE" : "NO CYCLE", target.cycle ? "CYCLE" : "NO CYCLE", name,
        source.cycle ? "CYCLE" : "NO CYCLE");
  }
  if (source.cycle &&
      (source.min_value != target.min_value || source.max_value != target.max_value ||
       source.increment != target.increment)) {
    // A cycling sequence is copied exactly, which only means the same thing with the same
    // ring: the same bounds and the same step.
    return fmt::format(
        "cycling sequence {} has MINVALUE {} MAXVALUE {} INCREMENT BY {} on the source but "
        "MINVALUE {} MAXVALUE {} INCREMENT BY {} on the target; fix: ALTER SEQUENCE {} MINVALUE "
        "{} MAXVALUE {} INCREMENT BY {} on the target",
        name, source.min_value, source.max_value, source.increment, target.min_value,
        target.max_value, target.increment, name, source.min_value, source.max_value,
        source.increment);
  }
  return std::nullopt;
}

TargetPlan plan_target(std::string_view name, const SequenceDefinition& source_definition,
                       SequenceState source, const SequenceDefinition& target_definition,
                       SequenceState target, std::int64_t margin) {
  if (margin < 0) margin = 0;
  if (auto reason = incompatibility(name, source_definition, target_definition)) {
    return {SequenceStatus::incompatible, std::nullopt, std::move(*reason)};
  }
  Line source_line(source_definition);
  Line target_line(target_definition);
  Wide source_next = next_position(source_line, source_definition, source);
  Wide target_next = next_position(target_line, target_definition, target);

  if (source_definition.cycle) {
    if (target_next == source_next) return {};
    std::string note = "cycling sequence: copied exactly from the source";
    if (margin > 0) note += " (margin not applied)";
    return {SequenceStatus::behind, Setval{source.last_value, source.is_called}, std::move(note)};
  }

  if (source_next > target_line.high) {
    if (source_next > source_line.high) {
      // The source is exhausted and the target cannot go past the source's bound: the target
      // must be exhausted too.
      if (target_next > target_line.high) return {};
      return {SequenceStatus::behind, Setval{target_line.value(target_line.high), true},
              "the source sequence is exhausted: the target is set exhausted too"};
    }
    bool down = target_definition.increment < 0;
    return {SequenceStatus::incompatible, std::nullopt,
            fmt::format("sequence {} on the target has {} {}, which cannot hold the source's next "
                        "value {}; fix: ALTER SEQUENCE {} {} {} on the target",
                        name, down ? "MINVALUE" : "MAXVALUE",
                        down ? target_definition.min_value : target_definition.max_value,
                        source_line.value(source_next), name, down ? "MINVALUE" : "MAXVALUE",
                        down ? source_definition.min_value : source_definition.max_value)};
  }

  Wide wanted = source_next + Wide{margin} * source_line.step;
  bool clamped = false;
  if (wanted > target_line.high) {
    wanted = target_line.high;
    clamped = true;
  }
  if (target_next >= wanted) return {};

  TargetPlan plan;
  plan.status = target_next < source_next ? SequenceStatus::behind : SequenceStatus::below_margin;
  bool source_form_fits = source_definition.increment == target_definition.increment &&
                          source.last_value >= target_definition.min_value &&
                          source.last_value <= target_definition.max_value;
  if (wanted == source_next && source_form_fits) {
    // Mirror the source's own state: the same (last_value, is_called) reads best in a diff.
    plan.setval = Setval{source.last_value, source.is_called};
  } else {
    plan.setval = setval_for_next(target_line, wanted);
  }
  if (clamped) {
    plan.note = fmt::format("margin of {} clamped to the target's bound {}", margin,
                            target_line.value(target_line.high));
  }
  return plan;
}

}  // namespace pgferry::sequences
