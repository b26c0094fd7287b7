// nodemeta/passes/provenance.h: carrying metadata from replaced nodes onto the node that
// replaces them, the step torch.fx users most often get wrong.
//
// Policy (transfer_provenance; docs/passes.md has the reasoning). The sources are the
// replaced nodes in graph order; the last one is the *output* source, whose result the new
// node produces.
//   copied (set_once, protected keys):  val, tensor_meta, debug_handle from the output
//       source; stack_trace from the output source, or the last source that has a non-null
//       one (null if none has).
//   merged (set_once): nn_module_stack = the union of the sources' stacks, each path once,
//       in order of first appearance (outer modules first).
//   copied (plain): type, from the output source.
//   built: from_node = the target's own from_node (if any), then one entry per source:
//       {"name", "op", "target", "pass_name", "debug_handle"?, "from_node"?}; a source that
//       was itself rewritten keeps its chain nested under "from_node", so the chain reaches
//       the loaded nodes.
//   dropped: everything else (is_wrapped, flops, bytes, cost_rule, depth, critical-path keys,
//       any pass-derived key): it describes the replaced nodes, not the new one; the pass
//       that replaced them recomputes what it needs.
// A protected key the target already holds is kept (set_once does not overwrite) and
// counted in `kept`.
#ifndef NODEMETA_PASSES_PROVENANCE_H_
#define NODEMETA_PASSES_PROVENANCE_H_

#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "nodemeta/export.h"
#include "nodemeta/node_metadata.h"
#include "nodemeta/value.h"

namespace nodemeta::passes {

// One replaced node, as transfer_provenance sees it.
struct SourceNode {
  std::string_view name;
  std::string_view op;
  std::string_view target;
  const NodeMetadata* meta;
};

struct TransferResult {
  std::size_t copied = 0;  // keys written to the target
  std::size_t kept = 0;    // protected keys the target already held (left as they were)
  std::size_t rejected = 0;  // writes refused because the key is protected (never applied)
};

// Applies the policy above. Concurrent-safe for distinct targets (sources may be shared).
NODEMETA_PASSES_API TransferResult transfer_provenance(std::span<const SourceNode> sources,
                                                       NodeMetadata& target,
                                                       std::string_view pass_name);

// Every loaded node a from_node chain names, flattened (nested chains included), in order.
NODEMETA_PASSES_API std::vector<std::string> from_node_names(const Value& from_node);

}  // namespace nodemeta::passes

#endif  // NODEMETA_PASSES_PROVENANCE_H_
