#include "reclaim.h"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "nodemeta/detail/config.h"

namespace nodemeta::detail {

// One registered thread. Records are never freed: a thread that exits leaves its record
// (and whatever it retired that is not yet safe) for the next thread to take, so the list
// only grows to the peak number of threads alive at once.
struct alignas(64) ThreadRecord {
  std::atomic<std::uint64_t> state{0};
  std::atomic<bool> in_use{true};
  ThreadRecord* next = nullptr;  // immutable once the record is published

  // Objects its threads' completed writes retired, in epoch order. Guarded by list_lock:
  // the owner appends at the end of a write that retired something; any thread collecting
  // takes what has become safe (release_retired_values() takes from every record).
  std::atomic<bool> list_lock{false};
  std::vector<RetiredObject> list;
  // list.size(), for collectors summing every record's without its lock (written under it).
  std::atomic<std::size_t> pending{0};

  void lock() noexcept {
    for (unsigned spins = 0; list_lock.exchange(true, std::memory_order_acquire); ++spins) {
      if (spins > 16) std::this_thread::yield();
    }
  }
  bool try_lock() noexcept { return !list_lock.exchange(true, std::memory_order_acquire); }
  void unlock() noexcept { list_lock.store(false, std::memory_order_release); }
};

constinit Epoch g_epoch_line{};
constinit bool g_asymmetric_pin = false;
thread_local ReclaimThread* tls_thread __attribute__((tls_model("initial-exec"))) = nullptr;

namespace {

// membarrier(PRIVATE_EXPEDITED): a full memory barrier in every running thread of this
// process (threads not running pass one when they are scheduled). Registered once; where
// the kernel or a seccomp filter refuses it, pins use a fence of their own instead.
bool register_membarrier() noexcept {
#if defined(__linux__) && defined(SYS_membarrier)
  const long supported = syscall(SYS_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
  if (supported < 0 || (supported & MEMBARRIER_CMD_PRIVATE_EXPEDITED) == 0) return false;
  return syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0;
#else
  return false;
#endif
}

void heavy_fence() noexcept {
#if defined(__linux__) && defined(SYS_membarrier)
  if (g_asymmetric_pin) {
    // Cannot fail once registered; on failure there is no safe fallback, so stop.
    if (syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) != 0) {
      assertion_failed("membarrier(PRIVATE_EXPEDITED) == 0", "membarrier failed after registration",
                       __FILE__, __LINE__);
    }
    return;
  }
#endif
  std::atomic_thread_fence(std::memory_order_seq_cst);
}

void thread_exit(void* state) noexcept;
void after_fork_in_child() noexcept;

class Domain {
 public:
  Domain() {
    g_asymmetric_pin = register_membarrier();
    // A pthread key's destructor runs after the thread's C++ thread_local destructors (and
    // again if one of those made nodemeta calls that set it anew), so a thread_local whose
    // destructor writes a node still has its retirements handed on.
    if (pthread_key_create(&exit_key, [](void* p) { thread_exit(p); }) != 0) {
      assertion_failed("pthread_key_create == 0", "no pthread key for nodemeta's thread exit",
                       __FILE__, __LINE__);
    }
    pthread_atfork(nullptr, nullptr, &after_fork_in_child);
  }

  ThreadRecord* acquire_record() {
    for (ThreadRecord* r = records(); r != nullptr; r = r->next) {
      bool free = false;
      if (!r->in_use.load(std::memory_order_relaxed) &&
          r->in_use.compare_exchange_strong(free, true, std::memory_order_acquire)) {
        return r;
      }
    }
    auto* r = new ThreadRecord();
    ThreadRecord* head = records_.load(std::memory_order_relaxed);
    do {
      r->next = head;
    } while (!records_.compare_exchange_weak(head, r, std::memory_order_release,
                                             std::memory_order_relaxed));
    return r;
  }
  ThreadRecord* records() const noexcept { return records_.load(std::memory_order_acquire); }

  // Advances the epoch if every pinned thread is pinned in the current one. Returns the
  // epoch as this call leaves it.
  std::uint64_t try_advance() noexcept {
    std::uint64_t e = g_epoch.load(std::memory_order_seq_cst);
    heavy_fence();  // the other half of every pin's fence
    for (ThreadRecord* r = records(); r != nullptr; r = r->next) {
      const std::uint64_t s = r->state.load(std::memory_order_acquire);
      if ((s & 1) != 0 && (s >> 1) != e) return e;
    }
    if (g_epoch.compare_exchange_strong(e, e + 1, std::memory_order_seq_cst)) return e + 1;
    return e;  // another thread advanced it (e now holds the newer value)
  }

