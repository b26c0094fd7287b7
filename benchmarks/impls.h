// benchmarks/impls.h: nodemeta and the six baselines behind one small interface, so every
// workload runs the same code against each of them.
//
// Every implementation stores nodemeta::Value (the same 16-byte value type), holds N nodes
// in one array, and offers:
//   using KeyT;                              the key a user prepares outside the hot loop
//   static KeyT key(const std::string&);
//   explicit Impl(std::size_t nodes);        an empty graph sized for `nodes`
//   void push(const Init& init);             appends the next node with its initial keys
//   void rebuild(std::size_t i, const Init&);replaces node i by a fresh one (untimed resets)
//   std::optional<Value> get(i, k);  bool contains(i, k);
//   void set(i, k, v);                        protected key -> std::runtime_error
//   bool try_set(i, k, v);                    false if rejected as protected
//   void increment(i, k);                     atomic read-modify-write (+1, or 1 if absent)
// and, for the string-key rows (W1s, W1os), the same calls with the key written as a string
// literal at the call site, as a user writes it (no key prepared outside the loop):
//   std::optional<Value> get_str(i, std::string_view);  void set_str(i, std::string_view, v);
// Each builds its lookup from the literal on every call, the way that container allows: (d)
// and (f) look up a string_view (heterogeneous lookup; a new key is copied into a
// std::string on insertion), (a), (b), (c), (e) build a std::string key per call (their
// std::string-keyed containers have no heterogeneous lookup). nodemeta has no such wrapper:
// the benchmark calls the NodeMetadata handle itself (node(i)) with the literal, so whatever
// overload the library offers for a literal is the one that is measured.
//
// The baselines are what a user writes by hand instead of nodemeta: keyed by std::string
// (keys built once, outside the loops, like the benchmark's nodemeta::Key objects), with the
// original's protection check written the cheapest obvious way: compare against the five
// protected names before touching the map, and throw std::runtime_error with the original's
// message. They are generous: nodes sit in one contiguous array, reads take shared locks
// where the lock type has them, and each map is pre-sized for a node's handful of keys
// where the container takes a size.
#ifndef NODEMETA_BENCHMARKS_IMPLS_H_
#define NODEMETA_BENCHMARKS_IMPLS_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <shared_mutex>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <absl/container/flat_hash_map.h>
#include <absl/strings/string_view.h>
#include <absl/synchronization/mutex.h>
#include <libcuckoo/cuckoohash_map.hh>
#include <oneapi/tbb/concurrent_hash_map.h>

#include <nodemeta/nodemeta.h>

namespace nmbench {

using nodemeta::Value;

// A node's initial keys: up to 8 (name, value) pairs, on the stack (no heap traffic, so
// the memory benchmark's RSS growth is the containers' alone).
struct Init {
  std::array<std::pair<std::string, Value>, 8> items;
  std::size_t count = 0;
  void add(std::string name, Value v) { items[count++] = {std::move(name), std::move(v)}; }
};

inline const std::array<std::string, 5>& protected_names() {
  static const std::array<std::string, 5> names = {"val", "stack_trace", "nn_module_stack",
                                                   "debug_handle", "tensor_meta"};
  return names;
}
// The user's protection check: five std::string compares (a length mismatch ends most).
inline bool is_protected_name(const std::string& key) noexcept {
  for (const std::string& p : protected_names()) {
    if (key == p) return true;
  }
  return false;
}
inline bool is_protected_name(std::string_view key) noexcept {
  for (const std::string& p : protected_names()) {
    if (key == p) return true;
  }
  return false;
}
[[noreturn]] inline void throw_protected(std::string_view key) {
  throw std::runtime_error("Could not override node key: " + std::string(key));
}
inline Value incremented(const Value* old) {
  return Value(old != nullptr ? old->as<std::int64_t>() + 1 : std::int64_t{1});
}

// --- nodemeta --------------------------------------------------------------------------
class Nodemeta {
 public:
  static constexpr std::string_view kName = "nodemeta";
  using KeyT = nodemeta::Key;
  static KeyT key(const std::string& s) { return nodemeta::Key(s); }

  explicit Nodemeta(std::size_t nodes, bool size_hint = false)
      : store_(options(size_hint ? nodes : 0)) {
    nodes_.reserve(nodes);
  }
  void push(const Init& init) { nodes_.push_back(create(init)); }
  void rebuild(std::size_t i, const Init& init) { nodes_[i] = create(init); }

