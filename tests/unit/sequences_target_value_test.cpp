// The target-value logic of sequence sync, without a server: ascending and descending
// sequences, is_called false, bounds and exhaustion, cycling, margin, never backwards.
#include <gtest/gtest.h>

#include "pgferry/sequences/sequences.hpp"
#include "pgferry/sequences/target_value.hpp"

using namespace pgferry::sequences;

namespace {

SequenceDefinition ascending(std::int64_t increment = 1) {
  SequenceDefinition d;
  d.increment = increment;
  return d;
}

SequenceDefinition descending(std::int64_t increment = -1) {
  SequenceDefinition d;
  d.increment = increment;
  d.min_value = INT64_MIN;
  d.max_value = -1;
  d.start_value = -1;
  return d;
}

SequenceDefinition integer_sequence() {
  SequenceDefinition d;
  d.data_type = "integer";
  d.max_value = 2147483647;
  return d;
}

// The next value after applying the plan's setval (or the unchanged target).
std::optional<std::int64_t> next_after(const SequenceDefinition& target_definition,
                                       SequenceState target, const TargetPlan& plan) {
  if (plan.setval) target = {plan.setval->value, plan.setval->is_called};
  return next_value(target_definition, target);
}

}  // namespace

TEST(SequenceNextValue, FollowsIsCalledAndExhaustion) {
  EXPECT_EQ(next_value(ascending(), {1, false}), 1);
  EXPECT_EQ(next_value(ascending(), {1, true}), 2);
  EXPECT_EQ(next_value(ascending(10), {41, true}), 51);
  EXPECT_EQ(next_value(descending(), {-1, false}), -1);
  EXPECT_EQ(next_value(descending(-5), {-20, true}), -25);
  EXPECT_EQ(next_value(ascending(), {INT64_MAX, true}), std::nullopt);
  EXPECT_EQ(next_value(descending(), {INT64_MIN, true}), std::nullopt);
  auto small = integer_sequence();
  EXPECT_EQ(next_value(small, {2147483647, true}), std::nullopt);
  EXPECT_EQ(next_value(small, {2147483647, false}), 2147483647);
}

TEST(SequenceNextValue, CycleWrapsToTheStartOfTheRange) {
  auto up = ascending();
  up.max_value = 100;
  up.cycle = true;
  EXPECT_EQ(next_value(up, {100, true}), 1);
  auto down = descending();
  down.min_value = -100;
  down.cycle = true;
  EXPECT_EQ(next_value(down, {-100, true}), -1);
}

TEST(SequencePlan, AscendingBehindCopiesTheSourceState) {
  auto plan = plan_target("public.s", ascending(), {1000, true}, ascending(), {1, false});
  EXPECT_EQ(plan.status, SequenceStatus::behind);
  ASSERT_TRUE(plan.setval);
  EXPECT_EQ(*plan.setval, (Setval{1000, true}));
  EXPECT_EQ(next_after(ascending(), {1, false}, plan), 1001);
}

TEST(SequencePlan, EqualStatesAreInSyncWhateverTheForm) {
  EXPECT_EQ(plan_target("s", ascending(), {7, true}, ascending(), {7, true}).status,
            SequenceStatus::in_sync);
  // (7, true) and (8, false) both hand out 8 next.
  auto plan = plan_target("s", ascending(), {7, true}, ascending(), {8, false});
  EXPECT_EQ(plan.status, SequenceStatus::in_sync);
  EXPECT_FALSE(plan.setval);
}

TEST(SequencePlan, NeverMovesTheTargetBackwards) {
  auto plan = plan_target("s", ascending(), {50, true}, ascending(), {900, true});
  EXPECT_EQ(plan.status, SequenceStatus::in_sync);
  EXPECT_FALSE(plan.setval);
  auto down = plan_target("s", descending(), {-50, true}, descending(), {-900, true});
  EXPECT_EQ(down.status, SequenceStatus::in_sync);
  EXPECT_FALSE(down.setval);
  // Even with a margin the target is not pulled back to source + margin.
  auto margin = plan_target("s", ascending(), {50, true}, ascending(), {900, true}, 100);
  EXPECT_FALSE(margin.setval);
}

TEST(SequencePlan, DescendingComparesInTheDirectionOfTheIncrement) {
  // The source handed out -1 .. -40; the target at -10 would hand out -11, already used.
  auto plan = plan_target("s", descending(), {-40, true}, descending(), {-10, true});
  EXPECT_EQ(plan.status, SequenceStatus::behind);
  ASSERT_TRUE(plan.setval);
  EXPECT_EQ(*plan.setval, (Setval{-40, true}));
  EXPECT_EQ(next_after(descending(), {-10, true}, plan), -41);
}

TEST(SequencePlan, DescendingWithStepAndMargin) {
  auto plan = plan_target("s", descending(-3), {-30, true}, descending(-3), {-3, true}, 10);
  ASSERT_TRUE(plan.setval);
  EXPECT_EQ(next_after(descending(-3), {-3, true}, plan), -33 - 30);
}

