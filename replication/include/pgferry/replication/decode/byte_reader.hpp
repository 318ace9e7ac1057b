// ByteReader: bounds-checked big-endian reads over one protocol message.
//
// Every read checks the bytes left first; a short or malformed message throws
// ProtocolError carrying the offset of the failed read and the message type, so that an
// operator can find the byte in a hex dump. Strings and byte runs come back as views into
// the buffer (zero-copy): they are valid as long as the buffer is.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>

#include "pgferry/replication/core/error.hpp"

namespace pgferry::replication {

class ByteReader {
 public:
  // `context` names the protocol in errors ("pgoutput", "replication"); `message_type` is
  // the first byte of the message, once known (set_message_type).
  explicit ByteReader(std::span<const std::byte> data, const char* context = "pgoutput")
      : data_(data), context_(context) {}

  void set_message_type(char type) { message_type_ = type; }
  char message_type() const { return message_type_; }
  std::size_t offset() const { return offset_; }
  std::size_t remaining() const { return data_.size() - offset_; }
  bool at_end() const { return offset_ == data_.size(); }
  // The whole buffer, and repositioning within it, for hot loops that check bounds
  // themselves (the tuple reader); `offset` must be at most the size.
  std::span<const std::byte> data() const { return data_; }
  void seek(std::size_t offset) { offset_ = offset <= data_.size() ? offset : data_.size(); }

  // `field` names what is read, for the error message; it must be a string literal.
  std::uint8_t read_u8(const char* field) {
    need(1, field);
    return static_cast<std::uint8_t>(data_[offset_++]);
  }
  char read_char(const char* field) { return static_cast<char>(read_u8(field)); }
  std::uint16_t read_u16(const char* field) { return read_be<std::uint16_t>(field); }
  std::uint32_t read_u32(const char* field) { return read_be<std::uint32_t>(field); }
  std::uint64_t read_u64(const char* field) { return read_be<std::uint64_t>(field); }
  std::int32_t read_i32(const char* field) {
    return static_cast<std::int32_t>(read_be<std::uint32_t>(field));
  }
  std::int64_t read_i64(const char* field) {
    return static_cast<std::int64_t>(read_be<std::uint64_t>(field));
  }

  // A NUL-terminated string; the view excludes the terminator. A missing terminator is an
  // error (the server always sends one).
  std::string_view read_cstring(const char* field) {
    const auto* begin = reinterpret_cast<const char*>(data_.data()) + offset_;
    const void* nul = std::memchr(begin, 0, remaining());
    if (nul == nullptr) fail(fmt_missing_nul(field));
    std::size_t length = static_cast<const char*>(nul) - begin;
    offset_ += length + 1;
    return {begin, length};
  }

  std::span<const std::byte> read_bytes(std::size_t count, const char* field) {
    need(count, field);
    auto bytes = data_.subspan(offset_, count);
    offset_ += count;
    return bytes;
  }
  std::string_view read_chars(std::size_t count, const char* field) {
    auto bytes = read_bytes(count, field);
    return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
  }

  // The message must be fully consumed: trailing bytes mean we misread its layout.
  void expect_end() const {
    if (!at_end()) fail(std::to_string(remaining()) + " unexpected trailing bytes");
  }

  // Throws ProtocolError at the current offset.
  [[noreturn]] void fail(const std::string& what) const { fail_at(offset_, what); }
  [[noreturn]] void fail_at(std::size_t offset, const std::string& what) const;

 private:
  template <typename T>
  T read_be(const char* field) {
    need(sizeof(T), field);
    T value;
    std::memcpy(&value, data_.data() + offset_, sizeof(T));
    offset_ += sizeof(T);
    if constexpr (sizeof(T) == 2) return __builtin_bswap16(value);
    if constexpr (sizeof(T) == 4) return __builtin_bswap32(value);
    if constexpr (sizeof(T) == 8) return __builtin_bswap64(value);
  }

  void need(std::size_t count, const char* field) const {
    if (count > remaining()) [[unlikely]]
      fail_short(count, field);
  }
  [[noreturn]] void fail_short(std::size_t count, const char* field) const;
  std::string fmt_missing_nul(const char* field) const;

  std::span<const std::byte> data_;
  std::size_t offset_ = 0;
  const char* context_;
  char message_type_ = 0;
};

// "Insert", "Stream Commit", ...: the name of a pgoutput message type byte, or
// "unknown (0x..)".
std::string pgoutput_message_name(char type);

}  // namespace pgferry::replication
