#include "nodemeta/key.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>

namespace nodemeta {
namespace {

// The process-wide intern table.
//
// Names map to ids through an open-addressing hash table (linear probing, at most half
// full) of atomic pointers to immutable entries; ids map back to entries through a
// segmented array. Lookups take no lock and write nothing shared: one acquire load of the
// table, then acquire loads of slots until the name or an empty slot. Inserts take a mutex,
// build the entry, then publish it with release stores (first in the id array, then in the
// hash table), so a thread that finds an entry sees its bytes, and a thread that holds an id
// can read its name.
//
// Growth builds a table twice the size, copies the entry pointers over and publishes it with
// one release store. The old table is never freed (a reader may still be probing it; it is
// frozen, so such a reader at worst misses a name inserted since, and then finds it under
// the mutex). Tables only double, so all of them together take under 2x the final table.
// Entries and id segments are never freed either: names live as long as the process.
//
// Memory ordering: the release store publishing an entry in a slot synchronises with the
// acquire load that finds it; entries are never written after publication.
//
// LeakSanitizer: every allocation stays reachable from static storage (g_table below): entries
// through the current table's slots and the id segments, old tables through each table's
// `prev`, so an immortal table is not reported as a leak.

struct Entry {
  std::uint64_t hash;
  std::uint32_t id;
  std::uint32_t size;
  // Followed by the name's `size` bytes and a NUL.
  const char* name() const noexcept { return reinterpret_cast<const char*>(this + 1); }
  char* name() noexcept { return reinterpret_cast<char*>(this + 1); }
};
static_assert(alignof(Entry) == 8 && sizeof(Entry) == 16);

struct EntryDeleter {
  void operator()(Entry* e) const noexcept { ::operator delete(e); }
};
using EntryPtr = std::unique_ptr<Entry, EntryDeleter>;

EntryPtr make_entry(std::string_view name, std::uint64_t hash, std::uint32_t id) {
  void* raw = ::operator new(sizeof(Entry) + name.size() + 1);
  EntryPtr e(new (raw) Entry{hash, id, static_cast<std::uint32_t>(name.size())});
  if (!name.empty()) std::memcpy(e->name(), name.data(), name.size());  // data() may be null
  e->name()[name.size()] = '\0';
  return e;
}

using Slot = std::atomic<const Entry*>;

struct Table {
  std::size_t mask;   // capacity - 1, capacity a power of two
  const Table* prev;  // the table this one replaced (kept reachable, never freed)
  // Followed by `mask + 1` slots.
  const Slot* slots() const noexcept { return reinterpret_cast<const Slot*>(this + 1); }
  Slot* slots() noexcept { return reinterpret_cast<Slot*>(this + 1); }
};
static_assert(alignof(Slot) <= alignof(Table) && sizeof(Table) % alignof(Slot) == 0);

Table* make_table(std::size_t capacity, const Table* prev) {
  void* raw = ::operator new(sizeof(Table) + capacity * sizeof(Slot));
  Table* t = new (raw) Table{capacity - 1, prev};
  for (std::size_t i = 0; i < capacity; ++i) new (t->slots() + i) Slot(nullptr);
  return t;
}

// Equality of two names of `n` bytes each, for the short names keys usually have: two
// overlapping loads per side instead of a call to memcmp.
inline bool same_bytes(const char* a, const char* b, std::size_t n) noexcept {
  using detail::key_hash_read32;
  using detail::key_hash_read64;
  if (n >= 8) {
    if (n > 16) return std::memcmp(a, b, n) == 0;
    return key_hash_read64(a) == key_hash_read64(b) &&
           key_hash_read64(a + n - 8) == key_hash_read64(b + n - 8);
  }
  if (n >= 4) {
    return key_hash_read32(a) == key_hash_read32(b) &&
           key_hash_read32(a + n - 4) == key_hash_read32(b + n - 4);
  }
  for (std::size_t i = 0; i < n; ++i) {
    if (a[i] != b[i]) return false;
  }
  return true;
}

inline const Entry* find(const Table* t, const char* p, std::size_t n, std::uint64_t hash) noexcept {
  const Slot* slots = t->slots();
  for (std::size_t i = hash & t->mask;; i = (i + 1) & t->mask) {
    const Entry* e = slots[i].load(std::memory_order_acquire);
    if (e == nullptr) return nullptr;
    if (e->hash == hash && e->size == n && same_bytes(e->name(), p, n)) return e;
  }
}

// Ids 1..5 (detail::PredefinedKey), answered without the table so that they have names even
// before the table exists.
constexpr std::array<std::string_view, 5> kPredefinedNames{
    "val", "stack_trace", "nn_module_stack", "debug_handle", "tensor_meta"};
constexpr std::uint32_t kFirstInternedId = kPredefinedNames.size() + 1;
// Ids run from 1 to 2^32 - 2: 0 is the invalid Key and 2^32 - 1 is kept out of use, so that
// no id arithmetic can wrap.
constexpr std::uint32_t kMaxId = std::numeric_limits<std::uint32_t>::max() - 1;
constexpr std::string_view kInvalidName = "<invalid nodemeta::Key>";

// id -> entry: segment 0 holds ids [0, 64), segment s >= 1 holds [64 << (s - 1), 64 << s).
// Segments are allocated once, under the mutex, and never move.
constexpr unsigned kSegmentShift = 6;
constexpr std::size_t kSegments = std::bit_width(std::uint64_t{kMaxId} >> kSegmentShift) + 1;
inline unsigned segment_of(std::uint32_t id) noexcept {
  return static_cast<unsigned>(std::bit_width(id >> kSegmentShift));
}
inline std::size_t segment_base(unsigned s) noexcept {
  return s == 0 ? 0 : std::size_t{1} << (kSegmentShift + s - 1);
}
inline std::size_t segment_size(unsigned s) noexcept {
  return std::size_t{1} << (kSegmentShift + (s == 0 ? 0 : s - 1));
}

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

class InternTable {
 public:
  constexpr InternTable() = default;

