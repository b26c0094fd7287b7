// nodemeta/node_metadata.h: NodeMetadata, the metadata of one graph node, and NodeEditor,
// the view an atomic multi-key edit works through.
//
// Vocabulary (used by every comment in nodemeta):
//   concurrent-safe: may run at the same time as any other concurrent-safe call, from any
//                    thread, on the same object, with no external locking.
//   not concurrent-safe: the caller must make sure no other call on the same object runs
//                    at the same time (construction, destruction, move, assignment).
#ifndef NODEMETA_NODE_METADATA_H_
#define NODEMETA_NODE_METADATA_H_

#include <concepts>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "nodemeta/detail/function_ref.h"
#include "nodemeta/detail/record.h"
#include "nodemeta/errors.h"
#include "nodemeta/export.h"
#include "nodemeta/key.h"
#include "nodemeta/value.h"

namespace nodemeta {

class MetadataStore;
class NodeEditor;

// A node's identity within its MetadataStore; never reused by that store.
using NodeId = std::uint64_t;

namespace detail {
struct NodeState;
struct JournalAccess;  // the passes' journal's access (detail/journal_access.h)
}  // namespace detail
// A node as its store's map holds it (the map's value_type).
using NodeEntry = std::pair<const NodeId, detail::NodeState>;
// One key and its value, as given to a node when it is built.
using KeyValue = std::pair<Key, Value>;
// A snapshot of a node: (name, value) pairs sorted by name.
using Items = std::vector<std::pair<std::string, Value>>;

// NodeMetadata: an owning handle to one node's metadata, held in a MetadataStore.
//
// Thread safety: every member function is concurrent-safe, except construction,
//   destruction, move and assignment of the handle itself. Each single-key operation
//   (get, operator[], contains, set, try_set, set_once, erase, update) is linearizable;
//   size(), items(), copy() and edit() are atomic with respect to the whole node: they
//   never observe (or leave) a half-applied edit().
// Reads (get, at, operator[], contains, size, items, copy) take no lock and write no
//   shared memory: they never wait for each other, nor for a writer's callback, only (for
//   a few instructions) for a write being published. A read that a hot writer of the same
//   node keeps invalidating (a large node copied while another thread writes it back to
//   back) takes the node's lock for one attempt after a few, so it always ends; writers
//   never hold that lock across user code. Copying a boxed value out (a string, list,
//   dict or user object) increments the box's shared reference count.
// Protection: keys the store protects (by default val, stack_trace, nn_module_stack,
//   debug_handle, tensor_meta) may be given when the node is built and added once with
//   set_once(); afterwards no interleaving of threads can change or remove them: set(),
//   erase(), update() and NodeEditor::set/erase throw ProtectedKeyError, try_set()
//   returns WriteResult::kRejectedProtected, and the node is left as it was.
// Exception safety: every operation gives the strong guarantee: when it throws, the node
//   is unchanged.
// Lifetime: the store must outlive its nodes (asserted in debug builds). Destroying the
//   handle removes the node from its store and releases its values. Copying the handle
//   (copy(), the copy constructor) makes a new, independent node with a consistent
//   snapshot of this one. A value replaced or erased by a write is released later, outside
//   every lock (release_retired_values() in metadata_store.h), so its destructor may use
//   any node, this one included.
// Callbacks: update() and edit() run the callback with no lock held, on a copy of what it
//   reads, and commit its result only if what it read is unchanged at the commit (as a
//   compare-exchange loop does); otherwise they run it again on the new contents. So a
//   callback may call anything: read or write any node of any store, this one included,
//   run oneTBB algorithms or task_group waits whose tasks do, create, copy or destroy
//   nodes, protect keys, release_retired_values(). It may run more than once; its side
//   effects (writes of other keys or nodes included) are its own business and are not
//   undone. It runs under tbb::this_task_arena::isolate, so while it waits inside oneTBB
//   this thread runs only tasks it spawned. One case cannot commit: a callback whose own
//   work changes what it read (an update(k) callback that writes k, an edit() callback
//   that writes this node outside its NodeEditor). When that write is made on the
//   callback's thread (directly, or by a task oneTBB runs there) the call throws
//   ReentrancyError after that run; when it comes from other threads nodemeta cannot tell
//   it from contention, and throws ReentrancyError once 256 runs in a row were
//   invalidated. Either way the node keeps what those writes stored, and the callback's
//   result is not stored. Under contention a callback runs again only because another
//   write of what it read committed; one outrun 32 times asks the node's other writers to
//   defer to it (at most 2 ms per write; writers of other nodes are unaffected), so
//   callbacks shorter than that commit even against a writer in a tight loop. An edit()
//   inside an update(k) callback counts as the callback writing k only if it changed k.
//   Destroying or assigning to this handle inside its own callback, on the callback's
//   thread or on any thread its work runs on (a thread it joins, a task it waits for),
//   destroys the node: the update()/edit() then throws std::logic_error and commits
//   nothing; the node's memory is freed when the last update()/edit() running on it
//   returns.
// Differences from std::unordered_map: no references or iterators into the node are ever
//   handed out (values come back by copy, and Values are cheap to copy); operator[] is
//   read-only and never inserts; items() is sorted by key name.
// Differences from PyTorch's NodeMetadata: the same protected keys and messages, plus
//   atomic updates and edits, try_set() for hot loops, run-time protect() on the store,
//   and set_once() as the one way to add a protected key to a built node.
class NODEMETA_API NodeMetadata {
 public:
  // A standalone node in MetadataStore::default_store(), like the original's constructor:
  // protected keys may be given here. Throws std::invalid_argument if a key repeats.
  NodeMetadata();
  NodeMetadata(std::initializer_list<KeyValue> items);

