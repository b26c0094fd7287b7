// The pass driver, the cost model, fusion with provenance, strip_debug and the verifier,
// on small hand-built graphs and on the bundled graph.
#include <gtest/gtest.h>

#include <atomic>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
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

// x -> conv -> bn -> relu -> add(relu, x') ; plus an aten conv and an unknown op. Traced
// in eval mode (the graph attribute says so), so conv+bn folds.
Graph conv_graph() {
  Graph g;
  g.attrs().emplace_back("training", Value(false));
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
  g.add_node("a3", "placeholder", "a3", {}, meta(tensor({2, 4, 32}), 5));
  g.add_node("w3", "get_attr", "w3", {}, meta(tensor({2, 32, 16}), 6));
  g.add_node("bmm", "call_function", "torch.ops.aten.bmm.default", {4, 5}, meta(tensor({2, 4, 16}), 7));
  g.add_node("lin", "call_module", "lin", {1}, meta(tensor({4, 16}), 8, stack1("lin", "torch.nn.modules.linear.Linear")));
  g.add_node("mm_bad", "call_function", "torch.ops.aten.mm.default", {1, 5}, meta(tensor({4, 16}), 9));
  EXPECT_EQ(*estimate_cost(g, 3).flops, 2 * 4 * 16 * 32 + 4 * 16);
  EXPECT_EQ(*estimate_cost(g, 6).flops, 2 * 2 * 4 * 16 * 32);
  EXPECT_EQ(*estimate_cost(g, 7).flops, 2 * 4 * 16 * 32);
  // Operands that do not fit a matrix product: no number.
  EXPECT_FALSE(estimate_cost(g, 8).flops);
  EXPECT_NE(estimate_cost(g, 8).rule.find("operand shapes do not fit"), std::string::npos) << estimate_cost(g, 8).rule;
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

// The progress overload (what `nodemeta run` draws its bar from): one call before each pass,
// one after the last, and the same results as the plain overload.
TEST(PipelineTest, ProgressReportsEachPassThenTheEnd) {
  Graph g = conv_graph();
  Graph plain = g.clone();
  const Baseline base(g);
  const Baseline plain_base(plain);
  std::vector<std::pair<std::size_t, std::string>> calls;
  std::size_t passes_done_at_call = 0;
  const auto stats = run_pipeline(g, pass_names(), base, [&](std::size_t done, std::string_view next) {
    calls.emplace_back(done, std::string(next));
    EXPECT_EQ(done, passes_done_at_call++);  // called in order, between passes
  });
  const std::vector<std::pair<std::size_t, std::string>> expected = {
      {0, "cost"}, {1, "fuse"}, {2, "propagate"}, {3, "strip_debug"}, {4, "verify"}, {5, ""}};
  EXPECT_EQ(calls, expected);
  const auto plain_stats = run_pipeline(plain, pass_names(), plain_base);
  ASSERT_EQ(stats.size(), plain_stats.size());
  for (std::size_t i = 0; i < stats.size(); ++i) {
    EXPECT_EQ(stats[i].name, plain_stats[i].name);
    EXPECT_EQ(stats[i].nodes_touched, plain_stats[i].nodes_touched);
    EXPECT_EQ(stats[i].summary, plain_stats[i].summary);
  }
  // An empty function reports nothing and changes nothing.
  Graph quiet = conv_graph();
  const Baseline quiet_base(quiet);
  EXPECT_EQ(run_pipeline(quiet, pass_names(), quiet_base, PipelineProgress()).size(), 5U);
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

// A pass that throws part-way is undone: every value its PassContext wrote, replaced or
// erased on the graph's nodes is put back, whichever threads wrote them, before the
// exception leaves run_pass.
class ThrowingPass final : public Pass {
 public:
  explicit ThrowingPass(std::size_t throw_at) : throw_at_(throw_at) {}
  std::string_view name() const noexcept override { return "throwing"; }
  std::string_view description() const noexcept override { return "writes, erases, then throws"; }
  void run(PassContext& ctx) override {
    ctx.write(outside_, Key("annotated"), Value(std::int64_t{1}));  // not a graph node: kept
    for_each_node(ctx.graph(), [&](std::size_t i) {
      NodeMetadata& m = ctx.graph().node(i).meta;
      ctx.write(m, Key("annotated"), Value(static_cast<std::int64_t>(i)));  // new key
      ctx.write(m, Key("annotated"), Value(static_cast<std::int64_t>(i + 1)));  // twice
      ctx.write(m, Key("flops"), Value(std::string("replaced")));  // replaces cost's value
      ctx.erase(m, Key("cost_rule"));                               // erases cost's value
      ctx.write(m, keys::val, Value());                             // refused: protected
      if (i == throw_at_) throw std::runtime_error("pass failed at node " + std::to_string(i));
    });
  }
  NodeMetadata outside_;

 private:
  std::size_t throw_at_;
};

TEST(DriverTest, APassThatThrowsIsUndoneOnEveryNode) {
  Graph loaded = graph::load_graph(NODEMETA_BUNDLED_GRAPH);
  const std::vector<std::string> cost{"cost"};
  (void)run_pipeline(loaded, cost, Baseline(loaded));
  const std::string before = graph::to_json(loaded);
  for (int threads : {1, 2, 4}) {
    for (int round = 0; round < 20; ++round) {
      Graph g = loaded.clone();
      const std::size_t nodes_in_store = g.store().node_count();
      ThrowingPass pass((g.size() * static_cast<std::size_t>(round)) / 20);
      EXPECT_THROW(tbb::task_arena(threads).execute([&] { run_pass(pass, g, nullptr); }), std::runtime_error);
      ASSERT_EQ(graph::to_json(g), before) << threads << " threads, round " << round;
      EXPECT_EQ(g.store().node_count(), nodes_in_store);
      EXPECT_EQ(pass.outside_.get(Key("annotated")), Value(std::int64_t{1}));
    }
  }
}

// Undo never loses another writer's work (reproducer core/08): a key another thread wrote
// after the pass wrote it, and one it erased after the pass changed it, keep that thread's
// work, and run_pass counts both as not put back. A key nobody else touched is put back.
class OvertakenPass final : public Pass {
 public:
  std::string_view name() const noexcept override { return "overtaken"; }
  std::string_view description() const noexcept override { return "writes, waits, then fails"; }
  void run(PassContext& ctx) override {
    NodeMetadata& m = ctx.graph().node(0).meta;
    ctx.write(m, Key("flops"), Value(std::int64_t{7}));     // absent before the pass
    ctx.write(m, Key("owner_note"), Value("pass"));          // "before" before the pass
    ctx.write(m, Key("untouched"), Value("pass"));           // nobody else writes it
    phase->store(1);
    while (phase->load() != 2) std::this_thread::yield();  // the other thread writes now
    throw std::runtime_error("pass failed");
  }
  std::atomic<int>* phase = nullptr;
};

TEST(DriverTest, UndoKeepsWhatAnotherThreadWroteAfterThePass) {
  Graph g;
  const std::vector<KeyValue> meta{{Key("owner_note"), Value("before")}, {Key("untouched"), Value("before")}};
  g.add_node("a", "placeholder", "a", {}, meta);
  NodeMetadata owner = g.node(0).meta.view();  // another handle to the same node (as Python's)
  std::atomic<int> phase{0};
  std::thread other([&] {
    while (phase.load() != 1) std::this_thread::yield();
    owner.set(Key("flops"), std::int64_t{42});  // a later, completed write
    EXPECT_TRUE(owner.erase(Key("owner_note")));  // a later, completed erase
    phase.store(2);
  });
  OvertakenPass pass;
  pass.phase = &phase;
  try {
    run_pass(pass, g, nullptr);
    ADD_FAILURE() << "no exception";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("2 of the keys it changed could not be put back"), std::string::npos)
        << e.what();
  }
  other.join();
  EXPECT_EQ(owner.get(Key("flops")), Value(std::int64_t{42}));
  EXPECT_FALSE(owner.contains(Key("owner_note")));
  EXPECT_EQ(owner.get(Key("untouched")), Value("before"));
}

// No value's destructor runs under the journal's lock (reproducer core/10): a value that,
// when released, writes its node through the pass's context must not deadlock. (A hang
// here is the failure; ctest's timeout reports it.)
PassContext* g_versioned_ctx = nullptr;
std::atomic<long> g_versioned_destroyed{0};

struct Versioned {  // on release, notes on its node that it was replaced
  Versioned() = default;
  Versioned(const Versioned&) = default;
  ~Versioned() {
    const long n = ++g_versioned_destroyed;
    if (g_versioned_ctx != nullptr) {
      (void)g_versioned_ctx->write(g_versioned_ctx->graph().node(0).meta, Key("replaced_count"), Value(n));
    }
  }
  bool operator==(const Versioned&) const { return true; }
};

class AnnotatingPass final : public Pass {
 public:
  std::string_view name() const noexcept override { return "annotating"; }
  std::string_view description() const noexcept override { return "rewrites one key often"; }
  void run(PassContext& ctx) override {
    g_versioned_ctx = &ctx;
    for (int i = 0; i < 1000; ++i) ctx.write(ctx.graph().node(0).meta, Key("v"), Value::make<Versioned>());
    (void)release_retired_values();  // the last ones too, while the context is live
    g_versioned_ctx = nullptr;
  }
};

TEST(DriverTest, AValuesDestructorMayWriteItsNodeThroughTheContext) {
  Graph g;
  g.add_node("a", "placeholder", "a", {}, {});
  g_versioned_destroyed = 0;
  AnnotatingPass pass;
  (void)run_pass(pass, g, nullptr);
  EXPECT_GE(g_versioned_destroyed.load(), 999);  // every replaced value, through the context
  const std::optional<Value> count = g.node(0).meta.get(Key("replaced_count"));
  ASSERT_TRUE(count.has_value());
  EXPECT_GE(count->as<std::int64_t>(), 999);
}

// Two views of one node in a graph share one journal (reproducer core/11): a key absent
// before the pass and written through both is absent again after the undo.
class TwiceWritingPass final : public Pass {
 public:
  std::string_view name() const noexcept override { return "twice"; }
  std::string_view description() const noexcept override { return "writes through both handles, then fails"; }
  void run(PassContext& ctx) override {
    ctx.write(ctx.graph().node(0).meta, Key("flops"), Value(std::int64_t{1}));
    ctx.write(ctx.graph().node(1).meta, Key("flops"), Value(std::int64_t{2}));
    ctx.write(ctx.graph().node(1).meta, Key("note"), Value("pass"));
    ctx.erase(ctx.graph().node(0).meta, Key("note"));
    ctx.write(ctx.graph().node(2).meta, Key("flops"), Value(std::int64_t{3}));
    throw std::runtime_error("pass failed");
  }
};

TEST(DriverTest, TwoViewsOfOneNodeAreUndoneAsOneNode) {
  MetadataStore store;
  NodeMetadata shared = store.create({{"note", "before"}});
  NodeMetadata alone = store.create({});
  Graph g = Graph::over(store);
  std::vector<graph::Node> nodes;
  nodes.push_back(graph::Node{"a", "placeholder", "a", {}, shared.view()});
  nodes.push_back(graph::Node{"b", "call_function", "torch.relu", {0}, shared.view()});
  nodes.push_back(graph::Node{"c", "call_function", "torch.relu", {1}, alone.view()});
  g.replace_nodes(std::move(nodes));
  TwiceWritingPass pass;
  try {
    run_pass(pass, g, nullptr);
    ADD_FAILURE() << "no exception";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "pass failed");  // the pass's own: every key put back
  }
  EXPECT_FALSE(shared.contains(Key("flops")));
  EXPECT_EQ(shared.get(Key("note")), Value("before"));
  EXPECT_EQ(shared.size(), 1U);
  EXPECT_FALSE(alone.contains(Key("flops")));
}

