// Decode benchmark: a captured PostgreSQL 15 stream (tests/fixtures/pgoutput) decoded into
// typed messages with column views, against memcpy of the same bytes in the same run.
// Streams: bench_insert (100 transactions of 100 inserts into t(id bigint primary key,
// a int, b text, c timestamptz)) and bench_mix (updates and deletes over the same rows).
// Prints decode time / memcpy time per stream at the end (goal: at most 8x).
#include <benchmark/benchmark.h>

#include <cstring>
#include <iostream>
#include <map>
#include <string>

#include "../tests/fixtures/fixture_reader.hpp"
#include "pgferry/replication/decode/decoder.hpp"
#include "pgferry/replication/decode/txn_assembler.hpp"

namespace repl = pgferry::replication;
namespace pg = pgferry::replication::pgoutput;

namespace {

struct Stream {
  std::vector<pgferry::fixtures::CapturedMessage> messages;
  std::size_t bytes = 0;
  std::size_t rows = 0;
};

const Stream& stream(const std::string& name) {
  static std::map<std::string, Stream> cache;
  auto [it, inserted] = cache.try_emplace(name);
  if (inserted) {
    it->second.messages = pgferry::fixtures::read_capture(std::string(PGFERRY_FIXTURES_DIR) +
                                                          "/pgoutput/" + name + ".bin");
    for (const auto& m : it->second.messages) {
      it->second.bytes += m.payload.size();
      char type = m.type();
      if (type == 'I' || type == 'U' || type == 'D') ++it->second.rows;
    }
  }
  return it->second;
}

// What a consumer does with a decoded row: look at every column view.
std::size_t consume(pg::TupleView tuple) {
  std::size_t sum = 0;
  for (const auto& column : tuple)
    sum += column.data.size() + static_cast<std::size_t>(column.kind);
  return sum;
}

void decode(benchmark::State& state, const std::string& name) {
  const Stream& s = stream(name);
  repl::Decoder decoder(3);
  std::size_t sum = 0;
  for (auto _ : state) {
    for (const auto& m : s.messages) {
      auto message = decoder.decode(m.bytes());
      if (auto* insert = std::get_if<pg::Insert>(&message)) {
        sum += consume(insert->new_tuple);
      } else if (auto* update = std::get_if<pg::Update>(&message)) {
        sum += consume(update->old_tuple) + consume(update->new_tuple);
      } else if (auto* del = std::get_if<pg::Delete>(&message)) {
        sum += consume(del->old_tuple);
      }
    }
    benchmark::DoNotOptimize(sum);
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * s.bytes));
  state.counters["rows/s"] = benchmark::Counter(static_cast<double>(state.iterations() * s.rows),
                                                benchmark::Counter::kIsRate);
}

void copy(benchmark::State& state, const std::string& name) {
  const Stream& s = stream(name);
  std::vector<std::byte> out(65536);
  for (auto _ : state) {
    for (const auto& m : s.messages) {
      if (out.size() < m.payload.size()) out.resize(m.payload.size());
      std::memcpy(out.data(), m.payload.data(), m.payload.size());
      benchmark::ClobberMemory();
    }
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * s.bytes));
  state.counters["rows/s"] = benchmark::Counter(static_cast<double>(state.iterations() * s.rows),
                                                benchmark::Counter::kIsRate);
}

// The whole front half: decode + assemble into a sink that reads every column.
class ConsumingSink : public repl::ChangeSink {
 public:
  void begin_transaction(const repl::TransactionBegin&) override {}
  void relation(const repl::Relation&) override {}
  void insert(const repl::Relation&, const pg::Insert& insert) override {
    sum += consume(insert.new_tuple);
  }
  void update(const repl::Relation&, const pg::Update& update) override {
    sum += consume(update.old_tuple) + consume(update.new_tuple);
  }
  void delete_rows(const repl::Relation&, const pg::Delete& del) override {
    sum += consume(del.old_tuple);
  }
  void truncate(std::span<const repl::Relation* const>, std::uint8_t) override {}
  void commit_transaction(const repl::TransactionCommit&) override {}
  std::size_t sum = 0;
};

void assemble(benchmark::State& state, const std::string& name) {
  const Stream& s = stream(name);
  ConsumingSink sink;
  repl::TransactionAssembler assembler(
      sink, std::filesystem::temp_directory_path() / "pgferry-bench-spool", 3);
  for (auto _ : state) {
    for (const auto& m : s.messages) assembler.on_message(m.bytes());
    benchmark::DoNotOptimize(sink.sum);
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * s.bytes));
  state.counters["rows/s"] = benchmark::Counter(static_cast<double>(state.iterations() * s.rows),
                                                benchmark::Counter::kIsRate);
}

// Remembers each run's CPU time per iteration (CPU, not wall: the machine may be shared) so that
// main() can print the ratios.
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const auto& run : runs) {
      if (run.run_type == Run::RT_Iteration && run.iterations > 0) {
        times[run.benchmark_name()] = run.GetAdjustedCPUTime();
      }
    }
  }
  std::map<std::string, double> times;
};

}  // namespace

BENCHMARK_CAPTURE(copy, insert, std::string("bench_insert"));
BENCHMARK_CAPTURE(decode, insert, std::string("bench_insert"));
BENCHMARK_CAPTURE(assemble, insert, std::string("bench_insert"));
BENCHMARK_CAPTURE(copy, mix, std::string("bench_mix"));
BENCHMARK_CAPTURE(decode, mix, std::string("bench_mix"));
BENCHMARK_CAPTURE(assemble, mix, std::string("bench_mix"));

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  RatioReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  for (const char* workload : {"insert", "mix"}) {
    auto baseline = reporter.times.find(std::string("copy/") + workload);
    if (baseline == reporter.times.end() || baseline->second <= 0) continue;
    for (const char* what : {"decode", "assemble"}) {
      auto run = reporter.times.find(std::string(what) + "/" + workload);
      if (run == reporter.times.end()) continue;
      std::cout << what << "/" << workload << ": " << run->second / baseline->second
                << "x memcpy of the same bytes, CPU time (goal for decode: <= 8x)\n";
    }
  }
  benchmark::Shutdown();
  return 0;
}
