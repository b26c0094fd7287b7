// nodemeta/passes/driver.h: the pass driver. Runs compiler passes over a Graph on oneTBB,
// writing node metadata concurrently through NodeMetadata's public API.
//
// Two schedules:
//   for_each_node(graph, fn)                 node-parallel: tbb::parallel_for over all nodes;
//                                            fn(i) may run for any nodes at the same time.
//   for_each_in_dependency_order(graph, fn)  driven by dependencies: fn(i) runs as soon as
//                                            fn(j) has returned for every input j of node i
//                                            (an atomic count of pending inputs per node,
//                                            tbb::parallel_for_each with a feeder; no level
//                                            barrier: the last input's release makes the
//                                            inputs' writes visible).
// Both call fn from the current tbb::task_arena, so a caller limits threads with
// tbb::task_arena(N).execute(...). Results must not depend on the thread count: a pass
// writes only to the node it is visiting (reading its inputs), or builds new nodes in a
// sequential step; counters are atomic sums. See docs/passes.md.
//
// Thread safety: the graph's structure must not change while a schedule runs; its nodes'
// metadata may be read and written from fn (NodeMetadata is concurrent-safe).
#ifndef NODEMETA_PASSES_DRIVER_H_
#define NODEMETA_PASSES_DRIVER_H_

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <oneapi/tbb/blocked_range.h>
#include <oneapi/tbb/info.h>
#include <oneapi/tbb/parallel_for.h>
#include <oneapi/tbb/parallel_for_each.h>
#include <oneapi/tbb/task_arena.h>

#include "nodemeta/errors.h"
#include "nodemeta/export.h"
#include "nodemeta/graph/graph.h"
#include "nodemeta/node_metadata.h"

namespace nodemeta::passes {

class Baseline;

// What one pass did: the `nodemeta run` table's row.
struct PassStats {
  std::string name;
  std::size_t nodes_touched = 0;       // nodes the pass wrote to (or, for verify, checked)
  std::size_t rejected_protected = 0;  // writes refused because the key is protected
  std::size_t nodes_before = 0;        // graph size when the pass started
  std::size_t nodes_after = 0;         // graph size when it finished
  double seconds = 0.0;
  std::string summary;                 // one short line ("16 chains fused", "clean", ...)
  std::vector<std::string> problems;   // verify: what failed, in node order; empty when clean
};

// The state a running pass shares between its threads: the graph, the baseline of loaded
// protected values (may be null), atomic counters, and the journal that makes a pass all or
// nothing. Concurrent-safe, except `summary` and `problems`, which only the pass's
// sequential part (outside its parallel loops) may touch.
//
// Undone on a throw: write() and erase() through the graph's own node handles
// (graph().node(i).meta, for the nodes the pass started with) journal, per node (however
// many of the graph's handles are views of it) and key, the value the key held before the
// pass first changed it and the value the pass last left there, whatever thread or loop
// writes it and however often, under a per-node lock together with the write. When the pass
// throws, run_pass() calls undo(), which puts each journaled key back to its value before
// the pass if, and only if, the key still holds what the pass left there (the very value
// it last wrote, or still absent where it erased the key): compared and restored in one
// step under the node's lock, so a write that another thread (or the pass itself, through
// another handle) made since stays, and counts as not put back. So are a key protected
// since the pass wrote it (protection is forever) and a restore that fails (out of
// memory): run_pass() then throws a std::runtime_error saying how many keys were not put
// back, with the pass's exception nested (std::throw_with_nested). The keys the pass added
// are erased first, then the others restored, so no node needs a bigger array unless
// another writer added keys meanwhile. A scalar another writer set to the very value the
// pass wrote (the same int, say) is indistinguishable from the pass's and is restored.
// What is not journaled: writes through other handles (a view() or a copy of a graph node
// held outside the graph, a node the pass is building), writes made with NodeMetadata's own
// calls, and an inner run_pass() (it commits or undoes on its own). If the node list is no
// longer the one the pass started with, or a handle now holds another node, undo() leaves
// that metadata as it is rather than guess which node is which: a pass that changes the
// structure is all or nothing on its own (fuse is). No value's destructor runs under the
// journal's lock (a destructor may write its node through the context).
// Cost: per journaled write, a per-node lock, a scan of that node's entries and a reference
// to the value written; per first write of a (node, key), a read of the old value and an
// entry; per node written, one small allocation; per pass, one pointer per node (and, for a
// graph holding views, a sort of its nodes by identity when the context is made).
class NODEMETA_PASSES_API PassContext {
 public:
  PassContext(graph::Graph& graph, const Baseline* baseline, std::string pass_name);
  PassContext(const PassContext&) = delete;
  PassContext& operator=(const PassContext&) = delete;
  ~PassContext();

  graph::Graph& graph() noexcept { return graph_; }
  const Baseline* baseline() const noexcept { return baseline_; }
  const std::string& pass_name() const noexcept { return pass_name_; }

