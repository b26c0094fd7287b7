#include "nodemeta/errors.h"

#include <gtest/gtest.h>

#include <stdexcept>
#include <string>
#include <type_traits>
#include <typeinfo>

namespace nodemeta {
namespace {

// Callers (and pybind11) catch by the standard types.
static_assert(std::is_base_of_v<std::out_of_range, KeyError>);
static_assert(std::is_base_of_v<std::runtime_error, ProtectedKeyError>);
static_assert(std::is_base_of_v<std::bad_cast, BadValueCast>);
static_assert(std::is_base_of_v<std::logic_error, ReentrancyError>);

TEST(ErrorsTest, KeyErrorNamesTheKey) {
  const KeyError e("custom");
  EXPECT_EQ(e.key(), "custom");
  EXPECT_STREQ(e.what(), "key 'custom' not found");
}

TEST(ErrorsTest, ProtectedKeyErrorHasTheOriginalsMessage) {
  const ProtectedKeyError e("val");
  EXPECT_EQ(e.key(), "val");
  EXPECT_STREQ(e.what(), "Could not override node key: val");
}

TEST(ErrorsTest, BadValueCastNamesHeldAndRequestedTypes) {
  const BadValueCast e("std::string", "std::int64_t");
  EXPECT_EQ(e.held(), "std::string");
  EXPECT_EQ(e.requested(), "std::int64_t");
  EXPECT_STREQ(e.what(), "value holds std::string, not std::int64_t");
}

TEST(ErrorsTest, WriteResultHasReadableNames) {
  EXPECT_EQ(to_string(WriteResult::kInserted), "inserted");
  EXPECT_EQ(to_string(WriteResult::kUpdated), "updated");
  EXPECT_EQ(to_string(WriteResult::kRejectedProtected), "rejected_protected");
}

}  // namespace
}  // namespace nodemeta
