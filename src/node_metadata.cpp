#include "nodemeta/node_metadata.h"

#include <stdexcept>
#include <utility>

#include "nodemeta/metadata_store.h"

namespace nodemeta {

NodeMetadata::NodeMetadata() : NodeMetadata(MetadataStore::default_store().create()) {}

NodeMetadata::NodeMetadata(std::initializer_list<KeyValue> items)
    : NodeMetadata(MetadataStore::default_store().create(items)) {}

// Every member but the special ones goes through live(): a clear error for a moved-from
// handle (store and node are null together) instead of a call through a null pointer.
MetadataStore& NodeMetadata::live() const {
  if (node_ == nullptr) throw std::logic_error("nodemeta: use of a moved-from NodeMetadata");
  return *store_;
}

NodeMetadata::NodeMetadata(const NodeMetadata& other)
    : store_(other.store_), node_(other.live().clone(other.entry())) {}

NodeMetadata& NodeMetadata::operator=(const NodeMetadata& other) {
  if (this != &other) *this = NodeMetadata(other);
  return *this;
}

NodeMetadata& NodeMetadata::operator=(NodeMetadata&& other) noexcept {
  if (this != &other) {
    NodeMetadata old(std::move(*this));
    store_ = std::exchange(other.store_, nullptr);
    node_ = std::exchange(other.node_, nullptr);
  }
  return *this;
}

NodeMetadata::~NodeMetadata() {
  // The handle is emptied first: a value whose destructor (run by remove(), after the node
  // left its store) reaches back through this handle gets "use of a moved-from
  // NodeMetadata" instead of reading freed memory.
  if (node_ == nullptr) return;
  const bool view = is_view();
  NodeEntry& node = entry();
  node_ = nullptr;
  MetadataStore* store = std::exchange(store_, nullptr);
  if (!view) store->remove(node);
}

NodeMetadata NodeMetadata::view() const {
  MetadataStore& store = live();
  return NodeMetadata(&store, reinterpret_cast<NodeEntry*>(bits() | kViewBit));
}

NodeId NodeMetadata::id() const noexcept { return node_ != nullptr ? entry().first : 0; }

Value NodeMetadata::at(Key key) const {
  if (std::optional<Value> v = live().get(entry(), key)) return std::move(*v);
  throw KeyError(key.name());
}

std::optional<Value> NodeMetadata::get(Key key) const {
  return live().get(entry(), key);
}

bool NodeMetadata::contains(Key key) const { return live().contains(entry(), key); }

std::size_t NodeMetadata::size() const { return live().size(entry()); }

Items NodeMetadata::items() const { return live().items(entry()); }

void NodeMetadata::set(Key key, Value value) {
  if (live().write(entry(), key, std::move(value)) ==
      WriteResult::kRejectedProtected) {
    throw ProtectedKeyError(key.name());
  }
}

WriteResult NodeMetadata::try_set(Key key, Value value) {
  return live().write(entry(), key, std::move(value));
}

bool NodeMetadata::set_once(Key key, Value value) {
  return live().set_once(entry(), key, std::move(value));
}

bool NodeMetadata::erase(Key key) { return live().erase(entry(), key); }

Value NodeMetadata::update_impl(Key key, detail::FunctionRef<Value(std::optional<Value>)> fn) {
  return live().update(entry(), key, fn);
}

void NodeMetadata::edit_impl(detail::FunctionRef<void(NodeEditor&)> fn) {
  live().edit(entry(), fn);
}

}  // namespace nodemeta
