// set_once races (issue 3, stress 2): thousands of rounds of T threads racing set_once on
// the same fresh key of a fresh node: exactly one call returns true, the final value is
// the winner's, the losers saw false. Run on a protected key (set_once is the one way to
// add one to a built node) and on a plain key, and inside edit() (NodeEditor::set_once).
#include <array>
#include <atomic>
#include <cstdint>
#include <optional>
#include <vector>

#include <gtest/gtest.h>
#include <nodemeta/nodemeta.h>

#include "support/stress.h"

namespace nodemeta::test {
namespace {

TEST(SetOnceStress, ExactlyOneWinnerPerRound) {
  const int n_threads = threads();
  // A round is one race on a fresh key; each barrier phase runs kRaces of them (fresh nodes,
  // visited in the same order by every thread, so the threads meet on each one).
  constexpr int kRaces = 10;
  RoundBudget budget(300);
  MetadataStore store;
  const Key plain("once_plain");
  const Key in_edit("once_edit");
  std::vector<NodeMetadata> nodes;
  // won[t][race][key]: what thread t's set_once returned.
  std::vector<std::array<std::array<bool, 3>, kRaces>> won(static_cast<std::size_t>(n_threads));
  bool stop = false;
  std::uint64_t phase = 0, races = 0;
  const std::size_t base_count = store.node_count();

  run_together(n_threads, [&](int t, std::barrier<>& sync) {
    for (;;) {
      if (t == 0) {
        nodes.clear();
        stop = !budget.next();
        for (int r = 0; !stop && r < kRaces; ++r) nodes.push_back(store.create({{keys::val, Value(r)}}));
      }
      sync.arrive_and_wait();
      if (stop) return;
      for (int r = 0; r < kRaces; ++r) {
        NodeMetadata& node = nodes[static_cast<std::size_t>(r)];
        const std::int64_t mine = static_cast<std::int64_t>(phase) * 1000 + t;
        won[t][r][0] = node.set_once(keys::tensor_meta, Value(mine));
        won[t][r][1] = node.set_once(plain, Value(mine));
        won[t][r][2] = node.edit([&](NodeEditor& e) { return e.set_once(in_edit, Value(mine)); });
      }
      sync.arrive_and_wait();
      if (t == 0) {
        const Key ks[3] = {keys::tensor_meta, plain, in_edit};
        for (int r = 0; r < kRaces; ++r, ++races) {
          NodeMetadata& node = nodes[static_cast<std::size_t>(r)];
          for (int k = 0; k < 3; ++k) {
            int winners = 0, winner = -1;
            for (int w = 0; w < n_threads; ++w) {
              if (won[w][r][k]) ++winners, winner = w;
            }
            EXPECT_EQ(winners, 1) << "race " << races << ", key " << ks[k].name();
            if (winners != 1) continue;
            EXPECT_EQ(node.at(ks[k]).as<std::int64_t>(), static_cast<std::int64_t>(phase) * 1000 + winner)
                << "race " << races << ", key " << ks[k].name() << ": the value is not the winner's";
          }
          // The protected key, once added, is protected like any other.
          EXPECT_THROW(node.set(keys::tensor_meta, 0), ProtectedKeyError);
          EXPECT_FALSE(node.set_once(keys::tensor_meta, 0));
        }
        ++phase;
      }
    }
  });
  std::cout << "[ stats    ] " << races << " races x " << n_threads << " threads x 3 keys\n";
  EXPECT_EQ(store.node_count(), base_count);
}

}  // namespace
}  // namespace nodemeta::test
