// src/graph/interner.h: values shared by content (hash-consing) while one document is built.
// Private to nodemeta_graph; used by builder.cpp.
#ifndef NODEMETA_SRC_GRAPH_INTERNER_H_
#define NODEMETA_SRC_GRAPH_INTERNER_H_

#include <bit>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "nodemeta/key.h"
#include "nodemeta/value.h"

namespace nodemeta::graph::io {

// Hash-consing: every string, list and dict the loader builds goes through one table, so
// equal ones share one immutable box. Children are shared before their parent, so a
// parent's equality and hash only look at its children's identities (box addresses).
// A value being built: a shared (interned) box by reference, or an inline scalar. Passing
// references instead of Values spares an atomic reference-count update per element.
struct Item {
  const Value* shared = nullptr;
  Value scalar;
  const Value& get() const noexcept { return shared != nullptr ? *shared : scalar; }
};

class SharedInterner;

class Interner {
 public:
  Interner() : slots_(1024) {}
  // A table in front of `shared`, which other threads' Interners use at once: a value new to
  // this table is looked up (or added) there, under its shard's lock, and remembered here,
  // so equal values in different parts of a document loaded in parallel share one box and
  // a value seen again in the same part takes no lock.
  explicit Interner(SharedInterner& shared) : slots_(1024), shared_(&shared) {}

  const Value& string(std::string_view s) {
    const std::uint64_t h = string_hash(s);
    return find_or_add(h, [&](const Value& v) {
      const std::string* p = v.get_if<std::string>();
      return p != nullptr && *p == s;
    }, [&] { return Value(std::string(s)); });
  }

  // The shared list of `items`; builds one only if no equal list was seen before.
  const Value& list(std::span<const Item> items) {
    std::uint64_t h = mix(0x11, items.size());
    for (const Item& v : items) h = mix(h, identity(v.get()));
    return find_or_add(h, [&](const Value& v) {
      const Value::List* p = v.get_if<Value::List>();
      if (p == nullptr || p->size() != items.size()) return false;
      for (std::size_t i = 0; i < items.size(); ++i) {
        if (!same((*p)[i], items[i].get())) return false;
      }
      return true;
    }, [&] {
      Value::List l;
      l.reserve(items.size());
      for (const Item& v : items) l.push_back(v.get());
      return Value::list(std::move(l));
    });
  }

  // The shared dict of `items` (keys unique, in order); builds one only if it is new.
  const Value& dict(std::span<const std::pair<std::string_view, Item>> items) {
    std::uint64_t h = mix(0x22, items.size());
    for (const auto& [k, v] : items) {
      h = mix(mix(h, nodemeta::detail::key_hash(k.data(), k.size())), identity(v.get()));
    }
    return find_or_add(h, [&](const Value& v) {
      const Value::Dict* p = v.get_if<Value::Dict>();
      if (p == nullptr || p->size() != items.size()) return false;
      for (std::size_t i = 0; i < items.size(); ++i) {
        if ((*p)[i].first != items[i].first || !same((*p)[i].second, items[i].second.get())) return false;
      }
      return true;
    }, [&] {
      Value::Dict d;
      d.reserve(items.size());
      for (const auto& [k, v] : items) d.emplace_back(std::string(k), v.get());
      return Value::dict(std::move(d));
    });
  }

 private:
  friend class SharedInterner;

  struct Slot {
    std::uint64_t hash = 0;
    const Value* value = nullptr;  // into pool_ (or the SharedInterner's); null: empty
  };

  static std::uint64_t mix(std::uint64_t a, std::uint64_t b) noexcept {
    return nodemeta::detail::key_hash_mix(a ^ 0x2d358dccaa6c78a5ull, b ^ 0x8bb84b93962eacc9ull);
  }

