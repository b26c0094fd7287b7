#include "nodemeta/detail/record.h"

#include <cstring>
#include <memory>

namespace nodemeta::detail {

Record::Record(const Record& other, std::uint32_t capacity) {
  reserve(capacity > other.size_ ? capacity : other.size_);
  if (other.size_ == 0) return;  // memcpy from/to a null pointer is undefined, even for 0 bytes
  std::memcpy(static_cast<void*>(slots_), other.slots_, sizeof(Slot) * other.size_);
  size_ = other.size_;
  for (std::uint32_t i = 0; i < size_; ++i) ValueAccess::add_ref(slots_[i].bits, slots_[i].kind);
}

Record::~Record() {
  for (std::uint32_t i = 0; i < size_; ++i) ValueAccess::drop(slots_[i].bits, slots_[i].kind);
  if (slots_ != nullptr) {
    SlotAllocator alloc;
    std::allocator_traits<SlotAllocator>::deallocate(alloc, slots_, capacity_);
  }
}

void Record::reserve(std::uint32_t capacity) {
  if (capacity <= capacity_) return;
  SlotAllocator alloc;
  Slot* fresh = std::allocator_traits<SlotAllocator>::allocate(alloc, capacity);
  if (slots_ != nullptr) {
    std::memcpy(static_cast<void*>(fresh), slots_, sizeof(Slot) * size_);
    std::allocator_traits<SlotAllocator>::deallocate(alloc, slots_, capacity_);
  }
  slots_ = fresh;
  capacity_ = capacity;
}

void Record::append(std::uint32_t key, Value&& value) {
  if (size_ == capacity_) reserve(size_ < 4 ? 4 : size_ + size_ / 2);  // may throw: no change
  const ValueAccess::Rep rep = ValueAccess::release(std::move(value));
  slots_[size_++] = Slot{key, rep.kind, rep.bits};
}

bool Record::put(std::uint32_t key, Value&& value) {
  for (std::uint32_t i = 0; i < size_; ++i) {
    if (slots_[i].key == key) {
      const ValueAccess::Rep rep = ValueAccess::release(std::move(value));
      const Slot old = slots_[i];
      slots_[i].kind = rep.kind;
      slots_[i].bits = rep.bits;
      ValueAccess::drop(old.bits, old.kind);
      return false;
    }
  }
  append(key, std::move(value));
  return true;
}

bool Record::erase(std::uint32_t key) noexcept {
  for (std::uint32_t i = 0; i < size_; ++i) {
    if (slots_[i].key == key) {
      const Slot old = slots_[i];
      slots_[i] = slots_[size_ - 1];
      --size_;
      ValueAccess::drop(old.bits, old.kind);
      return true;
    }
  }
  return false;
}

}  // namespace nodemeta::detail
