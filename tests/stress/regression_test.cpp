// Regression tests for core bugs the stress suite and the fuzzer found.
//
// Regression tests for core bugs the stress suite and the fuzzer found.
//
// Kind: regression. Found by linearizability_stress_test: an edit() that overlapped a
// store.protect(k) could see k unprotected in one NodeEditor call and protected in the
// next (set(p) succeeded, then erase(p) threw), an outcome no sequential order explains.
// Since reads take no lock, an edit is linearized at its commit: it re-checks every key its
// writes found unprotected, and if one was protected meanwhile, runs the callback again on
// the unchanged node, so no committed edit mixes two instants. Deterministic: the edit's
// first run waits, via an atomic, until protect() returned.
#include <atomic>
#include <cstdint>
#include <thread>

#include <gtest/gtest.h>
#include <nodemeta/nodemeta.h>

namespace nodemeta {
namespace {

TEST(EditProtectRegression, OneEditSeesProtectionAsOfOneInstant) {
  MetadataStore store;
  NodeMetadata node = store.create();
  const Key p("edit_protect_regression");
  std::atomic<int> phase{0};  // 1: the edit has written p; 2: protect(p) has returned
  std::thread protector([&] {
    phase.wait(0);
    store.protect(p);
    phase.store(2);
    phase.notify_all();
  });
  int runs = 0;
  EXPECT_THROW(node.edit([&](NodeEditor& e) {
                 ++runs;
                 e.set(p, 1);  // the second run throws here: p is protected by then
                 phase.store(1);
                 phase.notify_all();
                 phase.wait(1);
                 EXPECT_TRUE(store.is_protected(p));
                 // Each call sees protection as of that call...
                 EXPECT_THROW(e.erase(p), ProtectedKeyError);
                 EXPECT_EQ(e.try_set(p, 2), WriteResult::kRejectedProtected);
               }),  // ...and the commit reruns the edit, whose set(p) now throws.
               ProtectedKeyError);
  protector.join();
  EXPECT_EQ(runs, 2);
  EXPECT_FALSE(node.get(p).has_value());
  // A later edit starts after protect() returned: p is protected for all of it.
  EXPECT_THROW(node.edit([&](NodeEditor& e) { e.set(p, 3); }), ProtectedKeyError);
  EXPECT_THROW(node.set(p, 3), ProtectedKeyError);
  EXPECT_FALSE(node.get(p).has_value());
  // set_once may still add the absent protected key, once.
  EXPECT_TRUE(node.set_once(p, 4));
  EXPECT_EQ(node.get(p)->as<std::int64_t>(), 4);
}

// Kind: regression. Found by the differential fuzzer under UBSan: copying a node with no
// keys (items(), copy(), edit()) called memcpy(nullptr, nullptr, 0), undefined behaviour.
// The asan preset (UBSan, halt on error) turns a relapse into a failure here.
TEST(EmptyNodeRegression, SnapshotCopyAndEditOfAnEmptyNode) {
  MetadataStore store;
  NodeMetadata node = store.create();
  EXPECT_TRUE(node.items().empty());
  NodeMetadata copy = node.copy();
  EXPECT_EQ(copy.size(), 0u);
  EXPECT_EQ(store.node_count(), 2u);
  node.edit([](NodeEditor& e) { EXPECT_EQ(e.size(), 0u); });
  node.edit([](NodeEditor& e) { e.set("k", 1); });
  EXPECT_EQ(node.at("k").as<std::int64_t>(), 1);
  EXPECT_EQ(copy.size(), 0u);
}

}  // namespace
}  // namespace nodemeta
