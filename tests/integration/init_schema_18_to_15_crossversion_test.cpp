// Cross-version `init --schema` from a newer source to an older target (18 -> 15): with the
// system's pg_dump 15 it stops with an error naming --pg-bindir; with pg_dump 18 the dump's
// settings 15 lacks (transaction_timeout) are left out and the schema and rows arrive.
#include "support/crossversion.hpp"
#include "support/harness.hpp"

using namespace pgferry::testing;

TEST(CrossVersion, InitSchemaFrom18To15) {
  auto source = start_cluster_of_major(18);
  auto target = start_cluster_of_major(15);
  std::string bindir15 = target->bindir(), bindir18 = source->bindir();
  auto src = connect(*source);
  src.exec(R"sql(
    CREATE TYPE mood AS ENUM ('sad', 'happy');
    CREATE TABLE items (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, m mood, doc jsonb);
    CREATE INDEX items_doc ON items USING gin (doc);
    INSERT INTO items (m, doc) SELECT 'happy', jsonb_build_object('g', g) FROM generate_series(1, 500) g;
  )sql");

  auto old_dump = run_pgferry({"--source", source->conninfo(), "--target", target->conninfo(),
                               "init", "--schema", "--pg-bindir", bindir15});
  EXPECT_NE(old_dump.exit_code, 0) << old_dump.output;
  EXPECT_NE(old_dump.output.find("--pg-bindir"), std::string::npos) << old_dump.output;

  auto init = run_pgferry({"--source", source->conninfo(), "--target", target->conninfo(), "init",
                           "--schema", "--pg-bindir", bindir18});
  ASSERT_EQ(init.exit_code, 0) << init.output;
  auto dst = connect(*target);
  EXPECT_EQ(table_fingerprint(src, "items", "id"), table_fingerprint(dst, "items", "id"));
  EXPECT_EQ(query_value(dst, "SELECT count(*) FROM pg_indexes WHERE indexname = 'items_doc'"), "1");
  auto cleanup =
      run_pgferry({"--source", source->conninfo(), "--target", target->conninfo(), "cleanup"});
  EXPECT_EQ(cleanup.exit_code, 0) << cleanup.output;
}
