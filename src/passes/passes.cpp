#include "nodemeta/passes/passes.h"

#include <algorithm>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "nodemeta/passes/provenance.h"
#include "internal.h"

namespace nodemeta::passes {

using graph::Graph;
using graph::Node;

// ---- Baseline --------------------------------------------------------------------------

const std::array<Key, Baseline::kKeys>& Baseline::protected_keys() {
  static const std::array<Key, kKeys> k = {keys::val, keys::stack_trace, keys::nn_module_stack,
                                           keys::debug_handle, keys::tensor_meta};
  return k;
}

Baseline::Baseline(const Graph& graph) : names_(graph.size()), values_(graph.size()) {
  for_each_node(graph, [&](std::size_t i) {
    const Node& n = graph.node(i);
    names_[i] = n.name;
    for (std::size_t k = 0; k < kKeys; ++k) values_[i][k] = n.meta.get(protected_keys()[k]);
  });
  index_.reserve(names_.size());
  for (std::size_t i = 0; i < names_.size(); ++i) index_.emplace(names_[i], i);
}

std::optional<std::size_t> Baseline::find(std::string_view name) const {
  auto it = index_.find(name);
  if (it == index_.end()) return std::nullopt;
  return it->second;
}

namespace {


struct PassKeys {
  Key flops{pass_keys::kFlops};
  Key flops_lower_bound{pass_keys::kFlopsLowerBound};
  Key bytes{pass_keys::kBytes};
  Key cost_rule{pass_keys::kCostRule};
  Key depth{pass_keys::kDepth};
  Key cp_flops{pass_keys::kCriticalPathFlops};
  Key cp_complete{pass_keys::kCriticalPathComplete};
  Key from_node{pass_keys::kFromNode};
  Key fused_pattern{pass_keys::kFusedPattern};
};
const PassKeys& pk() {
  static const PassKeys k;  // interned once, outside every hot loop
  return k;
}

Value int_or_unknown(const std::optional<std::int64_t>& v) {
  return v ? Value(*v) : Value(pass_keys::kUnknown);
}

// ---- cost ------------------------------------------------------------------------------

// Writes a cost estimate to a node: flops, bytes, cost_rule, and flops_lower_bound where
// the estimate has one (removed where it has none, so a rerun leaves nothing stale).
void write_cost(PassContext& ctx, NodeMetadata& m, CostEstimate c) {
  ctx.write(m, pk().flops, int_or_unknown(c.flops));
  ctx.write(m, pk().bytes, int_or_unknown(c.bytes));
  ctx.write(m, pk().cost_rule, Value(std::move(c.rule)));
  if (c.flops_lower_bound) {
    ctx.write(m, pk().flops_lower_bound, Value(*c.flops_lower_bound));
  } else if (m.contains(pk().flops_lower_bound)) {
    ctx.erase(m, pk().flops_lower_bound);
  }
}

class CostPass final : public Pass {
 public:
  std::string_view name() const noexcept override { return "cost"; }
  std::string_view description() const noexcept override {
    return "FLOP and byte estimates per node from tensor_meta/val (node-parallel)";
  }
  void run(PassContext& ctx) override {
    const Graph& g = ctx.graph();
    // The "modules" entries by path and the "calls" entries by node name, looked up once
    // (a node's lookup is then O(1)); the first of duplicate keys, as Value::find.
    const detail::EntryIndex modules = detail::entry_index(g, detail::kModulesAttr);
    const detail::EntryIndex calls = detail::entry_index(g, detail::kCallsAttr);
    std::atomic<std::size_t> unknown{0};
    for_each_node(g, [&](std::size_t i) {
      const graph::Node& n = g.node(i);
      const bool call = n.op == "call_function" || n.op == "call_method";
      CostEstimate c = detail::estimate_cost(g, n, n.op == "call_module" ? detail::find_entry(modules, n.target) : nullptr,
                                             call ? detail::find_entry(calls, n.name) : nullptr, &modules);
      if (!c.flops) unknown.fetch_add(1, std::memory_order_relaxed);
      write_cost(ctx, ctx.graph().node(i).meta, std::move(c));
    });
    ctx.count_touched(g.size());  // every node, counted once: no shared counter per node
    ctx.summary = "cost unknown for " + std::to_string(unknown.load()) + " of " + std::to_string(g.size()) + " nodes";
  }
};

// ---- fuse ------------------------------------------------------------------------------

// Fusion matches torch.nn's own classes by their qualified type (detail::module_type: the
// node's nn_module_stack entry, else the graph's modules table): a quantized Conv2d or a
// user class named Conv2d computes something else. The classes and
// the pattern parts are internal.h's tables.
using detail::module_type;

class FusePass final : public Pass {
 public:
  std::string_view name() const noexcept override { return "fuse"; }
  std::string_view description() const noexcept override {
    return "fuse conv+bn[+act] (eval mode), bn+act, linear+act chains into one node each, carrying provenance";
  }

