#include "nodemeta/node_metadata.h"

#include <gtest/gtest.h>

#include <barrier>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "nodemeta/metadata_store.h"

namespace nodemeta {
namespace {

std::int64_t as_int(const Value& v) { return v.as<std::int64_t>(); }

class NodeMetadataTest : public ::testing::Test {
 protected:
  MetadataStore store_;
};

// --- The PyTorch original's behaviours ---------------------------------------------------

TEST_F(NodeMetadataTest, ProtectedKeysMayBeGivenAtConstruction) {
  NodeMetadata md = store_.create({{"val", 3}, {"stack_trace", "File \"m.py\", line 3"},
                                   {"nn_module_stack", Value::dict({})}, {"debug_handle", 1},
                                   {"tensor_meta", Value()}});
  EXPECT_EQ(as_int(md["val"]), 3);
  EXPECT_EQ(md["stack_trace"].as<std::string>(), "File \"m.py\", line 3");
  EXPECT_EQ(md.size(), 5u);
}

TEST_F(NodeMetadataTest, SetOnProtectedKeyThrowsWithTheOriginalsMessage) {
  NodeMetadata md = store_.create({{"val", 3}});
  for (const char* key : {"val", "stack_trace", "nn_module_stack", "debug_handle", "tensor_meta"}) {
    try {
      md.set(key, 4);
      FAIL() << "set(" << key << ") should throw";
    } catch (const ProtectedKeyError& e) {
      EXPECT_EQ(std::string(e.what()), std::string("Could not override node key: ") + key);
      EXPECT_EQ(e.key(), key);
    }
  }
  // The node is unchanged: the present key kept its value, the absent ones stay absent.
  EXPECT_EQ(as_int(md["val"]), 3);
  EXPECT_EQ(md.size(), 1u);
  EXPECT_FALSE(md.contains("stack_trace"));
}

TEST_F(NodeMetadataTest, ProtectedKeyErrorIsARuntimeError) {
  NodeMetadata md = store_.create({{"val", 3}});
  EXPECT_THROW(md.set("val", 4), std::runtime_error);
}

TEST_F(NodeMetadataTest, MissingKeyThrowsKeyErrorNamingTheKey) {
  NodeMetadata md = store_.create();
  try {
    (void)md["custom"];
    FAIL() << "expected KeyError";
  } catch (const KeyError& e) {
    EXPECT_EQ(e.key(), "custom");
    EXPECT_STREQ(e.what(), "key 'custom' not found");
  }
  EXPECT_THROW((void)md.at("custom"), std::out_of_range);
}

TEST_F(NodeMetadataTest, ContainsTestsPresence) {
  NodeMetadata md = store_.create({{"val", Value()}});
  EXPECT_TRUE(md.contains("val"));  // present even though its value is None
  EXPECT_FALSE(md.contains("other"));
  md.set("other", 1);
  EXPECT_TRUE(md.contains("other"));
}

TEST_F(NodeMetadataTest, CopyIsIndependent) {
  NodeMetadata md = store_.create({{"val", 3}, {"custom", Value::list({1, 2})}});
  NodeMetadata c = md.copy();
  EXPECT_NE(c.id(), md.id());
  EXPECT_EQ(&c.store(), &md.store());
  EXPECT_EQ(c.items(), md.items());
  c.set("custom", "changed");
  c.set("extra", 1);
  md.set("only_original", 2);
  EXPECT_EQ(md["custom"], Value::list({1, 2}));
  EXPECT_FALSE(md.contains("extra"));
  EXPECT_FALSE(c.contains("only_original"));
  // The copy's protected keys are protected too.
  EXPECT_THROW(c.set("val", 9), ProtectedKeyError);
  EXPECT_EQ(as_int(c["val"]), 3);
}

TEST_F(NodeMetadataTest, CopyConstructionAndAssignmentSnapshot) {
  NodeMetadata md = store_.create({{"a", 1}});
  NodeMetadata c(md);  // NOLINT(performance-unnecessary-copy-initialization)
  EXPECT_NE(c.id(), md.id());
  EXPECT_EQ(c.items(), md.items());
  EXPECT_EQ(store_.node_count(), 2u);
  NodeMetadata d = store_.create({{"b", 2}});
  d = md;
  EXPECT_EQ(d.items(), md.items());
  EXPECT_EQ(store_.node_count(), 3u);  // d's old node was destroyed
  d = d;  // self-assignment keeps the node
  EXPECT_EQ(as_int(d["a"]), 1);
}

// --- Reads ----------------------------------------------------------------------------

TEST_F(NodeMetadataTest, GetReturnsOptional) {
  NodeMetadata md = store_.create({{"a", 1}});
  ASSERT_TRUE(md.get("a").has_value());
  EXPECT_EQ(as_int(*md.get("a")), 1);
  EXPECT_FALSE(md.get("b").has_value());
}

TEST_F(NodeMetadataTest, ItemsAreASortedSnapshot) {
  NodeMetadata md = store_.create({{"zeta", 1}, {"alpha", 2}, {"val", 3}});
  md.set("mid", 4);
  const Items items = md.items();
  ASSERT_EQ(items.size(), 4u);
  EXPECT_EQ(items[0].first, "alpha");
  EXPECT_EQ(items[1].first, "mid");
  EXPECT_EQ(items[2].first, "val");
  EXPECT_EQ(items[3].first, "zeta");
  md.set("alpha", 100);  // the snapshot does not change
  EXPECT_EQ(as_int(items[0].second), 2);
}

TEST_F(NodeMetadataTest, ReadsReturnCopiesThatOutliveTheNode) {
  Value v;
  {
    NodeMetadata md = store_.create({{"s", "a long string that is heap allocated for sure"}});
    v = md["s"];
  }
  EXPECT_EQ(v.as<std::string>(), "a long string that is heap allocated for sure");
}

// --- Writes ---------------------------------------------------------------------------

TEST_F(NodeMetadataTest, SetInsertsAndReplaces) {
  NodeMetadata md = store_.create();
  md.set("custom", Value::list({1, 2}));
  EXPECT_EQ(md["custom"], Value::list({1, 2}));
  md.set("custom", 7);
  EXPECT_EQ(as_int(md["custom"]), 7);
  EXPECT_EQ(md.size(), 1u);
}

TEST_F(NodeMetadataTest, TrySetReportsEveryOutcomeAndNeverThrowsForProtection) {
  NodeMetadata md = store_.create({{"val", 3}});
  EXPECT_EQ(md.try_set("k", 1), WriteResult::kInserted);
  EXPECT_EQ(md.try_set("k", 2), WriteResult::kUpdated);
  EXPECT_EQ(md.try_set("val", 4), WriteResult::kRejectedProtected);
  EXPECT_EQ(md.try_set("tensor_meta", 4), WriteResult::kRejectedProtected);  // absent, still protected
  EXPECT_EQ(as_int(md["k"]), 2);
  EXPECT_EQ(as_int(md["val"]), 3);
  EXPECT_FALSE(md.contains("tensor_meta"));
}

TEST_F(NodeMetadataTest, SetOnceInsertsOnlyIfAbsentEvenForProtectedKeys) {
  NodeMetadata md = store_.create({{"val", 3}});
  EXPECT_TRUE(md.set_once("tensor_meta", "meta"));
  EXPECT_FALSE(md.set_once("tensor_meta", "other"));
  EXPECT_FALSE(md.set_once("val", 4));
  EXPECT_TRUE(md.set_once("custom", 1));
  EXPECT_FALSE(md.set_once("custom", 2));
  EXPECT_EQ(md["tensor_meta"].as<std::string>(), "meta");
  EXPECT_EQ(as_int(md["val"]), 3);
  EXPECT_EQ(as_int(md["custom"]), 1);
  // Once present, a protected key set by set_once is as protected as any other.
  EXPECT_THROW(md.set("tensor_meta", "x"), ProtectedKeyError);
}

TEST_F(NodeMetadataTest, EraseRemovesUnprotectedKeysOnly) {
  NodeMetadata md = store_.create({{"val", 3}, {"custom", 1}});
  EXPECT_TRUE(md.erase("custom"));
  EXPECT_FALSE(md.erase("custom"));
  EXPECT_FALSE(md.contains("custom"));
  try {
    md.erase("val");
    FAIL() << "expected ProtectedKeyError";
  } catch (const ProtectedKeyError& e) {
    EXPECT_STREQ(e.what(), "Could not override node key: val");
  }
  EXPECT_THROW(md.erase("debug_handle"), ProtectedKeyError);  // absent but protected
  EXPECT_EQ(as_int(md["val"]), 3);
}

TEST_F(NodeMetadataTest, EraseKeepsOtherKeysIntact) {
  NodeMetadata md = store_.create({{"a", 1}, {"b", "two"}, {"c", 3.0}, {"d", Value::list({4})}});
  EXPECT_TRUE(md.erase("a"));
  EXPECT_TRUE(md.erase("c"));
  EXPECT_EQ(md.items(), (Items{{"b", "two"}, {"d", Value::list({4})}}));
}

TEST_F(NodeMetadataTest, UpdateIsReadModifyWrite) {
  NodeMetadata md = store_.create();
  auto increment = [](std::optional<Value> old) {
    return Value(old ? old->as<std::int64_t>() + 1 : 1);
  };
  EXPECT_EQ(as_int(md.update("hits", increment)), 1);
  EXPECT_EQ(as_int(md.update("hits", increment)), 2);
  EXPECT_EQ(as_int(md["hits"]), 2);
  // The callback may return anything convertible to Value.
  EXPECT_EQ(md.update("name", [](std::optional<Value>) { return "conv1"; }).as<std::string>(), "conv1");
}

TEST_F(NodeMetadataTest, UpdateOfProtectedKeyThrowsWithoutCallingBack) {
  NodeMetadata md = store_.create({{"val", 3}});
  bool called = false;
  EXPECT_THROW(md.update("val", [&](std::optional<Value>) { called = true; return Value(4); }),
               ProtectedKeyError);
  EXPECT_FALSE(called);
  EXPECT_EQ(as_int(md["val"]), 3);
}

TEST_F(NodeMetadataTest, ThrowingUpdateLeavesTheNodeUnchanged) {
  NodeMetadata md = store_.create({{"k", 1}});
  EXPECT_THROW(md.update("k", [](std::optional<Value>) -> Value { throw std::runtime_error("boom"); }),
               std::runtime_error);
  EXPECT_EQ(as_int(md["k"]), 1);
  EXPECT_THROW(md.update("new", [](std::optional<Value>) -> Value { throw std::runtime_error("boom"); }),
               std::runtime_error);
  EXPECT_FALSE(md.contains("new"));
}

TEST_F(NodeMetadataTest, EditAppliesAllWrites) {
  NodeMetadata md = store_.create({{"val", 3}, {"gone", 1}});
  md.edit([](NodeEditor& e) {
    e.set("a", 1);
    e.set("b", 1);
    EXPECT_TRUE(e.erase("gone"));
    EXPECT_TRUE(e.set_once("tensor_meta", "tm"));
    EXPECT_EQ(e.try_set("val", 4), WriteResult::kRejectedProtected);
    EXPECT_EQ(e.try_set("a", 2), WriteResult::kUpdated);
    // Reads inside see the edit's own writes.
    EXPECT_EQ(e["a"].as<std::int64_t>(), 2);
    EXPECT_TRUE(e.contains("b"));
    EXPECT_FALSE(e.contains("gone"));
    EXPECT_EQ(e.size(), 4u);
    EXPECT_EQ(e.items().front().first, "a");
    EXPECT_THROW((void)e["gone"], KeyError);
  });
  EXPECT_EQ(md.items(), (Items{{"a", 2}, {"b", 1}, {"tensor_meta", "tm"}, {"val", 3}}));
}

TEST_F(NodeMetadataTest, EditIsAllOrNothing) {
  NodeMetadata md = store_.create({{"a", 0}, {"b", 0}});
  const Items before = md.items();
  EXPECT_THROW(md.edit([](NodeEditor& e) {
                 e.set("a", 1);
                 e.set("c", 1);
                 throw std::runtime_error("abort");
               }),
               std::runtime_error);
  EXPECT_EQ(md.items(), before);
}

TEST_F(NodeMetadataTest, ProtectionIsEnforcedInsideEdit) {
  NodeMetadata md = store_.create({{"val", 3}, {"a", 0}});
  EXPECT_THROW(md.edit([](NodeEditor& e) {
                 e.set("a", 1);
                 e.set("val", 4);  // throws: the whole edit is abandoned
               }),
               ProtectedKeyError);
  EXPECT_EQ(as_int(md["a"]), 0);
  EXPECT_EQ(as_int(md["val"]), 3);
  EXPECT_THROW(md.edit([](NodeEditor& e) { e.erase("val"); }), ProtectedKeyError);
  // A callback that catches the rejection may go on and commit its other writes.
  md.edit([](NodeEditor& e) {
    e.set("a", 5);
    try {
      e.set("stack_trace", "x");
    } catch (const ProtectedKeyError&) {
    }
  });
  EXPECT_EQ(as_int(md["a"]), 5);
  EXPECT_FALSE(md.contains("stack_trace"));
}

// An edit checks every key against the protected set as of the moment it took the node's
// lock, so it is linearized there: a protect() that completes during the callback comes
// after the edit, which may still write that key; after the edit, the key is frozen.
// An edit is linearized when it commits. If a key one of its NodeEditor writes found
// unprotected is protected before the commit, the callback saw an instant that is not the
// commit's: it runs again on the unchanged node, and this time sees the key protected.
TEST_F(NodeMetadataTest, EditRerunsWhenAKeyItWroteIsProtectedBeforeItCommits) {
  NodeMetadata md = store_.create({{"shape", 1}, {"other", 1}});
  int runs = 0;
  std::vector<std::string> seen;
  md.edit([&](NodeEditor& e) {
    ++runs;
    e.set("other", 2);
    seen.push_back(e.try_set("shape", 2) == WriteResult::kRejectedProtected ? "rejected" : "written");
    store_.protect("shape");  // allowed inside a callback: takes no node lock (idempotent)
    EXPECT_THROW(e.set("shape", 3), ProtectedKeyError);  // checked as of each call
  });
  EXPECT_EQ(runs, 2);
  EXPECT_EQ(seen, (std::vector<std::string>{"written", "rejected"}));
  EXPECT_EQ(as_int(md["shape"]), 1);  // the committed run saw "shape" protected
  EXPECT_EQ(as_int(md["other"]), 2);
  EXPECT_THROW(md.set("shape", 3), ProtectedKeyError);
  // A run whose writes stay unprotected commits at once, even if other keys get protected.
  runs = 0;
  md.edit([&](NodeEditor& e) {
    ++runs;
    store_.protect("late_unrelated");
    e.set("other", 5);
  });
  EXPECT_EQ(runs, 1);
  EXPECT_EQ(as_int(md["other"]), 5);
  // set_once does not depend on protection (clause 3): an absent key protected meanwhile
  // is still added, once.
  runs = 0;
  md.edit([&](NodeEditor& e) {
    ++runs;
    store_.protect("fresh_protected");
    EXPECT_TRUE(e.set_once("fresh_protected", 9));
  });
  EXPECT_EQ(runs, 1);
  EXPECT_EQ(as_int(md["fresh_protected"]), 9);
  // An uncaught rejection in the second run aborts the edit as a whole.
  EXPECT_THROW(md.edit([&](NodeEditor& e) {
                 e.set("other", 7);
                 e.set("rerun_key", 1);
                 store_.protect("rerun_key");
               }),
               ProtectedKeyError);
  EXPECT_EQ(as_int(md["other"]), 5);
  EXPECT_FALSE(md.contains("rerun_key"));
}

// Issue 13 item 9: a zero-initialised Key (read before its constructor ran) used to be
// `val`; now no operation reads or writes under it.
TEST_F(NodeMetadataTest, InvalidKeyIsRejectedByEveryOperation) {
  Key zero = keys::val;
  std::memset(static_cast<void*>(&zero), 0, sizeof zero);
  ASSERT_FALSE(zero.valid());
  NodeMetadata md = store_.create({{"val", 1}});
  EXPECT_THROW(md.set(zero, 2), std::invalid_argument);
  EXPECT_THROW((void)md.try_set(zero, 2), std::invalid_argument);
  EXPECT_THROW(md.set_once(zero, 2), std::invalid_argument);
  EXPECT_THROW(md.erase(zero), std::invalid_argument);
  EXPECT_THROW(md.update(zero, [](auto) { return 2; }), std::invalid_argument);
  EXPECT_THROW(md.edit([&](NodeEditor& e) { e.set(zero, 2); }), std::invalid_argument);
  EXPECT_THROW(store_.create({{zero, 1}}), std::invalid_argument);
  EXPECT_THROW(store_.protect(zero), std::invalid_argument);
  EXPECT_FALSE(md.get(zero).has_value());
  EXPECT_FALSE(md.contains(zero));
  try {
    (void)md[zero];
    ADD_FAILURE() << "operator[] of an invalid Key";
  } catch (const KeyError& e) {
    EXPECT_EQ(e.key(), "<invalid nodemeta::Key>");
  }
  EXPECT_EQ(md.size(), 1u);
  EXPECT_EQ(as_int(md["val"]), 1);
}

// update() likewise: fn ran while the key became protected; the write is refused.
TEST_F(NodeMetadataTest, UpdateIsRefusedIfTheKeyWasProtectedWhileItsCallbackRan) {
  NodeMetadata md = store_.create({{"count", 1}});
  EXPECT_THROW(md.update("count",
                         [&](std::optional<Value> old) {
                           store_.protect("count");
                           return Value(old->as<std::int64_t>() + 1);
                         }),
               ProtectedKeyError);
  EXPECT_EQ(as_int(md["count"]), 1);
}

TEST_F(NodeMetadataTest, EditReturnsTheCallbacksResult) {
  NodeMetadata md = store_.create({{"a", 40}});
  const std::int64_t r = md.edit([](NodeEditor& e) {
    const std::int64_t v = e["a"].as<std::int64_t>() + 2;
    e.set("a", v);
    return v;
  });
  EXPECT_EQ(r, 42);
  EXPECT_EQ(as_int(md["a"]), 42);
}

// --- Callbacks may call anything (issue 21 item 6) ----------------------------------------

// Callbacks hold no lock: every write, to any node of any store, this node included, is
// allowed inside them (before issue 21 each of these threw ReentrancyError).
TEST_F(NodeMetadataTest, CallbacksMayWriteAnyNode) {
  NodeMetadata md = store_.create({{"a", 1}});
  NodeMetadata other = store_.create({{"b", 2}});
  MetadataStore second;
  NodeMetadata elsewhere = second.create({{"c", 3}});
  const Value got = md.update("a", [&](std::optional<Value> old) {
    md.set("side", 10);  // another key of this very node
    other.set("b", 5);
    (void)elsewhere.try_set("c", 6);
    elsewhere.set_once("d", 7);
    elsewhere.update("c", [](std::optional<Value> v) { return v->as<std::int64_t>() + 1; });
    elsewhere.edit([](NodeEditor& e) { e.set("e", 8); });
    EXPECT_NO_THROW(release_retired_values());
    return Value(old->as<std::int64_t>() + 1);
  });
  EXPECT_EQ(as_int(got), 2);
  EXPECT_EQ(as_int(md["a"]), 2);
  EXPECT_EQ(as_int(md["side"]), 10);
  EXPECT_EQ(as_int(other["b"]), 5);
  EXPECT_EQ(as_int(elsewhere["c"]), 7);
  EXPECT_EQ(as_int(elsewhere["d"]), 7);
  EXPECT_EQ(as_int(elsewhere["e"]), 8);
  md.edit([&](NodeEditor& e) {
    NodeMetadata made = store_.create({{"x", 1}});
    NodeMetadata copied = other.copy();
    other.erase("b");
    e.set("a", elsewhere["c"]);
    e.set("n", static_cast<std::int64_t>(store_.node_count()));
    store_.protect("late");
  });
  EXPECT_EQ(as_int(md["a"]), 7);
  EXPECT_EQ(as_int(md["n"]), 4);
  EXPECT_FALSE(other.contains("b"));
  EXPECT_EQ(store_.node_count(), 2u);
  EXPECT_TRUE(store_.is_protected("late"));
}

// A callback that writes, on its own thread, what it read cannot commit (its own write
// invalidates its read every time): ReentrancyError at once, the callback's own write stays
// (its side effects are its own), the update's result is not stored.
TEST_F(NodeMetadataTest, ACallbackWritingWhatItReadThrowsReentrancyErrorAfterOneRun) {
  NodeMetadata md = store_.create({{"a", 1}});
  int runs = 0;
  EXPECT_THROW(md.update("a", [&](std::optional<Value>) {
    ++runs;
    md.set("a", 5);
    return Value(100);
  }),
               ReentrancyError);
  EXPECT_EQ(runs, 1);
  EXPECT_EQ(as_int(md["a"]), 5);
  // Writing the key back to the very value it read leaves nothing to invalidate: commits.
  EXPECT_EQ(as_int(md.update("a", [&](std::optional<Value> old) {
    md.set("a", *old);
    return Value(6);
  })),
            6);
  // edit() validates the whole node: a write of any key of it from its own thread.
  runs = 0;
  EXPECT_THROW(md.edit([&](NodeEditor& e) {
    ++runs;
    md.set("b", 1);
    e.set("a", 200);
  }),
               ReentrancyError);
  EXPECT_EQ(runs, 1);
  EXPECT_EQ(as_int(md["a"]), 6);
  EXPECT_EQ(as_int(md["b"]), 1);
}

// Kind: regression. Callbacks hold no lock, so destroying the node inside its own callback
// frees nothing under a lock: the callback's update/edit throws std::logic_error and
// commits nothing (before issue 21: the process stopped).
TEST_F(NodeMetadataTest, DestroyingANodeInsideItsOwnCallbackIsAClearError) {
  NodeMetadata md = store_.create({{"a", 1}});
  try {
    md.edit([&](NodeEditor& e) {
      e.set("a", 2);
      NodeMetadata taken = std::move(md);  // frees md's node
    });
    FAIL() << "expected std::logic_error";
  } catch (const std::logic_error& e) {
    EXPECT_NE(std::strstr(e.what(), "destroyed inside its own edit() callback"), nullptr) << e.what();
  }
  EXPECT_FALSE(md.valid());  // NOLINT(bugprone-use-after-move)
  EXPECT_EQ(store_.node_count(), 0u);
  NodeMetadata n = store_.create({{"a", 1}});
  EXPECT_THROW(n.update("a", [&](std::optional<Value>) {
    n = store_.create();  // assigning over the handle destroys its node
    return Value(2);
  }),
               std::logic_error);
  EXPECT_EQ(store_.node_count(), 1u);
  EXPECT_FALSE(n.contains("a"));
}

// --- Handles --------------------------------------------------------------------------

TEST_F(NodeMetadataTest, DestroyingTheHandleRemovesTheNode) {
  {
    NodeMetadata a = store_.create();
    NodeMetadata b = store_.create();
    EXPECT_EQ(store_.node_count(), 2u);
  }
  EXPECT_EQ(store_.node_count(), 0u);
}

TEST_F(NodeMetadataTest, MoveTransfersTheNode) {
  NodeMetadata a = store_.create({{"k", 1}});
  const NodeId id = a.id();
  NodeMetadata b = std::move(a);
  EXPECT_FALSE(a.valid());  // NOLINT(bugprone-use-after-move)
  EXPECT_TRUE(b.valid());
  EXPECT_EQ(b.id(), id);
  EXPECT_EQ(store_.node_count(), 1u);
  NodeMetadata c = store_.create();
  c = std::move(b);
  EXPECT_EQ(c.id(), id);
  EXPECT_EQ(store_.node_count(), 1u);
  EXPECT_EQ(as_int(c["k"]), 1);
}

TEST_F(NodeMetadataTest, UsingAMovedFromHandleIsAClearError) {
  NodeMetadata a = store_.create();
  NodeMetadata b = std::move(a);
  try {
    (void)a.contains("k");  // NOLINT(bugprone-use-after-move)
    FAIL() << "expected std::logic_error";
  } catch (const std::logic_error& e) {
    EXPECT_NE(std::string(e.what()).find("moved-from"), std::string::npos);
  }
  EXPECT_THROW(a.set("k", 1), std::logic_error);
  EXPECT_THROW((void)a.copy(), std::logic_error);
}

TEST_F(NodeMetadataTest, DuplicateInitialKeysAreRejectedNamingTheKey) {
  try {
    (void)store_.create({{"val", 1}, {"x", 2}, {"val", 3}});
    FAIL() << "expected std::invalid_argument";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("'val'"), std::string::npos);
  }
  EXPECT_EQ(store_.node_count(), 0u);  // nothing half-built is left behind
}

TEST(NodeMetadataStandaloneTest, LivesInTheDefaultStore) {
  const std::size_t before = MetadataStore::default_store().node_count();
  {
    NodeMetadata md{{"val", 3}, {"stack_trace", "File \"m.py\", line 3"}};
    EXPECT_EQ(&md.store(), &MetadataStore::default_store());
    EXPECT_EQ(md["val"].as<std::int64_t>(), 3);
    EXPECT_THROW(md.set("val", 4), ProtectedKeyError);
    NodeMetadata empty;
    EXPECT_EQ(empty.size(), 0u);
    EXPECT_EQ(MetadataStore::default_store().node_count(), before + 2);
  }
  EXPECT_EQ(MetadataStore::default_store().node_count(), before);
}

// --- version(): what a cache beside the store validates against ------------------------------

TEST(NodeMetadataVersionTest, AdvancesOnEveryWriteThatChangesTheNodeAndOnNoOther) {
  MetadataStore store;
  NodeMetadata md = store.create({{"val", 1}});
  std::uint64_t v = md.version();
  EXPECT_EQ(v % 2, 0u);  // no write being published
  auto changed = [&] {
    const std::uint64_t now = md.version();
    const bool moved = now != v;
    EXPECT_EQ(now % 2, 0u);
    if (moved) {
      EXPECT_GT(now, v);
    }
    v = now;
    return moved;
  };
  md.set("a", 1);
  EXPECT_TRUE(changed());
  md.set("a", 1);  // the same value again still replaces it
  EXPECT_TRUE(changed());
  EXPECT_FALSE(md.set_once("a", 2));
  EXPECT_EQ(md.try_set("val", 2), WriteResult::kRejectedProtected);
  (void)md.get("a");
  (void)md.items();
  EXPECT_FALSE(changed());
  EXPECT_TRUE(md.erase("a"));
  EXPECT_TRUE(changed());
  EXPECT_FALSE(md.erase("a"));
  EXPECT_FALSE(changed());
  md.edit([](NodeEditor& e) { e.set("b", 2); e.set("c", 3); });
  EXPECT_TRUE(changed());
  (void)md.update("b", [](std::optional<Value>) { return Value(4); });
  EXPECT_TRUE(changed());
  NodeMetadata view = md.view();
  view.set("d", 5);
  EXPECT_TRUE(changed());  // one node, whichever handle wrote it
}

// --- view(): a non-owning handle -----------------------------------------------------------

TEST(NodeMetadataViewTest, ViewReadsAndWritesTheSameNodeAndDyingLeavesIt) {
  MetadataStore store;
  NodeMetadata owner = store.create({{"val", 1}});
  {
    NodeMetadata view = owner.view();
    EXPECT_TRUE(view.is_view());
    EXPECT_FALSE(owner.is_view());
    EXPECT_EQ(view.id(), owner.id());
    EXPECT_EQ(&view.store(), &store);
    view.set("flops", 10);
    EXPECT_EQ(owner["flops"], Value(10));
    EXPECT_THROW(view.set("val", 2), ProtectedKeyError);
    NodeMetadata moved = std::move(view);  // moving a view moves the view
    EXPECT_TRUE(moved.is_view());
    EXPECT_FALSE(view.valid());  // NOLINT(bugprone-use-after-move): checking the moved-from state
    EXPECT_EQ(store.node_count(), 1u);
  }
  EXPECT_EQ(store.node_count(), 1u);  // views died, the node did not
  EXPECT_EQ(owner["flops"], Value(10));
}

TEST(NodeMetadataViewTest, CopyOfAViewIsAnOwningIndependentNode) {
  MetadataStore store;
  NodeMetadata owner = store.create({{"a", 1}});
  NodeMetadata view = owner.view();
  NodeMetadata copy = view.copy();
  EXPECT_FALSE(copy.is_view());
  EXPECT_NE(copy.id(), owner.id());
  copy.set("a", 2);
  EXPECT_EQ(owner["a"], Value(1));
  EXPECT_EQ(store.node_count(), 2u);
  NodeMetadata assigned = store.create();
  assigned = view;  // copy-assignment from a view: an owning snapshot
  EXPECT_FALSE(assigned.is_view());
  EXPECT_EQ(store.node_count(), 3u);
  view = store.create({{"b", 1}});  // assigning over a view leaves its node in the store
  EXPECT_FALSE(view.is_view());
  EXPECT_EQ(owner["a"], Value(1));
  EXPECT_EQ(store.node_count(), 4u);
}

// Views are handles like any other: threads writing one node through their own views and
// through the owner at once lose nothing (the race is the node's, run under asan and tsan).
TEST(NodeMetadataViewTest, ThreadsWritingThroughViewsAndTheOwnerLoseNothing) {
  MetadataStore store;
  NodeMetadata owner = store.create({{"val", 0}});
  constexpr int kThreads = 4;
  constexpr int kKeys = 200;
  std::barrier start(kThreads + 1);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      NodeMetadata view = owner.view();
      start.arrive_and_wait();
      for (int i = 0; i < kKeys; ++i) {
        view.set("view." + std::to_string(t) + "." + std::to_string(i), i);
        EXPECT_EQ(view.try_set("val", 1), WriteResult::kRejectedProtected);
        (void)view.get("owner." + std::to_string(i));
      }
    });
  }
  start.arrive_and_wait();
  for (int i = 0; i < kKeys; ++i) owner.set("owner." + std::to_string(i), i);
  for (auto& th : threads) th.join();
  EXPECT_EQ(owner.size(), 1u + kThreads * kKeys + kKeys);
  EXPECT_EQ(owner["val"], Value(0));
  EXPECT_EQ(store.node_count(), 1u);
}

TEST(NodeMetadataViewTest, ViewOfAMovedFromHandleThrows) {
  NodeMetadata a;
  NodeMetadata b = std::move(a);
  EXPECT_THROW((void)a.view(), std::logic_error);  // NOLINT(bugprone-use-after-move)
  EXPECT_FALSE(b.is_view());
}

}  // namespace
}  // namespace nodemeta
