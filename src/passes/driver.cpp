#include "nodemeta/passes/driver.h"

#include <algorithm>
#include <chrono>
#include <exception>
#include <mutex>
#include <thread>

#include <oneapi/tbb/task_arena.h>

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

namespace detail {

void run_chunks_on_threads(std::size_t n, std::size_t grain,
                           const std::function<void(std::size_t, std::size_t)>& fn) {
  grain = std::max<std::size_t>(grain, 1);
  const std::size_t chunks = (n + grain - 1) / grain;
  const auto threads = std::min<std::size_t>(
      chunks, static_cast<std::size_t>(std::max(1, tbb::this_task_arena::max_concurrency())));
  std::atomic<std::size_t> next{0};
  std::mutex error_mutex;
  std::exception_ptr error;  // the first exception, rethrown on the caller (as TBB does)
  auto worker = [&] {
    try {
      for (std::size_t c; (c = next.fetch_add(1)) < chunks;) fn(c * grain, std::min(n, (c + 1) * grain));
    } catch (...) {
      next.store(chunks);  // stop handing out chunks
      const std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
    }
  };
  if (threads <= 1) {
    worker();
    if (error) std::rethrow_exception(error);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  for (std::size_t t = 1; t < threads; ++t) pool.emplace_back(worker);
  worker();
  for (std::thread& t : pool) t.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace detail

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
