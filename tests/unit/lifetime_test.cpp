// When old values die, and what their destructors may do (issue 13, items 1-3): values a
// write replaced or erased are released after the write, outside every lock, so a user
// type's destructor may read or write its own node, or own it; callbacks run isolated from
// unrelated oneTBB work; callbacks on two stores reading each other cannot deadlock.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include <oneapi/tbb/task_arena.h>
#include <oneapi/tbb/task_group.h>

#include "nodemeta/nodemeta.h"
#include "support/stress.h"

namespace nodemeta {
namespace {

// A value whose destructor reads its node and writes to it. Before the fix the old value
// was dropped under the node's lock: the read spun forever on that lock.
struct Lease {
  NodeMetadata* node;
  std::atomic<int>* destroyed;
  ~Lease() {
    if (node == nullptr) return;
    (void)node->size();
    (void)node->get("lease");
    node->set("lease_released", true);
    destroyed->fetch_add(1);
  }
};

TEST(LifetimeTest, ReplacedValuesDestructorMayReadAndWriteItsOwnNode) {
  MetadataStore store;
  NodeMetadata node = store.create();
  std::atomic<int> destroyed{0};
  node.set("lease", Value::make<Lease>(&node, &destroyed));
  node.set("lease", 2);  // the Lease is retired, not destroyed under the lock
  release_retired_values();
  EXPECT_EQ(destroyed.load(), 1);
  EXPECT_TRUE(node["lease_released"].as<bool>());
  EXPECT_EQ(node["lease"].as<std::int64_t>(), 2);

  node.set("lease", Value::make<Lease>(&node, &destroyed));
  EXPECT_TRUE(node.erase("lease"));
  release_retired_values();
  EXPECT_EQ(destroyed.load(), 2);

  // edit() and update() replace values the same way.
  node.set("lease", Value::make<Lease>(&node, &destroyed));
  node.edit([](NodeEditor& e) { e.set("lease", 3); });
  release_retired_values();
  EXPECT_EQ(destroyed.load(), 3);
  node.set("lease", Value::make<Lease>(&node, &destroyed));
  node.update("lease", [](std::optional<Value>) { return 4; });
  release_retired_values();
  EXPECT_EQ(destroyed.load(), 4);
}

// A value holding the last reference to the very node it is stored in. Before the fix,
// erasing it destroyed the node (and freed its lock) while erase() still held that lock:
// heap-use-after-free under ASAN.
TEST(LifetimeTest, ValueOwningItsOwnNodeCanBeErased) {
  MetadataStore store;
  auto holder = std::make_shared<NodeMetadata>(store.create({{"x", 1}}));
  holder->set("self", Value::make<std::shared_ptr<NodeMetadata>>(holder));
  NodeMetadata* raw = holder.get();
  holder.reset();  // the node now owns itself
  EXPECT_EQ(store.node_count(), 1u);
  EXPECT_TRUE(raw->erase("self"));
  release_retired_values();  // drops the last reference: the node is destroyed, outside locks
  EXPECT_EQ(store.node_count(), 0u);
}

// Destroying a node releases its values after it left the store: a destructor may create,
// read and destroy nodes of the same store.
struct MakesNodes {
  MetadataStore* store;
  std::atomic<int>* ran;
  ~MakesNodes() {
    if (store == nullptr) return;
    NodeMetadata n = store->create({{"made_in_destructor", 1}});
    n.set("k", 2);
    ran->fetch_add(1);
  }
};

TEST(LifetimeTest, DestroyingANodeReleasesItsValuesOutsideTheStoresLocks) {
  MetadataStore store;
  std::atomic<int> ran{0};
  {
    NodeMetadata node = store.create({{"m", Value::make<MakesNodes>(&store, &ran)}});
  }
  EXPECT_EQ(ran.load(), 1);
  EXPECT_EQ(store.node_count(), 0u);
}

// Issue 13 item 2: a callback that waits inside oneTBB (task_group::wait) must not run an
// unrelated outer task on its thread: that task's writes would be refused with
// ReentrancyError though nothing nested. Deterministic at one thread: the outer write task
// sits in this thread's deque, and the callback's own task is in the arena's FIFO queue, so
// a non-isolated wait takes the outer task first (without the fix: 99-100 of 100 rounds
// threw, at 1 and at 2 threads).
TEST(LifetimeTest, CallbacksAreIsolatedFromUnrelatedTbbWork) {
  MetadataStore store;
  NodeMetadata a = store.create({{"n", 0}});
  NodeMetadata b = store.create();
  int rounds = 0;
  for (int threads : {1, 2}) {
    tbb::task_arena arena(threads);
    for (int r = 0; r < 20; ++r, ++rounds) {
      EXPECT_NO_THROW(arena.execute([&] {
        tbb::task_group outer;
        outer.run([&] { b.set("outer_write", r); });  // unrelated to the callback below
        outer.run([&] {
          a.update("n", [&](std::optional<Value> old) {
            tbb::task_group g;
            tbb::this_task_arena::enqueue(g.defer([] {}));
            g.wait();
            return Value(old->as<std::int64_t>() + 1);
          });
        });
        outer.wait();
      })) << "threads " << threads << " round " << r;
    }
  }
  EXPECT_EQ(a["n"].as<std::int64_t>(), rounds);
  EXPECT_EQ(b["outer_write"].as<std::int64_t>(), 19);
}

// Issue 13 item 3: thread 1 in a.update() reads b while thread 2 in b.update() reads a.
// With locking reads this deadlocked; reads now take no lock.
TEST(LifetimeTest, CallbacksOnTwoStoresReadingEachOtherDoNotDeadlock) {
  MetadataStore a_store, b_store;
  NodeMetadata a = a_store.create({{"v", 0}});
  NodeMetadata b = b_store.create({{"v", 0}});
  constexpr int kRounds = 1000;
  test::SpinGate sync(2);  // both callbacks overlap in (nearly) every round
  auto run = [&](NodeMetadata& mine, NodeMetadata& theirs) {
    for (int r = 0; r < kRounds; ++r) {
      sync.arrive_and_wait();
      mine.update("v", [&](std::optional<Value> old) {
        // Both callbacks hold their node's lock and read the other node.
        return Value(old->as<std::int64_t>() + (theirs["v"].as<std::int64_t>() >= 0 ? 1 : 0));
      });
    }
  };
  std::thread t1([&] { run(a, b); });
  std::thread t2([&] { run(b, a); });
  t1.join();
  t2.join();
  EXPECT_EQ(a["v"].as<std::int64_t>(), kRounds);
  EXPECT_EQ(b["v"].as<std::int64_t>(), kRounds);
}

// Review finding: a value a NodeEditor replaced was destroyed inside the callback, under
// the node's lock, where its destructor's write was refused (terminate).
struct WritesOnDestruction {
  NodeMetadata* target;
  ~WritesOnDestruction() {
    if (target != nullptr) target->set("written_by_destructor", true);
  }
};

TEST(LifetimeTest, ValuesANodeEditorReplacesDieAfterTheLock) {
  MetadataStore store;
  NodeMetadata other = store.create();
  NodeMetadata node = store.create();
  node.edit([&](NodeEditor& e) {
    e.set("obj", Value::make<WritesOnDestruction>(&other));
    e.set("obj", 3);  // replaces it inside the callback
    e.set("gone", Value::make<WritesOnDestruction>(&other));
    EXPECT_TRUE(e.erase("gone"));
  });
  EXPECT_TRUE(other["written_by_destructor"].as<bool>());
  EXPECT_EQ(node["obj"].as<std::int64_t>(), 3);
}

std::atomic<int> g_plugins{0};
struct PluginValue {
  PluginValue() { g_plugins.fetch_add(1); }
  ~PluginValue() { g_plugins.fetch_sub(1); }
};

// Review finding: release_retired_values() released only the calling thread's (and exited
// threads') retirements, so values replaced on a live worker outlived it (a dlclose of the
// module defining them would leave dangling vtables).
TEST(LifetimeTest, ReleaseRetiredValuesTakesLiveThreadsRetirementsToo) {
  MetadataStore store;
  NodeMetadata node = store.create();
  std::atomic<int> phase{0};
  std::thread worker([&] {
    for (int i = 0; i < 40; ++i) node.set("p", Value::make<PluginValue>());  // fewer than a batch
    phase.store(1);
    phase.notify_all();
    phase.wait(1);  // stays alive, idle, while the main thread releases
  });
  phase.wait(0);
  release_retired_values();
  EXPECT_EQ(g_plugins.load(), 1);  // only the node's current value
  phase.store(2);
  phase.notify_all();
  worker.join();
}

// Review finding: a thread_local destructor that writes a node after nodemeta's own
// thread-exit hook ran leaked the thread's state and what it retired (LeakSanitizer).
std::atomic<int> g_tls_written{0};
struct TlsWriter {
  NodeMetadata* node = nullptr;
  ~TlsWriter() {
    if (node == nullptr) return;
    node->set("tls", Value::make<PluginValue>());
    node->set("tls", Value::make<PluginValue>());
    g_tls_written.fetch_add(1);
  }
};
thread_local TlsWriter t_writer;

TEST(LifetimeTest, ThreadLocalDestructorsMayWriteAfterTheThreadsFirstWrites) {
  MetadataStore store;
  NodeMetadata node = store.create();
  for (int t = 0; t < 4; ++t) {
    std::thread th([&] {
      t_writer.node = &node;  // constructed before the thread's first nodemeta call
      node.set("first", t);
    });
    th.join();
  }
  EXPECT_EQ(g_tls_written.load(), 4);
  release_retired_values();
  EXPECT_EQ(g_plugins.load(), 1);
  EXPECT_TRUE(node.erase("tls"));
  release_retired_values();
  EXPECT_EQ(g_plugins.load(), 0);
}

// Review finding: after fork(), the record of a thread that was mid-read in the parent
// stayed pinned in the child, so reclamation never advanced there (release hung).
TEST(LifetimeTest, AForkedChildStillReclaims) {
#if defined(__SANITIZE_THREAD__)
  // ThreadSanitizer's own runtime may deadlock in a child forked from a multi-threaded
  // process (its internal locks are held by threads the child does not have).
  GTEST_SKIP() << "fork() of a multi-threaded process is not supported under ThreadSanitizer";
#endif
  MetadataStore store;
  NodeMetadata node = store.create({{"s", "x"}, {"n", 1}});
  std::atomic<bool> stop{false};
  std::atomic<bool> reading{false};
  // The reader is pinned nearly all the time and never allocates (an int read), so the
  // fork catches it pinned and the child's allocator is in a usable state (a thread caught
  // inside malloc at fork would make any child allocation unsafe, nodemeta or not).
  std::thread reader([&] {
    (void)node.get("n");
    reading.store(true);
    while (!stop.load(std::memory_order_relaxed)) (void)node.get("n");
  });
  while (!reading.load()) std::this_thread::yield();
  const pid_t pid = fork();
  if (pid == 0) {
    alarm(10);  // a hang fails the test instead of blocking it
    for (int i = 0; i < 1000; ++i) node.set("s", std::string(40, static_cast<char>('a' + i % 26)));
    release_retired_values();
    _exit(node["s"].as<std::string>().size() == 40 ? 0 : 1);
  }
  stop = true;
  reader.join();
  ASSERT_GT(pid, 0);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status)) << "child killed by signal " << (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  EXPECT_EQ(WIFEXITED(status) ? WEXITSTATUS(status) : -1, 0);
}

// Issue 21, item 2 (reproducer core/09): release_retired_values() returned while another
// thread's routine collection still held values retired before the call (taken out of the
// retire lists into its private list, destroying them one by one), so "release, then
// dlclose the module" could still run the module's code. Now it waits for that collection.
std::atomic<long> g_slow_live{0};
std::atomic<bool> g_slow_block{true};
std::atomic<bool> g_slow_blocking{false};
std::atomic<std::thread::id> g_slow_collector{};
struct SlowPlugin {
  SlowPlugin() { g_slow_live.fetch_add(1); }
  SlowPlugin(const SlowPlugin&) = delete;
  ~SlowPlugin() {
    // The first one the other thread's collection destroys blocks it (a slow destructor).
    if (std::this_thread::get_id() == g_slow_collector.load() && !g_slow_blocking.exchange(true)) {
      g_slow_blocking.notify_all();
      while (g_slow_block.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    g_slow_live.fetch_sub(1);
  }
};

TEST(LifetimeTest, ReleaseRetiredValuesWaitsForAnotherThreadsCollection) {
  MetadataStore store;
  NodeMetadata n = store.create();
  for (int i = 0; i < 100; ++i) n.set("p", Value::make<SlowPlugin>());  // 99 retired, no collect
  std::thread other([&] {  // ordinary writes; its collections release from every record
    g_slow_collector.store(std::this_thread::get_id());
    NodeMetadata m = store.create();
    for (int i = 0; !g_slow_blocking.load(); ++i) m.set("big", std::string(8 + i % 2, 'x'));
  });
  g_slow_blocking.wait(false);  // the other thread's collection is inside a destructor
  std::atomic<bool> returned{false};
  long live_at_return = -1;
  std::thread releaser([&] {
    release_retired_values();
    live_at_return = g_slow_live.load();
    returned.store(true);
  });
  // Not synchronisation: only a chance for a release that does not wait to return early.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(returned.load()) << "returned while a collection still held retired values";
  g_slow_block.store(false);
  releaser.join();
  other.join();
  EXPECT_EQ(live_at_return, 1);  // only the node's own value
}

// Issue 21, item 3 (reproducer core/04): a value that owns a node of the store was retired;
// the program destroyed its handles and the store, and the next collection destroyed that
// node in the freed store (heap-use-after-free; in debug builds a false assertion). Now the
// store's destructor releases retired values first.
struct Subgraph {
  Subgraph(NodeMetadata n, std::atomic<int>* d) : inner(std::move(n)), destroyed(d) {}
  Subgraph(const Subgraph&) = delete;
  ~Subgraph() { destroyed->fetch_add(1); }
  NodeMetadata inner;
  std::atomic<int>* destroyed;
};

TEST(LifetimeTest, StoreDestroyedWhileARetiredValueOwnsOneOfItsNodes) {
  std::atomic<int> destroyed{0};
  auto store = std::make_unique<MetadataStore>();
  {
    NodeMetadata outer = store->create();
    outer.set("sub", Value::make<Subgraph>(store->create({{"x", 1}}), &destroyed));
    outer.set("sub", Value());  // replaced: the Subgraph, and its node, are retired
  }
  EXPECT_EQ(store->node_count(), 1u);  // the retired Subgraph's node
  EXPECT_EQ(destroyed.load(), 0);
  store.reset();
  EXPECT_EQ(destroyed.load(), 1);
  release_retired_values();  // nothing of the store left to touch
}

}  // namespace
}  // namespace nodemeta
