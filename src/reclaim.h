// src/reclaim.h: epoch-based deferred reclamation for the store's read path. Private to the
// core library (never installed, never inlined into user code). docs/design.md ("Reads that write nothing") has the
// argument; tests/stress/reclaim_stress_test.cpp aims at its race.
//
// Readers of a node take no lock: they pin the calling thread (ReadGuard) and read the
// node's slots optimistically. A writer that replaces or removes something a reader may
// still be looking at (a slot array outgrown by its node, the reference a slot held to a
// boxed value) does not free it: it retires it, and the retired object is released once
// every thread that was pinned when it was retired has unpinned.
//
// The scheme is the classic three-epoch EBR (Fraser 2004; crossbeam-epoch's formulation),
// with the pin's fence made asymmetric (as liburcu's memb flavour and folly's hazard
// pointers do): the rare epoch advance issues membarrier(PRIVATE_EXPEDITED), which puts a
// full barrier in every running thread of the process, so a pin is two plain stores on the
// thread's own cache line and no fence:
//   pin:    e = epoch (seq_cst load); my.state.store(pinned(e), release)
//           (without membarrier: my.state.exchange(pinned(e), seq_cst), one xchg)
//   read:   every load of a slot array pointer or slot field is seq_cst (a plain mov on x86)
//   unpin:  my.state.store(0, release)
//   retire: seq_cst fence; r = epoch (seq_cst load); queue (object, r) on this thread
//   advance e -> e+1: load e; membarrier (or a seq_cst fence); only if every pinned thread
//           is pinned at e (acquire loads), CAS the epoch
//   release: an object retired at r once epoch >= r + 2 (acquire load)
// Every access is a std::atomic one, so ThreadSanitizer sees each happens-before edge
// (pin and unpin are release stores read by the advancer's acquire scan, whose epoch CAS
// the releasing thread's load reads); nothing is annotated. docs/design.md has the argument.
#ifndef NODEMETA_SRC_RECLAIM_H_
#define NODEMETA_SRC_RECLAIM_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace nodemeta::detail {

// What a retired object becomes once it is safe: fn(object, arg). Must not throw.
using RetireFn = void (*)(void* object, std::size_t arg) noexcept;

struct RetiredObject {
  void* object;
  RetireFn fn;
  std::size_t arg;
  std::uint64_t epoch;
};

struct ThreadRecord;  // a registered thread's shared state (reclaim.cpp)

// The calling thread's private state (a cache line of its own: `pins` changes on every read).
struct alignas(64) ReclaimThread {
  std::atomic<std::uint64_t>* state;  // its ThreadRecord's word: 0, or (epoch << 1) | 1
  ThreadRecord* record;
  unsigned pins = 0;
  bool collecting = false;
  std::size_t since_collect = 0;   // objects sealed since this thread last collected
  std::vector<RetiredObject> bag;  // retired by the write in progress, not yet sealed
};

// The global epoch; starts at 2 so that "retired at r, safe at r + 2" never underflows.
// Every pin loads it and only an advance writes it: it gets a cache line to itself.
struct alignas(64) Epoch {
  std::atomic<std::uint64_t> value{2};
  char pad[64 - sizeof(std::atomic<std::uint64_t>)];
};
extern Epoch g_epoch_line;
inline std::atomic<std::uint64_t>& g_epoch = g_epoch_line.value;
// Whether the epoch advance issues membarrier() (decided before any thread pins).
extern bool g_asymmetric_pin;
// At most 8 bytes of initial-exec TLS (cheap in dlopen()ed modules too): the heap state.
extern thread_local ReclaimThread* tls_thread __attribute__((tls_model("initial-exec")));

ReclaimThread* create_thread();
inline ReclaimThread& reclaim_thread() {
  ReclaimThread* t = tls_thread;
  return t != nullptr ? *t : *create_thread();
}

