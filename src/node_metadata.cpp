#include "nodemeta/node_metadata.h"

#include <stdexcept>
#include <utility>

#include "nodemeta/metadata_store.h"

namespace nodemeta {
namespace {

// Every member but the special ones checks the handle first: a clear error instead of a
// null dereference when a moved-from handle is used.
NodeEntry& checked(NodeEntry* node) {
  if (node == nullptr) {
    throw std::logic_error("nodemeta: use of a moved-from NodeMetadata");
  }
  return *node;
}

// The store of a handle, checked before any of its members is called: a moved-from handle
// has no store, and calling a member through a null pointer is undefined behaviour even
// when an argument (checked(node_)) would throw first.
MetadataStore& live(MetadataStore* store) {
  if (store == nullptr) {
    throw std::logic_error("nodemeta: use of a moved-from NodeMetadata");
  }
  return *store;
}

}  // namespace

NodeMetadata::NodeMetadata() : NodeMetadata(MetadataStore::default_store().create()) {}

NodeMetadata::NodeMetadata(std::initializer_list<KeyValue> items)
    : NodeMetadata(MetadataStore::default_store().create(items)) {}

NodeMetadata::NodeMetadata(const NodeMetadata& other)
    : store_(other.store_), node_(live(store_).clone(checked(other.node_))) {}

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
  if (node_ != nullptr) store_->remove(node_->first);
}

NodeId NodeMetadata::id() const noexcept { return node_ != nullptr ? node_->first : 0; }

Value NodeMetadata::at(Key key) const {
  if (std::optional<Value> v = live(store_).get(checked(node_), key)) return std::move(*v);
  throw KeyError(key.name());
}

std::optional<Value> NodeMetadata::get(Key key) const {
  return live(store_).get(checked(node_), key);
}

bool NodeMetadata::contains(Key key) const { return live(store_).contains(checked(node_), key); }

std::size_t NodeMetadata::size() const { return live(store_).size(checked(node_)); }

Items NodeMetadata::items() const { return live(store_).items(checked(node_)); }

void NodeMetadata::set(Key key, Value value) {
  if (live(store_).write(checked(node_), key, std::move(value)) ==
      WriteResult::kRejectedProtected) {
    throw ProtectedKeyError(key.name());
  }
}

WriteResult NodeMetadata::try_set(Key key, Value value) {
  return live(store_).write(checked(node_), key, std::move(value));
}

bool NodeMetadata::set_once(Key key, Value value) {
  return live(store_).set_once(checked(node_), key, std::move(value));
}

bool NodeMetadata::erase(Key key) { return live(store_).erase(checked(node_), key); }

Value NodeMetadata::update_impl(Key key, detail::FunctionRef<Value(std::optional<Value>)> fn) {
  return live(store_).update(checked(node_), key, fn);
}

void NodeMetadata::edit_impl(detail::FunctionRef<void(NodeEditor&)> fn) {
  live(store_).edit(checked(node_), fn);
}

}  // namespace nodemeta
