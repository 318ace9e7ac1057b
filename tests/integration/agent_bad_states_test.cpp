// Bad states the agent meets in the field, each stopping it with exit 1 and a message that
// names the object and the fix, with nothing applied twice: the slot held by another
// process (its pid and application_name), the slot dropped, the publication dropped while
// streaming, a restored target (progress record behind the slot, or past the source's WAL
// end), a target gone read-only, a table missing on the target (the source commit LSN),
// a slot invalidated by max_slot_wal_keep_size, and --source pointed at a standby of the
// source (a pg_basebackup -R of it, streaming from it).
#include <fmt/format.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "support/harness.hpp"

namespace repl = pgferry::replication;
using namespace pgferry::testing;

class AgentBadStates : public ClusterPairTest {
 protected:
  // Creates `table` on both sides (unless only_source) and inits --name `name`.
  std::vector<std::string> init(const std::string& name, const std::string& table,
                                bool only_source = false) {
    std::string schema = fmt::format("CREATE TABLE {} (id int PRIMARY KEY, v text)", table);
    connect(source()).exec(schema);
    if (!only_source) connect(target()).exec(schema);
    std::vector<std::string> common = {
        "--source", source().conninfo(), "--target", target().conninfo(), "--name", name};
    auto args = common;
    args.insert(args.end(), {"init", "--no-data"});
    EXPECT_EQ(run_pgferry(args).exit_code, 0);
    return common;
  }
  static std::vector<std::string> with(std::vector<std::string> args,
                                       std::initializer_list<std::string> more) {
    args.insert(args.end(), more);
    return args;
  }
  void cleanup(const std::vector<std::string>& common) {
    EXPECT_EQ(run_pgferry(with(common, {"cleanup"})).exit_code, 0);
  }
  static bool has(const std::string& text, std::string_view part) {
    return text.find(part) != std::string::npos;
  }
  std::string count(const LocalCluster& cluster, const std::string& table) {
    return query_value(connect(cluster), "SELECT count(*) FROM " + table);
  }
};

TEST_F(AgentBadStates, SlotInUseNamesTheHolder) {
  auto common = init("busy", "busy_items");
  // Another process streams the slot.
  auto holder =
      repl::Connection::open(source().conninfo(), repl::Side::source,
                             {{"replication", "database"}, {"application_name", "someone_else"}});
  holder.exec(
      "START_REPLICATION SLOT busy LOGICAL 0/0 (proto_version '1', publication_names "
      "'busy')");
  std::string pid = query_value(connect(source()),
                                "SELECT active_pid FROM pg_replication_slots WHERE "
                                "slot_name = 'busy'");
  auto result = run_pgferry(with(common, {"run", "--reconnect-timeout", "2"}));
  EXPECT_EQ(result.exit_code, 1) << result.output;
  EXPECT_TRUE(has(result.output, "retry reason=\"replication slot in use by another process\""))
      << result.output;
  EXPECT_TRUE(
      has(result.output, fmt::format("in use by pid={} application_name=\"someone_else\"", pid)))
      << result.output;
  EXPECT_TRUE(has(result.output, fmt::format("pg_terminate_backend({})", pid))) << result.output;
  holder.close();
  ASSERT_TRUE(wait_until([&] {
    return query_value(connect(source()),
                       "SELECT active FROM pg_replication_slots WHERE slot_name = 'busy'") == "f";
  }));
  cleanup(common);
}

TEST_F(AgentBadStates, SlotDroppedStops) {
  auto common = init("dropped_slot", "dropped_slot_items");
  connect(source()).exec("SELECT pg_drop_replication_slot('dropped_slot')");
  auto result = run_pgferry(with(common, {"run"}));
  EXPECT_EQ(result.exit_code, 1) << result.output;
  EXPECT_TRUE(has(result.output, "replication slot \"dropped_slot\" does not exist"))
      << result.output;
  EXPECT_TRUE(has(result.output, "fix: the slot was dropped")) << result.output;
  cleanup(common);
}

