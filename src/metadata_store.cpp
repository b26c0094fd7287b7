#include "nodemeta/metadata_store.h"

#include <algorithm>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>

#include <oneapi/tbb/task_arena.h>

#include "nodemeta/detail/journal_access.h"
#include "reclaim.h"

namespace nodemeta {
namespace {

using detail::NodeState;
using detail::Slot;

// The nodes whose callbacks (update/edit) are running on this thread, innermost first.
// Any write from inside a callback is refused (check_writable); destroying the node whose
// callback runs is fatal (remove). Empty on the fast path: one TLS load.
struct CallbackScope {
  CallbackScope(const MetadataStore* s, NodeId n) noexcept : store(s), node(n), outer(innermost) {
    innermost = this;
  }
  ~CallbackScope() { innermost = outer; }
  CallbackScope(const CallbackScope&) = delete;
  CallbackScope& operator=(const CallbackScope&) = delete;

  const MetadataStore* store;
  NodeId node;  // the node whose lock the callback runs under
  CallbackScope* outer;
  static thread_local CallbackScope* innermost;
};
// initial-exec: one %fs-relative load instead of a __tls_get_addr call in -fPIC code (every
// write reads it). 8 bytes of static TLS, which glibc reserves even for dlopen().
__attribute__((tls_model("initial-exec"))) thread_local CallbackScope* CallbackScope::innermost =
    nullptr;

// Runs a user callback under this node's scope, isolated from unrelated oneTBB work: while
// the callback waits inside oneTBB (a task_group::wait, a nested parallel_for) this thread
// may only run tasks the callback itself spawned, never an outer task of the caller's loop
// (whose writes would be refused here, though nothing nested).
template <class F>
decltype(auto) run_callback(const MetadataStore* store, NodeId node, F&& f) {
  CallbackScope scope(store, node);
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

// A node's write lock, and the write window inside it. Only the holder stores to ctl while
// the lock is held, so it tracks the word itself and publishes with plain stores.
class WriteLock {
 public:
  // `open`: take the lock with the write window already open, in the same CAS (a seq_cst
  // read-modify-write, which also serves as the window's fence). For writes that need no
  // allocation before their stores, which is nearly all of them.
  WriteLock(NodeState& node, bool open) noexcept : node_(node) {
    Backoff backoff;
    const std::uint64_t bits = NodeState::kLocked | (open ? NodeState::kWriting : 0);
    std::uint64_t w = node.ctl.load(std::memory_order_relaxed);
    for (;;) {
      if ((w & NodeState::kLocked) == 0 &&
          node.ctl.compare_exchange_weak(w, w | bits, std::memory_order_seq_cst,
                                         std::memory_order_relaxed)) {
        word_ = w | NodeState::kLocked;
        open_ = open;
        if (open) std::atomic_thread_fence(std::memory_order_release);  // (seqlock writer)
        return;
      }
      backoff.pause();
      w = node.ctl.load(std::memory_order_relaxed);
    }
  }
  ~WriteLock() { node_.ctl.store(word_ & ~NodeState::kLocked, std::memory_order_release); }
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

 private:
  NodeState& node_;
  std::uint64_t word_;
  bool open_ = false;
};

// Whether a write should open its window with the lock: not when the node's array looks
// full (a hint read without the lock: an append may then need to allocate, which it does
// before opening, so readers never wait on the allocator).
bool open_with_lock(const NodeState& node) noexcept {
  return node.size.load(std::memory_order_relaxed) < node.capacity.load(std::memory_order_relaxed);
}

// Runs `read(slots, size)` on a consistent view of the node and returns its result.
// `read` may only load (load_shared) and copy plain data out; it runs again if a write
// window overlapped it. The caller is pinned (ReadGuard) if `read` dereferences slots.
template <class F>
auto optimistic_read(const NodeState& node, F&& read) {
  Backoff backoff;
  for (;;) {
    const std::uint64_t w1 = node.ctl.load(std::memory_order_seq_cst);
    if ((w1 & NodeState::kWriting) == 0) {
      const std::uint32_t size = node.size.load(std::memory_order_seq_cst);
      const Slot* slots = node.slots.load(std::memory_order_seq_cst);
      auto result = read(slots, size);
      std::atomic_thread_fence(std::memory_order_acquire);
      const std::uint64_t w2 = node.ctl.load(std::memory_order_relaxed);
      if (((w1 ^ w2) & ~NodeState::kLocked) == 0) return result;
    }
    backoff.pause();
  }
}

constexpr std::uint32_t kAbsent = ~std::uint32_t{0};

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
  const std::uint32_t size = node.size.load(std::memory_order_relaxed);
  if (size < node.capacity.load(std::memory_order_relaxed)) return;
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
    if (old != nullptr) detail::retire(old, &free_slots, node.capacity.load(std::memory_order_relaxed));
    node.capacity.store(fresh.capacity, std::memory_order_relaxed);
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
detail::Record snapshot(const NodeState& node, std::uint32_t spare) {
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
  });
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
  NODEMETA_ASSERT(map_.empty(),
                  "MetadataStore destroyed while NodeMetadata handles still refer to it: "
                  "the store must outlive its nodes");
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
  // One spare slot: the first key a pass adds to a built node (the commonest write) then
  // needs no reallocation. 16 bytes a node; docs/design.md has the measurements.
  detail::Record record(static_cast<std::uint32_t>(items.size()) + 1);
  for (const auto& [key, value] : items) {
    if (!key.valid()) {
      throw std::invalid_argument("nodemeta: an invalid (zero-initialised) Key in a node's "
                                  "initial metadata");
    }
    if (record.find(key.id()) != nullptr) {
      throw std::invalid_argument("nodemeta: duplicate key '" + std::string(key.name()) +
                                  "' in a node's initial metadata");
    }
    record.append(key.id(), Value(value));
  }
  return NodeMetadata(this, insert(std::move(record)));
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
  check_not_in_callback();
  if (!key.valid()) {
    throw std::invalid_argument("nodemeta: write with an invalid (zero-initialised) Key");
  }
}

void MetadataStore::check_not_in_callback() {
  if (CallbackScope::innermost != nullptr) {
    throw ReentrancyError(
        "nodemeta: write to a node from inside an update()/edit() callback (a thread holding "
        "one node's lock must not wait for another's: it could deadlock); use the NodeEditor, "
        "or write after the callback returns. Reads are allowed");
  }
}

// --- node operations --------------------------------------------------------------------

NodeEntry* MetadataStore::insert(detail::Record record) {
  const NodeId id = next_id_.fetch_add(1, std::memory_order_relaxed);
  Map::accessor acc;
  const bool inserted = map_.insert(acc, id);
  NODEMETA_ASSERT(inserted, "node ids are never reused");
  (void)inserted;
  NodeState& node = acc->second;
  const std::uint32_t size = record.size();
  node.capacity.store(record.capacity(), std::memory_order_relaxed);
  node.slots.store(record.release(), std::memory_order_relaxed);
  node.size.store(size, std::memory_order_relaxed);
  // The element stays at this address until remove(): the map relinks, never moves, its
  // nodes when it grows. The accessor's release publishes the node to whoever gets the
  // handle through the map; other threads get it through the caller's own synchronisation.
  return &*acc;
}

NodeEntry* MetadataStore::clone(const NodeEntry& node) const {
  return const_cast<MetadataStore*>(this)->insert(snapshot(node.second, 1));  // + a spare slot
}

void MetadataStore::remove(NodeEntry& node) noexcept {
  // Destroying (or assigning to) the handle of the node whose callback is running would free
  // the node under its own held lock. A destructor cannot throw: stop with a clear message
  // (in every build) rather than corrupt memory.
  for (const CallbackScope* s = CallbackScope::innermost; s != nullptr; s = s->outer) {
    if (s->store == this && s->node == node.first) {
      detail::assertion_failed("node is not the one whose update()/edit() callback is running",
                               "a NodeMetadata was destroyed or assigned to inside its own "
                               "update()/edit() callback",
                               __FILE__, __LINE__);
    }
  }
  // Take the slots out first: the values are released after the node has left the map, so
  // their destructors run under no lock of ours or of the map's, and may use this store.
  NodeState& state = node.second;
  const std::uint32_t size = state.size.load(std::memory_order_relaxed);
  Slot* slots = state.slots.exchange(nullptr, std::memory_order_relaxed);
  const std::uint32_t capacity = state.capacity.exchange(0, std::memory_order_relaxed);
  state.size.store(0, std::memory_order_relaxed);
  const bool erased = map_.erase(node.first);
  NODEMETA_ASSERT(erased, "a live NodeMetadata's node is in its store");
  (void)erased;
  for (std::uint32_t i = 0; i < size; ++i) detail::ValueAccess::drop(slots[i].bits, slots[i].kind);
  detail::deallocate_slots(slots, capacity);
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
  check_writable(key);
  // Protection only ever goes from false to true, so a rejection needs no lock.
  if (is_protected(key)) return WriteResult::kRejectedProtected;
  detail::reserve_retired(1);  // may throw: nothing changed yet
  NodeState& state = node.second;
  WriteResult result;
  {
    WriteLock lock(state, open_with_lock(state));
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
  after_write();
  return result;
}

bool MetadataStore::set_once(NodeEntry& node, Key key, Value&& value) {
  check_writable(key);
  detail::reserve_retired(1);
  NodeState& state = node.second;
  {
    WriteLock lock(state, open_with_lock(state));
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
  after_write();
  return true;
}

bool MetadataStore::erase(NodeEntry& node, Key key) {
  check_writable(key);
  if (is_protected(key)) throw ProtectedKeyError(key.name());
  detail::reserve_retired(1);
  NodeState& state = node.second;
  {
    WriteLock lock(state, true);
    const std::uint32_t i = find_owned(state, key.id());
    if (i == kAbsent) {  // nothing changes: linearized at the lookup
      lock.close(false);
      return false;
    }
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
  after_write();
  return true;
}

Value MetadataStore::update(NodeEntry& node, Key key,
                            detail::FunctionRef<Value(std::optional<Value>)> fn) {
  check_writable(key);
  if (is_protected(key)) throw ProtectedKeyError(key.name());
  detail::reserve_retired(1);
  NodeState& state = node.second;
  // Declared before the lock: whatever of these dies on the way out dies after unlocking.
  Value next;
  Value stored;
  {
    WriteLock lock(state, false);  // the window opens after the callback
    const std::uint32_t i = find_owned(state, key.id());
    std::optional<Value> old;
    if (i != kAbsent) old = state.slots.load(std::memory_order_relaxed)[i].value();
    next = run_callback(this, node.first, [&] { return fn(std::move(old)); });  // may throw
    stored = next;
    FreshSlots fresh;
    if (i == kAbsent) prepare_append(state, fresh);
    lock.open();
    if (is_protected(key)) {  // protected while fn ran: linearized now, rejected
      lock.close(false);
      throw ProtectedKeyError(key.name());
    }
    (void)store_in_window(state, i, key, std::move(stored), fresh);
    lock.close(true);
  }
  after_write();
  return next;
}

void MetadataStore::edit(NodeEntry& node, detail::FunctionRef<void(NodeEditor&)> fn) {
  check_not_in_callback();
  NodeState& state = node.second;
  // Declared before the lock, so that every working copy (and every value it holds) dies
  // after unlocking, whether the edit commits, retries or throws.
  NodeEditor editor(*this, detail::Record());
  std::vector<detail::Record> discarded;
  {
    WriteLock lock(state, false);  // the window opens after the callback
    const std::uint32_t size = state.size.load(std::memory_order_relaxed);
    for (;;) {
      // No other writer can change the node while we hold its lock: every attempt starts
      // from the same state.
      if (editor.record_.capacity() != 0) discarded.push_back(std::move(editor.record_));
      editor.record_ = detail::Record(state.slots.load(std::memory_order_relaxed), size, size);
      for (const Slot& s : editor.record_) detail::ValueAccess::add_ref(s.bits, s.kind);
      editor.checked_.clear();
      run_callback(this, node.first, [&] { fn(editor); });  // may throw: the node is untouched

      // Commit: everything that may throw first.
      detail::Record& next = editor.record_;
      detail::reserve_retired(size + 1);
      discarded.reserve(discarded.size() + 1);
      FreshSlots fresh;
      if (next.size() > state.capacity.load(std::memory_order_relaxed)) {
        fresh.capacity = next.size();
        fresh.slots = detail::allocate_slots(fresh.capacity);
      }
      lock.open();
      // Linearized at this window. Every NodeEditor write found its key unprotected when it
      // was called; if one of those keys was protected since, the callback saw an instant
      // that is not this one: run it again (protection only grows, so this ends).
      const bool stale = std::any_of(editor.checked_.begin(), editor.checked_.end(),
                                     [this](std::uint32_t id) { return protection_.contains(id); });
      if (stale) {
        lock.close(false);
        continue;
      }
      Slot* slots = state.slots.load(std::memory_order_relaxed);
      for (std::uint32_t j = 0; j < size; ++j) retire_value(slots[j]);
      const std::uint32_t n = next.size();
      if (fresh.slots != nullptr) {
        std::copy_n(next.begin(), n, fresh.slots);
        state.slots.store(fresh.take(), std::memory_order_release);
        state.size.store(n, std::memory_order_release);
        if (slots != nullptr) {
          detail::retire(slots, &free_slots, state.capacity.load(std::memory_order_relaxed));
        }
        state.capacity.store(fresh.capacity, std::memory_order_relaxed);
      } else {
        for (std::uint32_t j = 0; j < n; ++j) detail::store_slot(slots[j], next.begin()[j]);
        state.size.store(n, std::memory_order_release);
      }
      const std::uint32_t next_capacity = next.capacity();
      detail::deallocate_slots(next.release(), next_capacity);  // its references are the node's now
      lock.close(true);
      break;
    }
  }
  after_write();
}

std::size_t release_retired_values() {
  if (CallbackScope::innermost != nullptr) {
    throw ReentrancyError("nodemeta: release_retired_values() inside an update()/edit() "
                          "callback (released values' destructors may write)");
  }
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
  seal_retired();  // collected by a later collect() or write
  return Restore::kRestored;
}

void JournalAccess::collect() noexcept { maybe_collect(); }

}  // namespace detail

}  // namespace nodemeta