  // A new node in the same store holding a consistent snapshot of `other` (= other.copy()).
  NodeMetadata(const NodeMetadata& other);
  NodeMetadata(NodeMetadata&& other) noexcept
      : store_(std::exchange(other.store_, nullptr)), node_(std::exchange(other.node_, nullptr)) {}
  // Replaces this handle's node with a snapshot of `other` (copy-and-swap).
  NodeMetadata& operator=(const NodeMetadata& other);
  NodeMetadata& operator=(NodeMetadata&& other) noexcept;
  ~NodeMetadata();

  // --- Reads (concurrent-safe; values by copy) -------------------------------------
  // The value of `key`; throws KeyError naming the key when absent.
  Value operator[](Key key) const { return at(key); }
  Value at(Key key) const;
  // The value of `key`, or nullopt.
  std::optional<Value> get(Key key) const;
  bool contains(Key key) const;
  // The number of keys.
  std::size_t size() const;
  // A consistent snapshot of every (name, value), sorted by name.
  Items items() const;
  // A new, independent node in the same store with a consistent snapshot of this one.
  NodeMetadata copy() const { return NodeMetadata(*this); }

  // --- Writes (concurrent-safe; linearizable) -----------------------------------------
  // Inserts or replaces. Protected key: throws ProtectedKeyError, node unchanged.
  void set(Key key, Value value);
  // Inserts or replaces; never throws for protection.
  [[nodiscard]] WriteResult try_set(Key key, Value value);
  // Inserts only if absent (allowed for protected keys); true iff this call inserted.
  // Races on one key have exactly one winner.
  bool set_once(Key key, Value value);
  // Removes the key; true iff it was present. Protected key: throws ProtectedKeyError.
  bool erase(Key key);
  // Atomic read-modify-write of one key: stores and returns fn(old value or nullopt).
  // fn runs with no lock held and again whenever another write changed the key (its value;
  // writes of other keys do not) before fn's result could be committed: the stored value
  // is fn of the value it replaces. Protected key (also one protected while fn ran):
  // throws ProtectedKeyError. If fn throws, the node is unchanged. ReentrancyError if fn's
  // own work keeps changing the key (see "Callbacks" above).
  template <class F>
    requires std::is_invocable_v<F&, std::optional<Value>>
  Value update(Key key, F&& fn) {
    return update_impl(key, [&fn](std::optional<Value> old) -> Value {
      return Value(std::invoke(fn, std::move(old)));
    });
  }
  // Atomic multi-key edit: fn(NodeEditor&) runs against a private working copy of the
  // node, committed only if fn returns normally: all or nothing. Other threads see the
  // node before or after the whole edit. Protection is enforced inside (NodeEditor::set on
  // a protected key throws ProtectedKeyError, which aborts the edit unless fn catches it).
  // fn runs with no lock held and may run more than once: the edit commits only if no
  // other write changed the node (any key of it) since its working copy was taken, and no
  // key one of its NodeEditor writes found unprotected was protected since; otherwise it
  // discards the working copy and runs fn again on a fresh one. So every committed edit
  // saw the node, and protection, as of its commit. Returns what the last run of fn
  // returns. ReentrancyError if fn's own work keeps changing the node (see "Callbacks").
  template <class F>
    requires std::is_invocable_v<F&, NodeEditor&>
  std::invoke_result_t<F&, NodeEditor&> edit(F&& fn);

