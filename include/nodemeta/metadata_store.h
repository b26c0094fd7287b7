// nodemeta/metadata_store.h: MetadataStore, the metadata of one graph's nodes, held in one
// tbb::concurrent_hash_map.
#ifndef NODEMETA_METADATA_STORE_H_
#define NODEMETA_METADATA_STORE_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include <oneapi/tbb/concurrent_hash_map.h>
#include <oneapi/tbb/spin_mutex.h>

#include "nodemeta/detail/config.h"
#include "nodemeta/detail/protected_set.h"
#include "nodemeta/detail/record.h"
#include "nodemeta/key.h"
#include "nodemeta/node_metadata.h"
#include "nodemeta/value.h"

namespace nodemeta {

namespace detail {
// One node as the store's map holds it: its lock and its record (24 bytes).
struct NodeState {
  mutable tbb::spin_mutex mutex;
  Record record;
};
}  // namespace detail

struct StoreOptions {
  // Keys no write may change once present. Default: the PyTorch original's five.
  std::vector<Key> protected_keys = default_protected_keys();
  // A hint: the number of nodes the store will hold (pre-sizes the hash map).
  std::size_t expected_nodes = 0;
};

// MetadataStore: the metadata of every node of one graph.
//
// Layout: one tbb::concurrent_hash_map from NodeId to the node's state: a tbb::spin_mutex
//   and a 16-byte record pointing at the node's slots (16 bytes per key). The map owns
//   every node: creation and destruction are the map's concurrent insert and erase, and
//   node_count() is its size. A node never moves while it exists, so its NodeMetadata
//   handle keeps the node's address and reaches it without a hash lookup; every per-node
//   operation holds the node's lock for its whole duration (a few dozen instructions for
//   reads and single-key writes), which is what makes protection checks, update(), edit()
//   and snapshots atomic. No lock or reference ever leaves the library. See docs/design.md
//   for the measurements behind the layout.
//
// Thread safety: every member function is concurrent-safe, except construction and
//   destruction. The store is neither copyable nor movable (its nodes point at it).
// Protection: is_protected(k) only ever goes from false to true. After protect(k) returns,
//   no write to k succeeds on any node of this store, including writes already in flight:
//   a node write checks protection while holding the node's lock, so a write that raced
//   protect() either completed before any later reader of that node can look, or is
//   rejected.
// Lifetime: the store must outlive its nodes; debug builds assert that no node is left
//   when it is destroyed.
class MetadataStore {
 public:
  MetadataStore() : MetadataStore(StoreOptions{}) {}
  explicit MetadataStore(StoreOptions options);
  MetadataStore(const MetadataStore&) = delete;
  MetadataStore& operator=(const MetadataStore&) = delete;
  ~MetadataStore();

  // The store behind standalone NodeMetadata (default protected keys). Never destroyed.
  static MetadataStore& default_store();

  // A new node holding `items` (protected keys allowed). Throws std::invalid_argument
  // naming the key if a key repeats, and ReentrancyError inside this store's callbacks.
  NodeMetadata create(std::initializer_list<KeyValue> items = {});
  NodeMetadata create(std::span<const KeyValue> items);

  // Protects `key` on every node of this store, from now on. Idempotent.
  void protect(Key key);
  bool is_protected(Key key) const noexcept { return protection()->contains(key.id()); }
  // The protected keys' names, sorted.
  std::vector<std::string> protected_keys() const;

  // The number of live nodes. Exact whenever no node is being created or destroyed.
  std::size_t node_count() const noexcept { return map_.size(); }

 private:
  friend class NodeMetadata;
  friend class NodeEditor;

  struct IdHashCompare {
    static std::size_t hash(NodeId id) noexcept { return static_cast<std::size_t>(id); }
    static bool equal(NodeId a, NodeId b) noexcept { return a == b; }
  };
  using Map = tbb::concurrent_hash_map<NodeId, detail::NodeState, IdHashCompare,
                                       detail::Allocator<NodeEntry>>;
  static_assert(std::is_same_v<Map::value_type, NodeEntry>);

  // Node operations, called by NodeMetadata with the node its handle owns.
  NodeEntry* insert(detail::Record record);
  NodeEntry* clone(const NodeEntry& node) const;
  void remove(NodeId id) noexcept;
  std::optional<Value> get(const NodeEntry& node, Key key) const;
  bool contains(const NodeEntry& node, Key key) const;
  std::size_t size(const NodeEntry& node) const;
  Items items(const NodeEntry& node) const;
  WriteResult write(NodeEntry& node, Key key, Value&& value);
  bool set_once(NodeEntry& node, Key key, Value&& value);
  bool erase(NodeEntry& node, Key key);
  Value update(NodeEntry& node, Key key, detail::FunctionRef<Value(std::optional<Value>)> fn);
  void edit(NodeEntry& node, detail::FunctionRef<void(NodeEditor&)> fn);

  void check_not_in_callback() const;
  // The current protected set: one seq_cst load (a plain load on x86-64). protect()'s
  // seq_cst store of a new set is its linearization point.
  const detail::ProtectedSet* protection() const noexcept {
    return protection_.load(std::memory_order_seq_cst);
  }

  Map map_;
  std::atomic<NodeId> next_id_{1};
  // The protected set, replaced whole by protect(); every version is kept until the store
  // dies, so a reader never sees freed memory.
  std::atomic<const detail::ProtectedSet*> protection_{nullptr};
  std::mutex protect_mutex_;  // serialises protect(); never held with a node lock
  std::vector<std::unique_ptr<const detail::ProtectedSet>> protection_versions_;
};

}  // namespace nodemeta

#endif  // NODEMETA_METADATA_STORE_H_
