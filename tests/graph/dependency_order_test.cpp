// for_each_in_dependency_order (driven by pending-input counts, no level barrier; forced
// with min_parallelism 0 where a test needs the parallel schedule, which the default keeps
// for graphs whose dependencies leave >= 2x) and available_parallelism: inputs always first,
// with the inputs' writes visible (plain writes, so TSAN checks the schedule's happens-before
// edges), every node once, a throw stops the nodes that depend on it; the pipeline's results
// identical at 1, 2, 3 and 8 threads, and the parallel schedule's on the large graph too.
// The large graph (data/graphs/gpt2_deep_train_aten.json.gz, 18,267 nodes) runs whole in the
// debug and release presets; under ASAN and TSAN its first 4,000 nodes (a prefix of a
// topologically ordered graph is a graph), to keep those runs short.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include <oneapi/tbb/global_control.h>
#include <oneapi/tbb/task_arena.h>

#include "nodemeta/graph/graph_io.h"
#include "nodemeta/passes/passes.h"

namespace nodemeta::passes {
namespace {

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr std::size_t kLargeGraphNodes = 4000;
#else
constexpr std::size_t kLargeGraphNodes = SIZE_MAX;  // all of it
#endif

// A random DAG: node i reads up to `fan_in` earlier nodes (some twice), a few of them far back.
graph::Graph random_dag(std::size_t n, std::size_t fan_in, std::uint64_t seed) {
  graph::Graph g;
  std::mt19937_64 rng(seed);
  for (std::size_t i = 0; i < n; ++i) {
    std::vector<std::size_t> in;
    if (i > 0 && rng() % 8 != 0) {  // one in eight is a root
      const std::size_t k = 1 + rng() % fan_in;
      for (std::size_t j = 0; j < k; ++j) in.push_back(i - 1 - rng() % std::min<std::size_t>(i, j == 0 ? 3 : i));
      in.push_back(in.front());  // a duplicate input counts once
    }
    g.add_node("n" + std::to_string(i), i == 0 ? "placeholder" : "call_function", "f", std::move(in), {});
  }
  return g;
}

TEST(DependencyOrderTest, InputsRunFirstAndTheirWritesAreVisible) {
  const graph::Graph g = random_dag(5000, 4, 7);
  tbb::global_control allow(tbb::global_control::max_allowed_parallelism, 8);
  for (int threads : {1, 2, 3, 8}) {
    for (int round = 0; round < 5; ++round) {
      // Plain (non-atomic) ints: a read of an input's value that is not ordered after its
      // write is a data race TSAN reports, and a wrong value here.
      std::vector<std::int64_t> value(g.size(), -1);
      std::vector<int> runs(g.size(), 0);
      std::atomic<int> bad{0};
      tbb::task_arena(threads).execute([&] {
        for_each_in_dependency_order(
            g,
            [&](std::size_t i) {
              std::int64_t v = 1;
              for (std::size_t j : g.node(i).inputs) {
                if (value[j] < 0) bad.fetch_add(1, std::memory_order_relaxed);
                v = std::max(v, value[j] + 1);
              }
              value[i] = v;
              ++runs[i];
            },
            /*min_parallelism=*/round == 4 ? kDependencyMinParallelism : 0.0);
      });
      EXPECT_EQ(bad.load(), 0) << threads << " threads";
      const std::vector<std::size_t> levels = g.levels();
      for (std::size_t i = 0; i < g.size(); ++i) {
        ASSERT_EQ(runs[i], 1) << "node " << i << ", " << threads << " threads";
        ASSERT_EQ(value[i], static_cast<std::int64_t>(levels[i]) + 1) << "node " << i;
      }
    }
  }
}

TEST(DependencyOrderTest, EmptyAndRootOnlyGraphs) {
  graph::Graph empty;
  int calls = 0;
  for_each_in_dependency_order(empty, [&](std::size_t) { ++calls; });
  EXPECT_EQ(calls, 0);
  graph::Graph roots;
  for (int i = 0; i < 100; ++i) roots.add_node("r" + std::to_string(i), "placeholder", "r", {}, {});
  std::atomic<int> seen{0};
  for_each_in_dependency_order(roots, [&](std::size_t) { seen.fetch_add(1); });
  EXPECT_EQ(seen.load(), 100);
}

class DependencyOrderThrowTest : public ::testing::TestWithParam<double> {};

TEST_P(DependencyOrderThrowTest, AThrowStopsWhatDependsOnIt) {
  const graph::Graph g = random_dag(3000, 3, 11);
  const std::size_t bad_node = 1500;
  std::vector<std::atomic<int>> ran(g.size());
  tbb::global_control allow(tbb::global_control::max_allowed_parallelism, 4);
  tbb::task_arena(4).execute([&] {
    EXPECT_THROW(for_each_in_dependency_order(
                     g,
                     [&](std::size_t i) {
                       if (i == bad_node) throw std::runtime_error("node 1500");
                       ran[i].store(1);
                     },
                     GetParam()),
                 std::runtime_error);
  });
  // Every node that reads bad_node (directly or not) never ran.
  std::vector<char> downstream(g.size(), 0);
  downstream.at(bad_node) = 1;
  std::size_t below = 0;
  for (std::size_t i = bad_node + 1; i < g.size(); ++i) {
    for (std::size_t j : g.node(i).inputs) downstream[i] = downstream[i] || downstream[j];
    if (downstream[i]) {
      ++below;
      EXPECT_EQ(ran[i].load(), 0) << "node " << i << " reads the node that threw";
    }
  }
  EXPECT_GT(below, 10u);  // the check above checked something
}

// 0: the parallel schedule; 1e9: the calling thread, in index order.
INSTANTIATE_TEST_SUITE_P(Schedules, DependencyOrderThrowTest, ::testing::Values(0.0, 1e9));

TEST(DependencyOrderTest, ARandomDagLeavesParallelismTheDefaultUses) {
  // The random DAG's reads reach far back: its dependencies leave more than 2x, so the
  // default takes the parallel schedule there (the test above then tests it).
  EXPECT_GE(available_parallelism(random_dag(5000, 4, 7)).by_work(), kDependencyMinParallelism);
}

TEST(DependencyOrderTest, AvailableParallelism) {
  // a -> b -> d, a -> c -> d, e alone: work = 1 + 2 + 2 + 3 + 1 = 9; the longest path
  // a, b, d has work 1 + 2 + 3 = 6; depth 3.
  graph::Graph g;
  g.add_node("a", "placeholder", "a", {}, {});
  g.add_node("b", "call_function", "f", {0}, {});
  g.add_node("c", "call_function", "f", {0}, {});
  g.add_node("d", "call_function", "f", {1, 2}, {});
  g.add_node("e", "placeholder", "e", {}, {});
  const Parallelism p = available_parallelism(g);
  EXPECT_EQ(p.nodes, 5u);
  EXPECT_EQ(p.depth, 3u);
  EXPECT_EQ(p.work, 9u);
  EXPECT_EQ(p.span, 6u);
  EXPECT_DOUBLE_EQ(p.by_work(), 1.5);
  EXPECT_DOUBLE_EQ(p.by_nodes(), 5.0 / 3.0);
  EXPECT_EQ(available_parallelism(graph::Graph()).by_work(), 0.0);
}

// The large graph (or its first kLargeGraphNodes nodes) as loaded.
graph::Graph large_graph() {
  graph::Graph whole = graph::load_graph(NODEMETA_LARGE_GRAPH);
  if (whole.size() <= kLargeGraphNodes) return whole;
  graph::Graph part;
  part.attrs() = whole.attrs();
  for (std::size_t i = 0; i < kLargeGraphNodes; ++i) {
    const graph::Node& n = whole.node(i);
    std::vector<KeyValue> meta;
    for (auto& [k, v] : n.meta.items()) meta.emplace_back(Key(k), std::move(v));
    part.add_node(n.name, n.op, n.target, n.inputs, meta);
  }
  return part;
}

TEST(DependencyOrderTest, ParallelScheduleOnTheLargeGraphIdenticalAt1_2_3And8Threads) {
  // Depth and the longest path's work per node, as propagate computes them, through the
  // parallel schedule (forced: the large graph leaves 1.44x, below the default's 2x).
  const graph::Graph g = large_graph();
  tbb::global_control allow(tbb::global_control::max_allowed_parallelism, 8);
  std::vector<std::int64_t> reference;
  for (int threads : {1, 2, 3, 8}) {
    for (int round = 0; round < 3; ++round) {
      std::vector<std::int64_t> depth(g.size(), -1), path(g.size(), -1);
      tbb::task_arena(threads).execute([&] {
        for_each_in_dependency_order(
            g,
            [&](std::size_t i) {
              std::int64_t d = 0, w = 0;
              for (std::size_t j : g.node(i).inputs) {
                d = std::max(d, depth[j] + 1);
                w = std::max(w, path[j]);
              }
              depth[i] = d;
              path[i] = w + 1 + static_cast<std::int64_t>(g.node(i).inputs.size());
            },
            0.0);
      });
      depth.insert(depth.end(), path.begin(), path.end());
      if (reference.empty()) {
        reference = depth;
        const std::vector<std::size_t> levels = g.levels();
        for (std::size_t i = 0; i < g.size(); ++i) ASSERT_EQ(reference[i], static_cast<std::int64_t>(levels[i]));
      }
      EXPECT_EQ(depth, reference) << threads << " threads, round " << round;
    }
  }
}

TEST(DependencyOrderTest, PipelineIdenticalAt1_2_3And8Threads) {
  const graph::Graph loaded = large_graph();
  ASSERT_GT(loaded.size(), 1000u);
  const Baseline base(loaded);
  tbb::global_control allow(tbb::global_control::max_allowed_parallelism, 8);
  graph::Graph reference;
  for (int threads : {1, 2, 3, 8}) {
    graph::Graph g = loaded.clone();
    std::vector<PassStats> stats;
    tbb::task_arena(threads).execute([&] { stats = run_pipeline(g, pass_names(), base); });
    ASSERT_TRUE(stats.back().problems.empty()) << stats.back().problems.front();
    for (std::size_t i = 0; i < g.size(); ++i) ASSERT_TRUE(g.node(i).meta.contains("critical_path_flops")) << i;
    if (threads == 1) {
      reference = std::move(g);
      continue;
    }
    // Every node's metadata, key by key (Value deep equality), and the structure.
    EXPECT_EQ(graph::first_difference(reference, g), "") << threads << " threads against 1";
  }
}

}  // namespace
}  // namespace nodemeta::passes