  // try_set() that counts a refused protected write instead of applying or throwing it, and
  // journals the key's value before the pass (strong guarantee: a throw changes nothing).
  WriteResult write(NodeMetadata& node, Key key, Value value);
  // erase() that counts a refused protected erase instead of throwing it, and journals the
  // key's value before the pass.
  bool erase(NodeMetadata& node, Key key);
  // Puts every journaled key that still holds what the pass left there back to its value
  // before the pass (see above) and empties the journal; returns how many keys were not
  // put back. Called by run_pass() when the
  // pass throws. Not concurrent with the pass's writes.
  std::size_t undo() noexcept;
  // Empties the journal, keeping what the pass wrote (run_pass() does not need it: the
  // journal dies with the context). For code that drives a PassContext itself.
  void commit() noexcept;

  // Counted per thread (see Count below); touched() and rejected() sum the threads' counts,
  // exact once the pass's loops have returned.
  void count_touched(std::size_t n = 1) noexcept { count_slot().touched.fetch_add(n, std::memory_order_relaxed); }
  void count_rejected(std::size_t n = 1) noexcept { count_slot().rejected.fetch_add(n, std::memory_order_relaxed); }
  std::size_t touched() const noexcept;
  std::size_t rejected() const noexcept;

  // Filled by the pass.
  std::string summary;
  std::vector<std::string> problems;

 private:
  struct NodeLog;  // one journaled node's entries and lock (driver.cpp)
  // The journal of `node` when it is the handle of one of the nodes the pass started with,
  // made on first use (may throw, before anything was written); null otherwise.
  NodeLog* log_for(const NodeMetadata& node);
  bool same_nodes() const noexcept;

