// ByteReader error formatting and pgoutput message names.
#include "pgferry/replication/decode/byte_reader.hpp"

#include <fmt/format.h>

namespace pgferry::replication {

std::string pgoutput_message_name(char type) {
  switch (type) {
    case 'B':
      return "Begin";
    case 'C':
      return "Commit";
    case 'O':
      return "Origin";
    case 'R':
      return "Relation";
    case 'Y':
      return "Type";
    case 'I':
      return "Insert";
    case 'U':
      return "Update";
    case 'D':
      return "Delete";
    case 'T':
      return "Truncate";
    case 'M':
      return "Message";
    case 'b':
      return "Begin Prepare";
    case 'P':
      return "Prepare";
    case 'K':
      return "Commit Prepared";
    case 'r':
      return "Rollback Prepared";
    case 'S':
      return "Stream Start";
    case 'E':
      return "Stream Stop";
    case 'c':
      return "Stream Commit";
    case 'A':
      return "Stream Abort";
    case 'p':
      return "Stream Prepare";
    default:
      return fmt::format("unknown (0x{:02x})", static_cast<unsigned char>(type));
  }
}

void ByteReader::fail_at(std::size_t offset, const std::string& what) const {
  std::string name;
  if (message_type_ == 0) {
    name = "message";
  } else if (std::string_view(context_) == "pgoutput") {
    name = pgoutput_message_name(message_type_) + " message";
  } else {
    name = fmt::format("'{}' message", message_type_);
  }
  throw ProtocolError(
      fmt::format("{} {}: {} (offset {} of {} bytes)", context_, name, what, offset, data_.size()),
      offset, message_type_);
}

void ByteReader::fail_short(std::size_t count, const char* field) const {
  fail(fmt::format("truncated reading {} (needs {} bytes, {} left)", field, count, remaining()));
}

std::string ByteReader::fmt_missing_nul(const char* field) const {
  return fmt::format("unterminated string reading {}", field);
}

}  // namespace pgferry::replication
