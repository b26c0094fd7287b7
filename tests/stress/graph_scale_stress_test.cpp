// Graph scale (issue 3, stress 6): a 100,000-node store (NODEMETA_STRESS_NODES) driven by
// tbb::parallel_for through every operation (reads, set, try_set, set_once, erase, update,
// edit with and without throwing, copy, protect at run time between passes), then every
// node is checked exactly against its own oracle: the reference model of
// tests/support/node_ops.h fed the same operations. Several passes, each over a different
// permutation of the nodes, so neighbouring tasks touch unrelated parts of the map.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <oneapi/tbb/blocked_range.h>
#include <oneapi/tbb/parallel_for.h>

#include <gtest/gtest.h>
#include <nodemeta/nodemeta.h>

#include "support/node_ops.h"
#include "support/random_ops.h"
#include "support/stress.h"

namespace nodemeta::test {
namespace {

const char* const kKeys[] = {"val", "stack_trace", "debug_handle", "dtype", "flops", "users", "frozen"};

// fn(begin, end) over [0, n) in chunks of `grain`, with tbb::parallel_for (under the tsan
// preset, an instrumented oneTBB: TSAN sees its task hand-offs too).
template <class Fn>
void parallel_chunks(std::size_t n, std::size_t grain, Fn fn) {
  tbb::parallel_for(tbb::blocked_range<std::size_t>(0, n, grain),
                    [&](const tbb::blocked_range<std::size_t>& r) { fn(r.begin(), r.end()); });
}

// Node-level reads and writes only: no protect / is_protected, since protection changes
// only between passes (every node's oracle shares the store's protected keys).
constexpr std::pair<OpKind, int> kKinds[] = {
    {OpKind::kGet, 1},    {OpKind::kAt, 1},        {OpKind::kItems, 1},       {OpKind::kSet, 1},
    {OpKind::kTrySet, 1}, {OpKind::kSetOnce, 1},   {OpKind::kErase, 1},       {OpKind::kUpdateAdd, 2},
    {OpKind::kUpdateThrow, 1}, {OpKind::kEdit, 3}};
const OpMix kMix{.keys = kKeys,
                 .kinds = kKinds,
                 .ints = 100,
                 .strings = 10,
                 .max_delta = 5,
                 .max_steps = 3,
                 .step_ints = 9,
                 .throw_one_in = 5,
                 .protect_key = ""};  // no protect in this mix

TEST(GraphScaleStress, ParallelForOverAWholeGraphMatchesPerNodeOracles) {
  const std::uint64_t seed = test_seed();
  const std::size_t n_nodes = env_u64("NODEMETA_STRESS_NODES", kSanitized ? 10'000 : 100'000);
  const int passes = 3, ops_per_node = 4;

  MetadataStore store(StoreOptions{.expected_nodes = n_nodes});
  ModelStore model_store;
  std::vector<std::optional<NodeMetadata>> nodes(n_nodes);
  std::vector<ModelNode> oracle(n_nodes);
  // Created in parallel too.
  parallel_chunks(n_nodes, 256, [&](std::size_t begin, std::size_t end) {
    for (std::size_t i = begin; i != end; ++i) {
      const auto v = static_cast<std::int64_t>(i);
      nodes[i].emplace(store.create({{keys::val, Value::list({v, "fake"})}, {keys::debug_handle, v}, {"users", v % 7}}));
      oracle[i].kv = {{"val", Value::list({v, "fake"})}, {"debug_handle", Value(v)}, {"users", Value(v % 7)}};
    }
  });
  ASSERT_EQ(store.node_count(), n_nodes);

  std::atomic<std::uint64_t> mismatches{0}, copies{0};
  for (int pass = 0; pass < passes; ++pass) {
    if (pass == 1) {  // protection changes between passes: the oracle knows exactly when
      store.protect("frozen");
      model_store.protected_keys.insert("frozen");
    }
    std::vector<std::size_t> perm(n_nodes);
    std::iota(perm.begin(), perm.end(), std::size_t{0});
    std::shuffle(perm.begin(), perm.end(), std::mt19937_64(mix_seed(seed, 1000 + pass)));
    parallel_chunks(n_nodes, 64, [&](std::size_t begin, std::size_t end) {
      ModelStore ms = model_store;  // read-only during a pass (no op here protects)
      for (std::size_t j = begin; j != end; ++j) {
        const std::size_t i = perm[j];
        // Each node's operations come from its own stream: replayable whatever the schedule.
        SplitMix64 rng(mix_seed(seed, i * passes + static_cast<std::size_t>(pass)));
        NodeMetadata& node = *nodes[i];
        for (int k = 0; k < ops_per_node; ++k) {
          const Op op = random_op(rng, kMix);
          const std::string real = apply_real(store, node, op);
          const std::string model = apply_model(ms, oracle[i], op);
          if (real != model && mismatches.fetch_add(1) < 5) {
            ADD_FAILURE() << "node " << i << " pass " << pass << ": " << describe(op) << " -> " << real
                          << ", the model says " << model;
          }
        }
        if (rng() % 16 == 0) {  // a copy lives and dies inside the parallel_for
          NodeMetadata c = node.copy();
          copies.fetch_add(1);
          if (real_items(c) != model_items(oracle[i]) && mismatches.fetch_add(1) < 5) {
            ADD_FAILURE() << "node " << i << ": copy() differs from the oracle";
          }
        }
      }
    });
  }
  // Exact verification of every node.
  std::size_t checked = 0;
  for (std::size_t i = 0; i < n_nodes; ++i) {
    if (real_items(*nodes[i]) != model_items(oracle[i])) {
      ADD_FAILURE() << "node " << i << " is " << real_items(*nodes[i]) << ", the oracle says "
                    << model_items(oracle[i]);
      if (++checked > 5) break;
    }
  }
  EXPECT_EQ(mismatches.load(), 0u);
  EXPECT_EQ(store.node_count(), n_nodes);
  nodes.clear();
  EXPECT_EQ(store.node_count(), 0u);
  std::cout << "[ stats    ] " << n_nodes << " nodes x " << passes << " passes x " << ops_per_node
            << " ops, " << copies.load() << " copies, all nodes verified\n";
}

}  // namespace
}  // namespace nodemeta::test
