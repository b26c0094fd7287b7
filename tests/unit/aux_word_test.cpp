// NodeState::aux (capacity class + two counts in one word) and the write windows opened in
// the lock's CAS (write, set_once, update commits): probes from the review of both; each
// test says what it shows. White box where the contract cannot be observed otherwise (a
// handle is {store, node entry}, as in fork_test.cpp).
#include <gtest/gtest.h>

#include <pthread.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "nodemeta/detail/record.h"
#include "nodemeta/nodemeta.h"
#include "support/stress.h"

namespace nodemeta {
namespace {

using detail::NodeState;

NodeState& state_of(const NodeMetadata& h) {
  NodeEntry* entry = nullptr;
  std::memcpy(&entry, reinterpret_cast<const char*>(&h) + sizeof(void*), sizeof entry);
  return entry->second;
}
std::uint32_t calls_of(const NodeMetadata& h) {
  return (state_of(h).aux.load() & NodeState::kCallbackMask) / NodeState::kCallbackUnit;
}
std::uint32_t waiters_of(const NodeMetadata& h) {
  return (state_of(h).aux.load() & NodeState::kPriorityMask) / NodeState::kPriorityUnit;
}

// --- The 4,095-call limit ------------------------------------------------------------------

// Stack addresses of the callbacks of nesting levels 1 and 101 (bytes a level costs).
std::uintptr_t g_level1 = 0;
std::uintptr_t g_level101 = 0;

// Nested update()s of one node on one thread, `depth` deep. Returns how many levels were
// entered (callbacks that ran).
int nest(NodeMetadata& h, int depth, int& entered, std::string& error) {
  if (depth == 0) return entered;
  try {
    (void)h.update("k", [&](std::optional<Value> v) {
      ++entered;
      const auto here = reinterpret_cast<std::uintptr_t>(__builtin_frame_address(0));
      if (entered == 1) g_level1 = here;
      if (entered == 101) {
        g_level101 = here;
        std::printf("stack per nested update(): %zu bytes\n",
                    static_cast<std::size_t>((g_level1 - g_level101) / 100));
        std::fflush(stdout);
      }
      nest(h, depth - 1, entered, error);
      return v ? *v : Value(0);
    });
  } catch (const std::length_error& e) {
    if (error.empty()) error = e.what();
    throw;
  }
  return entered;
}

// Runs `fn` on a thread with a `bytes` stack.
void run_with_stack(std::size_t bytes, const std::function<void()>& fn) {
  pthread_attr_t attr;
  ASSERT_EQ(pthread_attr_init(&attr), 0);
  ASSERT_EQ(pthread_attr_setstacksize(&attr, bytes), 0);
  pthread_t thread;
  auto* arg = const_cast<std::function<void()>*>(&fn);
  ASSERT_EQ(pthread_create(&thread, &attr,
                           [](void* p) -> void* {
                             (*static_cast<std::function<void()>*>(p))();
                             return nullptr;
                           },
                           arg),
            0);
  ASSERT_EQ(pthread_join(thread, nullptr), 0);
  pthread_attr_destroy(&attr);
}

// Nesting to the limit on one thread: its error path leaves the node's counts exact
// (afterwards no call is counted, the node updates, and a node destroyed inside a callback
// is still erased by that call). Run on a 256 MiB stack: a level costs ~2 KiB in the debug
// preset, so on a default 8 MiB stack (ulimit -s; the main thread) the process dies of a
// stack overflow at ~3,900 levels before the limit is reached
// (NODEMETA_AUX_TEST_DEFAULT_STACK=1 runs it on the calling thread to show that).
TEST(AuxWordTest, NestedUpdatesReachTheCallLimitAndLeaveTheCountsExact) {
  MetadataStore store;
  NodeMetadata h = store.create({{"k", 1}});
  int entered = 0;
  std::string error;
  bool threw = false;
  const std::function<void()> body = [&] {
    try {
      nest(h, NodeState::kMaxCount + 1, entered, error);
    } catch (const std::length_error&) {
      threw = true;
    }
  };
  if (test::env_u64("NODEMETA_AUX_TEST_DEFAULT_STACK", 0) != 0) {
    body();
  } else {
    run_with_stack(std::size_t{256} << 20, body);
  }
  // The 4,096th call's length_error propagated through every outer callback (none commits).
  EXPECT_TRUE(threw);
  EXPECT_EQ(entered, static_cast<int>(NodeState::kMaxCount));
  EXPECT_NE(error.find("4095"), std::string::npos) << error;
  EXPECT_EQ(calls_of(h), 0U);
  EXPECT_EQ(waiters_of(h), 0U);
  EXPECT_EQ(h["k"].as<std::int64_t>(), 1);
  EXPECT_EQ(h.update("k", [](std::optional<Value> v) { return Value(v->as<std::int64_t>() + 1); })
                .as<std::int64_t>(),
            2);
  EXPECT_THROW((void)h.update("k",
                              [&](std::optional<Value> v) {
                                std::thread([&] { NodeMetadata gone = std::move(h); }).join();
                                return *v;
                              }),
               std::logic_error);
  EXPECT_EQ(store.node_count(), 0U);
}

// The same limit reached by calls on many threads at once (63 threads, 65 nested calls each:
// 4,095 counted), then a 4,096th from this thread; every count comes back when they end.
TEST(AuxWordTest, CallsOnManyThreadsReachTheLimitTogether) {
  MetadataStore store;
  NodeMetadata h = store.create({{"k", 0}});
  constexpr int kThreads = 63;
  constexpr int kDepth = 65;
  static_assert(kThreads * kDepth == static_cast<int>(NodeState::kMaxCount));
  std::atomic<int> inside{0};
  std::atomic<bool> release{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      std::function<void(int)> go = [&](int d) {
        (void)h.update("k", [&](std::optional<Value> v) {
          if (d > 1) {
            go(d - 1);
          } else {
            inside.fetch_add(1);
            while (!release.load()) std::this_thread::yield();
          }
          return *v;
        });
      };
      go(kDepth);
    });
  }
  while (inside.load() < kThreads) std::this_thread::yield();
  EXPECT_EQ(calls_of(h), NodeState::kMaxCount);
  EXPECT_THROW((void)h.update("k", [](std::optional<Value> v) { return *v; }), std::length_error);
  EXPECT_THROW(h.edit([](NodeEditor&) {}), std::length_error);
  EXPECT_EQ(calls_of(h), NodeState::kMaxCount);  // the refused calls counted nothing
#if !NODEMETA_TEST_TSAN
  // A child forked now gives back every count of the 63 threads (65 holds linked in each
  // thread's note, innermost first): the node is usable there and erased when destroyed.
  const pid_t pid = fork();
  if (pid == 0) {
    alarm(10);
    const bool none = calls_of(h) == 0 && waiters_of(h) == 0;
    const Value v = h.update("k", [](std::optional<Value> old) { return Value(old->as<std::int64_t>() + 7); });
    const std::size_t before = store.node_count();
    { NodeMetadata gone = std::move(h); }
    _exit(none && v.as<std::int64_t>() == 7 && store.node_count() == before - 1 ? 0 : 1);
  }
  ASSERT_GT(pid, 0);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child status " << status;
#endif
  release = true;
  for (auto& t : threads) t.join();
  EXPECT_EQ(calls_of(h), 0U);
  EXPECT_EQ(waiters_of(h), 0U);
  h.set("after", 1);
  EXPECT_EQ(h.size(), 2U);
}