TEST(SequencePlan, SourceNotCalledHandedOutNothingAtItsValue) {
  // setval(s, 500, false) on the source: 500 is next, nothing at 500 was handed out.
  auto plan = plan_target("s", ascending(), {500, false}, ascending(), {1, false});
  EXPECT_EQ(plan.status, SequenceStatus::behind);
  ASSERT_TRUE(plan.setval);
  EXPECT_EQ(*plan.setval, (Setval{500, false}));
  EXPECT_EQ(next_after(ascending(), {1, false}, plan), 500);
  // A target already at 500 next is in sync.
  EXPECT_EQ(plan_target("s", ascending(), {500, false}, ascending(), {499, true}).status,
            SequenceStatus::in_sync);
}

TEST(SequencePlan, FreshSequencesOnBothSidesAreInSync) {
  EXPECT_EQ(plan_target("s", ascending(), {1, false}, ascending(), {1, false}).status,
            SequenceStatus::in_sync);
  EXPECT_EQ(plan_target("s", descending(), {-1, false}, descending(), {-1, false}).status,
            SequenceStatus::in_sync);
}

TEST(SequencePlan, MarginMovesFurtherAndIsIdempotent) {
  auto plan = plan_target("s", ascending(), {100, true}, ascending(), {1, false}, 50);
  EXPECT_EQ(plan.status, SequenceStatus::behind);
  ASSERT_TRUE(plan.setval);
  EXPECT_EQ(next_after(ascending(), {1, false}, plan), 151);
  // Applying the plan and planning again changes nothing.
  SequenceState after{plan.setval->value, plan.setval->is_called};
  auto again = plan_target("s", ascending(), {100, true}, ascending(), after, 50);
  EXPECT_EQ(again.status, SequenceStatus::in_sync);
  EXPECT_FALSE(again.setval);
}

TEST(SequencePlan, MarginCountsSourceIncrements) {
  auto plan = plan_target("s", ascending(10), {100, true}, ascending(10), {1, false}, 5);
  EXPECT_EQ(next_after(ascending(10), {1, false}, plan), 110 + 50);
}

TEST(SequencePlan, TargetPastSourceButWithinMarginIsBelowMargin) {
  auto plan = plan_target("s", ascending(), {100, true}, ascending(), {120, true}, 50);
  EXPECT_EQ(plan.status, SequenceStatus::below_margin);
  ASSERT_TRUE(plan.setval);
  EXPECT_EQ(next_after(ascending(), {120, true}, plan), 151);
}

TEST(SequencePlan, MarginIsClampedToTheTargetBound) {
  auto d = integer_sequence();
  auto plan = plan_target("s", d, {2147483600, true}, d, {1, false}, 1000);
  EXPECT_EQ(plan.status, SequenceStatus::behind);
  ASSERT_TRUE(plan.setval);
  EXPECT_EQ(next_after(d, {1, false}, plan), 2147483647);
  EXPECT_NE(plan.note.find("clamped"), std::string::npos) << plan.note;
}

TEST(SequencePlan, SetvalStaysInsideTheTargetBounds) {
  // The target's range starts at 1000: whatever the source, setval must not go below it.
  auto target = ascending();
  target.min_value = 1000;
  target.start_value = 1000;
  auto plan = plan_target("s", ascending(), {1, true}, target, {1000, false}, 999);
  EXPECT_EQ(plan.status, SequenceStatus::below_margin);
  ASSERT_TRUE(plan.setval);
  EXPECT_GE(plan.setval->value, 1000);
  EXPECT_EQ(next_after(target, {1000, false}, plan), 1001);
}

TEST(SequencePlan, TargetBoundThatCannotHoldTheValueIsIncompatible) {
  auto target = ascending();
  target.max_value = 100;
  auto plan = plan_target("app.s", ascending(), {500, true}, target, {1, false});
  EXPECT_EQ(plan.status, SequenceStatus::incompatible);
  EXPECT_FALSE(plan.setval);
  EXPECT_NE(plan.note.find("app.s"), std::string::npos) << plan.note;
  EXPECT_NE(plan.note.find("MAXVALUE"), std::string::npos) << plan.note;
}

TEST(SequencePlan, ExhaustedSourceExhaustsTheTarget) {
  auto d = integer_sequence();
  auto plan = plan_target("s", d, {2147483647, true}, d, {5, true});
  EXPECT_EQ(plan.status, SequenceStatus::behind);
  ASSERT_TRUE(plan.setval);
  EXPECT_EQ(next_after(d, {5, true}, plan), std::nullopt);
  EXPECT_EQ(plan_target("s", d, {2147483647, true}, d, {2147483647, true}).status,
            SequenceStatus::in_sync);
  // A target with a wider range continues past the source's bound instead.
  auto wide = d;
  wide.max_value = 2147483647;
  auto source = d;
  source.max_value = 1000;
  auto past = plan_target("s", source, {1000, true}, wide, {1, false});
  EXPECT_EQ(next_after(wide, {1, false}, past), 1001);
}

