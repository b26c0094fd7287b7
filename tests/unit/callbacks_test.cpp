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

}  // namespace
}  // namespace nodemeta
