#include "nodemeta/passes/driver.h"

#include <chrono>
#include <functional>
#include <optional>

#include <oneapi/tbb/enumerable_thread_specific.h>

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

// ---- PassContext's journal --------------------------------------------------------------

struct PassContext::Change {
  std::size_t index;          // the node's index in the graph
  Key key;
  std::optional<Value> old;   // what the key held before; nullopt: it was absent
};

struct PassContext::Journal {
  tbb::enumerable_thread_specific<std::vector<Change>> logs;
};

PassContext::PassContext(graph::Graph& graph, const Baseline* baseline, std::string pass_name)
    : graph_(graph),
      baseline_(baseline),
      pass_name_(std::move(pass_name)),
      first_(graph.size() != 0 ? &graph.node(0) : nullptr),
      size_(graph.size()),
      journal_(std::make_unique<Journal>()) {}

PassContext::~PassContext() = default;

std::vector<PassContext::Change>* PassContext::journal_for(const NodeMetadata& node, std::size_t& index) {
  // Is `node` the metadata of one of the nodes the pass started with? (std::less: a total
  // order on pointers, where `<` between unrelated objects is unspecified.)
  if (first_ == nullptr || graph_.size() != size_ || &graph_.node(0) != first_) return nullptr;
  const auto* p = reinterpret_cast<const char*>(&node);
  const auto* begin = reinterpret_cast<const char*>(first_);
  const auto* end = reinterpret_cast<const char*>(first_ + size_);
  if (std::less<const char*>()(p, begin) || !std::less<const char*>()(p, end)) return nullptr;
  index = static_cast<std::size_t>(p - begin) / sizeof(graph::Node);
  if (&first_[index].meta != &node) return nullptr;
  std::vector<Change>& log = journal_->logs.local();  // may throw: nothing written yet
  if (log.size() == log.capacity()) log.reserve(2 * log.size() + 16);
  return &log;
}

WriteResult PassContext::write(NodeMetadata& node, Key key, Value value) {
  std::size_t index = 0;
  std::vector<Change>* log = journal_for(node, index);
  std::optional<Value> old;
  if (log != nullptr) old = node.get(key);
  const WriteResult r = node.try_set(key, std::move(value));
  if (r == WriteResult::kRejectedProtected) {
    count_rejected();
  } else if (log != nullptr) {
    log->push_back(Change{index, key, std::move(old)});  // room reserved: cannot throw
  }
  return r;
}

bool PassContext::erase(NodeMetadata& node, Key key) {
  std::size_t index = 0;
  std::vector<Change>* log = journal_for(node, index);
  std::optional<Value> old;
  if (log != nullptr) old = node.get(key);
  try {
    if (!node.erase(key)) return false;
  } catch (const ProtectedKeyError&) {
    count_rejected();
    return false;
  }
  if (log != nullptr && old) log->push_back(Change{index, key, std::move(old)});
  return true;
}

void PassContext::undo() noexcept {
  const bool same_nodes = graph_.size() == size_ && (size_ == 0 || &graph_.node(0) == first_);
  for (std::vector<Change>& log : journal_->logs) {
    if (same_nodes) {
      for (auto it = log.rbegin(); it != log.rend(); ++it) {
        NodeMetadata& m = first_[it->index].meta;
        try {
          // The key held a value the pass replaced or erased, or nothing: put it back. Both
          // touch a slot the node already has, so neither allocates a node array.
          if (it->old) {
            (void)m.try_set(it->key, std::move(*it->old));
          } else {
            (void)m.erase(it->key);
          }
        } catch (...) {
          // A key protected since the write (protection is forever) keeps the pass's value.
        }
      }
    }
    log.clear();
  }
}

// ---- run_pass --------------------------------------------------------------------------

PassStats run_pass(Pass& pass, graph::Graph& graph, const Baseline* baseline) {
  PassContext ctx(graph, baseline, std::string(pass.name()));
  PassStats stats;
  stats.name = std::string(pass.name());
  stats.nodes_before = graph.size();
  const auto start = std::chrono::steady_clock::now();
  try {
    pass.run(ctx);
  } catch (...) {
    ctx.undo();
    throw;
  }
  stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  stats.nodes_after = graph.size();
  stats.nodes_touched = ctx.touched();
  stats.rejected_protected = ctx.rejected();
  stats.summary = std::move(ctx.summary);
  stats.problems = std::move(ctx.problems);
  return stats;
}

}  // namespace nodemeta::passes
