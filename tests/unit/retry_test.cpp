// Retry or stop (core/retry.hpp): every SQLSTATE the agent can meet lands on the right side,
// the stop verdicts carry a fix, and the backoff doubles with jitter inside its bounds.
#include "pgferry/replication/core/retry.hpp"

#include <gtest/gtest.h>

#include <set>

#include "pgferry/replication/core/error.hpp"

namespace repl = pgferry::replication;
using repl::Side;
using namespace std::chrono_literals;

namespace {

repl::ErrorVerdict sql(const char* sqlstate, const char* what = "x", Side side = Side::target) {
  return repl::classify_error(repl::SqlError(what, sqlstate, side));
}

}  // namespace

TEST(Retry, TransientErrorsAreRetried) {
  for (const char* state : {"57P01", "57P02", "57P03", "57P05", "57014", "40001", "40P01", "55P03",
                            "53300", "55006", "08006", "08001"}) {
    auto verdict = sql(state);
    EXPECT_TRUE(verdict.retry) << state;
    EXPECT_FALSE(verdict.reason.empty()) << state;
  }
  EXPECT_EQ(sql("40P01").reason, "deadlock");
  EXPECT_EQ(sql("57P01").reason, "administrator shutdown or pg_terminate_backend");
  // libpq's own failure (no SQLSTATE), seen in pipeline mode when the server went away.
  EXPECT_TRUE(
      sql("", "target while applying BEGIN: server closed the connection unexpectedly").retry);
  // A lost connection is retried whatever its SQLSTATE says.
  EXPECT_TRUE(repl::classify_error(repl::ConnectionError("gone", "", Side::source)).retry);
  EXPECT_TRUE(repl::classify_error(repl::ConnectionError("gone", "XX000", Side::target)).retry);
}

TEST(Retry, ConflictsAreMarkedWithTheirFix) {
  // These may recur on every replay of one transaction: the agent counts them.
  for (const char* state : {"55P03", "40001", "40P01", "57014"}) {
    auto verdict = sql(state);
    EXPECT_TRUE(verdict.retry) << state;
    EXPECT_TRUE(verdict.conflict) << state;
    EXPECT_FALSE(verdict.fix.empty()) << state;
  }
  EXPECT_NE(sql("55P03").fix.find("pg_blocking_pids"), std::string::npos);
  // These clear by themselves (a server back, a walsender gone): never counted.
  for (const char* state : {"57P01", "57P02", "57P03", "57P05", "53300", "55006", "08006"}) {
    EXPECT_FALSE(sql(state).conflict) << state;
  }
  EXPECT_FALSE(repl::classify_error(repl::ConnectionError("gone", "", Side::source)).conflict);
}

TEST(Retry, AnUnusableSpoolDirectoryStops) {
  auto verdict = repl::classify_error(repl::SpoolError("spool directory /x: no space left"));
  EXPECT_FALSE(verdict.retry);
  EXPECT_EQ(verdict.reason, "spool directory unusable");
}

TEST(Retry, ARefusedLoginStops) {
  for (const char* what :
       {"source: connection to server on socket \"/tmp/.s.PGSQL.5432\" failed: FATAL:  password "
        "authentication failed for user \"ferry\"",
        "target: connection to server at \"db\" (10.0.0.1), port 5432 failed: FATAL:  database "
        "\"app\" does not exist",
        "target: connection failed: FATAL:  role \"ferry\" does not exist",
        "source: connection failed: FATAL:  no pg_hba.conf entry for replication connection"}) {
    auto verdict = repl::classify_error(repl::ConnectionError(what, "08001", Side::source));
    EXPECT_FALSE(verdict.retry) << what;
    EXPECT_EQ(verdict.reason, "login refused") << what;
    EXPECT_FALSE(verdict.fix.empty()) << what;
  }
  // A server that is starting or shutting down is still retried.
  EXPECT_TRUE(repl::classify_error(
                  repl::ConnectionError("target: connection failed: FATAL:  the database system "
                                        "is starting up",
                                        "08001", Side::target))
                  .retry);
}

TEST(Retry, ErrorsThatNeedAHumanStopWithAFix) {
  struct Case {
    const char* sqlstate;
    const char* what;
    const char* reason;
  };
  for (const Case& c : {
           Case{"42P01", "relation \"public.t\" does not exist", "missing table"},
           Case{"42703", "column \"c\" does not exist", "missing column"},
           Case{"42804", "column is of type integer", "type mismatch or bad value"},
           Case{"22P02", "invalid input syntax for type integer", "type mismatch or bad value"},
           Case{"23505", "duplicate key value", "unique violation"},
           Case{"23503", "violates foreign key", "constraint violation"},
           Case{"42501", "permission denied for table t", "permission denied"},
           Case{"25006", "cannot execute INSERT in a read-only transaction", "read-only target"},
           Case{"42704", "publication \"p\" does not exist", "missing publication"},
           Case{"42704", "replication slot \"s\" does not exist", "missing replication slot"},
           Case{"55000", "can no longer get changes from replication slot \"s\"",
                "replication slot invalidated"},
       }) {
    repl::SqlError error(c.what, c.sqlstate, Side::target);
    auto verdict = repl::classify_error(error);
    EXPECT_FALSE(verdict.retry) << c.sqlstate;
    EXPECT_EQ(verdict.reason, c.reason) << c.sqlstate;
    EXPECT_FALSE(verdict.fix.empty()) << c.sqlstate;
    std::string text = repl::with_fix(error, verdict);
    EXPECT_TRUE(text.starts_with(c.what)) << text;
    EXPECT_NE(text.find("; fix: "), std::string::npos) << text;
  }
}

TEST(Retry, UnknownErrorsStop) {
  EXPECT_FALSE(sql("XX000").retry);
  EXPECT_FALSE(repl::classify_error(repl::ConfigError("bad")).retry);
  EXPECT_FALSE(repl::classify_error(repl::ProtocolError("bad", 0, 'I')).retry);
  EXPECT_FALSE(repl::classify_error(repl::Error("rows differ")).retry);
  EXPECT_FALSE(repl::classify_error(std::runtime_error("?")).retry);
  EXPECT_EQ(repl::with_fix(repl::Error("plain"), repl::classify_error(repl::Error("plain"))),
            "plain");
}

TEST(Retry, BackoffDoublesWithJitterUpToTheMax) {
  repl::Backoff backoff(200ms, 30s, 42);
  auto delay = 200ms;
  std::set<long> seen;
  for (int i = 0; i < 20; ++i) {
    auto wait = backoff.next();
    EXPECT_GE(wait, delay / 2) << i;
    EXPECT_LE(wait, delay) << i;
    seen.insert(static_cast<long>(wait.count()));
    delay = std::min<std::chrono::milliseconds>(delay * 2, 30s);
  }
  EXPECT_EQ(backoff.delay(), 30s);
  // Jitter: waits at the same delay are not all the same.
  std::set<long> at_max;
  for (int i = 0; i < 20; ++i) at_max.insert(static_cast<long>(backoff.next().count()));
  EXPECT_GT(at_max.size(), 1u);
  backoff.reset();
  EXPECT_LE(backoff.next(), 200ms);
  // Two agents seeded differently do not wait in step.
  repl::Backoff a(1s, 30s, 1), b(1s, 30s, 2);
  int same = 0;
  for (int i = 0; i < 10; ++i) same += a.next() == b.next() ? 1 : 0;
  EXPECT_LT(same, 10);
}