  std::optional<Value> get(std::size_t i, KeyT k) const { return nodes_[i].get(k); }
  bool contains(std::size_t i, KeyT k) const { return nodes_[i].contains(k); }
  void set(std::size_t i, KeyT k, Value v) { nodes_[i].set(k, std::move(v)); }
  bool try_set(std::size_t i, KeyT k, Value v) {
    return nodes_[i].try_set(k, std::move(v)) != nodemeta::WriteResult::kRejectedProtected;
  }
  void increment(std::size_t i, KeyT k) {
    nodes_[i].update(k, [](std::optional<Value> old) {
      return incremented(old ? &*old : nullptr);
    });
  }
  // The handle itself, for rows that call the public API directly (string-literal keys).
  nodemeta::NodeMetadata& node(std::size_t i) { return nodes_[i]; }

 private:
  static nodemeta::StoreOptions options(std::size_t expected) {
    nodemeta::StoreOptions o;
    o.expected_nodes = expected;
    return o;
  }
  nodemeta::NodeMetadata create(const Init& init) {
    // KeyValue has no default constructor: build the pairs in raw stack storage.
    alignas(nodemeta::KeyValue) std::byte buf[8 * sizeof(nodemeta::KeyValue)];
    auto* kv = reinterpret_cast<nodemeta::KeyValue*>(buf);
    for (std::size_t j = 0; j < init.count; ++j) {
      new (kv + j) nodemeta::KeyValue(nodemeta::Key(init.items[j].first), init.items[j].second);
    }
    nodemeta::NodeMetadata node = store_.create(std::span<const nodemeta::KeyValue>(kv, init.count));
    for (std::size_t j = 0; j < init.count; ++j) std::destroy_at(kv + j);
    return node;
  }

  nodemeta::MetadataStore store_;  // declared first: outlives the handles
  std::vector<nodemeta::NodeMetadata> nodes_;
};

// nodemeta with StoreOptions::expected_nodes set (memory benchmark only).
class NodemetaSized : public Nodemeta {
 public:
  static constexpr std::string_view kName = "nodemeta_sized";
  explicit NodemetaSized(std::size_t nodes) : Nodemeta(nodes, true) {}
};

// Shared plumbing of the per-node baselines: an array of Node, rebuilt in place.
template <class Node>
class PerNodeArray {
 public:
  explicit PerNodeArray(std::size_t nodes) : nodes_(new Node[nodes]) {}
  Node& operator[](std::size_t i) const { return nodes_[i]; }
  std::size_t next_ = 0;
  void renew(std::size_t i) {
    nodes_[i].~Node();
    new (&nodes_[i]) Node();
  }

 private:
  std::unique_ptr<Node[]> nodes_;
};

// --- (a) one tbb::concurrent_hash_map<std::string, Value> per node ------------------------
class TbbPerNode {
 public:
  static constexpr std::string_view kName = "a_tbb_per_node";
  using KeyT = std::string;
  static KeyT key(const std::string& s) { return s; }
  using Map = tbb::concurrent_hash_map<std::string, Value>;

  explicit TbbPerNode(std::size_t nodes) : nodes_(nodes) {}
  void push(const Init& init) { fill(nodes_.next_++, init); }
  void rebuild(std::size_t i, const Init& init) {
    nodes_.renew(i);
    fill(i, init);
  }
  std::optional<Value> get(std::size_t i, const KeyT& k) const {
    Map::const_accessor acc;
    if (!nodes_[i].find(acc, k)) return std::nullopt;
    return acc->second;
  }
  bool contains(std::size_t i, const KeyT& k) const { return nodes_[i].count(k) != 0; }
  void set(std::size_t i, const KeyT& k, Value v) {
    if (is_protected_name(k)) throw_protected(k);
    Map::accessor acc;
    nodes_[i].insert(acc, k);
    acc->second = std::move(v);
  }
  bool try_set(std::size_t i, const KeyT& k, Value v) {
    if (is_protected_name(k)) return false;
    Map::accessor acc;
    nodes_[i].insert(acc, k);
    acc->second = std::move(v);
    return true;
  }
  void increment(std::size_t i, const KeyT& k) {
    Map::accessor acc;
    const bool fresh = nodes_[i].insert(acc, k);
    acc->second = incremented(fresh ? nullptr : &acc->second);
  }
  // No heterogeneous lookup in the default HashCompare: a std::string per call.
  std::optional<Value> get_str(std::size_t i, std::string_view k) const {
    return get(i, std::string(k));
  }
  void set_str(std::size_t i, std::string_view k, Value v) { set(i, std::string(k), std::move(v)); }

