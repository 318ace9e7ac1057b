// A spool directory that cannot take a streamed transaction. A 1 MiB tmpfs is smaller than a
// large transaction spooled with --spool-streamed: the agent stops with exit 1 naming the
// directory and the space needed, the slot is not confirmed past the transaction and the target
// holds none of it; remounted with room, the next run applies it, once. A read-only mount and a
// file in the directory's place stop the agent at start, naming the directory.
// Needs root (mount(2)); tmpfs mounts are unmounted by their destructor, also on failure.
#include <fmt/format.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "support/harness.hpp"

namespace fs = std::filesystem;
using namespace pgferry::testing;
using namespace std::chrono_literals;

namespace {

// A tmpfs of `size` on a fresh temp directory, unmounted and removed when this goes away.
class TmpfsMount {
 public:
  TmpfsMount(const std::string& size, bool read_only) {
    char path[] = "/tmp/pgferry-spoolfs-XXXXXX";
    if (::mkdtemp(path) == nullptr) throw std::runtime_error("mkdtemp failed");
    dir_ = path;
    mount(size, read_only ? MS_RDONLY : 0);
  }
  TmpfsMount(const TmpfsMount&) = delete;
  TmpfsMount& operator=(const TmpfsMount&) = delete;
  ~TmpfsMount() {
    ::umount2(dir_.c_str(), MNT_DETACH);
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }
  // Gives the filesystem a new size (its files stay).
  void resize(const std::string& size) { mount(size, MS_REMOUNT); }
  const fs::path& dir() const { return dir_; }

 private:
  void mount(const std::string& size, unsigned long flags) {
    auto options = "size=" + size;
    if (::mount("tmpfs", dir_.c_str(), "tmpfs", flags, options.c_str()) != 0) {
      throw std::runtime_error(fmt::format("mount -t tmpfs -o {} {}: {} (the test needs root)",
                                           options, dir_.string(), std::strerror(errno)));
    }
  }
  fs::path dir_;
};

bool has(const std::string& text, std::string_view part) {
  return text.find(part) != std::string::npos;
}

}  // namespace

class AgentSpoolFull : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    pgferry::tools::ClusterOptions options;
    // Stream every transaction past 64 kB, so that the large one is spooled.
    options.settings = {{"logical_decoding_work_mem", "'64kB'"}};
    source_ = start_cluster(options);
    target_ = start_cluster();
  }
  static void TearDownTestSuite() {
    source_.reset();
    target_.reset();
  }
  void SetUp() override {
    pair_ = {source_->conninfo(), target_->conninfo(), "spoolfull"};
    const char* schema =
        "DROP TABLE IF EXISTS big, small; CREATE TABLE big (id int PRIMARY KEY, v text); "
        "CREATE TABLE small (id int PRIMARY KEY)";
    connect(*source_).exec(schema);
    connect(*target_).exec(schema);
    auto init = pair_.run({"init", "--no-data"});
    ASSERT_EQ(init.exit_code, 0) << init.output;
  }
  void TearDown() override { pair_.run({"cleanup"}); }

  // Runs the agent (`run` with `more`) until it exits by itself; returns its exit code.
  int run_agent(const std::vector<std::string>& more, std::string& log_text) {
    std::vector<std::string> command = {"run", "--status-interval-ms", "100"};
    command.insert(command.end(), more.begin(), more.end());
    PgferryProcess agent(pair_.args(command),
                         fmt::format("/tmp/pgferry-spoolfull-{}-{}.log", ::getpid(), ++runs_));
    bool exited = wait_until([&] { return agent.exited(); }, 180s);
    log_text = agent.log_text();
    EXPECT_TRUE(exited) << "the agent did not stop by itself: " << log_text;
    return exited ? agent.exit_code() : agent.stop();
  }
  std::string count(const LocalCluster& cluster, const std::string& table) {
    return query_value(connect(cluster), "SELECT count(*) FROM " + table);
  }
  std::string slot_confirmed() {
    return query_value(connect(*source_),
                       "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE "
                       "slot_name = 'spoolfull'");
  }

  static std::unique_ptr<LocalCluster> source_;
  static std::unique_ptr<LocalCluster> target_;
  PgferryPair pair_;
  int runs_ = 0;
};

std::unique_ptr<LocalCluster> AgentSpoolFull::source_;
std::unique_ptr<LocalCluster> AgentSpoolFull::target_;