TEST_F(AgentBadStates, PublicationDroppedWhileStreamingStops) {
  auto common = init("dropped_pub", "dropped_pub_items");
  PgferryProcess agent(with(common, {"run"}),
                       fmt::format("/tmp/pgferry-dropped-pub-{}.log", ::getpid()));
  auto src = connect(source());
  src.exec("INSERT INTO dropped_pub_items VALUES (1, 'a')");
  ASSERT_TRUE(wait_until([&] { return count(target(), "dropped_pub_items") == "1"; }));
  src.exec("DROP PUBLICATION dropped_pub");
  src.exec("INSERT INTO dropped_pub_items VALUES (2, 'b')");
  ASSERT_TRUE(wait_until([&] { return agent.exited(); }, std::chrono::seconds(60)))
      << agent.log_text();
  std::string log = agent.log_text();
  EXPECT_EQ(agent.exit_code(), 1) << log;
  EXPECT_TRUE(has(log, "publication \"dropped_pub\" does not exist")) << log;
  EXPECT_TRUE(has(log, "fix: ")) << log;
  EXPECT_EQ(count(target(), "dropped_pub_items"), "1");
  src.exec("CREATE PUBLICATION dropped_pub FOR ALL TABLES");
  cleanup(common);
}

TEST_F(AgentBadStates, RestoredTargetStops) {
  auto common = init("restored", "restored_items");
  {
    PgferryProcess agent(with(common, {"run", "--status-interval-ms", "100"}),
                         fmt::format("/tmp/pgferry-restored-{}.log", ::getpid()));
    connect(source()).exec(
        "INSERT INTO restored_items SELECT g, 'x' FROM generate_series(1, 10) g");
    ASSERT_TRUE(wait_until([&] { return count(target(), "restored_items") == "10"; }));
    EXPECT_EQ(agent.stop(), 0);
  }
  auto dst = connect(target());
  std::string applied =
      query_value(dst, "SELECT applied_lsn::text FROM pgferry.progress WHERE name = 'restored'");
  // A target restored from a backup taken before: its progress record is behind the slot.
  dst.exec("UPDATE pgferry.progress SET applied_lsn = applied_lsn - 1 WHERE name = 'restored'");
  auto result = run_pgferry(with(common, {"run"}));
  EXPECT_EQ(result.exit_code, 1) << result.output;
  EXPECT_TRUE(has(result.output, "behind the slot's confirmed position")) << result.output;
  EXPECT_TRUE(has(result.output, "fix: run `pgferry cleanup` and `pgferry init`")) << result.output;
  // A progress record past the source's WAL end: the source is not the one followed.
  dst.exec("UPDATE pgferry.progress SET applied_lsn = 'FF/0' WHERE name = 'restored'");
  result = run_pgferry(with(common, {"run"}));
  EXPECT_EQ(result.exit_code, 1) << result.output;
  EXPECT_TRUE(has(result.output, "past the source's WAL end")) << result.output;
  EXPECT_EQ(count(target(), "restored_items"), "10");
  dst.exec(fmt::format("UPDATE pgferry.progress SET applied_lsn = '{}' WHERE name = 'restored'",
                       applied));
  cleanup(common);
}

TEST_F(AgentBadStates, ReadOnlyTargetStops) {
  auto common = init("readonly", "readonly_items");
  PgferryProcess agent(with(common, {"run"}),
                       fmt::format("/tmp/pgferry-readonly-{}.log", ::getpid()));
  auto src = connect(source());
  src.exec("INSERT INTO readonly_items VALUES (1, 'a')");
  ASSERT_TRUE(wait_until([&] { return count(target(), "readonly_items") == "1"; }));
  connect(target()).exec("ALTER SYSTEM SET default_transaction_read_only = on");
  connect(target()).exec("SELECT pg_reload_conf()");
  // An idle session takes the new setting only after its next command: end the agent's
  // sessions, so that the one it reconnects with is read-only from its first transaction.
  connect(target()).exec(
      "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = "
      "'pgferry' AND pid <> pg_backend_pid()");
  src.exec("INSERT INTO readonly_items VALUES (2, 'b')");
  bool exited = wait_until([&] { return agent.exited(); }, std::chrono::seconds(60));
  {
    auto dst = connect(target());
    dst.exec("SET default_transaction_read_only = off");
    dst.exec("ALTER SYSTEM RESET default_transaction_read_only");
    dst.exec("SELECT pg_reload_conf()");
  }
  ASSERT_TRUE(exited) << agent.log_text();
  std::string log = agent.log_text();
  EXPECT_EQ(agent.exit_code(), 1) << log;
  EXPECT_TRUE(has(log, "read-only transaction")) << log;
  EXPECT_TRUE(has(log, "fix: the target is read-only")) << log;
  EXPECT_EQ(count(target(), "readonly_items"), "1");
  // Writable again: a restart applies the rest, once.
  auto result = run_pgferry(
      with(common, {"run", "--until", query_value(src, "SELECT pg_current_wal_lsn()::text")}));
  EXPECT_EQ(result.exit_code, 0) << result.output;
  EXPECT_EQ(count(target(), "readonly_items"), "2");
  cleanup(common);
}

