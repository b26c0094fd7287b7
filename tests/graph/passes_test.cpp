// The pass driver, the cost model, fusion with provenance, strip_debug and the verifier,
// on small hand-built graphs and on the bundled graph.
#include <gtest/gtest.h>

#include <atomic>
#include <string>
#include <vector>

#include <oneapi/tbb/task_arena.h>

#include "nodemeta/graph/graph_io.h"
#include "nodemeta/passes/passes.h"
#include "nodemeta/passes/provenance.h"

namespace nodemeta::passes {
namespace {

using graph::Graph;

Value tensor(std::initializer_list<std::int64_t> shape, const char* dtype = "torch.float32") {
  Value::List dims;
  for (std::int64_t d : shape) dims.emplace_back(d);
  return Value::dict({{"shape", Value::list(std::move(dims))}, {"dtype", dtype}});
}

std::vector<KeyValue> meta(Value t, std::int64_t handle, Value module_stack = Value::dict({}),
                           Value trace = Value("  File \"m.py\", line 1\n")) {
  return {{keys::tensor_meta, t}, {keys::val, t}, {keys::debug_handle, Value(handle)},
          {keys::nn_module_stack, std::move(module_stack)}, {keys::stack_trace, std::move(trace)}};
}

Value stack1(const std::string& path, const std::string& type) { return Value::dict({{path, type}}); }

// x -> conv -> bn -> relu -> add(relu, x') ; plus an aten conv and an unknown op.
Graph conv_graph() {
  Graph g;
  const Value act = tensor({1, 8, 4, 4});
  g.add_node("x", "placeholder", "x", {}, meta(tensor({1, 3, 4, 4}), 1));
  g.add_node("conv1", "call_module", "conv1", {0},
             meta(act, 2, Value::dict({{"layer", "torch.nn.Sequential"}, {"conv1", "torch.nn.modules.conv.Conv2d"}})));
  g.add_node("bn1", "call_module", "bn1", {1},
             meta(act, 3, Value::dict({{"layer", "torch.nn.Sequential"}, {"bn1", "torch.nn.modules.batchnorm.BatchNorm2d"}})));
  g.add_node("relu", "call_module", "relu", {2}, meta(act, 4, stack1("relu", "torch.nn.modules.activation.ReLU")));
  g.add_node("w", "get_attr", "w", {}, meta(tensor({8, 8, 3, 3}), 5, Value::dict({}), Value()));
  g.add_node("conv2", "call_function", "torch.ops.aten.convolution.default", {3, 4}, meta(act, 6));
  g.add_node("mystery", "call_function", "my.lib.mystery", {5}, meta(act, 7));
  g.add_node("output", "output", "output", {6}, meta(Value(), 8, Value::dict({}), Value()));
  return g;
}

TEST(CostModelTest, FormulasForKnownOpsAndMarkerForUnknown) {
  Graph g = conv_graph();
  const CostEstimate aten_conv = estimate_cost(g, 5);
  ASSERT_TRUE(aten_conv.flops);
  EXPECT_EQ(*aten_conv.flops, 2 * (8 * 4 * 4) * (8 * 3 * 3));  // 2*numel(out)*Cin/g*kh*kw
  EXPECT_EQ(*aten_conv.bytes, (8 * 16 + 8 * 8 * 9 + 8 * 16) * 4);
  EXPECT_EQ(*estimate_cost(g, 2).flops, 2 * 8 * 16);  // batch norm: 2 per element
  EXPECT_EQ(*estimate_cost(g, 3).flops, 8 * 16);      // relu: 1 per element
  EXPECT_EQ(*estimate_cost(g, 0).flops, 0);
  const CostEstimate conv_module = estimate_cost(g, 1);
  EXPECT_FALSE(conv_module.flops);
  EXPECT_NE(conv_module.rule.find("unknown: module:Conv2d"), std::string::npos) << conv_module.rule;
  EXPECT_NE(estimate_cost(g, 6).rule.find("unknown: no cost formula for my.lib.mystery"), std::string::npos);
}

TEST(CostModelTest, MatmulFamily) {
  Graph g;
  g.add_node("b", "get_attr", "b", {}, meta(tensor({16}), 1));
  g.add_node("a", "placeholder", "a", {}, meta(tensor({4, 32}), 2));
  g.add_node("w", "get_attr", "w", {}, meta(tensor({32, 16}), 3));
  g.add_node("addmm", "call_function", "torch.ops.aten.addmm.default", {0, 1, 2}, meta(tensor({4, 16}), 4));
  g.add_node("bmm", "call_function", "torch.ops.aten.bmm.default", {1, 2}, meta(tensor({2, 4, 16}), 5));
  g.add_node("lin", "call_module", "lin", {1}, meta(tensor({4, 16}), 6, stack1("lin", "torch.nn.modules.linear.Linear")));
  EXPECT_EQ(*estimate_cost(g, 3).flops, 2 * 4 * 16 * 32 + 4 * 16);
  EXPECT_EQ(*estimate_cost(g, 4).flops, 2 * 2 * 4 * 16 * 32);
  EXPECT_EQ(*estimate_cost(g, 5).flops, 2 * 4 * 16 * 32);
}

TEST(ProvenanceTest, PolicyCopiesMergesAndChains) {
  MetadataStore store;
  NodeMetadata a = store.create({{keys::val, 1}, {keys::debug_handle, 10}, {keys::stack_trace, "trace a"},
                                 {keys::nn_module_stack, Value::dict({{"l", "Seq"}, {"l.a", "A"}})},
                                 {"flops", 5}, {"is_wrapped", true}});
  NodeMetadata b = store.create({{keys::val, 2}, {keys::debug_handle, 11}, {keys::stack_trace, Value()},
                                 {keys::nn_module_stack, Value::dict({{"l", "Seq"}, {"l.b", "B"}})},
                                 {"type", "torch.Tensor"},
                                 {"from_node", Value::list({Value::dict({{"name", "older"}})})}});
  NodeMetadata target = store.create();
  const SourceNode sources[] = {{"a", "call_module", "l.a", &a}, {"b", "call_module", "l.b", &b}};
  const TransferResult r = transfer_provenance(sources, target, "test");
  EXPECT_EQ(r.kept, 0U);
  EXPECT_EQ(target.at(keys::val), Value(2));              // output source
  EXPECT_EQ(target.at(keys::debug_handle), Value(11));    // output source
  EXPECT_EQ(target.at(keys::stack_trace), Value("trace a"));  // last non-null
  const auto& stack = target.at(keys::nn_module_stack).as<Value::Dict>();
  ASSERT_EQ(stack.size(), 3U);
  EXPECT_EQ(stack[0].first, "l");
  EXPECT_EQ(stack[1].first, "l.a");
  EXPECT_EQ(stack[2].first, "l.b");
  EXPECT_EQ(target.at("type"), Value("torch.Tensor"));
  EXPECT_FALSE(target.contains("flops"));       // dropped
  EXPECT_FALSE(target.contains("is_wrapped"));  // dropped
  EXPECT_EQ(from_node_names(target.at("from_node")), (std::vector<std::string>{"a", "b", "older"}));
  // Protected keys already present are kept, never overwritten.
  const TransferResult again = transfer_provenance(sources, target, "test");
  EXPECT_EQ(again.kept, 4U);  // val, debug_handle, stack_trace, nn_module_stack (b has no tensor_meta)
  EXPECT_EQ(target.at("from_node").size(), 4U);  // the chain grows, appended
}

TEST(FusePassTest, FusesConvBnReluAndRemapsUsers) {
  Graph g = conv_graph();
  const Baseline base(g);
  const auto stats = run_pipeline(g, pass_names(), base);
  ASSERT_EQ(stats.size(), 5U);
  EXPECT_EQ(stats[1].summary, "1 chain fused (3 nodes replaced)");
  EXPECT_EQ(g.size(), 6U);
  const auto fused = g.find("conv1__bn1__relu");
  ASSERT_TRUE(fused);
  const graph::Node& f = g.node(*fused);
  EXPECT_EQ(f.target, "nodemeta.fused.conv_bn_relu");
  EXPECT_EQ(f.inputs, (std::vector<std::size_t>{0}));
  EXPECT_EQ(g.node(*g.find("conv2")).inputs, (std::vector<std::size_t>{*fused, *g.find("w")}));
  EXPECT_EQ(f.meta.at(keys::debug_handle), Value(4));
  EXPECT_EQ(from_node_names(f.meta.at("from_node")), (std::vector<std::string>{"conv1", "bn1", "relu"}));
  EXPECT_EQ(f.meta.at("flops"), Value("unknown"));  // the conv module's cost is unknown
  EXPECT_EQ(f.meta.at("critical_path_complete"), Value(false));
  EXPECT_TRUE(stats.back().problems.empty()) << stats.back().problems.front();
  // Protected keys of a fused node are protected too.
  EXPECT_EQ(g.node(*fused).meta.try_set(keys::val, 0), WriteResult::kRejectedProtected);
}

TEST(FusePassTest, FusedCostIsPartsMinusIntermediateTraffic) {
  Graph g;
  g.add_node("x", "placeholder", "x", {}, meta(tensor({4, 32}), 1));
  g.add_node("fc", "call_module", "fc", {0}, meta(tensor({4, 16}), 2, stack1("fc", "torch.nn.modules.linear.Linear")));
  g.add_node("act", "call_module", "act", {1}, meta(tensor({4, 16}), 3, stack1("act", "torch.nn.modules.activation.GELU")));
  g.add_node("output", "output", "output", {2}, meta(Value(), 4));
  const Baseline base(g);
  const std::vector<std::string> names = {"cost", "fuse", "verify"};
  const auto stats = run_pipeline(g, names, base);
  ASSERT_EQ(g.size(), 3U);
  const graph::Node& f = g.node(1);
  EXPECT_EQ(f.name, "fc__act");
  EXPECT_EQ(f.meta.at("fused_pattern"), Value("linear_gelu"));
  EXPECT_EQ(f.meta.at("flops"), Value(2 * 64 * 32 + 64));
  EXPECT_EQ(f.meta.at("bytes"), Value((4 * 32 + 64) * 4 + (64 + 64) * 4 - 2 * 64 * 4));
  EXPECT_EQ(f.meta.at(keys::nn_module_stack),
            Value::dict({{"fc", "torch.nn.modules.linear.Linear"}, {"act", "torch.nn.modules.activation.GELU"}}));
  EXPECT_TRUE(stats.back().problems.empty());
}

TEST(StripDebugTest, EveryAttemptIsRefusedAndCounted) {
  Graph g = conv_graph();
  const Baseline base(g);
  const std::string before = graph::to_json(g);
  auto pass = make_pass("strip_debug");
  const PassStats s = run_pass(*pass, g, &base);
  EXPECT_EQ(s.rejected_protected, 6U);  // the six nodes with a stack trace
  EXPECT_EQ(graph::to_json(g), before);
}

TEST(VerifyPassTest, ReportsChangedProtectedValuesAndVanishedNodes) {
  StoreOptions unprotected;
  unprotected.protected_keys.clear();  // a store that does not protect: tampering succeeds
  Graph g(unprotected);
  g.add_node("x", "placeholder", "x", {}, meta(tensor({2}), 1));
  g.add_node("y", "call_function", "torch.relu", {0}, meta(tensor({2}), 2));
  g.add_node("z", "output", "output", {1}, meta(Value(), 3));
  const Baseline base(g);
  g.node(1).meta.set(keys::val, tensor({3}));
  std::vector<graph::Node> nodes = g.release_nodes();
  nodes.pop_back();  // z vanishes without provenance
  g.replace_nodes(std::move(nodes));
  auto verify = make_pass("verify");
  const PassStats s = run_pass(*verify, g, &base);
  ASSERT_EQ(s.problems.size(), 2U);
  EXPECT_EQ(s.problems[0], "node 'y': protected key 'val' changed since load");
  EXPECT_EQ(s.problems[1], "node 'z' vanished: no from_node chain names it");
}

TEST(PipelineTest, NullStandardKeysVerifyClean) {
  Graph g = graph::load_graph(std::string(NODEMETA_TEST_DATA_DIR) + "/ok/null_standard_keys.json");
  const Baseline base(g);
  const auto stats = run_pipeline(g, pass_names(), base);
  EXPECT_TRUE(stats.back().problems.empty()) << stats.back().problems.front();
  EXPECT_EQ(g.node(1).meta.at("flops"), Value("unknown"));  // no shapes: no guess
}

TEST(DriverTest, DependencyOrderRunsInputsFirst) {
  Graph g = graph::load_graph(NODEMETA_BUNDLED_GRAPH);
  std::vector<std::atomic<int>> done(g.size());
  std::atomic<int> violations{0};
  for_each_in_dependency_order(g, [&](std::size_t i) {
    for (std::size_t j : g.node(i).inputs) {
      if (done[j].load() == 0) violations.fetch_add(1);
    }
    done[i].store(1);
  });
  EXPECT_EQ(violations.load(), 0);
  std::atomic<std::size_t> visited{0};
  for_each_node(g, [&](std::size_t) { visited.fetch_add(1); });
  EXPECT_EQ(visited.load(), g.size());
}

TEST(DriverTest, PassListParsing) {
  EXPECT_EQ(parse_pass_list("cost,verify"), (std::vector<std::string>{"cost", "verify"}));
  EXPECT_THROW(parse_pass_list("cost,,verify"), std::invalid_argument);
  EXPECT_THROW(parse_pass_list("cost,bogus"), std::invalid_argument);
  EXPECT_THROW(parse_pass_list(""), std::invalid_argument);
}

TEST(DeterminismTest, BundledGraphSameResultWithOneTwoAndFourThreads) {
  const Graph loaded = graph::load_graph(NODEMETA_BUNDLED_GRAPH);
  const Baseline base(loaded);
  std::string reference;
  for (int threads : {1, 2, 4}) {
    Graph g = loaded.clone();
    std::vector<PassStats> stats;
    tbb::task_arena(threads).execute([&] { stats = run_pipeline(g, pass_names(), base); });
    EXPECT_TRUE(stats.back().problems.empty());
    const std::string json = graph::to_json(g);
    if (reference.empty()) reference = json;
    EXPECT_EQ(json, reference) << threads << " threads";
  }
}

}  // namespace
}  // namespace nodemeta::passes

namespace nodemeta::passes {
namespace {

// Kind: regression. A refused write inside the transfer is counted, never silently dropped.
TEST(ProvenanceTest, RefusedTypeWriteIsCounted) {
  MetadataStore store;
  store.protect("type");
  NodeMetadata conv = store.create({{"type", "torch.Tensor"}, {"debug_handle", 1}});
  NodeMetadata fused = store.create();
  const SourceNode sources[] = {{"conv", "call_module", "conv1", &conv}};
  const TransferResult r = transfer_provenance(sources, fused, "test");
  EXPECT_EQ(r.rejected, 1u);
  EXPECT_FALSE(fused.contains("type"));
  EXPECT_EQ(fused["debug_handle"].as<std::int64_t>(), 1);
}

}  // namespace
}  // namespace nodemeta::passes
