// `pgferry verify` on two clusters holding the same rows (many types, NULLs and empty
// strings, TOAST-sized text, a mixed-case schema-qualified table, a composite text key, a
// table large enough to be halved while narrowing, an empty table), the target database set
// to other output settings: equal (exit 0), with few chunks and with many. Then rows are
// deleted, inserted and changed on the target, and verify must name exactly those keys and
// the columns that differ (exit 3), whatever the chunk size; --sample catches rows added at
// the end; a table missing on the target is named.
#include <fmt/format.h>

#include <nlohmann/json.hpp>
#include <set>

#include "support/harness.hpp"

using namespace pgferry::testing;

namespace {

const char* kSchema = R"sql(
  CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
  CREATE TABLE kinds (
    id bigint PRIMARY KEY, i int, n numeric, t text, raw bytea, doc jsonb, ints int[],
    texts text[], m mood, at timestamptz, iv interval, u uuid, f float8, r real, b boolean,
    d date);
  CREATE TABLE docs (id int PRIMARY KEY, title text, body text);
  CREATE SCHEMA "Odd Schema";
  CREATE TABLE "Odd Schema"."Mixed""Name" ("Key" int PRIMARY KEY, "select" text);
  CREATE TABLE pairs (region text, n int, v text, PRIMARY KEY (region, n));
  CREATE TABLE bulk (id int PRIMARY KEY, payload text);
  CREATE TABLE empty_one (id uuid PRIMARY KEY);
)sql";

const char* kRows = R"sql(
  INSERT INTO kinds
  SELECT g, g * 7 - 3, CASE WHEN g % 5 = 0 THEN 'NaN'::numeric ELSE g / 7.0 END,
         CASE g % 4 WHEN 0 THEN '' WHEN 1 THEN E'new\nline \\ "q"' WHEN 2 THEN 'żółw 🐢' END,
         decode(md5(g::text), 'hex'), jsonb_build_object('g', g, 'f', g / 3.0, 'n', NULL),
         ARRAY[g, NULL, -g], ARRAY['x y', E'q"\\', NULL], (ARRAY['sad','ok','happy'])[g % 3 + 1]::mood,
         '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 minute 1.5 second',
         g * interval '1 day 3 hours', md5(g::text)::uuid,
         CASE WHEN g % 7 = 0 THEN 'Infinity'::float8 ELSE g / 3.0 END, g / 7.0,
         g % 2 = 0, DATE '2000-02-29' + g
  FROM generate_series(1, 300) g;
  INSERT INTO kinds (id) VALUES (1000);
  INSERT INTO docs SELECT g, 'title ' || g, repeat(md5(g::text), 400) FROM generate_series(1, 20) g;
  INSERT INTO "Odd Schema"."Mixed""Name" VALUES (1, 'one'), (2, 'two'), (3, NULL);
  INSERT INTO pairs SELECT r, g, r || g FROM unnest(ARRAY['north', 'south', 'East', 'west']) r,
                                              generate_series(1, 25) g;
  INSERT INTO bulk SELECT g, md5(g::text) FROM generate_series(1, 50000) g;
)sql";

}  // namespace

class Verify : public ClusterPairTest {
 protected:
  CommandResult verify(std::vector<std::string> more) {
    std::vector<std::string> args = {"verify", "--source", source().conninfo(), "--target",
                                     target().conninfo()};
    args.insert(args.end(), more.begin(), more.end());
    return run_pgferry(args);
  }
  nlohmann::json verify_json(std::vector<std::string> more, int expected_exit) {
    more.push_back("--json");
    auto result = verify(more);
    EXPECT_EQ(result.exit_code, expected_exit) << result.output;
    return nlohmann::json::parse(result.output);
  }
};

