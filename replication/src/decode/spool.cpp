// Spool of streamed transactions: zstd-compressed, length-prefixed raw messages.
#include "pgferry/replication/decode/spool.hpp"

#include <fmt/format.h>
#include <sys/statvfs.h>
#include <zstd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <iterator>
#include <system_error>

#include "pgferry/replication/core/error.hpp"

namespace pgferry::replication {

namespace {

constexpr std::size_t kStagingBytes = 256 * 1024;
constexpr const char* kSpoolSuffix = ".spool.zst";

ZSTD_CCtx* cctx(void* context) {
  return static_cast<ZSTD_CCtx*>(context);
}

// 0 B, 512 B, 1.5 KiB, 12.3 MiB: the sizes of a full-disk message.
std::string size_text(std::uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  std::size_t unit = 0;
  while (value >= 1024 && unit + 1 < std::size(kUnits)) {
    value /= 1024;
    ++unit;
  }
  return unit == 0 ? fmt::format("{} B", bytes) : fmt::format("{:.1f} {}", value, kUnits[unit]);
}

// "; the filesystem holds 2.0 MiB, 0 B free" for `dir`, or nothing when statvfs fails.
std::string filesystem_space(const std::filesystem::path& dir) {
  struct statvfs fs {};
  if (::statvfs(dir.c_str(), &fs) != 0) return {};
  return fmt::format("; the filesystem holds {}, {} free",
                     size_text(std::uint64_t{fs.f_blocks} * fs.f_frsize),
                     size_text(std::uint64_t{fs.f_bavail} * fs.f_frsize));
}

constexpr const char* kSpoolFix =
    "give --spool-dir a directory on a filesystem with room for the largest streamed "
    "transaction (compressed), or free space there, then restart: nothing past the applied "
    "position was confirmed to the source, so it sends the transaction again";

}  // namespace

void TransactionSpool::ContextDeleter::operator()(void* context) const {
  ZSTD_freeCCtx(static_cast<ZSTD_CCtx*>(context));
}

TransactionSpool::TransactionSpool(std::filesystem::path path, Xid xid, int compression_level)
    : path_(std::move(path)), xid_(xid), cctx_(ZSTD_createCCtx()) {
  if (!cctx_)
    throw Error(fmt::format("spool {}: out of memory for the compressor", path_.string()));
  ZSTD_CCtx_setParameter(cctx(cctx_.get()), ZSTD_c_compressionLevel, compression_level);
  file_ = std::fopen(path_.c_str(), "wb");
  if (file_ == nullptr) fail("cannot create the file");
  staging_.reserve(kStagingBytes);
  out_.resize(ZSTD_CStreamOutSize());
}

TransactionSpool::~TransactionSpool() {
  if (file_ != nullptr) std::fclose(file_);
  // Only ever remove a regular file we created (never a device someone pointed us at).
  std::error_code ignored;
  if (std::filesystem::is_regular_file(path_, ignored)) std::filesystem::remove(path_, ignored);
}

void TransactionSpool::fail(const char* action, std::size_t more) const {
  int error = errno;
  auto dir = path_.parent_path();
  if (error == ENOSPC || error == EDQUOT) {
    // The transaction is still streaming: what it wrote so far (and the write that failed) is
    // the least it needs; the compression ratio tells the reader what its raw size costs.
    throw SpoolError(fmt::format(
        "spool directory {}: no space left for streamed transaction xid {} (file {}: {}): it needs "
        "more than {} free (written so far: {}, compressed from {} of changes, and the "
        "transaction is still streaming){}; fix: {}",
        dir.string(), xid_.value, path_.filename().string(), action, size_text(file_bytes_ + more),
        size_text(file_bytes_), size_text(raw_bytes_), filesystem_space(dir), kSpoolFix));
  }
  throw SpoolError(fmt::format(
      "spool directory {}: streamed transaction xid {} (file {}: {}): {}; fix: {}", dir.string(),
      xid_.value, path_.filename().string(), action, std::strerror(error), kSpoolFix));
}

void TransactionSpool::append(Xid subxid, std::span<const std::byte> message) {
  if (finished_) {
    throw Error(fmt::format("spool {} (xid {}): append after replay", path_.string(), xid_.value));
  }
  if (message.size() > UINT32_MAX) {
    throw Error(fmt::format("spool {} (xid {}): a message of {} bytes is too large", path_.string(),
                            xid_.value, message.size()));
  }
  first_record_.try_emplace(subxid, message_count_);
  auto length = __builtin_bswap32(static_cast<std::uint32_t>(message.size()));
  if (staging_.size() + 4 + message.size() > kStagingBytes) flush_staging(false);
  const auto* length_bytes = reinterpret_cast<const std::byte*>(&length);
  staging_.insert(staging_.end(), length_bytes, length_bytes + 4);
  if (message.size() > kStagingBytes) {
    // Large rows go straight to the compressor instead of through the staging buffer.
    flush_staging(false);
    compress(message, false);
  } else {
    staging_.insert(staging_.end(), message.begin(), message.end());
  }
  ++message_count_;
  raw_bytes_ += 4 + message.size();
}

void TransactionSpool::abort_subtransaction(Xid subxid) {
  auto it = first_record_.find(subxid);
  if (it == first_record_.end()) return;  // it spooled nothing
  if (it->second < message_count_) dropped_.emplace_back(it->second, message_count_);
  first_record_.erase(it);
}

void TransactionSpool::flush_staging(bool end) {
  compress(staging_, end);
  staging_.clear();
}

void TransactionSpool::compress(std::span<const std::byte> input, bool end) {
  ZSTD_inBuffer in{input.data(), input.size(), 0};
  ZSTD_EndDirective mode = end ? ZSTD_e_end : ZSTD_e_continue;
  while (true) {
    ZSTD_outBuffer out{out_.data(), out_.size(), 0};
    std::size_t left = ZSTD_compressStream2(cctx(cctx_.get()), &out, &in, mode);
    if (ZSTD_isError(left)) {
      throw Error(fmt::format("spool {} (xid {}): compression failed: {}", path_.string(),
                              xid_.value, ZSTD_getErrorName(left)));
    }
    write_out(out_.data(), out.pos);
    bool done = end ? left == 0 : in.pos == in.size;
    if (done) break;
  }
}

void TransactionSpool::write_out(const void* data, std::size_t size) {
  if (size == 0) return;
  errno = 0;
  if (std::fwrite(data, 1, size, file_) != size) fail("write failed", size);
  file_bytes_ += size;
}

void TransactionSpool::replay(const std::function<void(std::span<const std::byte>)>& visit) {
  if (!finished_) {
    flush_staging(true);
    errno = 0;
    if (std::fflush(file_) != 0) fail("write failed");
    int closed = std::fclose(file_);
    file_ = nullptr;
    if (closed != 0) fail("close failed");
    cctx_.reset();
    finished_ = true;
  }

  // Dropped ranges, sorted and merged, walked with one cursor.
  std::sort(dropped_.begin(), dropped_.end());
  std::vector<std::pair<std::uint64_t, std::uint64_t>> dropped;
  for (const auto& range : dropped_) {
    if (!dropped.empty() && range.first <= dropped.back().second) {
      dropped.back().second = std::max(dropped.back().second, range.second);
    } else {
      dropped.push_back(range);
    }
  }
  auto next_drop = dropped.begin();

  std::unique_ptr<std::FILE, int (*)(std::FILE*)> file(std::fopen(path_.c_str(), "rb"),
                                                       &std::fclose);
  if (!file) fail("cannot open for replay");
  std::unique_ptr<ZSTD_DCtx, std::size_t (*)(ZSTD_DCtx*)> dctx(ZSTD_createDCtx(), &ZSTD_freeDCtx);
  std::vector<std::byte> input(ZSTD_DStreamInSize());
  const std::size_t chunk = ZSTD_DStreamOutSize();
  std::vector<std::byte> pending(2 * chunk);
  std::size_t used = 0;
  std::uint64_t index = 0;
  std::size_t frame_left = 1;  // ZSTD_decompressStream's hint; 0 once the frame is complete

  auto emit_records = [&]() {
    std::size_t pos = 0;
    while (used - pos >= 4) {
      std::uint32_t length;
      std::memcpy(&length, pending.data() + pos, 4);
      length = __builtin_bswap32(length);
      if (used - pos - 4 < length) {
        // Make room for the whole record.
        if (pending.size() < std::size_t{length} + 4 + chunk) {
          pending.resize(std::size_t{length} + 4 + chunk);
        }
        break;
      }
      while (next_drop != dropped.end() && index >= next_drop->second) ++next_drop;
      bool skip = next_drop != dropped.end() && index >= next_drop->first;
      if (!skip) visit(std::span<const std::byte>(pending.data() + pos + 4, length));
      ++index;
      pos += 4 + length;
    }
    if (pos > 0) {
      std::memmove(pending.data(), pending.data() + pos, used - pos);
      used -= pos;
    }
  };

  while (true) {
    errno = 0;
    std::size_t got = std::fread(input.data(), 1, input.size(), file.get());
    if (got == 0) {
      if (std::ferror(file.get())) fail("read failed");
      break;
    }
    ZSTD_inBuffer in{input.data(), got, 0};
    while (in.pos < in.size) {
      if (pending.size() - used < chunk) pending.resize(used + chunk);
      ZSTD_outBuffer out{pending.data() + used, pending.size() - used, 0};
      frame_left = ZSTD_decompressStream(dctx.get(), &out, &in);
      if (ZSTD_isError(frame_left)) {
        throw Error(fmt::format("spool {} (xid {}): corrupt: {}", path_.string(), xid_.value,
                                ZSTD_getErrorName(frame_left)));
      }
      used += out.pos;
      emit_records();
    }
  }
  // Flush what the decompressor still holds.
  while (frame_left != 0) {
    if (pending.size() - used < chunk) pending.resize(used + chunk);
    ZSTD_inBuffer in{nullptr, 0, 0};
    ZSTD_outBuffer out{pending.data() + used, pending.size() - used, 0};
    frame_left = ZSTD_decompressStream(dctx.get(), &out, &in);
    if (ZSTD_isError(frame_left) || out.pos == 0) break;
    used += out.pos;
    emit_records();
  }
  if (frame_left != 0 || used != 0 || index != message_count_) {
    throw Error(fmt::format("spool {} (xid {}): truncated: read back {} of {} messages",
                            path_.string(), xid_.value, index, message_count_));
  }
}

Spool::Spool(std::filesystem::path dir, int compression_level)
    : dir_(std::move(dir)), compression_level_(compression_level) {
  std::error_code error;
  std::filesystem::create_directories(dir_, error);
  if (!error && !std::filesystem::is_directory(dir_, error) && !error) {
    error = std::make_error_code(std::errc::not_a_directory);
  }
  if (error) {
    throw SpoolError(fmt::format("spool directory {}: cannot create it: {}; fix: {}", dir_.string(),
                                 error.message(), kSpoolFix));
  }
  // A read-only mount or a directory we may not write into stops here, at start, not at the
  // first large transaction; `touch` of a probe file (written and removed).
  auto probe = dir_ / ".pgferry-write-check";
  errno = 0;
  std::FILE* file = std::fopen(probe.c_str(), "wb");
  bool written = file != nullptr && std::fputc('x', file) != EOF && std::fflush(file) == 0;
  int write_error = errno;
  if (file != nullptr) std::fclose(file);
  std::filesystem::remove(probe, error);
  if (!written) {
    throw SpoolError(fmt::format("spool directory {}: cannot write a file in it: {}; fix: {}",
                                 dir_.string(), std::strerror(write_error), kSpoolFix));
  }
  for (const auto& entry : std::filesystem::directory_iterator(dir_, error)) {
    const auto name = entry.path().filename().string();
    if (entry.is_regular_file() && name.ends_with(kSpoolSuffix)) {
      std::filesystem::remove(entry.path(), error);
    }
  }
}

TransactionSpool& Spool::open(Xid xid) {
  spools_.erase(xid);  // the old file goes first: same name
  auto spool = std::make_unique<TransactionSpool>(
      dir_ / fmt::format("{}{}", xid.value, kSpoolSuffix), xid, compression_level_);
  return *spools_.emplace(xid, std::move(spool)).first->second;
}

TransactionSpool* Spool::find(Xid xid) {
  auto it = spools_.find(xid);
  return it == spools_.end() ? nullptr : it->second.get();
}

void Spool::remove(Xid xid) {
  spools_.erase(xid);
}

void Spool::clear() {
  spools_.clear();
}

std::uint64_t Spool::spooled_bytes() const {
  std::uint64_t total = 0;
  for (const auto& [xid, spool] : spools_) total += spool->raw_bytes();
  return total;
}

std::uint64_t Spool::file_bytes() const {
  std::uint64_t total = 0;
  for (const auto& [xid, spool] : spools_) total += spool->file_bytes();
  return total;
}

}  // namespace pgferry::replication
