// benchmarks/pipeline_benchmark.cpp: W6, the real pass pipeline (cost, fuse, propagate,
// strip_debug, verify: nodemeta::passes::run_pipeline) on each shared graph.
//
// Rows "W6_pipeline/<graph>/arena_threads:<k>": the graph is loaded once; each iteration
// clones it and takes the verifier's baseline (untimed) and runs the whole pipeline inside a
// tbb::task_arena of k threads (timed). items/s = graph nodes through the whole pipeline
// per second. Counters: <pass>_ms, each pass's mean time per pipeline run (PassStats::seconds);
// nodes; parallelism_work and parallelism_nodes (available_parallelism of the graph as
// loaded: work over the critical path's work, nodes over depth). k runs 1, 2, 4, ... up to
// NODEMETA_BENCH_THREADS (default 2, at most 16); the graphs named in NODEMETA_BENCH_W6_LARGE
// (comma-separated file stems, default gpt2_deep_train_aten) also up to NODEMETA_BENCH_OVERSUB
// (default 8): 4 and 8 threads on 2 cores, the oversubscribed rows that must not collapse.
// A tbb::global_control lets an arena have that many threads on fewer cores.
// Graphs: every *.json / *.json.gz in NODEMETA_GRAPHS_DIR (default ../shared/data/graphs,
// relative to the working directory; scripts/bench runs from the repository root).
// nodemeta only: the passes are written against NodeMetadata, so there is no baseline row.
#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>
#include <oneapi/tbb/global_control.h>
#include <oneapi/tbb/task_arena.h>

#include <nodemeta/graph/graph.h>
#include <nodemeta/graph/graph_io.h>
#include <nodemeta/passes/passes.h>

namespace {

void BM_W6Pipeline(benchmark::State& st, const std::string& path) {
  const int threads = static_cast<int>(st.range(0));
  tbb::task_arena arena(threads);
  const std::vector<std::string>& names = nodemeta::passes::pass_names();
  const nodemeta::graph::Graph loaded = nodemeta::graph::load_graph(path);
  const nodemeta::passes::Baseline baseline(loaded);
  std::vector<double> pass_seconds(names.size(), 0.0);
  for (auto _ : st) {
    st.PauseTiming();
    nodemeta::graph::Graph graph = loaded.clone();
    st.ResumeTiming();
    std::vector<nodemeta::passes::PassStats> stats;
    arena.execute([&] { stats = nodemeta::passes::run_pipeline(graph, names, baseline); });
    st.PauseTiming();  // the graph's destruction is not part of the pipeline
    for (std::size_t p = 0; p < stats.size(); ++p) pass_seconds[p] += stats[p].seconds;
    {
      nodemeta::graph::Graph done = std::move(graph);
    }
    st.ResumeTiming();
  }
  const double runs = static_cast<double>(st.iterations());
  st.SetItemsProcessed(static_cast<std::int64_t>(st.iterations() * loaded.size()));
  st.counters["nodes"] = static_cast<double>(loaded.size());
  for (std::size_t p = 0; p < names.size(); ++p) st.counters[names[p] + "_ms"] = pass_seconds[p] * 1e3 / runs;
  const nodemeta::passes::Parallelism par = nodemeta::passes::available_parallelism(loaded);
  st.counters["parallelism_work"] = par.by_work();
  st.counters["parallelism_nodes"] = par.by_nodes();
  st.counters["depth"] = static_cast<double>(par.depth);
}

}  // namespace

int main(int argc, char** argv) {
  const char* env_dir = std::getenv("NODEMETA_GRAPHS_DIR");
  const std::filesystem::path dir = env_dir != nullptr ? env_dir : "../shared/data/graphs";
  const char* env_threads = std::getenv("NODEMETA_BENCH_THREADS");
  const int max_threads = std::clamp(env_threads != nullptr ? std::atoi(env_threads) : 2, 1, 16);
  const char* env_oversub = std::getenv("NODEMETA_BENCH_OVERSUB");
  const int oversub = std::clamp(env_oversub != nullptr ? std::atoi(env_oversub) : 8, 0, 16);
  const char* env_large = std::getenv("NODEMETA_BENCH_W6_LARGE");
  const std::string large = "," + std::string(env_large != nullptr ? env_large : "gpt2_deep_train_aten") + ",";
  // Lets a task_arena of k threads have k threads on fewer cores (oneTBB caps its workers
  // at the core count otherwise, and the 4- and 8-thread rows would measure 2).
  tbb::global_control allow(tbb::global_control::max_allowed_parallelism,
                            static_cast<std::size_t>(std::max(max_threads, oversub)));

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
    const int top = large.find("," + stem + ",") != std::string::npos ? std::max(max_threads, oversub) : max_threads;
    for (int t = 1; t <= top; t *= 2) b->Arg(t);
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
