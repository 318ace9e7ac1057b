// The live streamed connection (see streamed_apply.hpp).
#include "streamed_apply.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>

namespace pgferry::replication::apply {

Applier* StreamedApply::open(const TransactionBegin& begin) {
  if (applier_) return applier_.get();
  ApplierOptions options = options_;
  options.streamed_conninfo.clear();
  options.take_lock = false;
  options.group_max_rows = 0;  // commit at its (one) transaction's commit
  try {
    applier_ = std::make_unique<Applier>(Connection::open(options_.streamed_conninfo, Side::target),
                                         options);
  } catch (const PgError& e) {
    // No second connection (connection limits): the spool replays it at its commit.
    spdlog::warn(
        "streamed transaction xid={} is applied at its commit: no second target "
        "connection: {}",
        begin.xid.value, e.what());
    return nullptr;
  }
  folded_ = {};
  return applier_.get();
}

void StreamedApply::fold(ApplyCounters& counters) {
  auto now = applier_->counters();
  counters.add_difference(now, folded_);
  folded_ = now;
  durable_lsn_.store(std::max(durable_lsn_.load(), applier_->durable_lsn().value()));
}

}  // namespace pgferry::replication::apply
