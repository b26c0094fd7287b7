// Unit tests of the linearizability checker itself (tests/support/linearizability.h): it
// must accept hand-made linearizable histories and reject non-linearizable ones, or the
// stress test that relies on it proves nothing.
#include "support/linearizability.h"

#include <gtest/gtest.h>

namespace nodemeta::test {
namespace {

Op make(OpKind kind, std::string key, Value value = Value()) {
  Op op;
  op.kind = kind;
  op.key = std::move(key);
  op.value = std::move(value);
  return op;
}

HistoryOp at(int thread, std::uint64_t call, std::uint64_t ret, Op op, std::string outcome) {
  return HistoryOp{thread, call, ret, std::move(op), std::move(outcome)};
}

TEST(LinearizabilityChecker, AcceptsOverlappingWriteAndStaleRead) {
  // The read overlaps the write, so it may be ordered before it.
  std::vector<HistoryOp> h{at(0, 1, 4, make(OpKind::kSet, "a", 1), "ok"),
                           at(1, 2, 3, make(OpKind::kGet, "a"), "ok nullopt")};
  const auto r = check_linearizable(h, ModelStore{}, ModelNode{});
  EXPECT_TRUE(r.linearizable) << format_history(h);
  EXPECT_EQ(r.order, (std::vector<std::size_t>{1, 0}));
}

TEST(LinearizabilityChecker, RejectsReadThatMissesACompletedWrite) {
  std::vector<HistoryOp> h{at(0, 1, 2, make(OpKind::kSet, "a", 1), "ok"),
                           at(1, 3, 4, make(OpKind::kGet, "a"), "ok nullopt")};
  EXPECT_FALSE(check_linearizable(h, ModelStore{}, ModelNode{}).linearizable) << format_history(h);
}

TEST(LinearizabilityChecker, RejectsTwoSetOnceWinners) {
  std::vector<HistoryOp> h{at(0, 1, 4, make(OpKind::kSetOnce, "tensor_meta", 1), "ok true"),
                           at(1, 2, 5, make(OpKind::kSetOnce, "tensor_meta", 2), "ok true"),
                           at(2, 6, 7, make(OpKind::kGet, "tensor_meta"), "ok 1")};
  EXPECT_FALSE(check_linearizable(h, ModelStore{}, ModelNode{}).linearizable) << format_history(h);
  h[1].outcome = "ok false";
  EXPECT_TRUE(check_linearizable(h, ModelStore{}, ModelNode{}).linearizable) << format_history(h);
}

TEST(LinearizabilityChecker, RejectsWriteThatSucceedsAfterProtectReturned) {
  std::vector<HistoryOp> h{at(0, 1, 2, make(OpKind::kProtect, "p"), "ok"),
                           at(1, 3, 4, make(OpKind::kTrySet, "p", 7), "ok inserted")};
  EXPECT_FALSE(check_linearizable(h, ModelStore{}, ModelNode{}).linearizable) << format_history(h);
  // Overlapping protect: the write may be ordered first.
  h[0].ret = 5;
  EXPECT_TRUE(check_linearizable(h, ModelStore{}, ModelNode{}).linearizable) << format_history(h);
}

TEST(LinearizabilityChecker, NeedsBacktrackingToFindTheOrder) {
  // Three overlapping writes, then reads that pin the order b=2 before a=..., forcing the
  // checker to undo its first (greedy) choices.
  std::vector<HistoryOp> h{at(0, 1, 10, make(OpKind::kSet, "a", 1), "ok"),
                           at(1, 2, 11, make(OpKind::kSet, "a", 2), "ok"),
                           at(2, 3, 12, make(OpKind::kGet, "a"), "ok 2"),
                           at(2, 13, 14, make(OpKind::kGet, "a"), "ok 1")};
  const auto r = check_linearizable(h, ModelStore{}, ModelNode{});
  ASSERT_TRUE(r.linearizable) << format_history(h);
  EXPECT_EQ(r.order, (std::vector<std::size_t>{1, 2, 0, 3}));
  // ...but no order lets a later read see 2 again after both reads above.
  h.push_back(at(0, 15, 16, make(OpKind::kGet, "a"), "ok 2"));
  EXPECT_FALSE(check_linearizable(h, ModelStore{}, ModelNode{}).linearizable) << format_history(h);
}

TEST(LinearizabilityChecker, RejectsHalfAppliedEditSeenBySnapshot) {
  Op edit;
  edit.kind = OpKind::kEdit;
  edit.steps = {{EditStep::Kind::kSet, "a", Value(1)}, {EditStep::Kind::kSet, "b", Value(1)}};
  std::vector<HistoryOp> h{at(0, 1, 4, edit, "ok [set set ]"),
                           at(1, 2, 3, make(OpKind::kItems, ""), "ok {a: 1, }")};
  EXPECT_FALSE(check_linearizable(h, ModelStore{}, ModelNode{}).linearizable) << format_history(h);
  h[1].outcome = "ok {a: 1, b: 1, }";
  EXPECT_TRUE(check_linearizable(h, ModelStore{}, ModelNode{}).linearizable) << format_history(h);
}

TEST(LinearizabilityChecker, AcceptsTheEmptyHistory) {
  EXPECT_TRUE(check_linearizable({}, ModelStore{}, ModelNode{}).linearizable);
}

}  // namespace
}  // namespace nodemeta::test
