// Cost of one lag sample (`pgferry lag`, the agent's view): one query on each side, over
// the Unix socket to local clusters. Baseline in the same run: a bare `SELECT 1` round trip
// to each side, the least any sample can cost.
#include <benchmark/benchmark.h>

#include <memory>

#include "pgferry/lagmon/sample.hpp"
#include "pgferry/replication/apply/progress.hpp"
#include "pgferry/replication/core/pg.hpp"
#include "pgferry/tools/local_cluster.hpp"

namespace repl = pgferry::replication;
using pgferry::tools::LocalCluster;

namespace {

struct Pair {
  std::unique_ptr<LocalCluster> source;
  std::unique_ptr<LocalCluster> target;
  Pair() {
    pgferry::tools::ClusterOptions options;
    options.prefix = "pgferry-bench-";
    source = std::make_unique<LocalCluster>(options);
    target = std::make_unique<LocalCluster>(options);
    auto src = repl::Connection::open(source->conninfo(), repl::Side::source);
    auto lsn = src.exec("SELECT lsn FROM pg_create_logical_replication_slot('pgferry', 'pgoutput')")
                   .scalar();
    auto tgt = repl::Connection::open(target->conninfo(), repl::Side::target);
    repl::ProgressStore store(tgt);
    store.ensure_table();
    store.initialize("pgferry", *repl::Lsn::parse(lsn));
  }
};

Pair& pair() {
  static Pair instance;
  return instance;
}

void BM_LagSample(benchmark::State& state) {
  auto& clusters = pair();
  pgferry::lagmon::LagSampler sampler(clusters.source->conninfo(), clusters.target->conninfo(),
                                      "pgferry");
  sampler.sample();  // connect outside the timing
  for (auto _ : state) {
    auto sample = sampler.sample();
    benchmark::DoNotOptimize(sample.lag_bytes());
  }
}
BENCHMARK(BM_LagSample)->Unit(benchmark::kMicrosecond);

void BM_BareRoundTripBothSides(benchmark::State& state) {
  auto& clusters = pair();
  auto src = repl::Connection::open(clusters.source->conninfo(), repl::Side::source);
  auto tgt = repl::Connection::open(clusters.target->conninfo(), repl::Side::target);
  for (auto _ : state) {
    benchmark::DoNotOptimize(src.exec("SELECT 1"));
    benchmark::DoNotOptimize(tgt.exec("SELECT 1"));
  }
}
BENCHMARK(BM_BareRoundTripBothSides)->Unit(benchmark::kMicrosecond);

}  // namespace

int main(int argc, char** argv) {
  pgferry::tools::stop_all_on_signal();
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