  std::uint32_t find_or_insert(const char* p, std::size_t n, std::uint64_t hash) {
    if (const Table* t = table_.load(std::memory_order_acquire)) {
      if (const Entry* e = find(t, p, n, hash)) return e->id;
    }
    return insert(std::string_view(p, n), hash);
  }

  std::uint32_t find_only(const char* p, std::size_t n, std::uint64_t hash) const noexcept {
    if (const Table* t = table_.load(std::memory_order_acquire)) {
      if (const Entry* e = find(t, p, n, hash)) return e->id;
    }
    return 0;
  }

  std::string_view name(std::uint32_t id) const noexcept {
    if (id - 1 < kPredefinedNames.size()) return kPredefinedNames[id - 1];
    const unsigned s = segment_of(id);
    if (s >= kSegments) return kInvalidName;
    const Slot* segment = segments_[s].load(std::memory_order_acquire);
    if (segment == nullptr) return kInvalidName;
    const Entry* e = segment[id - segment_base(s)].load(std::memory_order_acquire);
    if (e == nullptr) return kInvalidName;
    return {e->name(), e->size};
  }

  std::size_t size() const noexcept { return next_id_.load(std::memory_order_relaxed) - 1; }

 private:
  std::uint32_t insert(std::string_view name, std::uint64_t hash) {
    if (name.find('\0') != std::string_view::npos) {
      throw std::invalid_argument("nodemeta::Key: key name " + escaped(name) + " contains a NUL byte");
    }
    if (name.size() > std::numeric_limits<std::uint32_t>::max()) {
      throw std::length_error("nodemeta::Key: key name of " + std::to_string(name.size()) +
                              " bytes is longer than the limit of 2^32 - 1 bytes");
    }
    std::lock_guard<std::mutex> lock(mutex_);
    Table* t = table_.load(std::memory_order_relaxed);  // only writers, under mutex_, store it
    if (t == nullptr) t = create_locked();
    if (const Entry* e = find(t, name.data(), name.size(), hash)) return e->id;
    return add_locked(t, name, hash);
  }

  // The first table, holding the predefined names under their ids; published only once
  // complete (if an allocation fails, the next insert starts again from scratch).
  Table* create_locked() {
    Table* t = make_table(64, nullptr);
    used_ = 0;
    std::uint32_t added = 0;
    try {
      for (std::uint32_t i = 0; i < kPredefinedNames.size(); ++i) {
        const std::string_view n = kPredefinedNames[i];
        add_locked(t, n, detail::key_hash(n.data(), n.size()), i + 1);  // 5 in 64 slots: no growth
        ++added;
      }
    } catch (...) {
      // Out of memory. Only the predefined ids' entries were published (in segment 0), and
      // no reader looks them up there (name() answers ids 1-5 from kPredefinedNames): take
      // them back with the table, so the next attempt leaks nothing.
      Slot* segment = segments_[0].load(std::memory_order_relaxed);
      for (std::uint32_t id = 1; id <= added; ++id) {
        ::operator delete(const_cast<Entry*>(segment[id].exchange(nullptr, std::memory_order_relaxed)));
      }
      ::operator delete(t);
      used_ = 0;
      throw;
    }
    table_.store(t, std::memory_order_release);
    return t;
  }

