#include "nodemeta/detail/record.h"

#include <pthread.h>

#include <atomic>
#include <cstddef>
#include <cstring>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <type_traits>

#include <oneapi/tbb/scalable_allocator.h>

namespace nodemeta::detail {

#if !(defined(NODEMETA_STD_ALLOCATOR) && NODEMETA_STD_ALLOCATOR) && \
    defined(NODEMETA_FAULT_INJECTION) && NODEMETA_FAULT_INJECTION
namespace {
std::atomic<AllocationHook> g_allocation_hook{nullptr};
}  // namespace

void set_allocation_hook(AllocationHook hook) noexcept {
  g_allocation_hook.store(hook, std::memory_order_release);
}

void allocation_fault_point(std::size_t bytes) {
  if (AllocationHook hook = g_allocation_hook.load(std::memory_order_acquire)) hook(bytes);
}
#endif

Slot* allocate_slots(std::uint32_t capacity) {
  Allocator<Slot> alloc;
  return std::allocator_traits<Allocator<Slot>>::allocate(alloc, capacity);
}

void deallocate_slots(Slot* slots, std::uint32_t capacity) noexcept {
  if (slots == nullptr) return;
  Allocator<Slot> alloc;
  std::allocator_traits<Allocator<Slot>>::deallocate(alloc, slots, capacity);
}

namespace {
// Initial-exec, as the library's other thread-locals: no __tls_get_addr (the core loads
// nothing but oneTBB and the C and C++ runtimes).
__attribute__((tls_model("initial-exec"))) thread_local std::uint32_t t_inline_request = 0;
__attribute__((tls_model("initial-exec"))) thread_local Slot* t_inline_at = nullptr;
}  // namespace

void request_inline_slots(std::uint32_t slots) noexcept {
  t_inline_request = slots;
  t_inline_at = nullptr;
}

Slot* allocated_inline_slots() noexcept { return t_inline_at; }

#if !(defined(NODEMETA_STD_ALLOCATOR) && NODEMETA_STD_ALLOCATOR)
namespace {
// The node blocks this thread freed last, reused first (LIFO, like glibc's tcache): a node
// destroyed and another created (a graph rebuilt node by node, a pass replacing nodes) then
// gets the block just freed, so nodes keep the order they were built in. Without it,
// tbbmalloc hands out a size class's free objects slab by slab, and after such churn
// consecutive nodes lie ~1.7 KB apart instead of 160 bytes (docs/design.md). Per thread, no
// synchronisation; at most kCachedBlocks blocks (~10 KB) each; freed at thread exit.
class BlockCache {
 public:
  static constexpr int kCachedBlocks = 8;

  // A cached block of at least `bytes` and under 1.25x that plus 16 bytes (one tbbmalloc
  // size class step: a node never gets a block much larger than tbbmalloc would give it),
  // the most recently freed first.
  void* take(std::size_t bytes) noexcept {
    for (int i = count_ - 1; i >= 0; --i) {
      const std::size_t usable = blocks_[i].usable;
      if (usable >= bytes && usable < bytes + bytes / 4 + 16) {
        void* block = blocks_[i].block;
        for (int j = i; j + 1 < count_; ++j) blocks_[j] = blocks_[j + 1];
        --count_;
        return block;
      }
    }
    return nullptr;
  }
  void give(void* block) noexcept {
    if (!registered_) register_exit();
    if (exited_) {
      scalable_free(block);
      return;
    }
    if (count_ == kCachedBlocks) {  // the oldest goes back to tbbmalloc
      scalable_free(blocks_[0].block);
      for (int j = 0; j + 1 < count_; ++j) blocks_[j] = blocks_[j + 1];
      --count_;
    }
    blocks_[count_++] = Entry{block, scalable_msize(block)};
  }

 private:
  // Thread exit frees the cached blocks through a pthread key's destructor: a C++
  // thread_local with a destructor would need a dynamic TLS guard (__tls_get_addr, which
  // the core does not load). Blocks given after that (another thread-exit destructor
  // destroying a node) are freed directly. The main thread's cache is not freed at exit.
  static void at_thread_exit(void* cache) noexcept {
    auto* self = static_cast<BlockCache*>(cache);
    for (int i = 0; i < self->count_; ++i) scalable_free(self->blocks_[i].block);
    self->count_ = 0;
    self->exited_ = true;
  }
  void register_exit() noexcept {
    static pthread_key_t key;
    static const bool have_key = pthread_key_create(&key, &at_thread_exit) == 0;
    registered_ = true;
    if (!have_key || pthread_setspecific(key, this) != 0) exited_ = true;  // no cache then
  }

