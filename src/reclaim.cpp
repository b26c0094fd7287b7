#include "nodemeta/detail/reclaim.h"

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "nodemeta/detail/config.h"

namespace nodemeta::detail {
namespace {

// One registered thread. Records are never freed: a thread that exits leaves its record
// for the next thread to take (in_use), so the list only grows to the peak thread count.
struct alignas(64) ThreadRecord {
  // 0 when the thread is not pinned, else (epoch << 1) | 1.
  std::atomic<std::uint64_t> state{0};
  std::atomic<bool> in_use{true};
  ThreadRecord* next = nullptr;  // immutable once the record is published
};

struct RetiredObject {
  void* object;
  RetireFn fn;
  std::size_t arg;
  std::uint64_t epoch;
};

constexpr std::uint64_t kUnsealed = ~std::uint64_t{0};
// A thread tries to release what it retired once this many objects are waiting.
constexpr std::size_t kCollectThreshold = 128;

class Domain {
 public:
  // Starts at 2 so that "retired at r, safe at r + 2" never underflows.
  std::atomic<std::uint64_t> epoch{2};

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
    std::uint64_t e = epoch.load(std::memory_order_seq_cst);
    for (ThreadRecord* r = records_.load(std::memory_order_acquire); r != nullptr; r = r->next) {
      const std::uint64_t s = r->state.load(std::memory_order_seq_cst);
      if ((s & 1) != 0 && (s >> 1) != e) return e;
    }
    if (epoch.compare_exchange_strong(e, e + 1, std::memory_order_seq_cst)) return e + 1;
    return e;  // another thread advanced it (e now holds the newer value)
  }

  // Bags of threads that exited before their objects were safe to release.
  std::mutex orphan_mutex;
  std::vector<RetiredObject> orphans;

 private:
  std::atomic<ThreadRecord*> records_{nullptr};
};

Domain& domain() {
  static Domain* const d = new Domain();  // immortal: threads may exit during static destruction
  return *d;
}

}  // namespace

struct ReclaimThread {
  ThreadRecord* record = nullptr;
  unsigned pins = 0;
  bool collecting = false;
  std::size_t head = 0;     // bag[0, head) already released
  std::size_t sealed = 0;   // bag[head, sealed) carry an epoch; the rest are unsealed
  std::vector<RetiredObject> bag;

  // Releases bag entries whose epoch is at most `safe` (entries are in epoch order).
  std::size_t release_upto(std::uint64_t safe) noexcept {
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
};

namespace {

// At most 8 bytes of initial-exec TLS (cheap in dlopen()ed modules too): a pointer to the
// heap state. A separate thread_local object with a destructor hands the state back at
// thread exit; it is only touched when the state is created.
__attribute__((tls_model("initial-exec"))) thread_local ReclaimThread* tls_thread = nullptr;

std::size_t release_orphans(std::uint64_t safe) noexcept {
  Domain& d = domain();
  std::vector<RetiredObject> ready;
  {
    std::unique_lock<std::mutex> lock(d.orphan_mutex, std::try_to_lock);
    if (!lock.owns_lock() || d.orphans.empty()) return 0;
    // Orphans are in no particular epoch order (several threads' bags): move the safe ones
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
    t->record->state.store(0, std::memory_order_release);
    t->record->in_use.store(false, std::memory_order_release);
    delete t;
  }
  static void seal_into(ReclaimThread& t) noexcept {
    if (t.sealed == t.bag.size()) return;
    std::atomic_thread_fence(std::memory_order_seq_cst);
    const std::uint64_t e = domain().epoch.load(std::memory_order_seq_cst);
    for (std::size_t i = t.sealed; i < t.bag.size(); ++i) t.bag[i].epoch = e;
    t.sealed = t.bag.size();
  }
};
thread_local ThreadExit thread_exit;

ReclaimThread* create_thread() {
  auto* t = new ReclaimThread();
  t->record = domain().acquire_record();
  t->bag.reserve(kCollectThreshold * 2);
  tls_thread = t;
  (void)&thread_exit;  // odr-use: registers the thread-exit destructor
  return t;
}

}  // namespace

ReclaimThread& reclaim_thread() {
  ReclaimThread* t = tls_thread;
  return t != nullptr ? *t : *create_thread();
}

void pin(ReclaimThread& t) noexcept {
  if (t.pins++ != 0) return;
  const std::uint64_t e = domain().epoch.load(std::memory_order_seq_cst);
  // An RMW, not a store: it continues the release sequence of the last unpin, so an
  // advancer that reads it still synchronizes with everything this thread read before.
  t.record->state.exchange((e << 1) | 1, std::memory_order_seq_cst);
}

void unpin(ReclaimThread& t) noexcept {
  if (--t.pins != 0) return;
  t.record->state.store(0, std::memory_order_release);
}

void reserve_retired(std::size_t n) {
  ReclaimThread& t = reclaim_thread();
  if (t.bag.capacity() - t.bag.size() < n) t.bag.reserve(t.bag.size() + n + kCollectThreshold);
}

void retire(void* object, RetireFn fn, std::size_t arg) noexcept {
  ReclaimThread& t = *tls_thread;  // reserve_retired() created it
  NODEMETA_ASSERT(t.bag.size() < t.bag.capacity(), "retire() without reserve_retired()");
  t.bag.push_back(RetiredObject{object, fn, arg, kUnsealed});
}

void seal_retired() noexcept {
  if (ReclaimThread* t = tls_thread) ThreadExit::seal_into(*t);
}

void maybe_collect() noexcept {
  ReclaimThread* t = tls_thread;
  if (t == nullptr || t->collecting || t->pins != 0) return;
  if (t->sealed - t->head < kCollectThreshold) return;
  const std::uint64_t e = domain().try_advance();
  // Released only what became safe; a thread that keeps a read open holds back only the
  // objects retired while it was pinned.
  t->release_upto(e - 2);
  release_orphans(e - 2);
}

std::size_t release_retired() {
  ReclaimThread& t = reclaim_thread();
  NODEMETA_ASSERT(t.pins == 0, "release_retired() inside a read");
  if (t.collecting) return 0;  // called from a destructor being run by a release
  ThreadExit::seal_into(t);
  Domain& d = domain();
  const std::uint64_t target = d.epoch.load(std::memory_order_seq_cst) + 2;
  std::uint64_t e = d.try_advance();
  for (unsigned spins = 0; e < target; ++spins) {
    if (spins > 16) std::this_thread::yield();
    e = d.try_advance();
  }
  std::size_t n = 0;
  // Released destructors may retire more (a value owning a node); loop until quiet.
  for (;;) {
    const std::size_t released = t.release_upto(e - 2) + release_orphans(e - 2);
    n += released;
    if (released == 0 || t.head == t.bag.size()) break;
    ThreadExit::seal_into(t);
    const std::uint64_t next = e + 2;
    while (e < next) {
      std::this_thread::yield();
      e = d.try_advance();
    }
  }
  return n;
}

std::size_t retired_pending() noexcept {
  ReclaimThread* t = tls_thread;
  return t == nullptr ? 0 : t->bag.size() - t->head;
}

}  // namespace nodemeta::detail