// --- Capacity changes while counts are held ------------------------------------------------

// A callback that is a priority waiter (outrun 32 times) and counted, and whose work both
// grows the node and makes an edit() adopt a smaller array (the capacity class goes down:
// a borrow if set_capacity's arithmetic were wrong), ends with both counts back at zero;
// destroyed at the end of such a callback, the node is erased by the call.
TEST(AuxWordTest, CapacityShrinkAndGrowthInsideACountedPoliteCallbackKeepTheCounts) {
  MetadataStore store;
  for (const bool destroy : {false, true}) {
    NodeMetadata h = store.create({{"k", 0}});
    // Grown, then most keys erased: the array keeps its capacity (erase never shrinks it),
    // so an edit's working copy, sized for the node's 41 keys, is smaller.
    for (int i = 0; i < 150; ++i) h.set("g." + std::to_string(i), i);
    for (int i = 0; i < 110; ++i) ASSERT_TRUE(h.erase("g." + std::to_string(i)));
    const std::uint32_t grown_capacity = state_of(h).capacity();
    std::uint32_t adopted_capacity = 0;
    int runs = 0;
    const auto body = [&](std::optional<Value> v) {
      ++runs;
      if (runs <= 32) {
        std::thread([&] { h.set("k", runs); }).join();  // outruns this run
        return *v;
      }
      EXPECT_EQ(waiters_of(h), 1U);  // run 33: counted as a priority waiter since run 32
      EXPECT_EQ(calls_of(h), 1U);
      // An edit of a node of more than 16 keys adopts its working copy's array, whose
      // capacity is the class of the node's size: smaller than the grown array's.
      h.edit([](NodeEditor& e) { e.set("edited", 1); });
      adopted_capacity = state_of(h).capacity();
      EXPECT_EQ(calls_of(h), 1U);
      EXPECT_EQ(waiters_of(h), 1U);
      for (int i = 0; i < 100; ++i) h.set("h." + std::to_string(i), i);  // grows again
      EXPECT_EQ(calls_of(h), 1U);
      EXPECT_EQ(waiters_of(h), 1U);
      if (destroy) std::thread([&] { NodeMetadata gone = std::move(h); }).join();
      return *v;
    };
    if (destroy) {
      EXPECT_THROW((void)h.update("k", body), std::logic_error);
      EXPECT_EQ(store.node_count(), 0U);
      continue;
    }
    (void)h.update("k", body);
    EXPECT_LT(adopted_capacity, grown_capacity) << "the test's premise: the class went down";
    EXPECT_EQ(calls_of(h), 0U);
    EXPECT_EQ(waiters_of(h), 0U);
    EXPECT_EQ(h.size(), 142U);  // k, 40 g's, edited, 100 h's
    const std::uint64_t d0 = detail::write_deferrals();
    for (int i = 0; i < 100; ++i) h.set("k", i);
    EXPECT_EQ(detail::write_deferrals(), d0);
  }
}

