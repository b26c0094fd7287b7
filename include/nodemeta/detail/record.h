// nodemeta/detail/record.h: a node's slots, as the store's hash map holds them, and the
// private record a node is built from, copied into or edited in.
// Internal: no stability promise.
//
// A slot is 16 bytes: {key id, value kind, value bits}. Scalars sit in the slot itself; a
// boxed value's slot holds one reference to the box. Lookup is a linear scan over 32-bit
// key ids (nodes hold few keys: 5 to 10 in real torch.fx graphs).
//
// Record is single-owner and unsynchronised: a node's initial metadata, an edit()'s working
// copy, a snapshot. NodeState is the live node: its control word (lock bit, write-window
// bit, version), its slot array and size. Readers load a NodeState's fields and slots with
// seq_cst atomic loads (std::atomic_ref; plain moves on x86-64) and validate the control
// word; only the writer holding the lock stores to them, inside a write window.
#ifndef NODEMETA_DETAIL_RECORD_H_
#define NODEMETA_DETAIL_RECORD_H_

#include <atomic>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <type_traits>
#include <utility>

#include "nodemeta/detail/config.h"
#include "nodemeta/key.h"
#include "nodemeta/value.h"

namespace nodemeta::detail {

struct Slot {
  std::uint32_t key;
  Value::Kind kind;
  std::int64_t bits;

  // A new Value (one more reference to a box). Only for slots this thread owns or has
  // validated while pinned.
  Value value() const noexcept { return ValueAccess::copy(bits, kind); }
  bool boxed() const noexcept { return kind >= Value::Kind::kString; }
};
static_assert(sizeof(Slot) == 16);
static_assert(std::atomic_ref<std::uint32_t>::is_always_lock_free &&
              std::atomic_ref<std::int64_t>::is_always_lock_free &&
              std::atomic_ref<Value::Kind>::is_always_lock_free);

// Concurrent access to the fields of a published slot.
template <class T>
T load_shared(const T& field) noexcept {
  return std::atomic_ref<T>(const_cast<T&>(field)).load(std::memory_order_seq_cst);
}
template <class T>
void store_shared(T& field, T value) noexcept {
  std::atomic_ref<T>(field).store(value, std::memory_order_relaxed);
}
inline Slot load_slot(const Slot& s) noexcept {
  return Slot{load_shared(s.key), load_shared(s.kind), load_shared(s.bits)};
}
inline void store_slot(Slot& s, const Slot& v) noexcept {
  store_shared(s.key, v.key);
  store_shared(s.kind, v.kind);
  store_shared(s.bits, v.bits);
}

// The most keys one node can hold (a clear std::length_error beyond).
inline constexpr std::uint32_t kMaxSlots = std::uint32_t{1} << 30;

// Slot-array capacities come in classes, so that a node keeps its capacity in 7 bits of a
// word it shares with two counts (NodeState::aux): class c < 33 is capacity c (every node
// a torch.fx graph has), then each class is 5/4 of the one before (at least one more), up
// to kMaxSlots. An array's capacity is always a class's.
inline constexpr std::uint32_t kExactCapacities = 33;
inline constexpr std::uint32_t kCapacityClasses = 128;
struct CapacityTable {
  std::uint32_t of[kCapacityClasses] = {};
  std::uint32_t count = 0;
  constexpr CapacityTable() {
    std::uint64_t c = 0;
    for (; c < kExactCapacities; ++c) of[c] = static_cast<std::uint32_t>(c);
    std::uint64_t cap = kExactCapacities - 1;
    while (cap < kMaxSlots) {
      const std::uint64_t next = cap + (cap / 4 > 0 ? (cap + 3) / 4 : 1);
      cap = next < kMaxSlots ? next : kMaxSlots;
      of[c++] = static_cast<std::uint32_t>(cap);
    }
    count = static_cast<std::uint32_t>(c);
  }
};
inline constexpr CapacityTable kCapacityTable{};
static_assert(kCapacityTable.count <= kCapacityClasses &&
              kCapacityTable.of[kCapacityTable.count - 1] == kMaxSlots);
// The capacity of class `c`.
constexpr std::uint32_t class_capacity(std::uint32_t c) noexcept { return kCapacityTable.of[c]; }
// The smallest class whose capacity is at least `n` (n <= kMaxSlots).
NODEMETA_API std::uint32_t capacity_class_for(std::uint32_t n) noexcept;
// Whether an array of class `c` has room for more than `size` slots.
constexpr bool has_room(std::uint32_t size, std::uint32_t c) noexcept {
  // Below kExactCapacities a class is its capacity, and every larger class holds more.
  return size < kExactCapacities ? size < c : size < class_capacity(c);
}

NODEMETA_API Slot* allocate_slots(std::uint32_t capacity);  // throws std::bad_alloc
NODEMETA_API void deallocate_slots(Slot* slots, std::uint32_t capacity) noexcept;
// Growth policy: the capacity (a class's) for `size` slots after one more is added.
NODEMETA_API std::uint32_t grown_capacity(std::uint32_t size);

class NODEMETA_API Record {
 public:
  Record() noexcept = default;
  explicit Record(std::uint32_t capacity) { reserve(capacity); }
  Record(const Record& other) : Record(other, other.size_) {}
  // A copy of `other` with room for `capacity` slots (at least other.size()).
  Record(const Record& other, std::uint32_t capacity);
  // Adopts `size` slots whose references the caller hands over (a validated snapshot).
  Record(const Slot* slots, std::uint32_t size, std::uint32_t capacity);
  Record(Record&& other) noexcept
      : slots_(std::exchange(other.slots_, nullptr)),
        size_(std::exchange(other.size_, 0)),
        capacity_(std::exchange(other.capacity_, 0)) {}
  Record& operator=(Record other) noexcept {
    swap(other);
    return *this;
  }
  ~Record();

