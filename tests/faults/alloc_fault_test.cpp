// Contract clause 8 (strong exception guarantee) under failing allocations: for every
// operation and k = 1, 2, ... until the operation completes, the k-th allocation made
// while it runs throws std::bad_alloc. Each run must either complete (with the result a
// run without failures gives) or throw, and after a throw the node, the store and the
// graph must be exactly as before. LeakSanitizer (asan preset) checks that nothing leaks.
//
// The hook: this executable replaces every form of operator new and delete (plain, array,
// nothrow, aligned, sized), which counts allocations while armed, on every thread (oneTBB
// workers included); in builds with NODEMETA_FAULT_INJECTION (the debug preset) the core's
// tbb_allocator calls the same counter through detail::set_allocation_hook. The sanitizer
// presets use std::allocator, which goes through operator new. docs/design.md, "Failing
// allocations on purpose", has the argument and what is not covered.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <map>
#include <new>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <oneapi/tbb/parallel_for.h>

#include "nodemeta/graph/graph_io.h"
#include "nodemeta/metadata_store.h"
#include "nodemeta/passes/passes.h"

// ---- the hook ----------------------------------------------------------------------------

namespace {

struct FaultState {
  std::atomic<bool> armed{false};
  std::atomic<long> count{0};    // allocations since armed
  std::atomic<long> fail_at{0};  // the allocation that fails (1-based); 0: none
  std::atomic<long> injected{0};
};
FaultState g_fault;

// True if this allocation is the one to fail.
bool fail_this_allocation() noexcept {
  if (!g_fault.armed.load(std::memory_order_relaxed)) return false;
  const long n = g_fault.count.fetch_add(1, std::memory_order_relaxed) + 1;
  if (n != g_fault.fail_at.load(std::memory_order_relaxed)) return false;
  g_fault.injected.fetch_add(1, std::memory_order_relaxed);
  return true;
}

void* checked_malloc(std::size_t n) {
  if (fail_this_allocation()) throw std::bad_alloc();
  void* p = std::malloc(n == 0 ? 1 : n);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}
void* nothrow_malloc(std::size_t n) noexcept {
  if (fail_this_allocation()) return nullptr;
  return std::malloc(n == 0 ? 1 : n);
}
void* aligned_malloc(std::size_t n, std::align_val_t al, bool nothrow) {
  if (fail_this_allocation()) {
    if (nothrow) return nullptr;
    throw std::bad_alloc();
  }
  void* p = nullptr;
  const std::size_t a = std::max(static_cast<std::size_t>(al), sizeof(void*));
  if (posix_memalign(&p, a, n == 0 ? 1 : n) != 0) {
    if (nothrow) return nullptr;
    throw std::bad_alloc();
  }
  return p;
}

// The core's fault point (tbb_allocator builds with NODEMETA_FAULT_INJECTION).
[[maybe_unused]] void core_allocation_hook(std::size_t /*bytes*/) {
  if (fail_this_allocation()) throw std::bad_alloc();
}

}  // namespace

