// Nothing is lost (issue 3, stress 5): disjoint inserts into one node and into many nodes
// are all present afterwards; T threads update one counter N times each and it reads
// exactly T*N; concurrent node creation, copying and destruction leaves node_count()
// exact; threads interning the same names get the same ids.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nodemeta/nodemeta.h>

#include "support/stress.h"

namespace nodemeta::test {
namespace {

TEST(NoLossStress, DisjointKeysIntoOneNode) {
  const int n_threads = threads();
  const int per_thread = static_cast<int>(rounds(2000));
  MetadataStore store;
  NodeMetadata node = store.create({{keys::val, 1}});
  run_together(n_threads, [&](int t, std::barrier<>&) {
    for (int i = 0; i < per_thread; ++i) {
      // Names interned here, concurrently with the other threads' interning.
      const Key k("one_node_t" + std::to_string(t) + "_" + std::to_string(i));
      EXPECT_EQ(node.try_set(k, std::int64_t{t} * 1'000'000 + i), WriteResult::kInserted);
    }
  });
  EXPECT_EQ(node.size(), static_cast<std::size_t>(n_threads * per_thread) + 1);
  for (int t = 0; t < n_threads; ++t) {
    for (int i = 0; i < per_thread; ++i) {
      const auto v = node.get(Key("one_node_t" + std::to_string(t) + "_" + std::to_string(i)));
      ASSERT_TRUE(v.has_value()) << "lost key of thread " << t << ", #" << i;
      EXPECT_EQ(v->as<std::int64_t>(), std::int64_t{t} * 1'000'000 + i);
    }
  }
}

TEST(NoLossStress, DisjointKeysIntoManyNodes) {
  const std::uint64_t seed = test_seed();
  const int n_threads = threads();
  const int n_nodes = static_cast<int>(rounds(5000));
  MetadataStore store(StoreOptions{.expected_nodes = static_cast<std::size_t>(n_nodes)});
  std::vector<NodeMetadata> nodes;
  for (int i = 0; i < n_nodes; ++i) nodes.push_back(store.create());
  run_together(n_threads, [&](int t, std::barrier<>&) {
    // Each thread visits every node in its own random order, writing its own key.
    std::vector<int> order(static_cast<std::size_t>(n_nodes));
    for (int i = 0; i < n_nodes; ++i) order[static_cast<std::size_t>(i)] = i;
    std::shuffle(order.begin(), order.end(), std::mt19937_64(mix_seed(seed, static_cast<std::uint64_t>(t))));
    const Key mine("many_t" + std::to_string(t));
    for (int i : order) nodes[static_cast<std::size_t>(i)].set(mine, i + t);
  });
  for (int i = 0; i < n_nodes; ++i) {
    const NodeMetadata& n = nodes[static_cast<std::size_t>(i)];
    ASSERT_EQ(n.size(), static_cast<std::size_t>(n_threads)) << "node " << i;
    for (int t = 0; t < n_threads; ++t) {
      EXPECT_EQ(n.at(Key("many_t" + std::to_string(t))).as<std::int64_t>(), i + t);
    }
  }
}

TEST(NoLossStress, CounterReachesThreadsTimesUpdates) {
  const int n_threads = threads();
  const std::int64_t per_thread = static_cast<std::int64_t>(rounds(20000));
  MetadataStore store;
  NodeMetadata node = store.create();
  run_together(n_threads, [&](int t, std::barrier<>&) {
    for (std::int64_t i = 0; i < per_thread; ++i) {
      if ((i + t) % 4 == 0) {  // every fourth increment through edit(), the rest update()
        node.edit([](NodeEditor& e) {
          const auto old = e.get("counter");
          e.set("counter", old ? old->as<std::int64_t>() + 1 : 1);
        });
      } else {
        node.update("counter", [](std::optional<Value> old) {
          return old ? old->as<std::int64_t>() + 1 : std::int64_t{1};
        });
      }
    }
  });
  EXPECT_EQ(node.at("counter").as<std::int64_t>(), n_threads * per_thread);
}

TEST(NoLossStress, ConcurrentCreateCopyDestroyKeepsNodeCountExact) {
  const std::uint64_t seed = test_seed();
  const int n_threads = threads();
  const int per_thread = static_cast<int>(rounds(5000));
  MetadataStore store;
  NodeMetadata shared = store.create({{keys::val, Value::list({1, 2, 3})}, {"x", 1}});
  std::vector<std::vector<NodeMetadata>> kept(static_cast<std::size_t>(n_threads));
  run_together(n_threads, [&](int t, std::barrier<>&) {
    std::mt19937_64 rng(mix_seed(seed, static_cast<std::uint64_t>(t)));
    auto& mine = kept[static_cast<std::size_t>(t)];
    for (int i = 0; i < per_thread; ++i) {
      switch (rng() % 4) {
        case 0: mine.push_back(store.create({{keys::debug_handle, i}})); break;
        case 1: mine.push_back(shared.copy()); break;
        case 2: {  // created and destroyed at once
          NodeMetadata tmp = store.create({{"tmp", t}});
          tmp.set("tmp2", i);
          break;
        }
        default:
          if (!mine.empty()) {
            mine[rng() % mine.size()] = shared;  // copy-assign: one node replaces another
            mine.pop_back();
          }
          break;
      }
    }
  });
  std::size_t expected = 1;
  std::vector<NodeId> all_ids{shared.id()};
  for (const auto& v : kept) {
    expected += v.size();
    for (const auto& n : v) {
      all_ids.push_back(n.id());
      ASSERT_TRUE(n.contains(keys::val) || n.contains(keys::debug_handle));
    }
  }
  EXPECT_EQ(store.node_count(), expected);
  std::sort(all_ids.begin(), all_ids.end());
  EXPECT_EQ(std::adjacent_find(all_ids.begin(), all_ids.end()), all_ids.end()) << "a node id was reused";
  // Destroy everything from many threads at once.
  run_together(n_threads, [&](int t, std::barrier<>&) { kept[static_cast<std::size_t>(t)].clear(); });
  EXPECT_EQ(store.node_count(), 1u);
}

TEST(NoLossStress, ConcurrentInterningYieldsOneIdPerName) {
  const int n_threads = threads();
  const int names = static_cast<int>(rounds(2000));
  std::vector<std::vector<std::uint32_t>> ids(static_cast<std::size_t>(n_threads));
  run_together(n_threads, [&](int t, std::barrier<>&) {
    for (int i = 0; i < names; ++i) {
      // Threads walk the names in different orders, so first sightings race.
      const int j = t % 2 == 0 ? i : names - 1 - i;
      ids[static_cast<std::size_t>(t)].push_back(Key("intern_race_" + std::to_string(j)).id());
    }
  });
  for (int t = 1; t < n_threads; ++t) {
    auto a = ids[0], b = ids[static_cast<std::size_t>(t)];
    if (t % 2 == 1) std::reverse(b.begin(), b.end());
    EXPECT_EQ(a, b) << "thread " << t << " got other ids";
  }
  for (int i = 0; i < names; ++i) {
    const Key k("intern_race_" + std::to_string(i));
    EXPECT_EQ(k.id(), ids[0][static_cast<std::size_t>(i)]);
    EXPECT_EQ(k.name(), "intern_race_" + std::to_string(i));
  }
}

}  // namespace
}  // namespace nodemeta::test
