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

#include "nodemeta/detail/config.h"
#include "nodemeta/detail/protected_set.h"
#include "nodemeta/detail/record.h"
#include "nodemeta/export.h"
#include "nodemeta/key.h"
#include "nodemeta/node_metadata.h"
#include "nodemeta/value.h"

namespace nodemeta {

struct StoreOptions {
  // Keys no write may change once present. Default: the PyTorch original's five.
  std::vector<Key> protected_keys = default_protected_keys();
  // A hint: the number of nodes the store will hold (pre-sizes the hash map).
  std::size_t expected_nodes = 0;
};

// MetadataStore: the metadata of every node of one graph.
//
// Layout: one tbb::concurrent_hash_map from NodeId to the node's state: a 64-bit control
//   word (lock bit, write-window bit, version) and the node's slot array (16 bytes per
//   key), which starts inline in the map node's own block (with a spare slot: one
//   allocation per node built with at most 62 keys; a larger one's array is on the heap
//   from the start) and moves to the heap if the node outgrows it. The map owns every
//   node: creation and destruction are the map's concurrent insert and erase, and
//   node_count() is its size. A node never moves while it exists, so
//   its NodeMetadata handle keeps the node's address and reaches it without a hash lookup.
//   Reads take no lock and write no shared memory: they read the node optimistically and
//   validate its version (a seqlock), under epoch-based deferred reclamation of what
//   writers replace. Writes take the node's lock, look the key up, and publish their change
//   in a write window of a few stores. update()/edit() callbacks run with no lock held and
//   commit only if what they read is unchanged (they run again otherwise). A read that
//   keeps failing its validation takes the node's lock for one attempt. See docs/design.md
//   for the protocol, its argument and the measurements.
// fork(): a child may use the store: node locks held by the parent's other threads are
//   released in the child (pthread_atfork); a node one of them was writing inside its write
//   window at the fork may be torn, and every operation on it but its destruction throws
//   std::logic_error in the child (destroying it leaks its values). Creating or destroying
//   nodes in a child forked while another thread did either is not supported (the hash
//   map's own locks are not recovered).
//
// Thread safety: every member function is concurrent-safe, except construction and
//   destruction. The store is neither copyable nor movable (its nodes point at it).
// Protection: is_protected(k) only ever goes from false to true. After protect(k) returns,
//   no write to k succeeds on any node of this store, including writes already in flight:
//   a write re-checks protection inside its write window, which readers cannot see past
//   (docs/design.md has the argument).
// Lifetime: the store must outlive its nodes. Its destructor first releases retired values
//   (one may own a node of the store); if a node is still left it prints a message naming
//   the store and the count and calls std::abort(), in every build. Values that writes
//   replaced or erased are released later (see release_retired_values()), on whichever
//   thread next collects, never under a lock.
class NODEMETA_API MetadataStore {
 public:
  MetadataStore() : MetadataStore(StoreOptions{}) {}
  explicit MetadataStore(StoreOptions options);
  MetadataStore(const MetadataStore&) = delete;
  MetadataStore& operator=(const MetadataStore&) = delete;
  ~MetadataStore();

  // The store behind standalone NodeMetadata (default protected keys). Never destroyed.
  static MetadataStore& default_store();

  // A new node holding `items` (protected keys allowed). Throws std::invalid_argument
  // naming the key if a key repeats or is a zero-initialised Key, std::length_error past
  // detail::kMaxSlots keys. Allowed inside update()/edit() callbacks, as everything is.
  NodeMetadata create(std::initializer_list<KeyValue> items = {});
  NodeMetadata create(std::span<const KeyValue> items);

  // Protects `key` on every node of this store, from now on. Idempotent. An update()/edit()
  // of `key` whose callback is running when this returns fails as a whole.
  void protect(Key key);
  bool is_protected(Key key) const noexcept { return protection_.contains(key.id()); }
  // The protected keys' names, sorted.
  std::vector<std::string> protected_keys() const;

  // The number of live nodes. Exact whenever no node is being created or destroyed (a node
  // destroyed inside its own update()/edit() callback counts until that call returns).
  std::size_t node_count() const noexcept { return map_.size(); }

 private:
  friend class NodeMetadata;
  friend class NodeEditor;

  struct IdHashCompare {
    static std::size_t hash(NodeId id) noexcept { return static_cast<std::size_t>(id); }
    static bool equal(NodeId a, NodeId b) noexcept { return a == b; }
  };
  using Map = tbb::concurrent_hash_map<NodeId, detail::NodeState, IdHashCompare,
                                       detail::MapAllocator<NodeEntry>>;
  static_assert(std::is_same_v<Map::value_type, NodeEntry>);

  // Node operations, called by NodeMetadata with the node its handle owns.
  // A new node in the map, whose `size` slots `fill` writes (it must not throw) into an
  // array of `capacity` (> size) slots, inline in the node's block when it is small.
  NodeEntry* insert(std::uint32_t size, std::uint32_t capacity,
                    detail::FunctionRef<void(detail::Slot*)> fill);
  NodeEntry* clone(const NodeEntry& node) const;
  // Destroys the node: its values are released after it has left the map, outside every
  // lock (their destructors may use the store).
  // A node destroyed while update()/edit() calls run on it (on any thread: a callback's own
  // work destroyed it) is only marked; the last of those calls to return erases it.
  void remove(NodeEntry& node) noexcept;
  void erase_node(NodeEntry& node) noexcept;  // remove()'s work, once no call runs on it
  std::optional<Value> get(const NodeEntry& node, Key key) const;
  bool contains(const NodeEntry& node, Key key) const;
  std::size_t size(const NodeEntry& node) const;
  Items items(const NodeEntry& node) const;
  WriteResult write(NodeEntry& node, Key key, Value&& value);
  bool set_once(NodeEntry& node, Key key, Value&& value);
  bool erase(NodeEntry& node, Key key);
  Value update(NodeEntry& node, Key key, detail::FunctionRef<Value(std::optional<Value>)> fn);
  void edit(NodeEntry& node, detail::FunctionRef<void(NodeEditor&)> fn);

  // Rejects a zero-initialised Key (std::invalid_argument).
  static void check_writable(Key key);

  Map map_;
  std::atomic<NodeId> next_id_{1};
  std::mutex protect_mutex_;  // serialises protect(); never held with a node lock
  detail::ProtectedSet protection_;
};

// Releases now every value and slot array that completed writes of any thread (live
// threads, oneTBB workers, threads that have exited) replaced or erased before the call,
// after waiting for the reads in flight that might still be looking at them, and waits
// for other threads' collections that already took some of them out to finish destroying
// them: when it returns, every one of them has been destroyed. Returns how many this call
// released itself.
//
// Old values are otherwise released in batches, at the end of later writes on any thread,
// outside every lock: a value's destructor may read or write any node, including the one
// that held it. Call this when a destructor's effect must happen now (a test, a shutdown,
// before unloading a module that defines a value type). Allowed inside update()/edit()
// callbacks (they hold no lock, and the callback's thread is not reading); returns 0 at
// once when called from a value's destructor that a release is running; must not be called
// while a read on this thread is in flight (it is not: reads are not reentrant).
NODEMETA_API std::size_t release_retired_values();

}  // namespace nodemeta

#endif  // NODEMETA_METADATA_STORE_H_