// Everything that changes aux at once on one large node: readers whose copies of the node
// fail validation under a hot writer and fall back to the lock (priority counts), update()s
// (call counts, and priority counts once outrun), a thread that grows the node, and edit()s
// that adopt their working copy's array (the capacity class up and down). Afterwards both
// counts are zero, the capacity is a class's, no increment was lost and the node is erased
// by its handle.
TEST(AuxWordTest, PriorityWaitersCallsAndCapacityChangesAllAtOnce) {
  MetadataStore store;
  const int rounds = static_cast<int>(test::rounds(20));
  std::atomic<std::uint32_t> max_waiters{0};
  std::atomic<std::uint32_t> max_calls{0};
  for (int round = 0; round < rounds; ++round) {
    NodeMetadata h = store.create({{"n", 0}, {"hot", 0}});
    for (int i = 0; i < 2000; ++i) h.set("base." + std::to_string(i), i);
    std::atomic<bool> done{false};
    std::atomic<int> updaters_done{0};
    constexpr int kUpdaters = 2;
    constexpr int kIncrements = 300;
    std::vector<std::thread> threads;
    threads.emplace_back([&] {  // hot writer: readers of the big node fall back to the lock
      for (std::int64_t i = 0; !done.load(); ++i) h.set("hot", i);
    });
    threads.emplace_back([&] {  // grower and shrinker: the capacity class goes up and down
      for (int r = 0; !done.load(); ++r) {
        for (int i = 0; i < 200; ++i) h.set("grow." + std::to_string(i), i);
        h.edit([](NodeEditor& e) {
          for (int i = 0; i < 200; ++i) (void)e.erase("grow." + std::to_string(i));
        });
      }
    });
    threads.emplace_back([&] {  // what the word held meanwhile
      while (!done.load()) {
        const std::uint32_t w = waiters_of(h);
        const std::uint32_t c = calls_of(h);
        if (w > max_waiters.load()) max_waiters = w;
        if (c > max_calls.load()) max_calls = c;
        std::this_thread::yield();
      }
    });
    threads.emplace_back([&] {  // readers
      while (!done.load()) {
        EXPECT_GE(h.items().size(), 2002U);
        EXPECT_TRUE(h.get("base.1999").has_value());
      }
    });
    for (int t = 0; t < kUpdaters; ++t) {
      threads.emplace_back([&] {
        for (int i = 0; i < kIncrements; ++i) {
          (void)h.update("n", [](std::optional<Value> v) { return Value(v->as<std::int64_t>() + 1); });
        }
        if (updaters_done.fetch_add(1) + 1 == kUpdaters) done = true;
      });
    }
    for (auto& t : threads) t.join();
    EXPECT_EQ(h["n"].as<std::int64_t>(), kUpdaters * kIncrements) << "round " << round;
    EXPECT_EQ(calls_of(h), 0U) << "round " << round;
    EXPECT_EQ(waiters_of(h), 0U) << "round " << round;
    const std::uint32_t cap = state_of(h).capacity();
    EXPECT_EQ(detail::class_capacity(detail::capacity_class_for(cap)), cap);
    EXPECT_GE(cap, h.size());
    { NodeMetadata gone = std::move(h); }
    EXPECT_EQ(store.node_count(), 0U) << "round " << round;
  }
  std::printf("most priority waiters seen at once: %u, most calls: %u\n", max_waiters.load(),
              max_calls.load());
}

