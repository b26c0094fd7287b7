#include "reclaim.h"

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
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
// for the next thread to take (in_use), so the list only grows to the peak thread count.
struct alignas(64) ThreadRecord {
  std::atomic<std::uint64_t> state{0};
  std::atomic<bool> in_use{true};
  ThreadRecord* next = nullptr;  // immutable once the record is published
};

constinit Epoch g_epoch_line{};
constinit bool g_asymmetric_pin = false;
thread_local ReclaimThread* tls_thread __attribute__((tls_model("initial-exec"))) = nullptr;

namespace {

constexpr std::uint64_t kUnsealed = ~std::uint64_t{0};

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

class Domain {
 public:
  Domain() { g_asymmetric_pin = register_membarrier(); }

  ThreadRecord* acquire_record() {
    for (ThreadRecord* r = records_.load(std::memory_order_acquire); r != nullptr; r = r->next) {
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

  // Advances the epoch if every pinned thread is pinned in the current one. Returns the
  // epoch as this call leaves it.
  std::uint64_t try_advance() noexcept {
    std::uint64_t e = g_epoch.load(std::memory_order_seq_cst);
    heavy_fence();  // the other half of every pin's fence
    for (ThreadRecord* r = records_.load(std::memory_order_acquire); r != nullptr; r = r->next) {
      const std::uint64_t s = r->state.load(std::memory_order_acquire);
      if ((s & 1) != 0 && (s >> 1) != e) return e;
    }
    if (g_epoch.compare_exchange_strong(e, e + 1, std::memory_order_seq_cst)) return e + 1;
    return e;  // another thread advanced it (e now holds the newer value)
  }

  // Objects of threads that exited before they were safe to release.
  std::mutex orphan_mutex;
  std::vector<RetiredObject> orphans;

 private:
  std::atomic<ThreadRecord*> records_{nullptr};
};

Domain& domain() {
  static Domain* const d = new Domain();  // immortal: threads may exit during static destruction
  return *d;
}

std::size_t release_orphans(std::uint64_t safe) noexcept {
  Domain& d = domain();
  std::vector<RetiredObject> ready;
  {
    std::unique_lock<std::mutex> lock(d.orphan_mutex, std::try_to_lock);
    if (!lock.owns_lock() || d.orphans.empty()) return 0;
    // Orphans are in no particular epoch order (several threads' lists): move the safe ones
    // to the back, then out.
    const auto split = std::partition(d.orphans.begin(), d.orphans.end(),
                                      [safe](const RetiredObject& o) { return o.epoch > safe; });
    try {
      ready.assign(split, d.orphans.end());
    } catch (...) {
      return 0;  // out of memory: keep them for a later call
    }
    d.orphans.erase(split, d.orphans.end());
  }
  for (const RetiredObject& o : ready) o.fn(o.object, o.arg);
  return ready.size();
}

void seal_into(ReclaimThread& t) noexcept {
  if (t.sealed == t.bag.size()) return;
  // Orders this write's unlinks before the epoch load (docs/design.md: r >= e).
  std::atomic_thread_fence(std::memory_order_seq_cst);
  const std::uint64_t e = g_epoch.load(std::memory_order_seq_cst);
  for (std::size_t i = t.sealed; i < t.bag.size(); ++i) t.bag[i].epoch = e;
  t.sealed = t.bag.size();
}

// Hands the calling thread's state back when it exits. Only touched when the state is
// created (a thread_local with a destructor costs a guard check on every access).
struct ThreadExit {
  ~ThreadExit() {
    ReclaimThread* t = tls_thread;
    if (t == nullptr) return;
    tls_thread = nullptr;
    seal_into(*t);
    if (t->head < t->bag.size()) {
      Domain& d = domain();
      std::lock_guard<std::mutex> lock(d.orphan_mutex);
      d.orphans.insert(d.orphans.end(), t->bag.begin() + static_cast<std::ptrdiff_t>(t->head),
                       t->bag.end());
    }
    t->state->store(0, std::memory_order_release);
    t->record->in_use.store(false, std::memory_order_release);
    delete t;
  }
};
thread_local ThreadExit thread_exit;

}  // namespace

std::size_t ReclaimThread::release_upto(std::uint64_t safe) noexcept {
  std::size_t n = 0;
  collecting = true;
  while (head < sealed && bag[head].epoch <= safe) {
    const RetiredObject o = bag[head++];
    o.fn(o.object, o.arg);  // may run a user destructor, which may retire more (appends)
    ++n;
  }
  collecting = false;
  if (head == bag.size()) {
    bag.clear();
    head = sealed = 0;
  } else if (head > 0 && head * 2 >= bag.size()) {
    bag.erase(bag.begin(), bag.begin() + static_cast<std::ptrdiff_t>(head));
    sealed -= head;
    head = 0;
  }
  return n;
}

ReclaimThread* create_thread() {
  Domain& d = domain();  // decides g_asymmetric_pin before this thread's first pin
  auto* t = new ReclaimThread();
  t->record = d.acquire_record();
  t->state = &t->record->state;
  t->bag.reserve(kCollectThreshold * 2);
  tls_thread = t;
  (void)&thread_exit;  // odr-use: registers the thread-exit destructor
  return t;
}

void reserve_retired_slow(std::size_t n) {
  ReclaimThread& t = reclaim_thread();
  if (t.bag.capacity() - t.bag.size() < n) t.bag.reserve(t.bag.size() + n + kCollectThreshold);
}

void seal_retired_slow(ReclaimThread& t) noexcept { seal_into(t); }

void collect(ReclaimThread& t) noexcept {
  const std::uint64_t e = domain().try_advance();
  // Releases only what became safe: a thread pinned for long holds back only the objects
  // retired while it was pinned, never a writer.
  t.release_upto(e - 2);
  release_orphans(e - 2);
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
  for (;;) {
    for (unsigned spins = 0; e < target; ++spins) {
      if (spins > 16) std::this_thread::yield();
      e = d.try_advance();
    }
    // Released destructors may retire more (a value owning a node): loop until quiet.
    const std::size_t released = t.release_upto(e - 2) + release_orphans(e - 2);
    n += released;
    if (released == 0 || t.head == t.bag.size()) break;
    seal_into(t);
    target = e + 2;
  }
  return n;
}

std::size_t retired_pending() noexcept {
  ReclaimThread* t = tls_thread;
  return t == nullptr ? 0 : t->bag.size() - t->head;
}

}  // namespace nodemeta::detail
