// libFuzzer target for the pgoutput decoder and the transaction assembler.
//
// Input: the first byte picks the protocol version (1-4) and the parallel-streaming flag;
// the rest is a sequence of messages, each `length u16 (big-endian) | bytes`, so that the
// fuzzer can build stream-block state (Stream Start, then changes with xids) across
// messages. Every message goes through one long-lived Decoder; any exception other than
// ProtocolError, and any crash or sanitizer report, is a bug. The assembler half feeds the
// same messages to a TransactionAssembler over a sink that touches every value.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>

#include "pgferry/replication/decode/decoder.hpp"
#include "pgferry/replication/decode/txn_assembler.hpp"

namespace repl = pgferry::replication;
namespace pg = pgferry::replication::pgoutput;

namespace {

// Reads every byte of every view so that ASan sees out-of-bounds views.
std::size_t touch(std::string_view text) {
  std::size_t sum = 0;
  for (char c : text) sum += static_cast<unsigned char>(c);
  return sum;
}

std::size_t touch(pg::TupleView tuple) {
  std::size_t sum = 0;
  for (const auto& column : tuple)
    sum += touch(column.data) + static_cast<std::size_t>(column.kind);
  return sum;
}

class TouchingSink : public repl::ChangeSink {
 public:
  void begin_transaction(const repl::TransactionBegin&) override {}
  void relation(const repl::Relation& relation) override { sum += touch(relation.relname); }
  void insert(const repl::Relation&, const pg::Insert& insert) override {
    sum += touch(insert.new_tuple);
  }
  void update(const repl::Relation&, const pg::Update& update) override {
    sum += touch(update.old_tuple) + touch(update.new_tuple);
  }
  void delete_rows(const repl::Relation&, const pg::Delete& del) override {
    sum += touch(del.old_tuple);
  }
  void truncate(std::span<const repl::Relation* const> relations, std::uint8_t) override {
    for (const auto* relation : relations) sum += touch(relation->relname);
  }
  void commit_transaction(const repl::TransactionCommit&) override {}
  std::size_t sum = 0;
};

const std::filesystem::path& spool_dir() {
  static const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / "pgferry-fuzz-spool";
  return dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  int version = 1 + (data[0] & 3);
  repl::DecoderOptions options{.parallel_streaming = (data[0] & 4) != 0};
  std::span<const std::byte> rest(reinterpret_cast<const std::byte*>(data + 1), size - 1);

  repl::Decoder decoder(version, options);
  TouchingSink sink;
  repl::TransactionAssembler assembler(sink, spool_dir(), version, options);
  bool assembler_alive = true;
  std::size_t sum = 0;
  while (rest.size() >= 2) {
    std::size_t length =
        (static_cast<std::size_t>(rest[0]) << 8) | static_cast<std::size_t>(rest[1]);
    rest = rest.subspan(2);
    if (length > rest.size()) length = rest.size();
    auto message = rest.first(length);
    rest = rest.subspan(length);
    try {
      auto decoded = decoder.decode(message);
      std::visit(
          [&](const auto& m) {
            using T = std::decay_t<decltype(m)>;
            if constexpr (std::is_same_v<T, pg::Insert>) sum += touch(m.new_tuple);
            if constexpr (std::is_same_v<T, pg::Update>)
              sum += touch(m.old_tuple) + touch(m.new_tuple);
            if constexpr (std::is_same_v<T, pg::Delete>) sum += touch(m.old_tuple);
            if constexpr (std::is_same_v<T, pg::RelationMessage>) {
              for (const auto& column : m.columns) sum += touch(column.name);
            }
          },
          decoded);
    } catch (const repl::ProtocolError&) {
    }
    if (assembler_alive) {
      try {
        assembler.on_message(message);
      } catch (const repl::ProtocolError&) {
        assembler_alive = false;  // a real stream ends at the first protocol error
      }
    }
  }
  return static_cast<int>(sum & 0) + static_cast<int>(sink.sum & 0);
}