  // Adds a name known to be absent from `t`, the current table. Strong exception
  // guarantee: everything that can throw happens before the first store that publishes.
  std::uint32_t add_locked(Table* t, std::string_view name, std::uint64_t hash,
                           std::uint32_t predefined_id = 0) {
    const std::uint32_t id = predefined_id != 0 ? predefined_id : next_id_.load(std::memory_order_relaxed);
    if (id > kMaxId) {
      throw std::length_error("nodemeta::Key: too many distinct key names (the limit is 2^32 - 2)");
    }
    EntryPtr entry = make_entry(name, hash, id);
    const unsigned s = segment_of(id);
    Slot* segment = segments_[s].load(std::memory_order_relaxed);
    if (segment == nullptr) {
      const std::size_t size = segment_size(s);
      segment = static_cast<Slot*>(::operator new(size * sizeof(Slot)));
      for (std::size_t i = 0; i < size; ++i) new (segment + i) Slot(nullptr);
      segments_[s].store(segment, std::memory_order_release);  // empty: harmless if we throw below
    }
    ++used_;
    if (used_ * 2 > t->mask + 1) {  // keep the table at most half full
      try {
        t = grow_locked(t);
      } catch (...) {
        --used_;
        throw;
      }
    }
    // Nothing below throws. The id array first: whoever learns the id can read the name.
    const Entry* e = entry.release();
    segment[id - segment_base(s)].store(e, std::memory_order_release);
    place(t, e);
    if (predefined_id == 0) next_id_.store(id + 1, std::memory_order_relaxed);
    return id;
  }

  static void place(Table* t, const Entry* e) noexcept {
    Slot* slots = t->slots();
    std::size_t i = e->hash & t->mask;
    while (slots[i].load(std::memory_order_relaxed) != nullptr) i = (i + 1) & t->mask;
    slots[i].store(e, std::memory_order_release);
  }

  Table* grow_locked(Table* old) {
    const std::size_t capacity = (old->mask + 1) * 2;
    Table* t = make_table(capacity, old);
    for (std::size_t i = 0; i <= old->mask; ++i) {
      if (const Entry* e = old->slots()[i].load(std::memory_order_relaxed)) place(t, e);
    }
    table_.store(t, std::memory_order_release);
    return t;
  }

  std::atomic<Table*> table_{nullptr};
  std::array<std::atomic<Slot*>, kSegments> segments_{};
  std::atomic<std::uint32_t> next_id_{kFirstInternedId};
  std::size_t used_ = 0;  // entries in the table; guarded by mutex_
  std::mutex mutex_;
};

// Constant-initialised, so Keys work in any static initialiser; its destructor is trivial
// (nothing is freed), so they work in any static destructor too.
constinit InternTable g_table;

}  // namespace

std::uint32_t detail::intern_key_hashed(const char* data, std::size_t size, std::uint64_t hash) {
  return g_table.find_or_insert(data, size, hash);
}

std::uint32_t detail::intern_key(std::string_view name) {
  return g_table.find_or_insert(name.data(), name.size(), key_hash(name.data(), name.size()));
}

std::uint32_t detail::intern_key_c_string(const char* name) {
  if (name == nullptr) throw std::invalid_argument("nodemeta::Key: null key name");
  return intern_key(std::string_view(name));
}

Key::Key(std::string_view name) : id_(detail::intern_key(name)) {}
Key::Key(const std::string& name) : id_(detail::intern_key(name)) {}

std::string_view Key::name() const noexcept { return g_table.name(id_); }

std::string_view detail::key_name(std::uint32_t id) noexcept { return g_table.name(id); }

std::size_t Key::interned_count() noexcept { return g_table.size(); }

std::optional<Key> Key::find(std::string_view name) noexcept {
  std::uint32_t id = g_table.find_only(name.data(), name.size(), detail::key_hash(name.data(), name.size()));
  if (id == 0) {
    // The table is created on the first intern: the predefined names exist before it.
    for (std::uint32_t i = 0; i < kPredefinedNames.size(); ++i) {
      if (kPredefinedNames[i] == name) id = i + 1;
    }
    if (id == 0) return std::nullopt;
  }
  return Key(static_cast<detail::PredefinedKey>(id));
}

std::vector<Key> default_protected_keys() {
  return {keys::val, keys::stack_trace, keys::nn_module_stack, keys::debug_handle, keys::tensor_meta};
}

}  // namespace nodemeta
