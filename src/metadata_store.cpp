#include "nodemeta/metadata_store.h"

#include <pthread.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <oneapi/tbb/task_arena.h>

#include "nodemeta/detail/journal_access.h"
#include "reclaim.h"

namespace nodemeta {
namespace {

using detail::NodeState;
using detail::Slot;

constexpr std::uint32_t kAbsent = ~std::uint32_t{0};
// The key of a callback scope (or of a write) that stands for the whole node: edit().
constexpr std::uint32_t kWholeNode = ~std::uint32_t{0};

// What a callback's own thread did while the callback ran (CallbackScope).
struct CallbackFlags {
  bool self_wrote = false;  // wrote what the callback read: rerunning it cannot help
};

// A callback (update/edit) running on this thread, innermost first. Callbacks hold no
// lock; the scope only tells the commit what the callback's own thread did meanwhile.
// Empty on the fast path: one TLS load.
struct CallbackScope {
  CallbackScope(const MetadataStore* s, NodeId n, const NodeState* st, std::uint32_t k,
                CallbackFlags& f) noexcept
      : store(s), node(n), state(st), key(k), flags(f), outer(innermost) {
    innermost = this;
  }
  ~CallbackScope() { innermost = outer; }
  CallbackScope(const CallbackScope&) = delete;
  CallbackScope& operator=(const CallbackScope&) = delete;

  const MetadataStore* store;
  NodeId node;
  const NodeState* state;
  std::uint32_t key;  // the key update() read, or kWholeNode (edit)
  CallbackFlags& flags;
  CallbackScope* outer;
  static thread_local CallbackScope* innermost;
};
// initial-exec: one %fs-relative load instead of a __tls_get_addr call in -fPIC code (every
// write reads it). 8 bytes of static TLS, which glibc reserves even for dlopen().
__attribute__((tls_model("initial-exec"))) thread_local CallbackScope* CallbackScope::innermost =
    nullptr;

// After a write on this thread changed `key` of `node` (kWholeNode: possibly every key):
// marks the callbacks running on this thread that read it.
// Out of line: only a write made while a callback runs on this thread gets here.
[[gnu::noinline]] void note_own_write_in_callback(const MetadataStore* store, NodeId node,
                                                  std::uint32_t key) noexcept {
  for (CallbackScope* s = CallbackScope::innermost; s != nullptr; s = s->outer) {
    if (s->store == store && s->node == node &&
        (s->key == kWholeNode || key == kWholeNode || s->key == key)) {
      s->flags.self_wrote = true;
    }
  }
}
// Every write calls this: one thread-local load when no callback runs on this thread.
inline void note_own_write(const MetadataStore* store, NodeId node, std::uint32_t key) noexcept {
  if (CallbackScope::innermost != nullptr) note_own_write_in_callback(store, node, key);
}

// An edit() of `node` on this thread is committing `next` over `old` (its `old_size`
// slots): marks the callbacks running on this thread that read what it changes: an update()
// whose key's slot changes, every edit() of the node (it validates the whole node).
void note_own_edit(const MetadataStore* store, NodeId node, const Slot* old,
                   std::uint32_t old_size, const detail::Record& next) noexcept {
  for (CallbackScope* s = CallbackScope::innermost; s != nullptr; s = s->outer) {
    if (s->store != store || s->node != node) continue;
    if (s->key == kWholeNode) {
      s->flags.self_wrote = true;
      continue;
    }
    const Slot* before = nullptr;
    for (std::uint32_t i = 0; i < old_size; ++i) {
      if (old[i].key == s->key) before = &old[i];
    }
    const Slot* after = next.find(s->key);
    if ((before == nullptr) != (after == nullptr) ||
        (before != nullptr && (before->kind != after->kind || before->bits != after->bits))) {
      s->flags.self_wrote = true;
    }
  }
}

// Runs `f` when it goes out of scope.
template <class F>
class AtExit {
 public:
  explicit AtExit(F f) noexcept : f_(std::move(f)) {}
  ~AtExit() { f_(); }
  AtExit(const AtExit&) = delete;
  AtExit& operator=(const AtExit&) = delete;

 private:
  F f_;
};

// Runs a user callback, with no lock held, in a scope that records what this thread does
// meanwhile, isolated from unrelated oneTBB work: while the callback waits inside oneTBB
// (a task_group::wait, a nested parallel_for) this thread only runs tasks the callback
// itself spawned, never an outer task of the caller's loop, so what this thread writes
// meanwhile is the callback's own doing.
template <class F>
decltype(auto) run_callback(const MetadataStore* store, const NodeEntry& node, std::uint32_t key,
                            CallbackFlags& flags, F&& f) {
  CallbackScope scope(store, node.first, &node.second, key, flags);
  return tbb::this_task_arena::isolate(std::forward<F>(f));
}

// Spins briefly with pause, then yields the processor: with more threads than cores, a
// waiter must let a preempted lock holder (or window writer) run rather than burn its slice.
class Backoff {
 public:
  void pause() noexcept {
    if (count_ <= 32) {
      for (int i = 0; i < count_; ++i) cpu_relax();
      count_ *= 2;
    } else {
      std::this_thread::yield();
    }
  }