  void swap(Record& other) noexcept {
    std::swap(slots_, other.slots_);
    std::swap(size_, other.size_);
    std::swap(capacity_, other.capacity_);
  }

  std::uint32_t size() const noexcept { return size_; }
  std::uint32_t capacity() const noexcept { return capacity_; }
  const Slot* begin() const noexcept { return slots_; }
  const Slot* end() const noexcept { return slots_ + size_; }

  const Slot* find(std::uint32_t key) const noexcept {
    for (std::uint32_t i = 0; i < size_; ++i) {
      if (slots_[i].key == key) return slots_ + i;
    }
    return nullptr;
  }
  std::optional<Value> get(std::uint32_t key) const noexcept {
    if (const Slot* s = find(key)) return s->value();
    return std::nullopt;
  }
  // Inserts or replaces; true iff the key was absent. Strong exception guarantee. The
  // replaced value (if any) goes to `replaced`, for the caller to release where it may.
  bool put(std::uint32_t key, Value&& value, Value& replaced);
  // Appends a key the caller knows is absent. Strong exception guarantee.
  void append(std::uint32_t key, Value&& value);
  // True iff the key was present; its value goes to `erased`. Does not keep slot order.
  bool erase(std::uint32_t key, Value& erased) noexcept;
  void reserve(std::uint32_t capacity);

  // Gives up the slot array and the references its slots hold, for a node to adopt.
  Slot* release() noexcept {
    size_ = capacity_ = 0;
    return std::exchange(slots_, nullptr);
  }

 private:
  Slot* slots_ = nullptr;
  std::uint32_t size_ = 0;
  std::uint32_t capacity_ = 0;
};
static_assert(sizeof(Record) == 16);

// One live node as the store's map holds it (24 bytes).
//
// ctl: bit 0 kWriting (a write window is open: readers retry), bit 1 kLocked (a writer owns
// the node, possibly running an update()/edit() callback: readers go on), bits 2-63 the
// version, advanced by every write window that changed something.
// aux, changed only by atomic read-modify-writes (its fields have different writers):
//   bits 0-6   the slot array's capacity class (class_capacity()); the lock holder's;
//   bit 7      kDestroyed: the node's handle was destroyed while update()/edit() calls ran
//              on it; the last of them to return removes the node (metadata_store.cpp);
//   bits 8-19  those calls (on any thread; at most kMaxCount);
//   bits 20-31 the threads waiting for this node's lock with priority (a read's locked
//              fallback, a starved update()/edit()); this node's other writers defer to them.
struct NODEMETA_API NodeState {
  static constexpr std::uint64_t kWriting = 1;
  static constexpr std::uint64_t kLocked = 2;
  static constexpr std::uint64_t kVersionStep = 4;

  static constexpr std::uint32_t kCapacityMask = 0x7f;
  static constexpr std::uint32_t kDestroyed = 0x80;
  static constexpr std::uint32_t kCallbackUnit = std::uint32_t{1} << 8;
  static constexpr std::uint32_t kCallbackMask = std::uint32_t{0xfff} << 8;
  static constexpr std::uint32_t kPriorityUnit = std::uint32_t{1} << 20;
  static constexpr std::uint32_t kPriorityMask = std::uint32_t{0xfff} << 20;
  static constexpr std::uint32_t kMaxCount = 0xfff;  // of either count

  std::atomic<std::uint64_t> ctl{0};
  // Writers store slots before size when both change; readers load size before slots, so
  // a reader never indexes an array past the size it was published with.
  std::atomic<Slot*> slots{nullptr};
  std::atomic<std::uint32_t> size{0};
  std::atomic<std::uint32_t> aux{0};

  // The array's capacity. Exact for the lock holder (and the node's owner); others may
  // read it only as a hint.
  std::uint32_t capacity() const noexcept {
    return class_capacity(aux.load(std::memory_order_relaxed) & kCapacityMask);
  }
  // Whether the array has room for one more slot (the same terms).
  bool has_room() const noexcept {
    return detail::has_room(size.load(std::memory_order_relaxed),
                            aux.load(std::memory_order_relaxed) & kCapacityMask);
  }
  // Records the array's capacity (a class's): the lock holder, or the node's owner.
  void set_capacity(std::uint32_t capacity) noexcept {
    const std::uint32_t c = capacity_class_for(capacity);
    NODEMETA_ASSERT(class_capacity(c) == capacity, "slot arrays have a class's capacity");
    const std::uint32_t old = aux.load(std::memory_order_relaxed) & kCapacityMask;
    // The field is below the counts and changes only here: no carry or borrow reaches them.
    if (c != old) aux.fetch_add(c - old, std::memory_order_relaxed);
  }