// A pass that replaced the node list before it threw is left to undo itself (fuse does):
// the journal then changes nothing, and never touches the nodes it no longer has.
class RestructuringPass final : public Pass {
 public:
  std::string_view name() const noexcept override { return "restructuring"; }
  std::string_view description() const noexcept override { return "writes, replaces the nodes, throws"; }
  void run(PassContext& ctx) override {
    for_each_node(ctx.graph(), [&](std::size_t i) { ctx.write(ctx.graph().node(i).meta, Key("annotated"), Value(true)); });
    std::vector<graph::Node> old = ctx.graph().release_nodes();
    std::vector<graph::Node> moved;  // a new array: the journal's node addresses are gone
    moved.reserve(old.size());
    for (graph::Node& n : old) moved.push_back(std::move(n));
    old = {};
    ctx.graph().replace_nodes(std::move(moved));
    throw std::runtime_error("after the splice");
  }
};

TEST(DriverTest, AJournalNeverTouchesNodesThePassReplaced) {
  Graph g = graph::load_graph(NODEMETA_BUNDLED_GRAPH);
  RestructuringPass pass;
  EXPECT_THROW(run_pass(pass, g, nullptr), std::runtime_error);
  for (const graph::Node& n : g.nodes()) EXPECT_TRUE(n.meta.contains(Key("annotated"))) << n.name;
}

// Two loops of one pass write the same key of every node, each node's two writes on
// whichever threads the loops give them: undo puts back the value from before the pass,
// not the one between the loops.
class TwoLoopsPass final : public Pass {
 public:
  std::string_view name() const noexcept override { return "two_loops"; }
  std::string_view description() const noexcept override { return "writes one key in two loops, throws"; }
  void run(PassContext& ctx) override {
    for (std::int64_t loop = 1; loop <= 2; ++loop) {
      for_each_node(ctx.graph(), [&](std::size_t i) { ctx.write(ctx.graph().node(i).meta, Key("x"), Value(loop)); });
    }
    throw std::runtime_error("after both loops");
  }
};

TEST(DriverTest, UndoRestoresTheValueBeforeThePassWhicheverThreadsWrote) {
  Graph g = graph::load_graph(NODEMETA_BUNDLED_GRAPH);
  for (std::size_t i = 0; i < g.size(); i += 2) g.node(i).meta.set(Key("x"), Value(std::int64_t{-1}));
  const std::string before = graph::to_json(g);
  TwoLoopsPass pass;
  for (int round = 0; round < 50; ++round) {
    EXPECT_THROW(tbb::task_arena(4).execute([&] { run_pass(pass, g, nullptr); }), std::runtime_error);
    ASSERT_EQ(graph::to_json(g), before) << "round " << round;
  }
}

// A pass that rebuilds its node list in the same array (release_nodes, reorder,
// replace_nodes) before it throws: undo checks each handle still holds the node it
// journaled, and leaves a slot that now holds another node alone.
class ReorderingPass final : public Pass {
 public:
  std::string_view name() const noexcept override { return "reordering"; }
  std::string_view description() const noexcept override { return "writes node 0, swaps two nodes, throws"; }
  void run(PassContext& ctx) override {
    Graph& g = ctx.graph();
    ctx.write(g.node(0).meta, Key("x"), Value(std::int64_t{1}));
    std::vector<graph::Node> nodes = g.release_nodes();
    std::swap(nodes[0], nodes[1]);  // two placeholders: still in topological order
    g.replace_nodes(std::move(nodes));
    throw std::runtime_error("after the reorder");
  }
};

TEST(DriverTest, UndoLeavesAHandleThatNowHoldsAnotherNodeAlone) {
  const std::string text = R"({"nodes":[)"
                           R"({"id":0,"name":"a","op":"placeholder","target":"a","inputs":[],"meta":{"val":null,"stack_trace":null,"nn_module_stack":null,"debug_handle":null,"tensor_meta":null,"x":100}},)"
                           R"({"id":1,"name":"b","op":"placeholder","target":"b","inputs":[],"meta":{"val":null,"stack_trace":null,"nn_module_stack":null,"debug_handle":null,"tensor_meta":null,"x":200}},)"
                           R"({"id":2,"name":"out","op":"output","target":"output","inputs":[0,1],"meta":{"val":null,"stack_trace":null,"nn_module_stack":null,"debug_handle":null,"tensor_meta":null}}]})";
  Graph g = graph::parse_graph(text, "two_placeholders");
  ReorderingPass pass;
  EXPECT_THROW(run_pass(pass, g, nullptr), std::runtime_error);
  ASSERT_EQ(g.node(0).name, "b");
  EXPECT_EQ(g.node(0).meta.get(Key("x")), Value(std::int64_t{200}));  // never written: untouched
  EXPECT_EQ(g.node(1).meta.get(Key("x")), Value(std::int64_t{1}));    // moved: the pass's value kept
}

// A key the pass protected after writing it cannot be put back: run_pass says so, with the
// pass's own exception nested.
class ProtectingPass final : public Pass {
 public:
  std::string_view name() const noexcept override { return "protecting"; }
  std::string_view description() const noexcept override { return "writes a key, protects it, throws"; }
  void run(PassContext& ctx) override {
    ctx.write(ctx.graph().node(0).meta, Key("protected_by_the_pass"), Value(std::int64_t{9}));
    ctx.write(ctx.graph().node(1).meta, Key("undone"), Value(std::int64_t{9}));
    ctx.graph().store().protect(Key("protected_by_the_pass"));
    throw std::invalid_argument("the pass's own error");
  }
};

TEST(DriverTest, AKeyProtectedDuringThePassIsReportedNotLost) {
  Graph g = graph::load_graph(NODEMETA_BUNDLED_GRAPH);
  ProtectingPass pass;
  try {
    run_pass(pass, g, nullptr);
    ADD_FAILURE() << "no exception";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("pass 'protecting' threw, and 1 of the keys it changed could not be put back"),
              std::string::npos)
        << e.what();
    try {
      std::rethrow_if_nested(e);
      ADD_FAILURE() << "nothing nested";
    } catch (const std::invalid_argument& inner) {
      EXPECT_STREQ(inner.what(), "the pass's own error");
    }
  }
  EXPECT_EQ(g.node(0).meta.get(Key("protected_by_the_pass")), Value(std::int64_t{9}));
  EXPECT_FALSE(g.node(1).meta.contains(Key("undone")));
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

// ---- Issue 14: crafted graph files (JSON text through parse_graph, as `nodemeta run` loads
// them). Each test names the item it covers and failed before the fix.
namespace nodemeta::passes {
namespace {

// A tensor value in a graph file: {"shape": [...], "dtype": "..."}.
std::string T(std::initializer_list<std::int64_t> shape, const std::string& dtype = "torch.float32") {
  std::string s = R"({"shape":[)";
  bool first = true;
  for (std::int64_t d : shape) {
    s += (first ? "" : ",") + std::to_string(d);
    first = false;
  }
  return s + R"(],"dtype":")" + dtype + R"("})";
}

// One node of a crafted graph file. `result` is its tensor_meta and val (a tensor, a list,
// or null); `type` its meta "type" ("" for none); `stack` its nn_module_stack; `more` extra
// meta fields (each starting with a comma).
struct FileNode {
  std::string name, op, target;
  std::vector<int> inputs;
  std::string result = "null";
  std::string type = "torch.Tensor";
  std::string stack = "{}";
  std::string more = "";
};

FileNode module(const std::string& name, const std::string& type, std::vector<int> inputs, std::string result) {
  return {name, "call_module", name, std::move(inputs), std::move(result), "torch.Tensor",
          "{\"" + name + "\":\"" + type + "\"}", ""};
}

// The graph file's text: the nodes, then an output node reading the last one. `attrs` adds
// top-level fields (each ending with a comma), e.g. R"("training":false,)".
std::string graph_text(const std::vector<FileNode>& nodes, const std::string& attrs = "") {
  std::string s = "{" + attrs + R"("model":"crafted","nodes":[)";
  auto node = [&](std::size_t i, const FileNode& n) {
    std::string in;
    for (int j : n.inputs) in += (in.empty() ? "" : ",") + std::to_string(j);
    s += R"({"id":)" + std::to_string(i) + R"(,"name":")" + n.name + R"(","op":")" + n.op + R"(","target":")" +
         n.target + R"(","inputs":[)" + in + R"(],"meta":{"stack_trace":"  File \"m.py\", line )" +
         std::to_string(i) + R"(\n","nn_module_stack":)" + n.stack + R"(,"tensor_meta":)" + n.result +
         R"(,"val":)" + n.result + R"(,"debug_handle":)" + std::to_string(i + 1) +
         (n.type.empty() ? "" : R"(,"type":")" + n.type + "\"") + n.more + "}},";
  };
  for (std::size_t i = 0; i < nodes.size(); ++i) node(i, nodes[i]);
  node(nodes.size(), FileNode{"output", "output", "output", {static_cast<int>(nodes.size()) - 1}, "null", ""});
  s.pop_back();  // the last comma
  return s + "]}";
}

