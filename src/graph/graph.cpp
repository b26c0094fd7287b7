#include "nodemeta/graph/graph.h"

#include <algorithm>
#include <array>
#include <utility>

namespace nodemeta::graph {

bool is_known_op(std::string_view op) noexcept {
  static constexpr std::array<std::string_view, 6> kOps = {
      "placeholder", "get_attr", "call_function", "call_module", "call_method", "output"};
  return std::find(kOps.begin(), kOps.end(), op) != kOps.end();
}

Graph::Graph(StoreOptions options)
    : store_(new MetadataStore(std::move(options)), StoreDeleter{true}) {}

Graph Graph::over(MetadataStore& store) { return Graph(&store, StoreDeleter{false}); }

Graph& Graph::operator=(Graph&& other) noexcept {
  if (this != &other) {
    // Nodes first: they must die before the store they live in.
    names_.clear();
    nodes_.clear();
    attrs_ = std::move(other.attrs_);
    nodes_ = std::move(other.nodes_);
    names_ = std::move(other.names_);
    store_ = std::move(other.store_);
  }
  return *this;
}

Graph::~Graph() {
  names_.clear();
  nodes_.clear();  // before store_ (also guaranteed by member order; explicit for clarity)
}

std::size_t Graph::add_node(std::string name, std::string op, std::string target,
                            std::vector<std::size_t> inputs, std::span<const KeyValue> meta) {
  const std::size_t index = nodes_.size();
  if (name.empty()) throw GraphError("node " + std::to_string(index) + ": empty name");
  if (names_.find(name) != names_.end()) {
    throw GraphError("node " + std::to_string(index) + " '" + name + "': duplicate node name");
  }
  if (!is_known_op(op)) {
    throw GraphError("node '" + name + "': unknown op '" + op + "'");
  }
  for (std::size_t in : inputs) {
    if (in >= index) {
      throw GraphError("node '" + name + "': input " + std::to_string(in) +
                       " is not an earlier node");
    }
  }
  NodeMetadata handle = store_->create(meta);  // dies with the frame if anything throws
  if (nodes_.size() == nodes_.capacity()) nodes_.reserve(std::max<std::size_t>(16, 2 * index));
  names_.emplace(name, index);
  // Cannot throw: capacity is reserved and Node's move constructor is noexcept.
  nodes_.push_back(Node{std::move(name), std::move(op), std::move(target), std::move(inputs),
                        std::move(handle)});
  return index;
}

void Graph::replace_nodes(std::vector<Node> nodes) {
  swap_nodes(nodes);
  // The previous list dies here, after the graph holds the new one.
}

void Graph::swap_nodes(std::vector<Node>& nodes) {
  NameIndex names;
  names.reserve(nodes.size());
  for (std::size_t i = 0; i < nodes.size(); ++i) {
    const Node& n = nodes[i];
    if (!n.meta.valid() || &n.meta.store() != store_.get()) {
      throw GraphError("node '" + n.name + "': metadata does not live in this graph's store");
    }
    if (n.name.empty()) throw GraphError("node " + std::to_string(i) + ": empty name");
    if (!is_known_op(n.op)) throw GraphError("node '" + n.name + "': unknown op '" + n.op + "'");
    for (std::size_t in : n.inputs) {
      if (in >= i) {
        throw GraphError("node '" + n.name + "': input " + std::to_string(in) +
                         " is not an earlier node");
      }
    }
    if (!names.emplace(n.name, i).second) {
      throw GraphError("node " + std::to_string(i) + " '" + n.name + "': duplicate node name");
    }
  }
  // Nothing below throws.
  nodes_.swap(nodes);
  names_.swap(names);
}

std::vector<Node> Graph::release_nodes() noexcept {
  names_.clear();
  return std::exchange(nodes_, {});
}

std::optional<std::size_t> Graph::find(std::string_view name) const {
  auto it = names_.find(name);
  if (it == names_.end()) return std::nullopt;
  return it->second;
}

std::vector<std::vector<std::size_t>> Graph::users() const {
  std::vector<std::vector<std::size_t>> users(nodes_.size());
  for (std::size_t i = 0; i < nodes_.size(); ++i) {
    for (std::size_t in : nodes_[i].inputs) {
      if (users[in].empty() || users[in].back() != i) users[in].push_back(i);
    }
  }
  return users;
}

std::vector<std::size_t> Graph::levels() const {
  std::vector<std::size_t> level(nodes_.size(), 0);
  for (std::size_t i = 0; i < nodes_.size(); ++i) {
    for (std::size_t in : nodes_[i].inputs) level[i] = std::max(level[i], level[in] + 1);
  }
  return level;
}

Graph Graph::clone() const {
  StoreOptions options;
  options.protected_keys.clear();
  for (const std::string& k : store_->protected_keys()) options.protected_keys.emplace_back(k);
  options.expected_nodes = nodes_.size();
  Graph copy(std::move(options));
  copy.attrs_ = attrs_;
  std::vector<KeyValue> kv;
  for (const Node& n : nodes_) {
    kv.clear();
    for (auto& [name, value] : n.meta.items()) kv.emplace_back(Key(name), std::move(value));
    copy.add_node(n.name, n.op, n.target, n.inputs, kv);
  }
  return copy;
}

namespace {

std::string inputs_text(const std::vector<std::size_t>& v) {
  std::string out = "[";
  for (std::size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + std::to_string(v[i]);
  return out + "]";
}

}  // namespace

std::string first_difference(const Graph& a, const Graph& b) {
  if (!(Value::dict(a.attrs()) == Value::dict(b.attrs()))) return "graph attributes differ";
  if (a.size() != b.size()) {
    return "node counts differ: " + std::to_string(a.size()) + " vs " + std::to_string(b.size());
  }
  for (std::size_t i = 0; i < a.size(); ++i) {
    const Node& x = a.node(i);
    const Node& y = b.node(i);
    const std::string where = "node " + std::to_string(i) + " '" + x.name + "': ";
    if (x.name != y.name) return where + "name differs ('" + y.name + "')";
    if (x.op != y.op) return where + "op differs: " + x.op + " vs " + y.op;
    if (x.target != y.target) return where + "target differs: " + x.target + " vs " + y.target;
    if (x.inputs != y.inputs) {
      return where + "inputs differ: " + inputs_text(x.inputs) + " vs " + inputs_text(y.inputs);
    }
    const Items ix = x.meta.items();
    const Items iy = y.meta.items();
    for (std::size_t k = 0; k < std::max(ix.size(), iy.size()); ++k) {
      if (k >= ix.size()) return where + "meta key '" + iy[k].first + "' only in the second";
      if (k >= iy.size()) return where + "meta key '" + ix[k].first + "' only in the first";
      if (ix[k].first != iy[k].first) {
        return where + "meta keys differ: '" + ix[k].first + "' vs '" + iy[k].first + "'";
      }
      if (!(ix[k].second == iy[k].second)) {
        return where + "meta." + ix[k].first + " differs: " + ix[k].second.repr().substr(0, 80) +
               " vs " + iy[k].second.repr().substr(0, 80);
      }
    }
  }
  return {};
}

}  // namespace nodemeta::graph
