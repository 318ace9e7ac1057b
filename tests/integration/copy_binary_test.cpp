// The applier's binary COPY encoder against the server itself: for each type, the text a
// value prints as (what pgoutput sends) must encode to exactly the bytes of the type's own
// send function (what COPY ... (FORMAT binary) reads), under several session time zones;
// and text the encoder does not fully understand must be refused, never guessed.
#include <fmt/format.h>

#include "pgferry/replication/apply/copy_encoding.hpp"
#include "support/harness.hpp"

namespace repl = pgferry::replication;
using namespace pgferry::testing;

namespace {

class CopyBinaryTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { cluster_ = start_cluster(); }
  static void TearDownTestSuite() { cluster_.reset(); }
  static std::unique_ptr<pgferry::tools::LocalCluster> cluster_;
};
std::unique_ptr<pgferry::tools::LocalCluster> CopyBinaryTest::cluster_;

std::string hex(std::string_view bytes) {
  std::string out;
  for (unsigned char c : bytes) out += fmt::format("{:02x}", c);
  return out;
}

// Checks every row of `sql`, which yields (the output function's text, hex of the send
// function's bytes).
// Returns the number of rows checked.
int expect_same_as_send(const repl::Connection& conn, repl::BinaryType type,
                        const std::string& sql) {
  auto result = conn.exec(sql);
  for (int row = 0; row < result.rows(); ++row) {
    std::string text(result.get(row, 0));
    std::string expected(result.get(row, 1));
    std::string out = "x";
    EXPECT_TRUE(repl::append_binary_field(out, type, text)) << "refused: " << text;
    if (out.size() < 5) continue;
    std::string length = out.substr(1, 4);
    std::string value = out.substr(5);
    EXPECT_EQ(hex(value), expected) << text;
    EXPECT_EQ(hex(length), fmt::format("{:08x}", value.size())) << text;
  }
  return result.rows();
}

std::string pairs(std::string_view type, std::string_view send,
                  const std::vector<std::string>& literals) {
  std::string values;
  for (const auto& literal : literals) {
    if (!values.empty()) values += ", ";
    values += fmt::format("({}::{})", repl::quote_literal(literal), type);
  }
  return fmt::format("SELECT format('%s', v), encode({}(v), 'hex') FROM (VALUES {}) s(v)", send,
                     values);
}

}  // namespace

TEST_F(CopyBinaryTest, FixedValuesEncodeLikeTheSendFunctions) {
  auto conn = connect(*cluster_);
  using T = repl::BinaryType;
  EXPECT_EQ(expect_same_as_send(conn, T::boolean, pairs("bool", "boolsend", {"t", "f"})), 2);
  EXPECT_EQ(expect_same_as_send(conn, T::int2,
                                pairs("int2", "int2send", {"0", "-1", "32767", "-32768", "42"})),
            5);
  EXPECT_EQ(expect_same_as_send(conn, T::int4,
                                pairs("int4", "int4send", {"0", "-2147483648", "2147483647", "7"})),
            4);
  EXPECT_EQ(expect_same_as_send(
                conn, T::int8,
                pairs("int8", "int8send",
                      {"0", "-9223372036854775808", "9223372036854775807", "1234567890123"})),
            4);
  EXPECT_EQ(
      expect_same_as_send(conn, T::oid, pairs("oid", "oidsend", {"0", "4294967295", "16384"})), 3);
  EXPECT_EQ(expect_same_as_send(conn, T::float8,
                                pairs("float8", "float8send",
                                      {"0", "-0", "1.5", "0.1", "1e-310", "1.7976931348623157e308",
                                       "Infinity", "-Infinity", "3.141592653589793"})),
            9);
  EXPECT_EQ(expect_same_as_send(conn, T::float4,
                                pairs("float4", "float4send",
                                      {"0", "1.1", "-3.4028235e38", "1e-45", "Infinity", "0.3"})),
            6);
  EXPECT_EQ(
      expect_same_as_send(conn, T::text,
                          pairs("text", "textsend", {"", "tab\there", "żółw 🐢", "\\N", "a'b"})),
      5);
  EXPECT_EQ(expect_same_as_send(conn, T::text, pairs("varchar(10)", "varcharsend", {"abc"})), 1);
  EXPECT_EQ(expect_same_as_send(conn, T::text, pairs("char(5)", "bpcharsend", {"ab"})), 1);
  EXPECT_EQ(expect_same_as_send(conn, T::text, pairs("json", "json_send", {"{\"a\": [1, 2]}"})), 1);
  EXPECT_EQ(expect_same_as_send(conn, T::jsonb,
                                pairs("jsonb", "jsonb_send", {"{\"b\": 1, \"a\": \"x\"}", "[]"})),
            2);
  EXPECT_EQ(expect_same_as_send(conn, T::bytea,
                                pairs("bytea", "byteasend", {"\\x", "\\x00ff10", "abc\\000"})),
            3);
  EXPECT_EQ(expect_same_as_send(conn, T::uuid,
                                pairs("uuid", "uuid_send",
                                      {"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
                                       "{A0EEBC99-9C0B4EF8-BB6D-6BB9BD380A12}"})),
            2);
  EXPECT_EQ(expect_same_as_send(conn, T::date,
                                pairs("date", "date_send",
                                      {"2000-01-01", "1999-12-31", "2024-02-29", "0044-03-15 BC",
                                       "0581-02-29 BC", "0001-02-29 BC", "4713-01-01 BC",
                                       "5874897-12-31", "infinity", "-infinity"})),
            10);
  EXPECT_EQ(expect_same_as_send(conn, T::timestamp,
                                pairs("timestamp", "timestamp_send",
                                      {"2000-01-01 00:00:00", "1999-12-31 23:59:59.999999",
                                       "2026-11-21 08:36:17.5", "0001-01-01 00:00:00 BC",
                                       "294276-12-31 23:59:59.999999", "infinity", "-infinity"})),
            7);
}

