// Lsn: a position in the write-ahead log. Wraps the 64-bit XLogRecPtr; the difference of
// two positions is a number of bytes; it prints and parses like PostgreSQL's pg_lsn type
// ("16/B374D848": high and low 32 bits in upper-case hex).
#pragma once

#include <fmt/format.h>

#include <compare>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace pgferry::replication {

class Lsn {
 public:
  constexpr Lsn() = default;
  constexpr explicit Lsn(std::uint64_t value) : value_(value) {}

  // The invalid position (InvalidXLogRecPtr): "0/0".
  static constexpr Lsn invalid() { return Lsn{}; }

  // Parses "%X/%X". Returns nullopt on anything else (empty parts, non-hex digits,
  // more than 8 hex digits a part, trailing bytes): an expected miss, not an exception.
  static std::optional<Lsn> parse(std::string_view text);
  // Like parse, but throws ConfigError naming `what` (e.g. "--until") when malformed.
  static Lsn from_string(std::string_view text, std::string_view what);

  constexpr std::uint64_t value() const { return value_; }
  constexpr bool is_valid() const { return value_ != 0; }
  std::string to_string() const;

  constexpr auto operator<=>(const Lsn&) const = default;

  // Bytes between two positions (negative when `b` is ahead).
  friend constexpr std::int64_t operator-(Lsn a, Lsn b) {
    return static_cast<std::int64_t>(a.value_ - b.value_);
  }
  friend constexpr Lsn operator+(Lsn a, std::uint64_t bytes) { return Lsn{a.value_ + bytes}; }

 private:
  std::uint64_t value_ = 0;
};

}  // namespace pgferry::replication

template <>
struct fmt::formatter<pgferry::replication::Lsn> : fmt::formatter<std::string_view> {
  template <typename Context>
  auto format(pgferry::replication::Lsn lsn, Context& ctx) const {
    return fmt::format_to(ctx.out(), "{:X}/{:X}", static_cast<std::uint32_t>(lsn.value() >> 32),
                          static_cast<std::uint32_t>(lsn.value()));
  }
};