TEST_F(AgentSpoolFull, FullDiskStopsThenWithRoomAppliesOnce) {
  TmpfsMount spool_fs("1m", false);
  auto spool_dir = spool_fs.dir() / "spool";
  auto src = connect(*source_);
  src.exec("INSERT INTO small VALUES (1)");
  // About 5 MB of changes that compress to about half: more than the 1 MiB filesystem.
  src.exec("BEGIN");
  src.exec(
      "INSERT INTO big SELECT g, md5(g::text) || md5((g * 7)::text) FROM "
      "generate_series(1, 60000) g");
  std::string before_commit = query_value(src, "SELECT pg_current_wal_lsn()::text");
  src.exec("COMMIT");
  src.exec("INSERT INTO small VALUES (2)");
  std::string until = query_value(src, "SELECT pg_current_wal_lsn()::text");

  std::string log;
  int code =
      run_agent({"--spool-streamed", "--spool-dir", spool_dir.string(), "--until", until}, log);
  EXPECT_EQ(code, 1) << log;
  EXPECT_TRUE(has(log, fmt::format("spool directory {}: no space left for streamed transaction",
                                   (spool_dir / "spoolfull").string())))
      << log;
  EXPECT_TRUE(has(log, "it needs more than ")) << log;
  EXPECT_TRUE(has(log, "the filesystem holds 1.0 MiB")) << log;
  EXPECT_TRUE(has(log, "fix: give --spool-dir a directory")) << log;
  EXPECT_TRUE(has(log, "stopping reason=\"spool directory unusable\"")) << log;
  // Neither the slot nor the progress record passed the large transaction; none of it applied.
  EXPECT_EQ(query_value(src, fmt::format("SELECT '{}'::pg_lsn <= '{}'::pg_lsn", slot_confirmed(),
                                         before_commit)),
            "t");
  auto dst = connect(*target_);
  EXPECT_EQ(query_value(dst, fmt::format("SELECT applied_lsn <= '{}'::pg_lsn FROM "
                                         "pgferry.progress WHERE name = 'spoolfull'",
                                         before_commit)),
            "t");
  EXPECT_EQ(count(*target_, "big"), "0");

  // With room, the next run gets the transaction again and applies everything, once.
  spool_fs.resize("64m");
  code = run_agent({"--spool-streamed", "--spool-dir", spool_dir.string(), "--until", until}, log);
  EXPECT_EQ(code, 0) << log;
  EXPECT_EQ(count(*target_, "big"), "60000");
  EXPECT_EQ(table_fingerprint(src, "big", "id"), table_fingerprint(dst, "big", "id"));
  EXPECT_EQ(table_fingerprint(src, "small", "id"), table_fingerprint(dst, "small", "id"));
  // (the agent's files are in the subdirectory named after its slot)
  EXPECT_TRUE(fs::is_empty(spool_dir / "spoolfull")) << "spool files left behind";
}

TEST_F(AgentSpoolFull, UnwritableDirectoryStopsAtStart) {
  connect(*source_).exec("INSERT INTO small VALUES (1)");
  std::string until = query_value(connect(*source_), "SELECT pg_current_wal_lsn()::text");

  // Root writes through file permissions, not through a read-only mount.
  TmpfsMount read_only("1m", true);
  std::string log;
  EXPECT_EQ(run_agent({"--spool-dir", read_only.dir().string(), "--until", until}, log), 1) << log;
  // (the agent's files go in a subdirectory named after the slot, which it cannot create)
  EXPECT_TRUE(has(log, fmt::format("spool directory {}: cannot create it",
                                   (read_only.dir() / "spoolfull").string())))
      << log;
  EXPECT_TRUE(has(log, "Read-only file system")) << log;
  EXPECT_TRUE(has(log, "fix: ")) << log;

  // A file where the directory should be.
  TmpfsMount scratch("1m", false);
  auto file = scratch.dir() / "spool";
  std::ofstream(file) << "not a directory";
  EXPECT_EQ(run_agent({"--spool-dir", file.string(), "--until", until}, log), 1) << log;
  EXPECT_TRUE(has(log, fmt::format("spool directory {}: cannot create it",
                                   (file / "spoolfull").string())))
      << log;
  EXPECT_EQ(count(*target_, "small"), "0");

  // Pointed at a usable directory, the same run applies it.
  EXPECT_EQ(run_agent({"--spool-dir", (scratch.dir() / "ok").string(), "--until", until}, log), 0)
      << log;
  EXPECT_EQ(count(*target_, "small"), "1");
}