  // What identifies a Value among the shared ones: its scalar bits, or its box's address.
  static std::uint64_t identity(const Value& v) noexcept {
    switch (v.kind()) {
      case Value::Kind::kNone: return 0x9e37;
      case Value::Kind::kBool: return v.as<bool>() ? 0x7f4a : 0x6c8e;
      case Value::Kind::kInt: return static_cast<std::uint64_t>(v.as<std::int64_t>()) * 3 + 1;
      case Value::Kind::kDouble: return std::bit_cast<std::uint64_t>(v.as<double>()) * 5 + 2;
      case Value::Kind::kString: return reinterpret_cast<std::uintptr_t>(v.get_if<std::string>());
      case Value::Kind::kList: return reinterpret_cast<std::uintptr_t>(v.get_if<Value::List>());
      case Value::Kind::kDict: return reinterpret_cast<std::uintptr_t>(v.get_if<Value::Dict>());
      case Value::Kind::kObject: break;
    }
    return 0;
  }
  static bool same(const Value& a, const Value& b) noexcept {
    if (a.kind() != b.kind()) return false;
    if (a.kind() == Value::Kind::kDouble) {
      return std::bit_cast<std::uint64_t>(a.as<double>()) == std::bit_cast<std::uint64_t>(b.as<double>());
    }
    return identity(a) == identity(b);
  }

  // A long string is hashed from its length and 16 samples of 16 bytes (its ends and 14
  // evenly spaced places): hashing every byte of every stack trace cost more than parsing
  // them. Equal hashes are confirmed by comparing the whole strings.
  static std::uint64_t string_hash(std::string_view s) noexcept {
    constexpr std::size_t kWhole = 512;
    if (s.size() <= kWhole) return nodemeta::detail::key_hash(s.data(), s.size()) ^ 0x5a17;
    std::uint64_t h = mix(0x33, s.size());
    const std::size_t step = (s.size() - 16) / 15;
    for (std::size_t k = 0; k < 16; ++k) {
      const char* p = s.data() + (k == 15 ? s.size() - 16 : k * step);
      h = mix(h, nodemeta::detail::key_hash(p, 16));
    }
    return h;
  }

  template <class Eq, class Make>
  const Value& find_or_add(std::uint64_t h, Eq&& eq, Make&& make) {
    const std::size_t mask = slots_.size() - 1;
    std::size_t i = static_cast<std::size_t>(h) & mask;
    int compared = 0;
    for (;; i = (i + 1) & mask) {
      Slot& s = slots_[i];
      if (s.value == nullptr) break;
      if (s.hash == h) {
        if (eq(*s.value)) return *s.value;
        // Many different values with one hash (sampled strings built to collide): stop
        // sharing this one rather than compare against all of them.
        if (++compared == kMaxCompares) return pool_.emplace_back(make());
      }
    }
    const Value& v = shared_ != nullptr ? shared_find_or_add(h, eq, make) : pool_.emplace_back(make());
    slots_[i] = Slot{h, &v};
    if (++used_ * 2 > slots_.size()) grow();
    return v;
  }
  void grow() {
    std::vector<Slot> old(slots_.size() * 2);
    old.swap(slots_);
    const std::size_t mask = slots_.size() - 1;
    for (const Slot& s : old) {
      if (s.value == nullptr) continue;
      std::size_t i = static_cast<std::size_t>(s.hash) & mask;
      while (slots_[i].value != nullptr) i = (i + 1) & mask;
      slots_[i] = s;
    }
  }

  template <class Eq, class Make>
  const Value& shared_find_or_add(std::uint64_t h, Eq& eq, Make& make);

  static constexpr int kMaxCompares = 4;
  std::deque<Value> pool_;  // every shared value, at a stable address
  std::vector<Slot> slots_;
  std::size_t used_ = 0;
  SharedInterner* shared_ = nullptr;
};

// The table several Interners share (one per part of a document built in parallel): shards
// chosen by the hash's top bits, each a plain Interner under its own mutex. A value is built
// and added under its shard's lock, and never changes after, so a pointer to it taken under
// the lock may be read (and compared) by any thread afterwards.
class SharedInterner {
 public:
  template <class Eq, class Make>
  const Value& find_or_add(std::uint64_t h, Eq& eq, Make& make) {
    Shard& s = shards_[static_cast<std::size_t>(h >> (64 - kShardBits))];
    const std::lock_guard<std::mutex> lock(s.mutex);
    return s.table.find_or_add(h, eq, make);
  }

 private:
  static constexpr int kShardBits = 4;
  struct Shard {
    std::mutex mutex;
    Interner table;
  };
  std::unique_ptr<Shard[]> shards_ = std::make_unique<Shard[]>(std::size_t{1} << kShardBits);
};

template <class Eq, class Make>
const Value& Interner::shared_find_or_add(std::uint64_t h, Eq& eq, Make& make) {
  return shared_->find_or_add(h, eq, make);
}

}  // namespace nodemeta::graph::io

#endif  // NODEMETA_SRC_GRAPH_INTERNER_H_