  pthread_key_t exit_key{};

 private:
  std::atomic<ThreadRecord*> records_{nullptr};
};

Domain& domain() {
  static Domain* const d = new Domain();  // immortal: threads may exit during static destruction
  return *d;
}

// Stamps the thread's bag with the current epoch and moves it to its record's list.
void seal_into(ReclaimThread& t) noexcept {
  if (t.bag.empty()) return;
  // Orders this write's unlinks before the epoch load (docs/design.md: r >= e).
  std::atomic_thread_fence(std::memory_order_seq_cst);
  const std::uint64_t e = g_epoch.load(std::memory_order_seq_cst);
  for (RetiredObject& o : t.bag) o.epoch = e;
  ThreadRecord& r = *t.record;
  r.lock();
  try {
    r.list.insert(r.list.end(), t.bag.begin(), t.bag.end());
    r.pending.store(r.list.size(), std::memory_order_relaxed);
  } catch (...) {
    // Out of memory: the objects stay in the bag, stamped; the next seal stamps them again
    // with a later epoch, which only delays their release.
    r.unlock();
    return;
  }
  r.unlock();
  t.since_collect += t.bag.size();
  t.bag.clear();
}

// Takes out of `r` the objects retired at epoch <= safe (a prefix: the list is in epoch
// order) and releases them, outside the lock. `wait`: block for the lock, else skip a
// record another thread holds.
std::size_t release_from(ThreadRecord& r, std::uint64_t safe, bool wait) noexcept {
  if (wait) {
    r.lock();
  } else if (!r.try_lock()) {
    return 0;
  }
  std::vector<RetiredObject> ready;
  const auto end = std::find_if(r.list.begin(), r.list.end(),
                                [safe](const RetiredObject& o) { return o.epoch > safe; });
  if (end == r.list.end()) {
    ready.swap(r.list);  // no allocation
  } else if (end != r.list.begin()) {
    try {
      ready.assign(r.list.begin(), end);
      r.list.erase(r.list.begin(), end);
    } catch (...) {
      ready.clear();  // out of memory: leave them for a later call
    }
  }
  r.pending.store(r.list.size(), std::memory_order_relaxed);
  r.unlock();
  for (const RetiredObject& o : ready) o.fn(o.object, o.arg);  // may retire more: appends
  return ready.size();
}

// Collections in flight, by generation (docs/design.md, "Reclamation"): a collector counts
// itself in the current generation for as long as it may hold objects it took out of a
// record; release_retired() flips the generation and waits for the old one to drain.
std::atomic<unsigned> g_generation{0};
std::atomic<std::size_t> g_collectors[2];

class CollectorScope {
 public:
  CollectorScope() noexcept {
    for (;;) {
      index_ = g_generation.load(std::memory_order_seq_cst);
      g_collectors[index_].fetch_add(1, std::memory_order_seq_cst);
      if (g_generation.load(std::memory_order_seq_cst) == index_) return;
      leave();  // flipped in between: count in the new generation instead
    }
  }
  ~CollectorScope() { leave(); }
  CollectorScope(const CollectorScope&) = delete;
  CollectorScope& operator=(const CollectorScope&) = delete;

 private:
  void leave() noexcept {
    if (g_collectors[index_].fetch_sub(1, std::memory_order_seq_cst) == 1) {
      g_collectors[index_].notify_all();
    }
  }
  unsigned index_;
};

std::size_t release_all(ReclaimThread& t, std::uint64_t safe, bool wait) noexcept {
  std::size_t n = 0;
  t.collecting = true;
  {
    const CollectorScope scope;
    for (ThreadRecord* r = domain().records(); r != nullptr; r = r->next) {
      n += release_from(*r, safe, wait);
    }
  }
  t.collecting = false;
  return n;
}

// Objects retired by completed writes and not yet taken by a collection, all threads
// together (a sum of per-record counts: no shared counter is written per retirement).
std::size_t retired_total() noexcept {
  std::size_t n = 0;
  for (ThreadRecord* r = domain().records(); r != nullptr; r = r->next) {
    n += r->pending.load(std::memory_order_relaxed);
  }
  return n;
}

// Backpressure: called by a writer at the end of its write, unpinned, holding no lock of
// nodemeta's and not inside a collection. While more than kRetiredBound objects wait, it
// advances and collects, and between tries gives up the processor (sleeping, so that even a
// SCHED_IDLE reader it waits for gets scheduled). It waits only for threads pinned in an
// older epoch to finish their read: docs/design.md has why that always happens.
void wait_for_room(ReclaimThread& t) noexcept {
  Domain& d = domain();
  for (unsigned tries = 0; retired_total() > kRetiredBound; ++tries) {
    if (tries < 4) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(10u << std::min(tries - 4, 6u)));
    }
    const std::uint64_t e = d.try_advance();
    release_all(t, e - 2, /*wait=*/false);
  }
}