// Nodes around every class boundary, through every path that gives a node an array
// (create, copy, growth by set, growth inside an edit, edit adoption, items()): under the
// asan preset (std::allocator, sized delete) a capacity recorded as anything but the
// array's own would be a new-delete-size mismatch; everywhere, capacity() must be a class's
// and at least the size.
TEST(AuxWordTest, EveryPathGivesANodeAClassCapacity) {
  MetadataStore store;
  const auto check = [](const NodeMetadata& h, const char* what, int n) {
    const NodeState& s = state_of(h);
    const std::uint32_t cap = s.capacity();
    EXPECT_EQ(detail::class_capacity(detail::capacity_class_for(cap)), cap) << what << " " << n;
    EXPECT_GE(cap, s.size.load()) << what << " " << n;
  };
  for (int n : {0, 1, 15, 16, 17, 31, 32, 33, 34, 39, 40, 41, 49, 50, 51, 62, 63, 64, 1000}) {
    std::vector<KeyValue> items;
    for (int i = 0; i < n; ++i) items.push_back({Key("b." + std::to_string(i)), Value(i)});
    NodeMetadata h = store.create(std::span<const KeyValue>(items.data(), items.size()));
    check(h, "create", n);
    NodeMetadata c = h.copy();
    check(c, "copy", n);
    for (int i = 0; i < 20; ++i) c.set("x." + std::to_string(i), i);
    check(c, "grown", n);
    h.edit([&](NodeEditor& e) {
      for (int i = 0; i < 20; ++i) e.set("e." + std::to_string(i), i);
    });
    check(h, "edit grown", n);
    h.edit([&](NodeEditor& e) {
      for (int i = 0; i < n; ++i) (void)e.erase("b." + std::to_string(i));
    });
    check(h, "edit shrunk", n);
    EXPECT_EQ(h.items().size(), 20U);
    EXPECT_EQ(c.items().size(), static_cast<std::size_t>(n) + 20);
  }
}

// Huge nodes: the classes cost nothing on top of 1.5x growth. The array of an n-key node grown
// one key at a time stays within 1.5x its size (grown_capacity() takes the largest class
// within 1.5x that holds one more; rounding up instead reached 1.5625x at 64,601 keys).
TEST(AuxWordTest, HugeNodesGrowWithinOneAndAHalf) {
  MetadataStore store;
  NodeMetadata h = store.create({});
  double worst = 0;
  std::uint32_t worst_size = 0;
  const std::uint32_t keys = test::kSanitized ? 20000 : 100000;  // tsan: ~50 s for 100,000
  for (std::uint32_t i = 0; i < keys; ++i) {
    h.set("huge." + std::to_string(i), static_cast<std::int64_t>(i));
    const std::uint32_t size = i + 1;
    const double ratio = static_cast<double>(state_of(h).capacity()) / size;
    if (size >= 64 && ratio > worst) {
      worst = ratio;
      worst_size = size;
    }
  }
  std::printf("worst capacity/size over 64..%u keys: %.3f at %u keys (capacity %u at the end)\n",
              keys, worst, worst_size, state_of(h).capacity());
  EXPECT_LE(worst, 1.5 + 1e-9);  // grown_capacity(): the largest class within 1.5x
  EXPECT_EQ(h.size(), keys);
  EXPECT_EQ(h.get("huge." + std::to_string(keys - 1))->as<std::int64_t>(), keys - 1);
}

// --- fork(): counts of other threads come back by their unit --------------------------------