// Pins/unpins the calling thread (nested pins are counted; only the outermost pair
// touches the state word).
inline void pin(ReclaimThread& t) noexcept {
  if (t.pins++ != 0) return;
  const std::uint64_t pinned = (g_epoch.load(std::memory_order_seq_cst) << 1) | 1;
  if (g_asymmetric_pin) {
    t.state->store(pinned, std::memory_order_release);
    std::atomic_signal_fence(std::memory_order_seq_cst);  // the compiler's half of the fence
  } else {
    t.state->exchange(pinned, std::memory_order_seq_cst);
  }
}
inline void unpin(ReclaimThread& t) noexcept {
  if (--t.pins != 0) return;
  t.state->store(0, std::memory_order_release);
}

// RAII pin: while a ReadGuard lives on this thread, nothing retired after it was created
// is released.
class ReadGuard {
 public:
  ReadGuard() : thread_(reclaim_thread()) { pin(thread_); }
  ~ReadGuard() { unpin(thread_); }
  ReadGuard(const ReadGuard&) = delete;
  ReadGuard& operator=(const ReadGuard&) = delete;

 private:
  ReclaimThread& thread_;
};

// Retirement, in two steps so that a write keeps the strong exception guarantee:
// reserve_retired(n) may throw std::bad_alloc before the write changes anything;
// retire() of up to n objects afterwards cannot fail. retire() only after the object is
// unreachable from every node.
void reserve_retired_slow(std::size_t n);
inline void reserve_retired(std::size_t n) {
  const ReclaimThread* t = tls_thread;
  if (t != nullptr && t->bag.capacity() - t->bag.size() >= n) return;
  reserve_retired_slow(n);
}
inline void retire(void* object, RetireFn fn, std::size_t arg) noexcept {
  // reserve_retired() created the state and made room.
  tls_thread->bag.push_back(RetiredObject{object, fn, arg, ~std::uint64_t{0}});
}
// Stamps every object retired since the last call with the current epoch. One fence; call
// once per write, after the write's last unlink.
void seal_retired_slow(ReclaimThread& t) noexcept;
inline void seal_retired() noexcept {
  ReclaimThread* t = tls_thread;
  if (t != nullptr && !t->bag.empty()) seal_retired_slow(*t);
}
// Releases what is safe of the retired objects when this thread has sealed enough since it
// last did. Runs destructors of user values: call only with no node lock held.
//
// Backpressure: when, after collecting, more than kRetiredBound objects retired by
// completed writes (all threads together) are still waiting, because some thread has stayed
// pinned since they were retired (a reader preempted mid-read, a SCHED_IDLE thread, a
// debugger), the collecting writer keeps advancing and collecting, sleeping in between,
// until the total is back under the bound. So the retired objects never exceed
// kRetiredBound + (threads) x (kCollectThreshold + one write's retirements): each thread
// checks when it collects. docs/design.md ("Reclamation") has why the wait always ends.
inline constexpr std::size_t kCollectThreshold = 128;
inline constexpr std::size_t kRetiredBound = std::size_t{1} << 14;
void collect(ReclaimThread& t) noexcept;
inline void maybe_collect() noexcept {
  ReclaimThread* t = tls_thread;
  if (t != nullptr && t->since_collect >= kCollectThreshold && !t->collecting && t->pins == 0) {
    collect(*t);
  }
}

// Waits until every read in flight has finished, then releases every object that any
// thread's completed writes retired before the call (live threads, oneTBB workers and
// threads that have exited alike), and waits for every other thread's collection that may
// hold some of them to finish destroying them: when it returns, all are destroyed. Returns
// how many it released itself. Must not be called while this thread is pinned; inside a
// destructor that a collection runs it returns 0 at once (may_release_retired() is false).
std::size_t release_retired();
// Whether release_retired() may release on this thread now (not pinned, not collecting).
bool may_release_retired() noexcept;

}  // namespace nodemeta::detail

#endif  // NODEMETA_SRC_RECLAIM_H_
