// The agent's periodic sequence sync (see periodic_sync.hpp).
#include "pgferry/sequences/periodic_sync.hpp"

#include <spdlog/spdlog.h>

#include "pgferry/replication/core/pg.hpp"
#include "pgferry/sequences/sequences.hpp"

namespace pgferry::sequences {

namespace repl = pgferry::replication;

PeriodicSequenceSync::PeriodicSequenceSync(std::string source_conninfo, std::string target_conninfo,
                                           std::string name, std::chrono::seconds interval,
                                           std::function<void(const std::exception&)> on_failure)
    : source_conninfo_(std::move(source_conninfo)),
      target_conninfo_(std::move(target_conninfo)),
      name_(std::move(name)),
      interval_(interval),
      on_failure_(std::move(on_failure)) {}

void PeriodicSequenceSync::update(const repl::AgentProgress& /*progress*/) {
  auto now = Clock::now();
  if (interval_.count() <= 0 || now - last_sync_ < interval_) return;
  last_sync_ = now;
  try {
    auto source = repl::Connection::open(source_conninfo_, repl::Side::source);
    auto target = repl::Connection::open(target_conninfo_, repl::Side::target);
    auto report = sync_sequences(source, target, {});
    if (!report.changed.empty()) {
      spdlog::info("run slot={} sequences synced={}", name_, report.changed.size());
    }
  } catch (const std::exception& e) {
    spdlog::warn("run slot={} sequence sync failed: {}", name_, e.what());
    if (on_failure_) on_failure_(e);
  }
}

}  // namespace pgferry::sequences