// Another thread is inside an update() callback that has become a priority waiter (both of
// its counts held) when this thread forks: the child's handler takes both back, so the
// child's writes of the node do not defer and destroying the node erases it at once.
TEST(AuxWordTest, AChildGetsBackAnotherThreadsCallAndWaiterCounts) {
#if NODEMETA_TEST_TSAN
  GTEST_SKIP() << "fork() of a multi-threaded process is not supported under ThreadSanitizer";
#endif
  MetadataStore store;
  NodeMetadata h = store.create({{"k", 0}});
  std::atomic<bool> inside{false};
  std::atomic<bool> forked{false};
  std::thread t([&] {
    int runs = 0;
    (void)h.update("k", [&](std::optional<Value> v) {
      ++runs;
      if (runs <= 32) {
        std::thread([&] { h.set("k", runs); }).join();
      } else if (!inside) {
        inside = true;
        while (!forked) std::this_thread::yield();
      }
      return *v;
    });
  });
  while (!inside) std::this_thread::yield();
  ASSERT_EQ(calls_of(h), 1U);
  ASSERT_EQ(waiters_of(h), 1U);
  const pid_t pid = fork();
  if (pid == 0) {
    alarm(10);
    const std::uint64_t d0 = detail::write_deferrals();
    for (int i = 0; i < 50; ++i) h.set("k", i);
    const bool no_counts = calls_of(h) == 0 && waiters_of(h) == 0 &&
                           (state_of(h).aux.load() & NodeState::kCapacityMask) ==
                               detail::capacity_class_for(state_of(h).capacity());
    const std::size_t before = store.node_count();
    { NodeMetadata gone = std::move(h); }
    const bool erased = store.node_count() == before - 1;
    _exit(detail::write_deferrals() == d0 && no_counts && erased ? 0 : 1);
  }
  forked = true;
  t.join();
  ASSERT_GT(pid, 0);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WIFEXITED(status) ? WEXITSTATUS(status) : -1, 0);
}

// 6a64a91 opens a failing update() commit's window too (it closes unchanged). A fork()
// that lands in it leaves the child a torn node (every operation but destruction throws
// std::logic_error), though nothing was changing. Here the only windows that can be open
// at a fork are such commits: another thread's update() whose commits always fail (its
// callback waits until this thread has changed the key), while this thread changes the key
// and forks. Before 6a64a91 a failing commit never opened a window, so no child could see
// the node torn. A probe: it did not hit in 3 x 3,000 forks on the review machine (the
// window is ~100 ns a fork); NODEMETA_AUX_TEST_TEAR_CONTROL=1 replaces the failing commits
// by a loop of set()s of another key, which tears a child within ~10 forks (so the child's
// check works). NODEMETA_AUX_TEST_FORKS: how many forks (default 1,000).
TEST(AuxWordTest, AForkDuringAFailingUpdateCommitDoesNotTearTheNode) {
#if NODEMETA_TEST_TSAN
  GTEST_SKIP() << "fork() of a multi-threaded process is not supported under ThreadSanitizer";
#endif
  MetadataStore store;
  // 15 other keys: a commit that looks k up scans them inside its window (16 at most, so
  // the window opens in the CAS), which makes the window long enough to be hit.
  NodeMetadata h = store.create({});
  for (int i = 0; i < 15; ++i) h.set("o." + std::to_string(i), i);
  h.set("k", 0);
  std::atomic<std::uint64_t> changes{0};
  std::atomic<bool> done{false};
  std::atomic<std::uint64_t> failed_runs{0};
  std::thread updater([&] {
    std::minstd_rand rng(test::test_seed());
    if (test::env_u64("NODEMETA_AUX_TEST_TEAR_CONTROL", 0) != 0) {
      // Control: windows that change the node (tearing in the child since before).
      for (std::int64_t i = 0; !done.load(); ++i) h.set("other", i);
      return;
    }
    while (!done.load()) {
      try {
        (void)h.update("k", [&](std::optional<Value> v) {
          failed_runs.fetch_add(1);
          const std::uint64_t seen = changes.load();
          while (changes.load() == seen && !done.load()) {
          }
          // Commit at a random point of the fork this thread's change started (the child's
          // copy of the node's page is taken at one instant inside it).
          const auto until = std::chrono::steady_clock::now() +
                             std::chrono::nanoseconds(rng() % 20000);
          while (std::chrono::steady_clock::now() < until) {
          }
          return v ? *v : Value(0);  // k changed since it was read: the commit fails
        });
      } catch (const ReentrancyError&) {
        // 256 failed runs: start again
      }
    }
  });
  const int forks = static_cast<int>(test::env_u64("NODEMETA_AUX_TEST_FORKS", test::kSanitized ? 200 : 1000));
  int torn = 0;
  for (int i = 1; i <= forks && torn == 0; ++i) {
    // This thread's own windows are closed at its fork. k alternates between absent and
    // present, so the other thread's commit scans every slot for it.
    if (i % 2 == 1) {
      (void)h.erase("k");
    } else {
      h.set("k", i);
    }
    changes.fetch_add(1);
    const pid_t pid = fork();
    if (pid == 0) {
      alarm(10);
      try {
        (void)h.get("k");
      } catch (const std::logic_error&) {
        _exit(3);
      }
      _exit(0);
    }
    ASSERT_GT(pid, 0);
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status));
    if (WEXITSTATUS(status) == 3) torn = i;
  }
  done = true;
  updater.join();
  std::printf("failed update() runs: %llu; first torn child at fork %d of %d\n",
              static_cast<unsigned long long>(failed_runs.load()), torn, forks);
  EXPECT_EQ(torn, 0) << "a child saw the node torn by a commit that changed nothing";
}

