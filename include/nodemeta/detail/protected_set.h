// nodemeta/detail/protected_set.h: an immutable set of protected key ids.
// Internal: no stability promise.
#ifndef NODEMETA_DETAIL_PROTECTED_SET_H_
#define NODEMETA_DETAIL_PROTECTED_SET_H_

#include <cstdint>
#include <vector>

namespace nodemeta::detail {

// A bitset over key ids. Never modified once published: MetadataStore::protect() publishes
// a new one with one atomic store, so a single load gives a consistent view of every key's
// protection at one instant.
class ProtectedSet {
 public:
  bool contains(std::uint32_t id) const noexcept {
    return id / 64 < words_.size() && ((words_[id / 64] >> (id % 64)) & 1U) != 0;
  }
  ProtectedSet with(std::uint32_t id) const {
    ProtectedSet next(*this);
    if (next.words_.size() <= id / 64) next.words_.resize(id / 64 + 1, 0);
    next.words_[id / 64] |= std::uint64_t{1} << (id % 64);
    return next;
  }
  // Every id in the set, ascending.
  std::vector<std::uint32_t> ids() const {
    std::vector<std::uint32_t> out;
    for (std::uint32_t id = 0; id < words_.size() * 64; ++id) {
      if (contains(id)) out.push_back(id);
    }
    return out;
  }

 private:
  std::vector<std::uint64_t> words_;
};

}  // namespace nodemeta::detail

#endif  // NODEMETA_DETAIL_PROTECTED_SET_H_
