// The read path's own race (issue 10): reads take no lock and read a node's slots
// optimistically while writers replace boxed values, grow the slot array (appending keys
// past its capacity), shrink it (erasing them again) and swap whole records (edit()). What
// a writer replaces is released only after every read that might still see it has ended
// (epoch-based reclamation, src/reclaim.cpp). A use-after-free here is what the asan preset
// reports; a missing happens-before edge is what the tsan preset reports; a torn or stale
// value is what the checks below report.
//
// Every boxed value is a Tracked object whose payload carries its own checksum and whose
// constructor/destructor count live objects: a reader checks each value it gets, and at the
// end (after release_retired_values() on every thread) no Tracked object is left alive but
// the node's own, so nothing retired was lost or released twice (ASAN: double free).
#include <atomic>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nodemeta/nodemeta.h>

#include "support/stress.h"

namespace nodemeta::test {
namespace {

std::atomic<std::int64_t> g_live{0};

// A payload whose integrity a reader can check: n copies of one byte, and n again.
struct Tracked {
  explicit Tracked(std::uint64_t n) : size(n % 61 + 3), fill(std::string(size, static_cast<char>('a' + n % 26))) {
    g_live.fetch_add(1, std::memory_order_relaxed);
  }
  Tracked(const Tracked&) = delete;
  ~Tracked() {
    // Poison, so a read after release shows up as a failed check even without ASAN.
    size = 0xdeadbeef;
    g_live.fetch_sub(1, std::memory_order_relaxed);
  }
  bool intact() const {
    if (size > 64 || fill.size() != size) return false;
    for (char c : fill) {
      if (c != fill[0]) return false;
    }
    return true;
  }
  std::uint64_t size;
  std::string fill;
};

bool value_ok(const Value& v) {
  if (const Tracked* t = v.get_if<Tracked>()) return t->intact();
  if (const std::string* s = v.get_if<std::string>()) {
    return !s->empty() && s->find_first_not_of((*s)[0]) == std::string::npos;
  }
  return v.kind() == Value::Kind::kInt || v.kind() == Value::Kind::kNone;
}

TEST(ReclaimStress, ReadersNeverSeeFreedOrTornValuesWhileWritersGrowShrinkAndReplace) {
  const std::uint64_t seed = test_seed();
  const int n_threads = std::max(threads(), 4);
  const int writers = n_threads / 2;
  const std::uint64_t ops = rounds(20000);

  MetadataStore store;
  std::vector<Key> hot;  // boxed values replaced in place
  for (int i = 0; i < 4; ++i) hot.emplace_back("reclaim.hot." + std::to_string(i));
  std::vector<Key> grow;  // appended past capacity, then erased: the array grows and shrinks
  for (int i = 0; i < 24; ++i) grow.emplace_back("reclaim.grow." + std::to_string(i));
  {
    NodeMetadata node = store.create({{hot[0], Value::make<Tracked>(0)},
                                      {hot[1], Value::make<Tracked>(1)},
                                      {hot[2], "s"},
                                      {hot[3], 3}});
    std::atomic<int> writers_left{writers};
    std::atomic<std::uint64_t> reads{0}, bad{0};
    run_together(n_threads, [&](int t, auto&) {
      SplitMix64 rng(mix_seed(seed, static_cast<std::uint64_t>(t)));
      if (t < writers) {
        for (std::uint64_t i = 0; i < ops; ++i) {
          const std::uint64_t r = rng();
          const std::uint64_t n = r >> 8;
          switch (r % 8) {
            case 0:
            case 1:
              node.set(hot[n % hot.size()], Value::make<Tracked>(n));
              break;
            case 2:
              node.set(hot[n % hot.size()], std::string(n % 50 + 1, static_cast<char>('A' + n % 26)));
              break;
            case 3:  // grow: many appends, crossing several capacities
              for (int k = 0; k < 8; ++k) {
                (void)node.try_set(grow[(n + static_cast<std::uint64_t>(k)) % grow.size()],
                                   Value::make<Tracked>(n + static_cast<std::uint64_t>(k)));
              }
              break;
            case 4:  // shrink: erase what was grown (moves the last slot into the hole)
              for (const Key& k : grow) node.erase(k);
              break;
            case 5:  // replace the whole record at once
              node.edit([&](NodeEditor& e) {
                for (int k = 0; k < 6; ++k) e.set(grow[(n + static_cast<std::uint64_t>(k) * 5) % grow.size()], Value::make<Tracked>(n));
                e.erase(hot[n % hot.size()]);
                e.set(hot[n % hot.size()], Value::make<Tracked>(n + 1));
              });
              break;
            case 6:
              node.set_once(grow[n % grow.size()], Value::make<Tracked>(n));
              break;
            default:
              (void)node.update(hot[n % hot.size()], [n](std::optional<Value>) {
                return Value::make<Tracked>(n);
              });
          }
        }
        writers_left.fetch_sub(1);
        release_retired_values();  // a writer's own retirements, before it exits
      } else {
        std::uint64_t local = 0, local_bad = 0;
        while (writers_left.load(std::memory_order_relaxed) > 0) {
          const std::uint64_t r = rng();
          switch (r % 4) {
            case 0:
            case 1: {
              const Key& k = (r & 16) != 0 ? hot[(r >> 8) % hot.size()] : grow[(r >> 8) % grow.size()];
              if (std::optional<Value> v = node.get(k)) local_bad += !value_ok(*v);
              break;
            }
            case 2:
              for (const auto& [name, v] : node.items()) local_bad += !value_ok(v);
              break;
            default: {
              NodeMetadata c = node.copy();  // a snapshot through the same read path
              for (const auto& [name, v] : c.items()) local_bad += !value_ok(v);
            }
          }
          ++local;
        }
        reads.fetch_add(local);
        bad.fetch_add(local_bad);
      }
    });
    EXPECT_EQ(bad.load(), 0u) << "a reader saw a freed or torn value; NODEMETA_STRESS_SEED=" << seed;
    EXPECT_GT(reads.load(), 0u);
    for (const auto& [name, v] : node.items()) EXPECT_TRUE(value_ok(v)) << name;
    release_retired_values();
    // Every Tracked alive is one the node still holds.
    std::int64_t held = 0;
    for (const auto& [name, v] : node.items()) held += v.get_if<Tracked>() != nullptr;
    EXPECT_EQ(g_live.load(), held);
  }
  release_retired_values();
  EXPECT_EQ(g_live.load(), 0) << "a retired value was never released";
}

// Slot arrays: a node's array only grows (erase keeps the capacity), so growth is aimed at
// directly: each round takes a fresh small node, one thread appends keys one by one past
// several capacities (4 -> 6 -> 9 -> 13 -> 19 -> 28 -> 42) while the others read it; every
// outgrown array is retired while readers may be scanning it.
TEST(ReclaimStress, ReadersOfANodeWhoseArrayGrowsUnderThem) {
  const std::uint64_t seed = test_seed();
  const int n_threads = std::max(threads(), 3);
  const std::uint64_t n_rounds = rounds(400);
  MetadataStore store;
  std::vector<Key> keys;
  for (int i = 0; i < 40; ++i) keys.emplace_back("reclaim.array." + std::to_string(i));
  std::vector<NodeMetadata> nodes;
  nodes.reserve(n_rounds);
  for (std::uint64_t r = 0; r < n_rounds; ++r) nodes.push_back(store.create({{keys[0], Value::make<Tracked>(r)}}));
  SpinGate gate(n_threads);
  std::atomic<std::uint64_t> bad{0}, reads{0};
  std::vector<std::atomic<bool>> done(n_rounds);
  run_together(n_threads, [&](int t, auto&) {
    SplitMix64 rng(mix_seed(seed, static_cast<std::uint64_t>(t)));
    for (std::uint64_t r = 0; r < n_rounds; ++r) {
      NodeMetadata& node = nodes[r];
      gate.arrive_and_wait();
      if (t == 0) {
        for (std::size_t k = 1; k < keys.size(); ++k) node.set(keys[k], Value::make<Tracked>(r + k));
        done[r].store(true, std::memory_order_release);
      } else {
        std::uint64_t local = 0, local_bad = 0;
        while (!done[r].load(std::memory_order_acquire)) {
          if ((rng() & 3) == 0) {
            const Items items = node.items();
            for (const auto& [name, v] : items) local_bad += !value_ok(v);
          } else if (std::optional<Value> v = node.get(keys[rng() % keys.size()])) {
            local_bad += !value_ok(*v);
          }
          ++local;
        }
        reads.fetch_add(local);
        bad.fetch_add(local_bad);
      }
    }
    release_retired_values();
  });
  EXPECT_EQ(bad.load(), 0u) << "NODEMETA_STRESS_SEED=" << seed;
  EXPECT_GT(reads.load(), 0u);
  for (const NodeMetadata& node : nodes) EXPECT_EQ(node.size(), keys.size());
  nodes.clear();
  release_retired_values();
  EXPECT_EQ(g_live.load(), 0);
}

// Threads come and go while others retire: an exiting thread's unreleased objects pass to
// the domain (and its registration record to the next thread), and are released later.
TEST(ReclaimStress, ThreadsThatExitHandTheirRetiredValuesOn) {
  const std::uint64_t generations = rounds(50);
  MetadataStore store;
  NodeMetadata node = store.create({{"churn", Value::make<Tracked>(1)}});
  std::atomic<bool> stop{false};
  std::thread reader([&] {
    while (!stop.load(std::memory_order_relaxed)) {
      if (std::optional<Value> v = node.get("churn")) {
        EXPECT_TRUE(value_ok(*v));
      }
    }
  });
  for (std::uint64_t g = 0; g < generations; ++g) {
    run_together(3, [&](int t, auto&) {
      for (int i = 0; i < 50; ++i) node.set("churn", Value::make<Tracked>(g * 100 + static_cast<std::uint64_t>(t * 50 + i)));
    });  // the threads exit with objects still retired
  }
  stop = true;
  reader.join();
  release_retired_values();  // takes the exited threads' objects too
  EXPECT_EQ(g_live.load(), 1);  // the node's own
}

}  // namespace
}  // namespace nodemeta::test
