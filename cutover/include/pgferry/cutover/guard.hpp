// The cutover guard: a separate process that lifts the write fence when the cutover dies
// while writes are fenced (kill -9, OOM, a lost machine session).
//
// Protocol: the cutover writes one JSON document a line to the guard's stdin:
//   {"fence": FenceSpec}                 before it engages the fence
//   {"config": {"path", "original"}}     before it rewrites the PgBouncer config
//   {"switched": true}                   once traffic is switched (the config stays)
//   {"released": true}                   once the fence is lifted
// End of input while fenced (the pipe closed because the cutover is gone) makes the guard
// restore the config unless switched (then RELOAD) and lift the fence, retrying for up to
// a minute.
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
