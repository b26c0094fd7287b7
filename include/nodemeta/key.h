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
// process.
//
// Ids: one per distinct name, process-wide, assigned in order of first use and not stable
// across runs. Id 0 is never handed out: a Key whose storage is still zero (a namespace-scope
// `const Key kFlops{"flops"};` read from another translation unit's static initialiser before
// its own constructor ran) is invalid (`valid()` is false, `name()` is "<invalid nodemeta::Key>")
// rather than silently `keys::val`. Every MetadataStore/NodeMetadata operation rejects an
// invalid Key instead of reading or writing under it.
//
// Names: any bytes except NUL, up to 2^32 - 1 bytes; at most 2^32 - 2 distinct names per
// process (std::length_error beyond either, never a wrap). A std::string/std::string_view
// holding a NUL byte is rejected with std::invalid_argument (the message shows the name
// escaped, e.g. 'tensor_meta\x00copy'); a C string ends at its first NUL, as C strings do.
// Names are never freed: the views name() returns stay valid for the life of the process.
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
// original's PROTECTED_KEYS, in its order. Id 0 is the invalid Key.
enum class PredefinedKey : std::uint32_t {
  kVal = 1,
  kStackTrace = 2,
  kNnModuleStack = 3,
  kDebugHandle = 4,
  kTensorMeta = 5,
};
// The name behind an id a Key has handed out; "<invalid nodemeta::Key>" for 0 and for any
// id never handed out. Safe to call with any id.
std::string_view key_name(std::uint32_t id) noexcept;
}  // namespace detail

class Key {
 public:
  // Interns `name` (implicit, so a string literal can be passed wherever a Key is taken).
  // Throws std::invalid_argument if the name holds a NUL byte or is a null pointer,
  // std::length_error past the limits above, std::bad_alloc.
  Key(const char* name);            // NOLINT(google-explicit-constructor)
  Key(std::string_view name);       // NOLINT(google-explicit-constructor)
  Key(const std::string& name);     // NOLINT(google-explicit-constructor)

  constexpr explicit Key(detail::PredefinedKey id) noexcept
      : id_(static_cast<std::uint32_t>(id)) {}

  // False only for a Key whose storage is all zero bytes (see the file comment); every
  // constructor gives a valid Key.
  constexpr bool valid() const noexcept { return id_ != 0; }

  // The interned name; the view stays valid for the life of the process.
  // "<invalid nodemeta::Key>" for an invalid Key.
  std::string_view name() const noexcept;
  // The id: 1 to 5 for the predefined keys below, then dense from 6 in order of first use
  // within this process; 0 only for an invalid Key.
  constexpr std::uint32_t id() const noexcept { return id_; }

  friend constexpr bool operator==(Key a, Key b) noexcept { return a.id_ == b.id_; }

  // The number of distinct names interned so far, the predefined ones included (diagnostics).
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