void* operator new(std::size_t n) { return checked_malloc(n); }
void* operator new[](std::size_t n) { return checked_malloc(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept { return nothrow_malloc(n); }
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept { return nothrow_malloc(n); }
void* operator new(std::size_t n, std::align_val_t al) { return aligned_malloc(n, al, false); }
void* operator new[](std::size_t n, std::align_val_t al) { return aligned_malloc(n, al, false); }
void* operator new(std::size_t n, std::align_val_t al, const std::nothrow_t&) noexcept {
  return aligned_malloc(n, al, true);
}
void* operator new[](std::size_t n, std::align_val_t al, const std::nothrow_t&) noexcept {
  return aligned_malloc(n, al, true);
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }

namespace nodemeta {
namespace {

using graph::Graph;

// Arms the hook so that the k-th allocation from now on fails; disarms when it dies.
class Armed {
 public:
  explicit Armed(long k) {
    g_fault.count.store(0);
    g_fault.injected.store(0);
    g_fault.fail_at.store(k);
    g_fault.armed.store(true);
  }
  ~Armed() { disarm(); }
  Armed(const Armed&) = delete;
  Armed& operator=(const Armed&) = delete;
  void disarm() noexcept { g_fault.armed.store(false); }
};

// The failure points each operation exercised, printed once by the last test.
std::map<std::string, long>& tally() {
  static std::map<std::string, long> t;
  return t;
}

class FaultEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
#if defined(NODEMETA_FAULT_INJECTION) && NODEMETA_FAULT_INJECTION && \
    !(defined(NODEMETA_STD_ALLOCATOR) && NODEMETA_STD_ALLOCATOR)
    detail::set_allocation_hook(&core_allocation_hook);
#endif
    // oneTBB's scheduler (its arena, its workers) starts on first use: start it here, so
    // an injected failure never lands in its one-time setup (noexcept code in oneTBB).
    tbb::parallel_for(0, 64, [](int) {});
  }
  void TearDown() override {
    long total = 0;
    for (const auto& [op, n] : tally()) {
      std::printf("alloc-faults: %-28s %6ld failure points\n", op.c_str(), n);
      total += n;
    }
    std::printf("alloc-faults: total %ld (operation, k) failure points over %zu operations\n", total,
                tally().size());
  }
};
const auto* const g_env = ::testing::AddGlobalTestEnvironment(new FaultEnvironment);

// "" if equal, else the first line that differs in each (snapshots are long).
std::string first_difference(const std::string& a, const std::string& b) {
  if (a == b) return {};
  std::size_t i = 0;
  while (i < a.size() && i < b.size() && a[i] == b[i]) ++i;
  const std::size_t from = i < 120 ? 0 : i - 120;
  return "\n  expected: ..." + a.substr(from, 240) + "\n  actual:   ..." + b.substr(from, 240);
}

// Runs `op` on a fresh fixture for k = 1, 2, ... with the k-th allocation failing, until a
// run makes fewer than k allocations. `state` dumps what must not change (and what a run
// that completes must produce). `accept` says whether an exception other than
// std::bad_alloc is the documented translation of one (load_graph's GraphError).
template <class Fixture>
long exercise(const std::string& name, const std::function<Fixture()>& setup,
              const std::function<void(Fixture&)>& op, const std::function<std::string(Fixture&)>& state,
              const std::function<bool(const std::exception&)>& accept = nullptr) {
  // The result of a run without failures.
  std::string done;
  {
    Fixture f = setup();
    {
      Armed armed(0);
      op(f);
    }
    done = state(f);
  }
  long points = 0;
  for (long k = 1;; ++k) {
    Fixture f = setup();
    const std::string before = state(f);
    bool threw = false;
    std::string what;
    {
      Armed armed(k);
      try {
        op(f);
      } catch (const std::bad_alloc&) {
        threw = true;
      } catch (const std::exception& e) {
        armed.disarm();
        threw = true;
        what = e.what();
        if (!accept || !accept(e)) ADD_FAILURE() << name << ", k=" << k << ": unexpected exception: " << what;
      }
      armed.disarm();
    }
    const long injected = g_fault.injected.load();
    if (injected == 0) {
      EXPECT_FALSE(threw) << name << ", k=" << k << ": threw without an injected failure: " << what;
      EXPECT_EQ(first_difference(done, state(f)), "") << name << ": the run without failures differs from the first";
      break;  // fewer than k allocations: every failure point was visited
    }
    ++points;
    const std::string after = state(f);
    if (threw) {
      EXPECT_EQ(first_difference(before, after), "") << name << ", k=" << k << ": changed by an operation that threw";
    } else {
      // The failure was absorbed (a size hint, a deferred release): the result must be right.
      EXPECT_EQ(first_difference(done, after), "") << name << ", k=" << k
                                                    << ": completed after a failure, with another result";
    }
    if (::testing::Test::HasFailure()) break;
    if (k > 200000) {
      ADD_FAILURE() << name << ": no end after " << k << " failure points";
      break;
    }
  }
  // A write that grows a node allocates its new slot array from the store's allocator: if
  // no allocation of it could be failed, the hook does not reach the store (a build without
  // the fault point) and every "unchanged after a throw" above was checked vacuously.
  if (name.find("grows") != std::string::npos) {
    EXPECT_GT(points, 0) << name << ": no allocation to fail; the store's allocator escapes the hook";
  }
  tally()[name] += points;
  ::testing::Test::RecordProperty(name + ".failure_points", std::to_string(points));
  return points;
}

// ---- snapshots ---------------------------------------------------------------------------

std::string dump(const NodeMetadata& node) {
  std::string out = "{";
  for (const auto& [k, v] : node.items()) out += k + ": " + v.repr() + ", ";
  return out + "}";
}

// A store with a few nodes: what every node operation works on.
struct StoreFixture {
  std::unique_ptr<MetadataStore> store = std::make_unique<MetadataStore>();
  std::vector<NodeMetadata> nodes;    // destroyed before the store (declared after it)
  std::vector<NodeMetadata> created;  // what the operation made (capacity reserved)
  std::vector<KeyValue> items;        // arguments, built outside the armed window
  Value value;
  std::optional<Items> read;

  NodeMetadata& node() { return nodes.front(); }

  std::string state() const {
    std::string out = "nodes=" + std::to_string(store->node_count()) + " protected=[";
    for (const std::string& k : store->protected_keys()) out += k + ",";
    out += "]";
    for (const NodeMetadata& n : nodes) out += "\n" + dump(n);
    for (const NodeMetadata& n : created) out += "\ncreated " + dump(n);
    if (read) {
      out += "\nread {";
      for (const auto& [k, v] : *read) out += k + ": " + v.repr() + ", ";
      out += "}";
    }
    return out;
  }
};

Value long_string(const char* tag) { return Value(std::string(tag) + std::string(64, 'x')); }

// A node with `keys` keys (strings, ints, a list, a dict, protected keys) and no spare
// slot when `full`: the next new key makes it grow.
StoreFixture store_fixture(bool full = false) {
  StoreFixture f;
  std::vector<KeyValue> items = {
      {keys::val, Value::list({Value(1), Value(2)})},
      {keys::stack_trace, long_string("trace")},
      {Key("name"), long_string("name")},
      {Key("count"), Value(7)},
      {Key("shape"), Value::dict({{"h", Value(3)}, {"w", Value(4)}})},
  };
  f.nodes.push_back(f.store->create(items));
  if (full) {
    // create() leaves one spare slot: fill it, so the next new key reallocates.
    f.nodes.front().set(Key("spare"), long_string("spare"));
  }
  f.nodes.push_back(f.store->create({{Key("other"), long_string("other")}}));
  f.created.reserve(4);
  f.value = long_string("new");
  return f;
}

using StoreOp = std::function<void(StoreFixture&)>;

void exercise_store(const std::string& name, const StoreOp& op, bool full = false) {
  exercise<StoreFixture>(
      name, [full] { return store_fixture(full); }, op, [](StoreFixture& f) { return f.state(); });
}

// Runs `op` on a thread of its own, started inside the armed window: its first read or
// write registers the thread with the core's deferred reclamation (src/reclaim.cpp).
StoreOp on_new_thread(StoreOp op) {
  return [op](StoreFixture& f) {
    std::exception_ptr error;
    std::thread t([&] {
      try {
        op(f);
      } catch (...) {
        error = std::current_exception();
      }
    });
    t.join();
    if (error) std::rethrow_exception(error);
  };
}

// ---- node and store operations -----------------------------------------------------------

// First, while no thread has exited yet: the first thread to write must register a
// reclamation record of its own (later ones reuse the records exited threads left).
TEST(AllocFaultTest, FirstWriteOnANewThread) {
  exercise_store("set (first write of a thread)",
                 on_new_thread([](StoreFixture& f) { f.node().set(Key("name"), f.value); }));
  exercise_store("items (first read of a thread)", on_new_thread([](StoreFixture& f) { f.read = f.node().items(); }));
  exercise_store("erase (first write of a thread)",
                 on_new_thread([](StoreFixture& f) { EXPECT_TRUE(f.node().erase(Key("name"))); }));
}

TEST(AllocFaultTest, Create) {
  exercise_store("create", [](StoreFixture& f) {
    f.created.push_back(f.store->create({{Key("a"), Value(1)},
                                         {Key("b"), long_string("b")},
                                         {keys::val, Value::list({Value(1.5)})}}));
  });
  // The same with every argument built beforehand: only create()'s own allocations.
  exercise<StoreFixture>(
      "create (prebuilt items)",
      [] {
        StoreFixture f = store_fixture();
        for (int i = 0; i < 8; ++i) f.items.emplace_back(Key("k" + std::to_string(i)), long_string("v"));
        return f;
      },
      [](StoreFixture& f) { f.created.push_back(f.store->create(f.items)); },
      [](StoreFixture& f) { return f.state(); });
  // A store's first node: oneTBB links it into the map, then allocates the map's first
  // bucket segment (whose failure once left the node in the map, with no handle).
  exercise<StoreFixture>(
      "create (a store's first node)",
      [] {
        StoreFixture f;
        f.created.reserve(4);
        return f;
      },
      [](StoreFixture& f) { f.created.push_back(f.store->create({{Key("a"), long_string("a")}})); },
      [](StoreFixture& f) { return f.state(); });
  // Too many keys for the node's block: the array is allocated on the heap first.
  exercise<StoreFixture>(
      "create (70 keys: a heap array)",
      [] {
        StoreFixture f = store_fixture();
        for (int i = 0; i < 70; ++i) f.items.emplace_back(Key("k" + std::to_string(i)), long_string("v"));
        return f;
      },
      [](StoreFixture& f) { f.created.push_back(f.store->create(f.items)); },
      [](StoreFixture& f) { return f.state(); });
}

TEST(AllocFaultTest, Set) {
  exercise_store("set (replace)", [](StoreFixture& f) { f.node().set(Key("name"), f.value); });
  exercise_store("set (new key, spare slot)", [](StoreFixture& f) { f.node().set(Key("fresh"), f.value); });
  exercise_store("set (new key, grows)", [](StoreFixture& f) { f.node().set(Key("fresh"), f.value); },
                 /*full=*/true);
}

TEST(AllocFaultTest, TrySet) {
  exercise_store("try_set (replace)",
                 [](StoreFixture& f) { EXPECT_EQ(f.node().try_set(Key("name"), f.value), WriteResult::kUpdated); });
  exercise_store("try_set (new key, grows)",
                 [](StoreFixture& f) { EXPECT_EQ(f.node().try_set(Key("fresh"), f.value), WriteResult::kInserted); },
                 /*full=*/true);
}

TEST(AllocFaultTest, SetOnce) {
  exercise_store("set_once (new protected key)",
                 [](StoreFixture& f) { EXPECT_TRUE(f.node().set_once(keys::tensor_meta, f.value)); });
  exercise_store("set_once (new key, grows)",
                 [](StoreFixture& f) { EXPECT_TRUE(f.node().set_once(Key("fresh"), f.value)); }, /*full=*/true);
}

TEST(AllocFaultTest, Update) {
  exercise_store("update (existing key)", [](StoreFixture& f) {
    f.node().update(Key("count"), [](std::optional<Value> old) { return Value(old->as<std::int64_t>() + 1); });
  });
  exercise_store(
      "update (new key, allocating callback, grows)",
      [](StoreFixture& f) {
        f.node().update(Key("fresh"), [](std::optional<Value>) { return long_string("made"); });
      },
      /*full=*/true);
}

TEST(AllocFaultTest, Edit) {
  exercise_store(
      "edit",
      [](StoreFixture& f) {
        f.node().edit([&](NodeEditor& e) {
          e.set(Key("name"), f.value);
          e.set(Key("fresh"), long_string("fresh"));
          (void)e.set_once(Key("fresh2"), Value(2));
          (void)e.erase(Key("count"));
          (void)e.items();
        });
      },
      /*full=*/true);
}

TEST(AllocFaultTest, Copy) {
  exercise_store("copy", [](StoreFixture& f) { f.created.push_back(f.node().copy()); });
}

TEST(AllocFaultTest, Items) {
  exercise_store("items", [](StoreFixture& f) { f.read = f.node().items(); });
}

TEST(AllocFaultTest, Erase) {
  exercise_store("erase", [](StoreFixture& f) { EXPECT_TRUE(f.node().erase(Key("name"))); });
}

TEST(AllocFaultTest, Protect) {
  exercise_store("protect", [](StoreFixture& f) { f.store->protect(Key("count")); });
  // A key id past the first segment of the protection bitset: allocates a segment.
  // A key id past the first segment of the protection bitset (ids 0-63): allocates one.
  static long filler = 0;
  while (Key::interned_count() < 200) (void)Key("alloc_fault_protect_filler_" + std::to_string(filler++));
  const Key far("alloc_fault_far_key");
  ASSERT_GE(far.id(), 64U);
  exercise_store("protect (new bitset segment)", [far](StoreFixture& f) { f.store->protect(far); });
}

// ---- interning ---------------------------------------------------------------------------

struct InternFixture {
  std::string name;  // a name never interned before
  std::size_t interned = 0;
  std::optional<Key> key;
};

std::string intern_state(InternFixture& f) {
  // After a throw, the name is not interned and no id was used; after success, it is.
  const std::optional<Key> found = Key::find(f.name);
  return "interned=" + std::to_string(Key::interned_count() - f.interned) +
         " found=" + (found ? std::string(found->name()) == f.name ? "same" : "other" : "no") +
         " key=" + (f.key ? std::string(f.key->name()) == f.name ? "same" : "other" : "none");
}

// Interns filler names until interning `ahead` more names brings the table to `target`
// entries (a growth of the open-addressing table, or a new id segment).
void intern_until(std::size_t target) {
  static long filler = 0;
  while (Key::interned_count() < target) (void)Key("alloc_fault_filler_" + std::to_string(filler++));
}

void exercise_intern(const std::string& name, const std::function<std::size_t()>& next_count) {
  static long fresh = 0;
  exercise<InternFixture>(
      name,
      [&] {
        const std::size_t target = next_count();
        intern_until(target - 1);  // the operation's name is the target-th entry
        InternFixture f;
        f.name = "alloc_fault_fresh_" + std::to_string(fresh++) + std::string(40, 'n');
        f.interned = Key::interned_count();
        return f;
      },
      [](InternFixture& f) { f.key = Key(f.name); },
      [](InternFixture& f) {
        // The fixture's state right after the run, and whether the name is in the table;
        // a run that completed interned exactly one name.
        return intern_state(f);
      });
}

TEST(AllocFaultTest, InternNewKey) {
  exercise_intern("intern (plain)", [] { return Key::interned_count() + 1; });
  // The table holds at most half its capacity (64, doubling): the entry that passes half
  // makes it grow. interned_count() counts the table's entries (the predefined ones too).
  exercise_intern("intern (table grows)", [] {
    std::size_t capacity = 64;
    while (Key::interned_count() * 2 > capacity) capacity *= 2;
    std::size_t target = capacity / 2 + 1;
    if (target <= Key::interned_count()) target = capacity + 1;
    return target;
  });
  // Ids 64, 128, 256, ... open a new segment of the id -> name array.
  exercise_intern("intern (new id segment)", [] {
    std::size_t id = 64;
    while (id <= Key::interned_count()) id *= 2;
    return id;  // the entry with id `id` is the id-th (ids start at 1)
  });
}

// ---- graphs and passes -------------------------------------------------------------------

const std::string kGraph = std::string(NODEMETA_FAULT_DATA_DIR) + "/resnet50_head.json";

std::string graph_state(const Graph& g) {
  return "nodes=" + std::to_string(g.store().node_count()) + "\n" + graph::to_json(g);
}

struct GraphFixture {
  std::optional<Graph> graph;
  std::optional<passes::Baseline> baseline;
  std::vector<passes::PassStats> stats;
};

TEST(AllocFaultTest, LoadGraph) {
  exercise<GraphFixture>(
      "load_graph", [] { return GraphFixture{}; },
      [](GraphFixture& f) { f.graph.emplace(graph::load_graph(kGraph)); },
      [](GraphFixture& f) { return f.graph ? graph_state(*f.graph) : std::string("no graph"); },
      [](const std::exception& e) {
        // Running out of memory while loading is a GraphError naming the file.
        return dynamic_cast<const graph::GraphError*>(&e) != nullptr &&
               std::string(e.what()).find("resnet50_head.json") != std::string::npos;
      });
}

// Each pass of the pipeline, run on the graph as the passes before it left it: all or
// nothing (fuse by its splice, the passes that annotate nodes by their PassContext's journal,
// which run_pass undoes when the pass throws).
void exercise_pass(const std::string& pass) {
  exercise<GraphFixture>(
      "pass " + pass,
      [&pass] {
        GraphFixture f;
        f.graph.emplace(graph::load_graph(kGraph));
        f.baseline.emplace(*f.graph);
        for (const std::string& p : passes::pass_names()) {
          if (p == pass) break;
          std::vector<std::string> one{p};
          (void)passes::run_pipeline(*f.graph, one, *f.baseline);
        }
        f.stats.reserve(1);
        return f;
      },
      [&pass](GraphFixture& f) {
        std::vector<std::string> one{pass};
        f.stats = passes::run_pipeline(*f.graph, one, *f.baseline);
      },
      [](GraphFixture& f) { return graph_state(*f.graph); });
}

TEST(AllocFaultTest, PassCost) { exercise_pass("cost"); }
TEST(AllocFaultTest, PassFuse) { exercise_pass("fuse"); }
TEST(AllocFaultTest, PassPropagate) { exercise_pass("propagate"); }
TEST(AllocFaultTest, PassStripDebug) { exercise_pass("strip_debug"); }
TEST(AllocFaultTest, PassVerify) { exercise_pass("verify"); }

}  // namespace
}  // namespace nodemeta
