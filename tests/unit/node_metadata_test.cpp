#include <nodemeta/nodemeta.h>
#include <gtest/gtest.h>
TEST(Placeholder, Builds) { nodemeta::MetadataStore s; auto n = s.create({{"val", 1}}); EXPECT_EQ(n["val"].as<std::int64_t>(), 1); }