 private:
  static void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
  }
  int count_ = 1;
};

// --- fork(): the node locks of threads a child does not have -------------------------------
//
// Every thread that takes node locks has a LockNote: the control word of the node whose lock
// it holds or is taking (a thread holds at most one: nothing that runs under a node lock
// takes another). Stored before the lock's CAS, cleared after the unlock: plain stores to
// the thread's own note. A fork()ed child has only the forking thread, so the child handler
// (pthread_atfork) unlocks every node another thread's note names. A node whose write window
// was open may be torn: the handler leaves its writing bit set without the lock bit, a state
// no live writer produces, and every later operation on it throws std::logic_error.
struct NodeHold;
struct alignas(64) LockNote {
  std::atomic<std::atomic<std::uint64_t>*> held{nullptr};
  // The counts its thread holds in nodes (NodeState::aux's two counts),
  // innermost first: the child handler takes back those of the threads it does not have.
  std::atomic<NodeHold*> holds{nullptr};
  std::atomic<bool> in_use{true};
  LockNote* next = nullptr;  // immutable once published
};
std::atomic<LockNote*> g_lock_notes{nullptr};
__attribute__((tls_model("initial-exec"))) thread_local LockNote* tls_lock_note = nullptr;
pthread_key_t g_lock_note_key;

// One count a thread holds in a node (HeldCount): linked into its LockNote's holds.
struct NodeHold {
  std::atomic<std::uint32_t>* count = nullptr;  // a NodeState's aux
  std::uint32_t unit = 0;                        // the count's field there (its unit)
  NodeHold* outer = nullptr;
  std::atomic<bool> counted{false};  // count was incremented (and not yet decremented)
};

void clear_inherited_locks() noexcept {
  const LockNote* mine = tls_lock_note;  // the forking thread's: it held no lock in fork()
  for (LockNote* n = g_lock_notes.load(std::memory_order_acquire); n != nullptr; n = n->next) {
    if (n == mine) continue;
    // The counts its thread held (a waiting read, a starved or running callback): the
    // thread does not exist here. The forking thread's own counts stay, and its own scopes
    // give them back as they end.
    for (NodeHold* h = n->holds.exchange(nullptr, std::memory_order_acquire); h != nullptr;
         h = h->outer) {
      if (h->counted.load(std::memory_order_relaxed)) {
        h->count->fetch_sub(h->unit, std::memory_order_relaxed);
      }
    }
    if (std::atomic<std::uint64_t>* ctl = n->held.exchange(nullptr, std::memory_order_relaxed)) {
      const std::uint64_t w = ctl->load(std::memory_order_relaxed);
      if ((w & NodeState::kLocked) != 0) ctl->store(w & ~NodeState::kLocked, std::memory_order_relaxed);
    }
    n->in_use.store(false, std::memory_order_relaxed);  // its thread does not exist here
  }
}

LockNote* create_lock_note() {
  static const bool registered = [] {
    // The key's destructor gives an exiting thread's note back for reuse.
    if (pthread_key_create(&g_lock_note_key, [](void* note) {
          tls_lock_note = nullptr;
          static_cast<LockNote*>(note)->in_use.store(false, std::memory_order_release);
        }) != 0 ||
        pthread_atfork(nullptr, nullptr, &clear_inherited_locks) != 0) {
      throw std::runtime_error("nodemeta: cannot register the node locks' fork() handler");
    }
    return true;
  }();
  (void)registered;
  LockNote* note = nullptr;
  for (LockNote* n = g_lock_notes.load(std::memory_order_acquire); n != nullptr; n = n->next) {
    bool free = false;
    if (!n->in_use.load(std::memory_order_relaxed) &&
        n->in_use.compare_exchange_strong(free, true, std::memory_order_acquire)) {
      note = n;
      break;
    }
  }
  if (note == nullptr) {
    note = new LockNote();  // immortal, like the reclamation records
    LockNote* head = g_lock_notes.load(std::memory_order_relaxed);
    do {
      note->next = head;
    } while (!g_lock_notes.compare_exchange_weak(head, note, std::memory_order_release,
                                                 std::memory_order_relaxed));
  }
  pthread_setspecific(g_lock_note_key, note);
  tls_lock_note = note;
  return note;
}

// A node a fork()ed child inherited with another thread's write window open.
bool is_torn(std::uint64_t w) noexcept {
  return (w & (NodeState::kWriting | NodeState::kLocked)) == NodeState::kWriting;
}
[[noreturn]] void throw_torn() {
  throw std::logic_error(
      "nodemeta: this node was being written by another thread when the process was "
      "fork()ed; in the child its contents may be torn, and it may only be destroyed");
}

// Writes at most this many slots inside a window; larger nodes are scanned under the lock
// before it opens, so a window stays a few stores long whatever the node's size.
constexpr std::uint32_t kScanInWindow = 16;

// A count this thread holds in a node while it lives (or until stop()): one of the two
// counts in NodeState::aux, recorded in the thread's LockNote so that a fork()ed child can
// take back the counts of the threads it does not have. Scopes nest: started and stopped
// innermost first.
class HeldCount {
 public:
  enum class Field : std::uint32_t {
    kCallbacks = NodeState::kCallbackUnit,  // update()/edit() calls running on the node
    kPriority = NodeState::kPriorityUnit,   // threads waiting for its lock with priority
  };
  HeldCount() noexcept = default;
  HeldCount(NodeState& node, Field field) { start(node, field); }
  ~HeldCount() { (void)stop(); }
  HeldCount(const HeldCount&) = delete;
  HeldCount& operator=(const HeldCount&) = delete;
  // Increments the count (once) and returns true; false, counting nothing, if it already
  // is NodeState::kMaxCount. Throws std::bad_alloc once per thread (its LockNote).
  bool start(NodeState& node, Field field) {
    if (hold_.count != nullptr) return true;
    const std::uint32_t unit = static_cast<std::uint32_t>(field);
    note_ = tls_lock_note != nullptr ? tls_lock_note : create_lock_note();
    std::atomic<std::uint32_t>& aux = node.aux;
    std::uint32_t w = aux.load(std::memory_order_relaxed);
    hold_.count = &aux;
    hold_.unit = unit;
    hold_.outer = note_->holds.load(std::memory_order_relaxed);
    note_->holds.store(&hold_, std::memory_order_release);
    do {
      if (((w >> std::countr_zero(unit)) & NodeState::kMaxCount) == NodeState::kMaxCount) {
        note_->holds.store(hold_.outer, std::memory_order_release);
        hold_.count = nullptr;
        return false;
      }
    } while (!aux.compare_exchange_weak(w, w + unit, std::memory_order_acq_rel,
                                        std::memory_order_relaxed));
    // A fork() between the increment and this store leaves the count one too high in the
    // child (docs/design.md, "Forked children").
    hold_.counted.store(true, std::memory_order_relaxed);
    return true;
  }
  // Decrements the count if started; returns the aux word it replaced (0 if not started).
  std::uint32_t stop() noexcept {
    if (hold_.count == nullptr) return 0;
    hold_.counted.store(false, std::memory_order_relaxed);
    const std::uint32_t before = hold_.count->fetch_sub(hold_.unit, std::memory_order_acq_rel);
    note_->holds.store(hold_.outer, std::memory_order_release);
    hold_.count = nullptr;
    return before;
  }

 private:
  NodeHold hold_;
  LockNote* note_ = nullptr;
};

// Threads waiting for a node's lock with priority (NodeState::aux's count): a read's
// fallback (optimistic_read), and an update()/edit() whose callback another writer of its
// node has outrun kPoliteAfter times. Other writers of that node (only of that node) defer
// to them before taking its lock, so that a hot writer (whose unlock-to-relock gap is a few
// instructions) cannot starve them, but for at most kMaxDefer each: a writer waiting here
// holds no lock, and may be a task that a waiting callback itself waits for, so an
// unbounded wait could deadlock. The count is on the node's own line, which a write loads
// anyway for its CAS: the fast path's one extra load.
constexpr std::chrono::microseconds kMaxDefer{2000};
std::atomic<std::uint64_t> g_write_deferrals{0};  // detail::write_deferrals()

// Whether this thread runs a callback on `node` (its writes there never defer to it).
bool in_callback_on(const NodeState& node) noexcept {
  for (const CallbackScope* s = CallbackScope::innermost; s != nullptr; s = s->outer) {
    if (s->state == &node) return true;
  }
  return false;
}

// A node's write lock, and the write window inside it. Only the holder stores to ctl while
// the lock is held, so it tracks the word itself and publishes with plain stores.
class WriteLock {
 public:
  // `open`: take the lock with the write window already open, in the same CAS (a seq_cst
  // read-modify-write, which also serves as the window's fence). For writes that need no
  // allocation and no long scan before their stores, which is nearly all of them.
  // `priority`: the caller is counted among the node's priority waiters (it does not defer).
  // Throws std::logic_error on a torn node (see LockNote), std::bad_alloc once per thread.
  WriteLock(NodeState& node, bool open, bool priority = false) : node_(node), open_(open) {
    LockNote* note = tls_lock_note;
    if (note == nullptr) note = create_lock_note();
    note_ = note;
    const std::uint64_t bits = NodeState::kLocked | (open ? NodeState::kWriting : 0);
    std::uint64_t w = node.ctl.load(std::memory_order_relaxed);
    note->held.store(&node.ctl, std::memory_order_relaxed);  // ordered before the CAS
    if ((w & (NodeState::kLocked | NodeState::kWriting)) != 0 ||
        (!priority && (node.aux.load(std::memory_order_relaxed) & NodeState::kPriorityMask) != 0) ||
        !node.ctl.compare_exchange_strong(w, w | bits, std::memory_order_seq_cst,
                                          std::memory_order_relaxed)) {
      w = acquire_slow(bits, priority);
    }
    word_ = w | NodeState::kLocked;
    if (open) std::atomic_thread_fence(std::memory_order_release);  // (seqlock writer)
  }
  ~WriteLock() {
    node_.ctl.store(word_ & ~NodeState::kLocked, std::memory_order_release);
    note_->held.store(nullptr, std::memory_order_relaxed);
  }
  WriteLock(const WriteLock&) = delete;
  WriteLock& operator=(const WriteLock&) = delete;

