// Links against the installed nodemeta::graph and nodemeta::passes: loads the installed
// bundled graph, runs the whole pipeline and checks that it verifies clean.
#include <nodemeta/graph/graph_io.h>
#include <nodemeta/passes/passes.h>

#include <cstdio>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: consumer_graph GRAPH\n");
    return 2;
  }
  nodemeta::graph::Graph graph = nodemeta::graph::load_graph(argv[1]);
  const nodemeta::passes::Baseline baseline(graph);
  const std::vector<std::string>& names = nodemeta::passes::pass_names();
  const auto stats = nodemeta::passes::run_pipeline(graph, names, baseline);
  const bool clean = !stats.empty() && stats.back().name == "verify" && stats.back().problems.empty();
  std::printf("consumer_graph: %zu nodes, %zu passes, verify %s\n", graph.size(), stats.size(),
              clean ? "clean" : "FAILED");
  return clean ? 0 : 1;
}
