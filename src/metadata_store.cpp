#include "nodemeta/metadata_store.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <utility>

namespace nodemeta {
namespace {

// The stores whose callbacks (update/edit) are running on this thread, innermost first.
// A call into one of them from inside its own callback would wait on a lock this thread
// holds, so check_not_in_callback() refuses it. Empty on the fast path: one TLS load.
struct CallbackScope {
  CallbackScope(const MetadataStore* s, NodeId n) noexcept : store(s), node(n), outer(innermost) {
    innermost = this;
  }
  ~CallbackScope() { innermost = outer; }
  CallbackScope(const CallbackScope&) = delete;
  CallbackScope& operator=(const CallbackScope&) = delete;

  const MetadataStore* store;
  NodeId node;  // the node whose lock the callback runs under
  CallbackScope* outer;
  static thread_local CallbackScope* innermost;
};
// initial-exec: one %fs-relative load instead of a __tls_get_addr call in -fPIC code (every
// node operation reads it). 8 bytes of static TLS, which glibc reserves even for dlopen().
__attribute__((tls_model("initial-exec"))) thread_local CallbackScope* CallbackScope::innermost =
    nullptr;

}  // namespace

MetadataStore::MetadataStore(StoreOptions options) {
  protection_versions_.push_back(std::make_unique<const detail::ProtectedSet>());
  protection_.store(protection_versions_.back().get(), std::memory_order_seq_cst);
  for (Key key : options.protected_keys) protect(key);
  if (options.expected_nodes != 0) map_.rehash(options.expected_nodes);
}

MetadataStore::~MetadataStore() {
  NODEMETA_ASSERT(map_.empty(),
                  "MetadataStore destroyed while NodeMetadata handles still refer to it: "
                  "the store must outlive its nodes");
}

MetadataStore& MetadataStore::default_store() {
  static MetadataStore* const store = new MetadataStore();  // never destroyed, so standalone
  return *store;                                            // nodes may be static too
}

NodeMetadata MetadataStore::create(std::initializer_list<KeyValue> items) {
  return create(std::span<const KeyValue>(items.begin(), items.size()));
}

NodeMetadata MetadataStore::create(std::span<const KeyValue> items) {
  check_not_in_callback();
  // One spare slot: the first key a pass adds to a built node (the commonest write) then
  // needs no reallocation. 16 bytes a node; docs/design.md has the measurements.
  detail::Record record(static_cast<std::uint32_t>(items.size()) + 1);
  for (const auto& [key, value] : items) {
    if (record.find(key.id()) != nullptr) {
      throw std::invalid_argument("nodemeta: duplicate key '" + std::string(key.name()) +
                                  "' in a node's initial metadata");
    }
    record.append(key.id(), Value(value));
  }
  return NodeMetadata(this, insert(std::move(record)));
}

void MetadataStore::protect(Key key) {
  std::lock_guard<std::mutex> lock(protect_mutex_);
  const detail::ProtectedSet* current = protection();
  if (current->contains(key.id())) return;
  protection_versions_.push_back(std::make_unique<const detail::ProtectedSet>(current->with(key.id())));
  protection_.store(protection_versions_.back().get(), std::memory_order_seq_cst);
}

std::vector<std::string> MetadataStore::protected_keys() const {
  std::vector<std::string> names;
  for (std::uint32_t id : protection()->ids()) names.emplace_back(detail::key_name(id));
  std::sort(names.begin(), names.end());
  return names;
}

void MetadataStore::check_not_in_callback() const {
  for (const CallbackScope* s = CallbackScope::innermost; s != nullptr; s = s->outer) {
    if (s->store == this) {
      throw ReentrancyError(
          "nodemeta: call into a MetadataStore from inside its own update()/edit() callback "
          "(it would deadlock); use the NodeEditor, or act after the callback returns");
    }
  }
}

// --- node operations --------------------------------------------------------------------

namespace {
// Readers take the node's lock exclusively too: the critical sections are a few dozen
// instructions, and a reader-writer lock costs readers a second atomic read-modify-write on
// the same cache line (docs/design.md has the measurements).
using NodeLock = tbb::spin_mutex::scoped_lock;
}  // namespace

NodeEntry* MetadataStore::insert(detail::Record record) {
  const NodeId id = next_id_.fetch_add(1, std::memory_order_relaxed);
  Map::accessor acc;
  const bool inserted = map_.insert(acc, id);
  NODEMETA_ASSERT(inserted, "node ids are never reused");
  (void)inserted;
  acc->second.record.swap(record);
  // The element stays at this address until remove(id): the map relinks, never moves, its
  // nodes when it grows.
  return &*acc;
}

NodeEntry* MetadataStore::clone(const NodeEntry& node) const {
  check_not_in_callback();
  detail::Record copy;
  {
    NodeLock lock(node.second.mutex);
    copy = detail::Record(node.second.record, node.second.record.size() + 1);  // + a spare slot
  }
  return const_cast<MetadataStore*>(this)->insert(std::move(copy));
}

void MetadataStore::remove(NodeId id) noexcept {
  // Destroying (or assigning to) the handle of the node whose callback is running would free
  // the node under its own held lock. A destructor cannot throw: stop with a clear message
  // (in every build) rather than corrupt memory.
  for (const CallbackScope* s = CallbackScope::innermost; s != nullptr; s = s->outer) {
    if (s->store == this && s->node == id) {
      detail::assertion_failed("node is not the one whose update()/edit() callback is running",
                               "a NodeMetadata was destroyed or assigned to inside its own "
                               "update()/edit() callback",
                               __FILE__, __LINE__);
    }
  }
  const bool erased = map_.erase(id);
  NODEMETA_ASSERT(erased, "a live NodeMetadata's node is in its store");
  (void)erased;
}

std::optional<Value> MetadataStore::get(const NodeEntry& node, Key key) const {
  check_not_in_callback();
  NodeLock lock(node.second.mutex);
  return node.second.record.get(key.id());
}

bool MetadataStore::contains(const NodeEntry& node, Key key) const {
  check_not_in_callback();
  NodeLock lock(node.second.mutex);
  return node.second.record.find(key.id()) != nullptr;
}

std::size_t MetadataStore::size(const NodeEntry& node) const {
  check_not_in_callback();
  NodeLock lock(node.second.mutex);
  return node.second.record.size();
}

namespace {
Items named_sorted(const detail::Record& record) {
  Items items;
  items.reserve(record.size());
  for (const detail::Slot& s : record) {
    items.emplace_back(std::string(detail::key_name(s.key)), s.value());
  }
  std::sort(items.begin(), items.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  return items;
}
}  // namespace

Items MetadataStore::items(const NodeEntry& node) const {
  check_not_in_callback();
  detail::Record snapshot;
  {
    NodeLock lock(node.second.mutex);
    snapshot = node.second.record;  // copy under the lock; name and sort outside it
  }
  return named_sorted(snapshot);
}

WriteResult MetadataStore::write(NodeEntry& node, Key key, Value&& value) {
  check_not_in_callback();
  // Protection only ever goes from false to true, so a rejection needs no lock.
  if (is_protected(key)) return WriteResult::kRejectedProtected;
  NodeLock lock(node.second.mutex);
  // Checked again under the node's lock: a protect() that stored its set before this load
  // rejects us; one that stores it after cannot complete before any later reader of this
  // node, which must wait for our lock, sees this write.
  if (is_protected(key)) return WriteResult::kRejectedProtected;
  return node.second.record.put(key.id(), std::move(value)) ? WriteResult::kInserted
                                                            : WriteResult::kUpdated;
}

bool MetadataStore::set_once(NodeEntry& node, Key key, Value&& value) {
  check_not_in_callback();
  NodeLock lock(node.second.mutex);
  if (node.second.record.find(key.id()) != nullptr) return false;
  node.second.record.append(key.id(), std::move(value));
  return true;
}

bool MetadataStore::erase(NodeEntry& node, Key key) {
  check_not_in_callback();
  if (is_protected(key)) throw ProtectedKeyError(key.name());
  NodeLock lock(node.second.mutex);
  if (is_protected(key)) throw ProtectedKeyError(key.name());
  return node.second.record.erase(key.id());
}

Value MetadataStore::update(NodeEntry& node, Key key,
                            detail::FunctionRef<Value(std::optional<Value>)> fn) {
  check_not_in_callback();
  if (is_protected(key)) throw ProtectedKeyError(key.name());
  NodeLock lock(node.second.mutex);
  if (is_protected(key)) throw ProtectedKeyError(key.name());
  Value next;
  {
    CallbackScope scope(this, node.first);
    next = fn(node.second.record.get(key.id()));  // may throw: nothing written yet
  }
  node.second.record.put(key.id(), Value(next));
  return next;
}

void MetadataStore::edit(NodeEntry& node, detail::FunctionRef<void(NodeEditor&)> fn) {
  check_not_in_callback();
  NodeLock lock(node.second.mutex);
  // A private working copy, and the protected set as of now: every protection check of
  // this edit sees the same instant, so the edit is linearized when it took the lock.
  NodeEditor editor(*protection(), node.second.record);
  {
    CallbackScope scope(this, node.first);
    fn(editor);  // may throw: the node is untouched
  }
  node.second.record.swap(editor.record_);
}

// --- NodeEditor ----------------------------------------------------------------------------

Value NodeEditor::at(Key key) const {
  if (std::optional<Value> v = get(key)) return std::move(*v);
  throw KeyError(key.name());
}

Items NodeEditor::items() const { return named_sorted(record_); }

void NodeEditor::set(Key key, Value value) {
  if (protection_.contains(key.id())) throw ProtectedKeyError(key.name());
  record_.put(key.id(), std::move(value));
}

WriteResult NodeEditor::try_set(Key key, Value value) {
  if (protection_.contains(key.id())) return WriteResult::kRejectedProtected;
  return record_.put(key.id(), std::move(value)) ? WriteResult::kInserted : WriteResult::kUpdated;
}

bool NodeEditor::set_once(Key key, Value value) {
  if (record_.find(key.id()) != nullptr) return false;
  record_.append(key.id(), std::move(value));
  return true;
}

bool NodeEditor::erase(Key key) {
  if (protection_.contains(key.id())) throw ProtectedKeyError(key.name());
  return record_.erase(key.id());
}

}  // namespace nodemeta
