// nodemeta/graph/graph.h: Graph, a compiler graph (torch.fx-like) whose nodes carry their
// metadata in one MetadataStore, and GraphError, what loading a bad graph file throws.
//
// A Graph is a list of nodes in topological order: every input of node i is a node j < i.
// Each node has a unique name, an op (placeholder, get_attr, call_function, call_module,
// call_method, output), a target and a NodeMetadata handle into the graph's own store.
// Reading and writing graph files lives in nodemeta/graph/graph_io.h.
//
// Thread safety: the structure (the node list, names, inputs) is not concurrent-safe to
//   change; while nobody changes it, any number of threads may read it and read and write
//   the nodes' metadata (NodeMetadata is concurrent-safe). Passes work that way.
// Lifetime: the Graph owns its MetadataStore (on the heap, so its address never changes)
//   and destroys every node before the store; a Graph::over(store) borrows its store.
//   A Graph is movable, not copyable; clone() makes an independent deep copy with a store
//   of its own.
#ifndef NODEMETA_GRAPH_GRAPH_H_
#define NODEMETA_GRAPH_GRAPH_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "nodemeta/export.h"
#include "nodemeta/metadata_store.h"
#include "nodemeta/node_metadata.h"
#include "nodemeta/value.h"

namespace nodemeta::graph {

// A failure to load, parse or validate a graph. what() is one line naming the file and
// the place: "graphs/x.json: nodes[12].meta.val: expected ..., got ...".
class NODEMETA_GRAPH_API GraphError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct Node {
  std::string name;
  std::string op;
  std::string target;
  std::vector<std::size_t> inputs;  // indices of earlier nodes, in order of first use
  NodeMetadata meta;
};

// The op kinds torch.fx knows.
NODEMETA_GRAPH_API bool is_known_op(std::string_view op) noexcept;

class NODEMETA_GRAPH_API Graph {
 public:
  // An empty graph whose store uses `options` (default: the five PyTorch protected keys).
  explicit Graph(StoreOptions options = {});
  // An empty graph over `store`, which it does not own and which must outlive it: nodes
  // added to it live in that store. With replace_nodes() and NodeMetadata::view(), runs
  // passes over nodes owned elsewhere (the Python package's fx graphs do).
  static Graph over(MetadataStore& store);
  Graph(Graph&& other) noexcept = default;
  Graph& operator=(Graph&& other) noexcept;
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;
  ~Graph();

  // --- Not concurrent-safe: structure changes -------------------------------------------
  // Appends a node built from `meta` (protected keys allowed). Throws GraphError if the
  // name is empty or taken, the op is unknown, or an input is not an earlier node; the
  // graph is unchanged then. Returns the new node's index.
  std::size_t add_node(std::string name, std::string op, std::string target,
                       std::vector<std::size_t> inputs, std::span<const KeyValue> meta);
  // Replaces the node list with `nodes` (whose metadata must live in this graph's store),
  // checking names and topological order as add_node does. Strong guarantee.
  void replace_nodes(std::vector<Node> nodes);
  // Replaces the node list with `nodes`, checked as replace_nodes() checks it, and hands
  // the previous list back in `nodes`. Strong guarantee: if it throws, neither the graph
  // nor `nodes` has changed (a rewrite can then put back what it moved out).
  void swap_nodes(std::vector<Node>& nodes);
  // Takes the node list out (the graph is left empty); with replace_nodes, lets a rewrite
  // pass rebuild the list while keeping the surviving nodes' metadata handles.
  std::vector<Node> release_nodes() noexcept;

  // Graph-level fields of the file other than "nodes" (model, source, ...), in order.
  Value::Dict& attrs() noexcept { return attrs_; }
  const Value::Dict& attrs() const noexcept { return attrs_; }

  // --- Reads (concurrent-safe while nobody changes the structure) -----------------------
  std::size_t size() const noexcept { return nodes_.size(); }
  bool empty() const noexcept { return nodes_.empty(); }
  Node& node(std::size_t index) { return nodes_.at(index); }
  const Node& node(std::size_t index) const { return nodes_.at(index); }
  std::span<Node> nodes() noexcept { return nodes_; }
  std::span<const Node> nodes() const noexcept { return nodes_; }
  // The index of the node called `name`, or nullopt.
  std::optional<std::size_t> find(std::string_view name) const;
  // For each node, the indices of the nodes that read it, ascending.
  std::vector<std::vector<std::size_t>> users() const;
  // For each node, its topological level: 0 without inputs, else 1 + the inputs' maximum.
  std::vector<std::size_t> levels() const;

  MetadataStore& store() noexcept { return *store_; }
  const MetadataStore& store() const noexcept { return *store_; }

  // A deep copy: same nodes, attrs and metadata snapshots, in a new store with the same
  // protected keys. Race-free alongside writers to this graph's metadata (each node is copied
  // atomically), but then not one consistent snapshot of the whole graph.
  Graph clone() const;

 private:
  struct NameHash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept {
      return std::hash<std::string_view>{}(s);
    }
  };
  using NameIndex = std::unordered_map<std::string, std::size_t, NameHash, std::equal_to<>>;

  struct StoreDeleter {
    bool owned = true;
    void operator()(MetadataStore* store) const noexcept {
      if (owned) delete store;
    }
  };
  Graph(MetadataStore* store, StoreDeleter deleter) : store_(store, deleter) {}

  // Declared before nodes_: the store outlives the nodes.
  std::unique_ptr<MetadataStore, StoreDeleter> store_;
  Value::Dict attrs_;
  std::vector<Node> nodes_;
  NameIndex names_;
};

// Deep structural and metadata equality: same attrs, and node by node the same name, op,
// target, inputs and metadata items (Value deep equality). Returns an empty string when
// equal, else a one-line description of the first difference.
NODEMETA_GRAPH_API std::string first_difference(const Graph& a, const Graph& b);

}  // namespace nodemeta::graph

#endif  // NODEMETA_GRAPH_GRAPH_H_
