#include "nodemeta/passes/driver.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>

#include "nodemeta/detail/journal_access.h"

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

// ---- for_each_in_dependency_order's schedule, available parallelism ----------------------

DependencySchedule::DependencySchedule(const graph::Graph& graph) : offsets(graph.size() + 1, 0), inputs(graph.size(), 0) {
  const std::size_t n = graph.size();
  if (n > UINT32_MAX) throw std::length_error("for_each_in_dependency_order: more than 2^32 - 1 nodes");
  // Distinct inputs: node i's duplicates of an input count once (a small scan; inputs are few).
  auto distinct = [&](std::size_t i, std::size_t k) {
    const std::vector<std::size_t>& in = graph.node(i).inputs;
    return std::find(in.begin(), in.begin() + static_cast<std::ptrdiff_t>(k), in[k]) == in.begin() + static_cast<std::ptrdiff_t>(k);
  };
  for (std::size_t i = 0; i < n; ++i) {
    const std::vector<std::size_t>& in = graph.node(i).inputs;
    for (std::size_t k = 0; k < in.size(); ++k) {
      if (in[k] >= i) {
        throw std::logic_error("for_each_in_dependency_order: node " + std::to_string(i) + " reads node " +
                               std::to_string(in[k]) + ", which is not an earlier node");
      }
      if (!distinct(i, k)) continue;
      ++offsets[in[k] + 1];
      ++inputs[i];
    }
    if (inputs[i] == 0) roots.push_back(i);
  }
  for (std::size_t i = 0; i < n; ++i) offsets[i + 1] += offsets[i];
  users.resize(offsets[n]);
  std::vector<std::size_t> fill(offsets.begin(), offsets.end() - 1);
  for (std::size_t i = 0; i < n; ++i) {
    const std::vector<std::size_t>& in = graph.node(i).inputs;
    for (std::size_t k = 0; k < in.size(); ++k) {
      if (distinct(i, k)) users[fill[in[k]]++] = static_cast<std::uint32_t>(i);
    }
  }
}

void check_dependency_order(const graph::Graph& graph) {
  for (std::size_t i = 0; i < graph.size(); ++i) {
    for (std::size_t j : graph.node(i).inputs) {
      if (j >= i) {
        throw std::logic_error("for_each_in_dependency_order: node " + std::to_string(i) + " reads node " +
                               std::to_string(j) + ", which is not an earlier node");
      }
    }
  }
}

Parallelism available_parallelism(const graph::Graph& graph) {
  Parallelism p;
  p.nodes = graph.size();
  std::vector<std::size_t> level(graph.size(), 0), path(graph.size(), 0);
  for (std::size_t i = 0; i < graph.size(); ++i) {
    const std::vector<std::size_t>& in = graph.node(i).inputs;
    const std::size_t own = 1 + in.size();
    std::size_t l = 0, w = 0;
    for (std::size_t j : in) {
      if (j >= i) continue;  // not a Graph's node list (DependencySchedule refuses it)
      l = std::max(l, level[j] + 1);
      w = std::max(w, path[j]);
    }
    level[i] = l;
    path[i] = w + own;
    p.work += own;
    p.depth = std::max(p.depth, l + 1);
    p.span = std::max(p.span, path[i]);
  }
  return p;
}

// ---- PassContext's journal --------------------------------------------------------------

// One node's changes in this pass, one entry per key: the value from before the pass and the
// value the pass last left there. The lock makes "read the old value, write, record" one
// step for the node. Nothing held here is destroyed while the lock is held, and no store call
// made under it releases retired values (JournalAccess): a value's destructor may write this
// node through the context (design.md clause 9).
struct PassContext::NodeLog {
  struct Change {
    Key key = keys::val;        // (Key has no default; an unused inline entry holds this)
    std::optional<Value> old;   // the key's value before the pass; nullopt: it was absent
    std::optional<Value> last;  // what the pass last left: its value (a reference to that
                                // very value, so a box's address is not reused while the
                                // journal lives), nullopt where it erased the key
  };
  static constexpr std::size_t kInline = 4;  // a pass writes a few keys per node

  std::atomic<bool> locked{false};
  std::uint32_t inline_used = 0;
  MetadataStore* store;  // the node's identity when first written
  NodeId id;
  std::array<Change, kInline> first;  // the first kInline changes (no second allocation)
  std::vector<Change> more;           // the rest

  // From the store's allocator (tbbmalloc's per-thread caches in release builds; what the
  // sanitizers and the allocation-failure hook see in theirs): one NodeLog per node a pass
  // writes, made and freed by many threads.
  static void* operator new(std::size_t n) { return detail::Allocator<char>().allocate(n); }
  static void operator delete(void* p, std::size_t n) noexcept {
    detail::Allocator<char>().deallocate(static_cast<char*>(p), n);
  }