void thread_exit(void* state) noexcept {
  auto* t = static_cast<ReclaimThread*>(state);
  tls_thread = nullptr;
  seal_into(*t);  // what it retired stays with its record, released by later collections
  t->state->store(0, std::memory_order_release);
  t->record->in_use.store(false, std::memory_order_release);
  delete t;
}

// After fork(), only the forking thread exists in the child: every other record would stay
// pinned, or locked, forever. Released objects stay where they are, to be released later.
void after_fork_in_child() noexcept {
  ThreadRecord* mine = tls_thread != nullptr ? tls_thread->record : nullptr;
  for (ThreadRecord* r = domain().records(); r != nullptr; r = r->next) {
    r->list_lock.store(false, std::memory_order_relaxed);
    if (r == mine) continue;
    r->state.store(0, std::memory_order_relaxed);
    r->in_use.store(false, std::memory_order_relaxed);
  }
}

// Waits until every collection counted in the current generation has finished. Flips are
// serialized, so while one waits the other generation holds no collection that began
// before the previous flip (its flipper waited for them).
void wait_for_collections() noexcept {
  static std::mutex flip_mutex;
  const std::lock_guard<std::mutex> lock(flip_mutex);
  const unsigned old = g_generation.load(std::memory_order_seq_cst);
  g_generation.store(old ^ 1u, std::memory_order_seq_cst);
  for (std::size_t n = g_collectors[old].load(std::memory_order_seq_cst); n != 0;
       n = g_collectors[old].load(std::memory_order_seq_cst)) {
    g_collectors[old].wait(n, std::memory_order_seq_cst);
  }
}

}  // namespace

ReclaimThread* create_thread() {
  Domain& d = domain();  // decides g_asymmetric_pin before this thread's first pin
  // Everything that may throw before the record is claimed (a new record is the last
  // allocation), so a failure leaves nothing behind.
  std::unique_ptr<ReclaimThread> t(new ReclaimThread());
  t->bag.reserve(16);
  t->record = d.acquire_record();
  t->state = &t->record->state;
  tls_thread = t.get();
  pthread_setspecific(d.exit_key, t.get());
  return t.release();
}

void reserve_retired_slow(std::size_t n) {
  ReclaimThread& t = reclaim_thread();
  if (t.bag.capacity() - t.bag.size() < n) t.bag.reserve(t.bag.size() + n + 16);
}

void seal_retired_slow(ReclaimThread& t) noexcept { seal_into(t); }

void collect(ReclaimThread& t) noexcept {
  t.since_collect = 0;
  const std::uint64_t e = domain().try_advance();
  // Releases only what became safe, from every record nobody else is collecting: a thread
  // pinned for long holds back only the objects retired while it was pinned, never a
  // writer, and an idle thread's retirements are released by whoever collects.
  release_all(t, e - 2, /*wait=*/false);
  if (retired_total() > kRetiredBound) wait_for_room(t);
}

std::size_t release_retired() {
  ReclaimThread& t = reclaim_thread();
  NODEMETA_ASSERT(t.pins == 0, "release_retired() inside a read");
  if (t.collecting) return 0;  // called from a destructor that a release is running
  seal_into(t);
  Domain& d = domain();
  std::uint64_t target = g_epoch.load(std::memory_order_seq_cst) + 2;
  std::uint64_t e = d.try_advance();
  std::size_t n = 0;
  // Everything retired before the call has an epoch below the first target. Released
  // destructors may retire more (a value owning a node): a few more passes take those.
  for (int pass = 0; pass < 4; ++pass) {
    for (unsigned spins = 0; e < target; ++spins) {
      if (spins > 16) std::this_thread::yield();
      e = d.try_advance();
    }
    const std::size_t released = release_all(t, e - 2, /*wait=*/true);
    n += released;
    // Another thread's collection may still hold objects it took out before ours: wait for
    // every collection that began before this point to finish its destructors.
    wait_for_collections();
    if (released == 0) break;
    seal_into(t);
    target = e + 2;
  }
  return n;
}

bool may_release_retired() noexcept {
  const ReclaimThread* t = tls_thread;
  return t == nullptr || (t->pins == 0 && !t->collecting);
}

}  // namespace nodemeta::detail