  // Opens the write window if the lock did not: readers that load ctl from now on retry
  // until close(). The seq_cst fence orders the opening before the protection check that
  // follows (and, as a release fence, before every store of the window).
  void open() noexcept {
    if (open_) return;
    open_ = true;
    node_.ctl.store(word_ | NodeState::kWriting, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_seq_cst);
  }
  bool is_open() const noexcept { return open_; }
  // Closes the window; `changed`: the node's contents changed (readers that overlapped the
  // window fail their validation). Release: the window's stores happen before any read
  // that sees the window closed.
  void close(bool changed) noexcept {
    if (changed) word_ += NodeState::kVersionStep;
    open_ = false;
    node_.ctl.store(word_, std::memory_order_release);
  }
  // The node's version while the lock is held (what optimistic reads validate).
  std::uint64_t version() const noexcept { return word_ & ~(NodeState::kLocked | NodeState::kWriting); }

 private:
  // The lock was taken, or a priority waiter may want it: spin (then yield) until the CAS
  // succeeds, deferring to a waiter of this node for at most kMaxDefer. Returns the word
  // the CAS replaced.
  [[gnu::noinline]] std::uint64_t acquire_slow(std::uint64_t bits, bool priority) {
    Backoff backoff;
    bool defer = !priority;
    std::chrono::steady_clock::time_point defer_until{};
    std::uint64_t w = node_.ctl.load(std::memory_order_relaxed);
    for (;;) {
      if ((w & (NodeState::kLocked | NodeState::kWriting)) == 0) {
        if (defer && (node_.aux.load(std::memory_order_relaxed) & NodeState::kPriorityMask) != 0) {
          const auto now = std::chrono::steady_clock::now();
          if (defer_until == std::chrono::steady_clock::time_point{}) {
            defer_until = now + kMaxDefer;
            if (in_callback_on(node_)) {
              defer = false;
            } else {
              g_write_deferrals.fetch_add(1, std::memory_order_relaxed);
            }
          } else if (now >= defer_until) {
            defer = false;
          }
        } else if (node_.ctl.compare_exchange_weak(w, w | bits, std::memory_order_seq_cst,
                                                   std::memory_order_relaxed)) {
          return w;
        }
      } else if (is_torn(w)) {
        note_->held.store(nullptr, std::memory_order_relaxed);
        throw_torn();
      }
      backoff.pause();
      w = node_.ctl.load(std::memory_order_relaxed);
    }
  }

