#include "nodemeta/metadata_store.h"

#include <gtest/gtest.h>

#include <malloc.h>

#include <atomic>
#include <barrier>
#include <string>
#include <thread>
#include <vector>

#include "support/keys.h"
#include "support/stress.h"

namespace nodemeta {
namespace {

TEST(MetadataStoreTest, DefaultProtectedKeysAreTheOriginals) {
  MetadataStore store;
  EXPECT_EQ(store.protected_keys(),
            (std::vector<std::string>{"debug_handle", "nn_module_stack", "stack_trace", "tensor_meta", "val"}));
  for (Key k : default_protected_keys()) EXPECT_TRUE(store.is_protected(k)) << k.name();
  EXPECT_FALSE(store.is_protected("custom"));
}

TEST(MetadataStoreTest, CustomProtectedKeys) {
  MetadataStore store(StoreOptions{.protected_keys = {"val", "stack_trace"}});
  EXPECT_EQ(store.protected_keys(), (std::vector<std::string>{"stack_trace", "val"}));
  NodeMetadata n = store.create({{"val", 1}});
  EXPECT_THROW(n.set("val", 2), ProtectedKeyError);
  n.set("tensor_meta", "writable here");  // not protected in this store
  n.set("tensor_meta", "and again");
  EXPECT_EQ(n["tensor_meta"].as<std::string>(), "and again");
}

TEST(MetadataStoreTest, NoProtectedKeysAtAll) {
  MetadataStore store(StoreOptions{.protected_keys = {}});
  NodeMetadata n = store.create({{"val", 1}});
  n.set("val", 2);
  EXPECT_EQ(n["val"].as<std::int64_t>(), 2);
  EXPECT_TRUE(store.protected_keys().empty());
}

TEST(MetadataStoreTest, ProtectAtRunTimeAppliesToEveryNode) {
  MetadataStore store;
  NodeMetadata a = store.create({{"shape", 1}});
  NodeMetadata b = store.create();
  a.set("shape", 2);
  store.protect("shape");
  store.protect("shape");  // idempotent
  EXPECT_TRUE(store.is_protected("shape"));
  EXPECT_THROW(a.set("shape", 3), ProtectedKeyError);
  EXPECT_EQ(a.try_set("shape", 3), WriteResult::kRejectedProtected);
  EXPECT_THROW(a.erase("shape"), ProtectedKeyError);
  EXPECT_EQ(a["shape"].as<std::int64_t>(), 2);
  // Absent on b: set_once may still add it, exactly once.
  EXPECT_THROW(b.set("shape", 5), ProtectedKeyError);
  EXPECT_TRUE(b.set_once("shape", 5));
  EXPECT_FALSE(b.set_once("shape", 6));
  EXPECT_EQ(b["shape"].as<std::int64_t>(), 5);
  // New nodes may still be built with it.
  NodeMetadata c = store.create({{"shape", 7}});
  EXPECT_EQ(c["shape"].as<std::int64_t>(), 7);
  // Other stores are not affected.
  MetadataStore other;
  EXPECT_FALSE(other.is_protected("shape"));
}

TEST(MetadataStoreTest, ProtectWorksForKeysWithLargeIds) {
  // Intern enough names that some ids are >= 64 (the store's second protection tier).
  std::vector<Key> many;
  for (int i = 0; i < 200; ++i) many.emplace_back("store_test.many." + std::to_string(i));
  ASSERT_GE(many.back().id(), test::kFirstLargeKeyId);
  MetadataStore store;
  NodeMetadata n = store.create();
  for (Key k : many) EXPECT_EQ(n.try_set(k, 1), WriteResult::kInserted);
  for (std::size_t i = 0; i < many.size(); i += 3) store.protect(many[i]);
  for (std::size_t i = 0; i < many.size(); ++i) {
    const bool expected = i % 3 == 0;
    EXPECT_EQ(store.is_protected(many[i]), expected) << many[i].name();
    EXPECT_EQ(n.try_set(many[i], 2), expected ? WriteResult::kRejectedProtected : WriteResult::kUpdated);
  }
  const auto names = store.protected_keys();
  EXPECT_EQ(names.size(), 5u + (many.size() + 2) / 3);
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
}

// Issue 13 item 10: every intermediate protection set used to be kept, so protecting n keys
// cost O(n^2) memory (40,000 keys in StoreOptions: 99 MiB; 100,000: 608 MiB). The set is
// now one grow-only bitset: 100,000 keys (ids up to ~100,000) take about 12.5 KiB.
TEST(MetadataStoreTest, ProtectingManyKeysCostsLinearMemory) {
  std::vector<Key> many;
  for (int i = 0; i < 100000; ++i) many.emplace_back("many_protected." + std::to_string(i));
  const std::size_t before = mallinfo2().uordblks;
  {
    MetadataStore store(StoreOptions{.protected_keys = many});
    const std::size_t after = mallinfo2().uordblks;
    if (!test::kSanitized) {  // the sanitizers' allocators do not report through mallinfo2
      EXPECT_LT(after - before, std::size_t{1} << 20) << "protection set of 100,000 keys";
    }
    for (Key k : {many.front(), many[50000], many.back()}) EXPECT_TRUE(store.is_protected(k));
    EXPECT_FALSE(store.is_protected("many_protected.unprotected"));
    EXPECT_EQ(store.protected_keys().size(), many.size());
    NodeMetadata n = store.create({{many.back(), 1}});
    EXPECT_THROW(n.set(many.back(), 2), ProtectedKeyError);
    for (int i = 0; i < 1000; ++i) store.protect(Key("many_protected.late." + std::to_string(i)));
    EXPECT_EQ(store.protected_keys().size(), many.size() + 1000);
  }
}

// Issue 13 item 13: a node's slot count is 32-bit; growth is computed in 64 bits and
// checked, so it can never wrap into a small allocation written past its end.
TEST(MetadataStoreTest, NodeSizeLimitIsCheckedNotWrapped) {
  EXPECT_EQ(detail::grown_capacity(0), 4u);
  EXPECT_EQ(detail::grown_capacity(6), 9u);
  EXPECT_EQ(detail::grown_capacity(detail::kMaxSlots - 1), detail::kMaxSlots);
  EXPECT_THROW(detail::grown_capacity(detail::kMaxSlots), std::length_error);
  EXPECT_THROW(detail::Record(detail::kMaxSlots + 1), std::length_error);
}

// A node records its array's capacity as a 7-bit class (NodeState::aux): every capacity an
// array is given must be a class's, exact up to 32, and the classes must reach kMaxSlots.
TEST(MetadataStoreTest, SlotArrayCapacitiesAreClasses) {
  for (std::uint32_t c = 0; c < detail::kExactCapacities; ++c) {
    EXPECT_EQ(detail::class_capacity(c), c);
    EXPECT_EQ(detail::capacity_class_for(c), c);
  }
  EXPECT_LE(detail::kCapacityTable.count, detail::NodeState::kCapacityMask + 1);
  for (std::uint32_t c = 1; c < detail::kCapacityTable.count; ++c) {
    EXPECT_GT(detail::class_capacity(c), detail::class_capacity(c - 1)) << c;
  }
  std::vector<std::uint32_t> sizes;
  for (std::uint32_t n = 0; n < 2000; ++n) sizes.push_back(n);
  for (std::uint32_t n : {std::uint32_t{1} << 20, detail::kMaxSlots - 1, detail::kMaxSlots}) sizes.push_back(n);
  for (std::uint32_t n : sizes) {
    const std::uint32_t c = detail::capacity_class_for(n);
    ASSERT_LT(c, detail::kCapacityTable.count) << n;
    EXPECT_GE(detail::class_capacity(c), n) << n;
    if (c > 0) {
      EXPECT_LT(detail::class_capacity(c - 1), n) << n;  // the smallest such class
    }
    if (n >= 40) {
      EXPECT_LE(detail::class_capacity(c), n + n / 4 + 1) << n;  // waste <= 1/4
    }
    EXPECT_EQ(detail::has_room(n, c), detail::class_capacity(c) > n) << n;
    if (n < detail::kMaxSlots) {
      const std::uint32_t g = detail::grown_capacity(n);
      EXPECT_GT(g, n);
      EXPECT_EQ(detail::class_capacity(detail::capacity_class_for(g)), g) << n;
    }
  }
  for (std::uint32_t n : {0U, 5U, 33U, 100U, 1000U}) {
    const detail::Record r(n);
    EXPECT_GE(r.capacity(), n);
    EXPECT_EQ(detail::class_capacity(detail::capacity_class_for(r.capacity())), r.capacity());
  }
  // A node holding 10,000 keys went through many classes; it keeps them all.
  MetadataStore store;
  NodeMetadata node = store.create({});
  for (int i = 0; i < 10000; ++i) node.set("cap." + std::to_string(i), i);
  EXPECT_EQ(node.size(), 10000U);
  EXPECT_EQ(node.get("cap.9999")->as<std::int64_t>(), 9999);
}

TEST(MetadataStoreTest, NodeCountTracksCreationAndDestruction) {
  MetadataStore store(StoreOptions{.expected_nodes = 1000});
  std::vector<NodeMetadata> nodes;
  for (int i = 0; i < 1000; ++i) nodes.push_back(store.create({{"debug_handle", i}}));
  EXPECT_EQ(store.node_count(), 1000u);
  nodes.resize(250);
  EXPECT_EQ(store.node_count(), 250u);
  for (int i = 0; i < 250; ++i) EXPECT_EQ(nodes[i]["debug_handle"].as<std::int64_t>(), i);
  nodes.clear();
  EXPECT_EQ(store.node_count(), 0u);
}

TEST(MetadataStoreTest, NodeIdsAreUniqueAndNeverReused) {
  MetadataStore store;
  NodeId first;
  {
    NodeMetadata a = store.create();
    first = a.id();
  }
  NodeMetadata b = store.create();
  EXPECT_NE(b.id(), first);
}

TEST(MetadataStoreTest, DefaultStoreIsOneObject) {
  EXPECT_EQ(&MetadataStore::default_store(), &MetadataStore::default_store());
  EXPECT_TRUE(MetadataStore::default_store().is_protected("val"));
}

// Kind: interface. A small contended check; tests/stress/ has the full suite.
TEST(MetadataStoreTest, ProtectRacingWritersNeverLosesTheFrozenValue) {
  constexpr int kRounds = 200;
  for (int round = 0; round < kRounds; ++round) {
    MetadataStore store;
    const Key k("store_test.race." + std::to_string(round % 8));
    NodeMetadata n = store.create({{k, -1}});
    std::atomic<bool> protected_now{false};
    std::barrier start(3);
    Value frozen;
    std::atomic<int> late_successes{0};
    auto writer = [&](int w) {
      start.arrive_and_wait();
      for (int i = 0; i < 200; ++i) {
        const bool after = protected_now.load(std::memory_order_acquire);
        const WriteResult r = n.try_set(k, w * 1000 + i);
        if (after && r != WriteResult::kRejectedProtected) late_successes.fetch_add(1);
      }
    };
    std::thread w1(writer, 1), w2(writer, 2);
    start.arrive_and_wait();
    store.protect(k);
    frozen = n[k];
    protected_now.store(true, std::memory_order_release);
    w1.join();
    w2.join();
    EXPECT_EQ(late_successes.load(), 0) << "round " << round;
    EXPECT_EQ(n[k], frozen) << "round " << round;
  }
}

// In every build (issue 21, item 3): a store destroyed while a handle still refers to one of
// its nodes stops the process with a message naming the store and the count, rather than
// leave the handle on freed memory (a destructor cannot throw).
TEST(MetadataStoreDeathTest, DestroyingAStoreWithLiveNodesStopsTheProcess) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        auto* store = new MetadataStore();
        auto* node = new NodeMetadata(store->create());
        auto* other = new NodeMetadata(store->create());
        (void)node;
        (void)other;
        delete store;  // the nodes still refer to it
      },
      "MetadataStore 0x[0-9a-f]+ destroyed with 2 node\\(s\\) still alive.*store must outlive its "
      "nodes");
}

}  // namespace
}  // namespace nodemeta