TEST_F(AgentBadStates, MissingTableStopsNamingTableLsnAndFix) {
  auto common = init("missing", "missing_items", /*only_source=*/true);
  auto src = connect(source());
  src.exec("INSERT INTO missing_items VALUES (1, 'a')");
  auto result = run_pgferry(with(common, {"run"}));
  EXPECT_EQ(result.exit_code, 1) << result.output;
  EXPECT_TRUE(has(result.output, "missing_items")) << result.output;
  EXPECT_TRUE(has(result.output, "commit_lsn=")) << result.output;
  EXPECT_TRUE(has(result.output, "create it on the target")) << result.output;
  EXPECT_TRUE(has(result.output, "stopping reason=")) << result.output;
  src.exec("DROP TABLE missing_items");
  cleanup(common);
}

TEST_F(AgentBadStates, InvalidatedSlotStops) {
  auto common = init("invalidated", "invalidated_items");
  auto src = connect(source());
  src.exec("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'");
  src.exec("SELECT pg_reload_conf()");
  // More WAL than the slot may keep, then a checkpoint: the slot loses what it needs.
  bool lost = wait_until(
      [&] {
        src.exec(
            "INSERT INTO invalidated_items SELECT g, repeat('x', 500) FROM "
            "generate_series(1, 20000) g ON CONFLICT (id) DO UPDATE SET v = excluded.v");
        src.exec("SELECT pg_switch_wal()");
        src.exec("CHECKPOINT");
        return query_value(src,
                           "SELECT wal_status FROM pg_replication_slots WHERE slot_name = "
                           "'invalidated'") == "lost";
      },
      std::chrono::seconds(60));
  src.exec("ALTER SYSTEM RESET max_slot_wal_keep_size");
  src.exec("SELECT pg_reload_conf()");
  ASSERT_TRUE(lost);
  auto result = run_pgferry(with(common, {"run"}));
  EXPECT_EQ(result.exit_code, 1) << result.output;
  EXPECT_TRUE(has(result.output, "replication slot \"invalidated\" is invalidated"))
      << result.output;
  EXPECT_TRUE(has(result.output, "fix: the slot lost WAL it needs")) << result.output;
  EXPECT_EQ(count(target(), "invalidated_items"), "0");
  cleanup(common);
}

TEST_F(AgentBadStates, StandbySourceStops) {
  auto common = init("standby_source", "standby_items");
  connect(source()).exec("INSERT INTO standby_items VALUES (1, 'a')");
  // A standby of the source: a fresh cluster's data directory replaced by a base backup of
  // the source (-R: standby.signal and primary_conninfo), on its own port and socket.
  auto standby = start_cluster();
  standby->stop();
  std::filesystem::remove_all(standby->data_dir());
  ASSERT_EQ(standby->run_tool({"pg_basebackup", "-D", standby->data_dir().string(), "-d",
                               source().conninfo(), "-R", "-X", "stream", "-c", "fast"},
                              standby->dir() / "basebackup.log"),
            0);
  std::ofstream(standby->data_dir() / "postgresql.auto.conf", std::ios::app)
      << fmt::format("port = {}\nunix_socket_directories = '{}'\n", standby->port(),
                     standby->socket_dir().string());
  standby->start();
  ASSERT_EQ(query_value(connect(*standby), "SELECT pg_is_in_recovery()"), "t");
  ASSERT_TRUE(wait_until(
      [&] { return query_value(connect(*standby), "SELECT count(*) FROM standby_items") == "1"; }));

  auto result = run_pgferry({"--source", standby->conninfo(), "--target", target().conninfo(),
                             "--name", "standby_source", "run"});
  EXPECT_EQ(result.exit_code, 1) << result.output;
  EXPECT_TRUE(has(result.output,
                  "the server is in recovery (a standby, or promoted elsewhere); fix: point "
                  "--source at the primary"))
      << result.output;
  EXPECT_TRUE(has(result.output, "stopping reason=")) << result.output;
  EXPECT_EQ(count(target(), "standby_items"), "0");
  // Pointed back at the primary, the same name goes on from where it was.
  auto until = query_value(connect(source()), "SELECT pg_current_wal_lsn()::text");
  auto again = run_pgferry(with(common, {"run", "--until", until}));
  EXPECT_EQ(again.exit_code, 0) << again.output;
  EXPECT_EQ(count(target(), "standby_items"), "1");
  standby.reset();
  cleanup(common);
}
