// Callbacks may call anything (issue 21 item 6): update()/edit() callbacks hold no lock, so
// a callback may run oneTBB algorithms and task_group waits whose tasks write other nodes
// or this one; the result is one documented outcome, never a hang or a partial refusal.
// Reproducers 02 and 03 (`self`) and the earlier review's r9b case, as tests.
#include <gtest/gtest.h>

#include <atomic>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <oneapi/tbb/global_control.h>
#include <oneapi/tbb/parallel_for.h>
#include <oneapi/tbb/task_arena.h>
#include <oneapi/tbb/task_group.h>

#include "nodemeta/detail/record.h"
#include "nodemeta/nodemeta.h"

namespace nodemeta {
namespace {

// An ordinary helper that annotates a batch of nodes in parallel.
void annotate_all(std::vector<NodeMetadata>& nodes, std::int64_t tag) {
  tbb::parallel_for(std::size_t{0}, nodes.size(), [&](std::size_t i) { nodes[i].set("tag", tag); });
}

// Reproducer 02. Before: ReentrancyError in 200 of 200 rounds, after workers had written
// part of the other nodes (the chunks run on the callback's thread were refused).
TEST(CallbacksTest, ANestedParallelForWritingOtherNodesAlwaysSucceeds) {
  MetadataStore store;
  NodeMetadata owner = store.create();
  std::vector<NodeMetadata> others;
  for (int i = 0; i < 256; ++i) others.push_back(store.create());
  for (std::int64_t round = 0; round < 40; ++round) {
    ASSERT_NO_THROW(owner.update("round", [&](std::optional<Value>) {
      annotate_all(others, round);
      return Value(round);
    })) << "round " << round;
    int written = 0;
    for (auto& n : others) written += n.get("tag") == Value(round);
    ASSERT_EQ(written, 256) << "round " << round;
    ASSERT_EQ(owner["round"].as<std::int64_t>(), round);
  }
}

// Reproducer 03 `self`: the callback's nested tasks write other keys of the callback's own
// node. Before: hung in the first rounds (a worker's chunk waited for the lock the callback
// held while the callback waited for that chunk). Now every round commits.
TEST(CallbacksTest, NestedTasksWritingTheCallbacksOwnNodeFinish) {
  tbb::global_control gc(tbb::global_control::max_allowed_parallelism, 8);
  tbb::task_arena arena(8);
  MetadataStore store;
  NodeMetadata a = store.create();
  for (int round = 0; round < 20; ++round) {
    arena.execute([&] {
      const Value got = a.update("round", [&](std::optional<Value>) {
        tbb::parallel_for(0, 64, [&](int i) { a.set("seen_" + std::to_string(i % 4), i); });
        a.edit([](NodeEditor& e) { e.set("edited", 1); });  // an edit of the same node too
        return Value(round);
      });
      EXPECT_EQ(got.as<std::int64_t>(), round);
    });
  }
  EXPECT_EQ(a["round"].as<std::int64_t>(), 19);
  for (int k = 0; k < 4; ++k) EXPECT_TRUE(a.contains("seen_" + std::to_string(k)));
}

// The r9b case: a task the callback hands to a task_group, which oneTBB runs on the
// callback's own thread during wait(), writes other nodes and another key of this node.
// Before: ReentrancyError though nothing nests. At 1 thread the task always runs here.
TEST(CallbacksTest, AFollowUpTaskRunOnTheCallbacksThreadMayWrite) {
  MetadataStore store;
  NodeMetadata a = store.create({{"n", 0}});
  NodeMetadata b = store.create();
  int rounds = 0;
  for (int threads : {1, 2}) {
    tbb::task_arena arena(threads);
    for (int r = 0; r < 20; ++r, ++rounds) {
      EXPECT_NO_THROW(arena.execute([&] {
        a.update("n", [&](std::optional<Value> old) {
          tbb::task_group g;
          g.run([&] { b.set("from_task", r); });
          g.run([&] { a.set("other_key", r); });
          g.wait();
          return Value(old->as<std::int64_t>() + 1);
        });
      })) << "threads " << threads << " round " << r;
    }
  }
  EXPECT_EQ(a["n"].as<std::int64_t>(), rounds);
  EXPECT_EQ(b["from_task"].as<std::int64_t>(), 19);
  EXPECT_EQ(a["other_key"].as<std::int64_t>(), 19);
}

// A callback whose nested tasks write the very key it updates can never commit: it ends
// with ReentrancyError (the chunks parallel_for runs on the callback's own thread write it,
// so the first run already shows the conflict as its own), never a hang, and the node keeps
// what the tasks wrote.
TEST(CallbacksTest, NestedTasksWritingTheUpdatedKeyEndWithReentrancyError) {
  MetadataStore store;
  NodeMetadata a = store.create({{"k", -1}});
  for (int round = 0; round < 10; ++round) {
    int runs = 0;
    EXPECT_THROW(a.update("k", [&](std::optional<Value>) {
      ++runs;
      // Values no earlier round left: the key never ends up as the run read it.
      tbb::parallel_for(0, 64, [&](int i) { a.set("k", round * 100 + i); });
      return Value(-2);
    }),
                 ReentrancyError);
    EXPECT_EQ(runs, 1);
    const std::int64_t k = a["k"].as<std::int64_t>();
    EXPECT_TRUE(k >= round * 100 && k < round * 100 + 64) << k;
  }
}

// A callback may run more than once: when another thread changes what it read, it runs
// again on the new value, and the value it returns last is the one stored.
TEST(CallbacksTest, AnUpdateRerunsWhenAnotherThreadChangedItsKey) {
  MetadataStore store;
  NodeMetadata a = store.create({{"k", 1}});
  std::vector<std::int64_t> seen;
  const Value got = a.update("k", [&](std::optional<Value> old) {
    seen.push_back(old->as<std::int64_t>());
    if (seen.size() == 1) {
      std::thread([&] { a.set("k", 10); }).join();  // another thread's write meanwhile
    }
    return Value(old->as<std::int64_t>() + 1);
  });
  EXPECT_EQ(got.as<std::int64_t>(), 11);
  EXPECT_EQ(seen, (std::vector<std::int64_t>{1, 10}));
  EXPECT_EQ(a["k"].as<std::int64_t>(), 11);
  // Another key of the node changing does not rerun an update...
  int runs = 0;
  (void)a.update("k", [&](std::optional<Value> old) {
    ++runs;
    std::thread([&] { a.set("other", 1); }).join();
    return *old;
  });
  EXPECT_EQ(runs, 1);
  // ...but does rerun an edit, which validates the whole node.
  runs = 0;
  a.edit([&](NodeEditor& e) {
    if (++runs == 1) std::thread([&] { a.set("other", 2); }).join();
    e.set("k", e["other"]);
  });
  EXPECT_EQ(runs, 2);
  EXPECT_EQ(a["k"].as<std::int64_t>(), 2);
}

// Review finding 03: a callback whose work destroys the callback's own node on another
// thread (a helper thread it joins, a task_group task it waits for). Before: remove()
// flagged only the destroying thread's callbacks, and the update()/edit() went on to lock
// the freed node (heap-use-after-free under asan, a crash in release builds). Now the node
// stays allocated until the last call running on it returns: the call throws
// std::logic_error, commits nothing, and the node is gone from the store afterwards.
TEST(CallbacksTest, ANodeDestroyedOnAnotherThreadInsideItsCallbackIsAClearError) {
  MetadataStore store;
  for (int round = 0; round < 20; ++round) {
    const bool task = round % 2 == 1;
    const bool edit = round % 4 >= 2;
    NodeMetadata h = store.create({{"k", 1}});
    auto destroy = [&] {
      if (task) {
        tbb::task_group g;
        g.run([&] { NodeMetadata gone = std::move(h); });
        g.wait();
      } else {
        std::thread([&] { NodeMetadata gone = std::move(h); }).join();
      }
    };
    try {
      if (edit) {
        h.edit([&](NodeEditor& e) {
          destroy();
          e.set("k", 2);
        });
      } else {
        (void)h.update("k", [&](std::optional<Value> v) {
          destroy();
          return *v;
        });
      }
      ADD_FAILURE() << "round " << round << ": no logic_error";
    } catch (const std::logic_error& e) {
      EXPECT_NE(std::string(e.what()).find("destroyed inside its own"), std::string::npos) << e.what();
    }
    EXPECT_EQ(store.node_count(), 0U) << "round " << round;
  }
}

// The node's capacity shares a word with the count of calls running on it (NodeState::aux):
// a callback that grows its own node many times (each growth changes the capacity field)
// leaves the count exact, so the node is erased by its handle afterwards, or, destroyed
// inside the callback, by the call when it returns.
TEST(CallbacksTest, ANodeGrowingInsideItsOwnCallbackKeepsItsCallCount) {
  MetadataStore store;
  for (const bool destroy : {false, true}) {
    NodeMetadata h = store.create({{"k", 1}});
    const auto grow = [&] {
      for (int i = 0; i < 300; ++i) h.set("grown." + std::to_string(i), i);
    };
    if (!destroy) {
      EXPECT_EQ(h.update("k", [&](std::optional<Value> v) {
                  grow();
                  return Value(v->as<std::int64_t>() + 1);
                }).as<std::int64_t>(),
                2);
      EXPECT_EQ(h.size(), 301U);
      EXPECT_EQ(h.get("grown.299")->as<std::int64_t>(), 299);
      { NodeMetadata gone = std::move(h); }
    } else {
      EXPECT_THROW((void)h.update("k", [&](std::optional<Value> v) {
                     grow();
                     std::thread([&] { NodeMetadata gone = std::move(h); }).join();
                     return *v;
                   }),
                   std::logic_error);
    }
    EXPECT_EQ(store.node_count(), 0U) << "destroy=" << destroy;
  }
}

// The same under contention: one thread grows a node while others run update() on it; the
// counts and the capacity, all in one word, stay exact (the node ends with every key, and
// is erased when its handle goes).
TEST(CallbacksTest, GrowthAndRunningCallsShareTheNodesWordUnderContention) {
  MetadataStore store;
  for (int round = 0; round < 50; ++round) {
    NodeMetadata h = store.create({{"n", 0}});
    constexpr int kUpdaters = 3;
    constexpr int kIncrements = 200;
    std::atomic<int> ready{0};
    std::vector<std::thread> threads;
    threads.emplace_back([&] {
      ready.fetch_add(1);
      while (ready.load() < kUpdaters + 1) {
      }
      for (int i = 0; i < 200; ++i) h.set("g." + std::to_string(i), i);
    });
    for (int t = 0; t < kUpdaters; ++t) {
      threads.emplace_back([&] {
        ready.fetch_add(1);
        while (ready.load() < kUpdaters + 1) {
        }
        for (int i = 0; i < kIncrements; ++i) {
          (void)h.update("n", [](std::optional<Value> v) { return Value(v->as<std::int64_t>() + 1); });
        }
      });
    }
    for (auto& t : threads) t.join();
    EXPECT_EQ(h.get("n")->as<std::int64_t>(), kUpdaters * kIncrements) << "round " << round;
    EXPECT_EQ(h.size(), 201U) << "round " << round;
    { NodeMetadata gone = std::move(h); }
    EXPECT_EQ(store.node_count(), 0U) << "round " << round;
  }
}

// The same from a nested call: the inner update() sees the node destroyed and throws; the
// outer one, the last call on the node, erases it when the exception leaves it.
TEST(CallbacksTest, ANodeDestroyedInsideNestedCallbacksIsErasedByTheOutermost) {
  MetadataStore store;
  NodeMetadata h = store.create({{"k", 1}, {"j", 1}});
  EXPECT_THROW((void)h.update("k", [&](std::optional<Value> v) {
                 (void)h.update("j", [&](std::optional<Value> w) {
                   std::thread([&] { NodeMetadata gone = std::move(h); }).join();
                   EXPECT_EQ(store.node_count(), 1U);  // still allocated: two calls run on it
                   return *w;
                 });
                 return *v;
               }),
               std::logic_error);
  EXPECT_EQ(store.node_count(), 0U);
}

// Review finding 02: a starved callback (outrun kPoliteAfter = 32 times) asks the writers of
// its own node to defer to it, and no others. Before: the request was counted per 64-slot
// hash of the node's address, shared by every store, so writers of about 1 node in 64
// deferred up to 2 ms per write. Deferrals are counted by detail::write_deferrals().
TEST(CallbacksTest, AStarvedCallbackDefersOnlyTheWritersOfItsOwnNode) {
  MetadataStore store;
  MetadataStore other_store;
  NodeMetadata a = store.create({{"k", 0}});
  std::vector<NodeMetadata> others;
  for (int i = 0; i < 500; ++i) {
    others.push_back(store.create({{"x", i}}));
    others.push_back(other_store.create({{"x", i}}));
  }
  int runs = 0;
  std::uint64_t during_unrelated = 0;
  const std::uint64_t before = detail::write_deferrals();
  (void)a.update("k", [&](std::optional<Value> old) {
    ++runs;
    if (runs == 36) {  // starved: a's other writers defer to this call
      const std::uint64_t d0 = detail::write_deferrals();
      for (NodeMetadata& n : others) n.set("x", runs);
      during_unrelated = detail::write_deferrals() - d0;
    }
    if (runs < 40) std::thread([&] { a.set("k", runs); }).join();  // outruns this run
    return *old;
  });
  EXPECT_EQ(runs, 40);
  EXPECT_EQ(during_unrelated, 0U);
  // The helper's writes of a itself, from run 32 on, did defer (the hook counts).
  EXPECT_GE(detail::write_deferrals() - before, 7U);
}

// Review finding 05: update(k) whose callback edit()s only another key of the same node.
// Before: the inner edit() marked every callback on the node as having written what it
// read, so the first failed commit (another thread wrote k) threw ReentrancyError instead of
// running the callback again. Now an edit() marks only the update()s whose key it changed.
TEST(CallbacksTest, AnInnerEditOfAnotherKeyDoesNotFailTheUpdate) {
  MetadataStore store;
  NodeMetadata a = store.create({{"k", 0}, {"j", 0}});
  int runs = 0;
  const Value got = a.update("k", [&](std::optional<Value> v) {
    ++runs;
    a.edit([&](NodeEditor& e) { e.set("j", runs); });  // only j
    if (runs == 1) std::thread([&] { a.set("k", 10); }).join();
    return Value(v->as<std::int64_t>() + 1);
  });
  EXPECT_EQ(runs, 2);
  EXPECT_EQ(got.as<std::int64_t>(), 11);
  EXPECT_EQ(a["j"].as<std::int64_t>(), 2);
  // An inner edit() that does change k still makes the update a ReentrancyError.
  EXPECT_THROW((void)a.update("k", [&](std::optional<Value> v) {
                 a.edit([&](NodeEditor& e) { e.set("k", 100); });
                 return *v;
               }),
               ReentrancyError);
  EXPECT_EQ(a["k"].as<std::int64_t>(), 100);
}

}  // namespace
}  // namespace nodemeta
