// tests/support/linearizability.h: a linearizability checker for small concurrent histories
// of one node, after Wing & Gong, with Lowe's just-in-time linearization and state cache
// (the algorithm of ahorn/linearizability-checker and porcupine).
//
// A history is the list of completed operations, each with the time it was invoked and
// the time it returned (from one shared clock, all times distinct) and its outcome text
// (node_ops.h). It is linearizable iff some total order of the operations (1) respects
// real time: if a returned before b was invoked, a comes first, and (2) replayed on the
// reference model (apply_model) from the initial state gives every operation the outcome
// it really had.
#ifndef NODEMETA_TESTS_SUPPORT_LINEARIZABILITY_H_
#define NODEMETA_TESTS_SUPPORT_LINEARIZABILITY_H_

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "support/node_ops.h"

namespace nodemeta::test {

struct HistoryOp {
  int thread = 0;
  std::uint64_t call = 0;  // invocation time
  std::uint64_t ret = 0;   // response time, > call
  Op op;
  std::string outcome;
};

struct LinearizabilityResult {
  bool linearizable = false;
  std::vector<std::size_t> order;  // a witness order (indices into the history) when linearizable
};

// Checks `history` (at most 64 operations) against the model started at (store, node).
inline LinearizabilityResult check_linearizable(const std::vector<HistoryOp>& history,
                                                const ModelStore& initial_store,
                                                const ModelNode& initial_node) {
  const std::size_t n = history.size();
  if (n > 64) throw std::invalid_argument("check_linearizable: at most 64 operations");
  // Events: a call and a return per operation, in time order, in a doubly linked list
  // whose head is the sentinel at index 2n.
  struct Event {
    bool is_call;
    std::size_t op;
    std::uint64_t time;
    std::size_t match = 0;
    std::size_t prev = 0, next = 0;
  };
  constexpr std::size_t kNone = static_cast<std::size_t>(-1);
  std::vector<Event> ev;
  ev.reserve(2 * n + 1);
  for (std::size_t i = 0; i < n; ++i) {
    if (history[i].ret <= history[i].call) throw std::invalid_argument("check_linearizable: ret <= call");
    ev.push_back({true, i, history[i].call});
    ev.push_back({false, i, history[i].ret});
  }
  std::sort(ev.begin(), ev.end(), [](const Event& a, const Event& b) { return a.time < b.time; });
  std::vector<std::size_t> call_of(n), ret_of(n);
  for (std::size_t e = 0; e < ev.size(); ++e) (ev[e].is_call ? call_of : ret_of)[ev[e].op] = e;
  for (std::size_t e = 0; e < ev.size(); ++e) {
    ev[e].match = ev[e].is_call ? ret_of[ev[e].op] : call_of[ev[e].op];
  }
  const std::size_t head = ev.size();
  ev.push_back({false, 0, 0});
  for (std::size_t e = 0; e < head; ++e) {
    ev[e].prev = e == 0 ? head : e - 1;
    ev[e].next = e + 1 == head ? kNone : e + 1;
  }
  ev[head].next = head == 0 ? kNone : 0;

  auto unlink = [&](std::size_t e) {
    ev[ev[e].prev].next = ev[e].next;
    if (ev[e].next != kNone) ev[ev[e].next].prev = ev[e].prev;
  };
  auto relink = [&](std::size_t e) {
    ev[ev[e].prev].next = e;
    if (ev[e].next != kNone) ev[ev[e].next].prev = e;
  };
  auto lift = [&](std::size_t call) {
    unlink(call);
    unlink(ev[call].match);
  };
  auto unlift = [&](std::size_t call) {
    relink(ev[call].match);
    relink(call);
  };

  struct State {
    ModelStore store;
    ModelNode node;
  };
  auto fingerprint = [](std::uint64_t linearized, const State& s) {
    std::string f = std::to_string(linearized) + "|";
    for (const auto& k : s.store.protected_keys) f += k + ",";
    return f + "|" + model_items(s.node);
  };

  std::unordered_set<std::string> cache;
  std::vector<std::pair<std::size_t, State>> stack;  // (call event, state before it)
  State state{initial_store, initial_node};
  std::uint64_t linearized = 0;
  std::size_t entry = ev[head].next;
  while (ev[head].next != kNone) {
    if (ev[entry].is_call) {
      const std::size_t i = ev[entry].op;
      State next = state;
      if (apply_model(next.store, next.node, history[i].op) == history[i].outcome &&
          cache.insert(fingerprint(linearized | (std::uint64_t{1} << i), next)).second) {
        stack.emplace_back(entry, std::move(state));
        state = std::move(next);
        linearized |= std::uint64_t{1} << i;
        lift(entry);
        entry = ev[head].next;
      } else {
        entry = ev[entry].next;
      }
    } else {
      // A return whose operation is not linearized yet: undo the last choice.
      if (stack.empty()) return {false, {}};
      auto [call, before] = std::move(stack.back());
      stack.pop_back();
      state = std::move(before);
      linearized &= ~(std::uint64_t{1} << ev[call].op);
      unlift(call);
      entry = ev[call].next;
    }
  }
  LinearizabilityResult result{true, {}};
  for (const auto& [call, before] : stack) result.order.push_back(ev[call].op);
  return result;
}

// The history, one operation a line, in invocation order: "t1 [3, 9] set(a, 1) -> ok".
inline std::string format_history(const std::vector<HistoryOp>& history) {
  std::vector<const HistoryOp*> sorted;
  for (const auto& h : history) sorted.push_back(&h);
  std::sort(sorted.begin(), sorted.end(), [](auto* a, auto* b) { return a->call < b->call; });
  std::string out;
  for (const HistoryOp* h : sorted) {
    out += "  t" + std::to_string(h->thread) + " [" + std::to_string(h->call) + ", " +
           std::to_string(h->ret) + "] " + describe(h->op) + " -> " + h->outcome + "\n";
  }
  return out;
}

}  // namespace nodemeta::test

#endif  // NODEMETA_TESTS_SUPPORT_LINEARIZABILITY_H_