 private:
  void fill(std::size_t i, const Init& init) {
    for (std::size_t j = 0; j < init.count; ++j) nodes_[i].insert(init.items[j]);
  }
  PerNodeArray<Map> nodes_;
};

// --- (b), (c) std::unordered_map + std::mutex / std::shared_mutex per node -----------------
template <class MutexT, bool kShared>
class LockedUnorderedMap {
 public:
  using KeyT = std::string;
  static KeyT key(const std::string& s) { return s; }

  explicit LockedUnorderedMap(std::size_t nodes) : nodes_(nodes) {}
  void push(const Init& init) { fill(nodes_.next_++, init); }
  void rebuild(std::size_t i, const Init& init) {
    nodes_.renew(i);
    fill(i, init);
  }
  std::optional<Value> get(std::size_t i, const KeyT& k) const {
    Node& n = nodes_[i];
    ReadLock lock(n.mutex);
    auto it = n.map.find(k);
    if (it == n.map.end()) return std::nullopt;
    return it->second;
  }
  bool contains(std::size_t i, const KeyT& k) const {
    Node& n = nodes_[i];
    ReadLock lock(n.mutex);
    return n.map.contains(k);
  }
  void set(std::size_t i, const KeyT& k, Value v) {
    if (is_protected_name(k)) throw_protected(k);
    Node& n = nodes_[i];
    std::lock_guard<MutexT> lock(n.mutex);
    n.map.insert_or_assign(k, std::move(v));
  }
  bool try_set(std::size_t i, const KeyT& k, Value v) {
    if (is_protected_name(k)) return false;
    Node& n = nodes_[i];
    std::lock_guard<MutexT> lock(n.mutex);
    n.map.insert_or_assign(k, std::move(v));
    return true;
  }
  void increment(std::size_t i, const KeyT& k) {
    Node& n = nodes_[i];
    std::lock_guard<MutexT> lock(n.mutex);
    auto [it, fresh] = n.map.try_emplace(k);
    it->second = incremented(fresh ? nullptr : &it->second);
  }
  // std::hash<std::string> is not transparent: a std::string per call.
  std::optional<Value> get_str(std::size_t i, std::string_view k) const {
    return get(i, std::string(k));
  }
  void set_str(std::size_t i, std::string_view k, Value v) { set(i, std::string(k), std::move(v)); }

 private:
  using ReadLock = std::conditional_t<kShared, std::shared_lock<MutexT>, std::lock_guard<MutexT>>;
  struct Node {
    MutexT mutex;
    std::unordered_map<std::string, Value> map;
  };
  void fill(std::size_t i, const Init& init) {
    Node& n = nodes_[i];
    n.map.reserve(init.count);
    for (std::size_t j = 0; j < init.count; ++j) n.map.insert(init.items[j]);
  }
  PerNodeArray<Node> nodes_;
};
class StdMutexMap : public LockedUnorderedMap<std::mutex, false> {
 public:
  static constexpr std::string_view kName = "b_unordered_mutex";
  using LockedUnorderedMap::LockedUnorderedMap;
};
class StdSharedMutexMap : public LockedUnorderedMap<std::shared_mutex, true> {
 public:
  static constexpr std::string_view kName = "c_unordered_shared_mutex";
  using LockedUnorderedMap::LockedUnorderedMap;
};

// --- (d) absl::flat_hash_map + absl::Mutex per node ---------------------------------------
// Debian's libabsl turns on absl::Mutex deadlock detection by default (~20x slower); the
// benchmark mains call absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore)
// as a user who cares about speed would.
class AbslMap {
 public:
  static constexpr std::string_view kName = "d_absl_flat_mutex";
  using KeyT = std::string;
  static KeyT key(const std::string& s) { return s; }

