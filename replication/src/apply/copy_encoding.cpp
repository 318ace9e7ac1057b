// COPY text format encoding.
#include "pgferry/replication/apply/copy_encoding.hpp"

#include <bit>
#include <charconv>
#include <climits>
#include <cstdint>
#include <optional>
#include <utility>

namespace pgferry::replication {

void append_copy_text(std::string& out, std::string_view value) {
  // Copy clean stretches in one append; most values contain nothing to escape.
  std::size_t start = 0;
  for (std::size_t i = 0; i < value.size(); ++i) {
    char escaped;
    switch (value[i]) {
      case '\\':
        escaped = '\\';
        break;
      case '\t':
        escaped = 't';
        break;
      case '\n':
        escaped = 'n';
        break;
      case '\r':
        escaped = 'r';
        break;
      default:
        continue;
    }
    out.append(value.data() + start, i - start);
    out += '\\';
    out += escaped;
    start = i + 1;
  }
  out.append(value.data() + start, value.size() - start);
}

}  // namespace pgferry::replication

// ---------------------------------------------------------------------------------------
// Binary format

namespace pgferry::replication {

namespace {

void put_u16(std::string& out, std::uint16_t value) {
  char bytes[2] = {static_cast<char>(value >> 8), static_cast<char>(value)};
  out.append(bytes, 2);
}

void put_u32(std::string& out, std::uint32_t value) {
  char bytes[4] = {static_cast<char>(value >> 24), static_cast<char>(value >> 16),
                   static_cast<char>(value >> 8), static_cast<char>(value)};
  out.append(bytes, 4);
}

void put_u64(std::string& out, std::uint64_t value) {
  put_u32(out, static_cast<std::uint32_t>(value >> 32));
  put_u32(out, static_cast<std::uint32_t>(value));
}

// The whole of `text` as a number of type T, nothing else (no sign for unsigned types).
template <typename T>
bool parse_whole(std::string_view text, T& value) {
  if (text.empty()) return false;
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, value);
  return ec == std::errc() && ptr == end;
}

// Exactly `n` decimal digits at text[at...].
bool digits(std::string_view text, std::size_t at, std::size_t n, int& value) {
  if (at + n > text.size()) return false;
  value = 0;
  for (std::size_t i = at; i < at + n; ++i) {
    char c = text[i];
    if (c < '0' || c > '9') return false;
    value = value * 10 + (c - '0');
  }
  return true;
}

// Days from 1970-01-01 to the proleptic Gregorian date (H. Hinnant's days_from_civil).
std::int64_t days_from_civil(std::int64_t year, int month, int day) {
  year -= month <= 2 ? 1 : 0;
  std::int64_t era = (year >= 0 ? year : year - 399) / 400;
  auto year_of_era = static_cast<std::int64_t>(year - era * 400);
  std::int64_t day_of_year = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1;
  std::int64_t day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
  return era * 146097 + day_of_era - 719468;
}

constexpr std::int64_t kPostgresEpochDays = 10957;  // 2000-01-01 from 1970-01-01
constexpr std::int64_t kMicrosPerDay = 86'400'000'000;

bool leap(std::int64_t year) {
  return (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;  // also for year <= 0
}

// "YYYY-MM-DD" (four to seven year digits) at the start of `text`; `used` is the length
// read. The year is as written: the era suffix comes later (take_era).
bool parse_iso_date(std::string_view text, std::int64_t& year, int& month, int& day,
                    std::size_t& used) {
  std::size_t dash = text.find('-');
  if (dash == std::string_view::npos || dash < 4 || dash > 7) return false;
  int y = 0;
  if (!digits(text, 0, dash, y)) return false;
  if (dash + 6 > text.size() || text[dash + 3] != '-') return false;
  if (!digits(text, dash + 1, 2, month) || !digits(text, dash + 4, 2, day)) return false;
  year = y;
  used = dash + 6;
  return year != 0 && month >= 1 && month <= 12 && day >= 1 && day <= 31;
}

// " BC" at the end: the year is 1 - year (there is no year 0). Then checks the day of the
// month (leap years are counted in astronomical years: 1 BC is one).
bool take_era(std::string_view& rest, std::int64_t& year, int month, int day) {
  if (rest.ends_with(" BC")) {
    rest.remove_suffix(3);
    year = 1 - year;
  }
  static constexpr int kDays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  return day <= kDays[month - 1] + (month == 2 && leap(year) ? 1 : 0);
}

// The date at the start of `text` and its era suffix, as days since 2000-01-01; `rest` is
// what lies between them (the time of a timestamp).
bool parse_date_part(std::string_view text, std::int64_t& days, std::string_view& rest) {
  std::int64_t year = 0;
  int month = 0;
  int day = 0;
  std::size_t used = 0;
  if (!parse_iso_date(text, year, month, day, used)) return false;
  rest = text.substr(used);
  if (!take_era(rest, year, month, day)) return false;
  days = days_from_civil(year, month, day) - kPostgresEpochDays;
  return true;
}

bool append_date(std::string& out, std::string_view text) {
  std::int32_t days = 0;
  if (text == "infinity") {
    days = INT32_MAX;
  } else if (text == "-infinity") {
    days = INT32_MIN;
  } else {
    std::int64_t day_number = 0;
    std::string_view rest;
    if (!parse_date_part(text, day_number, rest) || !rest.empty()) return false;
    days = static_cast<std::int32_t>(day_number);
  }
  put_u32(out, 4);
  put_u32(out, static_cast<std::uint32_t>(days));
  return true;
}

bool append_timestamp(std::string& out, std::string_view text, bool zoned) {
  auto micros = parse_timestamp_micros(text, zoned);
  if (!micros) return false;
  put_u32(out, 8);
  put_u64(out, static_cast<std::uint64_t>(*micros));
  return true;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Hex pairs of `text` appended as bytes; false (and `out` unchanged) for anything else.
bool append_hex(std::string& out, std::string_view text) {
  if (text.size() % 2 != 0) return false;
  std::size_t start = out.size();
  for (std::size_t i = 0; i < text.size(); i += 2) {
    int high = hex_value(text[i]);
    int low = hex_value(text[i + 1]);
    if (high < 0 || low < 0) {
      out.resize(start);
      return false;
    }
    out.push_back(static_cast<char>(high << 4 | low));
  }
  return true;
}

bool append_uuid(std::string& out, std::string_view text) {
  if (text.size() != 36 || text[8] != '-' || text[13] != '-' || text[18] != '-' ||
      text[23] != '-') {
    return false;
  }
  std::size_t start = out.size();
  put_u32(out, 16);
  for (auto [at, length] : {std::pair{0, 8}, {9, 4}, {14, 4}, {19, 4}, {24, 12}}) {
    if (!append_hex(out,
                    text.substr(static_cast<std::size_t>(at), static_cast<std::size_t>(length)))) {
      out.resize(start);
      return false;
    }
  }
  return true;
}

template <typename T, typename Put>
bool append_number(std::string& out, std::string_view text, Put put) {
  T value{};
  if (!parse_whole(text, value)) return false;
  put_u32(out, sizeof(T));
  put(value);
  return true;
}

}  // namespace

std::optional<std::int64_t> parse_timestamp_micros(std::string_view text, bool zoned) {
  std::int64_t micros = 0;
  if (text == "infinity") {
    micros = INT64_MAX;
  } else if (text == "-infinity") {
    micros = INT64_MIN;
  } else {
    std::int64_t days = 0;
    std::string_view rest;
    if (!parse_date_part(text, days, rest)) return std::nullopt;
    int hour = 0;
    int minute = 0;
    int second = 0;
    if (rest.size() < 9 || rest[0] != ' ' || rest[3] != ':' || rest[6] != ':') return std::nullopt;
    if (!digits(rest, 1, 2, hour) || !digits(rest, 4, 2, minute) || !digits(rest, 7, 2, second))
      return std::nullopt;
    if (hour > 23 || minute > 59 || second > 59) return std::nullopt;
    rest.remove_prefix(9);
    std::int64_t fraction = 0;
    if (!rest.empty() && rest[0] == '.') {
      std::size_t n = 1;
      while (n < rest.size() && rest[n] >= '0' && rest[n] <= '9') ++n;
      std::size_t count = n - 1;
      if (count == 0 || count > 6) return std::nullopt;
      for (std::size_t i = 1; i <= 6; ++i) {
        fraction = fraction * 10 + (i <= count ? rest[i] - '0' : 0);
      }
      rest.remove_prefix(n);
    }
    std::int64_t offset = 0;  // seconds east of UTC
    if (!rest.empty() && (rest[0] == '+' || rest[0] == '-')) {
      if (!zoned) return std::nullopt;
      int sign = rest[0] == '-' ? -1 : 1;
      int h = 0;
      int m = 0;
      int s = 0;
      if (!digits(rest, 1, 2, h)) return std::nullopt;
      rest.remove_prefix(3);
      if (!rest.empty() && rest[0] == ':') {
        if (!digits(rest, 1, 2, m)) return std::nullopt;
        rest.remove_prefix(3);
        if (!rest.empty() && rest[0] == ':') {
          if (!digits(rest, 1, 2, s)) return std::nullopt;
          rest.remove_prefix(3);
        }
      }
      if (m > 59 || s > 59) return std::nullopt;
      offset = sign * (h * 3600 + m * 60 + s);
    } else if (zoned) {
      return std::nullopt;
    }
    if (!rest.empty()) return std::nullopt;
    micros = days * kMicrosPerDay +
             ((hour * 60 + minute) * 60 + second - offset) * std::int64_t{1'000'000} + fraction;
  }
  return micros;
}

BinaryType binary_type_for(std::uint32_t type_oid) {
  // Built-in type OIDs (src/include/catalog/pg_type.dat) are the same in every version.
  switch (type_oid) {
    case 16:
      return BinaryType::boolean;
    case 21:
      return BinaryType::int2;
    case 23:
      return BinaryType::int4;
    case 20:
      return BinaryType::int8;
    case 26:
      return BinaryType::oid;
    case 700:
      return BinaryType::float4;
    case 701:
      return BinaryType::float8;
    case 25:    // text
    case 1043:  // varchar
    case 1042:  // bpchar
    case 19:    // name
    case 114:   // json
      return BinaryType::text;
    case 3802:
      return BinaryType::jsonb;
    case 17:
      return BinaryType::bytea;
    case 2950:
      return BinaryType::uuid;
    case 1082:
      return BinaryType::date;
    case 1114:
      return BinaryType::timestamp;
    case 1184:
      return BinaryType::timestamptz;
    default:
      return BinaryType::none;
  }
}

void append_binary_tuple_start(std::string& out, std::uint16_t fields) {
  put_u16(out, fields);
}

void append_binary_null(std::string& out) {
  put_u32(out, 0xFFFFFFFFu);
}

void append_binary_trailer(std::string& out) {
  put_u16(out, 0xFFFFu);
}

bool append_binary_field(std::string& out, BinaryType type, std::string_view text) {
  switch (type) {
    case BinaryType::none:
      return false;
    case BinaryType::boolean:
      if (text != "t" && text != "f") return false;
      put_u32(out, 1);
      out.push_back(text == "t" ? '\1' : '\0');
      return true;
    case BinaryType::int2:
      return append_number<std::int16_t>(
          out, text, [&](std::int16_t v) { put_u16(out, static_cast<std::uint16_t>(v)); });
    case BinaryType::int4:
      return append_number<std::int32_t>(
          out, text, [&](std::int32_t v) { put_u32(out, static_cast<std::uint32_t>(v)); });
    case BinaryType::int8:
      return append_number<std::int64_t>(
          out, text, [&](std::int64_t v) { put_u64(out, static_cast<std::uint64_t>(v)); });
    case BinaryType::oid:
      return append_number<std::uint32_t>(out, text, [&](std::uint32_t v) { put_u32(out, v); });
    case BinaryType::float4:
      return append_number<float>(out, text,
                                  [&](float v) { put_u32(out, std::bit_cast<std::uint32_t>(v)); });
    case BinaryType::float8:
      return append_number<double>(
          out, text, [&](double v) { put_u64(out, std::bit_cast<std::uint64_t>(v)); });
    case BinaryType::text:
      put_u32(out, static_cast<std::uint32_t>(text.size()));
      out.append(text);
      return true;
    case BinaryType::jsonb:
      put_u32(out, static_cast<std::uint32_t>(text.size() + 1));
      out.push_back('\1');
      out.append(text);
      return true;
    case BinaryType::bytea: {
      if (!text.starts_with("\\x")) return false;  // bytea_output = escape: leave it to text
      std::size_t start = out.size();
      put_u32(out, static_cast<std::uint32_t>((text.size() - 2) / 2));
      if (!append_hex(out, text.substr(2))) {
        out.resize(start);
        return false;
      }
      return true;
    }
    case BinaryType::uuid:
      return append_uuid(out, text);
    case BinaryType::date:
      return append_date(out, text);
    case BinaryType::timestamp:
      return append_timestamp(out, text, false);
    case BinaryType::timestamptz:
      return append_timestamp(out, text, true);
  }
  return false;
}

}  // namespace pgferry::replication