  NodeState() noexcept = default;
  NodeState(const NodeState&) = delete;
  NodeState& operator=(const NodeState&) = delete;
  ~NodeState();  // releases the slots' references and the array (no reader may remain)
};
static_assert(sizeof(NodeState) == 24);

// The map's nodes carry their first slot array inline: MapAllocator gives every node of
// the store's hash map a block of the map node followed by room for `inline capacity`
// slots, so a node just built is one allocation in creation order, and its first access
// after the handle (the control word, then the slots) touches one block instead of two.
//
// The slots start where the map node ends: sizeof(node) is the offset of its value (the
// NodeEntry, whose NodeState is its last member) plus sizeof(NodeEntry); insert() checks
// this on every node it builds (a oneTBB whose node layout differs stops the program with
// a message, in every build). A node's inline region holds at least one slot, so a slot
// array lies at that address only if it is the inline one: slots == inline_slots(state)
// tells which arrays are the node's own (never freed, never retired) and which came from
// the heap. A node that outgrows its inline array, or whose edit() adopts a new one, moves
// to the heap and leaves the inline region unused until the node is destroyed (at most
// kMaxInlineSlots slots, and at most one slot more than the heap array it moved to:
// growth is 1.5x; an adopted edit copy has no spare).
inline constexpr std::uint32_t kMaxInlineSlots = 64;
inline Slot* inline_slots(const NodeState& state) noexcept {
  return reinterpret_cast<Slot*>(
      const_cast<char*>(reinterpret_cast<const char*>(&state) + sizeof(NodeState)));
}
inline bool is_inline(const NodeState& state, const Slot* slots) noexcept {
  return slots == inline_slots(state);
}
// Starts fetching a node's control word and its inline array (the array a node just
// built uses) at once, before either is needed.
inline void prefetch_node(const NodeState& state) noexcept {
  __builtin_prefetch(&state, 1);
  __builtin_prefetch(inline_slots(state), 1);
}
// The node block allocator's two halves, in the library (the request is thread-local):
// a block of `node_bytes` plus the slots requested by the calling thread's pending
// insert (at least one); records where those slots begin for the insert to check.
NODEMETA_API void* allocate_node_block(std::size_t node_bytes);  // throws std::bad_alloc
NODEMETA_API void deallocate_node_block(void* block) noexcept;
// The calling thread's next node block gets room for `slots` (1..kMaxInlineSlots) slots.
NODEMETA_API void request_inline_slots(std::uint32_t slots) noexcept;
// Where the calling thread's last node block's slots begin (nullptr if it allocated none
// since its last request).
NODEMETA_API Slot* allocated_inline_slots() noexcept;

template <class T>
concept MapNodeOf = requires(T& node) {
  { node.value() } -> std::same_as<std::pair<const std::uint64_t, NodeState>&>;
};

// The store's hash map allocator: node blocks (above) for the map's nodes, Allocator<T>
// for everything else (its bucket arrays).
template <class T>
class MapAllocator {
 public:
  using value_type = T;
  using propagate_on_container_move_assignment = std::true_type;
  using is_always_equal = std::true_type;

  MapAllocator() noexcept = default;
  template <class U>
  MapAllocator(const MapAllocator<U>& /*unused*/) noexcept {}

  [[nodiscard]] T* allocate(std::size_t n) {
    if constexpr (MapNodeOf<T>) {
      static_assert(alignof(T) <= alignof(std::max_align_t) && sizeof(T) % alignof(Slot) == 0);
      NODEMETA_ASSERT(n == 1, "the map allocates its nodes one at a time");
      return static_cast<T*>(allocate_node_block(sizeof(T)));
    } else {
      Allocator<T> alloc;
      return std::allocator_traits<Allocator<T>>::allocate(alloc, n);
    }
  }
  void deallocate(T* p, std::size_t n) noexcept {
    if constexpr (MapNodeOf<T>) {
      (void)n;
      deallocate_node_block(p);
    } else {
      Allocator<T> alloc;
      std::allocator_traits<Allocator<T>>::deallocate(alloc, p, n);
    }
  }

  template <class U>
  bool operator==(const MapAllocator<U>& /*unused*/) const noexcept {
    return true;
  }
};

// Test hook: how many times, in this process, a write began to defer to a node's priority
// waiters (WriteLock). Only counted on that slow path.
NODEMETA_API std::uint64_t write_deferrals() noexcept;

}  // namespace nodemeta::detail

#endif  // NODEMETA_DETAIL_RECORD_H_