TEST_F(Verify, EqualTablesPassAndEveryDifferenceIsNamed) {
  auto src = connect(source());
  auto dst = connect(target());
  src.exec(kSchema);
  dst.exec(kSchema);
  src.exec(kRows);
  dst.exec(kRows);
  // Other output settings on the target: verify's sessions must not depend on them.
  dst.exec(
      "ALTER DATABASE postgres SET timezone = 'Asia/Tokyo'; "
      "ALTER DATABASE postgres SET extra_float_digits = 0; "
      "ALTER DATABASE postgres SET bytea_output = 'escape'; "
      "ALTER DATABASE postgres SET datestyle = 'SQL, DMY'");

  for (std::vector<std::string> chunking :
       {std::vector<std::string>{}, std::vector<std::string>{"--chunk-rows", "7", "--jobs", "3"}}) {
    auto report = verify_json(chunking, 0);
    EXPECT_TRUE(report["equal"].get<bool>()) << report.dump(2);
    EXPECT_EQ(report["mode"], "once");  // no progress row: one pass
    EXPECT_EQ(report["tables"].size(), 6u) << report.dump(2);
    for (const auto& table : report["tables"]) {
      EXPECT_TRUE(table["equal"].get<bool>()) << table.dump(2);
      EXPECT_EQ(table["source_rows"], table["target_rows"]) << table.dump(2);
    }
  }
  auto text = verify({});
  EXPECT_EQ(text.exit_code, 0) << text.output;
  EXPECT_NE(text.output.find("Odd Schema.Mixed\"Name"), std::string::npos) << text.output;

  dst.exec(R"sql(
    DELETE FROM kinds WHERE id = 5;
    INSERT INTO kinds (id, t) VALUES (100000, 'only on the target');
    UPDATE kinds SET f = f + 1e-12 WHERE id = 8;             -- 2.6666666666666665 on the source
    UPDATE kinds SET doc = doc || '{"x": 1}' WHERE id = 10;
    UPDATE kinds SET t = NULL WHERE id = 12;                -- '' on the source
    UPDATE kinds SET ints = ARRAY[14, NULL, -14, 0], b = NOT b WHERE id = 14;
    UPDATE docs SET body = overlay(body PLACING 'Z' FROM 9000 FOR 1) WHERE id = 3;
    UPDATE "Odd Schema"."Mixed""Name" SET "select" = 'changed' WHERE "Key" = 2;
    DELETE FROM "Odd Schema"."Mixed""Name" WHERE "Key" = 1;
    UPDATE "Odd Schema"."Mixed""Name" SET "select" = '' WHERE "Key" = 3;  -- NULL on the source
    DELETE FROM pairs WHERE region = 'north' AND n = 3;
    INSERT INTO pairs VALUES ('zzz', 1, 'extra');
    UPDATE pairs SET v = 'changed' WHERE region = 'south' AND n = 20;
    UPDATE bulk SET payload = 'changed' WHERE id = 31337;
  )sql");
  const std::set<std::string> expected = {
      R"(public.kinds missing_on_target {"id":"5"} [])",
      R"(public.kinds extra_on_target {"id":"100000"} [])",
      R"(public.kinds different {"id":"8"} ["f"])",
      R"(public.kinds different {"id":"10"} ["doc"])",
      R"(public.kinds different {"id":"12"} ["t"])",
      R"(public.kinds different {"id":"14"} ["ints","b"])",
      R"(public.docs different {"id":"3"} ["body"])",
      R"(Odd Schema.Mixed"Name different {"Key":"2"} ["select"])",
      R"(Odd Schema.Mixed"Name missing_on_target {"Key":"1"} [])",
      R"(Odd Schema.Mixed"Name different {"Key":"3"} ["select"])",
      R"(public.pairs missing_on_target {"n":"3","region":"north"} [])",
      R"(public.pairs extra_on_target {"n":"1","region":"zzz"} [])",
      R"(public.pairs different {"n":"20","region":"south"} ["v"])",
      R"(public.bulk different {"id":"31337"} ["payload"])",
  };
  for (std::vector<std::string> chunking :
       {std::vector<std::string>{}, std::vector<std::string>{"--chunk-rows", "7", "--jobs", "3"},
        std::vector<std::string>{"--chunk-rows", "60000", "--jobs", "1"},
        std::vector<std::string>{"--hash", "md5"}}) {
    auto report = verify_json(chunking, 3);
    EXPECT_FALSE(report["equal"].get<bool>());
    EXPECT_EQ(verify_differences(report), expected) << report.dump(2);
    EXPECT_EQ(report["hash"],
              chunking.size() == 2 && chunking[0] == "--hash" ? "md5" : "hashtextextended");
    EXPECT_EQ(report["differing_tables"], 5);
    for (const auto& table : report["tables"]) {
      EXPECT_EQ(
          table["missing"].get<int>() + table["extra"].get<int>() + table["different"].get<int>(),
          static_cast<int>(table["differences"].size()))
          << table.dump(2);
    }
  }

  auto listed = verify({"--chunk-rows", "50"});
  EXPECT_EQ(listed.exit_code, 3) << listed.output;
  EXPECT_NE(listed.output.find("missing on target  (region=north, n=3)"), std::string::npos)
      << listed.output;
  EXPECT_NE(listed.output.find("different          id=31337 (columns: payload)"), std::string::npos)
      << listed.output;

  // Only the tables in scope: the one left equal passes.
  auto scoped = verify({"--table", "empty_one"});
  EXPECT_EQ(scoped.exit_code, 0) << scoped.output;

  // --sample: random keys plus the last ones by key, on both sides: the rows added at the
  // end of the key range are found.
  auto sampled = verify_json({"--sample", "3", "--table", "kinds", "--table", "pairs"}, 3);
  auto found = verify_differences(sampled);
  EXPECT_TRUE(found.count(R"(public.kinds extra_on_target {"id":"100000"} [])")) << sampled.dump(2);
  EXPECT_TRUE(found.count(R"(public.pairs extra_on_target {"n":"1","region":"zzz"} [])"))
      << sampled.dump(2);

  // Max keys: all counted, only the first listed.
  auto capped = verify_json({"--table", "kinds", "--max-keys", "2"}, 3);
  EXPECT_EQ(capped["tables"][0]["differences"].size(), 2u);
  EXPECT_EQ(capped["tables"][0]["missing"].get<int>() + capped["tables"][0]["extra"].get<int>() +
                capped["tables"][0]["different"].get<int>(),
            6);
  EXPECT_TRUE(capped["tables"][0]["differences_truncated"].get<bool>());

  // A table the target lacks is named, not skipped.
  src.exec("CREATE TABLE only_source (id int PRIMARY KEY)");
  auto missing = verify_json({"--table", "only_source"}, 3);
  EXPECT_EQ(missing["tables"][0]["problems"][0], "table missing on the target") << missing.dump(2);

  // Bad input: a clear error and exit 2 (usage).
  auto both = verify({"--live", "--once"});
  EXPECT_EQ(both.exit_code, 2) << both.output;
  auto live_without_progress = verify({"--live"});
  EXPECT_EQ(live_without_progress.exit_code, 2) << live_without_progress.output;
  EXPECT_NE(live_without_progress.output.find("no progress row named \"pgferry\""),
            std::string::npos)
      << live_without_progress.output;
}
