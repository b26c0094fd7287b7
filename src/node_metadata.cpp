#include "nodemeta/node_metadata.h"

#include <stdexcept>
#include <utility>

#include "nodemeta/metadata_store.h"

namespace nodemeta {
namespace {

// Every member but the special ones checks the handle first: a clear error instead of a
// null dereference when a moved-from handle is used.
MetadataStore& checked(MetadataStore* store) {
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
    : store_(&checked(other.store_)), id_(store_->clone(other.id_)) {}

NodeMetadata& NodeMetadata::operator=(const NodeMetadata& other) {
  if (this != &other) *this = NodeMetadata(other);
  return *this;
}

NodeMetadata& NodeMetadata::operator=(NodeMetadata&& other) noexcept {
  if (this != &other) {
    NodeMetadata old(std::move(*this));
    store_ = std::exchange(other.store_, nullptr);
    id_ = std::exchange(other.id_, 0);
  }
  return *this;
}

NodeMetadata::~NodeMetadata() {
  if (store_ != nullptr) store_->remove(id_);
}

Value NodeMetadata::at(Key key) const { return checked(store_).at(id_, key); }

std::optional<Value> NodeMetadata::get(Key key) const { return checked(store_).get(id_, key); }

bool NodeMetadata::contains(Key key) const { return checked(store_).contains(id_, key); }

std::size_t NodeMetadata::size() const { return checked(store_).size(id_); }

Items NodeMetadata::items() const { return checked(store_).items(id_); }

void NodeMetadata::set(Key key, Value value) {
  if (checked(store_).write(id_, key, std::move(value)) == WriteResult::kRejectedProtected) {
    throw ProtectedKeyError(key.name());
  }
}

WriteResult NodeMetadata::try_set(Key key, Value value) {
  return checked(store_).write(id_, key, std::move(value));
}

bool NodeMetadata::set_once(Key key, Value value) {
  return checked(store_).set_once(id_, key, std::move(value));
}

bool NodeMetadata::erase(Key key) { return checked(store_).erase(id_, key); }

Value NodeMetadata::update_impl(Key key, detail::FunctionRef<Value(std::optional<Value>)> fn) {
  return checked(store_).update(id_, key, fn);
}

void NodeMetadata::edit_impl(detail::FunctionRef<void(NodeEditor&)> fn) {
  checked(store_).edit(id_, fn);
}

}  // namespace nodemeta
