// Lsn parsing and printing, mirroring pg_lsn_in_internal() in src/backend/utils/adt/pg_lsn.c.
#include "pgferry/replication/core/lsn.hpp"

#include <charconv>

#include "pgferry/replication/core/error.hpp"

namespace pgferry::replication {

namespace {

std::optional<std::uint32_t> parse_half(std::string_view hex) {
  if (hex.empty() || hex.size() > 8) return std::nullopt;
  std::uint32_t value = 0;
  auto [end, ec] = std::from_chars(hex.data(), hex.data() + hex.size(), value, 16);
  if (ec != std::errc{} || end != hex.data() + hex.size()) return std::nullopt;
  return value;
}

}  // namespace

std::optional<Lsn> Lsn::parse(std::string_view text) {
  auto slash = text.find('/');
  if (slash == std::string_view::npos) return std::nullopt;
  auto high = parse_half(text.substr(0, slash));
  auto low = parse_half(text.substr(slash + 1));
  if (!high || !low) return std::nullopt;
  return Lsn{(std::uint64_t{*high} << 32) | *low};
}

Lsn Lsn::from_string(std::string_view text, std::string_view what) {
  if (auto lsn = parse(text)) return *lsn;
  throw ConfigError(fmt::format(
      "{}: \"{}\" is not a WAL position; write it as PostgreSQL prints pg_lsn, e.g. 16/B374D848",
      what, text));
}

std::string Lsn::to_string() const {
  return fmt::format("{}", *this);
}

}  // namespace pgferry::replication
