// COPY text format escaping used by the applier's insert runs.
#include <gtest/gtest.h>

#include "pgferry/replication/apply/copy_encoding.hpp"

namespace repl = pgferry::replication;

namespace {
std::string encoded(std::string_view value) {
  std::string out = "prefix|";
  repl::append_copy_text(out, value);
  return out;
}
}  // namespace

TEST(CopyEncoding, EscapesOnlyWhatEndsAColumnOrRow) {
  EXPECT_EQ(encoded(""), "prefix|");
  EXPECT_EQ(encoded("plain 'quoted' \"double\""), "prefix|plain 'quoted' \"double\"");
  EXPECT_EQ(encoded("a\tb\nc\rd\\e"), "prefix|a\\tb\\nc\\rd\\\\e");
  EXPECT_EQ(encoded("\\N"), "prefix|\\\\N");  // the text \N, not NULL
  EXPECT_EQ(encoded("\\."), "prefix|\\\\.");  // never the end-of-data marker
  EXPECT_EQ(encoded("żółw 🐢"), "prefix|żółw 🐢");
  EXPECT_EQ(encoded("\n\n"), "prefix|\\n\\n");
  EXPECT_EQ(repl::kCopyNull, "\\N");
}
