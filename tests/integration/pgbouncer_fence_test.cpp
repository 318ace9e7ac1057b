// The PgBouncer fence against a real PgBouncer (transaction pooling): PAUSE holds new
// transactions and RESUME lets them go; a transaction held open past the deadline makes the
// PAUSE fail, and the fence leaves PgBouncer serving (its pending PAUSE closed, RESUME sent,
// SHOW DATABASES not paused); with terminate_blockers the holder is ended and the fence
// holds; the [databases] rewrite plus RELOAD moves new transactions to another server.
#include <fmt/format.h>

#include <future>

#include "pgferry/cutover/fence.hpp"
#include "pgferry/cutover/pgbouncer_config.hpp"
#include "pgferry/replication/core/error.hpp"
#include "support/harness.hpp"

namespace repl = pgferry::replication;
namespace cut = pgferry::cutover;
using namespace pgferry::testing;
using namespace std::chrono_literals;

namespace {

cut::FenceSpec spec_for(const pgferry::tools::LocalPgBouncer& bouncer, const LocalCluster& server,
                        bool terminate) {
  cut::FenceSpec spec;
  spec.kind = cut::FenceKind::pgbouncer;
  spec.pgbouncer_conninfo = bouncer.admin_conninfo();
  spec.pgbouncer_database = bouncer.database();
  spec.server_conninfo = server.conninfo();
  spec.terminate_blockers = terminate;
  return spec;
}

std::string server_name(const repl::Connection& conn) {
  return conn.exec("SELECT current_setting('cluster_name')").scalar();
}

}  // namespace

class PgBouncerFence : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    pgferry::tools::ClusterOptions a;
    a.settings = {{"cluster_name", "'alpha'"}};
    pgferry::tools::ClusterOptions b;
    b.settings = {{"cluster_name", "'beta'"}};
    alpha_ = start_cluster(a);
    beta_ = start_cluster(b);
    bouncer_ = start_pgbouncer(*alpha_);
  }
  static void TearDownTestSuite() {
    bouncer_.reset();
    alpha_.reset();
    beta_.reset();
  }
  static std::unique_ptr<LocalCluster> alpha_, beta_;
  static std::unique_ptr<pgferry::tools::LocalPgBouncer> bouncer_;
};
std::unique_ptr<LocalCluster> PgBouncerFence::alpha_, PgBouncerFence::beta_;
std::unique_ptr<pgferry::tools::LocalPgBouncer> PgBouncerFence::bouncer_;

TEST_F(PgBouncerFence, PauseHoldsTransactionsAndResumeReleasesThem) {
  auto client = repl::Connection::open(bouncer_->client_conninfo(), repl::Side::none);
  EXPECT_EQ(server_name(client), "alpha");
  cut::WriteFence fence(spec_for(*bouncer_, *alpha_, false));
  fence.engage(cut::Clock::now() + 5s);
  EXPECT_TRUE(cut::PgBouncerAdmin(bouncer_->admin_conninfo()).paused(bouncer_->database()));
  auto waiting = std::async(std::launch::async, [&] { return server_name(client); });
  EXPECT_EQ(waiting.wait_for(300ms), std::future_status::timeout);
  fence.release();
  EXPECT_EQ(waiting.get(), "alpha");
  EXPECT_FALSE(cut::PgBouncerAdmin(bouncer_->admin_conninfo()).paused(bouncer_->database()));
}

TEST_F(PgBouncerFence, OpenTransactionPastTheDeadlineLeavesPgBouncerServing) {
  auto holder = repl::Connection::open(bouncer_->client_conninfo(), repl::Side::none);
  holder.exec("BEGIN; SELECT txid_current()");
  cut::WriteFence fence(spec_for(*bouncer_, *alpha_, false));
  auto started = cut::Clock::now();
  EXPECT_THROW(fence.engage(cut::Clock::now() + 500ms), repl::CutoverAborted);
  EXPECT_LT(cut::Clock::now() - started, 5s);
  EXPECT_FALSE(cut::PgBouncerAdmin(bouncer_->admin_conninfo()).paused(bouncer_->database()));
  // Other clients are served, and the holder can finish.
  auto other = repl::Connection::open(bouncer_->client_conninfo(), repl::Side::none);
  auto answer = std::async(std::launch::async, [&] { return server_name(other); });
  ASSERT_EQ(answer.wait_for(5s), std::future_status::ready);
  EXPECT_EQ(answer.get(), "alpha");
  holder.exec("COMMIT");
  // And a later PAUSE works again.
  fence.engage(cut::Clock::now() + 5s);
  fence.release();
}

TEST_F(PgBouncerFence, TerminateBlockersEndsTheHolderAndTheFenceHolds) {
  auto holder = repl::Connection::open(bouncer_->client_conninfo(), repl::Side::none);
  holder.exec("BEGIN; SELECT txid_current()");
  cut::WriteFence fence(spec_for(*bouncer_, *alpha_, true));
  fence.engage(cut::Clock::now() + 500ms);
  EXPECT_TRUE(cut::PgBouncerAdmin(bouncer_->admin_conninfo()).paused(bouncer_->database()));
  fence.release();
  EXPECT_THROW(holder.exec("COMMIT"), repl::PgError);
}

TEST_F(PgBouncerFence, RewriteAndReloadMovesNewTransactions) {
  auto path = bouncer_->config_file().string();
  auto original = cut::read_pgbouncer_config(path);
  auto client = repl::Connection::open(bouncer_->client_conninfo(), repl::Side::none);
  EXPECT_EQ(server_name(client), "alpha");
  cut::WriteFence fence(spec_for(*bouncer_, *alpha_, false));
  fence.engage(cut::Clock::now() + 5s);
  cut::write_pgbouncer_config(
      path, cut::rewrite_database_entry(original, bouncer_->database(), beta_->conninfo()));
  cut::PgBouncerAdmin(bouncer_->admin_conninfo()).reload();
  fence.release();
  EXPECT_EQ(server_name(client), "beta");
  cut::write_pgbouncer_config(path, original);
  cut::PgBouncerAdmin(bouncer_->admin_conninfo()).reload();
  EXPECT_EQ(server_name(client), "alpha");
}