  NodeState& node_;
  LockNote* note_;
  std::uint64_t word_;
  bool open_;
};

// Whether a write should open its window with the lock: only for a node small enough to be
// scanned inside it, and not when its array looks full (hints read without the lock: an
// append may then need to allocate, which it does before opening, so readers never wait on
// the allocator).
bool open_with_lock(const NodeState& node) noexcept {
  const std::uint32_t size = node.size.load(std::memory_order_relaxed);
  return size <= kScanInWindow &&
         detail::has_room(size, node.aux.load(std::memory_order_relaxed) & NodeState::kCapacityMask);
}

// A window opened in the lock's CAS on open_with_lock()'s hint: under the lock the same
// test is exact. If another writer grew the node past kScanInWindow or filled its array
// between the hint and the CAS, close the window again (unchanged) so that the scan and the
// allocation run outside it; the write opens it later with open().
void recheck_open(WriteLock& lock, const NodeState& node) noexcept {
  if (lock.is_open() && !open_with_lock(node)) lock.close(false);
}

// Optimistic attempts a read makes before it takes the node's lock for one locked attempt:
// few for a large node (each attempt copies or scans all of it, and a hot writer
// invalidates nearly every one), many for a small one (an attempt is a few loads, and
// the next one nearly always validates: a lock would only slow its writers down).
constexpr int kOptimisticReadsLarge = 4;
constexpr int kOptimisticReadsSmall = 64;

// Runs `read(slots, size)` on a consistent view of the node and returns its result; the
// node's version it saw goes to `*version` if given. `read` may only load (load_shared) and
// copy plain data out; it runs again if a write window overlapped it. The caller is pinned
// (ReadGuard) if `read` dereferences slots. After kOptimisticReadsLarge failed validations
// (a hot writer on a node large enough that every copy overlaps one of its windows; 64 for
// a node of at most 16 keys) it waits for the node's lock and reads under it: a lock holder is a write's commit, a few stores
// and at most one scan of the node, never user code, so the read then ends.
template <class F>
auto optimistic_read(const NodeState& node, F&& read, std::uint64_t* version = nullptr) {
  Backoff backoff;
  int limit = kOptimisticReadsLarge;
  for (int attempt = 0;; ++attempt) {
    if (attempt >= limit) {
      HeldCount waiting(const_cast<NodeState&>(node), HeldCount::Field::kPriority);
      WriteLock lock(const_cast<NodeState&>(node), false, /*priority=*/true);
      auto result = read(node.slots.load(std::memory_order_relaxed),
                         node.size.load(std::memory_order_relaxed));
      if (version != nullptr) *version = lock.version();
      return result;
    }
    const std::uint64_t w1 = node.ctl.load(std::memory_order_seq_cst);
    if ((w1 & NodeState::kWriting) == 0) {
      const std::uint32_t size = node.size.load(std::memory_order_seq_cst);
      const Slot* slots = node.slots.load(std::memory_order_seq_cst);
      limit = size <= kScanInWindow ? kOptimisticReadsSmall : kOptimisticReadsLarge;
      auto result = read(slots, size);
      std::atomic_thread_fence(std::memory_order_acquire);
      const std::uint64_t w2 = node.ctl.load(std::memory_order_relaxed);
      if (((w1 ^ w2) & ~NodeState::kLocked) == 0) {
        if (version != nullptr) *version = w1 & ~NodeState::kLocked;
        return result;
      }
    } else if (is_torn(w1)) {
      throw_torn();
    }
    backoff.pause();
  }
}

// The index of `key` among the first `size` slots, or kAbsent (concurrent loads).
std::uint32_t find_shared(const Slot* slots, std::uint32_t size, std::uint32_t key) noexcept {
  for (std::uint32_t i = 0; i < size; ++i) {
    if (detail::load_shared(slots[i].key) == key) return i;
  }
  return kAbsent;
}
// The same, for the lock holder (no other thread stores to the node).
std::uint32_t find_owned(const NodeState& node, std::uint32_t key) noexcept {
  const Slot* slots = node.slots.load(std::memory_order_relaxed);
  const std::uint32_t size = node.size.load(std::memory_order_relaxed);
  for (std::uint32_t i = 0; i < size; ++i) {
    if (slots[i].key == key) return i;
  }
  return kAbsent;
}

void release_box(void* box, std::size_t /*unused*/) noexcept {
  static_cast<detail::ValueBox*>(box)->release();
}
void free_slots(void* slots, std::size_t capacity) noexcept {
  detail::deallocate_slots(static_cast<Slot*>(slots), static_cast<std::uint32_t>(capacity));
}
// Queues the reference a slot held for release after the reads in flight.
void retire_value(const Slot& old) noexcept {
  if (old.boxed()) {
    detail::retire(reinterpret_cast<void*>(old.bits), &release_box, 0);  // NOLINT
  }
}

// A slot array allocated for growth; freed unless published.
struct FreshSlots {
  Slot* slots = nullptr;
  std::uint32_t capacity = 0;
  FreshSlots() = default;
  FreshSlots(const FreshSlots&) = delete;
  FreshSlots& operator=(const FreshSlots&) = delete;
  ~FreshSlots() { detail::deallocate_slots(slots, capacity); }
  Slot* take() noexcept { return std::exchange(slots, nullptr); }
};

// Before a write window: if appending one key needs a bigger array, allocate it (may throw;
// nothing has changed yet) and copy the current slots into it.
void prepare_append(const NodeState& node, FreshSlots& fresh) {
  if (node.has_room()) return;
  const std::uint32_t size = node.size.load(std::memory_order_relaxed);
  fresh.capacity = detail::grown_capacity(size);
  fresh.slots = detail::allocate_slots(fresh.capacity);
  if (size != 0) {
    std::copy_n(node.slots.load(std::memory_order_relaxed), size, fresh.slots);
  }
}

// Inside a write window: appends `slot`, publishing `fresh` (prepared by prepare_append)
// if it holds an array, and retiring the outgrown one.
void append_in_window(NodeState& node, const Slot& slot, FreshSlots& fresh) noexcept {
  const std::uint32_t size = node.size.load(std::memory_order_relaxed);
  if (fresh.slots != nullptr) {
    Slot* old = node.slots.load(std::memory_order_relaxed);
    fresh.slots[size] = slot;  // not yet visible to any reader
    node.slots.store(fresh.take(), std::memory_order_release);
    node.size.store(size + 1, std::memory_order_release);
    // The node's inline array is part of its block: left there, unused, never freed.
    if (old != nullptr && !detail::is_inline(node, old)) {
      detail::retire(old, &free_slots, node.capacity());
    }
    node.set_capacity(fresh.capacity);
  } else {
    detail::store_slot(node.slots.load(std::memory_order_relaxed)[size], slot);
    node.size.store(size + 1, std::memory_order_release);
  }
}

// Inside a write window: stores `value` into slot `i` (retiring the value it held), or
// appends it when i is kAbsent. True iff it appended.
bool store_in_window(NodeState& node, std::uint32_t i, Key key, Value&& value,
                     FreshSlots& fresh) noexcept {
  const detail::ValueAccess::Rep rep = detail::ValueAccess::release(std::move(value));
  if (i == kAbsent) {
    append_in_window(node, Slot{key.id(), rep.kind, rep.bits}, fresh);
    return true;
  }
  Slot& slot = node.slots.load(std::memory_order_relaxed)[i];
  const Slot old = slot;
  detail::store_shared(slot.kind, rep.kind);
  detail::store_shared(slot.bits, rep.bits);
  retire_value(old);
  return false;
}

// After a write has unlocked: stamps what it retired and releases what is safe.
void after_write() noexcept {
  detail::seal_retired();
  detail::maybe_collect();
}

Items named_sorted(const detail::Record& record) {
  Items items;
  items.reserve(record.size());
  for (const Slot& s : record) {
    items.emplace_back(std::string(detail::key_name(s.key)), s.value());
  }
  std::sort(items.begin(), items.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  return items;
}

// A consistent copy of the node's slots, holding its own references.
// `version`, if given: the version of the node it copied.
detail::Record snapshot(const NodeState& node, std::uint32_t spare,
                        std::uint64_t* version = nullptr) {
  detail::ReadGuard guard;
  // Small nodes are copied to the stack; larger ones to a heap buffer sized on the way.
  constexpr std::uint32_t kInline = 16;
  Slot inline_buf[kInline];
  std::unique_ptr<Slot[]> heap;
  std::uint32_t heap_size = 0;
  const auto [slots, size] = optimistic_read(node, [&](const Slot* s, std::uint32_t n) {
    Slot* out = inline_buf;
    if (n > kInline) {
      if (n > heap_size) {
        heap = std::make_unique<Slot[]>(n);  // may throw: nothing taken yet
        heap_size = n;
      }
      out = heap.get();
    }
    for (std::uint32_t i = 0; i < n; ++i) out[i] = detail::load_slot(s[i]);
    return std::pair<const Slot*, std::uint32_t>(out, n);
  }, version);
  // Validated while pinned: every box is still referenced by the node or awaits release.
  for (std::uint32_t i = 0; i < size; ++i) {
    detail::ValueAccess::add_ref(slots[i].bits, slots[i].kind);
  }
  try {
    return detail::Record(slots, size, size + spare);
  } catch (...) {
    for (std::uint32_t i = 0; i < size; ++i) detail::ValueAccess::drop(slots[i].bits, slots[i].kind);
    throw;
  }
}

}  // namespace

namespace detail {
std::uint64_t write_deferrals() noexcept { return g_write_deferrals.load(std::memory_order_relaxed); }
}  // namespace detail

MetadataStore::MetadataStore(StoreOptions options) {
  for (Key key : options.protected_keys) {
    if (!key.valid()) {
      throw std::invalid_argument("nodemeta: StoreOptions::protected_keys holds an invalid "
                                  "(zero-initialised) Key");
    }
    protection_.add(key.id());
  }
  if (options.expected_nodes != 0) map_.rehash(options.expected_nodes);
}

MetadataStore::~MetadataStore() {
  // A node may still be owned by a retired value (a user object holding a NodeMetadata that
  // a write replaced): release those first, where releasing is allowed on this thread.
  if (!map_.empty() && CallbackScope::innermost == nullptr && detail::may_release_retired()) {
    (void)detail::release_retired();
  }
  if (!map_.empty()) {
    // A destructor cannot throw, and the nodes' handles would use freed memory: stop, in
    // every build.
    std::fprintf(stderr,
                 "nodemeta: MetadataStore %p destroyed with %zu node(s) still alive "
                 "(NodeMetadata handles, or values holding them, still refer to it): the store "
                 "must outlive its nodes\n",
                 static_cast<const void*>(this), map_.size());
    std::fflush(stderr);
    std::abort();
  }
}

MetadataStore& MetadataStore::default_store() {
  static MetadataStore* const store = new MetadataStore();  // never destroyed, so standalone
  return *store;                                            // nodes may be static too
}

NodeMetadata MetadataStore::create(std::initializer_list<KeyValue> items) {
  return create(std::span<const KeyValue>(items.begin(), items.size()));
}

NodeMetadata MetadataStore::create(std::span<const KeyValue> items) {
  if (items.size() >= detail::kMaxSlots) {
    throw std::length_error("nodemeta: a node cannot hold more than " +
                            std::to_string(detail::kMaxSlots) + " keys");
  }
  const auto n = static_cast<std::uint32_t>(items.size());
  // The error reported is the input's first, in its order, as when each key was checked
  // as it was added: an invalid key, or a key that repeats one before it. So duplicates
  // are only looked for before the first invalid key.
  std::uint32_t valid = 0;
  while (valid < n && items[valid].first.valid()) ++valid;
  // Duplicates: a pairwise scan for the few keys real nodes hold, sorted ids beyond.
  constexpr std::uint32_t kPairwise = 32;
  const auto duplicate = [](Key key) {
    return std::invalid_argument("nodemeta: duplicate key '" + std::string(key.name()) +
                                 "' in a node's initial metadata");
  };
  if (valid <= kPairwise) {
    for (std::uint32_t i = 1; i < valid; ++i) {
      for (std::uint32_t j = 0; j < i; ++j) {
        if (items[i].first.id() == items[j].first.id()) throw duplicate(items[i].first);
      }
    }
  } else {
    std::vector<std::pair<std::uint32_t, std::uint32_t>> ids(valid);  // (id, index)
    for (std::uint32_t i = 0; i < valid; ++i) ids[i] = {items[i].first.id(), i};
    std::sort(ids.begin(), ids.end());
    // The first repeated key in the input's order, as the pairwise scan reports it.
    std::uint32_t first = valid;
    for (std::uint32_t i = 1; i < valid; ++i) {
      if (ids[i].first == ids[i - 1].first && ids[i].second < first) first = ids[i].second;
    }
    if (first != valid) throw duplicate(items[first].first);
  }
  if (valid != n) {
    throw std::invalid_argument("nodemeta: an invalid (zero-initialised) Key in a node's "
                                "initial metadata");
  }
  // One spare slot: the first key a pass adds to a built node (the commonest write) then
  // needs no reallocation. 16 bytes a node; docs/design.md has the measurements.
  const std::uint32_t capacity = detail::class_capacity(detail::capacity_class_for(n + 1));
  return NodeMetadata(this, insert(n, capacity, [&](Slot* out) noexcept {
    for (std::uint32_t i = 0; i < n; ++i) {
      const auto rep = detail::ValueAccess::release(Value(items[i].second));  // one reference
      out[i] = Slot{items[i].first.id(), rep.kind, rep.bits};
    }
  }));
}

void MetadataStore::protect(Key key) {
  if (!key.valid()) throw std::invalid_argument("nodemeta: protect() of an invalid Key");
  std::lock_guard<std::mutex> lock(protect_mutex_);
  protection_.add(key.id());
}

std::vector<std::string> MetadataStore::protected_keys() const {
  std::vector<std::string> names;
  for (std::uint32_t id : protection_.ids()) names.emplace_back(detail::key_name(id));
  std::sort(names.begin(), names.end());
  return names;
}

void MetadataStore::check_writable(Key key) {
  if (!key.valid()) {
    throw std::invalid_argument("nodemeta: write with an invalid (zero-initialised) Key");
  }
}

// --- node operations --------------------------------------------------------------------

NodeEntry* MetadataStore::insert(std::uint32_t size, std::uint32_t capacity,
                                  detail::FunctionRef<void(Slot*)> fill) {
  // A spare slot, except for a copy of a node already at kMaxSlots keys.
  NODEMETA_ASSERT(size <= capacity && (size < capacity || size == detail::kMaxSlots),
                  "a new node has a spare slot");
  // A small node's array is inline in the map node's block; a larger one's on the heap
  // (allocated first: if that throws, the map is unchanged), the block keeping one slot.
  const bool inline_array = capacity <= detail::kMaxInlineSlots;
  FreshSlots heap;
  if (!inline_array) {
    heap.slots = detail::allocate_slots(capacity);
    heap.capacity = capacity;
  }
  const NodeId id = next_id_.fetch_add(1, std::memory_order_relaxed);
  Map::accessor acc;
  detail::request_inline_slots(inline_array ? capacity : 1);
  bool inserted = false;
  try {
    inserted = map_.insert(acc, id);
  } catch (...) {
    // oneTBB links the new node in, then grows its bucket array: if that allocation
    // throws, the node (empty, its slots not yet filled) is in the map and `acc` holds it.
    // Take it out again: nothing has changed (and no handle would ever destroy it).
    if (!acc.empty()) (void)map_.erase(acc);
    throw;
  }
  NODEMETA_ASSERT(inserted, "node ids are never reused");
  (void)inserted;
  NodeState& node = acc->second;
  if (detail::allocated_inline_slots() != detail::inline_slots(node)) {
    // Checked in every build: the inline-array test (detail::is_inline) relies on it.
    std::fprintf(stderr,
                 "nodemeta: this oneTBB's concurrent_hash_map does not place a node's value at "
                 "the end of its block; nodemeta must be rebuilt for it\n");
    std::abort();
  }
  Slot* slots = inline_array ? detail::inline_slots(node) : heap.take();
  fill(slots);
  node.set_capacity(capacity);  // not yet shared
  node.slots.store(slots, std::memory_order_relaxed);
  node.size.store(size, std::memory_order_relaxed);
  // The element stays at this address until remove(): the map relinks, never moves, its
  // nodes when it grows. The accessor's release publishes the node to whoever gets the
  // handle through the map; other threads get it through the caller's own synchronisation.
  return &*acc;
}

NodeEntry* MetadataStore::clone(const NodeEntry& node) const {
  detail::Record copy = snapshot(node.second, 0);  // holds its own references
  const std::uint32_t n = copy.size();
  const std::uint32_t capacity =  // with a spare slot, unless the node is at kMaxSlots already
      detail::class_capacity(detail::capacity_class_for(n < detail::kMaxSlots ? n + 1 : n));
  NodeEntry* entry = const_cast<MetadataStore*>(this)->insert(n, capacity, [&](Slot* out) noexcept {
    if (n != 0) std::memcpy(static_cast<void*>(out), copy.begin(), sizeof(Slot) * n);
  });
  const std::uint32_t copy_capacity = copy.capacity();
  detail::deallocate_slots(copy.release(), copy_capacity);  // its references are the node's
  return entry;
}

void MetadataStore::remove(NodeEntry& node) noexcept {
  // A node destroyed (its handle destroyed or assigned to) inside its own update()/edit()
  // callback, by the callback's thread or by any thread its work runs on: callbacks hold no
  // lock, so the node is only marked; each running call sees the mark after its callback
  // and throws std::logic_error without committing, and the last one erases the node.
  const std::uint32_t running =
      node.second.aux.fetch_or(NodeState::kDestroyed, std::memory_order_acq_rel);
  if ((running & NodeState::kCallbackMask) != 0) return;
  erase_node(node);
}

void MetadataStore::erase_node(NodeEntry& node) noexcept {
  // Take the slots out first: the values are released after the node has left the map, so
  // their destructors run under no lock of ours or of the map's, and may use this store.
  NodeState& state = node.second;
  const bool torn = is_torn(state.ctl.load(std::memory_order_relaxed));
  const std::uint32_t size = state.size.load(std::memory_order_relaxed);
  Slot* slots = state.slots.exchange(nullptr, std::memory_order_relaxed);
  // An inline array dies with the node's block, in the map's erase, before the values are
  // released: its slots are copied out first (at most kMaxInlineSlots, to the stack).
  const bool own_block = detail::is_inline(state, slots);
  Slot inline_copy[detail::kMaxInlineSlots];
  if (own_block) {
    NODEMETA_ASSERT(size <= detail::kMaxInlineSlots, "an inline array is small");
    if (size != 0) std::memcpy(static_cast<void*>(inline_copy), slots, sizeof(Slot) * size);
    slots = inline_copy;
  }
  const std::uint32_t capacity = state.capacity();
  state.aux.fetch_and(~NodeState::kCapacityMask, std::memory_order_relaxed);
  state.size.store(0, std::memory_order_relaxed);
  const bool erased = map_.erase(node.first);
  NODEMETA_ASSERT(erased, "a live NodeMetadata's node is in its store");
  (void)erased;
  if (torn) return;  // a fork()ed child's torn node: its slots may name freed boxes; leaked
  for (std::uint32_t i = 0; i < size; ++i) detail::ValueAccess::drop(slots[i].bits, slots[i].kind);
  if (!own_block) detail::deallocate_slots(slots, capacity);
}

std::optional<Value> MetadataStore::get(const NodeEntry& node, Key key) const {
  detail::ReadGuard guard;
  const auto found = optimistic_read(node.second, [id = key.id()](const Slot* s, std::uint32_t n) {
    const std::uint32_t i = find_shared(s, n, id);
    return i == kAbsent ? std::optional<Slot>() : std::optional<Slot>(detail::load_slot(s[i]));
  });
  if (!found) return std::nullopt;
  return found->value();  // validated while pinned: a box's reference is still held
}

bool MetadataStore::contains(const NodeEntry& node, Key key) const {
  detail::ReadGuard guard;
  return optimistic_read(node.second, [id = key.id()](const Slot* s, std::uint32_t n) {
    return find_shared(s, n, id) != kAbsent;
  });
}

std::size_t MetadataStore::size(const NodeEntry& node) const {
  // One atomic load is a consistent view on its own, but a size read mid-window (an erase
  // moves a slot, then shrinks) is still validated so size() agrees with items().
  return optimistic_read(node.second, [](const Slot*, std::uint32_t n) { return n; });
}

Items MetadataStore::items(const NodeEntry& node) const {
  return named_sorted(snapshot(node.second, 0));  // name and sort outside the read
}

WriteResult MetadataStore::write(NodeEntry& node, Key key, Value&& value) {
  // The node's block, control word and inline slots, fetched together: the slots' line is
  // known before the control word arrives (the commonest write is to a node just built).
  detail::prefetch_node(node.second);
  check_writable(key);
  // Protection only ever goes from false to true, so a rejection needs no lock.
  if (is_protected(key)) return WriteResult::kRejectedProtected;
  detail::reserve_retired(1);  // may throw: nothing changed yet
  NodeState& state = node.second;
  WriteResult result;
  {
    // A large node is scanned under the lock before the window opens (readers go on).
    WriteLock lock(state, open_with_lock(state));
    recheck_open(lock, state);
    const std::uint32_t i = find_owned(state, key.id());
    FreshSlots fresh;
    if (i == kAbsent) prepare_append(state, fresh);  // may throw: nothing changed yet
    lock.open();
    // Checked again inside the window: a protect() whose bit this load misses cannot have
    // returned before a reader could see the window open (docs/design.md).
    if (is_protected(key)) {
      lock.close(false);
      return WriteResult::kRejectedProtected;
    }
    result = store_in_window(state, i, key, std::move(value), fresh) ? WriteResult::kInserted
                                                                     : WriteResult::kUpdated;
    lock.close(true);
  }
  note_own_write(this, node.first, key.id());
  after_write();
  return result;
}

bool MetadataStore::set_once(NodeEntry& node, Key key, Value&& value) {
  check_writable(key);
  detail::reserve_retired(1);
  NodeState& state = node.second;
  {
    WriteLock lock(state, open_with_lock(state));
    recheck_open(lock, state);
    if (find_owned(state, key.id()) != kAbsent) {
      if (lock.is_open()) lock.close(false);
      return false;
    }
    FreshSlots fresh;
    prepare_append(state, fresh);  // may throw: nothing changed yet (a window closes unchanged)
    lock.open();
    const detail::ValueAccess::Rep rep = detail::ValueAccess::release(std::move(value));
    append_in_window(state, Slot{key.id(), rep.kind, rep.bits}, fresh);
    lock.close(true);
  }
  note_own_write(this, node.first, key.id());
  after_write();
  return true;
}

bool MetadataStore::erase(NodeEntry& node, Key key) {
  check_writable(key);
  if (is_protected(key)) throw ProtectedKeyError(key.name());
  detail::reserve_retired(1);
  NodeState& state = node.second;
  {
    WriteLock lock(state, false);
    const std::uint32_t i = find_owned(state, key.id());
    if (i == kAbsent) return false;  // nothing changes: linearized at the lookup
    lock.open();
    if (is_protected(key)) {
      lock.close(false);
      throw ProtectedKeyError(key.name());
    }
    Slot* slots = state.slots.load(std::memory_order_relaxed);
    const std::uint32_t size = state.size.load(std::memory_order_relaxed);
    const Slot old = slots[i];
    if (i != size - 1) detail::store_slot(slots[i], slots[size - 1]);
    state.size.store(size - 1, std::memory_order_release);
    retire_value(old);
    lock.close(true);
  }
  note_own_write(this, node.first, key.id());
  after_write();
  return true;
}

namespace {

// After this many runs of one update()/edit() callback whose reads were each invalidated by
// another thread's write, the call asks the node's other writers to defer to it (for up to
// kMaxDefer each: see HeldCount), so that a callback slower than another thread's
// writes of the same node gets an interval without them.
constexpr unsigned kPoliteAfter = 32;
// The most runs before nodemeta gives up (ReentrancyError): by then the writes are taken to
// be the callback's own, made by tasks it hands to other threads.
constexpr unsigned kMaxCallbackRuns = 256;

[[noreturn]] void throw_self_invalidated(const char* op, const Key* key, bool own_thread) {
  std::string what = std::string("nodemeta: ") + op;
  if (key != nullptr) what += "('" + std::string(key->name()) + "')";
  what += own_thread ? ": the callback's own thread wrote what the callback read"
                     : ": what the callback read changed during each of its " +
                           std::to_string(kMaxCallbackRuns) + " runs";
  what += " (its commit could never succeed; return the new value instead of writing it)";
  throw ReentrancyError(what);
}

// Counts an update()/edit() call in the node (see remove()). Throws std::length_error if
// NodeState::kMaxCount calls already run on it, std::bad_alloc once per thread.
void start_call(HeldCount& running, NodeState& node, const char* op) {
  if (!running.start(node, HeldCount::Field::kCallbacks)) {
    throw std::length_error(std::string("nodemeta: ") + op + ": " +
                            std::to_string(NodeState::kMaxCount) +
                            " update()/edit() calls already run on this node (the most "
                            "there may be at once, nested calls included)");
  }
}
// Whether the call whose count ended with aux word `before` was the last one running on a
// node destroyed meanwhile.
bool last_call_on_destroyed(std::uint32_t before) noexcept {
  return (before & (NodeState::kDestroyed | NodeState::kCallbackMask)) ==
         (NodeState::kDestroyed | NodeState::kCallbackUnit);
}

[[noreturn]] void throw_destroyed_in_callback(const char* op) {
  throw std::logic_error(std::string("nodemeta: the node was destroyed inside its own ") + op +
                         " callback; nothing was committed");
}

}  // namespace

Value MetadataStore::update(NodeEntry& node, Key key,
                            detail::FunctionRef<Value(std::optional<Value>)> fn) {
  check_writable(key);
  if (is_protected(key)) throw ProtectedKeyError(key.name());
  NodeState& state = node.second;
  const std::uint32_t id = key.id();
  HeldCount running;
  start_call(running, state, "update()");  // may throw: nothing done yet
  const AtExit last([&]() noexcept {
    if (last_call_on_destroyed(running.stop())) erase_node(node);  // see remove()
  });
  if ((state.aux.load(std::memory_order_acquire) & NodeState::kDestroyed) != 0) {
    throw_destroyed_in_callback("update()");  // a view's call on a node being destroyed
  }
  HeldCount polite;  // a starved callback's: state's other writers defer to it
  for (unsigned run = 1;; ++run) {
    if (run == kPoliteAfter) (void)polite.start(state, HeldCount::Field::kPriority);
    // What the callback reads, and what the commit validates: the key's slot (kind and bits).
    // `seen` holds a reference to a box it names, so that box cannot be freed and its
    // address reused for another value before the commit compares (no ABA).
    std::optional<Slot> slot;
    std::optional<Value> seen;
    {
      detail::ReadGuard guard;
      slot = optimistic_read(state, [id](const Slot* s, std::uint32_t n) {
        const std::uint32_t i = find_shared(s, n, id);
        return i == kAbsent ? std::optional<Slot>() : std::optional<Slot>(detail::load_slot(s[i]));
      });
      if (slot) seen = slot->value();  // validated while pinned
    }
    CallbackFlags flags;
    // No lock held: fn may read or write anything, this node included, and wait for tasks
    // that do.
    Value next = run_callback(this, node, id, flags, [&] { return fn(seen); });
    if ((state.aux.load(std::memory_order_acquire) & NodeState::kDestroyed) != 0) {
      throw_destroyed_in_callback("update()");  // `last` erases it if no other call runs
    }
    detail::reserve_retired(1);  // may throw: nothing changed yet
    Value stored = next;         // dies after the lock (declared before it)
    bool committed = false;
    {
      // As write(): a small node with room opens its window in the lock's CAS (the lookup
      // and the comparison are then inside it, at most kScanInWindow slots); a commit that
      // finds the key changed closes it unchanged.
      WriteLock lock(state, open_with_lock(state), /*priority=*/run >= kPoliteAfter);
      recheck_open(lock, state);
      const std::uint32_t i = find_owned(state, id);
      const bool unchanged =
          i == kAbsent ? !slot
                       : slot && state.slots.load(std::memory_order_relaxed)[i].kind == slot->kind &&
                             state.slots.load(std::memory_order_relaxed)[i].bits == slot->bits;
      if (!unchanged && lock.is_open()) lock.close(false);
      if (unchanged) {
        FreshSlots fresh;
        if (i == kAbsent) prepare_append(state, fresh);  // may throw: nothing changed yet
        lock.open();
        if (is_protected(key)) {  // protected while fn ran: linearized now, rejected
          lock.close(false);
          throw ProtectedKeyError(key.name());
        }
        (void)store_in_window(state, i, key, std::move(stored), fresh);
        lock.close(true);
        committed = true;
      }
    }
    if (committed) {
      note_own_write(this, node.first, id);
      after_write();
      return next;
    }
    if (flags.self_wrote) throw_self_invalidated("update", &key, true);
    if (run == kMaxCallbackRuns) throw_self_invalidated("update", &key, false);
    // Another thread changed the key meanwhile: run fn again on its new value.
  }
}

void MetadataStore::edit(NodeEntry& node, detail::FunctionRef<void(NodeEditor&)> fn) {
  NodeState& state = node.second;
  HeldCount running;
  start_call(running, state, "edit()");  // as in update()
  const AtExit last([&]() noexcept {
    if (last_call_on_destroyed(running.stop())) erase_node(node);
  });
  if ((state.aux.load(std::memory_order_acquire) & NodeState::kDestroyed) != 0) {
    throw_destroyed_in_callback("edit()");
  }
  HeldCount polite;
  for (unsigned run = 1;; ++run) {
    if (run == kPoliteAfter) (void)polite.start(state, HeldCount::Field::kPriority);
    // The working copy, and the node's version it was copied at: the commit validates the
    // whole node (the editor's items() and size() read all of it).
    std::uint64_t version = 0;
    NodeEditor editor(*this, snapshot(state, 0, &version));
    const std::uint32_t base_size = editor.record_.size();
    CallbackFlags flags;
    run_callback(this, node, kWholeNode, flags, [&] { fn(editor); });  // no lock held
    if ((state.aux.load(std::memory_order_acquire) & NodeState::kDestroyed) != 0) {
      throw_destroyed_in_callback("edit()");
    }

    // Commit: everything that may throw first.
    detail::Record& next = editor.record_;
    const std::uint32_t n = next.size();
    detail::reserve_retired(base_size + 1);
    bool committed = false;
    bool stale = false;
    {
      WriteLock lock(state, false, /*priority=*/run >= kPoliteAfter);
      if (lock.version() == version) {
        // Unchanged since the copy: size and slots are the copy's. A node too large to
        // rewrite inside a window (or one that must grow) adopts the working copy's array.
        Slot* slots = state.slots.load(std::memory_order_relaxed);
        const std::uint32_t capacity = state.capacity();
        const bool adopt = n > capacity || n > kScanInWindow || base_size > kScanInWindow;
        lock.open();
        // Linearized at this window. Every NodeEditor write found its key unprotected when
        // it was called; if one of those keys was protected since, the callback saw an
        // instant that is not this one: run it again (protection only grows, so this ends).
        stale = std::any_of(editor.checked_.begin(), editor.checked_.end(),
                            [this](std::uint32_t k) { return protection_.contains(k); });
        if (!stale) note_own_edit(this, node.first, slots, base_size, next);
        if (stale) {
          lock.close(false);
        } else if (adopt) {
          const std::uint32_t next_capacity = next.capacity();
          state.slots.store(next.release(), std::memory_order_release);  // with its references
          state.size.store(n, std::memory_order_release);
          state.set_capacity(next_capacity);
          lock.close(true);
          // Outside the window, under the lock: the old array and its references, retired.
          for (std::uint32_t j = 0; j < base_size; ++j) retire_value(slots[j]);
          if (slots != nullptr && !detail::is_inline(state, slots)) {
            detail::retire(slots, &free_slots, capacity);  // an inline one stays, unused
          }
          committed = true;
        } else {
          for (std::uint32_t j = 0; j < base_size; ++j) retire_value(slots[j]);
          for (std::uint32_t j = 0; j < n; ++j) detail::store_slot(slots[j], next.begin()[j]);
          state.size.store(n, std::memory_order_release);
          const std::uint32_t next_capacity = next.capacity();
          detail::deallocate_slots(next.release(), next_capacity);  // its references are the node's now
          lock.close(true);
          committed = true;
        }
      }
    }
    if (committed) {
      after_write();  // note_own_edit() marked what it changed
      return;
    }
    if (!stale && flags.self_wrote) throw_self_invalidated("edit", nullptr, true);
    if (run == kMaxCallbackRuns) throw_self_invalidated("edit", nullptr, false);
    // Another thread wrote the node (or protected a key the edit wrote): run fn again on
    // a fresh copy. The editor and the values it holds die here, outside every lock.
  }
}

std::size_t release_retired_values() {
  // Callbacks hold no lock: allowed inside one too (it is not pinned there).
  return detail::release_retired();
}

// --- NodeEditor ----------------------------------------------------------------------------

void NodeEditor::checked_unprotected(Key key) {
  if (std::find(checked_.begin(), checked_.end(), key.id()) == checked_.end()) {
    checked_.push_back(key.id());
  }
}

Value NodeEditor::at(Key key) const {
  if (std::optional<Value> v = get(key)) return std::move(*v);
  throw KeyError(key.name());
}

Items NodeEditor::items() const { return named_sorted(record_); }

WriteResult NodeEditor::replace(Key key, Value&& value) {
  graveyard_.reserve(graveyard_.size() + 1);  // may throw: nothing changed yet
  Value replaced;
  const bool inserted = record_.put(key.id(), std::move(value), replaced);
  if (!inserted) graveyard_.push_back(std::move(replaced));
  return inserted ? WriteResult::kInserted : WriteResult::kUpdated;
}

void NodeEditor::set(Key key, Value value) {
  if (!key.valid()) throw std::invalid_argument("nodemeta: write with an invalid (zero-initialised) Key");
  if (store_.is_protected(key)) throw ProtectedKeyError(key.name());
  checked_unprotected(key);
  (void)replace(key, std::move(value));
}

WriteResult NodeEditor::try_set(Key key, Value value) {
  if (!key.valid()) throw std::invalid_argument("nodemeta: write with an invalid (zero-initialised) Key");
  if (store_.is_protected(key)) return WriteResult::kRejectedProtected;
  checked_unprotected(key);
  return replace(key, std::move(value));
}

bool NodeEditor::set_once(Key key, Value value) {
  if (!key.valid()) throw std::invalid_argument("nodemeta: write with an invalid (zero-initialised) Key");
  if (record_.find(key.id()) != nullptr) return false;
  record_.append(key.id(), std::move(value));
  return true;
}

bool NodeEditor::erase(Key key) {
  if (!key.valid()) throw std::invalid_argument("nodemeta: write with an invalid (zero-initialised) Key");
  if (store_.is_protected(key)) throw ProtectedKeyError(key.name());
  checked_unprotected(key);
  graveyard_.reserve(graveyard_.size() + 1);
  Value erased;
  if (!record_.erase(key.id(), erased)) return false;
  graveyard_.push_back(std::move(erased));
  return true;
}

// --- The passes' journal (detail/journal_access.h) ---------------------------------------

namespace detail {
namespace {

// While one lives, this thread starts no collection (maybe_collect() skips a thread that is
// collecting): the store's writes retire and seal what they replace as always, and
// JournalAccess::collect() releases what is due later, outside the journal's lock.
class DeferredCollection {
 public:
  DeferredCollection() : thread_(reclaim_thread()), was_(thread_.collecting) { thread_.collecting = true; }
  ~DeferredCollection() { thread_.collecting = was_; }
  DeferredCollection(const DeferredCollection&) = delete;
  DeferredCollection& operator=(const DeferredCollection&) = delete;