Graph crafted(const std::vector<FileNode>& nodes, const std::string& attrs = "") {
  return graph::parse_graph(graph_text(nodes, attrs), "crafted.json");
}

const CostEstimate cost_of(const Graph& g, const std::string& name) { return estimate_cost(g, *g.find(name)); }

// Kind: regression (issue 14 item 1). Operands are read by position; a missing one is unknown.
TEST(CostModelTest, OperandsAreMatchedByPosition) {
  Graph g = crafted({{"a", "placeholder", "a", {}, "null"},  // a [4, 1000] whose metadata is null
                     {"b", "placeholder", "b", {}, T({1000, 2})},
                     {"mm", "call_function", "torch.ops.aten.mm.default", {0, 1}, T({4, 2})},
                     {"f8", "placeholder", "f8", {}, T({4, 1000}, "torch.float8_e4m3fn")},
                     {"mm_f8", "call_function", "torch.ops.aten.mm.default", {3, 1}, T({4, 2})},
                     {"bias", "placeholder", "bias", {}, "null"},
                     {"a2", "placeholder", "a2", {}, T({4, 1000})},
                     {"addmm", "call_function", "torch.ops.aten.addmm.default", {5, 6, 1}, T({4, 2})},
                     {"mm_ok", "call_function", "torch.ops.aten.mm.default", {6, 1}, T({4, 2})}});
  for (const char* name : {"mm", "mm_f8", "addmm"}) {
    const CostEstimate c = cost_of(g, name);
    EXPECT_FALSE(c.flops) << name << ": " << *c.flops;  // was 32, 32 and 40: K read from b
    EXPECT_FALSE(c.bytes) << name;
    EXPECT_NE(c.rule.find("operand 0"), std::string::npos) << c.rule;
  }
  EXPECT_NE(cost_of(g, "mm_f8").rule.find("torch.float8_e4m3fn"), std::string::npos);
  EXPECT_EQ(cost_of(g, "mm_ok").flops, 2 * 8 * 1000);  // 16,000
  EXPECT_EQ(cost_of(g, "mm_ok").bytes, (4000 + 2000 + 8) * 4);
  // The critical path through an unknown operand is not complete.
  const Baseline base(g);
  run_pipeline(g, std::vector<std::string>{"cost", "propagate"}, base);
  EXPECT_EQ(g.node(*g.find("mm")).meta.at("critical_path_complete"), Value(false));
}

// Kind: regression (issue 14 item 2). A tensor op without shapes is unknown, not a free scalar op.
TEST(CostModelTest, TensorResultWithoutShapesIsUnknown) {
  Graph g = crafted({{"x", "placeholder", "x", {}, T({1024, 1024})},
                     {"y", "placeholder", "y", {}, T({1024, 1024})},
                     {"add", "call_function", "_operator.add", {0, 1}, "null", "torch.Tensor"},
                     {"n", "call_function", "getattr", {0}, "1024", "builtins.int"},
                     {"add_int", "call_function", "_operator.add", {3}, "1025", "builtins.int"},
                     {"none", "call_function", "_operator.mul", {3}, "null", ""}});
  const CostEstimate add = cost_of(g, "add");
  EXPECT_FALSE(add.flops) << add.rule;  // was 0 ("scalar op add (no tensor result)")
  EXPECT_NE(add.rule.find("no tensor shape"), std::string::npos) << add.rule;
  EXPECT_EQ(cost_of(g, "add_int").flops, 0);  // a real scalar op: int type, int val
  EXPECT_NE(cost_of(g, "add_int").rule.find("scalar op add"), std::string::npos);
  EXPECT_FALSE(cost_of(g, "none").flops);  // nothing says what it is
  const Baseline base(g);
  const auto stats = run_pipeline(g, std::vector<std::string>{"cost"}, base);
  EXPECT_EQ(stats[0].summary, "cost unknown for 2 of 7 nodes");  // was 0 of 7
}

// Kind: regression (issue 14 item 3). A count past int64 or a negative dimension is unknown.
TEST(CostModelTest, OverflowAndNegativeDimensionsAreUnknown) {
  const std::int64_t m = std::int64_t{1} << 20, k = std::int64_t{1} << 24;
  Graph g = crafted({{"a", "placeholder", "a", {}, T({m, k}, "torch.bool")},
                     {"b", "placeholder", "b", {}, T({k, m}, "torch.bool")},
                     {"mm", "call_function", "torch.ops.aten.mm.default", {0, 1}, T({m, m}, "torch.bool")},
                     {"neg", "placeholder", "neg", {}, T({-1, 8})},
                     {"relu", "call_function", "torch.relu", {3}, T({-1, 8})}});
  const CostEstimate mm = cost_of(g, "mm");
  EXPECT_FALSE(mm.flops) << *mm.flops;  // 2^65: was 0 (signed overflow)
  EXPECT_NE(mm.rule.find("does not fit int64"), std::string::npos) << mm.rule;
  const CostEstimate relu = cost_of(g, "relu");
  EXPECT_FALSE(relu.flops) << *relu.flops;  // was -8 flops, -64 bytes
  EXPECT_NE(relu.rule.find("negative dimension"), std::string::npos) << relu.rule;
  // A path longer than int64 saturates and is not complete: three elementwise ops of
  // 2^62 - 1 elements (bool, so their bytes fit).
  const std::int64_t big = (std::int64_t{1} << 62) - 1;  // 3 * 1537228672809129301
  Graph p = crafted({{"x", "placeholder", "x", {}, T({3, big / 3}, "torch.bool")},
                     {"r1", "call_function", "torch.relu", {0}, T({3, big / 3}, "torch.bool")},
                     {"r2", "call_function", "torch.relu", {1}, T({3, big / 3}, "torch.bool")},
                     {"r3", "call_function", "torch.relu", {2}, T({3, big / 3}, "torch.bool")}});
  const Baseline base(p);
  run_pipeline(p, std::vector<std::string>{"cost", "propagate"}, base);
  const NodeMetadata& r3 = p.node(*p.find("r3")).meta;
  EXPECT_EQ(r3.at("flops"), Value(big));
  EXPECT_EQ(r3.at("critical_path_flops"), Value(INT64_MAX));
  EXPECT_EQ(r3.at("critical_path_complete"), Value(false));
}

FileNode mha(const std::string& name, std::vector<int> inputs, std::string result) {
  return module(name, "torch.nn.modules.activation.MultiheadAttention", std::move(inputs), "[" + result + ",null]");
}

// Kind: regression (issue 14 item 4). Attention uses the key/value inputs and either layout.
TEST(CostModelTest, AttentionUsesEveryInputAndItsLayout) {
  Graph g = crafted({{"q", "placeholder", "q", {}, T({1, 10, 64})},
                     {"kv", "placeholder", "kv", {}, T({1, 1000, 64})},
                     mha("cross", {0, 1}, T({1, 10, 64})),
                     {"q_lne", "placeholder", "q_lne", {}, T({10, 1, 64})},
                     {"kv_lne", "placeholder", "kv_lne", {}, T({1000, 1, 64})},
                     mha("cross_lne", {3, 4}, T({10, 1, 64})),
                     {"k", "placeholder", "k", {}, T({1, 1000, 32})},
                     {"v", "placeholder", "v", {}, T({1, 1000, 16})},
                     mha("qkv", {0, 6, 7}, T({1, 10, 64})),
                     {"x", "placeholder", "x", {}, T({1, 197, 768})},
                     mha("self", {9}, T({1, 197, 768}))});
  // 4*N*L*E^2 + 2*N*S*E*(kdim + vdim) + 4*N*L*S*E with N = 1, L = 10, S = 1000, E = 64.
  const std::int64_t cross = 4 * 10 * 64 * 64 + 2 * 1000 * 64 * 128 + 4 * 10 * 1000 * 64;
  EXPECT_EQ(cross, 19'107'840);
  EXPECT_EQ(cost_of(g, "cross").flops, cross) << cost_of(g, "cross").rule;  // was 353,280 (self-attention of q)
  EXPECT_EQ(cost_of(g, "cross_lne").flops, cross) << cost_of(g, "cross_lne").rule;  // [L, N, E]: N, L not swapped
  EXPECT_EQ(cost_of(g, "qkv").flops, 4 * 10 * 64 * 64 + 2 * 1000 * 64 * (32 + 16) + 4 * 10 * 1000 * 64);
  // Self-attention on [1, 197, 768] fits both layouts, which differ: unknown, with the
  // smaller count ([L, N, E]: N = 197, L = 1) kept as a lower bound.
  const CostEstimate self = cost_of(g, "self");
  EXPECT_FALSE(self.flops) << *self.flops;
  const std::int64_t e = 768;
  EXPECT_EQ(self.flops_lower_bound, 4 * 197 * e * e + 4 * 197 * e * e + 4 * 197 * e);
  EXPECT_NE(self.rule.find("batch_first"), std::string::npos) << self.rule;
}