  graph::Graph& graph_;
  const Baseline* baseline_;
  std::string pass_name_;
  graph::Node* first_;  // the node list the pass started with
  std::size_t size_;
  std::unique_ptr<std::atomic<NodeLog*>[]> logs_;  // one per node, null until written
  std::unique_ptr<std::size_t[]> canon_;  // graphs with views: each index's node's first index
  // A pass that counts every node (strip_debug counts each refused write) would make all its
  // threads increment one cache line, and share it with the fields every write reads: the
  // counts are per oneTBB thread index instead, one cache line each, apart from the context.
  struct alignas(64) Count {
    std::atomic<std::size_t> touched{0};
    std::atomic<std::size_t> rejected{0};
  };
  static constexpr std::size_t kCounts = 64;  // thread indices beyond share (still atomic)
  Count& count_slot() noexcept {
    return counts_[static_cast<unsigned>(tbb::this_task_arena::current_thread_index()) % kCounts];
  }
  std::unique_ptr<Count[]> counts_{new Count[kCounts]};
};

// Runs body() with the current arena's threads, but no more than the machine's cores
// (tbb::info::default_concurrency(), which respects the affinity mask): an arena made larger
// (with a tbb::global_control, as `nodemeta run -t 8` on 2 cores does) gets a nested arena of
// that many. More threads than cores only add preemption: a thread descheduled in the middle
// of its share holds the loop's end back by a time slice. Exceptions propagate.
template <class Body>
void within_cores(Body&& body) {
  const int cores = tbb::info::default_concurrency();
  if (tbb::this_task_arena::max_concurrency() <= cores) {
    body();
    return;
  }
  tbb::task_arena limited(cores);
  limited.execute(body);
}

// fn(std::size_t i) for every i in [0, n), in parallel (tbb::parallel_for, grain `grain`,
// within_cores).
template <class F>
void parallel_indices(std::size_t n, std::size_t grain, F&& fn) {
  within_cores([&] {
    tbb::parallel_for(tbb::blocked_range<std::size_t>(0, n, grain),
                      [&fn](const tbb::blocked_range<std::size_t>& r) {
                        for (std::size_t i = r.begin(); i != r.end(); ++i) fn(i);
                      });
  });
}

// fn(std::size_t node_index) for every node, in parallel.
template <class F>
void for_each_node(const graph::Graph& graph, F&& fn) {
  parallel_indices(graph.size(), 8, fn);
}

// The nodes grouped by topological level (graph.levels()), ascending index within a level.
NODEMETA_PASSES_API std::vector<std::vector<std::size_t>> wavefronts(const graph::Graph& graph);

// What a graph's dependencies leave to run in parallel (the bound for_each_in_dependency_order
// can reach). A node's work is 1 + its number of inputs (what propagate reads and writes).
struct Parallelism {
  std::size_t nodes = 0;
  std::size_t depth = 0;  // nodes on the longest path (topological levels)
  std::size_t work = 0;   // every node's work
  std::size_t span = 0;   // the most work on one path (the critical path's)
  // Total work over the critical path's work, and nodes over depth; 0 for an empty graph.
  double by_work() const noexcept { return span == 0 ? 0.0 : static_cast<double>(work) / static_cast<double>(span); }
  double by_nodes() const noexcept { return depth == 0 ? 0.0 : static_cast<double>(nodes) / static_cast<double>(depth); }
};
NODEMETA_PASSES_API Parallelism available_parallelism(const graph::Graph& graph);

// The schedule for_each_in_dependency_order runs: each node's users (CSR: the users of node
// i are users[offsets[i]..offsets[i+1]), each once), each node's count of distinct inputs,
// and the nodes without inputs. Throws std::logic_error if an input is not an earlier node
// (a Graph never holds one; a cycle would leave nodes that never run).
struct NODEMETA_PASSES_API DependencySchedule {
  explicit DependencySchedule(const graph::Graph& graph);
  std::vector<std::size_t> offsets;
  std::vector<std::uint32_t> users;
  std::vector<std::uint32_t> inputs;  // distinct inputs per node
  std::vector<std::size_t> roots;
};

// Below this available parallelism (Parallelism::by_work()), for_each_in_dependency_order
// runs the nodes on the calling thread, in index order (a topological order): measured on
// 2 cores, two threads running passes at once each run 1.3-1.4x slower than one alone (cost
// reaches 1.45x at 2 threads, verify 1.6x), so where the critical path is more than half the
// work, a second thread costs the critical path more than it takes off it (docs/passes.md).
inline constexpr double kDependencyMinParallelism = 2.0;

template <class F>
void run_dependency_schedule(const graph::Graph& graph, F&& fn);
// Throws std::logic_error naming the first node with an input that is not an earlier node.
NODEMETA_PASSES_API void check_dependency_order(const graph::Graph& graph);

// fn(std::size_t node_index) for every node, each after all of its inputs, and as soon as
// they are done: each node counts its inputs still pending; the thread that finishes a
// node's last input (its decrement acq_rel, after fn's writes) runs that node itself if it
// is the first user it made ready and hands the others to tbb::parallel_for_each's feeder,
// where idle threads take them. So a chain runs on one thread without a task per node, and
// there is no barrier between levels. With one thread (the arena's, within_cores), or where
// the graph's available parallelism is below `min_parallelism`, the nodes run in index order
// on the calling thread instead (no atomics, no tasks). Either way, if fn throws, nothing that
// depends on that node runs and the exception propagates (after the running nodes return).
// Throws std::logic_error if an input is not an earlier node (a Graph never holds one).
template <class F>
void for_each_in_dependency_order(const graph::Graph& graph, F&& fn,
                                  double min_parallelism = kDependencyMinParallelism) {
  const bool one_thread = std::min(tbb::this_task_arena::max_concurrency(), tbb::info::default_concurrency()) <= 1;
  if (one_thread || available_parallelism(graph).by_work() < min_parallelism) {
    check_dependency_order(graph);
    for (std::size_t i = 0; i < graph.size(); ++i) fn(i);
    return;
  }
  within_cores([&] { run_dependency_schedule(graph, fn); });
}

// The parallel schedule for_each_in_dependency_order runs (whatever the parallelism).
template <class F>
void run_dependency_schedule(const graph::Graph& graph, F&& fn) {
  const DependencySchedule s(graph);
  const std::size_t n = s.inputs.size();
  std::unique_ptr<std::atomic<std::uint32_t>[]> pending(new std::atomic<std::uint32_t>[n]);
  for (std::size_t i = 0; i < n; ++i) pending[i].store(s.inputs[i], std::memory_order_relaxed);
  tbb::parallel_for_each(s.roots.begin(), s.roots.end(),
                         [&fn, &s, &pending](std::size_t i, tbb::feeder<std::size_t>& feeder) {
                           for (;;) {
                             fn(i);
                             std::size_t next = SIZE_MAX;
                             for (std::size_t k = s.offsets[i]; k != s.offsets[i + 1]; ++k) {
                               const std::size_t u = s.users[k];
                               if (pending[u].fetch_sub(1, std::memory_order_acq_rel) != 1) continue;
                               if (next == SIZE_MAX) {
                                 next = u;
                               } else {
                                 feeder.add(u);
                               }
                             }
                             if (next == SIZE_MAX) return;
                             i = next;
                           }
                         });
}

// A compiler pass over a Graph.
class NODEMETA_PASSES_API Pass {
 public:
  virtual ~Pass() = default;
  virtual std::string_view name() const noexcept = 0;
  virtual std::string_view description() const noexcept = 0;
  virtual void run(PassContext& ctx) = 0;
};

// Runs `pass` on `graph`, timing it. The baseline is what verify checks against. If the pass
// throws, what it wrote through its PassContext is undone (PassContext::undo()) and the
// exception propagates (nested in a std::runtime_error if some keys could not be put back).
NODEMETA_PASSES_API PassStats run_pass(Pass& pass, graph::Graph& graph, const Baseline* baseline);

}  // namespace nodemeta::passes

#endif  // NODEMETA_PASSES_DRIVER_H_
