// nodemeta/detail/reclaim.h: epoch-based deferred reclamation for the store's read path.
// Internal: no stability promise. docs/design.md ("Reads that write nothing") has the
// argument; tests/stress/reclaim_stress_test.cpp aims at its race.
//
// Readers of a node take no lock: they pin the calling thread (ReadGuard) and read the
// node's slots optimistically. A writer that replaces or removes something a reader may
// still be looking at (a slot array outgrown by its node, the reference a slot held to a
// boxed value) does not free it: it retires it, and the retired object is released once
// every thread that was pinned when it was retired has unpinned.
//
// The scheme is the classic three-epoch EBR (Fraser 2004; crossbeam-epoch's formulation),
// written with sequentially consistent loads instead of fences on the read side so that a
// pin costs one `xchg` on the thread's own cache line and an unpin one plain store:
//   pin:    e = epoch (seq_cst load); my.state.exchange(pinned(e), seq_cst)
//   read:   every load of a slot array pointer or slot field is seq_cst (a plain mov on x86)
//   unpin:  my.state.store(0, release)
//   retire: seq_cst fence; r = epoch (seq_cst load); queue (object, r) on this thread
//   advance e -> e+1: only if every pinned thread is pinned at e (seq_cst loads)
//   release: an object retired at r once epoch >= r + 2 (acquire load)
// Everything is a std::atomic, so ThreadSanitizer sees every happens-before edge
// (unpin release -> advancer's scan -> epoch CAS -> releaser's load); nothing is annotated.
#ifndef NODEMETA_DETAIL_RECLAIM_H_
#define NODEMETA_DETAIL_RECLAIM_H_

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace nodemeta::detail {

// What a retired object becomes once it is safe: fn(object, arg). Must not throw.
using RetireFn = void (*)(void* object, std::size_t arg) noexcept;

struct ReclaimThread;  // per-thread state (src/reclaim.cpp)

// The calling thread's state, created on first use (heap, freed at thread exit).
ReclaimThread& reclaim_thread();
// Pins/unpins the calling thread (nested pins are counted; only the outermost pair
// touches shared memory).
void pin(ReclaimThread& t) noexcept;
void unpin(ReclaimThread& t) noexcept;

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
// retire() of up to n objects afterwards cannot fail. Objects retired by one call of
// seal_retired() share one epoch; retire() after the object is unreachable from every node.
void reserve_retired(std::size_t n);
void retire(void* object, RetireFn fn, std::size_t arg) noexcept;
// Stamps every object retired since the last call with the current epoch. One fence; call
// once per write, after the write's last unlink.
void seal_retired() noexcept;
// Releases what is safe of this thread's retired objects when it has accumulated enough.
// Runs destructors of user values: call only with no node lock held.
void maybe_collect() noexcept;

// Waits until every read in flight has finished, then releases every object retired so far
// by this thread and by threads that have exited. Returns how many were released. Must not
// be called while this thread is pinned.
std::size_t release_retired();

// Diagnostics: objects retired and not yet released, on this thread.
std::size_t retired_pending() noexcept;

}  // namespace nodemeta::detail

#endif  // NODEMETA_DETAIL_RECLAIM_H_
