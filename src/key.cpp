#include "nodemeta/key.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <string>

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

constexpr std::string_view kInvalidName = "<invalid nodemeta::Key>";
// Ids run from 1 to 2^32 - 2: 0 is the invalid Key and 2^32 - 1 is kept out of use, so that
// no id arithmetic can wrap.
constexpr std::uint32_t kMaxId = std::numeric_limits<std::uint32_t>::max() - 1;

// Shows a name in an error message: printable ASCII as is, everything else as \xHH; long
// names are cut after 200 bytes.
std::string escaped(std::string_view name) {
  constexpr std::size_t kShown = 200;
  std::string out = "'";
  for (std::size_t i = 0; i < std::min(name.size(), kShown); ++i) {
    const auto c = static_cast<unsigned char>(name[i]);
    if (c == '\\' || c == '\'') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      char buf[5];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  out += '\'';
  if (name.size() > kShown) out += "... (" + std::to_string(name.size()) + " bytes)";
  return out;
}

// Process-wide, grow-only intern table. Lookups of known names are lock-free
// (tbb::concurrent_unordered_map::find); the first sighting of a name takes a mutex so
// that the name's id and its slot in `names_` are assigned together.
class InternTable {
 public:
  InternTable() {
    names_.push_back(std::string(kInvalidName));  // id 0: never handed out
    count_.store(1, std::memory_order_release);
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
    if (name.find('\0') != std::string_view::npos) {
      throw std::invalid_argument("nodemeta::Key: key name " + escaped(name) + " contains a NUL byte");
    }
    if (name.size() > std::numeric_limits<std::uint32_t>::max()) {
      throw std::length_error("nodemeta::Key: key name of " + std::to_string(name.size()) +
                              " bytes is longer than the limit of 2^32 - 1 bytes");
    }
    std::lock_guard<std::mutex> lock(mutex_);
    if (auto it = ids_.find(name); it != ids_.end()) return it->second;
    const std::size_t id = names_.size();
    if (id > kMaxId) {
      throw std::length_error("nodemeta::Key: too many distinct key names (the limit is 2^32 - 2)");
    }
    // The string lives in names_ (stable addresses) before its id is published in ids_.
    auto slot = names_.push_back(std::string(name));
    ids_.emplace(std::string_view(*slot), static_cast<std::uint32_t>(id));
    count_.store(id + 1, std::memory_order_release);
    return static_cast<std::uint32_t>(id);
  }

  // Any id: those not (yet) handed out read as the invalid name.
  std::string_view name(std::uint32_t id) const noexcept {
    if (id == 0 || id >= count_.load(std::memory_order_acquire)) return kInvalidName;
    return names_[id];
  }
  std::size_t size() const noexcept { return ids_.size(); }

 private:
  // std::allocator, not tbb's: the table lives for the whole process and LeakSanitizer must
  // be able to scan it for the names it owns.
  tbb::concurrent_vector<std::string, std::allocator<std::string>> names_;
  tbb::concurrent_unordered_map<std::string_view, std::uint32_t, std::hash<std::string_view>,
                                std::equal_to<std::string_view>,
                                std::allocator<std::pair<const std::string_view, std::uint32_t>>>
      ids_;
  std::atomic<std::size_t> count_{0};  // names_ entries fully constructed (id 0 included)
  std::mutex mutex_;
};

InternTable& table() {
  static InternTable* const instance = new InternTable();  // never destroyed: Keys may be
  return *instance;                                        // used during static destruction
}

}  // namespace

Key::Key(const char* name) : id_(0) {
  if (name == nullptr) throw std::invalid_argument("nodemeta::Key: null key name");
  id_ = table().intern(name);
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
