// COPY text format encoding (the format COPY ... FROM STDIN reads by default): columns
// separated by a tab, rows ended by a newline, NULL written as \N, and in values the
// characters that would end a column or a row escaped with a backslash.
// Server side: src/backend/commands/copyfromparse.c, CopyReadAttributesText().
#pragma once

#include <string>
#include <string_view>

namespace pgferry::replication {

inline constexpr std::string_view kCopyNull = "\\N";

// Appends `value` escaped for COPY text format: backslash, tab, newline and carriage return
// become \\, \t, \n and \r; everything else (including UTF-8) is copied as is.
void append_copy_text(std::string& out, std::string_view value);

}  // namespace pgferry::replication
