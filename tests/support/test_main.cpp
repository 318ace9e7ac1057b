// main() for every test binary: stop any cluster a test started if we are interrupted.
#include <gtest/gtest.h>

#include "pgferry/tools/local_cluster.hpp"

int main(int argc, char** argv) {
  pgferry::tools::stop_all_on_signal();
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
