#include "nodemeta/passes/driver.h"

#include <chrono>

namespace nodemeta::passes {

std::vector<std::vector<std::size_t>> wavefronts(const graph::Graph& graph) {
  const std::vector<std::size_t> level = graph.levels();
  std::vector<std::vector<std::size_t>> out;
  for (std::size_t i = 0; i < level.size(); ++i) {
    if (level[i] >= out.size()) out.resize(level[i] + 1);
    out[level[i]].push_back(i);
  }
  return out;
}

PassStats run_pass(Pass& pass, graph::Graph& graph, const Baseline* baseline) {
  PassContext ctx(graph, baseline, std::string(pass.name()));
  PassStats stats;
  stats.name = std::string(pass.name());
  stats.nodes_before = graph.size();
  const auto start = std::chrono::steady_clock::now();
  pass.run(ctx);
  stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  stats.nodes_after = graph.size();
  stats.nodes_touched = ctx.touched();
  stats.rejected_protected = ctx.rejected();
  stats.summary = std::move(ctx.summary);
  stats.problems = std::move(ctx.problems);
  return stats;
}

}  // namespace nodemeta::passes
