// nodemeta/key.h: Key, an interned metadata key name.
//
// A Key is a 4-byte handle to a name held in a process-wide intern table. Building a Key
// from a string hashes the string once; every store operation then compares 32-bit ids,
// never whole strings. Hot pass loops should build their Keys once, outside the loop:
//
//   const nodemeta::Key kFlops{"flops"};
//   for (auto& node : nodes) node.set(kFlops, estimate(node));
//
// Thread safety: concurrent-safe. Any thread may build Keys (interning the same name from
// many threads at once yields one id) and read names at any time.
// The table only grows: each distinct name costs its length plus about 40 bytes, once per
// process. Key ids are assigned in order of first use and are not stable across runs.
#ifndef NODEMETA_KEY_H_
#define NODEMETA_KEY_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace nodemeta {

class Key;

namespace detail {
// Ids of the keys the intern table holds before any user code runs; the PyTorch
// original's PROTECTED_KEYS, in its order.
enum class PredefinedKey : std::uint32_t {
  kVal = 0,
  kStackTrace = 1,
  kNnModuleStack = 2,
  kDebugHandle = 3,
  kTensorMeta = 4,
};
// The name behind any id a Key has handed out.
std::string_view key_name(std::uint32_t id) noexcept;
}  // namespace detail

class Key {
 public:
  // Interns `name` (implicit, so a string literal can be passed wherever a Key is taken).
  Key(const char* name);            // NOLINT(google-explicit-constructor)
  Key(std::string_view name);       // NOLINT(google-explicit-constructor)
  Key(const std::string& name);     // NOLINT(google-explicit-constructor)

  constexpr explicit Key(detail::PredefinedKey id) noexcept
      : id_(static_cast<std::uint32_t>(id)) {}

  // The interned name; the view stays valid for the life of the process.
  std::string_view name() const noexcept;
  // The id, dense from 0 in order of first use within this process.
  constexpr std::uint32_t id() const noexcept { return id_; }
  // TEMPORARY until the key table reserves id 0 as invalid.
  constexpr bool valid() const noexcept { return true; }

  friend constexpr bool operator==(Key a, Key b) noexcept { return a.id_ == b.id_; }

  // The number of distinct names interned so far (diagnostics).
  static std::size_t interned_count() noexcept;

 private:
  std::uint32_t id_;
};

// The keys PyTorch's NodeMetadata protects; protected by default in every MetadataStore.
namespace keys {
inline constexpr Key val{detail::PredefinedKey::kVal};
inline constexpr Key stack_trace{detail::PredefinedKey::kStackTrace};
inline constexpr Key nn_module_stack{detail::PredefinedKey::kNnModuleStack};
inline constexpr Key debug_handle{detail::PredefinedKey::kDebugHandle};
inline constexpr Key tensor_meta{detail::PredefinedKey::kTensorMeta};
}  // namespace keys

// {val, stack_trace, nn_module_stack, debug_handle, tensor_meta}.
std::vector<Key> default_protected_keys();

}  // namespace nodemeta

template <>
struct std::hash<nodemeta::Key> {
  std::size_t operator()(nodemeta::Key k) const noexcept { return k.id(); }
};

#endif  // NODEMETA_KEY_H_
