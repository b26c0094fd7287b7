// benchmarks/workloads_benchmark.cpp: workloads W1-W5 (and the W1s/W1os string-literal and
// W2r read-only variants) for nodemeta and six baselines, plus single-thread get/set against a
// raw tbb::concurrent_hash_map. See benchmarks/README.md.
//
// Every row is "<workload>/<implementation>", run with ->ThreadRange(1, N)->UseRealTime(),
// N from NODEMETA_BENCH_THREADS (default 2, at most 16); W1, W2, W2r and W4 also at more
// threads with NODEMETA_BENCH_OVERSUB (see oversub_threads()). Graphs and per-thread operation
// streams are built outside the timed loops, once per (workload, implementation), and kept
// for the whole run (every thread count, every repetition).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <absl/synchronization/mutex.h>
#include <benchmark/benchmark.h>
#include <oneapi/tbb/concurrent_hash_map.h>

#include "impls.h"

namespace nmbench {
namespace {

constexpr std::size_t kNodes = 100'000;
constexpr std::size_t kOpsPerThread = std::size_t{1} << 16;  // a power of two
constexpr int kMaxThreads = 16;

// --- fixtures: built once, by whichever thread asks first, and kept for the whole run -------
// Kept (not rebuilt per row) so that scripts/bench can run the suite with Google Benchmark's
// random interleaving: every repetition of every row runs in random order, so a burst of
// load from other processes spreads over all implementations instead of hitting one. Rows
// that only read, or overwrite in place, share a graph (W1o with W3; W4 with W5 and the
// single-thread rows); peak memory is about 2.5 GB, mostly baseline (a)'s 4 KB per node.
struct FixtureCache {
  std::mutex mutex;
  std::map<std::string, std::shared_ptr<void>> objects;
};
FixtureCache& cache() {
  static FixtureCache c;
  return c;
}
template <class F, class... Args>
F& fixture(const std::string& key, Args&&... args) {
  FixtureCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  // NODEMETA_BENCH_EVICT_FIXTURES=1 (diagnostic): free every other graph before building a
  // new one, i.e. each row's graph is built in a heap that the previous row's graph has just
  // been freed into (the suite's first schedule; see docs/benchmarks.md).
  static const bool evict = std::getenv("NODEMETA_BENCH_EVICT_FIXTURES") != nullptr;
  if (evict && !c.objects.contains(key)) c.objects.clear();
  std::shared_ptr<void>& slot = c.objects[key];
  if (!slot) slot = std::make_shared<F>(std::forward<Args>(args)...);
  return *static_cast<F*>(slot.get());
}

// The five protected keys, with distinct 8-byte integer values.
Init seeded(std::size_t node) {
  Init init;
  std::int64_t v = static_cast<std::int64_t>(node) * 8;
  for (const std::string& name : protected_names()) init.add(name, Value(v++));
  return init;
}
Init with_keys(std::size_t node, const std::vector<std::string>& names) {
  Init init;
  std::int64_t v = static_cast<std::int64_t>(node) * 8;
  for (const std::string& name : names) init.add(name, Value(v++));
  return init;
}

struct Slice {
  std::size_t begin, end;
};
Slice slice_of(const benchmark::State& st, std::size_t n) {
  const auto t = static_cast<std::size_t>(st.thread_index());
  const auto threads = static_cast<std::size_t>(st.threads());
  return {n * t / threads, n * (t + 1) / threads};
}

// One operation of a random stream.
enum class OpKind : std::uint8_t { kGet, kGetMissing, kSet, kUpdate };
struct Op {
  std::uint32_t node;
  std::uint8_t key;
  OpKind kind;
};

// Zipf over ranks 1..n with exponent s, sampled by inverting the CDF.
class Zipf {
 public:
  Zipf(std::size_t n, double s) : cdf_(n) {
    double sum = 0;
    for (std::size_t k = 0; k < n; ++k) cdf_[k] = (sum += 1.0 / std::pow(static_cast<double>(k + 1), s));
    for (double& c : cdf_) c /= sum;
  }
  template <class Rng>
  std::size_t operator()(Rng& rng) const {
    const double u = std::uniform_real_distribution<double>(0.0, 1.0)(rng);
    return static_cast<std::size_t>(std::lower_bound(cdf_.begin(), cdf_.end(), u) - cdf_.begin());
  }

