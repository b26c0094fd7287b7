// nodemeta/key.h: Key, an interned metadata key name.
//
// A Key is a 4-byte handle to a name held in a process-wide intern table. Building a Key
// from a string hashes the string and looks it up once; every store operation then compares
// 32-bit ids, never whole strings. A conversion costs a few nanoseconds (a string literal
// less than a std::string: its hash is computed at compile time), so string-keyed calls
// such as `md.set("flops", x)` are fine; the hottest loops can still build their Keys once:
//
//   const nodemeta::Key kFlops{"flops"};
//   for (auto& node : nodes) node.set(kFlops, estimate(node));
//
// Thread safety: concurrent-safe. Any thread may build Keys and read names at any time;
// looking up a known name takes no lock and writes no shared memory, so conversions scale
// with threads. Interning the same new name from many threads at once yields one id.
//
// Ids: one per distinct name, process-wide, assigned in order of first use and not stable
// across runs. Id 0 is never handed out: a Key whose storage is still zero (a namespace-scope
// `const Key kFlops{"flops"};` read from another translation unit's static initialiser before
// its own constructor ran) is invalid (`valid()` is false, `name()` is "<invalid nodemeta::Key>")
// rather than silently `keys::val`. No store operation reads or writes under an invalid
// Key: writes (and create(), protect()) throw std::invalid_argument, reads find nothing
// (get() is nullopt, at() and operator[] throw KeyError naming "<invalid nodemeta::Key>").
//
// Names: any bytes except NUL, up to 2^32 - 1 bytes; at most 2^32 - 2 distinct names per
// process (std::length_error beyond either, never a wrap). A std::string/std::string_view
// holding a NUL byte is rejected with std::invalid_argument (the message shows the name
// escaped, e.g. 'tensor_meta\x00copy'); a C string or char array ends at its first NUL, as C
// strings do. Names are never freed: the views name() returns stay valid for the life of the
// process. Each distinct name costs its length plus 50 to 120 bytes, once per process (its
// entry, its hash-table slots, its id slot); the table only grows, by doubling, and keeps
// the smaller tables it replaced (readers may still be probing them), which together stay
// under the size of the final one.
#ifndef NODEMETA_KEY_H_
#define NODEMETA_KEY_H_

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "nodemeta/export.h"

// Forces the inlining the literal fast path needs (GCC and Clang): without it, a compiler
// that sees many call sites may keep intern_key_chars out of line, where the hash of a
// literal is no longer a constant.
#if defined(__GNUC__)
#define NODEMETA_KEY_ALWAYS_INLINE __attribute__((always_inline)) inline
#else
#define NODEMETA_KEY_ALWAYS_INLINE inline
#endif

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
NODEMETA_API std::string_view key_name(std::uint32_t id) noexcept;

// --- the conversion machinery behind Key's constructors (no stability promise) ----------

