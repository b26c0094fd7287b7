// Snapshots are consistent (issue 3, stress 4). Writers keep cross-key invariants with
// edit(): a == b, sum == a + b, version counts the committed edits, and exactly the keys
// x_0 .. x_{count-1} are present. Some edits throw half-way (after writing a but not b);
// some updates throw. Readers check every invariant on every items() snapshot and on every
// copy(), and that the version they see never goes back.
#include <atomic>
#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nodemeta/nodemeta.h>

#include "support/stress.h"

namespace nodemeta::test {
namespace {

constexpr int kMaxX = 6;

// Checks the invariants on a snapshot; returns the version, or -1 after reporting.
std::int64_t check_snapshot(const Items& items, const char* what) {
  std::map<std::string, Value> m(items.begin(), items.end());
  auto num = [&](const char* k) -> std::int64_t {
    auto it = m.find(k);
    return it == m.end() ? -1 : it->second.as<std::int64_t>();
  };
  const std::int64_t a = num("a"), b = num("b"), sum = num("sum"), version = num("version"),
                     count = num("count");
  std::string xs;
  int present = 0;
  bool prefix = true;
  for (int i = 0; i < kMaxX; ++i) {
    const bool has = m.count("x_" + std::to_string(i)) != 0;
    present += has;
    prefix &= has == (i < count);
  }
  if (a != b || sum != a + b || version < 0 || !prefix || present != count || m.count("torn") != 0) {
    std::string dump;
    for (const auto& [k, v] : items) dump += k + "=" + v.repr() + " ";
    ADD_FAILURE() << what << " saw a half-applied edit: " << dump;
    return -1;
  }
  return version;
}

TEST(SnapshotStress, ItemsAndCopyNeverSeeHalfAnEdit) {
  const std::uint64_t seed = test_seed();
  const int n_threads = threads();
  const int writers = n_threads / 2;  // the other threads read
  const std::uint64_t edits_per_writer = rounds(4000);

  MetadataStore store;
  NodeMetadata node = store.create({{"a", 0}, {"b", 0}, {"sum", 0}, {"version", 0}, {"count", 0},
                                    {keys::val, Value::list({1, 2})}});
  std::atomic<int> writers_left{writers};
  std::atomic<std::uint64_t> committed{0}, aborted{0}, snapshots{0}, copies{0};
  std::vector<std::int64_t> added(static_cast<std::size_t>(writers), 0);

  run_together(n_threads, [&](int t, std::barrier<>&) {
    std::mt19937_64 rng(mix_seed(seed, static_cast<std::uint64_t>(t)));
    if (t < writers) {
      for (std::uint64_t i = 0; i < edits_per_writer; ++i) {
        const std::int64_t d = static_cast<std::int64_t>(rng() % 5) + 1;
        const int kind = static_cast<int>(rng() % 8);
        if (kind == 0) {  // throws after writing a and a stray key: nothing may show
          try {
            node.edit([&](NodeEditor& e) {
              e.set("a", e.at("a").as<std::int64_t>() + d);
              e.set("torn", true);
              throw std::runtime_error("abandon");
            });
            ADD_FAILURE() << "edit did not rethrow";
          } catch (const std::runtime_error&) {
            aborted.fetch_add(1);
          }
        } else if (kind == 1) {  // a protected write in the middle aborts the edit
          try {
            node.edit([&](NodeEditor& e) {
              e.set("a", e.at("a").as<std::int64_t>() + d);
              e.set(keys::val, 0);
              e.set("b", e.at("b").as<std::int64_t>() + d);
            });
            ADD_FAILURE() << "protected write inside edit did not throw";
          } catch (const ProtectedKeyError&) {
            aborted.fetch_add(1);
          }
        } else if (kind == 2) {  // a throwing update leaves the node alone
          try {
            node.update("a", [](std::optional<Value>) -> Value { throw std::runtime_error("no"); });
          } catch (const std::runtime_error&) {
            aborted.fetch_add(1);
          }
        } else {
          node.edit([&](NodeEditor& e) {
            const std::int64_t a = e.at("a").as<std::int64_t>() + d;
            e.set("a", a);
            e.set("b", a);
            e.set("sum", 2 * a);
            e.set("version", e.at("version").as<std::int64_t>() + 1);
            // Grow or shrink the x_ prefix by one.
            std::int64_t count = e.at("count").as<std::int64_t>();
            if (count < kMaxX && (count == 0 || rng() % 2)) {
              e.set("x_" + std::to_string(count), count);
              ++count;
            } else {
              --count;
              e.erase("x_" + std::to_string(count));
            }
            e.set("count", count);
          });
          added[static_cast<std::size_t>(t)] += d;
          committed.fetch_add(1);
        }
      }
      writers_left.fetch_sub(1);
    } else {
      std::int64_t last_version = 0;
      bool failed = false;
      auto observe = [&](std::int64_t version, const char* what) {
        if (version < 0) failed = true;
        if (version < last_version) {
          ADD_FAILURE() << what << " version went back from " << last_version << " to " << version;
          failed = true;
        }
        last_version = std::max(last_version, version);
      };
      for (int n = 0; !failed && (n < 100 || writers_left.load() > 0); ++n) {
        if (rng() % 4 == 0) {
          NodeMetadata snap = node.copy();
          copies.fetch_add(1);
          observe(check_snapshot(snap.items(), "copy()"), "copy()");
          // The copy is independent: writing it leaves the original alone.
          snap.set("a", -5);
        } else {
          snapshots.fetch_add(1);
          observe(check_snapshot(node.items(), "items()"), "items()");
        }
      }
    }
  });
  // Final state: exactly the committed edits.
  std::int64_t total = 0;
  for (std::int64_t d : added) total += d;
  EXPECT_EQ(node.at("a").as<std::int64_t>(), total);
  EXPECT_EQ(node.at("version").as<std::int64_t>(), static_cast<std::int64_t>(committed.load()));
  EXPECT_FALSE(node.contains("torn"));
  EXPECT_GE(check_snapshot(node.items(), "final items()"), 0);
  EXPECT_EQ(store.node_count(), 1u);
  std::cout << "[ stats    ] " << committed.load() << " edits committed, " << aborted.load()
            << " aborted; readers took " << snapshots.load() << " items() and " << copies.load()
            << " copy() snapshots\n";
}

}  // namespace
}  // namespace nodemeta::test
