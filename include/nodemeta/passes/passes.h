// nodemeta/passes/passes.h: the passes `nodemeta run` drives, the pipeline, and the
// baseline the verifier checks against. docs/passes.md documents every formula and key.
//
//   cost         node-parallel   flops, bytes, cost_rule per node from tensor_meta / val
//   fuse         rewrite         conv+bn[+act] (eval mode only), bn+act, linear+act -> one
//                                node each, with provenance (transfer_provenance) and a
//                                from_node chain
//   propagate    dependency      depth, critical_path_flops (a lower bound where incomplete),
//                                critical_path_complete
//   strip_debug  node-parallel   a deployment pass that tries to drop stack traces; every
//                                such write is refused (stack_trace is protected) and counted
//   verify       node-parallel   loaded nodes' protected values intact, new nodes' provenance
//                                complete, every vanished node named by some from_node chain
#ifndef NODEMETA_PASSES_PASSES_H_
#define NODEMETA_PASSES_PASSES_H_

#include <array>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "nodemeta/export.h"
#include "nodemeta/graph/graph.h"
#include "nodemeta/passes/driver.h"

namespace nodemeta::passes {

// The metadata keys the passes write (besides the protected ones the rewrite copies).
namespace pass_keys {
inline constexpr std::string_view kFlops = "flops";            // int, or "unknown"
// Where flops is "unknown" but part of the count is certain (a fused node with an unknown
// part, a batch norm of unknown mode, an ambiguous layout): that part, an int > 0. Absent
// otherwise. propagate counts it on the critical path.
inline constexpr std::string_view kFlopsLowerBound = "flops_lower_bound";
inline constexpr std::string_view kBytes = "bytes";            // int, or "unknown"
inline constexpr std::string_view kCostRule = "cost_rule";     // which formula applied
inline constexpr std::string_view kDepth = "depth";            // topological level
inline constexpr std::string_view kCriticalPathFlops = "critical_path_flops";
inline constexpr std::string_view kCriticalPathComplete = "critical_path_complete";
inline constexpr std::string_view kFromNode = "from_node";
inline constexpr std::string_view kFusedPattern = "fused_pattern";
inline constexpr std::string_view kUnknown = "unknown";        // the explicit marker
}  // namespace pass_keys

// Graph-level attributes (graph.attrs(), the file's top-level fields) the passes read.
namespace graph_attrs {
// true if the graph was traced in training mode, false in eval mode; absent or null when
// unknown. Batch norm and dropout cost, and conv+bn folding, depend on it.
inline constexpr std::string_view kTraining = "training";
// {module path: {"type", "attributes", "parameters"}}: each module a call_module node calls,
// as nodemeta.fx writes it (docs/passes.md, "Graphs"). Cost reads it where a node's
// nn_module_stack names no type. Absent: call_module nodes are costed from their metadata.
inline constexpr std::string_view kModules = "modules";
// {node name: {"args", "kwargs"}}: the non-node arguments of call_function / call_method
// nodes (a node among them as {"node": name}). Cost reads it for the ops whose count depends
// on an argument (a pool's kernel size, einsum's equation, swin's window).
inline constexpr std::string_view kCalls = "calls";
}  // namespace graph_attrs

// The graph's "training" attribute: true, false, or nullopt when the graph does not say.
NODEMETA_PASSES_API std::optional<bool> training_mode(const graph::Graph& graph);

// The protected values of every node as loaded, by name: what verify checks against.
// Taken right after loading, before any pass runs. Immutable afterwards (concurrent reads).
class NODEMETA_PASSES_API Baseline {
 public:
  static constexpr std::size_t kKeys = 5;
  explicit Baseline(const graph::Graph& graph);
  // Its name index points into its own names: copying would leave it pointing into the
  // original's. Moving keeps the strings where they are.
  Baseline(const Baseline&) = delete;
  Baseline& operator=(const Baseline&) = delete;
  Baseline(Baseline&&) = default;
  Baseline& operator=(Baseline&&) = default;

  // The five default protected keys, in the order values() uses.
  static const std::array<Key, kKeys>& protected_keys();
  std::size_t size() const noexcept { return names_.size(); }
  const std::string& name(std::size_t i) const { return names_.at(i); }
  std::optional<std::size_t> find(std::string_view name) const;
  // values(i)[k]: node i's value of protected_keys()[k] as loaded, or nullopt if absent.
  const std::array<std::optional<Value>, kKeys>& values(std::size_t i) const { return values_.at(i); }

 private:
  std::vector<std::string> names_;
  std::vector<std::array<std::optional<Value>, kKeys>> values_;
  std::unordered_map<std::string_view, std::size_t> index_;
};

// The cost estimate of one node (what the cost pass writes). flops/bytes are nullopt where
// the model does not know them, with `rule` saying why: an op without a formula, an operand
// without usable tensor metadata, shapes that do not fit the op, a count past int64, or a
// fact the graph does not record. flops_lower_bound: set (> 0) only when flops is unknown
// but part of it is certain. docs/passes.md has the formulas, per operator family.
struct CostEstimate {
  std::optional<std::int64_t> flops;
  std::optional<std::int64_t> bytes;
  std::string rule;
  std::optional<std::int64_t> flops_lower_bound;
};
NODEMETA_PASSES_API CostEstimate estimate_cost(const graph::Graph& graph, std::size_t node);
// The same for a node that need not be in `graph` (a rewrite's new node before it is
// spliced in): its inputs are indices of `graph`'s nodes.
NODEMETA_PASSES_API CostEstimate estimate_cost(const graph::Graph& graph, const graph::Node& node);
// The bytes of every tensor a node produces (from tensor_meta, else val; tuples nested to
// any depth); 0 for a result the metadata says is not a tensor; nullopt when the metadata
// cannot say (null shapes on a tensor result, an unknown dtype, a negative dimension, a size
// past int64).
NODEMETA_PASSES_API std::optional<std::int64_t> result_bytes(const graph::Node& node);

// The passes, by name, in pipeline order.
NODEMETA_PASSES_API const std::vector<std::string>& pass_names();
// A new pass; throws std::invalid_argument listing the valid names for an unknown one.
NODEMETA_PASSES_API std::unique_ptr<Pass> make_pass(std::string_view name);
// Parses "cost,fuse,verify" (comma-separated, no empties). Throws std::invalid_argument.
NODEMETA_PASSES_API std::vector<std::string> parse_pass_list(std::string_view list);

// Runs the named passes in order on `graph`; returns one PassStats per pass.
NODEMETA_PASSES_API std::vector<PassStats> run_pipeline(graph::Graph& graph,
                                                        std::span<const std::string> names,
                                                        const Baseline& baseline);

// Told where a pipeline is: progress(i, names[i]) right before pass i starts, then
// progress(names.size(), "") once the last one has returned. Called from the thread that
// runs the pipeline, between passes (never while one runs), so it needs no locking.
using PipelineProgress = std::function<void(std::size_t done, std::string_view next)>;

// run_pipeline() that reports each step to `progress` (an empty function reports nothing).
NODEMETA_PASSES_API std::vector<PassStats> run_pipeline(graph::Graph& graph,
                                                        std::span<const std::string> names,
                                                        const Baseline& baseline,
                                                        const PipelineProgress& progress);

}  // namespace nodemeta::passes

#endif  // NODEMETA_PASSES_PASSES_H_