// Kind: regression (issue 14, also). aten.convolution with transposed=True: its weight is
// [C_in, C_out/groups, k...] and every input element is multiplied by it.
TEST(CostModelTest, TransposedConvolution) {
  const std::string transposed_stack = R"({"up":"torch.nn.modules.conv.ConvTranspose2d"})";
  Graph g = crafted({{"x", "placeholder", "x", {}, T({1, 16, 8, 8})},
                     {"w", "get_attr", "w", {}, T({16, 8, 3, 3})},
                     {"up", "call_function", "torch.ops.aten.convolution.default", {0, 1}, T({1, 8, 16, 16}),
                      "torch.Tensor", transposed_stack},
                     {"up2", "call_function", "torch.ops.aten.convolution.default", {0, 1}, T({1, 8, 16, 16})},
                     // depthwise shapes fit both kinds; no module says which
                     {"dw_w", "get_attr", "dw_w", {}, T({16, 1, 3, 3})},
                     {"dw", "call_function", "torch.ops.aten.convolution.default", {0, 4}, T({1, 16, 4, 4})},
                     {"dw_conv", "call_function", "torch.ops.aten.convolution.default", {0, 4}, T({1, 16, 4, 4}),
                      "torch.Tensor", R"({"features.0":"torch.nn.modules.conv.Conv2d"})"}});
  const std::int64_t transposed = 2 * (16 * 8 * 8) * (8 * 3 * 3);  // 2*numel(in)*C_out/g*prod(k)
  EXPECT_EQ(cost_of(g, "up").flops, transposed) << cost_of(g, "up").rule;  // was 2*numel(out)*..., twice as many
  EXPECT_EQ(cost_of(g, "up2").flops, transposed) << cost_of(g, "up2").rule;  // the shapes fit only transposed
  EXPECT_FALSE(cost_of(g, "dw").flops) << cost_of(g, "dw").rule;
  EXPECT_EQ(cost_of(g, "dw").flops_lower_bound, 2 * (16 * 4 * 4) * 9);
  EXPECT_EQ(cost_of(g, "dw_conv").flops, 2 * (16 * 4 * 4) * 9);  // made by torch.nn.Conv2d: forward
}

// Kind: regression (issue 14, also). Nested tuple results (an LSTM's (out, (h, c))) count
// every tensor, not only the top level.
TEST(CostModelTest, NestedTupleResultsCountEveryTensor) {
  const std::string lstm = "[" + T({5, 1, 32}) + ",[" + T({1, 1, 32}) + "," + T({1, 1, 32}) + "]]";
  Graph g = crafted({{"x", "placeholder", "x", {}, T({5, 1, 16})},
                     module("lstm", "torch.nn.modules.rnn.LSTM", {0}, lstm),
                     {"cat", "call_function", "torch.cat", {1}, T({7, 1, 32})}});
  EXPECT_EQ(std::optional<std::int64_t>(result_bytes(g.node(1))), (5 * 32 + 32 + 32) * 4);  // was 5*32*4
  EXPECT_EQ(cost_of(g, "cat").bytes, (5 * 32 + 32 + 32) * 4 + 7 * 32 * 4);
  EXPECT_FALSE(cost_of(g, "lstm").flops);  // no formula
}

// ---- The graph's "modules" table (issue 23 item 2): torch 1.13's symbolic_trace records no
// nn_module_stack, so nodemeta.fx writes each called module's type, attributes and
// parameter shapes as a graph attribute; cost reads it for call_module nodes.

// A call_module node with no nn_module_stack, as symbolic_trace makes it.
FileNode bare(const std::string& name, std::vector<int> inputs, std::string result) {
  return {name, "call_module", name, std::move(inputs), std::move(result), "torch.Tensor", "{}", ""};
}

std::string entry(const std::string& type, const std::string& attributes, const std::string& parameters) {
  return R"({"type":"torch.nn.modules.)" + type + R"(","attributes":{)" + attributes + R"(},"parameters":{)" +
         parameters + "}}";
}

std::string param(std::initializer_list<std::int64_t> shape) { return T(shape); }

// The modules table for module_nodes(): each entry as nodemeta.fx writes it.
std::string modules_attr() {
  return R"("training":false,"modules":{)"
         R"("conv":)" + entry("conv.Conv2d", R"("groups":1,"kernel_size":[3,3])",
                             R"("weight":)" + param({8, 3, 3, 3}) + R"(,"bias":null)") + "," +
         R"("dw":)" + entry("conv.Conv2d", R"("groups":8)", R"("weight":)" + param({8, 1, 3, 3}) +
                           R"(,"bias":)" + param({8})) + "," +
         R"("up":)" + entry("conv.ConvTranspose2d", R"("groups":1)",
                           R"("weight":)" + param({8, 4, 2, 2}) + R"(,"bias":null)") + "," +
         R"("pool":)" + entry("pooling.MaxPool2d", R"("kernel_size":3,"stride":2)", "") + "," +
         R"("avg":)" + entry("pooling.AvgPool2d", R"("kernel_size":[2,1])", "") + "," +
         R"("bn":)" + entry("batchnorm.BatchNorm2d", R"("eps":1e-05)", R"("weight":)" + param({8}) +
                           R"(,"bias":)" + param({8})) + "," +
         R"("gap":)" + entry("pooling.AdaptiveAvgPool2d", R"("output_size":[1,1])", "") + "," +
         R"("flat":)" + entry("flatten.Flatten", R"("start_dim":1,"end_dim":-1)", "") + "," +
         R"("fc":)" + entry("linear.Linear", R"("in_features":8,"out_features":10)",
                           R"("weight":)" + param({10, 8}) + R"(,"bias":)" + param({10})) + "," +
         R"("gn":)" + entry("normalization.GroupNorm", R"("num_groups":2)", "") + "," +
         R"("amax":)" + entry("pooling.AdaptiveMaxPool2d", R"("output_size":1)", "") + "," +
         R"("emb":)" + entry("sparse.Embedding", "", R"("weight":)" + param({100, 16})) + "," +
         R"("nokernel":)" + entry("pooling.MaxPool2d", "", "") + "," +
         R"("noweight":)" + entry("conv.Conv2d", R"("groups":1)", "") + "," +
         R"("wrongweight":)" + entry("conv.Conv2d", R"("groups":1)", R"("weight":)" + param({8, 2, 3, 3}) +
                                    R"(,"bias":null)") + "},";
}

std::vector<FileNode> module_nodes() {
  return {{"x", "placeholder", "x", {}, T({1, 3, 8, 8})},
          bare("conv", {0}, T({1, 8, 8, 8})),              // 1
          bare("dw", {1}, T({1, 8, 8, 8})),                // 2
          bare("up", {2}, T({1, 4, 16, 16})),              // 3
          bare("pool", {2}, T({1, 8, 3, 3})),              // 4
          bare("avg", {2}, T({1, 8, 4, 8})),               // 5
          bare("bn", {2}, T({1, 8, 8, 8})),                // 6
          bare("gap", {6}, T({1, 8, 1, 1})),               // 7
          bare("flat", {7}, T({1, 8})),                    // 8
          bare("fc", {8}, T({1, 10})),                     // 9
          bare("gn", {2}, T({1, 8, 8, 8})),                // 10
          bare("amax", {2}, T({1, 8, 1, 1})),              // 11
          {"ids", "placeholder", "ids", {}, T({2, 5}, "torch.int64")},
          bare("emb", {12}, T({2, 5, 16})),                // 13
          bare("nokernel", {2}, T({1, 8, 3, 3})),          // 14
          bare("noweight", {0}, T({1, 8, 8, 8})),          // 15
          bare("wrongweight", {0}, T({1, 8, 8, 8})),       // 16
          bare("unlisted", {2}, T({1, 8, 8, 8}))};         // 17
}

TEST(CostModelTest, ModulesTableCostsCallModuleNodes) {
  const Graph g = crafted(module_nodes(), modules_attr());
  const std::int64_t act = 8 * 8 * 8;
  EXPECT_EQ(cost_of(g, "conv").flops, 2 * act * (3 * 3 * 3)) << cost_of(g, "conv").rule;
  EXPECT_EQ(cost_of(g, "conv").bytes, (3 * 64 + act + 8 * 27) * 4);  // in + out + weight
  EXPECT_NE(cost_of(g, "conv").rule.find("modules table"), std::string::npos);
  EXPECT_EQ(cost_of(g, "dw").flops, 2 * act * 9 + act) << cost_of(g, "dw").rule;  // depthwise, + bias
  EXPECT_EQ(cost_of(g, "dw").bytes, (act + act + 8 * 9 + 8) * 4);
  EXPECT_EQ(cost_of(g, "up").flops, 2 * act * (4 * 2 * 2)) << cost_of(g, "up").rule;  // 2*numel(in)*...
  EXPECT_EQ(cost_of(g, "pool").flops, 8 * 9 * 9) << cost_of(g, "pool").rule;  // kernel 3: 3x3
  EXPECT_EQ(cost_of(g, "avg").flops, 8 * 4 * 8 * 2) << cost_of(g, "avg").rule;  // kernel [2, 1]
  EXPECT_EQ(cost_of(g, "bn").flops, 2 * act);  // eval mode
  EXPECT_EQ(cost_of(g, "gap").flops, act);
  EXPECT_EQ(cost_of(g, "flat").flops, 0);
  EXPECT_EQ(cost_of(g, "fc").flops, 2 * 10 * 8 + 10) << cost_of(g, "fc").rule;  // + bias
  EXPECT_EQ(cost_of(g, "fc").bytes, (8 + 10 + 80 + 10) * 4);
  EXPECT_EQ(cost_of(g, "gn").flops, 5 * act);
  EXPECT_EQ(cost_of(g, "amax").flops, act);
  EXPECT_EQ(cost_of(g, "emb").flops, 0);
  EXPECT_EQ(cost_of(g, "emb").bytes, 2 * (10 * 16 * 4) + 10 * 8);
  // What the table does not say stays unknown, with the reason.
  EXPECT_FALSE(cost_of(g, "nokernel").flops);
  EXPECT_NE(cost_of(g, "nokernel").rule.find("records no kernel_size"), std::string::npos) << cost_of(g, "nokernel").rule;
  EXPECT_FALSE(cost_of(g, "noweight").flops);
  EXPECT_NE(cost_of(g, "noweight").rule.find("records no weight shape"), std::string::npos) << cost_of(g, "noweight").rule;
  EXPECT_FALSE(cost_of(g, "wrongweight").flops);  // C_in 3 is not groups 1 * 2
  EXPECT_NE(cost_of(g, "wrongweight").rule.find("do not fit"), std::string::npos) << cost_of(g, "wrongweight").rule;
  EXPECT_FALSE(cost_of(g, "unlisted").flops);
  EXPECT_NE(cost_of(g, "unlisted").rule.find("no type in nn_module_stack or the graph's modules table"),
            std::string::npos) << cost_of(g, "unlisted").rule;
}