TEST(SequencePlan, DataTypeIncrementSignAndCycleMismatchAreIncompatible) {
  auto plan = plan_target("public.s", ascending(), {5, true}, integer_sequence(), {1, false});
  EXPECT_EQ(plan.status, SequenceStatus::incompatible);
  EXPECT_NE(plan.note.find("ALTER SEQUENCE public.s AS bigint"), std::string::npos) << plan.note;

  auto down_on_target = ascending(-1);
  down_on_target.min_value = -100;
  down_on_target.max_value = 100;
  plan = plan_target("public.s", ascending(), {5, true}, down_on_target, {1, true});
  EXPECT_EQ(plan.status, SequenceStatus::incompatible);
  EXPECT_NE(plan.note.find("INCREMENT BY 1"), std::string::npos) << plan.note;

  auto cycling = ascending();
  cycling.cycle = true;
  plan = plan_target("public.s", ascending(), {5, true}, cycling, {1, true});
  EXPECT_EQ(plan.status, SequenceStatus::incompatible);
  EXPECT_NE(plan.note.find("NO CYCLE"), std::string::npos) << plan.note;
}

TEST(SequencePlan, DifferentIncrementMagnitudeStillSafe) {
  // Target steps by 1, source by 10: the target's next must still be past 110.
  auto plan = plan_target("s", ascending(10), {100, true}, ascending(1), {1, false});
  ASSERT_TRUE(plan.setval);
  EXPECT_GE(next_after(ascending(1), {1, false}, plan), 110);
}

TEST(SequencePlan, CyclingSequenceIsCopiedExactly) {
  auto d = ascending();
  d.max_value = 100;
  d.cycle = true;
  // The source wrapped (next 3); the target is numerically ahead (next 96) but would hand out
  // 96..100 and then 1, 2: the source's order is followed, numerically backwards.
  auto plan = plan_target("s", d, {2, true}, d, {95, true}, 10);
  EXPECT_EQ(plan.status, SequenceStatus::behind);
  ASSERT_TRUE(plan.setval);
  EXPECT_EQ(*plan.setval, (Setval{2, true}));
  EXPECT_NE(plan.note.find("margin not applied"), std::string::npos) << plan.note;
  // Same position in another form: in sync.
  EXPECT_EQ(plan_target("s", d, {100, true}, d, {1, false}).status, SequenceStatus::in_sync);
  // Different ring: incompatible.
  auto other = d;
  other.max_value = 200;
  EXPECT_EQ(plan_target("s", d, {2, true}, other, {2, true}).status, SequenceStatus::incompatible);
}

TEST(SequencePlan, NegativeMarginIsTreatedAsZero) {
  auto plan = plan_target("s", ascending(), {10, true}, ascending(), {1, false}, -5);
  EXPECT_EQ(next_after(ascending(), {1, false}, plan), 11);
}

TEST(SequenceScope, SystemAndPgferrySchemasAreNeverInScope) {
  SyncOptions options;
  EXPECT_TRUE(schema_in_scope("public", options));
  for (const char* schema : {"pgferry", "pg_catalog", "information_schema", "pg_toast", "pg_temp_3",
                             "pg_toast_temp_3"}) {
    EXPECT_FALSE(schema_in_scope(schema, options)) << schema;
  }
  options.include_schemas = {"*"};
  EXPECT_FALSE(schema_in_scope("pgferry", options));
}

TEST(SequenceScope, IncludeAndExcludePatterns) {
  SyncOptions options;
  options.include_schemas = {"app_*", "Billing"};
  options.exclude_schemas = {"app_tmp?"};
  EXPECT_TRUE(schema_in_scope("app_core", options));
  EXPECT_TRUE(schema_in_scope("Billing", options));
  EXPECT_FALSE(schema_in_scope("billing", options));
  EXPECT_FALSE(schema_in_scope("app_tmp1", options));
  EXPECT_TRUE(schema_in_scope("app_tmp12", options));
  EXPECT_FALSE(schema_in_scope("public", options));
}

TEST(SequenceNames, SqlNameQuotesOnlyWhereNeeded) {
  SequenceInfo info;
  info.schema = "billing";
  info.name = "InvoiceNo";
  EXPECT_EQ(info.sql_name(), "billing.\"InvoiceNo\"");
  EXPECT_EQ(info.display_name(), "billing.InvoiceNo");
  EXPECT_EQ(info.qualified_name(), "\"billing\".\"InvoiceNo\"");
  info.schema = "My Schema";
  info.name = "orders_id_seq";
  EXPECT_EQ(info.sql_name(), "\"My Schema\".orders_id_seq");
  info.name = "1st";
  EXPECT_EQ(info.sql_name(), "\"My Schema\".\"1st\"");
}