 private:
  ReclaimThread& thread_;
  bool was_;
};

}  // namespace

WriteResult JournalAccess::write(NodeMetadata& node, Key key, Value&& value) {
  DeferredCollection defer;  // may throw (this thread's first write): nothing written yet
  return node.try_set(key, std::move(value));
}

bool JournalAccess::erase(NodeMetadata& node, Key key) {
  DeferredCollection defer;
  return node.erase(key);
}

JournalAccess::Restore JournalAccess::restore(NodeMetadata& node, Key key,
                                              const std::optional<Value>& expected,
                                              std::optional<Value>& old) {
  MetadataStore& store = node.live();
  if (store.is_protected(key)) return Restore::kProtected;
  reserve_retired(1);  // may throw: nothing changed yet
  NodeState& state = node.entry().second;
  const std::optional<ValueAccess::Rep> want =
      expected ? std::optional<ValueAccess::Rep>(ValueAccess::peek(*expected)) : std::nullopt;
  {
    WriteLock lock(state, false);
    const std::uint32_t i = find_owned(state, key.id());
    Slot* slots = state.slots.load(std::memory_order_relaxed);
    // The same value: same kind and bits, so a boxed one is the very box (the journal holds
    // a reference to it, so its address cannot have been reused meanwhile).
    const bool same = want ? i != kAbsent && slots[i].kind == want->kind && slots[i].bits == want->bits
                           : i == kAbsent;
    if (!same) return Restore::kChanged;
    if (!old && i == kAbsent) return Restore::kRestored;  // absent before and now
    FreshSlots fresh;
    if (old && i == kAbsent) prepare_append(state, fresh);  // may throw: nothing changed yet
    lock.open();
    if (store.is_protected(key)) {  // as in write(): checked again inside the window
      lock.close(false);
      return Restore::kProtected;
    }
    if (old) {
      (void)store_in_window(state, i, key, std::move(*old), fresh);
      old.reset();  // moved from: holds nothing
    } else {
      slots = state.slots.load(std::memory_order_relaxed);
      const std::uint32_t size = state.size.load(std::memory_order_relaxed);
      const Slot erased = slots[i];
      if (i != size - 1) store_slot(slots[i], slots[size - 1]);
      state.size.store(size - 1, std::memory_order_release);
      retire_value(erased);
    }
    lock.close(true);
  }
  note_own_write(&store, node.id(), key.id());
  seal_retired();  // collected by a later collect() or write
  return Restore::kRestored;
}

void JournalAccess::collect() noexcept { maybe_collect(); }

}  // namespace detail

}  // namespace nodemeta
