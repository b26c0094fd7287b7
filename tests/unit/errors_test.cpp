#include "nodemeta/errors.h"

#include <gtest/gtest.h>

#include <stdexcept>
#include <string>
#include <typeinfo>

namespace nodemeta {
namespace {

TEST(ErrorsTest, KeyErrorNamesTheKeyAndIsAnOutOfRange) {
  const KeyError e("custom");
  EXPECT_EQ(e.key(), "custom");
  EXPECT_STREQ(e.what(), "key 'custom' not found");
  EXPECT_NE(dynamic_cast<const std::out_of_range*>(&e), nullptr);
}

TEST(ErrorsTest, ProtectedKeyErrorHasTheOriginalsMessage) {
  const ProtectedKeyError e("val");
  EXPECT_EQ(e.key(), "val");
  EXPECT_STREQ(e.what(), "Could not override node key: val");
  EXPECT_NE(dynamic_cast<const std::runtime_error*>(&e), nullptr);
}

TEST(ErrorsTest, BadValueCastNamesHeldAndRequestedTypes) {
  const BadValueCast e("std::string", "std::int64_t");
  EXPECT_EQ(e.held(), "std::string");
  EXPECT_EQ(e.requested(), "std::int64_t");
  EXPECT_STREQ(e.what(), "value holds std::string, not std::int64_t");
  EXPECT_NE(dynamic_cast<const std::bad_cast*>(&e), nullptr);
}

TEST(ErrorsTest, WriteResultHasReadableNames) {
  EXPECT_EQ(to_string(WriteResult::kInserted), "inserted");
  EXPECT_EQ(to_string(WriteResult::kUpdated), "updated");
  EXPECT_EQ(to_string(WriteResult::kRejectedProtected), "rejected_protected");
}

}  // namespace
}  // namespace nodemeta