// Without the table (a file that predates it) the same nodes are costed as before: unknown.
TEST(CostModelTest, WithoutModulesTableCallModuleNodesStayUnknown) {
  const Graph g = crafted(module_nodes(), R"("training":false,)");
  for (const char* name : {"conv", "pool", "fc", "bn"}) {
    const CostEstimate c = cost_of(g, name);
    EXPECT_FALSE(c.flops) << name;
    EXPECT_NE(c.rule.find("no type in nn_module_stack"), std::string::npos) << c.rule;
  }
  // nn_module_stack's type, where present, is the type; without the table a conv module is
  // unknown as before (its kernel is not in the node's metadata).
  const Graph s = crafted({{"x", "placeholder", "x", {}, T({1, 3, 8, 8})},
                           module("conv", "torch.nn.modules.conv.Conv2d", {0}, T({1, 8, 8, 8}))});
  EXPECT_NE(cost_of(s, "conv").rule.find("kernel size and groups are not in fx call_module metadata"),
            std::string::npos) << cost_of(s, "conv").rule;
}

// The cost pass (which indexes the table once) writes what estimate_cost computes, and a
// saved graph keeps the table: loading it again gives the same costs.
TEST(CostModelTest, ModulesTableSurvivesSaveAndThePassAgrees) {
  Graph g = crafted(module_nodes(), modules_attr());
  const Baseline base(g);
  run_pipeline(g, std::vector<std::string>{"cost"}, base);
  Graph again = graph::parse_graph(graph::to_json(g), "saved.json");
  for (std::size_t i = 0; i < g.size(); ++i) {
    const CostEstimate c = estimate_cost(again, i);
    const NodeMetadata& m = g.node(i).meta;
    EXPECT_EQ(m.at("flops"), c.flops ? Value(*c.flops) : Value("unknown")) << g.node(i).name;
    EXPECT_EQ(m.at("cost_rule"), Value(c.rule)) << g.node(i).name;
  }
  EXPECT_EQ(graph::to_json(again), graph::to_json(g));
}

// MultiheadAttention's batch_first, which the shapes cannot settle for self-attention, comes
// from the table.
TEST(CostModelTest, ModulesTableSettlesAttentionLayout) {
  const std::string attrs = R"("modules":{"attn":{"type":"torch.nn.modules.activation.MultiheadAttention",)"
                            R"("attributes":{"batch_first":false},"parameters":{}}},)";
  const std::vector<FileNode> nodes = {{"q", "placeholder", "q", {}, T({2, 6, 8})},
                                       bare("attn", {0}, "[" + T({2, 6, 8}) + ",null]")};
  const Graph without = crafted({nodes[0], module("attn", "torch.nn.modules.activation.MultiheadAttention", {0},
                                                  "[" + T({2, 6, 8}) + ",null]")});
  EXPECT_EQ(cost_of(without, "attn").flops, std::nullopt);  // both layouts fit, with different counts
  const Graph g = crafted(nodes, attrs);
  const CostEstimate c = cost_of(g, "attn");
  // [L, N, E]: N = 6, L = S = 2, E = 8
  EXPECT_EQ(c.flops, 4 * 6 * 2 * 64 + 2 * 6 * 2 * 8 * 16 + 4 * 6 * 2 * 2 * 8) << c.rule;
  EXPECT_NE(c.rule.find("batch_first from the graph's modules table"), std::string::npos) << c.rule;
}

// The graph's "calls" table: a call's non-node arguments, for the ops whose cost depends on
// one (a functional pool's kernel size, stochastic_depth's flag, swin's window).
TEST(CostModelTest, CallsTableCostsFunctionalPoolsAndStochasticDepth) {
  const std::vector<FileNode> nodes = {
      {"x", "placeholder", "x", {}, T({1, 8, 9, 9})},
      {"max_pool2d", "call_function", "torch.nn.functional.max_pool2d", {0}, T({1, 8, 4, 4})},
      {"avg_pool2d", "call_function", "torch._C._nn.avg_pool2d", {0}, T({1, 8, 9, 9})},
      {"sd_eval", "call_function", "torchvision.ops.stochastic_depth.stochastic_depth", {0}, T({1, 8, 9, 9})},
      {"sd_train", "call_function", "torchvision.ops.stochastic_depth.stochastic_depth", {0}, T({1, 8, 9, 9})}};
  const std::string calls =
      R"("calls":{"max_pool2d":{"args":[{"node":"x"}],"kwargs":{"kernel_size":3,"stride":2}},)"
      R"("avg_pool2d":{"args":[{"node":"x"},[3,1],1,1],"kwargs":{}},)"
      R"("sd_eval":{"args":[{"node":"x"},0.1,"row",false],"kwargs":{}},)"
      R"("sd_train":{"args":[{"node":"x"},0.1,"row",true],"kwargs":{}}},)";
  const Graph g = crafted(nodes, calls);
  EXPECT_EQ(cost_of(g, "max_pool2d").flops, 8 * 16 * 9) << cost_of(g, "max_pool2d").rule;
  EXPECT_NE(cost_of(g, "max_pool2d").rule.find("calls table"), std::string::npos);
  EXPECT_EQ(cost_of(g, "avg_pool2d").flops, 8 * 81 * 3) << cost_of(g, "avg_pool2d").rule;  // was "no cost formula"
  EXPECT_EQ(cost_of(g, "sd_eval").flops, 0) << cost_of(g, "sd_eval").rule;  // the call's own flag, mode unknown
  EXPECT_EQ(cost_of(g, "sd_train").flops, 8 * 81) << cost_of(g, "sd_train").rule;
  const Graph without = crafted(nodes);
  EXPECT_FALSE(cost_of(without, "max_pool2d").flops);
  EXPECT_NE(cost_of(without, "max_pool2d").rule.find("kernel size is not in the node metadata"), std::string::npos);
  EXPECT_FALSE(cost_of(without, "avg_pool2d").flops);
  EXPECT_FALSE(cost_of(without, "sd_eval").flops);  // identity or not: the graph's mode decides
  EXPECT_NE(cost_of(without, "sd_eval").rule.find("training"), std::string::npos) << cost_of(without, "sd_eval").rule;
}

// swin's shifted_window_attention: every step the function runs, from its operands' shapes and
// the window size, head count and shift of the calls table.
TEST(CostModelTest, CallsTableCostsShiftedWindowAttention) {
  const std::int64_t b = 1, h = 6, w = 5, c = 8, heads = 2, a = 4, bw = 4;  // pads to 8 x 8
  const std::vector<FileNode> nodes = {
      {"x", "placeholder", "x", {}, T({b, h, w, c})},
      {"qkv_w", "get_attr", "qkv_w", {}, T({3 * c, c})},
      {"proj_w", "get_attr", "proj_w", {}, T({c, c})},
      {"rpb", "placeholder", "rpb", {}, T({1, heads, a * bw, a * bw})},
      {"qkv_b", "get_attr", "qkv_b", {}, T({3 * c})},
      {"swa", "call_function", "torchvision.models.swin_transformer.shifted_window_attention", {0, 1, 2, 3, 4},
       T({b, h, w, c})},
      {"swa_shift", "call_function", "torchvision.models.swin_transformer.shifted_window_attention", {0, 1, 2, 3},
       T({b, h, w, c})}};
  const std::string calls =
      R"("calls":{"swa":{"args":[{"node":"x"},{"node":"qkv_w"},{"node":"proj_w"},{"node":"rpb"},[4,4],2],)"
      R"("kwargs":{"shift_size":[0,0],"attention_dropout":0.0,"dropout":0.0,"qkv_bias":{"node":"qkv_b"},"proj_bias":null}},)"
      R"("swa_shift":{"args":[{"node":"x"},{"node":"qkv_w"},{"node":"proj_w"},{"node":"rpb"},[4,4],2],)"
      R"("kwargs":{"shift_size":[2,2]}}},)";
  const Graph g = crafted(nodes, calls);
  const std::int64_t t = b * 8 * 8, l = a * bw;
  const std::int64_t base = 2 * t * c * 3 * c + 2 * t * c * c + 4 * t * l * c + 6 * t * heads * l + t * c;
  EXPECT_EQ(cost_of(g, "swa").flops, base + t * 3 * c) << cost_of(g, "swa").rule;  // + the qkv bias
  EXPECT_EQ(cost_of(g, "swa_shift").flops, base + t * heads * l) << cost_of(g, "swa_shift").rule;  // + the mask
  const std::int64_t operands = (b * h * w * c + 3 * c * c + c * c + heads * l * l) * 4;
  EXPECT_EQ(cost_of(g, "swa").bytes, operands + 3 * c * 4 + b * h * w * c * 4);
  const Graph without = crafted(nodes);
  EXPECT_FALSE(cost_of(without, "swa").flops);
  EXPECT_NE(cost_of(without, "swa").rule.find("no calls table"), std::string::npos) << cost_of(without, "swa").rule;
}