  void run(PassContext& ctx) override {
    Graph& g = ctx.graph();
    const auto users = g.users();
    // Folding a batch norm into a conv uses its running statistics: right in eval mode only.
    const bool eval = training_mode(g) == std::optional<bool>(false);
    // Each call_module node's type: its nn_module_stack's, else the graph's modules table's
    // (torch 1.13's symbolic_trace records no stack; nodemeta.fx writes the table).
    const detail::EntryIndex modules = detail::entry_index(g, detail::kModulesAttr);
    std::vector<std::string> types(g.size());
    for_each_node(g, [&](std::size_t i) {
      const Node& n = g.node(i);
      if (n.op == "call_module") types[i] = module_type(n, detail::find_entry(modules, n.target));
    });
    // 1. Match, in parallel: chain[i] is the chain headed by node i (empty if none).
    std::vector<std::vector<std::size_t>> chain(g.size());
    std::vector<std::string> pattern(g.size());
    for_each_node(g, [&](std::size_t i) { match(g, types, users, eval, i, chain[i], pattern[i]); });
    // 2. Resolve overlaps in graph order (deterministic): a node joins at most one chain.
    std::vector<std::size_t> owner(g.size(), SIZE_MAX);  // head of the chain a node is in
    std::vector<std::size_t> heads;
    for (std::size_t i = 0; i < g.size(); ++i) {
      if (chain[i].empty()) continue;
      if (std::any_of(chain[i].begin(), chain[i].end(), [&](std::size_t m) { return owner[m] != SIZE_MAX; })) {
        chain[i].clear();
        continue;
      }
      for (std::size_t m : chain[i]) owner[m] = i;
      heads.push_back(i);
    }
    if (heads.empty()) {
      ctx.summary = "no fusable chains";
      return;
    }
    // Steps 3-5 allocate everything and write only to the new nodes; step 6 changes the
    // graph with noexcept moves and one swap_nodes() that puts everything back if it
    // throws. So the pass is all or nothing: a throw (out of memory) leaves the graph, its
    // nodes' metadata and its store as they were (tests/faults/).
    // 3. Build the fused nodes (sequentially: names and ids do not depend on threads). A
    // fused node's inputs are, for now, the old graph's indices of what its chain reads.
    struct Fused {
      std::size_t head;
      Node node;
    };
    std::vector<Fused> fused;
    fused.reserve(heads.size());
    std::vector<std::size_t> fused_of(g.size(), SIZE_MAX);  // chain head -> its index in `fused`
    std::unordered_set<std::string> taken;  // the names given to fused nodes so far
    taken.reserve(heads.size());
    for (std::size_t h : heads) {
      fused_of[h] = fused.size();
      std::string name;
      for (std::size_t m : chain[h]) name += (name.empty() ? "" : "__") + g.node(m).name;
      std::string unique = name;
      for (int k = 1; g.find(unique) || taken.count(unique) != 0; ++k) unique = name + "_" + std::to_string(k);
      taken.insert(unique);
      std::vector<std::size_t> inputs;
      for (std::size_t m : chain[h]) {
        for (std::size_t in : g.node(m).inputs) {
          if (owner[in] == h) continue;  // inside the chain
          // What another chain's last member was read as, its fused node will be.
          if (std::find(inputs.begin(), inputs.end(), in) == inputs.end()) inputs.push_back(in);
        }
      }
      fused.push_back(Fused{h, Node{std::move(unique), "call_function", "nodemeta.fused." + pattern[h],
                                    std::move(inputs), g.store().create()}});
    }
    // 4. Carry provenance onto each fused node, in parallel (distinct targets), and where
    // cost ran on every member, cost it as the cost pass does (the sum of its parts,
    // keeping the known part as a lower bound), so any order of cost and fuse agrees. Its
    // inputs are still old indices: each names the node (or the last member of the chain)
    // whose result the spliced node reads, with the same tensor metadata.
    parallel_indices(fused.size(), 1, [&](std::size_t f) {
      const std::vector<std::size_t>& members = chain[fused[f].head];
      std::vector<SourceNode> sources;
      for (std::size_t m : members) {
        const Node& n = g.node(m);
        sources.push_back(SourceNode{n.name, n.op, n.target, &n.meta});
      }
      NodeMetadata& target = fused[f].node.meta;
      ctx.count_rejected(transfer_provenance(sources, target, name()).rejected);
      ctx.write(target, pk().fused_pattern, Value(pattern[fused[f].head]));
      const bool costed = std::all_of(members.begin(), members.end(),
                                      [&](std::size_t m) { return g.node(m).meta.contains(pk().flops); });
      if (costed) write_cost(ctx, target, detail::estimate_cost(g, fused[f].node, nullptr, nullptr, &modules));
      ctx.count_touched();
    });
    // 5. Plan the splice: the fused node takes its last member's place; inputs are remapped.
    // Every allocation of the splice happens here.
    const std::size_t n_old = g.size();
    std::vector<std::size_t> remap(n_old, SIZE_MAX);
    std::vector<std::size_t> from;  // per new position: an old index, or n_old + fused index
    from.reserve(n_old);
    for (std::size_t i = 0; i < n_old; ++i) {
      if (owner[i] == SIZE_MAX) {
        remap[i] = from.size();
        from.push_back(i);
      } else if (i == chain[owner[i]].back()) {
        // Chains end in another order than they start (one may end inside another's span):
        // each takes its own node.
        for (std::size_t m : chain[owner[i]]) remap[m] = from.size();
        from.push_back(n_old + fused_of[owner[i]]);
      }
    }
    std::vector<std::vector<std::size_t>> inputs(from.size());
    for (std::size_t p = 0; p < from.size(); ++p) {
      const std::vector<std::size_t>& old_inputs =
          from[p] < n_old ? g.node(from[p]).inputs : fused[from[p] - n_old].node.inputs;
      inputs[p].reserve(old_inputs.size());
      for (std::size_t in : old_inputs) inputs[p].push_back(remap[in]);
    }
    std::vector<Node> next;
    next.reserve(from.size());
    std::size_t replaced = 0;
    for (std::size_t h : heads) replaced += chain[h].size();
    std::string summary = std::to_string(heads.size()) + " chain" + (heads.size() == 1 ? "" : "s") +
                          " fused (" + std::to_string(replaced) + " nodes replaced)";
    // 6. Splice: noexcept moves into `next`, then one swap_nodes(), which either takes the
    // new list (handing back the old one, whose replaced nodes die with it) or throws
    // having changed nothing, and then every node moves back where it was.
    auto node_at = [&](std::size_t source) -> Node& {
      return source < n_old ? g.node(source) : fused[source - n_old].node;
    };
    for (std::size_t p = 0; p < from.size(); ++p) {
      next.push_back(std::move(node_at(from[p])));  // within capacity: no allocation
      next.back().inputs.swap(inputs[p]);
    }
    try {
      g.swap_nodes(next);
    } catch (...) {
      for (std::size_t p = 0; p < from.size(); ++p) {
        next[p].inputs.swap(inputs[p]);
        node_at(from[p]) = std::move(next[p]);
      }
      throw;
    }
    ctx.summary = std::move(summary);
    // `next` (the old list: the replaced nodes' handles) dies here, after the transfer above.
  }

