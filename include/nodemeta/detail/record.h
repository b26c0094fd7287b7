// nodemeta/detail/record.h: the compact per-node record the store's hash map holds.
// Internal: no stability promise.
//
// A Record is 16 bytes (pointer, size, capacity) pointing at an array of 16-byte slots:
// {key id, value kind, value bits}. Scalars sit in the slot itself; boxed values hold one
// reference. Lookup is a linear scan over 32-bit key ids (nodes hold few keys: 5 to 10 in
// real torch.fx graphs). A Record is not synchronised: the store only touches it while
// holding its node's lock.
#ifndef NODEMETA_DETAIL_RECORD_H_
#define NODEMETA_DETAIL_RECORD_H_

#include <cstdint>
#include <optional>
#include <utility>

#include "nodemeta/detail/config.h"
#include "nodemeta/key.h"
#include "nodemeta/value.h"

namespace nodemeta::detail {

struct Slot {
  std::uint32_t key;
  Value::Kind kind;
  std::int64_t bits;

  Value value() const noexcept { return ValueAccess::copy(bits, kind); }
};
static_assert(sizeof(Slot) == 16);

class Record {
 public:
  Record() noexcept = default;
  explicit Record(std::uint32_t capacity) { reserve(capacity); }
  Record(const Record& other) : Record(other, other.size_) {}
  // A copy of `other` with room for `capacity` slots (at least other.size()).
  Record(const Record& other, std::uint32_t capacity);
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
  // Inserts or replaces; true iff the key was absent. Strong exception guarantee.
  bool put(std::uint32_t key, Value&& value);
  // Appends a key the caller knows is absent. Strong exception guarantee.
  void append(std::uint32_t key, Value&& value);
  // True iff the key was present. Does not keep slot order.
  bool erase(std::uint32_t key) noexcept;
  void reserve(std::uint32_t capacity);

 private:
  using SlotAllocator = Allocator<Slot>;

  Slot* slots_ = nullptr;
  std::uint32_t size_ = 0;
  std::uint32_t capacity_ = 0;
};
static_assert(sizeof(Record) == 16);

}  // namespace nodemeta::detail

#endif  // NODEMETA_DETAIL_RECORD_H_