// The intern table's hash of a name: a wyhash-style multiply-mix, inline so that the
// compiler computes it at compile time for a string literal.
// The 128-bit product of a and b, its two halves xor-ed.
#if defined(__SIZEOF_INT128__)
__extension__ using KeyHashU128 = unsigned __int128;
NODEMETA_KEY_ALWAYS_INLINE std::uint64_t key_hash_mix(std::uint64_t a, std::uint64_t b) noexcept {
  const KeyHashU128 r = static_cast<KeyHashU128>(a) * b;
  return static_cast<std::uint64_t>(r) ^ static_cast<std::uint64_t>(r >> 64);
}
#else
NODEMETA_KEY_ALWAYS_INLINE std::uint64_t key_hash_mix(std::uint64_t a, std::uint64_t b) noexcept {
  const std::uint64_t a_lo = a & 0xffffffffU, a_hi = a >> 32, b_lo = b & 0xffffffffU, b_hi = b >> 32;
  const std::uint64_t lo_lo = a_lo * b_lo, hi_lo = a_hi * b_lo, lo_hi = a_lo * b_hi, hi_hi = a_hi * b_hi;
  const std::uint64_t cross = (lo_lo >> 32) + (hi_lo & 0xffffffffU) + lo_hi;
  const std::uint64_t lo = (cross << 32) | (lo_lo & 0xffffffffU);
  const std::uint64_t hi = (hi_lo >> 32) + (cross >> 32) + hi_hi;
  return lo ^ hi;
}
#endif
NODEMETA_KEY_ALWAYS_INLINE std::uint64_t key_hash_read64(const char* p) noexcept {
  std::uint64_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
NODEMETA_KEY_ALWAYS_INLINE std::uint64_t key_hash_read32(const char* p) noexcept {
  std::uint32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
NODEMETA_KEY_ALWAYS_INLINE std::uint64_t key_hash(const char* p, std::size_t n) noexcept {
  constexpr std::uint64_t k0 = 0x2d358dccaa6c78a5ULL, k1 = 0x8bb84b93962eacc9ULL,
                          k2 = 0x4b33a62ed433d4a3ULL;
  std::uint64_t seed = k0;
  std::uint64_t a = 0, b = 0;
  if (n <= 16) {
    if (n >= 4) {
      const std::size_t d = (n >> 3) << 2;  // 0 for 4..7 bytes, 4 for 8..16
      a = (key_hash_read32(p) << 32) | key_hash_read32(p + d);
      b = (key_hash_read32(p + n - 4) << 32) | key_hash_read32(p + n - 4 - d);
    } else if (n > 0) {
      a = (std::uint64_t{static_cast<unsigned char>(p[0])} << 16) |
          (std::uint64_t{static_cast<unsigned char>(p[n >> 1])} << 8) |
          std::uint64_t{static_cast<unsigned char>(p[n - 1])};
    }
  } else {
    std::size_t i = n;
    const char* q = p;
    while (i > 16) {
      seed = key_hash_mix(key_hash_read64(q) ^ k1, key_hash_read64(q + 8) ^ seed);
      q += 16;
      i -= 16;
    }
    a = key_hash_read64(p + n - 16);
    b = key_hash_read64(p + n - 8);
  }
  return key_hash_mix(a ^ k1 ^ n, key_hash_mix(b ^ k2, seed ^ k1));
}

// The id of `name`, interning it on first sight. Throws as Key's constructors do.
NODEMETA_API std::uint32_t intern_key(std::string_view name);
// The same, with key_hash(data, size) already computed by the caller.
NODEMETA_API std::uint32_t intern_key_hashed(const char* data, std::size_t size,
                                           std::uint64_t hash);
// A char array of `n` bytes: the name ends at its first NUL, or at `n` if it has none.
NODEMETA_KEY_ALWAYS_INLINE std::uint32_t intern_key_chars(const char* s, std::size_t n) {
  const void* nul = std::memchr(s, '\0', n);
  const std::size_t size = nul == nullptr ? n : static_cast<std::size_t>(static_cast<const char*>(nul) - s);
#if defined(__GNUC__)
  // A string literal: its length and hash fold to constants, and only the lookup remains.
  // Any other array (a buffer whose contents may change) is hashed at run time, from its
  // current contents.
  if (__builtin_constant_p(size)) {
    const std::uint64_t hash = key_hash(s, size);
    if (__builtin_constant_p(hash)) return intern_key_hashed(s, size, hash);
  }
#endif
  return intern_key(std::string_view(s, size));
}
// A NUL-terminated C string; throws std::invalid_argument if `name` is null.
NODEMETA_API std::uint32_t intern_key_c_string(const char* name);
}  // namespace detail

class NODEMETA_API Key {
 public:
  // Interns `name` (implicit, so a string can be passed wherever a Key is taken).
  // Throws std::invalid_argument if the name holds a NUL byte, std::length_error past the
  // limits above, std::bad_alloc. A lookup of a known name never allocates.

  // A string literal or char array: the name ends at the array's first NUL. For a literal,
  // an optimising GCC or Clang computes the hash at compile time.
  template <std::size_t N>
  NODEMETA_KEY_ALWAYS_INLINE Key(const char (&name)[N])  // NOLINT(google-explicit-constructor)
      : id_(detail::intern_key_chars(name, N)) {}
  // A C string (`const char*` or `char*`); throws std::invalid_argument if it is null.
  // (A template so that a string literal picks the array overload above.)
  template <class P>
    requires std::same_as<P, const char*> || std::same_as<P, char*>
  Key(const P& name)  // NOLINT(google-explicit-constructor)
      : id_(detail::intern_key_c_string(name)) {}
  Key(std::string_view name);    // NOLINT(google-explicit-constructor)
  Key(const std::string& name);  // NOLINT(google-explicit-constructor)

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
  // The Key named `name` if that name was ever interned, else nullopt; never interns (so a
  // lookup of an arbitrary name, such as a read of a key no node has, cannot grow the
  // table). Lock-free; concurrent-safe.
  static std::optional<Key> find(std::string_view name) noexcept;

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
NODEMETA_API std::vector<Key> default_protected_keys();

}  // namespace nodemeta

template <>
struct std::hash<nodemeta::Key> {
  std::size_t operator()(nodemeta::Key k) const noexcept { return k.id(); }
};

#undef NODEMETA_KEY_ALWAYS_INLINE

#endif  // NODEMETA_KEY_H_
