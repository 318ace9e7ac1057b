// The zstd spool of streamed transactions: round trip in order (small and large
// messages), subtransaction aborts drop exactly their changes, files are cleaned up, a
// full disk names the directory and the space needed, and a file in the directory's place
// stops at open. (A small filesystem and a read-only mount: agent_spool_full_test.)
#include "pgferry/replication/decode/spool.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "pgferry/replication/core/error.hpp"
#include "pgferry/replication/core/retry.hpp"

namespace repl = pgferry::replication;
namespace fs = std::filesystem;

namespace {

class TempDir {
 public:
  TempDir() {
    char path[] = "/tmp/pgferry-spool-test-XXXXXX";
    dir_ = ::mkdtemp(path);
  }
  ~TempDir() { fs::remove_all(dir_); }
  const fs::path& path() const { return dir_; }

 private:
  fs::path dir_;
};

std::span<const std::byte> bytes_of(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

std::vector<std::string> replay_all(repl::TransactionSpool& spool) {
  std::vector<std::string> out;
  spool.replay([&](std::span<const std::byte> message) {
    out.emplace_back(reinterpret_cast<const char*>(message.data()), message.size());
  });
  return out;
}

std::string message(int i) {
  // Varied sizes, including some far larger than the staging buffer and the zstd chunks.
  std::size_t size = i % 97 == 0 ? 700'000 + i : 10 + (i * 37) % 500;
  std::string text = "msg-" + std::to_string(i) + "-";
  while (text.size() < size) text += static_cast<char>('a' + (text.size() * 7 + i) % 26);
  return text;
}

}  // namespace

TEST(Spool, RoundTripKeepsOrderAndBytes) {
  TempDir dir;
  repl::Spool spool(dir.path());
  auto& txn = spool.open(repl::Xid{42});
  std::vector<std::string> written;
  std::uint64_t raw = 0;
  for (int i = 0; i < 3000; ++i) {
    written.push_back(message(i));
    txn.append(repl::Xid{42}, bytes_of(written.back()));
    raw += 4 + written.back().size();
  }
  EXPECT_EQ(txn.message_count(), 3000u);
  EXPECT_EQ(spool.spooled_bytes(), raw);
  EXPECT_TRUE(fs::exists(dir.path() / "42.spool.zst"));
  auto read = replay_all(txn);
  ASSERT_EQ(read.size(), written.size());
  for (std::size_t i = 0; i < read.size(); ++i) ASSERT_EQ(read[i], written[i]) << i;
  EXPECT_LT(txn.file_bytes(), raw / 2);  // it compresses
  spool.remove(repl::Xid{42});
  EXPECT_FALSE(fs::exists(dir.path() / "42.spool.zst"));
  EXPECT_EQ(spool.open_count(), 0u);
}

TEST(Spool, EmptyTransactionReplaysNothing) {
  TempDir dir;
  repl::Spool spool(dir.path());
  EXPECT_TRUE(replay_all(spool.open(repl::Xid{7})).empty());
}

TEST(Spool, SubtransactionAbortDropsOnlyItsChanges) {
  TempDir dir;
  repl::Spool spool(dir.path());
  auto& txn = spool.open(repl::Xid{100});
  auto add = [&](std::uint32_t xid, const std::string& text) {
    txn.append(repl::Xid{xid}, bytes_of(text));
  };
  add(100, "top-1");
  add(101, "sub101-1");
  add(102, "sub102-1");  // nested in 101
  txn.abort_subtransaction(repl::Xid{102});
  add(101, "sub101-2");
  add(103, "sub103-1");  // survives: released into the top
  add(100, "top-2");
  add(104, "sub104-1");
  add(104, "sub104-2");
  txn.abort_subtransaction(repl::Xid{104});
  txn.abort_subtransaction(repl::Xid{999});  // spooled nothing: no effect
  add(100, "top-3");
  EXPECT_EQ(replay_all(txn), (std::vector<std::string>{"top-1", "sub101-1", "sub101-2", "sub103-1",
                                                       "top-2", "top-3"}));
}

TEST(Spool, AbortOfAnOuterSubtransactionDropsItsNestedOnes) {
  TempDir dir;
  repl::Spool spool(dir.path());
  auto& txn = spool.open(repl::Xid{1});
  txn.append(repl::Xid{1}, bytes_of("keep"));
  txn.append(repl::Xid{2}, bytes_of("a"));
  txn.append(repl::Xid{3}, bytes_of("b-nested"));
  txn.abort_subtransaction(repl::Xid{3});
  txn.append(repl::Xid{2}, bytes_of("a2"));
  txn.abort_subtransaction(repl::Xid{2});
  txn.append(repl::Xid{1}, bytes_of("keep2"));
  EXPECT_EQ(replay_all(txn), (std::vector<std::string>{"keep", "keep2"}));
}

TEST(Spool, StaleFilesAreRemovedAndReopenReplaces) {
  TempDir dir;
  std::ofstream(dir.path() / "77.spool.zst") << "left over";
  std::ofstream(dir.path() / "notes.txt") << "not ours";
  repl::Spool spool(dir.path());
  EXPECT_FALSE(fs::exists(dir.path() / "77.spool.zst"));
  EXPECT_TRUE(fs::exists(dir.path() / "notes.txt"));
  spool.open(repl::Xid{5}).append(repl::Xid{5}, bytes_of("first"));
  auto& again = spool.open(repl::Xid{5});  // a new first segment of the same xid
  again.append(repl::Xid{5}, bytes_of("second"));
  EXPECT_EQ(replay_all(again), (std::vector<std::string>{"second"}));
}

TEST(Spool, WriteErrorNamesTheDirectoryAndTheSpaceNeeded) {
  // /dev/full accepts open() and fails every write with ENOSPC.
  if (!fs::exists("/dev/full")) GTEST_SKIP() << "no /dev/full on this system";
  try {
    repl::TransactionSpool txn("/dev/full", repl::Xid{9});
    std::string chunk(1 << 20, 'x');
    for (int i = 0; i < 64; ++i) {
      chunk[i] = static_cast<char>(i);
      txn.append(repl::Xid{9}, bytes_of(chunk));
    }
    txn.replay([](std::span<const std::byte>) {});
    FAIL() << "no error writing to /dev/full";
  } catch (const repl::SpoolError& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("spool directory /dev: no space left for streamed transaction xid 9 "
                        "(file full: write failed): it needs more than "),
              std::string::npos)
        << what;
    EXPECT_NE(what.find("compressed from "), std::string::npos) << what;
    EXPECT_NE(what.find("fix: give --spool-dir a directory"), std::string::npos) << what;
    EXPECT_FALSE(repl::classify_error(e).retry);
  }
  EXPECT_TRUE(fs::exists("/dev/full"));  // never removes what it did not create
}

TEST(Spool, AFileInPlaceOfTheDirectoryStopsNamingIt) {
  TempDir dir;
  std::ofstream(dir.path() / "file") << "x";
  for (const auto& spool_dir : {dir.path() / "file" / "sub", dir.path() / "file"}) {
    try {
      repl::Spool spool(spool_dir);
      FAIL() << "no error for " << spool_dir;
    } catch (const repl::SpoolError& e) {
      std::string what = e.what();
      EXPECT_NE(what.find("spool directory " + spool_dir.string() + ": cannot create it"),
                std::string::npos)
          << what;
      EXPECT_NE(what.find("fix: "), std::string::npos) << what;
    }
  }
}

TEST(Spool, OpeningChecksTheDirectoryIsWritableAndLeavesNoProbe) {
  TempDir dir;
  repl::Spool spool(dir.path() / "spool");
  EXPECT_TRUE(fs::is_empty(dir.path() / "spool"));
}
