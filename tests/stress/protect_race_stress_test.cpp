// Run-time protect() racing writers (issue 3, stress 3). Writers keep writing key k on many
// nodes (set, try_set, update, edit) while another thread calls store.protect(k). Every
// write that succeeded must be linearized before protect() returned:
//   * a snapshot of k on every node taken right after protect() returns equals the one
//     taken when the writers are done (k never changes again);
//   * every write a writer began after it saw protect() return was rejected;
//   * per-writer logs: once a writer is rejected on k it is never accepted again, and each
//     node's final value of k is the last accepted write some writer logged for that node.
// Alternates a key with a small id (< 64) and one with a large id, and uses a fresh store
// per round (protection is permanent).
#include <atomic>
#include <cstdint>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nodemeta/nodemeta.h>

#include "support/keys.h"
#include "support/stress.h"

namespace nodemeta::test {
namespace {

struct LogEntry {
  int node;
  std::int64_t value;
  bool accepted;
  bool after_protect;  // begun after this writer saw protect() return
};

TEST(ProtectRaceStress, NoWriteLandsAfterProtectReturns) {
  const std::uint64_t seed = test_seed();
  const int n_threads = threads();
  const int writers = n_threads - 1;
  constexpr int kNodes = 32;
  constexpr int kWritesAfter = 64;    // writes each writer makes after it sees protect() return
  constexpr int kWritesBefore = 256;  // at most this many before: then wait for protect()
  RoundBudget budget(300);

  // Key ids are dense in order of first use: "k" gets a small one; the second key's id is
  // past the protected set's first word.
  const Key low_key("k");
  const Key high_key = large_id_key("protect_race_high");
  ASSERT_LT(low_key.id(), kFirstLargeKeyId);

  std::optional<MetadataStore> store;
  std::vector<NodeMetadata> nodes;
  std::atomic<std::uint64_t> writes_started{0};
  std::atomic<bool> protected_flag{false};
  std::vector<std::optional<std::int64_t>> after_protect;  // snapshot right after protect()
  std::vector<std::vector<LogEntry>> logs(static_cast<std::size_t>(writers));
  bool stop = false;
  std::uint64_t round = 0, accepted_total = 0, rejected_total = 0;
  Key k = low_key;

  auto read_all = [&] {
    std::vector<std::optional<std::int64_t>> snap;
    for (auto& n : nodes) {
      auto v = n.get(k);
      snap.push_back(v ? std::optional<std::int64_t>(v->as<std::int64_t>()) : std::nullopt);
    }
    return snap;
  };

  run_together(n_threads, [&](int t, std::barrier<>& sync) {
    std::mt19937_64 rng(mix_seed(seed, static_cast<std::uint64_t>(t)));
    for (;;) {
      if (t == 0) {
        nodes.clear();
        store.reset();
        stop = !budget.next();
        if (!stop) {
          store.emplace();
          k = round % 2 == 0 ? low_key : high_key;
          for (int i = 0; i < kNodes; ++i) nodes.push_back(store->create({{keys::val, i}}));
          writes_started = 0;
          protected_flag = false;
          for (auto& l : logs) l.clear();
        }
      }
      sync.arrive_and_wait();
      if (stop) return;
      if (t == 0) {
        // The protector: let the writers get going (no sleeping: wait for their progress),
        // then protect and snapshot at once.
        const std::uint64_t target = 1 + rng() % (8 * static_cast<std::uint64_t>(writers));
        while (writes_started.load() < target) std::this_thread::yield();
        store->protect(k);
        after_protect = read_all();
        protected_flag.store(true);
      } else {
        auto& log = logs[static_cast<std::size_t>(t - 1)];
        std::int64_t seq = 0;
        int after = 0;
        int before = 0;
        while (after < kWritesAfter) {
          const bool saw = protected_flag.load();
          if (!saw && ++before > kWritesBefore) {
            std::this_thread::yield();  // the protector is behind: let it run (no sleep)
            continue;
          }
          after += saw;
          const int ni = static_cast<int>(rng() % kNodes);
          NodeMetadata& node = nodes[static_cast<std::size_t>(ni)];
          const std::int64_t v = (std::int64_t{t} << 40) | ++seq;
          writes_started.fetch_add(1);
          bool ok = false;
          try {
            switch (rng() % 4) {
              case 0: node.set(k, v); ok = true; break;
              case 1: ok = node.try_set(k, v) != WriteResult::kRejectedProtected; break;
              case 2: node.update(k, [v](std::optional<Value>) { return v; }); ok = true; break;
              default: node.edit([&](NodeEditor& e) { e.set(k, v); }); ok = true; break;
            }
          } catch (const ProtectedKeyError&) {
            ok = false;
          }
          log.push_back({ni, v, ok, saw});
        }
      }
      sync.arrive_and_wait();
      if (t == 0) {
        const auto at_end = read_all();
        EXPECT_EQ(at_end, after_protect) << "round " << round << ": k changed after protect() returned";
        std::map<std::pair<int, std::int64_t>, bool> accepted;  // (node, value) -> accepted
        for (int w = 0; w < writers; ++w) {
          bool rejected_once = false;
          for (const LogEntry& e : logs[static_cast<std::size_t>(w)]) {
            accepted[{e.node, e.value}] = e.accepted;
            e.accepted ? ++accepted_total : ++rejected_total;
            EXPECT_FALSE(e.accepted && e.after_protect)
                << "round " << round << ": writer " << w + 1 << " wrote " << e.value
                << " after protect() returned";
            EXPECT_FALSE(e.accepted && rejected_once)
                << "round " << round << ": writer " << w + 1 << " accepted after a rejection";
            rejected_once |= !e.accepted;
          }
        }
        for (int i = 0; i < kNodes; ++i) {
          if (!at_end[static_cast<std::size_t>(i)]) continue;
          auto it = accepted.find({i, *at_end[static_cast<std::size_t>(i)]});
          EXPECT_TRUE(it != accepted.end() && it->second)
              << "round " << round << ": node " << i << " holds a value no accepted write logged";
        }
        EXPECT_THROW(nodes[0].set(k, 0), ProtectedKeyError);
        ++round;
      }
    }
  });
  std::cout << "[ stats    ] " << round << " rounds, " << accepted_total << " writes accepted before protect, "
            << rejected_total << " rejected\n";
  EXPECT_GT(rejected_total, 0u);
  EXPECT_GT(accepted_total, 0u);  // writes really raced protect(), rather than all losing
}

}  // namespace
}  // namespace nodemeta::test
