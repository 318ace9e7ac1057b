// Small helpers the whole-process benchmarks share (drain, delay, init).
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <initializer_list>
#include <string>
#include <vector>

#include "pgferry/replication/core/pg.hpp"
#include "pgferry/tools/local_cluster.hpp"

namespace pgferry::bench {

inline double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

inline double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  auto n = values.size();
  return n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

// "a,b,,c" → {"a", "b", "c"}
inline std::vector<std::string> split(const std::string& text) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start <= text.size()) {
    auto comma = text.find(',', start);
    if (comma == std::string::npos) comma = text.size();
    if (comma > start) out.push_back(text.substr(start, comma - start));
    start = comma + 1;
  }
  return out;
}

// A table's content in one string, to compare source and target: the row count and a sum
// of row hashes (cheap enough for 10 M rows, independent of row order).
inline std::string table_digest(const replication::Connection& conn, const std::string& table) {
  return conn
      .exec(fmt::format("SELECT count(*) || ':' || coalesce(sum(hashtext(t::text)::bigint), 0) "
                        "FROM {} t",
                        table))
      .scalar();
}

// pgbench -i -q -s `scale` into the cluster's postgres database, plus a primary key on
// pgbench_history (pgferry refuses tables without one). Throws when pgbench fails.
inline void load_pgbench(tools::LocalCluster& cluster, int scale) {
  int status = cluster.run_tool(
      {"pgbench", "-i", "-q", "-s", std::to_string(scale), "-h", cluster.socket_dir().string(),
       "-p", std::to_string(cluster.port()), "-U", "postgres", "postgres"},
      cluster.dir() / "pgbench-init.log");
  if (status != 0) throw std::runtime_error("pgbench -i failed");
  replication::Connection::open(cluster.conninfo(), replication::Side::none)
      .exec("ALTER TABLE pgbench_history ADD COLUMN id bigserial PRIMARY KEY");
}

// pg_recvlogical of pgoutput from `slot` of the cluster's postgres database (publication
// "bench") to /dev/null, then `extra` options: the walsender floor. argv[0] is the program
// name alone, for LocalCluster::run_tool; prefix bindir() to spawn it directly.
inline std::vector<std::string> recvlogical_argv(const tools::LocalCluster& cluster,
                                                 const std::string& slot,
                                                 std::initializer_list<std::string> extra) {
  std::vector<std::string> argv = {"pg_recvlogical",
                                   "-h",
                                   cluster.socket_dir().string(),
                                   "-p",
                                   std::to_string(cluster.port()),
                                   "-U",
                                   "postgres",
                                   "-d",
                                   "postgres",
                                   "--slot",
                                   slot,
                                   "--start",
                                   "-o",
                                   "proto_version=1",
                                   "-o",
                                   "publication_names=bench",
                                   "-f",
                                   "/dev/null"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  return argv;
}

}  // namespace pgferry::bench
