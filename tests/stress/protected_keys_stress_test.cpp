// Protected keys under contention (issue 3, stress 1): many threads hammer the same nodes
// with every write on the protected keys (set, try_set, erase, update, edit, set_once),
// interleaved with legitimate writes to other keys. After every round each protected value
// is exactly what it was (deep equality), no protected write succeeded, every rejected
// call reported its rejection, and the legitimate writes all landed (per-thread oracle).
#include <atomic>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nodemeta/nodemeta.h>

#include "support/stress.h"

namespace nodemeta::test {
namespace {

const Key kProtected[] = {keys::val, keys::stack_trace, keys::nn_module_stack, keys::debug_handle,
                          keys::tensor_meta};

Items initial_items(int i) {
  return {{"debug_handle", Value(i)},
          {"nn_module_stack", Value::dict({{"L__self__", Value::list({"mod", i})}})},
          {"stack_trace", Value("File \"model.py\", line " + std::to_string(i))},
          {"tensor_meta", Value::dict({{"shape", Value::list({i, 3})}, {"dtype", "f32"}})},
          {"val", Value::list({i, 2.5, "fake_tensor"})}};
}

TEST(ProtectedKeysStress, ProtectedValuesNeverChangeUnderContention) {
  const std::uint64_t seed = test_seed();
  const int n_threads = threads();
  constexpr int kNodes = 8;
  constexpr int kOpsPerRound = 200;
  RoundBudget budget(200);

  MetadataStore store;
  std::vector<NodeMetadata> nodes;
  for (int i = 0; i < kNodes; ++i) {
    std::vector<KeyValue> kv;
    for (const auto& [k, v] : initial_items(i)) kv.emplace_back(Key(k), v);
    nodes.push_back(store.create(std::span<const KeyValue>(kv)));
  }
  // Legitimate state: each thread owns key "own_<t>" on every node (oracle: last value it
  // wrote, or absent), and all threads increment the shared key "hits" of every node.
  std::vector<Key> own;
  for (int t = 0; t < n_threads; ++t) own.emplace_back("own_" + std::to_string(t));
  const Key hits("hits");
  std::vector<std::vector<std::optional<std::int64_t>>> own_oracle(
      static_cast<std::size_t>(n_threads), std::vector<std::optional<std::int64_t>>(kNodes));
  std::vector<std::atomic<std::int64_t>> hits_oracle(kNodes);

  std::atomic<std::uint64_t> protected_attempts{0}, rejections{0}, protected_successes{0};
  std::atomic<std::uint64_t> callback_runs{0};  // update callbacks run on a protected key
  bool stop = false;
  std::uint64_t round = 0;

  run_together(n_threads, [&](int t, std::barrier<>& sync) {
    std::mt19937_64 rng(mix_seed(seed, static_cast<std::uint64_t>(t)));
    auto pick = [&](int n) { return static_cast<int>(rng() % static_cast<std::uint64_t>(n)); };
    for (;;) {
      if (t == 0) stop = !budget.next();
      sync.arrive_and_wait();
      if (stop) return;
      for (int op = 0; op < kOpsPerRound; ++op) {
        const int ni = pick(kNodes);
        NodeMetadata& node = nodes[static_cast<std::size_t>(ni)];
        const Key pk = kProtected[pick(5)];
        const Value junk = Value::list({"overwrite", t, op});
        if (pick(3) == 0) {  // a legitimate write
          switch (pick(4)) {
            case 0: {
              const std::int64_t v = static_cast<std::int64_t>(rng() >> 2);
              node.set(own[t], v);
              own_oracle[t][ni] = v;
              break;
            }
            case 1:
              if (node.erase(own[t]) != own_oracle[t][ni].has_value()) ADD_FAILURE() << "erase result";
              own_oracle[t][ni].reset();
              break;
            case 2:
              node.update(hits, [](std::optional<Value> old) {
                return old ? old->as<std::int64_t>() + 1 : std::int64_t{1};
              });
              hits_oracle[ni].fetch_add(1, std::memory_order_relaxed);
              break;
            default: {
              // One edit: own key and hits together, trying a protected key on the way
              // and catching its rejection (the rest of the edit still commits).
              const std::int64_t v = static_cast<std::int64_t>(rng() >> 2);
              node.edit([&](NodeEditor& e) {
                e.set(own[t], v);
                try {
                  e.set(pk, junk);
                  protected_successes.fetch_add(1);
                } catch (const ProtectedKeyError&) {
                  rejections.fetch_add(1);
                }
                protected_attempts.fetch_add(1);
                const auto old = e.get(hits);
                e.set(hits, old ? old->as<std::int64_t>() + 1 : std::int64_t{1});
              });
              own_oracle[t][ni] = v;
              hits_oracle[ni].fetch_add(1, std::memory_order_relaxed);
              break;
            }
          }
          continue;
        }
        protected_attempts.fetch_add(1);
        bool rejected = false;
        switch (pick(7)) {
          case 0:
            try {
              node.set(pk, junk);
            } catch (const ProtectedKeyError& e) {
              rejected = e.key() == pk.name() &&
                         std::string(e.what()) == "Could not override node key: " + e.key();
            }
            break;
          case 1: rejected = node.try_set(pk, junk) == WriteResult::kRejectedProtected; break;
          case 2:
            try {
              node.erase(pk);
            } catch (const ProtectedKeyError&) {
              rejected = true;
            }
            break;
          case 3:
            try {
              node.update(pk, [&](std::optional<Value>) {
                callback_runs.fetch_add(1);
                return junk;
              });
            } catch (const ProtectedKeyError&) {
              rejected = true;
            }
            break;
          case 4:  // an edit whose protected write is not caught: the whole edit aborts
            try {
              node.edit([&](NodeEditor& e) {
                e.set(own[t], std::int64_t{-1});  // must be rolled back
                if (pick(2)) e.erase(pk); else e.set(pk, junk);
              });
            } catch (const ProtectedKeyError&) {
              rejected = true;
            }
            break;
          case 5:
            rejected = node.edit([&](NodeEditor& e) { return e.try_set(pk, junk); }) ==
                       WriteResult::kRejectedProtected;
            break;
          default: rejected = !node.set_once(pk, junk); break;  // present: set_once loses
        }
        (rejected ? rejections : protected_successes).fetch_add(1);
      }
      sync.arrive_and_wait();
      if (t == 0) {
        ++round;
        for (int i = 0; i < kNodes; ++i) {
          NodeMetadata& node = nodes[static_cast<std::size_t>(i)];
          const Items expected = initial_items(i);
          for (const auto& [k, v] : expected) {
            const auto got = node.get(Key(k));
            if (!got || !(*got == v)) {
              ADD_FAILURE() << "round " << round << " node " << i << ": protected key " << k << " is "
                            << (got ? got->repr() : "absent") << ", expected " << v.repr();
            }
          }
          for (int w = 0; w < n_threads; ++w) {
            const auto got = node.get(own[w]);
            const auto& want = own_oracle[w][i];
            if (got.has_value() != want.has_value() || (want && got->as<std::int64_t>() != *want)) {
              ADD_FAILURE() << "round " << round << " node " << i << ": legitimate key own_" << w
                            << " lost or wrong: " << (got ? got->repr() : "absent");
            }
          }
          const auto h = node.get(hits);
          const std::int64_t want_hits = hits_oracle[i].load();
          EXPECT_EQ(h ? h->as<std::int64_t>() : 0, want_hits) << "round " << round << " node " << i;
        }
        EXPECT_EQ(protected_successes.load(), 0u) << "round " << round;
        EXPECT_EQ(callback_runs.load(), 0u) << "update ran its callback on a protected key";
        EXPECT_EQ(rejections.load(), protected_attempts.load()) << "round " << round;
      }
    }
  });
  std::cout << "[ stats    ] " << round << " rounds, " << protected_attempts.load()
            << " protected write attempts, all rejected\n";
  EXPECT_GT(protected_attempts.load(), 0u);
}

}  // namespace
}  // namespace nodemeta::test