  void lock() noexcept {
    for (unsigned spins = 0; locked.exchange(true, std::memory_order_acquire); ++spins) {
      if (spins > 16) std::this_thread::yield();
    }
  }
  void unlock() noexcept { locked.store(false, std::memory_order_release); }
  template <class F>
  void for_each(F&& f) {
    for (std::uint32_t i = 0; i < inline_used; ++i) f(first[i]);
    for (Change& c : more) f(c);
  }
  // The entry of `key`, or null after making room for one (may throw; the room keeps the
  // entries where they are).
  Change* find(Key key) {
    Change* found = nullptr;
    for_each([&](Change& c) {
      if (found == nullptr && c.key == key) found = &c;
    });
    if (found == nullptr && inline_used == kInline && more.size() == more.capacity()) {
      more.reserve(more.empty() ? kInline : 2 * more.size());
    }
    return found;
  }
  void record(Key key, std::optional<Value>&& old, std::optional<Value>&& last) noexcept {  // after find() made room
    if (inline_used < kInline) {
      first[inline_used++] = Change{key, std::move(old), std::move(last)};
    } else {
      more.push_back(Change{key, std::move(old), std::move(last)});
    }
  }
};

namespace {

// Whether two handles are the same node (the store and the id; ids are never reused).
bool same_node(const NodeMetadata& m, const MetadataStore* store, NodeId id) noexcept {
  return m.valid() && &m.store() == store && m.id() == id;
}

}  // namespace

PassContext::PassContext(graph::Graph& graph, const Baseline* baseline, std::string pass_name)
    : graph_(graph),
      baseline_(baseline),
      pass_name_(std::move(pass_name)),
      first_(graph.size() != 0 ? &graph.node(0) : nullptr),
      size_(graph.size()),
      logs_(graph.size() != 0 ? std::make_unique<std::atomic<NodeLog*>[]>(graph.size()) : nullptr) {
  // Owning handles are distinct nodes; only views can repeat one (two fx nodes sharing a
  // meta in the Python package, or the same view twice). Then every handle of a node maps to
  // the first index holding it, so the node has one log whichever handle writes it.
  bool views = false;
  for (std::size_t i = 0; i < size_ && !views; ++i) views = first_[i].meta.is_view();
  if (!views) return;
  struct Ident {
    std::uintptr_t store;
    NodeId id;
    std::size_t index;
    bool operator<(const Ident& o) const noexcept {
      return store != o.store ? store < o.store : id != o.id ? id < o.id : index < o.index;
    }
  };
  std::vector<Ident> order;
  order.reserve(size_);
  for (std::size_t i = 0; i < size_; ++i) {
    const NodeMetadata& m = first_[i].meta;
    order.push_back(m.valid() ? Ident{reinterpret_cast<std::uintptr_t>(&m.store()), m.id(), i}
                              : Ident{0, 0, i});  // a moved-from handle: itself
  }
  std::sort(order.begin(), order.end());
  canon_ = std::make_unique<std::size_t[]>(size_);
  for (std::size_t k = 0; k < order.size(); ++k) {
    const bool repeat = k != 0 && order[k].store != 0 && order[k].store == order[k - 1].store &&
                        order[k].id == order[k - 1].id;
    canon_[order[k].index] = repeat ? canon_[order[k - 1].index] : order[k].index;
  }
}

PassContext::~PassContext() { commit(); }

bool PassContext::same_nodes() const noexcept {
  return graph_.size() == size_ && (size_ == 0 || &graph_.node(0) == first_);
}

PassContext::NodeLog* PassContext::log_for(const NodeMetadata& node) {
  // Is `node` the handle of one of the nodes the pass started with? (std::less: a total
  // order on pointers, where `<` between unrelated objects is unspecified.)
  if (size_ == 0 || !same_nodes()) return nullptr;
  const auto* p = reinterpret_cast<const char*>(&node);
  const auto* begin = reinterpret_cast<const char*>(first_);
  const auto* end = reinterpret_cast<const char*>(first_ + size_);
  if (std::less<const char*>()(p, begin) || !std::less<const char*>()(p, end)) return nullptr;
  std::size_t i = static_cast<std::size_t>(p - begin) / sizeof(graph::Node);
  if (&first_[i].meta != &node || !node.valid()) return nullptr;
  if (canon_ != nullptr) i = canon_[i];  // the node's log, whichever of its handles this is
  std::atomic<NodeLog*>& slot = logs_[i];
  NodeLog* log = slot.load(std::memory_order_acquire);
  if (log == nullptr) {
    auto made = std::make_unique<NodeLog>();  // may throw: nothing written yet
    made->store = &node.store();
    made->id = node.id();
    if (slot.compare_exchange_strong(log, made.get(), std::memory_order_acq_rel, std::memory_order_acquire)) {
      log = made.release();
    }
  }
  // A handle that holds another node than the log's (assigned to during the pass): its
  // writes are not journaled.
  return same_node(node, log->store, log->id) ? log : nullptr;
}

