// Graph and graph_io: building graphs, JSON <-> Value mapping, export/import round trips.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <string>

#include "nodemeta/graph/graph.h"
#include "nodemeta/graph/graph_io.h"
#include "nodemeta/nodemeta.h"

namespace nodemeta::graph {
namespace {

std::string data(const std::string& rel) { return std::string(NODEMETA_TEST_DATA_DIR) + "/" + rel; }

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() /
          ("nodemeta_graph_io_test_" + std::to_string(::getpid()) + "_" + name))
      .string();
}

TEST(GraphTest, AddNodeChecksNamesOpsAndInputs) {
  Graph g;
  const KeyValue meta[] = {{keys::val, Value(1)}};
  EXPECT_EQ(g.add_node("x", "placeholder", "x", {}, meta), 0U);
  EXPECT_EQ(g.add_node("y", "call_function", "torch.relu", {0}, {}), 1U);
  EXPECT_THROW(g.add_node("y", "call_function", "f", {0}, {}), GraphError);
  EXPECT_THROW(g.add_node("z", "call_magic", "f", {0}, {}), GraphError);
  EXPECT_THROW(g.add_node("z", "call_function", "f", {2}, {}), GraphError);
  EXPECT_THROW(g.add_node("", "call_function", "f", {}, {}), GraphError);
  EXPECT_EQ(g.size(), 2U);
  EXPECT_EQ(g.store().node_count(), 2U);  // nothing half-added
  EXPECT_EQ(g.find("y"), 1U);
  EXPECT_FALSE(g.find("z").has_value());
  EXPECT_EQ(g.node(0).meta.at(keys::val), Value(1));
  // Protected keys given at construction stay protected.
  EXPECT_EQ(g.node(0).meta.try_set(keys::val, 2), WriteResult::kRejectedProtected);
}

TEST(GraphTest, LevelsAndUsers) {
  Graph g;
  g.add_node("a", "placeholder", "a", {}, {});
  g.add_node("b", "call_function", "f", {0}, {});
  g.add_node("c", "call_function", "f", {0, 1}, {});
  g.add_node("d", "output", "output", {2}, {});
  EXPECT_EQ(g.levels(), (std::vector<std::size_t>{0, 1, 2, 3}));
  auto users = g.users();
  EXPECT_EQ(users[0], (std::vector<std::size_t>{1, 2}));
  EXPECT_TRUE(users[3].empty());
}

TEST(GraphTest, CloneIsDeepAndIndependent) {
  Graph g = load_graph(data("ok/tiny.json"));
  Graph c = g.clone();
  EXPECT_EQ(first_difference(g, c), "");
  EXPECT_NE(&g.store(), &c.store());
  c.node(1).meta.set("flops", 4);
  EXPECT_FALSE(g.node(1).meta.contains("flops"));
  EXPECT_NE(first_difference(g, c), "");
}

// swap_nodes: the new list is checked first; if it is refused, neither the graph nor the
// list changed (strong guarantee), and if it is taken, the previous list comes back.
TEST(GraphTest, SwapNodesIsAllOrNothingAndHandsTheOldListBack) {
  Graph g = load_graph(data("ok/tiny.json"));
  const std::string before = to_json(g);
  Graph other = g.clone();  // outlives `bad`, whose metadata lives in its store
  std::vector<nodemeta::graph::Node> bad = other.release_nodes();  // another store's metadata
  const std::size_t bad_size = bad.size();
  EXPECT_THROW(g.swap_nodes(bad), nodemeta::graph::GraphError);
  EXPECT_EQ(to_json(g), before);
  EXPECT_EQ(bad.size(), bad_size);
  std::vector<nodemeta::graph::Node> dup = g.release_nodes();
  g.swap_nodes(dup);  // g takes the list back; dup now holds what g had (nothing)
  EXPECT_TRUE(dup.empty());
  EXPECT_EQ(to_json(g), before);
  std::vector<nodemeta::graph::Node> reordered = g.release_nodes();
  const std::string name0 = reordered[0].name;
  reordered[1].name = name0;  // a duplicate name: refused, the list is handed back as it was
  EXPECT_THROW(g.swap_nodes(reordered), nodemeta::graph::GraphError);
  EXPECT_EQ(g.size(), 0U);
  EXPECT_EQ(reordered[1].name, name0);
  EXPECT_TRUE(g.find(name0) == std::nullopt);
}

TEST(GraphTest, MoveKeepsNodesValid) {
  Graph g = load_graph(data("ok/tiny.json"));
  Graph moved(std::move(g));
  EXPECT_EQ(moved.size(), 3U);
  moved = load_graph(data("ok/tiny.json"));
  EXPECT_EQ(moved.node(2).name, "output");
}