 private:
  // `types`: each node's module type (empty for other ops).
  static void match(const Graph& g, const std::vector<std::string>& types,
                    const std::vector<std::vector<std::size_t>>& users, bool eval, std::size_t i,
                    std::vector<std::size_t>& out, std::string& pattern) {
    // next(j): the single user of j if that user reads only j, else SIZE_MAX.
    auto next = [&](std::size_t j) -> std::size_t {
      if (users[j].size() != 1) return SIZE_MAX;
      const std::size_t u = users[j][0];
      return g.node(u).inputs.size() == 1 ? u : SIZE_MAX;
    };
    // The chain `members` (pattern `name`), extended by the activation module that is the
    // single reader of its last member if there is one. Without one, it is the result only
    // when the activation is optional.
    // A chain's members must agree: every one records the head's result (the fused node's
    // parts are all costed at its one output), and no member's nn_module_stack names a
    // member's path as another type than the one matched (the fused node's merged stack
    // would then say otherwise). A chain that does not is left alone.
    auto consistent = [&](const std::vector<std::size_t>& members) {
      for (std::size_t m : members) {
        if (m != members.front() && !detail::same_result(g.node(members.front()), g.node(m))) return false;
        const std::optional<Value> stack = g.node(m).meta.get(keys::nn_module_stack);
        if (!stack) continue;
        for (std::size_t other : members) {
          const Value* t = stack->find(g.node(other).target);
          const auto* s = t ? t->get_if<std::string>() : nullptr;
          if (s && !s->empty() && *s != types[other]) return false;
        }
      }
      return true;
    };
    auto end_with_activation = [&](std::vector<std::size_t> members, std::string name, bool optional) {
      const std::size_t act = next(members.back());
      std::string_view part = act == SIZE_MAX ? std::string_view() : detail::activation_part(types[act]);
      if (!part.empty()) {
        members.push_back(act);
        if (!consistent(members)) {  // the chain without it, where the activation is optional
          members.pop_back();
          part = {};
        }
      }
      if (part.empty() && (!optional || !consistent(members))) return;
      if (!part.empty()) name += "_" + std::string(part);
      out = std::move(members);
      pattern = std::move(name);
    };
    const std::string& head = types[i];
    if (head == detail::kConv2dModule) {
      if (!eval) return;
      const std::size_t bn = next(i);
      if (bn == SIZE_MAX || types[bn] != detail::kBatchNorm2dModule) return;
      const std::string conv_bn = std::string(detail::kConvPart) + "_" + std::string(detail::kBatchNormPart);
      end_with_activation({i, bn}, conv_bn, /*optional=*/true);
    } else if (head == detail::kBatchNorm2dModule) {
      // Only where no conv+bn chain will take this bn (in eval mode, its input a single-use conv).
      const Node& n = g.node(i);
      if (eval && n.inputs.size() == 1 && types[n.inputs[0]] == detail::kConv2dModule &&
          next(n.inputs[0]) == i) {
        return;
      }
      end_with_activation({i}, std::string(detail::kBatchNormPart), /*optional=*/false);
    } else if (head == detail::kLinearModule) {
      end_with_activation({i}, std::string(detail::kLinearPart), /*optional=*/false);
    }
  }
};

// ---- propagate -------------------------------------------------------------------------

class PropagatePass final : public Pass {
 public:
  std::string_view name() const noexcept override { return "propagate"; }
  std::string_view description() const noexcept override {
    return "depth and critical-path FLOPs from the inputs (dependency-ordered wavefront)";
  }
  void run(PassContext& ctx) override {
    Graph& g = ctx.graph();
    for_each_in_dependency_order(g, [&](std::size_t i) {
      Node& n = g.node(i);
      std::int64_t depth = 0, longest = 0;
      bool complete = true;
      for (std::size_t j : n.inputs) {
        const NodeMetadata& in = g.node(j).meta;  // written in an earlier wavefront
        depth = std::max(depth, in.at(pk().depth).as<std::int64_t>() + 1);
        longest = std::max(longest, in.at(pk().cp_flops).as<std::int64_t>());
        complete = complete && in.at(pk().cp_complete).as<bool>();
      }
      // An unknown cost counts its lower bound (0 if it has none): the path stays a lower bound.
      std::int64_t own = 0;
      auto f = n.meta.get(pk().flops);
      if (f && f->get_if<std::int64_t>()) {
        own = *f->get_if<std::int64_t>();
      } else {
        complete = false;
        auto lb = n.meta.get(pk().flops_lower_bound);
        if (lb && lb->get_if<std::int64_t>()) own = *lb->get_if<std::int64_t>();
      }
      // Past int64 the path saturates (and is then only a lower bound).
      std::int64_t path = 0;
      if (__builtin_add_overflow(longest, own, &path)) {
        path = std::numeric_limits<std::int64_t>::max();
        complete = false;
      }
      ctx.write(n.meta, pk().depth, Value(depth));
      ctx.write(n.meta, pk().cp_flops, Value(path));
      ctx.write(n.meta, pk().cp_complete, Value(complete));
    });
    ctx.count_touched(g.size());
    std::int64_t critical = 0, depth = 0;
    for (const Node& n : g.nodes()) {
      critical = std::max(critical, n.meta.at(pk().cp_flops).as<std::int64_t>());
      depth = std::max(depth, n.meta.at(pk().depth).as<std::int64_t>());
    }
    ctx.summary = "critical path " + std::to_string(critical) + " flops, depth " + std::to_string(depth);
  }
};

// ---- strip_debug -------------------------------------------------------------------------

class StripDebugPass final : public Pass {
 public:
  std::string_view name() const noexcept override { return "strip_debug"; }
  std::string_view description() const noexcept override {
    return "tries to drop stack traces (as a deployment pass would); protection refuses and counts it";
  }
  void run(PassContext& ctx) override {
    Graph& g = ctx.graph();
    for_each_node(g, [&](std::size_t i) {
      NodeMetadata& m = g.node(i).meta;
      auto trace = m.get(keys::stack_trace);
      if (!trace || trace->is_none()) return;
      ctx.write(m, keys::stack_trace, Value());  // refused: stack_trace is protected
      ctx.count_touched();
    });
    ctx.summary = std::to_string(ctx.rejected()) + " stack traces kept (writes refused)";
  }
};

// ---- verify ------------------------------------------------------------------------------

// The position of a protected key in Baseline::protected_keys(), and so in Baseline::values().
std::size_t baseline_slot(Key key) {
  const auto& pkeys = Baseline::protected_keys();
  const auto it = std::find(pkeys.begin(), pkeys.end(), key);
  if (it == pkeys.end()) {
    throw std::logic_error("baseline_slot: '" + std::string(key.name()) + "' is not a baseline key");
  }
  return static_cast<std::size_t>(it - pkeys.begin());
}

class VerifyPass final : public Pass {
 public:
  std::string_view name() const noexcept override { return "verify"; }
  std::string_view description() const noexcept override {
    return "loaded nodes' protected values intact; new nodes' provenance complete (node-parallel)";
  }
  void run(PassContext& ctx) override {
    const Graph& g = ctx.graph();
    const Baseline* base = ctx.baseline();
    if (!base) {
      ctx.problems.push_back("no baseline: verify needs the graph as loaded");
      ctx.summary = "FAILED";
      return;
    }
    std::vector<std::vector<std::string>> problems(g.size());
    std::vector<std::vector<std::string>> covered(g.size());
    for_each_node(g, [&](std::size_t i) {
      check_node(g, *base, i, problems[i], covered[i]);
    });
    ctx.count_touched(g.size());
    // Every loaded node is still here, or named by the chain of a new node that replaced it.
    std::vector<char> seen(base->size(), 0);
    for (std::size_t i = 0; i < g.size(); ++i) {
      if (auto b = base->find(g.node(i).name)) seen[*b] = 1;
      for (const std::string& name : covered[i]) {
        if (auto b = base->find(name)) seen[*b] = 1;
      }
    }
    for (std::size_t i = 0; i < g.size(); ++i) {
      for (std::string& p : problems[i]) ctx.problems.push_back(std::move(p));
    }
    for (std::size_t b = 0; b < base->size(); ++b) {
      if (!seen[b]) ctx.problems.push_back("node '" + base->name(b) + "' vanished: no from_node chain names it");
    }
    ctx.summary = ctx.problems.empty() ? "clean" : std::to_string(ctx.problems.size()) + " problems";
  }

