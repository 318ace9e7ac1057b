// The cutover guard: a separate process that lifts the write fence when the cutover dies
// while writes are fenced (kill -9, OOM, a lost machine session), and first puts traffic
// back where it was when the switch had begun but was not committed.
//
// Protocol: the cutover writes one JSON document a line to the guard's stdin:
//   {"history": {"conninfo", "id", "lock", "session_pid", "session_start"}}
//                                          at the start (and when the cutover replaces its
//                                          history session): where the history row is, the
//                                          advisory lock the cutover holds while it lives and
//                                          the backend (pid, start time) of the session that
//                                          holds it
//   {"fence": FenceSpec}                   before it engages the fence
//   {"switching": {"config": {"path", "original", "switched", "admin"} | null,
//                  "command": CMD | null, "back_env": {NAME: VALUE},
//                  "forward_env": {NAME: VALUE}, "back_budget_ms": N,
//                  "new_side": {"conninfo", "slot", "publication", "after"}}}
//                                          before the row says `switching` and before it
//                                          rewrites the PgBouncer config or runs
//                                          --switch-command (back_env points CMD at the old
//                                          primary with PGFERRY_ABORT=1, forward_env at the
//                                          new one; new_side: where to read which writes the
//                                          new primary took since the new slot's start)
//   {"switch_pgid": PID, "switch_start": T} the switch command's process group and its
//                                          leader's start time, once started
//   {"switch_exited": true}                once that command has ended
//   {"committing": true}                   the switch is done; the `switched` UPDATE follows
//   {"switched": true}                     once the history row says `switched` (committed)
//   {"released": true}                     once the fence is lifted
//   {"done": true}                         all is well, nothing to do
// End of input while fenced (the pipe closed because the cutover is gone) makes the guard
// (1) decide where traffic goes, (2) point it there, (3) lift the fence, within the
// cutover's --timeout (6 switch budgets) and 5 s more for the fence.
//
// The point of no return is the commit of the history row's `switched` state, not the
// guard's message: the cutover may die between its UPDATE's commit and {"switched"}. So
// the guard asks the history, but only once the cutover's session is gone: it first takes
// the cutover's advisory lock (free only when that session ended, so an UPDATE it had sent
// is then either committed or never will be) and holds it while it acts, so that no re-run
// starts meanwhile. What it does by the row's state:
// - `running` after {"switching"}: nothing was switched yet; it undoes all the same (kills
//   the switch command's group if it still runs, restores the config and RELOADs, runs the
//   command towards the old primary with PGFERRY_ABORT=1) and lifts the fence.
// - `switching`: the switch may be half done. It undoes it, unless the new primary already
//   took writes (its slot, read without consuming it, says so); if that is the case, or
//   any part of undoing fails, or writes reach the new primary meanwhile, it finishes the
//   switch instead (config rewritten, command towards the new primary) and marks the row
//   `switched`, which loses nothing: the new primary holds everything before the fence and
//   its slot records every write since (the old primary is still fenced). Undone, it marks the row
//   `running` again (a re-run marks it aborted). When neither works the row stays `switching` with
//   both slots kept, and a re-run decides from where writes went (see cutover.hpp).
// - `switched` or `completed`: it only lifts the fence (a re-run finishes the cutover);
//   `aborted`: the cutover's abort already switched back, it lifts the fence.
// The lock still taken after a second: if the dead cutover's own session still holds it (its
// closing never reached the server, which would keep that session until TCP gives up), the
// guard ends it (pg_terminate_backend of that pid with that start time) and takes the lock.
// Still taken after 5 s: a re-run holds it and recovers this cutover itself, so the guard
// leaves. The history unreachable for 5 s (the original target down): it switches back
// if the switch had begun and not completed ({"committing"} not heard), else keeps it, and
// lifts the fence. The switch command's group is killed only if its leader's pid still names
// the same process or no process (a group id is not reused while it has members).
#pragma once

#include <sys/types.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace pgferry::cutover {

// The guard's main loop; reads from fd 0. Returns the process exit code.
int run_guard();

// The cutover's end of the pipe. Without argv it does nothing.
class GuardLink {
 public:
  explicit GuardLink(const std::vector<std::string>& argv);
  GuardLink(const GuardLink&) = delete;
  GuardLink& operator=(const GuardLink&) = delete;
  ~GuardLink();
  void send(const nlohmann::json& message);
  // Tells the guard all is well and waits for it to exit.
  void finish();

 private:
  int fd_ = -1;
  pid_t pid_ = 0;
};

}  // namespace pgferry::cutover