// --- Allocation inside an open write window (6a64a91 and write()) ---------------------------

#if defined(NODEMETA_FAULT_INJECTION) && NODEMETA_FAULT_INJECTION
// The slot allocations a watched thread makes while the watched node's write window is open
// (the allocation hook runs inside the store's allocator; the only slot arrays a thread
// allocates for the node are its growth, under the node's lock).
std::atomic<NodeState*> g_watched{nullptr};
std::atomic<std::uint64_t> g_in_window{0};
std::atomic<std::uint64_t> g_growths{0};
thread_local bool tls_watch = false;
void watch_allocation(std::size_t /*bytes*/) {
  NodeState* s = g_watched.load();
  if (!tls_watch || s == nullptr) return;
  const std::uint64_t w = s->ctl.load();
  if ((w & NodeState::kLocked) == 0) return;  // not this thread's growth of the node
  g_growths.fetch_add(1);
  if ((w & NodeState::kWriting) != 0) g_in_window.fetch_add(1);
}

// docs/design.md, "Writer": a write that must allocate opens its window after the
// allocation, "so readers never wait on a scan, the allocator or a callback". Both write
// paths that open in the lock's CAS decide so from a hint read before the lock; another
// writer's append between the hint and the CAS fills the array, and the allocation (and
// the copy of the old array) then happens inside the open window. `use_update`: the
// update() commit (6a64a91); otherwise set() (the same since before).
void allocations_inside_window(bool use_update, std::uint64_t& in_window, std::uint64_t& growths) {
  MetadataStore store;
  g_in_window = 0;
  g_growths = 0;
  detail::set_allocation_hook(&watch_allocation);
  const int rounds = static_cast<int>(test::rounds(1000));
  std::vector<Key> mine;
  std::vector<Key> theirs;
  for (int i = 0; i < 12; ++i) {  // interned here: the loops below allocate only slot arrays
    mine.emplace_back("w." + std::to_string(i));
    theirs.emplace_back("o." + std::to_string(i));
  }
  for (int round = 0; round < rounds; ++round) {
    NodeMetadata h = store.create({});
    g_watched = &state_of(h);
    std::atomic<int> ready{0};
    std::thread other([&] {
      ready.fetch_add(1);
      while (ready.load() < 2) {
      }
      for (int i = 0; i < 12; ++i) h.set(theirs[i], i);
    });
    ready.fetch_add(1);
    while (ready.load() < 2) {
    }
    tls_watch = true;
    for (int i = 0; i < 12; ++i) {
      const Key key = mine[i];
      if (use_update) {
        (void)h.update(key, [&](std::optional<Value>) { return Value(i); });
      } else {
        h.set(key, i);
      }
    }
    tls_watch = false;
    other.join();
    g_watched = nullptr;
    ASSERT_EQ(h.size(), 24U);
  }
  detail::set_allocation_hook(nullptr);
  in_window = g_in_window.load();
  growths = g_growths.load();
}

TEST(AuxWordTest, UpdateCommitNeverAllocatesInsideItsWindow) {
  std::uint64_t in_window = 0;
  std::uint64_t growths = 0;
  allocations_inside_window(/*use_update=*/true, in_window, growths);
  std::printf("update(): %llu of %llu growths allocated inside the open window\n",
              static_cast<unsigned long long>(in_window), static_cast<unsigned long long>(growths));
  EXPECT_GT(growths, 0U);
  EXPECT_EQ(in_window, 0U);
}

TEST(AuxWordTest, SetNeverAllocatesInsideItsWindow) {
  std::uint64_t in_window = 0;
  std::uint64_t growths = 0;
  allocations_inside_window(/*use_update=*/false, in_window, growths);
  std::printf("set(): %llu of %llu growths allocated inside the open window\n",
              static_cast<unsigned long long>(in_window), static_cast<unsigned long long>(growths));
  EXPECT_GT(growths, 0U);
  EXPECT_EQ(in_window, 0U);
}
#endif

}  // namespace
}  // namespace nodemeta