WriteResult PassContext::write(NodeMetadata& node, Key key, Value value) {
  // A protected key is refused without a journal entry (protection is forever, so a write
  // this check lets through and try_set then refuses changes nothing either).
  NodeLog* log = node.valid() && node.store().is_protected(key) ? nullptr : log_for(node);
  if (log == nullptr) {
    const WriteResult r = node.try_set(key, std::move(value));
    if (r == WriteResult::kRejectedProtected) count_rejected();
    return r;
  }
  // Declared before the lock: whatever of these is destroyed, is destroyed after unlocking.
  // `last` is the journal's reference to the value this write stores (so no reference the
  // store drops under the lock is the last one either).
  std::optional<Value> old;
  std::optional<Value> last(value);
  WriteResult r = WriteResult::kRejectedProtected;  // (assigned below)
  {
    std::lock_guard<NodeLog> hold(*log);
    NodeLog::Change* change = log->find(key);  // may throw: nothing written yet
    if (change == nullptr) old = node.get(key);
    r = detail::JournalAccess::write(node, key, std::move(value));  // may throw: node unchanged
    if (r == WriteResult::kRejectedProtected) {
      count_rejected();
    } else if (change == nullptr) {
      log->record(key, std::move(old), std::move(last));  // room made: cannot throw
    } else {
      change->last.swap(last);  // the value it replaces dies after unlocking
    }
  }
  detail::JournalAccess::collect();  // what the write retired, outside the journal's lock
  return r;
}

bool PassContext::erase(NodeMetadata& node, Key key) {
  // As in write(): erasing a protected key is refused (and counted) without a journal entry.
  NodeLog* log = node.valid() && node.store().is_protected(key) ? nullptr : log_for(node);
  if (log == nullptr) {
    try {
      return node.erase(key);
    } catch (const ProtectedKeyError&) {
      count_rejected();
      return false;
    }
  }
  std::optional<Value> old;   // as in write(): destroyed after unlocking
  std::optional<Value> last;  // receives what the pass last wrote to the key, if it did
  bool erased = false;
  {
    std::lock_guard<NodeLog> hold(*log);
    NodeLog::Change* change = log->find(key);  // may throw: nothing erased yet
    if (change == nullptr) old = node.get(key);
    try {
      erased = detail::JournalAccess::erase(node, key);
    } catch (const ProtectedKeyError&) {
      count_rejected();
    }
    if (erased && change == nullptr) {
      log->record(key, std::move(old), std::nullopt);
    } else if (erased) {
      change->last.swap(last);  // the pass's last act on the key: absent
    }
  }
  detail::JournalAccess::collect();
  return erased;
}

std::size_t PassContext::undo() noexcept {
  std::size_t lost = 0;
  if (size_ == 0) return 0;
  const bool same = same_nodes();
  // Each key goes back to its value before the pass only if it still holds what the pass
  // left there (compared and restored in one step under the node's lock): a later write by
  // anyone else stays, and is counted as not put back. Erase what the pass added first, then
  // put back what it replaced or erased: each node then only returns to sizes it had before
  // the pass, so none needs a bigger array (unless another writer added keys meanwhile).
  // No store call here releases retired values: nothing the journal holds or the store
  // drops is destroyed until the journal is gone.
  for (int phase = 0; phase < 2 && same; ++phase) {
    for (std::size_t i = 0; i < size_; ++i) {
      NodeLog* log = logs_[i].load(std::memory_order_acquire);
      if (log == nullptr) continue;
      NodeMetadata& m = first_[i].meta;
      if (!same_node(m, log->store, log->id)) continue;  // another node now
      log->for_each([&](NodeLog::Change& c) {
        if (c.old.has_value() != (phase == 1)) return;
        try {
          if (detail::JournalAccess::restore(m, c.key, c.last, c.old) !=
              detail::JournalAccess::Restore::kRestored) {
            ++lost;  // written since by someone else, or protected since the pass wrote it
          }
        } catch (...) {
          ++lost;  // out of memory
        }
      });
    }
  }
  commit();                          // the journal's values die here, under no lock
  detail::JournalAccess::collect();  // and what the restores retired
  return lost;
}

void PassContext::commit() noexcept {
  for (std::size_t i = 0; i < size_; ++i) {
    if (logs_[i].load(std::memory_order_relaxed) != nullptr) {
      delete logs_[i].exchange(nullptr, std::memory_order_acq_rel);
    }
  }
}

std::size_t PassContext::touched() const noexcept {
  std::size_t n = 0;
  for (std::size_t i = 0; i < kCounts; ++i) n += counts_[i].touched.load(std::memory_order_relaxed);
  return n;
}

std::size_t PassContext::rejected() const noexcept {
  std::size_t n = 0;
  for (std::size_t i = 0; i < kCounts; ++i) n += counts_[i].rejected.load(std::memory_order_relaxed);
  return n;
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
    const std::size_t lost = ctx.undo();
    if (lost == 0) throw;
    std::throw_with_nested(std::runtime_error(
        "pass '" + stats.name + "' threw, and " + std::to_string(lost) + " of the keys it changed could not be " +
        "put back (written since by another writer, protected since, or out of memory)"));
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
