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
  RoundBudget budget(3000);
  MetadataStore store;
  const Key plain("once_plain");
  std::optional<NodeMetadata> node;
  // Per round: what each thread's set_once returned, for each of the three keys.
  std::vector<std::array<int, 3>> won(static_cast<std::size_t>(n_threads));
  bool stop = false;
  std::uint64_t round = 0;
  const std::size_t base_count = store.node_count();

  run_together(n_threads, [&](int t, std::barrier<>& sync) {
    for (;;) {
      if (t == 0) {
        node.reset();
        stop = !budget.next();
        if (!stop) node.emplace(store.create({{keys::val, Value(0)}}));
      }
      sync.arrive_and_wait();
      if (stop) return;
      const std::int64_t mine = static_cast<std::int64_t>(round) * 1000 + t;
      won[t][0] = node->set_once(keys::tensor_meta, Value(mine));
      won[t][1] = node->set_once(plain, Value(mine));
      won[t][2] = node->edit([&](NodeEditor& e) { return e.set_once(Key("once_edit"), Value(mine)); });
      sync.arrive_and_wait();
      if (t == 0) {
        const Key ks[3] = {keys::tensor_meta, plain, Key("once_edit")};
        for (int k = 0; k < 3; ++k) {
          int winners = 0, winner = -1;
          for (int w = 0; w < n_threads; ++w) {
            if (won[w][k]) ++winners, winner = w;
          }
          EXPECT_EQ(winners, 1) << "round " << round << ", key " << ks[k].name();
          if (winners != 1) continue;
          EXPECT_EQ(node->at(ks[k]).as<std::int64_t>(), static_cast<std::int64_t>(round) * 1000 + winner)
              << "round " << round << ", key " << ks[k].name() << ": the value is not the winner's";
        }
        // The protected key, once added, is protected like any other.
        EXPECT_THROW(node->set(keys::tensor_meta, 0), ProtectedKeyError);
        EXPECT_FALSE(node->set_once(keys::tensor_meta, 0));
        ++round;
      }
    }
  });
  std::cout << "[ stats    ] " << round << " rounds x " << n_threads << " threads x 3 keys\n";
  EXPECT_EQ(store.node_count(), base_count);
}

}  // namespace
}  // namespace nodemeta::test
