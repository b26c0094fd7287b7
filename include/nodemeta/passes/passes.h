// nodemeta/passes/passes.h: the passes `nodemeta run` drives, the pipeline, and the
// baseline the verifier checks against. docs/passes.md documents every formula and key.
//
//   cost         node-parallel   flops, bytes, cost_rule per node from tensor_meta / val
//   fuse         rewrite         conv+bn[+act], bn+act, linear+act -> one node each, with
//                                provenance (transfer_provenance) and a from_node chain
//   propagate    dependency      depth, critical_path_flops, critical_path_complete
//   strip_debug  node-parallel   a deployment pass that tries to drop stack traces; every
//                                such write is refused (stack_trace is protected) and counted
//   verify       node-parallel   loaded protected values intact, rewritten nodes' provenance
//                                complete, every vanished node named by some from_node chain
#ifndef NODEMETA_PASSES_PASSES_H_
#define NODEMETA_PASSES_PASSES_H_

#include <array>
#include <cstddef>
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
inline constexpr std::string_view kBytes = "bytes";            // int, or "unknown"
inline constexpr std::string_view kCostRule = "cost_rule";     // which formula applied
inline constexpr std::string_view kDepth = "depth";            // topological level
inline constexpr std::string_view kCriticalPathFlops = "critical_path_flops";
inline constexpr std::string_view kCriticalPathComplete = "critical_path_complete";
inline constexpr std::string_view kFromNode = "from_node";
inline constexpr std::string_view kFusedPattern = "fused_pattern";
inline constexpr std::string_view kUnknown = "unknown";        // the explicit marker
}  // namespace pass_keys

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

// The cost estimate of one node (what the cost pass writes). flops/bytes are nullopt for
// an op the model does not know, with `rule` saying why.
struct CostEstimate {
  std::optional<std::int64_t> flops;
  std::optional<std::int64_t> bytes;
  std::string rule;
};
NODEMETA_PASSES_API CostEstimate estimate_cost(const graph::Graph& graph, std::size_t node);
// The bytes of the tensors a node produces (from tensor_meta, else val); 0 if none.
NODEMETA_PASSES_API std::int64_t result_bytes(const graph::Node& node);

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

}  // namespace nodemeta::passes

#endif  // NODEMETA_PASSES_PASSES_H_