// einsum's equation comes from the calls table; chunk and swapaxes (maxvit) are views.
TEST(CostModelTest, CallsTableCostsEinsum) {
  const std::vector<FileNode> nodes = {
      {"q", "placeholder", "q", {}, T({2, 3, 5, 4})},
      {"k", "placeholder", "k", {}, T({2, 1, 7, 4})},
      {"einsum", "call_function", "torch.functional.einsum", {0, 1}, T({2, 3, 5, 7})},
      {"listed", "call_function", "torch.functional.einsum", {0, 1}, T({2, 3, 5, 7})},
      {"three", "call_function", "torch.functional.einsum", {0, 1}, T({2, 3, 5, 7})},
      {"bad", "call_function", "torch.functional.einsum", {0, 1}, T({2, 3, 5, 7})},
      {"chunk", "call_function", "torch.chunk", {0}, "[" + T({2, 3, 5, 2}) + "," + T({2, 3, 5, 2}) + "]", "builtins.tuple"},
      {"swapaxes", "call_function", "torch.swapaxes", {0}, T({2, 3, 4, 5})}};
  const std::string calls =
      R"("calls":{"einsum":{"args":["b h i d, b h j d -> b h i j",{"node":"q"},{"node":"k"}],"kwargs":{}},)"
      R"("listed":{"args":["bhid,bhjd->bhij",[{"node":"q"},{"node":"k"}]],"kwargs":{}},)"
      R"("three":{"args":["bhid,bhjd,bhjd->bhij",{"node":"q"},{"node":"k"},{"node":"k"}],"kwargs":{}},)"
      R"("bad":{"args":["bhid,bhdj->bhij",{"node":"q"},{"node":"k"}],"kwargs":{}}},)";
  const Graph g = crafted(nodes, calls);
  const std::int64_t expected = 2 * 2 * 3 * 5 * 4 * 7;  // b, h (1 broadcasts to 3), i, d, j
  EXPECT_EQ(cost_of(g, "einsum").flops, expected) << cost_of(g, "einsum").rule;
  EXPECT_EQ(cost_of(g, "listed").flops, expected) << cost_of(g, "listed").rule;
  EXPECT_FALSE(cost_of(g, "three").flops);
  EXPECT_NE(cost_of(g, "three").rule.find("only two operands"), std::string::npos) << cost_of(g, "three").rule;
  EXPECT_FALSE(cost_of(g, "bad").flops);  // d is 4 in q, 7 in k
  EXPECT_NE(cost_of(g, "bad").rule.find("index 'd' has sizes 4 and 7"), std::string::npos) << cost_of(g, "bad").rule;
  EXPECT_EQ(cost_of(g, "chunk").flops, 0);
  EXPECT_EQ(cost_of(g, "swapaxes").flops, 0);
  EXPECT_FALSE(cost_of(crafted(nodes), "einsum").flops);  // no calls table: no equation
}

// A malformed table is read defensively: whatever it holds, the node is unknown with a reason
// (or costed from what is usable), never a crash or a guess.
TEST(CostModelTest, MalformedTablesGiveReasonsNotCrashes) {
  const std::vector<FileNode> nodes = {{"x", "placeholder", "x", {}, T({1, 3, 8, 8})},
                                       bare("conv", {0}, T({1, 8, 8, 8})),
                                       bare("pool", {0}, T({1, 3, 4, 4})),
                                       bare("fc", {0}, T({1, 3, 8, 10})),
                                       {"mp", "call_function", "torch.nn.functional.max_pool2d", {0}, T({1, 3, 4, 4})}};
  const std::string attrs =
      R"("modules":{"conv":{"type":"torch.nn.modules.conv.Conv2d","parameters":{"weight":{"shape":"x","dtype":"torch.float32"}}},)"
      R"("pool":{"type":"torch.nn.modules.pooling.MaxPool2d","attributes":{"kernel_size":[2,"a"]}},)"
      R"("fc":{"type":7}},"calls":{"mp":{"args":"not a list","kwargs":[1]}},)";
  const Graph g = crafted(nodes, attrs);
  for (const char* name : {"conv", "pool", "fc", "mp"}) {
    const CostEstimate c = cost_of(g, name);
    EXPECT_FALSE(c.flops) << name << ": " << c.rule;
    EXPECT_EQ(c.rule.rfind("unknown: ", 0), 0U) << c.rule;
  }
  EXPECT_NE(cost_of(g, "conv").rule.find("shape is not a list"), std::string::npos) << cost_of(g, "conv").rule;
  EXPECT_NE(cost_of(g, "fc").rule.find("no type in nn_module_stack or the graph's modules table"), std::string::npos);
  for (const std::string& table : {std::string(R"("modules":[1,2],"calls":"x",)"), std::string(R"("modules":null,)")}) {
    const Graph h = crafted(nodes, table);
    const Baseline base(h);
    Graph copy = h.clone();
    run_pipeline(copy, std::vector<std::string>{"cost"}, base);
    EXPECT_EQ(copy.node(1).meta.at("flops"), Value("unknown")) << table;
  }
}

// Kind: regression (issue 14, also). Batch norm and dropout cost depend on the training
// mode, which only the graph attribute "training" records.
TEST(CostModelTest, BatchNormAndDropoutFollowTheMode) {
  const std::vector<FileNode> nodes = {{"x", "placeholder", "x", {}, T({1, 8, 4, 4})},
                                       module("bn", "torch.nn.modules.batchnorm.BatchNorm2d", {0}, T({1, 8, 4, 4})),
                                       module("drop", "torch.nn.modules.dropout.Dropout", {1}, T({1, 8, 4, 4}))};
  const Graph unknown_mode = crafted(nodes);
  EXPECT_FALSE(cost_of(unknown_mode, "bn").flops);  // was 2*numel (inference) whatever the mode
  EXPECT_EQ(cost_of(unknown_mode, "bn").flops_lower_bound, 2 * 128);
  EXPECT_FALSE(cost_of(unknown_mode, "drop").flops);  // was 0 (identity) whatever the mode
  const Graph eval = crafted(nodes, R"("training":false,)");
  EXPECT_EQ(cost_of(eval, "bn").flops, 2 * 128);
  EXPECT_EQ(cost_of(eval, "drop").flops, 0);
  const Graph train = crafted(nodes, R"("training":true,)");
  EXPECT_EQ(cost_of(train, "bn").flops, 5 * 128);
  EXPECT_EQ(cost_of(train, "drop").flops, 128);
  EXPECT_EQ(training_mode(train), true);
  EXPECT_EQ(training_mode(eval), false);
  EXPECT_EQ(training_mode(unknown_mode), std::nullopt);
}

// Kind: regression (issue 14, also). Module formulas are for torch.nn's classes, not for any
// class with the same bare name.
TEST(CostModelTest, ModuleFormulasOnlyForTorchNnClasses) {
  Graph g = crafted({{"x", "placeholder", "x", {}, T({4, 32})},
                     module("fc", "torch.nn.modules.linear.Linear", {0}, T({4, 16})),
                     module("mine", "__main__.Linear", {0}, T({4, 16})),
                     module("qrelu", "torch.ao.nn.quantized.modules.activation.ReLU", {0}, T({4, 32}))});
  EXPECT_EQ(cost_of(g, "fc").flops, 2 * 64 * 32);
  EXPECT_FALSE(cost_of(g, "mine").flops);  // was costed as torch.nn.Linear
  EXPECT_NE(cost_of(g, "mine").rule.find("module:__main__.Linear"), std::string::npos);
  EXPECT_FALSE(cost_of(g, "qrelu").flops);
}


// conv -> bn -> relu (conv's cost unknown: fx modules carry no kernel size), then
// fc -> gelu, then a 1x1 aten convolution that reads the chain's result.
std::vector<FileNode> fusable() {
  return {{"x", "placeholder", "x", {}, T({1, 3, 8, 8})},
          module("conv", "torch.nn.modules.conv.Conv2d", {0}, T({1, 8, 8, 8})),
          module("bn", "torch.nn.modules.batchnorm.BatchNorm2d", {1}, T({1, 8, 8, 8})),
          module("relu", "torch.nn.modules.activation.ReLU", {2}, T({1, 8, 8, 8})),
          {"flat", "call_function", "torch.flatten", {3}, T({1, 512})},
          module("fc", "torch.nn.modules.linear.Linear", {4}, T({1, 64})),
          module("act", "torch.nn.modules.activation.GELU", {5}, T({1, 64}))};
}

std::vector<std::string> passes(std::string_view list) { return parse_pass_list(list); }

// Kind: regression (issue 14 item 5). Fusing keeps the known part of a chain's cost: the
// critical path is the same as without fuse, and still marked incomplete.
TEST(FusePassTest, FusingNeverLowersTheCriticalPath) {
  const Graph loaded = crafted(fusable(), R"("training":false,)");
  const Baseline base(loaded);
  Graph plain = loaded.clone();
  Graph fused = loaded.clone();
  run_pipeline(plain, passes("cost,propagate"), base);
  const auto stats = run_pipeline(fused, passes("cost,fuse,propagate"), base);
  ASSERT_EQ(stats[1].summary, "2 chains fused (5 nodes replaced)");
  const auto path = [](const Graph& g) { return g.node(g.size() - 1).meta.at("critical_path_flops"); };
  const std::int64_t n = 8 * 8 * 8;
  EXPECT_EQ(path(plain), Value(2 * n + n + 2 * 64 * 512 + 64));  // conv counts 0
  EXPECT_EQ(path(fused), path(plain));  // was 2*64*512 + 64: the fused conv chain counted 0
  EXPECT_EQ(fused.node(fused.size() - 1).meta.at("critical_path_complete"), Value(false));
  const NodeMetadata& chain = fused.node(*fused.find("conv__bn__relu")).meta;
  EXPECT_EQ(chain.at("flops"), Value("unknown"));
  EXPECT_EQ(chain.at("flops_lower_bound"), Value(3 * n));
}

// Kind: regression (issue 14 item 6). cost,fuse and fuse,cost give the same graph.
TEST(FusePassTest, CostAndFuseCommute) {
  for (const char* attrs : {R"("training":false,)", R"("training":true,)", ""}) {
    const Graph loaded = crafted(fusable(), attrs);
    const Baseline base(loaded);
    Graph a = loaded.clone();
    Graph b = loaded.clone();
    run_pipeline(a, passes("cost,fuse,propagate"), base);
    run_pipeline(b, passes("fuse,cost,propagate"), base);
    EXPECT_EQ(graph::first_difference(a, b), "") << attrs;  // fuse,cost had no rule for fused nodes
    EXPECT_EQ(graph::to_json(a), graph::to_json(b)) << attrs;
    const NodeMetadata& fc = a.node(*a.find("fc__act")).meta;
    EXPECT_EQ(fc.at("flops"), Value(2 * 64 * 512 + 64)) << attrs;
    EXPECT_EQ(fc.at("bytes"), Value((512 + 64) * 4)) << attrs;  // the intermediate stays on chip
  }
}