 private:
  std::vector<double> cdf_;
};

// Per-thread operation streams, for up to kMaxThreads threads (thread t's stream does not
// depend on the thread count).
using Streams = std::vector<std::vector<Op>>;
template <class Gen>
Streams make_streams(std::uint64_t seed, Gen&& gen) {
  Streams s(kMaxThreads);
  for (int t = 0; t < kMaxThreads; ++t) {
    std::mt19937_64 rng(seed * 1000 + static_cast<std::uint64_t>(t));
    s[t].resize(kOpsPerThread);
    for (Op& op : s[t]) op = gen(rng);
  }
  return s;
}

template <class I>
std::vector<typename I::KeyT> keys_of(const std::vector<std::string>& names) {
  std::vector<typename I::KeyT> keys;
  for (const std::string& n : names) keys.push_back(I::key(n));
  return keys;
}

std::string fixture_key(const char* workload, std::string_view impl) {
  return std::string(workload) + "/" + std::string(impl);
}

// --- W1 annotate fresh / W1o annotate overwrite ---------------------------------------------
const std::string kPassKey = "pass_flops";

template <class I>
struct SeededGraph {
  explicit SeededGraph(bool with_pass_key) : impl(kNodes) {
    if constexpr (requires { impl.note_extra_key(kPassKey); }) impl.note_extra_key(kPassKey);
    for (std::size_t i = 0; i < kNodes; ++i) {
      Init init = seeded(i);
      if (with_pass_key) init.add(kPassKey, Value(std::int64_t{-1}));
      impl.push(init);
    }
  }
  I impl;
};

template <class I>
void BM_W1Fresh(benchmark::State& st) {
  auto& g = fixture<SeededGraph<I>>(fixture_key("W1", I::kName), false).impl;
  const auto pass = I::key(kPassKey);
  const auto val = I::key("val");
  const Slice s = slice_of(st, kNodes);
  for (auto _ : st) {
    st.PauseTiming();  // every node of this thread's slice back to 5 keys, freshly built
    for (std::size_t i = s.begin; i < s.end; ++i) g.rebuild(i, seeded(i));
    st.ResumeTiming();
    for (std::size_t i = s.begin; i < s.end; ++i) {
      g.set(i, pass, Value(static_cast<std::int64_t>(i)));
      benchmark::DoNotOptimize(g.get(i, val));
    }
  }
  st.SetItemsProcessed(static_cast<std::int64_t>(st.iterations() * (s.end - s.begin)));
}

template <class I>
void BM_W1Overwrite(benchmark::State& st) {
  auto& g = fixture<SeededGraph<I>>(fixture_key("W1o", I::kName), true).impl;
  const auto pass = I::key(kPassKey);
  const auto val = I::key("val");
  const Slice s = slice_of(st, kNodes);
  std::size_t i = s.begin;
  std::int64_t v = 0;
  for (auto _ : st) {
    g.set(i, pass, Value(v++));
    benchmark::DoNotOptimize(g.get(i, val));
    if (++i == s.end) i = s.begin;
  }
  st.SetItemsProcessed(static_cast<std::int64_t>(st.iterations()));
}

// --- W1s / W1os: the same, with the keys written as string literals at the call site ----------
// As the README shows it: md.set("pass_flops", i) and md.get("val"), no Key prepared outside
// the loop, so every call turns the literal into the store's key (nodemeta: whatever its
// NodeMetadata overloads do with a literal; a baseline: its get_str/set_str, see impls.h).
// The literals below must stay equal to kPassKey and "val". W1s shares W1's graph (each
// timed pass rebuilds its slice first), W1os shares W1o's (the pass key is present).
template <class I>
inline void set_pass_literal(I& g, std::size_t i, std::int64_t v) {
  if constexpr (std::is_same_v<I, Nodemeta>) {
    g.node(i).set("pass_flops", v);
  } else {
    g.set_str(i, "pass_flops", Value(v));
  }
}
template <class I>
inline std::optional<Value> get_val_literal(I& g, std::size_t i) {
  if constexpr (std::is_same_v<I, Nodemeta>) {
    return g.node(i).get("val");
  } else {
    return g.get_str(i, "val");
  }
}

template <class I>
void BM_W1FreshStrings(benchmark::State& st) {
  auto& g = fixture<SeededGraph<I>>(fixture_key("W1", I::kName), false).impl;
  const Slice s = slice_of(st, kNodes);
  for (auto _ : st) {
    st.PauseTiming();  // every node of this thread's slice back to 5 keys, freshly built
    for (std::size_t i = s.begin; i < s.end; ++i) g.rebuild(i, seeded(i));
    st.ResumeTiming();
    for (std::size_t i = s.begin; i < s.end; ++i) {
      set_pass_literal(g, i, static_cast<std::int64_t>(i));
      benchmark::DoNotOptimize(get_val_literal(g, i));
    }
  }
  st.SetItemsProcessed(static_cast<std::int64_t>(st.iterations() * (s.end - s.begin)));
}

template <class I>
void BM_W1OverwriteStrings(benchmark::State& st) {
  auto& g = fixture<SeededGraph<I>>(fixture_key("W1o", I::kName), true).impl;
  const Slice s = slice_of(st, kNodes);
  std::size_t i = s.begin;
  std::int64_t v = 0;
  for (auto _ : st) {
    set_pass_literal(g, i, v++);
    benchmark::DoNotOptimize(get_val_literal(g, i));
    if (++i == s.end) i = s.begin;
  }
  st.SetItemsProcessed(static_cast<std::int64_t>(st.iterations()));
}

// --- W3 protected rejections ------------------------------------------------------------------
enum class W3Op { kSetThrow, kTrySet, kContains };

template <class I, W3Op kOp>
void BM_W3Protected(benchmark::State& st) {
  auto& g = fixture<SeededGraph<I>>(fixture_key("W1o", I::kName), true).impl;
  std::vector<typename I::KeyT> keys;
  for (const std::string& n : protected_names()) keys.push_back(I::key(n));
  const Slice s = slice_of(st, kNodes);
  std::size_t i = s.begin;
  std::size_t k = 0;
  std::int64_t rejected = 0;
  for (auto _ : st) {
    if constexpr (kOp == W3Op::kSetThrow) {
      try {
        g.set(i, keys[k], Value(std::int64_t{1}));
      } catch (const std::runtime_error&) {
        ++rejected;
      }
    } else if constexpr (kOp == W3Op::kTrySet) {
      rejected += g.try_set(i, keys[k], Value(std::int64_t{1})) ? 0 : 1;
    } else {
      rejected += g.contains(i, keys[k]) ? 1 : 0;
    }
    if (++k == keys.size()) k = 0;
    if (++i == s.end) i = s.begin;
  }
  if (rejected != static_cast<std::int64_t>(st.iterations())) {
    st.SkipWithError("a protected write was not rejected (or a protected key is missing)");
  }
  st.SetItemsProcessed(static_cast<std::int64_t>(st.iterations()));
}

// --- W2 hot node ------------------------------------------------------------------------------
const std::vector<std::string> kHotKeys = {"val", "stack_trace", "nn_module_stack", "debug_handle",
                                           "tensor_meta", "hot_a", "hot_b", "hot_c"};

const Streams& w2_streams() {
  static const Streams s = make_streams(2, [](std::mt19937_64& rng) {
    Op op{0, 0, OpKind::kGet};
    if (rng() % 10 == 0) {
      op.kind = OpKind::kSet;
      op.key = static_cast<std::uint8_t>(5 + rng() % 3);  // the three unprotected keys
    } else {
      op.key = static_cast<std::uint8_t>(rng() % 8);
    }
    return op;
  });
  return s;
}

// W2r_hot_read_boxed's node: the same 8 keys, every value boxed (a shared, reference-counted
// box): 4 distinct stack-trace-like strings of about 200 characters and 4 small dicts.
Init boxed_hot_keys() {
  Init init;
  for (std::size_t k = 0; k < kHotKeys.size(); ++k) {
    const std::string n = std::to_string(k);
    if (k % 2 == 0) {
      init.add(kHotKeys[k],
               Value("File \"model_" + n + ".py\", line 42, in forward\n    x = self.block" + n +
                     "(x)\nFile \"torch/nn/modules/module.py\", line 1501, in _call_impl\n"
                     "    return forward_call(*args, **kwargs)\n"
                     "File \"torch/nn/modules/linear.py\", line 114, in forward"));
    } else {
      init.add(kHotKeys[k], Value::dict({{"name", "block" + n}, {"type", "torch.nn.Linear"},
                                         {"index", static_cast<std::int64_t>(k)}}));
    }
  }
  return init;
}

template <class I>
struct HotNode {
  explicit HotNode(bool boxed = false) : impl(1) {
    impl.push(boxed ? boxed_hot_keys() : with_keys(0, kHotKeys));
  }
  I impl;
};

template <class I>
void BM_W2HotNode(benchmark::State& st) {
  auto& g = fixture<HotNode<I>>(fixture_key("W2", I::kName)).impl;
  const auto keys = keys_of<I>(kHotKeys);
  const std::vector<Op>& ops = w2_streams()[static_cast<std::size_t>(st.thread_index())];
  std::size_t j = 0;
  std::int64_t v = 0;
  for (auto _ : st) {
    const Op& op = ops[j++ & (kOpsPerThread - 1)];
    if (op.kind == OpKind::kSet) {
      g.set(0, keys[op.key], Value(v++));
    } else {
      benchmark::DoNotOptimize(g.get(0, keys[op.key]));
    }
  }
  st.SetItemsProcessed(static_cast<std::int64_t>(st.iterations()));
}

// --- W2r hot node, read-only --------------------------------------------------------------------
// Every thread only reads the hot node (its own copy of W2's node, kept apart from W2's), a
// random one of its 8 keys per operation. kBoxed: the values are strings and dicts, so each
// get() returns a Value that shares the node's box: one reference-count increment (and one
// decrement when the copy dies), atomic writes to a line every reader shares.
const Streams& w2r_streams() {
  static const Streams s = make_streams(20, [](std::mt19937_64& rng) {
    return Op{0, static_cast<std::uint8_t>(rng() % 8), OpKind::kGet};
  });
  return s;
}

template <class I, bool kBoxed>
void BM_W2rHotRead(benchmark::State& st) {
  auto& g = fixture<HotNode<I>>(fixture_key(kBoxed ? "W2r_boxed" : "W2r", I::kName), kBoxed).impl;
  const auto keys = keys_of<I>(kHotKeys);
  const std::vector<Op>& ops = w2r_streams()[static_cast<std::size_t>(st.thread_index())];
  std::size_t j = 0;
  for (auto _ : st) {
    benchmark::DoNotOptimize(g.get(0, keys[ops[j++ & (kOpsPerThread - 1)].key]));
  }
  st.SetItemsProcessed(static_cast<std::int64_t>(st.iterations()));
}

// --- W4 random slots, W5 mixed (Boost.Unordered parallel_load) ------------------------------
const std::vector<std::string> kSlotKeys = {"slot0", "slot1", "slot2", "slot3", "slot4"};
const std::vector<std::string> kMissKeys = {"miss0", "miss1", "miss2", "miss3", "miss4"};

template <class I>
struct SlotGraph {
  SlotGraph() : impl(kNodes) {
    for (std::size_t i = 0; i < kNodes; ++i) impl.push(with_keys(i, kSlotKeys));
  }
  I impl;
};

const Streams& w4_streams() {
  static const Streams s = make_streams(4, [](std::mt19937_64& rng) {
    Op op{static_cast<std::uint32_t>(rng() % kNodes), static_cast<std::uint8_t>(rng() % 5),
          OpKind::kGet};
    if (rng() % 10 == 0) op.kind = OpKind::kSet;
    return op;
  });
  return s;
}

// skew_x100: 1 (0.01) or 99 (0.99). Zipf ranks go through a fixed random permutation, so
// hot nodes are spread over the graph rather than adjacent.
const Streams& w5_streams(int skew_x100) {
  static std::mutex m;
  static std::unique_ptr<Streams> s1, s99;
  std::lock_guard<std::mutex> lock(m);
  std::unique_ptr<Streams>& s = skew_x100 == 1 ? s1 : s99;
  if (!s) {
    const Zipf zipf(kNodes, skew_x100 / 100.0);
    std::vector<std::uint32_t> perm(kNodes);
    for (std::size_t i = 0; i < kNodes; ++i) perm[i] = static_cast<std::uint32_t>(i);
    std::shuffle(perm.begin(), perm.end(), std::mt19937_64(55));
    s = std::make_unique<Streams>(make_streams(5, [&](std::mt19937_64& rng) {
      Op op{perm[zipf(rng)], static_cast<std::uint8_t>(rng() % 5), OpKind::kGet};
      const auto r = rng() % 100;
      if (r < 10) {
        op.kind = OpKind::kUpdate;
      } else if (r >= 55) {
        op.kind = OpKind::kGetMissing;
      }
      return op;
    }));
  }
  return *s;
}

template <class I>
void BM_W4RandomSlots(benchmark::State& st) {
  auto& g = fixture<SlotGraph<I>>(fixture_key("slots", I::kName)).impl;
  const auto keys = keys_of<I>(kSlotKeys);
  const std::vector<Op>& ops = w4_streams()[static_cast<std::size_t>(st.thread_index())];
  std::size_t j = 0;
  std::int64_t v = 0;
  for (auto _ : st) {
    const Op& op = ops[j++ & (kOpsPerThread - 1)];
    if (op.kind == OpKind::kSet) {
      g.set(op.node, keys[op.key], Value(v++));
    } else {
      benchmark::DoNotOptimize(g.get(op.node, keys[op.key]));
    }
  }
  st.SetItemsProcessed(static_cast<std::int64_t>(st.iterations()));
}

template <class I, int kSkewX100>
void BM_W5Mixed(benchmark::State& st) {
  auto& g = fixture<SlotGraph<I>>(fixture_key("slots", I::kName)).impl;
  const auto keys = keys_of<I>(kSlotKeys);
  const auto missing = keys_of<I>(kMissKeys);
  const std::vector<Op>& ops = w5_streams(kSkewX100)[static_cast<std::size_t>(st.thread_index())];
  std::size_t j = 0;
  for (auto _ : st) {
    const Op& op = ops[j++ & (kOpsPerThread - 1)];
    switch (op.kind) {
      case OpKind::kUpdate:
        g.increment(op.node, keys[op.key]);
        break;
      case OpKind::kGetMissing:
        benchmark::DoNotOptimize(g.get(op.node, missing[op.key]));
        break;
      default:
        benchmark::DoNotOptimize(g.get(op.node, keys[op.key]));
        break;
    }
  }
  st.SetItemsProcessed(static_cast<std::int64_t>(st.iterations()));
}

// --- single thread: nodemeta get/set against a raw tbb::concurrent_hash_map ------------------
// The raw map is keyed by node * 8 + key index and holds Values: one hashed lookup under an
// element lock per operation, no protection check, no key interning. It is the floor that a
// store built on tbb::concurrent_hash_map pays, so the ratio shows nodemeta's own overhead.
struct RawTbb {
  static constexpr std::string_view kName = "raw_tbb_map";
  using Map = tbb::concurrent_hash_map<std::uint64_t, Value>;
  RawTbb() {
    for (std::uint64_t i = 0; i < kNodes; ++i) {
      for (std::uint64_t k = 0; k < 5; ++k) map.insert({i * 8 + k, Value(static_cast<std::int64_t>(i + k))});
    }
  }
  Map map;
};

template <bool kSet>
void BM_SingleRaw(benchmark::State& st) {
  auto& raw = fixture<RawTbb>("single/raw").map;
  const std::vector<Op>& ops = w4_streams()[0];
  std::size_t j = 0;
  std::int64_t v = 0;
  for (auto _ : st) {
    const Op& op = ops[j++ & (kOpsPerThread - 1)];
    const std::uint64_t slot = std::uint64_t{op.node} * 8 + op.key;
    if constexpr (kSet) {
      RawTbb::Map::accessor acc;
      raw.insert(acc, slot);
      acc->second = Value(v++);
    } else {
      RawTbb::Map::const_accessor acc;
      std::optional<Value> out;
      if (raw.find(acc, slot)) out = acc->second;
      benchmark::DoNotOptimize(out);
    }
  }
  st.SetItemsProcessed(static_cast<std::int64_t>(st.iterations()));
}

template <bool kSet>
void BM_SingleNodemeta(benchmark::State& st) {
  auto& g = fixture<SlotGraph<Nodemeta>>(fixture_key("slots", Nodemeta::kName)).impl;
  const auto keys = keys_of<Nodemeta>(kSlotKeys);
  const std::vector<Op>& ops = w4_streams()[0];
  std::size_t j = 0;
  std::int64_t v = 0;
  for (auto _ : st) {
    const Op& op = ops[j++ & (kOpsPerThread - 1)];
    if constexpr (kSet) {
      g.set(op.node, keys[op.key], Value(v++));
    } else {
      benchmark::DoNotOptimize(g.get(op.node, keys[op.key]));
    }
  }
  st.SetItemsProcessed(static_cast<std::int64_t>(st.iterations()));
}

// --- registration -----------------------------------------------------------------------------
int max_threads() {
  const char* env = std::getenv("NODEMETA_BENCH_THREADS");
  const int n = env != nullptr ? std::atoi(env) : 2;
  return std::clamp(n, 1, kMaxThreads);
}

// NODEMETA_BENCH_OVERSUB=M (scripts/bench sets 8): W1, W2, W2r and W4 also run with more
// threads than NODEMETA_BENCH_THREADS, at every power of two above it up to M (at most 16):
// with the defaults, 4 and 8 threads on a 2-core machine. Unset or 0: none.
std::vector<int> oversub_threads(int n) {
  const char* env = std::getenv("NODEMETA_BENCH_OVERSUB");
  const int m = std::min(env != nullptr ? std::atoi(env) : 0, kMaxThreads);
  std::vector<int> out;
  for (int t = 1; t <= m; t *= 2) {
    if (t > n) out.push_back(t);
  }
  return out;
}

void register_all() {
  const int n = max_threads();
  const std::vector<int> over = oversub_threads(n);
  // NODEMETA_BENCH_ITERATIONS=k fixes every row's iteration count (for profiling under
  // callgrind, where two counts give the exact cost per item by difference).
  const char* iters = std::getenv("NODEMETA_BENCH_ITERATIONS");
  const benchmark::IterationCount fixed = iters != nullptr ? std::atoll(iters) : 0;
  // NODEMETA_BENCH_OVERSUB_REPS / NODEMETA_BENCH_OVERSUB_MIN_TIME: the oversubscribed rows'
  // repetitions and min time, overriding --benchmark_repetitions / --benchmark_min_time for
  // those rows only (scripts/bench uses them to bound its run time).
  const char* over_reps = std::getenv("NODEMETA_BENCH_OVERSUB_REPS");
  const char* over_min_time = std::getenv("NODEMETA_BENCH_OVERSUB_MIN_TIME");
  auto reg = [n, fixed](const std::string& name, void (*fn)(benchmark::State&)) {
    auto* b = benchmark::RegisterBenchmark(name.c_str(), fn)->ThreadRange(1, n)->UseRealTime();
    if (fixed > 0) b->Iterations(fixed);
  };
  // The same row (same name), also at the oversubscribed thread counts.
  auto reg_over = [&](const std::string& name, void (*fn)(benchmark::State&)) {
    reg(name, fn);
    if (over.empty()) return;
    auto* b = benchmark::RegisterBenchmark(name.c_str(), fn)->UseRealTime();
    for (int t : over) b->Threads(t);
    if (fixed > 0) {
      b->Iterations(fixed);
    } else if (over_min_time != nullptr) {
      b->MinTime(std::atof(over_min_time));
    }
    if (over_reps != nullptr) b->Repetitions(std::max(1, std::atoi(over_reps)));
  };
  // Workload-major order, so one workload's rows run close together in time.
  for_each_impl([&]<class I>() { reg_over("W1_fresh/" + std::string(I::kName), BM_W1Fresh<I>); });
  for_each_impl([&]<class I>() {
    reg("W1s_fresh_strings/" + std::string(I::kName), BM_W1FreshStrings<I>);
  });
  for_each_impl([&]<class I>() { reg("W1o_overwrite/" + std::string(I::kName), BM_W1Overwrite<I>); });
  for_each_impl([&]<class I>() {
    reg("W1os_overwrite_strings/" + std::string(I::kName), BM_W1OverwriteStrings<I>);
  });
  for_each_impl([&]<class I>() {
    reg_over("W2_hot_node/" + std::string(I::kName), BM_W2HotNode<I>);
  });
  for_each_impl([&]<class I>() {
    reg_over("W2r_hot_read/" + std::string(I::kName), BM_W2rHotRead<I, false>);
  });
  for_each_impl([&]<class I>() {
    reg("W2r_hot_read_boxed/" + std::string(I::kName), BM_W2rHotRead<I, true>);
  });
  for_each_impl([&]<class I>() {
    reg("W3_set_throw/" + std::string(I::kName), BM_W3Protected<I, W3Op::kSetThrow>);
    reg("W3_try_set/" + std::string(I::kName), BM_W3Protected<I, W3Op::kTrySet>);
    reg("W3_contains/" + std::string(I::kName), BM_W3Protected<I, W3Op::kContains>);
  });
  for_each_impl([&]<class I>() {
    reg_over("W4_random_slots/" + std::string(I::kName), BM_W4RandomSlots<I>);
  });
  for_each_impl([&]<class I>() { reg("W5_mixed_s0.01/" + std::string(I::kName), BM_W5Mixed<I, 1>); });
  for_each_impl([&]<class I>() { reg("W5_mixed_s0.99/" + std::string(I::kName), BM_W5Mixed<I, 99>); });
  auto single = [fixed](const char* name, void (*fn)(benchmark::State&)) {
    auto* b = benchmark::RegisterBenchmark(name, fn)->UseRealTime();
    if (fixed > 0) b->Iterations(fixed);
  };
  single("ST_get/nodemeta", BM_SingleNodemeta<false>);
  single("ST_get/raw_tbb_map", BM_SingleRaw<false>);
  single("ST_set/nodemeta", BM_SingleNodemeta<true>);
  single("ST_set/raw_tbb_map", BM_SingleRaw<true>);
  benchmark::AddCustomContext("nodemeta_bench_threads", std::to_string(n));
  std::string over_list;
  for (int t : over) over_list += (over_list.empty() ? "" : ",") + std::to_string(t);
  benchmark::AddCustomContext("nodemeta_bench_oversub_threads",
                              over_list.empty() ? "none" : over_list);
  benchmark::AddCustomContext("absl_mutex_deadlock_detection", "off (kIgnore)");
}

}  // namespace
}  // namespace nmbench

int main(int argc, char** argv) {
  // Debian's libabsl checks every absl::Mutex acquisition for deadlock cycles by default
  // (about 20x slower); a user who cares about speed turns that off.
  // NODEMETA_BENCH_ABSL_DEADLOCK_DETECTION=1 keeps Debian's default, to measure what it costs.
  if (std::getenv("NODEMETA_BENCH_ABSL_DEADLOCK_DETECTION") == nullptr) {
    absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  }
  nmbench::register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