TEST_F(CopyBinaryTest, TimestamptzInEveryOffsetStyle) {
  auto conn = connect(*cluster_);
  // Whole hours, half hours, 45 minutes, and local mean time with seconds (before 1900).
  for (const char* zone : {"UTC", "Asia/Kolkata", "America/St_Johns", "Pacific/Chatham",
                           "Europe/Amsterdam", "America/Los_Angeles"}) {
    conn.exec(fmt::format("SET TimeZone = '{}'", zone));
    SCOPED_TRACE(zone);
    EXPECT_EQ(expect_same_as_send(conn, repl::BinaryType::timestamptz,
                                  pairs("timestamptz", "timestamptz_send",
                                        {"2000-01-01 00:00:00+00", "1850-06-01 12:00:00",
                                         "1937-07-01 00:00:00", "2026-03-29 02:30:00.123456+00",
                                         "0100-02-03 04:05:06 BC", "infinity", "-infinity"})),
              7);
    EXPECT_EQ(expect_same_as_send(conn, repl::BinaryType::timestamptz,
                                  "SELECT format('%s', t), encode(timestamptz_send(t), 'hex') FROM "
                                  "(SELECT timestamptz '1800-01-01' + random() * interval "
                                  "'300 years' AS t FROM generate_series(1, 300)) s"),
              300);
  }
  conn.exec("RESET TimeZone");
}

TEST_F(CopyBinaryTest, RandomFloatsAndDatesRoundTrip) {
  auto conn = connect(*cluster_);
  EXPECT_EQ(expect_same_as_send(conn, repl::BinaryType::float8,
                                "SELECT format('%s', f), encode(float8send(f), 'hex') FROM (SELECT "
                                "(random() - 0.5) * power(10::float8, random() * 600 - 300) AS f "
                                "FROM generate_series(1, 1000)) s"),
            1000);
  EXPECT_EQ(
      expect_same_as_send(conn, repl::BinaryType::float4,
                          "SELECT format('%s', f), encode(float4send(f), 'hex') FROM (SELECT "
                          "((random() - 0.5) * power(10::float8, random() * 70 - 35))::float4 "
                          "AS f FROM generate_series(1, 1000)) s"),
      1000);
  EXPECT_EQ(
      expect_same_as_send(conn, repl::BinaryType::date,
                          "SELECT format('%s', d), encode(date_send(d), 'hex') FROM (SELECT date "
                          "'4000-01-01 BC' + (random() * 3000000)::int AS d FROM "
                          "generate_series(1, 1000)) s"),
      1000);
}

TEST(CopyBinaryRefuses, TextItDoesNotFullyUnderstand) {
  using T = repl::BinaryType;
  const std::vector<std::pair<T, std::string>> refused = {
      {T::boolean, "true"},
      {T::boolean, ""},
      {T::int2, "32768"},
      {T::int4, "1.5"},
      {T::int4, " 1"},
      {T::int4, "2147483648"},
      {T::int8, ""},
      {T::int8, "+1"},
      {T::oid, "-1"},
      {T::float8, "1.5x"},
      {T::float8, "1e400"},
      {T::float4, "1e40"},
      {T::bytea, "abc"},  // bytea_output = escape
      {T::bytea, "\\x0"},
      {T::bytea, "\\xzz"},
      {T::uuid, "a0eebc999c0b4ef8bb6d6bb9bd380a11"},
      {T::uuid, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1g"},
      {T::date, "2026-02-29"},
      {T::date, "0004-02-29 BC"},  // astronomical year -3: not a leap year
      {T::date, "2026-13-01"},
      {T::date, "01/02/2026"},  // another DateStyle
      {T::date, "2026-01-01 AD"},
      {T::timestamp, "2026-01-01 00:00:00+00"},  // an offset for a type without zone
      {T::timestamp, "2026-01-01 24:00:00"},
      {T::timestamp, "2026-01-01 00:00:00.1234567"},
      {T::timestamp, "2026-01-01T00:00:00"},
      {T::timestamptz, "2026-01-01 00:00:00"},  // no offset: the target's zone would decide
      {T::timestamptz, "2026-01-01 00:00:00 PST"},
      {T::timestamptz, "Thu Jan 01 00:00:00 2026 UTC"},  // DateStyle Postgres
      {T::none, "1"},
  };
  for (const auto& [type, text] : refused) {
    std::string out = "unchanged";
    EXPECT_FALSE(repl::append_binary_field(out, type, text))
        << "type " << static_cast<int>(type) << " accepted \"" << text << "\"";
    EXPECT_EQ(out, "unchanged") << text;
  }
}

TEST(CopyBinaryFraming, HeaderTupleNullAndTrailer) {
  std::string out(repl::kCopyBinaryHeader);
  EXPECT_EQ(hex(out),
            "5047434f50590aff0d0a00"
            "00000000"
            "00000000");
  repl::append_binary_tuple_start(out, 2);
  repl::append_binary_null(out);
  ASSERT_TRUE(repl::append_binary_field(out, repl::BinaryType::int4, "-2"));
  repl::append_binary_trailer(out);
  EXPECT_EQ(hex(out.substr(repl::kCopyBinaryHeader.size())),
            "0002"
            "ffffffff"
            "00000004"
            "fffffffe"
            "ffff");
}