TEST(GraphIoTest, MapsJsonKindsToValueKinds) {
  Graph g = parse_graph(R"({"model": "m", "nodes": [{"id": 0, "name": "x", "op": "placeholder",
      "target": "x", "inputs": [], "meta": {"stack_trace": null, "nn_module_stack": {}, "tensor_meta": null,
      "val": null, "debug_handle": 1, "n": null, "b": true, "i": -3, "big": 9223372036854775807,
      "d": 2.5, "e": 1e-05, "one": 1.0, "s": "t\u00e9xt", "l": [1, [2]], "o": {"z": 1, "a": 2}}},
      {"id": 1, "name": "output", "op": "output", "target": "output", "inputs": [0], "meta": {"stack_trace": null,
      "nn_module_stack": {}, "tensor_meta": null, "val": null, "debug_handle": 2}}]})");
  const NodeMetadata& m = g.node(0).meta;
  EXPECT_TRUE(m.at("n").is_none());
  EXPECT_EQ(m.at("b"), Value(true));
  EXPECT_EQ(m.at("i"), Value(-3));
  EXPECT_EQ(m.at("big"), Value(INT64_MAX));
  EXPECT_EQ(m.at("d"), Value(2.5));
  EXPECT_EQ(m.at("one").kind(), Value::Kind::kDouble);
  EXPECT_EQ(m.at("s"), Value("t\xc3\xa9xt"));
  EXPECT_EQ(m.at("l"), Value::list({1, Value::list({2})}));
  const auto& o = m.at("o").as<Value::Dict>();
  ASSERT_EQ(o.size(), 2U);
  EXPECT_EQ(o[0].first, "z");  // insertion order kept
  // And back: exact text for kinds that have one spelling.
  const std::string out = to_json(g);
  EXPECT_NE(out.find(R"("o":{"z":1,"a":2})"), std::string::npos) << out;
  EXPECT_NE(out.find(R"("one":1.0)"), std::string::npos) << out;
  EXPECT_EQ(first_difference(g, parse_graph(out)), "");
}

TEST(GraphIoTest, RepeatedKeyWithSameValueIsAcceptedOnce) {
  Graph g = load_graph(data("ok/duplicate_same_value.json"));
  EXPECT_EQ(g.node(1).meta.at(keys::debug_handle), Value(2));
}

TEST(GraphIoTest, NullStandardKeysLoadAndRoundTrip) {
  Graph g = load_graph(data("ok/null_standard_keys.json"));
  EXPECT_TRUE(g.node(1).meta.at(keys::nn_module_stack).is_none());
  EXPECT_TRUE(g.node(1).meta.at(keys::debug_handle).is_none());
  EXPECT_EQ(first_difference(g, parse_graph(to_json(g))), "");
}

TEST(GraphIoTest, BundledGraphRoundTripsThroughPlainAndGzipFiles) {
  Graph g = load_graph(NODEMETA_BUNDLED_GRAPH);
  EXPECT_EQ(g.size(), 137U);
  for (const char* name : {"rt.json", "rt.json.gz"}) {
    const std::string path = temp_path(name);
    save_graph(g, path);
    Graph back = load_graph(path);
    EXPECT_EQ(first_difference(g, back), "") << name;
    std::filesystem::remove(path);
  }
}

TEST(GraphIoTest, ExportOfUnchangedFileIsByteIdenticalToItsCanonicalForm) {
  Graph g = load_graph(NODEMETA_BUNDLED_GRAPH);
  const std::string once = to_json(g);
  EXPECT_EQ(to_json(parse_graph(once)), once);
}

TEST(GraphIoTest, UserObjectsCannotBeExported) {
  struct Opaque {};
  Graph g;
  g.add_node("x", "placeholder", "x", {}, {});
  g.node(0).meta.set("obj", Value::make<Opaque>());
  EXPECT_THROW(to_json(g), GraphError);
}


TEST(GraphTest, OverABorrowedStoreRunsOnViewsOfNodesOwnedElsewhere) {
  nodemeta::MetadataStore store;
  std::vector<nodemeta::NodeMetadata> owners;
  owners.push_back(store.create({{"val", 1}}));
  owners.push_back(store.create({{"val", 2}}));
  {
    Graph g = Graph::over(store);
    std::vector<nodemeta::graph::Node> nodes;
    nodes.push_back({"x", "placeholder", "x", {}, owners[0].view()});
    nodes.push_back({"y", "call_function", "torch.relu", {0}, owners[1].view()});
    g.replace_nodes(std::move(nodes));
    EXPECT_EQ(&g.store(), &store);
    g.node(1).meta.set("flops", 5);
    // A node of another store is refused.
    nodemeta::MetadataStore other;
    nodemeta::NodeMetadata stranger = other.create();
    std::vector<nodemeta::graph::Node> bad;
    bad.push_back({"z", "placeholder", "z", {}, stranger.view()});
    EXPECT_THROW(g.replace_nodes(std::move(bad)), nodemeta::graph::GraphError);
    Graph copy = g.clone();  // a clone owns a store and nodes of its own
    EXPECT_NE(&copy.store(), &store);
    EXPECT_EQ(copy.node(1).meta["flops"], Value(5));
  }
  // The graph and its views are gone; the store and the owned nodes are not.
  EXPECT_EQ(store.node_count(), 2u);
  EXPECT_EQ(owners[1]["flops"], Value(5));
}

}  // namespace
}  // namespace nodemeta::graph