  explicit AbslMap(std::size_t nodes) : nodes_(nodes) {}
  void push(const Init& init) { fill(nodes_.next_++, init); }
  void rebuild(std::size_t i, const Init& init) {
    nodes_.renew(i);
    fill(i, init);
  }
  std::optional<Value> get(std::size_t i, const KeyT& k) const {
    Node& n = nodes_[i];
    absl::ReaderMutexLock lock(&n.mutex);
    auto it = n.map.find(k);
    if (it == n.map.end()) return std::nullopt;
    return it->second;
  }
  bool contains(std::size_t i, const KeyT& k) const {
    Node& n = nodes_[i];
    absl::ReaderMutexLock lock(&n.mutex);
    return n.map.contains(k);
  }
  void set(std::size_t i, const KeyT& k, Value v) {
    if (is_protected_name(k)) throw_protected(k);
    Node& n = nodes_[i];
    absl::MutexLock lock(&n.mutex);
    n.map.insert_or_assign(k, std::move(v));
  }
  bool try_set(std::size_t i, const KeyT& k, Value v) {
    if (is_protected_name(k)) return false;
    Node& n = nodes_[i];
    absl::MutexLock lock(&n.mutex);
    n.map.insert_or_assign(k, std::move(v));
    return true;
  }
  void increment(std::size_t i, const KeyT& k) {
    Node& n = nodes_[i];
    absl::MutexLock lock(&n.mutex);
    auto [it, fresh] = n.map.try_emplace(k);
    it->second = incremented(fresh ? nullptr : &it->second);
  }
  // Heterogeneous lookup (absl's string hash is transparent): the literal is hashed and
  // compared as a string_view; insert_or_assign copies it into a std::string only when it
  // inserts. Debian's Abseil has its own absl::string_view (not std::string_view).
  std::optional<Value> get_str(std::size_t i, std::string_view k) const {
    Node& n = nodes_[i];
    absl::ReaderMutexLock lock(&n.mutex);
    auto it = n.map.find(absl::string_view(k.data(), k.size()));
    if (it == n.map.end()) return std::nullopt;
    return it->second;
  }
  void set_str(std::size_t i, std::string_view k, Value v) {
    if (is_protected_name(k)) throw_protected(k);
    Node& n = nodes_[i];
    absl::MutexLock lock(&n.mutex);
    n.map.insert_or_assign(absl::string_view(k.data(), k.size()), std::move(v));
  }

 private:
  struct Node {
    absl::Mutex mutex;
    absl::flat_hash_map<std::string, Value> map;
  };
  void fill(std::size_t i, const Init& init) {
    Node& n = nodes_[i];
    n.map.reserve(init.count);
    for (std::size_t j = 0; j < init.count; ++j) n.map.insert(init.items[j]);
  }
  PerNodeArray<Node> nodes_;
};

// --- (e) libcuckoo cuckoohash_map per node ------------------------------------------------
class CuckooMap {
 public:
  static constexpr std::string_view kName = "e_libcuckoo";
  using KeyT = std::string;
  static KeyT key(const std::string& s) { return s; }
  // libcuckoo's default capacity is 262,144 slots; a user sizes a node's map for ~8 keys.
  struct Node : libcuckoo::cuckoohash_map<std::string, Value> {
    Node() : libcuckoo::cuckoohash_map<std::string, Value>(8) {}
  };

  explicit CuckooMap(std::size_t nodes) : nodes_(nodes) {}
  void push(const Init& init) { fill(nodes_.next_++, init); }
  void rebuild(std::size_t i, const Init& init) {
    nodes_.renew(i);
    fill(i, init);
  }
  std::optional<Value> get(std::size_t i, const KeyT& k) const {
    std::optional<Value> out;
    nodes_[i].find_fn(k, [&out](const Value& v) { out = v; });
    return out;
  }
  bool contains(std::size_t i, const KeyT& k) const { return nodes_[i].contains(k); }
  void set(std::size_t i, const KeyT& k, Value v) {
    if (is_protected_name(k)) throw_protected(k);
    nodes_[i].insert_or_assign(k, std::move(v));
  }
  bool try_set(std::size_t i, const KeyT& k, Value v) {
    if (is_protected_name(k)) return false;
    nodes_[i].insert_or_assign(k, std::move(v));
    return true;
  }
  void increment(std::size_t i, const KeyT& k) {
    nodes_[i].upsert(k, [](Value& v) { v = incremented(&v); }, Value(std::int64_t{1}));
  }
  // std::hash<std::string> is not transparent: a std::string per call.
  std::optional<Value> get_str(std::size_t i, std::string_view k) const {
    return get(i, std::string(k));
  }
  void set_str(std::size_t i, std::string_view k, Value v) { set(i, std::string(k), std::move(v)); }

 private:
  void fill(std::size_t i, const Init& init) {
    for (std::size_t j = 0; j < init.count; ++j) {
      nodes_[i].insert(init.items[j].first, init.items[j].second);
    }
  }
  PerNodeArray<Node> nodes_;
};

// --- (f) one graph-wide tbb::concurrent_hash_map keyed by (node, key) ----------------------
// Transparent lookups (a (node, string_view) probe) so reads never copy the key string.
class TbbGraphWide {
 public:
  static constexpr std::string_view kName = "f_tbb_graph_wide";
  using KeyT = std::string;
  static KeyT key(const std::string& s) { return s; }

