// COPY encodings for the applier's insert runs.
//
// Text format (what COPY ... FROM STDIN reads by default): columns separated by a tab, rows
// ended by a newline, NULL written as \N, and in values the characters that would end a
// column or a row escaped with a backslash. Server side: src/backend/commands/
// copyfromparse.c, CopyReadAttributesText().
//
// Binary format (COPY ... FROM STDIN (FORMAT binary); docs "COPY", "Binary Format"):
//   header   "PGCOPY\n\377\r\n\0" | flags i32 = 0 | header extension length i32 = 0
//   tuple    field count i16 | per field: length i32 (-1: NULL) | the type's send format
//   trailer  i16 = -1
// all integers big-endian. pgoutput sends values as text (the source's output functions,
// with DateStyle ISO and extra_float_digits 3 pinned on the connection); for a few common
// target types the applier turns that text into the receive format itself, which spares
// the target the parsing (int8in, timestamptz_in, ...). A value whose text does not parse
// strictly as the documented output of its type is refused (false), and the caller sends
// that run as text, so the target's own input function decides, exactly as without binary.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace pgferry::replication {

inline constexpr std::string_view kCopyNull = "\\N";

// Appends `value` escaped for COPY text format: backslash, tab, newline and carriage return
// become \\, \t, \n and \r; everything else (including UTF-8) is copied as is.
void append_copy_text(std::string& out, std::string_view value);

// Target column types the applier can write in binary COPY (by the type's built-in OID;
// a domain or any other type is `none`: text COPY).
enum class BinaryType : std::uint8_t {
  none,
  boolean,  // bool
  int2,
  int4,
  int8,
  oid,
  float4,
  float8,
  text,   // text, varchar, bpchar, name, json: the bytes as they are
  jsonb,  // version byte 1, then the text
  bytea,  // from the hex output format only
  uuid,
  date,
  timestamp,    // without time zone: no offset allowed in the text
  timestamptz,  // the text's offset is applied
};

BinaryType binary_type_for(std::uint32_t type_oid);

inline constexpr std::string_view kCopyBinaryHeader{"PGCOPY\n\377\r\n\0\0\0\0\0\0\0\0\0", 19};

// Appends a tuple's field count.
void append_binary_tuple_start(std::string& out, std::uint16_t fields);
// Appends a NULL field.
void append_binary_null(std::string& out);
// Appends one field (length and value) from the text output of `type`; false (and `out`
// unchanged) when the text is not in the form this encoder accepts.
bool append_binary_field(std::string& out, BinaryType type, std::string_view text);
// Appends the trailer.
void append_binary_trailer(std::string& out);

// The value of timestamp_out/timestamptz_out text with DateStyle ISO,
// "YYYY-MM-DD HH:MM:SS[.ffffff][+HH[:MM[:SS]]][ BC]", as microseconds since 2000-01-01
// (UTC with `zoned`, whose offset is then required; without, an offset is refused);
// infinity and -infinity as INT64_MAX and INT64_MIN. nullopt for anything else.
std::optional<std::int64_t> parse_timestamp_micros(std::string_view text, bool zoned);

}  // namespace pgferry::replication
