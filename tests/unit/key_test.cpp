#include "nodemeta/key.h"

#include <gtest/gtest.h>

#include <barrier>
#include <string>
#include <thread>
#include <vector>

namespace nodemeta {
namespace {

TEST(KeyTest, SameNameSameId) {
  const Key a("key_test.same");
  const Key b(std::string("key_test.same"));
  const Key c(std::string_view("key_test.same"));
  EXPECT_EQ(a, b);
  EXPECT_EQ(a, c);
  EXPECT_EQ(a.id(), b.id());
  EXPECT_EQ(a.name(), "key_test.same");
}

TEST(KeyTest, DifferentNamesDifferentIds) {
  const Key a("key_test.a");
  const Key b("key_test.b");
  EXPECT_FALSE(a == b);
  EXPECT_EQ(b.name(), "key_test.b");
}

TEST(KeyTest, PredefinedKeysAreTheOriginalsProtectedKeys) {
  EXPECT_EQ(keys::val, Key("val"));
  EXPECT_EQ(keys::stack_trace, Key("stack_trace"));
  EXPECT_EQ(keys::nn_module_stack, Key("nn_module_stack"));
  EXPECT_EQ(keys::debug_handle, Key("debug_handle"));
  EXPECT_EQ(keys::tensor_meta, Key("tensor_meta"));
  EXPECT_EQ(keys::tensor_meta.name(), "tensor_meta");
  const std::vector<Key> expected{keys::val, keys::stack_trace, keys::nn_module_stack,
                                  keys::debug_handle, keys::tensor_meta};
  EXPECT_EQ(default_protected_keys(), expected);
}

TEST(KeyTest, EmptyAndUnusualNamesAreKept) {
  EXPECT_EQ(Key("").name(), "");
  const std::string with_nul("a\0b", 3);
  EXPECT_EQ(Key(with_nul).name(), with_nul);
  EXPECT_FALSE(Key(with_nul) == Key("a"));
}

TEST(KeyTest, NullNameThrows) {
  const char* null_name = nullptr;
  EXPECT_THROW(Key{null_name}, std::invalid_argument);
}

TEST(KeyTest, HashIsTheId) {
  const Key k("key_test.hash");
  EXPECT_EQ(std::hash<Key>{}(k), k.id());
}

// Many threads interning the same fresh names at once must agree on one id per name.
TEST(KeyTest, ConcurrentInterningAgrees) {
  constexpr int kThreads = 4;
  constexpr int kNames = 500;
  std::vector<std::vector<std::uint32_t>> ids(kThreads, std::vector<std::uint32_t>(kNames));
  std::barrier start(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      start.arrive_and_wait();
      for (int i = 0; i < kNames; ++i) {
        // Threads walk the names in different orders to collide on first sightings.
        const int n = (t % 2 == 0) ? i : kNames - 1 - i;
        ids[t][n] = Key("key_test.concurrent." + std::to_string(n)).id();
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int n = 0; n < kNames; ++n) {
    for (int t = 1; t < kThreads; ++t) EXPECT_EQ(ids[t][n], ids[0][n]) << "name " << n;
    const std::string name = "key_test.concurrent." + std::to_string(n);
    EXPECT_EQ(Key(name).id(), ids[0][n]);
    EXPECT_EQ(Key(name).name(), name);
  }
  EXPECT_GE(Key::interned_count(), static_cast<std::size_t>(kNames));
}

}  // namespace
}  // namespace nodemeta