 private:
  static void check_node(const Graph& g, const Baseline& base, std::size_t i, std::vector<std::string>& problems,
                         std::vector<std::string>& covered) {
    const Node& n = g.node(i);
    const auto& pkeys = Baseline::protected_keys();
    // Whether n's value of pkeys[k] differs from the one baseline node b was loaded with
    // (present on one side only, or not equal).
    auto differs = [&](std::size_t b, std::size_t k) { return base.values(b)[k] != n.meta.get(pkeys[k]); };
    // A loaded node keeps every protected value as loaded, whatever else it carries: one
    // with from_node (a rewrite's result, saved and loaded again) is a loaded node now.
    if (const auto b = base.find(n.name)) {
      for (std::size_t k = 0; k < Baseline::kKeys; ++k) {
        if (differs(*b, k)) {
          problems.push_back("node '" + n.name + "': protected key '" + std::string(pkeys[k].name()) +
                             "' changed since load");
        }
      }
      return;
    }
    // A new node was made by a rewrite, which must say what it replaced.
    const std::optional<Value> chain = n.meta.get(pk().from_node);
    if (!chain) {
      problems.push_back("node '" + n.name + "' is new but has no from_node provenance");
      return;
    }
    const std::string who = "rewritten node '" + n.name + "': ";
    for (Key k : pkeys) {
      if (!n.meta.contains(k)) problems.push_back(who + "missing " + std::string(k.name()));
    }
    const auto* list = chain->get_if<Value::List>();
    if (!list || list->empty()) {
      problems.push_back(who + "from_node is not a non-empty list");
      return;
    }
    covered = from_node_names(*chain);
    // The direct sources: each must be a loaded node (or itself rewritten, with a chain).
    std::vector<std::size_t> direct;
    for (const Value& e : *list) {
      const Value* name = e.find("name");
      const auto* s = name ? name->get_if<std::string>() : nullptr;
      if (!s) {
        problems.push_back(who + "from_node entry without a name");
        continue;
      }
      const auto b = base.find(*s);
      if (b) {
        direct.push_back(*b);
      } else if (!e.find("from_node")) {
        problems.push_back(who + "from_node names '" + *s + "', which was never loaded");
      }
    }
    if (direct.empty()) return;
    // Policy checks: output source's val/debug_handle; merged module stack covers every source's.
    const std::size_t out = direct.back();
    for (Key key : {keys::val, keys::debug_handle}) {
      const std::size_t k = baseline_slot(key);
      if (base.values(out)[k] && differs(out, k)) {
        problems.push_back(who + std::string(pkeys[k].name()) + " differs from its output source '" +
                           base.name(out) + "'");
      }
    }
    const std::optional<Value> stack = n.meta.get(keys::nn_module_stack);
    for (std::size_t b : direct) {
      const std::optional<Value>& src = base.values(b)[baseline_slot(keys::nn_module_stack)];
      const auto* entries = src ? src->get_if<Value::Dict>() : nullptr;
      if (!entries || !stack) continue;
      for (const auto& [path, type] : *entries) {
        const Value* have = stack->find(path);
        if (!have || *have != type) {
          problems.push_back(who + "nn_module_stack lacks '" + path + "' of source '" + base.name(b) + "'");
        }
      }
    }
  }
};

}  // namespace

// ---- registry and pipeline ------------------------------------------------------------

const std::vector<std::string>& pass_names() {
  static const std::vector<std::string> names = {"cost", "fuse", "propagate", "strip_debug", "verify"};
  return names;
}

std::unique_ptr<Pass> make_pass(std::string_view name) {
  if (name == "cost") return std::make_unique<CostPass>();
  if (name == "fuse") return std::make_unique<FusePass>();
  if (name == "propagate") return std::make_unique<PropagatePass>();
  if (name == "strip_debug") return std::make_unique<StripDebugPass>();
  if (name == "verify") return std::make_unique<VerifyPass>();
  std::string valid;
  for (const std::string& n : pass_names()) valid += (valid.empty() ? "" : ", ") + n;
  throw std::invalid_argument("unknown pass '" + std::string(name) + "' (valid: " + valid + ")");
}

std::vector<std::string> parse_pass_list(std::string_view list) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start <= list.size()) {
    const std::size_t comma = std::min(list.find(',', start), list.size());
    const std::string item(list.substr(start, comma - start));
    if (item.empty()) throw std::invalid_argument("empty pass name in '" + std::string(list) + "'");
    make_pass(item);  // validates
    out.push_back(item);
    start = comma + 1;
  }
  return out;
}

std::vector<PassStats> run_pipeline(Graph& graph, std::span<const std::string> names, const Baseline& baseline) {
  return run_pipeline(graph, names, baseline, PipelineProgress());
}

std::vector<PassStats> run_pipeline(Graph& graph, std::span<const std::string> names, const Baseline& baseline,
                                    const PipelineProgress& progress) {
  // Everything that may throw besides the passes themselves (and the caller's progress
  // callback) happens first: a pass that completed is never followed by a throw of the
  // pipeline's own (docs/passes.md).
  std::vector<std::unique_ptr<Pass>> passes;
  passes.reserve(names.size());
  for (const std::string& name : names) passes.push_back(make_pass(name));
  std::vector<PassStats> stats;
  stats.reserve(names.size());
  for (std::size_t i = 0; i < passes.size(); ++i) {
    if (progress) progress(i, names[i]);
    stats.push_back(run_pass(*passes[i], graph, &baseline));
  }
  if (progress) progress(names.size(), std::string_view());
  return stats;
}

}  // namespace nodemeta::passes
