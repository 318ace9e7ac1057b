// Test-only pgoutput encoder: writes messages the way the server's proto.c does, so that
// tests can build what no captured fixture holds (protocol v4 Stream Abort, interleavings,
// malformed variants). It mirrors decoder.cpp field by field.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace pgferry::testing {

class PgoutputEncoder {
 public:
  explicit PgoutputEncoder(char type) { u8(static_cast<std::uint8_t>(type)); }

  PgoutputEncoder& u8(std::uint8_t v) {
    bytes_.push_back(static_cast<std::byte>(v));
    return *this;
  }
  PgoutputEncoder& u16(std::uint16_t v) { return be(v, 2); }
  PgoutputEncoder& u32(std::uint32_t v) { return be(v, 4); }
  PgoutputEncoder& u64(std::uint64_t v) { return be(v, 8); }
  PgoutputEncoder& cstring(std::string_view s) {
    raw(s);
    return u8(0);
  }
  PgoutputEncoder& raw(std::string_view s) {
    for (char c : s) u8(static_cast<std::uint8_t>(c));
    return *this;
  }
  // TupleData: each column as 'n', 'u', or a text value.
  PgoutputEncoder& tuple(const std::vector<std::optional<std::string>>& columns) {
    u16(static_cast<std::uint16_t>(columns.size()));
    for (const auto& column : columns) {
      if (!column) {
        u8('n');
      } else if (*column == "\x01unchanged") {
        u8('u');
      } else {
        u8('t').u32(static_cast<std::uint32_t>(column->size())).raw(*column);
      }
    }
    return *this;
  }

  std::vector<std::byte> bytes() const { return bytes_; }
  std::span<const std::byte> view() const { return bytes_; }

 private:
  PgoutputEncoder& be(std::uint64_t v, int size) {
    for (int i = size - 1; i >= 0; --i) u8(static_cast<std::uint8_t>(v >> (8 * i)));
    return *this;
  }
  std::vector<std::byte> bytes_;
};

// The column value that encodes as 'u' (unchanged TOAST) in PgoutputEncoder::tuple.
inline const std::string kUnchangedToast = "\x01unchanged";

// Messages as proto.c writes them; `xid` is set inside a stream block.
inline std::vector<std::byte> encode_begin(std::uint64_t final_lsn, std::uint32_t xid) {
  return PgoutputEncoder('B').u64(final_lsn).u64(0).u32(xid).bytes();
}
inline std::vector<std::byte> encode_commit(std::uint64_t commit_lsn, std::uint64_t end_lsn) {
  return PgoutputEncoder('C').u8(0).u64(commit_lsn).u64(end_lsn).u64(0).bytes();
}
inline std::vector<std::byte> encode_relation(std::optional<std::uint32_t> xid, std::uint32_t id,
                                              std::string_view name,
                                              const std::vector<std::string>& columns) {
  PgoutputEncoder e('R');
  if (xid) e.u32(*xid);
  e.u32(id).cstring("public").cstring(name).u8('d').u16(static_cast<std::uint16_t>(columns.size()));
  bool first = true;
  for (const auto& column : columns) {
    e.u8(first ? 1 : 0).cstring(column).u32(25).u32(0xFFFFFFFF);
    first = false;
  }
  return e.bytes();
}
inline std::vector<std::byte> encode_insert(std::optional<std::uint32_t> xid, std::uint32_t rel,
                                            const std::vector<std::optional<std::string>>& row) {
  PgoutputEncoder e('I');
  if (xid) e.u32(*xid);
  e.u32(rel).u8('N').tuple(row);
  return e.bytes();
}
inline std::vector<std::byte> encode_stream_start(std::uint32_t xid, bool first) {
  return PgoutputEncoder('S').u32(xid).u8(first ? 1 : 0).bytes();
}
inline std::vector<std::byte> encode_stream_stop() {
  return PgoutputEncoder('E').bytes();
}
inline std::vector<std::byte> encode_stream_commit(std::uint32_t xid, std::uint64_t commit_lsn,
                                                   std::uint64_t end_lsn) {
  return PgoutputEncoder('c').u32(xid).u8(0).u64(commit_lsn).u64(end_lsn).u64(0).bytes();
}
// Protocol v4 with streaming 'parallel' adds abort_lsn and abort_time.
inline std::vector<std::byte> encode_stream_abort(std::uint32_t xid, std::uint32_t subxid,
                                                  std::optional<std::uint64_t> abort_lsn = {},
                                                  std::int64_t abort_time = 0) {
  PgoutputEncoder e('A');
  e.u32(xid).u32(subxid);
  if (abort_lsn) e.u64(*abort_lsn).u64(static_cast<std::uint64_t>(abort_time));
  return e.bytes();
}

}  // namespace pgferry::testing