  struct SlotKey {
    std::uint64_t node;
    std::string key;
  };
  struct SlotView {
    std::uint64_t node;
    std::string_view key;
  };
  struct HashCompare {
    using is_transparent = void;
    static std::size_t mix(std::uint64_t node, std::string_view key) noexcept {
      return std::hash<std::string_view>{}(key) ^ (node * 0x9E3779B97F4A7C15ULL);
    }
    std::size_t hash(const SlotKey& k) const noexcept { return mix(k.node, k.key); }
    std::size_t hash(const SlotView& k) const noexcept { return mix(k.node, k.key); }
    bool equal(const SlotKey& a, const SlotKey& b) const noexcept {
      return a.node == b.node && a.key == b.key;
    }
    bool equal(const SlotKey& a, const SlotView& b) const noexcept {
      return a.node == b.node && a.key == b.key;
    }
    bool equal(const SlotView& a, const SlotKey& b) const noexcept {
      return a.node == b.node && a.key == b.key;
    }
  };
  using Map = tbb::concurrent_hash_map<SlotKey, Value, HashCompare>;

  explicit TbbGraphWide(std::size_t /*nodes*/) {}
  void push(const Init& init) { fill(next_++, init); }
  void rebuild(std::size_t i, const Init& init) {
    for (std::size_t j = 0; j < init.count; ++j) map_.erase(SlotView{i, init.items[j].first});
    // A fresh node has no keys beyond its initial ones: drop what the workload added.
    for (const std::string& extra : extra_keys_) map_.erase(SlotView{i, extra});
    fill(i, init);
  }
  // Keys a workload may add beyond a node's initial ones (so rebuild() can drop them).
  void note_extra_key(const std::string& k) { extra_keys_.push_back(k); }

  std::optional<Value> get(std::size_t i, const KeyT& k) const {
    Map::const_accessor acc;
    if (!map_.find(acc, SlotView{i, k})) return std::nullopt;
    return acc->second;
  }
  bool contains(std::size_t i, const KeyT& k) const {
    Map::const_accessor acc;
    return map_.find(acc, SlotView{i, k});
  }
  void set(std::size_t i, const KeyT& k, Value v) {
    if (is_protected_name(k)) throw_protected(k);
    write(i, k, std::move(v));
  }
  bool try_set(std::size_t i, const KeyT& k, Value v) {
    if (is_protected_name(k)) return false;
    write(i, k, std::move(v));
    return true;
  }
  void increment(std::size_t i, const KeyT& k) {
    Map::accessor acc;
    if (!map_.find(acc, SlotView{i, k}) && map_.insert(acc, SlotKey{i, k})) {
      acc->second = incremented(nullptr);
      return;
    }
    acc->second = incremented(&acc->second);
  }
  // Already transparent: the literal is looked up as a (node, string_view) probe.
  std::optional<Value> get_str(std::size_t i, std::string_view k) const {
    Map::const_accessor acc;
    if (!map_.find(acc, SlotView{i, k})) return std::nullopt;
    return acc->second;
  }
  void set_str(std::size_t i, std::string_view k, Value v) {
    if (is_protected_name(k)) throw_protected(k);
    write(i, k, std::move(v));
  }

 private:
  void write(std::size_t i, std::string_view k, Value v) {
    Map::accessor acc;
    if (!map_.find(acc, SlotView{i, k})) map_.insert(acc, SlotKey{i, std::string(k)});
    acc->second = std::move(v);
  }
  void fill(std::size_t i, const Init& init) {
    for (std::size_t j = 0; j < init.count; ++j) {
      map_.insert({SlotKey{i, init.items[j].first}, init.items[j].second});
    }
  }
  mutable Map map_;  // oneTBB's transparent find() overloads are non-const
  std::size_t next_ = 0;
  std::vector<std::string> extra_keys_;
};

// Runs fn.template operator()<Impl>() for nodemeta and each baseline, in table order.
template <class F>
void for_each_impl(F&& fn) {
  fn.template operator()<Nodemeta>();
  fn.template operator()<TbbPerNode>();
  fn.template operator()<StdMutexMap>();
  fn.template operator()<StdSharedMutexMap>();
  fn.template operator()<AbslMap>();
  fn.template operator()<CuckooMap>();
  fn.template operator()<TbbGraphWide>();
}

}  // namespace nmbench

#endif  // NODEMETA_BENCHMARKS_IMPLS_H_
