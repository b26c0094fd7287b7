// PassContext's journal under contention (label stress): thousands of rounds in which T
// threads, released together by a barrier, write and erase keys of the same few graph
// nodes through one PassContext. Every thread's first write of a round lands on node 0, so
// the threads race to install its NodeLog (the CAS in PassContext::log_for); after that
// they contend on the per-node journal locks, mixing first changes with later ones. Then one
// thread calls undo(): every node must hold exactly what it held before the round, and no
// key may be reported lost. Every fourth round commits instead, and the nodes must then hold
// what the last writes left (checked by the key count only: which thread wrote last is the
// race). Run under asan and tsan too (docs/design.md, "Failing allocations on purpose").
#include <algorithm>
#include <cstdint>
#include <optional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "nodemeta/graph/graph.h"
#include "nodemeta/passes/driver.h"
#include "support/stress.h"

namespace nodemeta::test {
namespace {

TEST(PassJournalStress, UndoRestoresEveryNodeAfterRacingWrites) {
  const int n_threads = threads();
  constexpr int kNodes = 4;
  constexpr int kKeys = 6;
  constexpr int kOpsPerThread = 24;
  RoundBudget budget(2000);
  const std::uint64_t seed = test_seed();
  std::vector<Key> keys;
  for (int k = 0; k < kKeys; ++k) keys.emplace_back("journal_k" + std::to_string(k));

  std::unique_ptr<graph::Graph> g;
  std::unique_ptr<passes::PassContext> ctx;
  std::vector<Items> before;
  bool stop = false;
  std::uint64_t round = 0, undone = 0, committed = 0;

  run_together(n_threads, [&](int t, std::barrier<>& sync) {
    for (;;) {
      if (t == 0) {
        stop = !budget.next();
        if (!stop) {
          ctx.reset();
          g = std::make_unique<graph::Graph>();
          std::mt19937_64 rng(seed + round);
          for (int n = 0; n < kNodes; ++n) {
            std::vector<KeyValue> meta;
            for (int k = 0; k < kKeys; ++k) {
              if (rng() % 2 == 0) meta.emplace_back(keys[static_cast<std::size_t>(k)], Value(static_cast<std::int64_t>(rng() % 100)));
            }
            g->add_node("n" + std::to_string(n), "placeholder", "n" + std::to_string(n), {}, meta);
          }
          before.clear();
          for (int n = 0; n < kNodes; ++n) before.push_back(g->node(static_cast<std::size_t>(n)).meta.items());
          ctx = std::make_unique<passes::PassContext>(*g, nullptr, "stress");
        }
      }
      sync.arrive_and_wait();
      if (stop) return;
      std::mt19937_64 rng(seed ^ (round * 1000003 + static_cast<std::uint64_t>(t)));
      for (int j = 0; j < kOpsPerThread; ++j) {
        const std::size_t n = j == 0 ? 0 : rng() % kNodes;  // all race on node 0's log first
        const Key key = keys[rng() % kKeys];
        NodeMetadata& m = g->node(n).meta;
        if (rng() % 4 == 0) {
          ctx->erase(m, key);
        } else {
          ctx->write(m, key, Value(static_cast<std::int64_t>(1000 + t)));
        }
      }
      sync.arrive_and_wait();
      if (t == 0) {
        if (round % 4 == 3) {
          ctx->commit();
          EXPECT_EQ(ctx->undo(), 0U);  // nothing journaled any more
          ++committed;
        } else {
          EXPECT_EQ(ctx->undo(), 0U) << "round " << round;
          for (int n = 0; n < kNodes; ++n) {
            ASSERT_EQ(g->node(static_cast<std::size_t>(n)).meta.items(), before[static_cast<std::size_t>(n)])
                << "round " << round << ", node " << n << " (NODEMETA_STRESS_SEED=" << seed << ")";
          }
          ++undone;
        }
        ++round;
      }
    }
  });
  ctx.reset();
  std::cout << "[ journal  ] " << round << " rounds (" << undone << " undone, " << committed << " committed), "
            << n_threads << " threads\n";
  EXPECT_GT(undone, 0U);
}

// Undo against another writer (reproducer core/08, raced): T-1 threads write and erase a
// node's keys through one PassContext while one more thread writes the same keys through a
// view of the node. After both stop, undo() must put back the keys that still hold what the
// pass left there (to what they held when the pass first changed them: the value before the
// round, or one the other writer stored before that), leave every other key as the other
// writer left it, and count only those as not put back. Pass values are 0-999, the other writer's 1000-1999, the values
// before the round 2000 and up.
TEST(PassJournalStress, UndoKeepsAnotherWritersLaterWork) {
  const int n_threads = std::max(threads(), 2);
  constexpr int kKeys = 6;
  constexpr int kOpsPerThread = 24;
  RoundBudget budget(2000);
  const std::uint64_t seed = test_seed();
  std::vector<Key> keys;
  for (int k = 0; k < kKeys; ++k) keys.emplace_back("journal_o" + std::to_string(k));

  std::unique_ptr<graph::Graph> g;
  std::unique_ptr<passes::PassContext> ctx;
  std::vector<std::optional<Value>> before(kKeys);
  bool stop = false;
  std::uint64_t round = 0, kept_total = 0;

  run_together(n_threads, [&](int t, std::barrier<>& sync) {
    for (;;) {
      if (t == 0) {
        stop = !budget.next();
        if (!stop) {
          ctx.reset();
          g = std::make_unique<graph::Graph>();
          std::mt19937_64 rng(seed + round);
          std::vector<KeyValue> meta;
          for (int k = 0; k < kKeys; ++k) {
            if (rng() % 2 == 0) meta.emplace_back(keys[static_cast<std::size_t>(k)], Value(static_cast<std::int64_t>(2000 + k)));
          }
          g->add_node("n", "placeholder", "n", {}, meta);
          for (int k = 0; k < kKeys; ++k) before[static_cast<std::size_t>(k)] = g->node(0).meta.get(keys[static_cast<std::size_t>(k)]);
          ctx = std::make_unique<passes::PassContext>(*g, nullptr, "stress");
        }
      }
      sync.arrive_and_wait();
      if (stop) return;
      std::mt19937_64 rng(seed ^ (round * 1000003 + static_cast<std::uint64_t>(t)));
      for (int j = 0; j < kOpsPerThread; ++j) {
        const Key key = keys[rng() % kKeys];
        if (t == n_threads - 1) {  // the other writer, through a view
          NodeMetadata other = g->node(0).meta.view();
          other.set(key, Value(static_cast<std::int64_t>(1000 + j)));
        } else if (rng() % 4 == 0) {
          ctx->erase(g->node(0).meta, key);
        } else {
          ctx->write(g->node(0).meta, key, Value(static_cast<std::int64_t>(t)));
        }
      }
      sync.arrive_and_wait();
      if (t == 0) {
        NodeMetadata& m = g->node(0).meta;
        std::vector<std::optional<Value>> left(kKeys);
        for (int k = 0; k < kKeys; ++k) left[static_cast<std::size_t>(k)] = m.get(keys[static_cast<std::size_t>(k)]);
        const std::size_t lost = ctx->undo();
        std::size_t kept = 0;
        for (int k = 0; k < kKeys; ++k) {
          const auto ku = static_cast<std::size_t>(k);
          const std::optional<Value> now = m.get(keys[ku]);
          const bool others = left[ku].has_value() && left[ku]->as<std::int64_t>() >= 1000 &&
                              left[ku]->as<std::int64_t>() < 2000;
          if (others) {  // the other writer's value: stays
            ++kept;
            EXPECT_EQ(now, left[ku]) << "round " << round << ", key " << k << " (NODEMETA_STRESS_SEED=" << seed << ")";
          } else if (left[ku] != before[ku]) {
            // The pass's value, or erased by the pass: put back to what the key held when
            // the pass first changed it, which is the value before the round or one the
            // other writer stored before that.
            const bool put_back = now == before[ku] || (now.has_value() && now->as<std::int64_t>() >= 1000 &&
                                                        now->as<std::int64_t>() < 2000);
            EXPECT_TRUE(put_back) << "left " << (left[ku] ? left[ku]->repr() : std::string("absent")) << ", now "
                                  << (now ? now->repr() : std::string("absent")) << ", round " << round << ", key "
                                  << k << " (NODEMETA_STRESS_SEED=" << seed << ")";
          }
        }
        // Every kept key the pass had changed is counted (the other writer may have written a
        // key the pass never touched: not counted). So lost <= kept, and a key counted was kept.
        EXPECT_LE(lost, kept) << "round " << round;
        kept_total += kept;
        ++round;
      }
    }
  });
  ctx.reset();
  std::cout << "[ journal  ] " << round << " rounds, " << kept_total << " of the other writer's keys kept, "
            << n_threads << " threads\n";
}

}  // namespace
}  // namespace nodemeta::test
