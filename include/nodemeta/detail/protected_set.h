// nodemeta/detail/protected_set.h: a store's set of protected key ids.
// Internal: no stability promise.
#ifndef NODEMETA_DETAIL_PROTECTED_SET_H_
#define NODEMETA_DETAIL_PROTECTED_SET_H_

#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace nodemeta::detail {

// A grow-only bitset over key ids: bits are only ever set, never cleared, and the words
// never move. Word w lives in segment s = bit_width(w + 1) - 1 (2^s words, allocated the
// first time a key in it is protected), so memory is proportional to the largest protected
// id (2^32 ids fit 27 segments) and nothing is copied when the set grows.
//
// contains() is two loads (the segment pointer, acquire; the word, seq_cst); add() sets the
// bit with a seq_cst fetch_or: the store's writes pair these seq_cst operations with their
// write windows (docs/design.md, "Why protect() needs no global lock").
class ProtectedSet {
 public:
  ProtectedSet() = default;
  ProtectedSet(const ProtectedSet&) = delete;
  ProtectedSet& operator=(const ProtectedSet&) = delete;
  ~ProtectedSet() {
    for (auto& s : segments_) delete[] s.load(std::memory_order_relaxed);
  }

  [[gnu::always_inline]] bool contains(std::uint32_t id) const noexcept {
    const std::uint64_t w = id / 64;
    const unsigned s = segment_of(w);
    const std::atomic<std::uint64_t>* seg = segments_[s].load(std::memory_order_acquire);
    if (seg == nullptr) return false;
    return ((seg[w + 1 - (std::uint64_t{1} << s)].load(std::memory_order_seq_cst) >> (id % 64)) & 1U) != 0;
  }

  // Adds `id`; true iff it was absent. Callers serialise add() (the store's protect mutex);
  // contains() may run concurrently. Throws std::bad_alloc before changing anything.
  bool add(std::uint32_t id) {
    if (contains(id)) return false;
    const std::uint64_t w = id / 64;
    const unsigned s = segment_of(w);
    std::atomic<std::uint64_t>* seg = segments_[s].load(std::memory_order_relaxed);
    if (seg == nullptr) {
      seg = new std::atomic<std::uint64_t>[std::size_t{1} << s]();  // zeroed
      segments_[s].store(seg, std::memory_order_release);
    }
    seg[w + 1 - (std::uint64_t{1} << s)].fetch_or(std::uint64_t{1} << (id % 64),
                                                  std::memory_order_seq_cst);
    return true;
  }

  // Every id in the set, ascending.
  std::vector<std::uint32_t> ids() const {
    std::vector<std::uint32_t> out;
    for (unsigned s = 0; s < kSegments; ++s) {
      const std::atomic<std::uint64_t>* seg = segments_[s].load(std::memory_order_acquire);
      if (seg == nullptr) continue;
      const std::uint64_t first_word = (std::uint64_t{1} << s) - 1;
      for (std::uint64_t i = 0; i < (std::uint64_t{1} << s); ++i) {
        std::uint64_t bits = seg[i].load(std::memory_order_seq_cst);
        while (bits != 0) {
          const int b = std::countr_zero(bits);
          out.push_back(static_cast<std::uint32_t>((first_word + i) * 64 + static_cast<unsigned>(b)));
          bits &= bits - 1;
        }
      }
    }
    return out;
  }

 private:
  static constexpr unsigned kSegments = 27;  // words 0 .. 2^27 - 2 cover every 32-bit id
  static unsigned segment_of(std::uint64_t word) noexcept {
    return static_cast<unsigned>(std::bit_width(word + 1) - 1);
  }

  std::atomic<std::atomic<std::uint64_t>*> segments_[kSegments] = {};
};

}  // namespace nodemeta::detail

#endif  // NODEMETA_DETAIL_PROTECTED_SET_H_
