#include "nodemeta/key.h"

#include <cstdint>
#include <limits>
#include <mutex>
#include <stdexcept>

#include <oneapi/tbb/concurrent_unordered_map.h>
#include <oneapi/tbb/concurrent_vector.h>

#include "nodemeta/detail/config.h"

// GCC defines __SANITIZE_ADDRESS__ under -fsanitize=address; clang (before 18) only
// answers __has_feature(address_sanitizer).
#if defined(__SANITIZE_ADDRESS__)
#define NODEMETA_KEY_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define NODEMETA_KEY_ASAN 1
#endif
#endif

#if defined(NODEMETA_KEY_ASAN)
#include <sanitizer/lsan_interface.h>
#endif

namespace nodemeta {
namespace {

// Process-wide, grow-only intern table. Lookups of known names are lock-free
// (tbb::concurrent_unordered_map::find); the first sighting of a name takes a mutex so
// that the name's id and its slot in `names_` are assigned together.
class InternTable {
 public:
  InternTable() {
    for (const char* name : {"val", "stack_trace", "nn_module_stack", "debug_handle", "tensor_meta"}) {
      intern(name);
    }
  }

  std::uint32_t intern(std::string_view name) {
#if defined(NODEMETA_KEY_ASAN)
    // The table is immortal by design, and oneTBB's segment tables keep offset pointers
    // that LeakSanitizer cannot follow (even find() may allocate a bucket segment): what
    // the table allocates is not a leak.
    __lsan::ScopedDisabler not_a_leak;
#endif
    if (auto it = ids_.find(name); it != ids_.end()) return it->second;
    std::lock_guard<std::mutex> lock(mutex_);
    if (auto it = ids_.find(name); it != ids_.end()) return it->second;
    const std::size_t id = names_.size();
    if (id >= std::numeric_limits<std::uint32_t>::max()) {
      throw std::length_error("nodemeta::Key: too many distinct key names");
    }
    // The string lives in names_ (stable addresses) before its id is published in ids_.
    auto slot = names_.push_back(std::string(name));
    ids_.emplace(std::string_view(*slot), static_cast<std::uint32_t>(id));
    return static_cast<std::uint32_t>(id);
  }

  std::string_view name(std::uint32_t id) const noexcept { return names_[id]; }
  std::size_t size() const noexcept { return ids_.size(); }

 private:
  // std::allocator, not tbb's: the table lives for the whole process and LeakSanitizer must
  // be able to scan it for the names it owns.
  tbb::concurrent_vector<std::string, std::allocator<std::string>> names_;
  tbb::concurrent_unordered_map<std::string_view, std::uint32_t, std::hash<std::string_view>,
                                std::equal_to<std::string_view>,
                                std::allocator<std::pair<const std::string_view, std::uint32_t>>>
      ids_;
  std::mutex mutex_;
};

InternTable& table() {
  static InternTable* const instance = new InternTable();  // never destroyed: Keys may be
  return *instance;                                        // used during static destruction
}

}  // namespace

Key::Key(const char* name) : Key(std::string_view(name == nullptr ? "" : name)) {
  if (name == nullptr) throw std::invalid_argument("nodemeta::Key: null key name");
}
Key::Key(std::string_view name) : id_(table().intern(name)) {}
Key::Key(const std::string& name) : Key(std::string_view(name)) {}

std::string_view Key::name() const noexcept { return table().name(id_); }

std::string_view detail::key_name(std::uint32_t id) noexcept { return table().name(id); }

std::size_t Key::interned_count() noexcept { return table().size(); }

std::vector<Key> default_protected_keys() {
  return {keys::val, keys::stack_trace, keys::nn_module_stack, keys::debug_handle, keys::tensor_meta};
}

}  // namespace nodemeta
