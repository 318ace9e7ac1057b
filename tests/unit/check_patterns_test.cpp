// Table patterns (psql-like) and the type-widening rule of the preflight checks: pure
// functions, no server.
#include <gtest/gtest.h>

#include "pgferry/replication/check/preflight.hpp"
#include "pgferry/replication/core/error.hpp"
#include "pgferry/replication/core/table_scope.hpp"

namespace repl = pgferry::replication;
using repl::TablePattern;

TEST(TablePattern, UnqualifiedMatchesAnySchema) {
  auto p = TablePattern::parse("orders");
  EXPECT_TRUE(p.matches("public", "orders"));
  EXPECT_TRUE(p.matches("sales", "orders"));
  EXPECT_FALSE(p.matches("public", "orders2"));
}

TEST(TablePattern, QualifiedAndWildcards) {
  auto p = TablePattern::parse("sales.order_*");
  EXPECT_TRUE(p.matches("sales", "order_items"));
  EXPECT_TRUE(p.matches("sales", "order_"));
  EXPECT_FALSE(p.matches("public", "order_items"));
  auto q = TablePattern::parse("*.t?");
  EXPECT_TRUE(q.matches("x", "t1"));
  EXPECT_FALSE(q.matches("x", "t12"));
  EXPECT_FALSE(q.matches("x", "t"));
  auto all = TablePattern::parse("s*.*");
  EXPECT_TRUE(all.matches("sales", "anything"));
  EXPECT_FALSE(all.matches("public", "anything"));
}

TEST(TablePattern, CaseFoldingAndQuotes) {
  EXPECT_TRUE(TablePattern::parse("Orders").matches("public", "orders"));
  EXPECT_FALSE(TablePattern::parse("Orders").matches("public", "Orders"));
  EXPECT_TRUE(TablePattern::parse("\"Orders\"").matches("public", "Orders"));
  // Inside quotes * and . are literal.
  auto literal = TablePattern::parse("\"a.b*\"");
  EXPECT_TRUE(literal.matches("public", "a.b*"));
  EXPECT_FALSE(literal.matches("public", "a.bc"));
  EXPECT_TRUE(TablePattern::parse("\"My\"\"Schema\".t").matches("My\"Schema", "t"));
}

TEST(TablePattern, BadPatternsAreConfigErrors) {
  EXPECT_THROW(TablePattern::parse(""), repl::ConfigError);
  EXPECT_THROW(TablePattern::parse("a.b.c"), repl::ConfigError);
  EXPECT_THROW(TablePattern::parse("\"open"), repl::ConfigError);
  EXPECT_THROW(TablePattern::parse("schema."), repl::ConfigError);
  EXPECT_THROW(TablePattern::parse(".table"), repl::ConfigError);
}

TEST(TableScope, ExcludeWinsOverInclude) {
  auto scope = repl::TableScope::from_patterns({"app.*"}, {"app.audit_*"});
  EXPECT_TRUE(scope.matches("app", "users"));
  EXPECT_FALSE(scope.matches("app", "audit_log"));
  EXPECT_FALSE(scope.matches("public", "users"));
  auto everything = repl::TableScope::from_patterns({}, {"tmp_*"});
  EXPECT_TRUE(everything.matches("public", "users"));
  EXPECT_FALSE(everything.matches("public", "tmp_x"));
}

TEST(TableScope, SystemAndOwnSchemasNeverInScope) {
  EXPECT_TRUE(repl::is_excluded_schema("pg_catalog"));
  EXPECT_TRUE(repl::is_excluded_schema("information_schema"));
  EXPECT_TRUE(repl::is_excluded_schema("pg_toast"));
  EXPECT_TRUE(repl::is_excluded_schema("pg_temp_3"));
  EXPECT_TRUE(repl::is_excluded_schema("pgferry"));
  EXPECT_FALSE(repl::is_excluded_schema("public"));
  EXPECT_FALSE(repl::is_excluded_schema("pgferry_app"));
}

TEST(SafeWidening, KnownSafeChanges) {
  EXPECT_TRUE(repl::is_safe_widening("integer", "integer"));
  EXPECT_TRUE(repl::is_safe_widening("smallint", "integer"));
  EXPECT_TRUE(repl::is_safe_widening("integer", "bigint"));
  EXPECT_TRUE(repl::is_safe_widening("bigint", "numeric"));
  EXPECT_TRUE(repl::is_safe_widening("real", "double precision"));
  EXPECT_TRUE(repl::is_safe_widening("character varying(20)", "character varying(40)"));
  EXPECT_TRUE(repl::is_safe_widening("character varying(20)", "text"));
  EXPECT_TRUE(repl::is_safe_widening("character varying(20)", "character varying"));
  EXPECT_TRUE(repl::is_safe_widening("text", "character varying"));
  EXPECT_TRUE(repl::is_safe_widening("numeric(10,2)", "numeric(12,2)"));
  EXPECT_TRUE(repl::is_safe_widening("numeric(10,2)", "numeric"));
}

TEST(SafeWidening, NarrowingAndOtherChangesAreNot) {
  EXPECT_FALSE(repl::is_safe_widening("bigint", "integer"));
  EXPECT_FALSE(repl::is_safe_widening("double precision", "real"));
  EXPECT_FALSE(repl::is_safe_widening("character varying(40)", "character varying(20)"));
  EXPECT_FALSE(repl::is_safe_widening("text", "character varying(20)"));
  EXPECT_FALSE(repl::is_safe_widening("numeric(10,2)", "numeric(10,3)"));
  EXPECT_FALSE(repl::is_safe_widening("numeric", "numeric(10,2)"));
  EXPECT_FALSE(repl::is_safe_widening("integer", "numeric(10,0)"));
  EXPECT_FALSE(repl::is_safe_widening("json", "jsonb"));
  EXPECT_FALSE(repl::is_safe_widening("character(5)", "text"));
  EXPECT_FALSE(repl::is_safe_widening("timestamp without time zone", "timestamp with time zone"));
  EXPECT_FALSE(repl::is_safe_widening("integer", "text"));
}