  struct Entry {
    void* block;
    std::size_t usable;
  };
  Entry blocks_[kCachedBlocks] = {};
  int count_ = 0;
  bool registered_ = false;
  bool exited_ = false;
};
static_assert(std::is_trivially_destructible_v<BlockCache>);
constinit __attribute__((tls_model("initial-exec"))) thread_local BlockCache t_block_cache;
}  // namespace
#endif

void* allocate_node_block(std::size_t node_bytes) {
  const std::uint32_t slots = t_inline_request != 0 ? t_inline_request : 1;
  const std::size_t bytes = node_bytes + sizeof(Slot) * slots;
#if defined(NODEMETA_STD_ALLOCATOR) && NODEMETA_STD_ALLOCATOR
  // Unsized new and delete: the block's size is not known where the map frees it. No
  // cache: the sanitizers see every block's allocation and release.
  void* block = ::operator new(bytes);
#else
#if defined(NODEMETA_FAULT_INJECTION) && NODEMETA_FAULT_INJECTION
  allocation_fault_point(bytes);
#endif
  void* block = t_block_cache.take(bytes);
  if (block == nullptr) {
    block = scalable_malloc(bytes);
    if (block == nullptr) throw std::bad_alloc();
  }
#endif
  t_inline_request = 0;
  t_inline_at = reinterpret_cast<Slot*>(static_cast<char*>(block) + node_bytes);
  return block;
}

void deallocate_node_block(void* block) noexcept {
  if (block == nullptr) return;
#if defined(NODEMETA_STD_ALLOCATOR) && NODEMETA_STD_ALLOCATOR
  ::operator delete(block);
#else
  t_block_cache.give(block);
#endif
}

std::uint32_t capacity_class_for(std::uint32_t n) noexcept {
  if (n < kExactCapacities) return n;
  std::uint32_t lo = kExactCapacities;
  std::uint32_t hi = kCapacityTable.count - 1;  // class_capacity(hi) == kMaxSlots >= n
  while (lo < hi) {
    const std::uint32_t mid = lo + (hi - lo) / 2;
    if (class_capacity(mid) < n) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

std::uint32_t grown_capacity(std::uint32_t size) {
  if (size >= kMaxSlots) {
    throw std::length_error("nodemeta: a node cannot hold more than " + std::to_string(kMaxSlots) +
                            " keys");
  }
  const std::uint64_t grown = size < 4 ? 4 : std::uint64_t{size} + size / 2;
  std::uint32_t c = capacity_class_for(static_cast<std::uint32_t>(grown < kMaxSlots ? grown : kMaxSlots));
  // The largest class within 1.5x that still holds one more slot (classes above 32 are 5/4
  // apart, so one always does): growth keeps its 1.5x bound on the waste.
  if (class_capacity(c) > grown && c > 0 && class_capacity(c - 1) > size) --c;
  return class_capacity(c);
}

Record::Record(const Record& other, std::uint32_t capacity) {
  reserve(capacity > other.size_ ? capacity : other.size_);
  if (other.size_ == 0) return;  // memcpy from/to a null pointer is undefined, even for 0 bytes
  std::memcpy(static_cast<void*>(slots_), other.slots_, sizeof(Slot) * other.size_);
  size_ = other.size_;
  for (std::uint32_t i = 0; i < size_; ++i) ValueAccess::add_ref(slots_[i].bits, slots_[i].kind);
}

Record::Record(const Slot* slots, std::uint32_t size, std::uint32_t capacity) {
  reserve(capacity > size ? capacity : size);
  if (size == 0) return;
  std::memcpy(static_cast<void*>(slots_), slots, sizeof(Slot) * size);
  size_ = size;
}

Record::~Record() {
  for (std::uint32_t i = 0; i < size_; ++i) ValueAccess::drop(slots_[i].bits, slots_[i].kind);
  deallocate_slots(slots_, capacity_);
}

void Record::reserve(std::uint32_t capacity) {
  if (capacity <= capacity_) return;
  if (capacity > kMaxSlots) {
    throw std::length_error("nodemeta: a node cannot hold more than " + std::to_string(kMaxSlots) +
                            " keys");
  }
  capacity = class_capacity(capacity_class_for(capacity));  // a node can record it
  Slot* fresh = allocate_slots(capacity);
  if (slots_ != nullptr) {
    if (size_ != 0) std::memcpy(static_cast<void*>(fresh), slots_, sizeof(Slot) * size_);
    deallocate_slots(slots_, capacity_);
  }
  slots_ = fresh;
  capacity_ = capacity;
}

void Record::append(std::uint32_t key, Value&& value) {
  if (size_ == capacity_) reserve(grown_capacity(size_));  // may throw: no change
  const ValueAccess::Rep rep = ValueAccess::release(std::move(value));
  slots_[size_++] = Slot{key, rep.kind, rep.bits};
}

bool Record::put(std::uint32_t key, Value&& value, Value& replaced) {
  for (std::uint32_t i = 0; i < size_; ++i) {
    if (slots_[i].key == key) {
      const ValueAccess::Rep rep = ValueAccess::release(std::move(value));
      replaced = ValueAccess::adopt(slots_[i].bits, slots_[i].kind);
      slots_[i].kind = rep.kind;
      slots_[i].bits = rep.bits;
      return false;
    }
  }
  append(key, std::move(value));
  return true;
}

bool Record::erase(std::uint32_t key, Value& erased) noexcept {
  for (std::uint32_t i = 0; i < size_; ++i) {
    if (slots_[i].key == key) {
      erased = ValueAccess::adopt(slots_[i].bits, slots_[i].kind);
      slots_[i] = slots_[size_ - 1];
      --size_;
      return true;
    }
  }
  return false;
}

NodeState::~NodeState() {
  // The node's owner destroys it; no reader can be looking (the handle is being destroyed).
  Slot* s = slots.load(std::memory_order_relaxed);
  const std::uint32_t n = size.load(std::memory_order_relaxed);
  for (std::uint32_t i = 0; i < n; ++i) ValueAccess::drop(s[i].bits, s[i].kind);
  if (!is_inline(*this, s)) deallocate_slots(s, capacity());
}

}  // namespace nodemeta::detail