// Kind: regression (issue 14, also). conv+bn folds only where the graph says it was traced
// in eval mode; bn+act (no folding) fuses in any mode.
TEST(FusePassTest, ConvBnFoldsOnlyInEvalMode) {
  for (const char* attrs : {R"("training":true,)", ""}) {
    Graph g = crafted(fusable(), attrs);
    const Baseline base(g);
    run_pipeline(g, passes("cost,fuse,verify"), base);
    EXPECT_TRUE(g.find("conv")) << attrs;  // was folded into conv__bn__relu in any mode
    ASSERT_TRUE(g.find("bn__relu")) << attrs;
    EXPECT_EQ(g.node(*g.find("bn__relu")).target, "nodemeta.fused.bn_relu");
  }
  Graph eval = crafted(fusable(), R"("training":false,)");
  const Baseline base(eval);
  run_pipeline(eval, passes("fuse"), base);
  EXPECT_TRUE(eval.find("conv__bn__relu"));
}

// Kind: regression (issue 14, also). Only torch.nn's own classes fuse: a quantized Conv2d or
// a user class named Conv2d is not a float conv.
TEST(FusePassTest, OnlyTorchNnModulesFuse) {
  for (const char* conv : {"torch.ao.nn.quantized.modules.conv.Conv2d", "__main__.Conv2d"}) {
    Graph g = crafted({{"x", "placeholder", "x", {}, T({1, 3, 8, 8})},
                       module("conv", conv, {0}, T({1, 8, 8, 8})),
                       module("bn", "torch.nn.modules.batchnorm.BatchNorm2d", {1}, T({1, 8, 8, 8}))},
                      R"("training":false,)");
    const Baseline base(g);
    const auto stats = run_pipeline(g, passes("fuse"), base);
    EXPECT_EQ(stats[0].summary, "no fusable chains") << conv;  // was "1 chain fused"
  }
}

// Kind: regression. A chain that starts first may end last: conv -> bn -> relu spans the
// whole fc -> gelu chain. Each fused node takes its own chain's place and inputs (the splice
// once handed the nodes out in the order the chains start).
TEST(FusePassTest, ChainsEndingInAnotherOrderKeepTheirOwnNodes) {
  Graph g = crafted({{"x", "placeholder", "x", {}, T({1, 3, 8, 8})},
                     {"v", "placeholder", "v", {}, T({1, 16})},
                     module("conv", "torch.nn.modules.conv.Conv2d", {0}, T({1, 8, 8, 8})),
                     module("fc", "torch.nn.modules.linear.Linear", {1}, T({1, 4})),
                     module("gelu", "torch.nn.modules.activation.GELU", {3}, T({1, 4})),
                     module("bn", "torch.nn.modules.batchnorm.BatchNorm2d", {2}, T({1, 8, 8, 8})),
                     module("relu", "torch.nn.modules.activation.ReLU", {5}, T({1, 8, 8, 8}))},
                    R"("training":false,)");
  const Baseline base(g);
  const auto stats = run_pipeline(g, passes("cost,fuse,propagate,verify"), base);
  ASSERT_EQ(stats[1].summary, "2 chains fused (5 nodes replaced)");
  const graph::Node& conv = g.node(*g.find("conv__bn__relu"));
  const graph::Node& fc = g.node(*g.find("fc__gelu"));
  EXPECT_EQ(conv.target, "nodemeta.fused.conv_bn_relu");
  EXPECT_EQ(fc.target, "nodemeta.fused.linear_gelu");
  EXPECT_EQ(conv.inputs, (std::vector<std::size_t>{*g.find("x")}));  // was v's: fc's chain's inputs
  EXPECT_EQ(fc.inputs, (std::vector<std::size_t>{*g.find("v")}));
  EXPECT_EQ(*g.find("fc__gelu"), 2U);  // where gelu was
  EXPECT_EQ(g.node(g.size() - 1).inputs, (std::vector<std::size_t>{*g.find("conv__bn__relu")}));
  EXPECT_EQ(fc.meta.at("flops"), Value(2 * 4 * 16 + 4));
  EXPECT_TRUE(stats.back().problems.empty()) << stats.back().problems.front();
}

// Kind: regression (issue 23 item 2, left: "fuse ignores the modules table"). A graph from
// symbolic_trace records no nn_module_stack: its modules table says what each module is, so
// fuse matches the chain there, and the fused node's conv part is costed from the table's
// weight shape (it was unknown: no kernel in the metadata), so the fused node is known.
std::string fusable_table(const std::string& conv_type, const std::string& conv_params) {
  return R"("training":false,"modules":{"conv":{"type":")" + conv_type +
         R"(","attributes":{"groups":1},"parameters":{)" + conv_params + R"(}},)"
         R"("bn":)" + entry("batchnorm.BatchNorm2d", "", "") + "," +
         R"("relu":)" + entry("activation.ReLU", "", "") + "},";
}

std::vector<FileNode> bare_chain() {
  return {{"x", "placeholder", "x", {}, T({1, 3, 8, 8})},
          bare("conv", {0}, T({1, 8, 8, 8})),
          bare("bn", {1}, T({1, 8, 8, 8})),
          bare("relu", {2}, T({1, 8, 8, 8}))};
}

// A graph through cost,propagate (plain), cost,fuse,propagate,verify (fused, with its
// statistics) and fuse,cost,propagate,verify (fuse_first).
struct FuseRuns {
  Graph plain, fused, fuse_first;
  std::vector<PassStats> stats;
};
FuseRuns fuse_runs(const Graph& loaded) {
  const Baseline base(loaded);
  FuseRuns r{loaded.clone(), loaded.clone(), loaded.clone(), {}};
  run_pipeline(r.plain, passes("cost,propagate"), base);
  r.stats = run_pipeline(r.fused, passes("cost,fuse,propagate,verify"), base);
  run_pipeline(r.fuse_first, passes("fuse,cost,propagate,verify"), base);
  return r;
}

TEST(FusePassTest, ModulesTableTypesFuseAndCostTheConvPart) {
  const std::string weight = R"("weight":)" + param({8, 3, 3, 3}) + R"(,"bias":null)";
  FuseRuns runs = fuse_runs(crafted(bare_chain(), fusable_table("torch.nn.modules.conv.Conv2d", weight)));
  const Graph& plain = runs.plain;
  const Graph& a = runs.fused;
  const Graph& b = runs.fuse_first;
  const auto& stats = runs.stats;
  EXPECT_EQ(stats[1].summary, "1 chain fused (3 nodes replaced)");  // was "no fusable chains"
  const auto fused = a.find("conv__bn__relu");
  ASSERT_TRUE(fused);
  const NodeMetadata& f = a.node(*fused).meta;
  const std::int64_t n = 8 * 8 * 8;
  const std::int64_t conv = 2 * n * 27, bn = 2 * n, relu = n;  // eval-mode batch norm
  ASSERT_EQ(plain.node(*plain.find("conv")).meta.at("flops"), Value(conv));
  EXPECT_EQ(f.at("flops"), Value(conv + bn + relu)) << f.at("cost_rule").repr();  // was "unknown"
  EXPECT_EQ(f.at("bytes"), Value((3 * 64 + n + 8 * 27) * 4));  // in + out + the conv's weight
  EXPECT_NE(f.at("cost_rule").repr().find("modules table"), std::string::npos);
  const auto last = [](const Graph& g) -> const NodeMetadata& { return g.node(g.size() - 1).meta; };
  EXPECT_EQ(last(a).at("critical_path_flops"), last(plain).at("critical_path_flops"));
  EXPECT_EQ(last(a).at("critical_path_complete"), Value(true));
  EXPECT_TRUE(stats.back().problems.empty()) << stats.back().problems.front();
  // fuse then cost gives the same graph (the cost pass finds the conv through from_node).
  EXPECT_EQ(graph::first_difference(a, b), "");
  EXPECT_EQ(graph::to_json(a), graph::to_json(b));
  // The public estimate_cost (no index) agrees.
  EXPECT_EQ(estimate_cost(a, *fused).flops, conv + bn + relu);
}

TEST(FusePassTest, ModulesTableConvPartsKeepTheirReasons) {
  // Not torch.nn's Conv2d: no chain, as with nn_module_stack.
  {
    const std::string weight = R"("weight":)" + param({8, 3, 3, 3});
    Graph g = crafted(bare_chain(), fusable_table("__main__.Conv2d", weight));
    const Baseline base(g);
    const auto stats = run_pipeline(g, passes("fuse"), base);
    EXPECT_EQ(stats[0].summary, "1 chain fused (2 nodes replaced)");  // bn + relu only
    EXPECT_TRUE(g.find("conv") && g.find("bn__relu"));
  }
  // The table names a Conv2d but records no weight: fused, the conv part unknown with the
  // table's reason, the other parts the lower bound.
  {
    Graph g = crafted(bare_chain(), fusable_table("torch.nn.modules.conv.Conv2d", ""));
    const Baseline base(g);
    run_pipeline(g, passes("cost,fuse,verify"), base);
    const auto fused = g.find("conv__bn__relu");
    ASSERT_TRUE(fused);
    const NodeMetadata& f = g.node(*fused).meta;
    EXPECT_EQ(f.at("flops"), Value("unknown"));
    EXPECT_NE(f.at("cost_rule").repr().find("records no weight shape"), std::string::npos)
        << f.at("cost_rule").repr();
    EXPECT_EQ(f.at("flops_lower_bound"), Value(3 * 8 * 8 * 8));
  }
  // Without the table (a file that predates it), the bare modules have no type: nothing fuses.
  {
    Graph g = crafted(bare_chain(), R"("training":false,)");
    const Baseline base(g);
    EXPECT_EQ(run_pipeline(g, passes("fuse"), base)[0].summary, "no fusable chains");
  }
}

