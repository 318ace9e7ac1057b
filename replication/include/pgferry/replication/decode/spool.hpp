// Spool: the changes of in-progress (streamed) transactions, kept on disk until their
// Stream Commit, compressed with zstd, so that memory stays bounded whatever the
// transaction size.
//
// NOTES
// - One file per top-level transaction, <dir>/<xid>.spool.zst: a single zstd frame of
//   records `length u32 (big-endian) | raw pgoutput message` in arrival order. The raw
//   bytes are kept (not the decoded views) so that replay decodes them again, exactly as
//   they came off the wire.
// - A subtransaction abort (Stream Abort with subxid != xid) drops the subtransaction's
//   changes and everything spooled after its first change, as the server's own apply
//   worker does (worker.c, stream_abort_internal / subxact_info): changes are streamed in
//   LSN order, so what follows the first change of an aborted subtransaction up to the
//   abort belongs to it or to its own subtransactions. Nothing is rewritten on disk: the
//   dropped record ranges are remembered and skipped on replay.
// - Any write error (full disk, read-only, I/O error) throws SpoolError naming the directory
//   and the file; on a full disk (ENOSPC, EDQUOT) it also says the space needed: at least
//   what this transaction has written (it is still streaming, its final size is known only
//   at its commit; the ratio to its raw changes tells how it compresses), and the
//   filesystem's size and free space. Nothing has been confirmed to the source for the
//   transaction, so a later session (with room) gets it again: an error, never data loss.
// - A Spool checks its directory when it opens it (each session): it must be a directory
//   where a file can be created and written, so that a read-only mount or a file in its
//   place stops the agent at start rather than at the first large transaction.
// - Files left by an earlier process are removed when a Spool opens its directory: the
//   server streams every unconfirmed transaction again on a new session.
#pragma once

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <unordered_map>
#include <utility>
#include <vector>

#include "pgferry/replication/core/ids.hpp"

namespace pgferry::replication {

class TransactionSpool {
 public:
  // Creates (truncates) `path`. Throws Error naming the path if it cannot.
  TransactionSpool(std::filesystem::path path, Xid xid, int compression_level = 1);
  TransactionSpool(const TransactionSpool&) = delete;
  TransactionSpool& operator=(const TransactionSpool&) = delete;
  // Closes and removes the file.
  ~TransactionSpool();

  // Appends one raw change message of (sub)transaction `subxid`.
  void append(Xid subxid, std::span<const std::byte> message);
  // Drops the changes of `subxid` and everything appended after its first change.
  void abort_subtransaction(Xid subxid);

  // Calls `visit` with every surviving message in order (each view valid during the
  // call). Finishes the file first: nothing can be appended afterwards.
  void replay(const std::function<void(std::span<const std::byte>)>& visit);

  Xid xid() const { return xid_; }
  const std::filesystem::path& path() const { return path_; }
  std::uint64_t message_count() const { return message_count_; }
  std::uint64_t raw_bytes() const { return raw_bytes_; }
  std::uint64_t file_bytes() const { return file_bytes_; }

 private:
  void compress(std::span<const std::byte> input, bool end);
  void flush_staging(bool end);
  void write_out(const void* data, std::size_t size);
  // Throws SpoolError for errno; `more`: bytes of the write that failed.
  [[noreturn]] void fail(const char* action, std::size_t more = 0) const;

  struct ContextDeleter {
    void operator()(void* context) const;
  };

  std::filesystem::path path_;
  Xid xid_;
  std::FILE* file_ = nullptr;
  std::unique_ptr<void, ContextDeleter> cctx_;
  std::vector<std::byte> staging_;
  std::vector<std::byte> out_;
  bool finished_ = false;
  std::uint64_t message_count_ = 0;
  std::uint64_t raw_bytes_ = 0;
  std::uint64_t file_bytes_ = 0;
  // First record index of each subtransaction seen, and the dropped [begin, end) ranges.
  std::unordered_map<Xid, std::uint64_t> first_record_;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> dropped_;
};

// The spool directory: one TransactionSpool per open streamed transaction.
class Spool {
 public:
  // Creates `dir` if missing, checks that a file can be written in it (SpoolError naming it
  // otherwise) and removes stale *.spool.zst files in it.
  explicit Spool(std::filesystem::path dir, int compression_level = 1);

  // A new spool for `xid` (replacing one left open by an earlier stream of the same xid).
  TransactionSpool& open(Xid xid);
  TransactionSpool* find(Xid xid);
  void remove(Xid xid);
  void clear();

  const std::filesystem::path& dir() const { return dir_; }
  std::size_t open_count() const { return spools_.size(); }
  // Raw (uncompressed) bytes of the open spools.
  std::uint64_t spooled_bytes() const;
  // Compressed bytes on disk for the open spools.
  std::uint64_t file_bytes() const;

 private:
  std::filesystem::path dir_;
  int compression_level_;
  std::map<Xid, std::unique_ptr<TransactionSpool>> spools_;
};

}  // namespace pgferry::replication
