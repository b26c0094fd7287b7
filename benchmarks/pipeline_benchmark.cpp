// benchmarks/pipeline_benchmark.cpp: W6, the real pass pipeline (cost, fuse, propagate,
// strip_debug, verify: nodemeta::passes::run_pipeline) on each shared graph.
//
// Rows "W6_pipeline/<graph>/arena_threads:<k>": one iteration loads the graph (untimed),
// takes the verifier's baseline (untimed) and runs the whole pipeline inside a
// tbb::task_arena of k threads (timed). items/s = graph nodes through the whole pipeline
// per second. k runs 1, 2, 4, ... up to NODEMETA_BENCH_THREADS (default 2, at most 16).
// Graphs: every *.json / *.json.gz in NODEMETA_GRAPHS_DIR (default ../shared/data/graphs,
// relative to the working directory; scripts/bench runs from the repository root).
// nodemeta only: the passes are written against NodeMetadata, so there is no baseline row.
#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>
#include <oneapi/tbb/task_arena.h>

#include <nodemeta/graph/graph.h>
#include <nodemeta/graph/graph_io.h>
#include <nodemeta/passes/passes.h>

namespace {

void BM_W6Pipeline(benchmark::State& st, const std::string& path) {
  const int threads = static_cast<int>(st.range(0));
  tbb::task_arena arena(threads);
  const std::vector<std::string>& names = nodemeta::passes::pass_names();
  std::size_t nodes = 0;
  for (auto _ : st) {
    st.PauseTiming();
    nodemeta::graph::Graph graph = nodemeta::graph::load_graph(path);
    const nodemeta::passes::Baseline baseline(graph);
    nodes = graph.size();
    st.ResumeTiming();
    arena.execute([&] {
      benchmark::DoNotOptimize(nodemeta::passes::run_pipeline(graph, names, baseline));
    });
    st.PauseTiming();  // the graph's destruction is not part of the pipeline
    {
      nodemeta::graph::Graph done = std::move(graph);
    }
    st.ResumeTiming();
  }
  st.SetItemsProcessed(static_cast<std::int64_t>(st.iterations() * nodes));
  st.counters["nodes"] = static_cast<double>(nodes);
}

}  // namespace

int main(int argc, char** argv) {
  const char* env_dir = std::getenv("NODEMETA_GRAPHS_DIR");
  const std::filesystem::path dir = env_dir != nullptr ? env_dir : "../shared/data/graphs";
  const char* env_threads = std::getenv("NODEMETA_BENCH_THREADS");
  const int max_threads = std::clamp(env_threads != nullptr ? std::atoi(env_threads) : 2, 1, 16);

  std::vector<std::filesystem::path> graphs;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.ends_with(".json") || name.ends_with(".json.gz")) graphs.push_back(entry.path());
  }
  std::sort(graphs.begin(), graphs.end());
  for (const auto& g : graphs) {
    std::string stem = g.filename().string();
    stem = stem.substr(0, stem.find('.'));
    auto* b = benchmark::RegisterBenchmark(("W6_pipeline/" + stem).c_str(), BM_W6Pipeline, g.string());
    b->ArgName("arena_threads")->UseRealTime()->Unit(benchmark::kMillisecond);
    for (int t = 1; t <= max_threads; t *= 2) b->Arg(t);
  }
  benchmark::AddCustomContext("graphs_dir", dir.string());
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  if (graphs.empty()) {
    std::fprintf(stderr, "nodemeta_pipeline_benchmark: no *.json / *.json.gz graphs in %s\n",
                 dir.string().c_str());
    return 1;
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