// Kind: regression (review of the modules-table fuse). The critical path and each fused
// node's count are the unfused parts' whatever the metadata says: members that disagree
// (another result, another type for a member's path) are not chained, a part is typed by
// the rule fuse and the cost of an unfused node follow, and a part that cannot be costed
// keeps the others as the lower bound.
TEST(FusePassTest, FusedCountsAreThePartsWhateverTheMetadataSays) {
  const std::string weight = R"("weight":)" + param({8, 3, 3, 3}) + R"(,"bias":)" + param({8});
  const std::string table = fusable_table("torch.nn.modules.conv.Conv2d", weight);
  const auto with = [](std::vector<FileNode> nodes, std::size_t i, std::string stack) {
    nodes[i].stack = std::move(stack);
    return nodes;
  };
  struct Case {
    const char* what;
    std::vector<FileNode> nodes;
    const char* summary;
  };
  std::vector<FileNode> shape_change = bare_chain();
  shape_change[3].result = T({1, 8, 4, 4});
  std::vector<FileNode> no_input_shape = bare_chain();
  no_input_shape[0].result = "null";
  const Case cases[] = {
      {"empty stack types: the table's", with(with(with(bare_chain(), 1, R"({"conv":""})"), 2, R"({"bn":""})"), 3,
                                              R"({"relu":""})"),
       "1 chain fused (3 nodes replaced)"},
      {"a member's stack names the conv as Linear", with(bare_chain(), 2,
                                                         R"({"conv":"torch.nn.modules.linear.Linear"})"),
       "no fusable chains"},
      {"the activation changes the shape", shape_change, "1 chain fused (2 nodes replaced)"},
      {"the conv's input has no shape", no_input_shape, "1 chain fused (3 nodes replaced)"},
  };
  for (const Case& c : cases) {
    const FuseRuns runs = fuse_runs(crafted(c.nodes, table));
    const Graph& plain = runs.plain;
    const Graph& a = runs.fused;
    const Graph& b = runs.fuse_first;
    const auto& stats = runs.stats;
    EXPECT_EQ(stats[1].summary, c.summary) << c.what;
    const auto last = [](const Graph& g) -> const NodeMetadata& { return g.node(g.size() - 1).meta; };
    EXPECT_EQ(last(a).at("critical_path_flops"), last(plain).at("critical_path_flops")) << c.what;
    EXPECT_EQ(last(a).at("critical_path_complete"), last(plain).at("critical_path_complete")) << c.what;
    EXPECT_EQ(graph::to_json(a), graph::to_json(b)) << c.what;
    EXPECT_TRUE(stats.back().problems.empty()) << c.what;
  }
  // A linear whose shapes do not fit its activation's chain: the activation still counts.
  const Graph lin = crafted({{"x", "placeholder", "x", {}, T({4, 32})},
                             module("fc", "torch.nn.modules.linear.Linear", {0}, T({4, 16, 2})),
                             module("act", "torch.nn.modules.activation.ReLU", {1}, T({4, 16, 2}))});
  const Baseline lbase(lin);
  Graph lf = lin.clone();
  run_pipeline(lf, passes("cost,fuse"), lbase);
  const auto fused = lf.find("fc__act");
  ASSERT_TRUE(fused);
  EXPECT_EQ(lf.node(*fused).meta.at("flops"), Value("unknown"));
  EXPECT_EQ(lf.node(*fused).meta.at("flops_lower_bound"), Value(4 * 16 * 2));  // was none: the path lost it
  // groups so large that groups * C_in/groups overflows: unknown, and no undefined behaviour.
  const std::string huge = R"("training":false,"modules":{"conv":{"type":"torch.nn.modules.conv.Conv2d",)"
                           R"("attributes":{"groups":4611686018427387904},"parameters":{"weight":)" +
                           param({8, 3, 3, 3}) + R"(,"bias":null}},"bn":)" + entry("batchnorm.BatchNorm2d", "", "") +
                           "," + R"("relu":)" + entry("activation.ReLU", "", "") + "},";
  const Graph h = crafted(bare_chain(), huge);
  EXPECT_FALSE(cost_of(h, "conv").flops);
}

// A fused node loaded from a file (a saved `fuse` result, or a hostile one): its conv part
// is looked up through from_node, whatever that holds; anything unusable keeps the part
// unknown with a reason, never a crash or a made-up count.
TEST(FusePassTest, LoadedFusedNodesWithAnyFromNodeGetAnHonestCost) {
  const std::string weight = R"("weight":)" + param({8, 3, 3, 3}) + R"(,"bias":null)";
  const std::string table = fusable_table("torch.nn.modules.conv.Conv2d", weight);
  const std::int64_t n = 8 * 8 * 8;
  const auto fused_with = [&](const std::string& from_node, std::string result = T({1, 8, 8, 8})) {
    return crafted({{"x", "placeholder", "x", {}, T({1, 3, 8, 8})},
                    {"f", "call_function", "nodemeta.fused.conv_bn_relu", {0}, std::move(result), "torch.Tensor",
                     "{}", R"(,"from_node":)" + from_node}},
                   table);
  };
  const std::string conv_source = R"({"name":"conv","op":"call_module","target":"conv","pass_name":"fuse"})";
  // The saved form: known, as when fuse made it.
  const Graph ok = fused_with("[" + conv_source + R"(,{"name":"bn","op":"call_module","target":"bn"}])");
  EXPECT_EQ(cost_of(ok, "f").flops, 2 * n * 27 + 2 * n + n) << cost_of(ok, "f").rule;
  // Nothing usable: the conv part unknown, the rest the lower bound.
  for (const std::string& bad : {std::string("null"), std::string("3"), std::string("[]"), std::string("[1,[2],null]"),
                                std::string(R"([{"op":"call_module"}])"),
                                std::string(R"([{"op":"call_module","target":7}])"),
                                std::string(R"([{"op":"call_function","target":"conv"}])"),
                                std::string(R"([{"op":"call_module","target":"bn"}])"),
                                std::string(R"([{"op":"call_module","target":"nowhere"}])")}) {
    const Graph g = fused_with(bad);
    const CostEstimate c = cost_of(g, "f");
    EXPECT_FALSE(c.flops) << bad;
    EXPECT_EQ(c.flops_lower_bound, 3 * n) << bad;
    EXPECT_NE(c.rule.find("conv ("), std::string::npos) << bad << ": " << c.rule;
  }
  // Two conv parts and one conv source: each part takes its own source, so the second is
  // unknown (it was counted twice).
  const Graph twice = crafted({{"x", "placeholder", "x", {}, T({1, 3, 8, 8})},
                               {"f", "call_function", "nodemeta.fused.conv_conv_bn", {0}, T({1, 8, 8, 8}),
                                "torch.Tensor", "{}", R"(,"from_node":[)" + conv_source + "]"}},
                              table);
  EXPECT_FALSE(cost_of(twice, "f").flops);
  EXPECT_EQ(cost_of(twice, "f").flops_lower_bound, 2 * n * 27 + 2 * n) << cost_of(twice, "f").rule;
  // A conv whose table weight does not fit the node's shapes: unknown, the table's reason.
  const Graph misfit = fused_with("[" + conv_source + "]", T({1, 4, 8, 8}));
  EXPECT_FALSE(cost_of(misfit, "f").flops);
  EXPECT_NE(cost_of(misfit, "f").rule.find("do not fit"), std::string::npos) << cost_of(misfit, "f").rule;
}

// Kind: regression (issue 14 item 7). A loaded node that carries from_node (a rewrite's
// result, saved and loaded again) is a loaded node: verify compares all its protected
// values, and it has not vanished.
TEST(VerifyPassTest, LoadedNodeWithFromNodeIsALoadedNode) {
  const std::string chain = R"(,"from_node":[{"name":"bn","op":"call_module","target":"bn","pass_name":"fuse"}])";
  const std::vector<FileNode> nodes = {{"x", "placeholder", "x", {}, T({1, 8})},
                                       {"relu", "call_function", "torch.relu", {0}, T({1, 8}), "torch.Tensor", "{}",
                                        chain}};
  Graph g = crafted(nodes);
  const Baseline base(g);
  const auto stats = run_pipeline(g, passes("verify"), base);
  EXPECT_TRUE(stats[0].problems.empty()) << stats[0].problems.front();  // was "'relu' vanished" and more
  // Its protected values are still compared (was skipped: a false clean).
  StoreOptions unprotected;
  unprotected.protected_keys.clear();
  Graph t = graph::parse_graph(graph_text(nodes), "crafted.json", unprotected);
  const Baseline tbase(t);
  t.node(1).meta.set(keys::tensor_meta, Value(T({2, 8})));
  t.node(1).meta.set(keys::stack_trace, Value("elsewhere"));
  const auto tampered = run_pipeline(t, passes("verify"), tbase);
  ASSERT_EQ(tampered[0].problems.size(), 2U);
  EXPECT_EQ(tampered[0].problems[0], "node 'relu': protected key 'stack_trace' changed since load");
  EXPECT_EQ(tampered[0].problems[1], "node 'relu': protected key 'tensor_meta' changed since load");
}

// Kind: regression (issue 14 item 7). What `nodemeta run --output` saves loads again and
// verifies clean, and the passes run on it again give the same costs.
TEST(VerifyPassTest, SavedResultLoadsAndVerifiesClean) {
  Graph g = crafted(fusable(), R"("training":false,)");
  const Baseline base(g);
  run_pipeline(g, pass_names(), base);
  Graph again = graph::parse_graph(graph::to_json(g), "saved.json");
  const Baseline again_base(again);
  const auto stats = run_pipeline(again, passes("verify"), again_base);
  EXPECT_TRUE(stats[0].problems.empty()) << stats[0].problems.size() << ": " << stats[0].problems.front();
  const auto rerun = run_pipeline(again, passes("cost,fuse,propagate,verify"), again_base);
  EXPECT_TRUE(rerun.back().problems.empty()) << rerun.back().problems.front();
  EXPECT_EQ(graph::to_json(again), graph::to_json(g));
}
}  // namespace
}  // namespace nodemeta::passes
