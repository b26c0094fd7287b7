// Linearizability of every single-node operation (and store.protect) under real threads:
// thousands of small random histories (2-4 threads, 2-4 operations each, one node), each
// recorded with invocation/response times from one shared atomic clock and checked against
// the sequential specification (the reference model) by tests/support/linearizability.h.
// A history that no legal order explains fails the test and is printed.
#include <atomic>
#include <optional>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include <gtest/gtest.h>
#include <nodemeta/nodemeta.h>

#include "support/linearizability.h"
#include "support/random_ops.h"
#include "support/stress.h"

namespace nodemeta::test {
namespace {

// Keys: two plain ones, one the store protects from the start, one that a history may
// protect at run time.
const char* const kKeys[] = {"a", "b", "val", "p"};

// Small value and key domains, so operations collide; store.protect of "p" at run time.
constexpr std::pair<OpKind, int> kKinds[] = {
    {OpKind::kGet, 1},       {OpKind::kAt, 1},          {OpKind::kContains, 1}, {OpKind::kSize, 1},
    {OpKind::kItems, 1},     {OpKind::kSet, 1},         {OpKind::kTrySet, 1},   {OpKind::kSetOnce, 1},
    {OpKind::kErase, 1},     {OpKind::kUpdateAdd, 2},   {OpKind::kUpdateThrow, 1}, {OpKind::kEdit, 2},
    {OpKind::kProtect, 1},   {OpKind::kIsProtected, 1}};
const OpMix kMix{.keys = kKeys,
                 .kinds = kKinds,
                 .ints = 3,
                 .max_delta = 3,
                 .max_steps = 3,
                 .step_ints = 3,
                 .throw_one_in = 4,
                 .protect_key = "p"};

TEST(LinearizabilityStress, RandomSingleNodeHistoriesAreLinearizable) {
  const std::uint64_t seed = test_seed();
  const int max_threads = std::min(threads(), 4);
  RoundBudget budget(5000);
  std::mt19937_64 rng(seed);
  std::atomic<std::uint64_t> clock{1};

  std::optional<MetadataStore> store;
  std::optional<NodeMetadata> node;
  ModelStore model_store;
  ModelNode model_node;
  std::vector<std::vector<Op>> plan(static_cast<std::size_t>(max_threads));
  std::vector<std::vector<HistoryOp>> recorded(static_cast<std::size_t>(max_threads));
  SpinGate gate(max_threads);
  bool stop = false;
  std::uint64_t histories = 0, concurrent_histories = 0, failures = 0;
  // A history whose operations never overlapped tests nothing concurrent: past the round
  // budget, keep going (up to 10x) until at least this many did.
  constexpr std::uint64_t kMinOverlapping = 10;
  const std::uint64_t max_histories = 10 * rounds(5000);

  run_together(max_threads, [&](int t, std::barrier<>& sync) {
    for (;;) {
      if (t == 0) {
        // Plan the next history: a fresh store and node, 2..max_threads active threads.
        node.reset();
        store.reset();
        const bool budget_left = budget.next();
        const bool want_overlap = concurrent_histories < kMinOverlapping && histories < max_histories;
        stop = failures != 0 || (!budget_left && !want_overlap);
        if (!stop) {
          store.emplace();
          model_store = ModelStore{};
          model_node = ModelNode{};
          std::vector<KeyValue> init;
          if (rng() % 2) init.emplace_back(Key("val"), Value(9));
          if (rng() % 2) init.emplace_back(Key("a"), Value(0));
          if (rng() % 4 == 0) init.emplace_back(Key("p"), Value(5));
          for (const auto& [k, v] : init) model_node.kv[std::string(k.name())] = v;
          node.emplace(store->create(std::span<const KeyValue>(init)));
          const int active = 2 + static_cast<int>(rng() % static_cast<std::uint64_t>(max_threads - 1));
          for (int i = 0; i < max_threads; ++i) {
            plan[i].clear();
            recorded[i].clear();
            if (i >= active) continue;
            const int ops = 2 + static_cast<int>(rng() % 3);
            for (int k = 0; k < ops; ++k) plan[i].push_back(random_op(rng, kMix));
          }
        }
      }
      sync.arrive_and_wait();
      if (stop) return;
      gate.arrive_and_wait();  // spin so the threads' first operations overlap more often
      for (const Op& op : plan[t]) {
        HistoryOp h;
        h.thread = t;
        h.op = op;
        h.call = clock.fetch_add(1);
        h.outcome = apply_real(*store, *node, op);
        h.ret = clock.fetch_add(1);
        recorded[t].push_back(std::move(h));
      }
      sync.arrive_and_wait();
      if (t == 0) {
        std::vector<HistoryOp> history;
        for (auto& r : recorded) history.insert(history.end(), r.begin(), r.end());
        ++histories;
        // Count histories in which some two operations overlapped in time.
        bool overlap = false;
        for (const auto& x : history) {
          for (const auto& y : history) overlap |= x.thread != y.thread && x.call < y.ret && y.call < x.ret;
        }
        concurrent_histories += overlap;
        if (!check_linearizable(history, model_store, model_node).linearizable) {
          ++failures;
          ADD_FAILURE() << "non-linearizable history (seed " << seed << ", history " << histories
                        << ", initial node " << model_items(model_node) << "):\n"
                        << format_history(history);
        }
      }
    }
  });
  std::cout << "[ stats    ] " << histories << " histories checked, " << concurrent_histories
            << " with overlapping operations\n";
  if (std::thread::hardware_concurrency() > 1) {
    EXPECT_GT(concurrent_histories, 0u) << "no history had overlapping operations";
  }
}

}  // namespace
}  // namespace nodemeta::test
