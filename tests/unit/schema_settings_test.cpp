// comment_out_unknown_settings: a newer pg_dump's session settings that an older target lacks
// are commented out of the restore script; everything else stays byte for byte.
#include <gtest/gtest.h>

#include "pgferry/replication/copy/initial_copy_schema.hpp"

namespace repl = pgferry::replication;

TEST(SchemaSettings, UnknownSetLinesAreCommentedOutOthersKept) {
  std::string dump =
      "\\restrict abc\n"
      "SET statement_timeout = 0;\n"
      "SET transaction_timeout = 0;\n"
      "SELECT pg_catalog.set_config('search_path', '', false);\n"
      "CREATE TABLE t (note text DEFAULT 'SET transaction_timeout = 0;');\n"
      "SET default_table_access_method = heap;";
  std::set<std::string> known = {"statement_timeout", "default_table_access_method"};
  EXPECT_EQ(repl::comment_out_unknown_settings(dump, known),
            "\\restrict abc\n"
            "SET statement_timeout = 0;\n"
            "-- pgferry: the target has no setting transaction_timeout: SET transaction_timeout = "
            "0;\n"
            "SELECT pg_catalog.set_config('search_path', '', false);\n"
            "CREATE TABLE t (note text DEFAULT 'SET transaction_timeout = 0;');\n"
            "SET default_table_access_method = heap;");
  known.insert("transaction_timeout");
  EXPECT_EQ(repl::comment_out_unknown_settings(dump, known), dump);
  EXPECT_EQ(repl::comment_out_unknown_settings("", known), "");
}
