// The stress knobs of tests/support/stress.h: every printed seed replays, 0 included.
#include <gtest/gtest.h>

#include <cstdlib>

#include "support/stress.h"

namespace nodemeta::test {
namespace {

TEST(StressKnobsTest, EverySeedReplaysZeroIncluded) {
  ASSERT_EQ(setenv("NODEMETA_STRESS_SEED", "0", 1), 0);
  EXPECT_EQ(test_seed(), 0u);
  ASSERT_EQ(setenv("NODEMETA_STRESS_SEED", "18446744073709551615", 1), 0);
  EXPECT_EQ(test_seed(), 18446744073709551615u);
  ASSERT_EQ(unsetenv("NODEMETA_STRESS_SEED"), 0);
  const std::uint64_t a = test_seed();
  const std::uint64_t b = test_seed();
  EXPECT_NE(a, b);  // unset: a fresh seed each time (64 random bits)
  ASSERT_EQ(setenv("NODEMETA_STRESS_SEED", "", 1), 0);  // empty counts as unset
  EXPECT_NE(test_seed(), test_seed());
  unsetenv("NODEMETA_STRESS_SEED");
}

}  // namespace
}  // namespace nodemeta::test