  // --- Views ----------------------------------------------------------------------------
  // A non-owning handle to this node (as std::string_view is to a string): every member
  // reads and writes this very node, but destroying or assigning over the view leaves the
  // node in its store. Copying a view (copy(), the copy constructor) makes an owning,
  // independent node, as copying any handle does; moving a view moves the view. The node
  // must outlive its views (as the store must outlive its nodes). For code that hands one
  // node to an API taking NodeMetadata by value or in a Graph while something else owns
  // it: the Python package runs the C++ passes on the nodes Python objects own this way.
  // Throws std::logic_error on a moved-from handle.
  NodeMetadata view() const;
  // True for a handle made by view(), false for an owning (or moved-from) one.
  bool is_view() const noexcept { return (bits() & kViewBit) != 0; }

  // --- Identity -------------------------------------------------------------------------
  // False for a moved-from handle; every other member requires true.
  bool valid() const noexcept { return node_ != nullptr; }
  // The node's id in its store; 0 for a moved-from handle.
  NodeId id() const noexcept;
  MetadataStore& store() const noexcept { return *store_; }
  // The node's version, for a cache kept beside the store (the Python package keeps one):
  // it grows with every write that changes the node and is odd while a write is being
  // published. Equal even values read before and after a read of the node mean that no
  // write changed the node in between; a value equal to one read earlier means no write
  // changed it since. Concurrent-safe (one acquire load); requires valid().
  std::uint64_t version() const noexcept {
    return entry().second.ctl.load(std::memory_order_acquire) & ~detail::NodeState::kLocked;
  }

 private:
  friend class MetadataStore;
  friend struct detail::JournalAccess;  // the passes' journal (detail/journal_access.h)
  NodeMetadata(MetadataStore* store, NodeEntry* node) noexcept : store_(store), node_(node) {}

  // A view is the node pointer with its lowest bit set (NodeEntry is 8-aligned), so a
  // handle stays two pointers wide.
  static constexpr std::uintptr_t kViewBit = 1;
  std::uintptr_t bits() const noexcept { return reinterpret_cast<std::uintptr_t>(node_); }
  NodeEntry& entry() const noexcept {
    return *reinterpret_cast<NodeEntry*>(bits() & ~kViewBit);
  }
  MetadataStore& live() const;  // the store; throws std::logic_error if moved-from
  Value update_impl(Key key, detail::FunctionRef<Value(std::optional<Value>)> fn);
  void edit_impl(detail::FunctionRef<void(NodeEditor&)> fn);

  MetadataStore* store_;
  NodeEntry* node_;  // owned (unless tagged kViewBit): lives in store_'s map until this dies
};

// NodeEditor: the working copy a NodeMetadata::edit() callback reads and writes. It only
// exists during the callback, on the callback's thread (not concurrent-safe, and need not
// be: no other thread can see it). Every member mirrors NodeMetadata's, with the same
// protection rules (checked against the store's protection as of each call, and again at
// commit); reads see the edit's own writes.
class NODEMETA_API NodeEditor {
 public:
  NodeEditor(const NodeEditor&) = delete;
  NodeEditor& operator=(const NodeEditor&) = delete;

  Value operator[](Key key) const { return at(key); }
  Value at(Key key) const;
  std::optional<Value> get(Key key) const { return record_.get(key.id()); }
  bool contains(Key key) const { return record_.find(key.id()) != nullptr; }
  std::size_t size() const { return record_.size(); }
  Items items() const;

  void set(Key key, Value value);
  [[nodiscard]] WriteResult try_set(Key key, Value value);
  bool set_once(Key key, Value value);
  bool erase(Key key);

 private:
  friend class MetadataStore;
  NodeEditor(const MetadataStore& store, detail::Record record)
      : store_(store), record_(std::move(record)) {}
  // Remembers a key a write found unprotected: the commit re-checks them.
  void checked_unprotected(Key key);

  // Replaces/erases in the working copy; the old value goes to the graveyard, which dies
  // with the editor, after the node's lock is released and outside the callback.
  WriteResult replace(Key key, Value&& value);

  const MetadataStore& store_;
  detail::Record record_;
  std::vector<std::uint32_t> checked_;
  std::vector<Value> graveyard_;
};

template <class F>
  requires std::is_invocable_v<F&, NodeEditor&>
std::invoke_result_t<F&, NodeEditor&> NodeMetadata::edit(F&& fn) {
  using R = std::invoke_result_t<F&, NodeEditor&>;
  static_assert(!std::is_reference_v<R>,
                "edit(): the callback must return by value (a reference would outlive the "
                "working copy it refers into)");
  if constexpr (std::is_void_v<R>) {
    edit_impl([&fn](NodeEditor& e) { std::invoke(fn, e); });
  } else {
    std::optional<R> result;
    edit_impl([&fn, &result](NodeEditor& e) { result.emplace(std::invoke(fn, e)); });
    return std::move(*result);
  }
}

}  // namespace nodemeta

#endif  // NODEMETA_NODE_METADATA_H_
