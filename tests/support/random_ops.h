// tests/support/random_ops.h: random single-node operations (node_ops.h's Op) for the
// stress tests. The generator is shared; each test gives its own mix (OpMix): the keys, the
// values, and how often each kind of operation comes, so the differences between tests are
// data, stated where the test is. The same mix and the same random stream always give the
// same operations, so a printed NODEMETA_STRESS_SEED replays them.
#ifndef NODEMETA_TESTS_SUPPORT_RANDOM_OPS_H_
#define NODEMETA_TESTS_SUPPORT_RANDOM_OPS_H_

#include <cstdint>
#include <span>
#include <string>
#include <utility>

#include "support/node_ops.h"

namespace nodemeta::test {

struct OpMix {
  // op.key and every edit step's key: one of these, uniformly.
  std::span<const char* const> keys;
  // How often each kind comes: kinds[i].second chances in the sum of them all.
  std::span<const std::pair<OpKind, int>> kinds;
  // op.value: an integer in [0, ints), or, when strings > 0, with even odds an integer or
  // one of the strings "s0" .. "s<strings - 1>".
  int ints = 1;
  int strings = 0;
  int max_delta = 1;        // kUpdateAdd: delta in [1, max_delta]
  int max_steps = 1;        // kEdit: 1 .. max_steps steps
  int step_ints = 1;        // an edit step's value: an integer in [0, step_ints)
  int throw_one_in = 1;     // kEdit: the callback throws at the end one time in this many
  std::string protect_key;  // kProtect / kIsProtected: this key, not a random one
};

template <class Rng>
Op random_op(Rng& rng, const OpMix& mix) {
  auto pick = [&](int n) { return static_cast<int>(rng() % static_cast<std::uint64_t>(n)); };
  auto any_key = [&] {
    return std::string(mix.keys[static_cast<std::size_t>(pick(static_cast<int>(mix.keys.size())))]);
  };
  Op op;
  op.key = any_key();
  if (mix.strings == 0) {
    op.value = Value(pick(mix.ints));
  } else {
    op.value = pick(2) ? Value(pick(mix.ints)) : Value("s" + std::to_string(pick(mix.strings)));
  }
  int total = 0;
  for (const auto& [kind, chances] : mix.kinds) total += chances;
  int r = pick(total);
  for (const auto& [kind, chances] : mix.kinds) {
    if (r < chances) {
      op.kind = kind;
      break;
    }
    r -= chances;
  }
  switch (op.kind) {
    case OpKind::kUpdateAdd: op.delta = 1 + pick(mix.max_delta); break;
    case OpKind::kEdit:
      for (int s = 1 + pick(mix.max_steps); s > 0; --s) {
        EditStep step;
        step.kind = static_cast<EditStep::Kind>(pick(5));
        step.key = any_key();
        step.value = Value(pick(mix.step_ints));
        step.catch_errors = pick(2) == 0;
        op.steps.push_back(std::move(step));
      }
      op.throw_at_end = pick(mix.throw_one_in) == 0;
      break;
    case OpKind::kProtect:
    case OpKind::kIsProtected: op.key = mix.protect_key; break;
    default: break;
  }
  return op;
}

}  // namespace nodemeta::test

#endif  // NODEMETA_TESTS_SUPPORT_RANDOM_OPS_H_
